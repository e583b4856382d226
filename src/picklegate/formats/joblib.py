"""joblib: NumpyArrayWrapper objects followed by their arrays' raw bytes in the same file.

joblib's NumpyUnpickler (joblib 1.x, joblib/numpy_pickle.py) subclasses the pure-Python
``pickle._Unpickler`` and, after every BUILD, checks ``isinstance(stack[-1], (NDArrayWrapper,
NumpyArrayWrapper))``. For a NumpyArrayWrapper, ``read_array`` then reads from the *file handle*
(not the frame in memory): for a dtype with ``hasobject``, one nested pickle with a fresh
``pickle._Unpickler``; otherwise, when the wrapper has a ``numpy_array_alignment_bytes``
attribute that is not None, a padding-length byte and that much padding, then
``count * dtype.itemsize`` bytes. This hook does the same statically, from the symbolic values
the machine built, so the machine carries on at exactly the byte joblib would.

The rule throughout: carry on only where the layout is proven for every run where joblib.load
succeeds. Where joblib itself fails, nothing after that point runs, so a finding is always a
correct answer there; where picklegate cannot prove the layout, the stream stops with a finding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from picklegate.findings import FindingKind
from picklegate.machine import (Fatal, Instance, Mapping, Opaque, PickleMachine, Ref, Seq,
                                Value, describe)

# Dotted names, so that a protocol 4 dotted name (module "joblib", name
# "numpy_pickle.NumpyArrayWrapper", which find_class resolves attribute by attribute) matches too.
WRAPPERS = frozenset({
    "joblib.numpy_pickle.NumpyArrayWrapper",
    "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper",
})
# joblib < 0.10's wrappers: isinstance matches them too, but their read() loads a side file by
# name (numpy_pickle_compat.py) and consumes nothing from the stream.
LEGACY_WRAPPERS = frozenset(
    f"{package}.{module}.{cls}"
    for package in ("joblib", "sklearn.externals.joblib")
    for module in ("numpy_pickle", "numpy_pickle_compat")
    for cls in ("NDArrayWrapper", "ZNDArrayWrapper"))
ANY_WRAPPER = WRAPPERS | LEGACY_WRAPPERS
DTYPE_CLASSES = frozenset({"numpy.dtype", "numpy.core.multiarray.dtype",
                           "numpy._core.multiarray.dtype"})
# NumpyArrayWrapper.__init__(subclass, shape, order, dtype, allow_mmap=False,
#                            numpy_array_alignment_bytes=NUMPY_ARRAY_ALIGNMENT_BYTES (16))
INIT_ARGS = ("subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes")
INIT_DEFAULTS: dict[str, Value] = {"allow_mmap": False, "numpy_array_alignment_bytes": 16}
# Methods joblib calls on the wrapper: an instance attribute of the same name shadows them.
METHODS = frozenset({"read", "read_array", "read_mmap", "safe_get_numpy_array_alignment_bytes",
                     "__setstate__"})
# numpy's NPY_MAXDIMS (64 in numpy 2, 32 in numpy 1): read_array's reshape fails beyond it.
MAX_DIMS = 64
INT64 = 2**63
SSIZE_MAX = 2**63 - 1
# Bounds on the work spent proving things about one stream's values.
MAX_DTYPE_DEPTH = 32
MAX_DTYPE_NODES = 10_000
MAX_WALK = 100_000
MAX_WALK_TOTAL = 10_000_000

# What numpy's dtype reduce writes as numpy.dtype's first argument ("%c%d" of kind and size,
# numpy/_core/src/multiarray/descriptor.c arraydescr_reduce), with an optional byte-order
# prefix, a datetime unit and the unsized flexible forms. Anything else (type names, char
# codes like 'l' whose size depends on the platform, comma strings) is not sized here.
_DESCR = re.compile(r"^[<>=|]?(?:(?P<kind>[biufcSaUVO])(?P<digits>\d*)"
                    r"|(?P<bool>\?)|(?P<time>[Mm])8?(?:\[[^\]]*\])?)$")
_NUMERIC_SIZES = {"b": {1}, "i": {1, 2, 4, 8}, "u": {1, 2, 4, 8}, "f": {2, 4, 8, 12, 16},
                  "c": {8, 16, 24, 32}}
FLEXIBLE = frozenset("SaUV")       # numpy's PyTypeNum_ISEXTENDED: the state's elsize is kept


class Role(Enum):
    NONE = "not a wrapper"
    ARRAY = "NumpyArrayWrapper"
    LEGACY = "NDArrayWrapper"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Built:
    """What a BUILD target is, and the arguments ``__init__`` ran with (None: ``__new__`` only)."""

    role: Role
    init_args: tuple[Value, ...] | None = None
    why: str = ""


NOT_A_WRAPPER = Built(Role.NONE)


@dataclass(frozen=True)
class Layout:
    itemsize: int
    hasobject: bool          # numpy's dtype.hasobject: joblib reads a nested pickle instead
    holds_objects: bool      # an object dtype anywhere inside, whatever the flags claim


@dataclass
class JoblibHook:
    """The BUILD hook; remembers each wrapper's attributes across repeated BUILDs."""

    arrays: int = 0
    legacy: int = 0
    # [start, end) of the raw bytes (padding-length byte, padding, data) of non-object arrays.
    skipped: list[tuple[int, int]] = field(default_factory=list)
    # [start, end) of the nested pickles of object arrays (parsed, not skipped).
    nested: list[tuple[int, int]] = field(default_factory=list)
    # id -> (the wrapper, its role, its attributes); kept so that ids are never reused.
    attrs: dict[int, tuple[Instance, Role, dict[str, Value]]] = field(default_factory=dict)
    # id -> (a numpy.dtype instance, how many BUILDs set its state so far).
    dtype_builds: dict[int, tuple[Instance, int]] = field(default_factory=dict)
    imports_seen: int = 0
    wrapper_imported: bool = False
    walked: int = 0

    def __call__(self, m: PickleMachine, inst: Value, state: Value) -> None:
        self._note_imports(m)
        if isinstance(inst, Instance) and _dotted(inst.callee) in DTYPE_CLASSES:
            self.dtype_builds[id(inst)] = (inst, self.dtype_builds.get(id(inst), (inst, 0))[1] + 1)
            return
        known = self.attrs.get(id(inst))
        built = Built(known[1]) if known else self.classify(m, inst)
        if built.role is Role.NONE:
            if isinstance(state, tuple) and len(state) == 2 and self.tainted(m, state[1]):
                raise _stop(m, "the BUILD slot state holds the array wrapper class or a wrapper, "
                            "and setattr(obj, '__class__', ...) could turn this object into one")
            return
        if built.role is Role.UNKNOWN:
            raise _stop(m, built.why)
        assert isinstance(inst, Instance)
        if known is None:
            known = self.attrs[id(inst)] = (inst, built.role, _init_attrs(m, built.init_args))
        attrs = known[2]
        _apply_state(m, attrs, state)
        if built.role is Role.LEGACY:
            self.legacy += 1
            m.set_top(Opaque("array from a side file"))
            return
        self.arrays += 1
        m.set_top(self._read_array(m, attrs))

    # -- which BUILD targets are wrappers ---------------------------------------------------

    def classify(self, m: PickleMachine, value: Value) -> Built:
        """Wrapper, not a wrapper, or unknown, for the object a BUILD just updated.

        Only the wrapper class itself, copyreg's helpers given the wrapper class, or something
        given the class or a wrapper can produce one: an allowed class builds an instance of
        itself, and a global the policy does not allow is reported by the policy anyway.
        """
        if not isinstance(value, Instance):
            # Scalars, containers, globals (a class, never an instance of the wrapper) and the
            # arrays joblib already read. Opaque values from unresolvable imports are findings.
            return NOT_A_WRAPPER
        direct = _direct(m, value)
        if direct is not None:
            return direct
        if self.tainted(m, (value.callee, value.args, value.kwargs)):
            return Built(Role.UNKNOWN, why=(
                f"the object built by {value.opcode} at offset {value.offset - m.out.base} comes "
                f"from {describe(value.callee)} given the array wrapper class or a wrapper, so it "
                "could be an array wrapper"))
        return NOT_A_WRAPPER

    def tainted(self, m: PickleMachine, root: Value) -> bool:
        """Could ``root`` be, hold or produce the wrapper class or a wrapper instance?"""
        if not self.wrapper_imported:
            return False
        todo: list[Value] = [root]
        seen: set[int] = set()
        walked = 0
        while todo:
            value = todo.pop()
            if isinstance(value, (tuple, Seq, Mapping, Instance)):
                if id(value) in seen:
                    continue
                seen.add(id(value))
            walked += 1
            self.walked += 1
            if walked > MAX_WALK or self.walked > MAX_WALK_TOTAL:
                raise Fatal(FindingKind.LIMIT, m.op_offset,
                            "too many values to prove that a BUILD target is not a joblib array "
                            "wrapper; the rest of the stream was not analysed")
            if isinstance(value, Ref):
                if value.ref.dotted in ANY_WRAPPER:
                    return True
            elif isinstance(value, Instance):
                if _direct(m, value) is not None:
                    return True
                todo += [value.callee, value.args, value.kwargs, value.state]
                todo += value.items
            elif isinstance(value, tuple):
                todo += value
            elif isinstance(value, Seq):
                if value.dropped:
                    return True
                todo += value.items
            elif isinstance(value, Mapping):
                if value.dropped:
                    return True
                for key, item in value.items:
                    todo += [key, item]
        return False

    def _note_imports(self, m: PickleMachine) -> None:
        imports = m.out.imports
        for ref in imports[self.imports_seen:]:
            self.wrapper_imported |= ref.dotted in ANY_WRAPPER
        self.imports_seen = len(imports)

    # -- reading the array ------------------------------------------------------------------

    def _read_array(self, m: PickleMachine, attrs: dict[str, Value]) -> Value:
        """NumpyArrayWrapper.read_array (and read_mmap, which reads the same bytes)."""
        count = _count(m, attrs.get("shape", ABSENT))
        layout = DtypeReader(m, self.dtype_builds).layout(attrs.get("dtype", ABSENT))
        if layout.hasobject:
            if attrs.get("allow_mmap", False) not in (False, 0, None):
                # joblib.load(mmap_mode=...) takes read_mmap, which maps raw bytes instead.
                raise _stop(m, "an object array that allows memory mapping: read with mmap_mode "
                            "joblib would map raw bytes instead of a nested pickle")
            return self._nested(m)
        if layout.holds_objects:
            raise _stop(m, "the dtype holds Python objects but its flags say it does not, so "
                        "numpy would read raw bytes as object pointers", FindingKind.UNSUPPORTED)
        start = m.file_position()
        alignment = attrs.get("numpy_array_alignment_bytes", ABSENT)
        if alignment is not ABSENT and _maybe_none(alignment):
            raise _stop(m, f"cannot tell whether numpy_array_alignment_bytes "
                        f"({describe(alignment)}) is None, i.e. whether a padding byte follows")
        if alignment is not ABSENT and alignment is not None:
            padding = m.buf[m.read_raw(1)]
            m.read_raw(padding)
        if layout.itemsize <= 0:
            raise _stop(m, f"array item size {layout.itemsize}: joblib's read_array fails here",
                        FindingKind.MALFORMED)
        data = m.read_raw(count * layout.itemsize)
        if data + count * layout.itemsize > start:
            self.skipped.append((start, data + count * layout.itemsize))
        return Opaque("array")

    def _nested(self, m: PickleMachine) -> Value:
        # read_array: Unpickler(unpickler.file_handle).load(), a plain pickle._Unpickler (no
        # joblib hook), reading from the file position and leaving it after the frame it ends in.
        start = m.file_position()
        nested = PickleMachine(m.buf, start, m.end, m.out, m.limits)
        if nested.run() is None:
            raise _stop(m, "the object array's nested pickle could not be read to its end",
                        FindingKind.MALFORMED)
        end = nested.file_position()
        m.skip_file_to(end)
        self.nested.append((start, end))
        return Opaque("object array")


