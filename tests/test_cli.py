"""The command line: exit codes, report shapes, paths, policy discovery, colour.

Malicious samples are built as bytes (or pickle.dumps of an object whose __reduce__ names
os.getcwd); nothing here ever loads them.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from picklegate import __version__
from picklegate.cli import main, use_color

GETCWD = f"{os.getcwd.__module__}.getcwd"        # posix.getcwd (nt.getcwd on Windows)
ANSI = "\x1b["


class _Getcwd:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.getcwd, ())


EVIL = pickle.dumps(_Getcwd(), protocol=2)        # b"\x80\x02cposix\ngetcwd\n..." (GLOBAL)
EVIL_P4 = pickle.dumps(_Getcwd(), protocol=4)     # STACK_GLOBAL through the memo
CLEAN = pickle.dumps({"weights": [1.0, 2.5], "name": "m", "n": 3}, protocol=2)
# Three different imports in one stream (protocol 2, GLOBAL at offsets 2, 16 and 30), and one
# of them again: each is reported, the repeat is counted.
MULTI = (b"\x80\x02" + b"cposix\ngetcwd\n" + b"cposix\ngetpid\n" + b"cbuiltins\nexec\n"
         + b"\x87" + b"cposix\ngetcwd\n" + b"\x86" + b".")

STRICT = "version: 1\nallow:\n  collections: [OrderedDict]\n"
ALLOW_GETCWD = f"version: 1\nallow:\n  {os.getcwd.__module__}: [getcwd]\n"
# posix.getcwd is on the gadget list (the whole posix module is): every planted import here
# is a gadget finding. The text report groups findings under their file's line.
FINDING_LINE = re.compile(
    r"^  offset (?P<offset>\d+): (?P<dotted>[\w.]+) is a known code-execution gadget: .+; "
    r"never allow it \((?P<why>.+)\)(?: \(\d+ occurrences\))? \[gadget\]$")
GADGET_TEXT = "is a known code-execution gadget"


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working tree (with a .git folder, as find_root looks for) as the current directory."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    monkeypatch.chdir(root)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    write(root / "policy.yaml", STRICT)
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def scan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, "scan", "--format", "json", *argv)
    return code, json.loads(out)


def require_default_presets() -> None:
    folder = resources.files("picklegate") / "presets"
    missing = [n for n in ("builtins-safe", "torch", "numpy")
               if not (folder / f"{n}.yaml").is_file()]
    assert not missing, f"built-in presets missing: {', '.join(missing)}"


# ---------------------------------------------------------------------------------------------
# Exit codes


def test_clean_file_exits_0(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "clean.pkl", CLEAN)
    code, out, err = run(capsys, "scan", "--policy", "policy.yaml", "clean.pkl")
    assert code == 0
    assert out == ("picklegate: 1 file(s) scanned: 1 clean, 0 with violations, 0 unreadable "
                   "(policy: policy.yaml)\n")
    assert err == ""


@pytest.mark.parametrize("data", [EVIL, EVIL_P4], ids=["protocol-2", "protocol-4"])
def test_not_allowed_import_exits_1(repo: Path, capsys: pytest.CaptureFixture[str],
                                    data: bytes) -> None:
    write(repo / "evil.pkl", data)
    code, out, err = run(capsys, "scan", "--policy", "policy.yaml", "evil.pkl")
    assert code == 1
    assert f"{GETCWD} {GADGET_TEXT}" in out
    assert err == ""


def test_no_paths_scans_the_current_directory(repo: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "models" / "evil.pkl", EVIL)
    code, out, _ = run(capsys, "scan", "--policy", "policy.yaml")
    assert code == 1
    assert out.startswith(f"./models/evil.pkl: 1 problem\n  offset 2: {GETCWD} {GADGET_TEXT}")


def test_unreadable_file_exits_2_and_still_reports_the_rest(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "evil.pkl", EVIL)
    os.symlink(repo / "gone.pkl", repo / "dangling.pkl")       # exists as a name, unreadable
    code, out, _ = run(capsys, "scan", "--policy", "policy.yaml", "evil.pkl", "dangling.pkl")
    assert code == 2                                            # 2 wins over 1
    lines = out.splitlines()
    assert lines[0] == "evil.pkl: 1 problem"
    assert lines[1].startswith(f"  offset 2: {GETCWD} {GADGET_TEXT}")
    assert lines[2].startswith("dangling.pkl: error: ")
    assert lines[-1] == ("picklegate: 2 file(s) scanned: 0 clean, 1 with violations, "
                         "1 unreadable (policy: policy.yaml)")


def test_missing_file_exits_2_with_one_line(repo: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "evil.pkl", EVIL)
    code, out, err = run(capsys, "scan", "--policy", "policy.yaml", "evil.pkl", "missing.pkl")
    assert code == 2                                            # 2 wins over 1
    # one line, in the report (not again on stderr)
    assert out.count("missing.pkl: error: cannot read: No such file or directory\n") == 1
    assert err == ""
    # the other file is still scanned and reported
    assert out.startswith(f"evil.pkl: 1 problem\n  offset 2: {GETCWD} {GADGET_TEXT}")


@pytest.mark.parametrize("argv", [
    ["scan", "--bogus"],
    ["scan", "--format", "xml", "a.pkl"],
    ["scan", "--color", "sometimes"],
    ["frobnicate"],
    [],
], ids=["unknown-option", "bad-format", "bad-color", "unknown-command", "no-command"])
def test_usage_errors_exit_2(repo: Path, capsys: pytest.CaptureFixture[str],
                             argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    # argparse puts its usage synopsis first; the error itself is one line, and the last.
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0]
    assert errors[0].startswith("picklegate")


def test_policy_error_exits_2_with_position(repo: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "bad.yaml", "version: 1\nalow:\n  os: [getcwd]\n")
    write(repo / "evil.pkl", EVIL)
    code, out, err = run(capsys, "scan", "--policy", "bad.yaml", "evil.pkl")
    assert code == 2
    assert out == ""
    assert err.startswith("picklegate: error: bad.yaml:2:1: unknown key 'alow' in the policy")
    assert err.count("\n") == 1


def test_discovered_policy_error_exits_2_with_position(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / ".picklegate.yaml", "version: 1\nallow:\n  os: [getcwd]\n  os: [getpid]\n")
    write(repo / "clean.pkl", CLEAN)
    code, _, err = run(capsys, "scan", "clean.pkl")
    assert code == 2
    assert re.match(r"picklegate: error: \.picklegate\.yaml:4:3: duplicate key 'os'", err)


def test_missing_policy_file_exits_2(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "clean.pkl", CLEAN)
    code, out, err = run(capsys, "scan", "--policy", "nope.yaml", "clean.pkl")
    assert (code, out) == (2, "")
    assert err.startswith("picklegate: error: nope.yaml: cannot read policy")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"picklegate {__version__}\n")


def test_python_dash_m_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "picklegate", "--version"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"picklegate {__version__}\n"


# ---------------------------------------------------------------------------------------------
# Reports


def test_json_document_shape(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "clean.pkl", CLEAN)
    write(repo / "evil.pkl", EVIL)
    os.symlink(repo / "gone.pkl", repo / "dangling.pkl")
    code, doc = scan_json(capsys, "--policy", "policy.yaml", "clean.pkl", "evil.pkl",
                          "dangling.pkl")
    assert code == 2
    # The document README.md shows, key for key.
    assert list(doc) == ["version", "policy", "files", "summary"]
    assert (doc["version"], doc["policy"]) == (1, "policy.yaml")
    assert doc["summary"] == {"files": 3, "clean": 1, "violations": 1, "errors": 1}
    clean, evil, broken = doc["files"]
    file_keys = ["path", "format", "status", "findings", "imports", "notes"]
    assert list(clean) == list(evil) == file_keys
    assert list(broken) == file_keys + ["error"]
    assert clean == {"path": "clean.pkl", "format": "pickle", "status": "clean",
                     "findings": [], "imports": [], "notes": []}
    assert (evil["path"], evil["format"], evil["status"]) == ("evil.pkl", "pickle", "violation")
    module, name = GETCWD.split(".")
    [finding] = evil["findings"]
    assert list(finding) == ["kind", "severity", "module", "name", "member", "offset", "count",
                             "message"]
    assert {k: v for k, v in finding.items() if k != "message"} == {
        "kind": "gadget", "severity": "error", "module": module, "name": name,
        "member": None, "offset": 2, "count": 1}
    assert finding["message"].startswith(f"{GETCWD} {GADGET_TEXT}: ")
    assert finding["message"].endswith("; never allow it (no allow entry names it; GLOBAL)")
    assert evil["imports"] == [{"module": module, "name": name, "member": None, "offset": 2,
                                "count": 1}]
    assert (broken["path"], broken["status"], broken["findings"]) == ("dangling.pkl", "error", [])
    assert isinstance(broken["error"], str) and broken["error"].startswith("cannot read: ")


def test_json_output_is_only_the_document(repo: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "evil.pkl", EVIL)
    code, out, err = run(capsys, "scan", "--format", "json", "--color", "always",
                         "--policy", "policy.yaml", "evil.pkl")
    assert code == 1
    assert ANSI not in out
    json.loads(out)
    assert err == ""


def test_text_lines(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "clean.pkl", CLEAN)
    write(repo / "evil.pkl", EVIL)
    code, out, _ = run(capsys, "scan", "--policy", "policy.yaml", "clean.pkl", "evil.pkl")
    assert code == 1
    head, finding, summary = out.splitlines()
    assert head == "evil.pkl: 1 problem"
    match = FINDING_LINE.match(finding)
    assert match is not None, finding
    assert (match["offset"], match["dotted"]) == ("2", GETCWD)
    assert match["why"] == "no allow entry names it; GLOBAL"
    assert summary == ("picklegate: 2 file(s) scanned: 1 clean, 1 with violations, "
                       "0 unreadable (policy: policy.yaml)")


def test_denied_and_expired_lines(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = os.getcwd.__module__
    write(repo / "deny.yaml", f"version: 1\nallow:\n  {module}: [getcwd]\n"
                              f"deny:\n  {module}: [getcwd]\n")
    write(repo / "expired.yaml", f"version: 1\nallow:\n  {module}:\n"
                                 "    - {name: getcwd, expires: 2020-01-31}\n")
    write(repo / "evil.pkl", EVIL)
    code, out, _ = run(capsys, "scan", "--policy", "deny.yaml", "evil.pkl")
    assert code == 1
    assert out.splitlines()[:2] == ["evil.pkl: 1 problem",
                                    f"  offset 2: {GETCWD} is denied by policy "
                                    f"(deny entry {module} at deny.yaml:5:3) [denied]"]
    code, out, _ = run(capsys, "scan", "--policy", "expired.yaml", "evil.pkl")
    assert code == 1
    match = FINDING_LINE.match(out.splitlines()[1])
    assert match is not None, out
    assert match["why"] == "the allow entry at expired.yaml:4:7 expired on 2020-01-31; GLOBAL"


def test_every_not_allowed_import_is_reported(repo: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "multi.pkl", MULTI)
    code, out, _ = run(capsys, "scan", "--policy", "policy.yaml", "multi.pkl")
    assert code == 1
    found = [FINDING_LINE.match(line) for line in out.splitlines()[:-1]]
    assert [(m["offset"], m["dotted"]) for m in found if m] == \
        [("2", "posix.getcwd"), ("16", "posix.getpid"), ("30", "builtins.exec")]
    assert "(2 occurrences)" in out.splitlines()[1]
    assert not any("hint:" in line for line in out.splitlines())      # gadgets get no hint
    code, doc = scan_json(capsys, "--policy", "policy.yaml", "multi.pkl")
    assert [(f["module"], f["name"], f["offset"]) for f in doc["files"][0]["findings"]] == \
        [("posix", "getcwd", 2), ("posix", "getpid", 16), ("builtins", "exec", 30)]


def test_paths_are_reported_as_given(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "sub" / "evil.pkl", EVIL)
    given = ["./sub/evil.pkl", "sub/../sub/evil.pkl", str(repo / "sub" / "evil.pkl")]
    code, doc = scan_json(capsys, "--policy", "policy.yaml", *given)
    assert code == 1
    assert [f["path"] for f in doc["files"]] == given
    code, out, _ = run(capsys, "scan", "--policy", "policy.yaml", *given)
    assert [line.split(": 1 problem")[0] for line in out.splitlines()[:-1]
            if not line.startswith(" ")] == given


def test_directory_recursion_picks_model_files_only(repo: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    models = repo / "models"
    for name in ["a.pkl", "sub/b.PT", "sub/deeper/c.joblib", "d.pkl.gz", "e.npy.bz2",
                 "f.pth", "g.bin", "h.ckpt"]:
        write(models / name, EVIL)
    for name in ["notes.txt", "script.py", "README.md", "data.pklx", "model.safetensors",
                 "pkl", ".git/hidden.pkl", "sub/.git/hidden.pt"]:
        write(models / name, EVIL)
    code, doc = scan_json(capsys, "--policy", "policy.yaml", "models")
    assert code == 1
    assert [f["path"] for f in doc["files"]] == [
        "models/a.pkl", "models/d.pkl.gz", "models/e.npy.bz2", "models/f.pth", "models/g.bin",
        "models/h.ckpt", "models/sub/b.PT", "models/sub/deeper/c.joblib"]


def test_explicit_files_are_scanned_whatever_their_name(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / "notes.txt", EVIL)
    code, out, _ = run(capsys, "scan", "--policy", "policy.yaml", "notes.txt")
    assert code == 1
    assert out.startswith(f"notes.txt: 1 problem\n  offset 2: {GETCWD} {GADGET_TEXT}")


# ---------------------------------------------------------------------------------------------
# Policy discovery


def test_policy_at_git_root_is_found_from_a_subdirectory(
        repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    write(repo / ".picklegate.yaml", ALLOW_GETCWD)
    write(repo / "a" / "b" / "evil.pkl", EVIL)
    monkeypatch.chdir(repo / "a" / "b")
    code, out, err = run(capsys, "scan", "evil.pkl")
    assert code == 0, out
    assert out.endswith("(policy: ../../.picklegate.yaml)\n")
    assert err == ""


def test_yml_spelling_is_found(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / ".picklegate.yml", ALLOW_GETCWD)
    write(repo / "evil.pkl", EVIL)
    code, out, _ = run(capsys, "scan", "evil.pkl")
    assert code == 0
    assert out.endswith("(policy: .picklegate.yml)\n")


def test_policy_in_current_directory_without_git(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / ".picklegate.yaml", ALLOW_GETCWD)
    write(tmp_path / "evil.pkl", EVIL)
    code, out, _ = run(capsys, "scan", "evil.pkl")
    assert code == 0
    assert out.endswith("(policy: .picklegate.yaml)\n")


def test_explicit_policy_wins_over_discovery(repo: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    write(repo / ".picklegate.yaml", ALLOW_GETCWD)
    write(repo / "evil.pkl", EVIL)
    code, out, err = run(capsys, "scan", "--policy", "policy.yaml", "evil.pkl")
    assert code == 1
    assert out.endswith("(policy: policy.yaml)\n")
    assert err == ""


def test_builtin_default_is_announced_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_default_presets()
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "evil.pkl", EVIL)
    write(tmp_path / "clean.pkl", CLEAN)
    code, out, err = run(capsys, "scan", "--format", "json", "evil.pkl", "clean.pkl")
    assert code == 1
    assert err == ("picklegate: no .picklegate.yaml found; using the built-in default "
                   "(builtins-safe + torch + numpy)\n")
    doc = json.loads(out)                       # the announcement never reaches stdout
    assert [f["status"] for f in doc["files"]] == ["violation", "clean"]
    assert doc["files"][0]["findings"][0]["module"] == os.getcwd.__module__


# ---------------------------------------------------------------------------------------------
# Colour


@pytest.mark.parametrize("argv,no_color,coloured", [
    (["--color", "always"], None, True),
    (["--color", "always"], "1", True),          # an explicit flag overrides NO_COLOR
    (["--color", "never"], None, False),
    (["--color", "auto"], None, False),          # capsys is not a terminal
    ([], "1", False),
    ([], None, False),
])
def test_color_flag(repo: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch, argv: list[str], no_color: str | None,
                    coloured: bool) -> None:
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    write(repo / "evil.pkl", EVIL)
    code, out, _ = run(capsys, "scan", "--policy", "policy.yaml", *argv, "evil.pkl")
    assert code == 1
    assert (ANSI in out) is coloured
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert plain.startswith(f"evil.pkl: 1 problem\n  offset 2: {GETCWD} {GADGET_TEXT}")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("choice,env,expected", [
    ("auto", {}, True),
    ("auto", {"NO_COLOR": "1"}, False),
    ("auto", {"NO_COLOR": ""}, True),            # no-color.org: only a non-empty value counts
    ("auto", {"TERM": "dumb"}, False),
    ("never", {}, False),
    ("always", {"NO_COLOR": "1", "TERM": "dumb"}, True),
])
def test_use_color_on_a_terminal(monkeypatch: pytest.MonkeyPatch, choice: str,
                                 env: dict[str, str], expected: bool) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert use_color(choice, _Tty()) is expected
    assert use_color(choice, io.StringIO()) is (choice == "always")


@pytest.mark.parametrize("body,where,message", [
    ("exclude: tests/**\n", "2:10", "exclude must be a list"),
    ("exclude:\n  - 3\n", "3:5", "an exclude pattern must be a string"),
    ("exclude: ['/']\n", "2:11", "is not a path pattern"),
], ids=["not-a-list", "not-a-string", "empty"])
def test_policy_exclude_is_validated_with_position(repo: Path, capsys: pytest.CaptureFixture[str],
                                                   body: str, where: str, message: str) -> None:
    write(repo / "p.yaml", "version: 1\n" + body)
    code, _, err = run(capsys, "scan", "--policy", "p.yaml", ".")
    assert code == 2
    assert err.startswith(f"picklegate: error: p.yaml:{where}: ") and message in err
