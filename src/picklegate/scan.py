"""Orchestration: sources -> formats -> machine -> decision -> ScanResult. Prints nothing."""
from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterable
from dataclasses import dataclass, field

from picklegate.decision import judge
from picklegate.errors import SourceError
from picklegate.findings import FileResult, ScanResult, Status
from picklegate.findings import FindingKind
from picklegate.formats import Analysis
from picklegate.formats.interpretations import analyse_buffer
from picklegate.limits import DEFAULT_LIMITS, Limits
from picklegate.machine import Buffer
from picklegate.policy import Policy, utc_today
from picklegate.sources import Source


@dataclass(frozen=True)
class ScanOptions:
    limits: Limits = DEFAULT_LIMITS
    today: dt.date = field(default_factory=utc_today)


def scan_sources(sources: Iterable[Source], policy: Policy,
                 options: ScanOptions | None = None) -> ScanResult:
    options = options or ScanOptions()
    results = [scan_source(source, policy, options) for source in sources]
    return ScanResult(files=tuple(results), policy=policy.source)


def scan_source(source: Source, policy: Policy, options: ScanOptions) -> FileResult:
    try:
        buf = source.read()
    except SourceError as exc:
        return FileResult(path=source.display, relpath=source.relpath, format="unknown",
                          status=Status.ERROR, error=str(exc))
    try:
        analysis = _analyse_without_gc(buf, options)
    except Exception as exc:  # noqa: BLE001 - fail closed: a bug must never pass a file
        analysis = Analysis(format="unknown")
        analysis.out.finding(FindingKind.MALFORMED, None,
                             f"picklegate could not analyse this file ({type(exc).__name__}: "
                             f"{exc}); it is treated as unsafe. Please report this.")
    return judge(source.display, source.relpath, buf, analysis, policy, options.today)


def _analyse_without_gc(buf: Buffer, options: ScanOptions) -> Analysis:
    """The machine allocates many small symbolic values and few cycles; the cyclic collector
    otherwise costs ~40% of the time on opcode-dense pickles (benchmarks/bench_scan.py)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return analyse_buffer(buf, options.limits)
    finally:
        if enabled:
            gc.enable()


def scan_bytes(data: bytes, policy: Policy, path: str = "<bytes>",
               options: ScanOptions | None = None) -> FileResult:
    """Library entry point for one in-memory file."""
    return scan_source(Source(path, path, lambda: data), policy, options or ScanOptions())
