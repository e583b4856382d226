"""Differential test: the machine against CPython's own unpicklers on random opcode streams.

Each stream is run through ``pickle._Unpickler`` (pure Python) and ``pickle.Unpickler`` (C),
subclassed so that ``find_class`` only records the name and returns an inert stub: nothing real
is ever imported or called. Every name CPython passed to find_class must be among the machine's
imports (as mapped for Python 2 names), or be named by an UNRESOLVED finding. An UNRESOLVED that
does not name it does not excuse it: modelled exactly, the machine knows every str CPython has,
so needing such an excuse is a modelling gap. Conversely, when CPython loads all of the input
cleanly and the machine reports no finding, the two import lists must be identical.

The C unpickler runs twice: over a peekable file (a BufferedReader, which reads straight through
frames exactly as the machine does) and over a BytesIO, which has no ``peek()``: there _pickle
drops the unread rest of a FRAME when an argument runs past its end, so it executes different
bytes. The machine cannot follow that and instead reports a MALFORMED finding naming the FRAME;
only then may the BytesIO run import names the machine did not see (up to the desync it runs
exactly like the peekable run, which is always checked).

CPython raises at a byte that is not an opcode, padding included; the machine skips whitespace
and NUL between streams (numpy writes a trailing newline). The oracle mirrors that: after each
successful load it skips the same padding and loads again with a fresh unpickler, as repeated
``pickle.load(f)`` calls would.
"""
from __future__ import annotations

import _compat_pickle
import contextlib
import functools
import io
import pickle
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opbuilder import CODES, P

from picklegate.findings import FindingKind
from picklegate.machine import Collector, analyse_pickles

PADDING = b" \t\n\r\x0b\x0c\x00"
T = TypeVar("T")
MAX_STREAMS = 20

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# Inert stand-ins for everything find_class or persistent_load could return


def stub_class() -> type:
    """A fresh class per import, so BUILD's setattr on one never leaks into another."""

    class Stub:
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            # pickle.py's NEWOBJ also runs cls.__new__(cls) with a stub instance as cls.
            return object.__new__(cls if isinstance(cls, type) else type(cls))

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self

        # BUILD, APPEND(S), SETITEM(S) and ADDITEMS on a stub succeed, so loading goes on.
        def __setstate__(*args: Any) -> None:
            pass

        def append(self, item: Any) -> None:
            pass

        def extend(self, items: Any) -> None:
            pass

        def add(self, item: Any) -> None:
            pass

        def __setitem__(self, key: Any, value: Any) -> None:
            pass

        def __reduce__(self) -> Any:  # never pickled
            raise TypeError("stub")

    return Stub


def recording(base: type) -> type:
    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, file: Any, seen: list[tuple[str, str, int | None]]) -> None:
            # latin-1: STRING opcodes become str, as the machine assumes (numpy/joblib do this).
            super().__init__(file, encoding="latin1")
            self.seen = seen

        def find_class(self, module: str, name: str) -> type:
            # Only pickle.py exposes the protocol; the C unpickler's raw names are checked
            # against the machine's written_as instead.
            self.seen.append((module, name, getattr(self, "proto", None)))
            return stub_class()

        def persistent_load(self, pid: Any) -> Any:
            return stub_class()()

    return Recording


PY_UNPICKLER = recording(pickle._Unpickler)  # type: ignore[attr-defined]
C_UNPICKLER = recording(pickle.Unpickler)
assert C_UNPICKLER.__mro__[1].__module__ == "_pickle", "the C unpickler is not available"


def map_like_pickle_py(module: str, name: str, proto: int) -> tuple[str, str]:
    """pickle.py's find_class (3.11): the Python 2 mapping below protocol 3 (fix_imports)."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        if module in _compat_pickle.IMPORT_MAPPING:
            return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name


@contextlib.contextmanager
def address_space_cap(headroom: int = 768 * 2**20) -> Iterator[None]:
    """Random bytes make _pickle size its memo from LONG_BINPUT's index and pickle.py allocate
    BYTEARRAY8's length up front; under a cap those raise MemoryError instead of eating RAM."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * resource.getpagesize()
    cap = used + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


pytestmark = pytest.mark.skipif(
    resource is None or not sys.platform.startswith("linux"),
    reason="needs RLIMIT_AS and /proc to bound what random streams make CPython allocate")


