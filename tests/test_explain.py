"""`picklegate explain`: where each import is, how the pickle uses it, what decides it, its risk.

Malicious samples are bytes built here and never loaded; the real artefacts are benign.
"""
from __future__ import annotations

import datetime as dt
import json
import struct
from pathlib import Path

import pytest

from picklegate.cli import main
from picklegate.explain import explain_bytes
from picklegate.findings import FindingKind
from picklegate.policy import default_policy, load_policy
from picklegate.report import json as json_report
from picklegate.report import text
from report.test_sarif import check_golden

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"
TODAY = dt.date(2026, 6, 1)
CANARY = "echo picklegate-canary"


def unicode(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


# posix.system('echo picklegate-canary'): GLOBAL, BINUNICODE, TUPLE1, REDUCE, STOP
EVIL = b"\x80\x02cposix\nsystem\n" + unicode(CANARY) + b"\x85R."
EVIL_REDUCE_OFFSET = len(EVIL) - 2


def explain(data: bytes, path: str, policy=None, **kw):
    return explain_bytes(data, policy or default_policy(), path, today=TODAY, **kw)


CASES = {
    "explain-evil-reduce": (lambda: EVIL, "evil.pkl"),
    "explain-torch": (lambda: (FIXTURES / "torch_module_sd.pt").read_bytes(), "model.pt"),
    "explain-joblib": (lambda: (FIXTURES / "sklearn_logreg.joblib").read_bytes(),
                       "model.joblib"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_explain_goldens(name):
    make, path = CASES[name]
    explanation = explain(make(), path)
    check_golden(f"{name}.txt", text.render_explain(explanation))
    check_golden(f"{name}.json", json_report.render_explain(explanation))


def test_malicious_reduce_shows_the_call_with_its_literal_argument():
    [x] = explain(EVIL, "evil.pkl").imports
    assert (x.dotted, x.member, x.offset, x.opcode) == ("posix.system", None, 2, "GLOBAL")
    assert x.uses == (f"posix.system('{CANARY}') called by REDUCE at offset "
                      f"{EVIL_REDUCE_OFFSET}",)
    assert x.kind is FindingKind.GADGET and x.verdict == "not-allowed"
    assert x.risk and "os.system" in x.risk and x.references


def test_joblib_classes_states_and_arguments():
    by_name = {x.dotted: x for x in explain(
        (FIXTURES / "sklearn_logreg.joblib").read_bytes(), "m.joblib").imports}
    [use] = by_name["sklearn.linear_model._logistic.LogisticRegression"].uses
    assert use.startswith("class used by NEWOBJ at offset ") and "with a state of " in use
    assert all(u.startswith("used in the BUILD state of joblib.numpy_pickle.NumpyArrayWrapper")
               for u in by_name["numpy.ndarray"].uses)
    assert by_name["numpy.ndarray"].decided_by.startswith(
        "allowed by allow entry numpy: [ndarray] at <preset numpy>:")
    assert by_name["numpy.ndarray"].decided_by.endswith("(preset numpy)")


def test_torch_members_and_never_called_imports():
    explained = explain((FIXTURES / "torch_module_sd.pt").read_bytes(), "m.pt").imports
    assert {x.member for x in explained} == {"torch_module_sd/data.pkl"}
    storage = next(x for x in explained if x.name == "FloatStorage")
    assert storage.uses == ("imported but never called",)
    rebuild = next(x for x in explained if x.name == "_rebuild_tensor_v2")
    assert rebuild.uses[0].startswith("torch._utils._rebuild_tensor_v2(<persistent object>, 0, ")
    assert all(x.kind is None for x in explained)


def test_used_as_an_argument():
    # functools.partial(posix.system, 'x'): posix.system is an argument, partial is called
    data = (b"\x80\x02cfunctools\npartial\ncposix\nsystem\n" + unicode("x") + b"\x86R.")
    by_name = {x.dotted: x for x in explain(data, "p.pkl").imports}
    assert by_name["posix.system"].uses == (
        "used as an argument of functools.partial (REDUCE at offset 42)",)
    assert by_name["functools.partial"].uses == (
        "functools.partial(posix.system, 'x') called by REDUCE at offset 42",)


def test_decided_by_names_the_entry_rule_and_deny(tmp_path, monkeypatch):
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(
        "version: 1\n"
        "allow:\n"
        "  mymodels.net: [TinyNet]\n"
        "deny:\n"
        "  builtins: [eval]\n"
        "rules:\n"
        "  - paths: ['models/**']\n"
        "    allow:\n"
        "      other: [Thing]\n")
    policy = load_policy(policy_file)
    data = (b"\x80\x02cmymodels.net\nTinyNet\n)R0cbuiltins\neval\n0cother\nThing\n0N.")
    by_name = {x.dotted: x for x in explain(data, "models/a.pkl", policy,
                                            relpath="models/a.pkl").imports}
    assert by_name["mymodels.net.TinyNet"].decided_by == \
        f"allowed by allow entry mymodels.net: [TinyNet] at {policy_file}:3:3"
    assert by_name["builtins.eval"].decided_by == \
        f"denied by deny entry builtins: [eval] at {policy_file}:5:3"
    assert by_name["builtins.eval"].kind is FindingKind.DENIED
    assert by_name["other.Thing"].decided_by == (
        f"allowed by allow entry other: [Thing] at {policy_file}:9:7 "
        f"(path rule at {policy_file}:7:5 for models/**)")
    elsewhere = {x.dotted: x for x in explain(data, "b.pkl", policy, relpath="b.pkl").imports}
    assert elsewhere["other.Thing"].kind is FindingKind.NOT_ALLOWED
    assert elsewhere["builtins.eval"].uses == ("imported but never called",)


def test_member_filter():
    data = (FIXTURES / "torch_module_sd.pt").read_bytes()
    assert explain(data, "m.pt", member="nope").imports == ()
    assert len(explain(data, "m.pt", member="torch_module_sd/data.pkl").imports) == 4


def test_cli_text_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(EVIL)
    assert main(["explain", "evil.pkl"]) == 1
    out = capsys.readouterr().out
    assert f"use:     posix.system('{CANARY}') called by REDUCE" in out
    assert main(["explain", "--format", "json", "evil.pkl"]) == 1
    doc = json.loads(capsys.readouterr().out)
    [entry] = doc["imports"]
    assert (entry["module"], entry["name"], entry["kind"]) == ("posix", "system", "gadget")
    (tmp_path / "ok.pkl").write_bytes(b"\x80\x02}q\x00.")
    assert main(["explain", "ok.pkl"]) == 0
    assert main(["explain", "missing.pkl"]) == 2
