"""The values every stage produces: imports seen, findings, per-file and whole-scan results.

Results are immutable; reporters turn them into text, JSON or SARIF and nothing else formats them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FindingKind(str, Enum):
    """The stable rule codes, documented in docs/finding-kinds.md (a test keeps that document,
    this enum and the SARIF rules in step)."""

    GADGET = "gadget"                    # a known code-execution gadget (data/gadgets.yaml)
    NOT_ALLOWED = "not-allowed"          # an import the policy does not allow: a policy gap
    DENIED = "denied"                    # an import a deny entry names
    UNRESOLVED = "unresolved"            # an import whose target is unprovable (STACK_GLOBAL, EXT*)
    MALFORMED = "malformed"              # bytes the analyser could not fully understand
    LIMIT = "limit-exceeded"             # a configured bound was hit; the rest is unanalysed
    UNKNOWN_FORMAT = "unknown-format"    # content matches no format picklegate knows
    LFS_POINTER = "lfs-pointer"          # a Git LFS pointer: the real content is not here
    ARCHIVE = "archive-anomaly"          # an archive trick: mismatched headers, bad CRC, odd names
    UNSUPPORTED = "unsupported"          # a known format this install cannot open (missing extra)
    BUILD_ABUSE = "build-abuse"          # BUILD changes a global itself, or sets a __dunder__ name


class Severity(str, Enum):
    """Triage tiers, highest first: what a reviewer looks at first."""

    CRITICAL = "critical"   # a known attack: do not load the file
    HIGH = "high"           # unproven or unreviewed: may run code when loaded
    MEDIUM = "medium"       # unscanned content: the verdict is missing, not negative


# Highest first within the same tier too: the order in which triage lists kinds. GitHub maps a
# rule's security-severity to these labels (>= 9.0 critical, >= 7.0 high, >= 4.0 medium).
SEVERITY: dict[FindingKind, Severity] = {
    FindingKind.GADGET: Severity.CRITICAL,
    FindingKind.DENIED: Severity.CRITICAL,
    FindingKind.BUILD_ABUSE: Severity.CRITICAL,
    FindingKind.UNRESOLVED: Severity.HIGH,
    FindingKind.NOT_ALLOWED: Severity.HIGH,
    FindingKind.ARCHIVE: Severity.HIGH,
    FindingKind.MALFORMED: Severity.HIGH,
    FindingKind.LIMIT: Severity.HIGH,
    FindingKind.UNKNOWN_FORMAT: Severity.MEDIUM,
    FindingKind.UNSUPPORTED: Severity.MEDIUM,
    FindingKind.LFS_POINTER: Severity.MEDIUM,
}
TRIAGE_ORDER: dict[FindingKind, int] = {kind: i for i, kind in enumerate(SEVERITY)}


class Status(str, Enum):
    CLEAN = "clean"
    VIOLATION = "violation"
    ERROR = "error"


@dataclass(frozen=True)
class GlobalRef:
    """One import the unpickler would perform (find_class), as CPython would resolve it."""

    module: str
    name: str
    offset: int                 # byte offset of the opcode inside its member (or file)
    opcode: str                 # GLOBAL, INST, STACK_GLOBAL
    member: str | None = None
    # The name as written in the stream when Python 2 name mapping (_compat_pickle) changed it.
    written_as: str | None = None
    # How many times this stream imported it (same opcode and spelling); the offset is the
    # first one's. A name imported 10M times is one record, not 10M.
    count: int = 1

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    message: str
    module: str | None = None
    name: str | None = None
    member: str | None = None
    offset: int | None = None
    # How many times the same finding occurred (the first occurrence's offset is kept).
    count: int = 1
    # Warnings are reported but do not fail the file (only when the policy asks for it).
    warning: bool = False

    @property
    def key(self) -> tuple[str, str | None, str | None, str | None, str]:
        """Identity used to merge repeats of one import; message differs per position."""
        if self.module is not None or self.name is not None:
            return (self.kind.value, self.member, self.module, self.name, "")
        return (self.kind.value, self.member, None, None, self.message)

    @property
    def sort_key(self) -> tuple[str, int, str, str]:
        return (self.member or "", self.offset if self.offset is not None else -1,
                self.kind.value, self.message)


@dataclass(frozen=True)
class Inventory:
    """What a file contains, independent of the policy: formats, imports, noteworthy members."""

    imports: tuple[GlobalRef, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileResult:
    path: str
    format: str
    status: Status
    findings: tuple[Finding, ...] = ()
    inventory: Inventory = field(default_factory=Inventory)
    error: str | None = None
    # Repository-relative, forward slashes: what SARIF and path rules use (None outside a repo).
    relpath: str | None = None

    @property
    def location(self) -> str:
        return self.relpath or self.path


@dataclass(frozen=True)
class ScanResult:
    files: tuple[FileResult, ...]
    policy: str                 # where the policy came from: ".picklegate.yaml", "built-in default"

    def count(self, status: Status) -> int:
        return sum(1 for f in self.files if f.status is status)
