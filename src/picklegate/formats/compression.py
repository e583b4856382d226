"""Compressed streams: gzip, bz2, xz, lzma (alone), zlib (joblib), lz4 frame, zstd (pandas),
and joblib's pre-0.10 ``ZF`` files.

Decompression is streamed in bounded chunks against the file's budget, so a bomb ends in a
'limit-exceeded' finding instead of exhausting memory. The decompressed bytes are analysed as
a member named after the codec (``gzip`` for a top-level file, ``outer/a.pkl.gz!gzip``
inside an archive), and the format reads "inner+codec".
"""
from __future__ import annotations

import bz2
import contextlib
import lzma
import mmap
import zlib
from typing import IO, Any, Callable

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context, NotThisFormat, analyse_member
from picklegate.limits import checkpoint, how_to_raise
from picklegate.machine import Buffer

CHUNK = 1 << 20

Decompressor = Any   # zlib/bz2/lzma/lz4 decompressor objects share decompress/unused_data/eof
DECODE_ERRORS: tuple[type[Exception], ...] = (EOFError, OSError, ValueError, zlib.error,
                                              lzma.LZMAError)


def _zlib() -> Decompressor:
    # joblib's BinaryZlibFile: one zlib.decompressobj(15) for the whole file, so one stream.
    return zlib.decompressobj(wbits=15)


def _gzip() -> Decompressor:
    return zlib.decompressobj(wbits=31)


def _bz2() -> Decompressor:
    return bz2.BZ2Decompressor()


def _lzma_auto() -> Decompressor:
    # Every loader of .xz and .lzma files (lzma.LZMAFile in pandas and joblib, lzma.decompress)
    # uses FORMAT_AUTO, and starts a new FORMAT_AUTO decoder after each stream: an xz stream may
    # follow an .lzma one and the reverse, and .lzma headers are checked by liblzma's "picky"
    # rules (detect.is_lzma_alone).
    return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO)


class ExpansionLimit(Exception):
    pass


# Decompressed data up to this size stays in memory; beyond it, it goes to an unlinked
# temporary file that the analysis reads through a read-only mmap, so the memory a bomb costs
# is flat (sources.py spools large input files the same way, for the same reason).
SPILL_AT = 8 << 20


class Spill:
    """Where decompressed bytes go: memory while small, then an unlinked temporary file."""

    def __init__(self) -> None:
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0
        # CRC-32 of what was written (zip members check it), computed on the way: reading the
        # spilled bytes back would map every page of them into the process.
        self.crc = 0

    def write(self, data: bytes) -> None:
        if self._file is None and self.size + len(data) > SPILL_AT:
            import tempfile             # (start-up: only when something is that large)

            self._file = tempfile.TemporaryFile(prefix="picklegate-")  # noqa: SIM115 - kept
            self._file.write(self._memory)
            self._memory = bytearray()
        if self._file is None:
            self._memory += data
        else:
            self._file.write(data)
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)

    def truncate(self, size: int) -> None:
        """Drop what was written after ``size`` bytes (a later stream that failed)."""
        if self._file is None:
            del self._memory[size:]
        else:
            self._file.seek(size)
            self._file.truncate()
        self.size = size
        self.crc = -1               # no longer known; only multi-stream codecs truncate

    def result(self) -> Buffer:
        """The bytes written: bytes when small, else a read-only mmap of the file. The mapping
        keeps its own descriptor; every page was written (no holes), so no access faults."""
        if self._file is None:
            return bytes(self._memory)
        with self._file:
            self._file.flush()
            return mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def decompress(buf: Buffer, start: int, end: int, make: Callable[[], Decompressor],
               ctx: Context, multi: bool) -> tuple[Buffer, int]:
    """Decompress ``buf[start:end]``; return (data, offset where compressed data ended).

    ``multi``: concatenated streams (gzip members, bz2/xz streams, zstd frames) are decompressed
    in turn, as the loaders' file readers do. A later stream that fails to decompress ends the
    data there: what came before is still analysed, and the caller reports the rest as
    trailing bytes. The data is counted against the file's expansion budget as it is produced
    and held as :class:`Spill` holds it.
    """
    sink = Spill()
    try:
        pos = expand_stream(buf, start, end, make(), ctx, sink)
        while multi and _more_streams(buf, pos, end):
            good = sink.size
            try:
                pos = expand_stream(buf, pos, end, make(), ctx, sink)
            except DECODE_ERRORS + _zstd_errors() + (RuntimeError,):   # lz4: see read_lz4
                sink.truncate(good)
                break
        return sink.result(), pos
    except BaseException:
        sink.close()
        raise


