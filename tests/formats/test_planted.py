"""Malicious globals planted in every place a container can hide one. Real artefacts from
tests/fixtures/real are edited as bytes (joblib/numpy only write new files); nothing is ever
loaded. Each case asserts the exact findings: kind, module.name and member."""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import lzma
import os
import pickletools
import struct
import sys
import tracemalloc
import zlib

import pytest

from picklegate.findings import FindingKind, Status

from .build import (GETCWD, LegacyTorch, RawZip, archive_prefix, drop_first_frame, evil_global,
                    evil_object, evil_stack_global, fixture, joblib_padding_exploit, make_zip,
                    npy, plant, rezip, safetensors, tar_storage_record, torch_tar, zip_members)
from .conftest import scan, summary

NA, ARCH, UNRES, MALF, LIMIT = ("not-allowed", "archive-anomaly", "unresolved", "malformed",
                                "limit-exceeded")
GADGET = "gadget"  # the kind of a planted posix.system
SYSTEM = "posix.system"
CWD = ".".join(GETCWD)
EVIL = evil_global()
EVIL_SG = evil_stack_global()

PT = fixture("torch_module_sd.pt")
PRE = archive_prefix(PT)
MEMBERS = {n: b for n, b, _ in zip_members(PT)}
DATA_PKL = f"{PRE}/data.pkl"
STORAGE_NOTE = "7 tensor storage record(s) named by persistent ids were not parsed"


def _raw(extra: list[tuple] = (), replace: dict | None = None, **kw_for: dict) -> bytes:
    """The real torch archive rewritten by hand, plus extra RawZip entries."""
    z = RawZip()
    for name, data, _ in zip_members(PT):
        z.add(name, (replace or {}).get(name, data), **kw_for.get(name, {}))
    for name, data, kw in extra:
        z.add(name, data, **kw)
    return z.bytes()


def test_builders_are_faithful():
    """The rebuilt archive is as clean as the original, so every failure below is the plant."""
    for data in (rezip(PT), _raw(), rezip(PT, force_zip64=True)):
        result = scan(data, presets=["torch"])
        assert (result.format, result.status) == ("torch-zip", Status.CLEAN)
        assert any(n.startswith(STORAGE_NOTE) for n in result.inventory.notes)


# ---------------------------------------------------------------------------------------------
# torch zip

