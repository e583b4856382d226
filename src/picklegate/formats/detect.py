"""Detection by content, never by extension: one predicate per format, each asking what the
loaders that read that format ask of the first bytes. formats/interpretations.py puts them in
order with their readers."""
from __future__ import annotations

import struct
from typing import Callable

from picklegate.machine import Buffer, _OPCODES

LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
GZIP_MAGIC = b"\x1f\x8b"
BZ2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
LZ4_MAGIC = b"\x04\x22\x4d\x18"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE = 0x184D2A50
ZLIB_PREFIX = b"\x78"
ZFILE_PREFIX = b"ZF"
PROTO = 0x80
# Member names that say "this is a pickle" even when its first byte could be something else.
PICKLE_NAMES = (".pkl", ".pickle", ".debug_pkl", ".joblib", ".pt", ".pth", ".bin", ".dill")


def head(buf: Buffer, start: int, end: int, n: int = 64) -> bytes:
    return bytes(buf[start:min(start + n, end)])


def is_zlib(h: bytes) -> bool:
    # The only loader of bare zlib streams is joblib, which picks its zlib compressor by the
    # prefix b'\x78' alone (joblib/compressor.py _ZLIB_PREFIX, numpy_pickle_utils
    # _detect_compressor). Any other RFC 1950 header is read by nothing, and many are the start
    # of a protocol-0 pickle (b"(S'" is one). The rest of RFC 1950 (header checksum, no preset
    # dictionary: joblib passes none) keeps text such as b"xyz" out; joblib cannot read it and
    # nothing else does.
    return len(h) >= 2 and h[:1] == ZLIB_PREFIX and (h[0] * 256 + h[1]) % 31 == 0 \
        and not h[1] & 0x20


def is_zstd(h: bytes) -> bool:
    # A zstd frame, or a skippable frame (magic 0x184D2A50..0x184D2A5F, little-endian), which
    # libzstd's streaming decoder (zstandard.open, so pandas) skips before the next frame.
    return h.startswith(ZSTD_MAGIC) or (
        len(h) >= 4 and int.from_bytes(h[:4], "little") & 0xFFFFFFF0 == ZSTD_SKIPPABLE)


def is_zfile(h: bytes) -> bool:
    # joblib < 0.10 compressed files; joblib checks this prefix before any compressor's.
    return h.startswith(ZFILE_PREFIX)


def is_lzma_alone(h: bytes) -> bool:
    """An .lzma ("alone") header that liblzma's FORMAT_AUTO decoder accepts (lzma.LZMAFile,
    so pandas' .xz reader and joblib's 'lzma' compressor): alone_decoder.c with picky=true."""
    if len(h) < 13 or not _lclppb_ok(h[0]):
        return False
    dict_size = int.from_bytes(h[1:5], "little")
    size = int.from_bytes(h[5:13], "little")
    return _picky_dict_size(dict_size) and (size == 2**64 - 1 or size < 2**38)


def _lclppb_ok(byte: int) -> bool:
    # liblzma lzma_decoder.c lzma_lzma_lclppb_decode: byte <= (4*5+4)*9+8, then lc + lp <= 4.
    if byte > (4 * 5 + 4) * 9 + 8:
        return False
    rest = byte % (9 * 5)          # what is left after pb
    lp, lc = divmod(rest, 9)
    return lc + lp <= 4


def _picky_dict_size(size: int) -> bool:
    # alone_decoder.c: "We allow only dictionary sizes that are 2^n or 2^n + 2^(n-1) or
    # UINT32_MAX", computed in uint32_t arithmetic (so 0 passes: 0 - 1 wraps, ++d wraps back).
    if size == 0xFFFFFFFF:
        return True
    d = (size - 1) & 0xFFFFFFFF
    for shift in (2, 3, 4, 8, 16):
        d |= d >> shift
    return (d + 1) & 0xFFFFFFFF == size


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
    import json                         # (start-up: only for bytes shaped like one)

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


Detector = Callable[[Buffer, int, int], bool]


def by_magic(*magics: bytes) -> Detector:
    """Bytes that start with one of ``magics``."""
    return lambda buf, start, end: head(buf, start, end).startswith(magics)


def by_head(predicate: Callable[[bytes], bool]) -> Detector:
    """A predicate over the first 64 bytes, as a detector."""
    return lambda buf, start, end: predicate(head(buf, start, end))


def is_bz2(h: bytes) -> bool:
    return h.startswith(BZ2_MAGIC) and h[3:4].isdigit()


def is_pickle(buf: Buffer, start: int, end: int) -> bool:
    # An empty member is read as a pickle too: the reader reports "empty: no pickle data".
    return start == end or looks_like_pickle(head(buf, start, end, 2))


def anything(buf: Buffer, start: int, end: int) -> bool:
    return True
