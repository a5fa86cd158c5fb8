"""Image folders and files in: :func:`load_images`.

    X, y, class_names = vggtl.load_images("flowers/", image_size=(224, 224))
    X, _, _ = vggtl.load_images(["a.jpg", "b.png"])       # unlabelled files

A folder holds one subfolder per class (sorted by name, as Keras's
``image_dataset_from_directory`` orders them); its images are decoded with
Pillow (JPEG, PNG, BMP, GIF, WebP, TIFF), turned upright by their EXIF
orientation and resized as ``keras.utils.load_img(..., interpolation="bilinear")``
does (Pillow's bilinear filter, antialiased when shrinking), on several threads,
into one uint8 array.

Every file is untrusted: images larger than ``max_pixels`` are refused before
they are decoded (decompression bombs), only regular files are opened (a FIFO
or a device is never read, so nothing hangs), and without ``follow_links`` no
symbolic link leads outside the folder. Files that cannot be read (damaged,
truncated, not images) are left out with one warning listing them.
"""
from __future__ import annotations

import os
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ._files import open_regular

# Keras's image_dataset_from_directory formats, plus WebP and TIFF
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp", ".tif", ".tiff")
# the formats Pillow may decode, whatever a file's name says: with none given,
# Pillow tries every plugin it has, and its EPS plugin runs Ghostscript on the
# file. MPO, the JPEG of cameras that store a second picture, opens through
# the JPEG plugin (Pillow registers no opener of its own for it).
IMAGE_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "WEBP", "TIFF")
# The largest image decoded (width x height): 8192 x 8192 and below. Pillow's own
# default limit (about 89 million pixels, an error only from twice that) is a
# process-wide setting that a user may have lifted; this one is checked here.
MAX_PIXELS = 1 << 26
# X goes to a memory-mapped temporary file when it would take more than this
# fraction of the machine's memory
MEMMAP_FRACTION = 0.25


