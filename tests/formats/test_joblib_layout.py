"""joblib array layouts, exactly as joblib 1.x and numpy compute them.

Oracle: real ``joblib.load`` of BENIGN files (real joblib.dump output, or hand-made files that
name nothing but joblib and numpy globals), over a file object that logs which bytes
``NumpyArrayWrapper.read_array`` reads. picklegate's JoblibHook must skip exactly those
regions (and parse exactly the nested pickles of object arrays). Planted files (posix.system)
are only scanned, never loaded; each has a benign twin with the same layout that joblib loads.
"""
from __future__ import annotations

import io
import pickle
from unittest import mock

import pytest

from picklegate.formats.joblib import JoblibHook
from picklegate.machine import Instance, Opaque, PickleMachine, Value, analyse_pickles

from .build import (JL_CONSTRUCT, JL_INIT, JL_TWIN_TAIL, _global_ref, _text, evil_ops, jl_dtype,
                    jl_dtype_state, jl_fields, jl_file, jl_int, jl_raw, jl_tuple, jl_wrapper)
from .conftest import scan, summary

import joblib  # noqa: E402 - the test extra installs numpy and joblib
import numpy as np  # noqa: E402
from joblib.numpy_pickle import NumpyArrayWrapper  # noqa: E402
from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap  # noqa: E402

NA, UNRES, MALF, UNSUP, LIMIT = ("not-allowed", "unresolved", "malformed", "unsupported",
                                 "limit-exceeded")
GADGET = "gadget"  # the kind of a planted posix.system
SYSTEM = "posix.system"
EVIL_TAIL = evil_ops() + b"N"
COPYREG = ["copyreg.__newobj__", "copyreg.__newobj_ex__", "builtins.object"]


# ---------------------------------------------------------------------------------------------
# the oracle


class _Tracked(io.BytesIO):
    """A file whose reads are logged while ``log`` is a list."""

    log: list[tuple[int, int]] | None = None

    def read(self, n: int | None = -1) -> bytes:
        at = self.tell()
        out = super().read(n)
        if self.log is not None and out:
            self.log.append((at, at + len(out)))
        return out

    def readline(self, size: int | None = -1) -> bytes:
        at = self.tell()
        out = super().readline(size)
        if self.log is not None and out:
            self.log.append((at, at + len(out)))
        return out


def joblib_reads(raw: bytes) -> tuple[object, list[tuple[int, int]], list[tuple[int, int]]]:
    """(loaded value, raw regions, nested-pickle regions) that real joblib.load reads in
    NumpyArrayWrapper.read_array. Only for benign files."""
    f = _Tracked(raw)
    regions: list[tuple[int, int]] = []
    nested: list[tuple[int, int]] = []
    original = NumpyArrayWrapper.read_array

    def read_array(self, unpickler, ensure_native_byte_order):  # noqa: ANN001, ANN202
        log = f.log = []
        try:
            return original(self, unpickler, ensure_native_byte_order)
        finally:
            f.log = None
            for (_, end), (start, _) in zip(log, log[1:], strict=False):
                assert end == start, "joblib's array reads are not contiguous"
            if log:
                (nested if self.dtype.hasobject else regions).append((log[0][0], log[-1][1]))

    with mock.patch.object(NumpyArrayWrapper, "read_array", read_array):
        value = joblib.load(f)
    return value, regions, nested


def picklegate_reads(raw: bytes) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    hook = JoblibHook()
    out = analyse_pickles(raw, on_build=hook)
    assert out.findings == [], out.findings
    return hook.skipped, hook.nested, hook.arrays


def decompressed(data: bytes) -> bytes:
    """The stream joblib's unpickler reads: joblib's own decompressor file object."""
    with _validate_fileobject_and_memmap(io.BytesIO(data), "", None) as (fobj, _):
        return fobj.read()


# ---------------------------------------------------------------------------------------------
# differential: real dumps of benign arrays


