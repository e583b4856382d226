"""The symbolic opcode machine: runs a pickle stream's opcodes over symbolic values.

It follows CPython's ``pickle._Unpickler`` (Lib/pickle.py, 3.11) opcode by opcode, but every
``find_class`` becomes a recorded :class:`GlobalRef` and every call becomes an inert
:class:`Instance`. Nothing is imported and nothing is called, so the machine can model the stack
and the memo exactly: a STACK_GLOBAL is resolved only when both operands are provably ``str``
(as ``load_stack_global`` requires), through any mix of memo writes and reads.

Byte payloads are never copied beyond :data:`INLINE_BYTES`: the reader seeks over them and keeps
their offset. Containers keep at most :data:`KEPT_ITEMS` items each and a stream keeps at most
``Limits.max_kept_items`` in all; beyond that, containers only count what they drop, and readers
treat them as unknown. So memory follows what an import can need (the memo, the strs it holds,
the stack), not the pickle's size; a repeated import is one record with a count.

One table (:data:`OPS`, derived from ``pickletools.opcodes``) says how every opcode's argument
is encoded; one loop (:meth:`PickleMachine.loop`) decodes it and calls the opcode's handler,
and also walks the rest of a stream for imports after a bound.
"""
from __future__ import annotations

import codecs
import mmap
import pickletools
import struct
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple, Protocol, Union, cast, overload

from picklegate.findings import Finding, FindingKind, GlobalRef
from picklegate.limits import DEFAULT_LIMITS, Limits
from picklegate.names import map_python2_name

# Payloads up to this size are materialised (names, dtype strings, shapes); larger ones are
# kept as (offset, length) and decoded only if an import needs them.
INLINE_BYTES = 64 * 1024
# Containers keep this many items for format readers (joblib/torch state); the rest is counted.
KEPT_ITEMS = 1024
PROTO_BYTE = 0x80
# pickle.py load_proto accepts 0..HIGHEST_PROTOCOL.
HIGHEST_PROTOCOL = 5
# Bytes allowed between concatenated streams (numpy writes a trailing newline).
PADDING = b" \t\n\r\x0b\x0c\x00"


class Buffer(Protocol):
    """bytes and mmap both qualify: random access, ``find`` and slicing."""

    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> bytes: ...
    def find(self, sub: bytes, start: int = ..., end: int = ...) -> int: ...


# ---------------------------------------------------------------------------------------------
# Symbolic values. Slotted: a pickle of millions of small objects makes millions of these.


@dataclass(eq=False, slots=True)
class Opaque:
    """A value the machine cannot know (a call result, a persistent object, ...)."""

    what: str


@dataclass(eq=False, slots=True)
class LongText:
    """A ``str`` too large to inline; decoded from the buffer only when an import needs it."""

    offset: int
    length: int
    encoding: str


@dataclass(eq=False, slots=True)
class LongBytes:
    offset: int
    length: int


@dataclass(eq=False, slots=True)
class Ref:
    """The object a GLOBAL/INST/STACK_GLOBAL imported."""

    ref: GlobalRef


@dataclass(eq=False, slots=True)
class Instance:
    """What REDUCE/NEWOBJ/NEWOBJ_EX/OBJ/INST would produce: ``callee(*args, **kwargs)``."""

    callee: Value
    args: Value
    opcode: str
    offset: int
    kwargs: Value = None
    state: Value = None                 # the last BUILD state
    items: list[Value] = field(default_factory=list)   # APPEND(S)/SETITEM(S)/ADDITEMS on it


@dataclass(eq=False, slots=True)
class Seq:
    """list, set or frozenset (identity matters: the memo shares them).

    ``dropped`` counts items not kept (beyond KEPT_ITEMS, or beyond the stream's budget of
    kept items); readers that need the contents treat a Seq with dropped items as unknown."""

    kind: str
    items: list[Value] = field(default_factory=list)
    dropped: int = 0


@dataclass(eq=False, slots=True)
class Mapping:
    items: list[tuple[Value, Value]] = field(default_factory=list)
    dropped: int = 0
    # Among the dropped keys, the first that is (or may be) a __dunder__ name, so a BUILD
    # state can be judged on every key without keeping them all.
    special: str | None = None
    # The stream's record for every dict made after its budget of kept items was spent.
    shared: bool = False
    # How many kept items a BUILD has already found ordinary: items are only ever appended,
    # so a state dict reused by a million BUILDs is checked once, not a million times.
    checked: int = 0


Value = Union[None, bool, int, float, str, bytes, "tuple[Value, ...]", "Opaque", "LongText",
              "LongBytes", "Ref", "Instance", "Seq", "Mapping"]
MISSING = Opaque("missing")
UNDERFLOW = Opaque("stack underflow")


def describe(value: Value) -> str:
    """A short human description of a symbolic value, for 'unresolved' messages."""
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Ref):
        return f"the global {value.ref.dotted}"
    if isinstance(value, Instance):
        return f"the result of {value.opcode} at offset {value.offset}"
    if isinstance(value, Opaque):
        return value.what
    if isinstance(value, LongText):
        return f"a {value.length}-byte string"
    return f"a {type(value).__name__} value"


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Collector:
    """Everything the machine learns about one member (or file), in stream order."""

    member: str | None = None
    # Where the member starts inside the buffer: reported offsets are member-relative.
    base: int = 0
    imports: list[GlobalRef] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # (offset, pid) for every PERSID/BINPERSID: torch names its storages this way.
    persistent_ids: list[tuple[int, Value]] = field(default_factory=list)
    streams: int = 0
    completed: int = 0          # streams that reached their STOP
    # Absolute offset of the first opcode at which CPython's unpickler raises (underflow, bad
    # argument, truncation...): a loader reading these bytes runs nothing after it.
    first_error: int | None = None
    # Places where pickle.py and _pickle read different bytes (FRAME edge cases): there a
    # loader may go on where this analysis stops.
    divergences: int = 0

    def error_at(self, offset: int) -> None:
        if self.first_error is None or offset < self.first_error:
            self.first_error = offset

    def finding(self, kind: FindingKind, offset: int | None, message: str,
                module: str | None = None, name: str | None = None) -> None:
        self.findings.append(self.finding_value(kind, offset, message, module, name))

    def finding_value(self, kind: FindingKind, offset: int | None, message: str,
                      module: str | None = None, name: str | None = None) -> Finding:
        """A Finding in this member; ``offset`` is absolute in the buffer."""
        if offset is not None:
            offset -= self.base
        return Finding(kind=kind, message=message, module=module, name=name,
                       member=self.member, offset=offset)

    def extend(self, other: Collector) -> None:
        self.imports.extend(other.imports)
        self.findings.extend(other.findings)
        self.persistent_ids.extend(other.persistent_ids)
        self.streams += other.streams
        self.completed += other.completed
        self.divergences += other.divergences
        if other.first_error is not None:
            self.error_at(other.first_error)


