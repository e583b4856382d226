"""Writing policy files: check the new text with the normal loader, then replace atomically.

`policy init` and `approve` both write a policy a reviewer will read; neither may leave a half
written file (a full disk, Ctrl-C) nor a file the loader would refuse. Prints nothing.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import yaml

from picklegate.errors import UsageError
from picklegate.policy import Policy, load_policy, read_policy_file


def validated(path: str, text: str) -> Policy:
    """The policy ``text`` would be at ``path`` (files it extends read from disk); raises the
    loader's PolicyError when it is not valid."""
    target = os.path.normpath(path)

    def read(candidate: str) -> str | None:
        return text if os.path.normpath(candidate) == target else read_policy_file(candidate)

    return load_policy(path, read=read)


def encodable(text: str) -> bool:
    """Can ``text`` be written to a UTF-8 policy file? (Not with lone surrogates, which stand
    for undecodable bytes of a file name or a pickle's name.)"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def replace_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and
    os.replace (atomic on POSIX and Windows): readers see the old file or the new one. An
    existing file keeps its permission bits. The text is written byte for byte (no newline
    translation), so a file with CRLF line ends keeps them."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        # A new file gets what open() would give it (mkstemp's is 0600: a policy other users
        # and CI containers could not read).
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(prefix=".picklegate-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


# A plain YAML scalar that reads back as the same string in block and flow context alike:
# no indicator characters (: # , [ ] { } & * ! | > ' " % @ `) at the start, none of : # , [ ] { }
# anywhere, single inner spaces. Everything else is written double-quoted.
_PLAIN = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./@+-]*(?: [A-Za-z0-9_./@+-]+)*")


def yaml_string(text: str) -> str:
    """``text`` as a YAML scalar that PyYAML reads back as exactly this string: plain when it
    is unambiguous (so "yes", "null", "1.5" or "2027-01-01" are quoted, YAML would read them as
    other types), else double-quoted with every non-printable character escaped (YAML treats
    U+2028 and U+0085 as line breaks, so they are never written raw)."""
    if _PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    out = []
    for ch in json.dumps(text, ensure_ascii=False):
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)
