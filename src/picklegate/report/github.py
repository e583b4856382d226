"""GitHub Actions output: workflow-command annotations and the Markdown job summary.

Paths, archive member names and global names all come from the scanned files, so everything
that reaches a workflow command is escaped exactly as actions/toolkit ``command.ts`` does
(``escapeData`` for the message, ``escapeProperty`` for ``file=`` and ``title=``): no name can
end the command early or start a new ``::command`` line. The job summary puts the same names
in code spans with ``|`` escaped, so they cannot break the table or inject Markdown or HTML.

This module never reads the environment: the caller passes it to :func:`write_step_summary`.
"""
from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path

from picklegate import review
from picklegate.findings import FileResult, Finding, ScanResult, Status
from picklegate.report import hints, text
from picklegate.report.hints import AllowEntries, allow_line
from picklegate.review import Gadget

# GitHub shows at most 1 MiB of summary per step; stay well under it so other steps' output
# (and this step's own other writes) still fit.
SUMMARY_LIMIT = 1_000_000
MAX_CELL = 400                          # characters per table cell before it is cut
MAX_SNIPPET = SUMMARY_LIMIT // 4        # bytes of the allow-entry snippet
SCAN_ERROR = "scan-error"


# ---------------------------------------------------------------------------------------------
# workflow commands


def escape_data(value: str) -> str:
    """actions/toolkit command.ts ``escapeData``: the message after ``::``."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """actions/toolkit command.ts ``escapeProperty``: ``file=``, ``title=`` and the like."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def command(level: str, path: str, title: str, message: str) -> str:
    return (f"::{level} file={escape_property(path)},line=1,title={escape_property(title)}"
            f"::{escape_data(message)}")


def render(result: ScanResult, color: bool = False) -> str:
    """One ``::error``/``::warning`` per finding (and per unreadable file), then the summary
    line. Every finding is printed: GitHub shows only the first 10 annotations of each level
    per step, and the log keeps the rest."""
    lines: list[str] = []
    for f in sorted(result.files, key=repo_path):
        path = text.safe(repo_path(f))
        if f.status is Status.ERROR:
            why = text.safe(f.error or "the file could not be scanned")
            lines.append(command("error", path, f"picklegate ({SCAN_ERROR})", f"{path}: {why}"))
        for finding in sorted(f.findings, key=lambda x: x.sort_key):
            lines.append(command("warning" if finding.warning else "error", path,
                                 f"picklegate ({finding.kind.value})",
                                 annotation_message(path, finding)))
    lines.append(one_line(text.summary(result)))
    return "\n".join(lines) + "\n"


def repo_path(f: FileResult) -> str:
    """The path GitHub attaches an annotation to: repository-relative with forward slashes,
    as the diff names it (``./models/x.pkl`` would not attach). A file outside the repository
    keeps its own path, normalised."""
    if f.relpath is not None:
        return f.relpath
    path = f.path.replace(os.sep, "/") if os.sep != "/" else f.path
    return posixpath.normpath(path)


def annotation_message(path: str, finding: Finding) -> str:
    """The text reporter's line without its label: path, [member], offset, message."""
    times = f" ({finding.count} occurrences)" if finding.count > 1 else ""
    return f"{text.location(path, finding)}: {text.safe(finding.message)}{times}"


def one_line(value: str) -> str:
    """A plain (non-command) log line: a line break inside it could start a command."""
    return value.replace("\r", "\\r").replace("\n", "\\n")


# ---------------------------------------------------------------------------------------------
# job summary