class Fatal(Exception):
    """The stream cannot be followed past this point (truncation, unknown opcode, limit)."""

    def __init__(self, kind: FindingKind, offset: int, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.offset = offset
        self.message = message


class Bound(Fatal):
    """A bound on the symbolic state (stack, marks, memo) was hit. The values are gone, but
    the opcodes can still be read: the rest of the stream is walked for imports."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(FindingKind.LIMIT, offset, message)


# Called after every BUILD with the machine and the built object; container readers (joblib)
# use it to consume bytes that follow the opcode, exactly as their unpickler subclass does.
BuildHook = Callable[["PickleMachine", Value, Value], None]


# ---------------------------------------------------------------------------------------------
# The machine


class PickleMachine:
    """Runs one pickle stream from ``start`` to its STOP over ``buf[:end]``."""

    def __init__(self, buf: Buffer, start: int, end: int, collector: Collector,
                 limits: Limits = DEFAULT_LIMITS, on_build: BuildHook | None = None) -> None:
        self.buf = buf
        self.pos = start
        self.end = end
        self.out = collector
        self.limits = limits
        self.on_build = on_build
        self.stack: list[Value] = []
        self.metastack: list[list[Value]] = []
        # The memo: dense indices (MEMOIZE, a pickler's BINPUTs) in a list, others in a dict.
        # Invariant: index i is in ``memo`` iff i < len(memo), else in ``sparse`` if anywhere.
        self.memo: list[Value] = []
        self.sparse: dict[int, Value] = {}
        self.proto = 0           # pickle.py load(): self.proto = 0 until a PROTO opcode
        self.op_offset = start   # offset of the opcode being executed
        self.result: Value = None  # what STOP returned (format readers inspect it)
        self.underflows = 0
        # Container entries and containers this stream may still keep. Once the budget is
        # spent, every new container is one of these shared records: nothing is kept for it,
        # ``dropped`` makes every reader treat it as unknown (fail closed), and a possibly
        # special key added to any of them marks them all, so a BUILD with such a state is
        # reported rather than passed. They are per stream: no file taints another.
        self.room = limits.max_kept_items
        self.spent_list = Seq("list", dropped=1)
        self.spent_set = Seq("set", dropped=1)
        self.spent_frozenset = Seq("frozenset", dropped=1)
        self.spent_dict = Mapping(dropped=1, shared=True)
        self.max_memo = limits.max_memo     # read per opcode: no attribute chains
        self.max_marks = limits.max_marks
        # End of the current FRAME (absolute), None outside frames or once a frame is reported.
        self.frame_end: int | None = None
        # Set by read_raw inside a FRAME: where the file handle is, so where reading continues
        # once the frame's bytes are used up (pickle._Unpickler's _Unframer).
        self.resume: int | None = None
        # (module, name, opcode, written_as) -> index in out.imports, and repeat counts, so a
        # name imported 10M times costs one record (folded into GlobalRef.count at the end).
        self.seen_imports: dict[tuple[str, str, str, str | None], int] = {}
        self.repeats: dict[int, int] = {}

    # -- driver ---------------------------------------------------------------------------

    def run(self) -> int | None:
        """Execute to STOP; return the offset after it, or None if the stream broke off."""
        self.out.streams += 1
        try:
            return self.loop(False)
        except Bound as bound:
            self.out.finding(bound.kind, bound.offset, bound.message + "; the rest of the "
                             "stream was read for imports only (STACK_GLOBAL is then unresolved)")
            # Not an error_at: CPython has no such bound and reads on.
            # The symbolic values are dropped (that is what the bound protects).
            self.stack, self.metastack, self.memo, self.sparse = [], [], [], {}
            self.frame_end = None
            return self.loop(True)
        finally:
            self.fold_repeats()

    def loop(self, walking: bool) -> int | None:
        """The opcode loop: decode each opcode's argument as OPS describes it, then run its
        handler with it.

        ``walking`` (after a Bound): only read on for imports, at O(1) per opcode beyond its
        argument. GLOBAL and INST still name their imports exactly; every STACK_GLOBAL or EXT
        is unresolved, since its operands are no longer known. One finding counts them all.

        This is the scanner's hot path (benchmarks/bench_machine.py): everything it touches
        per opcode is a local. ``fence`` is the first position where an argument needs more
        than a plain read: the end of the data or of the current FRAME, or 0 while a raw read
        left the file elsewhere (``resume``). An argument ending at or before it can be neither
        truncated nor cross a frame, so only arguments past it go through take()'s checks.
        Handlers see ``m.pos`` after the argument.
        """
        buf, end, ops, line = self.buf, self.end, OPS, LINE
        # struct reads bytes and mmap in place; other Buffers (test doubles) are sliced.
        direct = isinstance(buf, (bytes, bytearray, memoryview, mmap.mmap))
        raw = cast(bytes, buf)      # read through only when ``direct``
        max_opcodes = self.limits.max_opcodes
        max_stack = self.limits.max_stack
        count = self.count
        pos = self.pos
        fence = self.fence()
        blind: Finding | None = None
        blind_count = 0
        try:
            while True:
                if pos >= fence and pos >= end:
                    raise Fatal(FindingKind.MALFORMED, pos,
                                "pickle stream ends without a STOP opcode (truncated file?)")
                count += 1
                if count > max_opcodes:
                    raise Fatal(FindingKind.LIMIT, pos,
                                f"more than {max_opcodes} opcodes in one stream; "
                                "the rest was not analysed")
                if pos >= fence:
                    self.pos = pos
                    self.leave_frame()
                    pos = self.pos
                    fence = self.fence()
                self.op_offset = pos
                spec = ops[buf[pos]]
                if spec is None:
                    raise Fatal(FindingKind.MALFORMED, pos,
                                f"invalid pickle opcode 0x{buf[pos]:02x}; the rest of the stream "
                                "cannot be read")
                name, size, fixed, counted, moves, handler = spec
                pos += 1
                arg: Any = None
                if size > 0:
                    # A fixed-size argument, or the length prefix of a counted payload.
                    stop = pos + size
                    if stop > fence:
                        self.pos = pos
                        pos = self.take(size)
                        stop = self.pos
                        fence = self.fence()
                    if size == 1:
                        arg = buf[pos]
                    elif direct:
                        arg = fixed.unpack_from(raw, pos)[0]
                    else:
                        arg = fixed.unpack(buf[pos:stop])[0]
                    pos = stop
                    if counted:
                        # The payload: handlers find it at m.pos - arg.
                        if arg < 0:
                            raise Fatal(FindingKind.MALFORMED, self.op_offset,
                                        f"{name} has a negative byte count")
                        stop = pos + arg
                        if stop > fence:
                            self.pos = pos
                            self.take(arg)
                            stop = self.pos
                            fence = self.fence()
                        pos = stop
                elif size == line:
                    nl = buf.find(b"\n", pos, end)
                    if 0 <= nl < fence:
                        arg = buf[pos:nl]
                        pos = nl + 1
                    else:
                        self.pos = pos
                        arg = self.line()
                        pos = self.pos
                        fence = self.fence()
                # size == NO_ARGUMENT, or NAME_PAIR: GLOBAL and INST read their own two lines.
                self.pos = pos
                if walking:
                    if name == "STOP":
                        self.out.completed += 1
                        return pos if self.resume is None else self.resume
                    if size == NAME_PAIR:
                        _line_import(self, name)
                        fence = self.fence()
                    elif name == "PROTO":
                        self.proto = min(arg, HIGHEST_PROTOCOL)
                    elif name == "STACK_GLOBAL" or name.startswith("EXT"):
                        blind = blind or self.out.finding_value(
                            FindingKind.UNRESOLVED, self.op_offset,
                            f"{name} after a bound was hit: its operands were not tracked, "
                            "so the import cannot be resolved")
                        blind_count += 1
                    pos = self.pos
                    continue
                if handler(self, arg):
                    self.out.completed += 1
                    return self.pos if self.resume is None else self.resume
                # Every handler pushes at most once, as its last step: checking here is
                # push()'s check of pickle.py's unbounded stack, one place for all of them.
                if len(self.stack) > max_stack:
                    self.stack.pop()
                    raise Bound(self.op_offset, f"stack deeper than {max_stack} items")
                pos = self.pos
                if moves:
                    fence = self.fence()
        except Bound:
            raise
        except Fatal as fatal:
            self.out.finding(fatal.kind, fatal.offset, fatal.message)
            # Only where CPython's unpickler raises too (truncation, a bad opcode): where this
            # analysis stops on its own bound or cannot follow (limit-exceeded, unresolved), a
            # loader reads on.
            if not walking and fatal.kind is FindingKind.MALFORMED:
                self.out.error_at(fatal.offset)
            return None
        finally:
            self.count = count
            if blind is not None:
                self.out.findings.append(replace(blind, count=blind_count))

    count = 0

    def fence(self) -> int:
        """See loop(): below this position, arguments need no checks."""
        if self.resume is not None:
            return 0
        frame_end = self.frame_end
        if frame_end is not None and self.pos < frame_end < self.end:
            return frame_end
        return self.end

    def take(self, n: int) -> int:
        """Step over an ``n``-byte argument piece at m.pos with every check: leave a used-up
        frame for the file position, refuse truncation, report a FRAME crossing."""
        self.leave_frame()
        start = self.pos
        if start + n > self.end:
            raise Fatal(FindingKind.MALFORMED, self.op_offset,
                        f"truncated: {self.opname()} needs {n} bytes of argument, "
                        f"{max(self.end - start, 0)} remain")
        self.frame_check(start, start + n)
        self.pos = start + n
        return start

    def fold_repeats(self) -> None:
        """Write each repeated import's count into its GlobalRef (once, at the stream's end)."""
        imports = self.out.imports
        for index, repeats in self.repeats.items():
            imports[index] = replace(imports[index], count=imports[index].count + repeats)
        self.repeats = {}

    # -- reading arguments ----------------------------------------------------------------

    def line(self) -> bytes:
        """A newline-terminated argument without its newline; a missing newline is fatal."""
        self.leave_frame()
        nl = self.buf.find(b"\n", self.pos, self.end)
        if nl < 0:
            raise Fatal(FindingKind.MALFORMED, self.op_offset,
                        f"truncated: {self.opname()} argument has no terminating newline")
        if self.frame_end is not None:
            self.frame_check(self.pos, nl + 1)
        data = bytes(self.buf[self.pos:nl])
        self.pos = nl + 1
        return data

    def name_line(self) -> bytes | None:
        """A GLOBAL/INST name line exactly as pickle.py reads it: ``readline()[:-1]``.

        At the end of the data pickle.py's readline returns what is left without a newline and
        ``[:-1]`` then drops its last byte; find_class still runs with that name. Report it too.
        A line longer than Limits.max_name_bytes is skipped unread (None): it is reported,
        and no module or attribute can have such a name, so the import fails there.
        """
        self.leave_frame()
        nl = self.buf.find(b"\n", self.pos, self.end)
        stop = nl if nl >= 0 else self.end
        if stop - self.pos > self.limits.max_name_bytes:
            self.frame_check(self.pos, stop + 1 if nl >= 0 else stop)
            self.out.finding(FindingKind.LIMIT, self.op_offset,
                             f"{self.opname()} names a {stop - self.pos}-byte name, longer than "
                             f"max_name_bytes ({self.limits.max_name_bytes}); no importable "
                             "name is that long, so it was skipped unread")
            self.out.error_at(self.op_offset)
            self.pos = stop + 1 if nl >= 0 else stop
            return None
        if nl >= 0:
            self.frame_check(self.pos, nl + 1)
            data = bytes(self.buf[self.pos:nl])
            self.pos = nl + 1
            return data
        self.frame_check(self.pos, self.end)
        rest = bytes(self.buf[self.pos:self.end])
        self.pos = self.end
        self.malformed(f"truncated: {self.opname()} name line has no terminating newline",
                       tolerated=True)
        return rest[:-1]

    def frame_check(self, start: int, stop: int) -> None:
        """An argument occupying ``[start, stop)`` must not run past the end of its FRAME.

        pickle.py raises there, but _pickle reading a file without ``peek()`` (a BytesIO, as
        torch.load uses) drops the rest of the frame and reads the argument from after it, so
        from here on it would execute different bytes than the ones we follow.
        """
        if self.frame_end is not None and start < self.frame_end < stop:
            if self.resume is not None:
                # The loader that read raw bytes is pickle._Unpickler, which raises here.
                raise Fatal(FindingKind.MALFORMED, self.op_offset,
                            f"{self.opname()} argument runs past the end of its FRAME: "
                            "pickle exhausted before end of frame")
            self.malformed(f"{self.opname()} argument runs past the end of its FRAME; "
                           "_pickle would read it from after the frame and execute different "
                           "bytes than the rest of this analysis", tolerated=True)
            self.frame_end = None

    # -- raw reads between opcodes (joblib) ------------------------------------------------

    def file_position(self) -> int:
        """Where pickle._Unpickler's file handle is: its _Unframer reads a whole FRAME into
        memory, so inside a frame the file is already at the frame's end."""
        if self.resume is not None:
            return self.resume
        if self.frame_end is not None and self.pos < self.frame_end:
            return min(self.frame_end, self.end)
        return self.pos

    def read_raw(self, n: int) -> int:
        """Consume ``n`` bytes at the file position, as a loader's own code does with
        ``unpickler.file_handle.read(n)``; return where they start. Inside a frame, opcodes go on
        from the rest of the frame, then from after these bytes (see leave_frame)."""
        start = self.file_position()
        if n < 0 or start + n > self.end:
            raise Fatal(FindingKind.MALFORMED, self.op_offset,
                        f"truncated: {n} raw bytes read after {self.opname()}, "
                        f"{max(self.end - start, 0)} remain")
        self.skip_file_to(start + n)
        return start

    def skip_file_to(self, pos: int) -> None:
        """The loader's file handle moved to ``pos`` (a raw read or a nested pickle)."""
        if self.resume is not None or (self.frame_end is not None and self.pos < self.frame_end):
            self.resume = pos
        else:
            self.pos = pos

    def leave_frame(self) -> None:
        """_Unframer.read: once the frame in memory is used up, read on from the file."""
        if self.resume is not None and self.frame_end is not None and self.pos >= self.frame_end:
            self.pos, self.resume = self.resume, None

    def opname(self) -> str:
        spec = OPS[self.buf[self.op_offset]]
        return spec.name if spec else "opcode"

    # -- stack ----------------------------------------------------------------------------

    def push(self, value: Value) -> None:
        # The loop checks the depth after each opcode (Limits.max_stack).
        self.stack.append(value)

    def pop(self) -> Value:
        if self.stack:
            return self.stack.pop()
        self.underflow()
        return UNDERFLOW

    def top(self) -> Value:
        if self.stack:
            return self.stack[-1]
        self.underflow()
        return UNDERFLOW

    def set_top(self, value: Value) -> None:
        if self.stack:
            self.stack[-1] = value
        else:
            self.push(value)

    def pop_mark(self) -> list[Value]:
        items = self.stack
        if self.metastack:
            self.stack = self.metastack.pop()
        else:
            self.malformed(f"{self.opname()} without a preceding MARK")
            self.stack = []
        return items

    def underflow(self) -> None:
        # Report the first one; later ones in the same stream are consequences.
        if self.underflows == 0:
            self.malformed(f"stack underflow in {self.opname()}")
        self.underflows += 1

    def malformed(self, message: str, tolerated: bool = False) -> None:
        """``tolerated``: CPython's unpickler carries on here (a FRAME divergence between
        pickle.py and _pickle, or a name line cut at the end of the data)."""
        self.out.finding(FindingKind.MALFORMED, self.op_offset, message)
        if tolerated:
            self.out.divergences += 1
        else:
            self.out.error_at(self.op_offset)

    # -- containers under the budget of kept items ------------------------------------------

    def new_seq(self, kind: str, spent: Seq) -> Seq:
        """A new list/set/frozenset, or the stream's shared ``spent`` one (see room)."""
        if self.room > 0:
            self.room -= 1
            return Seq(kind)
        return spent

    def new_mapping(self) -> Mapping:
        if self.room > 0:
            self.room -= 1
            return Mapping()
        return self.spent_dict

    def add_items(self, target: Value, values: list[Value]) -> None:
        """APPEND(S)/ADDITEMS: keep up to KEPT_ITEMS per container and the stream's room."""
        if isinstance(target, Seq):
            keep = max(min(KEPT_ITEMS - len(target.items), self.room, len(values)), 0)
            if keep:
                target.items.extend(values[:keep] if keep < len(values) else values)
                self.room -= keep
            target.dropped += len(values) - keep
        elif isinstance(target, Instance):
            keep = max(min(KEPT_ITEMS - len(target.items), self.room, len(values)), 0)
            if keep:
                target.items.extend(values[:keep])
                self.room -= keep

    def set_items(self, target: Value, items: list[Value]) -> None:
        """SETITEM(S): ``items`` alternates keys and values (an odd last one is ignored)."""
        if not isinstance(target, Mapping):
            self.add_items(target, items)
            return
        pairs = len(items) // 2
        keep = max(min(KEPT_ITEMS - len(target.items), self.room, pairs), 0)
        if keep:
            target.items.extend(zip(items[0:2 * keep:2], items[1:2 * keep:2], strict=False))
            self.room -= keep
        if keep < pairs:
            target.dropped += pairs - keep
            for i in range(2 * keep, 2 * pairs, 2):
                if target.special is not None:
                    break
                target.special = special_name(items[i])

    # -- imports --------------------------------------------------------------------------

    def import_global(self, module: str, name: str, opcode: str) -> Ref:
        mapped_module, mapped_name = map_python2_name(module, name, self.proto)
        written = None
        if (mapped_module, mapped_name) != (module, name):
            written = f"{module}.{name}"
        key = (mapped_module, mapped_name, opcode, written)
        imports = self.out.imports
        index = self.seen_imports.get(key)
        if index is not None:
            self.repeats[index] = self.repeats.get(index, 0) + 1
            return Ref(imports[index])
        ref = GlobalRef(module=mapped_module, name=mapped_name,
                        offset=self.op_offset - self.out.base,
                        opcode=opcode, member=self.out.member, written_as=written)
        self.seen_imports[key] = len(imports)
        imports.append(ref)
        return Ref(ref)

    def text_of(self, value: Value) -> str | None:
        """The value if it is provably a ``str`` (what load_stack_global demands), else None."""
        if type(value) is str:
            return value
        if isinstance(value, LongText):
            return _decode(bytes(self.buf[value.offset:value.offset + value.length]),
                           value.encoding)
        return None

    def decode_name(self, raw: bytes, encoding: str) -> str | None:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            # CPython's load_global raises here too, so a loader stops at this opcode.
            self.out.finding(FindingKind.UNRESOLVED, self.op_offset,
                             f"{self.opname()} names {raw!r}, which is not valid {encoding}; "
                             "the import cannot be resolved")
            self.out.error_at(self.op_offset)
            return None

    # -- payloads (the loop has stepped over them: they end at m.pos) ----------------------

    def text_payload(self, n: int, encoding: str) -> Value:
        start = self.pos - n
        if n <= INLINE_BYTES:
            text = _decode(bytes(self.buf[start:start + n]), encoding)
            if text is None:
                self.malformed(f"{self.opname()} payload is not valid {encoding}")
                return Opaque("undecodable string")
            return text
        if not self.validate_text(start, n, encoding):
            self.malformed(f"{self.opname()} payload is not valid {encoding}")
            return Opaque("undecodable string")
        return LongText(start, n, encoding)

    def validate_text(self, start: int, n: int, encoding: str) -> bool:
        """Decode in chunks so a huge string is checked without being held in memory."""
        decoder = codecs.getincrementaldecoder(_CODEC[encoding][0])(_CODEC[encoding][1])
        chunk = 1 << 20
        try:
            for at in range(start, start + n, chunk):
                decoder.decode(bytes(self.buf[at:min(at + chunk, start + n)]))
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
        return True

    def bytes_payload(self, n: int) -> Value:
        start = self.pos - n
        if n <= INLINE_BYTES:
            return bytes(self.buf[start:start + n])
        return LongBytes(start, n)

    # -- memo -----------------------------------------------------------------------------

    def memo_put(self, index: int) -> None:
        memo = self.memo
        value = self.stack[-1] if self.stack else self.top()
        if 0 <= index < len(memo):
            memo[index] = value
            return
        sparse = self.sparse
        if index not in sparse and len(memo) + len(sparse) >= self.max_memo:
            raise Bound(self.op_offset, f"memo larger than {self.max_memo} entries")
        if index == len(memo):
            memo.append(value)
            sparse.pop(index, None)
            while sparse and len(memo) in sparse:   # the list reached sparse keys: move them
                memo.append(sparse.pop(len(memo)))
        else:
            sparse[index] = value

    def memo_get(self, index: int) -> None:
        memo = self.memo
        if 0 <= index < len(memo):
            self.stack.append(memo[index])
            return
        value = self.sparse.get(index, MISSING)
        if value is MISSING:
            self.malformed(f"{self.opname()} reads memo key {index}, which was never stored")
        self.stack.append(value)

    def memo_len(self) -> int:
        return len(self.memo) + len(self.sparse)

    def int_line(self, raw: bytes) -> int | None:
        try:
            return int(raw)     # load_get/load_put: base 10 ("010" is 10), unlike INT/LONG
        except ValueError:
            self.malformed(f"{self.opname()} argument {raw[:40]!r} is not an integer")
            return None


