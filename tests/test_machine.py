"""The symbolic opcode machine, on hand-assembled opcode streams and real pickles.

Every row is (id, stream, expected imports, expected finding kinds). Imports are compared in
order as (module, name, offset, opcode), an offset of None meaning "not checked"; finding kinds
are compared as a set. Nothing here is ever unpickled.
"""
from __future__ import annotations

import os
import pickle
import struct
import textwrap
from typing import Any, NamedTuple

import pytest
from opbuilder import P

from picklegate.findings import FindingKind
from picklegate.limits import DEFAULT_LIMITS, Limits
from picklegate.machine import Collector, analyse_pickles

MAL = FindingKind.MALFORMED
UNR = FindingKind.UNRESOLVED
LIM = FindingKind.LIMIT

Imp = tuple[str, str, "int | None", str]


class Case(NamedTuple):
    id: str
    data: bytes
    imports: list[Imp]
    kinds: set[FindingKind]
    limits: Limits = DEFAULT_LIMITS


def analyse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Collector:
    return analyse_pickles(data, limits=limits)


def check(case: Case) -> Collector:
    out = analyse(case.data, case.limits)
    got = [(r.module, r.name, r.offset, r.opcode) for r in out.imports]
    want = [(m, n, got[i][2] if off is None and i < len(got) else off, op)
            for i, (m, n, off, op) in enumerate(case.imports)]
    assert got == want, f"imports: {got} != {want}; findings: {out.findings}"
    kinds = {f.kind for f in out.findings}
    assert kinds == case.kinds, [(f.kind.value, f.offset, f.message) for f in out.findings]
    return out


def sg(p: P, label: str = "sg") -> P:
    """STACK_GLOBAL at a remembered offset, then STOP."""
    return p.label(label).stack_global().stop()


def stack_global_case(id: str, p: P, module: str, name: str,
                      kinds: frozenset[FindingKind] = frozenset(),
                      opcode: str = "STACK_GLOBAL") -> Case:
    sg(p)
    return Case(id, p.bytes(), [(module, name, p.labels["sg"], opcode)], set(kinds))


# ---------------------------------------------------------------------------------------------
# GLOBAL, INST, OBJ


def _global_cases() -> list[Case]:
    cases = [
        Case("global-p0", P().global_("os", "system").stop().bytes(),
             [("os", "system", 0, "GLOBAL")], set()),
        Case("global-reduce-p2",
             P().proto(2).global_("os", "system").binunicode("id").tuple1().reduce().stop()
             .bytes(), [("os", "system", 2, "GLOBAL")], set()),
        Case("global-dotted-name-p4", P().proto(4).global_("os", "path.join").stop().bytes(),
             [("os", "path.join", 2, "GLOBAL")], set()),
        Case("two-globals", P().proto(2).global_("os", "system").pop()
             .global_("subprocess", "Popen").stop().bytes(),
             [("os", "system", 2, "GLOBAL"), ("subprocess", "Popen", 14, "GLOBAL")], set()),
        Case("inst-with-mark", P().mark().string("id").inst("os", "system").stop().bytes(),
             [("os", "system", 7, "INST")], set()),
        # pickle.py's load_inst calls find_class before pop_mark: the import happens even
        # though the opcode then fails for want of a MARK.
        Case("inst-without-mark", P().inst("os", "system").stop().bytes(),
             [("os", "system", 0, "INST")], {MAL}),
        Case("obj", P().mark().global_("os", "system").string("id").obj().stop().bytes(),
             [("os", "system", 1, "GLOBAL")], set()),
        Case("obj-without-class", P().mark().obj().stop().bytes(), [], {MAL}),
        Case("newobj", P().proto(2).global_("os", "system").empty_tuple().newobj().stop()
             .bytes(), [("os", "system", 2, "GLOBAL")], set()),
        Case("global-name-not-utf8", P().global_(b"os\xff", "system").none().stop().bytes(),
             [], {UNR}),
        # pickle.py's readline() at the end of the data returns the rest without a newline and
        # [:-1] drops its last byte: find_class("os", "sys") still runs.
        Case("global-name-at-eof", P().raw(b"cos\nsyst").bytes(), [("os", "sys", 0, "GLOBAL")],
             {MAL}),
    ]
    return cases


