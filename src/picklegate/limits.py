"""Every bound the scanner enforces, in one value. Hitting a bound is a finding, never a pass."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
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
    # Container and compression bounds (used by formats/).
    max_members: int = 100_000
    max_expanded_bytes: int = 8 * 1024**3
    max_depth: int = 8


DEFAULT_LIMITS = Limits()