def _structured_dtypes() -> list:
    return [
        [("a", "<i4"), ("b", "U3")],
        np.dtype([("a", "u1"), ("b", "<f8")], align=True),
        [("n", [("x", ">i2"), ("y", "S3")]), ("z", "f4", (2,))],
        np.dtype({"names": ["a", "b"], "formats": ["i1", ">i8"], "offsets": [0, 9],
                  "itemsize": 24}),
        np.dtype([("in", np.dtype([("p", "u2"), ("q", "c8")], align=True)), ("r", "?")],
                 align=True),
        [("sa", [("s", "S2"), ("t", "<m8[s]")], (2,)), ("m", ">f8", (2, 2))],
        [("o", "O"), ("i", "i4")],
        [("deep", [("o", "O")])],
    ]


DTYPES = ["?", "i1", ">i2", "<u4", "u8", "f2", ">f8", "c8", ">c16", "f16", "c32", "S1", "S7",
          "U1", "U5", ">U3", "V3", "V16", "M8[ns]", ">m8[D]", "M8[Y]", "m8", "O",
          *_structured_dtypes()]
SHAPES = [(), (0,), (5,), (3, 4), (2, 0, 3), (1, 1, 1, 2)]


def _arrays(dtype, seed: int) -> dict[str, object]:
    rng = np.random.RandomState(seed)
    dtype = np.dtype(dtype)
    out: dict[str, object] = {}
    for i, shape in enumerate(SHAPES):
        if dtype.hasobject:
            array = np.zeros(shape, dtype=dtype)
            _fill_objects(array, f"v{i}")
        else:
            count = int(np.prod(shape))
            array = np.frombuffer(rng.bytes(count * dtype.itemsize), dtype=dtype).reshape(shape)
        out[f"c{i}"] = array
        if len(shape) > 1:
            out[f"f{i}"] = np.asfortranarray(array)
        out[f"s{i}"] = array[::2] if shape else array       # a strided view
    return out


def _fill_objects(array, value: str) -> None:
    if array.dtype.names is None:
        array[...] = value
        return
    for name in array.dtype.names:
        if array.dtype[name].hasobject:
            _fill_objects(array[name], value)


