"""The policy decision on whole files: per-path rules, hash-pinned approvals, expiry, settings."""
from __future__ import annotations

import datetime as dt
import hashlib
import mmap
import tracemalloc
from pathlib import Path

import pytest

from picklegate import decision
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


# ---------------------------------------------------------------------------------------------
# Hashing for approvals: no copy of the file


class _Recording:
    """A Buffer that is neither bytes nor mmap, recording the size of every slice taken."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.slices: list[int] = []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        if isinstance(index, slice):
            self.slices.append(len(self.data[index]))
        return self.data[index]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        return self.data.find(sub, start, len(self.data) if end is None else end)


@pytest.mark.parametrize("size", [0, 1, decision.HASH_CHUNK - 1, decision.HASH_CHUNK,
                                  3 * decision.HASH_CHUNK + 5])
def test_buffer_sha256_over_bytes_mmap_and_other_buffers(tmp_path, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = hashlib.sha256(data).hexdigest()
    assert decision.buffer_sha256(data) == expected
    recording = _Recording(data)
    assert decision.buffer_sha256(recording) == expected
    assert all(n <= decision.HASH_CHUNK for n in recording.slices)     # never the whole file
    if size:
        path = tmp_path / "f.bin"
        path.write_bytes(data)
        with open(path, "rb") as handle, \
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert decision.buffer_sha256(mm) == expected
        # leaving the with block closed the mmap: the memoryview was released


def test_approval_hashes_a_memory_mapped_file_without_copying_it(tmp_path):
    size = 32 << 20
    path = tmp_path / "big.pkl"
    with open(path, "wb") as handle:
        handle.write(global_call("posix", "system"))
        handle.truncate(size)                                  # sparse: cheap to make
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    pol = policy(tmp_path, f"version: 1\napproved:\n  - path: models/big.pkl\n"
                           f"    sha256: {digest}\n    reason: r\n")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        tracemalloc.start()
        try:
            approved, why = decision.approval(mm, pol, "models/big.pkl", TODAY)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert approved and why.startswith("approved by")
    assert peak < size // 16, f"hashing allocated {peak} bytes for a {size}-byte file"
