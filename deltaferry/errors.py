"""One error root; subclasses say what the caller should do.

- ``ConfigError``: the user must fix configuration or input (CLI exit 2).
- ``TransientError``: worth retrying (network, throttling, 5xx).
- ``TerminalError``: retrying cannot help (conflict, contract, credentials).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class DeltaferryError(Exception):
    """Root of every error deltaferry raises on purpose. ``run_summary``: when the error
    ended a sync run, what the run did before it (``RunSummary.as_dict``: the tables it
    published or stopped), which ``deltaferry run`` prints before the error line; else None."""

    exit_code = 1
    run_summary: dict[str, Any] | None = None


class ConfigError(DeltaferryError):
    """Bad or missing configuration, unknown job/table, unreachable lake."""

    exit_code = 2


class TransientError(DeltaferryError):
    """A failure that may go away if the same step is tried again."""


class TerminalError(DeltaferryError):
    """A failure that will not go away by retrying."""


class TableReadError(TerminalError):
    """One table's source data cannot be read as it is: a value its column's published type
    cannot carry, text that is not valid UTF-8, a column whose values come in several
    types. Retrying cannot help until the source (or the table's settings) change; the
    job's other tables can go on (``deltaferry/extract.py``). ``table`` is the table's name
    as the jobs file has it."""

    # what the failed attempt committed for the job's other tables, for the extract's next
    # pass ({"rows": {table: n}, "notes": {table: [line]}}: a scanner's first-load copies,
    # which that pass finds staged and does not read again); None when nothing
    carried: dict[str, dict[str, Any]] | None = None

    def __init__(self, message: str, table: str) -> None:
        super().__init__(message)
        self.table = table

    def __reduce__(self) -> tuple[type, tuple[str, str], dict[str, Any]]:
        # pickled whole (a process pool), ``run_summary`` included
        return type(self), (str(self), self.table), self.__dict__


class ConflictError(TerminalError):
    """Another writer holds this table: a different manifest exists at our batch number."""


class ContractViolation(TerminalError):
    """A batch failed its contract beyond the job's quarantine threshold."""


class DowngradeRefused(ContractViolation):
    """Migrating a batch's rows down to the negotiated contract version was refused
    (``contracts.MigrationError``): the source has rows that version cannot represent.
    ``start`` and ``target`` are the versions; ``reason`` the migration's message.
    ``plan.plan_negotiated`` publishes the batch at a higher version instead."""

    def __init__(self, message: str, start: int, target: int, reason: str) -> None:
        super().__init__(message)
        self.start, self.target, self.reason = start, target, reason


class SchemaDrift(ContractViolation):
    """The source's columns drifted from the contract and the job's drift policy is freeze."""


class LakeMismatchError(TerminalError):
    """The lake's chain for a table does not end where this producer's checkpoint says
    (a mistyped lake URL, a lost newest manifest, another writer): nothing is published."""


class VerificationError(TerminalError):
    """The lake does not match what its manifests promise."""


class JobBusyError(TerminalError):
    """Another local process is already running this job."""


class StateBusyError(DeltaferryError):
    """Another process held the job's state file longer than an open waits for it (DuckDB
    lets one process at a time have a file open for writing, and none other meanwhile)."""


def find_cause(exc: BaseException, match: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in ``exc``'s cause/context chain that matches (dlt wraps errors)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if match(e):
            return e
        stack.extend([e.__cause__, e.__context__, getattr(e, "exception", None)])
    return None
