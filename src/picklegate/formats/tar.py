"""Tar archives: every regular member analysed; PyTorch's pre-0.4 tar checkpoints followed
record by record (their 'storages' and 'tensors' members interleave pickles and raw bytes)."""
from __future__ import annotations

import io
import tarfile

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context, NotThisFormat, analyse_member
from picklegate.formats.torch import read_tar_storages, read_tar_tensors
from picklegate.machine import Buffer, Fatal

# torch.serialization.legacy_load reads these three; sys_info is written but never read.
TORCH_TAR_MEMBERS = {"pickle", "storages", "tensors"}


class _BufferFile(io.RawIOBase):
    """A read-only file over buf[start:end], so tarfile reads headers without copying data."""

    def __init__(self, buf: Buffer, start: int, end: int) -> None:
        self.buf, self.start, self.end, self.pos = buf, start, end, start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos - self.start

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: self.start, 1: self.pos, 2: self.end}[whence]
        self.pos = max(self.start, base + offset)
        return self.tell()

    def readinto(self, target: bytearray) -> int:   # type: ignore[override]
        data = bytes(self.buf[self.pos:min(self.end, self.pos + len(target))])
        target[:len(data)] = data
        self.pos += len(data)
        return len(data)


def read_tar(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    try:
        archive = tarfile.open(  # noqa: SIM115 - closed below, after reading its members
            fileobj=_BufferFile(buf, start, end), mode="r:")
    except (tarfile.TarError, EOFError, OSError, RecursionError):
        # The first header passed the checksum but tarfile refuses it: no loader opens these
        # bytes as a tar, so they are read as the next interpretation (a pickle, say).
        raise NotThisFormat() from None
    try:
        with archive:
            members = archive.getmembers()
    except (tarfile.TarError, EOFError, OSError, RecursionError) as exc:
        # tarfile raises too (RecursionError on deeply chained extended headers), so loaders
        # fail; the members read before are still analysed.
        analysis.finding(ctx, FindingKind.MALFORMED, start,
                         f"tar archive cannot be read to its end: {type(exc).__name__}: {exc}")
        members = archive.members  # type: ignore[attr-defined]  # what was read before
    names = [m.name for m in members]
    is_torch = set(names) >= TORCH_TAR_MEMBERS
    seen: set[str] = set()
    for member in members:
        _check(member, seen, start, ctx, analysis)
        if not member.isfile():
            continue
        if ctx.budget.members >= ctx.limits.max_members:
            analysis.finding(ctx, FindingKind.LIMIT, start + member.offset,
                             f"more than {ctx.limits.max_members} members; the rest not analysed")
            break
        ctx.budget.members += 1
        data_start = start + member.offset_data
        data_end = data_start + member.size
        if data_end > end:
            analysis.finding(ctx, FindingKind.MALFORMED, start + member.offset,
                             f"member {member.name!r} extends past the end of the archive")
            continue
        child = ctx.child(member.name, base=data_start)
        if is_torch and member.name in ("storages", "tensors"):
            _torch_records(buf, data_start, data_end, child, analysis, member.name)
        else:
            analyse_member(buf, data_start, data_end, child, analysis)
    return "torch-tar" if is_torch else "tar"


def _torch_records(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis,
                   name: str) -> None:
    out = ctx.collector()
    reader = read_tar_storages if name == "storages" else read_tar_tensors
    try:
        reader(buf, start, end, ctx, out)
    except Fatal as fatal:
        out.finding(fatal.kind, fatal.offset, fatal.message)
    analysis.merge(out)


def _check(member: tarfile.TarInfo, seen: set[str], start: int, ctx: Context,
           analysis: Analysis) -> None:
    offset = start + member.offset
    if member.name in seen:
        analysis.finding(ctx, FindingKind.ARCHIVE, offset,
                         f"duplicate member name {member.name!r}; extractors keep the last copy")
    seen.add(member.name)
    parts = member.name.split("/")
    if member.name.startswith("/") or ".." in parts:
        analysis.finding(ctx, FindingKind.ARCHIVE, offset,
                         f"member name {member.name!r} escapes the archive (absolute or '..')")
    if member.issym() or member.islnk():
        analysis.finding(ctx, FindingKind.ARCHIVE, offset,
                         f"member {member.name!r} is a link to {member.linkname!r}; links are "
                         "not followed, and a loader that does may read another file")
    elif member.issparse() or not (member.isfile() or member.isdir()):
        analysis.finding(ctx, FindingKind.UNSUPPORTED, offset,
                         f"member {member.name!r} is a special or sparse entry; not scanned")