_CODEC = {
    "utf-8": ("utf-8", "surrogatepass"),       # BINUNICODE family: pickle.py uses surrogatepass
    "latin-1": ("latin-1", "strict"),          # STRING family: the encoding numpy/joblib pass
    "raw-unicode-escape": ("raw-unicode-escape", "strict"),
}


def _decode(raw: bytes, encoding: str) -> str | None:
    codec, errors = _CODEC[encoding]
    try:
        return raw.decode(codec, errors)
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# Opcode handlers. Each gets the opcode's decoded argument (see OPS) and returns True only for
# STOP. Semantics cite pickle.py's load_* methods. A handler pushes at most once, last.

Handler = Callable[[PickleMachine, Any], bool]
_HANDLERS: dict[str, Handler] = {}


def opcode(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            _HANDLERS[name] = fn
        return fn
    return register


@opcode("STOP")
def _stop(m: PickleMachine, arg: None) -> bool:
    m.result = m.pop()
    if m.frame_end is not None and m.pos < min(m.frame_end, m.end):
        # pickle.py and _pickle without peek() read the whole frame: a further load() from the
        # same file starts after the frame, not after this STOP.
        m.malformed("STOP leaves bytes of its FRAME unread; a further load() would start after "
                    "the frame, not after the STOP", tolerated=True)
    return True


@opcode("PROTO")
def _proto(m: PickleMachine, version: int) -> bool:
    if version > HIGHEST_PROTOCOL:
        m.malformed(f"unsupported pickle protocol {version}")
    else:
        m.proto = version
    return False


@opcode("FRAME")
def _frame(m: PickleMachine, size: int) -> bool:
    # Framing only groups opcodes for buffered reads; the opcodes inside are parsed as usual.
    if m.resume is not None and m.frame_end is not None and m.pos < m.frame_end:
        raise Fatal(FindingKind.MALFORMED, m.op_offset,
                    "beginning of a new frame before end of current frame (pickle._Unpickler "
                    "raises here, after raw bytes were read from the file)")
    m.leave_frame()   # _Unframer.load_frame reads the new frame from the file position
    if m.frame_end is not None and m.pos < m.frame_end:
        # pickle.py rejects this; _pickle without peek() may read the new frame from after
        # the old one, skipping the old frame's remaining bytes.
        m.malformed("FRAME starts before the previous frame ends", tolerated=True)
    if size > m.end - m.pos:
        m.malformed(f"FRAME announces {size} bytes but only {m.end - m.pos} remain",
                    tolerated=True)
    m.frame_end = m.pos + size
    return False


@opcode("MARK")
def _mark(m: PickleMachine, arg: None) -> bool:
    metastack = m.metastack
    if len(metastack) >= m.max_marks:
        raise Bound(m.op_offset, f"more than {m.max_marks} nested MARKs")
    metastack.append(m.stack)
    m.stack = []
    return False


@opcode("POP")
def _pop(m: PickleMachine, arg: None) -> bool:
    # load_pop: pop an item, or, when the current mark frame is empty, the MARK itself.
    if m.stack:
        m.stack.pop()
    elif m.metastack:
        m.pop_mark()
    else:
        m.underflow()
    return False


@opcode("POP_MARK")
def _pop_mark(m: PickleMachine, arg: None) -> bool:
    m.pop_mark()
    return False


@opcode("DUP")
def _dup(m: PickleMachine, arg: None) -> bool:
    m.push(m.top())
    return False


# -- scalars ------------------------------------------------------------------------------


@opcode("NONE")
def _none(m: PickleMachine, arg: None) -> bool:
    m.stack.append(None)
    return False


@opcode("NEWTRUE")
def _true(m: PickleMachine, arg: None) -> bool:
    m.stack.append(True)
    return False


@opcode("NEWFALSE")
def _false(m: PickleMachine, arg: None) -> bool:
    m.stack.append(False)
    return False


@opcode("INT")
def _int(m: PickleMachine, raw: bytes) -> bool:
    if raw == b"00":
        m.push(False)
    elif raw == b"01":
        m.push(True)
    else:
        try:
            m.push(int(raw, 0))
        except ValueError:
            m.malformed(f"INT argument {raw[:40]!r} is not an integer")
            m.push(Opaque("bad int"))
    return False


@opcode("LONG")
def _long(m: PickleMachine, raw: bytes) -> bool:
    if raw.endswith(b"L"):
        raw = raw[:-1]
    try:
        m.push(int(raw, 0) if len(raw) <= 4300 else Opaque("huge int"))
    except ValueError:
        m.malformed(f"LONG argument {raw[:40]!r} is not an integer")
        m.push(Opaque("bad int"))
    return False


@opcode("BININT", "BININT1", "BININT2", "BINFLOAT")
def _binary_number(m: PickleMachine, value: float) -> bool:
    m.stack.append(value)
    return False


@opcode("LONG1")
def _long1(m: PickleMachine, n: int) -> bool:
    m.push(int.from_bytes(m.buf[m.pos - n:m.pos], "little", signed=True))
    return False


@opcode("LONG4")
def _long4(m: PickleMachine, n: int) -> bool:
    if n <= 64:
        m.push(int.from_bytes(m.buf[m.pos - n:m.pos], "little", signed=True))
    else:
        m.push(Opaque("huge int"))   # never needed as a shape or an import: not decoded
    return False


@opcode("FLOAT")
def _float(m: PickleMachine, raw: bytes) -> bool:
    try:
        m.push(float(raw))
    except ValueError:
        m.malformed(f"FLOAT argument {raw[:40]!r} is not a number")
        m.push(Opaque("bad float"))
    return False


# -- strings and bytes ----------------------------------------------------------------------


@opcode("STRING")
def _string(m: PickleMachine, raw: bytes) -> bool:
    # load_string: the argument must be quoted; escape_decode, then decode as the caller's
    # encoding. We use latin-1, which never fails and is what numpy and joblib pass.
    if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b'"', b"'"):
        m.malformed("STRING argument is not quoted")
        m.push(Opaque("bad string"))
        return False
    try:
        data: bytes = codecs.escape_decode(raw[1:-1])[0]
    except ValueError:
        m.malformed("STRING argument has an invalid escape")
        m.push(Opaque("bad string"))
        return False
    m.push(data.decode("latin-1"))
    return False


