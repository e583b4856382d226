"""Orchestration: sources -> formats -> machine -> decision -> ScanResult. Prints nothing.

Files are independent, so ``jobs > 1`` scans them in worker processes (the opcode machine is
pure Python: threads would share one GIL). Each worker gets the policy once and re-opens each
file itself from its picklable :class:`Source`; only the small :class:`FileResult` comes back,
never a buffer. Results are put back in source order, so the report is byte-identical to a
serial run.
"""
from __future__ import annotations

import datetime as dt
import gc
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from picklegate.decision import judge
from picklegate.errors import SourceError
from picklegate.findings import FileResult, ScanResult, Status
from picklegate.findings import FindingKind
from picklegate.formats import Analysis
from picklegate.formats.interpretations import analyse_buffer
from picklegate.limits import DEFAULT_LIMITS, BudgetExceeded, Limits, guarded, how_to_raise
from picklegate.machine import Buffer
from picklegate.policy import Policy, utc_today
from picklegate.sources import CHANGED, MappedFile, Source

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future


@dataclass(frozen=True)
class ScanOptions:
    limits: Limits = DEFAULT_LIMITS
    today: dt.date = field(default_factory=utc_today)
    # Limits set on the command line: they win over the policy's `limits:` section, which
    # wins over ``limits``.
    overrides: tuple[tuple[str, float], ...] = ()

    def limits_for(self, policy: Policy) -> Limits:
        return self.limits.merged(policy.limits).merged(self.overrides)


# More files than this (and more than one CPU) and the CLI scans in parallel by default:
# below it, starting the workers costs more than it saves on small checkpoints.
JOBS_THRESHOLD = 8


def default_jobs(files: int, cpus: int) -> int:
    """One worker per CPU for more than JOBS_THRESHOLD files, else a serial scan."""
    return cpus if files > JOBS_THRESHOLD and cpus > 1 else 1


def scan_sources(sources: Iterable[Source], policy: Policy,
                 options: ScanOptions | None = None, jobs: int = 1) -> ScanResult:
    """Scan every source; with ``jobs > 1`` in that many worker processes (sources must then
    pickle: files and broken paths do, git blobs do not)."""
    options = options or ScanOptions()
    todo = list(sources)
    workers = min(jobs, len(todo))
    if workers > 1:
        results = _scan_parallel(todo, policy, options, workers)
    else:
        results = [scan_source(source, policy, options) for source in todo]
    return ScanResult(files=tuple(results), policy=policy.source)


def scan_source(source: Source, policy: Policy, options: ScanOptions) -> FileResult:
    if _WORKER is None and source.is_large_file():
        # Mapped where it is (sources.py): a truncation while it is read raises SIGBUS, which
        # must end a worker process, never the scan.
        return _scan_alone(source, policy, options)
    try:
        buf = source.read()
    except SourceError as exc:
        return _failed(source, str(exc))
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
    result = judge(source.display, source.relpath, buf, analysis, policy, options.today)
    if isinstance(buf, MappedFile) and not buf.unchanged():
        return _failed(source, CHANGED)
    return result


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


# ---------------------------------------------------------------------------------------------
# worker processes

_WORKER: tuple[Policy, ScanOptions] | None = None
_SIGINT = {signal.SIGINT}


def _start_worker(policy: Policy, options: ScanOptions) -> None:
    """Runs once in each worker. Ctrl-C reaches the whole process group; only the parent acts
    on it (it stops the workers), so no worker prints a KeyboardInterrupt traceback. The
    worker was started with SIGINT blocked (_submit_all), so none arrives before this."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)
    _WORKER = (policy, options)


def _scan_batch(batch: Sequence[Source]) -> list[FileResult]:
    assert _WORKER is not None, "_start_worker runs first"
    return [_guarded(source, *_WORKER) for source in batch]


def _guarded(source: Source, policy: Policy, options: ScanOptions) -> FileResult:
    try:
        return scan_source(source, policy, options)
    except Exception as exc:  # noqa: BLE001 - fail closed: a bug must never lose a verdict
        return _failed(source, f"picklegate could not scan this file ({type(exc).__name__}: "
                               f"{exc}); it is treated as unsafe. Please report this.")


def _batches(sources: Sequence[Source], workers: int) -> list[Sequence[Source]]:
    """Files go to the workers in small batches: one message per file costs as much as
    scanning a 2 KB checkpoint. About eight batches a worker keeps a few large files from
    leaving one worker busy while the others idle."""
    size = max(1, min(32, len(sources) // (workers * 8)))
    return [sources[i:i + size] for i in range(0, len(sources), size)]


def _scan_parallel(sources: Sequence[Source], policy: Policy, options: ScanOptions,
                   workers: int) -> list[FileResult]:
    results = _run_pool(sources, policy, options, workers)
    # A worker that dies (killed for memory, a crash in a C library) breaks the whole pool,
    # and every file not yet done fails with it. Each of those is scanned again alone: the
    # file that kills its worker becomes that file's error result, the others get verdicts.
    return [result if result is not None else _scan_alone(source, policy, options)
            for source, result in zip(sources, results, strict=True)]


def _scan_alone(source: Source, policy: Policy, options: ScanOptions) -> FileResult:
    [result] = _run_pool([source], policy, options, 1)
    return result if result is not None else _failed(
        source, "the worker process scanning this file died (SIGBUS: the file was truncated "
                "while it was read; or killed, or out of memory); the file is treated as "
                "unsafe. Scan it again when it is stable, and please report it if it persists")


def _run_pool(sources: Sequence[Source], policy: Policy, options: ScanOptions,
              workers: int) -> list[FileResult | None]:
    """Each source's result in order, None where the pool broke before it was done."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    batches = _batches(sources, workers)
    before = {child.pid for child in multiprocessing.active_children()}
    pool = ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(policy, options))
    try:
        futures = _submit_all(pool, batches)
        results = [result for future, batch in zip(futures, batches, strict=True)
                   for result in _outcome(future, batch)]
    except BaseException:               # Ctrl-C: stop our workers before leaving
        pool.shutdown(wait=False, cancel_futures=True)
        _terminate_children(before)
        raise
    pool.shutdown()
    return results


def _submit_all(pool: Executor,
                batches: list[Sequence[Source]]) -> list[Future[list[FileResult]]]:
    """Submit with SIGINT blocked: the workers start here and inherit the mask, so a Ctrl-C
    cannot reach one before it ignores SIGINT; the parent receives it when this returns."""
    if not hasattr(signal, "pthread_sigmask"):
        return [pool.submit(_scan_batch, batch) for batch in batches]
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    try:
        return [pool.submit(_scan_batch, batch) for batch in batches]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _outcome(future: Future[list[FileResult]],
             batch: Sequence[Source]) -> list[FileResult | None]:
    from concurrent.futures.process import BrokenProcessPool
    try:
        return list(future.result())
    except BrokenProcessPool:
        return [None] * len(batch)
    except Exception as exc:  # noqa: BLE001 - e.g. a result that does not pickle back
        return [_failed(source, f"picklegate could not scan this file ({type(exc).__name__}: "
                                f"{exc}); it is treated as unsafe. Please report this.")
                for source in batch]


def _failed(source: Source, message: str) -> FileResult:
    return FileResult(path=source.display, relpath=source.relpath, format="unknown",
                      status=Status.ERROR, error=message)


def _terminate_children(keep: set[int | None]) -> None:
    """End the workers this scan started, by pid: they ignore SIGINT, and the interpreter's
    exit would otherwise wait for each to finish its file."""
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.pid not in keep:
            child.terminate()