ABSENT: Value = Opaque("absent attribute")


def _dotted(value: Value) -> str | None:
    return value.ref.dotted if isinstance(value, Ref) else None


def _args(value: Value) -> list[Value] | None:
    """Positional arguments of a call: ``f(*args)`` accepts a tuple or a list."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Seq) and value.kind == "list" and not value.dropped:
        return list(value.items)
    return None


def _factory_class(inst: Instance) -> str | None:
    """The class copyreg's helpers are asked to instantiate, if ``inst`` is such a call."""
    if _dotted(inst.callee) in ("copyreg._reconstructor", "copyreg.__newobj__",
                                "copyreg.__newobj_ex__"):
        args = _args(inst.args)
        return _dotted(args[0]) if args else None
    return None


def _direct(m: PickleMachine, inst: Instance) -> Built | None:
    """A wrapper made by calling its class or by copyreg's helpers, or None if neither."""
    callee = _dotted(inst.callee)
    calls = inst.opcode == "REDUCE" or (inst.opcode in ("OBJ", "INST") and _args(inst.args) != [])
    if callee in ANY_WRAPPER:
        role = Role.ARRAY if callee in WRAPPERS else Role.LEGACY
        if not calls:
            # NEWOBJ/NEWOBJ_EX: cls.__new__(cls, ...); OBJ/INST without arguments:
            # pickle.py _instantiate calls klass.__new__(klass). Neither runs __init__.
            return Built(role)
        args = _args(inst.args)
        if args is None:
            return Built(Role.UNKNOWN, why="the array wrapper's constructor arguments cannot be "
                         "read statically")
        return Built(role, tuple(args))
    cls = _factory_class(inst)
    if cls not in ANY_WRAPPER or not calls:
        return None
    role = Role.ARRAY if cls in WRAPPERS else Role.LEGACY
    args = _args(inst.args) or []
    if callee == "copyreg._reconstructor":
        # copyreg._reconstructor(cls, base, state): object.__new__(cls) when base is object;
        # any other base either fails or runs base.__init__, which picklegate does not model.
        if len(args) != 3 or _dotted(args[1]) != "builtins.object":
            return Built(Role.UNKNOWN, why="copyreg._reconstructor builds the array wrapper "
                         f"from base {describe(args[1]) if len(args) > 1 else 'missing'}")
    elif callee == "copyreg.__newobj_ex__" and len(args) != 3:
        return Built(Role.UNKNOWN, why="copyreg.__newobj_ex__ with the array wrapper class and "
                     f"{len(args)} arguments")
    return Built(role)          # __newobj__/__newobj_ex__: cls.__new__(cls, ...), no __init__