def _dump(obj: object, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    joblib.dump(obj, buf, **kwargs)
    return buf.getvalue()


CODECS = [None, "zlib", "gzip", "bz2", "lzma", "xz", "lz4"]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("index", range(len(DTYPES)))
def test_real_dumps_skip_exactly_what_joblib_reads(index, codec):
    dtype = DTYPES[index]
    protocols = [0, 1, 2, 3, 4, 5] if codec is None else [index % 4 + 2]
    for protocol in protocols:
        data = _dump(_arrays(dtype, index), protocol=protocol,
                     **({"compress": (codec, 3)} if codec else {}))
        raw = decompressed(data) if codec else data
        _, regions, nested = joblib_reads(raw)
        skipped, parsed, arrays = picklegate_reads(raw)
        assert (skipped, parsed) == (regions, nested), (dtype, protocol)
        assert arrays == len(_arrays(dtype, index))
        # protocols 0 and 1 build the wrapper with copyreg._reconstructor(cls, object, None)
        result = scan(data, path="model.joblib", also_allow=["builtins.object"])
        assert summary(result) == set(), (dtype, protocol)
        assert result.format == ("joblib" if codec is None else f"joblib+{codec}")


def test_a_dump_with_every_dtype_has_regions_for_every_kind():
    """Guards the differential's premise: raw regions with and without padding, nested pickles,
    and arrays inside a FRAME-committed protocol 5 stream all occur."""
    raw = _dump({i: np.zeros(3, dtype=d) for i, d in enumerate(DTYPES)}, protocol=5)
    _, regions, nested = joblib_reads(raw)
    assert len(nested) == 3 and len(regions) == len(DTYPES) - 3
    assert picklegate_reads(raw)[:2] == (regions, nested)
    unpadded = decompressed(_dump({"a": np.arange(3.0)}, compress=("zlib", 3)))
    assert joblib_reads(unpadded)[1] == picklegate_reads(unpadded)[0]


# ---------------------------------------------------------------------------------------------
# differential: hand-made wrappers (benign: joblib and numpy globals only)


F8 = jl_dtype("f8", jl_dtype_state())
DATA = np.arange(3.0).tobytes()


@pytest.mark.parametrize("construct", ["NEWOBJ", "NEWOBJ_EX", "REDUCE", "OBJ", "INST",
                                       "OBJ-no-args", "dotted"])
@pytest.mark.parametrize("alignment", [16, None, "absent"])
def test_constructed_wrappers_match_joblib(construct, alignment):
    # __init__ (REDUCE/OBJ/INST with arguments) sets numpy_array_alignment_bytes=16 unless the
    # state overrides it; __new__ alone leaves it unset, and then no padding byte is read.
    padded = alignment == 16 or (alignment == "absent" and construct in JL_INIT)
    raw_part = jl_raw(DATA, padded)
    data = jl_file(jl_wrapper(F8, (3,), construct, alignment), raw_part)
    value, regions, nested = joblib_reads(data)
    assert value == np.dtype("i2")          # joblib parsed the tail: the layout is as built
    start = data.index(raw_part)
    assert regions == [(start, start + len(raw_part))] and nested == []
    assert picklegate_reads(data) == (regions, [], 1)


# The same wrapper through the copyreg helpers (not joblib/numpy globals: no oracle; the
# semantics are copyreg.__newobj__ = cls.__new__(cls, *args), _reconstructor(cls, object, None)
# = object.__new__(cls): no __init__, so no alignment default).
@pytest.mark.parametrize("construct", ["copyreg.__newobj__", "copyreg.__newobj_ex__",
                                       "copyreg._reconstructor"])
def test_copyreg_built_wrappers(construct):
    for padded, alignment in ((True, 16), (False, "absent")):
        raw_part = jl_raw(DATA, padded)
        data = jl_file(jl_wrapper(F8, (3,), construct, alignment), raw_part)
        start = data.index(raw_part)
        assert picklegate_reads(data) == ([(start, start + len(raw_part))], [], 1)


# dtype states numpy writes and the corners of arraydescr_setstate, each checked by joblib:
# elsize is honoured for S/U/V only; flags bit 0 alone decides hasobject.
STATE_CASES = [
    ("U2", None, 8),                                         # 4 bytes per character
    ("U2", jl_dtype_state(12), 12),                          # state elsize wins for U ...
    ("S5", jl_dtype_state(9), 9),                            # ... and for S
    ("V4", jl_dtype_state(6), 6),                            # ... and for V
    ("a3", jl_dtype_state(2), 2),
    ("f8", jl_dtype_state(2), 8),                            # ... but not for f8
    ("i4", jl_dtype_state(100, 2), 4),
    ("M8", jl_dtype_state(3, metadata=jl_tuple(b"N", jl_tuple(b"C\x02ns", b"K\x01K\x01K\x01"))),
     8),
    ("f8", jl_dtype_state(flags=-128), 8),                   # even flags: no objects
    ("S5", jl_dtype_state(9, version=4, metadata=b"N"), 9),
]


@pytest.mark.filterwarnings("ignore:Data type alias 'a' was deprecated")
@pytest.mark.parametrize("descr, state, itemsize", STATE_CASES)
def test_dtype_state_itemsize_matches_numpy(descr, state, itemsize):
    dtype = jl_dtype(descr, state)
    body = bytes(range(256)) * 2
    raw_part = jl_raw(body[:3 * itemsize], padded=True)
    data = jl_file(jl_wrapper(dtype, (3,)), raw_part)
    value, regions, _ = joblib_reads(data)
    assert value == np.dtype("i2")
    start = data.index(raw_part)
    assert regions == [(start, start + len(raw_part))]
    assert picklegate_reads(data)[0] == regions


def test_structured_state_with_subarray_and_fields_matches_numpy():
    names, fields = jl_fields(("x", F8, 0), ("y", jl_dtype("S3", jl_dtype_state(3)), 8))
    sub = jl_dtype("V24", jl_dtype_state(24, subarray=jl_tuple(F8, jl_tuple(jl_int(3)))))
    inner = jl_dtype("V11", jl_dtype_state(11, names=names, fields=fields))
    names2, fields2 = jl_fields(("s", sub, 0), ("r", inner, 24))
    dtype = jl_dtype("V40", jl_dtype_state(40, names=names2, fields=fields2))
    raw_part = jl_raw(bytes(80), padded=True)
    data = jl_file(jl_wrapper(dtype, (2,)), raw_part)
    value, regions, _ = joblib_reads(data)
    assert value == np.dtype("i2")
    assert picklegate_reads(data)[0] == regions == [(data.index(raw_part),
                                                     data.index(raw_part) + len(raw_part))]


def _nested_pickle(tail: bytes) -> bytes:
    return b"\x80\x02" + tail + b"."


def test_flags_make_a_float_dtype_an_object_array():
    """hasobject is the state's flags bit 0, not the kind: joblib reads a nested pickle."""
    dtype = jl_dtype("f8", jl_dtype_state(flags=1))
    inner = _nested_pickle(JL_TWIN_INNER)
    data = jl_file(jl_wrapper(dtype, (3,)), inner)
    value, regions, nested = joblib_reads(data)
    assert value == np.dtype("i2") and regions == []
    assert nested == [(data.index(inner), data.index(inner) + len(inner))]
    assert picklegate_reads(data)[:2] == ([], nested)


# The nested pickle of a benign object array (numpy globals only): joblib needs an array back.
JL_TWIN_INNER = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)[2:-1]


