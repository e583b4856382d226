"""`picklegate explain`: a reviewer's view of each import in one file.

For every global the file imports it says where it is (member, offset, opcode), how the pickle
uses it, as far as static analysis shows (``posix.system('echo hi')`` called by REDUCE, a class
built by NEWOBJ with a state of 3 keys, an argument of another call, or imported but never
called), what in the policy decides it (the allow or deny entry with its file:line, the preset
or path rule it came from, an approval) and its risk label from data/gadgets.yaml.

How the uses are found: the file is analysed exactly as `scan` analyses it, with a dispatcher
that remembers every member read as a pickle. Those members are then run again through
:class:`_Tracer`, a :class:`PickleMachine` that keeps the symbolic values the machine already
builds (every :class:`Instance`: callee, args, opcode, state) instead of dropping them. Nothing
is imported or called, as in a scan. Returns values; report/ formats them, cli.py prints.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from picklegate.decision import approval, classify
from picklegate.findings import FindingKind, GlobalRef
from picklegate.formats.base import Analysis, Context
from picklegate.formats.interpretations import PICKLE_READINGS, analyse_buffer, analyse_member
from picklegate.formats.joblib import JoblibHook
from picklegate.limits import DEFAULT_LIMITS, Limits
from picklegate.machine import (Buffer, Collector, Instance, LongBytes, LongText, Mapping,
                                Opaque, PickleMachine, Ref, Seq, Value, skip_padding)
from picklegate.policy import Decision, Entry, Policy, Verdict, utc_today
from picklegate.review import known_gadget

MAX_USES = 5            # uses listed per global; the rest are counted
MAX_SHOWN_ITEMS = 6     # items of a literal container shown before "..."
MAX_DEPTH = 3           # nesting of literal values shown
MAX_TEXT = 120          # characters of a literal string shown
SEARCH_BUDGET = 2_000   # values visited per call when looking for imports among its arguments


@dataclass(frozen=True)
class Explained:
    """One global in one member: where, how it is used, what decides it, what it risks."""

    module: str
    name: str
    member: str | None
    offset: int                     # the first occurrence
    opcode: str
    count: int                      # how often the member imports it
    uses: tuple[str, ...]
    more_uses: int                  # uses left out after MAX_USES
    verdict: str                    # allowed, denied, not-allowed
    kind: FindingKind | None        # the finding a scan reports for it (None: allowed)
    decided_by: str
    risk: str | None                # the gadget list's label
    references: tuple[str, ...] = ()
    written_as: str | None = None

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Explanation:
    path: str
    format: str
    policy: str
    imports: tuple[Explained, ...]
    approval: str | None = None     # why the whole file is (or is not) approved, if it has one


# ---------------------------------------------------------------------------------------------
# entry point


def explain_bytes(buf: Buffer, policy: Policy, path: str, relpath: str | None = None,
                  member: str | None = None, today: dt.date | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> Explanation:
    today = today or utc_today()
    analysis = analyse_buffer(buf, limits)
    uses = trace_uses(buf, limits)
    refs = [r for r in analysis.out.imports if member is None or r.member == member]
    approved = None
    if policy.approval_for(relpath):
        approved = approval(buf, policy, relpath, today)[1]
    explained = [_explain(first, count, uses, policy, relpath, today)
                 for first, count in _distinct(refs)]
    return Explanation(path=path, format=analysis.format, policy=policy.source,
                       imports=tuple(explained), approval=approved)


def _distinct(refs: Iterable[GlobalRef]) -> list[tuple[GlobalRef, int]]:
    """Each (member, global) once, at its first offset, with how often it occurs."""
    seen: dict[tuple[str | None, str, str], tuple[GlobalRef, int]] = {}
    for ref in refs:
        key = (ref.member, ref.module, ref.name)
        first, count = seen.get(key, (ref, 0))
        seen[key] = (first, count + 1)
    return sorted(seen.values(), key=lambda item: (item[0].member or "", item[0].offset))


def _explain(ref: GlobalRef, count: int, uses: dict[tuple[str | None, int], list[str]],
             policy: Policy, relpath: str | None, today: dt.date) -> Explained:
    decision = policy.decide(ref.module, ref.name, relpath, today)
    kind, _ = classify(ref, decision)
    gadget = known_gadget(ref.module, ref.name)
    found = uses.get((ref.member, ref.offset))
    if found is None:
        found = ["not traced: the member holding it was not read as a whole pickle"]
    return Explained(
        module=ref.module, name=ref.name, member=ref.member, offset=ref.offset,
        opcode=ref.opcode, count=count, uses=tuple(found[:MAX_USES]),
        more_uses=max(0, len(found) - MAX_USES), verdict=decision.verdict.value, kind=kind,
        decided_by=decided_by(decision, policy, ref.name),
        risk=" ".join(gadget.why.split()) if gadget else None,
        references=gadget.references if gadget else (), written_as=ref.written_as)


# ---------------------------------------------------------------------------------------------
# what decides it


def decided_by(decision: Decision, policy: Policy, name: str) -> str:
    """The policy's reason in one line: the entry (and the preset or path rule it belongs to)
    that allows or denies the import, or why nothing allows it."""
    entry = decision.entry
    if decision.verdict is Verdict.ALLOWED and entry is not None:
        return f"allowed by {_entry_text(entry, policy, 'allow', name)}"
    if decision.verdict is Verdict.DENIED and entry is not None:
        return f"denied by {_entry_text(entry, policy, 'deny', name)}"
    if decision.expired:
        old = decision.expired[0]
        return (f"not allowed: the {_entry_text(old, policy, 'allow', name)} expired on "
                f"{old.expires}")
    return f"not allowed: no allow entry of {policy.source} names it"


def _entry_text(entry: Entry, policy: Policy, table: str, name: str) -> str:
    """``allow entry torch: [FloatStorage] at <preset torch>:88:3 (preset torch)``: the name
    the entry matched, not every name it lists."""
    listed = '"*"' if entry.star and name not in entry.names else f"[{name.split('.')[0]}]"
    text = f"{table} entry {entry.pattern}: {listed} at {entry.origin}"
    where = entry.origin.path
    if where.startswith("<preset ") and where.endswith(">"):
        text += f" (preset {where[len('<preset '):-1]})"
    for rule in policy.rules:
        if any(e is entry for e in (*rule.allow, *rule.deny)):
            text += f" (path rule at {rule.origin} for {', '.join(rule.paths)})"
    if entry.reason:
        text += f": {entry.reason}"
    return text


# ---------------------------------------------------------------------------------------------
# how it is used: the symbolic trace


@dataclass(frozen=True)
class _Member:
    buf: Buffer
    start: int
    end: int
    member: str | None
    base: int


def pickle_members(buf: Buffer, limits: Limits = DEFAULT_LIMITS) -> list[_Member]:
    """Every member the scan's dispatcher reads as a pickle, at any depth (decompressed and
    archived members included), found by wrapping the dispatcher the Context carries."""
    members: list[_Member] = []

    def recording(b: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
        found = analyse_member(b, start, end, ctx, analysis)
        if found in PICKLE_READINGS:
            members.append(_Member(b, start, end, ctx.member, ctx.base))
        return found

    recording(buf, 0, len(buf), Context(limits=limits, dispatch=recording), Analysis())
    return members


def trace_uses(buf: Buffer, limits: Limits = DEFAULT_LIMITS
               ) -> dict[tuple[str | None, int], list[str]]:
    """{(member, offset of an import): how the pickle uses what that opcode imported}."""
    uses: dict[tuple[str | None, int], list[str]] = {}
    for part in pickle_members(buf, limits):
        for tracer in _run(part, limits):
            for ref, described in tracer.uses().items():
                uses.setdefault((ref.member, ref.offset), []).extend(described)
    return uses


def _run(part: _Member, limits: Limits) -> list[_Tracer]:
    """Every stream of the member, as analyse_pickles reads them (joblib's hook included, so
    array bytes are skipped as joblib.load skips them)."""
    out = Collector(member=part.member, base=part.base)
    hook = JoblibHook()
    tracers: list[_Tracer] = []
    pos = part.start
    while pos < part.end and len(tracers) < limits.max_streams:
        tracer = _Tracer(part.buf, pos, part.end, out, limits, hook)
        tracers.append(tracer)
        after = tracer.run()
        if after is None:
            break
        pos = skip_padding(part.buf, after, part.end)
    return tracers


class _Tracer(PickleMachine):
    """A PickleMachine that remembers the values it builds: every import's :class:`Ref`, every
    call (:class:`Instance`) and every BUILD applied to a global itself."""

    def __init__(self, buf: Buffer, start: int, end: int, collector: Collector, limits: Limits,
                 hook: JoblibHook) -> None:
        super().__init__(buf, start, end, collector, limits, self._on_build)
        self.hook = hook
        self.refs: list[Ref] = []
        self.calls: list[Instance] = []
        self._seen: set[int] = set()
        self.built: list[tuple[Ref, Value, int]] = []

    def import_global(self, module: str, name: str, opcode: str) -> Ref:
        ref = super().import_global(module, name, opcode)
        self.refs.append(ref)
        return ref

    def push(self, value: Value) -> None:
        self._note(value)
        super().push(value)

    def set_top(self, value: Value) -> None:
        self._note(value)
        super().set_top(value)

    def _note(self, value: Value) -> None:
        if isinstance(value, Instance) and id(value) not in self._seen:
            self._seen.add(id(value))
            self.calls.append(value)

    def _on_build(self, m: PickleMachine, inst: Value, state: Value) -> None:
        if isinstance(inst, Ref):
            self.built.append((inst, state, m.op_offset))
        self.hook(m, inst, state)

    def uses(self) -> dict[GlobalRef, list[str]]:
        found: dict[int, list[str]] = {id(ref): [] for ref in self.refs}
        for call in self.calls:
            at = self._rel(call.offset)
            if isinstance(call.callee, Ref) and id(call.callee) in found:
                found[id(call.callee)].append(_call_use(call, at))
            for inner in _refs_in((call.args, call.kwargs), through_calls=False):
                if id(inner) in found:
                    found[id(inner)].append(f"used as an argument of {_callee(call)} "
                                            f"({call.opcode} at offset {at})")
            for inner in _refs_in((call.state,), through_calls=False):
                if id(inner) in found:
                    found[id(inner)].append(f"used in the BUILD state of {_callee(call)} "
                                            f"({call.opcode} at offset {at})")
        for ref, state, offset in self.built:
            found[id(ref)].append(f"BUILD at offset {self._rel(offset)} sets {_state(state)} "
                                  "on the global itself")
        stored = {id(r) for r in _refs_in((self.result,), through_calls=True)}
        out: dict[GlobalRef, list[str]] = {}
        for ref in self.refs:
            described = found[id(ref)]
            if not described:
                described = ["returned or stored as a value, never called" if id(ref) in stored
                             else "imported but never called"]
            out.setdefault(ref.ref, []).extend(described)
        return out

    def _rel(self, offset: int) -> int:
        return offset - self.out.base


def _call_use(call: Instance, offset: int) -> str:
    where = f"at offset {offset}"
    if call.opcode == "REDUCE":
        return f"{_callee(call)}{_arguments(call.args)} called by REDUCE {where}" + (
            f", then given {_state(call.state)} by BUILD" if call.state is not None else "")
    args = _arguments(call.args)
    how = f"class used by {call.opcode} {where}"
    if args not in ("()", "(...)"):
        how += f" with arguments {args}"
    if call.kwargs is not None:
        how += f" and keywords {literal(call.kwargs)}"
    return how + (f" with {_state(call.state)}" if call.state is not None else
                  " with no state")


def _callee(call: Instance) -> str:
    return literal(call.callee)


def _arguments(args: Value) -> str:
    if isinstance(args, tuple):
        return "(" + ", ".join(literal(a) for a in args[:MAX_SHOWN_ITEMS]) + (
            ", ..." if len(args) > MAX_SHOWN_ITEMS else "") + ")"
    return f"(*{literal(args)})"


def _state(state: Value) -> str:
    if isinstance(state, Mapping):
        size = len(state.items) + state.dropped
        keys = ", ".join(literal(k) for k, _ in state.items[:MAX_SHOWN_ITEMS])
        more = ", ..." if size > MAX_SHOWN_ITEMS else ""
        return f"a state of {size} key{'s' if size != 1 else ''} ({keys}{more})" if size \
            else "an empty state"
    if isinstance(state, tuple) and len(state) == 2:
        return f"a (dict, slots) state {literal(state)}"
    return f"the state {literal(state)}"


def literal(value: Value, depth: int = 0) -> str:
    """The value as Python source when the pickle fixes it, or a <description> otherwise."""
    if isinstance(value, Ref):
        return value.ref.dotted
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (str, bytes)):
        shown = repr(value)
        return shown if len(shown) <= MAX_TEXT else shown[:MAX_TEXT] + "...'"
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, tuple):
        inner = [literal(v, depth + 1) for v in value[:MAX_SHOWN_ITEMS]]
        inner += ["..."] if len(value) > MAX_SHOWN_ITEMS else []
        return "(" + ", ".join(inner) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, Instance):
        return f"{literal(value.callee, depth + 1)}(...)"
    if isinstance(value, Seq):
        inner = [literal(v, depth + 1) for v in value.items[:MAX_SHOWN_ITEMS]]
        inner += ["..."] if len(value.items) + value.dropped > MAX_SHOWN_ITEMS else []
        brackets = "[]" if value.kind == "list" else "{}"
        text = brackets[0] + ", ".join(inner) + brackets[1]
        return text if value.kind in ("list", "set") or not inner else f"frozenset({text})"
    if isinstance(value, Mapping):
        inner = [f"{literal(k, depth + 1)}: {literal(v, depth + 1)}"
                 for k, v in value.items[:MAX_SHOWN_ITEMS]]
        inner += ["..."] if len(value.items) + value.dropped > MAX_SHOWN_ITEMS else []
        return "{" + ", ".join(inner) + "}"
    if isinstance(value, LongText):
        return f"<a {value.length}-byte string>"
    if isinstance(value, LongBytes):
        return f"<{value.length} bytes>"
    if isinstance(value, Opaque):
        return f"<{value.what}>"
    return "<?>"                                        # pragma: no cover - Value is closed


def _refs_in(roots: tuple[Value, ...], through_calls: bool) -> list[Ref]:
    """The imports reachable from ``roots`` through tuples and containers (and, with
    ``through_calls``, through the calls nested in them: a nested call's own imports are
    described by that call), visiting at most SEARCH_BUDGET values (the memo can make the
    graph cyclic)."""
    found: list[Ref] = []
    seen: set[int] = set()
    todo: list[Value] = list(roots)
    while todo and len(seen) < SEARCH_BUDGET:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, Ref):
            found.append(value)
        elif isinstance(value, tuple):
            todo.extend(value)
        elif isinstance(value, Seq):
            todo.extend(value.items)
        elif isinstance(value, Mapping):
            for key, item in value.items:
                todo.extend((key, item))
        elif isinstance(value, Instance) and through_calls:
            todo.extend((value.callee, value.args, value.kwargs, value.state, *value.items))
    return found
