"""One exception hierarchy; cli.py turns each into exit code 2 (the only place that does)."""
from __future__ import annotations


class PicklegateError(Exception):
    """Base of every error picklegate raises on purpose."""


class UsageError(PicklegateError):
    """The command line asks for something impossible."""


class SourceError(PicklegateError):
    """A file, directory or git object could not be read at all."""


class PolicyError(PicklegateError):
    """A policy file is invalid; carries the position a reviewer should look at.

    Validation collects every problem of a policy before it gives up, so one PolicyError may
    carry several: ``errors`` lists them all (itself first when there is only one), and the
    error's own path, line, column and message are those of the first."""

    def __init__(self, path: str, line: int | None, column: int | None, message: str,
                 others: tuple[PolicyError, ...] = ()) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.message = message
        self.errors: tuple[PolicyError, ...] = (self, *others)
        super().__init__(str(self))

    @classmethod
    def collected(cls, errors: list[PolicyError]) -> PolicyError:
        """One error carrying ``errors`` (at least one), the first one's position up front."""
        first, *rest = errors
        return cls(first.path, first.line, first.column, first.message, tuple(rest))

    def location(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def lines(self) -> list[str]:
        """Each problem as ``file:line:col: message``, in the order a reviewer reads them."""
        return [f"{e.location()}: {e.message}" for e in self.errors]

    def __str__(self) -> str:
        return "\n".join(self.lines())
