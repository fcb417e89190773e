"""Incremental extraction of SQL tables into the job's DuckDB staging file, with dlt.

Each table is a dlt ``sql_table`` resource on the pyarrow backend, merged on its
primary key with an incremental cursor; dlt commits its cursor state in the same
load as the data. Deletes are kept as tombstones in staging: a soft-delete column
is simply data, and under ``reconcile`` the keys that vanished from the source are
merged back as rows flagged ``_df_deleted`` (with a new load id), so the next
delta carries them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import sqlalchemy as sa
from dlt.sources.sql_database import sql_table

from deltaferry.config import JobConfig, TableConfig, job_home
from deltaferry.errors import ConfigError, TerminalError, TransientError
from deltaferry.duck import fetch_one
from sources.sql_database.settings import (
    CHUNK_SIZE,
    DELETED_COLUMN,
    LOAD_ID_COLUMN,
    STAGING_DATASET,
)

# dlt writes _dlt_load_id on Arrow rows only when asked; we cut deltas by it.
os.environ.setdefault("NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID", "true")


@dataclass(frozen=True)
class ExtractResult:
    load_ids: list[str]
    rows_by_table: dict[str, int]
    tombstones_by_table: dict[str, int]


def staging_path(job: str) -> Path:
    return job_home(job) / "staging.duckdb"


def pipeline_for(job: JobConfig) -> dlt.Pipeline:
    """The job's dlt pipeline; its working dir lives under the job's state dir."""
    return dlt.pipeline(
        pipeline_name=f"deltaferry_{job.name}",
        pipelines_dir=str(job_home(job.name) / "dlt"),
        destination=dlt.destinations.duckdb(str(staging_path(job.name))),
        dataset_name=STAGING_DATASET,
        progress="log" if os.environ.get("DELTAFERRY_DLT_PROGRESS") else None,
    )


def _nullable_except_pk(pk: tuple[str, ...]) -> Any:
    # tombstones keep only the key; every other staged column must accept NULL
    def adapt(table: sa.Table) -> sa.Table:
        for col in table.columns:
            if col.name not in pk:
                col.nullable = True
        return table

    return adapt


def engine_for(job: JobConfig) -> sa.Engine:
    url = job.source_url()
    try:
        return sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as e:
        raise ConfigError(
            f"job '{job.name}': source url is not a valid SQLAlchemy URL: {e}"
        ) from None


def preflight(job: JobConfig, engine: sa.Engine) -> None:
    """Check that the source answers and every configured table and column exists."""
    try:
        insp = sa.inspect(engine)
        existing = set(insp.get_table_names())
    except sa.exc.OperationalError as e:
        raise TransientError(f"job '{job.name}': source database unreachable: {e.orig}") from None
    for t in job.tables:
        if t.name not in existing:
            raise ConfigError(
                f"job '{job.name}' table '{t.name}': not found in the source database"
            )
        cols = {c["name"] for c in insp.get_columns(t.name)}
        needed = (
            set(t.primary_key)
            | {t.cursor}
            | ({t.soft_delete_column} if t.soft_delete_column else set())
        )
        missing = sorted(needed - cols)
        if missing:
            raise ConfigError(
                f"job '{job.name}' table '{t.name}': column(s) {', '.join(missing)} not in the source table"
            )


def extract(job: JobConfig) -> ExtractResult:
    """Run one incremental dlt load of every table of the job, then reconcile deletes."""
    engine = engine_for(job)
    try:
        preflight(job, engine)
        pipeline = pipeline_for(job)
        resources = [
            sql_table(
                credentials=engine,
                table=t.name,
                backend="pyarrow",
                chunk_size=CHUNK_SIZE,
                incremental=dlt.sources.incremental(t.cursor),
                write_disposition="merge",
                primary_key=list(t.primary_key),
                table_adapter_callback=_nullable_except_pk(t.primary_key),
            )
            for t in job.tables
        ]
        load_ids: list[str] = []
        rows: dict[str, int] = {}
        info = _run(pipeline, resources, job)
        load_ids.extend(info.loads_ids)
        counts = (
            pipeline.last_trace.last_normalize_info.row_counts
            if pipeline.last_trace and pipeline.last_trace.last_normalize_info
            else {}
        )
        for t in job.tables:
            rows[t.name] = int(counts.get(t.name, 0))
        tombstones: dict[str, int] = {}
        for t in job.tables:
            if t.deletes == "reconcile":
                n, ids = _reconcile(job, t, engine, pipeline)
                tombstones[t.name] = n
                load_ids.extend(ids)
        return ExtractResult(load_ids, rows, tombstones)
    finally:
        engine.dispose()


def _run(pipeline: dlt.Pipeline, data: Any, job: JobConfig) -> Any:
    from dlt.pipeline.exceptions import PipelineStepFailed

    try:
        return pipeline.run(data)
    except PipelineStepFailed as e:
        cause = e.__cause__ or e.exception
        if isinstance(cause, (sa.exc.OperationalError, ConnectionError, TimeoutError)):
            raise TransientError(
                f"job '{job.name}': extract step '{e.step}' failed: {cause}"
            ) from e
        raise TerminalError(f"job '{job.name}': extract step '{e.step}' failed: {cause}") from e


def _reconcile(
    job: JobConfig, t: TableConfig, engine: sa.Engine, pipeline: dlt.Pipeline
) -> tuple[int, list[str]]:
    """Tombstone staged keys that no longer exist at the source (cost grows with the key set)."""
    pk = list(t.primary_key)
    table = sa.Table(t.name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        result = conn.execute(sa.select(*[table.c[c] for c in pk]))
        source_keys = _keys_arrow(result, pk)
    path = staging_path(job.name)
    if not path.exists():
        return 0, []
    con = duckdb.connect(str(path), read_only=True)
    try:
        if not _staged_table_exists(con, t.name):
            return 0, []
        has_flag = DELETED_COLUMN in _staged_columns(con, t.name)
        live = f"coalesce({DELETED_COLUMN}, false) = false" if has_flag else "true"
        keys = ", ".join(_q(c) for c in pk)
        con.register("source_keys", source_keys)
        if source_keys.num_rows == 0:
            missing = con.sql(
                f"SELECT {keys} FROM {STAGING_DATASET}.{_q(t.name)} WHERE {live}"
            ).to_arrow_table()
        else:
            missing = con.sql(
                f"SELECT {keys} FROM {STAGING_DATASET}.{_q(t.name)} s WHERE {live} AND NOT EXISTS "
                f"(SELECT 1 FROM source_keys k WHERE "
                + " AND ".join(f"s.{_q(c)} = k.{_q(c)}" for c in pk)
                + ")"
            ).to_arrow_table()
    finally:
        con.close()
    if missing.num_rows == 0:
        return 0, []
    # primary keys are NOT NULL in dlt's schema: say so in the Arrow schema too
    missing = missing.cast(pa.schema([f.with_nullable(False) for f in missing.schema]))
    tomb = missing.append_column(
        pa.field(DELETED_COLUMN, pa.bool_()), pa.array([True] * missing.num_rows, pa.bool_())
    )
    resource = dlt.resource(
        tomb,
        name=f"{t.name}__tombstones",
        table_name=t.name,
        write_disposition="merge",
        primary_key=pk,
    )
    info = _run(pipeline, resource, job)
    return missing.num_rows, list(info.loads_ids)


def _keys_arrow(result: Any, pk: list[str]) -> pa.Table:
    rows = result.fetchall()
    cols = {c: [r[i] for r in rows] for i, c in enumerate(pk)}
    return pa.table(cols) if rows else pa.table({c: pa.array([], pa.int64()) for c in pk})


def _staged_table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(
        fetch_one(
            con,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [STAGING_DATASET, table],
        )[0]
    )


def _staged_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?"
        " ORDER BY ordinal_position",
        [STAGING_DATASET, table],
    ).fetchall()
    return [r[0] for r in rows]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


__all__ = ["ExtractResult", "extract", "pipeline_for", "staging_path", "LOAD_ID_COLUMN"]
