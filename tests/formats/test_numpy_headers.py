"""npy headers as numpy parses them (numpy/lib/format.py _read_array_header): Python 2 longs in
version 1.0/2.0 headers, and headers numpy refuses. Files written by Python 2 numpy are vendored
from numpy's own test data (tests/fixtures/vendored/SOURCE.md)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from picklegate.findings import Status

from .build import evil_global, npy
from .conftest import scan, summary

VENDORED = Path(__file__).resolve().parent.parent / "fixtures" / "vendored"
PY2_FILES = ("win64python2.npy", "py2-objarr.npy")
NA, MALF = "not-allowed", "malformed"
GADGET = "gadget"  # the kind of a planted posix.system
OBJECT_PY2 = "{'descr': '|O8', 'fortran_order': False, 'shape': (1L,), }"


def test_vendored_numpy_files_are_the_sources():
    text = (VENDORED / "SOURCE.md").read_text(encoding="utf-8")
    for name in PY2_FILES:
        digest = hashlib.sha256((VENDORED / name).read_bytes()).hexdigest()
        assert f"`{name}`" in text and digest in text


@pytest.mark.parametrize("name, presets", [("win64python2.npy", []),
                                           ("py2-objarr.npy", ["numpy", "builtins-safe"])])
def test_python2_npy_files_are_clean(name, presets):
    data = (VENDORED / name).read_bytes()
    result = scan(data, path=name, presets=presets)
    assert (result.format, result.status, result.findings) == ("numpy-npy", Status.CLEAN, ())


def test_python2_header_still_exposes_its_object_payload():
    result = scan(npy(OBJECT_PY2, evil_global()), path="a.npy")
    assert summary(result) == {(GADGET, "posix.system", None)}


@pytest.mark.parametrize("header, version", [
    (OBJECT_PY2, (3, 0)),                       # numpy filters 'L' only in 1.0 and 2.0 files
    ("{'descr': '|O8', 'fortran_order': False, 'shape': (1L,), [1]: 2}", (1, 0)),  # unhashable
    ("{'descr': '|O8', 'fortran_order': False, 'shape': (1,) ", (1, 0)),           # unclosed
    ("{" * 200 + "}" * 200, (1, 0)),                                                 # deep
])
def test_headers_numpy_refuses_are_malformed(header, version):
    result = scan(npy(header, evil_global(), version=version), path="a.npy")
    assert result.format == "numpy-npy"
    assert summary(result) >= {(MALF, None, None)}
    assert not any("could not analyse" in f.message for f in result.findings)