# ---------------------------------------------------------------------------------------------
# STACK_GLOBAL: every string opcode, directly and through every memo write/read pair

STRING_OPS = ["unicode", "binunicode", "short_binunicode", "binunicode8", "string", "binstring",
              "short_binstring"]
PUTS = {"put": lambda p, i: p.put(i), "binput": lambda p, i: p.binput(i),
        "long_binput": lambda p, i: p.long_binput(i), "memoize": lambda p, i: p.memoize()}
GETS = {"get": lambda p, i: p.get(i), "binget": lambda p, i: p.binget(i),
        "long_binget": lambda p, i: p.long_binget(i)}


def _string_cases() -> list[Case]:
    cases = []
    for op in STRING_OPS:
        p = P().proto(4)
        getattr(p, op)("os")
        getattr(p, op)("system")
        cases.append(stack_global_case(f"sg-{op}", p, "os", "system"))
        for put, write in PUTS.items():
            for get, read in GETS.items():
                p = P().proto(4)
                write(getattr(p, op)("os"), 0).pop()
                write(getattr(p, op)("system"), 1).pop()
                read(read(p, 0), 1)
                cases.append(stack_global_case(f"sg-{op}-{put}-{get}", p, "os", "system"))
    # Mixed opcodes for the two operands, and a name that needs the full UTF-8 range.
    cases.append(stack_global_case("sg-mixed", P().proto(4).string("os").binunicode8("system"),
                                   "os", "system"))
    cases.append(stack_global_case("sg-non-ascii", P().proto(4).short_binunicode("m\u00e9")
                                   .unicode("\u4e2d\u6587"), "m\u00e9", "\u4e2d\u6587"))
    return cases


# ---------------------------------------------------------------------------------------------
# Stack discipline, memo semantics, decoys


def _stack_cases() -> list[Case]:
    s = P.short_binunicode
    return [
        stack_global_case("dup-pop", s(s(P().proto(4), "os").dup().pop(), "system"),
                          "os", "system"),
        stack_global_case("dup-both-operands", s(P().proto(4), "os").dup(), "os", "os"),
        stack_global_case("mark-pop-mark", s(s(P().proto(4), "os").mark(), "junk").pop_mark()
                          .short_binunicode("system"), "os", "system"),
        # POP on an empty mark frame pops the MARK itself (load_pop).
        stack_global_case("pop-removes-mark", s(P().proto(4), "os").mark().pop()
                          .short_binunicode("system"), "os", "system"),
        stack_global_case("mark-then-pop-items", s(s(P().proto(4), "os").mark(), "a").pop()
                          .pop().short_binunicode("system"), "os", "system"),
        # A MARK between the operands hides the module from STACK_GLOBAL: underflow, no import
        # (CPython raises at the pop, so there is nothing to resolve).
        Case("mark-between-operands", sg(s(s(P().proto(4), "os").mark(), "system")).bytes(),
             [], {MAL}),
        Case("pop-mark-without-mark", P().pop_mark().none().stop().bytes(), [], {MAL}),
        Case("underflow-reduce", P().reduce().stop().bytes(), [], {MAL}),
        Case("underflow-stop", P().stop().bytes(), [], {MAL}),
        Case("underflow-stack-global", sg(P().proto(4)).bytes(), [], {MAL}),
    ]


