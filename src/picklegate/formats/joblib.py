"""joblib: NumpyArrayWrapper objects followed by their arrays' raw bytes in the same stream.

joblib's NumpyUnpickler.load_build (joblib/numpy_pickle.py) runs after every BUILD; when the
built object is a NumpyArrayWrapper it reads the array straight from the file: for an object
dtype, one nested pickle (with a fresh unpickler); otherwise an optional padding-length byte
and padding (when the wrapper has ``numpy_array_alignment_bytes``), then count * itemsize
bytes. This hook does the same arithmetic statically from the wrapper's symbolic state, so the
machine carries on at exactly the byte joblib would. Anything it cannot prove stops the stream
with a finding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from picklegate.findings import FindingKind
from picklegate.machine import (Fatal, Instance, Mapping, Opaque, PickleMachine, Ref, Seq,
                                Value)

WRAPPERS = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper"),
}
DTYPE_CLASSES = {("numpy", "dtype"), ("numpy.core.multiarray", "dtype"),
                 ("numpy._core.multiarray", "dtype")}
INIT_ARGS = ("subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes")
_SIMPLE = re.compile(r"^[<>|=]?([?biufcmMOSaUV])(\d*)(\[\w+\])?$")
_OBJECT_UNKNOWN = object()


def _ref_is(value: Value, names: set[tuple[str, str]]) -> bool:
    return isinstance(value, Ref) and (value.ref.module, value.ref.name) in names


def is_wrapper(value: Value) -> bool:
    """Only instances provably of the wrapper class: anything else is parsed as opcodes."""
    if not isinstance(value, Instance):
        return False
    if _ref_is(value.callee, WRAPPERS):
        return True
    # copyreg._reconstructor(cls, object, None), protocol 0/1's way to create an instance
    return (isinstance(value.callee, Ref) and value.callee.ref.dotted == "copyreg._reconstructor"
            and isinstance(value.args, tuple) and len(value.args) >= 1
            and _ref_is(value.args[0], WRAPPERS))


@dataclass
class JoblibHook:
    """The BUILD hook; remembers each wrapper's attributes across repeated BUILDs."""

    arrays: int = 0
    # [start, end) of the raw bytes (padding and data) skipped for numeric arrays.
    skipped: list[tuple[int, int]] = field(default_factory=list)
    # id -> (the wrapper, its attributes); the wrapper is kept so its id is never reused.
    attrs: dict[int, tuple[Instance, dict[str, Value]]] = field(default_factory=dict)

    def __call__(self, m: PickleMachine, inst: Value, state: Value) -> None:
        if not is_wrapper(inst):
            return
        assert isinstance(inst, Instance)
        if id(inst) not in self.attrs:
            self.attrs[id(inst)] = (inst, _init_attrs(inst, m))
        attrs = self.attrs[id(inst)][1]
        _apply_state(attrs, state, m)
        self.arrays += 1
        before = m.pos
        m.set_top(_read_array(m, attrs))
        if m.pos > before and not _dtype_layout(attrs["dtype"], m)[0]:
            self.skipped.append((before, m.pos))


def _init_attrs(inst: Instance, m: PickleMachine) -> dict[str, Value]:
    # REDUCE/OBJ/INST with arguments call __init__; NEWOBJ and _reconstructor only __new__.
    if inst.opcode in ("REDUCE", "OBJ", "INST") and _ref_is(inst.callee, WRAPPERS):
        if not isinstance(inst.args, tuple):
            raise _stop(m, "the array wrapper's constructor arguments are not a tuple")
        return dict(zip(INIT_ARGS, inst.args, strict=False))     # fewer args: defaults
    return {}


def _apply_state(attrs: dict[str, Value], state: Value, m: PickleMachine) -> None:
    # pickle.py load_build: a dict updates __dict__; (dict, slotstate) sets both.
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    for part in parts:
        if part is None:
            continue
        if not isinstance(part, Mapping) or part.dropped:
            raise _stop(m, "the array wrapper's state cannot be read statically")
        for key, value in part.items:
            if not isinstance(key, str):
                raise _stop(m, "the array wrapper's state has a non-string key")
            attrs[key] = value