# ---------------------------------------------------------------------------------------------
# Running CPython


Seen = list[tuple[str, str, "int | None"]]


def skip_padding(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] in PADDING:
        pos += 1
    return pos


class Run(NamedTuple):
    seen: Seen          # find_class calls, in order
    loads: int          # streams loaded without an error
    clean: bool         # every byte of the input was loaded (or was padding)


def load_all(data: bytes, unpickler: type, make_file: Callable[[bytes], Any],
             stop_position: Callable[[Any, Any], int]) -> Run:
    """Load streams one after another with fresh unpicklers, as repeated pickle.load(f) does."""
    seen: Seen = []
    pos = 0
    loads = 0
    while pos < len(data) and loads < MAX_STREAMS:
        file = make_file(data[pos:])
        u = unpickler(file, seen)
        try:
            u.load()
        except Exception:
            return Run(seen, loads, False)
        loads += 1
        pos = skip_padding(data, pos + stop_position(u, file))
    return Run(seen, loads, pos >= len(data) and loads > 0)


def after_stop_py(u: Any, file: io.BytesIO) -> int:
    # pickle.py reads a whole frame at once; the STOP was where the frame's unread part begins.
    frame = u._unframer.current_frame
    unread = len(frame.getbuffer()) - frame.tell() if frame is not None else 0
    return file.tell() - unread


def after_load(u: Any, file: Any) -> int:
    return int(file.tell())


VARIANTS: dict[str, tuple[type, Callable[[bytes], Any], Callable[[Any, Any], int]]] = {
    "pickle.py": (PY_UNPICKLER, io.BytesIO, after_stop_py),
    "_pickle/peek": (C_UNPICKLER, lambda d: io.BufferedReader(io.BytesIO(d)), after_load),
    "_pickle/BytesIO": (C_UNPICKLER, io.BytesIO, after_load),
}


# ---------------------------------------------------------------------------------------------
# The comparison


def divergences(data: bytes) -> list[str]:
    out: Collector = analyse_pickles(data)
    imports = {(r.module, r.name, r.written_as) for r in out.imports}
    unresolved = {(f.module, f.name) for f in out.findings if f.kind is FindingKind.UNRESOLVED}
    frame_trouble = any(f.kind is FindingKind.MALFORMED and "FRAME" in f.message
                        for f in out.findings)

    problems = []
    with address_space_cap():
        runs = {variant: load_all(data, *spec) for variant, spec in VARIANTS.items()}
    for variant, (seen, _, _) in runs.items():
        if variant == "_pickle/BytesIO" and frame_trouble:
            continue
        for module, name, proto in seen:
            if proto is not None:       # pickle.py: compare what it would import
                mapped = map_like_pickle_py(module, name, proto)
                written = None if mapped == (module, name) else f"{module}.{name}"
                ok = (*mapped, written) in imports
            else:                       # _pickle: the raw name, as written in the stream
                ok = ((module, name, None) in imports
                      or any(w == f"{module}.{name}" for _, _, w in imports))
            if not ok and (module, name) not in unresolved:
                problems.append(f"{variant} imported {module}.{name} (proto {proto}); machine "
                                f"imports {sorted(imports, key=str)}, findings "
                                f"{[(f.kind.value, f.offset, f.message) for f in out.findings]}")
    # Reading straight through like the machine, every stream _pickle completed the machine
    # completed too (it may complete more: it goes on where CPython raises).
    if out.completed < runs["_pickle/peek"].loads:
        problems.append(f"_pickle loaded {runs['_pickle/peek'].loads} streams, the machine "
                        f"completed {out.completed}: {out.findings}")
    # No finding and a clean load: not one import more or less than pickle.py performed.
    py = runs["pickle.py"]
    if py.clean and not out.findings:
        # The machine records a repeated import once with its count (GlobalRef.count): compare
        # every name with how often it was imported, in the order of first import.
        want = _tally((map_like_pickle_py(m, n, proto or 0), 1) for m, n, proto in py.seen)
        got = _tally(((r.module, r.name), r.count) for r in out.imports)
        if got != want:
            problems.append(f"clean input: pickle.py imported {want}, the machine {got}")
    return problems


def _tally(imports: Iterable[tuple[tuple[str, str], int]]) -> list[tuple[tuple[str, str], int]]:
    counts: dict[tuple[str, str], int] = {}
    for name, count in imports:
        counts[name] = counts.get(name, 0) + count
    return list(counts.items())


