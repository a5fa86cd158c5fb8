"""Fuzz target: the feature cache's reader (a manifest, data.npy and the verified
stamp of one entry, as vggtl.cache finds them on disk).

An input is a flag byte, three little-endian uint32 lengths, then the bytes of
manifest.json, data.npy and verified (fuzz/seeds.py: cache_input). With bit 0 of
the flag set, the target wraps the manifest with its correct SHA-256, so that
mutations reach the checks of its fields and not only the digest. Bits 1 to 4 put a
FIFO in place of manifest.json, data.npy, verified or lock; bit 5 a symlink to a
folder outside the entry in place of chunks/, bit 6 one to a file outside in place
of manifest.json, as someone sharing the cache folder could (fuzz/seeds.py:
cache_input's ``special``).

Contract (vggtl.cache: "nothing is used unless its CRC matches the manifest"; "a
symlink, a FIFO or any other special file ... makes the entry damaged"):
``load_manifest`` gives None or a manifest and never raises; ``try_read`` gives None
or a read-only array of the manifest's shape and dtype whose every chunk matches its
CRC, and raises nothing but the cache's "damaged entry" (only when a special file
is there); ``info`` and ``clear`` of the folder never raise; nothing waits on a
FIFO, and nothing outside the entry is read or changed.

    python fuzz/fuzz_cache.py -max_total_time=600 -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 CORPUS/cache
"""
import hashlib
import json
import os
import shutil
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import numpy as np  # noqa: E402

with _harness.instrumented_imports():
    from vggtl import cache as vc

ROOT = os.path.join(_harness.scratch_dir(), "features")
OUTSIDE = os.path.join(_harness.scratch_dir(), "outside")
_HEAD = struct.Struct("<BIII")
_FIFO_BITS = {1: "manifest.json", 2: "data.npy", 3: "verified", 4: "lock"}
_OUTSIDE_TEXT = b'{"manifest": {"format": "vggtl.features"}}'


def _plant(entry, flags: int) -> bool:
    """Special files in the entry as ``flags`` asks; True if any."""
    planted = False
    for bit, name in _FIFO_BITS.items():
        if flags >> bit & 1:
            path = os.path.join(entry.dir, name)
            if os.path.lexists(path):
                os.unlink(path)
            os.mkfifo(path)
            planted = True
    if flags >> 5 & 1:
        os.symlink(OUTSIDE, entry.chunk_dir)
        planted = True
    if flags >> 6 & 1 and not flags >> 1 & 1:
        if os.path.lexists(entry.manifest_path):
            os.unlink(entry.manifest_path)
        os.symlink(os.path.join(OUTSIDE, "secret.json"), entry.manifest_path)
        planted = True
    return planted


def _key_of(manifest_bytes: bytes):
    """The key the entry is read for: the manifest's own when it has one (so that a
    mutated manifest is read as its entry would be), else a fixed one."""
    try:
        obj = json.loads(manifest_bytes)
        key = obj["manifest"]["key"] if "manifest" in obj else obj["key"]
        if isinstance(key, dict):
            json.dumps(key, sort_keys=True)
            return key
    except Exception:
        pass
    return {"x": "fuzz"}


def one_input(raw: bytes) -> None:
    if len(raw) < _HEAD.size:
        return
    flags, lm, ld, lv = _HEAD.unpack_from(raw)
    body = raw[_HEAD.size:]
    manifest, data, verified = body[:lm], body[lm:lm + ld], body[lm + ld:lm + ld + lv]
    if flags & 1:
        try:
            m = json.loads(manifest)
            manifest = json.dumps({"manifest": m, "sha256": hashlib.sha256(
                vc.keys.canonical(m)).hexdigest()}).encode()
        except Exception:
            pass  # not JSON (or not canonicalisable): taken as it is
    key = _key_of(manifest)
    entry = vc.Entry(ROOT, key)
    shutil.rmtree(ROOT, ignore_errors=True)
    shutil.rmtree(OUTSIDE, ignore_errors=True)
    os.makedirs(entry.dir)
    os.makedirs(OUTSIDE)
    with open(os.path.join(OUTSIDE, "secret.json"), "wb") as f:
        f.write(_OUTSIDE_TEXT)
    with open(os.path.join(entry.dir, vc.MARKER), "wb") as f:
        f.write(vc.store.MARKER_TEXT)
    for path, content in ((entry.manifest_path, manifest), (entry.data_path, data),
                          (entry.stamp_path, verified)):
        if content:
            with open(path, "wb") as f:
                f.write(content)
    special = _plant(entry, flags)
    vc.store._verified_here.clear()

    m = vc.load_manifest(entry.manifest_path)
    assert m is None or isinstance(m, dict)
    try:
        got = entry.try_read()
    except vc.Damaged:
        assert special, "a damaged entry without any special file in it"
        got = None
    if got is not None:
        m = vc.load_manifest(entry.manifest_path, key)
        assert m is not None and m["complete"]
        assert got.shape == (m["n"], *m["item_shape"]) and got.dtype == vc.DTYPES[m["dtype"]]
        assert not got.flags.writeable
        flat = np.ascontiguousarray(got).reshape(m["n"], -1).view(np.uint8)
        for k, crc in enumerate(m["chunks"]):  # nothing is returned unless its CRC matches
            rows = flat[k * m["chunk"]:(k + 1) * m["chunk"]]
            assert zlib.crc32(rows.tobytes()) == crc, f"chunk {k} returned with a bad CRC"
        del got, flat
    info = vc.info(ROOT)
    assert len(info["entries"]) == 1
    vc.clear(ROOT)
    assert os.listdir(OUTSIDE) == ["secret.json"]
    with open(os.path.join(OUTSIDE, "secret.json"), "rb") as f:
        assert f.read() == _OUTSIDE_TEXT


if __name__ == "__main__":
    _harness.main(one_input)
