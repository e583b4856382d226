"""Zip archives, read defensively: PyTorch checkpoints, TorchScript, .npz, and plain zips.

Loaders disagree about which members a zip has, so a zip is judged as every one of them
reads it. Three views are built from the same bytes (see :func:`discover`):

* ``zipfile`` (numpy.load for .npz, pandas): CPython Lib/zipfile.py ``_EndRecData``,
  ``_EndRecData64``, ``_RealGetContents``, ``ZipFile.open``;
* ``torch`` (torch.load, torch.jit.load): PyTorchStreamReader over miniz 3.0.2,
  ``mz_zip_reader_locate_header_sig`` and ``mz_zip_reader_read_central_dir``;
* ``stream``: a reader that walks local headers in file order from the first byte.

Local headers none of them reaches are found by searching only the bytes no view accounts
for. Every distinct byte range any of them reads is analysed once, and every disagreement
between the views is an 'archive-anomaly' finding naming the readers. Bad CRCs and
encryption bits are reported and the bytes scanned.
"""
from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context, analyse_member
from picklegate.formats.compression import (
    CHUNK,
    ExpansionLimit,
    Spill,
    expand_stream,
    expansion_message,
)
from picklegate.formats.torch import TorchLayout
from picklegate.limits import DEFAULT_LIMITS, Limits, checkpoint
from picklegate.machine import Buffer

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
EOCD_SIG = b"PK\x05\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
ZIP64_EOCD_SIG = b"PK\x06\x06"
DESCRIPTOR_SIG = b"PK\x07\x08"
LOCAL = struct.Struct("<4sHHHHHIIIHH")       # 30 bytes
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
EOCD = struct.Struct("<4sHHHHIIH")            # 22 bytes
ZIP64_LOCATOR = struct.Struct("<4sIQI")       # 20 bytes
ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")     # 56 bytes
# zipfile._EndRecData searches the last (1 << 16) + 22 bytes; miniz gives up ~64 KiB back.
TAIL = (1 << 16) + EOCD.size
STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
FLAG_ENCRYPTED, FLAG_DESCRIPTOR, FLAG_UTF8 = 0x1, 0x8, 0x800
U32 = 0xFFFFFFFF

ZIPFILE, TORCH, STREAM = "zipfile", "torch", "stream"
READER_NAMES = {ZIPFILE: "zipfile", TORCH: "torch's reader", STREAM: "a streaming reader"}


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
    """A member's compressed bytes as one reader locates them."""

    header: Header
    data_start: int
    data_end: int

    @property
    def key(self) -> tuple[int, int, int]:
        # The same bytes read with another method are another member (a streaming reader
        # uses the local header's method, zipfile and miniz the central one).
        return self.data_start, self.data_end, self.header.method


# Local headers parsed so far, by offset (None: no local header there).
LocalCache = dict[int, "tuple[Header, int] | None"]