TORCH_ZIP_CASES = {
    "data.pkl replaced":
        (lambda: rezip(PT, replace={DATA_PKL: EVIL}),
         # the persistent ids are gone with it, so the storages are scanned (and are data)
         {(GADGET, SYSTEM, DATA_PKL)}),
    "data.pkl with a call spliced in":
        (lambda: rezip(PT, replace={DATA_PKL: plant(MEMBERS[DATA_PKL])}),
         {(GADGET, SYSTEM, DATA_PKL)}),
    "data.pkl STACK_GLOBAL via memo":
        (lambda: rezip(PT, replace={DATA_PKL: EVIL_SG}), {(GADGET, SYSTEM, DATA_PKL)}),
    "extra pickle member":
        (lambda: rezip(PT, add=[(f"{PRE}/extra.pkl", EVIL)]),
         {(GADGET, SYSTEM, f"{PRE}/extra.pkl")}),
    "innocent name, protocol 2":
        (lambda: rezip(PT, add=[(f"{PRE}/notes", EVIL)]), {(GADGET, SYSTEM, f"{PRE}/notes")}),
    "innocent name, protocol 0":
        (lambda: rezip(PT, add=[(f"{PRE}/notes", evil_global(protocol=0))]),
         {(GADGET, SYSTEM, f"{PRE}/notes")}),
    "innocent name, STACK_GLOBAL":
        (lambda: rezip(PT, add=[(f"{PRE}/notes", EVIL_SG)]), {(GADGET, SYSTEM, f"{PRE}/notes")}),
    "byteorder replaced":
        (lambda: rezip(PT, replace={f"{PRE}/byteorder": EVIL}),
         {(GADGET, SYSTEM, f"{PRE}/byteorder")}),
    "storage key no persistent id names":
        (lambda: rezip(PT, add=[(f"{PRE}/data/99", EVIL)]), {(GADGET, SYSTEM, f"{PRE}/data/99")}),
    "storage folder of another pickle names a pickle":
        # extra.pkl's persistent id names key 'evil.pkl': torch never reads extra/, and a
        # member named like a pickle is never exempt as raw storage.
        (lambda: rezip(PT, add=[(f"{PRE}/extra.pkl",
                                 b"\x80\x02(X\x07\x00\x00\x00storageX\x01\x00\x00\x00xX\x08\x00"
                                 b"\x00\x00evil.pklX\x03\x00\x00\x00cpuK\x01tQ."),
                                (f"{PRE}/extra/evil.pkl", EVIL)]),
         {(GADGET, SYSTEM, f"{PRE}/extra/evil.pkl")}),
    "hidden local header":
        (lambda: _raw([(f"{PRE}/hidden.pkl", EVIL, {"listed": False})]),
         {(ARCH, None, None), (GADGET, SYSTEM, f"{PRE}/hidden.pkl")}),
    "hidden local header, innocent name":
        (lambda: _raw([(f"{PRE}/zz", EVIL, {"listed": False})]),
         {(ARCH, None, None), (GADGET, SYSTEM, f"{PRE}/zz")}),
    "central/local name mismatch":
        (lambda: _raw(replace={DATA_PKL: EVIL},
                      **{DATA_PKL: {"local_name": f"{PRE}/other.pkl"}}),
         {(ARCH, None, None), (GADGET, SYSTEM, DATA_PKL)}),
    "duplicate data.pkl, second malicious":
        (lambda: _raw([(DATA_PKL, EVIL, {})]), {(ARCH, None, None), (GADGET, SYSTEM, DATA_PKL)}),
    "bad CRC":
        (lambda: _raw([(f"{PRE}/x.pkl", EVIL, {"crc": 0x12345678})]),
         {(ARCH, None, None), (GADGET, SYSTEM, f"{PRE}/x.pkl")}),
    "bad CRC, deflated":
        (lambda: _raw([(f"{PRE}/x.pkl", EVIL, {"crc": 0, "method": 8})]),
         {(ARCH, None, None), (GADGET, SYSTEM, f"{PRE}/x.pkl")}),
    "encryption flag on a stored member":
        (lambda: _raw([(f"{PRE}/x.pkl", EVIL, {"flags": 1})]),
         {(ARCH, None, None), (GADGET, SYSTEM, f"{PRE}/x.pkl")}),
    "'..' member name":
        (lambda: rezip(PT, add=[(f"{PRE}/../evil.pkl", EVIL)]),
         {(ARCH, None, None), (GADGET, SYSTEM, f"{PRE}/../evil.pkl")}),
    "absolute member name":
        (lambda: rezip(PT, add=[("/tmp/evil.pkl", EVIL)]),
         {(ARCH, None, None), (GADGET, SYSTEM, "/tmp/evil.pkl")}),
    "zip64 member":
        (lambda: rezip(PT, add=[(f"{PRE}/x.pkl", EVIL)], force_zip64={f"{PRE}/x.pkl"}),
         {(GADGET, SYSTEM, f"{PRE}/x.pkl")}),
    "zip64 data.pkl":
        (lambda: rezip(PT, replace={DATA_PKL: plant(MEMBERS[DATA_PKL])},
                       force_zip64={DATA_PKL}), {(GADGET, SYSTEM, DATA_PKL)}),
    "central size shorter than local":
        # both ranges are analysed: the local one finds the call; the central one (3 bytes,
        # PROTO and a bare 'c') is a truncated GLOBAL that pickle.py would still resolve as
        # module '' name '' (readline()[:-1]), so the machine reports that import as well.
        (lambda: _raw([(f"{PRE}/d.pkl", EVIL, {"central_csize": 3})]),
         {(ARCH, None, None), (GADGET, SYSTEM, f"{PRE}/d.pkl"), (MALF, None, f"{PRE}/d.pkl"),
          (NA, ".", f"{PRE}/d.pkl")}),
}


@pytest.mark.parametrize("case", TORCH_ZIP_CASES)
def test_torch_zip_plants(case):
    build, expected = TORCH_ZIP_CASES[case]
    result = scan(build(), path="model.pt")
    assert result.format == "torch-zip"
    assert result.status is Status.VIOLATION
    assert summary(result) == expected


def test_zip64_end_record(monkeypatch):
    """With zipfile's zip64 threshold lowered, every header and the end record are zip64."""
    import zipfile

    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 8)
    clean = rezip(PT, force_zip64=True)
    evil = rezip(PT, add=[(f"{PRE}/x.pkl", EVIL)], force_zip64=True)
    monkeypatch.undo()
    assert b"PK\x06\x06" in evil and b"PK\x06\x07" in evil
    assert scan(clean, presets=["torch"]).status is Status.CLEAN
    assert summary(scan(evil)) == {(GADGET, SYSTEM, f"{PRE}/x.pkl")}


