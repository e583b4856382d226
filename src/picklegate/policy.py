"""The allowlist policy: strict YAML loading with positions, presets, and matching.

A policy says which (module, name) pairs a pickle may import. Matching is exact on the name
CPython's find_class would import (after Python 2 mapping, see names.py):

* ``module: [a, b]`` allows exactly ``module.a`` and ``module.b``;
* ``module: "*"`` (or a list containing ``"*"``) allows every *undotted* name in ``module``.
  A protocol 4 qualname such as ``base.os.system`` reaches attributes of other objects, so
  dotted names match only when listed exactly;
* a module key ``pkg.*`` covers ``pkg`` and every submodule;
* ``deny`` has the same shape and always wins, over presets and path rules too; there
  ``"*"`` covers dotted names as well, and a denied name covers what is reached through it.

Validation does not stop at the first problem: every error of a policy (and of the files it
extends) is collected, each with its ``file:line:column`` and a way to fix it, and raised as
one :class:`PolicyError` that carries them all.
"""
from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from picklegate.errors import PolicyError
from picklegate.limits import LIMIT_NAMES

if TYPE_CHECKING:
    import yaml
# Otherwise PyYAML (~10 ms to import) is imported by _read_yaml, which every use of a yaml
# name below follows: the built-in presets load from a generated cache without it.

SCHEMA_VERSION = 1
DEFAULT_PRESETS = ("builtins-safe", "torch", "numpy")
TOP_KEYS = ("version", "description", "extends", "allow", "deny", "rules", "approved",
            "unknown_formats", "lfs_pointers", "exclude", "limits")
