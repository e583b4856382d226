"""Differential tests for zip member discovery: real torch and npz archives are mutated where
readers disagree (end records, zip64 records, entry counts, directory sizes, prepended and
appended bytes, duplicate names), and picklegate's views are checked against the real readers:
Python's zipfile and, when torch is installed, torch's own PyTorchFileReader (miniz). Every
member either reader lists must be scanned; every disagreement must be an archive-anomaly;
a payload in a member only one reader sees must be found. Oracles only list names and
offsets of benign files; nothing is ever loaded."""
from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from picklegate.formats.archive import STREAM, TORCH, ZIPFILE, Discovery, discover

from .build import ZipParts, archive_prefix, evil_global, fixture, local_entry, rezip
from .conftest import scan, summary

PT = fixture("torch_module_sd.pt")
PRE = archive_prefix(PT)
NPZ = fixture("numpy_arrays.npz")
EVIL = evil_global()
BENIGN = pickle.dumps([1, 2, 3], protocol=2)
ARCH, NA, SYSTEM = "archive-anomaly", "not-allowed", "posix.system"
GADGET = "gadget"  # the kind of a planted posix.system

# (archive, name of the added member, name of a member prepended/appended outside it)
BASES = {"torch": (PT, f"{PRE}/extra.pkl", f"{PRE}/outside.pkl"),
         "npz": (NPZ, "extra.pkl", "outside.pkl")}

Mutant = Callable[[bytes, str, str, bytes], tuple[bytes, str | None]]


def _parts(base: bytes, extra: str, payload: bytes) -> ZipParts:
    """The archive rebuilt with one more stored member, last in the directory."""
    return ZipParts.parse(rezip(base, add=[(extra, payload)]))


def _dup(base: bytes, extra: str, payload: bytes) -> bytes:
    first = zipfile.ZipFile(io.BytesIO(base)).namelist()[0]
    with pytest.warns(UserWarning, match="Duplicate name"):
        return rezip(base, add=[(first, payload)])


# name -> (archive, the member only one reader (or none) sees, to plant in)
MUTANTS: dict[str, Mutant] = {
    "identity":
        lambda b, x, o, p: (_parts(b, x, p).bytes(), None),
    "zip64 end record":
        lambda b, x, o, p: (_parts(b, x, p).zip64(), None),
    # miniz follows the locator's offset to the first record; zipfile reads the last one
    "locator names another zip64 record: only torch lists the member":
        lambda b, x, o, p: ((z := _parts(b, x, p)).zip64([z.entries, z.entries[:-1]], 0), x),
    "locator names another zip64 record: only zipfile lists the member":
        lambda b, x, o, p: ((z := _parts(b, x, p)).zip64([z.entries[:-1], z.entries], 0), x),
    "entry count one smaller than the directory":
        lambda b, x, o, p: ((z := _parts(b, x, p)).bytes(count=len(z.entries) - 1), x),
    "entry count one larger than the directory":
        lambda b, x, o, p: ((z := _parts(b, x, p)).bytes(count=len(z.entries) + 1), None),
    "directory size and count without the last entry":
        lambda b, x, o, p: ((z := _parts(b, x, p)).bytes(
            count=len(z.entries) - 1, size=sum(map(len, z.entries[:-1]))), x),
    "directory size too large":
        lambda b, x, o, p: ((z := _parts(b, x, p)).bytes(size=sum(map(len, z.entries)) + 10),
                            None),
    "prepended junk":
        lambda b, x, o, p: (_parts(b, x, p).bytes(prefix=b"#!/bin/sh\nexit 0\n"), None),
    "prepended local entry":
        lambda b, x, o, p: (_parts(b, x, BENIGN).bytes(prefix=local_entry(o, p)), o),
    "appended zeros":
        lambda b, x, o, p: (_parts(b, x, p).bytes(suffix=bytes(64)), None),
    "appended local entry":
        lambda b, x, o, p: (_parts(b, x, BENIGN).bytes(suffix=local_entry(o, p)), o),
    "truncated end-record signature in the comment":
        lambda b, x, o, p: (_parts(b, x, p).bytes(comment=b"xxPK\x05\x06yyyy"), None),
    "duplicate name":
        lambda b, x, o, p: (_dup(b, x, p), None),
}

CASES = [(base, mutant) for base in BASES for mutant in MUTANTS]


