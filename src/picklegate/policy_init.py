"""`picklegate policy init`: a starting policy from the model files a repository has now.

Every file is scanned with a policy that allows nothing, so its inventory holds every global it
imports. Then:

* ``extends`` gets the built-in presets that allow the most of those globals with the fewest
  presets (the rule is written into the output, so a reviewer can check it);
* ``allow`` lists every other global exactly, each with the files that import it;
* a known gadget (data/gadgets.yaml) is never allowed: it goes into a comment block with the
  files that carry it, as do globals that cannot be written as an exact entry and files with
  findings no allow entry can fix (malformed, unresolved, unknown format...).

Returns values and text; cli.py writes the file and picks the exit code.
"""
from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from picklegate.findings import FileResult, FindingKind, Status
from picklegate.policyfile import encodable
from picklegate.policyfile import yaml_string as _scalar
from picklegate.policy import Policy, Verdict, is_exact_name, is_module_name, load_presets
from picklegate.report.text import safe
from picklegate.review import Gadget, gadgets_named
from picklegate.scan import scan_sources
from picklegate.sources import Source

# Scanning with this policy turns every import into a finding and leaves every inventory full.
ALLOW_NOTHING = Policy(source="allow-nothing (policy init)")
# An exhaustive search over preset subsets is 2**n decisions; beyond this many presets that
# allow something, a greedy choice is used instead (today there are four presets).
EXHAUSTIVE_UP_TO = 12
# How many files a comment names before it says how many more.
FILES_SHOWN = 4

Global = tuple[str, str]        # (module, name) as CPython's find_class imports it


@dataclass(frozen=True)
class Usage:
    """One global and the files that import it (sorted, repository-relative when known)."""

    module: str
    name: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class Flagged:
    """A global that is never written into ``allow``, and why."""

    usage: Usage
    why: str


@dataclass(frozen=True)
class Plan:
    files: int                              # model files scanned
    presets: tuple[tuple[str, tuple[str, ...]], ...]   # preset, files whose imports it allows
    allow: tuple[Usage, ...]
    gadgets: tuple[Flagged, ...]
    unwritable: tuple[Flagged, ...]
    failing: tuple[tuple[str, str], ...]    # (file, a finding no allow entry can fix)
    unreadable: tuple[tuple[str, str], ...]  # (file, why)

    @property
    def needs_review(self) -> bool:
        return bool(self.gadgets or self.unwritable or self.failing)


def inventory(sources: Iterable[Source]) -> list[FileResult]:
    """Every file scanned with the allow-nothing policy."""
    return list(scan_sources(sources, ALLOW_NOTHING).files)


def plan(results: Sequence[FileResult], gadgets: list[Gadget],
         presets: Mapping[str, Policy]) -> Plan:
    users = _users(results)
    flagged = {g: gadgets_named(g[0], g[1], gadgets) for g in users}
    gadget_globals = {g for g, found in flagged.items() if found}
    wanted = {g for g in users if g not in gadget_globals and _writable(*g)}
    chosen = choose_presets(wanted, presets)
    covered = {g for g in wanted if any(_allows(presets[p], g) for p in chosen)}
    return Plan(
        files=len(results),
        presets=tuple((p, _files_of(users, {g for g in wanted if _allows(presets[p], g)}))
                      for p in chosen),
        allow=tuple(_usage(users, g) for g in sorted(wanted - covered)),
        gadgets=tuple(Flagged(_usage(users, g), "; ".join(dict.fromkeys(x.why for x in
                                                                        flagged[g])))
                      for g in sorted(gadget_globals)),
        unwritable=tuple(Flagged(_usage(users, g), "cannot be written as one exact entry")
                         for g in sorted(set(users) - wanted - gadget_globals)),
        failing=tuple(_failing(results)),
        unreadable=tuple((r.location, r.error or "") for r in results
                         if r.status is Status.ERROR))


def _users(results: Sequence[FileResult]) -> dict[Global, set[str]]:
    users: dict[Global, set[str]] = {}
    for result in results:
        for ref in result.inventory.imports:
            users.setdefault((ref.module, ref.name), set()).add(result.location)
    return users


def _usage(users: Mapping[Global, set[str]], g: Global) -> Usage:
    return Usage(g[0], g[1], tuple(sorted(users[g])))


def _files_of(users: Mapping[Global, set[str]], globals_: set[Global]) -> tuple[str, ...]:
    return tuple(sorted({f for g in globals_ for f in users[g]}))


def _writable(module: str, name: str) -> bool:
    """An exact entry can say it: a plain module (never "pkg.*"), a name that is not "*",
    and text a YAML file holds as itself."""
    return (is_module_name(module) and is_exact_name(name) and name.isprintable()
            and encodable(module + name))


def _allows(policy: Policy, g: Global) -> bool:
    return policy.decide(g[0], g[1]).verdict is Verdict.ALLOWED


def _failing(results: Sequence[FileResult]) -> list[tuple[str, str]]:
    """Findings that are not about which globals are allowed: no allow entry fixes them.
    (Gadgets are about a global too: they have their own block and are never allowed.)"""
    fixable = (FindingKind.NOT_ALLOWED, FindingKind.DENIED, FindingKind.GADGET)
    return [(r.location, f"{f.kind.value}: {f.message}") for r in results
            for f in r.findings if f.kind not in fixable and not f.warning]


