"""Detection by content, never by extension: one predicate per format, each asking what the
loaders that read that format ask of the first bytes. formats/interpretations.py puts them in
order with their readers."""
from __future__ import annotations

import json
import struct

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
    """A first header block tarfile accepts: tarfile.TarInfo.frombuf checks nothing but the
    header checksum (no 'ustar' magic), so pre-POSIX V7 archives open too."""
    if end - start < 512:
        return False
    block = bytes(buf[start:start + 512])
    if block.count(0) == 512:
        return False              # an end-of-archive block: tarfile opens no member from it
    stored = _tar_number(block[148:156])
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:])
    return stored is not None and stored in (unsigned, signed)


def _tar_number(field: bytes) -> int | None:
    """tarfile.nti: base-256 when the first byte is 0o200 or 0o377, else octal up to a NUL."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    text = field.split(b"\0", 1)[0]
    try:
        return int(text.decode("ascii").strip() or "0", 8)
    except (UnicodeDecodeError, ValueError):
        return None


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


def is_zip(buf: Buffer, start: int, end: int) -> bool:
    # torch's _is_zipfile checks for a local header at byte 0; numpy.load also opens an empty
    # archive (its end record at byte 0). A zip appended elsewhere: interpretations.py.
    return head(buf, start, end, 4).startswith(ZIP_MAGICS)


def is_npy(buf: Buffer, start: int, end: int) -> bool:
    return head(buf, start, end, 6) == NPY_MAGIC


def is_gzip(buf: Buffer, start: int, end: int) -> bool:
    return head(buf, start, end, 2) == GZIP_MAGIC


def is_bz2(buf: Buffer, start: int, end: int) -> bool:
    h = head(buf, start, end, 4)
    return h.startswith(BZ2_MAGIC) and h[3:4].isdigit()


def is_xz(buf: Buffer, start: int, end: int) -> bool:
    return head(buf, start, end, 6) == XZ_MAGIC


def is_lz4(buf: Buffer, start: int, end: int) -> bool:
    return head(buf, start, end, 4) == LZ4_MAGIC


def is_lfs_pointer(buf: Buffer, start: int, end: int) -> bool:
    return head(buf, start, end, len(LFS_PREFIX)) == LFS_PREFIX


def is_lzma(buf: Buffer, start: int, end: int) -> bool:
    return is_lzma_alone(head(buf, start, end, 13))


def is_zlib_stream(buf: Buffer, start: int, end: int) -> bool:
    return is_zlib(head(buf, start, end, 2))


def is_pickle(buf: Buffer, start: int, end: int) -> bool:
    # An empty member is read as a pickle too: the reader reports "empty: no pickle data".
    return start == end or looks_like_pickle(head(buf, start, end, 2))


def anything(buf: Buffer, start: int, end: int) -> bool:
    return True