@pytest.mark.parametrize("payload, expected", [
    # text that merely starts with a protocol 0 opcode byte ('h' is BINGET): data
    (b"hello world\n", set()),
    (b"little", set()),
    # a PROTO header says "pickle": never waved through as data, even when unreadable; if no
    # loader can import anything from it, it is "not a pickle" (unknown_formats decides)
    (b"\x80\x02" + b"\xff" * 10, {("unknown-format", None, f"{PRE}/notes")}),
    # ...but where pickle.py and _pickle read a FRAME differently it stays malformed
    (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00", {(MALF, None, f"{PRE}/notes")}),
])
def test_stray_data_rule(payload, expected):
    result = scan(rezip(PT, add=[(f"{PRE}/notes", payload)]), presets=["torch"])
    assert summary(result) == expected


def test_storage_named_by_persistent_id_is_not_parsed():
    """data/0 is named by data.pkl: torch reads it as raw floats, never as a pickle."""
    size = len(MEMBERS[f"{PRE}/data/0"])
    looks_evil = EVIL.ljust(size, b"\x00")[:size]
    assert looks_evil.startswith(EVIL)
    result = scan(rezip(PT, replace={f"{PRE}/data/0": looks_evil}), presets=["torch"])
    assert result.status is Status.CLEAN
    assert result.findings == ()
    assert any(n.startswith(STORAGE_NOTE) for n in result.inventory.notes)


def test_storage_exemption_covers_only_named_keys():
    """The same bytes one key further on (no persistent id names data/7) are scanned."""
    result = scan(rezip(PT, add=[(f"{PRE}/data/7", EVIL.ljust(48, b"\x00"))]))
    assert (GADGET, SYSTEM, f"{PRE}/data/7") in summary(result)


@pytest.mark.parametrize("method", [0, 8], ids=["stored", "deflated"])
def test_nested_zip_member_paths(method):
    inner = make_zip([("inner.pkl", EVIL)], compression=method)
    outer = make_zip([("outer.zip", inner)], compression=method)
    result = scan(outer, path="bundle.zip")
    assert result.format == "zip"
    # Context.child joins archive members with "/"
    assert summary(result) == {(GADGET, SYSTEM, "outer.zip/inner.pkl")}


def test_nested_zip_anomalies_name_the_inner_archive():
    inner = RawZip().add("ok.txt", b"hello").add("hidden.pkl", EVIL, listed=False).bytes()
    result = scan(make_zip([("outer.zip", inner)]), path="bundle.zip")
    assert summary(result) == {(ARCH, None, "outer.zip"), (GADGET, SYSTEM, "outer.zip/hidden.pkl")}


def test_compressed_member_inside_zip():
    result = scan(make_zip([("a.pkl.gz", gzip.compress(EVIL, mtime=0))]), path="bundle.zip")
    # Context.child joins codecs with "!"
    assert summary(result) == {(GADGET, SYSTEM, "a.pkl.gz!gzip")}


def test_method_mismatch_between_headers():
    raw = bytearray(RawZip().add("a.pkl", EVIL).bytes())
    raw[8] = 8                          # local header says deflated, central says stored
    # zipfile and miniz read the stored bytes (the call); a streaming reader inflates them
    # by the local method, which fails: both readings are analysed.
    assert summary(scan(bytes(raw))) == {(ARCH, None, None), (GADGET, SYSTEM, "a.pkl"),
                                         (MALF, None, None)}


def test_method_mismatch_local_reading_is_scanned():
    """Deflated bytes the central directory calls stored: only a reader that follows the
    local header's method (a streaming reader) gets the pickle, and it is found."""
    raw = bytearray(RawZip().add("a.pkl", EVIL, method=8).bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 10] = 0                # central says stored, local says deflated
    assert summary(scan(bytes(raw))) == {(ARCH, None, None), (GADGET, SYSTEM, "a.pkl")}


def test_hidden_local_with_data_descriptor_is_an_anomaly():
    data = RawZip().add("ok.txt", b"hello").add("h.pkl", EVIL, flags=8, listed=False).bytes()
    result = scan(data, path="a.zip")
    assert summary(result) == {(ARCH, None, None)}
    assert "data descriptor" in result.findings[0].message


def test_streamed_zip_with_data_descriptors():
    """zipfile writing to an unseekable stream sets flag bit 3: a normal layout, no anomaly."""
    import zipfile

    class Sink(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # noqa: ANN001
            self.data += b
            return len(b)

    sink = Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ok.txt", "hello")
        z.writestr("a.pkl", EVIL)
    assert sink.data[6] & 0x08
    assert summary(scan(bytes(sink.data), path="a.zip")) == {(GADGET, SYSTEM, "a.pkl")}


def test_zip_with_prepended_bytes_is_read_as_a_zip():
    """zipfile opens self-extracting layouts, so their members are scanned."""
    data = b"#!/bin/sh\nexit 0\n" + make_zip([("a.pkl", EVIL)])
    result = scan(data, path="a.zip")
    assert result.status is Status.VIOLATION
    assert (GADGET, SYSTEM, "(appended zip)/a.pkl") in summary(result)
    assert {"unknown-format", "archive-anomaly"} <= {f.kind.value for f in result.findings}


def test_zip_appended_to_a_numeric_npy_is_scanned():
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + \
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }".ljust(117) + b"\n" + \
        b"\x00" * 8
    result = scan(npy + make_zip([("evil.pkl", EVIL)]), path="w.npy")
    assert result.format == "numpy-npy"
    assert (GADGET, SYSTEM, "(appended zip)/evil.pkl") in summary(result)


def test_numeric_npy_without_appended_zip_is_clean():
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + \
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }".ljust(117) + b"\n" + \
        b"PK\x05\x06" + b"\x00" * 4          # an EOCD-looking array value, no directory
    assert scan(npy, path="w.npy").status is Status.CLEAN


