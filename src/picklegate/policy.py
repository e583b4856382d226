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

Every error is a :class:`PolicyError` carrying ``file:line:column``.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import zlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from picklegate.errors import PolicyError

if TYPE_CHECKING:
    import yaml
# Otherwise PyYAML (~10 ms to import) is imported by _read_yaml, which every use of a yaml
# name below follows: the built-in presets load from a generated cache without it.

SCHEMA_VERSION = 1
DEFAULT_PRESETS = ("builtins-safe", "torch", "numpy")
TOP_KEYS = ("version", "description", "extends", "allow", "deny", "rules", "approved",
            "unknown_formats", "lfs_pointers", "exclude")
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
        parts = name.split(".")
        return self.star or any(".".join(parts[:i]) in self.names
                                for i in range(1, len(parts) + 1))

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
    """Helpers over PyYAML nodes that raise PolicyError at the node's position."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: yaml.Node | None, message: str) -> PolicyError:
        if node is None:
            return PolicyError(self.path, None, None, message)
        mark = node.start_mark
        return PolicyError(self.path, mark.line + 1, mark.column + 1, message)

    def origin(self, node: yaml.Node) -> Origin:
        return Origin(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        seen: dict[str, yaml.Node] = {}
        for key, _ in node.value:
            text = self.string(key, f"a key of {what}")
            if text in seen:
                first = seen[text].start_mark.line + 1
                raise self.error(key, f"duplicate key {text!r} in {what} (first on line {first}); "
                                      "merge the two entries")
            seen[text] = key
        return list(node.value)

    def keys(self, node: yaml.Node, allowed: Iterable[str], what: str) -> dict[str, yaml.Node]:
        allowed = tuple(allowed)
        result: dict[str, yaml.Node] = {}
        for key, value in self.mapping(node, what):
            if key.value not in allowed:
                raise self.error(key, f"unknown key {key.value!r} in {what}; "
                                      f"expected one of: {', '.join(allowed)}")
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


@dataclass
class _Builder:
    allow: list[Entry] = field(default_factory=list)
    deny: list[Entry] = field(default_factory=list)
    rules: list[PathRule] = field(default_factory=list)
    approved: list[Approval] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


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
    return _finish(source or str(path), builder)


def load_presets(names: Iterable[str], source: str) -> Policy:
    builder = _Builder()
    for name in names:
        _load_preset(name, builder, stack=(), node=None, reader=_Node(source))
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


def _finish(source: str, b: _Builder) -> Policy:
    return Policy(source=source, allow=tuple(b.allow), deny=tuple(b.deny), rules=tuple(b.rules),
                  approved=tuple(b.approved),
                  unknown_formats=b.settings.get("unknown_formats", "fail"),
                  lfs_pointers=b.settings.get("lfs_pointers", "fail"),
                  files=tuple(b.files), exclude=tuple(b.exclude))


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
        raise reader.error(node, f"unknown preset {name!r}; available presets: "
                                 f"{', '.join(preset_names())} "
                                 "(or a relative path ending in .yaml)")
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
    r = _Node(display)
    root = _read_yaml(text, display)
    top = r.keys(root, TOP_KEYS, "the policy")
    if "version" not in top:
        raise r.error(root, "missing 'version: 1' at the top of the policy")
    version = top["version"]
    if not (isinstance(version, yaml.ScalarNode) and version.value == str(SCHEMA_VERSION)
            and version.tag == "tag:yaml.org,2002:int"):
        raise r.error(version, f"unsupported policy version {version.value!r}; "
                               f"this picklegate reads version {SCHEMA_VERSION}")
    if "description" in top:
        r.string(top["description"], "description")
    if "extends" in top:
        for item in r.sequence(top["extends"], "extends"):
            _extend(r.string(item, "an extends item"), item, folder, b, stack, r, read)
    if "allow" in top:
        b.allow.extend(_table(r, top["allow"], "allow"))
    if "deny" in top:
        b.deny.extend(_table(r, top["deny"], "deny"))
    for key, choices in CHOICES.items():
        if key in top:
            value = r.string(top[key], key)
            if value not in choices:
                raise r.error(top[key], f"{key} must be one of: {', '.join(choices)}")
            b.settings[key] = value
    if "rules" in top:
        b.rules.extend(_rule(r, item) for item in r.sequence(top["rules"], "rules"))
    if "approved" in top:
        b.approved.extend(_approval(r, item) for item in r.sequence(top["approved"], "approved"))
    if "exclude" in top:
        b.exclude.extend(_glob(r, item) for item in r.sequence(top["exclude"], "exclude"))


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
        module = r.string(key, f"a module in {what}")
        if not _MODULE_RE.match(module):
            raise r.error(key, f"{module!r} is not a module name; write 'package.module', or "
                               "'package.*' for a package and all its submodules")
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
        if isinstance(item, yaml.MappingNode):
            meta = r.keys(item, ENTRY_KEYS, f"an entry of {what}.{module}")
            if "name" not in meta:
                raise r.error(item, f"an entry of {what}.{module} needs 'name'")
            name = _name(r, meta["name"], what, module)
            if "owner" in meta:
                r.string(meta["owner"], "owner")
            extra.append(Entry(
                base, subtree, name == "*", frozenset() if name == "*" else frozenset({name}),
                r.origin(item),
                reason=r.string(meta["reason"], "reason") if "reason" in meta else None,
                expires=r.date(meta["expires"], "expires") if "expires" in meta else None))
        else:
            plain.add(_name(r, item, what, module))
    entries = [Entry(base, subtree, "*" in plain, frozenset(plain - {"*"}), r.origin(key))]
    return (entries if plain else []) + extra


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
        r.string(keys["reason"], "reason")
    allow = tuple(_table(r, keys["allow"], "allow")) if "allow" in keys else ()
    deny = tuple(_table(r, keys["deny"], "deny")) if "deny" in keys else ()
    return PathRule(paths, allow, deny, r.origin(node))


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _approval(r: _Node, node: yaml.Node) -> Approval:
    keys = r.keys(node, APPROVAL_KEYS, "an approval")
    for required in ("path", "sha256", "reason"):
        if required not in keys:
            raise r.error(node, f"an approval needs '{required}'")
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
