"""The job's DuckDB staging file (``$DELTAFERRY_HOME/<job>/staging.duckdb``) and what is
read from it: the staged tables (dataset ``raw``), their columns, and their live rows by key.

A source kind loads a job's tables into ``raw.<table>`` with ``write_disposition="merge"``
on the table's primary key (``sources.load``). Deltas are cut from staging by dlt's load
id, so whatever a source stages is what the next batch publishes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig, job_home
from deltaferry.duck import ident
from sources import names
from sources.columns import (
    DELETED_COLUMN,
    HASH_COLUMN,
    INTERNAL_COLUMNS,
    LOAD_ID_COLUMN,
    STAGING_DATASET,
)

#: dlt's pipeline of a job is named ``deltaferry_<job>`` (its working dir in the job's home)
PIPELINE_PREFIX = "deltaferry_"


def staging_path(job: str) -> Path:
    return job_home(job) / "staging.duckdb"


def read_staging(
    path: Path, borrowed: duckdb.DuckDBPyConnection | None
) -> duckdb.DuckDBPyConnection:
    """A connection that reads staging: a cursor of dlt's connection when staging is
    encrypted (it is attached once, there), else a read-only connection of its own."""
    if borrowed is not None:
        con = borrowed.cursor()
        con.execute("USE staging")
        return con
    return duck.connect(path, read_only=True, alias="staging")


def write_staging(
    path: Path, borrowed: duckdb.DuckDBPyConnection | None
) -> duckdb.DuckDBPyConnection:
    """A connection that writes staging (outside dlt's loads: retagged hashes, raised file
    times): a cursor of dlt's connection when staging is encrypted, else its own."""
    if borrowed is not None:
        con = borrowed.cursor()
        con.execute("USE staging")
        return con
    return duck.connect(path, alias="staging")


def staged_table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether staging (``con``, from ``read_staging`` or ``duck.connect``) has ``table`` in
    its dataset (``STAGING_DATASET``)."""
    return duck.table_exists(con, table, STAGING_DATASET)


def staged_types(
    t: TableConfig, path: Path, borrowed: duckdb.DuckDBPyConnection | None
) -> dict[str, str]:
    """``{column: DuckDB type}`` of ``t``'s staged table (``duck.column_types``); ``{}``
    before its first load."""
    if not path.exists():
        return {}
    con = read_staging(path, borrowed)
    try:
        return duck.column_types(con, t.name, STAGING_DATASET)
    finally:
        con.close()


def staged_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The staged columns of ``table`` in table order, dlt's and deltaferry's own included;
    ``[]`` before its first load."""
    return duck.columns(con, table, STAGING_DATASET)


def staged_keyed(
    t: TableConfig,
    path: Path,
    borrowed: duckdb.DuckDBPyConnection | None,
    column: str,
    only: pa.Table | None = None,
    *,
    whole: bool = False,
) -> pa.Table | None:
    """Primary key and ``column`` of every live staged row where it is set (of the keys in
    ``only``, a table of key columns, when given), or None before the first load (or when
    the table was staged without that column). With ``whole``, every other column of the
    row too except staging's own (``INTERNAL_COLUMNS``)."""
    if not path.exists():
        return None
    con = read_staging(path, borrowed)
    try:
        sql = _keyed_query(con, t, column, only, whole)
        return None if sql is None else con.execute(sql).fetch_arrow_table()
    finally:
        con.close()


def staged_keyed_batches(
    t: TableConfig, path: Path, borrowed: duckdb.DuckDBPyConnection | None, column: str
) -> Iterator[pa.RecordBatch]:
    """``staged_keyed``'s rows (without ``only`` or ``whole``) as a stream of batches, so a
    caller can keep them elsewhere (a DuckDB table that spills) without holding all of them
    in memory at once; nothing before the first load."""
    if not path.exists():
        return
    con = read_staging(path, borrowed)
    try:
        sql = _keyed_query(con, t, column, None, False)
        if sql is not None:
            yield from con.execute(sql).to_arrow_reader(100_000)
    finally:
        con.close()


def batch_reader(batches: Iterator[pa.RecordBatch]) -> pa.RecordBatchReader | None:
    """``batches`` as one Arrow stream (DuckDB scans it in a single statement), or None
    when there are none. The stream reads ``batches`` as it goes."""
    first = next(batches, None)
    if first is None:
        return None
    return pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches))