def _init_attrs(m: PickleMachine, init_args: tuple[Value, ...] | None) -> dict[str, Value]:
    """The instance dict __init__ leaves: empty when only __new__ ran."""
    if init_args is None:
        return {}
    if not 4 <= len(init_args) <= len(INIT_ARGS):
        raise _stop(m, f"NumpyArrayWrapper() called with {len(init_args)} arguments; joblib "
                    "fails here", FindingKind.MALFORMED)
    attrs = dict(INIT_DEFAULTS)
    attrs.update(zip(INIT_ARGS, init_args, strict=False))     # fewer args: the defaults
    return attrs


def _apply_state(m: PickleMachine, attrs: dict[str, Value], state: Value) -> None:
    """pickle.py load_build: ``if state:`` update __dict__; ``if slotstate:`` setattr each."""
    slotstate: Value = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
    for part, is_slots in ((state, False), (slotstate, True)):
        if part is None or part == () or part is False or part == 0 or part == "":
            continue
        if not isinstance(part, Mapping) or part.dropped:
            raise _stop(m, "the array wrapper's state cannot be read statically")
        for key, value in part.items:
            if type(key) is not str:
                raise _stop(m, f"the array wrapper's state has the key {describe(key)}")
            if is_slots and key in ("__class__", "__dict__"):
                raise _stop(m, f"the array wrapper's slot state sets {key}",
                            FindingKind.UNSUPPORTED)
            attrs[key] = value
    shadowed = sorted(METHODS & attrs.keys())
    if shadowed:
        raise _stop(m, f"the array wrapper's state replaces its method {shadowed[0]}, which "
                    "joblib calls to read the array", FindingKind.UNSUPPORTED)


