"""Where bytes come from: files and directories on disk (git blobs live in gitio.py).

A Source is read lazily and memory-mapped when it is a regular file, so a multi-gigabyte
checkpoint is never copied into memory just to be scanned.
"""
from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from picklegate.errors import SourceError
from picklegate.machine import Buffer

# File names picklegate looks at when it walks a directory; the same list feeds the pre-commit
# hook's `files` pattern (tests/test_hook_manifest.py keeps the two in step). Content decides
# the format; this only decides which files are candidates.
MODEL_SUFFIXES = ("pkl", "pickle", "pt", "pth", "bin", "ckpt", "joblib", "jbl", "npy", "npz",
                  "dill", "sav", "pkl3", "p", "mar", "data", "dat", "tar", "zip")
COMPRESSED_SUFFIXES = ("gz", "bz2", "xz", "lzma", "z", "lz4", "zst")
_NAME_RE = re.compile(
    r"(?i)\.(" + "|".join(MODEL_SUFFIXES) + r")(\.(" + "|".join(COMPRESSED_SUFFIXES) + r"))?$")


def is_model_name(path: str) -> bool:
    return _NAME_RE.search(path) is not None


@dataclass(frozen=True)
class Source:
    display: str                    # the path as the user gave it (or repo-relative for git)
    relpath: str | None             # repository-relative, forward slashes, for path rules
    read: Callable[[], Buffer]


def read_file(path: str) -> Buffer:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return b""
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None


def file_sources(paths: list[str], root: Path | None) -> Iterator[Source]:
    """Files as given, and model files found under directories (sorted, symlinks not followed)."""
    for given in paths:
        if os.path.isdir(given):
            yield from _walk(given, root)
        else:
            # A missing or unreadable file becomes that file's error result (exit 2) while the
            # other files are still scanned and reported.
            yield _file(given, root)


def _walk(folder: str, root: Path | None) -> Iterator[Source]:
    found: list[str] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        found.extend(os.path.join(current, f) for f in files if is_model_name(f))
    for path in sorted(found):
        yield _file(path, root)


def _file(path: str, root: Path | None) -> Source:
    return Source(display=path, relpath=relative_to_root(path, root),
                  read=lambda: read_file(path))


def relative_to_root(path: str, root: Path | None) -> str | None:
    base = root or Path.cwd()
    try:
        return Path(os.path.abspath(path)).relative_to(base.resolve()).as_posix()
    except ValueError:
        return None
