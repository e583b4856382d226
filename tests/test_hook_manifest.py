"""The pre-commit hook manifest: file selection, settings, validity, and the README."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from picklegate.sources import _NAME_RE, is_model_name

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / ".pre-commit-hooks.yaml"


def hooks() -> dict[str, dict[str, Any]]:
    return {hook["id"]: hook for hook in yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))}


def selects(pattern: str, path: str) -> bool:
    """pre-commit's own test: re.search of the `files` pattern on the repo-relative path."""
    return re.search(pattern, path) is not None


MODEL_PATHS = [
    "models/a.pkl", "a.pickle", "A.PT", "weights.pth", "pytorch_model.bin", "last.ckpt",
    "x.joblib", "x.joblib.gz", "x.jbl", "w.npy", "w.npz", "f.dill", "m.sav", "m.pkl3", "m.p",
    "handler.mar", "t.data", "archive/data.pkl", "m.dat", "m.tar", "m.zip", "m.pkl.bz2",
    "m.pkl.xz", "m.pkl.lzma", "m.joblib.z", "m.pkl.lz4", "m.pkl.zst", "M.PKL.GZ",
    "deep/dir with space/model.Pt", ".hidden.pkl",
]
OTHER_PATHS = [
    "a.py", "README.md", "data.pklx", "model.safetensors", "model.onnx", "pkl", "a.pkl/notes.txt",
    "x.gz", "config.yaml", "a.pkl.txt", "weights.h5", "a.pkl.gz.bak", "archive.7z", "model.gguf",
]


@pytest.mark.parametrize("path", MODEL_PATHS)
def test_files_pattern_selects_model_files(path: str) -> None:
    assert selects(hooks()["picklegate"]["files"], path)


@pytest.mark.parametrize("path", OTHER_PATHS)
def test_files_pattern_skips_other_files(path: str) -> None:
    assert not selects(hooks()["picklegate"]["files"], path)


def test_files_pattern_is_the_directory_walk_pattern() -> None:
    """The hook and `picklegate scan DIR` pick the same files: one list in sources.py."""
    assert hooks()["picklegate"]["files"] == _NAME_RE.pattern
    for path in MODEL_PATHS:
        assert is_model_name(path)
    for path in OTHER_PATHS:
        assert not is_model_name(path)


def test_picklegate_hook_settings() -> None:
    hook = hooks()["picklegate"]
    assert hook["entry"] == "picklegate scan"
    assert hook["language"] == "python"
    assert hook["require_serial"] is True
    assert "types" not in hook and "types_or" not in hook      # protocol 0 pickles are text
    assert hook.get("pass_filenames", True) is True
    assert str(hook["minimum_pre_commit_version"]) == "3.2.0"
    assert hook["stages"] == ["pre-commit", "pre-push", "manual"]
    assert hook["name"] and hook["description"]
    assert not hook.get("args")                                 # users' args are the only flags


POLICY_PATHS = [".picklegate.yaml", ".picklegate.yml", "picklegate.yaml", "sub/.picklegate.yaml",
                "picklegate-policy.yml", "policy.example.yaml", "docs/policy.example.yaml"]
NOT_POLICY_PATHS = ["picklegate.json", "my.picklegate.yaml", "policy.yaml", "xpolicy.example.yaml",
                    ".picklegate.yaml.bak", "model.pkl"]


def test_policy_hook_settings() -> None:
    hook = hooks()["picklegate-policy"]
    assert hook["entry"] == "picklegate policy check"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is True
    assert "types" not in hook
    assert all(selects(hook["files"], p) for p in POLICY_PATHS)
    assert not any(selects(hook["files"], p) for p in NOT_POLICY_PATHS)


def test_hook_ids_are_unique() -> None:
    ids = [hook["id"] for hook in yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))]
    assert len(ids) == len(set(ids)) and ids[0] == "picklegate"


def test_pre_commit_validates_the_manifest() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", str(MANIFEST)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("hook_id", sorted(hooks()))
def test_readme_mentions_every_hook(hook_id: str) -> None:
    readme = ROOT / "README.md"
    # In a config snippet (`id: picklegate`) or as inline code (`picklegate-policy`).
    text = readme.read_text(encoding="utf-8")
    hook = re.escape(hook_id)
    assert re.search(rf"\bid:\s*['\"]?{hook}['\"]?(\s|$)|`{hook}`", text, re.MULTILINE), \
        f"README.md does not mention the hook id {hook_id!r}"
