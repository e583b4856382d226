"""Faults never lose a verdict: unreadable and changing files, special files, broken pipes,
full disks, Ctrl-C, hostile names, a deleted current directory.

Signal, pipe and full-disk cases run ``python -m picklegate`` in a subprocess with this
worktree's src first on PYTHONPATH. Tests run as root, where chmod 000 stops nothing, so
unreadable directories are made by fault injection: ``os.scandir`` in picklegate.sources is
replaced by one that raises PermissionError for the chosen path (the exact error the kernel
gives a non-root user).
"""
from __future__ import annotations

import faulthandler
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from picklegate import sources
from picklegate.cli import main
from picklegate.errors import SourceError

SRC = Path(__file__).resolve().parents[1] / "src"
GETCWD = f"{os.getcwd.__module__}.getcwd"


class _Getcwd:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.getcwd, ())


EVIL = pickle.dumps(_Getcwd(), protocol=2)
CLEAN = pickle.dumps({"w": [1.0, 2.0]}, protocol=2)
STRICT = "version: 1\nallow:\n  collections: [OrderedDict]\n"


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1"}


def picklegate(*argv: str, cwd: Path, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run((sys.executable, "-m", "picklegate", *argv), cwd=cwd, env=env(),
                          capture_output=True, timeout=120, **kw)  # type: ignore[call-overload]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plain directory (no git) as the current directory, with a strict policy."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "policy.yaml").write_text(STRICT)
    monkeypatch.chdir(root)
    return root


def scan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["scan", "--format", "json", "--policy", "policy.yaml", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def deny_scandir(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    real = os.scandir

    def scandir(path: str) -> object:
        if Path(path).resolve() == victim.resolve():
            raise PermissionError(13, "Permission denied", path)
        return real(path)
    monkeypatch.setattr(sources.os, "scandir", scandir)


# ---------------------------------------------------------------------------------------------
# directories never fail open


@pytest.mark.parametrize("victim", ["models", "models/sub"], ids=["top", "nested"])
def test_unreadable_directory_is_an_error_not_an_empty_pass(tree, capsys, monkeypatch, victim):
    (tree / "models" / "sub").mkdir(parents=True)
    (tree / "models" / "ok.pkl").write_bytes(CLEAN)
    (tree / "models" / "sub" / "evil.pkl").write_bytes(EVIL)
    deny_scandir(monkeypatch, tree / victim)
    code, doc, err = scan_json(capsys, "models")
    assert code == 2
    errors = [(f["path"], f["error"]) for f in doc["files"] if f["status"] == "error"]
    assert errors == [(victim, "cannot read directory: Permission denied")]
    assert f"picklegate: error: {victim}: cannot read directory: Permission denied" in err


def test_symlink_loop_is_reported_and_the_tree_still_scanned(tree, capsys):
    (tree / "models" / "sub").mkdir(parents=True)
    (tree / "models" / "sub" / "evil.pkl").write_bytes(EVIL)
    os.symlink("..", tree / "models" / "sub" / "up")            # models/sub/up -> models
    os.symlink("sub", tree / "models" / "alias")                # followed: not a loop
    code, doc, _ = scan_json(capsys, "models")
    assert code == 2
    by_path = {f["path"]: f for f in doc["files"]}
    assert by_path["models/alias/up"]["error"].startswith("symlink loop")
    assert by_path["models/sub/up"]["error"].startswith("symlink loop")
    assert by_path["models/sub/evil.pkl"]["status"] == "violation"
    assert by_path["models/alias/evil.pkl"]["status"] == "violation"
    assert len(by_path) == 4


@pytest.mark.parametrize("make,kind", [
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: socket.socket(socket.AF_UNIX).bind(str(p)), "a socket"),
    (lambda p: os.symlink("/dev/zero", p), "a character device"),
], ids=["fifo", "socket", "dev-zero"])
def test_special_files_are_refused_never_read(tree, capsys, make, kind):
    (tree / "d").mkdir()
    make(tree / "d" / "x.pkl")
    for argv in (["d/x.pkl"], ["d"]):                           # given, and found in a walk
        code, doc, _ = scan_json(capsys, *argv)
        assert code == 2
        [f] = doc["files"]
        assert f["error"] == f"not a regular file ({kind}); refusing to read it"


# ---------------------------------------------------------------------------------------------
# files that change while they are read


def test_file_changed_during_read_is_unreadable_not_judged(tree, monkeypatch):
    path = tree / "m.pkl"
    path.write_bytes(CLEAN)
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if data:
            path.write_bytes(EVIL)                  # rewritten under the reader
        return data
    monkeypatch.setattr(sources.os, "read", read)
    with pytest.raises(SourceError, match="changed while it was read"):
        sources.read_file(str(path))


def test_file_truncated_while_read_is_an_error(tree, monkeypatch):
    path = tree / "m.pkl"
    path.write_bytes(b"\x80\x02" + b"N" * (1000 - 3) + b".")
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        os.truncate(path, 10)                        # shrinks under the reader
        return data
    monkeypatch.setattr(sources.os, "read", read)
    with pytest.raises(SourceError, match="changed while it was read"):
        sources.read_file(str(path))


BIG = sources.SPOOL_IN_MEMORY + 2 * sources.CHUNK


def _big(tree: Path) -> Path:
    path = tree / "big.pkl"
    path.write_bytes(b"\x80\x02" + b"N" * (BIG - 3) + b".")
    return path


def test_large_file_is_mapped_in_place_and_knows_when_it_changed(tree):
    """No copy and no disk for a large file: the analysis reads a mapping of the file itself."""
    path = _big(tree)
    buf = sources.read_file(str(path))
    assert isinstance(buf, sources.MappedFile) and len(buf) == BIG and buf.unchanged()
    os.utime(path, ns=(0, 0))
    assert not buf.unchanged()


def _map_then(path: str, change: str) -> sources.Buffer:
    """A read that maps the file, then changes it under the mapping before the analysis."""
    buf = sources.read_file(path)
    if change == "truncate":
        os.truncate(path, 0)        # the next access to the mapping raises SIGBUS
    else:
        with open(path, "r+b") as handle:
            handle.write(b"\x80\x02cposix\nsystem\n")   # same size, other bytes: torn view
    return buf


@pytest.mark.parametrize("change", ["truncate", "rewrite"])
def test_large_file_changed_under_its_mapping_is_an_error_not_a_crash(tree, change):
    """SIGBUS ends the worker process that maps a large file, never the scan."""
    from functools import partial

    from picklegate.policy import default_policy
    from picklegate.scan import ScanOptions, scan_source
    from picklegate.sources import Source

    path = str(_big(tree))
    source = Source(path, None, partial(_map_then, path, change), file=path)
    # The worker dies of SIGBUS on purpose: keep pytest's faulthandler (which the forked
    # worker inherits) from printing a "Fatal Python error" that is the expected outcome.
    was_enabled = faulthandler.is_enabled()
    faulthandler.disable()
    try:
        result = scan_source(source, default_policy(), ScanOptions())
    finally:
        if was_enabled:
            faulthandler.enable(file=sys.__stderr__)
    assert result.status.value == "error"
    assert ("SIGBUS" if change == "truncate" else "changed while it was read") in result.error


# ---------------------------------------------------------------------------------------------
# output: pipes, full disks, closed stdout, unwritable --output


def test_output_piped_into_head_ends_quietly_with_the_scans_exit_code(tmp_path):
    for i in range(3000):
        (tmp_path / f"m{i:04}.pkl").write_bytes(EVIL)
    (tmp_path / "policy.yaml").write_text(STRICT)
    cmd = (f"{sys.executable} -m picklegate scan --policy policy.yaml . | head -n 1; "
           "echo \"rc=${PIPESTATUS[0]}\"")
    done = subprocess.run(("bash", "-c", cmd), cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.splitlines()[-1] == "rc=1"
    assert done.stdout.splitlines()[0] == "./m0000.pkl: 1 problem"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


@pytest.mark.parametrize("redirect", ["> /dev/full", ">&-"], ids=["full-disk", "closed"])
@pytest.mark.parametrize("data", [CLEAN, EVIL], ids=["clean", "failing"])
def test_report_that_cannot_be_written_is_exit_2(tmp_path, redirect, data):
    (tmp_path / "m.pkl").write_bytes(data)
    (tmp_path / "policy.yaml").write_text(STRICT)
    cmd = f"{sys.executable} -m picklegate scan --policy policy.yaml m.pkl {redirect}"
    done = subprocess.run(("bash", "-c", cmd), cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("picklegate: error: cannot write the report:")


@pytest.mark.parametrize("target", ["missing-dir/report.json", "."], ids=["no-parent", "dir"])
def test_unwritable_output_fails_before_the_scan(tree, capsys, monkeypatch, target):
    (tree / "m.pkl").write_bytes(EVIL)
    scanned: list[object] = []
    monkeypatch.setattr("picklegate.cli.scan_sources", lambda *a: scanned.append(a))
    code = main(["scan", "--policy", "policy.yaml", "--format", "json", "--output", target,
                 "m.pkl"])
    err = capsys.readouterr().err
    assert code == 2 and scanned == []
    assert err.startswith(f"picklegate: error: cannot write {target}: ")


def test_check_writable_leaves_no_file_behind(tree):
    from picklegate.cli import check_writable
    check_writable("new.json")
    assert not (tree / "new.json").exists()


# ---------------------------------------------------------------------------------------------
# Ctrl-C


_SLOW_SCAN = """
import sys, time
import picklegate.cli as cli
def slow(*a, **k):
    print("scanning", file=sys.stderr, flush=True)
    time.sleep(60)
cli.scan_sources = slow
sys.exit(cli.main(["scan", "m.pkl"]))
"""


def _interrupt(args: tuple[str, ...], cwd: Path, extra_env: dict[str, str],
               ready: bytes | None) -> tuple[int, bytes]:
    process = subprocess.Popen(args, cwd=cwd, env={**env(), **extra_env},
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               start_new_session=True)
    assert process.stderr is not None
    if ready is not None:
        while ready not in (line := process.stderr.readline()):
            assert line, "the process ended before it was ready"
    else:
        time.sleep(2)
    os.killpg(process.pid, signal.SIGINT)          # as a terminal does: the whole group
    err = process.stderr.read()
    return process.wait(timeout=60), err


def test_ctrl_c_during_the_scan_is_130_without_traceback(tmp_path):
    (tmp_path / "m.pkl").write_bytes(CLEAN)
    code, err = _interrupt((sys.executable, "-c", _SLOW_SCAN), tmp_path, {}, b"scanning")
    assert code == 130
    assert b"Traceback" not in err


def test_ctrl_c_while_git_runs_is_130_without_traceback(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\necho git-started >&2\nexec sleep 60\n")
    (fake / "git").chmod(0o755)
    path = f"{fake}{os.pathsep}{os.environ['PATH']}"
    code, err = _interrupt((sys.executable, "-m", "picklegate", "scan", "--staged"), tmp_path,
                           {"PATH": path}, None)
    assert code == 130
    assert b"Traceback" not in err


# ---------------------------------------------------------------------------------------------
# hostile names


def _global(module: bytes, name: bytes) -> bytes:
    return b"\x80\x02c" + module + b"\n" + name + b"\n)R."


@pytest.mark.parametrize("fmt", ["text", "json", "github", "sarif"])
def test_hostile_names_are_escaped_in_every_format(tree, fmt, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    ansi = _global(b"os", b"\x1b[2J\x1b]0;pwned\x07system")
    surrogate = (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06\xed\xa0\x80sys"
                 b"\x93.")
    (tree / "ansi.pkl").write_bytes(ansi)
    (tree / "surrogate.pkl").write_bytes(surrogate)
    raw_name = os.fsencode(str(tree)) + b"/bad\xff\x1b[31m.pkl"
    with open(raw_name, "wb") as handle:
        handle.write(EVIL)
    done = picklegate("scan", "--policy", "policy.yaml", "--format", fmt, ".", cwd=tree)
    assert done.returncode in (1, 2)
    out = done.stdout
    assert b"\x1b" not in out and b"\x07" not in out
    out.decode("utf-8")                                 # valid UTF-8: no lone surrogates
    if fmt in ("json", "sarif"):
        # every string is valid Unicode (strict parsers reject a lone "\\ud800" escape)
        json.dumps(json.loads(out), ensure_ascii=False).encode("utf-8")
    if fmt in ("text", "json"):
        assert b"bad\\\\xff\\\\x1b[31m.pkl" in out if fmt == "json" else \
            b"bad\\xff\\x1b[31m.pkl" in out


def test_enormous_global_name_is_shortened_with_its_length(tree):
    # Just under Limits.max_name_bytes (64 KiB): the name is read and reported, shortened.
    name = b"x" * 65_000
    (tree / "big.pkl").write_bytes(_global(b"os", name))
    done = picklegate("scan", "--policy", "policy.yaml", "big.pkl", cwd=tree)
    assert done.returncode == 1
    line = done.stdout.decode().splitlines()[1]
    assert len(line) < 5000
    assert re.search(r"of 65\d{3} characters left out\]", line)   # os.xxxx…: 65003+ chars


def test_global_name_over_the_name_bound_is_a_limit_finding(tree):
    # 5 MB: never materialised (Limits.max_name_bytes); the file fails on the bound instead.
    (tree / "big.pkl").write_bytes(_global(b"os", b"x" * 5_000_000))
    done = picklegate("scan", "--policy", "policy.yaml", "big.pkl", cwd=tree)
    assert done.returncode == 1
    out = done.stdout.decode()
    assert "GLOBAL names a 5000000-byte name, longer than max_name_bytes (65536)" in out
    assert len(out.splitlines()[0]) < 5000


# ---------------------------------------------------------------------------------------------
# a deleted current directory


def test_deleted_current_directory_does_not_crash(tmp_path):
    (tmp_path / "m.pkl").write_bytes(EVIL)
    gone = tmp_path / "gone"
    script = (f"import os, sys; os.mkdir({str(gone)!r}); os.chdir({str(gone)!r}); "
              f"os.rmdir({str(gone)!r}); "
              "from picklegate.cli import main; "
              f"sys.exit(main(['scan', {str(tmp_path / 'm.pkl')!r}]))")
    done = subprocess.run((sys.executable, "-c", script), env=env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{GETCWD} is a known code-execution gadget" in done.stdout
    script = script.replace(repr(str(tmp_path / "m.pkl")), "'.'")
    done = subprocess.run((sys.executable, "-c", script), env=env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    # the text report lists the unreadable path itself (stderr repeats it only behind json/sarif)
    assert ".: error: the directory has been deleted" in done.stdout
