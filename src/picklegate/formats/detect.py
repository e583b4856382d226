"""Detection by content, never by extension: the first bytes decide which reader runs."""
from __future__ import annotations

import json
import struct

from picklegate.formats.base import Analysis, Context, NotThisFormat, Reader
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
    from picklegate.formats import archive, compression, inert, numpy, tar

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
    if is_zstd(h):
        return compression.read_zstd
    if is_zfile(h):
        return compression.read_zfile
    if h.startswith(LFS_PREFIX):
        return inert.read_lfs_pointer
    if is_tar(buf, start, end):
        return tar.read_tar
    if is_safetensors(buf, start, end):
        return inert.read_safetensors
    if is_lzma_alone(h):
        return _or_else(compression.read_lzma, _without_magic(buf, start, end, h))
    return _without_magic(buf, start, end, h)


def _without_magic(buf: Buffer, start: int, end: int, h: bytes) -> Reader:
    from picklegate.formats import compression, inert, pickle

    if is_zlib(h):
        return compression.read_zlib
    if looks_like_pickle(h):
        return pickle.read_pickle
    if start == end:
        return pickle.read_pickle     # reports "empty"
    return inert.read_unknown


def _or_else(first: Reader, then: Reader) -> Reader:
    """``first``, or ``then`` when ``first`` finds the bytes are not its format after all."""
    def reader(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
        try:
            return first(buf, start, end, ctx, analysis)
        except NotThisFormat:
            return then(buf, start, end, ctx, analysis)
    return reader
