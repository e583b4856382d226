"""The shared state of one file's analysis and the dispatch from detected kind to reader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from picklegate.findings import FindingKind
from picklegate.limits import DEFAULT_LIMITS, Limits
from picklegate.machine import Buffer, Collector


class NotThisFormat(Exception):
    """A reader's format has no magic and the bytes, on closer reading, are not that format:
    the dispatcher tries the next interpretation. Raised before anything is recorded."""


@dataclass
class Budget:
    """Bytes decompressed and members opened so far for one top-level file, at every depth."""

    expanded: int = 0
    members: int = 0


@dataclass
class Context:
    """Where a reader is: the member path inside containers and where that member starts."""

    limits: Limits = DEFAULT_LIMITS
    member: str | None = None          # nested members joined with "/" (archives) or "!" (codecs)
    base: int = 0                      # offset of the member's first byte in the buffer
    depth: int = 0
    budget: Budget = field(default_factory=Budget)
    top_level: bool = True             # a file the user named, not something found inside one

    def child(self, name: str, base: int = 0, sep: str = "/") -> Context:
        member = name if self.member is None else f"{self.member}{sep}{name}"
        return Context(self.limits, member, base, self.depth + 1, self.budget, top_level=False)

    def collector(self) -> Collector:
        return Collector(member=self.member, base=self.base)


@dataclass
class Analysis:
    """What one file (with everything inside it) contains, before the policy judges it."""

    format: str = "unknown"
    out: Collector = field(default_factory=Collector)
    notes: list[str] = field(default_factory=list)

    def finding(self, ctx: Context, kind: FindingKind, offset: int | None, message: str) -> None:
        """A finding at an absolute buffer offset inside the member ``ctx`` describes."""
        self.out.findings.append(ctx.collector().finding_value(kind, offset, message))

    def merge(self, part: Collector) -> None:
        self.out.extend(part)


# A reader gets the whole buffer and the member's [start, end) range inside it.
Reader = Callable[[Buffer, int, int, Context, Analysis], str]


def analyse_buffer(buf: Buffer, ctx: Context | None = None) -> Analysis:
    """Analyse a whole top-level file."""
    ctx = ctx or Context()
    analysis = Analysis()
    analysis.format = analyse_member(buf, 0, len(buf), ctx, analysis)
    _appended_zip(buf, ctx, analysis)
    return analysis


def _appended_zip(buf: Buffer, ctx: Context, analysis: Analysis) -> None:
    """A zip glued to the end of another format (or a self-extracting layout) is invisible
    to that format's reader but opens with zipfile: read it too."""
    from picklegate.formats import archive

    if analysis.format in archive.ZIP_FORMATS or not archive.has_zip_directory(buf, 0, len(buf)):
        return
    analysis.finding(ctx, FindingKind.ARCHIVE, None,
                     f"a zip archive is appended to this {analysis.format} file; zip readers "
                     "open it, so its members were scanned too")
    archive.read_zip(buf, 0, len(buf), ctx.child("(appended zip)"), analysis)


def analyse_member(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    """Detect what ``buf[start:end]`` is and run its reader; return the format it found."""
    from picklegate.formats.detect import reader_for  # late: readers import this module

    if ctx.depth > ctx.limits.max_depth:
        analysis.finding(ctx, FindingKind.LIMIT, start,
                         f"containers nested deeper than {ctx.limits.max_depth}; not analysed")
        return "nested"
    return reader_for(buf, start, end, ctx)(buf, start, end, ctx, analysis)