ENTRY_KEYS = ("name", "reason", "owner", "expires")
RULE_KEYS = ("paths", "allow", "deny", "reason")
APPROVAL_KEYS = ("path", "sha256", "reason", "owner", "expires")
CHOICES = {"unknown_formats": ("fail", "allow"), "lfs_pointers": ("fail", "warn")}
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\.\*)?$")


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Origin:
    """Where an entry was written, for 'allowed by' reports and policy check."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Entry:
    """One module key of an allow or deny table, with the names it lists."""

    module: str                       # without the trailing ".*"
    subtree: bool                     # written as "pkg.*"
    star: bool                        # "*" among the names
    names: frozenset[str]
    origin: Origin
    reason: str | None = None
    expires: dt.date | None = None

    @property
    def pattern(self) -> str:
        return self.module + (".*" if self.subtree else "")

    def covers_module(self, module: str) -> bool:
        if self.subtree:
            return module == self.module or module.startswith(self.module + ".")
        return module == self.module

    def matches(self, module: str, name: str) -> bool:
        if not self.covers_module(module):
            return False
        return name in self.names or (self.star and "." not in name)

    def denies(self, module: str, name: str) -> bool:
        """Deny is as broad as allow is narrow: ``"*"`` covers dotted names too, and a denied
        name covers every attribute reached through it (a protocol 4 name "system.__call__")."""
        if not self.covers_module(module):
            return False
        # Each listed name is a prefix of ``name`` ending at a dot or at its end; checked per
        # listed name, so a name of 100,000 dotted parts costs one pass, not one join per part.
        return self.star or any(name == listed or name.startswith(listed + ".")
                                for listed in self.names)

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and today > self.expires


@dataclass(frozen=True)
class PathRule:
    paths: tuple[str, ...]
    allow: tuple[Entry, ...]
    deny: tuple[Entry, ...]
    origin: Origin

    def applies_to(self, path: str | None) -> bool:
        return path is not None and any(glob_match(p, path) for p in self.paths)


@dataclass(frozen=True)
class Approval:
    path: str
    sha256: str
    reason: str
    origin: Origin
    owner: str | None = None
    expires: dt.date | None = None


class Verdict(str, Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    NOT_ALLOWED = "not-allowed"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    entry: Entry | None = None
    # Entries that would have allowed the import but have expired.
    expired: tuple[Entry, ...] = ()


@dataclass(frozen=True)
class Policy:
    source: str
    allow: tuple[Entry, ...] = ()
    deny: tuple[Entry, ...] = ()
    rules: tuple[PathRule, ...] = ()
    approved: tuple[Approval, ...] = ()
    unknown_formats: str = "fail"
    lfs_pointers: str = "fail"
    files: tuple[str, ...] = ()       # every policy file read (the file itself and its extends)
    # Git-style globs (as in rules) of paths never scanned: vendored test fixtures and the like.
    exclude: tuple[str, ...] = ()
    # The `limits:` section: (field of picklegate.limits.Limits, value), in file order.
    limits: tuple[tuple[str, float], ...] = ()

    def decide(self, module: str, name: str, path: str | None = None,
               today: dt.date | None = None) -> Decision:
        today = today or utc_today()
        allow, deny = list(self.allow), list(self.deny)
        for rule in self.rules:
            if rule.applies_to(path):
                allow.extend(rule.allow)
                deny.extend(rule.deny)
        for entry in deny:
            if entry.denies(module, name):
                return Decision(Verdict.DENIED, entry)
        expired: list[Entry] = []
        for entry in allow:
            if entry.matches(module, name):
                if not entry.expired(today):
                    return Decision(Verdict.ALLOWED, entry)
                expired.append(entry)
        return Decision(Verdict.NOT_ALLOWED, None, tuple(expired))

    def approval_for(self, path: str | None) -> tuple[Approval, ...]:
        if path is None:
            return ()
        return tuple(a for a in self.approved if a.path == path)


def utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def sha256_hex(data: bytes) -> str:
    import hashlib                  # (OpenSSL: only when a file has an approval to check)
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Git-style globs for path rules


def glob_match(pattern: str, path: str) -> bool:
    """Match a repo-relative path the way .gitignore patterns do.

    ``*`` stays within one path segment, ``**`` spans segments, a pattern without a slash
    matches the file name at any depth, a leading slash anchors to the repository root.
    """
    return _glob_regex(pattern).fullmatch(path.replace("\\", "/").lstrip("/")) is not None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    anchored = "/" in pattern.rstrip("/")
    pat = pattern.lstrip("/")
    out = [] if anchored else ["(?:.*/)?"]
    i = 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif pat[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pat[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pat[i]))
            i += 1
    if pat.endswith("/"):
        out.append(".*")
    return re.compile("".join(out))


# ---------------------------------------------------------------------------------------------
# Loading


class _Node:
    """Helpers over PyYAML nodes that report PolicyErrors at the node's position.

    Problems go to ``problems`` (shared by every file of one load) so that one run reports
    all of them; a helper raises only when the value it was asked for cannot be produced, and
    the caller's ``collect()`` block records that and moves on to the next entry."""

    def __init__(self, path: str, problems: list[PolicyError] | None = None) -> None:
        self.path = path
        self.problems: list[PolicyError] = [] if problems is None else problems

    def error(self, node: yaml.Node | None, message: str) -> PolicyError:
        if node is None:
            return PolicyError(self.path, None, None, message)
        mark = node.start_mark
        return PolicyError(self.path, mark.line + 1, mark.column + 1, message)

    def report(self, node: yaml.Node | None, message: str) -> None:
        self.problems.append(self.error(node, message))

    @contextmanager
    def collect(self) -> Iterator[None]:
        """Record a PolicyError raised inside the block and carry on after it."""
        try:
            yield
        except PolicyError as exc:
            self.problems.extend(exc.errors)

    def origin(self, node: yaml.Node) -> Origin:
        return Origin(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
        """The pairs of a mapping; a non-string or repeated key is reported and left out."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        seen: dict[str, yaml.Node] = {}
        pairs = []
        for key, value in node.value:
            with self.collect():
                text = self.string(key, f"a key of {what}")
                if text in seen:
                    first = seen[text].start_mark.line + 1
                    self.report(key, f"duplicate key {text!r} in {what} (first on line {first}); "
                                     "merge the two entries")
                    continue
                seen[text] = key
                pairs.append((key, value))
        return pairs

    def keys(self, node: yaml.Node, allowed: Iterable[str], what: str) -> dict[str, yaml.Node]:
        allowed = tuple(allowed)
        result: dict[str, yaml.Node] = {}
        for key, value in self.mapping(node, what):
            if key.value not in allowed:
                self.report(key, f"unknown key {key.value!r} in {what}; "
                                 f"{did_you_mean(key.value, allowed)}expected one of: "
                                 f"{', '.join(allowed)}")
                continue
            result[key.value] = value
        return result

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.error(node, f"{what} must be a string; quote it")
        return str(node.value)

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what} must be a list")
        return list(node.value)

    def date(self, node: yaml.Node, what: str) -> dt.date:
        # Python 3.11's fromisoformat also takes "20240101" and "2024-W01-1"; the schema does not.
        if isinstance(node, yaml.ScalarNode) and _DATE.match(str(node.value)):
            try:
                return dt.date.fromisoformat(str(node.value))
            except ValueError:
                pass
        raise self.error(node, f"{what} must be a date written YYYY-MM-DD")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """"did you mean 'allow'? " for a near miss of one of ``choices``, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


@dataclass
class _Builder:
    allow: list[Entry] = field(default_factory=list)
    deny: list[Entry] = field(default_factory=list)
    rules: list[PathRule] = field(default_factory=list)
    approved: list[Approval] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    problems: list[PolicyError] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)

    def raise_problems(self) -> None:
        """One PolicyError carrying every problem found, file by file in the order they were
        opened (the policy itself first), each file's problems by position."""
        if not self.problems:
            return
        order = {path: i for i, path in reversed(list(enumerate(self.files)))}
        self.problems.sort(key=lambda e: (order.get(e.path, -1), e.line or 0, e.column or 0))
        raise PolicyError.collected(self.problems)