@opcode("BINSTRING", "SHORT_BINSTRING")
def _binstring(m: PickleMachine, n: int) -> bool:
    m.push(m.text_payload(n, "latin-1"))
    return False


@opcode("UNICODE")
def _unicode(m: PickleMachine, raw: bytes) -> bool:
    text = _decode(raw, "raw-unicode-escape")
    if text is None:
        m.malformed("UNICODE argument is not valid raw-unicode-escape")
        m.push(Opaque("undecodable string"))
    else:
        m.push(text)
    return False


@opcode("SHORT_BINUNICODE")
def _short_binunicode(m: PickleMachine, n: int) -> bool:
    # The hot path of every protocol 2+ pickle: at most 255 bytes, always inlined.
    try:
        m.stack.append(m.buf[m.pos - n:m.pos].decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        m.malformed(f"{m.opname()} payload is not valid utf-8")
        m.push(Opaque("undecodable string"))
    return False


@opcode("BINUNICODE", "BINUNICODE8")
def _binunicode(m: PickleMachine, n: int) -> bool:
    m.push(m.text_payload(n, "utf-8"))
    return False


@opcode("BINBYTES", "SHORT_BINBYTES", "BINBYTES8")
def _binbytes(m: PickleMachine, n: int) -> bool:
    m.push(m.bytes_payload(n))
    return False


@opcode("BYTEARRAY8")
def _bytearray8(m: PickleMachine, n: int) -> bool:
    m.push(Opaque("bytearray"))
    return False


@opcode("NEXT_BUFFER")
def _next_buffer(m: PickleMachine, arg: None) -> bool:
    # Out-of-band data lives outside the file; loading without buffers= raises.
    m.push(Opaque("out-of-band buffer"))
    return False


@opcode("READONLY_BUFFER")
def _readonly_buffer(m: PickleMachine, arg: None) -> bool:
    m.top()
    return False


# -- containers ---------------------------------------------------------------------------


@opcode("EMPTY_TUPLE")
def _empty_tuple(m: PickleMachine, arg: None) -> bool:
    m.stack.append(())
    return False


@opcode("TUPLE")
def _tuple(m: PickleMachine, arg: None) -> bool:
    m.push(tuple(m.pop_mark()))
    return False


@opcode("TUPLE1")
def _tuple1(m: PickleMachine, arg: None) -> bool:
    m.push((m.pop(),))
    return False


@opcode("TUPLE2")
def _tuple2(m: PickleMachine, arg: None) -> bool:
    stack = m.stack
    if len(stack) >= 2:
        second = stack.pop()
        stack[-1] = (stack[-1], second)
    else:
        second = m.pop()
        m.push((m.pop(), second))
    return False


@opcode("TUPLE3")
def _tuple3(m: PickleMachine, arg: None) -> bool:
    third = m.pop()
    second = m.pop()
    m.push((m.pop(), second, third))
    return False


@opcode("EMPTY_LIST")
def _empty_list(m: PickleMachine, arg: None) -> bool:
    if m.room > 0:          # new_seq, inline
        m.room -= 1
        m.stack.append(Seq("list", []))
    else:
        m.stack.append(m.spent_list)
    return False


@opcode("LIST")
def _list(m: PickleMachine, arg: None) -> bool:
    items = m.pop_mark()
    seq = m.new_seq("list", m.spent_list)
    m.add_items(seq, items)
    m.push(seq)
    return False


@opcode("EMPTY_SET")
def _empty_set(m: PickleMachine, arg: None) -> bool:
    m.push(m.new_seq("set", m.spent_set))
    return False


@opcode("FROZENSET")
def _frozenset(m: PickleMachine, arg: None) -> bool:
    items = m.pop_mark()
    seq = m.new_seq("frozenset", m.spent_frozenset)
    m.add_items(seq, items)
    m.push(seq)
    return False


@opcode("EMPTY_DICT")
def _empty_dict(m: PickleMachine, arg: None) -> bool:
    if m.room > 0:          # new_mapping, inline
        m.room -= 1
        m.stack.append(Mapping([]))
    else:
        m.stack.append(m.spent_dict)
    return False


@opcode("DICT")
def _dict(m: PickleMachine, arg: None) -> bool:
    items = m.pop_mark()
    if len(items) % 2:
        m.malformed("DICT has an odd number of items")
    mapping = m.new_mapping()
    m.set_items(mapping, items)
    m.push(mapping)
    return False


@opcode("APPEND")
def _append(m: PickleMachine, arg: None) -> bool:
    value = m.pop()
    m.add_items(m.top(), [value])
    return False


@opcode("APPENDS", "ADDITEMS")
def _appends(m: PickleMachine, arg: None) -> bool:
    items = m.stack
    if m.metastack:     # pop_mark and top, inline for the common case
        stack = m.stack = m.metastack.pop()
        if stack:
            m.add_items(stack[-1], items)
            return False
    else:
        items = m.pop_mark()
    m.add_items(m.top(), items)
    return False


@opcode("SETITEM")
def _setitem(m: PickleMachine, arg: None) -> bool:
    value = m.pop()
    key = m.pop()
    m.set_items(m.top(), [key, value])
    return False


@opcode("SETITEMS")
def _setitems(m: PickleMachine, arg: None) -> bool:
    items = m.stack
    if m.metastack:     # pop_mark, inline for the common case
        stack = m.stack = m.metastack.pop()
    else:
        items = m.pop_mark()
        stack = m.stack
    if len(items) % 2:
        m.malformed("SETITEMS has an odd number of items")
    m.set_items(stack[-1] if stack else m.top(), items)
    return False


# -- memo ---------------------------------------------------------------------------------


@opcode("PUT")
def _put(m: PickleMachine, raw: bytes) -> bool:
    index = m.int_line(raw)
    if index is not None and index < 0:
        m.malformed("negative PUT argument")
    elif index is not None:
        m.memo_put(index)
    return False


@opcode("BINPUT", "LONG_BINPUT")
def _binput(m: PickleMachine, index: int) -> bool:
    m.memo_put(index)
    return False


@opcode("MEMOIZE")
def _memoize(m: PickleMachine, arg: None) -> bool:
    # load_memoize: memo[len(memo)] = stack[-1]
    memo = m.memo
    if m.stack and not m.sparse and len(memo) < m.max_memo:
        memo.append(m.stack[-1])    # memo_put's common case, inline: the hottest opcode
    else:
        m.memo_put(m.memo_len())
    return False


@opcode("GET")
def _get(m: PickleMachine, raw: bytes) -> bool:
    index = m.int_line(raw)
    if index is None:
        m.push(Opaque("bad memo key"))
    else:
        m.memo_get(index)
    return False


@opcode("BINGET", "LONG_BINGET")
def _binget(m: PickleMachine, index: int) -> bool:
    memo = m.memo
    if index < len(memo):       # memo_get's common case, inline (index is unsigned here)
        m.stack.append(memo[index])
    else:
        m.memo_get(index)
    return False


# -- imports ------------------------------------------------------------------------------


def _line_import(m: PickleMachine, opname: str) -> Value:
    # load_global/load_inst: module and name are raw lines, decoded (we accept UTF-8, the
    # wider of the encodings CPython versions use), then find_class(module, name).
    raw_module = m.name_line()
    raw_name = m.name_line()
    if raw_module is None or raw_name is None:
        return Opaque("unresolved global")      # a name over max_name_bytes, reported
    module = m.decode_name(raw_module, "utf-8")
    name = m.decode_name(raw_name, "utf-8")
    if module is None or name is None:
        return Opaque("undecodable global")
    return m.import_global(module, name, opname)


@opcode("GLOBAL")
def _global(m: PickleMachine, arg: None) -> bool:
    m.push(_line_import(m, "GLOBAL"))
    return False


@opcode("STACK_GLOBAL")
def _stack_global(m: PickleMachine, arg: None) -> bool:
    name_value = m.pop()
    module_value = m.pop()
    module, name = m.text_of(module_value), m.text_of(name_value)
    if module_value is UNDERFLOW or name_value is UNDERFLOW:
        # load_stack_global's pop raises on an empty stack: nothing is imported (the underflow
        # is already reported as malformed).
        m.push(Opaque("unresolved global"))
    elif module is None or name is None:
        m.out.finding(
            FindingKind.UNRESOLVED, m.op_offset,
            f"STACK_GLOBAL imports from operands that are not provably strings "
            f"(module: {describe(module_value)}, name: {describe(name_value)})",
            module=module, name=name)
        m.push(Opaque("unresolved global"))
    else:
        m.push(m.import_global(module, name, "STACK_GLOBAL"))
    return False


@opcode("EXT1", "EXT2", "EXT4")
def _ext(m: PickleMachine, code: int) -> bool:
    opname = m.opname()
    m.out.finding(FindingKind.UNRESOLVED, m.op_offset,
                  f"{opname} {code}: imports whatever the loading process registered in the "
                  "copyreg extension registry, which cannot be known statically")
    # In an ordinary process that registry is empty (copyreg._extension_registry), so
    # pickle.py's get_extension raises: readings of bytes that are not primarily a pickle stop
    # here (a safetensors length whose low byte is 0x83 must not become a polyglot).
    m.out.error_at(m.op_offset)
    m.push(Opaque(f"extension {code}"))
    return False


@opcode("INST")
def _inst(m: PickleMachine, arg: None) -> bool:
    offset = m.op_offset
    cls = _line_import(m, "INST")     # find_class runs before pop_mark, even with no MARK
    args = m.pop_mark()
    m.push(Instance(cls, tuple(args), "INST", offset))
    return False


@opcode("OBJ")
def _obj(m: PickleMachine, arg: None) -> bool:
    items = m.pop_mark()
    if not items:
        m.malformed("OBJ without a class")
        m.push(Opaque("bad OBJ"))
        return False
    m.push(Instance(items[0], tuple(items[1:]), "OBJ", m.op_offset))
    return False


# -- calls --------------------------------------------------------------------------------


@opcode("REDUCE")
def _reduce(m: PickleMachine, arg: None) -> bool:
    args = m.pop()
    func = m.top()
    m.set_top(Instance(func, args, "REDUCE", m.op_offset))
    return False


@opcode("NEWOBJ")
def _newobj(m: PickleMachine, arg: None) -> bool:
    args = m.pop()
    cls = m.pop()
    m.push(Instance(cls, args, "NEWOBJ", m.op_offset))
    return False


@opcode("NEWOBJ_EX")
def _newobj_ex(m: PickleMachine, arg: None) -> bool:
    kwargs = m.pop()
    args = m.pop()
    cls = m.pop()
    m.push(Instance(cls, args, "NEWOBJ_EX", m.op_offset, kwargs=kwargs))
    return False


@opcode("BUILD")
def _build(m: PickleMachine, arg: None) -> bool:
    state = m.pop()
    inst = m.top()
    if isinstance(inst, Ref):
        # load_build sets the state on the imported object itself: slot state by setattr on
        # the class (or function, or module), for everyone in the process that uses it.
        m.out.finding(FindingKind.BUILD_ABUSE, m.op_offset,
                      f"BUILD applies state to the global {inst.ref.dotted} itself, not to an "
                      "instance of it: that changes it for the whole loading process",
                      module=inst.ref.module, name=inst.ref.name)
    special = _special_state_key(state)
    if special is not None:
        m.out.finding(FindingKind.BUILD_ABUSE, m.op_offset,
                      f"BUILD state sets {special}; state written by a pickler never sets "
                      "special attributes (__array_interface__ makes numpy read memory at an "
                      "address of the file's choosing, __class__ and __dict__ swap the object)")
    if isinstance(inst, Instance):
        inst.state = state
    if m.on_build is not None:
        m.on_build(m, inst, state)
    return False


def special_name(key: Value) -> str | None:
    """Why ``key`` is, or may be, a ``__dunder__`` attribute name; None when it provably is not
    (a short str that is not one, or a value that is no str at all)."""
    if type(key) is str:
        if len(key) > 4 and key.startswith("__") and key.endswith("__"):
            shown = key if len(key) <= 60 else key[:57] + "..."
            return f"the special attribute {shown!r}"
        return None
    if isinstance(key, (Ref, Instance, Opaque, LongText)):
        return f"an attribute whose name cannot be known statically ({describe(key)})"
    return None


def _special_state_key(state: Value) -> str | None:
    """The first key of a BUILD state that is, or may be, a ``__dunder__`` attribute.

    load_build: a 2-tuple is (dict state, slot state); the dict state updates ``__dict__``
    (numpy finds ``__array_interface__`` there), the slot state goes through setattr
    (``__class__``, ``__dict__``). A key whose type cannot be proven may be such a str."""
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if part.shared and part.special is not None:
            return ("an attribute whose name was not kept (the dicts built after the budget of "
                    "kept items was spent share one record, and one of them sets "
                    f"{part.special})")
        if part.special is not None:
            return part.special
        for at in range(part.checked, len(part.items)):
            why = special_name(part.items[at][0])
            if why is not None:
                part.checked = at           # found again at once by the next BUILD
                return why
        part.checked = len(part.items)
    return None


@opcode("PERSID")
def _persid(m: PickleMachine, raw: bytes) -> bool:
    m.out.persistent_ids.append((m.op_offset, raw.decode("latin-1")))
    m.push(Opaque("persistent object"))
    return False


@opcode("BINPERSID")
def _binpersid(m: PickleMachine, arg: None) -> bool:
    m.out.persistent_ids.append((m.op_offset, m.pop()))
    m.push(Opaque("persistent object"))
    return False


# ---------------------------------------------------------------------------------------------
# The opcode table: one entry per opcode byte, derived from CPython's own pickletools.opcodes
# (exhaustive: a new opcode in a future Python fails here at import time rather than being
# silently treated as unknown). It says how the loop decodes each argument, as pickletools'
# ArgumentDescriptor does: n >= 0 fixed bytes, UP_TO_NEWLINE a line, TAKEN_FROM_ARGUMENT* a
# length prefix and that many payload bytes.

NO_ARGUMENT = 0
LINE = -1           # the argument is a line (bytes without the newline)
NAME_PAIR = -2      # GLOBAL/INST: two name lines, read by the handler (see name_line)

# ArgumentDescriptor.name -> struct format of the fixed-size arguments.
_FIXED = {"uint1": struct.Struct("<B"), "uint2": struct.Struct("<H"), "int4": struct.Struct("<i"),
          "uint4": struct.Struct("<I"), "uint8": struct.Struct("<Q"), "float8": struct.Struct(">d")}
_NONE = struct.Struct("")
# TAKEN_FROM_ARGUMENT* -> (size, struct format) of the length prefix.
_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: _FIXED["uint1"],
           pickletools.TAKEN_FROM_ARGUMENT4: _FIXED["int4"],
           pickletools.TAKEN_FROM_ARGUMENT4U: _FIXED["uint4"],
           pickletools.TAKEN_FROM_ARGUMENT8U: _FIXED["uint8"]}


