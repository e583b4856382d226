"""Every bound the scanner enforces, in one value, and the per-file budgets that back them.

The resource model (README "Limits"): every file ends with a verdict within a TIME budget and
a MEMORY budget. Two layers enforce it:

* Counted bounds (opcodes, stack, memo, members, expanded bytes, nesting depth) stop the work
  a hostile count or length would drive, deterministically, at the place it happens; the
  analysis goes on with the rest of the file.
* A :class:`Guard` per file is the backstop for what no count anticipates: a wall-clock
  deadline and a ceiling on the anonymous memory the analysis adds. It is checked by a
  periodic ``SIGALRM`` (``signal.setitimer(ITIMER_REAL)``, main thread only) and
  cooperatively by :func:`checkpoint`, which the loops that can grow call
  (decompression, archive members). Exceeding either raises a :class:`BudgetExceeded`, which
  ``scan.scan_source`` turns into a ``limit-exceeded`` finding next to what was found so far.

Hitting a bound is a finding, never a pass.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from types import FrameType
from typing import Any

MIB = 1 << 20
# How often the timer looks at the clock and the memory: often enough that memory cannot run
# far past the budget between two looks (Python grows a few hundred MiB/s at most in the
# loops picklegate runs), rarely enough to cost nothing (~10 reads of /proc per second).
GUARD_INTERVAL = 0.05
# Memory one memo entry and one stack item of the opcode machine cost, measured with
# tracemalloc on the machine's symbolic values (a dict slot + int key + a small dataclass):
# the bounds on those are derived from the memory budget with these.
MEMO_ENTRY_BYTES = 160
STACK_ITEM_BYTES = 160


@dataclass(frozen=True)
class Limits:
    # Per-file budgets. Defaults fit a CI runner whatever the input (README "Limits").
    time_budget: float = 60.0          # seconds of wall-clock time for one file
    memory_budget: int = 512           # MiB of memory one file's analysis may add
    # Opcodes per pickle stream. A real 10k-tensor state_dict needs a few hundred thousand.
    max_opcodes: int = 50_000_000
    # Items on the stack and depth of MARK nesting: CPython has no bound, but real pickles
    # stay far below these (the pickler batches APPENDS/SETITEMS by 1000).
    max_stack: int = 1_000_000
    max_marks: int = 100_000
    max_memo: int = 10_000_000
    # Symbolic items (container entries and containers) kept across one stream for format
    # readers (joblib's wrapper states, torch's keys). Beyond it containers only count, which
    # their readers treat as unknown: memory follows what an import can need, not file size.
    max_kept_items: int = 100_000
    # A GLOBAL/INST name line longer than this is never materialised: no importable name is
    # (a path component is at most 255 bytes); it is skipped and reported.
    max_name_bytes: int = 64 * 1024
    # Pickle streams in one file or member (concatenated pickles, torch legacy has five).
    max_streams: int = 10_000
    # Container and compression bounds (used by formats/), shared by every nesting level.
    max_members: int = 100_000
    # Decompressed bytes per top-level file. Decompressed data is spilled to an unlinked
    # temporary file, so this bounds disk and work, not memory: 1 GiB of zeros decompresses
    # and spills in ~5 s from gzip, ~20 s from xz (the slowest codec) on a 2-core runner.
    max_expanded_bytes: int = 1024**3
    max_depth: int = 8

    def bounded(self) -> Limits:
        """These limits with the machine's state bounds no larger than the memory budget
        can hold, so the counted bound (a finding at the opcode) is met before the guard."""
        budget = self.memory_budget * MIB
        return replace(self, max_memo=min(self.max_memo, budget // MEMO_ENTRY_BYTES),
                       max_stack=min(self.max_stack, budget // STACK_ITEM_BYTES))

    def merged(self, overrides: Iterable[tuple[str, Any]]) -> Limits:
        """These limits with some fields replaced (from a policy's `limits:` or CLI flags)."""
        return replace(self, **dict(overrides))


LIMIT_NAMES = tuple(f.name for f in fields(Limits))
DEFAULT_LIMITS = Limits()

# How a user raises each limit: the CLI flag and the policy key (README "Limits").
HOW_TO_RAISE = {
    "time_budget": "--time-budget SECONDS or `limits: {time_budget: SECONDS}` in the policy",
    "memory_budget": "--memory-budget MiB or `limits: {memory_budget: MiB}` in the policy",
}


def how_to_raise(name: str) -> str:
    return HOW_TO_RAISE.get(name, f"`limits: {{{name}: N}}` in the policy")


# ---------------------------------------------------------------------------------------------
# The per-file guard


class BudgetExceeded(BaseException):
    """A per-file budget ran out. A BaseException, so that no reader's ``except Exception``
    (which turns a library's error into a 'malformed' finding) can swallow it."""

    budget = "budget"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TimeBudget(BudgetExceeded):
    budget = "time_budget"


class MemoryBudget(BudgetExceeded):
    budget = "memory_budget"


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def anonymous_memory() -> int | None:
    """Bytes of this process's resident anonymous memory, or None where /proc is absent.

    /proc/self/statm (proc(5)): resident minus shared is what malloc holds. File-backed pages
    (the mapped source, spilled decompressed data) are left out: the kernel reclaims them, so
    they cannot exhaust the runner."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            parts = statm.read().split()
        return (int(parts[1]) - int(parts[2])) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Guard:
    """The time and memory budgets of the file being analysed."""

    limits: Limits
    deadline: float = 0.0
    memory_ceiling: int | None = None

    def start(self) -> None:
        self.deadline = time.monotonic() + self.limits.time_budget
        base = anonymous_memory()
        self.memory_ceiling = None if base is None else base + self.limits.memory_budget * MIB

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeBudget(f"the analysis ran past the time budget of "
                             f"{self.limits.time_budget:g} s")
        if self.memory_ceiling is not None:
            used = anonymous_memory()
            if used is not None and used > self.memory_ceiling:
                raise MemoryBudget(f"the analysis needed more than the memory budget of "
                                   f"{self.limits.memory_budget} MiB")


_local = threading.local()


def checkpoint() -> None:
    """Raise when the current file's time or memory budget is spent. Cheap (a clock read and,
    at most every GUARD_INTERVAL, one read of /proc): call it in every loop whose length the
    input drives and that is not already bounded by a count."""
    guard: Guard | None = getattr(_local, "guard", None)
    if guard is None:
        return
    now = time.monotonic()
    if now < getattr(_local, "next_look", 0.0):
        return
    _local.next_look = now + GUARD_INTERVAL
    guard.check()


@contextmanager
def guarded(limits: Limits) -> Iterator[Guard]:
    """Enforce ``limits``' budgets over the body: checkpoint() everywhere, and in the main
    thread a periodic SIGALRM whose handler raises between two bytecodes wherever the body is
    (the opcode machine too, which needs no hook of its own)."""
    guard = Guard(limits)
    guard.start()
    previous_guard = getattr(_local, "guard", None)
    _local.guard, _local.next_look = guard, 0.0
    use_timer = threading.current_thread() is threading.main_thread() \
        and hasattr(signal, "setitimer")
    armed = [True]

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if armed[0]:
            guard.check()

    previous_handler: Any = None
    if use_timer:
        previous_handler = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, GUARD_INTERVAL, GUARD_INTERVAL)
    try:
        yield guard
    finally:
        armed[0] = False
        if use_timer:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, previous_handler)
        _local.guard = previous_guard