def _maybe_none(value: Value) -> bool:
    """Could this value be None at run time (the result of a call, something unknown)?"""
    return isinstance(value, (Instance, Opaque))


def _count(m: PickleMachine, shape: Value) -> int:
    """read_array: ``count = np.multiply.reduce([np.int64(x) for x in shape])`` (1 for ()),
    then ``np.empty(count)`` and ``reshape(shape)``. Only shapes where every step succeeds
    with the true product are accepted: non-negative int64 dimensions, at most MAX_DIMS of
    them, and a product below 2**63 (otherwise int64 wraps and joblib fails or reads garbage)."""
    items = _args(shape)
    if items is None:
        raise _stop(m, f"the array's shape ({describe(shape)}) cannot be read statically")
    if len(items) > MAX_DIMS:
        raise _stop(m, f"the array's shape has {len(items)} dimensions; numpy allows "
                    f"{MAX_DIMS}", FindingKind.MALFORMED)
    count = 1
    for dim in items:
        if type(dim) is not int:
            raise _stop(m, f"the array's shape is not a tuple of integers ({describe(dim)})")
        if not 0 <= dim < INT64:
            raise _stop(m, f"the array's shape has the dimension {_short(dim)}",
                        FindingKind.MALFORMED)
        count *= dim
        if count >= INT64:
            raise _stop(m, "the array's shape multiplies past 2**63, where joblib's int64 "
                        "count wraps around", FindingKind.MALFORMED)
    return count