def _build(base: str, mutant: str, payload: bytes) -> tuple[bytes, str | None]:
    archive, extra, outside = BASES[base]
    return MUTANTS[mutant](archive, extra, outside, payload)


def _scanned(found: Discovery) -> set[tuple[str, int]]:
    return {(name, span.header.header_offset) for span in found.spans
            for name in found.names[span.key]}


def _zipfile_members(data: bytes) -> set[tuple[str, int]] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {(i.filename, i.header_offset) for i in z.infolist()}
    except zipfile.BadZipFile:
        return None


def _torch_members(data: bytes, tmp_path: Path) -> set[tuple[str, int]] | None:
    """Records torch's reader lists (names without the archive folder); None when it
    refuses the zip structure. torch.load reads a file that does not start with a local
    header as a legacy pickle, so such files have no torch view."""
    torch = pytest.importorskip("torch", reason="torch's reader is the oracle for miniz")
    path = tmp_path / "mutant.pt"
    path.write_bytes(data)
    try:
        reader = torch._C.PyTorchFileReader(str(path))
    except RuntimeError as exc:
        assert "failed reading zip archive" in str(exc) or "subdirectory" in str(exc), exc
        return None
    return {(r, reader.get_record_header_offset(r)) for r in reader.get_all_records()}


def _records(members: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Names as torch's reader lists them: without the archive folder."""
    return {(name.split("/", 1)[-1], offset) for name, offset in members}


@pytest.mark.parametrize("base, mutant", CASES)
def test_zipfile_view_is_zipfile(base, mutant):
    """picklegate's zipfile view lists exactly what zipfile lists, and all of it is scanned."""
    data, _ = _build(base, mutant, BENIGN)
    found = discover(data, 0, len(data))
    view = found.views[ZIPFILE]
    expected = _zipfile_members(data)
    if expected is None:
        assert view.error is not None
        return
    assert view.error is None, view.error
    assert {(h.name, h.header_offset) for h in view.headers} == expected
    assert expected <= _scanned(found)


@pytest.mark.parametrize("base, mutant", CASES)
def test_torch_view_is_torch(base, mutant, tmp_path):
    data, _ = _build(base, mutant, BENIGN)
    found = discover(data, 0, len(data))
    view = found.views[TORCH]
    expected = _torch_members(data, tmp_path)
    if not view.applies:
        assert data[:4] != b"PK\x03\x04"
        return
    if base == "npz":
        # torch refuses npz files for their layout (no archive folder), not their structure:
        # only the structure is modelled, and whatever miniz would list is scanned.
        assert expected is None
        return
    if expected is None:
        assert view.error is not None
        return
    assert view.error is None, view.error
    ours = _records({(h.name, h.header_offset) for h in view.headers})
    # torch gives one offset per name: a duplicate's other copy is only in our list
    assert expected <= ours and {n for n, _ in ours} == {n for n, _ in expected}
    assert expected <= _records(_scanned(found))


@pytest.mark.parametrize("base, mutant", CASES)
def test_disagreements_are_anomalies(base, mutant):
    data, _ = _build(base, mutant, BENIGN)
    found = discover(data, 0, len(data))
    views = found.views
    opened = {r: {(h.name, h.header_offset) for h in v.headers} for r, v in views.items()
              if v.opened and r != STREAM}
    streamed = {(h.name, h.header_offset) for h in views[STREAM].headers}
    agree = len({frozenset(s) for s in opened.values()} | {frozenset(streamed)}) == 1 and \
        (not views[TORCH].applies or len(opened) == 2)
    kinds = {k for k, _, _ in summary(scan(data, presets=["torch", "numpy"]))}
    if mutant == "identity":
        assert agree and found.anomalies == []
    if not agree:
        assert ARCH in kinds, [m for _, m in found.anomalies]


@pytest.mark.parametrize("base, mutant", [c for c in CASES
                                          if _build(*c, BENIGN)[1] is not None])
def test_payload_seen_by_one_reader_is_found(base, mutant):
    data, member = _build(base, mutant, EVIL)
    result = scan(data, presets=["torch", "numpy"])
    assert (GADGET, SYSTEM, member) in summary(result)
    assert ARCH in {f.kind.value for f in result.findings}


@pytest.mark.parametrize("mutant, message", [
    ("locator names another zip64 record: only torch lists the member",
     "zip64 end record: zipfile reads the one before the locator at"),
    ("entry count one smaller than the directory",
     "zipfile sees 14 members (by directory size), torch's reader sees 13 (by entry count)"),
    ("entry count one larger than the directory", "torch's reader (miniz) refuses"),
    ("truncated end-record signature in the comment", "zipfile refuses this archive"),
    ("prepended local entry", "seen by a streaming reader but not by zipfile"),
    ("appended local entry", "is reached by no reader (hidden member)"),
])
def test_anomaly_names_the_readers(mutant, message):
    data, _ = _build("torch", mutant, BENIGN)
    messages = [m for _, m in discover(data, 0, len(data)).anomalies]
    assert any(message in m for m in messages), messages


def test_real_archives_have_one_view():
    for name in ("torch_module_sd.pt", "torchscript_tiny.pt", "numpy_arrays.npz",
                 "numpy_arrays_compressed.npz"):
        data = fixture(name)
        found = discover(data, 0, len(data))
        assert found.anomalies == [], name
        assert found.views[ZIPFILE].opened and found.views[TORCH].opened
        members = [{(s.header.name, s.data_start, s.data_end) for s in v.members}
                   for v in found.views.values()]
        assert members[0] == members[1] == members[2], name
        assert found.searched == 0, name      # no gap: nothing searched


# ---------------------------------------------------------------------------------------------
# the torch storage exemption: only <archive>/data/<key> named by <archive>/data.pkl

def _pid_pickle(*keys: str) -> bytes:
    """A protocol 2 pickle of a list of torch storage persistent ids."""
    def text(value: str) -> bytes:
        return b"X" + len(value).to_bytes(4, "little") + value.encode()
    pids = b"".join(b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text(k) + text("cpu")
                    + b"K\x01tQ" for k in keys)
    return b"\x80\x02](" + pids + b"e."


def _npy_object(payload: bytes) -> bytes:
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


TS = fixture("torchscript_tiny.pt")
TS_PRE = archive_prefix(TS)

EXEMPTION_CASES = {
    # data.pkl names key '0'; the same key outside data/ is no storage torch reads
    "storage key outside data/":
        (lambda: rezip(PT, add=[(f"{PRE}/0", EVIL)]), f"{PRE}/0"),
    # only data.pkl's persistent ids count, not another pickle's
    "key named by another pickle":
        (lambda: rezip(PT, add=[(f"{PRE}/extra.pkl", _pid_pickle("99")),
                                (f"{PRE}/data/99", EVIL)]), f"{PRE}/data/99"),
    # numpy.load opens any zip as an npz and unpickles object .npy members by name
    "npz member named like a torch storage":
        (lambda: rezip(PT, replace={f"{PRE}/data/0": _npy_object(EVIL)}), f"{PRE}/data/0"),
    "npz of a torch-like layout":
        (lambda: rezip(
            rezip(NPZ, add=[("arch/data.pkl", _pid_pickle("0")),
                            ("arch/data/0", _npy_object(EVIL))]),
            drop=set(zipfile.ZipFile(io.BytesIO(NPZ)).namelist())), "arch/data/0"),
    # a member outside the archive folder: not torch's layout (torch refuses it), so nothing
    # is exempt
    "member outside the archive folder":
        (lambda: rezip(PT, replace={f"{PRE}/data/0": EVIL.ljust(48, b"\x00")},
                       add=[("elsewhere.txt", b"hi")]), f"{PRE}/data/0"),
    # TorchScript constants' tensors are not exempt
    "TorchScript constants/<key> named by constants.pkl":
        (lambda: rezip(TS, replace={f"{TS_PRE}/constants.pkl": _pid_pickle("0")},
                       add=[(f"{TS_PRE}/constants/0", EVIL)]), f"{TS_PRE}/constants/0"),
}


@pytest.mark.parametrize("case", EXEMPTION_CASES)
def test_only_torch_storages_are_exempt(case):
    build, member = EXEMPTION_CASES[case]
    result = scan(build(), presets=["torch", "numpy"])
    assert (GADGET, SYSTEM, member) in summary(result)


def test_deflated_storage_record_is_analysed():
    from .build import RawZip, zip_members

    z = RawZip()
    for name, payload, _ in zip_members(PT):
        z.add(name, EVIL if name == f"{PRE}/data/0" else payload,
              method=8 if name == f"{PRE}/data/0" else 0)
    assert (GADGET, SYSTEM, f"{PRE}/data/0") in summary(scan(z.bytes(), presets=["torch"]))