def expand_stream(buf: Buffer, pos: int, end: int, dec: Decompressor, ctx: Context,
                  sink: Spill) -> int:
    """Decompress one stream from ``pos`` into ``sink``, CHUNK bytes of output at a time;
    return where its compressed data ended. Raises ExpansionLimit before the file's
    decompressed bytes (``ctx.budget.expanded``) pass the limit. Every byte produced counts,
    kept or not: a bomb that ran out of budget leaves none for the next member to spend."""
    pending = b""
    while not dec.eof:
        checkpoint()
        room = ctx.limits.max_expanded_bytes - ctx.budget.expanded
        if room <= 0:
            raise ExpansionLimit()
        # zlib hands back what it did not consume; bz2/lzma/lz4/zstd buffer it themselves and
        # say whether they need more input.
        if not pending and getattr(dec, "needs_input", True):
            if pos >= end:
                if getattr(dec, "ends_with_input", False):
                    break               # raw LZMA1 without an end marker: its data is all
                raise EOFError("compressed data ends before the end of the stream")
            pending = bytes(buf[pos:min(pos + CHUNK, end)])
            pos += len(pending)
        out = dec.decompress(pending, min(room, CHUNK))
        ctx.budget.expanded += len(out)
        sink.write(out)
        pending = getattr(dec, "unconsumed_tail", b"")
    return pos - len(dec.unused_data or b"")


def _more_streams(buf: Buffer, pos: int, end: int) -> bool:
    return pos < end and any(b != 0 for b in bytes(buf[pos:min(end, pos + 64)]))


def _expand(codec: str, make: Callable[[], Decompressor], multi: bool, buf: Buffer, start: int,
            end: int, ctx: Context, analysis: Analysis) -> Buffer | None:
    """The decompressed member, or None after a finding says why there is none.
    Raises the codec's errors (for the caller to turn into a finding or NotThisFormat)."""
    try:
        data, stop = decompress(buf, start, end, make, ctx, multi)
    except ExpansionLimit:
        analysis.finding(ctx, FindingKind.LIMIT, start,
                         expansion_message(f"{codec} data", ctx))
        return None
    if not _all_zero(buf, stop, end):
        analysis.finding(ctx, FindingKind.MALFORMED, stop,
                         f"{end - stop} bytes after the end of the {codec} stream")
    return data


def expansion_message(what: str, ctx: Context) -> str:
    return (f"{what} expands past the limit of {ctx.limits.max_expanded_bytes} decompressed "
            "bytes per file (a decompression bomb, or a larger model: raise it with "
            f"{how_to_raise('max_expanded_bytes')}); not analysed")


def _all_zero(buf: Buffer, start: int, end: int) -> bool:
    """No byte but NUL in ``buf[start:end]``, read CHUNK bytes at a time (never copied whole)."""
    for pos in range(start, end, CHUNK):
        if bytes(buf[pos:min(pos + CHUNK, end)]).strip(b"\x00"):
            return False
        release(buf, pos, min(pos + CHUNK, end))
    return True


def release(buf: Buffer, start: int, end: int) -> None:
    """Unmap pages of a spilled mapping that were read once and are done with, so a pass over
    a large member does not keep it resident (madvise(2) MADV_DONTNEED: the pages of a shared
    file mapping are dropped from this process and read again from the file if touched)."""
    if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        first = start - start % mmap.PAGESIZE
        with contextlib.suppress(OSError, ValueError):
            buf.madvise(mmap.MADV_DONTNEED, first, end - first)