# ---------------------------------------------------------------------------------------------
# Stream generation
#
# Purely random opcodes make CPython fail within a few bytes, long before any import. Streams are
# therefore built from "gadgets": short, mostly stack-neutral opcode runs (an import through any
# string opcode, direct or through the memo, behind decoys, MARKs and DUPs; GLOBAL/INST/OBJ with
# REDUCE/NEWOBJ/BUILD; memo writes; PROTO switches; FRAMEs around the following gadgets), with
# single random opcodes and raw garbage mixed in as noise. Ops are (opbuilder method, *args).
#
# The generator draws through a small chooser interface: a seeded random.Random for volume, and
# a hypothesis-backed one (below) for a smaller run that can shrink a failure to a minimal one.


class Chooser(Protocol):
    def randint(self, a: int, b: int) -> int: ...
    def choice(self, seq: Sequence[T]) -> T: ...
    def randbytes(self, n: int) -> bytes: ...


PY2_PAIRS = sorted(_compat_pickle.NAME_MAPPING)[::5]
PY2_MODULES = sorted(_compat_pickle.IMPORT_MAPPING)[::4]
MODULES = ["os", "posix", "builtins", "__builtin__", "copy_reg", "exceptions", "a.b", "",
           "m\u00e9"] + PY2_MODULES
NAMES = ["system", "eval", "getcwd", "_reconstructor", "StandardError", "path.join", "",
         "\u4e2d"]
CHARS = "ab.\n'\\\x00\u00e9\u4e2d\ud800"
STRING_OPS = ["short_binunicode", "binunicode", "binunicode8", "unicode", "string",
              "binstring", "short_binstring"]
PLAIN_OPS = ["mark", "pop", "pop_mark", "dup", "stack_global", "reduce", "build", "obj",
             "newobj", "newobj_ex", "tuple", "tuple1", "tuple2", "tuple3", "empty_tuple",
             "empty_list", "append", "appends", "list", "empty_dict", "setitem", "setitems",
             "dict", "empty_set", "additems", "frozenset", "none", "newtrue", "binpersid",
             "memoize", "stop", "readonly_buffer"]
NON_STRINGS = [("none",), ("empty_tuple",), ("binint1", 1), ("short_binbytes", b"os")]
AFTER_IMPORT = [  # drop it, call it, instantiate it, BUILD it, memoize it, leave it
    [("pop",)], [("empty_tuple",), ("reduce",), ("pop",)],
    [("short_binunicode", "id"), ("tuple1",), ("reduce",), ("pop",)],
    [("empty_tuple",), ("newobj",), ("pop",)],
    [("empty_tuple",), ("empty_dict",), ("newobj_ex",), ("pop",)],
    [("empty_tuple",), ("reduce",), ("empty_dict",), ("build",), ("pop",)],
    [("binput", 4), ("pop",)], [],
]
Ops = list[tuple[Any, ...]]


def gen_text(r: Chooser, pool: list[str]) -> str:
    if r.randint(0, 3):
        return r.choice(pool)
    return "".join(r.choice(CHARS) for _ in range(r.randint(0, 3)))


def gen_pair(r: Chooser) -> tuple[str, str]:
    if r.randint(0, 2):
        return r.choice(MODULES), r.choice(NAMES)
    return r.choice(PY2_PAIRS)


def push_str(r: Chooser, pool: list[str]) -> Ops:
    return [(r.choice(STRING_OPS), gen_text(r, pool))]


def memo_write(r: Chooser, memo: set[int]) -> Ops:
    """A memo write of the top of the stack (``memo``: the keys the generator believes set)."""
    kind = r.choice(["binput", "memoize", "put", "long_binput"])
    if kind == "memoize":
        memo.add(len(memo))
        return [("memoize",)]
    if kind == "put" and r.randint(0, 4) == 0:      # text indices, parsed base 10 by CPython
        return [("put", r.choice([b"01", b" 2", b"+3", b"1_0", b"0x1", b"-1"]))]
    key = r.randint(0, 4)
    memo.add(key)
    return [(kind, key)]


