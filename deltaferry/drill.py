"""Recovery drill: rebuild a replica from the lake alone and compare it with staging.

Proves the lake is enough to recover the data: a fresh replica is pulled (verifying
every batch) into a temporary directory and compared, table by table, with the job's
staging (live rows, keys and values, typed as published). Rows the contract holds back in
quarantine are left out of the comparison. The comparison runs in DuckDB with staging
attached to the replica, within its memory limit (spilling to disk), not in Python.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.compare import outstanding_quarantine
from deltaferry.config import JobConfig, TableConfig
from deltaferry.duck import ident
from deltaferry.replica import pull
from destinations.lake import LakeStore
from sources.columns import DELETED_COLUMN, INTERNAL_COLUMNS, LOAD_ID_COLUMN, STAGING_DATASET
from sources.staging import staged_columns, staging_path


@dataclass
class DrillTable:
    table: str
    staged_rows: int
    replica_rows: int
    held_back: int
    missing_in_replica: int
    extra_in_replica: int
    # staged rows of loads not published yet (a run that stopped before publishing them,
    # a table its contract stopped): left out on both sides, since the lake has not had them
    pending: int = 0

    @property
    def equal(self) -> bool:
        return self.missing_in_replica == 0 and self.extra_in_replica == 0


def drill(job: JobConfig, lake: LakeStore) -> tuple[list[DrillTable], float]:
    """Rebuild a replica from the lake into a temporary file; compare it with staging.
    Returns one ``DrillTable`` per table of the job and the seconds taken. Errors: the
    pull's (a batch that fails verification), DuckDB's (staging held by a running sync)."""
    t0 = time.perf_counter()
    results: list[DrillTable] = []
    with tempfile.TemporaryDirectory(prefix=f"deltaferry-drill-{job.name}-") as tmp:
        replica = Path(tmp) / "replica.duckdb"
        # with several producers the lake holds others' chains too: staging is this one's
        pull(job, lake, replica, producers=[job.producer_id] if job.multi_producer else None)
        staging = duck.connect(staging_path(job.name), read_only=True, alias="staging")
        try:  # read before staging is attached below (one file, one attachment at a time)
            layout = {t.name: staged_columns(staging, t.name) for t in job.tables}
            pending = _pending_loads(job, staging)
        finally:
            staging.close()
        con = duck.connect(replica, alias="replica")
        try:
            # a naive staged time is UTC wall time: cast to a zoned published one in UTC
            con.execute("SET TimeZone = 'UTC'")
            duck.attach(con, staging_path(job.name), _STAGING)
            for t in job.tables:
                results.append(_table(con, job, t, layout[t.name], pending[t.name]))
        finally:
            with contextlib.suppress(duckdb.Error):
                con.execute(f"DETACH DATABASE IF EXISTS {_STAGING}")
            con.close()
    return results, time.perf_counter() - t0


# the alias staging is attached under in the drill's replica connection
_STAGING = "df_drill_staging"


def _pending_loads(job: JobConfig, staging: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Per table, the staged dlt loads no checkpoint of this producer accounts for yet
    (``cut.new_load_ids``): what the next run publishes."""
    from deltaferry.cut import new_load_ids
    from deltaferry.state import StateStore, state_path

    if not state_path(job.name).exists():
        return {t.name: new_load_ids(staging, set()) for t in job.tables}
    state = StateStore(job.name, read_only=True)
    return {t.name: new_load_ids(staging, state.published_load_ids(t.name)) for t in job.tables}


