"""Reporters: each turns a ScanResult into one output format. Nothing else formats results."""
from __future__ import annotations

from typing import Callable

from picklegate.findings import ScanResult

Reporter = Callable[[ScanResult, bool], str]


def reporter(name: str) -> Reporter:
    from picklegate.report import json as json_report
    from picklegate.report import text

    reporters: dict[str, Reporter] = {"text": text.render, "json": json_report.render}
    return reporters[name]


FORMATS = ("text", "json")
