"""The only module that runs git: staged blobs, commit ranges, files at a revision.

Subprocesses are boring on purpose: argument tuples, ``-z`` output, ``--`` before paths, no
shell. Blob contents are read with ``git cat-file --filters`` so Git LFS objects that are
present locally come back as their real content (a missing one stays a pointer, which the
scanner reports as ``lfs-pointer``, never as clean).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from picklegate.errors import SourceError, UsageError
from picklegate.sources import Source, is_model_name

# Added, copied, modified, renamed (new name), type-changed: what a commit brings in.
DIFF_FILTER = "ACMRT"


def run_git(args: tuple[str, ...], cwd: Path | None = None) -> bytes:
    try:
        done = subprocess.run(("git", *args), cwd=cwd, capture_output=True, check=False)
    except OSError as exc:
        raise SourceError(f"cannot run git: {exc}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SourceError(f"git {args[0]} failed: {message[-1] if message else done.returncode}")
    return done.stdout


def toplevel(cwd: Path | None = None) -> Path:
    try:
        out = run_git(("rev-parse", "--show-toplevel"), cwd)
    except SourceError:
        raise UsageError("not inside a git repository (needed for --staged and --diff)") from None
    return Path(out.decode("utf-8").strip())


def _paths(output: bytes) -> list[str]:
    return sorted(p.decode("utf-8", "surrogateescape") for p in output.split(b"\0") if p)


def staged_paths(root: Path) -> list[str]:
    """Files the next commit adds or changes (deletions have nothing to scan)."""
    return _paths(run_git(("diff", "--cached", "--name-only", "-z", "--no-ext-diff",
                           f"--diff-filter={DIFF_FILTER}", "--"), root))


@dataclass(frozen=True)
class Range:
    base: str
    head: str
    merge_base: bool          # "A...B": compare with the merge base, as a pull request does

    @classmethod
    def parse(cls, text: str) -> Range:
        if "..." in text:
            base, head = text.split("...", 1)
            return cls(base or "HEAD", head or "HEAD", True)
        if ".." in text:
            base, head = text.split("..", 1)
            return cls(base or "HEAD", head or "HEAD", False)
        return cls(text, "HEAD", False)

    def spec(self) -> str:
        return f"{self.base}{'...' if self.merge_base else '..'}{self.head}"


def verify_revision(root: Path, rev: str) -> str:
    try:
        out = run_git(("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"), root)
    except SourceError:
        raise UsageError(f"{rev!r} is not a commit in this repository (in CI, check out with "
                         "fetch-depth: 0 so the base is present)") from None
    return out.decode().strip()


def diff_paths(root: Path, rng: Range) -> list[str]:
    verify_revision(root, rng.base)
    verify_revision(root, rng.head)
    return _paths(run_git(("diff", "--name-only", "-z", "--no-ext-diff", "--find-renames",
                           f"--diff-filter={DIFF_FILTER}", rng.spec(), "--"), root))


def read_blob(root: Path, rev: str, path: str) -> bytes:
    """Content of ``path`` at ``rev`` ("" = the index), through git's filters (LFS smudge)."""
    return run_git(("cat-file", "--filters", f"{rev}:{path}"), root)


def blob_exists(root: Path, rev: str, path: str) -> bool:
    try:
        run_git(("cat-file", "-e", f"{rev}:{path}"), root)
    except SourceError:
        return False
    return True


def staged_sources(root: Path) -> list[Source]:
    return [_blob_source(root, "", p) for p in staged_paths(root) if is_model_name(p)]


def diff_sources(root: Path, rng: Range) -> list[Source]:
    return [_blob_source(root, rng.head, p) for p in diff_paths(root, rng) if is_model_name(p)]


def _blob_source(root: Path, rev: str, path: str) -> Source:
    def read() -> bytes:
        return read_blob(root, rev, path)
    return Source(display=path, relpath=path, read=read)


def read_text_at(root: Path, rev: str, path: str) -> str | None:
    """A text file at a revision, or None when it does not exist there."""
    if not blob_exists(root, rev, path):
        return None
    return run_git(("show", f"{rev}:{path}"), root).decode("utf-8")
