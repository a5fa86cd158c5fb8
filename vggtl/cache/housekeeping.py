"""Housekeeping: where the cache lives, its size limit, and listing, clearing and
evicting entries (least recently used first). Only folders carrying vggtl's
marker are entries; nothing else under the root is listed, evicted or cleared.
"""
from __future__ import annotations

import errno
import math
import os
import re
import time
import uuid
from typing import List, Optional

import numpy as np

from .files import Damaged, open_dir, open_file, read_json, tree_size
from .store import ENTRY_RE, check_manifest, fcntl, is_ours, remove_entry_tree

_limit: Optional[int] = None
_limit_set = False
_STAGE_AGE_S = 60.0  # a half-made entry folder (".new-...") older than this is a leftover


# -- where ---------------------------------------------------------------------------
def default_dir() -> str:
    """``$XDG_CACHE_HOME/vggtl/features``, else ``~/.cache/vggtl/features``."""
    from ..weights import vggtl_cache_dir
    return os.path.join(vggtl_cache_dir(), "features")


def resolve_root(cache, what: str = "cache") -> str:
    """The cache folder, absolute: vggtl's for True or None, else the path given
    (errors name the argument ``what``)."""
    kinds = "True, False or a folder path" if what == "cache" else "None or a folder path"
    if cache is True or cache is None:
        return os.path.abspath(default_dir())
    if isinstance(cache, (str, os.PathLike)):
        path = os.fspath(cache)
        if not isinstance(path, str):
            raise TypeError(f"{what}: expected a folder path (str), got {path!r}")
        if path == "":
            raise ValueError(f"{what}: expected {kinds}, got an empty path "
                             f"'' (the current folder is never taken by default; pass '.' for it)")
        return os.path.abspath(path)
    raise TypeError(f"{what}: expected {kinds}, got {type(cache).__name__}")