def memo_read(r: Chooser, memo: set[int]) -> Ops:
    kind = r.choice(["binget", "get", "long_binget"])
    if kind == "get" and r.randint(0, 5) == 0:
        return [("get", r.choice([b"02", b" 1", b"0x1"]))]
    if memo and r.randint(0, 7):
        return [(kind, r.choice(sorted(memo)))]
    return [(kind, r.randint(0, 4))]


def operand(r: Chooser, pool: list[str], memo: set[int], second: bool = False) -> Ops:
    """A STACK_GLOBAL operand: a string, maybe stored too, or read from the memo, or (as the
    name) a DUP of the module, or a non-string."""
    how = r.randint(0, 11)
    if how <= 4:
        return push_str(r, pool) + (memo_write(r, memo) if how >= 3 else [])
    if how <= 8 and (memo or how == 8):
        return memo_read(r, memo)
    if how <= 8:
        return push_str(r, pool) + memo_write(r, memo)
    if how <= 10:
        return [("dup",)] if second else push_str(r, pool)
    return [r.choice(NON_STRINGS)]


def decoys(r: Chooser, memo: set[int]) -> Ops:
    ops: Ops = []
    for _ in range(r.randint(0, 2)):
        way = r.randint(0, 3)
        if way == 0:
            ops += push_str(r, NAMES) + [("pop",)]
        elif way == 1:
            ops += [("mark",)] + push_str(r, MODULES) + push_str(r, NAMES) + [("pop_mark",)]
        elif way == 2:
            ops += push_str(r, MODULES) + memo_write(r, memo) + [("pop",)]
        else:
            ops += [("mark",), ("pop",)]
    return ops


def gadget(r: Chooser, memo: set[int]) -> Ops:
    kind = r.randint(0, 21)
    if kind <= 6:                                   # STACK_GLOBAL from two operands
        ops = operand(r, MODULES, memo) + decoys(r, memo)
        ops += operand(r, NAMES, memo, second=True) + decoys(r, memo)
        return ops + [("stack_global",)] + r.choice(AFTER_IMPORT)
    if kind <= 8:                                   # GLOBAL
        return [("global_", *gen_pair(r))] + r.choice(AFTER_IMPORT)
    if kind == 9:                                   # INST, usually after a MARK
        mark = [("mark",)] if r.randint(0, 4) else []
        args = push_str(r, NAMES) if r.randint(0, 1) else []
        return mark + args + [("inst", *gen_pair(r))] + r.choice(AFTER_IMPORT)
    if kind == 10:                                  # OBJ over an imported class
        return [("mark",), ("global_", *gen_pair(r))] + push_str(r, NAMES) + [("obj",)] \
            + r.choice(AFTER_IMPORT)
    if kind <= 12:                                  # a string parked in the memo
        return push_str(r, r.choice([MODULES, NAMES])) + memo_write(r, memo) + [("pop",)]
    if kind == 13:
        return [("proto", r.randint(0, 5))]
    if kind == 14:                                  # containers holding strings
        way = r.randint(0, 3)
        if way == 0:
            return [("empty_list",)] + push_str(r, NAMES) + [("append",), ("pop",)]
        if way == 1:
            return [("mark",)] + push_str(r, MODULES) + push_str(r, NAMES) + [("tuple",),
                                                                             ("pop",)]
        if way == 2:
            return [("empty_dict",)] + push_str(r, NAMES) * 2 + [("setitem",), ("pop",)]
        return [("empty_set",), ("mark",)] + push_str(r, NAMES) + [("additems",), ("pop",)]
    if kind == 15:                                  # a FRAME around the next 1-3 gadgets
        return [("frame_next", r.randint(1, 3), r.choice([0, 0, 0, 0, 0, 0, -1, 1, -3, 2]))]
    if kind == 16:                                  # persistent objects
        return r.choice([[("persid", "0"), ("pop",)], [("none",), ("binpersid",), ("pop",)]])
    if kind == 17:                                  # noise: a random opcode or raw bytes
        if r.randint(0, 1):
            return [(r.choice(PLAIN_OPS),)]
        return [("raw", r.randbytes(r.randint(1, 3)))]
    if kind == 18:                                  # rare: CPython stops here
        return r.choice([[("ext1", 1)], [("proto", 6)], [("stop",)], []])
    if kind == 19:
        return push_str(r, NAMES) + [("dup",), ("memoize",), ("pop",), ("pop",)]
    return r.choice([[("none",), ("dup",), ("pop",), ("pop",)], [("mark",), ("pop",)],
                     [("mark",), ("pop_mark",)]])


