"""--jobs: a parallel scan reports exactly what a serial one does, and loses no verdict.

The workers re-open each file from its Source (which must pickle), return only FileResults,
and are put back in source order; a worker that dies becomes that file's error result.
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from picklegate import sources
from picklegate.cli import main
from picklegate.findings import Status
from picklegate.policy import default_policy
from picklegate.scan import JOBS_THRESHOLD, default_jobs, scan_sources
from picklegate.sources import Source, file_sources

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
FIXTURES = ("tests/fixtures/real", "tests/fixtures/vendored")


class _Getcwd:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


EVIL = pickle.dumps(_Getcwd(), protocol=2)          # names os.getcwd; never loaded
CLEAN = pickle.dumps({"w": [1.0, 2.0]}, protocol=2)


def _report(capsys: pytest.CaptureFixture[str], fmt: str, jobs: int,
            *paths: str) -> tuple[int, str, str]:
    code = main(["scan", "--format", fmt, "--jobs", str(jobs), *paths])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("fmt", ["text", "json", "sarif"])
def test_parallel_report_is_byte_identical_to_serial(capsys, monkeypatch, fmt):
    """The real and vendored fixtures (clean files, violations under the default policy) plus
    a missing path (an error result): same bytes, same order, same exit code."""
    monkeypatch.chdir(REPO)
    paths = (*FIXTURES, "tests/fixtures/no-such-model.pkl")
    serial = _report(capsys, fmt, 1, *paths)
    parallel = _report(capsys, fmt, 2, *paths)
    assert parallel == serial
    assert serial[0] == 2                              # the missing file wins
    if fmt == "json":
        files = json.loads(serial[1])["files"]
        statuses = {f["status"] for f in files}
        assert statuses == {"clean", "violation", "error"}
        assert len(files) > JOBS_THRESHOLD             # so the default would be parallel too


@pytest.mark.parametrize("files, cpus, expected", [
    (0, 4, 1),
    (1, 4, 1),
    (JOBS_THRESHOLD, 4, 1),                          # at the threshold: serial
    (JOBS_THRESHOLD + 1, 4, 4),                      # above it: one worker per CPU
    (2000, 2, 2),
    (2000, 1, 1),                                    # one CPU: never parallel
])
def test_default_jobs_rule(files, cpus, expected):
    assert default_jobs(files, cpus) == expected


@pytest.mark.parametrize("given, files, cpus, expected", [
    (None, 20, 3, 3),
    (None, 5, 3, 1),
    (1, 20, 3, 1),                                   # --jobs 1 is serial whatever the count
    (4, 2, 1, 4),                                    # an explicit N is kept (capped by files
])                                                   # in scan_sources)
def test_cli_uses_the_default_only_without_jobs(monkeypatch, given, files, cpus, expected):
    from picklegate import cli
    monkeypatch.setattr(cli, "_cpu_count", lambda: cpus)
    assert cli._jobs(given, files) == expected


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_jobs_must_be_a_positive_number(capsys, value):
    assert main(["scan", "--jobs", value, "x.pkl"]) == 2
    assert "--jobs: must be a whole number of at least 1" in capsys.readouterr().err


def test_help_states_the_default_and_that_git_modes_are_serial(capsys):
    assert main(["scan", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"one per CPU when more than {JOBS_THRESHOLD} files" in text
    assert "--staged/--diff always scan serially" in text


def test_file_sources_pickle_and_read_the_file_again(tmp_path):
    """What a worker receives: the path and a picklable reader, never the bytes."""
    (tmp_path / "m.pkl").write_bytes(CLEAN)
    (tmp_path / "loop").symlink_to(tmp_path)
    found = list(file_sources([str(tmp_path)], tmp_path))
    copies = pickle.loads(pickle.dumps(found))
    assert [c.display for c in copies] == [f.display for f in found]
    by_name = {Path(c.display).name: c for c in copies}
    assert by_name["m.pkl"].read() == CLEAN
    assert len(pickle.dumps(by_name["m.pkl"])) < 400           # no buffer inside
    with pytest.raises(sources.SourceError, match="symlink loop"):
        by_name["loop"].read()


def _write(path: Path, data: bytes) -> Source:
    path.write_bytes(data)
    return Source(str(path), path.name, functools.partial(sources.read_file, str(path)))


def test_a_worker_that_dies_is_that_files_error_and_the_others_keep_their_verdicts(tmp_path):
    """os._exit in the worker breaks the pool (as the OOM killer would): the file is scanned
    again alone, dies again and becomes an error; the files around it are still judged."""
    killer = Source("killer.pkl", "killer.pkl", functools.partial(os._exit, 9))
    todo = [_write(tmp_path / "a.pkl", CLEAN), killer, _write(tmp_path / "b.pkl", EVIL),
            _write(tmp_path / "c.pkl", CLEAN)]
    result = scan_sources(todo, default_policy(), jobs=2)
    assert [(f.path, f.status) for f in result.files] == [
        (todo[0].display, Status.CLEAN), ("killer.pkl", Status.ERROR),
        (todo[2].display, Status.VIOLATION), (todo[3].display, Status.CLEAN)]
    assert "worker process scanning this file died" in (result.files[1].error or "")
    assert [g.dotted for g in result.files[2].inventory.imports] == ["posix.getcwd"]


def test_an_exception_in_a_worker_is_that_files_error(tmp_path, monkeypatch):
    todo = [_write(tmp_path / "a.pkl", CLEAN),
            Source("odd.pkl", None, functools.partial(int, "not a number"))]
    result = scan_sources(todo, default_policy(), jobs=2)
    assert [f.status for f in result.files] == [Status.CLEAN, Status.ERROR]
    assert result.files[1].error is not None
    assert result.files[1].error.startswith("picklegate could not scan this file (ValueError")


_SLOW_WORKERS = """
import multiprocessing, sys, time
multiprocessing.set_start_method("fork")       # the patch below reaches the workers
import picklegate.scan as scan
real = scan.scan_source
def slow(source, *rest):
    print("scanning", file=sys.stderr, flush=True)
    time.sleep(60)
    return real(source, *rest)
scan.scan_source = slow
import picklegate.cli as cli
sys.exit(cli.main(["scan", "--jobs", "2", "."]))
"""


def test_ctrl_c_with_workers_is_130_without_tracebacks_and_leaves_no_worker(tmp_path):
    for i in range(4):
        (tmp_path / f"m{i}.pkl").write_bytes(CLEAN)
    process = subprocess.Popen((sys.executable, "-c", _SLOW_WORKERS), cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(SRC)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    assert process.stderr is not None
    while b"scanning" not in (line := process.stderr.readline()):
        assert line, "the scan ended before the workers started"
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)            # as a terminal does: the whole group
    err = process.stderr.read()
    assert process.wait(timeout=30) == 130
    assert time.monotonic() - started < 20           # not after the workers' 60 s sleeps
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err
    with pytest.raises(ProcessLookupError):          # no worker left in the group
        os.killpg(process.pid, 0)
