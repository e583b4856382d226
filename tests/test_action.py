"""The GitHub Action: action.yml and the README's workflow are valid for GitHub, the Action
installs picklegate into its own virtual environment, and action/scan.sh scans once.

action/scan.sh against real git repositories is tested in test_gitio.py; here a stand-in
``picklegate`` on PATH records how the script calls it. The slow end-to-end test runs the
Action's own step scripts (from action.yml) in a throwaway repository.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from samples import clean, global_call

ROOT = Path(__file__).resolve().parents[1]
ACTION = ROOT / "action.yml"
SCRIPT = ROOT / "action" / "scan.sh"
EVIL = global_call("posix", "system")


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with a schema it ships (no network)."""
    return subprocess.run((sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema,
                           str(path)), capture_output=True, text=True, timeout=120, check=False)


def action() -> dict:
    return yaml.safe_load(ACTION.read_text(encoding="utf-8"))


def steps() -> dict[str, dict]:
    return {step["name"]: step for step in action()["runs"]["steps"]}


def readme_workflow() -> str:
    """The README's ```yaml block that is a workflow (it has ``jobs:``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    [workflow] = [b for b in blocks if re.search(r"^jobs:", b, re.MULTILINE)]
    return workflow


# ---------------------------------------------------------------------------------------------
# metadata and workflow validity


def test_action_yml_is_valid_action_metadata():
    done = check_jsonschema("vendor.github-actions", ACTION)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_rejects_broken_metadata(tmp_path: Path):
    """The check above can fail: an unquoted ': ' in a description (the old bug), and a
    composite step without ``shell``, are both rejected."""
    text = ACTION.read_text(encoding="utf-8")
    unquoted = tmp_path / "unquoted.yml"
    unquoted.write_text(text.replace('description: "Policy file (default: .picklegate.yaml',
                                     'description: Policy file (default: .picklegate.yaml')
                        .replace('built-in default)."', "built-in default)."), encoding="utf-8")
    no_shell = tmp_path / "no-shell.yml"
    no_shell.write_text(text.replace("      shell: bash\n", "", 1), encoding="utf-8")
    for broken in (unquoted, no_shell):
        assert broken.read_text(encoding="utf-8") != text
        assert check_jsonschema("vendor.github-actions", broken).returncode == 1, broken.name


def test_readme_workflow_is_a_valid_workflow(tmp_path: Path):
    path = tmp_path / "picklegate.yml"
    path.write_text(readme_workflow(), encoding="utf-8")
    done = check_jsonschema("vendor.github-workflows", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_workflow_uses_the_actions_inputs():
    workflow = yaml.safe_load(readme_workflow())
    [ours] = [s for s in workflow["jobs"]["scan"]["steps"]
              if s.get("uses", "").split("@")[0].endswith("/picklegate")]
    assert set(ours["with"]) <= set(action()["inputs"])
    upload = next(s for s in workflow["jobs"]["scan"]["steps"]
                  if s.get("uses", "").startswith("github/codeql-action/upload-sarif"))
    assert upload["with"]["sarif_file"] == ours["with"]["sarif-output"]


# ---------------------------------------------------------------------------------------------
# the steps


def test_install_step_uses_its_own_virtual_environment():
    script = steps()["Install picklegate"]["run"]
    assert 'python3 -m venv "$RUNNER_TEMP/picklegate-venv"' in script
    # Every pip runs inside that venv: a system-wide `pip install` is refused by PEP 668.
    pips = [line for line in script.splitlines() if "pip" in line]
    assert pips and all(line.strip().startswith('"$RUNNER_TEMP/picklegate-venv/bin/python" -m pip')
                        for line in pips)


def test_scan_step_runs_the_script_from_the_venv_with_inputs_in_env_only():
    step = steps()["Scan model files"]
    assert step["run"] == ('PATH="$RUNNER_TEMP/picklegate-venv/bin:$PATH" '
                           'bash "$GITHUB_ACTION_PATH/action/scan.sh"')
    assert "${{" not in step["run"]                        # no script injection
    used = " ".join(str(v) for v in step["env"].values())
    assert all(f"inputs.{name}" in used for name in action()["inputs"])


# ---------------------------------------------------------------------------------------------
# action/scan.sh: one scan


def fake_picklegate(folder: Path, status: int) -> Path:
    """A `picklegate` that records its arguments, one per line, and exits with ``status``."""
    log = folder / "calls.log"
    exe = folder / "picklegate"
    exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{log}"\necho === >> "{log}"\n'
                   f"exit {status}\n", encoding="utf-8")
    exe.chmod(0o755)
    return log


def run_script(tmp_path: Path, status: int, **env: str) -> tuple[int, list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = fake_picklegate(bin_dir, status)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGATE_")}
    done = subprocess.run(("bash", str(SCRIPT)), cwd=tmp_path, capture_output=True, text=True,
                          env={**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                               **env}, timeout=60, check=False)
    text = log.read_text(encoding="utf-8") if log.exists() else ""
    calls = [c.strip("\n").split("\n") for c in text.split("===\n") if c.strip()]
    return done.returncode, calls


@pytest.mark.parametrize("env, argv", [
    ({"PICKLEGATE_DIFF_BASE": "abc", "PICKLEGATE_SARIF": "out dir/p.sarif"},
     ["scan", "--format", "github", "--output", "sarif=out dir/p.sarif",
      "--diff", "abc...HEAD", "--policy-from", "base"]),
    ({"PICKLEGATE_PATHS": "models extra/x.pt", "PICKLEGATE_FORMAT": "text",
      "PICKLEGATE_POLICY": "p.yaml"},
     ["scan", "--format", "text", "--policy", "p.yaml", "--", "models", "extra/x.pt"]),
    ({"PICKLEGATE_DIFF_BASE": "abc", "PICKLEGATE_POLICY_FROM": "head",
      "PICKLEGATE_SARIF": "p.sarif", "PICKLEGATE_FORMAT": "json"},
     ["scan", "--format", "json", "--output", "sarif=p.sarif", "--diff", "abc...HEAD",
      "--policy-from", "head"]),
], ids=["diff-with-sarif", "paths", "policy-from-head"])
@pytest.mark.parametrize("status", [0, 1, 2])
def test_script_scans_once_and_passes_the_exit_status_on(tmp_path, env, argv, status):
    code, calls = run_script(tmp_path, status, **env)
    assert calls == [argv]
    assert code == status


def test_script_without_a_target_is_a_usage_error(tmp_path):
    code, calls = run_script(tmp_path, 0)
    assert (code, calls) == (2, [])


# ---------------------------------------------------------------------------------------------
# end to end: the Action's own step scripts, in a throwaway repository


def _snapshot(dest: Path) -> None:
    """This working tree as git sees it (tracked and untracked, not ignored)."""
    listed = subprocess.run(("git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"), cwd=ROOT, capture_output=True, check=True,
                            timeout=60).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file() and not (ROOT / name).is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(("git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args),
                          cwd=repo, env=env, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


@pytest.mark.e2e
def test_action_steps_install_into_a_venv_and_scan_once(tmp_path: Path):
    action_path = tmp_path / "action"
    _snapshot(action_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "ok.pkl").write_bytes(clean())
    _git(repo, "add", "ok.pkl")
    _git(repo, "commit", "-q", "-m", "base")
    base = _git(repo, "rev-parse", "HEAD")
    (repo / "m").mkdir()
    (repo / "m" / "evil.pkl").write_bytes(EVIL)
    _git(repo, "add", "m/evil.pkl")
    _git(repo, "commit", "-q", "-m", "evil")
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    # No picklegate and no dev venv on PATH: the Action must bring its own.
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and not (Path(p) / "picklegate").exists())
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PICKLEGATE_")}
    env.update({"PATH": path, "RUNNER_TEMP": str(runner_temp),
                "GITHUB_ACTION_PATH": str(action_path),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
                "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"})
    install = subprocess.run(("bash", "-e", "-c", steps()["Install picklegate"]["run"]),
                             cwd=repo, env=env, capture_output=True, text=True, timeout=900,
                             check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    assert (runner_temp / "picklegate-venv" / "bin" / "picklegate").is_file()
    scan_env = {**env, "PICKLEGATE_DIFF_BASE": base, "PICKLEGATE_FORMAT": "github",
                "PICKLEGATE_SARIF": "picklegate.sarif", "PICKLEGATE_POLICY_FROM": "base",
                "PICKLEGATE_POLICY": "", "PICKLEGATE_PATHS": ""}
    scan = subprocess.run(("bash", "-e", "-c", steps()["Scan model files"]["run"]), cwd=repo,
                          env=scan_env, capture_output=True, text=True, timeout=300, check=False)
    assert scan.returncode == 1, scan.stdout + scan.stderr
    assert scan.stdout.startswith("::error file=m/evil.pkl,line=1,title=picklegate (gadget)")
    sarif = (repo / "picklegate.sarif").read_text(encoding="utf-8")
    assert '"uri": "m/evil.pkl"' in sarif and "posix.system" in sarif
    assert "posix.system" in (tmp_path / "summary.md").read_text(encoding="utf-8")
