"""Command line: parses arguments, wires the stages together, maps errors to exit codes.

Exit codes: 0 every file clean, 1 at least one finding, 2 usage/policy/IO error (2 wins).
This is the only module that prints, reads the environment or exits.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence, TextIO

from picklegate import __version__
from picklegate.errors import PicklegateError
from picklegate.findings import ScanResult, Status
from picklegate.policy import Policy, default_policy, load_policy
from picklegate.report import FORMATS, reporter
from picklegate.scan import scan_sources
from picklegate.sources import file_sources

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
POLICY_NAMES = (".picklegate.yaml", ".picklegate.yml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picklegate",
        description="Statically check pickle globals in model files against an allowlist policy.")
    parser.add_argument("--version", action="version", version=f"picklegate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    scan = commands.add_parser("scan", help="scan model files (the pre-commit hook entry)")
    scan.add_argument("paths", nargs="*", metavar="PATH",
                      help="files, or directories to search for model files (default: .)")
    scan.add_argument("--policy", metavar="FILE",
                      help="policy file (default: .picklegate.yaml at the repository root, "
                           "else the built-in default)")
    scan.add_argument("--format", choices=FORMATS, default="text", help="output format")
    scan.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="colour text output (auto: only on a terminal, never with NO_COLOR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # argparse already printed its message
        return EXIT_CLEAN if exc.code == 0 else EXIT_ERROR
    try:
        return run_scan(args, sys.stdout, sys.stderr)
    except PicklegateError as exc:
        print(f"picklegate: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def run_scan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    root = find_root(Path.cwd())
    policy = resolve_policy(args.policy, root, err)
    result = scan_sources(file_sources(args.paths or ["."], root), policy)
    render = reporter(args.format)
    out.write(render(result, use_color(args.color, out)))
    return exit_code(result)


def exit_code(result: ScanResult) -> int:
    if result.count(Status.ERROR):
        return EXIT_ERROR
    return EXIT_FINDINGS if result.count(Status.VIOLATION) else EXIT_CLEAN


def find_root(start: Path) -> Path | None:
    """The enclosing git work tree (found without running git), if any."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def resolve_policy(explicit: str | None, root: Path | None, err: TextIO) -> Policy:
    if explicit is not None:
        return load_policy(explicit)
    for folder in ([root] if root else []) + [Path.cwd()]:
        for name in POLICY_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return load_policy(os.path.relpath(candidate))
    policy = default_policy()
    print(f"picklegate: no .picklegate.yaml found; using the {policy.source}", file=err)
    return policy


def use_color(choice: str, stream: TextIO) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty() and os.environ.get("TERM") != "dumb"