def test_member_limit_keeps_pickles_first():
    data = make_zip([(f"{i}.txt", b"x") for i in range(5)] + [("z.pkl", EVIL)])
    result = scan(data, path="a.zip", max_members=3)
    assert summary(result) == {(LIMIT, None, None), (GADGET, SYSTEM, "z.pkl")}


def test_nesting_beyond_max_depth():
    data = EVIL
    names = ["evil.pkl", "l1.zip", "l2.zip", "l3.zip", "l4.zip"]
    for name in names[:-1]:
        data = make_zip([(name, data)])
    data = make_zip([(names[-1], data)])
    deep = scan(data, path="deep.zip")
    assert summary(deep) == {(GADGET, SYSTEM, "l4.zip/l3.zip/l2.zip/l1.zip/evil.pkl")}
    limited = scan(data, path="deep.zip", max_depth=2)
    # depth 0 is the file, 1 l4.zip, 2 l3.zip: l2.zip is one level too deep
    assert summary(limited) == {(LIMIT, None, "l4.zip/l3.zip/l2.zip")}
    assert limited.status is Status.VIOLATION


# ---------------------------------------------------------------------------------------------
# torch legacy (five pickles, then raw storages)

LEGACY = LegacyTorch.parse(fixture("torch_shared_view_legacy.pt"))


def _legacy_offset(part: str) -> int:
    order = ["magic", "protocol", "sys_info", "obj", "keys", "storages"]
    return sum(len(getattr(LEGACY, p)) for p in order[:order.index(part)])


def test_legacy_builder_is_faithful():
    assert LEGACY.bytes() == fixture("torch_shared_view_legacy.pt")
    assert scan(LEGACY.bytes(), presets=["torch"]).status is Status.CLEAN


@pytest.mark.parametrize("part, data, extra", [
    ("obj", lambda: dataclasses.replace(LEGACY, obj=plant(LEGACY.obj)), set()),
    ("sys_info", lambda: dataclasses.replace(LEGACY, sys_info=plant(LEGACY.sys_info)), set()),
    ("keys", lambda: dataclasses.replace(LEGACY, keys=plant(LEGACY.keys)), set()),
    # torch reads nothing after the storages; picklegate reports the bytes and scans them
    ("trailing", lambda: dataclasses.replace(LEGACY, storages=LEGACY.storages + EVIL),
     {(MALF, None, None)}),
])
def test_legacy_plants(part, data, extra):
    result = scan(data().bytes(), path="model.pt")
    assert result.format == "torch-legacy"
    assert summary(result) == {(GADGET, SYSTEM, None)} | extra
    found = next(f for f in result.findings if f.kind is FindingKind.GADGET)
    at = len(LEGACY.bytes()) if part == "trailing" else _legacy_offset(part)
    assert found.offset == at + 2             # the GLOBAL right after PROTO