# ---------------------------------------------------------------------------------------------
# planted payloads: posix.system where only a wrong layout would hide it


def _wrong_hook(n: int):
    """A BUILD hook that skips ``n`` bytes after every wrapper (n=0: it is not recognised)."""
    def hook(m: PickleMachine, inst: Value, state: Value) -> None:
        if isinstance(inst, Instance) and n:
            m.set_top(Opaque("array"))
            m.read_raw(n)
    return hook


def _missed_by(data: bytes, wrong_len: int) -> bool:
    out = analyse_pickles(data, on_build=_wrong_hook(wrong_len))
    return not any(r.dotted == SYSTEM for r in out.imports)


STOPPER = b"N.\xff"     # what a model that parses the raw bytes as opcodes sees: a clean end


def _plant(wrapper: bytes, raw_part: bytes) -> tuple[bytes, bytes]:
    return jl_file(wrapper, raw_part, EVIL_TAIL), jl_file(wrapper, raw_part)


def _raw_with_stopper_at(length: int, wrong: int, padded: bool, pad: int = 3) -> bytes:
    """``length`` bytes of raw region whose byte ``wrong`` (from the region's start) starts
    STOPPER, so a model that skips only ``wrong`` bytes ends there."""
    head = 1 + pad if padded else 0
    data = bytearray(b"\x07" * (length - head))
    at = wrong - head
    if 0 <= at <= len(data) - len(STOPPER):
        data[at:at + len(STOPPER)] = STOPPER
    return jl_raw(bytes(data), padded, pad)


def _u_vs_s():
    # 'U4' is 16 bytes per item; a model reading it like 'S4' skips 4.
    return jl_wrapper(jl_dtype("U4"), (3,)), 1 + 3 + 48, 1 + 3 + 12, True


def _state_itemsize():
    # numpy keeps the state's elsize (40) for 'S5' ...
    return jl_wrapper(jl_dtype("S5", jl_dtype_state(40)), (2,)), 4 + 80, 4 + 10, True


def _ignored_itemsize():
    # ... and ignores it (2) for 'f8'.
    return jl_wrapper(jl_dtype("f8", jl_dtype_state(2)), (4,)), 4 + 32, 4 + 8, True


def _init_default_alignment():
    # REDUCE runs __init__, whose default numpy_array_alignment_bytes=16 adds the padding.
    return jl_wrapper(F8, (3,), "REDUCE", "absent"), 4 + 24, 24, True


def _newobj_no_alignment():
    # NEWOBJ runs no __init__: without the attribute there is no padding byte.
    return jl_wrapper(F8, (3,), "NEWOBJ", "absent"), 24, 4 + 24, False


