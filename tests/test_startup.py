"""Start-up work of `picklegate scan FILE`: counted as modules imported, never timed.

A hook runs on every commit, so a scan of one file outside git imports no git layer, no
PyYAML (the default policy comes from the generated preset cache), and no reporter it does
not print with (README: Performance).
"""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PROBE = """
import sys
from picklegate.cli import main
code = main(sys.argv[1:])
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""
NEVER = ("yaml", "picklegate.gitio", "subprocess", "tempfile", "picklegate.review",
         "picklegate.report.json", "picklegate.report.sarif", "picklegate.report.github",
         "concurrent.futures", "multiprocessing")


def _imported(tmp_path: Path, *argv: str) -> set[str]:
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    done = subprocess.run((sys.executable, "-c", PROBE, "scan", *argv), cwd=tmp_path,
                          env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True,
                          timeout=120)
    return set(done.stderr.splitlines()[-1].split())


def test_scanning_one_file_imports_only_what_it_needs(tmp_path):
    imported = _imported(tmp_path, "m.pkl")
    assert "picklegate.report.text" in imported
    assert [name for name in NEVER if name in imported] == []


@pytest.mark.parametrize("fmt, needed", [("json", "picklegate.report.json"),
                                         ("sarif", "picklegate.report.sarif")])
def test_a_machine_format_imports_its_reporter(tmp_path, fmt, needed):
    imported = _imported(tmp_path, "--format", fmt, "m.pkl")
    assert needed in imported and "picklegate.report.github" not in imported
