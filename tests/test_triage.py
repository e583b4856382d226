"""Triage: gadget vs policy gap, grouped text with hints, SARIF tiers, documented rule codes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from picklegate.findings import SEVERITY, TRIAGE_ORDER, FindingKind, ScanResult, Severity
from picklegate.policy import default_policy, load_presets
from picklegate.report import github, hints, sarif, text
from picklegate.scan import scan_bytes
from samples import global_call

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "real"
KINDS_DOC = ROOT / "docs" / "finding-kinds.md"


def scan(data: bytes, path: str = "m.pkl", policy=None):
    return scan_bytes(data, policy or default_policy(), path=path)


def doc_hints(report: str) -> list[str]:
    return [line.split("hint: ", 1)[1] for line in report.splitlines() if "hint: " in line]


# ---------------------------------------------------------------------------------------------
# kinds


@pytest.mark.parametrize("module,name", [("posix", "system"), ("builtins", "eval"),
                                         ("subprocess", "Popen"), ("posix", "system.__call__")])
def test_gadget_has_its_own_kind_and_no_allow_hint(module, name):
    result = scan(global_call(module, name))
    [finding] = result.findings
    assert (finding.kind, finding.module, finding.name) == (FindingKind.GADGET, module, name)
    assert "known code-execution gadget" in finding.message
    report = text.render(ScanResult(files=(result,), policy="p"))
    assert doc_hints(report) == []
    assert "allow:" not in github.allow_snippet(ScanResult(files=(result,), policy="p"))


def test_unknown_global_is_a_policy_gap_with_a_valid_allow_hint():
    result = scan(global_call("mymodels.net", "TinyNet") + global_call("mymodels.net", "TinyNet"))
    [finding] = result.findings
    assert finding.kind is FindingKind.NOT_ALLOWED and finding.count == 2
    assert "not in the allowlist: a policy gap, not a known gadget" in finding.message
    report = text.render(ScanResult(files=(result,), policy="p"))
    [hint] = doc_hints(report)
    assert hint == "to allow it: `mymodels.net: [TinyNet]`"
    snippet = re.fullmatch(r"to allow it: `(.*)`", hint).group(1)
    assert yaml.safe_load(snippet) == {"mymodels.net": ["TinyNet"]}


def test_deny_entry_stays_denied_even_for_a_gadget(tmp_path):
    from picklegate.policy import load_policy
    (tmp_path / "p.yaml").write_text("version: 1\ndeny:\n  posix: [system]\n")
    policy = load_policy(tmp_path / "p.yaml")
    [finding] = scan(global_call("posix", "system"), policy=policy).findings
    assert finding.kind is FindingKind.DENIED


def test_file_covered_by_the_sklearn_preset_gets_the_preset_hint():
    data = (FIXTURES / "sklearn_logreg.joblib").read_bytes()
    result = scan(data, "model.joblib")           # default policy: builtins-safe + torch + numpy
    assert {f.kind for f in result.findings} == {FindingKind.NOT_ALLOWED}
    report = text.render(ScanResult(files=(result,), policy="p"))
    assert doc_hints(report) == ["covered by preset sklearn: add it to `extends`"]
    # and it really is: with the preset the file is clean
    assert scan(data, "model.joblib", load_presets(
        ["builtins-safe", "numpy", "sklearn"], "x")).findings == ()


def test_mixed_file_hints_name_only_what_is_not_a_gadget():
    data = (global_call("posix", "system") + global_call("mymodels.net", "TinyNet")
            + global_call("mymodels.net", "Head") + global_call("other", "Thing"))
    result = scan(data)
    assert doc_hints(text.render(ScanResult(files=(result,), policy="p"))) == [
        "to allow them: `mymodels.net: [Head, TinyNet]`", "to allow it: `other: [Thing]`"]
    entries = hints.allow_entries(result.findings)
    assert entries.modules == {"mymodels.net": ["Head", "TinyNet"], "other": ["Thing"]}
    assert [dotted for dotted, _ in entries.gadgets] == ["posix.system"]


def test_text_groups_by_file_one_line_per_global_with_its_count():
    data = global_call("mymodels.net", "TinyNet") * 3 + global_call("posix", "system") * 2
    result = scan(data, "a.pkl")
    lines = text.render(ScanResult(files=(result,), policy="p")).splitlines()
    assert lines[0] == "a.pkl: 2 problems"
    assert lines[1].startswith("  offset ") and "posix.system" in lines[1] \
        and lines[1].endswith("(2 occurrences) [gadget]")             # most severe first
    assert "mymodels.net.TinyNet" in lines[2] and lines[2].endswith("(3 occurrences) [not-allowed]")
    assert lines[3] == "  hint: to allow it: `mymodels.net: [TinyNet]`"
    assert lines[4].startswith("picklegate: 1 file(s) scanned")


def test_same_global_in_two_members_is_one_line():
    from picklegate.findings import Finding
    findings = tuple(Finding(FindingKind.NOT_ALLOWED, "x.Y is not in the allowlist", module="x",
                             name="Y", member=m, offset=o, count=c)
                     for m, o, c in (("b/data.pkl", 9, 2), ("a/data.pkl", 4, 1)))
    [(first, members)] = text.group(findings)
    assert (first.member, first.offset, first.count, members) == ("a/data.pkl", 4, 3, 2)


# ---------------------------------------------------------------------------------------------
# SARIF tiers


def test_sarif_security_severity_follows_the_tiers():
    rules = {r.id: float(r.severity) for r in sarif.RULES}
    ordered = [rules[k.value] for k in TRIAGE_ORDER]
    assert ordered == sorted(ordered, reverse=True)
    assert max(rules.values()) == rules["gadget"] == 10.0
    assert rules["gadget"] > rules["denied"] > rules["not-allowed"]
    bands = {Severity.CRITICAL: (9.0, 10.0), Severity.HIGH: (7.0, 8.9),
             Severity.MEDIUM: (4.0, 6.9)}
    for kind, tier in SEVERITY.items():
        low, high = bands[tier]
        assert low <= rules[kind.value] <= high, kind


@pytest.mark.parametrize("kind,level", [
    (FindingKind.GADGET, "error"), (FindingKind.DENIED, "error"),
    (FindingKind.NOT_ALLOWED, "error"), (FindingKind.UNRESOLVED, "error"),
    (FindingKind.UNKNOWN_FORMAT, "warning"), (FindingKind.LFS_POINTER, "warning")])
def test_sarif_levels_per_tier(kind, level):
    from picklegate.findings import FileResult, Finding, Status
    result = ScanResult(policy="p", files=(FileResult("m.pkl", "pickle", Status.VIOLATION,
                                                      findings=(Finding(kind, "m"),)),))
    run = json.loads(sarif.render(result))["runs"][0]
    [res] = run["results"]
    assert res["level"] == level
    rule = run["tool"]["driver"]["rules"][res["ruleIndex"]]
    assert rule["defaultConfiguration"]["level"] == level


def test_sarif_fingerprint_does_not_depend_on_the_message():
    from picklegate.findings import Finding
    base = Finding(FindingKind.GADGET, "posix.system is a known gadget", module="posix",
                   name="system", member="a/data.pkl", offset=3)
    reworded = Finding(FindingKind.GADGET, "completely different wording", module="posix",
                       name="system", member="a/data.pkl", offset=99)
    assert sarif.fingerprint("m.pt", base) == sarif.fingerprint("m.pt", reworded)


# ---------------------------------------------------------------------------------------------
# documented rule codes


def documented_codes() -> set[str]:
    return set(re.findall(r"^\| `([a-z-]+)` \|", KINDS_DOC.read_text(encoding="utf-8"), re.M))


def test_every_kind_is_documented_and_a_sarif_rule_and_vice_versa():
    kinds = {k.value for k in FindingKind}
    assert documented_codes() == kinds
    assert {r.id for r in sarif.RULES} == kinds | {sarif.SCAN_ERROR}
    assert set(SEVERITY) == set(FindingKind)


def test_documented_severity_matches_the_tier():
    rows = re.findall(r"^\| `([a-z-]+)` \| (\w+) \(([\d.]+)\) \|",
                      KINDS_DOC.read_text(encoding="utf-8"), re.M)
    rules = {r.id: r.severity for r in sarif.RULES}
    assert {code: (tier, score) for code, tier, score in rows} == {
        k.value: (SEVERITY[k].value, rules[k.value]) for k in FindingKind}


def test_readme_links_the_finding_kinds():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Finding kinds (rule codes)" in readme or "### Finding kinds (rule codes)" in readme
    assert "docs/finding-kinds.md" in readme
