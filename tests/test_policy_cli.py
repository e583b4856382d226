"""The policy commands at the command line: every error on its own line, the shipped example,
exit codes in --help, and the note when a --diff range changes the policy it did not use."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

import picklegate.cli
from picklegate.cli import main
from samples import global_call

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_WRITTEN = dt.date(2026, 6, 1)     # its allow entry expires 2027-06-30


def test_every_policy_error_is_printed_on_its_own_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("version: '1'\nalow: {}\nallow:\n  os: getcwd\n")
    assert main(["policy", "check", "p.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "picklegate: error: p.yaml:1:10: version must be an unquoted integer: write "
        "'version: 1', without quotes (it is the string '1' here)",
        "picklegate: error: p.yaml:2:1: unknown key 'alow' in the policy; did you mean "
        "'allow'? expected one of: version, description, extends, allow, deny, rules, "
        "approved, unknown_formats, lfs_pointers, exclude, limits",
        "picklegate: error: p.yaml:4:7: allow.os must be a list of names or \"*\"; write "
        "[getcwd] for a single name",
    ]


def test_example_is_shipped_identical_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = (resources.files("picklegate") / "data" / "policy.example.yaml").read_text("utf-8")
    assert shipped == (REPO_ROOT / "policy.example.yaml").read_text("utf-8")
    assert main(["policy", "example"]) == 0
    assert capsys.readouterr().out == shipped


def test_example_passes_policy_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(picklegate.cli, "utc_today", lambda: EXAMPLE_WRITTEN)
    main(["policy", "example"])
    (tmp_path / ".picklegate.yaml").write_text(capsys.readouterr().out)
    assert main(["policy", "check"]) == 0
    assert capsys.readouterr().out == "picklegate: 0 problem(s) in .picklegate.yaml\n"


@pytest.mark.parametrize("argv,codes", [
    (["scan"], ["0  every file is clean", "1  at least one finding", "2  usage"]),
    (["policy", "check"], ["0  valid", "1  valid, with warnings", "2  invalid"]),
    (["policy", "init"], ["0  written", "1  written, but", "2  not written"]),
    (["policy", "example"], ["0  printed"]),
    (["approve"], ["0  approved", "2  not written"]),
])
def test_help_shows_examples_and_exit_codes(capsys: pytest.CaptureFixture[str],
                                            argv: list[str], codes: list[str]) -> None:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:\n  picklegate " in out
    tail = out[out.index("exit codes:"):]
    for code in codes:
        assert f"\n  {code}" in tail


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(("git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           *args), cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("change_policy", [True, False])
def test_diff_says_when_the_policy_change_was_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        change_policy: bool) -> None:
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    git(repo, "init", "-q")
    (repo / ".picklegate.yaml").write_text("version: 1\nallow:\n  builtins: [dict]\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "policy")
    base = git(repo, "rev-parse", "HEAD")
    if change_policy:
        (repo / ".picklegate.yaml").write_text("version: 1\nallow:\n  posix: [getcwd]\n")
    (repo / "m.pkl").write_bytes(global_call("posix", "getcwd"))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "model")
    code = main(["scan", "--diff", f"{base}..HEAD"])
    err = capsys.readouterr().err
    assert code == 1                                # the base policy decided
    note = (f"picklegate: note: .picklegate.yaml changes in {base}..HEAD, but this scan used "
            f"it as it is at {base}: the policy comes from the base commit so that a pull "
            "request cannot approve itself. Merge the policy change first, or run with "
            "--policy-from head locally to try it\n")
    assert (note in err) is change_policy
    assert main(["scan", "--diff", f"{base}..HEAD", "--policy-from", "head"]) == \
        (0 if change_policy else 1)
    assert "note: .picklegate.yaml changes" not in capsys.readouterr().err
