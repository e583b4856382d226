"""Human-readable text: one line per finding, then a summary line."""
from __future__ import annotations

from picklegate.findings import FileResult, Finding, ScanResult, Status

RED, YELLOW, GREEN, RESET = "\033[31m", "\033[33m", "\033[32m", "\033[0m"


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
        return [_paint(f"{f.path}: error: {f.error}", RED, color)]
    lines = [finding_line(f.path, x, color) for x in f.findings]
    if f.findings or verbose:
        lines += [f"{f.path}: note: {note}" for note in f.inventory.notes]
    return lines


def location(path: str, finding: Finding) -> str:
    where = path
    if finding.member is not None:
        where += f" [{finding.member}]"
    if finding.offset is not None:
        where += f": offset {finding.offset}"
    return where


def finding_line(path: str, finding: Finding, color: bool = False) -> str:
    label = "warning" if finding.warning else finding.kind.value
    times = f" ({finding.count} occurrences)" if finding.count > 1 else ""
    text = f"{location(path, finding)}: {finding.message}{times} [{label}]"
    return _paint(text, YELLOW if finding.warning else RED, color)


def summary(result: ScanResult, color: bool = False) -> str:
    clean = result.count(Status.CLEAN)
    bad = result.count(Status.VIOLATION)
    errors = result.count(Status.ERROR)
    text = (f"picklegate: {len(result.files)} file(s) scanned: {clean} clean, "
            f"{bad} with violations, {errors} unreadable (policy: {result.policy})")
    return _paint(text, GREEN if not bad and not errors else RED, color)
