"""Command line: parses arguments, wires the stages together, maps errors to exit codes.

Exit codes: 0 every file clean, 1 at least one finding, 2 usage/policy/IO error (2 wins).
This is the only module that prints, reads the environment or exits.
"""
from __future__ import annotations

import argparse
import errno
import io
import os
import sys
from pathlib import Path
from typing import Iterable, NoReturn, Sequence, TextIO, cast

from picklegate import __version__, gitio
from picklegate.errors import PicklegateError, UsageError
from picklegate.explain import explain_bytes
from picklegate.findings import ScanResult, Status
from picklegate.policy import Policy, default_policy, load_policy, utc_today
from picklegate.report import FORMATS, reporter
from picklegate.report import json as json_report
from picklegate.report import text as text_report
from picklegate.report.github import write_step_summary
from picklegate.report.text import safe
from picklegate.review import review
from picklegate.scan import scan_sources
from picklegate.sources import Source, file_sources, without_excluded

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
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
    _explain_parser(commands.add_parser(
        "explain", help="a reviewer's view of each import in one file: where it is, how the "
                        "pickle uses it, what in the policy decides it, its risk"))
    return parser


def _explain_parser(explain: argparse.ArgumentParser) -> None:
    explain.add_argument("file", metavar="FILE", help="the model file to explain")
    explain.add_argument("--member", metavar="M",
                         help="only the imports of this archive member (as reports name it)")
    explain.add_argument("--format", choices=("text", "json"), default="text",
                         help="output format")
    explain.add_argument("--policy", metavar="FILE",
                         help="policy file (default: the one scan would use)")


def _scan_parser(scan: argparse.ArgumentParser) -> None:
    scan.add_argument("paths", nargs="*", metavar="PATH",
                      help="files, or directories to search for model files (default: .)")
    where = scan.add_mutually_exclusive_group()
    where.add_argument("--staged", action="store_true",
                       help="scan the model files staged in the git index (what will be committed)")
    where.add_argument("--diff", metavar="BASE[..HEAD]",
                       help="scan the model files a commit range added or changed")
    scan.add_argument("--exclude", metavar="GLOB", action="append", default=[],
                      help="leave out paths matching this git-style glob (repeatable; the same "
                           "rules as the policy's `rules:` paths; added to its `exclude:`)")
    scan.add_argument("--policy", metavar="FILE",
                      help="policy file (default: .picklegate.yaml at the repository root, "
                           "else the built-in default)")
    scan.add_argument("--policy-from", choices=("base", "head"), default="base",
                      help="with --diff: read the policy from the base commit (default) or "
                           "from the working tree")
    scan.add_argument("--format", choices=FORMATS, default="text", help="output format")
    scan.add_argument("--output", metavar="FILE",
                      help="write the report in --format to FILE; the text report still goes "
                           "to the terminal")
    scan.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="colour text output (auto: only on a terminal, never with NO_COLOR)")
    scan.add_argument("-v", "--verbose", action="store_true",
                      help="also print notes for clean files")


def main(argv: Sequence[str] | None = None) -> int:
    out: TextIO = sys.stdout if sys.stdout is not None else cast(TextIO, _ClosedStream())
    try:
        args = build_parser().parse_args(argv)
        if args.command == "policy":
            return run_policy_check(args, out, sys.stderr)
        if args.command == "explain":
            return run_explain(args, out, sys.stderr)
        return run_scan(args, out, sys.stderr)
    except PicklegateError as exc:
        _say(f"picklegate: error: {exc}")
        return EXIT_ERROR
    except SystemExit as exc:          # --help and --version end here
        return exc.code if isinstance(exc.code, int) else EXIT_CLEAN
    except BrokenPipeError:            # the reader went away (| head) before we were done
        _silence(out)
        return EXIT_ERROR
    except KeyboardInterrupt:          # Ctrl-C, also while git runs: no traceback
        _silence(out)
        return 130