def assemble(gadgets: list[Ops]) -> bytes:
    """Ops to bytes; ("frame_next", k, delta) frames the next k gadgets, off by delta bytes."""
    pieces: list[bytes] = []
    frames: list[tuple[int, int, int]] = []           # (piece index, k, delta)
    for g in gadgets:
        p = P()
        for name, *args in g:
            if name == "frame_next":
                frames.append((len(pieces), *args))
                continue
            if name in ("string", "binstring", "short_binstring"):
                args = [args[0].encode("utf-8", "surrogatepass")]   # latin-1: any bytes do
            getattr(p, name)(*args)
        pieces.append(p.bytes())
    for at, k, delta in reversed(frames):
        size = max(0, len(b"".join(pieces[at + 1:at + 1 + k])) + delta)
        pieces[at] += P().frame(size).bytes()
    return b"".join(pieces)


def gen_stream(r: Chooser) -> bytes:
    data = b""
    for _ in range(r.randint(1, 3)):                 # concatenated streams
        head = P().proto(r.randint(0, 5)).bytes() if r.randint(0, 2) else b""
        memo: set[int] = set()
        body = assemble([gadget(r, memo) for _ in range(r.randint(0, 12))])
        tail = r.choice([b"N.", b"N.", b"N.", b"", b"N.\n", b"N.\x00 ", b"."])
        data += head + body + tail
    if r.randint(0, 3) == 0:                         # truncated anywhere
        data = data[:r.randint(0, len(data))]
    return data


def test_random_streams() -> None:
    rng = random.Random(0x9E3779B9)
    failures = []
    for i in range(25000):
        data = gen_stream(rng)
        problems = divergences(data)
        if problems:
            failures.append(f"#{i} {data!r}: {problems[0]}")
    assert not failures, f"{len(failures)} divergent streams, e.g.\n" + "\n".join(failures[:5])


@functools.cache
def _ints(a: int, b: int) -> st.SearchStrategy[int]:
    return st.integers(a, b)


