"""The only module that runs git: staged blobs, commit ranges, directories as git sees them.

Subprocesses are boring on purpose: argument tuples, ``-z`` output, ``--`` before paths, no
shell. Blobs are addressed by the object id ``git diff --raw`` reports, never by a
``rev:path`` spelling (a file named ``0:model.pkl`` would otherwise be read as stage 0 of
``model.pkl``), and read through one ``git cat-file --batch`` process per scan. Paths git
converts on checkout go through ``git cat-file --filters`` so Git LFS objects that are present
locally come back as their real content (a missing one stays a pointer, which the scanner
reports as ``lfs-pointer``, never as clean).
"""
from __future__ import annotations

import mmap
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from picklegate.errors import PolicyError, SourceError, UsageError
from picklegate.machine import Buffer
from picklegate.sources import CHUNK, SPOOL_IN_MEMORY, Source, is_model_name, spool

# Added, copied, modified, renamed (new name), type-changed: what a commit brings in.
DIFF_FILTER = "ACMRT"


def run_git(args: tuple[str, ...], cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    return run_git_warned(args, cwd, stdin)[0]


def run_git_warned(args: tuple[str, ...], cwd: Path | None = None,
                   stdin: bytes | None = None) -> tuple[bytes, list[str]]:
    """stdout and the lines git wrote to stderr; a non-zero exit is a SourceError."""
    try:
        done = subprocess.run(("git", *args), cwd=cwd, input=stdin, capture_output=True,
                              check=False)
    except OSError as exc:
        raise SourceError(f"cannot run git: {exc}") from None
    message = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if done.returncode != 0:
        raise SourceError(f"git {args[0]} failed: {message[-1] if message else done.returncode}")
    return done.stdout, message


def toplevel(cwd: Path | None = None) -> Path:
    try:
        out = run_git(("rev-parse", "--show-toplevel"), cwd)
    except SourceError:
        raise UsageError("not inside a git repository (needed for --staged and --diff)") from None
    return Path(out.decode("utf-8").strip())


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


def blob_exists(root: Path, rev: str, path: str) -> bool:
    try:
        run_git(("cat-file", "-e", f"{rev}:{path}"), root)
    except SourceError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# what a commit (or the index) brings in, by object id


GITLINK = "160000"           # a submodule: its content is a commit in another repository


@dataclass(frozen=True)
class Blob:
    path: str                # repository-relative, exactly as git stores it
    mode: str
    oid: str


@dataclass(frozen=True)
class Selection:
    sources: list[Source]
    notes: list[str]         # what was deliberately not scanned, and why


def parse_raw(output: bytes) -> list[Blob]:
    """``git diff --raw -z --no-abbrev`` records: ``:srcmode dstmode srcoid dstoid status``
    NUL path NUL (and a second path for renames and copies, the new name)."""
    fields = output.split(b"\0")
    blobs: list[Blob] = []
    i = 0
    while i + 1 < len(fields) and fields[i].startswith(b":"):
        _, mode, _, oid, status = fields[i][1:].decode("ascii").split(" ")
        paths = 2 if status[:1] in ("R", "C") else 1
        path = fields[i + paths].decode("utf-8", "surrogateescape")
        blobs.append(Blob(path=path, mode=mode, oid=oid))
        i += 1 + paths
    return sorted(blobs, key=lambda b: b.path)


def staged_blobs(root: Path) -> list[Blob]:
    """Blobs the next commit adds or changes (deletions have nothing to scan)."""
    return parse_raw(run_git(("diff", "--cached", "--raw", "-z", "--no-abbrev", "--no-ext-diff",
                              f"--diff-filter={DIFF_FILTER}", "--"), root))


def diff_blobs(root: Path, rng: Range) -> list[Blob]:
    verify_revision(root, rng.base)
    verify_revision(root, rng.head)
    return parse_raw(run_git(("diff", "--raw", "-z", "--no-abbrev", "--no-ext-diff",
                              "--find-renames", f"--diff-filter={DIFF_FILTER}", rng.spec(),
                              "--"), root))


def staged_sources(root: Path, store: BlobStore) -> Selection:
    return _select(staged_blobs(root), store)


def diff_sources(root: Path, rng: Range, store: BlobStore) -> Selection:
    return _select(diff_blobs(root, rng), store)


def _select(blobs: list[Blob], store: BlobStore) -> Selection:
    chosen = [b for b in blobs if is_model_name(b.path)]
    notes = [f"{b.path}: a submodule (gitlink); its content lives in another repository and "
             "is not scanned here" for b in chosen if b.mode == GITLINK]
    wanted = [b for b in chosen if b.mode != GITLINK]
    store.prepare(b.path for b in wanted)
    return Selection([_blob_source(store, b) for b in wanted], notes)


def _blob_source(store: BlobStore, blob: Blob) -> Source:
    return Source(display=blob.path, relpath=blob.path, read=lambda: store.read(blob))


# ---------------------------------------------------------------------------------------------
# reading blobs

# Attributes that make a checkout differ from the blob (gitattributes(5), convert.c): the
# bytes a loader reads are the converted ones, so those are what must be scanned.
CONVERTING = ("filter", "text", "eol", "crlf", "ident", "working-tree-encoding")


class BlobStore:
    """Reads blobs by object id through ONE ``git cat-file --batch`` process, streaming each
    into a snapshot (bytes, or a spooled temporary file when large).

    Paths whose checkout git converts (an LFS or other ``filter``, ``eol``/``text``,
    ``core.autocrlf=true``) go through ``git cat-file --filters --path=P OID`` instead, so
    LFS objects present locally are scanned as their real content, as a checkout sees them.
    (``--batch --filters`` cannot be used: git 2.39 prints the unfiltered size in the header
    and then the filtered content, so the stream cannot be framed.)
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._process: subprocess.Popen[bytes] | None = None
        self._converted: frozenset[str] = frozenset()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, paths: Iterable[str]) -> None:
        """Learn which paths git converts on checkout (one ``git check-attr`` for all)."""
        wanted = list(paths)
        if not wanted:
            return
        if _config(self.root, "core.autocrlf") == "true":
            self._converted = frozenset(wanted)
            return
        stdin = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in wanted)
        out = run_git(("check-attr", "-z", "--stdin", *CONVERTING), self.root, stdin)
        fields = out.split(b"\0")
        self._converted = frozenset(
            fields[i].decode("utf-8", "surrogateescape") for i in range(0, len(fields) - 2, 3)
            if fields[i + 2] not in (b"unspecified", b"unset"))

    def read(self, blob: Blob) -> Buffer:
        if blob.path in self._converted:
            return self._read_filtered(blob)
        return self._read_raw(blob.oid)

    def _read_raw(self, oid: str) -> Buffer:
        process = self._batch()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(oid.encode("ascii") + b"\n")
            process.stdin.flush()
        except OSError:
            raise SourceError(self._died()) from None
        header = process.stdout.readline().split()
        if len(header) != 3 or header[0].decode("ascii", "replace") != oid:
            raise SourceError(f"git cat-file cannot read blob {oid}: "
                              f"{b' '.join(header).decode('ascii', 'replace') or self._died()}")
        if header[1] != b"blob":
            raise SourceError(f"{oid} is a {header[1].decode('ascii', 'replace')}, not a blob")
        stdout = process.stdout
        buf = spool(stdout.read, int(header[2]))
        if stdout.read(1) != b"\n":
            raise SourceError(self._died())
        return buf

    def _batch(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            try:
                self._process = subprocess.Popen(
                    ("git", "cat-file", "--batch"), cwd=self.root, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            except OSError as exc:
                raise SourceError(f"cannot run git: {exc}") from None
        return self._process

    def _died(self) -> str:
        return "git cat-file --batch ended unexpectedly"

    def _read_filtered(self, blob: Blob) -> Buffer:
        args = ("git", "cat-file", "--filters", f"--path={blob.path}", blob.oid)
        try:
            process = subprocess.Popen(args, cwd=self.root, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        except OSError as exc:
            raise SourceError(f"cannot run git: {exc}") from None
        with process:
            assert process.stdout is not None and process.stderr is not None
            buf = _read_to_end(process.stdout.read)
            error = process.stderr.read().decode("utf-8", "replace").strip()
        if process.returncode != 0:
            raise SourceError(f"git cat-file --filters failed: {error or process.returncode}")
        return buf

    def close(self) -> None:
        if self._process is not None:
            process, self._process = self._process, None
            if process.stdin is not None:
                process.stdin.close()
            if process.stdout is not None:
                process.stdout.close()
            process.kill()
            process.wait()


def _read_to_end(read: Callable[[int], bytes]) -> Buffer:
    """A stream of unknown length as a snapshot: memory holds at most one chunk beyond the
    in-memory threshold before the rest goes to a temporary file."""
    head = bytearray()
    while len(head) <= SPOOL_IN_MEMORY:
        chunk = read(CHUNK)
        if not chunk:
            return bytes(head)
        head += chunk
    parts = [bytes(head)]
    del head

    def more(n: int) -> bytes:
        return parts.pop() if parts else read(n)
    return _spool_stream(more)


def _spool_stream(read: Callable[[int], bytes]) -> Buffer:
    try:
        with tempfile.TemporaryFile(prefix="picklegate-") as handle:
            while chunk := read(CHUNK):
                handle.write(chunk)
            handle.flush()
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise SourceError(f"cannot spool to a temporary file: {exc.strerror or exc}") from None


def _config(root: Path, key: str) -> str | None:
    try:
        return run_git(("config", "--get", key), root).decode("utf-8", "replace").strip()
    except SourceError:
        return None


# ---------------------------------------------------------------------------------------------
# directories as git sees them


def work_tree_files(folder: str) -> list[str] | None:
    """Files under ``folder`` as git sees them, relative to it: tracked and untracked, ignored
    ones left out (``.venv/``, ``build/`` when gitignored). None outside a git work tree.

    git skips a directory it cannot open with only a warning; any warning is therefore an
    error here, never a silent gap in the listing."""
    try:
        inside = run_git(("rev-parse", "--is-inside-work-tree"), Path(folder))
    except SourceError:
        return None
    if inside.strip() != b"true":
        return None
    out, warnings = run_git_warned(("ls-files", "-z", "--cached", "--others",
                                    "--exclude-standard", "--", "."), Path(folder))
    if warnings:
        raise SourceError(f"git ls-files: {warnings[0]}")
    return sorted(p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p)

def read_text_at(root: Path, rev: str, path: str) -> str | None:
    """A text file at a revision, or None when it does not exist there."""
    if not blob_exists(root, rev, path):
        return None
    data = run_git(("show", f"{rev}:{path}"), root)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A policy that cannot be read is a policy error (exit 2), never a traceback.
        raise PolicyError(f"{path} at {rev}", None, None,
                          f"not UTF-8 text (byte {exc.start}); save the policy as UTF-8") from None
