"""Command line: parses arguments, wires the stages together, maps errors to exit codes.

Exit codes: 0 every file clean, 1 at least one finding, 2 usage/policy/IO error (2 wins).
This is the only module that prints, reads the environment or exits.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Sequence, TextIO

from picklegate import __version__, gitio
from picklegate.errors import PicklegateError, UsageError
from picklegate.findings import ScanResult, Status
from picklegate.policy import Policy, default_policy, load_policy, utc_today
from picklegate.report import FORMATS, reporter
from picklegate.report.github import write_step_summary
from picklegate.review import review
from picklegate.scan import scan_sources
from picklegate.sources import Source, file_sources

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
MACHINE_FORMATS = ("json", "sarif")     # stdout is one document, nothing else
POLICY_NAMES = (".picklegate.yaml", ".picklegate.yml")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="picklegate",
        description="Statically check pickle globals in model files against an allowlist policy.")
    parser.add_argument("--version", action="version", version=f"picklegate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _scan_parser(commands.add_parser("scan", help="scan model files (the pre-commit hook entry)"))
    policy = commands.add_parser("policy", help="work with policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="COMMAND",
                                            parser_class=_Parser)
    policy_commands.required = True
    check = policy_commands.add_parser(
        "check", help="validate policies and warn about gadgets, expiry and stale approvals")
    check.add_argument("policies", nargs="*", metavar="POLICY",
                       help="policy files (default: the one scan would use)")
    return parser


def _scan_parser(scan: argparse.ArgumentParser) -> None:
    scan.add_argument("paths", nargs="*", metavar="PATH",
                      help="files, or directories to search for model files (default: .)")
    where = scan.add_mutually_exclusive_group()
    where.add_argument("--staged", action="store_true",
                       help="scan the model files staged in the git index (what will be committed)")
    where.add_argument("--diff", metavar="BASE[..HEAD]",
                       help="scan the model files a commit range added or changed")
    scan.add_argument("--policy", metavar="FILE",
                      help="policy file (default: .picklegate.yaml at the repository root, "
                           "else the built-in default)")
    scan.add_argument("--policy-from", choices=("base", "head"), default="base",
                      help="with --diff: read the policy from the base commit (default) or "
                           "from the working tree")
    scan.add_argument("--format", choices=FORMATS, default="text", help="output format")
    scan.add_argument("--output", metavar="[FORMAT=]FILE", action="append", default=[],
                      type=output_target,
                      help="also write the report in FORMAT (text, json, sarif, github) to "
                           "FILE; repeat it for several reports from the same scan. A plain "
                           "FILE writes --format there and the terminal gets the text report")
    scan.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="colour text output (auto: only on a terminal, never with NO_COLOR)")
    scan.add_argument("-v", "--verbose", action="store_true",
                      help="also print notes for clean files")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "policy":
            return run_policy_check(args, sys.stdout, sys.stderr)
        return run_scan(args, sys.stdout, sys.stderr)
    except PicklegateError as exc:
        print(f"picklegate: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as exc:          # --help and --version end here
        return exc.code if isinstance(exc.code, int) else EXIT_CLEAN
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------------------------
# scan


def run_scan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if (args.staged or args.diff) and args.paths:
        raise UsageError("give either paths or --staged/--diff, not both")
    if args.staged or args.diff:
        sources, policy = _git_sources(args, gitio.toplevel(), err)
    else:
        root = find_root(Path.cwd())
        policy = resolve_policy(args.policy, root, err)
        sources = list(file_sources(args.paths or ["."], root))
    result = scan_sources(sources, policy)
    _emit(args, result, out, err)
    return exit_code(result)


def _git_sources(args: argparse.Namespace, root: Path,
                 err: TextIO) -> tuple[list[Source], Policy]:
    if args.staged:
        return gitio.staged_sources(root), resolve_policy(args.policy, root, err)
    rng = gitio.Range.parse(args.diff)
    if args.policy_from == "head":
        policy = resolve_policy(args.policy, root, err)
    else:
        policy = _policy_at(gitio.verify_revision(root, rng.base), rng.base, args.policy, root,
                            err)
    return gitio.diff_sources(root, rng), policy


def _policy_at(commit: str, label: str, explicit: str | None, root: Path,
               err: TextIO) -> Policy:
    """The policy as it is in the base commit, so a change cannot approve itself."""
    candidates = [_repo_relative(explicit, root)] if explicit else list(POLICY_NAMES)
    for path in candidates:
        if gitio.read_text_at(root, commit, path) is not None:
            return load_policy(path, read=lambda p: gitio.read_text_at(root, commit, p),
                               source=f"{path} at {label} ({commit[:12]})")
    if explicit:
        raise UsageError(f"{explicit} does not exist at {label}; use --policy-from head to "
                         "read it from the working tree")
    policy = default_policy()
    print(f"picklegate: no .picklegate.yaml at {label}; using the {policy.source}", file=err)
    return policy


def _repo_relative(path: str, root: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(root.resolve()).as_posix()
    except ValueError:
        raise UsageError(f"{path} is outside the repository") from None


@dataclass(frozen=True)
class OutputTarget:
    """One ``--output``: a report format (None: the ``--format``, the old ``--output FILE``)
    and the file it goes to."""

    format: str | None
    path: str


def output_target(value: str) -> OutputTarget:
    """``FORMAT=FILE`` when the part before the first ``=`` is a word, else a plain FILE. A word
    that is no format is an error rather than a file name, so ``sarf=x.sarif`` is caught; a
    file whose name starts like that is written ``./sarf=x.sarif``."""
    head, sep, path = value.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", head):
        return OutputTarget(None, value)
    if head not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"unknown report format {head!r} in {value!r} (choose from {', '.join(FORMATS)}; "
            f"write ./{value} for a file of that name)")
    if not path:
        raise argparse.ArgumentTypeError(f"no file after '{head}=' in {value!r}")
    return OutputTarget(head, path)


def _emit(args: argparse.Namespace, result: ScanResult, out: TextIO, err: TextIO) -> None:
    """Every requested report, from this one result: the terminal's, each ``--output`` file
    (each format rendered once), then the job summary if any report is ``github``."""
    terminal, files = _targets(args)
    color = terminal == "text" and use_color(args.color, out)
    out.write(reporter(terminal)(result, color, args.verbose))
    documents = {fmt: reporter(fmt)(result, False, args.verbose) for fmt, _ in files}
    for fmt, path in files:
        _write(path, documents[fmt])
    if "github" in (terminal, *documents):
        try:
            write_step_summary(result, os.environ)
        except OSError as exc:
            raise UsageError(f"cannot write the job summary: {exc.strerror or exc}") from None
    if terminal in MACHINE_FORMATS:
        # The text and github reports list unreadable files themselves; behind a JSON or
        # SARIF document on stdout a person still needs one line on stderr.
        for failed in result.files:
            if failed.status is Status.ERROR:
                print(f"picklegate: error: {failed.path}: {failed.error}", file=err)


def _targets(args: argparse.Namespace) -> tuple[str, list[tuple[str, str]]]:
    """(the terminal's format, [(format, file)]). The old ``--output FILE`` sends --format to
    the file and keeps the text report on the terminal, as it always did."""
    targets: list[OutputTarget] = args.output
    files = [(t.format or args.format, t.path) for t in targets]
    _check_distinct([path for _, path in files])
    return ("text" if any(t.format is None for t in targets) else args.format), files


def _check_distinct(paths: list[str]) -> None:
    seen: set[str] = set()
    for path in paths:
        key = os.path.abspath(path)
        if key in seen:
            raise UsageError(f"--output names {path} more than once")
        seen.add(key)


def _write(path: str, document: str) -> None:
    try:
        Path(path).write_text(document, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def exit_code(result: ScanResult) -> int:
    if result.count(Status.ERROR):
        return EXIT_ERROR
    return EXIT_FINDINGS if result.count(Status.VIOLATION) else EXIT_CLEAN


# ---------------------------------------------------------------------------------------------
# policy check


def run_policy_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    root = find_root(Path.cwd()) or Path.cwd()
    policies = [load_policy(p) for p in args.policies] if args.policies else \
        [resolve_policy(None, root, err)]
    problems = [p for policy in policies for p in review(policy, utc_today(), root)]
    for problem in problems:
        out.write(f"{problem}\n")
    names = ", ".join(p.source for p in policies)
    out.write(f"picklegate: {len(problems)} problem(s) in {names}\n")
    return EXIT_FINDINGS if problems else EXIT_CLEAN


# ---------------------------------------------------------------------------------------------
# discovery and terminal


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
