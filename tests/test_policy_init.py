"""`picklegate policy init` on a repository of real artefacts plus malicious pickles.

The artefacts are the real files under tests/fixtures/real (torch, scikit-learn, numpy);
the malicious ones are bytes built here and never loaded.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from picklegate.cli import main
from picklegate.findings import FindingKind, Status
from picklegate.policy import Entry, Origin, Policy, load_policy
from picklegate.policy_init import choose_presets
from picklegate.review import load_gadgets, review
from picklegate.scan import scan_bytes
from samples import global_call

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
REAL = Path(__file__).resolve().parent / "fixtures" / "real"
BENIGN = {
    "models/torch/module_sd.pt": "torch_module_sd.pt",
    "models/torch/nested.pt": "torch_nested.pt",
    "models/sklearn/pipeline.joblib": "sklearn_pipeline.joblib",
    "models/sklearn/logreg.joblib.gz": "sklearn_logreg.joblib.gz",
    "models/numpy/object.npy": "numpy_object.npy",
    "models/numpy/arrays.npz": "numpy_arrays.npz",
}
# A benign pickle of a class no preset knows (protocol 2: GLOBAL, EMPTY_TUPLE, NEWOBJ, STOP).
CUSTOM = b"\x80\x02cmycompany_models.layers\nDense\n)\x81."
EVIL = {
    "models/evil.pkl": global_call("posix", "system"),
    # A gadget through STACK_GLOBAL at protocol 4 (the memoised operands are resolved).
    "data/sneaky.pt": (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94"
                       b"\x8c\x07getattr\x94\x93\x94)R."),
}
TODAY = dt.date.today()


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(("git", *args), cwd=repo, env=env, capture_output=True, check=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(tmp_path))
    git(root, "init", "-q")
    for target, fixture in BENIGN.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL / fixture, root / target)
    (root / "models/custom.pkl").write_bytes(CUSTOM)
    for target, data in EVIL.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        (root / target).write_bytes(data)
    (root / ".gitignore").write_text("ignored/\n")
    (root / "ignored").mkdir()
    (root / "ignored/also_evil.pkl").write_bytes(global_call("os", "system"))
    monkeypatch.chdir(root)
    return root


def init(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", "init", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_policy_passes_benign_files_fails_malicious_ones_and_allows_no_gadget(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = init(capsys)
    assert code == 1                            # gadgets: a reviewer has to look
    assert "2 known gadget(s) in 2 file(s) were NOT allowed" in err
    text = (repo / ".picklegate.yaml").read_text()
    policy = load_policy(repo / ".picklegate.yaml")
    for target in [*BENIGN, "models/custom.pkl"]:
        result = scan_bytes((repo / target).read_bytes(), policy, target)
        assert (target, result.status, result.findings) == (target, Status.CLEAN, ())
    for target, dotted in (("models/evil.pkl", "posix.system"),
                           ("data/sneaky.pt", "builtins.getattr")):
        result = scan_bytes((repo / target).read_bytes(), policy, target)
        assert result.status is Status.VIOLATION
        assert [(f.kind, f"{f.module}.{f.name}") for f in result.findings] == [
            (FindingKind.GADGET, dotted)]
    # No gadget in what the file allows, and policy check has nothing to say.
    assert review(policy, TODAY, repo, load_gadgets()) == []
    document = yaml.safe_load(text)
    assert document["allow"] == {"mycompany_models.layers": ["Dense"]}
    assert "posix" not in yaml.safe_dump(document) and "getattr" not in yaml.safe_dump(document)
    assert main(["policy", "check"]) == 0
    assert "0 problem(s) in .picklegate.yaml" in capsys.readouterr().out
    assert "also_evil" not in text                  # gitignored: git's view of the work tree


def test_init_output_explains_itself(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init(capsys)
    text = (repo / ".picklegate.yaml").read_text()
    document = yaml.safe_load(text)
    assert document["version"] == 1
    # torch's preset also allows the collections globals builtins-safe would bring: not needed.
    assert document["extends"] == ["numpy", "sklearn", "torch"]
    assert "the smallest set that allows the most of those globals" in text
    assert "    - Dense  # models/custom.pkl\n" in text
    lines = text.splitlines()
    gadgets = lines[next(i for i, line in enumerate(lines) if "KNOWN GADGETS" in line):]
    assert all(line.startswith("#") for line in gadgets)
    joined = "\n".join(gadgets)
    assert "#   posix.system: " in joined and "#       in models/evil.pkl" in joined
    assert "#   builtins.getattr: " in joined and "#       in data/sneaky.pt" in joined


def test_init_on_benign_files_only_exits_0(repo: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = init(capsys, "models/torch", "models/numpy")
    assert code == 0
    document = yaml.safe_load((repo / ".picklegate.yaml").read_text())
    assert document["extends"] == ["numpy", "torch"]
    assert document["allow"] == {}


def test_existing_policy_is_not_overwritten_without_force(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".picklegate.yaml").write_text("version: 1\n# mine\n")
    code, out, err = init(capsys)
    assert (code, out) == (2, "")
    assert err == ("picklegate: error: .picklegate.yaml already exists; edit it, or pass "
                   "--force to replace it\n")
    assert (repo / ".picklegate.yaml").read_text() == "version: 1\n# mine\n"
    code, _, _ = init(capsys, "--force")
    assert code == 1 and "mycompany_models.layers" in (repo / ".picklegate.yaml").read_text()


def test_output_dash_prints_and_writes_nothing(repo: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = init(capsys, "--output", "-", "models/custom.pkl")
    assert code == 0
    assert yaml.safe_load(out)["allow"] == {"mycompany_models.layers": ["Dense"]}
    assert not (repo / ".picklegate.yaml").exists()


def test_files_with_findings_no_entry_fixes_are_listed_and_exit_1(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "models/truncated.pkl").write_bytes(CUSTOM[:-1])
    code, _, _ = init(capsys, "models/truncated.pkl", "models/custom.pkl")
    assert code == 1
    text = (repo / ".picklegate.yaml").read_text()
    assert "# STILL FAILING: findings no allow entry can fix" in text
    assert "#   models/truncated.pkl: malformed: " in text


@pytest.mark.parametrize("module,name", [("evil\nmodule", "x"), ("pkg.*", "x"), ("pkg", "*"),
                                         ("pkg", "a b")])
def test_globals_no_exact_entry_can_name_are_never_written(
        repo: Path, capsys: pytest.CaptureFixture[str], module: str, name: str) -> None:
    m, n = module.encode(), name.encode()      # STACK_GLOBAL takes any string
    (repo / "odd.pkl").write_bytes(b"\x80\x04\x8c" + bytes([len(m)]) + m + b"\x8c"
                                   + bytes([len(n)]) + n + b"\x93)R.")
    code, out, _ = init(capsys, "--output", "-", "odd.pkl")
    assert code == 1
    assert yaml.safe_load(out)["allow"] == {}
    assert "# NOT ALLOWED: globals no exact allow entry can name" in out


def entry(module: str, *names: str) -> Entry:
    return Entry(module, False, False, frozenset(names), Origin("test", 1, 1))


def preset(*entries: Entry) -> Policy:
    return Policy(source="test", allow=entries)


@pytest.mark.parametrize("presets,wanted,chosen", [
    # The one that covers everything beats two that cover it together.
    ({"a": preset(entry("m", "x")), "b": preset(entry("m", "y")),
      "c": preset(entry("m", "x", "y"))}, {("m", "x"), ("m", "y")}, ("c",)),
    # Two are needed; a third that adds nothing is left out.
    ({"a": preset(entry("m", "x")), "b": preset(entry("n", "y")),
      "c": preset(entry("m", "x"))}, {("m", "x"), ("n", "y")}, ("a", "b")),
    # A tie between equally small sets: the first by name.
    ({"b": preset(entry("m", "x")), "a": preset(entry("m", "x"))}, {("m", "x")}, ("a",)),
    # Nothing covered: no preset.
    ({"a": preset(entry("m", "x"))}, {("z", "z")}, ()),
], ids=["one-covers-all", "two-needed", "tie-by-name", "none"])
def test_choose_presets(presets: dict[str, Policy], wanted: set[tuple[str, str]],
                        chosen: tuple[str, ...]) -> None:
    assert choose_presets(wanted, presets) == chosen


def test_an_existing_yml_policy_is_not_shadowed_and_a_new_one_is_readable(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".picklegate.yml").write_text("version: 1\n")
    code, _, err = init(capsys)
    assert code == 2 and ".picklegate.yml already exists" in err
    assert not (repo / ".picklegate.yaml").exists()
    (repo / ".picklegate.yml").unlink()
    old = os.umask(0o022)
    try:
        init(capsys)
    finally:
        os.umask(old)
    assert (repo / ".picklegate.yaml").stat().st_mode & 0o777 == 0o644
