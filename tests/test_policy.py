"""Policy loading (every error with its file:line:column) and matching semantics."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import pickle
from importlib import resources
from pathlib import Path

import pytest
import yaml

from picklegate.errors import PolicyError
from picklegate.findings import FindingKind, Status
from picklegate.policy import (
    DEFAULT_PRESETS,
    Decision,
    Policy,
    Verdict,
    glob_match,
    load_policy,
)
from picklegate.scan import ScanOptions, scan_bytes

PRESETS = resources.files("picklegate") / "presets"
TODAY = dt.date(2026, 6, 15)
SHA_A = "a" * 64


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, name: str = "policy.yaml") -> Policy:
    return load_policy(write(tmp_path, name, text))


def require_presets(*names: str) -> None:
    """Presets are data files shipped with the package; their absence is a failure, not a skip."""
    missing = [n for n in names if not (PRESETS / f"{n}.yaml").is_file()]
    assert not missing, f"built-in presets missing from {PRESETS}: {', '.join(missing)}"


# ---------------------------------------------------------------------------------------------
# Errors: (id, policy text, line, column, part of the message)

ERRORS = [
    ("unknown-top-key", "version: 1\nalow:\n  os: [getcwd]\n",
     2, 1, "unknown key 'alow' in the policy"),
    ("unknown-entry-key", "version: 1\nallow:\n  os:\n    - {name: getcwd, why: x}\n",
     4, 22, "unknown key 'why' in an entry of allow.os"),
    ("unknown-rule-key", "version: 1\nrules:\n  - paths: [a]\n    alow: {}\n",
     4, 5, "unknown key 'alow' in a rule"),
    ("unknown-approval-key",
     f"version: 1\napproved:\n  - path: a\n    sha256: {SHA_A}\n    reason: r\n    note: x\n",
     6, 5, "unknown key 'note' in an approval"),
    ("duplicate-top-key", "version: 1\nallow: {}\nallow: {}\n",
     3, 1, "duplicate key 'allow' in the policy (first on line 2)"),
    ("duplicate-module", "version: 1\nallow:\n  os: [getcwd]\n  os: [getpid]\n",
     4, 3, "duplicate key 'os' in allow (first on line 3)"),
    ("duplicate-module-in-deny", "version: 1\ndeny:\n  os: [a]\n  'os': [b]\n",
     4, 3, "duplicate key 'os' in deny (first on line 3)"),
    ("duplicate-entry-key", "version: 1\nallow:\n  os:\n    - name: a\n      name: b\n",
     5, 7, "duplicate key 'name' in an entry of allow.os (first on line 4)"),
    ("duplicate-rule-key", "version: 1\nrules:\n  - paths: [a]\n    paths: [b]\n",
     4, 5, "duplicate key 'paths' in a rule (first on line 3)"),
    ("duplicate-version", "version: 1\nversion: 1\n",
     2, 1, "duplicate key 'version' in the policy (first on line 1)"),
    ("allow-as-list", "version: 1\nallow:\n  - os\n",
     3, 3, "allow must be a mapping"),
    ("deny-as-string", "version: 1\ndeny: os\n",
     2, 7, "deny must be a mapping"),
    ("names-as-int", "version: 1\nallow:\n  os: 5\n",
     3, 7, 'allow.os must be a list of names or "*"'),
    ("names-as-string", "version: 1\nallow:\n  os: getcwd\n",
     3, 7, 'allow.os must be a list of names or "*"; write [getcwd] for a single name'),
    ("name-as-int", "version: 1\nallow:\n  os: [getcwd, 5]\n",
     3, 16, "a name in allow.os must be a string; quote it"),
    ("name-as-float", "version: 1\nallow:\n  os: [1.5]\n",
     3, 8, "a name in allow.os must be a string; quote it"),
    ("name-as-bool", "version: 1\nallow:\n  os: [yes]\n",
     3, 8, "a name in allow.os must be a string; quote it"),
    ("name-with-space", "version: 1\nallow:\n  os: ['get cwd']\n",
     3, 8, "'get cwd' in allow.os is not a name"),
    ("module-not-a-module-name", "version: 1\nallow:\n  os system: [a]\n",
     3, 3, "'os system' is not a module name"),
    ("module-with-dash", "version: 1\nallow:\n  my-pkg: [a]\n",
     3, 3, "'my-pkg' is not a module name"),
    ("star-as-module", "version: 1\nallow:\n  '*': '*'\n",
     3, 3, "'*' is not a module name"),
    ("unquoted-number-module", "version: 1\nallow:\n  123: [a]\n",
     3, 3, "a key of allow must be a string; quote it"),
    ("description-number", "version: 1\ndescription: 5\n",
     2, 14, "description must be a string; quote it"),
    ("reason-number", "version: 1\nallow:\n  os:\n    - {name: a, reason: 42}\n",
     4, 25, "reason must be a string; quote it"),
    ("missing-version", "allow:\n  os: [getcwd]\n",
     1, 1, "missing 'version: 1'"),
    ("version-2", "version: 2\n",
     1, 10, "unsupported policy version '2'"),
    ("version-string", "version: '1'\n",
     1, 10, "version must be an unquoted integer: write 'version: 1', without quotes"),
    ("version-string-double-quoted", 'version: "1"\n',
     1, 10, "version must be an unquoted integer"),
    ("version-float", "version: 1.0\n",
     1, 10, "unsupported policy version '1.0'"),
    ("policy-is-a-list", "- version: 1\n",
     1, 1, "the policy must be a mapping"),
    ("unknown-preset", "version: 1\nextends: [no-such-preset]\n",
     2, 11, "unknown preset 'no-such-preset'"),
    ("extends-not-a-list", "version: 1\nextends: torch\n",
     2, 10, "extends must be a list"),
    ("extends-missing-file", "version: 1\nextends:\n  - missing.yaml\n",
     3, 5, "extends 'missing.yaml', which does not exist"),
    ("yaml-syntax-unclosed", "version: 1\nallow:\n  os: [a, b\n",
     4, 1, "invalid YAML"),
    ("yaml-syntax-tab", "version: 1\nallow:\n\tos: [a]\n",
     3, 1, "invalid YAML: found character '\\t' that cannot start any token"),
    ("empty-file", "",
     1, 1, "the policy is empty"),
    ("only-comments", "# nothing here yet\n",
     1, 1, "the policy is empty"),
    ("bad-date", "version: 1\nallow:\n  os:\n    - {name: a, expires: 2024-13-01}\n",
     4, 26, "expires must be a date written YYYY-MM-DD"),
    ("date-as-word", "version: 1\nallow:\n  os:\n    - {name: a, expires: soon}\n",
     4, 26, "expires must be a date written YYYY-MM-DD"),
    ("date-without-dashes", "version: 1\nallow:\n  os:\n    - {name: a, expires: 20240101}\n",
     4, 26, "expires must be a date written YYYY-MM-DD"),
    ("entry-without-name", "version: 1\nallow:\n  os:\n    - {reason: x}\n",
     4, 7, "an entry of allow.os needs 'name'"),
    ("bad-sha256", "version: 1\napproved:\n  - path: a\n    sha256: abc\n    reason: r\n",
     4, 13, "sha256 must be 64 hexadecimal digits"),
    ("sha256-not-hex",
     f"version: 1\napproved:\n  - path: a\n    sha256: {'g' * 64}\n    reason: r\n",
     4, 13, "sha256 must be 64 hexadecimal digits"),
    ("approval-missing-reason", f"version: 1\napproved:\n  - path: a\n    sha256: {SHA_A}\n",
     3, 5, "an approval needs 'reason'"),
    ("approval-empty-reason",
     f"version: 1\napproved:\n  - path: a\n    sha256: {SHA_A}\n    reason: ' '\n",
     5, 13, "reason must say why the file is approved"),
    ("approval-missing-sha256", "version: 1\napproved:\n  - path: a\n    reason: r\n",
     3, 5, "an approval needs 'sha256'"),
    ("approval-bad-expiry",
     f"version: 1\napproved:\n  - path: a\n    sha256: {SHA_A}\n    reason: r\n"
     "    expires: 31.12.2027\n",
     6, 14, "expires must be a date written YYYY-MM-DD"),
    ("rule-without-paths", "version: 1\nrules:\n  - allow: {os: [a]}\n",
     3, 5, "a rule needs 'paths'"),
    ("rule-with-no-path", "version: 1\nrules:\n  - paths: []\n",
     3, 12, "a rule needs at least one path"),
    ("rules-as-mapping", "version: 1\nrules:\n  paths: [a]\n",
     3, 3, "rules must be a list"),
    ("bad-choice", "version: 1\nunknown_formats: maybe\n",
     2, 18, "unknown_formats must be one of: fail, allow"),
    ("lfs-choice-bool", "version: 1\nlfs_pointers: no\n",
     2, 15, "lfs_pointers must be a string; quote it"),
]


@pytest.mark.parametrize("text,line,column,message",
                         [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_policy_error_position(tmp_path: Path, text: str, line: int, column: int,
                               message: str) -> None:
    path = write(tmp_path, "policy.yaml", text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert (info.value.path, info.value.line, info.value.column) == (str(path), line, column)
    assert str(info.value).startswith(f"{path}:{line}:{column}: ")
    assert message in info.value.message


@pytest.mark.parametrize("text,line,column,message", [
    ("version: 1\nalow:\n  os: [getcwd]\n", 2, 1,
     "unknown key 'alow' in the policy; did you mean 'allow'? expected one of: version, "),
    ("version: 1\nallow:\n  os:\n    - {name: a, expire: 2027-01-01}\n", 4, 17,
     "unknown key 'expire' in an entry of allow.os; did you mean 'expires'?"),
    ("version: 1\nrules:\n  - path: [a]\n", 3, 5,
     "unknown key 'path' in a rule; did you mean 'paths'?"),
    (f"version: 1\napproved:\n  - path: a\n    sha: {SHA_A}\n    reason: r\n", 4, 5,
     "unknown key 'sha' in an approval; did you mean 'sha256'?"),
    ("version: 1\nextends: [pytorch]\n", 2, 11,
     "unknown preset 'pytorch'; did you mean 'torch'?"),
    ("version: 1\nzzz: 1\n", 2, 1, "unknown key 'zzz' in the policy; expected one of"),
], ids=["top", "entry", "rule", "approval", "preset", "no-close-match"])
def test_unknown_keys_suggest_the_closest_allowed_key(tmp_path: Path, text: str, line: int,
                                                       column: int, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        load(tmp_path, text)
    assert any((e.line, e.column) == (line, column) and e.message.startswith(message)
               for e in info.value.errors)


def test_every_error_is_reported_in_one_run(tmp_path: Path) -> None:
    text = ("version: '1'\n"                                   # 1
            "alow:\n  os: [getcwd]\n"                         # 2-3
            "allow:\n"                                         # 4
            "  os: getcwd\n"                                   # 5
            "  collections: [OrderedDict, 5]\n"                # 6
            "  bad module: [x]\n"                              # 7
            "  fine: [ok]\n"                                   # 8
            "  fine: [again]\n"                                # 9
            "unknown_formats: maybe\n"                         # 10
            "approved:\n  - {path: a, sha256: abc, reason: r}\n"   # 11-12
            "  - {path: b}\n")                                 # 13
    path = write(tmp_path, "policy.yaml", text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    got = [(e.line, e.column, e.message.split(";")[0]) for e in info.value.errors]
    assert got == [
        (1, 10, "version must be an unquoted integer: write 'version: 1', without quotes "
                "(it is the string '1' here)"),
        (2, 1, "unknown key 'alow' in the policy"),
        (5, 7, 'allow.os must be a list of names or "*"'),
        (6, 30, "a name in allow.collections must be a string"),
        (7, 3, "'bad module' is not a module name"),
        (9, 3, "duplicate key 'fine' in allow (first on line 8)"),
        (10, 18, "unknown_formats must be one of: fail, allow"),
        (12, 23, "sha256 must be 64 hexadecimal digits (the output of sha256sum on the file)"),
        (13, 5, "an approval needs 'sha256' and 'reason'"),
    ]
    assert str(info.value).splitlines() == [f"{path}:{e.line}:{e.column}: {e.message}"
                                            for e in info.value.errors]


def test_errors_across_extended_files_are_reported_together(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "version: 1\nallow:\n  os: [a]\n  bogus key: [b]\n")
    top = write(tmp_path, "top.yaml", "version: 1\nextends: [base.yaml, nope]\ndeny: []\n")
    with pytest.raises(PolicyError) as info:
        load_policy(top)
    assert [(e.path, e.line, e.column) for e in info.value.errors] == [
        (str(top), 2, 22), (str(top), 3, 7), (str(base), 4, 3)]


def test_duplicate_keys_are_errors_although_pyyaml_overwrites(tmp_path: Path) -> None:
    text = "version: 1\nallow:\n  os: [getcwd]\n  os: [getpid]\n"
    assert yaml.safe_load(text) == {"version": 1, "allow": {"os": ["getpid"]}}  # silently
    with pytest.raises(PolicyError, match=r":4:3: duplicate key 'os'"):
        load(tmp_path, text)


def test_extends_cycle_between_two_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "version: 1\nextends: [b.yaml]\n")
    b = write(tmp_path, "b.yaml", "version: 1\nextends:\n  - a.yaml\n")
    with pytest.raises(PolicyError) as info:
        load_policy(a)
    assert str(info.value) == f"{b}:3:5: extends cycle: a.yaml is already being loaded"


def test_extends_self_cycle(tmp_path: Path) -> None:
    a = write(tmp_path, "self.yaml", "version: 1\nextends: [self.yaml]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(a)
    assert str(info.value) == f"{a}:2:11: extends cycle: self.yaml is already being loaded"


def test_error_inside_extended_file_names_that_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "version: 1\nallow:\n  os: [a]\n  bogus key: [b]\n")
    top = write(tmp_path, "top.yaml", "version: 1\nextends: [base.yaml]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(top)
    assert str(info.value).startswith(f"{base}:4:3: 'bogus key' is not a module name")


def test_unreadable_policy_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert str(info.value).startswith(f"{missing}: cannot read policy")
    assert info.value.line is None


def test_extends_diamond_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "d.yaml", "version: 1\nallow:\n  collections: [OrderedDict]\n")
    write(tmp_path, "b.yaml", "version: 1\nextends: [d.yaml]\n")
    write(tmp_path, "c.yaml", "version: 1\nextends: [d.yaml]\n")
    policy = load_policy(write(tmp_path, "a.yaml", "version: 1\nextends: [b.yaml, c.yaml]\n"))
    assert policy.decide("collections", "OrderedDict", today=TODAY).verdict is Verdict.ALLOWED
    assert [Path(f).name for f in policy.files] == ["a.yaml", "b.yaml", "d.yaml", "c.yaml",
                                                     "d.yaml"]


# ---------------------------------------------------------------------------------------------
# Matching

MATCHING = """\
version: 1
allow:
  collections: [OrderedDict]
  mylib: "*"
  proto4: ["base.os.system"]
  pkg.*: "*"
  exact.sub: [Thing, "*"]