class ImageFolderError(ValueError):
    """A folder that does not hold what :func:`load_images` reads."""


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("vggtl.load_images needs Pillow to decode images: pip install pillow "
                          "(or pip install -e \".[images]\" from the checkout)") from None
    return Image, ImageOps


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _inside(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _walk(top: str, root: str, follow_links: bool, refused: List[str]) -> List[str]:
    """Image files under ``top`` (recursively, sorted at each level, as Keras's
    os.walk). Without follow_links a linked folder is not entered and a linked
    file is read only when it resolves inside ``root``; with it, every link is
    followed but no folder twice (a link loop ends)."""
    out: List[str] = []
    seen = set()
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            real = os.path.realpath(d)
            if real in seen:
                continue
            seen.add(real)
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            refused.append(f"{d} ({e.strerror or e})")
            continue
        subdirs = []
        for e in entries:
            try:
                link = e.is_symlink()
                if e.is_dir(follow_symlinks=follow_links):
                    if link and not follow_links:
                        continue  # not entered, as os.walk(followlinks=False)
                    subdirs.append(e.path)
                elif _is_image_name(e.name):
                    if link and not follow_links:
                        if not _inside(e.path, root):
                            refused.append(f"{e.path} (a link to a file outside {root}; "
                                           f"follow_links=True reads it)")
                            continue
                        out.append(os.path.realpath(e.path))  # opened without following
                        continue
                    out.append(e.path)
            except OSError as err:
                refused.append(f"{e.path} ({err.strerror or err})")
        stack.extend(reversed(subdirs))  # depth first, in sorted order
    return out


def _scan_folder(directory: str, class_names, follow_links: bool):
    """(files, labels, class_names, refused) of a folder of class subfolders."""
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise ImageFolderError(f"directory: {directory!r} is not a folder; pass a folder of "
                                   f"class subfolders, or a list of image files")
        raise FileNotFoundError(f"directory: no folder at {directory!r}")
    root = os.path.realpath(directory)
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    if not entries:
        raise ImageFolderError(f"directory: {directory!r} is empty; expected one subfolder per "
                               f"class, each holding that class's images")
    subdirs = [e.name for e in entries
               if e.is_dir(follow_symlinks=True) and (follow_links or not e.is_symlink())]
    if not subdirs:
        loose = sum(1 for e in entries if _is_image_name(e.name))
        hint = (f" (it holds {loose} image files directly: for unlabelled images pass the list "
                f"of files, e.g. load_images(sorted(glob.glob(...))))") if loose else ""
        raise ImageFolderError(f"directory: {directory!r} has no class subfolders{hint}; "
                               f"expected one subfolder per class, e.g. {directory}/cat/1.jpg "
                               f"and {directory}/dog/2.jpg")
    if class_names is not None:
        if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
            raise TypeError(f"class_names: expected a list of subfolder names, got "
                            f"{class_names!r}")
        class_names = list(class_names)
        if sorted(class_names) != sorted(set(subdirs)) or len(set(class_names)) != \
                len(class_names):
            raise ImageFolderError(f"class_names: expected the names of the subfolders of "
                                   f"{directory!r} ({', '.join(subdirs)}), in the order wanted; "
                                   f"got {class_names}")
    else:
        class_names = subdirs
    refused: List[str] = []
    files: List[str] = []
    labels: List[int] = []
    for i, name in enumerate(class_names):
        found = _walk(os.path.join(directory, name), root, follow_links, refused)
        if not found:
            raise ImageFolderError(f"directory: the class folder {os.path.join(directory, name)!r}"
                                   f" holds no images (expected files ending in "
                                   f"{', '.join(IMAGE_EXTENSIONS)})")
        files.extend(found)
        labels.extend([i] * len(found))
    return files, labels, class_names, refused


def _decode(path: str, size: Tuple[int, int], gray: bool, max_pixels: int,
            nofollow: bool = False) -> np.ndarray:
    """One image as (h, w, c) uint8, or an exception saying why not."""
    Image, ImageOps = _pil()
    h, w = size
    with open_regular(path, nofollow) as f:
        img = Image.open(f, formats=IMAGE_FORMATS)
        iw, ih = img.size
        if iw * ih > max_pixels:
            raise ValueError(f"{iw} x {ih} pixels, more than max_pixels={max_pixels}")
        if img.format == "JPEG":
            # DCT scaling while decoding: a 4000-pixel photo decodes at 1/2..1/8
            # of its size, never below the target size (an EXIF rotation by 90
            # degrees swaps which side must reach which)
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            img.draft("L" if gray else "RGB", (h, w) if turned else (w, h))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = img.convert("L" if gray else "RGB")
        if img.size != (w, h):
            img = img.resize((w, h), getattr(Image, "Resampling", Image).BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
    return a[..., None] if gray else a


def _available_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _allocate(shape) -> np.ndarray:
    """X in memory, or in a memory-mapped temporary file (removed when X goes)
    when it would take more than MEMMAP_FRACTION of the machine's memory."""
    nbytes = int(np.prod(shape, dtype=np.int64))
    mem = _available_memory()
    if mem is None or nbytes <= MEMMAP_FRACTION * mem:
        return np.empty(shape, np.uint8)
    fd, path = tempfile.mkstemp(prefix="vggtl-images-", suffix=".npy")
    os.close(fd)
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    try:
        os.unlink(path)  # the mapping stays valid; the space is freed with X
    except OSError:
        pass
    return X


def _check_size(image_size) -> Tuple[int, int]:
    try:
        h, w = image_size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"image_size: expected (height, width), two ints >= 1, got "
                         f"{image_size!r}")
    return int(h), int(w)


def load_images(directory_or_files, image_size=(224, 224), color_mode: str = "rgb",
                class_names: Optional[Sequence[str]] = None, follow_links: bool = False,
                progress: bool = True, max_pixels: int = MAX_PIXELS):
    """Images from a folder of class subfolders, or from a list of files.

    Returns ``(X, y, class_names)``: X uint8 (N, height, width, 3) for
    ``color_mode="rgb"`` or (N, height, width, 1) for "grayscale"; y int64
    labels, indices into ``class_names`` (the subfolders in sorted order, or in
    the order given by ``class_names``). For a list of files, y and class_names
    are None and X keeps the files' order (less the ones skipped).

    Images in a class folder are found recursively (sorted); files ending in
    .jpg, .jpeg, .png, .bmp, .gif (first frame), .webp, .tif or .tiff are read.
    Each is decoded by Pillow (JPEG with ``Image.draft``: decoded at a reduced
    size no smaller than the target), turned by its EXIF orientation, converted
    to RGB or L and resized with Pillow's bilinear filter (antialiased when
    shrinking) - what ``keras.utils.load_img(path, target_size=image_size,
    interpolation="bilinear")`` gives, apart from the orientation. Decoding runs
    on ``vggtl.get_num_threads()`` threads. X is a memory-mapped temporary file
    when it would take more than a quarter of the machine's memory.

    Files that cannot be read (damaged, truncated, not an image, larger than
    ``max_pixels`` pixels, not a regular file) are skipped, with one warning
    listing them. A folder that is empty, has no class subfolders, or has a
    class without images raises :class:`ImageFolderError` (a ValueError).
    Without ``follow_links``, linked subfolders are not entered and linked
    files outside the folder are not read.
    """
    X, y, names, _ = load_images_and_files(directory_or_files, image_size, color_mode,
                                           class_names, follow_links, progress, max_pixels)
    return X, y, names


def load_images_and_files(directory_or_files, image_size=(224, 224), color_mode: str = "rgb",
                          class_names=None, follow_links: bool = False, progress: bool = True,
                          max_pixels: int = MAX_PIXELS):
    """:func:`load_images`, and the paths of the files X holds, in X's order."""
    if color_mode not in ("rgb", "grayscale"):
        raise ValueError(f"color_mode: expected 'rgb' or 'grayscale', got {color_mode!r}")
    size = _check_size(image_size)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) \
            or max_pixels < 1:
        raise ValueError(f"max_pixels: expected an int >= 1, got {max_pixels!r}")
    _pil()  # the ImportError, before any work
    if isinstance(directory_or_files, (str, os.PathLike)):
        files, labels, class_names, refused = _scan_folder(os.fspath(directory_or_files),
                                                           class_names, bool(follow_links))
    else:
        if class_names is not None:
            raise ValueError("class_names: only for a folder of class subfolders; a list of "
                             "files has no labels")
        try:
            files = [os.fspath(p) for p in directory_or_files]
        except TypeError:
            raise TypeError(f"directory_or_files: expected a folder or a list of image files, "
                            f"got {type(directory_or_files).__name__}") from None
        if not files:
            raise ValueError("directory_or_files: expected at least one image file, got an "
                             "empty list")
        labels, refused = None, []
    gray = color_mode == "grayscale"
    n = len(files)
    X = _allocate((n, size[0], size[1], 1 if gray else 3))
    ok = np.zeros(n, dtype=bool)
    errors: List[Optional[str]] = [None] * n
    from .cache import Progress
    bar = Progress(bool(progress), n, 0, "images")
    lock = threading.Lock()

    nofollow = labels is not None and not follow_links  # a folder's files, as listed

    def work(i):
        try:
            X[i] = _decode(files[i], size, gray, max_pixels, nofollow)
            ok[i] = True
        except MemoryError:
            errors[i] = "out of memory decoding it"
        except Exception as e:  # any decoder failure is this file's problem only
            errors[i] = " ".join(str(e).split()) or type(e).__name__
        with lock:
            bar.update(1)

    from . import get_num_threads
    Image, _ = _pil()
    try:
        # Pillow's own warnings (a bomb's, damaged EXIF): the files are judged here,
        # and named in one warning at the end. The filters are process-wide, so they
        # are set once around all the threads (catch_warnings in each thread would
        # race), and only for Pillow's warnings.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            with ThreadPoolExecutor(max_workers=max(1, min(get_num_threads(), n))) as pool:
                list(pool.map(work, range(n)))
    finally:
        bar.close()
    bad = [f"{files[i]} ({errors[i]})" for i in range(n) if not ok[i]]
    skipped = refused + bad
    if skipped:
        shown = skipped[:20] + ([f"... and {len(skipped) - 20} more"] if len(skipped) > 20 else [])
        warnings.warn(f"load_images: skipped {len(skipped)} file(s) that could not be read: "
                      + "; ".join(shown), RuntimeWarning, stacklevel=3)
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        raise ImageFolderError(f"directory_or_files: none of the {n} files could be read as an "
                               f"image (see the warning)")
    if len(keep) < n:  # move the images read to the front, in order
        for j, i in enumerate(keep):
            if j != i:
                X[j] = X[i]
        X = X[:len(keep)]
    y = None if labels is None else np.asarray(labels, dtype=np.int64)[keep]
    return (X, y, None if labels is None else list(class_names),
            [files[i] for i in keep.tolist()])
