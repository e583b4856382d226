"""Reporters: each turns a ScanResult into one output format. Nothing else formats results."""
from __future__ import annotations

from typing import Callable

from picklegate.findings import ScanResult

# (result, colour, verbose) -> the whole document
Reporter = Callable[[ScanResult, bool, bool], str]
FORMATS = ("text", "json", "sarif", "github")


def reporter(name: str) -> Reporter:
    from picklegate.report import github, sarif, text
    from picklegate.report import json as json_report

    reporters: dict[str, Reporter] = {
        "text": text.render,
        "json": lambda result, color, verbose: json_report.render(result),
        "sarif": lambda result, color, verbose: sarif.render(result),
        "github": lambda result, color, verbose: github.render(result),
    }
    return reporters[name]
