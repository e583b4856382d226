"""`picklegate approve`: the entry is pinned by sha256 and the rest of the policy is kept byte
for byte (comments, order, quoting, CRLF). Samples are bytes; nothing is loaded."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

import picklegate.approve as approve_module
from picklegate.approve import NewApproval, approve_text, file_sha256
from picklegate.cli import main
from samples import global_call

EVIL = global_call("posix", "system")
POLICY = """\
# Team policy. Owners: @ml-platform
version: 1
extends: [builtins-safe, torch]   # the presets we use

allow:
  collections: [OrderedDict]      # for state_dicts

# Files reviewed one by one.
approved:
  # the old tokenizer, see SEC-1
  - path: models/old.pkl
    sha256: {old}
    reason: "vetted by security, ticket SEC-1"   # keep this comment
    owner: "@sec"
  - {{path: models/flow.pkl, sha256: {old}, reason: flow style}}

# Vendored fixtures are not ours to scan.
exclude: ["tests/fixtures/**"]
"""
OLD = "0" * 64


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "models/evil.pkl").write_bytes(EVIL)
    (root / "models/old.pkl").write_bytes(EVIL + b"\n")
    (root / "models/flow.pkl").write_bytes(EVIL + b"\n\n")
    (root / ".picklegate.yaml").write_text(POLICY.format(old=OLD))
    monkeypatch.chdir(root)
    return root


def approve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["approve", *argv])
    return code, capsys.readouterr().err


def inserted(old: str, new: str) -> str:
    """What was inserted into ``old`` at one place to give ``new``; fails if anything else
    changed (the text outside the insertion is compared byte for byte)."""
    i = 0
    while i < len(old) and old[i] == new[i]:
        i += 1
    j = 0
    while j < len(old) - i and old[len(old) - 1 - j] == new[len(new) - 1 - j]:
        j += 1
    assert i + j == len(old), "text outside the new entry changed"
    return new[i:len(new) - j]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_new_approval_round_trip(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (repo / ".picklegate.yaml").read_text()
    assert main(["scan", "models/evil.pkl"]) == 1
    code, err = approve(capsys, "models/evil.pkl", "--reason", "red-team sample: SEC-9",
                        "--owner", "@sec", "--expires", "2099-12-31")
    assert code == 0
    assert "added the approval of models/evil.pkl" in err
    after = (repo / ".picklegate.yaml").read_text()
    block = inserted(before, after)
    assert block == (f"  - path: models/evil.pkl\n    sha256: {sha(EVIL)}\n"
                     '    reason: "red-team sample: SEC-9"\n    owner: "@sec"\n'
                     "    expires: 2099-12-31\n")
    assert after.index(block) + len(block) == after.index("\n# Vendored fixtures")  # list end
    capsys.readouterr()
    assert main(["scan", "models/evil.pkl"]) == 0               # the approved file passes
    (repo / "models/evil.pkl").write_bytes(EVIL[:-1] + b"\x00" + EVIL[-1:])
    assert main(["scan", "models/evil.pkl"]) == 1               # one byte more: it fails
    assert "does not apply: the file's sha256 is" in capsys.readouterr().out


def test_update_changes_only_the_values_of_that_entry(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (repo / ".picklegate.yaml").read_text()
    code, err = approve(capsys, "models/old.pkl", "--reason", "re-reviewed", "--owner", "@sec2",
                        "--expires", "2099-01-01")
    assert code == 0 and "updated the approval of models/old.pkl" in err
    after = (repo / ".picklegate.yaml").read_text()
    new_sha = sha(EVIL + b"\n")
    old_entry = (f"    sha256: {OLD}\n"
                 '    reason: "vetted by security, ticket SEC-1"   # keep this comment\n'
                 '    owner: "@sec"\n')
    new_entry = (f"    sha256: {new_sha}\n"
                 "    reason: re-reviewed   # keep this comment\n"
                 '    owner: "@sec2"\n'
                 "    expires: 2099-01-01\n")        # the missing key, under the last one
    assert before.count(old_entry) == 1
    assert after == before.replace(old_entry, new_entry)
    capsys.readouterr()
    assert main(["scan", "models/old.pkl"]) == 0


def test_update_of_a_flow_style_entry(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (repo / ".picklegate.yaml").read_text()
    assert approve(capsys, "models/flow.pkl", "--reason", "ok", "--owner", "me")[0] == 0
    after = (repo / ".picklegate.yaml").read_text()
    new_sha = sha(EVIL + b"\n\n")
    assert after == before.replace(
        f"  - {{path: models/flow.pkl, sha256: {OLD}, reason: flow style}}",
        f"  - {{path: models/flow.pkl, sha256: {new_sha}, reason: ok, owner: me}}")


@pytest.mark.parametrize("policy,expected", [
    ("version: 1\n", "version: 1\n\napproved:\n  - path: models/evil.pkl\n"),
    ("version: 1", "version: 1\n\napproved:\n  - path: models/evil.pkl\n"),
    ("version: 1\napproved: []  # none yet\nexclude: []\n",
     "version: 1\napproved:   # none yet\n  - path: models/evil.pkl\n"),
    ("version: 1\napproved:\n- path: a.pkl\n  sha256: " + OLD + "\n  reason: r\n",
     "  reason: r\n- path: models/evil.pkl\n  sha256: "),
    ("version: 1\napproved: []\n", "version: 1\napproved:\n  - path: models/evil.pkl\n"),
], ids=["no-key", "no-final-newline", "empty-flow-with-comment", "indentless", "empty-flow"])
def test_layouts(repo: Path, capsys: pytest.CaptureFixture[str], policy: str,
                 expected: str) -> None:
    (repo / ".picklegate.yaml").write_text(policy)
    assert approve(capsys, "models/evil.pkl", "--reason", "r", "--owner", "o")[0] == 0
    after = (repo / ".picklegate.yaml").read_text()
    assert expected in after
    approved = yaml.safe_load(after)["approved"]
    assert approved[-1] == {"path": "models/evil.pkl", "sha256": sha(EVIL), "reason": "r",
                            "owner": "o"}


def test_crlf_line_ends_are_kept(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = POLICY.format(old=OLD).replace("\n", "\r\n").encode()
    (repo / ".picklegate.yaml").write_bytes(before)
    assert approve(capsys, "models/evil.pkl", "--reason", "r", "--owner", "o")[0] == 0
    after = (repo / ".picklegate.yaml").read_bytes()
    block = inserted(before.decode(), after.decode())
    assert block.count("\r\n") == 4 and block.count("\n") == 4


@pytest.mark.parametrize("argv,policy,message", [
    (["models/evil.pkl", "--reason", "r", "--owner", "o"], None,
     "no .picklegate.yaml at "),
    (["models/evil.pkl", "--reason", "r", "--owner", "o"],
     "version: 1\napproved: [{path: a, sha256: " + OLD + ", reason: r}]\n",
     "approved: is written as a flow list"),
    (["models/evil.pkl", "--reason", "r", "--owner", "o"], "version: 1\nalow: {}\n",
     ".picklegate.yaml:2:1: unknown key 'alow' in the policy; did you mean 'allow'?"),
    (["models/missing.pkl", "--reason", "r", "--owner", "o"], "version: 1\n",
     "cannot read models/missing.pkl"),
    (["models/evil.pkl", "--reason", "r", "--owner", "o", "--expires", "2001-01-01"],
     "version: 1\n", "2001-01-01 is in the past"),
    (["models/evil.pkl", "--reason", "r", "--owner", "o", "--expires", "31.12.2099"],
     "version: 1\n", "'31.12.2099' is not a date written YYYY-MM-DD"),
    (["models/evil.pkl", "--reason", " ", "--owner", "o"], "version: 1\n",
     "--reason must be readable text"),
    (["models/evil.pkl", "--owner", "o"], "version: 1\n",
     "the following arguments are required: --reason"),
], ids=["no-policy", "flow-list", "invalid-policy", "missing-file", "past-date", "bad-date",
        "blank-reason", "no-reason"])
def test_errors_exit_2_and_write_nothing(repo: Path, capsys: pytest.CaptureFixture[str],
                                         argv: list[str], policy: str | None,
                                         message: str) -> None:
    path = repo / ".picklegate.yaml"
    if policy is None:
        path.unlink()
    else:
        path.write_text(policy)
    code, err = approve(capsys, *argv)
    assert code == 2
    assert err.startswith("picklegate: error: ") and message in err
    assert (path.read_text() if policy is not None else None) == policy
    assert not list(repo.glob(".picklegate-*"))         # no temporary file left behind


def test_hash_is_read_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * 40
    (tmp_path / "f.bin").write_bytes(data)
    reads: list[int] = []
    real_open = open

    class Recorder:
        def __init__(self, path: str, mode: str) -> None:
            self.handle = real_open(path, mode)

        def __enter__(self) -> Recorder:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def read(self, size: int = -1) -> bytes:
            reads.append(size)
            return self.handle.read(size)

    monkeypatch.setattr(approve_module, "CHUNK", 1000)
    monkeypatch.setattr(approve_module, "open", Recorder, raising=False)
    assert file_sha256(str(tmp_path / "f.bin")) == sha(data)
    assert reads == [1000] * 12                   # 11 chunks (the last one short), then b""


def test_approve_text_refuses_a_flow_style_policy() -> None:
    from picklegate.errors import UsageError
    with pytest.raises(UsageError, match="block mapping"):
        approve_text("{version: 1}\n", NewApproval("a", OLD, "r"))
