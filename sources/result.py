"""What one extraction did (``ExtractResult``): a module of its own, light (no dlt), so a
change check that finds nothing to read (``sources/quiet.py``) can answer with one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExtractResult:
    load_ids: list[str]
    rows_by_table: dict[str, int]
    tombstones_by_table: dict[str, int]
    # per table, inputs set aside whole (a malformed file), as one-line reasons
    skipped: dict[str, list[str]] | None = None
    # requests the source's client retried on its own (HTTP 429/5xx), as one-line reasons
    retried: list[str] | None = None
    # per table, rows held back before staging (a NULL key, a NULL cursor under
    # null_cursor = "quarantine"): quarantine records {pk, field, check, reason, row_json}
    held: dict[str, list[dict[str, Any]]] | None = None
    # per table, how many source rows those records stand for (rows whose key is all NULL
    # share one record); None: one row a record
    held_rows: dict[str, int] | None = None
    # per table, keys read more than once in one extraction and how they were resolved,
    # as one-line notes naming job, table and keys (the flow logs them as warnings)
    duplicates: dict[str, list[str]] | None = None
    # per table, the columns the source has now (when the source knows them): a staged
    # contract column missing here and NULL on every new row was dropped (contracts/drift.py)
    columns: dict[str, list[str]] | None = None
    # per table, what the source could not do after its load and what follows from it (the
    # files source's staged file times not raised), one line each: shown as warnings and
    # written to the operations log
    warnings: dict[str, list[str]] | None = None
    # per table, decisions the source made about how to read it, as one-line notes (a first
    # load by DuckDB's postgres scanner, or why not): written to the operations log
    notes: dict[str, list[str]] | None = None
    # tables whose every source row was read this run (no cursor, or nothing staged yet), so
    # every row without a key was held again: an open record of one not held is resolved
    read_whole: list[str] | None = None
    # tables with a cursor whose rows held for a NULL key since the time given (ISO 8601,
    # UTC) were all read again this run at their cursor values: an open record of such rows
    # opened since then and not held this run is resolved (each has a key now, or is gone)
    unkeyed_since: dict[str, str] | None = None
    # per table, naive times that named a wall time the job's zone shows twice or never,
    # read by sources/wall_time.py's rule: one line per column and kind (warned and logged)
    wall_times: dict[str, list[str]] | None = None
    # tables refused after the run's loads were staged (reconcile over its delete ratio),
    # with the one-line reason: they plan nothing this run, the others are published
    stopped: dict[str, str] | None = None
    # per table, staged cursor values after now (a typo year): the window starts before
    # them and reads them again every run; one line each (warned, and logged as
    # ``future-cursor``)
    future_cursors: dict[str, list[str]] | None = None
    # per table, columns whose type has no exact published type of its own, published as
    # the database's text form by default: one line each, on the run that first stages the
    # column (warned, and logged as the decision it is)
    text_columns: dict[str, list[str]] | None = None
    # per table, the keys (JSON) of open records of rows held for a value their column
    # cannot carry that this run read again (by key, or with the whole table): a record
    # whose row was not held again is resolved (the value fits now and was staged, or the
    # row is gone)
    reread_unfit: dict[str, list[str]] | None = None
    # per table, rows read again by key this run for a reason of the source's (a cursor
    # value a stopped read refused), as one-line notes: the operations log's ``read-again``
    read_again: dict[str, list[str]] | None = None
