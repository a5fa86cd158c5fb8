"""Zip members (a ``.keras`` file, torch.save's zip format), checked before they
are read and read a bounded chunk at a time."""
from __future__ import annotations

import zipfile
from typing import Optional

from ._common import WeightsError

# zlib's bound on what deflate can produce: a 258-byte match per two bits, plus the
# odd literal and block header
_DEFLATE_MAX_RATIO = 1032
_ZIP_METHODS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}
_ZIP_CHUNK = 1 << 22  # what one read of a member may decompress


def _zip_check(info: zipfile.ZipInfo, path: str, what: str, archive_size: int,
               limit: Optional[int] = None) -> None:
    """Refuse a zip member whose declared size cannot be trusted before anything of
    it is read: methods other than stored and deflate (neither PyTorch nor Keras
    writes them, and zipfile decompresses a bzip2 or LZMA member's whole input in
    one call, however large its output), a stored member whose sizes differ or that
    reaches past the archive, a deflated one claiming more than deflate can
    produce from its compressed bytes, and one larger than ``limit``."""
    method = info.compress_type
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        name = _ZIP_METHODS.get(method, f"compression method {method}")
        raise WeightsError(f"{path}: {what} is compressed with {name}, which neither PyTorch "
                           f"nor Keras writes; refused (vggtl reads stored and deflated zip "
                           f"members only)")
    if info.flag_bits & 0x1:
        raise WeightsError(f"{path}: {what} is encrypted; refused")
    if method == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise WeightsError(f"{path}: {what} is stored with {info.compress_size} bytes for "
                           f"{info.file_size} (corrupt file)")
    if method == zipfile.ZIP_DEFLATED and \
            info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
        raise WeightsError(f"{path}: {what} claims {info.file_size} bytes from "
                           f"{info.compress_size} deflated bytes, more than deflate can "
                           f"produce (a decompression bomb?); refused")
    if info.header_offset + info.compress_size > archive_size:
        raise WeightsError(f"{path}: {what} reaches past the end of the file (truncated "
                           f"or corrupt file)")
    if limit is not None and info.file_size > limit:
        raise WeightsError(f"{path}: {what} holds {info.file_size} bytes, expected at most "
                           f"{limit}; refused")


def _zip_read_into(f, buf: memoryview) -> int:
    """Fill ``buf`` from the open member ``f`` a bounded chunk at a time (a read of
    n bytes decompresses at most about n); returns the bytes read."""
    pos, n = 0, buf.nbytes
    while pos < n:
        chunk = f.read(min(n - pos, _ZIP_CHUNK))
        if not chunk:
            break
        buf[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    return pos
