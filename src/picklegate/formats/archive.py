"""Zip archives, read defensively: PyTorch checkpoints, TorchScript, .npz, and plain zips.

Loaders disagree about zips: Python's zipfile trusts the central directory and checks each
local header's name; PyTorch's reader trusts the central directory; a streaming reader walks
local headers. So every member is located from both the central directory and the local
headers, every distinct byte range either points at is analysed, and every disagreement is an
'archive-anomaly' finding. Bad CRCs and encryption bits are reported and the bytes scanned.
"""
from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context, analyse_member
from picklegate.formats.compression import ExpansionLimit, decompress
from picklegate.formats.torch import TorchLayout
from picklegate.machine import Buffer

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
EOCD_SIG = b"PK\x05\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
ZIP64_EOCD_SIG = b"PK\x06\x06"
LOCAL = struct.Struct("<4sHHHHHIIIHH")       # 30 bytes
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
EOCD = struct.Struct("<4sHHHHIIH")            # 22 bytes
ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")     # 56 bytes
STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
FLAG_ENCRYPTED, FLAG_DESCRIPTOR, FLAG_UTF8 = 0x1, 0x8, 0x800


@dataclass(frozen=True)
class Header:
    """One member as a header (central or local) describes it."""

    name: str
    method: int
    flags: int
    crc: int
    csize: int
    usize: int
    header_offset: int         # absolute offset of the local header
    source: str                # "central directory" or "local header"


@dataclass(frozen=True)
class Span:
    """A member's compressed bytes located through its local header."""

    header: Header
    data_start: int
    data_end: int


