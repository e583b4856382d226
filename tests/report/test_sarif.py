"""SARIF reporter, plus the golden files of every reporter.

Golden files live in tests/report/golden/. After an intended output change, regenerate them
with

    PICKLEGATE_UPDATE_GOLDEN=1 python -m pytest tests/report

and review the diff like code. The picklegate version is normalised: the golden tests patch
``picklegate.__version__`` to GOLDEN_VERSION, so a release bump does not touch the goldens.

The official SARIF 2.1.0 schema is vendored in tests/report/schemas/, with a note (README.md
there) giving its source URL and sha256; a test checks the digest.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import random
import re
from pathlib import Path
from urllib.parse import unquote

import jsonschema
import pytest

import picklegate
from picklegate.findings import (FileResult, Finding, FindingKind, GlobalRef, Inventory,
                                 ScanResult, Status)
from picklegate.report import json as json_report
from picklegate.report import sarif, text

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
REPO_ROOT = HERE.parents[1]
SCHEMAS = HERE / "schemas"
SCHEMA = SCHEMAS / "sarif-schema-2.1.0.json"
GOLDEN_VERSION = "0.0.0-golden"

# A file name with spaces, a comma and a colon, and one that looks like escapes and commands.
SPACED = "models/my model, v2: final.pt"
INJECTY = "models/evil%2C,::x.pkl"


def sample_result() -> ScanResult:
    """A fixed scan of six files, deliberately not in path order."""
    ref = GlobalRef
    archive_imports = (
        ref("torch._utils", "_rebuild_tensor_v2", 60, "STACK_GLOBAL", "archive/data.pkl"),
        ref("posix", "system", 17, "STACK_GLOBAL", "archive/data.pkl"),
        ref("posix", "system", 90, "STACK_GLOBAL", "archive/data.pkl"),
        ref("builtins", "eval", 112, "GLOBAL", "archive/data.pkl"),
        ref("mylib.layers", "Dense", 40, "GLOBAL", "archive/extra.pkl"),
    )
    return ScanResult(policy=".picklegate.yaml", files=(
        FileResult(
            path=SPACED, format="torch-zip", status=Status.VIOLATION,
            findings=(
                Finding(FindingKind.GADGET,
                        "posix.system is a known code-execution gadget: runs a shell command; "
                        "never allow it (no allow entry names it; STACK_GLOBAL)",
                        module="posix", name="system",
                        member="archive/data.pkl", offset=17, count=2),
                Finding(FindingKind.DENIED,
                        "builtins.eval is denied by policy (deny entry builtins at "
                        ".picklegate.yaml:9:3)", module="builtins", name="eval",
                        member="archive/data.pkl", offset=112),
                Finding(FindingKind.NOT_ALLOWED,
                        "mylib.layers.Dense is not in the allowlist: a policy gap, not a known "
                        "gadget (no allow entry names it; GLOBAL)", module="mylib.layers",
                        name="Dense",
                        member="archive/extra.pkl", offset=40),
                Finding(FindingKind.UNRESOLVED,
                        "STACK_GLOBAL whose module is not a string literal",
                        member="archive/payload|<img src=x>`.pkl", offset=5),
            ),
            inventory=Inventory(imports=archive_imports,
                                notes=("archive/data/0: raw tensor storage, not parsed",))),
        FileResult(path="models/clean.pt", format="torch-zip", status=Status.CLEAN,
                   inventory=Inventory(imports=(
                       ref("collections", "OrderedDict", 30, "GLOBAL", "clean/data.pkl"),
                       ref("torch._utils", "_rebuild_tensor_v2", 58, "GLOBAL",
                           "clean/data.pkl")))),
        FileResult(
            path=INJECTY, format="pickle", status=Status.VIOLATION,
            findings=(Finding(FindingKind.GADGET,
                              "builtins.exec is a known code-execution gadget: executes Python "
                              "source; never allow it (no allow entry names it; GLOBAL)",
                              module="builtins", name="exec", offset=2),),
            inventory=Inventory(imports=(ref("builtins", "exec", 2, "GLOBAL"),))),
        FileResult(
            path="models/broken.pkl", format="pickle", status=Status.VIOLATION,
            findings=(Finding(FindingKind.MALFORMED,
                              "truncated: the stream ends at byte 1024 before STOP",
                              offset=1024),)),
        FileResult(path="models/missing.pkl", format="unknown", status=Status.ERROR,
                   error="cannot read: No such file or directory"),
        FileResult(
            path="models/big.bin", format="lfs-pointer", status=Status.CLEAN,
            findings=(Finding(FindingKind.LFS_POINTER,
                              "Git LFS pointer (12345 bytes of content not in this checkout)",
                              warning=True),)),
    ))


def check_golden(name: str, actual: str) -> None:
    """Compare with tests/report/golden/<name>; PICKLEGATE_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("PICKLEGATE_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(actual)
        return
    assert path.is_file(), (f"golden file {path} is missing; create it with "
                            "PICKLEGATE_UPDATE_GOLDEN=1 python -m pytest tests/report")
    with open(path, encoding="utf-8", newline="") as handle:
        expected = handle.read()
    assert actual == expected, (f"output differs from {path}; if the change is intended, "
                                "regenerate with PICKLEGATE_UPDATE_GOLDEN=1 and review the diff")


@pytest.fixture
def golden_version(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(picklegate, "__version__", GOLDEN_VERSION)
    return GOLDEN_VERSION


def doc(result: ScanResult | None = None) -> dict:
    return json.loads(sarif.render(result or sample_result()))


def results_by_rule(document: dict, rule: str) -> list[dict]:
    return [r for r in document["runs"][0]["results"] if r["ruleId"] == rule]


def load_schema() -> dict:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def test_vendored_schema_matches_its_note():
    """The vendored schema is the published file the note names, byte for byte."""
    note = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    row = next(line for line in note.splitlines() if line.startswith(f"| `{SCHEMA.name}`"))
    [recorded] = re.findall(r"`([0-9a-f]{64})`", row)
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded
    assert load_schema()["id"] in row               # the source URL is the schema's own id


def validate(document: dict) -> None:
    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:20])


