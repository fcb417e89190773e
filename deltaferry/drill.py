"""Recovery drill: rebuild a replica from the lake alone and compare it with staging.

Proves the lake is enough to recover the data: a fresh replica is pulled (verifying
every batch) into a temporary directory and compared, table by table, with the job's
staging (live rows, keys and values). Rows the contract holds back in quarantine are
left out of the comparison. Both sides are read into memory.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.compare import outstanding_quarantine
from deltaferry.config import JobConfig
from deltaferry.duck import ident
from deltaferry.replica import pull
from destinations.lake import LakeStore
from sources.columns import DELETED_COLUMN, INTERNAL_COLUMNS, STAGING_DATASET
from sources.staging import staged_columns, staging_path


@dataclass
class DrillTable:
    table: str
    staged_rows: int
    replica_rows: int
    held_back: int
    missing_in_replica: int
    extra_in_replica: int

    @property
    def equal(self) -> bool:
        return self.missing_in_replica == 0 and self.extra_in_replica == 0


def drill(job: JobConfig, lake: LakeStore) -> tuple[list[DrillTable], float]:
    """Rebuild a replica from the lake into a temporary file; compare with staging."""
    t0 = time.perf_counter()
    results: list[DrillTable] = []
    with tempfile.TemporaryDirectory(prefix=f"deltaferry-drill-{job.name}-") as tmp:
        replica = Path(tmp) / "replica.duckdb"
        # with several producers the lake holds others' chains too: staging is this one's
        pull(job, lake, replica, producers=[job.producer_id] if job.multi_producer else None)
        staging = duck.connect(staging_path(job.name), read_only=True, alias="staging")
        rep = duck.connect(replica, read_only=True, alias="replica")
        try:
            for t in job.tables:
                cols = staged_columns(staging, t.name)
                data_cols = [c for c in cols if c not in INTERNAL_COLUMNS]
                live = (
                    [f"NOT coalesce({ident(DELETED_COLUMN)}, false)"]
                    if DELETED_COLUMN in cols
                    else []
                )
                if t.soft_delete_column:
                    live.append(f"{ident(t.soft_delete_column)} IS NULL")
                where = " AND ".join(live) or "true"
                select = ", ".join(f"CAST({ident(c)} AS VARCHAR) AS {ident(c)}" for c in data_cols)
                staged = (
                    staging.sql(
                        f"SELECT {select} FROM {STAGING_DATASET}.{ident(t.name)} WHERE {where}"
                    ).to_arrow_table()
                    if data_cols
                    else pa.table({})
                )
                has = duck.table_exists(rep, t.name, schema=None)
                if has:  # the published columns: a drifted source column is not in the lake
                    published = set(duck.columns(rep, t.name))
                    kept = [c for c in data_cols if c in published]
                    select = ", ".join(f"CAST({ident(c)} AS VARCHAR) AS {ident(c)}" for c in kept)
                    staged = staged.select(kept)
                replica_rows = (
                    rep.sql(f"SELECT {select} FROM {ident(t.name)}").to_arrow_table()
                    if has
                    else staged.slice(0, 0)
                )
                held = outstanding_quarantine(job, t)
                results.append(_compare(t.name, list(t.primary_key), staged, replica_rows, held))
        finally:
            staging.close()
            rep.close()
    return results, time.perf_counter() - t0


def _compare(
    table: str, pk: list[str], staged: pa.Table, replica: pa.Table, held: list[dict]
) -> DrillTable:
    con = duckdb.connect()
    try:
        con.register("s", staged)
        con.register("r", replica)
        keys = pa.table({c: pa.array([str(h[c]) for h in held], pa.string()) for c in pk})
        con.register("held", keys)
        match = " AND ".join(f"h.{ident(c)} = x.{ident(c)}" for c in pk)
        keep = f"NOT EXISTS (SELECT 1 FROM held h WHERE {match})"
        missing = duck.fetch_row(
            con,
            f"SELECT count(*) FROM (SELECT * FROM s x WHERE {keep} EXCEPT ALL SELECT * FROM r x WHERE {keep})",
        )[0]
        extra = duck.fetch_row(
            con,
            f"SELECT count(*) FROM (SELECT * FROM r x WHERE {keep} EXCEPT ALL SELECT * FROM s x WHERE {keep})",
        )[0]
    finally:
        con.close()
    return DrillTable(table, staged.num_rows, replica.num_rows, len(held), missing, extra)
