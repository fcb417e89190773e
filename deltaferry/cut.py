"""The cut: which staged rows a batch carries. Load ids not yet published, the staged rows
of those loads (and held rows due again) streamed from staging in fixed-size chunks, each
with its ``_op``; ``deltaferry/delta.py:build_delta`` turns the chunks into a batch. Reads
only (staging is written by the source, ``sources/load.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from deltaferry.config import TableConfig
from deltaferry.delta import OP_COLUMN, key_json
from deltaferry.duck import ident
from sources.columns import (
    DELETED_COLUMN,
    INTERNAL_COLUMNS,
    LOAD_ID_COLUMN,
    STAGING_DATASET,
)
from sources.staging import staged_columns


def new_load_ids(con: duckdb.DuckDBPyConnection, published: set[str]) -> list[str]:
    """Completed dlt loads not yet accounted for by this table's checkpoints, oldest first."""
    try:
        rows = con.execute(
            f"SELECT load_id FROM {STAGING_DATASET}._dlt_loads WHERE status = 0"
        ).fetchall()
    except duckdb.CatalogException:
        return []
    ids = [r[0] for r in rows if r[0] not in published]
    return sorted(ids, key=lambda s: tuple(int(x) for x in s.split(".")))


def delete_conditions(t: TableConfig, staged: list[str]) -> list[str]:
    """SQL conditions, any of which makes a staged row a delete (a tombstone, a soft delete)."""
    deleted = []
    if DELETED_COLUMN in staged:
        deleted.append(f"coalesce({ident(DELETED_COLUMN)}, false)")
    if t.soft_delete_column:
        deleted.append(f"{ident(t.soft_delete_column)} IS NOT NULL")
    return deleted


RELEASED_VIEW = "df_released"


def cut_where(
    con: duckdb.DuckDBPyConnection, t: TableConfig, load_ids: list[str], released: pa.Table | None
) -> tuple[str, list[Any]]:
    """The SQL condition (table aliased ``s``) and parameters that select the staged rows of
    a cut: rows last changed by one of ``load_ids``, and the staged rows named in
    ``released`` (key columns and load id: held rows due for re-validation, see
    ``released_rows``), registered on ``con`` for the query."""
    conds: list[str] = []
    if load_ids:
        conds.append(f"s.{ident(LOAD_ID_COLUMN)} IN ({', '.join('?' for _ in load_ids)})")
    if released is not None and released.num_rows:
        con.register(RELEASED_VIEW, released)
        match = " AND ".join(
            f"r.{ident(c)} IS NOT DISTINCT FROM s.{ident(c)}"
            for c in [*t.primary_key, LOAD_ID_COLUMN]
        )
        conds.append(f"EXISTS (SELECT 1 FROM {RELEASED_VIEW} r WHERE {match})")
    return " OR ".join(conds) or "false", list(load_ids)


def released_rows(
    con: duckdb.DuckDBPyConnection, t: TableConfig, held: list[tuple[str, str]]
) -> pa.Table | None:
    """The staged rows of held quarantine records ``(key JSON, load id)`` that are still
    staged as they were held (a key changed since has a newer load id: its new version is
    cut with the new loads), as key columns and load id; None when there are none."""
    if not held or not staged_columns(con, t.name):
        return None
    lids = sorted({lid for _, lid in held})
    want = set(held)
    cols = ", ".join(ident(c) for c in [*t.primary_key, LOAD_ID_COLUMN])
    rows = con.execute(
        f"SELECT {cols} FROM {STAGING_DATASET}.{ident(t.name)} WHERE {ident(LOAD_ID_COLUMN)} IN "
        f"({', '.join('?' for _ in lids)})",
        lids,
    ).fetch_arrow_table()
    keep = [
        i
        for i, rec in enumerate(rows.to_pylist())
        if (key_json(t, rec), rec[LOAD_ID_COLUMN]) in want
    ]
    return rows.take(pa.array(keep, pa.int64())) if keep else None


def read_changes(
    con: duckdb.DuckDBPyConnection,
    t: TableConfig,
    load_ids: list[str],
    chunk_rows: int,
    exclude: frozenset[str] = frozenset(),
    released: pa.Table | None = None,
) -> Iterator[pa.Table] | None:
    """Staged rows last changed by one of ``load_ids`` (and the held rows ``released``
    names, see ``cut_where``), ordered by primary key, with ``_op``, as consecutive tables
    of exactly ``chunk_rows`` rows (the last may be shorter).

    Streaming keeps memory bounded by the chunk, not the batch. The connection must stay
    open while the iterator is consumed.
    """
    cols = staged_columns(con, t.name)
    if not cols:
        return None
    data_cols = [c for c in cols if c not in INTERNAL_COLUMNS and c not in exclude]
    deleted = delete_conditions(t, cols)
    op = (
        f"CASE WHEN {' OR '.join(deleted)} THEN 'delete' ELSE 'upsert' END"
        if deleted
        else "'upsert'"
    )
    select = ", ".join(ident(c) for c in data_cols)
    order = ", ".join(ident(c) for c in t.primary_key)
    where, params = cut_where(con, t, load_ids, released)
    # execute() with parameters streams; the relation API with parameters was ~20x slower
    reader = con.execute(
        f"SELECT {select}, {op} AS {OP_COLUMN}, {ident(LOAD_ID_COLUMN)} FROM {STAGING_DATASET}.{ident(t.name)} s"
        f" WHERE {where} ORDER BY {order}",
        params,
    ).to_arrow_reader(min(chunk_rows, 1_000_000))
    return _exact_chunks(reader, chunk_rows)


def _exact_chunks(reader: pa.RecordBatchReader, n: int) -> Iterator[pa.Table]:
    # re-cut the reader's batches so chunk boundaries depend only on row positions:
    # the same rows must always give the same parts
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in reader:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        size += batch.num_rows
        while size >= n:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, n).combine_chunks()
            rest = table.slice(n)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending).combine_chunks()