def _table(
    con: duckdb.DuckDBPyConnection,
    job: JobConfig,
    t: TableConfig,
    cols: list[str],
    pending_ids: list[str],
) -> DrillTable:
    """One table's comparison, in DuckDB (spilling beside the replica, not held in Python):
    staging's live rows, each column cast to the type the replica publishes it as (a
    naive staged timestamp and its zoned published form compare as one instant; as text
    they differed), against the replica's rows; keys held in quarantine left out, and keys
    whose staged row is of a load not published yet (``pending_ids``), on both sides."""
    data_cols = [c for c in cols if c not in INTERNAL_COLUMNS]
    published = duck.column_types(con, t.name, schema=None)
    has = bool(published)
    # the published columns: a drifted source column is not in the lake
    kept = [c for c in data_cols if not has or c in published]
    live = [f"NOT coalesce(s.{ident(DELETED_COLUMN)}, false)"] if DELETED_COLUMN in cols else []
    if t.soft_delete_column and t.soft_delete_column in cols:
        live.append(f"s.{ident(t.soft_delete_column)} IS NULL")
    held = outstanding_quarantine(job, t)
    con.register(
        "df_drill_held",
        pa.table({c: pa.array([str(h[c]) for h in held], pa.string()) for c in t.primary_key}),
    )
    try:
        staged_from = f"{_STAGING}.{STAGING_DATASET}.{ident(t.name)} s"
        pending_rows, unpublished, not_pending = 0, "false", "true"
        if cols and pending_ids:
            ids = ", ".join(duck.literal(i) for i in pending_ids)
            unpublished = f"s.{ident(LOAD_ID_COLUMN)} IN ({ids})"
            pending_rows = duck.fetch_row(
                con, f"SELECT count(*) FROM {staged_from} WHERE {unpublished}"
            )[0]
            if pending_rows:
                match = " AND ".join(
                    f"r.{ident(c)} IS NOT DISTINCT FROM "
                    + (f"TRY_CAST(s.{ident(c)} AS {published[c]})" if c in published else f"s.{ident(c)}")
                    for c in t.primary_key
                )
                not_pending = f"NOT EXISTS (SELECT 1 FROM {staged_from} WHERE {unpublished} AND {match})"
        if not cols:  # nothing staged yet
            staged_rows, staged_sql = 0, None
        else:
            where = " AND ".join(live) or "true"
            staged_rows = duck.fetch_row(con, f"SELECT count(*) FROM {staged_from} WHERE {where}")[0]
            not_held = _not_held(t, "s") + f" AND NOT ({unpublished})"
            select = ", ".join(
                f"TRY_CAST(s.{ident(c)} AS {published[c]}) AS {ident(c)}" if c in published
                else f"s.{ident(c)}"
                for c in kept
            )  # fmt: skip
            staged_sql = f"SELECT {select} FROM {staged_from} WHERE {where} AND {not_held}"
        replica_rows = (
            duck.fetch_row(con, f"SELECT count(*) FROM {ident(t.name)}")[0] if has else 0
        )
        if staged_sql is None or not kept:
            missing, extra = 0, replica_rows
        elif not has:
            missing, extra = duck.fetch_row(con, f"SELECT count(*) FROM ({staged_sql})")[0], 0
        else:
            not_held = _not_held(t, "r") + f" AND {not_pending}"
            select = ", ".join(f"r.{ident(c)}" for c in kept)
            replica_sql = f"SELECT {select} FROM {ident(t.name)} r WHERE {not_held}"
            missing = duck.fetch_row(
                con, f"SELECT count(*) FROM ({staged_sql} EXCEPT ALL {replica_sql})"
            )[0]
            extra = duck.fetch_row(
                con, f"SELECT count(*) FROM ({replica_sql} EXCEPT ALL {staged_sql})"
            )[0]
    finally:
        con.unregister("df_drill_held")
    return DrillTable(t.name, staged_rows, replica_rows, len(held), missing, extra, pending_rows)


def _not_held(t: TableConfig, alias: str) -> str:
    """SQL: the row of ``alias`` is none of the held keys (``df_drill_held``, as text)."""
    if not t.primary_key:
        return "true"
    match = " AND ".join(
        f"h.{ident(c)} = CAST({alias}.{ident(c)} AS VARCHAR)" for c in t.primary_key
    )
    return f"NOT EXISTS (SELECT 1 FROM df_drill_held h WHERE {match})"