def _short(n: int) -> str:
    return str(n) if -10**18 < n < 10**18 else ("-" if n < 0 else "") + "a huge number"


class DtypeReader:
    """numpy.dtype objects as numpy rebuilds them: ``numpy.dtype(descr, align, copy)``, then
    ``__setstate__(state)`` (numpy/_core/src/multiarray/descriptor.c, arraydescr_setstate)."""

    def __init__(self, m: PickleMachine, builds: dict[int, tuple[Instance, int]]) -> None:
        self.m = m
        self.builds = builds
        self.nodes = 0

    def layout(self, value: Value, depth: int = 0, path: frozenset[int] = frozenset()) -> Layout:
        self.nodes += 1
        if depth > MAX_DTYPE_DEPTH or self.nodes > MAX_DTYPE_NODES:
            raise _stop(self.m, "the array's dtype nests too deeply", FindingKind.LIMIT)
        if id(value) in path:
            raise _stop(self.m, "the array's dtype contains itself", FindingKind.UNSUPPORTED)
        if not (isinstance(value, Instance) and _dotted(value.callee) in DTYPE_CLASSES
                and value.opcode in ("REDUCE", "NEWOBJ", "OBJ", "INST")):
            raise _stop(self.m, f"the array's dtype ({describe(value)}) is not a numpy.dtype "
                        "call picklegate can read")
        args = _args(value.args)
        if not args or len(args) > 4 or type(args[0]) is not str:
            raise _stop(self.m, "the array's dtype is not numpy.dtype(str, ...)")
        kind, size = self._descr(args[0])
        builds = self.builds.get(id(value), (value, 0))[1]
        if builds == 0:
            return Layout(size, kind == "O", kind == "O")
        if builds > 1 or not (len(args) >= 3 and args[2] is True):
            # numpy.dtype(..., copy=False) may return a shared built-in dtype, whose
            # __setstate__ does nothing; a second state keeps parts of the first.
            raise _stop(self.m, "the array's dtype gets its state in a way numpy's own pickles "
                        "never use (copy not True, or several BUILDs)", FindingKind.UNSUPPORTED)
        return self._with_state(value.state, kind, size, depth, path | {id(value)})

    def _descr(self, descr: str) -> tuple[str, int]:
        match = _DESCR.match(descr)
        digits = match.group("digits") if match else None
        if match is None or (digits is not None and len(digits) > 18):
            raise _stop(self.m, f"the array's dtype {describe(descr)} is not one picklegate can "
                        "size", FindingKind.UNSUPPORTED)
        if match.group("bool"):
            return "b", 1
        if match.group("time"):
            return "M", 8
        kind, n = match.group("kind"), int(digits or "0")
        if kind == "O":
            return "O", 8
        if kind in _NUMERIC_SIZES and n not in _NUMERIC_SIZES[kind]:
            raise _stop(self.m, f"numpy rejects the dtype {descr!r}", FindingKind.MALFORMED)
        return kind, 4 * n if kind == "U" else n

    def _with_state(self, state: Value, kind: str, size: int, depth: int,
                    path: frozenset[int]) -> Layout:
        if not (isinstance(state, tuple) and len(state) in (8, 9)
                and state[0] in (3, 4) and type(state[0]) is int):
            raise _stop(self.m, "the array's dtype state is not a version 3/4 numpy dtype state",
                        FindingKind.UNSUPPORTED)
        subarray, names, fields, elsize, flags = state[2], state[3], state[4], state[5], state[7]
        if not (isinstance(elsize, int) and isinstance(flags, int)
                and -SSIZE_MAX - 1 <= elsize <= SSIZE_MAX):
            raise _stop(self.m, "the array's dtype state has a non-integer item size or flags")
        if kind == "M" and not (len(state) == 9 and isinstance(state[8], tuple)
                                and len(state[8]) == 2):
            raise _stop(self.m, "datetime dtype state without its unit metadata (numpy fails)",
                        FindingKind.MALFORMED)
        # numpy keeps the state's elsize only for flexible types (S, U, V); the flags parsed
        # with "k" (modulo 2**64) decide hasobject (NPY_ITEM_HASOBJECT = 1) for versions >= 3.
        itemsize = elsize if kind in FLEXIBLE else size
        hasobject = bool(flags & 1)
        holds = hasobject or kind == "O"
        if not hasobject:
            for inner in self._inner_dtypes(subarray, names, fields):
                holds |= self.layout(inner, depth + 1, path).holds_objects
        return Layout(itemsize, hasobject, holds)

    def _inner_dtypes(self, subarray: Value, names: Value, fields: Value) -> list[Value]:
        inner: list[Value] = []
        if subarray is not None:
            if not (isinstance(subarray, tuple) and len(subarray) == 2):
                raise _stop(self.m, "the array's sub-array dtype cannot be read statically")
            inner.append(subarray[0])
        if (names is None) != (fields is None):
            raise _stop(self.m, "the array's dtype has fields without names (numpy fails)",
                        FindingKind.MALFORMED)
        if fields is not None:
            if not (isinstance(fields, Mapping) and not fields.dropped):
                raise _stop(self.m, "the array's structured dtype fields cannot be read "
                            "statically")
            for _, spec in fields.items:
                if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
                    raise _stop(self.m, "a structured dtype field cannot be read statically")
                inner.append(spec[0])
        return inner


def _stop(m: PickleMachine, why: str, kind: FindingKind = FindingKind.UNRESOLVED) -> Fatal:
    return Fatal(kind, m.op_offset,
                 f"joblib array after BUILD: {why}; joblib would read raw bytes here, so the "
                 "rest of the stream cannot be analysed")