class OpSpec(NamedTuple):
    name: str
    size: int           # > 0: fixed argument or length prefix; NO_ARGUMENT, LINE or NAME_PAIR
    fixed: struct.Struct  # how a fixed argument or length prefix is encoded
    counted: bool       # the fixed part is the byte count of a payload that follows
    moves: bool         # the handler may move the file position or the frame (loop's fence)
    handler: Handler


def _spec(op: pickletools.OpcodeInfo) -> OpSpec:
    arg, handler = op.arg, _HANDLERS[op.name]
    # FRAME sets the frame; BUILD runs format hooks that read raw bytes (read_raw);
    # GLOBAL/INST read their own lines.
    moves = op.name in ("FRAME", "BUILD", "GLOBAL", "INST")
    if arg is None:
        return OpSpec(op.name, NO_ARGUMENT, _NONE, False, moves, handler)
    if arg.n >= 0:
        assert _FIXED[arg.name].size == arg.n
        return OpSpec(op.name, arg.n, _FIXED[arg.name], False, moves, handler)
    if arg.n == pickletools.UP_TO_NEWLINE:
        size = NAME_PAIR if arg.name == "stringnl_noescape_pair" else LINE
        return OpSpec(op.name, size, _NONE, False, moves, handler)
    prefix = _PREFIX[arg.n]
    return OpSpec(op.name, prefix.size, prefix, True, moves, handler)


