"""Human-readable text: one line per finding, then a summary line.

Paths, member names, global names and messages all come from scanned files or the file
system, so every one goes through :func:`safe` first: control characters (an ANSI escape in a
global name must not repaint the terminal), line separators and lone surrogates (undecodable
bytes of a file name, or a global named ``"\\ud800"``) are shown as escapes, and an enormous
name is shortened with its length stated.
"""
from __future__ import annotations

import re

from picklegate.findings import FileResult, Finding, ScanResult, Status

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
    if f.status is Status.ERROR:
        return [_paint(f"{safe(f.path)}: error: {safe(f.error or '')}", RED, color)]
    lines = [finding_line(f.path, x, color) for x in f.findings]
    if f.findings or verbose:
        lines += [f"{safe(f.path)}: note: {safe(note)}" for note in f.inventory.notes]
    return lines


def location(path: str, finding: Finding) -> str:
    where = safe(path)
    if finding.member is not None:
        where += f" [{safe(finding.member)}]"
    if finding.offset is not None:
        where += f": offset {finding.offset}"
    return where


def finding_line(path: str, finding: Finding, color: bool = False) -> str:
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
