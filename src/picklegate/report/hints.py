"""Triage hints: what would admit the globals a scan did not allow, as policy text.

One place decides which not-allowed globals may be offered as allow entries and writes them as
YAML, so the text report's per-file hint and the GitHub step summary's snippet can never
disagree. Known gadgets (data/gadgets.yaml) are never offered: the hint must not make allowing
``posix.system`` one paste away. A global a built-in preset already allows is offered as that
preset instead, since a reviewed preset beats a hand-written entry.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from picklegate.findings import Finding, FindingKind
from picklegate.policy import Policy, Verdict, load_presets, preset_names
from picklegate.review import Gadget, gadget_for, known_gadgets

# What a policy accepts as a module key (policy._MODULE_RE without the 'pkg.*' form) and as a
# name that can stay unquoted in YAML.
_IDENTIFIERS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
# Plain scalars PyYAML would not read as strings.
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
# Control characters, line separators and lone surrogates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@dataclass(frozen=True)
class AllowEntries:
    """What may be offered: {module: sorted names}, the known gadgets among the findings (never
    offered), and how many globals a policy cannot name."""

    modules: dict[str, list[str]]
    gadgets: list[tuple[str, Gadget]]
    unnameable: int


def allow_entries(findings: Iterable[Finding],
                  gadgets: Iterable[Gadget] | None = None) -> AllowEntries:
    """Every not-allowed global, grouped by module. Left out: known gadgets, and globals a
    policy cannot name (an odd module, a name with spaces, or "*", which would allow far more
    than what was found). ``gadgets`` defaults to the curated list."""
    listed = tuple(known_gadgets() if gadgets is None else gadgets)
    modules: dict[str, set[str]] = {}
    dangerous: dict[str, Gadget] = {}
    unnameable: set[tuple[str, str]] = set()
    for finding in findings:
        if (finding.kind not in (FindingKind.NOT_ALLOWED, FindingKind.GADGET)
                or finding.module is None or finding.name is None):
            continue
        module, name = finding.module, finding.name
        gadget = gadget_for(module, name, listed)
        if gadget is None and finding.kind is FindingKind.GADGET:
            gadget = gadget_for(module, name, known_gadgets())
        if gadget is not None:
            dangerous[f"{module}.{name}"] = gadget
        elif finding.kind is FindingKind.GADGET:
            continue                        # a gadget by a list this install lacks: never offer
        elif not nameable(module, name):
            unnameable.add((module, name))
        else:
            modules.setdefault(module, set()).add(name)
    return AllowEntries({m: sorted(modules[m]) for m in sorted(modules)},
                        sorted(dangerous.items()), len(unnameable))


def nameable(module: str, name: str) -> bool:
    return (_IDENTIFIERS.match(module) is not None and name not in ("", "*")
            and not any(c.isspace() or _CONTROL.match(c) for c in name))


def yaml_scalar(value: str) -> str:
    """A YAML scalar that reads back as exactly ``value`` (a string), in printable ASCII."""
    if _IDENTIFIERS.match(value) and value.lower() not in _YAML_WORDS:
        return value
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def allow_line(module: str, names: Iterable[str]) -> str:
    """One entry of a policy's ``allow:`` mapping, e.g. ``mymodels.net: [TinyNet]``."""
    return f"{yaml_scalar(module)}: [{', '.join(yaml_scalar(n) for n in names)}]"


# ---------------------------------------------------------------------------------------------
# presets


@functools.cache
def _preset(name: str) -> Policy:
    return load_presets([name], f"preset {name}")


def covering_presets(entries: AllowEntries) -> tuple[dict[str, list[str]], AllowEntries]:
    """({preset: dotted globals it allows}, what no preset allows). Each global goes to the
    first preset (by name) that allows it; gadgets are never looked up."""
    covered: dict[str, list[str]] = {}
    rest: dict[str, list[str]] = {}
    names = preset_names()
    for module, globals_ in entries.modules.items():
        for name in globals_:
            preset = next((p for p in names
                           if _preset(p).decide(module, name).verdict is Verdict.ALLOWED), None)
            if preset is None:
                rest.setdefault(module, []).append(name)
            else:
                covered.setdefault(preset, []).append(f"{module}.{name}")
    return covered, AllowEntries(rest, entries.gadgets, entries.unnameable)


def hints(findings: Iterable[Finding]) -> list[str]:
    """The triage hints for one file's findings, one line each (no gadget is ever offered)."""
    covered, rest = covering_presets(allow_entries(findings))
    lines = [f"covered by preset {preset}: add it to `extends`"
             for preset in sorted(covered)]
    for module, names in rest.modules.items():
        pronoun = "it" if len(names) == 1 else "them"
        lines.append(f"to allow {pronoun}: `{allow_line(module, names)}`")
    return lines