def test_legacy_replaced_object_pickle_loses_its_storages():
    """Without the persistent ids the storage sizes are unknown: unresolved, never skipped."""
    result = scan(dataclasses.replace(LEGACY, obj=EVIL).bytes())
    assert summary(result) == {(GADGET, SYSTEM, None), (UNRES, None, None)}


def test_legacy_storage_bytes_are_skipped():
    count = struct.unpack("<q", LEGACY.storages[:8])[0]
    assert len(LEGACY.storages) == 8 + 4 * count                 # one FloatStorage
    raw = EVIL.ljust(4 * count, b"\x00")
    result = scan(dataclasses.replace(LEGACY, storages=LEGACY.storages[:8] + raw).bytes(),
                  presets=["torch"])
    assert (result.format, result.status, result.findings) == ("torch-legacy", Status.CLEAN, ())


def test_legacy_truncated_storage_is_malformed():
    result = scan(dataclasses.replace(LEGACY, storages=LEGACY.storages[:20]).bytes())
    assert summary(result) == {(MALF, None, None)}


# ---------------------------------------------------------------------------------------------
# torch tar (torch < 0.4)


def test_torch_tar_layout_is_clean():
    """sys_info, pickle, tensors, storages (with the storage-views pickle torch reads last)."""
    result = scan(torch_tar(), path="model.pt", presets=["torch"])
    assert (result.format, result.status, result.findings) == ("torch-tar", Status.CLEAN, ())


@pytest.mark.parametrize("kwargs, expected", [
    ({"pickle_member": EVIL}, {(GADGET, SYSTEM, "pickle")}),
    ({"pickle_member": EVIL_SG}, {(GADGET, SYSTEM, "pickle")}),
    ({"sys_info": EVIL}, {(GADGET, SYSTEM, "sys_info")}),
    ({"storage_views": EVIL}, {(GADGET, SYSTEM, "storages")}),
    # a storage record whose (key, location, type) pickle is a call: its size is unknown
    ({"storage_records": [EVIL]}, {(GADGET, SYSTEM, "storages"), (UNRES, None, "storages")}),
    # a storage type that is a malicious global
    ({"storage_records": [tar_storage_record("1", b"\x00" * 4).replace(
        b"ctorch\nFloatStorage\n", b"cposix\nsystem\n")]},
     {(GADGET, SYSTEM, "storages"), (UNRES, None, "storages")}),
    # a well-formed record followed by a malicious one (count 2)
    ({"storage_records": [tar_storage_record("1", b"\x00" * 12), EVIL]},
     {(GADGET, SYSTEM, "storages"), (UNRES, None, "storages")}),
    ({"tensor_records": [EVIL]}, {(GADGET, SYSTEM, "tensors"), (MALF, None, "tensors")}),
])
def test_torch_tar_plants(kwargs, expected):
    result = scan(torch_tar(**kwargs), path="model.pt")
    assert result.format == "torch-tar"
    assert summary(result) == expected


def test_torch_tar_storage_bytes_are_skipped():
    raw = EVIL.ljust(32, b"\x00")
    result = scan(torch_tar(storage_records=[tar_storage_record("1", raw)]), presets=["torch"])
    assert (result.status, result.findings) == (Status.CLEAN, ())


def test_torch_tar_bytes_after_storage_views():
    data = torch_tar(storage_views=pickle_list() + EVIL)
    assert summary(scan(data)) == {(MALF, None, "storages"), (GADGET, SYSTEM, "storages")}


def pickle_list() -> bytes:
    return b"\x80\x02]q\x00."


# ---------------------------------------------------------------------------------------------
# TorchScript

TS = fixture("torchscript_tiny.pt")
TS_PRE = archive_prefix(TS)
TS_MEMBERS = {n: b for n, b, _ in zip_members(TS)}
TS_ALLOW = ["__torch__.picklegate_fixture_tiny.Inner", "__torch__.picklegate_fixture_tiny.Tiny"]
TS_CODE = next(n for n in TS_MEMBERS if n.endswith(".py"))


