"""Detection by content, never by extension: the first bytes decide which reader runs."""
from __future__ import annotations

import json
import struct

from picklegate.formats.base import Context, Reader
from picklegate.machine import Buffer, _OPCODES

LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
GZIP_MAGIC = b"\x1f\x8b"
BZ2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
LZ4_MAGIC = b"\x04\x22\x4d\x18"
PROTO = 0x80


def head(buf: Buffer, start: int, end: int, n: int = 64) -> bytes:
    return bytes(buf[start:min(start + n, end)])


def is_zlib(h: bytes) -> bool:
    # RFC 1950: CM=8 (deflate), CINFO<=7, and the header checksum (CMF*256+FLG) % 31 == 0.
    return len(h) >= 2 and h[0] & 0x0F == 8 and h[0] >> 4 <= 7 and \
        (h[0] * 256 + h[1]) % 31 == 0 and not h[1] & 0x20


def is_lzma_alone(h: bytes) -> bool:
    # .lzma ("alone") header: properties byte (lc/lp/pb, < 225), 4-byte dictionary size,
    # 8-byte uncompressed size. joblib's 'lzma' compressor writes this; 0x5d is the default.
    if len(h) < 13 or h[0] >= 225:
        return False
    dict_size = struct.unpack("<I", h[1:5])[0]
    for base in (dict_size, dict_size // 3 if dict_size % 3 == 0 else 0):
        if base >= 4096 and base & (base - 1) == 0:
            return True
    return False


def is_tar(buf: Buffer, start: int, end: int) -> bool:
    return end - start >= 512 and bytes(buf[start + 257:start + 262]) == b"ustar"


def is_safetensors(buf: Buffer, start: int, end: int) -> bool:
    """8-byte little-endian header length, then a JSON object of that length."""
    if end - start < 10:
        return False
    size = struct.unpack("<Q", bytes(buf[start:start + 8]))[0]
    if size < 2 or size > end - start - 8 or size > 100 * 1024 * 1024:
        return False
    if buf[start + 8] != ord("{"):
        return False
    try:
        header = json.loads(bytes(buf[start + 8:start + 8 + size]))
    except ValueError:
        return False
    return isinstance(header, dict)


def looks_like_pickle(h: bytes) -> bool:
    """Protocol 2+ starts with PROTO; protocol 0/1 with any opcode (and so may plain text)."""
    if not h:
        return False
    if h[0] == PROTO:
        return len(h) < 2 or h[1] <= 5
    return h[0] in _OPCODES


def reader_for(buf: Buffer, start: int, end: int, ctx: Context) -> Reader:
    from picklegate.formats import archive, compression, inert, numpy, pickle, tar

    h = head(buf, start, end)
    if h.startswith(ZIP_MAGICS):
        return archive.read_zip
    if h.startswith(NPY_MAGIC):
        return numpy.read_npy
    if h.startswith(GZIP_MAGIC):
        return compression.read_gzip
    if h.startswith(BZ2_MAGIC) and h[3:4].isdigit():
        return compression.read_bz2
    if h.startswith(XZ_MAGIC):
        return compression.read_xz
    if h.startswith(LZ4_MAGIC):
        return compression.read_lz4
    if h.startswith(LFS_PREFIX):
        return inert.read_lfs_pointer
    if is_tar(buf, start, end):
        return tar.read_tar
    if is_safetensors(buf, start, end):
        return inert.read_safetensors
    if is_lzma_alone(h):
        return compression.read_lzma
    if is_zlib(h):
        return compression.read_zlib
    if looks_like_pickle(h):
        return pickle.read_pickle
    if start == end:
        return pickle.read_pickle     # reports "empty"
    return inert.read_unknown
