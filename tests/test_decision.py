"""The policy decision on whole files: per-path rules, hash-pinned approvals, expiry, settings."""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest

from picklegate.findings import FindingKind, Status
from picklegate.policy import load_policy
from picklegate.scan import ScanOptions, scan_bytes
from samples import LFS_POINTER, global_call

TODAY = dt.date(2026, 11, 23)
SK = global_call("sklearn.linear_model._logistic", "LogisticRegression")


def policy(tmp_path: Path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_policy(path)


def scan(data: bytes, pol, path: str, today: dt.date = TODAY):
    return scan_bytes(data, pol, path=path, options=ScanOptions(today=today))


RULES = """version: 1
rules:
  - paths: ["models/sklearn/**"]
    allow: {"sklearn.*": "*"}
  - paths: ["**/frozen/*.pkl"]
    deny: {"sklearn.*": "*"}
"""


@pytest.mark.parametrize(("path", "status", "kind"), [
    ("models/sklearn/a.pkl", Status.CLEAN, None),
    ("models/sklearn/deep/er/a.pkl", Status.CLEAN, None),
    ("models/other/a.pkl", Status.VIOLATION, FindingKind.NOT_ALLOWED),
    ("models/sklearn/frozen/a.pkl", Status.VIOLATION, FindingKind.DENIED),
    ("x/models/sklearn/a.pkl", Status.VIOLATION, FindingKind.NOT_ALLOWED),
])
def test_path_rules_apply_only_to_matching_paths(tmp_path, path, status, kind):
    result = scan(SK, policy(tmp_path, RULES), path)
    assert result.status is status
    assert [f.kind for f in result.findings] == ([kind] if kind else [])


def approval(tmp_path: Path, data: bytes, expires: str = "2027-06-30"):
    digest = hashlib.sha256(data).hexdigest()
    return policy(tmp_path, f"""version: 1
approved:
  - path: models/legacy/old.pkl
    sha256: {digest}
    reason: "vetted by security, SEC-123"
    owner: "@ml-platform"
    expires: {expires}
""")


def test_approval_covers_exactly_that_content(tmp_path):
    data = global_call("posix", "system")
    pol = approval(tmp_path, data)
    ok = scan(data, pol, "models/legacy/old.pkl")
    assert ok.status is Status.CLEAN and not ok.findings
    assert any("approved by" in n and "SEC-123" in n for n in ok.inventory.notes)
    changed = scan(data + b"\n", pol, "models/legacy/old.pkl")     # one byte more
    assert changed.status is Status.VIOLATION
    assert any("sha256" in n and "does not apply" in n for n in changed.inventory.notes)
    elsewhere = scan(data, pol, "models/other.pkl")
    assert elsewhere.status is Status.VIOLATION


def test_approval_applies_through_its_expiry_day_and_not_after(tmp_path):
    data = global_call("posix", "system")
    pol = approval(tmp_path, data, expires="2026-11-23")
    assert scan(data, pol, "models/legacy/old.pkl", TODAY).status is Status.CLEAN
    late = scan(data, pol, "models/legacy/old.pkl", TODAY + dt.timedelta(days=1))
    assert late.status is Status.VIOLATION
    assert any("expired on 2026-11-23" in n for n in late.inventory.notes)


def test_expired_allow_entry_says_why(tmp_path):
    pol = policy(tmp_path, """version: 1
allow:
  mymodels.net:
    - {name: TinyNet, reason: "temporary", expires: 2026-01-01}
""")
    result = scan(global_call("mymodels.net", "TinyNet"), pol, "a.pkl")
    [finding] = result.findings
    assert finding.kind is FindingKind.NOT_ALLOWED
    assert "expired on 2026-01-01" in finding.message
    assert scan(global_call("mymodels.net", "TinyNet"), pol, "a.pkl",
                dt.date(2025, 12, 31)).status is Status.CLEAN


def test_repeated_import_is_one_finding_with_count(tmp_path):
    pol = policy(tmp_path, "version: 1\n")
    data = global_call("posix", "getcwd") + global_call("posix", "getcwd")
    [finding] = scan(data, pol, "a.pkl").findings
    assert finding.count == 2 and finding.offset == 2


def test_unknown_format_can_be_allowed_and_lfs_pointer_warned(tmp_path):
    strict = policy(tmp_path, "version: 1\n")
    unknown = b"\x07\x07 not a model"
    assert [f.kind for f in scan(unknown, strict, "a.bin").findings] == [
        FindingKind.UNKNOWN_FORMAT]
    lenient = policy(tmp_path, "version: 1\nunknown_formats: allow\nlfs_pointers: warn\n")
    assert scan(unknown, lenient, "a.bin").status is Status.CLEAN
    lfs = scan(LFS_POINTER, lenient, "a.pt")
    assert lfs.status is Status.CLEAN and lfs.findings[0].warning
    assert scan(LFS_POINTER, strict, "a.pt").status is Status.VIOLATION