deny:
  mylib: [dangerous]
"""

# (module, name, verdict)
MATCH_TABLE = [
    ("collections", "OrderedDict", Verdict.ALLOWED),
    ("collections", "defaultdict", Verdict.NOT_ALLOWED),      # exact names only
    ("collections", "OrderedDict.fromkeys", Verdict.NOT_ALLOWED),
    ("collection", "OrderedDict", Verdict.NOT_ALLOWED),
    ("mylib", "anything", Verdict.ALLOWED),                   # "*": undotted names
    ("mylib", "base.os.system", Verdict.NOT_ALLOWED),         # "*" never matches dotted names
    ("mylib", "dangerous", Verdict.DENIED),                   # deny beats "*"
    ("mylib.sub", "anything", Verdict.NOT_ALLOWED),           # "*" is one module, not a tree
    ("proto4", "base.os.system", Verdict.ALLOWED),            # a dotted name listed exactly
    ("proto4", "base", Verdict.NOT_ALLOWED),
    ("proto4", "base.os", Verdict.NOT_ALLOWED),
    ("pkg", "x", Verdict.ALLOWED),                            # "pkg.*" covers pkg itself
    ("pkg.sub", "x", Verdict.ALLOWED),                        # ... and submodules
    ("pkg.sub.deeper", "x", Verdict.ALLOWED),
    ("pkgx", "x", Verdict.NOT_ALLOWED),                       # ... but not pkgx
    ("pkgx.sub", "x", Verdict.NOT_ALLOWED),
    ("pkg.sub", "a.b", Verdict.NOT_ALLOWED),                  # still undotted names only
    ("exact.sub", "Thing", Verdict.ALLOWED),                  # "*" inside a list
    ("exact.sub", "Other", Verdict.ALLOWED),
    ("exact", "Thing", Verdict.NOT_ALLOWED),
    ("os", "system", Verdict.NOT_ALLOWED),
]


@pytest.mark.parametrize("module,name,verdict", MATCH_TABLE,
                         ids=[f"{m}.{n}" for m, n, _ in MATCH_TABLE])
def test_matching(tmp_path: Path, module: str, name: str, verdict: Verdict) -> None:
    policy = load(tmp_path, MATCHING)
    assert policy.decide(module, name, today=TODAY).verdict is verdict


def test_decision_names_the_entry_and_its_origin(tmp_path: Path) -> None:
    policy = load(tmp_path, MATCHING)
    allowed = policy.decide("collections", "OrderedDict", today=TODAY)
    assert allowed.entry is not None and allowed.entry.pattern == "collections"
    assert (allowed.entry.origin.line, allowed.entry.origin.column) == (3, 3)
    denied = policy.decide("mylib", "dangerous", today=TODAY)
    assert denied.entry is not None and str(denied.entry.origin).endswith("policy.yaml:9:3")
    subtree = policy.decide("pkg.sub", "x", today=TODAY).entry
    assert subtree is not None and subtree.pattern == "pkg.*"


DENY_TABLE = [
    # (allow, deny, module, name, verdict)
    ('os: [getcwd]', 'os: [getcwd]', "os", "getcwd", Verdict.DENIED),
    ('os: "*"', 'os: [system]', "os", "system", Verdict.DENIED),
    ('os: "*"', 'os: [system]', "os", "getcwd", Verdict.ALLOWED),
    ('os.*: "*"', 'os.path: "*"', "os.path", "join", Verdict.DENIED),
    ('os.*: "*"', 'os.path: "*"', "os", "getcwd", Verdict.ALLOWED),
    ('os: [getcwd]', 'os.*: "*"', "os", "getcwd", Verdict.DENIED),
    ('os: [getcwd]', 'os.*: "*"', "os.path", "join", Verdict.DENIED),
    # deny "*" is broad: dotted names too, even when an allow lists them exactly
    ('os: ["path.join"]', 'os: "*"', "os", "path.join", Verdict.DENIED),
    # a denied name covers what is reached through it
    ('os: ["system.__call__"]', 'os: [system]', "os", "system.__call__", Verdict.DENIED),
    ('os: ["systemx"]', 'os: [system]', "os", "systemx", Verdict.ALLOWED),
    ('builtins: [getattr]', 'builtins: "*"', "builtins", "getattr", Verdict.DENIED),
]


@pytest.mark.parametrize("allow,deny,module,name,verdict", DENY_TABLE)
def test_deny_beats_allow(tmp_path: Path, allow: str, deny: str, module: str, name: str,
                          verdict: Verdict) -> None:
    policy = load(tmp_path, f"version: 1\nallow:\n  {allow}\ndeny:\n  {deny}\n")
    assert policy.decide(module, name, today=TODAY).verdict is verdict


def test_deny_in_an_extended_file_beats_allow_in_the_extending_file(tmp_path: Path) -> None:
    write(tmp_path, "org.yaml", "version: 1\ndeny:\n  os: [system]\n")
    policy = load(tmp_path, "version: 1\nextends: [org.yaml]\nallow:\n  os: [system]\n")
    decision = policy.decide("os", "system", today=TODAY)
    assert decision.verdict is Verdict.DENIED
    assert decision.entry is not None and decision.entry.origin.path.endswith("org.yaml")


def test_deny_beats_allow_from_presets(tmp_path: Path) -> None:
    require_presets(*DEFAULT_PRESETS)
    preset_only = load(tmp_path, "version: 1\nextends: [builtins-safe, torch, numpy]\n",
                       name="presets.yaml")
    entry = next(e for e in preset_only.allow if e.names)
    module, name = entry.module, sorted(entry.names)[0]
    assert preset_only.decide(module, name, today=TODAY).verdict is Verdict.ALLOWED
    policy = load(tmp_path, "version: 1\nextends: [builtins-safe, torch, numpy]\n"
                            f"deny:\n  {module}: ['{name}']\n")
    assert policy.decide(module, name, today=TODAY).verdict is Verdict.DENIED


def test_presets_never_allow_os_system() -> None:
    require_presets(*DEFAULT_PRESETS)
    from picklegate.policy import default_policy

    policy = default_policy()
    for module, name in [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                         ("builtins", "exec"), ("subprocess", "Popen"), ("os", "getcwd")]:
        assert policy.decide(module, name, today=TODAY).verdict is not Verdict.ALLOWED


# ---------------------------------------------------------------------------------------------
# Expiry


EXPIRING = """\
version: 1
allow:
  os:
    - getpid
    - {name: getcwd, reason: temporary, expires: 2026-06-15}
  legacy.*:
    - {name: "*", reason: migration, expires: 2026-01-01}