def _subarray():
    # a field holding (f8, (3,)) is 24 bytes; a model sizing it by its base type sees 8.
    sub = jl_dtype("V24", jl_dtype_state(24, subarray=jl_tuple(F8, jl_tuple(jl_int(3)))))
    names, fields = jl_fields(("a", sub, 0))
    dtype = jl_dtype("V24", jl_dtype_state(24, names=names, fields=fields))
    return jl_wrapper(dtype, (2,)), 4 + 48, 4 + 16, True


def _object_in_structured():
    names, fields = jl_fields(("o", jl_dtype("O8"), 0))
    dtype = jl_dtype("V8", jl_dtype_state(8, 63, names=names, fields=fields))
    return jl_wrapper(dtype, (3,)), None, 4 + 24, True


def _float_flagged_object():
    return jl_wrapper(jl_dtype("f8", jl_dtype_state(flags=1)), (3,)), None, 4 + 24, True


PLANTS = {
    "U vs S itemsize": _u_vs_s,
    "state itemsize kept for S": _state_itemsize,
    "state itemsize ignored for f8": _ignored_itemsize,
    "REDUCE __init__ alignment default": _init_default_alignment,
    "NEWOBJ without alignment": _newobj_no_alignment,
    "sub-array dtype": _subarray,
    "object field in a structured dtype": _object_in_structured,
    "float dtype flagged as object": _float_flagged_object,
}


@pytest.mark.parametrize("name", PLANTS)
def test_planted_where_a_wrong_layout_hides_it(name):
    wrapper, true_len, wrong_len, padded = PLANTS[name]()
    if true_len is None:
        # object arrays: the payload is the nested pickle joblib reads after the BUILD
        twin = jl_file(wrapper, _nested_pickle(JL_TWIN_INNER))
        evil = jl_file(wrapper, _nested_pickle(EVIL_TAIL))
        assert joblib_reads(twin)[0] == np.dtype("i2")
        assert _missed_by(evil + b"\xff" * wrong_len, wrong_len)
    else:
        raw_part = _raw_with_stopper_at(true_len, wrong_len, padded)
        evil, twin = _plant(wrapper, raw_part)
        value, regions, _ = joblib_reads(twin)       # the benign twin proves the layout
        start = twin.index(raw_part)
        assert value == np.dtype("i2") and regions == [(start, start + true_len)]
        assert _missed_by(evil, wrong_len)            # the teeth: a wrong length misses it
    result = scan(evil, path="model.joblib")
    assert summary(result) == {(GADGET, SYSTEM, None)}
    assert result.format == "joblib"


@pytest.mark.parametrize("construct", ["NEWOBJ", "REDUCE", "OBJ", "INST", "NEWOBJ_EX", "dotted",
                                       "copyreg.__newobj__", "copyreg.__newobj_ex__",
                                       "copyreg._reconstructor"])
def test_planted_after_a_wrapper_of_every_construction(construct):
    """A model that does not recognise the construction parses the raw bytes (STOPPER) and
    never reaches the call after them."""
    padded = construct in JL_INIT
    raw_part = jl_raw(STOPPER + bytes(21), padded)
    evil = jl_file(jl_wrapper(F8, (3,), construct, "absent"), raw_part, EVIL_TAIL)
    assert _missed_by(evil, 0)
    result = scan(evil, path="model.joblib", also_allow=COPYREG)
    # the policy does not match a dotted name against its module.name entry: reported too
    dotted = ({(NA, "joblib.numpy_pickle.NumpyArrayWrapper", None)} if construct == "dotted"
              else set())
    assert summary(result) == {(GADGET, SYSTEM, None)} | dotted


def test_hookless_machine_is_fooled_by_a_real_dump():
    """The teeth of the whole file: without the hook the raw bytes end the analysis."""
    base = _dump({"a": np.frombuffer(STOPPER + bytes(5), dtype="u1")}, protocol=2)
    at = base.rindex(b".")
    evil = base[:at] + b"0" + EVIL_TAIL + base[at:]
    assert not any(r.dotted == SYSTEM for r in analyse_pickles(evil).imports)
    assert summary(scan(evil, path="model.joblib")) == {(GADGET, SYSTEM, None)}


# ---------------------------------------------------------------------------------------------
# BUILD inside a FRAME: joblib reads the array at the FILE position, after the frame


