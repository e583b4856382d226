"""Command line: parses arguments, wires the stages together, maps errors to exit codes.

Exit codes: 0 every file clean, 1 at least one finding, 2 usage/policy/IO error (2 wins);
each command's --help epilog says what they mean for it (README "Exit codes" too).
This is the only module that prints, reads the environment or exits.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NoReturn, Sequence, TextIO, cast

from typing import TYPE_CHECKING

from picklegate import __version__
from picklegate.errors import PicklegateError, PolicyError, UsageError
from picklegate.findings import ScanResult, Status
from picklegate.policy import Policy, default_policy, load_policy, preset_names, utc_today
from picklegate.report import FORMATS, reporter
from picklegate.report.text import safe
from picklegate.scan import JOBS_THRESHOLD, ScanOptions, default_jobs, scan_sources
from picklegate.sources import Source, file_sources, relative_to_root, without_excluded

if TYPE_CHECKING:
    from picklegate import gitio
    from picklegate.policy_init import Plan

# Start-up is part of every commit's hook run, so modules only some commands need are imported
# where they are used: gitio (subprocess, tempfile) for git modes and directories, review for
# `policy check`, the github reporter's step summary for --format github (README: Performance).

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
    _scan_parser(commands.add_parser("scan", help="scan model files (the pre-commit hook entry)",
                                     epilog=SCAN_EPILOG, formatter_class=_Raw))
    policy = commands.add_parser("policy", help="work with policy files",
                                 epilog=POLICY_EPILOG, formatter_class=_Raw)
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="COMMAND",
                                            parser_class=_Parser)
    policy_commands.required = True
    _policy_parsers(policy_commands)
    _approve_parser(commands.add_parser(
        "approve", help="approve one file by its sha256 in the policy", epilog=APPROVE_EPILOG,
        formatter_class=_Raw))
    _explain_parser(commands.add_parser(
        "explain", help="a reviewer's view of each import in one file: where it is, how the "
                        "pickle uses it, what in the policy decides it, its risk",
        epilog=EXPLAIN_EPILOG, formatter_class=_Raw))
    return parser


_Raw = argparse.RawDescriptionHelpFormatter
SCAN_EPILOG = """\
examples:
  picklegate scan models/                  search a directory for model files
  picklegate scan --staged                 what the next commit contains (pre-commit)
  picklegate scan --diff origin/main...HEAD --format sarif --output picklegate.sarif

exit codes:
  0  every file is clean
  1  at least one finding
  2  usage, policy, git or I/O error, or a file could not be read (2 wins over 1)
"""
POLICY_EPILOG = """\
examples:
  picklegate policy init                   write .picklegate.yaml from the model files here
  picklegate policy check                  validate the policy scan would use
  picklegate policy example > .picklegate.yaml

exit codes: see 'picklegate policy COMMAND --help'
"""
CHECK_EPILOG = """\
examples:
  picklegate policy check
  picklegate policy check .picklegate.yaml team/base.yaml

exit codes:
  0  valid, and nothing for a reviewer to look at
  1  valid, with warnings: an entry admits a known gadget ("gadget"), an entry or approval
     has expired ("expired"), an approval names a missing file ("stale-approval")
  2  invalid: every error is printed as file:line:col: what is wrong and how to fix it
"""
INIT_EPILOG = """\
examples:
  picklegate policy init                   every model file git sees in this work tree
  picklegate policy init models/ checkpoints/best.pt
  picklegate policy init --output - | less

exit codes:
  0  written; every file scanned passes it
  1  written, but some files still fail and need a reviewer: known gadgets (never allowed),
     or findings no allow entry fixes; they are listed in comments at the end of the file
  2  not written (the policy exists and --force was not given, a usage error), or a file
     could not be read
"""
EXAMPLE_EPILOG = """\
examples:
  picklegate policy example > .picklegate.yaml

exit codes:
  0  printed
"""
EXPLAIN_EPILOG = """\
examples:
  picklegate explain models/model.pt
  picklegate explain models/model.pt --member archive/data.pkl --format json