"""


@pytest.mark.parametrize("module,name,today,verdict,expired_line", [
    ("os", "getcwd", dt.date(2026, 6, 14), Verdict.ALLOWED, None),
    ("os", "getcwd", dt.date(2026, 6, 15), Verdict.ALLOWED, None),     # the last valid day
    ("os", "getcwd", dt.date(2026, 6, 16), Verdict.NOT_ALLOWED, 5),
    ("os", "getpid", dt.date(2099, 1, 1), Verdict.ALLOWED, None),      # its own entry
    ("legacy.x", "Model", dt.date(2025, 12, 31), Verdict.ALLOWED, None),
    ("legacy.x", "Model", dt.date(2026, 1, 2), Verdict.NOT_ALLOWED, 7),
])
def test_expired_allow_entries_do_not_apply(tmp_path: Path, module: str, name: str,
                                            today: dt.date, verdict: Verdict,
                                            expired_line: int | None) -> None:
    decision = load(tmp_path, EXPIRING).decide(module, name, today=today)
    assert decision.verdict is verdict
    if expired_line is None:
        assert decision.expired == ()
    else:
        [entry] = decision.expired
        assert entry.origin.line == expired_line and entry.reason is not None


def test_entry_metadata_is_kept(tmp_path: Path) -> None:
    policy = load(tmp_path, EXPIRING)
    entry = policy.decide("os", "getcwd", today=TODAY).entry
    assert entry is not None
    assert (entry.reason, entry.expires) == ("temporary", dt.date(2026, 6, 15))


# ---------------------------------------------------------------------------------------------
# Path rules and globs

GLOBS = [
    ("models/**", "models/a.pkl", True),
    ("models/**", "models/x/y/a.pkl", True),
    ("models/**", "other/models/a.pkl", False),     # a slash anchors the pattern
    ("models/**", "modelsx/a.pkl", False),
    ("**/*.pkl", "a.pkl", True),
    ("**/*.pkl", "x/y/a.pkl", True),
    ("**/*.pkl", "x/a.pt", False),
    ("*.pkl", "a.pkl", True),
    ("*.pkl", "deep/er/a.pkl", True),               # no slash: the file name at any depth
    ("*.pkl", "a.pkl.gz", False),
    ("/top.pkl", "top.pkl", True),
    ("/top.pkl", "sub/top.pkl", False),              # a leading slash anchors to the root
    ("a/*/b.pkl", "a/x/b.pkl", True),
    ("a/*/b.pkl", "a/x/y/b.pkl", False),             # "*" stays within one segment
    ("a/*/b.pkl", "a/b.pkl", False),
    ("a/**/b.pkl", "a/b.pkl", True),
    ("a/**/b.pkl", "a/x/y/b.pkl", True),
    ("model?.pt", "dir/model1.pt", True),
    ("model?.pt", "dir/model12.pt", False),
    ("weights.pt", "weights.pt", True),
    ("weights.pt", "x/weights.pt", True),
    ("weights.pt", "x/weights.ptx", False),
    ("data/", "data/a.pkl", True),                   # a trailing slash: everything under it
    ("a.pkl", "a\\b\\a.pkl", True),                  # Windows separators are normalised
]


@pytest.mark.parametrize("pattern,path,expected", GLOBS,
                         ids=[f"{p} ~ {q}" for p, q, _ in GLOBS])
def test_glob_match(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected


RULES = """\
version: 1
allow:
  collections: [OrderedDict]
