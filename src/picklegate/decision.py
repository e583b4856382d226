"""The policy decision: turn what a file contains (an Analysis) into its FileResult.

This is the only place that knows both the findings and the policy. It never reads files and
never formats output beyond the finding messages themselves.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from picklegate.findings import FileResult, Finding, FindingKind, GlobalRef, Inventory, Status
from picklegate.formats import Analysis
from picklegate.machine import Buffer
from picklegate.policy import Decision, Policy, Verdict, sha256_hex


def judge(display: str, relpath: str | None, buf: Buffer, analysis: Analysis, policy: Policy,
          today: dt.date) -> FileResult:
    findings = [f for f in (_import_finding(r, policy, relpath, today)
                            for r in analysis.out.imports) if f is not None]
    findings += _settle(analysis.out.findings, policy)
    notes = list(analysis.notes)
    merged = merge_findings(findings)
    if merged and policy.approval_for(relpath):
        approved, why = _approval(buf, policy, relpath, today)
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
    if decision.verdict is Verdict.ALLOWED:
        return None
    kind = FindingKind.DENIED if decision.verdict is Verdict.DENIED else FindingKind.NOT_ALLOWED
    return Finding(kind=kind, message=import_message(ref, decision), module=ref.module,
                   name=ref.name, member=ref.member, offset=ref.offset, count=ref.count)


def import_message(ref: GlobalRef, decision: Decision) -> str:
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
    return f"{ref.dotted} is not allowed by policy ({why}; {ref.opcode}){written}"


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


def _approval(buf: Buffer, policy: Policy, relpath: str | None,
              today: dt.date) -> tuple[bool, str]:
    digest = sha256_hex(bytes(buf[0:len(buf)]))
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