def read_zip(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    reader = _ZipReader(buf, start, end, ctx, analysis)
    spans = reader.members()
    layout = TorchLayout([s.header.name for s in spans])
    # Pickles first: their persistent ids say which data/ records are raw tensor storage.
    for span in sorted(spans, key=lambda s: (not layout.is_pickle_member(s.header.name),
                                             s.data_start)):
        if layout.is_storage(span.header.name):
            continue
        if ctx.budget.members >= ctx.limits.max_members:
            reader.finding(FindingKind.LIMIT, span.header.header_offset,
                           f"more than {ctx.limits.max_members} members; the rest not analysed")
            break
        ctx.budget.members += 1
        before = len(analysis.out.persistent_ids)
        reader.analyse(span)
        layout.record_storages(span.header.name, analysis.out.persistent_ids[before:])
    analysis.notes.extend(layout.notes(ctx.member))
    return layout.format


ZIP_FORMATS = ("torch-zip", "torchscript", "npz", "zip")


def zip_from_end(buf: Buffer, start: int, end: int) -> tuple[int, int] | None:
    """Where the zip that zipfile finds from the end of ``buf`` starts and ends, if it lists a
    member: zipfile opens an archive by its end record whatever precedes it
    (zipfile._EndRecData, and ``concat`` in _RealGetContents), so a pickle, an npy or unknown
    bytes with a zip appended still open as a zip."""
    probe = _ZipReader(buf, start, end, Context(), Analysis())
    headers, cd_start = probe._central_directory()
    if not headers:
        return None
    eocd = buf.find(EOCD_SIG, cd_start, end)
    first = min(h.header_offset for h in headers)
    return max(start, min(first, cd_start)), (eocd + EOCD.size if eocd >= 0 else end)


class _ZipReader:
    def __init__(self, buf: Buffer, start: int, end: int, ctx: Context,
                 analysis: Analysis) -> None:
        self.buf, self.start, self.end = buf, start, end
        self.ctx, self.analysis = ctx, analysis

    def finding(self, kind: FindingKind, offset: int | None, message: str) -> None:
        self.analysis.finding(self.ctx, kind, offset, message)

    def anomaly(self, offset: int | None, message: str) -> None:
        self.finding(FindingKind.ARCHIVE, offset, message)

    # -- locating members -----------------------------------------------------------------

    def members(self) -> list[Span]:
        central, cd_start = self._central_directory()
        spans: dict[tuple[int, int], Span] = {}
        seen_names: set[str] = set()
        for header in central:
            self._check_name(header)
            if header.name in seen_names:
                self.anomaly(header.header_offset, f"duplicate member name {header.name!r}; "
                                                   "loaders disagree on which copy they read")
            seen_names.add(header.name)
            for span in self._spans_for(header):
                spans.setdefault((span.data_start, span.data_end), span)
        self._hidden_locals(spans, central, cd_start)
        return list(spans.values())

    def _read(self, offset: int, size: int) -> bytes:
        if offset < self.start or offset + size > self.end:
            return b""
        return bytes(self.buf[offset:offset + size])

    def _central_directory(self) -> tuple[list[Header], int]:
        tail_start = max(self.start, self.end - (EOCD.size + 0xFFFF))
        eocd = self.buf.find(EOCD_SIG, tail_start, self.end)
        last = eocd
        while last >= 0:      # the last signature: an earlier one may sit inside the comment
            eocd, last = last, self.buf.find(EOCD_SIG, last + 1, self.end)
        if eocd < 0 or eocd + EOCD.size > self.end:
            self.anomaly(None, "no end-of-central-directory record (truncated zip?); only local "
                               "headers were read")
            return [], self.end
        _, _, _, _, count, cd_size, cd_offset, _ = EOCD.unpack(self._read(eocd, EOCD.size))
        count, cd_size, cd_offset, cd_end = self._zip64(eocd, count, cd_size, cd_offset)
        cd_start = cd_end - cd_size
        if self.start + cd_offset != cd_start:
            self.anomaly(cd_start, f"central directory is at offset {cd_start - self.start} but "
                                   f"the end record says {cd_offset} (data prepended or moved)")
        shift = cd_start - (self.start + cd_offset)
        headers = []
        pos = cd_start
        for index in range(count):
            raw = self._read(pos, CENTRAL.size)
            if len(raw) < CENTRAL.size or raw[:4] != CENTRAL_SIG:
                self.anomaly(pos, f"central directory entry {index} is missing or corrupt")
                break
            header, pos = self._central_entry(raw, pos, shift)
            headers.append(header)
        return headers, max(self.start, min(cd_start, self.end))

    def _zip64(self, eocd: int, count: int, size: int,
               offset: int) -> tuple[int, int, int, int]:
        """(entries, directory size, directory offset, where the directory ends)."""
        locator = eocd - 20
        if locator < self.start or self._read(locator, 4) != ZIP64_LOCATOR_SIG:
            return count, size, offset, eocd
        # As zipfile does: the zip64 end record sits right before its locator.
        record = locator - ZIP64_EOCD.size
        raw = self._read(record, ZIP64_EOCD.size)
        if len(raw) < ZIP64_EOCD.size or raw[:4] != ZIP64_EOCD_SIG:
            self.anomaly(locator, "zip64 locator without a zip64 end record before it")
            return count, size, offset, eocd
        fields = ZIP64_EOCD.unpack(raw)
        return fields[7], fields[8], fields[9], record

    def _central_entry(self, raw: bytes, pos: int, shift: int) -> tuple[Header, int]:
        (_, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
         _, _, _, offset) = CENTRAL.unpack(raw)
        name = self._name(self._read(pos + CENTRAL.size, name_len), flags)
        extra = self._read(pos + CENTRAL.size + name_len, extra_len)
        usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
        header = Header(name, method, flags, crc, csize, usize, self.start + offset + shift,
                        "central directory")
        return header, pos + CENTRAL.size + name_len + extra_len + comment_len

    @staticmethod
    def _name(raw: bytes, flags: int) -> str:
        # zipfile: UTF-8 when flag bit 11 is set, else cp437.
        return raw.decode("utf-8" if flags & FLAG_UTF8 else "cp437", "replace")

    def _local(self, offset: int) -> tuple[Header, int] | None:
        raw = self._read(offset, LOCAL.size)
        if len(raw) < LOCAL.size or raw[:4] != LOCAL_SIG:
            return None
        (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = LOCAL.unpack(raw)
        name = self._name(self._read(offset + LOCAL.size, name_len), flags)
        extra = self._read(offset + LOCAL.size + name_len, extra_len)
        usize, csize, _ = _zip64_extra(extra, usize, csize, 0)
        header = Header(name, method, flags, crc, csize, usize, offset, "local header")
        return header, offset + LOCAL.size + name_len + extra_len

    def _spans_for(self, central: Header) -> list[Span]:
        local = self._local(central.header_offset)
        if local is None:
            self.anomaly(central.header_offset, f"member {central.name!r}: the central directory "
                                                "points at no local header")
            return []
        header, data_start = local
        spans = [Span(central, data_start, data_start + central.csize)]
        if header.name != central.name:
            self.anomaly(central.header_offset,
                         f"member {central.name!r} is named {header.name!r} in its local header")
        if header.method != central.method:
            self.anomaly(central.header_offset, f"member {central.name!r}: compression method "
                                                "differs between local and central headers")
            spans.append(Span(header, data_start, data_start + central.csize))
        if not header.flags & FLAG_DESCRIPTOR and header.csize != central.csize:
            self.anomaly(central.header_offset, f"member {central.name!r}: local header size "
                                                f"{header.csize} != central size {central.csize}")
            spans.append(Span(header, data_start, data_start + header.csize))
        return spans

    def _hidden_locals(self, spans: dict[tuple[int, int], Span], central: list[Header],
                       cd_start: int) -> None:
        """Local headers the central directory does not list (a streaming reader sees them)."""
        listed = {h.header_offset for h in central}
        claimed = sorted((s.data_start, s.data_end) for s in spans.values())
        pos = self.buf.find(LOCAL_SIG, self.start, cd_start)
        while pos >= 0:
            inside = any(a <= pos < b for a, b in claimed)
            if pos not in listed and not inside:
                local = self._local(pos)
                if local is not None and not local[0].flags & FLAG_DESCRIPTOR:
                    header, data_start = local
                    self.anomaly(pos, f"local header for {header.name!r} is not listed in the "
                                      "central directory (hidden member); it was scanned")
                    span = Span(header, data_start, data_start + header.csize)
                    spans.setdefault((span.data_start, span.data_end), span)
                    claimed.append((span.data_start, span.data_end))
                elif local is not None:
                    self.anomaly(pos, "unlisted local header with a data descriptor; its size "
                                      "cannot be known, so it was not scanned")
            pos = self.buf.find(LOCAL_SIG, pos + 4, cd_start)

    def _check_name(self, header: Header) -> None:
        parts = header.name.replace("\\", "/").split("/")
        if header.name.startswith(("/", "\\")) or (len(header.name) > 1 and header.name[1] == ":") \
                or ".." in parts:
            self.anomaly(header.header_offset, f"member name {header.name!r} escapes the archive "
                                               "(absolute path or '..')")

    # -- reading members ------------------------------------------------------------------

    def analyse(self, span: Span) -> None:
        header = span.header
        if span.data_end > self.end:
            self.finding(FindingKind.MALFORMED, header.header_offset,
                         f"member {header.name!r} extends past the end of the archive")
            return
        if header.flags & FLAG_ENCRYPTED:
            self.anomaly(header.header_offset, f"member {header.name!r} has the encryption flag "
                                               "set; its bytes were scanned as they are")
        child = self.ctx.child(header.name, base=span.data_start)
        if header.method == STORED:
            self._check_crc(header, bytes(self.buf[span.data_start:span.data_end]))
            analyse_member(self.buf, span.data_start, span.data_end, child, self.analysis)
            return
        data = self._inflate(span)
        if data is not None:
            self._check_crc(header, data)
            analyse_member(data, 0, len(data), self.ctx.child(header.name), self.analysis)

    def _inflate(self, span: Span) -> bytes | None:
        header = span.header
        makers = {DEFLATED: lambda: zlib.decompressobj(-15), BZIP2: bz2.BZ2Decompressor,
                  LZMA: _ZipLzma}
        make = makers.get(header.method)
        if make is None:
            self.finding(FindingKind.UNSUPPORTED, header.header_offset,
                         f"member {header.name!r} uses compression method {header.method}, "
                         "which picklegate cannot read; it was not scanned")
            return None
        try:
            data, _ = decompress(self.buf, span.data_start, span.data_end, make, self.ctx,
                                 multi=False)
        except ExpansionLimit:
            self.finding(FindingKind.LIMIT, header.header_offset,
                         f"member {header.name!r} expands beyond "
                         f"{self.ctx.limits.max_expanded_bytes} bytes; not analysed")
            return None
        except (EOFError, ValueError, zlib.error, lzma.LZMAError, OSError) as exc:
            self.finding(FindingKind.MALFORMED, header.header_offset,
                         f"member {header.name!r} cannot be decompressed: {exc}")
            return None
        return data

    def _check_crc(self, header: Header, data: bytes) -> None:
        if header.flags & FLAG_ENCRYPTED:
            return
        if zlib.crc32(data) != header.crc:
            self.anomaly(header.header_offset, f"member {header.name!r} fails its CRC check; "
                                               "its bytes were scanned anyway")


class _ZipLzma:
    """Zip's LZMA method: a 4-byte header (version, properties size) before raw LZMA1 data."""

    def __init__(self) -> None:
        self._dec: lzma.LZMADecompressor | None = None
        self._head = b""
        self.eof = False
        self.unused_data = b""
        self.needs_input = True

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if self._dec is None:
            self._head += data
            if len(self._head) < 4:
                return b""
            size = struct.unpack("<H", self._head[2:4])[0]
            if len(self._head) < 4 + size:
                return b""
            props = lzma._decode_filter_properties(  # type: ignore[attr-defined]
                lzma.FILTER_LZMA1, self._head[4:4 + size])
            self._dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[props])
            data, self._head = self._head[4 + size:], b""
        out = self._dec.decompress(data, max_length)
        self.eof, self.unused_data = self._dec.eof, self._dec.unused_data
        self.needs_input = self._dec.needs_input
        if not out and not data and self.needs_input:
            self.eof = True   # raw LZMA1 without an end marker ends with its input
        return out


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace 0xFFFFFFFF fields with their zip64 extra-field values, in the spec's order."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos:pos + 4])
        body = extra[pos + 4:pos + 4 + size]
        if tag == 1:
            values = [struct.unpack("<Q", body[i:i + 8])[0] for i in range(0, len(body) - 7, 8)]
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
        pos += 4 + size
    return usize, csize, offset
