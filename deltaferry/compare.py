"""Convergence: does a replica hold exactly the source's live rows?

The source is read through the same dlt ``sql_table`` (pyarrow backend) the sync
uses, so both sides carry the same types. Soft-deleted source rows count as
deleted. Keys whose current staged version is held in quarantine are reported
and left out of the comparison: the contract keeps them back on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig
from deltaferry.duck import fetch_one, fetch_row, ident
from sources.columns import LOAD_ID_COLUMN, STAGING_DATASET
from sources.sql_database.connection import engine_for
from sources.sql_database.types import job_scope, sql_table
from sources.staging import staging_path


@dataclass
class TableConvergence:
    table: str
    source_rows: int
    replica_rows: int
    quarantined_keys: int
    missing_in_replica: int
    extra_in_replica: int

    @property
    def equal(self) -> bool:
        return self.missing_in_replica == 0 and self.extra_in_replica == 0


def read_source(job: JobConfig, t: TableConfig) -> tuple[pa.Table, list[dict]]:
    """The source table's rows, read and typed as the sync reads them, and the keys of the
    rows the sync holds back as it reads them (a value their column cannot carry)."""
    engine = engine_for(job)
    held: list[dict] = []

    def hold(rows: list[dict], *_: Any) -> None:
        held.extend({c: r.get(c) for c in t.primary_key} for r in rows)

    try:
        with job_scope():  # read and typed as the sync reads them (column_types, exclusions)
            parts = list(
                sql_table(job, hold=hold, credentials=engine, table=t.name, backend="pyarrow")
            )
    finally:
        engine.dispose()
    return (pa.concat_tables(parts) if parts else pa.table({})), held


def outstanding_quarantine(job: JobConfig, t: TableConfig) -> list[dict]:
    """Primary keys whose current staged version is the one the contract quarantined."""
    state = Path(staging_path(job.name)).parent / "state.duckdb"
    if not state.exists() or not staging_path(job.name).exists():
        return []
    con = duck.connect(state, read_only=True, alias="state")
    try:
        entries = con.execute(
            "SELECT DISTINCT pk, load_id FROM quarantine WHERE tbl = ? AND resolved IS NULL",
            [t.name],
        ).fetchall()
    finally:
        con.close()
    if not entries:
        return []
    staged = duck.connect(staging_path(job.name), read_only=True, alias="staging")
    out = []
    try:
        for pk_json, load_id in entries:
            pk = json.loads(pk_json)
            where = " AND ".join(f"CAST({ident(c)} AS VARCHAR) = ?" for c in t.primary_key)
            row = fetch_one(
                staged,
                f"SELECT {ident(LOAD_ID_COLUMN)} FROM {STAGING_DATASET}.{ident(t.name)}"
                f" WHERE {where}",
                [str(pk[c]) for c in t.primary_key],
            )
            if row and row[0] == load_id:
                out.append(pk)
    finally:
        staged.close()
    return out


def compare(job: JobConfig, replica: Path) -> list[TableConvergence]:
    """Compare every table of ``job`` between source and replica, column by column."""
    results = []
    con = duck.connect_replica(replica, read_only=True)
    try:
        for t in job.tables:
            src, held_at_read = read_source(job, t)
            held = outstanding_quarantine(job, t) + held_at_read
            has_replica = duck.table_exists(con, t.name, schema=None)
            if src.num_columns == 0:  # an empty source table: dlt yields no rows, no schema
                src = _empty_like(con, t, has_replica)
            con.register("src", src)
            con.register(
                "held",
                pa.Table.from_pylist(held)
                if held
                else pa.table({c: pa.array([], pa.string()) for c in t.primary_key}),
            )
            soft = (
                f"WHERE {ident(t.soft_delete_column)} IS NULL"
                if t.soft_delete_column and t.soft_delete_column in src.column_names
                else ""
            )
            # the columns the lake publishes: a source column the contract does not know
            # (source drift under the quarantine or evolve policy) is not compared
            published = set(duck.columns(con, t.name))
            cols = [c for c in src.column_names if not has_replica or c in published]
            collist = ", ".join(ident(c) for c in cols)
            key_match = " AND ".join(
                f"CAST(h.{ident(c)} AS VARCHAR) = CAST(x.{ident(c)} AS VARCHAR)"
                for c in t.primary_key
            )
            not_held = f"NOT EXISTS (SELECT 1 FROM held h WHERE {key_match})"
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW s AS SELECT {collist} FROM src x {soft or 'WHERE true'} AND {not_held}"
            )
            if has_replica:
                con.execute(
                    f"CREATE OR REPLACE TEMP VIEW r AS SELECT {collist} FROM {ident(t.name)} x WHERE {not_held}"
                )
                replica_rows = fetch_row(con, f"SELECT count(*) FROM {ident(t.name)}")[0]
            else:
                con.execute("CREATE OR REPLACE TEMP VIEW r AS SELECT * FROM s WHERE false")
                replica_rows = 0
            source_rows = fetch_row(con, f"SELECT count(*) FROM src {soft}")[0]
            missing = fetch_row(
                con, "SELECT count(*) FROM (SELECT * FROM s EXCEPT ALL SELECT * FROM r)"
            )[0]
            extra = fetch_row(
                con, "SELECT count(*) FROM (SELECT * FROM r EXCEPT ALL SELECT * FROM s)"
            )[0]
            con.unregister("src")
            con.unregister("held")
            results.append(
                TableConvergence(t.name, source_rows, replica_rows, len(held), missing, extra)
            )
    finally:
        con.close()
    return results


def _empty_like(con: Any, t: TableConfig, has_replica: bool) -> pa.Table:
    """No source rows, with the replica's columns and types (else the key and the
    soft-delete column as text), so an empty source table compares with its replica."""
    from deltaferry.merge_tables import REPLICA_COLUMNS

    if has_replica:
        empty = con.execute(f"SELECT * FROM {ident(t.name)} LIMIT 0").to_arrow_table()
        return empty.drop_columns([c for c in empty.column_names if c in REPLICA_COLUMNS])
    names = [*t.primary_key, *([t.soft_delete_column] if t.soft_delete_column else [])]
    return pa.table({c: pa.array([], pa.string()) for c in dict.fromkeys(names)})

