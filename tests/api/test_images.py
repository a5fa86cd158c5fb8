"""vggtl.load_images: folders of class subfolders and lists of files, against
Keras's own loader (keras.utils.load_img with bilinear interpolation, Pillow
underneath) and Pillow itself; bad files, links, FIFOs and bombs."""
import os
import sys
import threading
import warnings

import numpy as np
import pytest

import vggtl
from vggtl import images as vimages
from vggtl import _kernels  # the single kernels, for tests

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

SIZE = (32, 40)  # height, width: not square, so a swapped axis shows


def _picture(rng, h, w, mode="RGB"):
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 3] = (250, 20, 20)  # an asymmetric block: orientation shows
    img = Image.fromarray(a)
    return img if mode == "RGB" else img.convert(mode)


@pytest.fixture
def folder(tmp_path, rng):
    """b/ (PNG RGB, PNG palette, BMP, nested/TIFF), a/ (GIF, WebP lossless, PNG L, PNG RGBA)."""
    root = tmp_path / "data"
    (root / "b" / "nested").mkdir(parents=True)
    (root / "a").mkdir()
    _picture(rng, 90, 70).save(root / "b" / "1.png")
    _picture(rng, 50, 120, "P").save(root / "b" / "2.PNG")
    _picture(rng, 33, 41).save(root / "b" / "3.bmp")
    _picture(rng, 64, 64).save(root / "b" / "nested" / "4.tiff")
    _picture(rng, 80, 60, "P").save(root / "a" / "1.gif")
    _picture(rng, 100, 100).save(root / "a" / "2.webp", lossless=True)
    _picture(rng, 20, 25, "L").save(root / "a" / "3.png")
    _picture(rng, 77, 91, "RGBA").save(root / "a" / "4.png")
    (root / "a" / "notes.txt").write_text("not an image, not read")
    return root


@pytest.fixture(scope="module")
def keras_load_img():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    return keras.utils.load_img


