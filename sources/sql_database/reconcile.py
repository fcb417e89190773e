"""Deletes of a SQL table under ``deletes = "reconcile"``: the source's key set compared with
staging, vanished keys staged as tombstones, and keys re-created or committed late read
again by key (``reextract``, also for keys whose cursor was NULL).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import sqlalchemy as sa

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig
from deltaferry.duck import fetch_row, ident
from deltaferry.errors import TableReadError, TransientError
from sources.change_detection import ChangedByKey
from sources.columns import DELETED_COLUMN, STAGING_DATASET
from sources.load import stage_tombstones
from sources.sql_database.connection import (
    TRANSIENT_SOURCE_ERRORS,
    StallWatchdog,
    connect_error,
    scrub,
)
from sources.sql_database.reads import TableRead, adapt_table, run_reads, undecodable_text
from sources.sql_database.settings import source_table
from sources.sql_database.types import carry_plans
from sources.sql_database.window import Normalize, by_keys, text_time_columns, unkeyed_rows
from sources.staging import read_staging, staged_columns, staged_table_exists, staging_path
from sources.wall_time import ZoneShifts


class DeleteRatioRefused(TableReadError):
    """Reconcile would delete more of the table than ``max_reconcile_delete_ratio``: the
    table stops for this run (its reads staged; nothing of it is planned), the job's other
    tables go on (``sources.sql_database.extract``)."""


def reconcile(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    pipeline: dlt.Pipeline,
    borrowed: duckdb.DuckDBPyConnection | None,
    watchdog: StallWatchdog,
    shifts: ZoneShifts | None = None,
) -> tuple[int, list[str], list[dict[str, Any]]]:
    """Compare the source's key set with staging (cost grows with the key count).

    Staged live keys gone from the source become tombstones. Source keys whose staged row
    is a tombstone (deleted, then re-created with a cursor value already passed), and
    source keys never staged at all (a transaction that committed late, with a cursor value
    older than the last one synced), are extracted again by key, so neither is lost.
    Source keys with a NULL part are left out (their rows are held back by the read).
    Returns the tombstone count, the load ids and the rows held back by the re-extract.
    """
    pk = list(t.primary_key)
    path = staging_path(job.name)
    if not path.exists():
        return 0, [], []
    con = read_staging(path, borrowed)
    try:
        if not staged_table_exists(con, t.name):
            return 0, [], []
        _read_source_keys(job, t, engine, con, watchdog.progress)
        has_flag = DELETED_COLUMN in staged_columns(con, t.name)
        live = f"coalesce({DELETED_COLUMN}, false) = false" if has_flag else "true"
        keys = ", ".join(ident(c) for c in pk)
        match = " AND ".join(f"s.{ident(c)} = k.{ident(c)}" for c in pk)
        staged = f"{STAGING_DATASET}.{ident(t.name)}"
        staged_live = fetch_row(con, f"SELECT count(*) FROM {staged} WHERE {live}")[0]
        missing = con.sql(
            f"SELECT {keys} FROM {staged} s WHERE {live}"
            f" AND NOT EXISTS (SELECT 1 FROM {_SOURCE_KEYS} k WHERE {match})"
        ).to_arrow_table()
        unseen = (
            con.sql(
                f"SELECT {', '.join('k.' + ident(c) for c in pk)} FROM {_SOURCE_KEYS} k WHERE NOT"
                f" EXISTS (SELECT 1 FROM {staged} s WHERE {match})"
            )
            .to_arrow_table()
            .to_pylist()
        )
        recreated = (
            con.sql(
                f"SELECT {', '.join('s.' + ident(c) for c in pk)} FROM {staged} s"
                f" JOIN {_SOURCE_KEYS} k ON {match} WHERE coalesce(s.{DELETED_COLUMN}, false)"
            )
            .to_arrow_table()
            .to_pylist()
            if has_flag
            else []
        )
    finally:
        con.close()
    load_ids: list[str] = []
    if missing.num_rows:
        ratio = missing.num_rows / max(staged_live, 1)
        if staged_live >= 20 and ratio > job.max_reconcile_delete_ratio:
            raise DeleteRatioRefused(
                f"job '{job.name}' table '{t.name}': reconcile would delete {missing.num_rows} of "
                f"{staged_live} rows ({ratio:.0%}), over max_reconcile_delete_ratio "
                f"{job.max_reconcile_delete_ratio:.0%}; refusing (is the source table truncated?)."
                " Nothing of this table published, the job's other tables go on; if the "
                "deletes are real, raise max_reconcile_delete_ratio for one run",
                t.name,
            )
        load_ids.extend(stage_tombstones(job, t, pipeline, missing, "tombstones"))
    held: list[dict[str, Any]] = []
    if recreated or unseen:
        ids, held = reextract(
            job, t, engine, pipeline, recreated + unseen, borrowed, watchdog, shifts
        )
        load_ids.extend(ids)
    return missing.num_rows, load_ids, held


def reextract(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    pipeline: dlt.Pipeline,
    keys: list[dict],
    borrowed: duckdb.DuckDBPyConnection | None,
    watchdog: StallWatchdog,
    shifts: ZoneShifts | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Extract the given keys again, ignoring the cursor (rows re-created at the source or
    committed late), in groups of ``REEXTRACT_KEYS`` keys per query (``window.by_keys``:
    SQLite time text in a key is matched as an instant). Returns the load ids and the rows
    held back."""
    groups = [keys[i : i + REEXTRACT_KEYS] for i in range(0, len(keys), REEXTRACT_KEYS)]
    adapters = [lambda tt, g=g: by_keys(job, t, g, tt) for g in groups]
    load_ids, held = _read_again(job, t, engine, pipeline, adapters, borrowed, watchdog, shifts)
    return load_ids, [r for one in held for r in one]