# ---------------------------------------------------------------------------------------------
# golden files (every reporter)


def test_sarif_golden(golden_version):
    check_golden("sample.sarif.json", sarif.render(sample_result()))


def test_text_golden():
    check_golden("sample.txt", text.render(sample_result()))


def test_json_golden():
    check_golden("sample.json", json_report.render(sample_result()))


def test_golden_version_is_normalised(golden_version):
    assert doc()["runs"][0]["tool"]["driver"]["version"] == GOLDEN_VERSION


def test_real_version_is_reported():
    driver = doc()["runs"][0]["tool"]["driver"]
    assert driver["version"] == driver["semanticVersion"] == picklegate.__version__


# ---------------------------------------------------------------------------------------------
# schema and GitHub's required fields


def test_validates_against_the_official_schema():
    validate(doc())


def test_empty_and_clean_scans_validate():
    validate(doc(ScanResult(files=(), policy="built-in default")))
    validate(doc(ScanResult(files=(FileResult("a.pkl", "pickle", Status.CLEAN),), policy="p")))


def test_github_required_fields():
    document = doc()
    assert document["$schema"] == sarif.SARIF_SCHEMA
    assert document["version"] == "2.1.0"
    [run] = document["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "picklegate"
    # No public address yet: informationUri is optional, and a placeholder would mislead.
    assert "informationUri" not in driver
    for rule in driver["rules"]:
        for key in ("shortDescription", "fullDescription", "help"):
            assert rule[key]["text"].strip(), (rule["id"], key)
        assert rule["help"]["markdown"].strip()
        assert rule["defaultConfiguration"]["level"] in ("error", "warning")
        assert "security" in rule["properties"]["tags"]
        assert 0.0 <= float(rule["properties"]["security-severity"]) <= 10.0
        assert rule["name"][0].isupper() and "-" not in rule["name"]
    for result in run["results"]:
        assert result["message"]["text"].strip()
        assert result["locations"]
        assert result["partialFingerprints"][sarif.FINGERPRINT_KEY]


def test_one_rule_per_kind_plus_scan_error():
    ids = [r["id"] for r in doc()["runs"][0]["tool"]["driver"]["rules"]]
    assert ids == [k.value for k in FindingKind] + ["scan-error"]
    assert len(set(ids)) == len(ids)


def test_severities_of_import_rules():
    rules = {r["id"]: r for r in doc()["runs"][0]["tool"]["driver"]["rules"]}
    severity = {k: float(r["properties"]["security-severity"]) for k, r in rules.items()}
    assert severity["gadget"] == 10.0
    assert severity["gadget"] > severity["denied"] > severity["not-allowed"] >= 7.0
    assert severity["unresolved"] > severity["not-allowed"]
    assert "module" in rules["not-allowed"]["help"]["text"]
    assert "allow:" in rules["not-allowed"]["help"]["markdown"]


def test_every_result_names_a_rule_by_id_and_index():
    run = doc()["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = {rule["id"] for rule in rules}
    assert run["results"]
    for result in run["results"]:
        assert result["ruleId"] in ids
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]


# ---------------------------------------------------------------------------------------------
# locations


def test_binary_regions_are_line_one_and_uris_are_the_file():
    run = doc()["runs"][0]
    members = {x.member for f in sample_result().files for x in f.findings if x.member}
    for result in run["results"]:
        physical = result["locations"][0]["physicalLocation"]
        assert physical["region"] == {"startLine": 1}
        location = physical["artifactLocation"]
        assert location["uriBaseId"] == "%SRCROOT%"
        uri = location["uri"]
        assert not any(m in unquote(uri) for m in members), uri
        assert run["artifacts"][location["index"]]["location"]["uri"] == uri
        assert "\\" not in uri and not uri.startswith("/")


def test_uris_are_percent_encoded_relative_references():
    uris = {unquote(a["location"]["uri"]): a["location"]["uri"]
            for a in doc()["runs"][0]["artifacts"]}
    assert uris[SPACED] == "models/my%20model%2C%20v2%3A%20final.pt"
    assert uris[INJECTY] == "models/evil%252C%2C%3A%3Ax.pkl"
    assert uris["models/clean.pt"] == "models/clean.pt"
    for uri in uris.values():
        assert all(c.isalnum() or c in "/-._~%" for c in uri), uri


def test_path_normalisation_and_absolute_paths():
    assert sarif.artifact_location("./m/x.pkl") == {"uri": "m/x.pkl", "uriBaseId": "%SRCROOT%"}
    assert sarif.artifact_location("m//y/../x.pkl")["uri"] == "m/x.pkl"
    absolute = sarif.artifact_location("/srv/repo/m x.pkl")
    assert absolute == {"uri": "file:///srv/repo/m%20x.pkl"}
    assert "uriBaseId" not in absolute
    assert sarif.artifact_location("caf\u00e9.pkl")["uri"] == "caf%C3%A9.pkl"
    # An undecodable name from os.walk (surrogate-escaped) keeps its bytes.
    assert sarif.artifact_location("b\udcffd.pkl")["uri"] == "b%FFd.pkl"


def test_member_is_a_logical_location_and_in_the_message():
    document = doc()
    [system] = [r for r in document["runs"][0]["results"]
                if r["properties"].get("name") == "system"]
    assert system["locations"][0]["logicalLocations"] == [
        {"name": "archive/data.pkl", "kind": "member"}]
    text_ = system["message"]["text"]
    assert "posix.system" in text_ and "archive/data.pkl" in text_ and "offset 17" in text_
    assert "(2 occurrences)" in text_
    assert system["properties"] == {
        "kind": "gadget", "module": "posix", "name": "system", "global": "posix.system",
        "member": "archive/data.pkl", "offset": 17, "count": 2}
    [exec_] = [r for r in document["runs"][0]["results"] if r["properties"].get("name") == "exec"]
    assert "logicalLocations" not in exec_["locations"][0]
    assert exec_["message"]["text"].endswith("[offset 2]")


def test_message_escapes_placeholders_and_links():
    finding = Finding(FindingKind.NOT_ALLOWED, "x.y is not allowed {0}", module="x", name="y",
                      member="a[click](https://evil.example)/data.pkl", offset=3)
    message = sarif.message_text(finding)
    assert "{{0}}" in message
    assert "[click](" not in message and "\\[click\\](https://evil.example)" in message
    result = ScanResult(files=(FileResult("m.pt", "torch-zip", Status.VIOLATION,
                                          findings=(finding,)),), policy="p")
    validate(doc(result))


# ---------------------------------------------------------------------------------------------
# levels, errors, invocations


def test_levels():
    run = doc()["runs"][0]
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels["lfs-pointer"] == "note"               # downgraded by the policy
    assert levels["gadget"] == levels["not-allowed"] == levels["denied"] == "error"
    assert levels["malformed"] == "error"


def test_unreadable_file_is_a_scan_error_result_and_a_notification():
    run = doc()["runs"][0]
    [error] = results_by_rule(doc(), "scan-error")
    assert error["level"] == "error"
    assert "No such file" in error["message"]["text"]
    assert error["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        "models/missing.pkl"
    [invocation] = run["invocations"]
    assert invocation["executionSuccessful"] is False
    [note] = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and "No such file" in note["message"]["text"]
    assert note["associatedRule"]["id"] == "scan-error"
    assert invocation["properties"]["policy"] == ".picklegate.yaml"


def test_execution_successful_without_errors():
    result = sample_result()
    result = dataclasses.replace(result, files=tuple(
        f for f in result.files if f.status is not Status.ERROR))
    [invocation] = doc(result)["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is True
    assert "toolExecutionNotifications" not in invocation


def test_artifacts_list_every_scanned_file_including_clean_ones():
    artifacts = doc()["runs"][0]["artifacts"]
    paths = [unquote(a["location"]["uri"]) for a in artifacts]
    assert paths == sorted(f.path for f in sample_result().files)
    clean = artifacts[paths.index("models/clean.pt")]
    assert clean["properties"] == {"format": "torch-zip", "status": "clean"}


# ---------------------------------------------------------------------------------------------
# determinism and fingerprints


def test_output_is_deterministic_and_sorted():
    result = sample_result()
    expected = sarif.render(result)
    files = list(result.files)
    for seed in range(5):
        random.Random(seed).shuffle(files)
        shuffled = [dataclasses.replace(f, findings=tuple(
            random.Random(seed).sample(f.findings, len(f.findings)))) for f in files]
        assert sarif.render(ScanResult(files=tuple(shuffled), policy=result.policy)) == expected
    keys = [(unquote(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]),
             r["properties"].get("member") or "", r["properties"].get("offset") or -1)
            for r in doc()["runs"][0]["results"]]
    assert keys == sorted(keys)
    assert expected.endswith("}\n") and expected.startswith('{\n  "$schema"')


def _fp(path: str = "m.pt", **changes) -> str:
    base = Finding(FindingKind.NOT_ALLOWED, "posix.system is not allowed", module="posix",
                   name="system", member="archive/data.pkl", offset=17)
    return sarif.fingerprint(path, dataclasses.replace(base, **changes))


def test_fingerprint_survives_offset_count_and_message_changes():
    assert _fp() == _fp(offset=4096) == _fp(count=7) == _fp(offset=None)
    assert _fp() == _fp(message="posix.system is not allowed (expired entry)")


def test_fingerprint_differs_for_another_global_member_path_or_kind():
    base = _fp()
    others = [_fp(module="nt"), _fp(name="popen"), _fp(member="archive/other.pkl"),
              _fp(member=None), _fp("n.pt"), _fp(kind=FindingKind.DENIED)]
    assert base not in others
    assert len(set(others)) == len(others)


def test_fingerprint_fields_cannot_run_into_each_other():
    assert _fp("a|b", member="c") != _fp("a", member="b|c")
    assert _fp("a\\", member="|c") != _fp("a", member="\\|c")


def test_fingerprint_of_findings_without_a_global():
    def fp(message: str, offset: int) -> str:
        return sarif.fingerprint("m.pkl", Finding(FindingKind.MALFORMED, message, offset=offset))
    assert fp("12 bytes after the end of the gzip stream", 10) == \
        fp("99 bytes after the end of the gzip stream", 800)
    assert fp("truncated .npy header", 0) != fp("unsupported .npy format version 9.0", 0)


def test_fingerprints_in_the_document_are_sha256_and_unique():
    results = doc()["runs"][0]["results"]
    prints = [r["partialFingerprints"][sarif.FINGERPRINT_KEY] for r in results]
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in prints)
    assert len(set(prints)) == len(prints)
    for result in results:
        # Only our own key: upload-sarif computes primaryLocationLineHash itself and warns on
        # every result whose supplied value differs from its own.
        assert set(result["partialFingerprints"]) == {sarif.FINGERPRINT_KEY}


def test_fingerprints_stable_when_offsets_change_in_a_document():
    result = sample_result()
    moved = ScanResult(policy=result.policy, files=tuple(
        dataclasses.replace(f, findings=tuple(
            dataclasses.replace(x, offset=None if x.offset is None else x.offset + 1000)
            for x in f.findings)) for f in result.files))

    def prints(r: ScanResult) -> list[str]:
        return [x["partialFingerprints"][sarif.FINGERPRINT_KEY]
                for x in doc(r)["runs"][0]["results"]]
    assert prints(result) == prints(moved)


def test_render_does_not_mutate_or_depend_on_colour():
    result = sample_result()
    before = copy.deepcopy(result)
    assert sarif.render(result, color=True) == sarif.render(result)
    assert result == before