@dataclass
class View:
    """The members one reader sees, or why it refuses the archive."""

    reader: str
    members: list[Span] = field(default_factory=list)
    headers: list[Header] = field(default_factory=list)   # central (or stream: local) ones
    error: str | None = None
    applies: bool = True           # False: this reader never opens these bytes as a zip
    eocd: int | None = None
    zip64_record: int | None = None
    directory: tuple[int, int] | None = None     # (absolute start, size)
    shift: int = 0                  # zipfile's "concat": bytes prepended to the archive
    truncated: bool = False         # stopped at the member limit
    accounted: list[tuple[int, int]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return READER_NAMES[self.reader]

    @property
    def opened(self) -> bool:
        return self.applies and self.error is None


@dataclass
class Discovery:
    """Every member any reader sees, the views themselves and what they disagree about."""

    views: dict[str, View]
    spans: list[Span]                        # one per distinct (range, method), first name
    names: dict[tuple[int, int, int], set[str]]   # every name a reader gives each range
    anomalies: list[tuple[int | None, str]]
    searched: int = 0                        # bytes searched for hidden local headers


# ---------------------------------------------------------------------------------------------
# reading


def read_zip(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    found = discover(buf, start, end, ctx.limits)
    reader = _MemberReader(buf, end, ctx, analysis)
    for offset, message in found.anomalies:
        reader.anomaly(offset, message)
    names = sorted({n for names in found.names.values() for n in names})
    layout = TorchLayout(names)
    # data.pkl first: its persistent ids say which data/ records are raw tensor storage.
    for span in sorted(found.spans, key=lambda s: (not layout.is_pickle_member(s.header.name),
                                                   s.data_start)):
        checkpoint()
        if _exempt(buf, span, found.names[span.key], layout):
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
NPY_MAGIC = b"\x93NUMPY"


def _exempt(buf: Buffer, span: Span, names: set[str], layout: TorchLayout) -> bool:
    """A raw tensor storage record torch never unpickles, under every name readers give it.

    Only stored records: numpy.load opens a .pt as an npz and unpickles any member that is an
    object .npy (numpy/lib/npyio.py NpzFile.__getitem__), so bytes starting with the npy magic
    are always analysed."""
    if span.header.method != STORED or bytes(buf[span.data_start:span.data_start + 6]) \
            == NPY_MAGIC:
        return False
    if not all(layout.is_storage(n) for n in names):
        return False
    layout.skipped += 1
    return True


def zip_from_end(buf: Buffer, start: int, end: int) -> tuple[int, int] | None:
    """Where the zip that zipfile finds from the end of ``buf`` starts and where its end
    record ends, if zipfile opens it with at least one member. zipfile opens an archive by its
    end record whatever precedes it (``concat`` in _RealGetContents), so a pickle, an npy or
    unknown bytes with a zip appended still open as a zip."""
    view = _ZipfileView(buf, start, end, DEFAULT_LIMITS).read()
    if not view.opened or not view.members or view.eocd is None:
        return None
    return start + view.shift, view.eocd + EOCD.size


class _MemberReader:
    def __init__(self, buf: Buffer, end: int, ctx: Context, analysis: Analysis) -> None:
        self.buf, self.end, self.ctx, self.analysis = buf, end, ctx, analysis

    def finding(self, kind: FindingKind, offset: int | None, message: str) -> None:
        self.analysis.finding(self.ctx, kind, offset, message)

    def anomaly(self, offset: int | None, message: str) -> None:
        self.finding(FindingKind.ARCHIVE, offset, message)

    def analyse(self, span: Span) -> None:
        header = span.header
        if span.data_end > self.end:
            self.finding(FindingKind.MALFORMED, header.header_offset,
                         f"member {header.name!r} extends past the end of the archive")
            return
        if header.flags & FLAG_ENCRYPTED:
            self.anomaly(header.header_offset, f"member {header.name!r} has the encryption flag "
                                               "set; its bytes were scanned as they are")
        if header.method == STORED:
            self._check_crc(header, _crc(self.buf, span.data_start, span.data_end))
            child = self.ctx.child(header.name, base=span.data_start)
            analyse_member(self.buf, span.data_start, span.data_end, child, self.analysis)
            return
        inflated = self._inflate(span)
        if inflated is not None:
            data, crc = inflated
            self._check_crc(header, crc)
            analyse_member(data, 0, len(data), self.ctx.child(header.name), self.analysis)

    def _inflate(self, span: Span) -> tuple[Buffer, int] | None:
        header = span.header
        makers: dict[int, Callable[[], Any]] = {
            DEFLATED: lambda: zlib.decompressobj(-15), BZIP2: bz2.BZ2Decompressor,
            LZMA: _ZipLzma}
        make = makers.get(header.method)
        if make is None:
            self.finding(FindingKind.UNSUPPORTED, header.header_offset,
                         f"member {header.name!r} uses compression method {header.method}, "
                         "which picklegate cannot read; it was not scanned")
            return None
        try:
            return _expand(self.buf, span.data_start, span.data_end, make(), self.ctx)
        except ExpansionLimit:
            self.finding(FindingKind.LIMIT, header.header_offset,
                         expansion_message(f"member {header.name!r}", self.ctx))
        except (EOFError, ValueError, zlib.error, lzma.LZMAError, OSError) as exc:
            self.finding(FindingKind.MALFORMED, header.header_offset,
                         f"member {header.name!r} cannot be decompressed: {exc}")
        return None

    def _check_crc(self, header: Header, crc: int) -> None:
        if header.flags & FLAG_ENCRYPTED:
            return
        if crc != header.crc:
            self.anomaly(header.header_offset, f"member {header.name!r} fails its CRC check; "
                                               "its bytes were scanned anyway")


def _crc(buf: Buffer, start: int, end: int) -> int:
    """CRC-32 of ``buf[start:end]`` in bounded chunks: a stored member is never copied whole
    (memoryview slices of bytes or an mmap copy nothing)."""
    crc = 0
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except TypeError:
        for pos in range(start, end, CHUNK):
            crc = zlib.crc32(buf[pos:min(pos + CHUNK, end)], crc)
        return crc
    with view:
        for pos in range(start, end, CHUNK):
            with view[pos:min(pos + CHUNK, end)] as part:
                crc = zlib.crc32(part, crc)
    return crc


def _expand(buf: Buffer, pos: int, end: int, dec: Any, ctx: Context) -> tuple[Buffer, int]:
    """Decompress one member against the file's expansion budget (shared with every codec and
    nesting level), spilled to disk past a few MiB like compressed files (compression.Spill);
    return it with its CRC-32."""
    sink = Spill()
    try:
        expand_stream(buf, pos, end, dec, ctx, sink)
    except BaseException:
        sink.close()
        raise
    return sink.result(), sink.crc


# ---------------------------------------------------------------------------------------------
# the views


def discover(buf: Buffer, start: int, end: int, limits: Limits = DEFAULT_LIMITS) -> Discovery:
    """Every member zipfile, torch's reader and a streaming reader see in ``buf[start:end]``,
    plus local headers none of them reaches, and every disagreement between them."""
    # Every view parses the same local headers: parse each once (a 20k-tensor checkpoint has
    # 20k of them, read by three views and two checks).
    cache: LocalCache = {}
    zipfile_view = _ZipfileView(buf, start, end, limits, cache).read()
    torch_view = _TorchView(buf, start, end, limits, cache).read()
    listed = {s.header.header_offset: s for v in (zipfile_view, torch_view) for s in v.members}
    stream_view = _StreamView(buf, start, end, limits, listed, cache).read()
    views = {ZIPFILE: zipfile_view, TORCH: torch_view, STREAM: stream_view}
    found = Discovery(views, [], {}, [])
    for view in views.values():
        for span in view.members:
            names = found.names.setdefault(span.key, set())
            if not names:
                found.spans.append(span)
            names.add(span.header.name)
    _members_checks(buf, start, end, views, found.anomalies, cache)
    if any(v.truncated for v in views.values()):
        # past the member limit the views are incomplete: comparing them or searching what
        # they leave out means nothing, and the analysis reports the limit (fail closed).
        return found
    _compare(views, found.anomalies)
    _hidden_locals(buf, start, end, views, found, cache)
    return found


class _Reading:
    """Bounded reads of the archive's bytes (offsets absolute; nothing outside [start, end))."""

    def __init__(self, buf: Buffer, start: int, end: int, limits: Limits,
                 cache: LocalCache | None = None) -> None:
        self.buf, self.start, self.end, self.limits = buf, start, end, limits
        self.cache: LocalCache = {} if cache is None else cache

    def at(self, offset: int, size: int) -> bytes:
        if offset < self.start or size < 0 or offset + size > self.end:
            return b""
        return bytes(self.buf[offset:offset + size])

    def last_eocd(self, room: int) -> int:
        """The last end-record signature with ``room`` bytes from it to the end, searching
        backwards in 4 KiB steps (as miniz does) over at most the last TAIL bytes; -1 if
        none. An archive without a comment costs one step."""
        floor = max(self.start, self.end - TAIL)
        stop = self.end
        while stop > floor:
            base = max(floor, stop - 4096)
            chunk = bytes(self.buf[base:stop])
            at = chunk.rfind(EOCD_SIG)
            while at >= 0 and self.end - (base + at) < room:
                at = chunk.rfind(EOCD_SIG, 0, at + 3)
            if at >= 0:
                return base + at
            stop = base + 3 if base > floor else floor
        return -1

    def local(self, offset: int) -> tuple[Header, int] | None:
        if offset in self.cache:
            return self.cache[offset]
        found = self.cache[offset] = self._local(offset)
        return found

    def _local(self, offset: int) -> tuple[Header, int] | None:
        raw = self.at(offset, LOCAL.size)
        if len(raw) < LOCAL.size or raw[:4] != LOCAL_SIG:
            return None
        (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = LOCAL.unpack(raw)
        name = _name(self.at(offset + LOCAL.size, name_len), flags)
        extra = self.at(offset + LOCAL.size + name_len, extra_len)
        usize, csize, _ = _zip64_extra(extra, usize, csize, 0)
        header = Header(name, method, flags, crc, csize, usize, offset, "local header")
        return header, offset + LOCAL.size + name_len + extra_len

    def central(self, raw: bytes, pos: int, shift: int) -> tuple[Header, int]:
        """One central entry at ``pos``; returns it and where the next one starts."""
        (_, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
         _, _, _, offset) = CENTRAL.unpack(raw[:CENTRAL.size])
        name = _name(self.at(pos + CENTRAL.size, name_len), flags)
        extra = self.at(pos + CENTRAL.size + name_len, extra_len)
        usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
        header = Header(name, method, flags, crc, csize, usize, self.start + offset + shift,
                        "central directory")
        return header, pos + CENTRAL.size + name_len + extra_len + comment_len

    def span(self, central: Header) -> Span | None:
        """The member as zipfile and miniz read it: data after the LOCAL header's name and
        extra field, of the CENTRAL compressed size and method."""
        local = self.local(central.header_offset)
        if local is None:
            return None
        return Span(central, local[1], local[1] + central.csize)

    def add(self, view: View, header: Header, span: Span | None = None) -> bool:
        """Record one member (``span`` None: located through ``header``, a central entry).
        False past twice the member limit: the view stops there (memory follows the limit,
        not the file's claims) and the analysis reports the limit. Up to then every member
        is listed, so pickles are still analysed first."""
        if len(view.headers) > 2 * self.limits.max_members:
            view.truncated = True
            return False
        view.headers.append(header)
        span = span or self.span(header)
        if span is not None:        # else zipfile and miniz fail on this member alone
            view.members.append(span)
            view.accounted.append((header.header_offset, self.after(span)))
        return True

    def after(self, span: Span) -> int:
        """Where the member ends: after its data descriptor when flag bit 3 says it has one
        (APPNOTE 4.3.9; the signature is optional; zip64 sizes are 8 bytes)."""
        pos = span.data_end
        if not span.header.flags & FLAG_DESCRIPTOR:
            return pos
        if self.at(pos, 4) == DESCRIPTOR_SIG:
            pos += 4
        wide = max(span.header.csize, span.header.usize) >= U32
        return pos + (20 if wide else 12)


class _ZipfileView(_Reading):
    """CPython 3.11 Lib/zipfile.py."""

    def read(self) -> View:
        view = View(ZIPFILE)
        try:
            self._read(view)
        except _Refused as refused:
            view.error = str(refused)
        return view

    def _eocd(self) -> int:
        # _EndRecData: the last 22 bytes when they are a record without a comment, else the
        # LAST signature in the tail, which must have 22 bytes after it.
        end_record = self.at(self.end - EOCD.size, EOCD.size)
        if end_record[:4] == EOCD_SIG and end_record[-2:] == b"\x00\x00":
            return self.end - EOCD.size
        at = self.last_eocd(4)
        if at < 0:
            raise _Refused("no end-of-central-directory record")
        if at + EOCD.size > self.end:
            raise _Refused(f"the last end record, at {at - self.start}, is truncated")
        return at

    def _read(self, view: View) -> None:
        eocd = view.eocd = self._eocd()
        _, _, _, _, _, size, offset, _ = EOCD.unpack(self.at(eocd, EOCD.size))
        view.accounted.append((eocd, eocd + EOCD.size))
        size, offset, record = self._zip64(view, eocd, size, offset)
        # _RealGetContents: "concat" is what was prepended; every offset is shifted by it.
        view.shift = (record if record is not None else eocd) - self.start - size - offset
        cd_start = self.start + offset + view.shift
        if cd_start < self.start:
            raise _Refused("bad offset for the central directory")
        view.directory = (cd_start, size)
        view.accounted.append((cd_start, min(cd_start + size, self.end)))
        self._entries(view, cd_start, min(cd_start + size, self.end), size)

    def _zip64(self, view: View, eocd: int, size: int,
               offset: int) -> tuple[int, int, int | None]:
        """_EndRecData64: the zip64 record right BEFORE the locator; its offset is ignored."""
        raw = self.at(eocd - ZIP64_LOCATOR.size, ZIP64_LOCATOR.size)
        if len(raw) < ZIP64_LOCATOR.size or raw[:4] != ZIP64_LOCATOR_SIG:
            return size, offset, None
        _, disk, _, disks = ZIP64_LOCATOR.unpack(raw)
        if disk != 0 or disks > 1:
            raise _Refused("zipfiles that span multiple disks are not supported")
        record = eocd - ZIP64_LOCATOR.size - ZIP64_EOCD.size
        fields = self.at(record, ZIP64_EOCD.size)
        if len(fields) < ZIP64_EOCD.size or fields[:4] != ZIP64_EOCD_SIG:
            return size, offset, None
        view.zip64_record = record
        view.accounted.append((record, eocd))
        values = ZIP64_EOCD.unpack(fields)
        return values[8], values[9], record

    def _entries(self, view: View, pos: int, stop: int, size: int) -> None:
        # By the directory SIZE, never the entry count.
        total = 0
        while total < size:
            raw = self.at(pos, CENTRAL.size)
            if pos + CENTRAL.size > stop or len(raw) < CENTRAL.size:
                raise _Refused("truncated central directory")
            if raw[:4] != CENTRAL_SIG:
                raise _Refused(f"bad magic number for a central directory entry at "
                               f"{pos - self.start}")
            header, after = self.central(raw, pos, view.shift)
            total += after - pos
            pos = after
            if not self.add(view, header):
                return


class _TorchView(_Reading):
    """miniz 3.0.2 as vendored by PyTorch (third_party/miniz-3.0.2/miniz.c)."""

    def read(self) -> View:
        view = View(TORCH)
        # torch/serialization.py _is_zipfile: anything else is read as a legacy pickle.
        if self.at(self.start, 4) != LOCAL_SIG:
            view.applies = False
            view.error = "the file does not start with a local header"
            return view
        try:
            self._read(view)
        except _Refused as refused:
            view.error = str(refused)
        return view

    def _eocd(self) -> int:
        # mz_zip_reader_locate_header_sig: searching backwards, the first signature with a
        # whole record (22 bytes) after it.
        at = self.last_eocd(EOCD.size)
        if at < 0:
            raise _Refused("no end-of-central-directory record")
        return at

    def _read(self, view: View) -> None:
        eocd = view.eocd = self._eocd()
        raw = self.at(eocd, EOCD.size)
        _, disk, cd_disk, on_disk, count, size, offset, _ = EOCD.unpack(raw)
        view.accounted.append((eocd, eocd + EOCD.size))
        zip64 = self._zip64(view, eocd)
        if zip64 is not None:
            disk, cd_disk, on_disk, count, size, offset = zip64
        if count != on_disk or ((disk | cd_disk) != 0 and (disk, cd_disk) != (1, 1)):
            raise _Refused("multi-disk archive (entry counts or disk numbers differ)")
        if size < count * CENTRAL.size or offset + size > self.end - self.start:
            raise _Refused(f"{count} entries cannot fit in a central directory of {size} bytes "
                           f"at {offset}")
        cd_start = self.start + offset        # miniz uses stored offsets as they are
        view.directory = (cd_start, size)
        view.accounted.append((cd_start, cd_start + size))
        self._entries(view, cd_start, size, count)

    def _zip64(self, view: View, eocd: int) -> tuple[int, int, int, int, int, int] | None:
        """The zip64 record at the offset the LOCATOR names."""
        if eocd - self.start < ZIP64_LOCATOR.size + ZIP64_EOCD.size:
            return None
        raw = self.at(eocd - ZIP64_LOCATOR.size, ZIP64_LOCATOR.size)
        if raw[:4] != ZIP64_LOCATOR_SIG:
            return None
        _, _, named, disks = ZIP64_LOCATOR.unpack(raw)
        if named > self.end - self.start - ZIP64_EOCD.size:
            raise _Refused(f"the zip64 locator names an end record at {named}, past the end")
        fields = self.at(self.start + named, ZIP64_EOCD.size)
        if fields[:4] != ZIP64_EOCD_SIG:
            return None
        view.zip64_record = self.start + named
        view.accounted.append((self.start + named, self.start + named + ZIP64_EOCD.size))
        view.accounted.append((eocd - ZIP64_LOCATOR.size, eocd))
        (_, record_size, _, _, disk, cd_disk, on_disk, count, size, offset) = \
            ZIP64_EOCD.unpack(fields)
        if record_size < ZIP64_EOCD.size - 12 or disks != 1:
            raise _Refused("corrupt zip64 end record")
        if max(count, on_disk, size) > U32:
            raise _Refused("zip64 end record beyond miniz's limits")
        return disk, cd_disk, on_disk, count, size, offset

    def _entries(self, view: View, pos: int, size: int, count: int) -> None:
        # Exactly `count` entries, each inside the directory's `size` bytes.
        left = size
        for _ in range(count):
            raw = self.at(pos, CENTRAL.size)
            if left < CENTRAL.size or raw[:4] != CENTRAL_SIG:
                raise _Refused("a central directory entry is missing or corrupt")
            header, after = self.central(raw, pos, 0)
            if after - pos > left:
                raise _Refused("a central directory entry overruns the directory")
            self._check(header)
            left -= after - pos
            pos = after
            if not self.add(view, header):
                return

    def _check(self, header: Header) -> None:
        if header.csize != U32 and header.usize != U32 and (
                (header.method == STORED and header.csize != header.usize)
                or (header.usize and not header.csize)):
            raise _Refused(f"member {header.name!r}: sizes miniz rejects")
        if header.header_offset + LOCAL.size + header.csize > self.end:
            raise _Refused(f"member {header.name!r} extends past the end of the archive")


class _StreamView(_Reading):
    """Local headers in file order from the first byte, each followed by its data."""

    def __init__(self, buf: Buffer, start: int, end: int, limits: Limits,
                 listed: dict[int, Span], cache: LocalCache) -> None:
        super().__init__(buf, start, end, limits, cache)
        self.listed = listed

    def read(self) -> View:
        view = View(STREAM)
        pos = self.start
        while (local := self.local(pos)) is not None:
            header, data_start = local
            csize = header.csize
            if header.flags & FLAG_DESCRIPTOR:
                # The size follows the data; only a directory entry for this header says
                # where that is (a deflate stream ends itself, but nothing else does).
                if pos not in self.listed:
                    view.error = f"a data descriptor at {pos - self.start} hides its size"
                    return view
                csize = self.listed[pos].header.csize
            span = Span(header, data_start, data_start + csize)
            if span.data_end > self.end or not self.add(view, header, span):
                return view
            pos = self.after(span)
        return view


class _Refused(Exception):
    """The reader raises (zipfile's BadZipFile, a miniz error) and opens nothing."""


# ---------------------------------------------------------------------------------------------
# comparing the views


def _compare(views: dict[str, View], out: list[tuple[int | None, str]]) -> None:
    zf, torch = views[ZIPFILE], views[TORCH]
    if not zf.opened and not torch.opened:
        out.append((None, f"no reader opens this archive ({zf.error}); only local headers "
                          "were read"))
    elif zf.opened and torch.applies and not torch.opened:
        out.append((torch.eocd, f"torch's reader (miniz) refuses this archive ({torch.error}); "
                                f"zipfile opens it with {len(zf.members)} member(s)"))
    elif torch.opened and not zf.opened:
        out.append((zf.eocd, f"zipfile refuses this archive ({zf.error}); torch's reader opens "
                             f"it with {len(torch.members)} member(s)"))
    if zf.opened and torch.opened:
        _compare_records(zf, torch, out)
    if zf.opened and zf.shift and zf.directory is not None:
        cd_start = zf.directory[0]
        out.append((cd_start, f"central directory is at offset {cd_start - zf.shift} + "
                              f"{zf.shift} (data prepended or moved): zipfile shifts every "
                              f"offset by {zf.shift}; torch's reader uses them as stored"))
    _compare_members(views, out)


def _compare_records(zf: View, torch: View, out: list[tuple[int | None, str]]) -> None:
    if zf.eocd != torch.eocd:
        out.append((zf.eocd, f"end records: zipfile reads the one at {zf.eocd}, torch's reader "
                             f"the one at {torch.eocd}"))
    if zf.zip64_record != torch.zip64_record:
        out.append((torch.zip64_record,
                    f"zip64 end record: zipfile reads the one before the locator at "
                    f"{zf.zip64_record}, torch's reader the one the locator names at "
                    f"{torch.zip64_record}"))
    if len(zf.members) != len(torch.members):
        out.append((None, f"zipfile sees {len(zf.members)} members (by directory size), "
                          f"torch's reader sees {len(torch.members)} (by entry count)"))


def _compare_members(views: dict[str, View], out: list[tuple[int | None, str]]) -> None:
    """Members (by local header offset) that some readers see and others do not: one finding
    per disagreement, naming a few of them."""
    readers = [v for v in views.values() if v.opened or v.reader == STREAM]
    if len(readers) < 2 or any(v.truncated for v in readers):
        return
    seen: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for view in readers:
        for header in view.headers:
            if view.reader not in seen.setdefault(header.header_offset, []):
                seen[header.header_offset].append(view.reader)
            names.setdefault(header.header_offset, header.name)
    groups: dict[tuple[str, ...], list[int]] = {}
    for offset in sorted(seen):
        if len(seen[offset]) < len(readers):
            groups.setdefault(tuple(seen[offset]), []).append(offset)
    for who, offsets in groups.items():
        out.append((offsets[0], _members_message(who, readers, offsets, names)))


def _members_message(who: tuple[str, ...], readers: list[View], offsets: list[int],
                     names: dict[int, str]) -> str:
    some = " and ".join(READER_NAMES[r] for r in who)
    others = " and ".join(v.label for v in readers if v.reader not in who)
    listed = ", ".join(f"{names[o]!r} at {o}" for o in offsets[:5])
    more = f" and {len(offsets) - 5} more" if len(offsets) > 5 else ""
    hidden = " (hidden: the central directory does not list them)" if who == (STREAM,) else ""
    return (f"{len(offsets)} member(s) seen by {some} but not by {others}{hidden}: "
            f"{listed}{more}; they were scanned")


def _members_checks(buf: Buffer, start: int, end: int, views: dict[str, View],
                    out: list[tuple[int | None, str]], cache: LocalCache) -> None:
    reading = _Reading(buf, start, end, DEFAULT_LIMITS, cache)
    checked: set[int] = set()
    for view in (views[ZIPFILE], views[TORCH]):
        names: set[str] = set()
        for header in view.headers:
            if header.name in names:
                out.append((header.header_offset, f"duplicate member name {header.name!r} "
                                                  f"({view.label}); loaders disagree on "
                                                  "which copy they read"))
            names.add(header.name)
            if header.header_offset not in checked:
                checked.add(header.header_offset)
                _check_entry(reading, header, out)


def _check_entry(reading: _Reading, central: Header, out: list[tuple[int | None, str]]) -> None:
    at = central.header_offset
    if _escapes(central.name):
        out.append((at, f"member name {central.name!r} escapes the archive (absolute path "
                        "or '..')"))
    local = reading.local(at)
    if local is None:
        out.append((at, f"member {central.name!r}: the central directory points at no local "
                        "header"))
        return
    header = local[0]
    if header.name != central.name:
        out.append((at, f"member {central.name!r} is named {header.name!r} in its local "
                        "header: zipfile refuses to open it; torch's reader and streaming "
                        "readers read it"))
    if header.method != central.method:
        out.append((at, f"member {central.name!r}: compression method differs between local "
                        f"({header.method}) and central ({central.method}) headers; both "
                        "readings were scanned"))
    if not header.flags & FLAG_DESCRIPTOR and header.csize != central.csize:
        out.append((at, f"member {central.name!r}: local header size {header.csize} != "
                        f"central size {central.csize}; both ranges were scanned"))


def _escapes(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts


# ---------------------------------------------------------------------------------------------
# hidden local headers


def _hidden_locals(buf: Buffer, start: int, end: int, views: dict[str, View],
                   found: Discovery, cache: LocalCache) -> None:
    """Local headers no view reaches. Only bytes no view accounts for are searched (ranges
    sorted and merged once), so member data already located is never touched."""
    reading = _Reading(buf, start, end, DEFAULT_LIMITS, cache)
    known = {s.header.header_offset for v in views.values() for s in v.members}
    cursor = start
    for gap_start, gap_end in _gaps(start, end, views):
        # a signature starting in the gap may run 3 bytes into the next range
        stop = min(gap_end + 3, end)
        cursor = max(cursor, gap_start)
        while cursor < gap_end:
            pos = buf.find(LOCAL_SIG, cursor, stop)
            found.searched += (stop if pos < 0 else pos + 4) - cursor
            if pos < 0:
                break
            cursor = max(pos + 4, _hidden_at(reading, pos, known, found))


def _gaps(start: int, end: int, views: dict[str, View]) -> list[tuple[int, int]]:
    ranges = sorted((a, b) for v in views.values() for a, b in v.accounted
                    if start <= a < b <= end)
    gaps = []
    cursor = start
    for a, b in ranges:
        if a > cursor:
            gaps.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def _hidden_at(reading: _Reading, pos: int, known: set[int], found: Discovery) -> int:
    """Record the hidden member at ``pos``; return where to search on."""
    if pos in known:
        return pos + 4
    local = reading.local(pos)
    if local is None:
        return pos + 4
    header, data_start = local
    if header.flags & FLAG_DESCRIPTOR:
        found.anomalies.append((pos, "unlisted local header with a data descriptor; its size "
                                     "cannot be known, so it was not scanned"))
        return pos + 4
    span = Span(header, data_start, data_start + header.csize)
    found.anomalies.append((pos, f"local header for {header.name!r} at {pos} is reached by no "
                                 "reader (hidden member); it was scanned"))
    if span.key not in found.names:
        found.spans.append(span)
    found.names.setdefault(span.key, set()).add(header.name)
    return span.data_end if span.data_end <= reading.end else pos + 4


def _name(raw: bytes, flags: int) -> str:
    # zipfile: UTF-8 when flag bit 11 is set, else cp437.
    return raw.decode("utf-8" if flags & FLAG_UTF8 else "cp437", "replace")


class _ZipLzma:
    """Zip's LZMA method: a 4-byte header (version, properties size) before raw LZMA1 data.
    Without an end marker (general-purpose flag bit 1 clear) the data ends with the member,
    which zipfile reads by its size: expand_stream stops there instead of asking for more."""

    ends_with_input = True

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
        return out


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace 0xFFFFFFFF fields with their zip64 extra-field values, in the spec's order."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos:pos + 4])
        body = extra[pos + 4:pos + 4 + size]
        if tag == 1:
            values = [struct.unpack("<Q", body[i:i + 8])[0] for i in range(0, len(body) - 7, 8)]
            if usize == U32 and values:
                usize = values.pop(0)
            if csize == U32 and values:
                csize = values.pop(0)
            if offset == U32 and values:
                offset = values.pop(0)
        pos += 4 + size
    return usize, csize, offset
