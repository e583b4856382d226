"""`picklegate policy check`: what a reviewer must look at in a policy beyond its schema.

* allow entries (and wildcards) that admit a known code-execution gadget, from the curated
  list in data/gadgets.yaml: one problem per entry, listing every gadget it admits (a wildcard
  that admits thirty gadgets is one thing to fix, not thirty);
* allow entries and approvals that have expired (their own kind: expiry is routine upkeep, a
  gadget is a hole);
* approvals of files that no longer exist.

Returns values; cli.py prints them.
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Iterable

import yaml

from picklegate.policy import Entry, Origin, Policy


@dataclass(frozen=True)
class Gadget:
    module: str              # may end in ".*": the package and its submodules
    names: frozenset[str]    # empty = every name in the module
    why: str
    references: tuple[str, ...]

    @property
    def subtree(self) -> bool:
        return self.module.endswith(".*")

    @property
    def base(self) -> str:
        return self.module[:-2] if self.subtree else self.module


class ProblemKind(str, Enum):
    GADGET = "gadget"                    # an allow entry admits a known gadget
    EXPIRED = "expired"                  # an allow entry or approval is past its date
    STALE_APPROVAL = "stale-approval"    # an approval names a file that is not there


@dataclass(frozen=True)
class Problem:
    origin: Origin | None
    message: str
    kind: ProblemKind = ProblemKind.GADGET
    # Indented lines under the first: for a gadget problem, the gadgets and why each is one.
    details: tuple[str, ...] = ()

    def __str__(self) -> str:
        head = f"{self.kind.value}: {self.message}"
        head = f"{self.origin}: {head}" if self.origin else head
        return "\n".join([head, *(f"    {line}" for line in self.details)])


def load_gadgets() -> list[Gadget]:
    text = (resources.files("picklegate") / "data" / "gadgets.yaml").read_text("utf-8")
    gadgets = []
    for item in yaml.safe_load(text)["gadgets"]:
        names = item["names"]
        gadgets.append(Gadget(
            module=item["module"],
            names=frozenset() if names == "*" else frozenset(names),
            why=item["why"],
            references=tuple(item.get("references", ()))))
    return gadgets


@functools.lru_cache(maxsize=1)
def known_gadgets() -> tuple[Gadget, ...]:
    """The curated list, read once per process (the decision consults it for every import the
    policy does not allow); empty if this install lacks the data file."""
    try:
        return tuple(load_gadgets())
    except FileNotFoundError:
        return ()


def gadget_for(module: str, name: str, gadgets: Iterable[Gadget]) -> Gadget | None:
    """The gadget entry that names ``module.name``, if any."""
    for gadget in gadgets:
        in_module = module == gadget.base or (
            gadget.subtree and module.startswith(gadget.base + "."))
        # A dotted (protocol 4) name reaches attributes of its first part: posix.system.x
        # is as dangerous as posix.system.
        if in_module and (not gadget.names or name.split(".")[0] in gadget.names):
            return gadget
    return None


@functools.lru_cache(maxsize=4096)
def known_gadget(module: str, name: str) -> Gadget | None:
    """:func:`gadget_for` over the curated list, memoised: a file repeats its globals."""
    return gadget_for(module, name, known_gadgets())


def admitted(entry: Entry, gadget: Gadget) -> list[str]:
    """The gadget globals an allow entry admits ("module.name", or "module.*" for all)."""
    overlap = _overlap(entry, gadget)
    if overlap is None:
        return []
    if not gadget.names:
        if entry.star or entry.names:
            listed = sorted(entry.names) if not entry.star else ["*"]
            return [f"{overlap}.{name}" for name in listed]
        return []
    # A dotted (protocol 4) name reaches attributes of its first part, as in gadget_for:
    # allowing eval.__call__ allows eval.
    found = [f"{overlap}.{name}" for name in sorted(gadget.names)
             if entry.star and "." not in name]
    found += [f"{overlap}.{listed}" for listed in sorted(entry.names)
              if listed.split(".")[0] in gadget.names]
    return list(dict.fromkeys(found))


def _overlap(entry: Entry, gadget: Gadget) -> str | None:
    """A module both the entry and the gadget cover, if any."""
    if entry.covers_module(gadget.base):
        return gadget.base
    if gadget.subtree and (entry.module == gadget.base or
                           entry.module.startswith(gadget.base + ".")):
        return entry.module
    return None


def gadgets_named(module: str, name: str, gadgets: list[Gadget]) -> list[Gadget]:
    """The gadgets that the exact global ``module.name`` is (empty for a harmless one)."""
    exact = Entry(module, False, False, frozenset({name}), Origin("<global>", 0, 0))
    return [g for g in gadgets if admitted(exact, g)]


def review(policy: Policy, today: dt.date, root: Path,
           gadgets: list[Gadget] | None = None) -> list[Problem]:
    gadgets = load_gadgets() if gadgets is None else gadgets
    problems: list[Problem] = []
    for entry in _reviewable(policy):
        found = [(dotted, gadget) for gadget in gadgets for dotted in admitted(entry, gadget)
                 if not _denied(policy, dotted)]
        if found:
            problems.append(_gadget_problem(entry, found))
        if entry.expired(today):
            problems.append(Problem(entry.origin, f"allow entry {entry.pattern} expired on "
                                                  f"{entry.expires}; renew it with a new date "
                                                  "or remove it", ProblemKind.EXPIRED))
    for approval in policy.approved:
        if approval.expires is not None and today > approval.expires:
            problems.append(Problem(approval.origin, f"approval of {approval.path} expired on "
                                                     f"{approval.expires}; review the file again "
                                                     "and renew it (picklegate approve) or remove "
                                                     "it", ProblemKind.EXPIRED))
        if not (root / approval.path).is_file():
            problems.append(Problem(approval.origin, f"approval of {approval.path}: no such file "
                                                     f"under {root}; remove the approval",
                                    ProblemKind.STALE_APPROVAL))
    return sorted(problems, key=lambda p: (str(p.origin.path) if p.origin else "",
                                           p.origin.line if p.origin else 0))


def _denied(policy: Policy, dotted: str) -> bool:
    """Deny wins, so a gadget the policy also denies is not admitted."""
    module, _, name = dotted.rpartition(".")
    return any(d.denies(module, "__any__" if name == "*" else name) and (name != "*" or d.star)
               for d in policy.deny)


def _reviewable(policy: Policy) -> list[Entry]:
    """Allow entries written in policy files (built-in presets are reviewed by our tests)."""
    entries = list(policy.allow) + [e for rule in policy.rules for e in rule.allow]
    return [e for e in entries if not e.origin.path.startswith("<preset ")]


def _gadget_problem(entry: Entry, found: list[tuple[str, Gadget]]) -> Problem:
    """One problem for the entry: the gadgets it admits on the first line (the first few,
    then how many more), and each group of them with why it is a gadget underneath."""
    names = "*" if entry.star else ", ".join(sorted(entry.names))
    dotted = list(dict.fromkeys(d for d, _ in found))
    shown = ", ".join(dotted[:SHOWN]) + (f" and {len(dotted) - SHOWN} more"
                                         if len(dotted) > SHOWN else "")
    plural = "s" if len(dotted) > 1 else ""
    message = (f"allow entry {entry.pattern}: [{names}] admits {len(dotted)} known "
               f"code-execution gadget{plural}: {shown}. Remove it, or list only the exact "
               "harmless names")
    groups: dict[Gadget, list[str]] = {}
    for d, gadget in found:
        groups.setdefault(gadget, []).append(d)
    details = tuple(f"{', '.join(ds)}: {g.why}" + (f" (see {g.references[0]})"
                                                    if g.references else "")
                    for g, ds in groups.items())
    return Problem(entry.origin, message, ProblemKind.GADGET, details)


# How many gadget names the first line of a problem shows; the details list all of them.
SHOWN = 5