def choose_presets(wanted: set[Global], presets: Mapping[str, Policy]) -> tuple[str, ...]:
    """The smallest set of presets that allows the most of ``wanted``; between sets that
    allow as many with as few presets, the first in name order."""
    covers = {name: frozenset(g for g in wanted if _allows(policy, g))
              for name, policy in sorted(presets.items())}
    useful = [name for name, covered in covers.items() if covered]
    if len(useful) > EXHAUSTIVE_UP_TO:
        return _greedy(covers, useful)
    best: tuple[str, ...] = ()
    best_count = 0
    for size in range(1, len(useful) + 1):
        for combo in itertools.combinations(useful, size):
            count = len(frozenset().union(*(covers[n] for n in combo)))
            if count > best_count:      # strictly more: a smaller or earlier set wins ties
                best, best_count = combo, count
    return best


def _greedy(covers: Mapping[str, frozenset[Global]], useful: list[str]) -> tuple[str, ...]:
    """Add the preset that allows the most of what is still uncovered (the first by name on
    a tie) until none adds anything."""
    chosen: list[str] = []
    done: frozenset[Global] = frozenset()
    while True:
        best, gain = "", 0
        for name in useful:                 # sorted; strictly more keeps the first on a tie
            if name not in chosen and len(covers[name] - done) > gain:
                best, gain = name, len(covers[name] - done)
        if not gain:
            return tuple(sorted(chosen))
        chosen.append(best)
        done |= covers[best]


def preset_policies(names: Iterable[str]) -> dict[str, Policy]:
    return {name: load_presets([name], f"preset {name}") for name in names}


# ---------------------------------------------------------------------------------------------
# Rendering


HEADER = """\
# picklegate policy: which Python globals the pickles in this repository may import.
# Written by `picklegate policy init` on {today} from the {files} model file(s) found then.
# Review it before you commit it: every entry is something a model file may import (and so
# run) when someone loads it. Protect this file with CODEOWNERS.
#
# How it was made: every file was scanned with a policy that allows nothing, which collects
# every global each file imports. Then
#   * extends: of the built-in presets (reviewed lists shipped with picklegate; see
#     `picklegate policy example`), the smallest set that allows the most of those globals.
#     Between two sets that allow as many, the one with fewer presets wins, then the first
#     by name. A preset allows more than these files use.
#   * allow: every other global, exactly, with the files that import it.
#   * known code-execution gadgets are never allowed here, whatever a file imports; they are
#     listed at the end, with the files that carry them.
"""


def render(p: Plan, today: dt.date) -> str:
    lines = HEADER.format(today=today.isoformat(), files=p.files).splitlines()
    lines += ["", "version: 1", ""]
    lines += _extends(p)
    lines += [""] + _allow(p)
    for block in (_gadget_block(p), _unwritable_block(p), _failing_block(p),
                  _unreadable_block(p)):
        if block:
            lines += [""] + block
    return "\n".join(lines) + "\n"


def _extends(p: Plan) -> list[str]:
    if not p.presets:
        return ["extends: []                      # no built-in preset allows any of them"]
    return ["extends:"] + [f"  - {name}  # used by {_files(files)}" for name, files in p.presets]


def _allow(p: Plan) -> list[str]:
    if not p.allow:
        return ["allow: {}                        # nothing beyond the presets"]
    lines = ["allow:"]
    for module, usages in itertools.groupby(p.allow, key=lambda u: u.module):
        lines.append(f"  {_scalar(module)}:")
        lines += [f"    - {_scalar(u.name)}  # {_files(u.files)}" for u in usages]
    return lines


def _gadget_block(p: Plan) -> list[str]:
    if not p.gadgets:
        return []
    return [
        "# KNOWN GADGETS: NOT ALLOWED, and never to be added to allow above. These files import",
        "# globals that can run code, open files or import modules when they are loaded. Find",
        "# out why. Replace the file (safetensors, or a format without pickles) or, only after",
        "# review, approve that one file by its hash: `picklegate approve FILE --reason ...",
        "# --owner ...`. Until then they fail the scan.",
    ] + [f"#   {_comment(f.usage.module)}.{_comment(f.usage.name)}: {_comment(f.why)}"
         f"\n#       in {_files(f.usage.files)}" for f in p.gadgets]


def _unwritable_block(p: Plan) -> list[str]:
    if not p.unwritable:
        return []
    return ["# NOT ALLOWED: globals no exact allow entry can name (a wildcard, or a name no",
            "# Python module could have); review these files, and approve them one by one:",
            ] + [f"#   {_comment(f.usage.module)}.{_comment(f.usage.name)} in "
                 f"{_files(f.usage.files)}" for f in p.unwritable]


def _failing_block(p: Plan) -> list[str]:
    if not p.failing:
        return []
    return ["# STILL FAILING: findings no allow entry can fix (review or replace these files):",
            ] + [f"#   {_comment(path)}: {_comment(why)}" for path, why in p.failing]


def _unreadable_block(p: Plan) -> list[str]:
    if not p.unreadable:
        return []
    return ["# NOT READ: these files could not be read, so nothing they import is listed:",
            ] + [f"#   {_comment(path)}: {_comment(why)}" for path, why in p.unreadable]


def _files(files: Sequence[str]) -> str:
    shown = ", ".join(_comment(f) for f in files[:FILES_SHOWN])
    more = len(files) - FILES_SHOWN
    return shown + (f" and {more} more file(s)" if more > 0 else "")


def _comment(text: str) -> str:
    """Text from a scanned file on one comment line (control characters escaped)."""
    return safe(text, limit=200)

