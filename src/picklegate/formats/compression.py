"""Compressed streams: gzip, bz2, xz, lzma (alone), zlib (joblib), lz4 frame.

Decompression is streamed in bounded chunks against the file's budget, so a bomb ends in a
'limit-exceeded' finding instead of exhausting memory. The decompressed bytes are analysed as
a member named after the codec (``gzip`` for a top-level file, ``outer/a.pkl.gz!gzip``
inside an archive), and the format reads "inner+codec".
"""
from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Any, Callable

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context, analyse_member
from picklegate.machine import Buffer

CHUNK = 1 << 20

Decompressor = Any   # zlib/bz2/lzma/lz4 decompressor objects share decompress/unused_data/eof


def _zlib() -> Decompressor:
    return zlib.decompressobj()


def _gzip() -> Decompressor:
    return zlib.decompressobj(wbits=31)


def _bz2() -> Decompressor:
    return bz2.BZ2Decompressor()


def _xz() -> Decompressor:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


def _lzma() -> Decompressor:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)


class ExpansionLimit(Exception):
    pass


def decompress(buf: Buffer, start: int, end: int, make: Callable[[], Decompressor],
               ctx: Context, multi: bool) -> tuple[bytes, int]:
    """Decompress ``buf[start:end]``; return (data, offset where compressed data ended).

    ``multi``: concatenated streams (gzip members, bz2/xz streams) are decompressed in turn,
    as the standard library's file readers do. A later stream that fails to decompress ends
    the data there: what came before is still analysed, and the caller reports the rest as
    trailing bytes.
    """
    out, pos = _one_stream(buf, start, end, make, ctx, 0)
    while multi and _more_streams(buf, pos, end):
        try:
            more, pos = _one_stream(buf, pos, end, make, ctx, len(out))
        except (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError):
            break
        out += more
    ctx.budget.expanded += len(out)
    return bytes(out), pos


def _one_stream(buf: Buffer, pos: int, end: int, make: Callable[[], Decompressor],
                ctx: Context, already: int) -> tuple[bytearray, int]:
    out = bytearray()
    dec = make()
    pending = b""
    while not dec.eof:
        room = ctx.limits.max_expanded_bytes - ctx.budget.expanded - already - len(out)
        if room <= 0:
            raise ExpansionLimit()
        # zlib hands back what it did not consume; bz2/lzma/lz4 buffer it themselves and say
        # whether they need more input.
        if not pending and getattr(dec, "needs_input", True):
            if pos >= end:
                raise EOFError("compressed data ends before the end of the stream")
            pending = bytes(buf[pos:min(pos + CHUNK, end)])
            pos += len(pending)
        out += dec.decompress(pending, min(room, CHUNK))
        pending = getattr(dec, "unconsumed_tail", b"")
    return out, pos - len(dec.unused_data or b"")


def _more_streams(buf: Buffer, pos: int, end: int) -> bool:
    return pos < end and any(b != 0 for b in bytes(buf[pos:min(end, pos + 64)]))


def _read(codec: str, make: Callable[[], Decompressor], multi: bool) -> Callable[..., str]:
    def reader(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
        try:
            data, stop = decompress(buf, start, end, make, ctx, multi)
        except ExpansionLimit:
            analysis.finding(ctx, FindingKind.LIMIT, start,
                             f"{codec} data expands beyond {ctx.limits.max_expanded_bytes} bytes "
                             "(decompression bomb, or raise the limit); not analysed")
            return codec
        except (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
            analysis.finding(ctx, FindingKind.MALFORMED, start,
                             f"{codec} data cannot be decompressed: {exc}")
            return codec
        trailing = bytes(buf[stop:end])
        if trailing.strip(b"\x00"):
            analysis.finding(ctx, FindingKind.MALFORMED, stop,
                             f"{len(trailing)} bytes after the end of the {codec} stream")
        inner = analyse_member(data, 0, len(data), ctx.child(codec, sep="!"), analysis)
        return f"{inner}+{codec}"
    return reader


read_gzip = _read("gzip", _gzip, multi=True)
read_bz2 = _read("bz2", _bz2, multi=True)
read_xz = _read("xz", _xz, multi=True)
read_lzma = _read("lzma", _lzma, multi=False)
read_zlib = _read("zlib", _zlib, multi=False)


def read_lz4(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    try:
        import lz4.frame  # type: ignore[import-untyped]
    except ImportError:
        analysis.finding(ctx, FindingKind.UNSUPPORTED, start,
                         "lz4-compressed data, and the lz4 package is not installed, so it "
                         "cannot be scanned: pip install 'picklegate[lz4]'")
        return "lz4"
    return _read("lz4", lz4.frame.LZ4FrameDecompressor, multi=True)(buf, start, end, ctx,
                                                                    analysis)
