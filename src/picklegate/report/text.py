"""Human-readable text: findings grouped by file, one line per global with its count, the
file's triage hints (a preset that covers it, or the allow entry that would; never for a known
gadget), then a summary line.

Paths, member names, global names and messages all come from scanned files or the file
system, so every one goes through :func:`safe` first: control characters (an ANSI escape in a
global name must not repaint the terminal), line separators and lone surrogates (undecodable
bytes of a file name, or a global named ``"\\ud800"``) are shown as escapes, and an enormous
name is shortened with its length stated.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from picklegate.findings import TRIAGE_ORDER, FileResult, Finding, ScanResult, Status

if TYPE_CHECKING:     # (start-up: explain is only for `picklegate explain`)
    from picklegate.explain import Explained, Explanation

RED, YELLOW, GREEN, RESET = "\033[31m", "\033[33m", "\033[32m", "\033[0m"
MAX_SHOWN = 2048                         # characters of one value before its middle is cut
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:         # a byte os.fsdecode could not decode (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(match.group()) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe(value: str, limit: int = MAX_SHOWN) -> str:
    """``value`` as printable, valid UTF-8 text on one line, at most about ``limit``
    characters: the middle of a longer value is replaced by how much was left out."""
    if len(value) > limit:
        keep = limit // 2
        value = (f"{value[:keep]}…[{len(value) - 2 * keep} of {len(value)} characters "
                 f"left out]…{value[-keep:]}")
    return _UNSAFE.sub(_escape, value)


def render(result: ScanResult, color: bool = False, verbose: bool = False) -> str:
    lines: list[str] = []
    for f in result.files:
        lines.extend(_file_lines(f, color, verbose))
    lines.append(summary(result, color))
    return "\n".join(lines) + "\n"


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{RESET}" if color else text


def _file_lines(f: FileResult, color: bool, verbose: bool) -> list[str]:
    """The file's path, then one indented line per global (or other finding), most severe
    first, then the triage hints and notes."""
    if f.status is Status.ERROR:
        return [_paint(f"{safe(f.path)}: error: {safe(f.error or '')}", RED, color)]
    notes = [f"  note: {safe(note)}" for note in f.inventory.notes]
    if not f.findings:
        return [f"{safe(f.path)}: clean"] + notes if verbose else []
    groups = group(f.findings)
    failing = sum(1 for x, _ in groups if not x.warning)
    counts = [_plural(failing, "problem")] if failing else []
    if len(groups) > failing:
        counts.append(_plural(len(groups) - failing, "warning"))
    head = f"{safe(f.path)}: {', '.join(counts)}"
    lines = [_paint(head, RED if failing else YELLOW, color)]
    lines += ["  " + _group_line(x, members, color) for x, members in groups]
    from picklegate.report import hints  # (start-up: presets and gadgets only for a finding)

    lines += [f"  hint: {safe(hint)}" for hint in hints.hints(f.findings)]
    return lines + notes


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def group(findings: Iterable[Finding]) -> list[tuple[Finding, int]]:
    """One finding per (kind, global) across members, with the summed count and the number of
    members it occurs in (the first occurrence's member and offset are kept); findings without
    a global stay as they are. Most severe kind first (findings.TRIAGE_ORDER)."""
    merged: dict[tuple[object, ...], tuple[Finding, set[str | None]]] = {}
    for x in sorted(findings, key=lambda y: y.sort_key):
        key: tuple[object, ...] = (x.kind, x.module, x.name) if x.module is not None \
            or x.name is not None else (x.key,)
        if key in merged:
            first, members = merged[key]
            merged[key] = (replace(first, count=first.count + x.count), members | {x.member})
        else:
            merged[key] = (x, {x.member})
    out = [(x, len(members)) for x, members in merged.values()]
    return sorted(out, key=lambda item: (TRIAGE_ORDER[item[0].kind], item[0].sort_key))


def _group_line(finding: Finding, members: int, color: bool) -> str:
    where = f"[{safe(finding.member)}] " if finding.member is not None else ""
    if finding.offset is not None:
        where += f"offset {finding.offset}: "
    times = f" ({finding.count} occurrences)" if finding.count > 1 else ""
    if members > 1:
        times = f" ({finding.count} occurrences in {members} members)"
    label = "warning" if finding.warning else finding.kind.value
    return _paint(f"{where}{safe(finding.message)}{times} [{label}]",
                  YELLOW if finding.warning else RED, color)


def location(path: str, finding: Finding) -> str:
    where = safe(path)
    if finding.member is not None:
        where += f" [{safe(finding.member)}]"
    if finding.offset is not None:
        where += f": offset {finding.offset}"
    return where


def finding_line(path: str, finding: Finding, color: bool = False) -> str:
    """One finding on one line with its path (the GitHub annotations use this shape)."""
    label = "warning" if finding.warning else finding.kind.value
    times = f" ({finding.count} occurrences)" if finding.count > 1 else ""
    text = f"{location(path, finding)}: {safe(finding.message)}{times} [{label}]"
    return _paint(text, YELLOW if finding.warning else RED, color)


def summary(result: ScanResult, color: bool = False) -> str:
    clean = result.count(Status.CLEAN)
    bad = result.count(Status.VIOLATION)
    errors = result.count(Status.ERROR)
    text = (f"picklegate: {len(result.files)} file(s) scanned: {clean} clean, "
            f"{bad} with violations, {errors} unreadable (policy: {safe(result.policy)})")
    return _paint(text, GREEN if not bad and not errors else RED, color)


# ---------------------------------------------------------------------------------------------
# picklegate explain


def render_explain(explanation: Explanation) -> str:
    """One block per global: where, how it is used, what decides it, its risk."""
    count = len(explanation.imports)
    lines = [f"{safe(explanation.path)} ({explanation.format}): "
             f"{_plural(count, 'distinct import')} (policy: {safe(explanation.policy)})"]
    if explanation.approval:
        lines.append(f"  approval: {safe(explanation.approval)}")
    for x in explanation.imports:
        lines += [""] + [safe(line) for line in _explained(x)]
    return "\n".join(lines) + "\n"


def _explained(x: Explained) -> list[str]:
    label = x.kind.value if x.kind is not None else "allowed"
    where = (f"member {x.member}, " if x.member is not None else "") + \
        f"offset {x.offset}, {x.opcode}"
    if x.count > 1:
        where += f" ({x.count} times)"
    if x.written_as:
        where += f"; written as {x.written_as}"
    lines = [f"{x.dotted} [{label}]", f"  where:   {where}"]
    lines += [f"  use:     {use}" for use in x.uses]
    if x.more_uses:
        lines.append(f"  use:     ... and {x.more_uses} more")
    lines.append(f"  policy:  {x.decided_by}")
    if x.risk is not None:
        refs = f" (see {x.references[0]})" if x.references else ""
        lines.append(f"  risk:    known gadget: {x.risk}{refs}")
    return lines