def _read(codec: str, make: Callable[[], Decompressor], multi: bool,
          magic: bool = True, errors: tuple[type[Exception], ...] = ()) -> Callable[..., str]:
    """A reader for one codec. ``magic=False``: the format was recognised without a magic
    number (.lzma headers), so data that does not decompress is not this format at all."""
    def reader(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
        try:
            data = _expand(codec, make, multi, buf, start, end, ctx, analysis)
        except DECODE_ERRORS + _zstd_errors() + errors as exc:
            if not magic:
                raise NotThisFormat(f"not {codec} data: {exc}") from exc
            analysis.finding(ctx, FindingKind.MALFORMED, start,
                             f"{codec} data cannot be decompressed: {exc}")
            return codec
        if data is None:
            return codec
        inner = analyse_member(data, 0, len(data), ctx.child(codec, sep="!"), analysis)
        return f"{inner}+{codec}"
    return reader


read_gzip = _read("gzip", _gzip, multi=True)
read_bz2 = _read("bz2", _bz2, multi=True)
read_xz = _read("xz", _lzma_auto, multi=True)
read_lzma = _read("lzma", _lzma_auto, multi=True, magic=False)
read_zlib = _read("zlib", _zlib, multi=False)


def read_lz4(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    try:
        import lz4.frame  # type: ignore[import-untyped]
    except ImportError:
        analysis.finding(ctx, FindingKind.UNSUPPORTED, start,
                         "lz4-compressed data, and the lz4 package is not installed, so it "
                         "cannot be scanned: pip install 'picklegate[lz4]'")
        return "lz4"
    # lz4.frame raises RuntimeError ("LZ4F_decompress failed with code: ...") on corrupt
    # frames (python-lz4 lz4/frame/_frame.c); only decompression is inside that except.
    return _read("lz4", lz4.frame.LZ4FrameDecompressor, multi=True,
                 errors=(RuntimeError,))(buf, start, end, ctx, analysis)


# --------------------------------------------------------------------------------------------
# zstd: pandas.read_pickle('x.pkl.zst') reads zstandard.open(f, 'rb'), a stream_reader that
# decodes frame after frame (a read stops short at a frame boundary and the next read carries
# on) and skips skippable frames, as libzstd's ZSTD_decompressStream does. So: every frame in
# turn, like gzip members.

# libzstd rejects a block that regenerates more than ZSTD_BLOCKSIZE_MAX bytes, and every block
# that regenerates anything takes at least 4 input bytes (3-byte header + 1 RLE byte). Feeding
# STEP bytes at a time therefore yields at most (STEP // 3 + 1) blocks: ~11 MiB for 256 bytes,
# the most held beyond what the caller asked for.
ZSTD_BLOCK_MAX = 128 * 1024
ZSTD_STEP = 256


def _zstd_errors() -> tuple[type[Exception], ...]:
    try:
        import zstandard
    except ImportError:
        return ()
    return (zstandard.ZstdError,)


class ZstdFrame:
    """One zstd (or skippable) frame behind the interface of lzma/bz2 decompressors:
    ``decompress(data, max_length)`` returns at most ``max_length`` bytes, ``needs_input``,
    ``eof``, ``unused_data``. zstandard's decompressobj returns everything a chunk holds, so it
    is fed ZSTD_STEP bytes at a time and what exceeds max_length waits in ``_ready``."""

    def __init__(self, zstandard: Any) -> None:
        # pandas builds zstandard.ZstdDecompressor() with no arguments: same window limit.
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._input = memoryview(b"")
        self._ready = bytearray()

    @property
    def eof(self) -> bool:
        return bool(self._dobj.eof) and not self._ready

    @property
    def needs_input(self) -> bool:
        return not self._input and not self._ready and not self._dobj.eof

    @property
    def unused_data(self) -> bytes:
        return bytes(self._dobj.unused_data) + bytes(self._input)

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if data:
            self._input = memoryview(bytes(self._input) + data)
        while len(self._ready) < max_length and self._input and not self._dobj.eof:
            piece, self._input = self._input[:ZSTD_STEP], self._input[ZSTD_STEP:]
            self._ready += self._dobj.decompress(piece)
        out = bytes(self._ready[:max_length])
        del self._ready[:max_length]
        return out


def read_zstd(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    try:
        import zstandard
    except ImportError:
        analysis.finding(ctx, FindingKind.UNSUPPORTED, start,
                         "zstd-compressed data, and the zstandard package is not installed, so "
                         "it cannot be scanned: pip install 'picklegate[zstd]'")
        return "zstd"
    return _read("zstd", lambda: ZstdFrame(zstandard), multi=True)(buf, start, end, ctx,
                                                                   analysis)


# --------------------------------------------------------------------------------------------
# joblib < 0.10 "ZF" files, which joblib 1.x still loads (numpy_pickle_compat.read_zfile):
# b'ZF', the decompressed length as hex in a _MAX_LEN-wide field, one more space in files from
# joblib <= 0.8.4 on Python 2, then one zlib stream (wbits 15); then ZipNumpyUnpickler, a plain
# pickle whose arrays live in companion files.

ZFILE_PREFIX = b"ZF"
ZFILE_MAX_LEN = len(hex(2**64))     # joblib's _MAX_LEN = len(hex_str(2**64)) = 19


def read_zfile(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    field_end = start + len(ZFILE_PREFIX) + ZFILE_MAX_LEN
    length = _zfile_length(bytes(buf[start + len(ZFILE_PREFIX):min(field_end, end)]))
    if length is None:
        analysis.finding(ctx, FindingKind.MALFORMED, start,
                         "joblib ZF header: the length field is not a non-negative hexadecimal "
                         "number (joblib cannot read it either)")
        return "zfile"
    data_at = field_end + 1 if bytes(buf[field_end:field_end + 1]) == b" " else field_end
    try:
        data = _expand("zfile", _zlib, False, buf, min(data_at, end), end, ctx, analysis)
    except DECODE_ERRORS as exc:
        analysis.finding(ctx, FindingKind.MALFORMED, min(data_at, end),
                         f"joblib ZF zlib data cannot be decompressed: {exc}")
        return "zfile"
    if data is None:
        return "zfile"
    if len(data) != length:
        # joblib asserts the length (skipped under python -O), so the pickle is still analysed.
        analysis.finding(ctx, FindingKind.MALFORMED, start,
                         f"joblib ZF header says {length} bytes, the zlib data holds "
                         f"{len(data)}")
    inner = analyse_member(data, 0, len(data), ctx.child("zfile", sep="!"), analysis)
    return f"{inner}+zfile"


def _zfile_length(field: bytes) -> int | None:
    # read_zfile: int(length, 16) over exactly this field (Python's int() strips whitespace and
    # accepts '0x' and underscores); zlib.decompress rejects a negative bufsize.
    if len(field) < ZFILE_MAX_LEN:
        return None
    try:
        length = int(field, 16)
    except ValueError:
        return None
    return length if length >= 0 else None