def _framed(frame_body: bytes, after: bytes) -> bytes:
    return (b"\x80\x04\x95" + len(frame_body).to_bytes(8, "little") + frame_body + after)


def test_build_inside_a_frame_reads_after_the_frame():
    wrapper = jl_wrapper(F8, (3,), "NEWOBJ", "absent")
    raw_part = STOPPER + bytes(21)
    # frame: wrapper, BUILD, then POP and the tail; after the frame: raw bytes, STOP
    twin = _framed(wrapper + b"0" + JL_TWIN_TAIL, raw_part + b".")
    evil = _framed(wrapper + b"0" + EVIL_TAIL, raw_part + b".")
    value, regions, _ = joblib_reads(twin)
    start = twin.index(raw_part)
    assert value == np.dtype("i2") and regions == [(start, start + 24)]
    assert picklegate_reads(twin)[0] == regions
    # a model reading the array right after the BUILD skips the call inside the frame
    assert summary(scan(evil, path="model.joblib")) == {(GADGET, SYSTEM, None)}


def test_object_array_inside_a_frame_reads_its_pickle_after_the_frame():
    dtype = jl_dtype("f8", jl_dtype_state(flags=1))
    wrapper = jl_wrapper(dtype, (3,), "NEWOBJ", "absent")
    inner = _nested_pickle(JL_TWIN_INNER)
    twin = _framed(wrapper + b"0", inner + JL_TWIN_TAIL + b".")
    value, regions, nested = joblib_reads(twin)
    assert value == np.dtype("i2") and nested == [(twin.index(inner),
                                                   twin.index(inner) + len(inner))]
    assert picklegate_reads(twin)[:2] == ([], nested)


def test_argument_straddling_the_frame_end_after_a_raw_read_is_malformed():
    wrapper = jl_wrapper(F8, (3,), "NEWOBJ", "absent")
    # the frame ends in the middle of BINUNICODE's length: pickle._Unpickler raises
    data = _framed(wrapper + b"0X\x02\x00", bytes(24) + b"\x00\x00ab0N.")
    result = scan(data, path="model.joblib")
    assert summary(result) == {(MALF, None, None)}
    assert "exhausted before end of frame" in result.findings[0].message


# ---------------------------------------------------------------------------------------------
# what cannot be proven stops with a finding


def _finding(data: bytes, **kwargs: object):
    result = scan(data, path="model.joblib", **kwargs)
    assert len(result.findings) == 1, result.findings
    return result.findings[0]


SELF_REF = (_global_ref("numpy", "dtype") + b"(" + _text("V8") + b"\x89\x88tRq\x07"
            + jl_dtype_state(8, names=jl_tuple(_text("x")),
                             fields=b"}(" + _text("x") + jl_tuple(b"h\x07", jl_int(0)) + b"u")
            + b"b")


def _deep(levels: int) -> bytes:
    dtype = F8
    for _ in range(levels):
        dtype = jl_dtype("V8", jl_dtype_state(8, subarray=jl_tuple(dtype, jl_tuple(jl_int(1)))))
    return dtype


