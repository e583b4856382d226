"""Where bytes come from: files and directories on disk (git blobs live in gitio.py).

Small files are read into memory. A larger file is memory-mapped where it is, never copied: a
2 GB checkpoint costs what its central directory and pickles cost, and no disk. A file
truncated while it is mapped raises SIGBUS on the next access, which CPython cannot recover
from (the signal arrives in the middle of a C memcpy), so scan.py analyses large files only in
a worker process: SIGBUS ends that process, and the file becomes an error result. The file is
stat'ed before and after it is read (for a mapping, after the analysis), and any change of
size, mtime or inode makes it an unreadable-file error instead of a verdict on a torn view.
Git blobs are spooled into private temporary files (gitio.py), which nothing else can change.

Directories are never skipped silently: an unreadable directory or entry, a symlink loop or a
file that is not a regular file becomes an error result for that path.
"""
from __future__ import annotations

import mmap
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from picklegate.errors import SourceError
from picklegate.machine import Buffer
from picklegate.policy import glob_match

# File names picklegate looks at when it walks a directory; the same list feeds the pre-commit
# hook's `files` pattern (tests/test_hook_manifest.py keeps the two in step). Content decides
# the format; this only decides which files are candidates.
MODEL_SUFFIXES = ("pkl", "pickle", "pt", "pth", "bin", "ckpt", "joblib", "jbl", "npy", "npz",
                  "dill", "sav", "pkl3", "p", "mar", "data", "dat", "tar", "zip")
COMPRESSED_SUFFIXES = ("gz", "bz2", "xz", "lzma", "z", "lz4", "zst")
_NAME_RE = re.compile(
    r"(?i)\.(" + "|".join(MODEL_SUFFIXES) + r")(\.(" + "|".join(COMPRESSED_SUFFIXES) + r"))?$")

# Files up to this size are read into memory; larger ones are mapped (or, for git blobs,
# spooled to a temporary file).
SPOOL_IN_MEMORY = 8 << 20
CHUNK = 1 << 20

# Lists the files git sees under a directory (tracked + untracked, ignored left out), relative
# to it, or None when the directory is not in a git work tree. gitio supplies it.
Lister = Callable[[str], "list[str] | None"]


def is_model_name(path: str) -> bool:
    return _NAME_RE.search(path) is not None


@dataclass(frozen=True)
class Source:
    display: str                    # the path as the user gave it (or repo-relative for git)
    relpath: str | None             # repository-relative, forward slashes, for path rules
    # Files and broken paths read through a functools.partial of a module-level function, so
    # the source pickles and a --jobs worker re-opens the file itself (scan.py). Git blobs
    # read through the scan's one `git cat-file` process and stay in the parent.
    read: Callable[[], Buffer]
    # A file on disk, read by read_file: large ones are mapped where they are (see above).
    file: str | None = None

    def is_large_file(self) -> bool:
        try:
            return self.file is not None and os.stat(self.file).st_size > SPOOL_IN_MEMORY
        except OSError:
            return False                # read_file reports why


# ---------------------------------------------------------------------------------------------
# snapshots


def spool(read: Callable[[int], bytes], size: int) -> Buffer:
    """Exactly ``size`` bytes from ``read`` (called with a chunk size, returns b"" at the end),
    as bytes when small, else as a read-only mapping of a private unlinked temporary file."""
    if size <= SPOOL_IN_MEMORY:
        data = bytearray()
        while len(data) < size:
            chunk = read(min(CHUNK, size - len(data)))
            if not chunk:
                raise _short(len(data), size)
            data += chunk
        return bytes(data)
    return _spool_to_disk(read, size)


def _spool_to_disk(read: Callable[[int], bytes], size: int) -> Buffer:
    import tempfile                 # (shutil, random, weakref: only for large files)
    try:
        with tempfile.TemporaryFile(prefix="picklegate-") as handle:
            done = 0
            while done < size:
                chunk = read(min(CHUNK, size - done))
                if not chunk:
                    raise _short(done, size)
                handle.write(chunk)
                done += len(chunk)
            handle.flush()
            # The mapping keeps its own descriptor; nobody else holds the unlinked file, and
            # every page was written (no holes), so no access can fault.
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise SourceError(f"cannot spool to a temporary file: {exc.strerror or exc}") from None


def _short(got: int, size: int) -> SourceError:
    return SourceError(f"changed while it was read: ended after {got} of {size} bytes")


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _kind(mode: int) -> str | None:
    """What a non-regular file is, or None for a regular file."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def read_file(path: str) -> Buffer:
    """A consistent snapshot of a regular file. FIFOs, devices and sockets are refused before
    they are opened (opening a FIFO blocks; /dev/zero never ends)."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    kind = _kind(before.st_mode)
    if kind is not None:
        raise SourceError(f"not a regular file ({kind}); refusing to read it")
    try:
        # O_NONBLOCK: should the path have been swapped for a FIFO since the stat, open()
        # still returns at once and the identity check below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    try:
        return _snapshot(fd, path, before)
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