_OPCODES = {op.code.encode("latin-1")[0]: op for op in pickletools.opcodes}
_missing = sorted(op.name for op in pickletools.opcodes if op.name not in _HANDLERS)
if _missing:  # pragma: no cover - guards against a newer Python's opcode table
    raise ImportError(f"picklegate has no handler for pickle opcodes {_missing}")
OPS: list[OpSpec | None] = [None] * 256
for _code, _op in _OPCODES.items():
    OPS[_code] = _spec(_op)


# ---------------------------------------------------------------------------------------------
# Whole files: concatenated streams


def analyse_pickles(buf: Buffer, start: int = 0, end: int | None = None, *,
                    member: str | None = None, limits: Limits = DEFAULT_LIMITS,
                    on_build: BuildHook | None = None,
                    collector: Collector | None = None) -> Collector:
    """Analyse every pickle stream in ``buf[start:end]``, to the end of the data.

    Streams follow each other; bytes after a STOP that are only whitespace or NUL are padding,
    anything else is read as a further stream (a second pickle is loaded by a second load()).
    """
    out = collector if collector is not None else Collector(member=member)
    stop = len(buf) if end is None else end
    if start >= stop:
        out.finding(FindingKind.MALFORMED, start, "empty: no pickle data")
        return out
    pos = start
    streams = 0
    while pos < stop:
        if streams >= limits.max_streams:
            out.finding(FindingKind.LIMIT, pos,
                        f"more than {limits.max_streams} pickle streams; the rest was not analysed")
            break
        after = PickleMachine(buf, pos, stop, out, limits, on_build).run()
        streams += 1
        if after is None:
            break
        pos = skip_padding(buf, after, stop)
    return out


def skip_padding(buf: Buffer, pos: int, end: int) -> int:
    while pos < end and buf[pos] in PADDING:
        pos += 1
    return pos