FINDINGS = {
    "U itemsize not understood": (jl_wrapper(jl_dtype("U" + "9" * 5000), (1,)), UNSUP, "size"),
    "5000-digit dimension": (JL_CONSTRUCT["NEWOBJ"] + b"}(" + _text("shape")
                             + b"(L" + b"9" * 5000 + b"L\nt" + _text("dtype") + F8 + b"ub",
                             UNRES, "not a tuple of integers"),
    "10000 dimensions": (jl_wrapper(F8, (1,) * 10_000), MALF, "10000 dimensions"),
    "negative dimension": (jl_wrapper(F8, (-1, -3)), MALF, "dimension -1"),
    "count overflows int64": (jl_wrapper(F8, (2**40, 2**40)), MALF, "2**63"),
    "itemsize zero": (jl_wrapper(jl_dtype("S0"), (3,)), MALF, "item size 0"),
    "state itemsize negative": (jl_wrapper(jl_dtype("S5", jl_dtype_state(-5)), (3,)), MALF,
                                "item size -5"),
    "copy=False with a state": (jl_wrapper(jl_dtype("S5", jl_dtype_state(9), copy=False),
                                           (3,)), UNSUP, "copy"),
    "objects hidden from the flags": (
        jl_wrapper(jl_dtype("V8", jl_dtype_state(8, 0, names=jl_fields(("o", jl_dtype("O8"), 0))[0],
                                                 fields=jl_fields(("o", jl_dtype("O8"), 0))[1])),
                   (3,)), UNSUP, "object pointers"),
    "self-referencing dtype": (jl_wrapper(SELF_REF, (3,)), UNSUP, "contains itself"),
    "deep dtype": (jl_wrapper(_deep(40), (1,)), LIMIT, "too deeply"),
    "old dtype state version": (jl_wrapper(jl_dtype("S5", jl_dtype_state(9, version=2)), (3,)),
                                UNSUP, "version"),
    "method shadowed": (jl_wrapper(F8, (3,), extra_state=_text("read_array") + b"N"), UNSUP,
                        "read_array"),
    "unknown alignment": (jl_wrapper(F8, (3,), alignment="absent",
                                     extra_state=_text("numpy_array_alignment_bytes")
                                     + jl_dtype("i2")), UNRES, "is None"),
    "slot state sets __class__": (jl_wrapper(F8, (3,))[:-1] + b"}(" + _text("__class__")
                                  + _global_ref("numpy", "ndarray") + b"u\x86b", UNSUP,
                                  "__class__"),
}


@pytest.mark.parametrize("name", FINDINGS)
def test_unprovable_layouts_stop_with_a_finding(name):
    wrapper, kind, why = FINDINGS[name]
    # posix.system after the array: never reported, because the analysis stops at the BUILD
    result = scan(jl_file(wrapper, jl_raw(bytes(300), True), EVIL_TAIL), path="model.joblib")
    findings = [f for f in result.findings if f.kind.value != "build-abuse"]
    assert len(findings) == 1, result.findings
    assert (findings[0].kind.value, why in findings[0].message) == (kind, True), \
        findings[0].message
    # a __dunder__ key in the state is BUILD abuse whatever the target is
    assert (len(result.findings) == 2) == ("__class__" in name)


@pytest.mark.parametrize("target", [
    # an allowed function handed the wrapper class or a wrapper: its result could be one
    b"cmymod\nfactory\n(" + JL_CONSTRUCT["NEWOBJ"] + b"tR",
    b"cmymod\nfactory\n(" + _global_ref("joblib.numpy_pickle", "NumpyArrayWrapper") + b"tR",
    b"cmymod\nfactory\n(" + _global_ref("copyreg", "__newobj__") + b"(" + _global_ref(
        "joblib.numpy_pickle", "NumpyArrayWrapper") + b"tRtR",
])
def test_unknown_factory_of_a_wrapper_is_unresolved(target):
    data = jl_file(target + b"}(" + _text("shape") + jl_tuple(jl_int(3)) + b"ub",
                   jl_raw(bytes(24), True), EVIL_TAIL)
    finding = _finding(data, also_allow=["mymod.factory", *COPYREG])
    assert finding.kind.value == UNRES and "could be an array wrapper" in finding.message


def test_allowed_class_built_without_the_wrapper_is_not_a_wrapper():
    """An allowed class (sklearn's Tree, say) BUILT with a state: its own instance, read on."""
    data = (b"\x80\x02" + jl_wrapper(F8, (3,)) + jl_raw(DATA, True) + b"0"
            + b"cmymod\nThing\n(I1\ntR}(" + _text("shape") + jl_tuple(jl_int(3)) + b"ub0"
            + EVIL_TAIL + b".")
    assert summary(scan(data, path="model.joblib", also_allow=["mymod.Thing"])) == {
        (GADGET, SYSTEM, None)}


def test_mmap_object_array_is_unsupported():
    dtype = jl_dtype("O8")
    wrapper = jl_wrapper(dtype, (1,), extra_state=_text("allow_mmap") + b"\x88")
    finding = _finding(jl_file(wrapper, _nested_pickle(b"N"), EVIL_TAIL))
    assert finding.kind.value == UNRES and "memory mapping" in finding.message
