"""``picklegate scan`` output routing: the terminal report (``--format``), any number of
``--output FORMAT=FILE`` reports, the old ``--output FILE``, and the job summary, all
rendered from one scan. Also: an unreadable file's error is reported once."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from picklegate import cli
from picklegate.cli import main
from picklegate.findings import ScanResult
from picklegate.report import reporter

from samples import global_call

EVIL = global_call("posix", "system")
POLICY = "version: 1\nallow:\n  collections: [OrderedDict]\n"
ANSI = "\x1b["


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "models" / "evil.pkl").write_bytes(EVIL)
    (root / "policy.yaml").write_text(POLICY, encoding="utf-8")
    monkeypatch.chdir(root)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    return root


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[ScanResult]:
    """Every ScanResult the CLI computes (to count scans and re-render the same result)."""
    seen: list[ScanResult] = []
    real = cli.scan_sources

    def counting(*args: object, **kwargs: object) -> ScanResult:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(result)
        return result

    monkeypatch.setattr(cli, "scan_sources", counting)
    return seen


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["scan", "--policy", "policy.yaml", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_scan_renders_every_requested_report(repo, capsys, scans):
    code, out, err = run(capsys, "--format", "github", "--output", "sarif=r.sarif",
                         "--output", "json=./r.json", "--output", "text=r.txt", "models")
    assert code == 1 and err == ""
    [result] = scans                                         # scanned once
    assert out == reporter("github")(result, False, False)
    assert out.startswith("::error file=models/evil.pkl,")
    for fmt, name in [("sarif", "r.sarif"), ("json", "r.json"), ("text", "r.txt")]:
        assert (repo / name).read_text(encoding="utf-8") == reporter(fmt)(result, False, False)
    sarif = json.loads((repo / "r.sarif").read_text(encoding="utf-8"))
    assert sarif["runs"][0]["results"][0]["ruleId"] == "gadget"               # posix.system
    assert json.loads((repo / "r.json").read_text(encoding="utf-8"))["files"][0]["path"] == \
        "models/evil.pkl"


def test_file_name_may_hold_an_equals_sign(repo, capsys):
    code, _, _ = run(capsys, "--output", "sarif=a=b.sarif", "--output", "./json=x", "models")
    assert code == 1
    assert json.loads((repo / "a=b.sarif").read_text(encoding="utf-8"))["version"] == "2.1.0"
    # "./json=x" is the old form: --format (text) to a file named "json=x".
    text = (repo / "json=x").read_text(encoding="utf-8")
    assert text.startswith("models/evil.pkl: 1 problem\n  offset 2: posix.system")


@pytest.mark.parametrize("fmt", ["json", "sarif", "github", "text"])
def test_old_output_file_gets_format_and_the_terminal_gets_text(repo, capsys, scans, fmt):
    code, out, _ = run(capsys, "--format", fmt, "--output", "report.out", "models")
    assert code == 1
    [result] = scans
    assert (repo / "report.out").read_text(encoding="utf-8") == \
        reporter(fmt)(result, False, False)
    assert out == reporter("text")(result, False, False)


def test_terminal_colour_never_reaches_a_file(repo, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR")
    code, out, _ = run(capsys, "--color", "always", "--output", "text=r.txt", "models")
    assert code == 1 and ANSI in out
    assert ANSI not in (repo / "r.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["--output", "sarf=x.sarif"], "unknown report format 'sarf' in 'sarf=x.sarif'"),
    (["--output", "sarif="], "no file after 'sarif='"),
    (["--output", "sarif=r.out", "--output", "json=./r.out"],
     "--output names ./r.out more than once"),
    (["--format", "sarif", "--output", "r.out", "--output", "sarif=r.out"],
     "--output names r.out more than once"),
], ids=["typo", "no-file", "same-file", "old-and-new-same-file"])
def test_bad_outputs_are_usage_errors(repo, capsys, argv, message):
    code, out, err = run(capsys, *argv, "models")
    assert code == 2
    assert out == ""
    assert message in err.splitlines()[-1]
    assert not (repo / "x.sarif").exists() and not (repo / "r.out").exists()


def test_unwritable_output_is_an_error(repo, capsys):
    code, _, err = run(capsys, "--output", "sarif=no/such/dir/r.sarif", "models")
    assert code == 2
    assert err.splitlines()[-1].startswith("picklegate: error: cannot write no/such/dir/r.sarif")


@pytest.mark.parametrize("argv, written", [
    (["--format", "github"], True),
    (["--output", "github=gh.txt"], True),
    (["--format", "github", "--output", "github=gh.txt"], True),      # still once
    (["--format", "json", "--output", "sarif=r.sarif"], False),
])
def test_job_summary_once_when_any_report_is_github(repo, capsys, monkeypatch, tmp_path,
                                                    argv, written):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert run(capsys, *argv, "models")[0] == 1
    text = summary.read_text(encoding="utf-8") if summary.exists() else ""
    assert text.count("picklegate found problems") == (1 if written else 0)


# ---------------------------------------------------------------------------------------------
# an unreadable file is reported once


@pytest.mark.parametrize("fmt, in_out, in_err", [
    ("text", "missing.pkl: error: cannot read: No such file or directory", 0),
    ("github", "::error file=missing.pkl,", 0),
    ("json", '"error": "cannot read: No such file or directory"', 1),
    ("sarif", '"ruleId": "scan-error"', 1),
])
def test_unreadable_file_is_reported_once(repo, capsys, fmt, in_out, in_err):
    code, out, err = run(capsys, "--format", fmt, "missing.pkl")
    assert code == 2
    assert out.count(in_out) == 1
    # The stderr line only where stdout is a machine document nobody reads in the log.
    assert err.count("missing.pkl: cannot read") == in_err
    if in_err:
        assert err == "picklegate: error: missing.pkl: cannot read: No such file or directory\n"


def test_unreadable_file_with_a_sarif_file_and_text_terminal(repo, capsys):
    code, out, err = run(capsys, "--output", "sarif=r.sarif", "missing.pkl")
    assert code == 2 and err == ""
    assert out.count("missing.pkl: error: cannot read") == 1
    assert "cannot read" in (repo / "r.sarif").read_text(encoding="utf-8")


def test_help_names_both_forms(capsys):
    assert main(["scan", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--output [FORMAT=]FILE" in text and "repeat it" in text
