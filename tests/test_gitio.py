"""git-aware scanning with real git: staged blobs, commit ranges, base-commit policy, LFS
pointers, the plain git hook and the GitHub Action's script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from picklegate.cli import main
from samples import LFS_POINTER, clean, global_call

REPO_ROOT = Path(__file__).resolve().parents[1]
EVIL = global_call("posix", "system")
BIN = Path(sys.executable).parent


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(("git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           "-c", "commit.gpgsign=false", *args), cwd=repo, env=env,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    template = tmp_path / "template"
    template.mkdir()
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(template))
    git(root, "init", "-q", "-b", "main")
    (root / "README").write_text("x\n")
    git(root, "add", "README")
    git(root, "commit", "-q", "-m", "init")
    monkeypatch.chdir(root)
    return root


def write(repo: Path, path: str, data: bytes) -> None:
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def commit(repo: Path, message: str, *paths: str) -> str:
    git(repo, "add", "--", *paths)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def scan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["scan", "--format", "json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_staged_malicious_is_refused_even_if_working_tree_is_clean(repo, capsys):
    write(repo, "m/model.pkl", EVIL)
    git(repo, "add", "m/model.pkl")
    write(repo, "m/model.pkl", clean())           # working tree now looks innocent
    code, doc = scan_json(capsys, "--staged")
    assert code == 1
    [f] = doc["files"]
    assert f["path"] == "m/model.pkl"
    assert [(x["module"], x["name"]) for x in f["findings"]] == [("posix", "system")]


def test_staged_clean_passes_even_if_working_tree_is_malicious(repo, capsys):
    write(repo, "m/model.pkl", clean())
    git(repo, "add", "m/model.pkl")
    write(repo, "m/model.pkl", EVIL)
    code, doc = scan_json(capsys, "--staged")
    assert code == 0
    assert [f["status"] for f in doc["files"]] == ["clean"]


def test_staged_skips_deletions_and_scans_renames(repo, capsys):
    write(repo, "a.pkl", EVIL)
    commit(repo, "add", "a.pkl")
    write(repo, "gone.pkl", clean())
    commit(repo, "gone", "gone.pkl")
    (repo / "moved").mkdir()
    git(repo, "mv", "a.pkl", "moved/b.pkl")
    git(repo, "rm", "-q", "gone.pkl")
    code, doc = scan_json(capsys, "--staged")
    assert code == 1
    assert [f["path"] for f in doc["files"]] == ["moved/b.pkl"]


def test_staged_ignores_non_model_files(repo, capsys):
    write(repo, "notes.txt", EVIL)
    git(repo, "add", "notes.txt")
    code, doc = scan_json(capsys, "--staged")
    assert code == 0 and doc["files"] == []


def test_diff_range_over_several_commits(repo, capsys):
    base = git(repo, "rev-parse", "HEAD")
    write(repo, "models/evil.pkl", EVIL)
    first = commit(repo, "evil", "models/evil.pkl")
    write(repo, "models/ok.pkl", clean())
    commit(repo, "ok", "models/ok.pkl")
    write(repo, "docs.md", b"doc")
    commit(repo, "docs", "docs.md")
    code, doc = scan_json(capsys, "--diff", f"{base}..HEAD")
    assert code == 1
    assert {f["path"]: f["status"] for f in doc["files"]} == {
        "models/evil.pkl": "violation", "models/ok.pkl": "clean"}
    code, doc = scan_json(capsys, "--diff", f"{first}..HEAD")
    assert code == 0
    assert [f["path"] for f in doc["files"]] == ["models/ok.pkl"]


def test_diff_reads_blobs_not_the_working_tree(repo, capsys):
    base = git(repo, "rev-parse", "HEAD")
    write(repo, "evil.pkl", EVIL)
    commit(repo, "evil", "evil.pkl")
    (repo / "evil.pkl").unlink()
    code, _ = scan_json(capsys, "--diff", base)
    assert code == 1


def test_diff_policy_comes_from_base_so_a_change_cannot_approve_itself(repo, capsys):
    (repo / ".picklegate.yaml").write_text("version: 1\nallow:\n  builtins: [dict]\n")
    base = commit(repo, "policy", ".picklegate.yaml")
    git(repo, "checkout", "-q", "-b", "pr")
    (repo / ".picklegate.yaml").write_text("version: 1\nallow:\n  posix: [system]\n")
    write(repo, "evil.pkl", EVIL)
    commit(repo, "sneak", ".picklegate.yaml", "evil.pkl")
    code, doc = scan_json(capsys, "--diff", f"{base}...HEAD")
    assert code == 1
    assert doc["policy"].startswith(".picklegate.yaml at ")
    assert base[:12] in doc["policy"]
    code, doc = scan_json(capsys, "--diff", f"{base}...HEAD", "--policy-from", "head")
    assert code == 0
    assert doc["policy"] == ".picklegate.yaml"


def test_diff_with_unknown_base_is_a_usage_error(repo, capsys):
    assert main(["scan", "--diff", "no-such-ref"]) == 2
    assert "not a commit" in capsys.readouterr().err


def test_lfs_pointer_in_ci_fails_unless_policy_warns(repo, capsys):
    base = git(repo, "rev-parse", "HEAD")
    write(repo, "big/model.pt", LFS_POINTER)
    commit(repo, "lfs", "big/model.pt")
    code, doc = scan_json(capsys, "--diff", base, "--policy-from", "head")
    assert code == 1
    [f] = doc["files"]
    assert f["format"] == "lfs-pointer"
    assert f["findings"][0]["kind"] == "lfs-pointer"
    assert "lfs" in f["findings"][0]["message"].lower()
    (repo / ".picklegate.yaml").write_text("version: 1\nlfs_pointers: warn\n")
    code, doc = scan_json(capsys, "--diff", base, "--policy-from", "head")
    assert code == 0
    assert doc["files"][0]["findings"][0]["severity"] == "warning"


def test_paths_in_git_modes_are_repo_relative_from_a_subdirectory(repo, capsys, monkeypatch):
    write(repo, "deep/er/x.pkl", EVIL)
    git(repo, "add", "deep/er/x.pkl")
    monkeypatch.chdir(repo / "deep")
    code, doc = scan_json(capsys, "--staged")
    assert code == 1 and doc["files"][0]["path"] == "deep/er/x.pkl"


def test_plain_git_pre_commit_hook_refuses_malicious_commit(repo):
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(f"#!/bin/sh\nexec '{BIN / 'picklegate'}' scan --staged\n")
    hook.chmod(0o755)
    write(repo, "evil.pkl", EVIL)
    git(repo, "add", "evil.pkl")
    with pytest.raises(subprocess.CalledProcessError) as refused:
        git(repo, "commit", "-q", "-m", "evil")
    assert "posix.system is a known code-execution gadget" in \
        refused.value.stdout + refused.value.stderr
    git(repo, "rm", "-q", "--cached", "evil.pkl")
    write(repo, "ok.pkl", clean())
    git(repo, "add", "ok.pkl")
    git(repo, "commit", "-q", "-m", "ok")            # passes the hook
    assert git(repo, "log", "-1", "--format=%s") == "ok"


def _run_action(repo: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    summary = tmp_path / "summary.md"
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "GITHUB_STEP_SUMMARY": str(summary), **env}
    return subprocess.run(("bash", str(REPO_ROOT / "action" / "scan.sh")), cwd=repo, env=full,
                          capture_output=True, text=True)


def test_action_script_annotates_and_writes_sarif(repo, tmp_path):
    base = git(repo, "rev-parse", "HEAD")
    write(repo, "m/evil.pkl", EVIL)
    commit(repo, "evil", "m/evil.pkl")
    done = _run_action(repo, tmp_path, PICKLEGATE_DIFF_BASE=base,
                       PICKLEGATE_SARIF=str(tmp_path / "out.sarif"))
    assert done.returncode == 1, done.stderr
    assert "::error file=m/evil.pkl" in done.stdout
    sarif = json.loads((tmp_path / "out.sarif").read_text())
    [result] = sarif["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "m/evil.pkl"
    assert "posix.system" in (tmp_path / "summary.md").read_text()


def test_action_script_passes_clean_change_and_needs_a_target(repo, tmp_path):
    base = git(repo, "rev-parse", "HEAD")
    write(repo, "m/ok.pkl", clean())
    commit(repo, "ok", "m/ok.pkl")
    assert _run_action(repo, tmp_path, PICKLEGATE_DIFF_BASE=base).returncode == 0
    assert _run_action(repo, tmp_path).returncode == 2


# ---------------------------------------------------------------------------------------------
# blobs by object id, directories as git sees them


def test_staged_colon_name_is_read_as_itself_not_as_an_index_stage(repo, capsys):
    """`:0:model.pkl` would be stage 0 of model.pkl: the old `rev:path` spelling read the
    benign model.pkl in place of the malicious file named 0:model.pkl."""
    write(repo, "model.pkl", clean())
    write(repo, "0:model.pkl", EVIL)
    git(repo, "add", "--", "model.pkl", "0:model.pkl")
    code, doc = scan_json(capsys, "--staged")
    assert code == 1
    by_path = {f["path"]: f for f in doc["files"]}
    assert by_path["model.pkl"]["status"] == "clean"
    assert [(x["module"], x["name"]) for x in by_path["0:model.pkl"]["findings"]] == [
        ("posix", "system")]


@pytest.mark.parametrize("name", ["new\nline.pkl", "sp ace.pkl", "a:b.pkl", "-dash.pkl"])
def test_staged_odd_paths_are_read_as_themselves(repo, capsys, name):
    write(repo, name, EVIL)
    git(repo, "add", "--", name)
    code, doc = scan_json(capsys, "--staged")
    assert code == 1
    [f] = doc["files"]
    assert f["path"] == name and f["findings"][0]["name"] == "system"


def test_submodule_named_like_a_model_is_a_note_not_an_error(repo, capsys, tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    git(inner, "init", "-q", "-b", "main")
    git(inner, "commit", "-q", "--allow-empty", "-m", "x")
    oid = git(inner, "rev-parse", "HEAD")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{oid},weights.pt")
    write(repo, "m.pkl", clean())
    git(repo, "add", "m.pkl")
    code = main(["scan", "--staged"])
    captured = capsys.readouterr()
    assert code == 0
    assert "picklegate: note: weights.pt: a submodule (gitlink)" in captured.err
    assert "1 file(s) scanned: 1 clean" in captured.out


def test_directory_scan_leaves_out_gitignored_virtualenv(repo, capsys):
    (repo / ".gitignore").write_text(".venv/\nbuild/\n")
    write(repo, ".venv/lib/site-packages/x/evil.pkl", EVIL)
    write(repo, "build/evil.pkl", EVIL)
    write(repo, "tracked.pkl", clean())
    git(repo, "add", "tracked.pkl")
    write(repo, "untracked/new.pkl", EVIL)
    code, doc = scan_json(capsys)
    assert code == 1
    assert [f["path"] for f in doc["files"]] == ["./tracked.pkl", "./untracked/new.pkl"]


def test_git_listing_warning_is_an_error(repo, capsys, monkeypatch):
    """git ls-files skips a directory it cannot open with only a warning on stderr."""
    from picklegate import gitio
    real = gitio.run_git_warned

    def warned(args, cwd=None, stdin=None):
        out, _ = real(args, cwd, stdin)
        return (out, ["warning: could not open directory 'x/': Permission denied"]) \
            if args[0] == "ls-files" else (out, [])
    monkeypatch.setattr(gitio, "run_git_warned", warned)
    write(repo, "m.pkl", clean())
    code = main(["scan", "."])
    err = capsys.readouterr().err
    assert code == 2
    assert "git ls-files: warning: could not open directory 'x/'" in err


@pytest.mark.parametrize("how", ["flag", "policy"])
def test_exclude_uses_the_rules_globs(repo, capsys, how):
    write(repo, "tests/fixtures/evil.pkl", EVIL)
    write(repo, "models/evil.pkl", EVIL)
    argv = ["--exclude", "tests/fixtures/**"] if how == "flag" else []
    if how == "policy":
        (repo / ".picklegate.yaml").write_text("version: 1\nexclude: ['tests/fixtures/**']\n")
    code, doc = scan_json(capsys, *argv, ".")
    assert code == 1
    assert [f["path"] for f in doc["files"]] == ["./models/evil.pkl"]


def test_one_cat_file_process_for_the_whole_staged_scan(repo, capsys, monkeypatch):
    for i in range(5):
        write(repo, f"m{i}.pkl", clean())
    git(repo, "add", ".")
    started: list[tuple[str, ...]] = []
    real = subprocess.Popen

    def popen(args, *a, **k):
        started.append(tuple(args))
        return real(args, *a, **k)
    monkeypatch.setattr(subprocess, "Popen", popen)
    code, doc = scan_json(capsys, "--staged")
    assert code == 0 and len(doc["files"]) == 5
    assert [a for a in started if a[:2] == ("git", "cat-file")] == [
        ("git", "cat-file", "--batch")]


_MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=False)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_kib(repo: Path, *argv: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run((sys.executable, "-c", _MEASURE, sys.executable, "-m", "picklegate",
                           "scan", *argv), cwd=repo, env=env, capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_large_staged_blob_is_streamed_in_bounded_memory(repo):
    """A 300 MiB staged blob: peak RSS of picklegate and its git children together stays
    within 100 MiB of an empty scan (the blob is spooled to a temporary file in chunks)."""
    size = 300 << 20
    with open(repo / "big.pt", "wb") as handle:        # protocol 4: one BINBYTES8 payload
        handle.write(b"\x80\x04\x8e" + size.to_bytes(8, "little"))
        handle.truncate(3 + 8 + size)
        handle.seek(0, 2)
        handle.write(b".")
    baseline = _peak_kib(repo, "--staged")
    git(repo, "add", "big.pt")
    peak = _peak_kib(repo, "--staged")
    assert peak - baseline < 100 * 1024, (baseline, peak)


def test_staged_blob_is_scanned_as_checkout_smudges_it(repo, capsys):
    """Paths with a filter (as Git LFS sets one) are read through git's smudge filter: what a
    checkout writes is what a loader reads. Here the filter turns getcwd into system."""
    git(repo, "config", "filter.swap.clean", "cat")
    git(repo, "config", "filter.swap.smudge", "sed s/getcwd/system/")
    write(repo, ".gitattributes", b"*.pkl filter=swap\n")
    write(repo, "model.pkl", global_call("posix", "getcwd"))
    git(repo, "add", ".gitattributes", "model.pkl")
    code, doc = scan_json(capsys, "--staged")
    assert code == 1
    [f] = doc["files"]
    assert [(x["module"], x["name"]) for x in f["findings"]] == [("posix", "system")]


def test_a_policy_that_is_not_utf8_at_the_base_is_a_policy_error(repo, capsys):
    write(repo, ".picklegate.yaml", b"version: 1\n# caf\xe9\n")
    base = commit(repo, "latin-1 policy", ".picklegate.yaml")
    write(repo, "model.pkl", clean())
    commit(repo, "model", "model.pkl")
    assert main(["scan", "--diff", f"{base}..HEAD"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "Traceback" not in err
