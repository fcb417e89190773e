"""One SQL table's read: its dlt ``sql_table`` resource on the pyarrow backend with the map
steps every read goes through (``TableRead``), and running reads through dlt with their
failures as one deltaferry error (``run_reads``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dlt
import sqlalchemy as sa

from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import ConfigError, TableReadError, TerminalError, TransientError
from deltaferry.shutdown import raise_if_interrupt_within
from sources import names
from sources.change_detection import ChangedRows
from sources.integrity import KeyCheck
from sources.load import DEDUPLICATED, failed_pipe, find_cause, load_failure
from sources.pipeline import (
    abort_pending,
    drop_merge_staging,
    extracted_nothing,
    finish_stopped_loads,
    pipeline_naming,
    prune_loaded_packages,
    refit_staging,
)
from sources.sql_database.adapt import adapt_table
from sources.sql_database.connection import StallWatchdog, connect_error, scrub, transient_cause
from sources.sql_database.types import sql_table
from sources.sql_database.window import Normalize, null_cursor_hold, text_time_columns
from sources.staging import staged_types
from sources.variants import Variants
from sources.wall_time import ZoneShifts


class TableRead:
    """One table's dlt resource on the pyarrow backend and its map steps, in order: stall
    watchdog, value normalisation (``window.Normalize``), rows held back (NULL key; NULL
    cursor under ``null_cursor = "quarantine"``), key counting (``KeyCheck``), and the
    content filter (``changed``) that keeps only rows that differ from their staged version
    and tags them with their hash. ``query`` makes dlt's query adapter from the table's
    SQLite text columns (the window of a cursor read, or a key list); ``name`` renames the
    resource (it still loads into the table)."""

    def __init__(
        self,
        job: JobConfig,
        t: TableConfig,
        engine: sa.Engine,
        watchdog: StallWatchdog,
        changed: ChangedRows,
        query: Any = None,
        name: str | None = None,
        pipeline: dlt.Pipeline | None = None,
    ) -> None:
        self.t = t
        self.keys = KeyCheck(job, t)
        self.columns: list[str] = []
        # the columns of the table's staged table ({} before its first load)
        self.staged: dict[str, str] = {}
        # a value of a type its staged column does not hold: to dlt's variant column
        self.variants = None
        if pipeline is not None:
            if pipeline.default_schema_name:
                naming = pipeline.default_schema.naming
            else:
                naming = names.naming(pipeline_naming(pipeline))
            staged = staged_types(t, changed.path, changed.borrowed)
            self.variants = Variants(naming, job, t, staged)
            self.staged = staged
        self.changed = changed
        text_times = text_time_columns(engine, t)
        # naive times of a wall time the job's zone shows twice or never (sources/wall_time.py)
        self.shifts = ZoneShifts()
        self.normalize = Normalize(job, t, text_times, self.shifts)
        resource = sql_table(
            job,
            hold=self.keys.hold_records,
            credentials=engine,
            table=t.name,
            backend="pyarrow",
            chunk_size=job.chunk_size,
            write_disposition="merge",
            primary_key=list(t.primary_key),
            table_adapter_callback=adapt_table(job, t, text_times, self.columns, self.shifts),
            query_adapter_callback=query(text_times) if query is not None else None,
        )
        if name is not None:
            resource = resource.with_name(name)
            resource.apply_hints(table_name=t.name)
        resource.apply_hints(additional_table_hints=DEDUPLICATED)  # keys checked: KeyCheck
        resource = resource.add_map(watchdog.progress).add_map(self.normalize)
        if self.variants is not None:
            resource = resource.add_map(self.variants)
        resource = resource.add_map(self.keys.hold_null_keys)
        if t.cursor and t.null_cursor == "quarantine":
            resource = resource.add_map(null_cursor_hold(t, self.keys.hold_records))
        self.resource = resource.add_map(self.keys.note).add_map(changed.arrow)

    def close(self) -> None:
        self.changed.close()
        self.keys.close()
        if self.variants is not None:
            self.variants.close()


@dataclass(frozen=True)
class NoLoad:
    """What ``run_reads`` returns when the reads staged no row: no load, no load id."""

    loads_ids: tuple[str, ...] = ()


NO_LOAD = NoLoad()


def run_reads(
    pipeline: dlt.Pipeline, data: Any, job: JobConfig, reads: Sequence[TableRead] = ()
) -> Any:
    """Extract ``data``, check the reads' keys (a key seen twice stops the run before the
    load: the extracted package is dropped), then normalize and load. Errors become one
    deltaferry error naming the job; after any but a transient one the pending load
    packages are aborted (``abort_pending``: the next run reads the same rows again)."""
    from dlt.pipeline.exceptions import PipelineStepFailed

    try:
        finish_stopped_loads(pipeline, job)  # packages an earlier process stopped loading
        pipeline.extract(data)
        for r in reads:
            message = r.keys.duplicates()
            if message:
                abort_pending(pipeline, message)
                raise ConfigError(message)
            r.keys.close()  # the key counts' memory, freed before the load
        if reads and extracted_nothing(pipeline, {r.t.name: r.staged for r in reads}):
            # every row read equals its staged version (the content filter dropped it):
            # no normalize, no load (a load that stages no row: about 0.3 s of every
            # run with nothing to sync), and no load id for the plan to consume. Dropped
            # as a failed step's package is (deltaferry keeps no dlt state: the window
            # starts at the staged cursor values). Not for a file with a column its
            # staged table lacks, nor for a table never staged (``extracted_nothing``:
            # that load stages the column, or the table).
            abort_pending(pipeline, "the read staged no row: nothing to load")
            return NO_LOAD
        pipeline.normalize()
        refit_staging(job, pipeline)  # the load's merge deletes among the rows staged so far
        info = pipeline.load()
        drop_merge_staging(pipeline)
        prune_loaded_packages(pipeline)
        return info
    except PipelineStepFailed as e:
        raise_if_interrupt_within(e)  # Ctrl-C inside dlt: the package stays for the next run
        error = _step_error(job, e)
        if not isinstance(error, TransientError):
            abort_pending(pipeline, str(error))
        raise error from (e if isinstance(error, TransientError) else None)


def _step_error(job: JobConfig, e: Any) -> BaseException:
    """The deltaferry error ``run_reads`` raises for dlt's ``PipelineStepFailed`` ``e``."""
    from deltaferry.errors import DeltaferryError

    ours = find_cause(e, lambda x: isinstance(x, DeltaferryError))
    if ours is not None:
        return ours
    undecodable = undecodable_text(job, e)
    if undecodable is not None:  # sqlite3 calls it an OperationalError: not transient
        return _table_error(job, e, undecodable)
    transient = transient_cause(e)
    if isinstance(transient, sa.exc.DBAPIError):
        classified = connect_error(job, transient)
        if isinstance(classified, ConfigError):  # credentials changed under a running job
            return TerminalError(str(classified))
    if transient is not None:
        return TransientError(
            f"job '{job.name}': extract step '{e.step}' failed: {scrub(job, str(transient))}"
        )
    mixed = _mixed_types(job, e)
    if mixed is not None:
        return _table_error(job, e, mixed)
    unreadable = _driver_cannot_read(job, e)
    if unreadable is not None:
        return _table_error(job, e, unreadable)
    if e.step in ("normalize", "load"):
        return TerminalError(load_failure(job, e))
    cause = " ".join(str(e.__cause__ or e.exception).split())  # one line
    return TerminalError(f"job '{job.name}': extract step '{e.step}' failed: {cause}")


