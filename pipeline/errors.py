"""Errors of the run store. Each str() names the run, file, chunk or field at fault.

The CLI maps them to exit codes; all are RunError, so a caller that only wants
"the run cannot be used as asked" catches that one.
"""

from __future__ import annotations

from typing import Any


class RunError(Exception):
    """A run directory that cannot be read or written as asked; the message says why."""


class ManifestError(RunError):
    """manifest.json is malformed: str() names the file and the field."""

    def __init__(self, path: Any, field: str, message: str):
        self.path, self.field = path, field
        super().__init__(f"{path}: field {field!r}: {message}")


class RunLockedError(RunError):
    """Another process holds the run's writer lock."""

    def __init__(self, path: Any, holder_pid: int | None):
        self.path, self.holder_pid = path, holder_pid
        who = f"process {holder_pid}" if holder_pid else "another process"
        super().__init__(f"{path}: {who} is writing this run; one writer at a time "
                         "(wait for it to finish, or stop it)")


class DamagedChunkError(RunError):
    """A Parquet chunk of the run that cannot be read as its family."""

    def __init__(self, path: Any, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: damaged chunk: {reason}")


class DiskFullError(RunError):
    """ENOSPC (or EDQUOT) while writing a file of the run or its findings."""

    def __init__(self, path: Any, detail: str = ""):
        self.path = path
        super().__init__(f"{path}: no space left on device{': ' + detail if detail else ''}")


class StaleFindingsError(RunError):
    """Stored findings were computed on an earlier state of the run."""


class DuplicateInputError(RunError):
    """An input file already imported into this run (same sha256)."""


class InvalidRowsError(RunError):
    """Rows the schema forbids; `.violations` lists (row, column, value, message) for each."""

    def __init__(self, family: str, violations: list):
        self.family, self.violations = family, violations
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"{family}: {first}{more}")