def _keras(load_img, path, size, color_mode="rgb"):
    img = load_img(str(path), color_mode=color_mode, target_size=size, interpolation="bilinear")
    a = np.asarray(img, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def test_folder_equals_keras_load_img(folder, keras_load_img):
    X, y, names = vggtl.load_images(folder, image_size=SIZE, progress=False)
    assert names == ["a", "b"]
    files = sorted((folder / "a").glob("*.[gpw]*")) + \
        [folder / "b" / "1.png", folder / "b" / "2.PNG", folder / "b" / "3.bmp",
         folder / "b" / "nested" / "4.tiff"]
    files = [f for f in files if f.suffix != ".txt"]
    assert [p.name for p in files[:4]] == ["1.gif", "2.webp", "3.png", "4.png"]
    assert X.dtype == np.uint8 and X.shape == (8, 32, 40, 3)
    assert y.dtype == np.int64 and y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    for i, f in enumerate(files):
        np.testing.assert_array_equal(X[i], _keras(keras_load_img, f, SIZE), err_msg=str(f))


def test_grayscale_equals_keras(folder, keras_load_img):
    X, y, _ = vggtl.load_images(folder, image_size=SIZE, color_mode="grayscale", progress=False)
    assert X.shape == (8, 32, 40, 1)
    np.testing.assert_array_equal(X[4], _keras(keras_load_img, folder / "b" / "1.png", SIZE,
                                               "grayscale"))


def test_jpeg_draft_close_to_keras_full_decode(tmp_path, rng, keras_load_img):
    # a smooth photo-like image: draft decodes it at 1/4 size (DCT scaling), Keras in full
    yy, xx = np.mgrid[0:240, 0:320]
    a = np.stack([(xx * 0.8) % 256, (yy * 1.0) % 256, (xx + yy) * 0.4 % 256], -1)
    (tmp_path / "c" / "k").mkdir(parents=True)
    path = tmp_path / "c" / "k" / "photo.JPG"
    Image.fromarray(a.astype(np.uint8)).save(path, quality=95)
    X, _, _ = vggtl.load_images(tmp_path / "c", image_size=(48, 64), progress=False)
    ref = _keras(keras_load_img, path, (48, 64)).astype(int)
    diff = np.abs(X[0].astype(int) - ref)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8, (diff.mean(), diff.max())


def test_exif_orientation_applied(tmp_path, rng):
    img = _picture(rng, 30, 60)  # wide; EXIF 6 says: rotate 90 clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "d" / "k").mkdir(parents=True)
    img.save(tmp_path / "d" / "k" / "p.png", exif=exif)
    img.save(tmp_path / "d" / "k" / "q.jpg", exif=exif, quality=100)
    X, _, _ = vggtl.load_images(tmp_path / "d", image_size=(60, 30), progress=False)
    upright = img.transpose(Image.Transpose.ROTATE_270)  # tall, 30 wide x 60 high
    np.testing.assert_array_equal(X[0], np.asarray(upright))
    # the JPEG: lossy (noise does not survive), but upright: the red block is
    # top right after the turn
    assert X[1][:15, 20:, 0].mean() > 200 and X[1][:15, :10, 0].mean() < 200


def test_class_names_order_and_mismatch(folder):
    X, y, names = vggtl.load_images(folder, image_size=SIZE, class_names=["b", "a"],
                                    progress=False)
    X2, y2, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    assert names == ["b", "a"] and y.tolist() == [0] * 4 + [1] * 4
    np.testing.assert_array_equal(X[:4], X2[4:])
    with pytest.raises(ValueError, match="class_names: expected the names of the subfolders"):
        vggtl.load_images(folder, class_names=["a", "c"], progress=False)


def test_list_of_files_keeps_order(folder):
    files = [folder / "b" / "3.bmp", str(folder / "a" / "3.png")]
    X, y, names = vggtl.load_images(files, image_size=SIZE, progress=False)
    X2, _, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    assert y is None and names is None
    np.testing.assert_array_equal(X, X2[[6, 2]])
    with pytest.raises(ValueError, match="empty list"):
        vggtl.load_images([], progress=False)


def test_bad_files_skipped_with_one_warning(folder, rng):
    b = folder / "b"
    good = b / "1.png"
    raw = good.read_bytes()
    (b / "trunc.png").write_bytes(raw[: len(raw) // 2])
    (b / "text.jpg").write_text("hello")
    (b / "empty.gif").write_bytes(b"")
    with pytest.warns(RuntimeWarning, match="skipped 3 file") as rec:
        X, y, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    assert len(rec) == 1
    msg = str(rec[0].message)
    for name in ("trunc.png", "text.jpg", "empty.gif"):
        assert name in msg
    assert X.shape[0] == 8 and y.tolist() == [0] * 4 + [1] * 4


def test_pixel_limit_refuses_bombs(tmp_path):
    (tmp_path / "e" / "k").mkdir(parents=True)
    # 9000 x 9000 one-bit pixels: a small file, 81 million pixels decoded
    Image.new("1", (9000, 9000)).save(tmp_path / "e" / "k" / "bomb.png")
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "e" / "k" / "ok.png")
    with pytest.warns(RuntimeWarning, match=r"bomb.png \(9000 x 9000 pixels, more than max_pix"):
        X, _, _ = vggtl.load_images(tmp_path / "e", image_size=(8, 8), progress=False)
    assert X.shape[0] == 1 and (X[0] == (1, 2, 3)).all()
    with pytest.warns(RuntimeWarning, match="ok.png"):
        with pytest.raises(ValueError, match="none of the 2 files"):
            vggtl.load_images(tmp_path / "e", max_pixels=100, progress=False)


def test_only_image_formats_are_decoded(folder, monkeypatch):
    """A PostScript file named .jpg never reaches Pillow's EPS plugin, which would
    run Ghostscript on it; an MPO (a JPEG with a second picture) still decodes."""
    from PIL import EpsImagePlugin
    asked = []

    def spy(self):
        asked.append(self.fp)
        raise SyntaxError("not for vggtl")
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    (folder / "a" / "doc.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
                                           b"{} loop\n")
    with pytest.warns(RuntimeWarning, match="skipped 1 file.*doc.jpg"):
        X, _, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    assert X.shape[0] == 8 and asked == []
    Image.init()
    if "MPO" not in Image.SAVE:  # Pillow writes MPO from 9.3
        return
    mpo = folder / "b" / "5.jpg"
    a = Image.new("RGB", (30, 20), (200, 10, 10))
    a.save(mpo, format="MPO", save_all=True, append_images=[Image.new("RGB", (30, 20))])
    assert Image.open(mpo).format == "MPO"
    with pytest.warns(RuntimeWarning, match="doc.jpg"):
        X, _, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    assert X.shape[0] == 9 and asked == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_does_not_hang(folder):
    os.mkfifo(folder / "a" / "pipe.png")
    result = {}

    def run():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            result["X"] = vggtl.load_images(folder, image_size=SIZE, progress=False)[0]
            result["w"] = [str(x.message) for x in w]
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "load_images blocked on a FIFO"
    assert result["X"].shape[0] == 8
    assert any("pipe.png (not a regular file)" in m for m in result["w"])


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges")
def test_links_do_not_escape(folder, tmp_path, rng):
    outside = tmp_path / "secret.png"
    _picture(rng, 20, 20).save(outside)
    os.symlink(outside, folder / "a" / "escape.png")
    os.symlink(folder / "b" / "1.png", folder / "a" / "inside.png")  # stays in the folder
    other = tmp_path / "elsewhere"
    other.mkdir()
    _picture(rng, 20, 20).save(other / "x.png")
    os.symlink(other, folder / "a" / "linkdir")
    os.symlink(folder / "b", folder / "b" / "loop")  # a loop, with follow_links
    with pytest.warns(RuntimeWarning, match="escape.png.*outside") as rec:
        X, y, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    assert len(rec) == 1 and "x.png" not in str(rec[0].message)
    assert X.shape[0] == 9  # the 8 and inside.png; not escape.png, nothing under linkdir
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X2, y2, _ = vggtl.load_images(folder, image_size=SIZE, follow_links=True,
                                      progress=False)
    # escape.png and linkdir/x.png now read; b/loop is b itself: not read twice
    assert X2.shape[0] == 11 and y2.tolist() == [0] * 7 + [1] * 4


def test_folder_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="no folder"):
        vggtl.load_images(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(vggtl.ImageFolderError, match="is empty"):
        vggtl.load_images(empty)
    flat = tmp_path / "flat"
    flat.mkdir()
    _picture(rng, 10, 10).save(flat / "1.png")
    with pytest.raises(ValueError, match="no class subfolders .*1 image files directly"):
        vggtl.load_images(flat)
    (flat / "cat").mkdir()
    _picture(rng, 10, 10).save(flat / "cat" / "1.png")
    (flat / "dog").mkdir()
    (flat / "dog" / "readme.txt").write_text("x")
    with pytest.raises(vggtl.ImageFolderError, match="dog' holds no images"):
        vggtl.load_images(flat)
    with pytest.raises(ValueError, match="color_mode"):
        vggtl.load_images(flat, color_mode="rgba")
    with pytest.raises(ValueError, match="image_size"):
        vggtl.load_images(flat, image_size=(0, 3))


def test_memmap_when_large(folder, monkeypatch):
    ref, _, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    monkeypatch.setattr(vimages, "MEMMAP_FRACTION", 0.0)
    X, _, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    assert isinstance(X, np.memmap)
    np.testing.assert_array_equal(X, ref)


def test_without_pillow_names_the_pip_command(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        vggtl.load_images(folder)


def test_rerun_on_same_files_computes_nothing(folder, tmp_path):
    # the feature cache keys X by the digest of its bytes: decoding the same
    # files again gives the same bytes, so the second extraction is a hit
    base = vggtl.VGG16(weights=None, input_shape=(32, 40, 3))
    X1, _, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    F1 = base.extract(X1, cache=tmp_path / "fc", progress=False)
    before = _kernels.vgg16_forward_images()
    X2, _, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
    F2 = base.extract(X2, cache=tmp_path / "fc", progress=False)
    assert _kernels.vgg16_forward_images() == before
    np.testing.assert_array_equal(F1, F2)


def test_pillow_warnings_are_judged_not_leaked(folder, monkeypatch):
    # 40x40-ish images over Pillow's (lowered) limit: Pillow warns at open; the
    # files are within max_pixels, so they load, and Pillow's warning stays inside
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 5 files warn, none fail
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        inner = list(warnings.filters)
        X, _, _ = vggtl.load_images(folder, image_size=SIZE, progress=False)
        assert list(warnings.filters) == inner  # the filters load_images set are gone
    assert X.shape[0] == 8
    kinds = [type(w.message).__name__ for w in rec]
    assert "DecompressionBombWarning" not in kinds, kinds
    assert list(warnings.filters) == before