class MappedFile(mmap.mmap):
    """A file mapped where it is, with the identity it had when it was mapped."""

    path: str
    identity: tuple[int, int, int, int]

    def unchanged(self) -> bool:
        try:
            return _identity(os.stat(self.path)) == self.identity
        except OSError:
            return False


CHANGED = "changed while it was read (size, mtime or inode); scan it again when it is stable"


def _snapshot(fd: int, path: str, before: os.stat_result) -> Buffer:
    opened = os.fstat(fd)
    if _identity(opened) != _identity(before) or _kind(opened.st_mode) is not None:
        raise SourceError("changed while it was opened; scan it again when it is stable")
    if opened.st_size > SPOOL_IN_MEMORY:
        mapped = MappedFile(fd, 0, access=mmap.ACCESS_READ)
        mapped.path, mapped.identity = path, _identity(opened)
        return mapped
    buf = spool(lambda n: os.read(fd, n), opened.st_size)
    grew = os.read(fd, 1) != b""
    if grew or _identity(os.fstat(fd)) != _identity(opened) or \
            _identity(os.stat(path)) != _identity(opened):
        raise SourceError(CHANGED)
    return buf


# ---------------------------------------------------------------------------------------------
# discovery


def file_sources(paths: list[str], root: Path | None,
                 lister: Lister | None = None) -> Iterator[Source]:
    """Files as given, and model files found under directories (sorted).

    In a git work tree a directory is searched as git sees it (``lister``): tracked and
    untracked files, ignored files left out. Elsewhere it is walked, following symlinked
    directories with loop detection."""
    for given in paths:
        if os.path.isdir(given):
            yield from sorted(_directory(given, root, lister, frozenset()),
                              key=lambda s: s.display)
        else:
            # A missing or unreadable file becomes that file's error result (exit 2) while the
            # other files are still scanned and reported.
            yield _file(given, root)


def _directory(folder: str, root: Path | None, lister: Lister | None,
               ancestors: frozenset[tuple[int, int]]) -> Iterator[Source]:
    try:
        st = os.stat(folder)
    except OSError as exc:
        yield broken(folder, root, f"cannot read directory: {exc.strerror or exc}")
        return
    key = (st.st_dev, st.st_ino)
    if key in ancestors:
        yield broken(folder, root, "symlink loop: this directory contains itself; not "
                                   "followed again")
        return
    if st.st_nlink == 0:
        yield broken(folder, root, "the directory has been deleted")
        return
    listed = lister(folder) if lister is not None else None
    if listed is None:
        yield from _walk(folder, root, lister, ancestors | {key})
    else:
        yield from _listed(folder, listed, root, lister, ancestors | {key})


def _listed(folder: str, names: list[str], root: Path | None, lister: Lister | None,
            ancestors: frozenset[tuple[int, int]]) -> Iterator[Source]:
    for name in names:
        path = os.path.join(folder, name.rstrip("/"))
        if os.path.isdir(path):       # a submodule or nested repository: git's view of it
            yield from _directory(path, root, lister, ancestors)
        elif is_model_name(name) and os.path.lexists(path):
            # (a tracked file deleted from the work tree has nothing on disk to scan)
            yield _file(path, root)


def _walk(folder: str, root: Path | None, lister: Lister | None,
          ancestors: frozenset[tuple[int, int]]) -> Iterator[Source]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield broken(folder, root, f"cannot read directory: {exc.strerror or exc}")
        return
    for entry in entries:
        if entry.name == ".git":
            continue
        try:
            is_dir = entry.is_dir()          # follows symlinks: loops are caught by inode
        except OSError as exc:
            yield broken(entry.path, root, f"cannot read: {exc.strerror or exc}")
            continue
        if is_dir:
            yield from _directory(entry.path, root, lister, ancestors)
        elif is_model_name(entry.name):
            yield _file(entry.path, root)


def _file(path: str, root: Path | None) -> Source:
    return Source(display=path, relpath=relative_to_root(path, root),
                  read=partial(read_file, path), file=path)


def broken(path: str, root: Path | None, message: str) -> Source:
    """A path that cannot be scanned: its read fails with ``message`` (an error result)."""
    return Source(display=path, relpath=relative_to_root(path, root),
                  read=partial(_unreadable, message))


def _unreadable(message: str) -> Buffer:
    raise SourceError(message)


def relative_to_root(path: str, root: Path | None) -> str | None:
    try:
        base = root or Path.cwd()
        return Path(os.path.abspath(path)).relative_to(base.resolve()).as_posix()
    except (ValueError, OSError):      # outside the root, or the current directory is gone
        return None


# ---------------------------------------------------------------------------------------------
# exclusion


def exclusion_path(source: Source) -> str:
    """What exclude globs match: the repository-relative path, else the path as given."""
    if source.relpath is not None:
        return source.relpath
    return Path(os.path.normpath(source.display)).as_posix()


def without_excluded(sources: Iterable[Source], patterns: Iterable[str]) -> list[Source]:
    """Sources no pattern matches; the patterns follow the policy's `rules:` globs."""
    globs = tuple(patterns)
    return [s for s in sources
            if not any(glob_match(p, exclusion_path(s)) for p in globs)]
