"""One exception hierarchy; cli.py turns each into exit code 2 (the only place that does)."""
from __future__ import annotations


class PicklegateError(Exception):
    """Base of every error picklegate raises on purpose."""


class UsageError(PicklegateError):
    """The command line asks for something impossible."""


class SourceError(PicklegateError):
    """A file, directory or git object could not be read at all."""


class PolicyError(PicklegateError):
    """A policy file is invalid; carries the position a reviewer should look at."""

    def __init__(self, path: str, line: int | None, column: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"
