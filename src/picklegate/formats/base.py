"""The shared state of one file's analysis and the dispatch from detected kind to reader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from picklegate.findings import FindingKind
from picklegate.limits import DEFAULT_LIMITS, Limits
from picklegate.machine import Buffer, Collector


@dataclass
class Budget:
    """Bytes decompressed so far for one top-level file, across every nested member."""

    expanded: int = 0
    members: int = 0


@dataclass
class Context:
    limits: Limits = DEFAULT_LIMITS
    member: str | None = None          # path inside the containers, joined with "/" ("!" nests)
    depth: int = 0
    budget: Budget = field(default_factory=Budget)

    def child(self, name: str, nested: bool = False) -> Context:
        if self.member is None:
            member = name
        else:
            member = f"{self.member}{'!' if nested else '/'}{name}"
        return Context(self.limits, member, self.depth + 1, self.budget)


@dataclass
class Analysis:
    """What one file (with everything inside it) contains, before the policy judges it."""

    format: str = "unknown"
    out: Collector = field(default_factory=Collector)
    notes: list[str] = field(default_factory=list)

    def finding(self, ctx: Context, kind: FindingKind, offset: int | None, message: str) -> None:
        previous = self.out.member
        self.out.member = ctx.member
        self.out.finding(kind, offset, message)
        self.out.member = previous

    def collector(self, ctx: Context) -> Collector:
        """A collector for one member; merge it back with :meth:`merge`."""
        return Collector(member=ctx.member)

    def merge(self, part: Collector) -> None:
        self.out.extend(part)


Reader = Callable[[Buffer, Context, Analysis], str]


def analyse_buffer(buf: Buffer, ctx: Context | None = None) -> Analysis:
    """Analyse a whole top-level file."""
    ctx = ctx or Context()
    analysis = Analysis()
    analysis.format = analyse_member(buf, ctx, analysis)
    return analysis


def analyse_member(buf: Buffer, ctx: Context, analysis: Analysis) -> str:
    """Detect what ``buf`` is and run its reader; return the format name it found."""
    from picklegate.formats.detect import reader_for  # late: readers import this module

    if ctx.depth > ctx.limits.max_depth:
        analysis.finding(ctx, FindingKind.LIMIT, None,
                         f"containers nested deeper than {ctx.limits.max_depth}; not analysed")
        return "nested"
    return reader_for(buf)(buf, ctx, analysis)
