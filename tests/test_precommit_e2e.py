"""A real pre-commit run: this repository as a hook repo, used from a throwaway git repository.

pre-commit clones the hook repository at a commit and `pip install`s it into its own
environment (PyYAML comes from the package index). By default the hook repository is a
snapshot of this working tree (tracked files plus untracked, non-ignored ones) committed into a
temporary repository, so the test checks the code as it is about to be committed.
PICKLEGATE_E2E_SOURCE=head uses this repository itself at its HEAD commit instead.

Slow (one hook environment install, ~30-60 s): select or skip it with `-m e2e` / `-m "not e2e"`.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e          # needs git, like the project itself: no skip without it

ROOT = Path(__file__).resolve().parents[1]
GETCWD = f"{os.getcwd.__module__}.getcwd"
POLICY = "version: 1\nallow:\n  collections: [OrderedDict]\n"
TIMEOUT = 900


class _Getcwd:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.getcwd, ())


# Protocol 2: GLOBAL 'posix getcwd' (nt on Windows), EMPTY_TUPLE, REDUCE. Never loaded.
EVIL = pickle.dumps(_Getcwd(), protocol=2)
CLEAN = pickle.dumps({"weights": [0.5, 1.5], "epochs": 3}, protocol=2)


def git(*args: str, cwd: Path, env: dict[str, str],
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(("git", "-c", "commit.gpgsign=false", *args), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def isolated_env(tmp: Path) -> dict[str, str]:
    """No user or system git config, no templates (no stray hooks), a private pre-commit home."""
    (tmp / "templates").mkdir()
    (tmp / "gitconfig").write_text("", encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "PRE_COMMIT")) and k not in ("PYTHONPATH", "SKIP")}
    env.update({
        "PRE_COMMIT_HOME": str(tmp / "pre-commit-home"),
        "GIT_TEMPLATE_DIR": str(tmp / "templates"),
        "GIT_CONFIG_GLOBAL": str(tmp / "gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "picklegate tests", "GIT_AUTHOR_EMAIL": "tests@example.invalid",
        "GIT_COMMITTER_NAME": "picklegate tests", "GIT_COMMITTER_EMAIL": "tests@example.invalid",
        "NO_COLOR": "1",
    })
    return env


def snapshot(dest: Path, env: dict[str, str]) -> tuple[str, str]:
    """This working tree (as git sees it, .gitignore applied) committed into a new repository."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT,
                 env=env).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git("init", "-q", cwd=dest, env=env)
    git("add", "-A", cwd=dest, env=env)
    git("commit", "-q", "--no-gpg-sign", "-m", "snapshot", cwd=dest, env=env)
    return str(dest), git("rev-parse", "HEAD", cwd=dest, env=env).stdout.strip()


def hook_source(tmp: Path, env: dict[str, str]) -> tuple[str, str]:
    if os.environ.get("PICKLEGATE_E2E_SOURCE") == "head":
        return str(ROOT), git("rev-parse", "HEAD", cwd=ROOT, env=env).stdout.strip()
    (tmp / "hook-repo").mkdir()
    return snapshot(tmp / "hook-repo", env)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A git repository using the picklegate hook, with a policy, and the hook installed."""
    tmp = tmp_path_factory.mktemp("e2e")
    env = isolated_env(tmp)
    repo_url, rev = hook_source(tmp, env)
    work = tmp / "project"
    work.mkdir()
    git("init", "-q", cwd=work, env=env)
    (work / ".pre-commit-config.yaml").write_text(
        f"repos:\n-   repo: {repo_url}\n    rev: {rev}\n    hooks:\n    -   id: picklegate\n"
        f"    -   id: picklegate-policy\n",
        encoding="utf-8")
    (work / ".picklegate.yaml").write_text(POLICY, encoding="utf-8")
    proc = subprocess.run((sys.executable, "-m", "pre_commit", "install"), cwd=work, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    git("add", ".pre-commit-config.yaml", ".picklegate.yaml", cwd=work, env=env)
    yield work, env


def commit(work: Path, env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    git("add", "--", *files, cwd=work, env=env)
    return git("commit", "--no-gpg-sign", "-m", f"add {' '.join(files)}", cwd=work, env=env,
               check=False)


def commits(work: Path, env: dict[str, str]) -> int:
    proc = git("rev-list", "--count", "HEAD", cwd=work, env=env, check=False)
    return int(proc.stdout) if proc.returncode == 0 else 0


def test_clean_pickle_is_committed(project: tuple[Path, dict[str, str]]) -> None:
    work, env = project
    (work / "models").mkdir()
    (work / "models" / "clean.pkl").write_bytes(CLEAN)
    before = commits(work, env)
    proc = commit(work, env, "models/clean.pkl")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "picklegate" in output and "Passed" in output          # the hook really ran
    assert commits(work, env) == before + 1


def test_malicious_pickle_is_refused(project: tuple[Path, dict[str, str]]) -> None:
    work, env = project
    (work / "models").mkdir(exist_ok=True)
    (work / "models" / "evil.pkl").write_bytes(EVIL)
    before = commits(work, env)
    proc = commit(work, env, "models/evil.pkl")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Failed" in output
    assert f"models/evil.pkl: 1 problem\n  offset 2: {GETCWD} is a known code-execution gadget" \
        in output
    assert "exit code: 1" in output
    assert commits(work, env) == before


def test_policy_hook_refuses_a_gadget_in_the_policy(project: tuple[Path, dict[str, str]]) -> None:
    work, env = project
    (work / ".picklegate.yaml").write_text(POLICY + "  builtins: [eval, dict]\n",
                                           encoding="utf-8")
    before = commits(work, env)
    proc = commit(work, env, ".picklegate.yaml")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "picklegate policy is valid" in output and "Failed" in output
    assert (".picklegate.yaml:4:3: gadget: allow entry builtins: [dict, eval] admits 1 known "
            "code-execution gadget: builtins.eval") in output
    assert commits(work, env) == before
