"""The JSON document (schema version 1). The only place JSON output is produced.

Every string is valid Unicode: a lone surrogate (an undecodable file-name byte, or a global
named ``"\\ud800"``) is written as the escape text the text report shows (``\\xff``,
``\\ud800``), because strict JSON parsers reject a lone ``\\ud800`` escape. Control
characters are escaped by ``json.dumps`` itself, and a value longer than ``MAX_JSON`` has its
middle replaced by how much was left out.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from picklegate.findings import FileResult, Finding, GlobalRef, ScanResult, Status
from picklegate.report.text import safe

if TYPE_CHECKING:     # (start-up: explain is only for `picklegate explain`)
    from picklegate.explain import Explained, Explanation

MAX_JSON = 8192
_NEEDS_CARE = re.compile("[\ud800-\udfff]")

JSON_VERSION = 1


def render(result: ScanResult, color: bool = False) -> str:
    return json.dumps(clean(document(result)), indent=2, sort_keys=False) + "\n"


def clean(value: Any) -> Any:
    """The document with every string made valid and bounded (see the module docstring)."""
    if isinstance(value, str):
        # (such a string also gets its control characters as escape text, as in the text report)
        return safe(value, MAX_JSON) if len(value) > MAX_JSON or _NEEDS_CARE.search(value) \
            else value
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def document(result: ScanResult) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "policy": result.policy,
        "files": [_file(f) for f in result.files],
        "summary": {
            "files": len(result.files),
            "clean": result.count(Status.CLEAN),
            "violations": result.count(Status.VIOLATION),
            "errors": result.count(Status.ERROR),
        },
    }


def _file(f: FileResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": f.path,
        "format": f.format,
        "status": f.status.value,
        "findings": [_finding(x) for x in f.findings],
        "imports": _imports(f.inventory.imports),
        "notes": list(f.inventory.notes),
    }
    if f.error is not None:
        out["error"] = f.error
    return out


def _finding(f: Finding) -> dict[str, Any]:
    return {
        "kind": f.kind.value,
        "severity": "warning" if f.warning else "error",
        "module": f.module,
        "name": f.name,
        "member": f.member,
        "offset": f.offset,
        "count": f.count,
        "message": f.message,
    }


def _imports(refs: tuple[GlobalRef, ...]) -> list[dict[str, Any]]:
    """Distinct imports per member with their first offset and count: the file's inventory."""
    seen: dict[tuple[str | None, str, str], dict[str, Any]] = {}
    for ref in refs:
        key = (ref.member, ref.module, ref.name)
        if key in seen:
            seen[key]["count"] += ref.count
        else:
            seen[key] = {"module": ref.module, "name": ref.name, "member": ref.member,
                         "offset": ref.offset, "count": ref.count}
    return list(seen.values())


# ---------------------------------------------------------------------------------------------
# picklegate explain


def render_explain(explanation: Explanation) -> str:
    return json.dumps(clean(explain_document(explanation)), indent=2) + "\n"


def explain_document(explanation: Explanation) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "path": explanation.path,
        "format": explanation.format,
        "policy": explanation.policy,
        "approval": explanation.approval,
        "imports": [_explained(x) for x in explanation.imports],
    }


def _explained(x: Explained) -> dict[str, Any]:
    return {
        "module": x.module,
        "name": x.name,
        "member": x.member,
        "offset": x.offset,
        "opcode": x.opcode,
        "count": x.count,
        "written_as": x.written_as,
        "uses": list(x.uses),
        "more_uses": x.more_uses,
        "verdict": x.verdict,
        "kind": x.kind.value if x.kind is not None else None,
        "decided_by": x.decided_by,
        "risk": x.risk,
        "references": list(x.references),
    }
