"""SARIF 2.1.0 for GitHub code scanning. The only place SARIF output is produced.

What GitHub needs and what this module does about it:

* one run, ``tool.driver`` with ``rules``: one rule per :class:`FindingKind` plus ``scan-error``
  for files that could not be read. Rule ids are the finding kinds, so they stay the same
  across analyses, as code scanning requires;
* every result points at the *file* (``artifactLocation.uri``: a relative, percent-encoded URI
  under ``%SRCROOT%``) and at ``region.startLine`` 1. Model files are binary and code scanning
  ignores byte offsets, so the archive member and the opcode offset go into ``message.text``,
  ``logicalLocations`` and ``properties``, never into the path;
* ``partialFingerprints`` carry our own ``picklegate/v1`` value, computed here from (path,
  member, kind, module, name) without the offset, so an alert survives retraining until the
  global goes away. ``primaryLocationLineHash`` is not emitted: ``upload-sarif`` computes its
  own from "line 1" of the file, and when a supplied value differs (ours always did) it logs a
  mismatch warning for every result (codeql-action ``src/fingerprints.ts``);
* ``tool.driver.informationUri`` is optional in SARIF and left out until the project has a
  public address (a placeholder URL would send readers nowhere).

Messages are plain text. SARIF reserves ``{``/``}`` (placeholders) and ``[text](target)``
(embedded links) in them, and member and global names come from the scanned file, so those
characters are escaped as SARIF 3.11.5/3.11.6 prescribe: an attacker's member name cannot
become a link in the alert.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

import picklegate
from picklegate.findings import (SEVERITY, FileResult, Finding, FindingKind, ScanResult, Severity,
                                 Status)
from picklegate.report import json as json_report

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = "picklegate/v1"
SCAN_ERROR = "scan-error"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    short: str
    full: str
    help: str                   # plain text; markdown is derived from it
    severity: str               # GitHub security-severity, "0.0" to "10.0"
    precision: str


_REVIEW = ("If the file really needs it, have a reviewer confirm that the global cannot run code, "
           "touch files or the network, or import other modules, then add the exact global to "
           "the policy with a reason and an owner:\n\n"
           "    allow:\n"
           "      module.path: [Name]\n\n"
           "Never allow a whole module with \"*\" just to silence the finding.")
_APPROVE = ("If a reviewer has vetted this exact file, approve it by its sha256 in the policy's "
            "'approved:' section; any later change to the file voids the approval.")

# security-severity follows the triage tiers of findings.SEVERITY (GitHub shows >= 9.0 as
# critical, >= 7.0 as high, >= 4.0 as medium) and, within a tier, findings.TRIAGE_ORDER.
RULES: tuple[Rule, ...] = (
    Rule(FindingKind.GADGET.value, "KnownGadget",
         "Pickle imports a known code-execution gadget",
         "The file's pickle imports a global on picklegate's curated list of code-execution "
         "gadgets (data/gadgets.yaml: functions that run commands, evaluate code, import "
         "modules, reach attributes by name, touch files or the network). Ordinary model files "
         "never need them; loading the file hands that callable to the unpickler.",
         "The pickle names a global known to be used in pickle attacks. Treat the file as "
         "malicious until proven otherwise; `picklegate explain FILE` shows how the pickle "
         "uses it (for example the command it passes to posix.system).\n\n"
         "How to fix: do not load the file and never allow the global. Remove the file, or "
         "re-create it from trusted code (for PyTorch, a state_dict of tensors).",
         "10.0", "very-high"),
    Rule(FindingKind.NOT_ALLOWED.value, "NotAllowedGlobal",
         "Pickle global not in the allowlist (a policy gap)",
         "The file's pickle imports a global (module.name) that no allow entry of the picklegate "
         "policy names and that is not a known gadget: a policy gap, not yet an attack. "
         "Unpickling it (pickle.load, torch.load without weights_only, joblib.load, numpy.load "
         "with allow_pickle) imports that global and may call it, and an unreviewed callable "
         "can run arbitrary code.",
         "The pickle names a global the allowlist does not contain, so loading the file would "
         "import (and possibly call) something nobody has reviewed.\n\n"
         "How to fix: if a built-in preset allows it (the text report says so), add the preset "
         "to `extends`. If the global should not be there, re-create the file without it (for "
         "PyTorch, save a state_dict of tensors rather than a whole model object). " + _REVIEW,
         "8.0", "high"),
    Rule(FindingKind.DENIED.value, "DeniedGlobal",
         "Pickle global explicitly denied by the policy",
         "The file's pickle imports a global that a deny entry of the policy names, typically "
         "a known code-execution gadget such as builtins.eval or os.system. Deny entries win "
         "over every allow entry, preset and path rule.",
         "The pickle names a global the policy denies outright. Loading the file would hand "
         "that callable to the unpickler; treat the file as malicious until proven otherwise.\n\n"
         "How to fix: do not load the file. Remove it, or re-create it from trusted code. Deny "
         "entries are owned by the policy reviewers (the security team); they cannot be "
         "overridden by an allow entry.",
         "9.5", "very-high"),
    Rule(FindingKind.UNRESOLVED.value, "UnresolvedImport",
         "Pickle import whose target cannot be determined statically",
         "The pickle performs an import picklegate cannot prove, for example a STACK_GLOBAL "
         "whose module or name is computed rather than a literal string, or an EXT opcode that "
         "looks the global up in the copyreg extension registry. An unprovable import is "
         "treated as unsafe.",
         "picklegate could not tell which global this opcode imports, so it cannot check it "
         "against the allowlist. Ordinary picklers never produce this; it is a common way to "
         "hide a dangerous import.\n\n"
         "How to fix: re-save the object with a standard pickler (torch.save, joblib.dump or "
         "pickle.dump of plain objects) so every import is a literal module and name. " + _APPROVE,
         "8.5", "high"),
    Rule(FindingKind.MALFORMED.value, "MalformedContent",
         "Malformed or truncated model content",
         "Part of the file could not be fully understood: a truncated or corrupt pickle, bytes "
         "after the end of a stream, a bad header. Loaders and scanners disagree about such "
         "bytes, which is a known way to smuggle imports past a scanner, so picklegate fails "
         "closed.",
         "The file is not a well-formed model file, so picklegate cannot vouch for what a "
         "loader would do with it.\n\n"
         "How to fix: re-create the file from its source (a truncated upload or a bad merge is "
         "the usual cause). If the file is valid and loads correctly, please report it to "
         "picklegate. " + _APPROVE,
         "7.5", "high"),
    Rule(FindingKind.LIMIT.value, "LimitExceeded",
         "A scanner bound was reached; the rest of the file is unanalysed",
         "The file exceeded one of picklegate's bounds (opcodes, stack, memo, streams, archive "
         "members, decompressed size or nesting depth). Everything after that point is "
         "unanalysed, so the file is not passed.",
         "picklegate stopped analysing this file because it hit a built-in bound. Content "
         "crafted to be huge or deeply nested (a decompression bomb, for example) is a way to "
         "exhaust scanners.\n\n"
         "How to fix: check why the file is so large or deep; split or re-save it if it is "
         "legitimate. " + _APPROVE,
         "7.0", "high"),
    Rule(FindingKind.UNKNOWN_FORMAT.value, "UnknownFormat",
         "Content matches no format picklegate knows",
         "A file selected as a model file (by its name) contains nothing picklegate recognises "
         "(pickle, PyTorch, joblib, NumPy, zip, tar, safetensors, compressed variants). It "
         "cannot be shown to be free of pickle imports.",
         "The file has a model-file name but its content is in no format picklegate can "
         "analyse.\n\n"
         "How to fix: if the file is really data that no unpickler ever loads, set "
         "'unknown_formats: allow' in the policy or stop matching it. Otherwise convert it to "
         "a supported format (safetensors needs no pickle at all).",
         "5.0", "medium"),
    Rule(FindingKind.LFS_POINTER.value, "LfsPointer",
         "Git LFS pointer instead of model content",
         "The file is a Git LFS pointer: the real model content is not in the checkout, so it "
         "was not scanned.",
         "picklegate saw a Git LFS pointer, not the model, so the model itself is unchecked.\n\n"
         "How to fix: fetch LFS content before scanning (actions/checkout with 'lfs: true', or "
         "'git lfs pull'). To accept unscanned pointers knowingly, set 'lfs_pointers: warn' in "
         "the policy.",
         "5.0", "high"),
    Rule(FindingKind.ARCHIVE.value, "ArchiveAnomaly",
         "Archive anomaly (mismatched headers, bad CRC, odd member names)",
         "The zip or tar container has an anomaly such as local and central headers that "
         "disagree, a bad CRC, duplicate or path-traversing member names. Different readers "
         "may then see different bytes than picklegate did.",
         "The archive is built in a way ordinary writers (torch.save, zipfile, tarfile) never "
         "produce, which can make a loader read a different member than the scanner checked.\n\n"
         "How to fix: re-create the archive with the library that owns the format (torch.save, "
         "numpy.savez, a standard zip or tar tool). " + _APPROVE,
         "7.8", "high"),
    Rule(FindingKind.UNSUPPORTED.value, "UnsupportedHere",
         "Known format that cannot be opened in this environment",
         "The file is in a format picklegate knows, but this installation cannot open it, "
         "usually because an optional dependency (such as lz4) is missing. The content is "
         "unscanned.",
         "picklegate recognised the format but could not decode it here, so the content is "
         "unchecked.\n\n"
         "How to fix: install the missing extra named in the message (for example "
         "pip install 'picklegate[lz4]') and scan again.",
         "5.0", "high"),
    Rule(FindingKind.BUILD_ABUSE.value, "BuildAbuse",
         "BUILD changes a global or sets a special attribute",
         "A BUILD opcode applies state to a class, function or module itself rather than to an "
         "instance made from it, which changes that object for the whole loading process; or "
         "its state sets a __dunder__ attribute (such as __array_interface__, which makes numpy "
         "read raw memory at an address the file chooses, or __class__ and __dict__).",
         "Ordinary picklers never write this: pickle only applies state to objects it has just "
         "created, and attributes named like __this__ belong to Python and its libraries.\n\n"
         "How to fix: treat the file as malicious; re-create it from trusted code. " + _APPROVE,
         "9.0", "very-high"),
    Rule(SCAN_ERROR, "ScanError",
         "File could not be read",
         "picklegate could not read the file (missing, unreadable, or not retrievable from "
         "git), so it was not scanned. The scan exits with status 2.",
         "The file was not scanned at all.\n\n"
         "How to fix: make sure the path exists and is readable by the CI user, and, in git "
         "modes, that the commits are fetched (actions/checkout with 'fetch-depth: 0').",
         "5.0", "very-high"),
)
RULE_INDEX = {rule.id: i for i, rule in enumerate(RULES)}
# SARIF levels by tier: what must be fixed before loading is an error, unscanned content a
# warning; a finding the policy downgrades (lfs_pointers: warn) is a note.
LEVELS = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning"}


def level(kind: FindingKind, warning: bool = False) -> str:
    return "note" if warning else LEVELS[SEVERITY[kind]]


def render(result: ScanResult, color: bool = False) -> str:
    # clean(): lone surrogates (undecodable names) as escape text, giant values shortened,
    # exactly as in the JSON report; fingerprints are computed before, over the real names.
    return json.dumps(json_report.clean(document(result)), indent=2, sort_keys=False) + "\n"


def document(result: ScanResult) -> dict[str, Any]:
    files = sorted(result.files, key=lambda f: f.location)
    artifacts: list[dict[str, Any]] = []
    artifact_index: dict[str, int] = {}
    for f in files:
        if f.location not in artifact_index:
            artifact_index[f.location] = len(artifacts)
            artifacts.append({"location": artifact_location(f.location),
                              "roles": ["analysisTarget"],
                              "properties": {"format": f.format, "status": f.status.value}})
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for f in files:
        index = artifact_index[f.location]
        if f.status is Status.ERROR:
            results.append(_error_result(f, index))
            notifications.append(_notification(f, index))
        for finding in sorted(f.findings, key=lambda x: x.sort_key):
            results.append(_result(f.location, finding, index))
    invocation: dict[str, Any] = {"executionSuccessful": not notifications}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    invocation["properties"] = {"policy": result.policy}
    version = picklegate.__version__
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "picklegate",
                "version": version,
                "semanticVersion": version,
                "rules": [_rule(rule) for rule in RULES],
            }},
            "invocations": [invocation],
            "artifacts": artifacts,
            "results": results,
        }],
    }


# ---------------------------------------------------------------------------------------------
# locations


def artifact_location(path: str) -> dict[str, Any]:
    """The file as an artifactLocation: relative paths under %SRCROOT%, absolute ones as file:
    URIs. Percent-encodes everything but unreserved characters and '/', so spaces, ',', ':',
    '%', '#', '?' and non-ASCII names stay one unambiguous relative reference."""
    uri, relative = path_uri(path)
    return {"uri": uri, "uriBaseId": SRCROOT} if relative else {"uri": uri}


def path_uri(path: str) -> tuple[str, bool]:
    """(uri, relative). Names that are not valid UTF-8 (surrogate-escaped by os.walk) are
    encoded back to their bytes first, as PurePath.as_uri does."""
    if os.path.isabs(path):
        return PurePath(path).as_uri(), False
    if os.sep != "/":                   # Windows: its separator becomes '/'
        path = path.replace(os.sep, "/")
    return quote(os.fsencode(posixpath.normpath(path)), safe="/"), True


# ---------------------------------------------------------------------------------------------
# results


def fingerprint(path: str, finding: Finding) -> str:
    """sha256 of ``path|member|kind|module|name`` ('\\' and '|' inside a field are escaped with
    '\\' so fields cannot run into each other). The offset is left out so the alert keeps its
    identity when unrelated parts of the file change. Findings without a global (malformed,
    limit, ...) add their message with every number replaced by '#': it tells two such
    findings apart without depending on sizes and offsets."""
    fields = [path, finding.member or "", finding.kind.value, finding.module or "",
              finding.name or ""]
    if finding.module is None and finding.name is None:
        fields.append(re.sub(r"\d+", "#", finding.message))
    return _digest(fields)


def error_fingerprint(f: FileResult) -> str:
    return _digest([f.location, "", SCAN_ERROR, "", ""])


def _digest(fields: list[str]) -> str:
    text = "|".join(x.replace("\\", "\\\\").replace("|", "\\|") for x in fields)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def message_text(finding: Finding) -> str:
    times = f" ({finding.count} occurrences)" if finding.count > 1 else ""
    where = []
    if finding.member is not None:
        where.append(f"member {sarif_escape(finding.member)}")
    if finding.offset is not None:
        where.append(f"offset {finding.offset}")
    suffix = f" [{', '.join(where)}]" if where else ""
    return f"{sarif_escape(finding.message)}{times}{suffix}"


def sarif_escape(text: str) -> str:
    """Plain text for a SARIF message: literal braces doubled (3.11.5), square brackets
    backslash-escaped so no embedded link can be formed (3.11.6)."""
    return (text.replace("{", "{{").replace("}", "}}")
            .replace("[", "\\[").replace("]", "\\]"))


def _result(path: str, finding: Finding, index: int) -> dict[str, Any]:
    digest = fingerprint(path, finding)
    location: dict[str, Any] = {"physicalLocation": {
        "artifactLocation": {**artifact_location(path), "index": index},
        "region": {"startLine": 1},
    }}
    if finding.member is not None:
        location["logicalLocations"] = [{"name": finding.member, "kind": "member"}]
    return {
        "ruleId": finding.kind.value,
        "ruleIndex": RULE_INDEX[finding.kind.value],
        "level": level(finding.kind, finding.warning),
        "message": {"text": message_text(finding)},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: digest},
        "properties": {
            "kind": finding.kind.value,
            "module": finding.module,
            "name": finding.name,
            "global": f"{finding.module}.{finding.name}"
            if finding.module is not None and finding.name is not None else None,
            "member": finding.member,
            "offset": finding.offset,
            "count": finding.count,
        },
    }


def _error_text(f: FileResult) -> str:
    return sarif_escape(f.error or "the file could not be scanned")


def _error_result(f: FileResult, index: int) -> dict[str, Any]:
    digest = error_fingerprint(f)
    return {
        "ruleId": SCAN_ERROR,
        "ruleIndex": RULE_INDEX[SCAN_ERROR],
        "level": "error",
        "message": {"text": _error_text(f)},
        "locations": [{"physicalLocation": {
            "artifactLocation": {**artifact_location(f.location), "index": index},
            "region": {"startLine": 1},
        }}],
        "partialFingerprints": {FINGERPRINT_KEY: digest},
        "properties": {"kind": SCAN_ERROR, "error": f.error},
    }


def _notification(f: FileResult, index: int) -> dict[str, Any]:
    return {
        "level": "error",
        "message": {"text": _error_text(f)},
        "locations": [{"physicalLocation": {
            "artifactLocation": {**artifact_location(f.location), "index": index},
        }}],
        "associatedRule": {"id": SCAN_ERROR, "index": RULE_INDEX[SCAN_ERROR]},
    }


def _rule(rule: Rule) -> dict[str, Any]:
    default = "error" if rule.id == SCAN_ERROR else level(FindingKind(rule.id))
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.short},
        "fullDescription": {"text": rule.full},
        "help": {"text": rule.help, "markdown": _markdown(rule)},
        "defaultConfiguration": {"level": default},
        "properties": {
            "tags": ["security", "external/cwe/cwe-502"],
            "precision": rule.precision,
            "security-severity": rule.severity,
        },
    }


def _markdown(rule: Rule) -> str:
    # The help text is written so that it is valid Markdown as it stands (the policy snippet
    # is an indented code block); only the heading is added.
    return f"# {rule.short}\n\n{rule.full}\n\n{rule.help}"