def reread_unkeyed(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    pipeline: dlt.Pipeline,
    values: list[Any],
    borrowed: duckdb.DuckDBPyConnection | None,
    watchdog: StallWatchdog,
    shifts: ZoneShifts | None = None,
) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Read again the rows held without a key (``window.unkeyed_rows``: at their remembered
    cursor ``values``, ``REEXTRACT_KEYS`` values a query, and every row with a NULL key part,
    by the first). Returns the load ids and what each query held (a row may be held by two, when
    SQLite time text selects the days around the values)."""
    groups = [values[i : i + REEXTRACT_KEYS] for i in range(0, len(values), REEXTRACT_KEYS)]
    # the rows with a NULL key part are read by the first query alone
    adapters = [lambda tt, g=g, i=i: unkeyed_rows(job, t, g, tt, i == 0) for i, g in enumerate(groups)]
    return _read_again(job, t, engine, pipeline, adapters, borrowed, watchdog, shifts)


def _read_again(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    pipeline: dlt.Pipeline,
    adapters: list[Any],
    borrowed: duckdb.DuckDBPyConnection | None,
    watchdog: StallWatchdog,
    shifts: ZoneShifts | None = None,
) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """One read of ``t`` per query adapter (a ``text_times -> query_adapter_callback``),
    ignoring the cursor, keeping only rows that differ from staging; the load ids and what
    each read held back. ``shifts`` is given the wall times each read took by the zone
    rule (the run's notes count rows read again too)."""
    load_ids: list[str] = []
    held: list[list[dict[str, Any]]] = []
    for adapter in adapters:
        read = TableRead(
            job,
            t,
            engine,
            watchdog,
            ChangedByKey(job, t, borrowed),
            adapter,
            name=f"{t.name}__recreated",
            pipeline=pipeline,
        )
        try:
            load_ids.extend(run_reads(pipeline, read.resource, job, [read]).loads_ids)
        finally:
            read.close()
        held.append(list(read.keys.held))
        if shifts is not None:
            shifts.merge(read.shifts)
    return load_ids, held


# keys per query when rows are extracted again by key
REEXTRACT_KEYS = 5_000


# source keys fetched per round trip when reconciling (each counts as progress)
KEYS_PER_READ = 100_000


# the source's key set while reconcile compares it: a temporary table of the staging
# connection, in DuckDB's memory up to its limit and spilled to disk beyond it
_SOURCE_KEYS = "temp.main._deltaferry_source_keys"


def _read_source_keys(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    con: duckdb.DuckDBPyConnection,
    progress: Any,
) -> None:
    """Every source key without a NULL part into ``_SOURCE_KEYS`` on ``con`` (a staging
    connection), ``KEYS_PER_READ`` keys per round trip, each batch read as the table's rows
    are (``reads.adapt_table``, ``types.carry_plans``, ``window.Normalize``: SQLite time
    text parsed to UTC wall time, a NUMERIC as its exact decimal, naive times taken in the
    job's zone), so a key is compared with its staged self
    whatever form the source wrote it in. Memory follows ``KEYS_PER_READ`` and DuckDB's
    ``memory_limit``, not the table. The table takes the staged key columns' types."""
    pk = list(t.primary_key)
    cols = ", ".join(ident(c) for c in pk)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_SOURCE_KEYS.rsplit('.', 1)[1]} AS "
        f"SELECT {cols} FROM {STAGING_DATASET}.{ident(t.name)} LIMIT 0"
    )
    try:
        text_times = text_time_columns(engine, t)
        normalize = Normalize(job, t, text_times)
        table = carry_plans(
            job,
            t,
            adapt_table(job, t, text_times)(
                sa.Table(source_table(t), sa.MetaData(), autoload_with=engine)
            ),
            engine.dialect,
        )
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=KEYS_PER_READ).execute(
                sa.select(*[table.c[c] for c in pk])
            )
            for rows in result.partitions():
                progress()
                part = normalize(_keys_arrow(rows, pk)).drop_null()
                if part.num_rows:
                    duck.with_arrow(
                        con, part, f"INSERT INTO {_SOURCE_KEYS} BY NAME SELECT * FROM _deltaferry_arrow"
                    )
    except sa.exc.DBAPIError as e:
        undecodable = undecodable_text(job, e, t.name)  # the same bytes fail every retry
        if undecodable is not None:
            raise TableReadError(undecodable, t.name) from None
        raise connect_error(job, e) from e
    except TRANSIENT_SOURCE_ERRORS as e:
        raise TransientError(
            f"job '{job.name}' table '{t.name}': reading source keys failed: {scrub(job, str(e))}"
        ) from e


def _keys_arrow(rows: Sequence[Any], pk: list[str]) -> pa.Table:
    """One batch of key rows as Arrow; uuid values as text, as dlt stages them."""
    cols = {}
    for i, c in enumerate(pk):
        values = [r[i] for r in rows]
        if any(isinstance(v, uuid.UUID) for v in values):
            values = [None if v is None else str(v) for v in values]
        cols[c] = values
    return pa.table(cols)
