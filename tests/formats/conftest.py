"""Shared policies and helpers for the format tests."""
from __future__ import annotations

import functools
from typing import Iterable

from picklegate.findings import FileResult, FindingKind
from picklegate.policy import Policy, load_policy, load_presets
from picklegate.scan import ScanOptions, scan_bytes

ALL_PRESETS = ("builtins-safe", "numpy", "sklearn", "torch")


@functools.cache
def _policy(presets: tuple[str, ...], also_allow: tuple[str, ...]) -> Policy:
    if not also_allow:
        return load_presets(presets, "test: " + "+".join(presets))
    by_module: dict[str, list[str]] = {}
    for dotted in also_allow:
        module, name = dotted.rsplit(".", 1)
        by_module.setdefault(module, []).append(name)
    lines = ["version: 1", f"extends: [{', '.join(presets)}]", "allow:"]
    lines += [f"  {module}: [{', '.join(names)}]" for module, names in by_module.items()]
    text = "\n".join(lines) + "\n"
    return load_policy("inline.yaml", read=lambda path: text if path == "inline.yaml" else None)


def policy(presets: Iterable[str] = ALL_PRESETS, also_allow: Iterable[str] = ()) -> Policy:
    return _policy(tuple(sorted(presets)), tuple(sorted(also_allow)))


def scan(data: bytes, path: str = "model.bin", presets: Iterable[str] = ALL_PRESETS,
         also_allow: Iterable[str] = (), **limits: int) -> FileResult:
    from picklegate.limits import Limits

    options = ScanOptions(limits=Limits(**limits)) if limits else None
    return scan_bytes(data, policy(presets, also_allow), path=path, options=options)


def summary(result: FileResult) -> set[tuple[str, str | None, str | None]]:
    """{(kind, 'module.name' or None, member)} for every finding."""
    return {(f.kind.value, f"{f.module}.{f.name}" if f.module is not None else None, f.member)
            for f in result.findings}


def kinds(result: FileResult) -> set[FindingKind]:
    return {f.kind for f in result.findings}


def imports_found(result: FileResult) -> set[tuple[str, str | None]]:
    """{('module.name', member)} of the not-allowed and gadget findings."""
    return {(f"{f.module}.{f.name}", f.member) for f in result.findings
            if f.kind in (FindingKind.NOT_ALLOWED, FindingKind.GADGET)}
