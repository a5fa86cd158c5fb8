"""``weights="imagenet"``: where the ImageNet VGG16 files are looked for (see
:mod:`vggtl.weights`), and their download (md5 checked, atomic)."""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from typing import List, Optional, Tuple

from .._atomic import atomic_open
from ._common import WeightsError, WeightsNotFoundError

KERAS_NOTOP = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_TOP = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
TORCH_FILE = "vgg16-397923af.pth"
_KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
# file name -> (url, md5) for the files vggtl downloads (keras/src/applications/vgg16.py)
DOWNLOADS = {
    KERAS_NOTOP: (_KERAS_BASE_URL + KERAS_NOTOP, "6d6bbae143d832006294945121d1f1fc"),
    KERAS_TOP: (_KERAS_BASE_URL + KERAS_TOP, "64373286793e3c8b2b4e3219cbf3544b"),
}
# what weights="imagenet" accepts, best first, for include_top False / True
IMAGENET_FILES = {
    False: (KERAS_NOTOP, KERAS_TOP, TORCH_FILE),
    True: (KERAS_TOP, TORCH_FILE),
}


def vggtl_cache_dir() -> str:
    """``$XDG_CACHE_HOME/vggtl``, else ``~/.cache/vggtl``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache"), "vggtl")


def imagenet_search_dirs() -> List[Tuple[str, str]]:
    """[(what, folder)] searched by ``weights="imagenet"``, in order (not $VGGTL_WEIGHTS)."""
    home = os.path.expanduser("~")
    keras_home = os.environ.get("KERAS_HOME")
    if not keras_home:  # Keras falls back to /tmp/.keras when ~ is not writable
        keras_home = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
        torch_home = os.path.join(xdg, "torch")
    return [("Keras's cache", os.path.join(keras_home, "models")),
            ("PyTorch's cache", os.path.join(torch_home, "hub", "checkpoints")),
            ("vggtl's cache", vggtl_cache_dir())]


def find_imagenet_weights(include_top: bool = False) -> Optional[str]:
    """The first ImageNet VGG16 file found (see the module docstring), or None."""
    names = IMAGENET_FILES[bool(include_top)]
    env = os.environ.get("VGGTL_WEIGHTS")
    if env:
        env = os.path.expanduser(env)
        if os.path.isfile(env):
            return env
        if not os.path.isdir(env):
            raise FileNotFoundError(f"VGGTL_WEIGHTS={env}: no such file or folder")
        for n in names:
            if os.path.isfile(os.path.join(env, n)):
                return os.path.join(env, n)
    for _, d in imagenet_search_dirs():
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p):
                return p
    return None


def _download_imagenet(include_top: bool) -> str:
    name = KERAS_TOP if include_top else KERAS_NOTOP
    url, md5 = DOWNLOADS[name]
    dest_dir = vggtl_cache_dir()
    dest = os.path.join(dest_dir, name)
    try:
        os.makedirs(dest_dir, exist_ok=True)
        _download(url, dest, md5)
    except WeightsError:
        raise
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        raise WeightsNotFoundError(_not_found_message(include_top, _reason(e))) from None
    return dest


def _reason(e: BaseException) -> str:
    """Why a download failed, once: the innermost cause's own words (a URLError's
    reason is an OSError with its strerror), not the chain of wrappers around it."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, BaseException):
        e = reason
    elif isinstance(reason, str) and reason:
        return f"{type(e).__name__}: {reason}"
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}" + (f" (errno {e.errno})" if e.errno else "")
    return f"{type(e).__name__}: {' '.join(str(e).split()) or 'no reason given'}"


def _not_found_message(include_top: bool, reason: str) -> str:
    name = KERAS_TOP if include_top else KERAS_NOTOP
    url, md5 = DOWNLOADS[name]
    names = IMAGENET_FILES[bool(include_top)]
    env = os.environ.get("VGGTL_WEIGHTS")
    lines = [f"weights='imagenet' (include_top={bool(include_top)}) needs {name} "
             f"({'553 MB' if include_top else '58.9 MB'}); it was not found on this machine "
             f"and could not be downloaded ({reason}).",
             f"Looked for {', '.join(names)} in:",
             f"  $VGGTL_WEIGHTS: {env if env else '(not set)'}"]
    lines += [f"  {what}: {d}" for what, d in imagenet_search_dirs()]
    lines += [f"Download {url} (md5 {md5}) and put it in {vggtl_cache_dir()} (or any folder "
              f"above), or set VGGTL_WEIGHTS to its path; or pass weights=<path> or None."]
    return "\n".join(lines)


def _progress(total: Optional[int], name: str):
    """A tqdm bar when tqdm is installed, else a line on stderr every 10% (plain
    lines in a notebook without ipywidgets)."""
    from ..cache import TextProgress, notebook_without_widgets
    if notebook_without_widgets():
        text = TextProgress(total or 0, 0, f"downloading {name}", unit="B")
        return text.update, text.close
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=name)
        return bar.update, bar.close
    except ImportError:
        pass
    done = [0, -1]

    def update(n):
        done[0] += n
        if total:
            tenth = done[0] * 10 // total
            if tenth != done[1]:
                done[1] = tenth
                print(f"\rvggtl: downloading {name}: {done[0] / 1e6:.1f} / {total / 1e6:.1f} MB",
                      end="", file=sys.stderr, flush=True)

    def close():
        if total:
            print(file=sys.stderr, flush=True)

    return update, close


def _download(url: str, dest: str, md5: str, chunk: int = 1 << 20) -> None:
    """Download ``url`` to ``dest`` atomically: a temporary file beside it, the md5
    checked, fsynced, renamed. On any failure nothing is left behind."""
    name = os.path.basename(dest)
    h = hashlib.md5(usedforsecurity=False)
    # connect first: offline, the error is the connection's own, and no temporary
    # file is made for a download that never starts
    r = urllib.request.urlopen(url, timeout=60)
    with r, atomic_open(dest) as out:
        total = r.headers.get("Content-Length") if getattr(r, "headers", None) else None
        update, close = _progress(int(total) if total else None, name)
        try:
            while True:
                block = r.read(chunk)
                if not block:
                    break
                h.update(block)
                out.write(block)
                update(len(block))
        finally:
            close()
        if h.hexdigest() != md5:
            raise WeightsError(f"downloaded {url}, but its md5 is {h.hexdigest()}, expected "
                               f"{md5}: the download was damaged or the file changed; nothing "
                               f"was kept. Try again, or download it by hand")