@pytest.mark.parametrize("member, payload", [
    (f"{TS_PRE}/constants.pkl", lambda: plant(TS_MEMBERS[f"{TS_PRE}/constants.pkl"])),
    (f"{TS_PRE}/constants.pkl", lambda: EVIL),
    (f"{TS_PRE}/data.pkl", lambda: plant(TS_MEMBERS[f"{TS_PRE}/data.pkl"])),
    (TS_CODE + ".debug_pkl", lambda: EVIL),
    (TS_CODE, lambda: EVIL),                                    # "source" that is a pickle
])
def test_torchscript_plants(member, payload):
    result = scan(rezip(TS, replace={member: payload()}), presets=["torch"], also_allow=TS_ALLOW)
    assert result.format == "torchscript"
    assert summary(result) == {(GADGET, SYSTEM, member)}


# ---------------------------------------------------------------------------------------------
# joblib

import joblib  # noqa: E402 - next to the joblib tests that use it
import numpy as np  # noqa: E402
RAW3 = np.arange(3.0).tobytes()


def _dump(obj, **kwargs) -> bytes:
    out = io.BytesIO()
    joblib.dump(obj, out, **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def after_array() -> bytes:
    return _dump({"a": np.arange(3.0), "b": evil_object()})


def test_joblib_global_after_first_array(after_array):
    raw_at = after_array.find(RAW3)
    assert raw_at > 0
    # the premise: a scanner that reads plain opcodes stops at the array bytes
    with pytest.raises(ValueError):
        for _, _, pos in pickletools.genops(after_array):
            assert pos < raw_at
    result = scan(after_array, path="model.joblib")
    assert result.format == "joblib"
    assert summary(result) == {(GADGET, CWD, None)}
    assert result.findings[0].offset > raw_at + len(RAW3)


def test_joblib_object_array_nested_pickle():
    data = _dump({"n": np.arange(3.0), "o": np.array([1, evil_object()], dtype=object)})
    result = scan(data, path="model.joblib")
    assert result.format == "joblib"
    assert summary(result) == {(GADGET, CWD, None)}


CODECS = ["zlib", "gzip", "bz2", "lzma", "xz", "lz4"]


@pytest.mark.parametrize("codec", CODECS)
def test_joblib_compressed(codec):
    data = _dump({"a": np.arange(3.0), "b": evil_object()}, compress=(codec, 3))
    result = scan(data, path="model.joblib")
    assert result.format == f"joblib+{codec}"
    assert summary(result) == {(GADGET, CWD, codec)}


def test_joblib_padding_byte_hides_a_plain_pickle_continuation():
    base = _dump({"a": np.arange(3.0)})
    assert scan(base, presets=["numpy", "sklearn"]).status is Status.CLEAN
    data = joblib_padding_exploit(base, RAW3)
    result = scan(data, path="model.joblib")
    assert result.format == "joblib"
    assert summary(result) == {(GADGET, SYSTEM, None)}
    # found by the plain-pickle pass, inside the skipped padding
    pad_at = data.find(b"N0c")
    assert result.findings[0].offset == pad_at + 2
    assert any("hide in raw array bytes" in n for n in result.inventory.notes)


@pytest.mark.parametrize("wrap, member", [
    (lambda d: make_zip([("pad", b"x" * 100), ("m.joblib", d)]), "m.joblib"),
    (lambda d: gzip.compress(d, mtime=0), "gzip"),
])
def test_joblib_padding_exploit_nested(wrap, member):
    """Offsets of the skipped regions stay right when the joblib file is not at offset 0."""
    data = wrap(joblib_padding_exploit(_dump({"a": np.arange(3.0)}), RAW3))
    assert summary(scan(data)) == {(GADGET, SYSTEM, member)}


@pytest.mark.parametrize("old, new, why", [
    (b"\x8c\x05shape\x94K\x03\x85", b"\x8c\x05shape\x94cbuiltins\ntuple\n(]K\x03atR", "shape"),
    (b"\x8c\x02f8\x94", b"cbuiltins\nstr\n(X\x02\x00\x00\x00f8tR\x94", "dtype"),
])
def test_joblib_wrapper_that_cannot_be_sized_is_unresolved(old, new, why):
    base = drop_first_frame(_dump({"a": np.arange(3.0), "b": evil_object()}))
    assert base.count(old) == 1
    result = scan(base.replace(old, new), path="model.joblib")
    # builtins.tuple/str are allowed: the only reason to fail is that the size is unknown,
    # and the getcwd after the array is never reached.
    assert summary(result) == {(UNRES, None, None)}
    assert why in result.findings[0].message


# ---------------------------------------------------------------------------------------------
# npy / npz

OBJ_HEADER = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"


def _np_save(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


@pytest.mark.parametrize("data, expected", [
    (lambda: _np_save(np.array([1, evil_object()], dtype=object)), {(GADGET, CWD, None)}),
    (lambda: npy(OBJ_HEADER, EVIL), {(GADGET, SYSTEM, None)}),
    (lambda: npy(OBJ_HEADER, EVIL, version=(2, 0)), {(GADGET, SYSTEM, None)}),
    (lambda: npy(OBJ_HEADER, EVIL_SG, version=(3, 0)), {(GADGET, SYSTEM, None)}),
    # a structured dtype with an object field also carries a pickle
    (lambda: npy("{'descr': [('a', '<f8'), ('b', '|O')], 'fortran_order': False, "
                 "'shape': (1,), }", EVIL), {(GADGET, SYSTEM, None)}),
    # a descr picklegate cannot prove numeric: the payload is analysed
    (lambda: npy("{'descr': 'weird', 'fortran_order': False, 'shape': (3,), }", EVIL),
     {(GADGET, SYSTEM, None)}),
    (lambda: npy("{'descr': 'object', 'fortran_order': False, 'shape': (3,), }", EVIL),
     {(GADGET, SYSTEM, None)}),
    # numeric descr: numpy never unpickles the payload, whatever it looks like
    (lambda: npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }",
                 EVIL.ljust(32, b"\x00")), set()),
    (lambda: npy("{'descr': [('a', '<i4'), ('b', 'S2')], 'fortran_order': False, "
                 "'shape': (1,), }", EVIL), set()),
    # malformed headers
    (lambda: npy("{'descr': '<f8', 'fortran_order': False}", b""), {(MALF, None, None)}),
    (lambda: npy("__import__('os').system('id')", b""), {(MALF, None, None)}),
    (lambda: b"\x93NUMPY\x01\x00\xff", {(MALF, None, None)}),
    (lambda: b"\x93NUMPY\x01\x00\xff\x7f{}", {(MALF, None, None)}),
    (lambda: b"\x93NUMPY\x09\x00\x10\x00" + b" " * 16, {(MALF, None, None)}),
])
def test_npy(data, expected):
    result = scan(data(), path="array.npy", presets=["numpy"])
    assert result.format == "numpy-npy"
    assert summary(result) == expected