exit codes:
  0  the policy allows every import shown (explain judges imports only: use scan for the
     file's verdict, which also fails malformed files and archive anomalies)
  1  at least one import shown would be a finding
  2  the file cannot be read, or a usage or policy error
"""
APPROVE_EPILOG = """\
examples:
  picklegate approve models/legacy.pkl --reason "reviewed in SEC-123" --owner @ml-platform
  picklegate approve models/legacy.pkl --reason "until the safetensors export" \\
      --owner @ml-platform --expires 2027-06-30

The entry pins the file's sha256: changing one byte of the file voids it. Run it again after
a reviewed change to update the hash (and reason, owner, expiry) in place. The rest of the
policy file is kept byte for byte. With --diff, scans read the policy from the base commit,
so merge the approval before the pull request that needs it.

exit codes:
  0  approved (entry added or updated)
  2  not written: no policy file, invalid policy, unreadable file, bad date, usage error
"""


def _policy_parsers(policy_commands: argparse._SubParsersAction[_Parser]) -> None:
    check = policy_commands.add_parser(
        "check", help="validate policies and warn about gadgets, expiry and stale approvals",
        epilog=CHECK_EPILOG, formatter_class=_Raw)
    check.add_argument("policies", nargs="*", metavar="POLICY",
                       help="policy files (default: the one scan would use)")
    init = policy_commands.add_parser(
        "init", help="write a starting policy from the model files there are now",
        epilog=INIT_EPILOG, formatter_class=_Raw)
    init.add_argument("paths", nargs="*", metavar="PATH",
                      help="files or directories to take the model files from (default: the "
                           "git work tree, or the current directory outside git)")
    init.add_argument("--output", metavar="FILE",
                      help="where to write it (default: .picklegate.yaml at the repository "
                           "root; '-' prints it)")
    init.add_argument("--force", action="store_true", help="replace an existing policy file")
    policy_commands.add_parser(
        "example", help="print the commented example policy", epilog=EXAMPLE_EPILOG,
        formatter_class=_Raw)


def _approve_parser(approve: argparse.ArgumentParser) -> None:
    approve.add_argument("file", metavar="FILE", help="the model file to approve")
    approve.add_argument("--reason", required=True,
                         help="why this exact file is acceptable (reviewers read it)")
    approve.add_argument("--owner", required=True, help="who answers for the approval")
    approve.add_argument("--expires", metavar="YYYY-MM-DD", type=_future_date,
                         help="last day (UTC) the approval applies")
    approve.add_argument("--policy", metavar="FILE",
                         help="policy file to edit (default: .picklegate.yaml at the "
                              "repository root)")


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
    scan.add_argument("--output", metavar="[FORMAT=]FILE", action="append", default=[],
                      type=output_target,
                      help="also write the report in FORMAT (text, json, sarif, github) to "
                           "FILE; repeat it for several reports from the same scan. A plain "
                           "FILE writes --format there and the terminal gets the text report")
    scan.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="colour text output (auto: only on a terminal, never with NO_COLOR)")
    scan.add_argument("-v", "--verbose", action="store_true",
                      help="also print notes for clean files")
    scan.add_argument("-j", "--jobs", metavar="N", type=_positive(int), default=None,
                      help="scan files in N worker processes; the report is the same as a "
                           "serial run, in the same order (default: one per CPU when more than "
                           f"{JOBS_THRESHOLD} files are scanned and there is more than one "
                           "CPU, else 1; --staged/--diff always scan serially)")
    scan.add_argument("--time-budget", metavar="SECONDS", type=_positive(float),
                      help="wall-clock time one file's analysis may take before it ends in a "
                           "limit-exceeded finding (default: 60; overrides the policy's limits)")
    scan.add_argument("--memory-budget", metavar="MiB", type=_positive(int),
                      help="memory one file's analysis may add before it ends in a "
                           "limit-exceeded finding (default: 512; overrides the policy's limits)")


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    what = "a whole number of at least 1" if kind is int else "a positive number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value
    return parse


def _scan_options(args: argparse.Namespace) -> ScanOptions:
    flags = (("time_budget", args.time_budget), ("memory_budget", args.memory_budget))
    return ScanOptions(overrides=tuple((k, v) for k, v in flags if v is not None))


def main(argv: Sequence[str] | None = None) -> int:
    out: TextIO = sys.stdout if sys.stdout is not None else cast(TextIO, _ClosedStream())
    try:
        args = build_parser().parse_args(argv)
        if args.command == "policy":
            return run_policy(args, out, sys.stderr)
        if args.command == "approve":
            return run_approve(args, sys.stderr)
        if args.command == "explain":
            return run_explain(args, out, sys.stderr)
        return run_scan(args, out, sys.stderr)
    except PolicyError as exc:         # every problem of the policy, one per line
        for line in exc.lines():
            _say(f"picklegate: error: {line}")
        return EXIT_ERROR
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
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(line, file=sys.stderr)


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
    for target in args.output:
        check_writable(target.path)     # before the scan: a report that cannot land fails now
    if args.staged or args.diff:
        from picklegate import gitio
        top = gitio.toplevel()
        with gitio.BlobStore(top) as store:
            selection, policy = _git_sources(args, top, store, err)
            for note in selection.notes:
                print(f"picklegate: note: {safe(note)}", file=err)
            # Git blobs come through the one `git cat-file --batch` process of this store,
            # which workers cannot share: git modes scan serially (see --jobs).
            result = scan_sources(_excluding(selection.sources, args, policy), policy,
                                  _scan_options(args))
    else:
        here = _cwd_or_nothing()        # a deleted current directory: absolute paths still work
        root = find_root(here[0]) if here else None
        policy = resolve_policy(args.policy, root, err)
        sources = _excluding(file_sources(args.paths or ["."], root, _work_tree_files), args,
                             policy)
        result = scan_sources(sources, policy, _scan_options(args),
                              jobs=_jobs(args.jobs, len(sources)))
    return _report(args, result, out, err)


def _work_tree_files(folder: str) -> list[str] | None:
    """gitio's directory lister, imported only when a directory is actually searched."""
    from picklegate import gitio
    return gitio.work_tree_files(folder)


def _jobs(given: int | None, files: int) -> int:
    return given if given is not None else default_jobs(files, _cpu_count())


def _cpu_count() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _excluding(sources: Iterable[Source], args: argparse.Namespace,
               policy: Policy) -> list[Source]:
    return without_excluded(sources, (*policy.exclude, *args.exclude))


def _report(args: argparse.Namespace, result: ScanResult, out: TextIO, err: TextIO) -> int:
    """Print the report; the exit code is the scan's, and a report that cannot be written
    (full disk, closed stdout) is exit 2, never a pass."""
    code = exit_code(result)
    try:
        _emit(args, result, out, err)
        out.flush()
    except BrokenPipeError:
        _silence(out)
        return code
    except OSError as exc:
        _silence(out)
        print(f"picklegate: error: cannot write the report: {exc.strerror or exc}", file=err)
        return EXIT_ERROR
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
        with contextlib.suppress(OSError):
            os.unlink(path)


def current_dir() -> Path:
    """The current directory; a deleted one is reported as missing, not a crash."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        raise UsageError("the current directory no longer exists; cd to an existing "
                         "directory") from None


def _git_sources(args: argparse.Namespace, root: Path, store: gitio.BlobStore,
                 err: TextIO) -> tuple[gitio.Selection, Policy]:
    from picklegate import gitio
    if args.staged:
        return gitio.staged_sources(root, store), resolve_policy(args.policy, root, err)
    rng = gitio.Range.parse(args.diff)
    if args.policy_from == "head":
        policy = resolve_policy(args.policy, root, err)
    else:
        policy = _policy_at(gitio.verify_revision(root, rng.base), rng.base, args.policy, root,
                            err)
        for path in _policy_changes(root, rng, args.policy, policy):
            print(f"picklegate: note: {safe(path)} changes in {safe(rng.spec())}, but this "
                  f"scan used it as it is at {safe(rng.base)}: the policy comes from the base "
                  "commit so that a pull request cannot approve itself. Merge the policy "
                  "change first, or run with --policy-from head locally to try it", file=err)
    return gitio.diff_sources(root, rng, store), policy


def _policy_changes(root: Path, rng: gitio.Range, explicit: str | None,
                    policy: Policy) -> list[str]:
    """Policy files (the one scan looks for and the files it extends) that differ between
    the base and the head of the range: changes this scan did not use."""
    from picklegate import gitio

    names = [_repo_relative(explicit, root)] if explicit else list(POLICY_NAMES)
    names += [f for f in policy.files if not f.startswith("<") and f not in names]
    return [path for path in names
            if gitio.read_text_at(root, rng.base, path) != gitio.read_text_at(root, rng.head,
                                                                                path)]


def _policy_at(commit: str, label: str, explicit: str | None, root: Path,
               err: TextIO) -> Policy:
    """The policy as it is in the base commit, so a change cannot approve itself."""
    from picklegate import gitio
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
        from picklegate.report.github import write_step_summary
        try:
            write_step_summary(result, os.environ)
        except OSError as exc:
            raise UsageError(f"cannot write the job summary: {exc.strerror or exc}") from None
    if terminal in MACHINE_FORMATS:
        # The text and github reports list unreadable files themselves; behind a JSON or
        # SARIF document on stdout a person still needs one line on stderr.
        for failed in result.files:
            if failed.status is Status.ERROR:
                print(f"picklegate: error: {safe(failed.path)}: {safe(failed.error or '')}",
                      file=err)


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
# policy check, init, example; approve


def run_policy(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.policy_command == "init":
        return run_policy_init(args, out, err)
    if args.policy_command == "example":
        out.write(example_policy())
        return EXIT_CLEAN
    return run_policy_check(args, out, err)


def example_policy() -> str:
    """The commented example, shipped as package data (the repository root holds a copy that
    tests keep identical)."""
    from importlib import resources

    return (resources.files("picklegate") / "data" / "policy.example.yaml").read_text("utf-8")


def run_policy_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    here = current_dir()
    root = find_root(here)
    target = args.output or os.path.relpath((root or here) / POLICY_NAMES[0])
    if target != "-" and not args.force:
        # .picklegate.yml too: a new .yaml beside it would silently take its place.
        existing = [target] + ([] if args.output else
                               [os.path.relpath((root or here) / n) for n in POLICY_NAMES])
        for path in existing:
            if os.path.lexists(path):
                raise UsageError(f"{path} already exists; edit it, or pass --force to "
                                 "replace it")
    from picklegate import policy_init
    from picklegate.policyfile import replace_file, validated
    from picklegate.review import load_gadgets, review

    sources = file_sources(args.paths or [os.path.relpath(root or here)], root,
                           _work_tree_files)
    results = policy_init.inventory(sources)
    plan = policy_init.plan(results, load_gadgets(), policy_init.preset_policies(preset_names()))
    text = policy_init.render(plan, utc_today())
    problems = review(validated(target if target != "-" else POLICY_NAMES[0], text),
                      utc_today(), root or here)
    if problems:                         # a bug: init must never write what check refuses
        raise PicklegateError(f"the generated policy fails policy check: {problems[0]}")
    if target == "-":
        out.write(text)
    else:
        replace_file(target, text)
    _init_summary(plan, target, err)
    if plan.unreadable:
        return EXIT_ERROR
    return EXIT_FINDINGS if plan.needs_review else EXIT_CLEAN


def _init_summary(plan: Plan, target: str, err: TextIO) -> None:
    where = "the policy" if target == "-" else target
    print(f"picklegate: wrote {where} from {plan.files} model file(s): "
          f"{len(plan.presets)} preset(s), {len(plan.allow)} global(s) allowed exactly",
          file=err)
    if plan.gadgets:
        files = len({f for g in plan.gadgets for f in g.usage.files})
        print(f"picklegate: {len(plan.gadgets)} known gadget(s) in {files} file(s) were NOT "
              "allowed; review the list at the end of the policy", file=err)
    if plan.unwritable or plan.failing:
        print("picklegate: some files will still fail; see the comments at the end of the "
              "policy", file=err)
    for path, why in plan.unreadable:
        print(f"picklegate: error: {safe(path)}: {safe(why)}", file=err)


def _future_date(text: str) -> dt.date:
    try:
        if len(text) != 10:
            raise ValueError
        date = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date written YYYY-MM-DD") from None
    if date < utc_today():
        raise argparse.ArgumentTypeError(f"{text} is in the past; an approval must expire "
                                         "after today")
    return date


def run_approve(args: argparse.Namespace, err: TextIO) -> int:
    from picklegate.approve import NewApproval, approve_text, file_sha256
    from picklegate.policyfile import encodable, replace_file, validated

    here = current_dir()
    root = find_root(here) or here
    policy_path = args.policy or _existing_policy(root)
    relpath = relative_to_root(args.file, root)
    if relpath is None:
        raise UsageError(f"{args.file} is outside the repository ({root})")
    for value, what in ((args.reason, "--reason"), (args.owner, "--owner")):
        if not value.strip() or not encodable(value):
            raise UsageError(f"{what} must be readable text")
    new = NewApproval(relpath, file_sha256(args.file), args.reason, args.owner, args.expires)
    load_policy(policy_path)             # the policy as it is must be valid before it is edited
    try:
        text = Path(policy_path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {policy_path}: {exc}") from None
    edited, updated = approve_text(text, new)
    policy = validated(policy_path, edited)
    if not any(a.path == relpath and a.sha256 == new.sha256 for a in policy.approved):
        raise PicklegateError(f"the edited policy does not approve {relpath}; nothing written")
    replace_file(policy_path, edited)
    print(f"picklegate: {'updated' if updated else 'added'} the approval of {safe(relpath)} "
          f"(sha256 {new.sha256}) in {policy_path}; get it reviewed and merged before the "
          "change that needs it", file=err)
    return EXIT_CLEAN


def _existing_policy(root: Path) -> str:
    for name in POLICY_NAMES:
        if (root / name).is_file():
            return os.path.relpath(root / name)
    raise UsageError(f"no {POLICY_NAMES[0]} at {root}; run 'picklegate policy init' first, "
                     "or pass --policy FILE")


def run_policy_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from picklegate.review import review
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
    from picklegate.explain import explain_bytes
    from picklegate.report import json as json_report
    from picklegate.report import text as text_report

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