def _memo_cases() -> list[Case]:
    s = P.short_binunicode
    return [
        # MEMOIZE stores at len(memo), not at a running counter or max index + 1.
        stack_global_case("memoize-at-len", s(P().proto(4), "a").binput(5).pop()
                          .short_binunicode("os").memoize().pop().binget(1)
                          .short_binunicode("system"), "os", "system"),
        # BINPUT 1 then MEMOIZE: len(memo) is 1, so MEMOIZE overwrites key 1 ...
        stack_global_case("memoize-collides-with-binput", s(P().proto(4), "decoy").binput(1)
                          .pop().short_binunicode("os").memoize().pop().binget(1)
                          .short_binunicode("system"), "os", "system"),
        # ... and, len(memo) still being 1, so does the next MEMOIZE.
        stack_global_case("memoize-collides-twice", s(P().proto(4), "decoy").binput(1).pop()
                          .short_binunicode("os").memoize().pop().short_binunicode("posix")
                          .memoize().pop().binget(1).short_binunicode("system"),
                          "posix", "system"),
        stack_global_case("memo-overwrite-binput", s(P().proto(4), "builtins").binput(0).pop()
                          .short_binunicode("os").binput(0).pop().binget(0)
                          .short_binunicode("system"), "os", "system"),
        stack_global_case("memo-overwrite-put-get", s(P().proto(4), "builtins").put(3).pop()
                          .short_binunicode("os").put(3).pop().get(3)
                          .short_binunicode("system"), "os", "system"),
        stack_global_case("memo-shared-across-put-kinds", s(P().proto(4), "os").long_binput(7)
                          .pop().short_binunicode("system").put(8).pop().get(7).binget(8),
                          "os", "system"),
        # Regression: PUT/GET arguments are base 10 in CPython ("010" is key 10). Read with
        # base 0 the PUT failed, the decoy stayed in the memo and was reported instead of os.
        stack_global_case("put-text-leading-zero", s(P().proto(4), "decoy").binput(10).pop()
                          .short_binunicode("os").put(b"010").pop().binget(10)
                          .short_binunicode("system"), "os", "system"),
        stack_global_case("get-text-leading-zero", s(P().proto(4), "os").binput(10).pop()
                          .get(b"010").short_binunicode("system"), "os", "system"),
        Case("put-text-hex-is-not-base-10", P().proto(4).none().put(b"0x1").stop().bytes(), [],
             {MAL}),
        Case("put-negative", P().none().put(-1).stop().bytes(), [], {MAL}),
        Case("long-binget-huge-index", P().long_binget(0xFFFFFFFF).stop().bytes(), [], {MAL}),
        Case("memo-missing-key", sg(P().proto(4).binget(7).short_binunicode("system")).bytes(),
             [], {UNR, MAL}),
    ]


def _decoy_cases() -> list[Case]:
    s = P.short_binunicode
    return [
        # Strings pushed and dropped right before the real operands.
        stack_global_case("decoys-before", s(s(s(s(P().proto(4), "builtins"), "print").pop()
                          .pop(), "os"), "system"), "os", "system"),
        # picklescan's "last two strings before STACK_GLOBAL": the lexically last strings are
        # decoys, the operands come from the memo.
        stack_global_case("decoys-lexically-last", s(s(P().proto(4), "os").memoize().pop(),
                          "system").memoize().pop().short_binunicode("builtins")
                          .short_binunicode("print").pop().pop().binget(0).binget(1),
                          "os", "system"),
        stack_global_case("decoys-in-popped-mark", s(s(P().proto(4), "os").mark(), "builtins")
                          .short_binunicode("print").pop_mark().short_binunicode("system"),
                          "os", "system"),
        stack_global_case("decoy-in-tuple", s(s(P().proto(4), "builtins"), "print").tuple2()
                          .pop().short_binunicode("os").short_binunicode("system"),
                          "os", "system"),
    ]


# ---------------------------------------------------------------------------------------------
# STACK_GLOBAL over operands that are not provably str: unresolved, never a guessed import


def _unresolved_cases() -> list[Case]:
    s = P.short_binunicode
    cases = [
        Case("operand-int", sg(s(P().proto(4).binint1(1), "system")).bytes(), [], {UNR}),
        Case("operand-tuple", sg(s(P().proto(4).empty_tuple(), "system")).bytes(), [], {UNR}),
        Case("operand-bytes", sg(s(P().proto(4).short_binbytes(b"os"), "system")).bytes(), [],
             {UNR}),
        Case("operand-none-as-name", sg(s(P().proto(4), "os").none()).bytes(), [], {UNR}),
        Case("operand-reduce-result",
             sg(P().proto(4).global_("builtins", "str").short_binunicode("os").tuple1()
                .reduce().short_binunicode("system")).bytes(),
             [("builtins", "str", 2, "GLOBAL")], {UNR}),
        Case("operand-global-result",
             sg(P().proto(4).global_("os", "sep").short_binunicode("system")).bytes(),
             [("os", "sep", 2, "GLOBAL")], {UNR}),
        Case("operand-stack-global-result",
             sg(P().proto(4).short_binunicode("os").short_binunicode("sep").stack_global()
                .short_binunicode("system")).bytes(),
             [("os", "sep", 11, "STACK_GLOBAL")], {UNR}),
        Case("operand-persistent", sg(s(P().proto(4).persid("0"), "system")).bytes(), [],
             {UNR}),
        Case("operand-undecodable-string",
             sg(s(P().proto(4).binunicode(b"\xff\xfe"), "system")).bytes(), [], {UNR, MAL}),
    ]
    for ext, code in (("ext1", 1), ("ext2", 0x1234), ("ext4", 0x12345678)):
        cases.append(Case(ext, getattr(P().proto(2), ext)(code).stop().bytes(), [], {UNR}))
    return cases


