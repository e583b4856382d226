"""The shared state of one file's analysis: where a reader is (Context), what it found (Analysis),
and the way back to the dispatcher for what a container holds (analyse_member)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from picklegate.findings import FindingKind
from picklegate.limits import DEFAULT_LIMITS, Limits
from picklegate.machine import Buffer, Collector


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
    # The dispatcher (formats/interpretations.py): readers reach it through the context, so no
    # reader imports the table that imports every reader.
    dispatch: Reader = field(default=lambda *_: _no_dispatcher())

    def child(self, name: str, base: int = 0, sep: str = "/") -> Context:
        member = name if self.member is None else f"{self.member}{sep}{name}"
        return Context(self.limits, member, base, self.depth + 1, self.budget, top_level=False,
                       dispatch=self.dispatch)

    def collector(self) -> Collector:
        return Collector(member=self.member, base=self.base)


def _no_dispatcher() -> str:
    raise RuntimeError("this Context has no dispatcher: create it with "
                       "picklegate.formats.interpretations.new_context()")


@dataclass
class Analysis:
    """What one file (with everything inside it) contains, before the policy judges it."""

    format: str = "unknown"
    out: Collector = field(default_factory=Collector)
    notes: list[str] = field(default_factory=list)
    # (id of the buffer, start, end, format) of every member the readers analysed, so a zip
    # that zipfile finds from the end can be matched with the member that already holds it.
    scanned: list[tuple[int, int, int, str]] = field(default_factory=list)

    def finding(self, ctx: Context, kind: FindingKind, offset: int | None, message: str) -> None:
        """A finding at an absolute buffer offset inside the member ``ctx`` describes."""
        self.out.findings.append(ctx.collector().finding_value(kind, offset, message))

    def merge(self, part: Collector) -> None:
        self.out.extend(part)


# A reader gets the whole buffer and the member's [start, end) range inside it, and returns the
# format it found. It raises NotThisFormat when the content, read further, is not its format.
Reader = Callable[[Buffer, int, int, "Context", Analysis], str]


class NotThisFormat(Exception):
    """A reader's closer look says the bytes are not its format: try the next interpretation.

    Only formats without a magic number (an lzma 'alone' header is a few plausible bytes) or
    whose loader checks more than the detector (tarfile) need it; the dispatcher then carries on
    down the table as if the detector had said no. Raised before anything is recorded."""


def analyse_member(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    """Analyse ``buf[start:end]`` through the dispatcher the context carries (every container
    reader recurses through this, so nesting and bounds work the same at every depth)."""
    return ctx.dispatch(buf, start, end, ctx, analysis)