deny:
  os: [system]
rules:
  - paths: ["models/legacy/**", "*.sklearn.pkl"]
    reason: old pipelines
    allow:
      sklearn.pipeline: [Pipeline]
      os: [system, getcwd]
  - paths: ["/untrusted/**"]
    deny:
      collections: [OrderedDict]
"""


@pytest.mark.parametrize("path,module,name,verdict", [
    ("models/legacy/a.pkl", "sklearn.pipeline", "Pipeline", Verdict.ALLOWED),
    ("models/legacy/deep/a.pkl", "sklearn.pipeline", "Pipeline", Verdict.ALLOWED),
    ("x/y/model.sklearn.pkl", "sklearn.pipeline", "Pipeline", Verdict.ALLOWED),
    ("models/new/a.pkl", "sklearn.pipeline", "Pipeline", Verdict.NOT_ALLOWED),
    (None, "sklearn.pipeline", "Pipeline", Verdict.NOT_ALLOWED),       # outside the repository
    ("models/legacy/a.pkl", "os", "getcwd", Verdict.ALLOWED),
    ("models/legacy/a.pkl", "os", "system", Verdict.DENIED),           # top deny beats rule allow
    ("untrusted/a.pkl", "collections", "OrderedDict", Verdict.DENIED),  # rule deny beats allow
    ("x/untrusted/a.pkl", "collections", "OrderedDict", Verdict.ALLOWED),
    ("models/a.pkl", "collections", "OrderedDict", Verdict.ALLOWED),
])
def test_path_rules_apply_only_to_matching_paths(tmp_path: Path, path: str | None, module: str,
                                                 name: str, verdict: Verdict) -> None:
    policy = load(tmp_path, RULES)
    assert policy.decide(module, name, path, today=TODAY).verdict is verdict


# ---------------------------------------------------------------------------------------------
# Approvals


class _Getcwd:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.getcwd, ())


EVIL = pickle.dumps(_Getcwd(), protocol=2)      # GLOBAL posix getcwd; never loaded
EVIL_SHA = hashlib.sha256(EVIL).hexdigest()


def approvals(sha: str, expires: str = "2027-01-01", path: str = "models/a.pkl") -> str:
    return (f"version: 1\napproved:\n  - path: {path}\n    sha256: {sha}\n"
            f"    reason: reviewed in SEC-1\n    owner: sec@example.com\n    expires: {expires}\n")


def test_approval_for_matches_exact_paths(tmp_path: Path) -> None:
    policy = load(tmp_path, approvals(SHA_A.upper(), path="/models/a.pkl"))
    [approval] = policy.approval_for("models/a.pkl")
    assert approval.sha256 == SHA_A                       # normalised to lower case
    assert approval.owner == "sec@example.com" and approval.expires == dt.date(2027, 1, 1)
    assert policy.approval_for("models/b.pkl") == ()
    assert policy.approval_for("x/models/a.pkl") == ()
    assert policy.approval_for(None) == ()


def test_approval_origin_is_its_entry_not_its_digest(tmp_path: Path) -> None:
    """The position reported for an approval is where its entry starts ("- path:"), for both
    entries, not the line and column of its sha256 value."""
    text = approvals(SHA_A) + f"  - sha256: {EVIL_SHA}\n    path: models/b.pkl\n    reason: r\n"
    policy = load(tmp_path, text)
    first, second = policy.approved
    assert (first.origin.line, first.origin.column) == (3, 5)      # "  - path: models/a.pkl"
    assert (second.origin.line, second.origin.column) == (8, 5)    # "  - sha256: ..."
    assert str(first.origin).endswith("policy.yaml:3:5")


@pytest.mark.parametrize("sha,expires,path,status,note", [
    (EVIL_SHA, "2027-01-01", "models/a.pkl", Status.CLEAN, "approved by"),
    (SHA_A, "2027-01-01", "models/a.pkl", Status.VIOLATION, "does not apply: the file's sha256"),
    (EVIL_SHA, "2026-01-01", "models/a.pkl", Status.VIOLATION, "it expired on 2026-01-01"),
    (EVIL_SHA, "2027-01-01", "models/b.pkl", Status.VIOLATION, None),
])
def test_approval_by_path_and_sha256(tmp_path: Path, sha: str, expires: str, path: str,
                                     status: Status, note: str | None) -> None:
    policy = load(tmp_path, approvals(sha, expires))
    result = scan_bytes(EVIL, policy, path=path, options=ScanOptions(today=TODAY))
    assert result.status is status
    if status is Status.VIOLATION:
        assert [(f.kind, f.module, f.name) for f in result.findings] == \
            [(FindingKind.GADGET, os.getcwd.__module__, "getcwd")]      # posix.* is a gadget
    if note is None:
        assert result.inventory.notes == ()
    else:
        assert any(note in n for n in result.inventory.notes)


# ---------------------------------------------------------------------------------------------
# Settings and the shipped example


def test_settings_default_to_fail_closed(tmp_path: Path) -> None:
    policy = load(tmp_path, "version: 1\n")
    assert (policy.unknown_formats, policy.lfs_pointers) == ("fail", "fail")
    assert policy.decide("os", "getcwd", today=TODAY) == Decision(Verdict.NOT_ALLOWED)
    relaxed = load(tmp_path, "version: 1\nunknown_formats: allow\nlfs_pointers: warn\n",
                   name="relaxed.yaml")
    assert (relaxed.unknown_formats, relaxed.lfs_pointers) == ("allow", "warn")


def test_later_file_overrides_settings_of_extended_file(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "version: 1\nlfs_pointers: warn\n")
    policy = load(tmp_path, "version: 1\nextends: [base.yaml]\nlfs_pointers: fail\n")
    assert policy.lfs_pointers == "fail"


def test_policy_example_loads() -> None:
    require_presets("builtins-safe", "torch", "numpy")
    example = Path(__file__).resolve().parents[1] / "policy.example.yaml"
    policy = load_policy(example)
    assert policy.unknown_formats == "fail" and policy.lfs_pointers == "fail"
    assert policy.rules and not policy.approved      # an approval of a missing file would warn
    assert any(e.expires is not None and e.reason for e in policy.allow)
    assert any(e.subtree and e.star for e in policy.allow)
    assert policy.decide("os", "system", today=TODAY).verdict is Verdict.DENIED
    assert policy.decide("collections", "OrderedDict", today=TODAY).verdict is Verdict.ALLOWED
    assert policy.decide("sklearn.pipeline", "Pipeline", "models/legacy/x.pkl",
                         today=TODAY).verdict is Verdict.ALLOWED
    assert policy.decide("sklearn.pipeline", "Pipeline", "models/x.pkl",
                         today=TODAY).verdict is Verdict.NOT_ALLOWED