# ---------------------------------------------------------------------------------------------
# Python 2 names: mapped below protocol 3 exactly as find_class does


def _python2_cases() -> list[Case]:
    cases = []
    for proto in (0, 1, 2):
        p = P() if proto == 0 else P().proto(proto)
        at = len(p)
        for module, name, want in [("__builtin__", "eval", ("builtins", "eval")),
                                   ("copy_reg", "_reconstructor", ("copyreg", "_reconstructor")),
                                   ("exceptions", "StandardError", ("builtins", "Exception")),
                                   ("exceptions", "ValueError", ("builtins", "ValueError")),
                                   ("UserDict", "UserDict", ("collections", "UserDict")),
                                   ("cPickle", "loads", ("pickle", "loads"))]:
            data = p.bytes() + P().global_(module, name).stop().bytes()
            cases.append(Case(f"py2-p{proto}-{module}.{name}", data, [(*want, at, "GLOBAL")],
                              set()))
        cases.append(Case(f"py2-p{proto}-inst", p.bytes() + P().mark().inst("__builtin__", "eval")
                          .stop().bytes(), [("builtins", "eval", at + 1, "INST")], set()))
    # CPython does not check opcodes against the protocol: STACK_GLOBAL at protocol 2 maps.
    cases.append(stack_global_case("py2-p2-stack-global", P().proto(2)
                                   .short_binunicode("__builtin__").short_binunicode("eval"),
                                   "builtins", "eval"))
    for proto in (3, 4, 5):
        for module, name in [("__builtin__", "eval"), ("copy_reg", "_reconstructor"),
                             ("exceptions", "StandardError")]:
            cases.append(Case(f"py2-p{proto}-unmapped-{module}", P().proto(proto)
                              .global_(module, name).stop().bytes(),
                              [(module, name, 2, "GLOBAL")], set()))
    cases += [
        # PROTO mid-stream changes the mapping for what follows.
        Case("proto-2-then-3", P().proto(2).proto(3).global_("__builtin__", "eval").stop()
             .bytes(), [("__builtin__", "eval", 4, "GLOBAL")], set()),
        Case("proto-3-then-2", P().proto(3).proto(2).global_("__builtin__", "eval").stop()
             .bytes(), [("builtins", "eval", 4, "GLOBAL")], set()),
        Case("proto-switch-between-globals", P().proto(2).global_("__builtin__", "eval").pop()
             .proto(3).global_("__builtin__", "eval").stop().bytes(),
             [("builtins", "eval", 2, "GLOBAL"), ("__builtin__", "eval", 23, "GLOBAL")], set()),
        Case("proto-6-unsupported", P().proto(6).none().stop().bytes(), [], {MAL}),
        Case("proto-6-keeps-previous", P().proto(3).proto(6).global_("__builtin__", "eval")
             .stop().bytes(), [("__builtin__", "eval", 4, "GLOBAL")], {MAL}),
    ]
    return cases


# ---------------------------------------------------------------------------------------------
# Whole files: concatenated streams, padding, garbage, truncation


