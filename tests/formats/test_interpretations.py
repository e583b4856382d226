"""Files that loaders read differently: each must fail naming the global any loader imports,
and real archives must stay clean. Samples are built as bytes (tests/formats/polyglots.py);
the only unpickling here is the oracle, whose find_class records the name and returns a stub.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import tarfile

import pytest

from picklegate.findings import FindingKind, Status
from picklegate.formats.interpretations import INTERPRETATIONS

from .build import evil_global, fixture, make_zip, npy, rezip, zip_members
from .conftest import scan, summary
from .polyglots import (safetensors_pickle, tar_bytes, tar_swallowed_by_binbytes,
                        tar_with_pickle_header, v7_tar)

NA, ARCH = "not-allowed", "archive-anomaly"
GADGET = "gadget"  # the kind of a planted posix.system
SYSTEM = "posix.system"
EVIL = evil_global()
PT = fixture("torch_module_sd.pt")
PRE = next(n for n, _, _ in zip_members(PT) if n.endswith("/data.pkl")).rsplit("/", 1)[0]
CONFIG = ("config.json", b'{"in": 3}\n')


class _Recorder(pickle._Unpickler):  # type: ignore[name-defined]
    """The oracle: what pickle.load would import, with every import replaced by a stub."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.names: list[str] = []

    def find_class(self, module: str, name: str) -> object:
        self.names.append(f"{module}.{name}")
        return lambda *args, **kwargs: None


def pickle_load_imports(data: bytes) -> list[str]:
    oracle = _Recorder(data)
    with contextlib.suppress(Exception):   # the oracle only records what happened before
        oracle.load()
    return oracle.names


POLYGLOTS = {
    # (bytes, format picklegate reports, the members where the global must be named)
    "tar whose first header is a pickle":
        (lambda: tar_with_pickle_header([CONFIG, ("model.pt", PT)]), "tar", {None}),
    "safetensors whose length bytes start a pickle":
        (safetensors_pickle, "safetensors", {None}),
    "torch zip whose data.pkl is also a tar":
        (lambda: rezip(PT, replace={f"{PRE}/data.pkl": tar_with_pickle_header([CONFIG])}),
         "torch-zip", {f"{PRE}/data.pkl"}),
    "tar of a model folder inside a gzip":
        (lambda: __import__("gzip").compress(tar_with_pickle_header([CONFIG]), mtime=0),
         "tar+gzip", {"gzip"}),
}


@pytest.mark.parametrize("case", POLYGLOTS, ids=list(POLYGLOTS))
def test_polyglot_is_named_and_reported(case):
    make, fmt, members = POLYGLOTS[case]
    data = make()
    result = scan(data)
    assert result.format == fmt
    assert result.status is Status.VIOLATION
    named = {m for k, g, m in summary(result) if (k, g) == (GADGET, SYSTEM)}
    assert named == members, summary(result)
    polyglot = [f for f in result.findings if f.kind is FindingKind.ARCHIVE
                and f.message.startswith("polyglot:")]
    assert [f.member for f in polyglot] == sorted(members, key=str)
    assert all(SYSTEM in f.message for f in polyglot)


def test_oracle_agrees_the_top_level_polyglots_run_code():
    """The top-level samples really are pickles to pickle.load (recorded, never executed)."""
    assert pickle_load_imports(tar_with_pickle_header([CONFIG])) == [SYSTEM]
    assert pickle_load_imports(safetensors_pickle()) == [SYSTEM]


def test_v7_tar_is_opened_by_its_checksum():
    data = v7_tar([CONFIG, ("evil.pkl", EVIL)])
    assert b"ustar" not in data[:512]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        assert archive.getnames() == ["config.json", "evil.pkl"]     # tarfile's view
    result = scan(data)
    assert result.format == "tar"
    assert summary(result) == {(GADGET, SYSTEM, "evil.pkl")}


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_ending_in_a_checkpoint_is_read_once_and_clean(fmt):
    """zipfile opens such a tar from its end; the checkpoint member already holds that zip."""
    data = tar_bytes([CONFIG, ("model.pt", PT)], fmt)
    result = scan(data, presets=["torch"])
    assert (result.format, result.status, result.findings) == ("tar", Status.CLEAN, ())


def test_tar_ending_in_a_malicious_checkpoint_names_it_once():
    evil_pt = rezip(PT, replace={f"{PRE}/data.pkl": EVIL})
    result = scan(tar_bytes([CONFIG, ("model.pt", evil_pt)]), presets=["torch"])
    assert summary(result) == {(GADGET, SYSTEM, f"model.pt/{PRE}/data.pkl")}
    assert [f.count for f in result.findings] == [1]


def test_zip_glued_after_an_npy_is_an_anomaly_and_scanned():
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"
    data = npy(header, bytes(16)) + make_zip([("evil.pkl", EVIL)])
    result = scan(data)
    assert result.format == "numpy-npy"
    assert summary(result) == {(GADGET, SYSTEM, "(appended zip)/evil.pkl"), (ARCH, None, None),
                               # the zip's own offsets do not count the npy before it
                               (ARCH, None, "(appended zip)")}
    assert any(f.member is None and f.message.startswith("a zip archive is appended")
               for f in result.findings)


def test_safetensors_without_a_pickle_stays_clean():
    from .build import safetensors

    # header lengths whose low byte is a pickle opcode, still no pickle behind them
    for pad in range(0, 400, 7):
        data = safetensors({"w" + "x" * pad: ("F32", [2], bytes(8))})
        result = scan(data, presets=[])
        assert (result.format, result.findings) == ("safetensors", ()), pad


def test_every_row_names_its_loaders():
    """The table is what the README documents: each row says who reads bytes that way."""
    assert [row.name for row in INTERPRETATIONS][-2:] == ["pickle", "unknown"]
    assert all(row.loaders for row in INTERPRETATIONS)


def test_a_bound_hit_while_reading_a_polyglot_never_hides_what_follows():
    """The bound on nested MARKs is picklegate's, not the loader's: pickle.load reads on past
    100,001 MARKs to the GLOBAL, so the from-byte-0 reading must report it (and the bound)."""
    payload = b"(" * 100_001 + evil_global(protocol=0)
    data = tar_swallowed_by_binbytes(payload)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        assert len(archive.getmembers()) == 1                       # tarfile's view
    assert pickle_load_imports(data) == [SYSTEM]                     # the loader's view
    result = scan(data)
    assert result.format == "tar"
    found = summary(result)
    assert ("gadget", SYSTEM, None) in found and ("limit-exceeded", None, None) in found
    assert any(f.message.startswith("polyglot:") for f in result.findings)