@pytest.mark.parametrize("save", ["savez", "savez_compressed"])
def test_npz_object_member(save):
    out = io.BytesIO()
    getattr(np, save)(out, x=np.arange(3), o=np.array([evil_object()], dtype=object))
    result = scan(out.getvalue(), path="arrays.npz")
    assert result.format == "npz"
    assert summary(result) == {(GADGET, CWD, "o.npy")}


def test_npz_numeric_member_with_pickle_bytes_is_clean():
    member = npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }",
                 EVIL.ljust(32, b"\x00"))
    result = scan(make_zip([("x.npy", member)]), path="arrays.npz", presets=[])
    assert (result.format, result.status) == ("npz", Status.CLEAN)


# ---------------------------------------------------------------------------------------------
# compressed bare pickles

COMPRESSORS = {
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
    "zlib": zlib.compress,
}


@pytest.mark.parametrize("codec", COMPRESSORS)
def test_compressed_pickle(codec):
    result = scan(COMPRESSORS[codec](EVIL), path=f"model.pkl.{codec}")
    assert result.format == f"pickle+{codec}"
    assert summary(result) == {(GADGET, SYSTEM, codec)}


def test_lz4_pickle():
    import lz4.frame as lz4_frame
    result = scan(lz4_frame.compress(EVIL), path="model.pkl.lz4")
    assert result.format == "pickle+lz4"
    assert summary(result) == {(GADGET, SYSTEM, "lz4")}


def test_concatenated_gzip_members():
    data = gzip.compress(pickle_list(), mtime=0) + gzip.compress(EVIL, mtime=0)
    assert summary(scan(data)) == {(GADGET, SYSTEM, "gzip")}