# -- size limit ----------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "t": 1000 ** 4, "tb": 1000 ** 4,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(v, what: str) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0:
        return int(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", v)
        if m and m.group(2).lower() in _UNITS:
            x = float(m.group(1)) * _UNITS[m.group(2).lower()]
            if math.isfinite(x):  # 400 nines are a float of inf, not a size
                return int(x)
    raise ValueError(f"{what}: expected a size in bytes (int) or a string like '20GB', "
                     f"'500MiB', got {v!r}")


# with no limit set, the cache may take this fraction of the space it could have:
# the free space of its file system plus what it already holds
DEFAULT_LIMIT_FRACTION = 0.25
_NO_LIMIT = ("none", "off", "unlimited")
_DEFAULT = ("auto", "default")


def set_size_limit(limit) -> None:
    """Bound the cache's size (bytes, or "20GB", "500MiB"; None or "none": no bound;
    "auto": back to the default).

    After each new entry, the least recently used others are removed until the
    folder fits (an entry in use by another process is skipped; the newest entry is
    kept even if it alone is larger). Without a call, ``$VGGTL_CACHE_LIMIT`` (a
    size, or "none"); without it, :data:`DEFAULT_LIMIT_FRACTION` of the free disk
    plus what the cache holds (see :func:`get_size_limit`).
    """
    global _limit, _limit_set
    if isinstance(limit, str) and limit.strip().lower() in _DEFAULT:
        _limit, _limit_set = None, False
        return
    if isinstance(limit, str) and limit.strip().lower() in _NO_LIMIT:
        limit = None
    _limit, _limit_set = parse_size(limit, "limit"), True


def _free_bytes(path: str) -> Optional[int]:
    """Free space (for an unprivileged user) of the file system holding ``path``,
    or of its nearest existing parent; None where that cannot be told."""
    p = os.path.abspath(path)
    while True:
        try:
            st = os.statvfs(p)
            return int(st.f_bavail) * int(st.f_frsize)
        except FileNotFoundError:
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent
        except (OSError, AttributeError):  # no statvfs (Windows), or not allowed
            return None


def size_limit_rule() -> str:
    """Where the size limit comes from, in words (what ``info`` prints)."""
    if _limit_set:
        return "set_size_limit"
    if os.environ.get("VGGTL_CACHE_LIMIT", "").strip():
        return "$VGGTL_CACHE_LIMIT"
    return (f"default: {DEFAULT_LIMIT_FRACTION:.0%} of the free disk plus what the cache holds "
            f"(set $VGGTL_CACHE_LIMIT, e.g. 20GB or none, to choose)")


def get_size_limit(path=None, held: Optional[int] = None) -> Optional[int]:
    """The size bound in bytes (None: unbounded); see :func:`set_size_limit`.

    The default bound is :data:`DEFAULT_LIMIT_FRACTION` of the free space on the
    file system of the cache folder ``path`` (default: vggtl's) plus ``held``, the
    bytes the cache holds (counted when not given), so the bound does not shrink
    as the cache fills the disk."""
    if _limit_set:
        return _limit
    env = os.environ.get("VGGTL_CACHE_LIMIT", "").strip()
    if env:
        if env.lower() in _NO_LIMIT:
            return None
        return parse_size(env, "$VGGTL_CACHE_LIMIT")
    root = resolve_root(path, "path")
    free = _free_bytes(root)
    if free is None:
        return None
    if held is None:
        held = sum(d["bytes"] for d in (describe_entry(e) for e in entry_folders(root)) if d is not None)
    return int(DEFAULT_LIMIT_FRACTION * (free + held))


# -- info, clear, eviction ---------------------------------------------------------------
def entry_folders(root: str) -> List[str]:
    """Candidate entry folders: names of 32 hex digits (whether each is vggtl's is
    checked where it is opened)."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(os.path.join(root, nm) for nm in names if ENTRY_RE.match(nm))


def describe_entry(folder: str) -> Optional[dict]:
    """One entry, or None when ``folder`` is not a vggtl entry (no marker, not a
    folder, a symlink)."""
    try:
        dfd = open_dir(folder)
    except (OSError, Damaged):
        return None
    if dfd is None:
        return None
    try:
        if not is_ours(dfd):
            return None
        try:
            m = check_manifest(read_json("manifest.json", dfd))
        except Damaged:
            m = None
        try:
            used = os.stat("manifest.json", dir_fd=dfd, follow_symlinks=False).st_mtime
        except OSError:
            used = os.fstat(dfd).st_mtime
        d = {"id": os.path.basename(folder), "path": folder, "bytes": tree_size(dfd),
             "last_used": used, "complete": False, "valid": m is not None}
    finally:
        os.close(dfd)
    if m is not None:
        done = sum(c is not None for c in m["chunks"])
        d.update({"layer": m["key"].get("layer"), "pooling": m["key"].get("pooling"),
                  "n": m["n"], "shape": tuple([m["n"]] + m["item_shape"]), "dtype": m["dtype"],
                  "view": m["key"].get("view"), "conv": m["key"].get("conv"),
                  "complete": m["complete"],
                  "chunks_done": done, "chunks": len(m["chunks"]), "created": m.get("created")})
    return d


def info(path=None) -> dict:
    """What the cache holds: ``{"path", "entries": [...], "bytes", "limit"}``, each
    entry a dict of its id, folder, layer, pooling, n, shape, dtype, view, conv
    (each convolution's algorithm, one letter: 'i' im2col, 'w' Winograd, '6'
    Winograd F(6x6), 'b' bf16 Winograd, 'a' bf16 Winograd on AMX), bytes, complete, chunks done / total and last use (seconds since
    the epoch), least recently used first. Only folders carrying vggtl's marker
    are entries; anything else in the folder is not listed (nor ever removed)."""
    root = resolve_root(path, "path")
    found = (describe_entry(d) for d in entry_folders(root))
    entries = sorted((d for d in found if d is not None), key=lambda e: e["last_used"])
    held = sum(e["bytes"] for e in entries)
    return {"path": root, "entries": entries, "bytes": held,
            "limit": get_size_limit(root, held), "limit_rule": size_limit_rule()}


def remove_entry(root: str, folder: str) -> bool:
    """Remove one entry unless another process holds it; True if removed. Only a
    folder carrying vggtl's marker is removed (False for anything else)."""
    try:
        dfd = open_dir(folder)
    except Damaged:
        return False
    if dfd is None:
        return True
    fd = None
    try:
        if not is_ours(dfd):
            return False
        try:
            fd = open_file("lock", dfd)
        except (OSError, Damaged):
            fd = None  # none, unreadable, or a lock no one can take (a FIFO, a symlink)
        if fd is not None and fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        try:  # the folder checked is the one at the path (not replaced meanwhile)
            if not os.path.samestat(os.fstat(dfd), os.stat(folder, follow_symlinks=False)):
                return False
        except FileNotFoundError:
            return True
        trash = os.path.join(root, f".trash-{os.path.basename(folder)}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(folder, trash)  # one step: nobody sees a half-removed entry
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise PermissionError(f"cannot remove {folder}: {e.strerror}") from None
            raise
    finally:
        for d in (fd, dfd):
            if d is not None:
                os.close(d)
    remove_entry_tree(trash)
    return True


def clean_trash(root: str) -> None:
    """Finish removals cut short (".trash-*") and entry folders never renamed into
    place (".new-*", after a minute): each only if it carries vggtl's marker."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    now = time.time()
    for nm in names:
        p = os.path.join(root, nm)
        if nm.startswith(".new-"):
            try:
                if now - os.stat(p, follow_symlinks=False).st_mtime < _STAGE_AGE_S:
                    continue
            except OSError:
                continue
        elif not nm.startswith(".trash-"):
            continue
        remove_entry_tree(p)
def clear(path=None, *, layer: Optional[str] = None, incomplete: Optional[bool] = None,
          max_bytes=None, older_than: Optional[float] = None) -> dict:
    """Remove cache entries; returns ``{"removed", "bytes_freed", "busy"}``.

    With no filter, every entry goes. ``layer="block4_pool"``: only that cut;
    ``incomplete=True``: only unfinished extractions (False: only finished ones);
    ``older_than``: only entries last used more than that many seconds ago;
    ``max_bytes``: least recently used entries first, until the rest fits. Entries
    another process is writing or reading right now are left (counted in "busy").
    Only folders carrying vggtl's marker are entries: nothing else is removed.
    """
    root = resolve_root(path, "path")
    limit = parse_size(max_bytes, "max_bytes")
    if older_than is not None:
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float, np.number)) \
                or not 0 <= float(older_than) < float("inf"):
            raise ValueError(f"older_than: expected seconds >= 0, got {older_than!r}")
        cutoff = time.time() - float(older_than)
    entries = info(root)["entries"]
    chosen = [e for e in entries
              if (layer is None or e.get("layer") == layer)
              and (incomplete is None or (not e["complete"]) == bool(incomplete))
              and (older_than is None or e["last_used"] < cutoff)]
    total = sum(e["bytes"] for e in entries)
    removed = freed = busy = 0
    for e in chosen:  # least recently used first
        if limit is not None and total <= limit:
            break
        if remove_entry(root, e["path"]):
            removed += 1
            freed += e["bytes"]
            total -= e["bytes"]
        else:
            busy += 1
    clean_trash(root)
    return {"removed": removed, "bytes_freed": freed, "busy": busy}


def enforce_limit(root: str, keep: str) -> None:
    if _limit_set and _limit is None:
        return
    found = info(root)
    limit, entries, total = found["limit"], found["entries"], found["bytes"]
    if limit is None:
        return
    for e in entries:  # least recently used first
        if total <= limit:
            break
        if e["path"] == keep:
            continue
        try:
            if remove_entry(root, e["path"]):
                total -= e["bytes"]
        except OSError:
            return
    clean_trash(root)
