"""Reporters: each turns a ScanResult into one output format. Nothing else formats results."""
from __future__ import annotations

from typing import Callable

from picklegate.findings import ScanResult

# (result, colour, verbose) -> the whole document
Reporter = Callable[[ScanResult, bool, bool], str]
FORMATS = ("text", "json", "sarif", "github")


def reporter(name: str) -> Reporter:
    """The reporter for ``name``. Only its own module is imported: a text report (every hook
    run) does not pay for json, hashlib and urllib, which the SARIF and GitHub reporters use."""
    if name == "text":
        from picklegate.report import text
        return text.render
    if name == "json":
        from picklegate.report import json as json_report
        return lambda result, color, verbose: json_report.render(result)
    if name == "sarif":
        from picklegate.report import sarif
        return lambda result, color, verbose: sarif.render(result)
    if name == "github":
        from picklegate.report import github
        return lambda result, color, verbose: github.render(result)
    raise KeyError(name)
