"""The policy decision: turn what a file contains (an Analysis) into its FileResult.

This is the only place that knows both the findings and the policy. It never reads files and
never formats output beyond the finding messages themselves.
"""
from __future__ import annotations

import datetime as dt
import mmap
from collections.abc import Iterable
from typing import TYPE_CHECKING

from picklegate.findings import FileResult, Finding, FindingKind, GlobalRef, Inventory, Status
from picklegate.formats import Analysis
from picklegate.machine import Buffer
from picklegate.policy import Decision, Policy, Verdict

if TYPE_CHECKING:
    from picklegate.review import Gadget


def judge(display: str, relpath: str | None, buf: Buffer, analysis: Analysis, policy: Policy,
          today: dt.date) -> FileResult:
    findings = [f for f in (_import_finding(r, policy, relpath, today)
                            for r in analysis.out.imports) if f is not None]
    findings += _settle(analysis.out.findings, policy)
    notes = list(analysis.notes)
    merged = merge_findings(findings)
    if merged and policy.approval_for(relpath):
        approved, why = approval(buf, policy, relpath, today)
        notes.append(why)
        if approved:
            merged = []
    status = Status.VIOLATION if any(not f.warning for f in merged) else Status.CLEAN
    return FileResult(path=display, relpath=relpath, format=analysis.format, status=status,
                      findings=tuple(merged),
                      inventory=Inventory(imports=tuple(analysis.out.imports), notes=tuple(notes)))


def _import_finding(ref: GlobalRef, policy: Policy, relpath: str | None,
                    today: dt.date) -> Finding | None:
    decision = policy.decide(ref.module, ref.name, relpath, today)
    kind, gadget = classify(ref, decision)
    if kind is None:
        return None
    return Finding(kind=kind, message=import_message(ref, decision, gadget), module=ref.module,
                   name=ref.name, member=ref.member, offset=ref.offset, count=ref.count)


def classify(ref: GlobalRef, decision: Decision) -> tuple[FindingKind | None, Gadget | None]:
    """The kind of finding an import gets under ``decision`` (None: allowed), and the gadget
    entry that names it. A deny entry decides first: it is the policy owners' explicit word.
    A global that is merely absent from the allowlist is a policy gap unless the gadget list
    knows it as an attack."""
    if decision.verdict is Verdict.ALLOWED:
        return None, None
    from picklegate.review import known_gadget   # (start-up: only once an import is refused)

    gadget = known_gadget(ref.module, ref.name)
    if decision.verdict is Verdict.DENIED:
        return FindingKind.DENIED, gadget
    return (FindingKind.NOT_ALLOWED if gadget is None else FindingKind.GADGET), gadget


def import_message(ref: GlobalRef, decision: Decision, gadget: Gadget | None = None) -> str:
    written = f"; written as {ref.written_as}, which Python 3 imports as {ref.dotted}" \
        if ref.written_as else ""
    if decision.verdict is Verdict.DENIED and decision.entry is not None:
        return (f"{ref.dotted} is denied by policy (deny entry {decision.entry.pattern} at "
                f"{decision.entry.origin}){written}")
    if decision.expired:
        entry = decision.expired[0]
        why = f"the allow entry at {entry.origin} expired on {entry.expires}"
    else:
        why = "no allow entry names it"
    if gadget is not None and decision.verdict is Verdict.NOT_ALLOWED:
        label = " ".join(gadget.why.split())
        return (f"{ref.dotted} is a known code-execution gadget: {label}; never allow it "
                f"({why}; {ref.opcode}){written}")
    return (f"{ref.dotted} is not in the allowlist: a policy gap, not a known gadget ({why}; "
            f"{ref.opcode}){written}")


def _settle(findings: Iterable[Finding], policy: Policy) -> list[Finding]:
    """Apply the policy's settings for format findings (LFS pointers, unknown formats)."""
    settled = []
    for finding in findings:
        if finding.kind is FindingKind.UNKNOWN_FORMAT and policy.unknown_formats == "allow":
            continue
        if finding.kind is FindingKind.LFS_POINTER and policy.lfs_pointers == "warn":
            finding = Finding(**{**finding.__dict__, "warning": True})
        settled.append(finding)
    return settled


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per (kind, member, global): the first offset, and how often it occurred."""
    merged: dict[tuple[object, ...], Finding] = {}
    for finding in findings:
        seen = merged.get(finding.key)
        if seen is None:
            merged[finding.key] = finding
        else:
            merged[finding.key] = Finding(**{**seen.__dict__, "count": seen.count + finding.count})
    return sorted(merged.values(), key=lambda f: f.sort_key)


def approval(buf: Buffer, policy: Policy, relpath: str | None,
              today: dt.date) -> tuple[bool, str]:
    """Whether an approval of ``relpath`` applies to these bytes, and why (or why not)."""
    digest = buffer_sha256(buf)
    reasons = []
    for approval in policy.approval_for(relpath):
        if approval.sha256 != digest:
            reasons.append(f"approval at {approval.origin} does not apply: the file's sha256 is "
                           f"{digest}, the approval is for {approval.sha256}")
        elif approval.expires is not None and today > approval.expires:
            reasons.append(f"approval at {approval.origin} does not apply: it expired on "
                           f"{approval.expires}")
        else:
            return True, f"approved by {approval.origin}: {approval.reason}"
    return False, "; ".join(reasons)


HASH_CHUNK = 1 << 20


def buffer_sha256(buf: Buffer) -> str:
    """The file's sha256 without copying it. A memory-mapped checkpoint (or bytes) is hashed
    through a memoryview, a chunk at a time, so a multi-gigabyte file costs no memory; any
    other Buffer is sliced a chunk at a time. The view is released before returning: an mmap
    with a live export cannot be closed."""
    import hashlib                      # (start-up: only when an approval is checked)

    digest = hashlib.sha256()
    if isinstance(buf, (bytes, bytearray, mmap.mmap)):
        with memoryview(buf) as view:
            for start in range(0, len(view), HASH_CHUNK):
                digest.update(view[start:start + HASH_CHUNK])
    else:
        for start in range(0, len(buf), HASH_CHUNK):
            digest.update(buf[start:start + HASH_CHUNK])
    return digest.hexdigest()
