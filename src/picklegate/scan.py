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
from picklegate.limits import DEFAULT_LIMITS, BudgetExceeded, Limits, guarded, how_to_raise
from picklegate.machine import Buffer
from picklegate.policy import Policy, utc_today
from picklegate.sources import Source


@dataclass(frozen=True)
class ScanOptions:
    limits: Limits = DEFAULT_LIMITS
    today: dt.date = field(default_factory=utc_today)
    # Limits set on the command line: they win over the policy's `limits:` section, which
    # wins over ``limits``.
    overrides: tuple[tuple[str, float], ...] = ()

    def limits_for(self, policy: Policy) -> Limits:
        return self.limits.merged(policy.limits).merged(self.overrides)


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
    analysis = Analysis(format="unknown")
    try:
        _analyse_within_budgets(buf, options.limits_for(policy), analysis)
    except BudgetExceeded as spent:
        # What the readers recorded before the budget ran out is kept; a pickle stream that
        # was being read when it ran out loses its own imports (its reader merges them at its
        # end), and the finding fails the file anyway.
        analysis.out.finding(FindingKind.LIMIT, None,
                             f"{spent.message}; the rest of the file was not analysed (raise "
                             f"it with {how_to_raise(spent.budget)})")
    except Exception as exc:  # noqa: BLE001 - fail closed: a bug must never pass a file
        analysis.out.finding(FindingKind.MALFORMED, None,
                             f"picklegate could not analyse this file ({type(exc).__name__}: "
                             f"{exc}); it is treated as unsafe. Please report this.")
    return judge(source.display, source.relpath, buf, analysis, policy, options.today)


def _analyse_within_budgets(buf: Buffer, limits: Limits, analysis: Analysis) -> None:
    """Analyse under the file's time and memory budgets (limits.guarded), without the cyclic
    collector: the machine allocates many small symbolic values and few cycles, and the
    collector otherwise costs ~40% of the time on opcode-dense pickles
    (benchmarks/bench_scan.py)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with guarded(limits):
            analyse_buffer(buf, limits.bounded(), analysis)
    finally:
        if enabled:
            gc.enable()


def scan_bytes(data: bytes, policy: Policy, path: str = "<bytes>",
               options: ScanOptions | None = None) -> FileResult:
    """Library entry point for one in-memory file."""
    return scan_source(Source(path, path, lambda: data), policy, options or ScanOptions())