def write_step_summary(result: ScanResult, environ: Mapping[str, str]) -> bool:
    """Append the Markdown summary to the file ``environ["GITHUB_STEP_SUMMARY"]`` names.

    Returns False (and writes nothing) when the variable is unset or empty. An unwritable
    file raises OSError for the caller to report.
    """
    target = environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    path = Path(target)
    lead = "\n" if path.exists() and path.stat().st_size else ""
    with path.open("a", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(lead + summary_markdown(result))
    return True


def summary_markdown(result: ScanResult, limit: int = SUMMARY_LIMIT,
                     gadgets: list[Gadget] | None = None) -> str:
    """Heading, counts, a findings table (cut to stay under ``limit`` UTF-8 bytes) and the
    not-allowed globals as a reviewable ``allow:`` snippet. ``gadgets`` defaults to the
    curated list in data/gadgets.yaml."""
    clean = result.count(Status.CLEAN)
    bad = result.count(Status.VIOLATION)
    errors = result.count(Status.ERROR)
    rows = [row for f in sorted(result.files, key=repo_path) for row in _rows(f)]
    warnings = sum(1 for f in result.files for x in f.findings if x.warning)
    ok = not bad and not errors
    head = [
        "### " + ("✅ picklegate: no violations" if ok else "❌ picklegate found problems"),
        "",
        f"**{len(result.files)}** file(s) scanned: {clean} clean, {bad} with violations, "
        f"{errors} unreadable; {len(rows) - warnings - errors} finding(s), "
        f"{warnings} warning(s). "
        f"Policy: {_code(result.policy)}",
        "",
    ]
    if rows:
        head += ["| File | Member | Offset | Global | Kind | Message |",
                 "|---|---|---|---|---|---|"]
    if gadgets is None:
        gadgets = known_gadgets()
    details = _snippet_block(result, gadgets)
    reserve = 200                       # the "… and N more" line and line breaks
    used = _size("\n".join(head)) + _size(details) + reserve
    shown: list[str] = []
    for row in rows:
        cost = _size(row) + 1
        if used + cost > limit:
            break
        shown.append(row)
        used += cost
    body = head + shown
    if len(shown) < len(rows):
        body += ["", f"_… and {len(rows) - len(shown)} more finding(s), left out to keep this "
                     "summary under GitHub's size limit; the job log and the SARIF report "
                     "list them all._"]
    text_out = "\n".join(body) + "\n"
    if details:
        text_out += "\n" + details
    return text_out


def _rows(f: FileResult) -> list[str]:
    rows = []
    path = repo_path(f)
    if f.status is Status.ERROR:
        rows.append(_cells(path, None, None, "", SCAN_ERROR,
                           f.error or "the file could not be scanned"))
    for finding in sorted(f.findings, key=lambda x: x.sort_key):
        dotted = (f"{finding.module}.{finding.name}"
                  if finding.module is not None and finding.name is not None
                  else finding.module or finding.name or "")
        times = f" ({finding.count} occurrences)" if finding.count > 1 else ""
        kind = finding.kind.value + (" (warning)" if finding.warning else "")
        rows.append(_cells(path, finding.member, finding.offset, dotted, kind,
                           finding.message + times))
    return rows


def _cells(path: str, member: str | None, offset: int | None, dotted: str, kind: str,
           message: str) -> str:
    cells = [_code(path), _code(member or ""), "" if offset is None else str(offset),
             _code(dotted), kind, _code(message)]
    return "| " + " | ".join(cells) + " |"


# Control characters, line separators and lone surrogates (undecodable bytes of a file name).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def visible(value: str) -> str:
    """Control characters as escapes (a newline in a member name is shown, not obeyed), and
    lone surrogates too, so the summary is always valid UTF-8."""
    def esc(m: re.Match[str]) -> str:
        ch = m.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
            f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return _CONTROL.sub(esc, value)


def _code(value: str) -> str:
    """A GFM table cell holding ``value`` literally: a code span (no Markdown, HTML or
    autolinks inside), delimited by more backticks than the longest run inside it, with ``|``
    escaped (GFM removes that backslash before the cell is parsed, even in code spans)."""
    if not value:
        return ""
    shown = visible(value)
    if len(shown) > MAX_CELL:
        shown = shown[:MAX_CELL] + "…"
    shown = shown.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", shown)), default=0)
    fence = "`" * (longest + 1)
    if shown.strip(" ") and (shown[0] in "` " or shown[-1] in "` "):
        shown = f" {shown} "        # CommonMark strips exactly one space from each side
    return f"{fence}{shown}{fence}"


def _size(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------
# the allow-entry snippet

def known_gadgets() -> list[Gadget]:
    """The curated gadget list (data/gadgets.yaml), or none if this install lacks it."""
    return list(review.known_gadgets())


def allow_entries(result: ScanResult, gadgets: list[Gadget] | None = None) -> AllowEntries:
    """Every not-allowed global of the scan, as :func:`hints.allow_entries` selects them (the
    text report's per-file hints use the same function)."""
    return hints.allow_entries((x for f in result.files for x in f.findings), gadgets)


def allow_snippet(result: ScanResult, limit: int = MAX_SNIPPET,
                  gadgets: list[Gadget] | None = None) -> str:
    """The YAML text (no fence), or "" when nothing was not-allowed."""
    entries = allow_entries(result, gadgets)
    if not entries.modules and not entries.gadgets and not entries.unnameable:
        return ""
    lines = [
        "# REVIEW EVERY ENTRY BEFORE ADDING IT. An allow entry lets every pickle import that",
        "# global, and a global that can run code, open files or import modules makes every",
        "# pickle that names it able to do so when it is loaded. Keep only what a reviewer has",
        "# confirmed is inert, and give each kept name a reason and an owner, e.g.",
        "#   - {name: Name, reason: \"...\", owner: \"@team\"}",
    ]
    if entries.modules:
        lines.append("allow:")
    used = _size("\n".join(lines))
    left = 0
    for module, names in entries.modules.items():
        line = "  " + allow_line(module, names)
        if used + len(line) + 1 > limit:
            left += 1
            continue
        lines.append(line)
        used += len(line) + 1
    if left:
        lines.append(f"# … and {left} more module(s) left out to keep the summary small")
    if entries.gadgets:
        lines.append("# NOT offered: known code-execution gadgets. Do not allow these; remove "
                     "them from the file:")
        for dotted, gadget in entries.gadgets[:100]:
            why = " ".join(gadget.why.split())
            lines.append(f"#   {dotted}: {why}")
        if len(entries.gadgets) > 100:
            lines.append(f"#   … and {len(entries.gadgets) - 100} more")
    if entries.unnameable:
        lines.append(f"# {entries.unnameable} global(s) left out: a policy cannot name them "
                     "exactly (see the table)")
    return "\n".join(lines) + "\n"


def _snippet_block(result: ScanResult, gadgets: list[Gadget] | None) -> str:
    snippet = allow_snippet(result, gadgets=gadgets)
    if not snippet:
        return ""
    count = sum(len(v) for v in allow_entries(result, gadgets).modules.values())
    longest = max((len(run) for run in re.findall(r"`+", snippet)), default=0)
    fence = "`" * max(3, longest + 1)
    return (f"<details>\n<summary>Allow entries for {count} not-allowed global(s): review "
            "each one before adding it to the policy</summary>\n\n"
            f"{fence}yaml\n{snippet}{fence}\n\n</details>\n")