def _driver_cannot_read(job: JobConfig, e: Any) -> str | None:
    """One line when the database driver cannot read a value the source holds (psycopg's
    ``DataError``: a PostgreSQL ``time`` of ``24:00:00``, which PostgreSQL allows and
    Python's ``time`` cannot hold): the extract failed with the driver's bare message,
    naming no table, and the job's other tables stopped with it (a fresh-user trial)."""
    cause = find_cause(
        e, lambda x: type(x).__name__ == "DataError" and type(x).__module__.startswith("psycopg")
    )
    if cause is None:
        return None
    name = failed_pipe(str(e))
    where = f"job '{job.name}' table '{name}'" if name else f"job '{job.name}'"
    text = " ".join(str(cause).split())
    hint = (
        "a time of day of 24:00:00 (PostgreSQL allows it; Python's time does not): store "
        "23:59:59.999999 or the next day's 00:00, or publish the column as text "
        "(column_types = { <column> = \"text\" })"
        if "parse time" in text
        else "fix the value at the source, or publish its column as text (column_types = "
        "{ <column> = \"text\" })"
    )
    return (
        f"{where}: the database driver cannot read a value the source holds ({text}): "
        f"{hint}; nothing of the table staged or published"
    )


def _table_error(job: JobConfig, e: BaseException, message: str) -> TerminalError:
    """``message`` as the error of the job's table whose dlt pipe failed (``TableReadError``:
    the job's other tables can go on), or of the job when the pipe names none of them."""
    name = failed_pipe(str(e))
    if name in {t.name for t in job.tables}:
        return TableReadError(message, name)
    return TerminalError(message)


def undecodable_text(job: JobConfig, e: BaseException, table: str | None = None) -> str | None:
    """One line for text that is not valid UTF-8 (SQLite stores any bytes as TEXT, and its
    driver fails the read with an ``OperationalError``, the class of a dropped connection):
    the same bytes fail every retry, so it stops the run naming job, table (``table``, or
    the dlt pipe in the error) and column; None for any other failure."""
    import re

    text = str(e)
    found = re.search(r"Could not decode to UTF-8 column '([^']*)' with text '(.{0,40}?)'", text)
    if found is None:
        return None
    if table is None:
        table = failed_pipe(text)
    where = f"job '{job.name}' table '{table}'" if table else f"job '{job.name}'"
    column = found.group(1)
    return (
        f"{where} column '{column}': a value is not valid UTF-8 text ({found.group(2)!r}, as "
        "the driver shows it); nothing was staged. Fix the value in the source (SQLite's "
        "driver cannot read it), or, unless it is a key or cursor column, leave the column "
        f'out (exclude_columns = ["{column}"]); the next run reads the table again'
    )


def _mixed_types(job: JobConfig, e: BaseException) -> str | None:
    """One line for a column whose values arrive in more than one type (SQLite keeps any value
    in any column), which Arrow cannot read as one column; None for any other failure."""
    import re

    text = str(e)
    table = failed_pipe(text)
    field = re.search(r"Conversion to arrow failed for field [`']([^`']+)[`']", text)
    if table is None or field is None:
        return None
    why = re.search(r"\(([^()]*got a[^()]*)\)", text)
    return (
        f"job '{job.name}' table '{table}' column '{field.group(1)}': its values arrive "
        f"in more than one type ({why.group(1) if why else 'mixed types'}), which cannot be read "
        "as one column; nothing was staged. Make the column's values one type at the source "
        "(and its declared type match them), or leave it out with exclude_columns; the next "
        "run reads the table again"
    )