def _stream_cases() -> list[Case]:
    one = P().proto(2).global_("os", "system").stop().bytes()
    two = P().proto(2).global_("posix", "getcwd").stop().bytes()
    return [
        Case("concatenated", one + two,
             [("os", "system", 2, "GLOBAL"), ("posix", "getcwd", len(one) + 2, "GLOBAL")], set()),
        Case("concatenated-padding", one + b"\n \t\r\x0b\x0c\x00" + two,
             [("os", "system", 2, "GLOBAL"), ("posix", "getcwd", len(one) + 9, "GLOBAL")], set()),
        Case("trailing-padding", one + b"\n\x00\x00 ", [("os", "system", 2, "GLOBAL")], set()),
        Case("trailing-garbage", one + b"\xff", [("os", "system", 2, "GLOBAL")], {MAL}),
        Case("trailing-garbage-opcode", one + b"junk", [("os", "system", 2, "GLOBAL")], {MAL}),
        # Each load() starts with an empty memo ...
        Case("fresh-memo-per-stream",
             P().proto(4).short_binunicode("os").binput(0).stop().bytes()
             + sg(P().proto(4).binget(0).short_binunicode("system")).bytes(), [], {MAL, UNR}),
        # ... and at protocol 0.
        Case("fresh-proto-per-stream", P().proto(3).none().stop().bytes()
             + P().global_("__builtin__", "eval").stop().bytes(),
             [("builtins", "eval", 4, "GLOBAL")], set()),
        Case("empty", b"", [], {MAL}),
        Case("only-padding", b"\n", [], {MAL}),
        Case("unknown-opcode", b"\xff", [], {MAL}),
        # The stream cannot be followed past an unknown opcode (CPython stops there too).
        Case("unknown-opcode-mid-stream", P().proto(2).raw(b"\xfe").global_("os", "system")
             .stop().bytes(), [], {MAL}),
        Case("no-stop", P().proto(2).global_("os", "system").bytes(),
             [("os", "system", 2, "GLOBAL")], {MAL}),
    ]