class _ClosedStream(io.TextIOBase):
    """Stands in for a closed stdout (``>&-``): writing to it fails like writing to a closed
    descriptor, so the report error is reported instead of crashing on None."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


def _say(line: str) -> None:
    """One diagnostic line on stderr; a closed or broken stderr must not hide the exit code."""
    try:
        print(line, file=sys.stderr)
    except (OSError, ValueError, AttributeError):
        pass


def _silence(stream: TextIO) -> None:
    """Point stdout at /dev/null so the interpreter's final flush of whatever is still
    buffered cannot fail again (the Python docs' recipe for SIGPIPE, library/signal.html)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------------
# scan


def run_scan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if (args.staged or args.diff) and args.paths:
        raise UsageError("give either paths or --staged/--diff, not both")
    if args.output:
        check_writable(args.output)
    if args.staged or args.diff:
        top = gitio.toplevel()
        with gitio.BlobStore(top) as store:
            selection, policy = _git_sources(args, top, store, err)
            for note in selection.notes:
                print(f"picklegate: note: {safe(note)}", file=err)
            result = scan_sources(_excluding(selection.sources, args, policy), policy)
    else:
        here = _cwd_or_nothing()        # a deleted current directory: absolute paths still work
        root = find_root(here[0]) if here else None
        policy = resolve_policy(args.policy, root, err)
        sources = file_sources(args.paths or ["."], root, gitio.work_tree_files)
        result = scan_sources(_excluding(sources, args, policy), policy)
    return _report(args, result, out, err)


def _excluding(sources: Iterable[Source], args: argparse.Namespace,
               policy: Policy) -> list[Source]:
    return without_excluded(sources, (*policy.exclude, *args.exclude))


def _report(args: argparse.Namespace, result: ScanResult, out: TextIO, err: TextIO) -> int:
    """Print the report; the exit code is the scan's, and a report that cannot be written
    (full disk, closed stdout) is exit 2, never a pass."""
    code = exit_code(result)
    try:
        _emit(args, result, out)
        out.flush()
    except BrokenPipeError:
        _silence(out)
        return code
    except OSError as exc:
        _silence(out)
        print(f"picklegate: error: cannot write the report: {exc.strerror or exc}", file=err)
        return EXIT_ERROR
    for failed in result.files:
        if failed.status is Status.ERROR:
            print(f"picklegate: error: {safe(failed.path)}: {safe(failed.error or '')}",
                  file=err)
    return code


def check_writable(path: str) -> None:
    """Fail before the scan when the report could not be written to ``path``: open it for
    appending (nothing is truncated) and remove it again if it did not exist."""
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        raise UsageError(f"cannot write {safe(path)}: {exc.strerror or exc}") from None
    os.close(fd)
    if not existed:
        try:
            os.unlink(path)
        except OSError:
            pass


def current_dir() -> Path:
    """The current directory; a deleted one is reported as missing, not a crash."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        raise UsageError("the current directory no longer exists; cd to an existing "
                         "directory") from None


def _git_sources(args: argparse.Namespace, root: Path, store: gitio.BlobStore,
                 err: TextIO) -> tuple[gitio.Selection, Policy]:
    if args.staged:
        return gitio.staged_sources(root, store), resolve_policy(args.policy, root, err)
    rng = gitio.Range.parse(args.diff)
    if args.policy_from == "head":
        policy = resolve_policy(args.policy, root, err)
    else:
        policy = _policy_at(gitio.verify_revision(root, rng.base), rng.base, args.policy, root,
                            err)
    return gitio.diff_sources(root, rng, store), policy


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


def _emit(args: argparse.Namespace, result: ScanResult, out: TextIO) -> None:
    render = reporter(args.format)
    color = use_color(args.color, out) and args.format == "text"
    document = render(result, color, args.verbose)
    if args.output:
        try:
            Path(args.output).write_text(document, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        out.write(reporter("text")(result, use_color(args.color, out), args.verbose))
    else:
        out.write(document)
    if args.format == "github":
        write_step_summary(result, os.environ)


def exit_code(result: ScanResult) -> int:
    if result.count(Status.ERROR):
        return EXIT_ERROR
    return EXIT_FINDINGS if result.count(Status.VIOLATION) else EXIT_CLEAN


# ---------------------------------------------------------------------------------------------
# policy check


def run_policy_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    root = find_root(current_dir()) or current_dir()
    policies = [load_policy(p) for p in args.policies] if args.policies else \
        [resolve_policy(None, root, err)]
    problems = [p for policy in policies for p in review(policy, utc_today(), root)]
    for problem in problems:
        out.write(f"{problem}\n")
    names = ", ".join(p.source for p in policies)
    out.write(f"picklegate: {len(problems)} problem(s) in {names}\n")
    return EXIT_FINDINGS if problems else EXIT_CLEAN


# ---------------------------------------------------------------------------------------------
# explain


def run_explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Exit 0 when the policy allows every import shown, 1 when one would be a finding."""
    here = _cwd_or_nothing()
    root = find_root(here[0]) if here else None
    policy = resolve_policy(args.policy, root, err)
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {safe(args.file)}: {exc.strerror or exc}") from None
    relpath = None
    if root is not None:
        try:
            relpath = Path(os.path.abspath(args.file)).relative_to(root.resolve()).as_posix()
        except ValueError:
            relpath = None
    explanation = explain_bytes(data, policy, args.file, relpath, member=args.member)
    render = json_report.render_explain if args.format == "json" else text_report.render_explain
    out.write(render(explanation))
    return EXIT_FINDINGS if any(x.kind is not None for x in explanation.imports) else EXIT_CLEAN


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
    for folder in ([root] if root else []) + _cwd_or_nothing():
        for name in POLICY_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return load_policy(os.path.relpath(candidate))
    policy = default_policy()
    print(f"picklegate: no .picklegate.yaml found; using the {policy.source}", file=err)
    return policy


def _cwd_or_nothing() -> list[Path]:
    try:
        return [Path.cwd()]
    except FileNotFoundError:
        return []


def use_color(choice: str, stream: TextIO) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty() and os.environ.get("TERM") != "dumb"