class Drawn:
    """The chooser over hypothesis draws: choices shrink toward each list's first entry."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def randint(self, a: int, b: int) -> int:
        return self.draw(_ints(a, b))

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.randint(0, len(seq) - 1)]

    def randbytes(self, n: int) -> bytes:
        return self.draw(st.binary(min_size=n, max_size=n))


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    return gen_stream(Drawn(draw))


@settings(max_examples=800, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams())
def test_random_streams_shrinking(data: bytes) -> None:
    problems = divergences(data)
    assert not problems, f"{data!r}: " + "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# Mutation fuzzing of real pickles (seeded): byte flips, opcode insertion, splices, truncation


class GetCwd:
    def __reduce__(self) -> tuple[Any, ...]:
        import os
        return (os.getcwd, ())


class Rebuilt:
    def __init__(self) -> None:
        self.a = [1, "two", b"three"]
        self.b = {"k": (None, True, 1.5)}


def corpus() -> list[bytes]:
    items: list[bytes] = []
    for proto in range(6):
        items.append(pickle.dumps(GetCwd(), protocol=proto))
        items.append(pickle.dumps([Rebuilt(), Rebuilt(), {1, 2}, frozenset("ab"), len],
                                  protocol=proto))
        items.append(pickle.dumps({"x": [GetCwd()] * 2, "y": "s" * 300, "z": 10**30},
                                  protocol=proto))
    items.append(P().proto(4).short_binunicode("os").memoize().short_binunicode("system")
                 .memoize().stack_global().memoize().short_binunicode("id").tuple1().reduce()
                 .stop().bytes())
    items.append(P().proto(2).mark().binunicode("id").inst("__builtin__", "eval").stop().bytes())
    return items


OPCODE_BYTES = bytes(sorted(CODES.values()))


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        at = rng.randint(0, len(b))
        if kind == 0 and b:                                   # replace a byte
            b[min(at, len(b) - 1)] = rng.choice(OPCODE_BYTES + bytes(range(0, 256, 17)))
        elif kind == 1:                                       # insert an opcode byte
            b[at:at] = bytes([rng.choice(OPCODE_BYTES)])
        elif kind == 2:                                       # delete a run
            del b[at:at + rng.randint(1, 4)]
        elif kind == 3:                                       # duplicate a run
            b[at:at] = b[at:at + rng.randint(1, 12)]
        elif kind == 4:                                       # splice in part of another
            start = rng.randrange(len(other))
            b[at:at] = other[start:start + rng.randint(1, 40)]
        else:                                                 # truncate
            del b[at:]
    return bytes(b)


def test_mutated_real_pickles() -> None:
    rng = random.Random(20240611)
    items = corpus()
    failures = []
    for i in range(8000):
        data = mutate(rng, rng.choice(items), rng.choice(items))
        if rng.random() < 0.2:                                # concatenated with another
            data += bytes([rng.choice(PADDING)]) * rng.randint(0, 2) + rng.choice(items)
        problems = divergences(data)
        if problems:
            failures.append(f"#{i} {data!r}: {problems[0]}")
    assert not failures, "\n".join(failures[:5])


# ---------------------------------------------------------------------------------------------
# The oracle itself must see what it is meant to see, or the comparison above proves nothing


def test_oracle_records_every_unpickler() -> None:
    data = (P().proto(2).global_("__builtin__", "eval").pop()
            .short_binunicode("os").short_binunicode("system").stack_global().stop().bytes())
    runs = {v: load_all(data, *spec) for v, spec in VARIANTS.items()}
    assert runs["pickle.py"] == ([("__builtin__", "eval", 2), ("os", "system", 2)], 1, True)
    assert runs["_pickle/peek"] == ([("__builtin__", "eval", None), ("os", "system", None)], 1,
                                    True)
    assert runs["_pickle/BytesIO"] == runs["_pickle/peek"]
    assert divergences(data) == []
    # An error after an import: the import still counts, the run is not clean.
    broken = load_all(data[:-1] + b"R.", *VARIANTS["pickle.py"])
    assert broken == ([("__builtin__", "eval", 2), ("os", "system", 2)], 0, False)


def test_oracle_loads_concatenated_streams_and_padding() -> None:
    one = P().proto(4).global_("os", "system").stop().bytes()
    two = P().proto(2).global_("copy_reg", "_reconstructor").stop().bytes()
    seen, loads, clean = load_all(one + b"\n\x00" + two, *VARIANTS["pickle.py"])
    assert loads == 2 and clean and [s[:2] for s in seen] == [("os", "system"),
                                                              ("copy_reg", "_reconstructor")]
    assert divergences(one + b"\n\x00" + two) == []


def test_oracle_detects_a_missing_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that forgot an import is caught, one that mismapped a name too, and one that
    reported an import too many in a clean pickle."""
    import picklegate.machine as machine

    data = P().proto(2).global_("copy_reg", "_reconstructor").stop().bytes()
    monkeypatch.setattr(machine.PickleMachine, "import_global",
                        lambda self, m, n, o: machine.Opaque("forgotten"))
    assert divergences(data)
    monkeypatch.undo()
    monkeypatch.setattr(machine, "map_python2_name", lambda m, n, proto: (m, n))
    problems = divergences(data)
    assert problems and all("pickle.py" in p for p in problems)   # _pickle gives raw names
    monkeypatch.undo()
    real = machine.PickleMachine.import_global

    def twice(self: Any, m: str, n: str, o: str) -> Any:
        real(self, m, n, o)
        return real(self, m, n, o)
    monkeypatch.setattr(machine.PickleMachine, "import_global", twice)
    assert [p for p in divergences(data) if p.startswith("clean input")]


def test_oracle_sees_the_frame_desync() -> None:
    """_pickle over a BytesIO executes bytes the machine read as string payload; the machine
    must say so (a MALFORMED FRAME finding), which is what exempts that run."""
    hidden = b"cos\nsystem\n0"
    after = b"xxxxx" + b"U" + bytes([len(hidden)])
    body = b"\x8c" + bytes([len(after)]) + b"yy"
    data = P().proto(4).frame(len(body)).raw(body + after + hidden + b".").bytes()
    seen, _, _ = load_all(data, *VARIANTS["_pickle/BytesIO"])
    assert [s[:2] for s in seen] == [("os", "system")]
    out = analyse_pickles(data)
    assert out.imports == []
    assert any(f.kind is FindingKind.MALFORMED and "FRAME" in f.message for f in out.findings)
    assert divergences(data) == []