# Reads a policy file by path: its text, or None when there is no such file. The default reads
# the filesystem; gitio supplies one that reads a commit (so CI can use the base's policy).
PolicyReader = Callable[[str], "str | None"]


def read_policy_file(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(path, None, None, f"cannot read policy: {exc}") from None


def load_policy(path: str | Path, read: PolicyReader = read_policy_file,
                source: str | None = None) -> Policy:
    """Load a policy file (and what it extends); raise PolicyError on any problem."""
    builder = _Builder()
    text = read(str(path))
    if text is None:
        raise PolicyError(str(path), None, None, "cannot read policy: no such file")
    _load_file(str(path), text, builder, (), read)
    builder.raise_problems()
    return _finish(source or str(path), builder)


def load_presets(names: Iterable[str], source: str) -> Policy:
    builder = _Builder()
    reader = _Node(source, builder.problems)
    for name in names:
        with reader.collect():
            _load_preset(name, builder, stack=(), node=None, reader=reader)
    builder.raise_problems()
    return _finish(source, builder)


def default_policy() -> Policy:
    return load_presets(DEFAULT_PRESETS, "built-in default (" + " + ".join(DEFAULT_PRESETS) + ")")


def _preset_text(name: str) -> str | None:
    """A preset's YAML. Read next to this module when the package is a directory (always, in
    practice): importlib.resources imports tempfile and zipfile, a few ms of start-up."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    here = os.path.join(os.path.dirname(__file__), "presets")
    if os.path.isdir(here):
        path = os.path.join(here, f"{name}.yaml")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    from importlib import resources
    resource = resources.files("picklegate") / "presets" / f"{name}.yaml"
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


def preset_names() -> list[str]:
    from importlib import resources
    folder = resources.files("picklegate") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def is_module_name(text: str) -> bool:
    """Whether ``text`` can be written as a module key meaning exactly that module (no
    ``pkg.*`` wildcard): what `policy init` may write for a global a file imports."""
    return _MODULE_RE.match(text) is not None and not text.endswith(".*")


def is_exact_name(text: str) -> bool:
    """Whether ``text`` can be listed as a name meaning exactly that name (never ``"*"``)."""
    return bool(text) and text != "*" and not any(c.isspace() for c in text)


def _finish(source: str, b: _Builder) -> Policy:
    return Policy(source=source, allow=tuple(b.allow), deny=tuple(b.deny), rules=tuple(b.rules),
                  approved=tuple(b.approved),
                  unknown_formats=b.settings.get("unknown_formats", "fail"),
                  lfs_pointers=b.settings.get("lfs_pointers", "fail"),
                  files=tuple(b.files), exclude=tuple(b.exclude),
                  limits=tuple(b.limits.items()))


def _read_yaml(text: str, display: str) -> yaml.Node:
    global yaml
    import yaml
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise PolicyError(display, line, col, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(display, None, None, f"invalid YAML: {exc}") from None
    if node is None:
        raise PolicyError(display, 1, 1, "the policy is empty; it needs at least 'version: 1'")
    return node


def _load_file(path: str, text: str, b: _Builder, stack: tuple[str, ...],
               read: PolicyReader) -> None:
    b.files.append(path)
    _load_text(text, path, os.path.dirname(path), b, stack + (os.path.normpath(path),), read)


def _load_preset(name: str, b: _Builder, stack: tuple[str, ...], node: yaml.Node | None,
                 reader: _Node) -> None:
    key = f"preset:{name}"
    if key in stack:
        raise reader.error(node, f"extends cycle: preset {name!r} extends itself")
    text = _preset_text(name)
    if text is None:
        raise reader.error(node, f"unknown preset {name!r}; {did_you_mean(name, preset_names())}"
                                 f"available presets: {', '.join(preset_names())} (or a relative "
                                 "path ending in .yaml)")
    if _replay_cached(name, text, b):
        return
    display = f"<preset {name}>"
    b.files.append(display)
    _load_text(text, display, None, b, stack + (key,), None)


# ---------------------------------------------------------------------------------------------
# The built-in presets, parsed ahead of time (picklegate/_preset_cache.py, written by
# tools/gen_preset_cache.py): parsing them with PyYAML is most of a small scan's start-up.
# Each entry is what loading that preset alone adds to a _Builder. It is used only when the
# preset's text still has the CRC-32 and length recorded (an edited preset is parsed again),
# and tests/test_preset_cache.py checks that it equals the YAML and is up to date. Plain
# literals, never pickle.


def preset_stamp(text: str) -> tuple[int, int]:
    data = text.encode("utf-8")
    return (zlib.crc32(data), len(data))


def _replay_cached(name: str, text: str, b: _Builder) -> bool:
    if not USE_PRESET_CACHE:
        return False
    from picklegate._preset_cache import PRESETS
    cached = PRESETS.get(name)
    if cached is None or tuple(cached["stamp"]) != preset_stamp(text):
        return False
    b.files.extend(cached["files"])
    b.allow.extend(_cached_entry(e) for e in cached["allow"])
    b.deny.extend(_cached_entry(e) for e in cached["deny"])
    b.settings.update(cached["settings"])
    b.exclude.extend(cached["exclude"])
    return True


USE_PRESET_CACHE = True              # tests turn it off to compare with the YAML


def _cached_entry(row: tuple[Any, ...]) -> Entry:
    module, subtree, star, names, (path, line, column), reason, expires = row
    return Entry(module, subtree, star, frozenset(names), Origin(path, line, column), reason,
                 dt.date.fromisoformat(expires) if expires is not None else None)


def cache_rows(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What tools/gen_preset_cache.py writes: each preset parsed from its YAML alone."""
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        b = _Builder()
        text = _preset_text(name)
        if text is None:
            raise ValueError(f"no preset {name!r}")
        display = f"<preset {name}>"
        b.files.append(display)
        _load_text(text, display, None, b, (f"preset:{name}",), None)
        if b.rules or b.approved:
            raise ValueError(f"preset {name}: rules and approvals are not cached")
        rows[name] = {"stamp": preset_stamp(text), "files": b.files,
                      "allow": [_entry_row(e) for e in b.allow],
                      "deny": [_entry_row(e) for e in b.deny],
                      "settings": b.settings, "exclude": b.exclude}
    return rows


def _entry_row(e: Entry) -> tuple[Any, ...]:
    return (e.module, e.subtree, e.star, tuple(sorted(e.names)),
            (e.origin.path, e.origin.line, e.origin.column), e.reason,
            e.expires.isoformat() if e.expires is not None else None)


def _load_text(text: str, display: str, folder: str | None, b: _Builder,
               stack: tuple[str, ...], read: PolicyReader | None) -> None:
    r = _Node(display, b.problems)
    root = _read_yaml(text, display)
    top = r.keys(root, TOP_KEYS, "the policy")
    if not _version_ok(r, root, top):
        return
    for key in TOP_KEYS:             # a fixed order: extends before this file's own settings
        if key in top:
            with r.collect():
                _TOP_LEVEL[key](r, top[key], folder, b, stack, read)


def _version_ok(r: _Node, root: yaml.Node, top: dict[str, yaml.Node]) -> bool:
    """Whether the rest of the file can be read as this schema. A quoted "1" is reported and
    the file still checked; another version means other keys, so nothing more is said."""
    version = top.get("version")
    if version is None:
        r.report(root, f"missing 'version: {SCHEMA_VERSION}' at the top of the policy; add that "
                       "line (an unquoted integer)")
        return True
    if not isinstance(version, yaml.ScalarNode):
        r.report(version, f"version must be the integer {SCHEMA_VERSION}: write "
                          f"'version: {SCHEMA_VERSION}'")
        return False
    if version.tag == "tag:yaml.org,2002:int" and version.value == str(SCHEMA_VERSION):
        return True
    if version.value == str(SCHEMA_VERSION):
        r.report(version, f"version must be an unquoted integer: write 'version: "
                          f"{SCHEMA_VERSION}', without quotes (it is the string "
                          f"{version.value!r} here)")
        return True
    r.report(version, f"unsupported policy version {version.value!r}; this picklegate reads "
                      f"version {SCHEMA_VERSION} (an unquoted integer); the rest of the file "
                      "was not checked")
    return False


_Reader = Callable[[_Node, "yaml.Node", "str | None", _Builder, "tuple[str, ...]",
                    "PolicyReader | None"], None]


def _top_version(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
                 stack: tuple[str, ...], read: PolicyReader | None) -> None:
    """Checked first, by _version_ok."""


def _top_description(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
                     stack: tuple[str, ...], read: PolicyReader | None) -> None:
    r.string(node, "description")


def _top_extends(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
                 stack: tuple[str, ...], read: PolicyReader | None) -> None:
    for item in r.sequence(node, "extends"):
        with r.collect():
            _extend(r.string(item, "an extends item"), item, folder, b, stack, r, read)


def _top_allow(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
               stack: tuple[str, ...], read: PolicyReader | None) -> None:
    b.allow.extend(_table(r, node, "allow"))


def _top_deny(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
              stack: tuple[str, ...], read: PolicyReader | None) -> None:
    b.deny.extend(_table(r, node, "deny"))


def _top_choice(key: str) -> _Reader:
    def read_choice(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
                    stack: tuple[str, ...], read: PolicyReader | None) -> None:
        value = r.string(node, key)
        if value not in CHOICES[key]:
            raise r.error(node, f"{key} must be one of: {', '.join(CHOICES[key])}")
        b.settings[key] = value
    return read_choice


def _top_rules(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
               stack: tuple[str, ...], read: PolicyReader | None) -> None:
    for item in r.sequence(node, "rules"):
        with r.collect():
            b.rules.append(_rule(r, item))


def _top_approved(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
                  stack: tuple[str, ...], read: PolicyReader | None) -> None:
    for item in r.sequence(node, "approved"):
        with r.collect():
            b.approved.append(_approval(r, item))


def _top_exclude(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
                 stack: tuple[str, ...], read: PolicyReader | None) -> None:
    for item in r.sequence(node, "exclude"):
        with r.collect():
            b.exclude.append(_glob(r, item))


def _top_limits(r: _Node, node: yaml.Node, folder: str | None, b: _Builder,
                stack: tuple[str, ...], read: PolicyReader | None) -> None:
    b.limits.update(_limits(r, node))


# One reader per top-level key, applied in TOP_KEYS order whatever order the file writes them
# in, so a file's own settings always override those of the files it extends.
_TOP_LEVEL: dict[str, _Reader] = {
    "version": _top_version, "description": _top_description, "extends": _top_extends,
    "allow": _top_allow, "deny": _top_deny, "rules": _top_rules, "approved": _top_approved,
    "exclude": _top_exclude, "limits": _top_limits,
    **{key: _top_choice(key) for key in CHOICES}}
assert set(_TOP_LEVEL) == set(TOP_KEYS)


def _limits(r: _Node, node: yaml.Node) -> dict[str, float]:
    """`limits:`, a mapping of picklegate.limits.Limits fields to positive numbers (seconds
    for time_budget, which may be fractional; MiB for memory_budget; counts and bytes for the
    rest). A policy that extends another overrides its limits key by key."""
    out: dict[str, float] = {}
    for name, value in r.keys(node, LIMIT_NAMES, "limits").items():
        number = _number(value, allow_float=name == "time_budget")
        if number is None or number <= 0:
            kind = "a positive number of seconds" if name == "time_budget" else \
                "a positive whole number"
            raise r.error(value, f"limits.{name} must be {kind}")
        out[name] = number
    return out


def _number(node: yaml.Node, allow_float: bool) -> float | None:
    if not isinstance(node, yaml.ScalarNode):
        return None
    if node.tag == "tag:yaml.org,2002:int":
        try:
            return int(str(node.value).replace("_", ""), 0)
        except ValueError:
            return None
    if allow_float and node.tag == "tag:yaml.org,2002:float":
        try:
            value = float(str(node.value).replace("_", ""))
        except ValueError:
            return None
        return value if value == value and value != float("inf") else None
    return None


def _glob(r: _Node, node: yaml.Node) -> str:
    pattern = r.string(node, "an exclude pattern")
    if not pattern.strip("/ "):
        raise r.error(node, f"{pattern!r} is not a path pattern; write a git-style glob such "
                            "as 'tests/fixtures/**'")
    return pattern


def _extend(target: str, node: yaml.Node, folder: str | None, b: _Builder,
            stack: tuple[str, ...], r: _Node, read: PolicyReader | None) -> None:
    if not target.endswith((".yaml", ".yml")):
        _load_preset(target, b, stack, node, r)
        return
    if folder is None or read is None:
        raise r.error(node, "a built-in preset can only extend other presets")
    path = os.path.normpath(os.path.join(folder, target))
    if path in stack:
        raise r.error(node, f"extends cycle: {target} is already being loaded")
    text = read(path)
    if text is None:
        raise r.error(node, f"extends {target!r}, which does not exist "
                            f"(paths are relative to {folder or '.'})")
    _load_file(path, text, b, stack, read)


def _table(r: _Node, node: yaml.Node, what: str) -> list[Entry]:
    entries: list[Entry] = []
    for key, value in r.mapping(node, what):
        with r.collect():
            module = r.string(key, f"a module in {what}")
            if not _MODULE_RE.match(module):
                raise r.error(key, f"{module!r} is not a module name; write 'package.module', "
                                   "or 'package.*' for a package and all its submodules")
            entries.extend(_entries(r, key, module, value, what))
    return entries


def _entries(r: _Node, key: yaml.Node, module: str, value: yaml.Node, what: str) -> list[Entry]:
    """One Entry for the plain names of a module key, one more per name written with metadata
    (so an expiring name lapses on its own)."""
    subtree = module.endswith(".*")
    base = module[:-2] if subtree else module
    if isinstance(value, yaml.ScalarNode):
        if value.tag != "tag:yaml.org,2002:str" or value.value != "*":
            raise r.error(value, f"{what}.{module} must be a list of names or \"*\"; "
                                 f"write [{value.value}] for a single name")
        return [Entry(base, subtree, True, frozenset(), r.origin(key))]
    plain: set[str] = set()
    extra: list[Entry] = []
    for item in r.sequence(value, f"{what}.{module}"):
        with r.collect():
            if isinstance(item, yaml.MappingNode):
                extra.append(_meta_entry(r, item, base, subtree, what, module))
            else:
                plain.add(_name(r, item, what, module))
    entries = [Entry(base, subtree, "*" in plain, frozenset(plain - {"*"}), r.origin(key))]
    return (entries if plain else []) + extra


def _meta_entry(r: _Node, item: yaml.Node, base: str, subtree: bool, what: str,
                module: str) -> Entry:
    meta = r.keys(item, ENTRY_KEYS, f"an entry of {what}.{module}")
    if "name" not in meta:
        raise r.error(item, f"an entry of {what}.{module} needs 'name'")
    name = _name(r, meta["name"], what, module)
    if "owner" in meta:
        with r.collect():
            r.string(meta["owner"], "owner")
    reason = expires = None
    with r.collect():
        reason = r.string(meta["reason"], "reason") if "reason" in meta else None
    with r.collect():
        expires = r.date(meta["expires"], "expires") if "expires" in meta else None
    return Entry(base, subtree, name == "*", frozenset() if name == "*" else frozenset({name}),
                 r.origin(item), reason=reason, expires=expires)


def _name(r: _Node, node: yaml.Node, what: str, module: str) -> str:
    name = r.string(node, f"a name in {what}.{module}")
    if not name or name != name.strip() or any(c in name for c in " \n\t"):
        raise r.error(node, f"{name!r} in {what}.{module} is not a name")
    return name


def _rule(r: _Node, node: yaml.Node) -> PathRule:
    keys = r.keys(node, RULE_KEYS, "a rule")
    if "paths" not in keys:
        raise r.error(node, "a rule needs 'paths': a list of git-style globs")
    paths = tuple(r.string(p, "a rule path") for p in r.sequence(keys["paths"], "paths"))
    if not paths:
        raise r.error(keys["paths"], "a rule needs at least one path")
    if "reason" in keys:
        with r.collect():
            r.string(keys["reason"], "reason")
    allow: tuple[Entry, ...] = ()
    deny: tuple[Entry, ...] = ()
    with r.collect():
        allow = tuple(_table(r, keys["allow"], "allow")) if "allow" in keys else ()
    with r.collect():
        deny = tuple(_table(r, keys["deny"], "deny")) if "deny" in keys else ()
    return PathRule(paths, allow, deny, r.origin(node))


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _approval(r: _Node, node: yaml.Node) -> Approval:
    keys = r.keys(node, APPROVAL_KEYS, "an approval")
    missing = [k for k in ("path", "sha256", "reason") if k not in keys]
    if missing:
        raise r.error(node, f"an approval needs {' and '.join(repr(k) for k in missing)}; "
                            "`picklegate approve FILE --reason ... --owner ...` writes one")
    # The raw scalar text: an unquoted digest made only of digits (or digits and one "e")
    # would otherwise be read by YAML as a number.
    digest_node = keys["sha256"]
    digest = (str(digest_node.value).lower() if isinstance(digest_node, yaml.ScalarNode)
              else "")
    if not _SHA256.match(digest):
        raise r.error(keys["sha256"], "sha256 must be 64 hexadecimal digits "
                                      "(the output of sha256sum on the file)")
    reason = r.string(keys["reason"], "reason")
    if not reason.strip():
        raise r.error(keys["reason"], "reason must say why the file is approved")
    return Approval(
        path=r.string(keys["path"], "path").lstrip("/"), sha256=digest, reason=reason,
        origin=r.origin(node),
        owner=r.string(keys["owner"], "owner") if "owner" in keys else None,
        expires=r.date(keys["expires"], "expires") if "expires" in keys else None)