@pytest.mark.parametrize("codec", ["gzip", "bz2", "xz", "zlib"])
def test_truncated_compressed_is_malformed(codec):
    full = COMPRESSORS[codec](EVIL * 50)
    result = scan(full[:len(full) // 2])
    assert result.format == codec
    assert summary(result) == {(MALF, None, None)}


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip.compress(bytes(50_000_000), compresslevel=9, mtime=0)


def test_gzip_bomb_hits_the_expansion_limit(bomb):
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        result = scan(bomb, path="model.pkl.gz", max_expanded_bytes=1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary(result) == {(LIMIT, None, None)}
    assert peak < 16_000_000, peak


def test_bomb_inside_zip_hits_the_expansion_limit():
    data = make_zip([("a.pkl", bytes(20_000_000))], compression=8)
    result = scan(data, path="a.zip", max_expanded_bytes=1_000_000)
    assert summary(result) == {(LIMIT, None, None)}


def test_expansion_budget_is_shared_across_members():
    chunk = bytes(600_000)
    data = make_zip([("a.bin", gzip.compress(chunk, mtime=0)),
                     ("b.bin", gzip.compress(chunk, mtime=0))], compression=8)
    assert scan(data, path="a.zip", max_expanded_bytes=1_300_000, presets=[]).findings == ()
    result = scan(data, path="a.zip", max_expanded_bytes=1_000_000)
    # each member alone fits; together they do not
    assert summary(result) == {(LIMIT, None, "b.bin")}


def test_lz4_without_the_lz4_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "lz4", None)
    monkeypatch.setitem(sys.modules, "lz4.frame", None)
    result = scan(fixture("sklearn_logreg.joblib.lz4"), path="model.joblib.lz4")
    assert result.format == "lz4"
    assert summary(result) == {("unsupported", None, None)}
    assert "pip install" in result.findings[0].message


# ---------------------------------------------------------------------------------------------
# content without pickles, and content nothing knows


def test_safetensors_is_clean():
    data = safetensors({"w": ("F32", [2], struct.pack("<2f", 1.0, 2.0)),
                        "b": ("F32", [1], EVIL[:4])})
    result = scan(data, path="model.safetensors", presets=[])
    assert (result.format, result.status, result.findings) == ("safetensors", Status.CLEAN, ())


def test_lfs_pointer():
    from samples import LFS_POINTER

    result = scan(LFS_POINTER, path="model.pt")
    assert result.format == "lfs-pointer"
    assert summary(result) == {("lfs-pointer", None, None)}


def test_random_bytes_are_unknown_format():
    data = bytes(range(0xF0, 0x100)) * 4 + os.urandom(0)
    result = scan(data, path="model.pt")
    assert result.format == "unknown"
    assert summary(result) == {("unknown-format", None, None)}


def test_unknown_member_inside_an_archive_is_not_a_finding():
    """Inside a container, bytes nothing recognises are data (torch's raw records)."""
    data = make_zip([("blob", bytes(range(0xF0, 0x100)))])
    result = scan(data, path="a.zip", presets=[])
    assert (result.status, result.findings) == (Status.CLEAN, ())


# ---------------------------------------------------------------------------------------------
# plain tar


def _tar(members: list[tuple[str, bytes]], links: list[tuple[str, str]] = ()) -> bytes:
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize("members, links, expected", [
    ([("model/weights.pkl", EVIL)], [], {(GADGET, SYSTEM, "model/weights.pkl")}),
    ([("model/weights.pkl.gz", gzip.compress(EVIL, mtime=0))], [],
     {(GADGET, SYSTEM, "model/weights.pkl.gz!gzip")}),
    ([("a.pkl", pickle_list()), ("a.pkl", EVIL)], [],
     {(ARCH, None, None), (GADGET, SYSTEM, "a.pkl")}),
    ([("../evil.pkl", EVIL)], [], {(ARCH, None, None), (GADGET, SYSTEM, "../evil.pkl")}),
    ([("ok.txt", b"hello")], [("model.pkl", "/etc/passwd")], {(ARCH, None, None)}),
])
def test_tar_plants(members, links, expected):
    result = scan(_tar(members, links), path="bundle.tar")
    assert result.format == "tar"
    assert summary(result) == expected


def test_gzip_with_trailing_garbage_is_not_clean():
    """gzip.open + pickle.load would run the first member's pickle before reaching the bad
    second header; picklegate must not pass the file."""
    result = scan(gzip.compress(EVIL, mtime=0) + b"garbage", path="model.pkl.gz")
    assert result.status is Status.VIOLATION
    assert MALF in {f.kind.value for f in result.findings}
    assert (GADGET, SYSTEM, "gzip") in summary(result)        # the first member is still analysed
