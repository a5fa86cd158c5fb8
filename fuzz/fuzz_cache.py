"""Fuzz target: the feature cache's reader (a manifest, data.npy and the verified
stamp of one entry, as vggtl.cache finds them on disk).

An input is a flag byte, three little-endian uint32 lengths, then the bytes of
manifest.json, data.npy and verified (fuzz/seeds.py: cache_input). With the flag
set, the target wraps the manifest with its correct SHA-256, so that mutations
reach the checks of its fields and not only the digest.

Contract (vggtl.cache: "nothing is used unless its CRC matches the manifest"):
``load_manifest`` gives None or a manifest and never raises; ``try_read`` gives None
or a read-only array of the manifest's shape and dtype whose every chunk matches its
CRC, and never raises; ``info`` and ``clear`` of the folder never raise.

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
_HEAD = struct.Struct("<BIII")


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
    rewrap, lm, ld, lv = _HEAD.unpack_from(raw)
    body = raw[_HEAD.size:]
    manifest, data, verified = body[:lm], body[lm:lm + ld], body[lm + ld:lm + ld + lv]
    if rewrap & 1:
        try:
            m = json.loads(manifest)
            manifest = json.dumps({"manifest": m, "sha256": hashlib.sha256(
                vc._canonical(m)).hexdigest()}).encode()
        except Exception:
            pass  # not JSON (or not canonicalisable): taken as it is
    key = _key_of(manifest)
    entry = vc._Entry(ROOT, key)
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(entry.dir)
    for path, content in ((entry.manifest_path, manifest), (entry.data_path, data),
                          (entry.stamp_path, verified)):
        if content:
            with open(path, "wb") as f:
                f.write(content)
    vc._verified_here.clear()

    m = vc.load_manifest(entry.manifest_path)
    assert m is None or isinstance(m, dict)
    got = entry.try_read()
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


if __name__ == "__main__":
    _harness.main(one_input)