def _read_array(m: PickleMachine, attrs: dict[str, Value]) -> Value:
    count = _count(attrs.get("shape", Opaque("missing")), m)
    has_object, itemsize = _dtype_layout(attrs.get("dtype", Opaque("missing")), m)
    if has_object:
        nested = PickleMachine(m.buf, m.pos, m.end, m.out, m.limits)
        after = nested.run()
        if after is None:
            raise _stop(m, "the object array's nested pickle could not be read to its end")
        m.pos = after
        return Opaque("object array")
    if attrs.get("numpy_array_alignment_bytes") is not None:
        padding = m.read(1)[0]
        m.take(padding)
    if itemsize <= 0:
        raise _stop(m, f"array item size {itemsize} (joblib cannot read it either)")
    m.take(count * itemsize)
    return Opaque("array")


def _count(shape: Value, m: PickleMachine) -> int:
    items: list[Any]
    if isinstance(shape, tuple):
        items = list(shape)
    elif isinstance(shape, Seq) and not shape.dropped:
        items = shape.items
    else:
        raise _stop(m, "the array's shape cannot be read statically")
    count = 1
    for dim in items:
        if type(dim) is not int:
            raise _stop(m, "the array's shape is not a tuple of integers")
        count *= dim
    # numpy.multiply.reduce over int64 wraps around; a negative count makes np.empty fail.
    count = (count + 2**63) % 2**64 - 2**63
    if count < 0:
        raise _stop(m, "the array's shape multiplies to a negative size")
    return count


def _dtype_layout(dtype: Value, m: PickleMachine) -> tuple[bool, int]:
    """(has_object, itemsize) of a dtype built by REDUCE numpy.dtype(descr, align, copy)."""
    if not (isinstance(dtype, Instance) and dtype.opcode == "REDUCE"
            and _ref_is(dtype.callee, DTYPE_CLASSES) and isinstance(dtype.args, tuple)
            and dtype.args and isinstance(dtype.args[0], str)):
        raise _stop(m, "the array's dtype cannot be read statically")
    descr = dtype.args[0]
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    elsize = state[5] if len(state) > 5 and type(state[5]) is int else -1
    fields = state[4] if len(state) > 4 else None
    if fields is not None or (len(state) > 2 and state[2] is not None):
        # Structured or sub-array dtypes: whether they hold objects needs their field dtypes.
        return _structured(fields, state, elsize, m)
    simple = _SIMPLE.match(descr)
    if simple is None:
        raise _stop(m, f"the array's dtype {descr!r} is not one picklegate can size")
    kind, digits = simple.group(1), simple.group(2)
    if kind == "O":
        return True, 8
    size = elsize if elsize > 0 else int(digits) if digits else {"?": 1}.get(kind, 0)
    return False, size


def _structured(fields: Value, state: tuple[Any, ...], elsize: int,
                m: PickleMachine) -> tuple[bool, int]:
    inner: list[Value] = []
    if isinstance(fields, Mapping) and not fields.dropped:
        for _, spec in fields.items:
            if not (isinstance(spec, tuple) and spec):
                raise _stop(m, "a structured dtype field cannot be read statically")
            inner.append(spec[0])
    elif fields is not None:
        raise _stop(m, "a structured dtype's fields cannot be read statically")
    subarray = state[2]
    if subarray is not None:
        if not (isinstance(subarray, tuple) and subarray):
            raise _stop(m, "a sub-array dtype cannot be read statically")
        inner.append(subarray[0])
    has_object = any(_dtype_layout(d, m)[0] for d in inner)
    if elsize <= 0:
        raise _stop(m, "a structured dtype without an item size")
    return has_object, elsize


def _stop(m: PickleMachine, why: str) -> Fatal:
    return Fatal(FindingKind.UNRESOLVED, m.op_offset,
                 f"joblib array after BUILD: {why}; joblib would read raw bytes here, so the "
                 "rest of the stream cannot be analysed")