def _keyed_query(
    con: duckdb.DuckDBPyConnection,
    t: TableConfig,
    column: str,
    only: pa.Table | None,
    whole: bool,
) -> str | None:
    """The query of ``staged_keyed`` on ``con`` (``only`` registered on it), or None when
    the table or the column is not staged."""
    if not staged_table_exists(con, t.name):
        return None
    cols = staged_columns(con, t.name)
    if column not in cols:
        return None
    live = f"coalesce({DELETED_COLUMN}, false) = false" if DELETED_COLUMN in cols else "true"
    keys = ", ".join(f"s.{ident(c)}" for c in t.primary_key)
    rest = [c for c in cols if c not in INTERNAL_COLUMNS and c not in t.primary_key]
    more = "".join(f", s.{ident(c)}" for c in rest) if whole else ""
    source = f"{STAGING_DATASET}.{ident(t.name)} s"
    if only is not None:
        con.register("only_keys", only)
        match = " AND ".join(f"s.{ident(c)} = k.{ident(c)}" for c in t.primary_key)
        distinct = ", ".join(ident(c) for c in t.primary_key)
        # a join with the few keys, not EXISTS: DuckDB then reads the other columns only
        # for matching rows (measured at 1M staged rows: +9 MiB instead of +118 MiB for
        # the semi-join, which grew with the table)
        source = f"(SELECT DISTINCT {distinct} FROM only_keys) k JOIN {source} ON {match}"
    return (
        f"SELECT {keys}, s.{ident(column)}{more} FROM {source} "
        f"WHERE {live} AND s.{ident(column)} IS NOT NULL"
    )


def staged_hashes(
    t: TableConfig, path: Path, borrowed: duckdb.DuckDBPyConnection | None
) -> Iterator[pa.RecordBatch]:
    """Primary key and content hash of every live staged row (see ``staged_keyed``), as a
    stream of batches."""
    return staged_keyed_batches(t, path, borrowed, HASH_COLUMN)


def staged_hashes_among(
    t: TableConfig, path: Path, borrowed: duckdb.DuckDBPyConnection | None, hashes: list[str]
) -> set[str]:
    """Those of ``hashes`` (content hashes, ``HASH_COLUMN``'s text) that a live staged row
    of ``t`` has: one join of the distinct hashes with the staged hash column, so memory
    follows ``hashes``, not the table (time: one scan of that column). ``set()`` before
    the first load, or when the table was staged without hashes."""
    if not hashes or not path.exists():
        return set()
    con = read_staging(path, borrowed)
    try:
        if not staged_table_exists(con, t.name):
            return set()
        cols = staged_columns(con, t.name)
        if HASH_COLUMN not in cols:
            return set()
        live = f"coalesce(s.{DELETED_COLUMN}, false) = false" if DELETED_COLUMN in cols else "true"
        con.register("wanted_hashes", pa.table({"h": pa.array(hashes, pa.string())}))
        found = con.execute(
            f"SELECT DISTINCT s.{HASH_COLUMN} FROM (SELECT DISTINCT h FROM wanted_hashes) w "
            f"JOIN {STAGING_DATASET}.{ident(t.name)} s ON s.{HASH_COLUMN} = w.h WHERE {live}"
        ).fetch_arrow_table()
        return set(found.column(0).to_pylist())
    finally:
        con.close()