def _payload_cases() -> list[Case]:
    big = 5 * 1024 * 1024
    cases = []
    for op, payload in [("binbytes", b"\0" * big), ("binbytes8", b"\0" * big),
                        ("bytearray8", b"\0" * big), ("binunicode8", "a" * big),
                        ("binunicode", "\u00e9" * (big // 2)), ("binstring", b"b" * big),
                        ("long4", 1 << (8 * big - 9))]:
        p = getattr(P().proto(5), op)(payload).pop().short_binunicode("os")
        cases.append(stack_global_case(f"large-{op}", p.short_binunicode("system"),
                                       "os", "system"))
    # A string larger than the machine inlines is still a provable str operand.
    long_name = "m" * (70 * 1024)
    cases.append(stack_global_case("large-module-name", P().proto(4).binunicode8(long_name)
                                   .short_binunicode("x"), long_name, "x"))
    cases.append(Case("large-invalid-utf8", sg(P().proto(4).binunicode8(b"a" * big + b"\xff")
                                               .short_binunicode("x")).bytes(), [], {MAL, UNR}))
    cases.append(Case("huge-declared-length", P().proto(4).raw(b"\x8d" + struct.pack("<Q", 2**62))
                      .bytes(), [], {MAL}))
    return cases


def _limit_cases() -> list[Case]:
    g = P().proto(2).global_("os", "system").stop().bytes()
    two_imports: list[Imp] = [("os", "system", 2, "GLOBAL"),
                              ("os", "system", len(g) + 2, "GLOBAL")]
    return [
        Case("max-opcodes-hit", P().none().pop().none().stop().bytes(), [], {LIM},
             Limits(max_opcodes=3)),
        Case("max-opcodes-exact", P().none().pop().none().stop().bytes(), [], set(),
             Limits(max_opcodes=4)),
        Case("max-stack-hit", P().none().none().none().tuple3().stop().bytes(), [], {LIM},
             Limits(max_stack=2)),
        Case("max-stack-exact", P().none().none().none().tuple3().stop().bytes(), [], set(),
             Limits(max_stack=3)),
        Case("max-memo-hit", P().none().binput(0).binput(0).binput(1).stop().bytes(), [], {LIM},
             Limits(max_memo=1)),
        Case("max-memo-exact", P().none().binput(0).binput(0).binput(1).stop().bytes(), [],
             set(), Limits(max_memo=2)),
        Case("max-marks-hit", P().mark().mark().none().tuple().tuple().stop().bytes(), [],
             {LIM}, Limits(max_marks=1)),
        Case("max-marks-exact", P().mark().mark().none().tuple().tuple().stop().bytes(), [],
             set(), Limits(max_marks=2)),
        Case("max-streams-hit", g + g + g, two_imports, {LIM},
             Limits(max_streams=2)),
        Case("max-streams-exact", g + g, two_imports, set(),
             Limits(max_streams=2)),
        # The opcode bound stops the analysis: the import after it is not reported, but the
        # file fails.
        Case("limit-before-import", P().proto(2).none().pop().global_("os", "system").stop()
             .bytes(), [], {LIM}, Limits(max_opcodes=3)),
        # Bounds on the symbolic state never stop naming: the stream is walked for imports.
        Case("marks-beyond-the-default-bound-still-named",
             P().proto(2).raw(b"(" * (DEFAULT_LIMITS.max_marks + 1)).global_("os", "system")
             .stop().bytes(),
             [("os", "system", DEFAULT_LIMITS.max_marks + 3, "GLOBAL")], {LIM}),
        Case("stack-bound-then-inst-and-global",
             P().proto(2).none().none().none().inst("os", "system").global_("nt", "spawnv")
             .stop().bytes(),
             [("os", "system", None, "INST"), ("nt", "spawnv", None, "GLOBAL")], {LIM},
             Limits(max_stack=2)),
        Case("memo-bound-then-stack-global-unresolved",
             P().proto(4).none().binput(0).binput(1).short_binunicode("os")
             .short_binunicode("system").stack_global().stop().bytes(),
             [], {LIM, UNR}, Limits(max_memo=1)),
        Case("walk-still-needs-a-stop",
             P().proto(2).none().none().none().global_("os", "system").bytes(),
             [("os", "system", None, "GLOBAL")], {LIM, MAL}, Limits(max_stack=2)),
    ]


def _frame_cases() -> list[Case]:
    def framed(body: bytes) -> P:
        return P().proto(4).frame(len(body)).raw(body)

    body = P().short_binunicode("os").short_binunicode("system").stack_global().stop().bytes()
    # The C-unpickler desync: an argument that runs past the end of its FRAME. _pickle reading a
    # BytesIO (torch.load) drops the frame's unread bytes and reads the argument after it, so
    # it executes "cos\nsystem\n" which this machine, reading straight through, saw as string
    # payload. Regression: this used to produce no import and no finding at all.
    hidden = b"cos\nsystem\n0"
    after = b"xxxxx" + b"U" + bytes([len(hidden)])
    desync = framed(b"\x8c" + bytes([len(after)]) + b"yy").raw(after + hidden + b".").bytes()
    return [
        Case("frame-exact", framed(body).bytes(), [("os", "system", 23, "STACK_GLOBAL")], set()),
        Case("frames-consecutive", framed(body[:4]).frame(len(body) - 4).raw(body[4:]).bytes(),
             [("os", "system", 32, "STACK_GLOBAL")], set()),
        Case("frame-argument-crosses-end", desync, [], {MAL}),
        Case("frame-name-line-crosses-end", framed(b"cos\nsys").raw(b"tem\n.").bytes(),
             [("os", "system", 11, "GLOBAL")], {MAL}),
        Case("frame-nested", framed(P().none().frame(1).none().pop().stop().bytes()).bytes(),
             [], {MAL}),
        # Two complete streams, but the second starts inside the first one's frame: a further
        # load() from a file would start after the frame, not where this analysis continues.
        Case("frame-stop-leaves-bytes", framed(P().none().stop().none().stop().bytes()).bytes(),
             [], {MAL}),
        Case("frame-longer-than-data", P().proto(4).frame(100).none().stop().bytes(), [], {MAL}),
    ]


CASES = (_global_cases() + _string_cases() + _stack_cases() + _memo_cases() + _decoy_cases()
         + _unresolved_cases() + _python2_cases() + _stream_cases() + _payload_cases()
         + _limit_cases() + _frame_cases())


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_stream(case: Case) -> None:
    check(case)


def test_written_as_records_the_python2_spelling() -> None:
    mapped = analyse(P().proto(2).global_("__builtin__", "eval").stop().bytes()).imports
    assert [(r.dotted, r.written_as) for r in mapped] == [("builtins.eval", "__builtin__.eval")]
    plain = analyse(P().proto(3).global_("__builtin__", "eval").stop().bytes()).imports
    assert [(r.dotted, r.written_as) for r in plain] == [("__builtin__.eval", None)]
    native = analyse(P().proto(2).global_("os", "system").stop().bytes()).imports
    assert [r.written_as for r in native] == [None]


def test_large_payload_offsets_are_exact() -> None:
    big = 5 * 1024 * 1024
    p = P().proto(4).binbytes(b"\1" * big).pop().binunicode8("x" * big).pop()
    p.label("g").global_("os", "system").stop()
    out = analyse(p.bytes())
    assert [(r.dotted, r.offset) for r in out.imports] == [("os.system", 2 + 5 + big + 1 + 9
                                                            + big + 1)]
    assert p.labels["g"] == out.imports[0].offset
    assert out.findings == []


# ---------------------------------------------------------------------------------------------
# Real pickles (never loaded)


class GetCwd:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.getcwd, ())


class Dedent:
    def __reduce__(self) -> tuple[Any, ...]:
        return (textwrap.dedent, ("  x",))


class Len:
    def __reduce__(self) -> tuple[Any, ...]:
        return (len, ("x",))


OS_MODULE = "nt" if os.name == "nt" else "posix"
REAL = [(GetCwd, OS_MODULE, "getcwd"), (Dedent, "textwrap", "dedent"), (Len, "builtins", "len")]


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("cls,module,name", REAL, ids=[r[0].__name__ for r in REAL])
def test_real_pickle(cls: type, module: str, name: str, proto: int) -> None:
    data = pickle.dumps(cls(), protocol=proto)
    out = analyse(data)
    assert [(r.module, r.name) for r in out.imports] == [(module, name)]
    assert out.findings == []
    assert out.completed == 1
    # builtins.len is written as __builtin__.len below protocol 3 and mapped back.
    want_written = "__builtin__.len" if cls is Len and proto < 3 else None
    assert out.imports[0].written_as == want_written
    # Twice in a row (what repeated pickle.load() calls read): both imports, fresh state.
    twice = analyse(data + data)
    assert [(r.dotted, r.offset) for r in twice.imports] == [
        (f"{module}.{name}", out.imports[0].offset),
        (f"{module}.{name}", len(data) + out.imports[0].offset)]
    assert twice.findings == []


# ---------------------------------------------------------------------------------------------
# Truncation: every proper prefix of a malicious pickle is reported, and nothing raises

MALICIOUS = {
    "hand-built": P().proto(4).frame(0).short_binunicode("os").memoize()
    .short_binunicode("system").memoize().stack_global().memoize().short_binunicode("id")
    .memoize().tuple1().memoize().reduce().memoize().stop().bytes(),
    "global-p0": P().global_("os", "system").mark().string("id").tuple().reduce().stop()
    .bytes(),
    "inst-p0": P().mark().unicode("id").inst("os", "system").stop().bytes(),
    **{f"real-p{p}": pickle.dumps(GetCwd(), protocol=p) for p in range(6)},
}


@pytest.mark.parametrize("name", list(MALICIOUS))
def test_every_truncation_is_a_finding(name: str) -> None:
    data = MALICIOUS[name]
    full = analyse(data)
    assert full.findings == [] and len(full.imports) == 1
    (ref,) = full.imports
    for cut in range(len(data)):
        out = analyse(data[:cut])
        assert out.findings, f"prefix of {cut} bytes passed silently"
        assert out.completed == 0
        assert all(f.kind in (MAL, UNR) for f in out.findings), out.findings
        if ref.opcode == "STACK_GLOBAL" and cut > ref.offset:
            # Once the STACK_GLOBAL itself is in the data, the import is known.
            assert [r.dotted for r in out.imports] == [ref.dotted]


def test_truncated_stream_after_a_complete_one() -> None:
    data = MALICIOUS["real-p2"]
    for cut in range(1, len(data)):
        out = analyse(data + data[:cut])
        assert out.completed == 1 and out.streams == 2
        assert {f.kind for f in out.findings} == {MAL}, cut
        assert out.imports[0].dotted == f"{OS_MODULE}.getcwd"


def test_walk_counts_blind_imports_in_one_finding():
    """After a bound, each STACK_GLOBAL costs O(1): one unresolved finding carries the count."""
    sg = P().short_binunicode("os").short_binunicode("system").stack_global().pop()
    data = P().proto(4).none().none().raw(sg.bytes() * 1000).stop().bytes()
    out = analyse(data, Limits(max_stack=1))
    unresolved = [f for f in out.findings if f.kind is UNR]
    # the first one, after PROTO, two NONEs and the two strings (4 + 8 bytes)
    assert [(f.count, f.offset) for f in unresolved] == [(1000, 4 + 4 + 8)]
    assert out.completed == 1
