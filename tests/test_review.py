"""`picklegate policy check`: gadgets admitted by allow entries, expiry, stale approvals."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from picklegate.cli import main
from picklegate.policy import load_policy
from picklegate.review import Gadget, ProblemKind, admitted, gadgets_named, load_gadgets, review

TODAY = dt.date(2026, 11, 23)


def check(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\n" + body)
    return [str(p) for p in review(load_policy(path), TODAY, tmp_path)]


@pytest.mark.parametrize(("body", "expected"), [
    ("allow:\n  builtins: [eval, dict]\n", ["builtins.eval"]),
    ("allow:\n  builtins: \"*\"\n", ["builtins.eval", "builtins.exec", "builtins.getattr"]),
    ("allow:\n  os: [getcwd]\n", ["os.getcwd"]),                 # os is a gadget module
    ("allow:\n  \"numpy.*\": \"*\"\n", ["numpy.load"]),
    ("allow:\n  subprocess: [Popen]\n", ["subprocess.Popen"]),
    ("rules:\n  - paths: [\"x/**\"]\n    allow: {posix: [system]}\n", ["posix.system"]),
    # a dotted (protocol 4) name reaches its first part: eval.__call__ is eval
    ("allow:\n  builtins: [\"eval.__call__\"]\n", ["builtins.eval.__call__"]),
])
def test_allow_entries_that_admit_gadgets_are_flagged(tmp_path, body, expected):
    problems = check(tmp_path, body)
    assert len(problems) == 1                        # one warning for the one entry
    head, *details = problems[0].splitlines()
    assert head.startswith(f"{tmp_path / 'policy.yaml'}:")
    assert ": gadget: allow entry " in head and " known code-execution gadget" in head
    listed = {d.strip() for line in details for d in line.split(":")[0].split(",")}
    assert set(expected) <= listed
    assert all(line.startswith("    ") for line in details)


def test_a_wildcard_admitting_many_gadgets_is_one_warning_listing_them_all(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text('version: 1\nallow:\n  builtins: "*"\n  os: [getcwd]\n')
    problems = review(load_policy(path), TODAY, tmp_path)
    assert [(p.kind, p.origin.line) for p in problems] == [(ProblemKind.GADGET, 3),
                                                          (ProblemKind.GADGET, 4)]
    builtins_problem = problems[0]
    expected = sorted(f"builtins.{n}" for g in load_gadgets() if g.base == "builtins"
                      for n in g.names if "." not in n)
    listed = sorted(d.strip() for line in builtins_problem.details
                    for d in line.split(":")[0].split(","))
    assert listed == expected and len(expected) > 20
    assert f"admits {len(expected)} known code-execution gadgets: " in builtins_problem.message
    assert f"and {len(expected) - 5} more" in builtins_problem.message
    assert str(problems[1]).splitlines()[0].endswith(
        "gadget: allow entry os: [getcwd] admits 1 known code-execution gadget: os.getcwd. "
        "Remove it, or list only the exact harmless names")


@pytest.mark.parametrize("body", [
    "allow:\n  collections: [OrderedDict]\n  torch._utils: [_rebuild_tensor_v2]\n",
    "extends: [builtins-safe, torch, numpy, sklearn]\n",
    "allow:\n  builtins: [eval, dict]\ndeny:\n  builtins: [eval]\n",    # deny wins: none admitted
])
def test_harmless_policies_have_no_problems(tmp_path, body):
    assert check(tmp_path, body) == []


def test_expired_entries_and_stale_approvals(tmp_path):
    (tmp_path / "present.pkl").write_bytes(b"x")
    body = ("allow:\n  collections:\n    - {name: OrderedDict, expires: 2026-01-01}\n"
            "approved:\n"
            f"  - path: present.pkl\n    sha256: {'0' * 64}\n    reason: r\n"
            "    expires: 2026-11-22\n"
            f"  - path: gone.pkl\n    sha256: {'1' * 64}\n    reason: r\n")
    problems = check(tmp_path, body)
    assert [p.split(": ", 2)[1] for p in problems] == ["expired", "expired", "stale-approval"]
    assert "expired: allow entry collections expired on 2026-01-01; renew it" in problems[0]
    assert "expired: approval of present.pkl expired on 2026-11-22" in problems[1]
    assert "stale-approval: approval of gone.pkl: no such file" in problems[2]
    assert "gadget" not in "\n".join(problems)


def test_whole_module_and_subtree_gadgets():
    whole = Gadget("os", frozenset(), "runs commands", ())
    subtree = Gadget("importlib.*", frozenset(), "imports code", ())
    named = Gadget("builtins", frozenset({"eval"}), "evaluates code", ())
    policy_entry = load_policy_entry("importlib.util", ["find_spec"])
    assert admitted(policy_entry, subtree) == ["importlib.util.find_spec"]
    assert admitted(load_policy_entry("os", ["getcwd"]), whole) == ["os.getcwd"]
    assert admitted(load_policy_entry("builtins", ["dict"]), named) == []
    assert admitted(load_policy_entry("builtins", ["*"]), named) == ["builtins.eval"]


def load_policy_entry(module: str, names: list[str]):
    from picklegate.policy import Entry, Origin
    return Entry(module, False, "*" in names, frozenset(n for n in names if n != "*"),
                 Origin("p", 1, 1))


@pytest.mark.parametrize(("module", "name", "gadget"), [
    ("posix", "system", True), ("builtins", "eval", True), ("numpy", "load", True),
    ("collections", "OrderedDict", False), ("builtins", "dict", False),
])
def test_gadgets_named(module, name, gadget):
    assert bool(gadgets_named(module, name, load_gadgets())) is gadget


def test_gadget_list_is_curated_data():
    gadgets = load_gadgets()
    assert {"builtins", "os", "posix", "subprocess", "runpy"} <= {g.base for g in gadgets}
    assert all(g.why for g in gadgets)


def test_cli_policy_check_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.yaml").write_text("version: 1\nallow:\n  collections: [OrderedDict]\n")
    (tmp_path / "bad.yaml").write_text("version: 1\nallow:\n  builtins: [getattr]\n")
    (tmp_path / "broken.yaml").write_text("version: 1\nallow: [x]\n")
    assert main(["policy", "check", "good.yaml"]) == 0
    assert main(["policy", "check", "bad.yaml"]) == 1
    out = capsys.readouterr().out
    assert ("bad.yaml:3:3: gadget: allow entry builtins: [getattr] admits 1 known "
            "code-execution gadget: builtins.getattr") in out
    assert main(["policy", "check", "broken.yaml"]) == 2
    assert "broken.yaml:2:8:" in capsys.readouterr().err


def test_a_dotted_name_through_a_gadget_is_that_gadget():
    """policy init asks gadgets_named before it writes an allow entry: a protocol-4 name such
    as eval.__call__ must never be written (it imports eval)."""
    gadgets = load_gadgets()
    assert gadgets_named("builtins", "eval.__call__", gadgets)
    assert gadgets_named("posix", "system.__self__", gadgets)
    assert not gadgets_named("builtins", "len.__doc__", gadgets)