def staged_keys_among(
    job: str, t: TableConfig, keys: list[str], load_ids: list[str]
) -> set[str]:
    """Of ``keys`` (JSON objects of ``t``'s key columns, as quarantine records hold them),
    those staged with one of ``load_ids`` (a run's loads) with a cursor value: rows the run
    read and staged. Key values are compared as text (``str`` of the JSON value, DuckDB's
    ``CAST ... AS VARCHAR`` of the staged one). ``set()`` when nothing was staged."""
    import json

    path = staging_path(job)
    if not keys or not load_ids or not path.exists():
        return set()
    pk = list(t.primary_key)
    con = duck.connect(path, read_only=True, alias="staging")
    try:
        if not staged_table_exists(con, t.name):
            return set()
        have = set(staged_columns(con, t.name))
        # a cursor inside a document (a JSONPath, ``$.meta.updated``): its top-level field
        # is staged as the document's JSON text, and the value is looked for in it below
        nested = t.cursor is not None and t.cursor.startswith("$")
        column = document_column(t.cursor) if t.cursor and nested else t.cursor
        if any(c not in have for c in pk) or (column and column not in have):
            return set()
        parsed = [json.loads(k) for k in keys]
        wanted = pa.table(
            {
                "df_key": keys,
                **{f"k{i}": [None if p.get(c) is None else str(p.get(c)) for p in parsed]
                   for i, c in enumerate(pk)},  # fmt: skip
            }
        )
        con.register("df_keys", wanted)
        match = " AND ".join(
            f"CAST(s.{ident(c)} AS VARCHAR) = k.k{i}" for i, c in enumerate(pk)
        )
        cursor = f" AND s.{ident(column)} IS NOT NULL" if column else ""
        lids = ", ".join("?" for _ in load_ids)
        rows = con.execute(
            f"SELECT k.df_key, {f's.{ident(column)}' if column and nested else 'NULL'} "
            "FROM df_keys k "
            f"JOIN {STAGING_DATASET}.{ident(t.name)} s ON {match}{cursor} AND "
            f"s.{ident(LOAD_ID_COLUMN)} IN ({lids})",
            list(load_ids),
        ).fetchall()
        if not nested:
            return {r[0] for r in rows}
        return {key for key, doc in rows if _has_value_at(t.cursor or "", column or "", doc)}
    finally:
        con.close()


def document_column(path: str) -> str | None:
    """The top-level field a cursor JSONPath (``$.meta.updated``) starts with: the staged
    column holding its document as JSON text; None when the path starts otherwise."""
    from dlt.common.jsonpath import compile_path
    from jsonpath_ng import jsonpath as jp

    expr = compile_path(path)
    while isinstance(expr, jp.Child) and not isinstance(expr.left, jp.Root):
        expr = expr.left
    if isinstance(expr, jp.Child) and isinstance(expr.right, jp.Fields):
        return str(expr.right.fields[0])
    return None


def _has_value_at(path: str, column: str, document: Any) -> bool:
    """Whether a staged document (JSON text, or a value as staged) has a non-null value at
    ``path``, a JSONPath from the record's root whose first field is ``column``."""
    import json

    from dlt.common.jsonpath import find_values

    if document is None:
        return False
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:  # text that is not a document holds no field
            return False
    return any(v is not None for v in find_values(path, {column: document}))


def staging_naming(job: JobConfig, borrowed: Any = None) -> str:
    """The dlt naming convention of the job's staging: the one dlt recorded with the staged
    schema, else ``direct`` (names kept exactly) for a job that has staged nothing."""
    pipeline_dir = job_home(job.name) / "dlt" / f"{PIPELINE_PREFIX}{job.name}"
    return recorded_naming(staging_path(job.name), borrowed, pipeline_dir) or names.EXACT


def recorded_naming(
    staging: Path, borrowed: Any = None, pipeline_dir: Path | None = None
) -> str | None:
    """The naming convention dlt recorded for a job's staging: in the newest staged schema
    version (``raw._dlt_version``), else in the pipeline's local schema (the staging file
    was removed, dlt's working dir kept); None for a job that has staged nothing."""
    if staging.exists():
        con = read_staging(staging, borrowed)
        try:
            if staged_table_exists(con, "_dlt_version"):
                row = con.execute(
                    f"SELECT schema FROM {STAGING_DATASET}._dlt_version"
                    " ORDER BY inserted_at DESC LIMIT 1"
                ).fetchone()
                if row:
                    convention = (json.loads(row[0]).get("normalizers") or {}).get("names")
                    return str(convention or names.LEGACY)
        finally:
            con.close()
    if pipeline_dir is not None and (pipeline_dir / "schemas").is_dir():
        for path in sorted((pipeline_dir / "schemas").glob("*.schema.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            seen = any(
                not n.startswith("_dlt") and t.get("x-normalizer", {}).get("seen-data")
                for n, t in (doc.get("tables") or {}).items()
            )
            if seen:
                return str((doc.get("normalizers") or {}).get("names") or names.LEGACY)
    return None
