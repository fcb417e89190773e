"""Applying a verified batch's rows to a replica table, inside the caller's transaction:
the single-producer merge rule (a newer ``_seq`` wins, deletes remove the key) and a
streamed batch admitted file by file through the reader's contract. Used by ``pull``
(``deltaferry/replica.py``) and by reading held rows again
(``deltaferry/reader_contract.py``)."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.config import TableConfig
from deltaferry.delta import OP_COLUMN, SEQ_COLUMN
from deltaferry.duck import ARROW, duck_type, ident


def merge_into(con: duckdb.DuckDBPyConnection, t: TableConfig) -> Any:
    """``apply`` for ``admit_files``: merge each admitted file into ``t``'s table."""
    return lambda data: merge_rows(con, t.name, list(t.primary_key), data)


def admit_files(
    con: duckdb.DuckDBPyConnection, vb: Any, reading: Any, producer: str | None, apply: Any
) -> tuple[int, str | None, int]:
    """Admit a streamed batch's files one at a time (the copy this reader reads) and hand
    each to ``apply``, inside the caller's transaction: (rows applied, the caution — the
    distinct cautions of its files, joined by ' | ' — or None, rows held back). Memory:
    one file."""
    copy, manifest = reading.copy_to_read(vb.batch, vb.manifest, producer)
    rows, held, cautions = 0, 0, []
    for part in vb.tables(copy):
        admitted = reading.admit(vb.batch, manifest, part, producer, None, con)
        apply(admitted.data)
        rows += admitted.data.num_rows
        held += admitted.held
        if admitted.caution and admitted.caution not in cautions:
            cautions.append(admitted.caution)
    return rows, " | ".join(cautions) or None, held


def merge_rows(con: duckdb.DuckDBPyConnection, table: str, pk: list[str], data: pa.Table) -> None:
    """Merge a batch's rows into ``table`` (created, or widened by the columns the batch
    brings): a row replaces the stored one of its key only if its ``_seq`` is newer, a
    delete removes the key, an upsert of a key not stored is inserted. Applying the same
    rows again changes nothing. Inside the caller's transaction."""
    cols = [c for c in data.column_names if c != OP_COLUMN]
    if not duck.table_exists(con, table):
        defs = ", ".join(
            f"{ident(f.name)} {duck_type(f)}" for f in data.schema if f.name != OP_COLUMN
        )
        con.execute(
            f"CREATE TABLE {ident(table)} ({defs}, PRIMARY KEY ({', '.join(ident(c) for c in pk)}))"
        )
    else:
        have = set(duck.columns(con, table))
        for f in data.schema:
            if f.name != OP_COLUMN and f.name not in have:
                con.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(f.name)} {duck_type(f)}")
    match = " AND ".join(f"r.{ident(c)} = i.{ident(c)}" for c in pk)
    # newer _seq wins: drop stored versions older than the incoming change, then insert upserts
    duck.with_arrow(
        con,
        data,
        f"DELETE FROM {ident(table)} r WHERE EXISTS (SELECT 1 FROM {ARROW} i WHERE {match}"
        f" AND i.{SEQ_COLUMN} > r.{SEQ_COLUMN})",
    )
    col_list = ", ".join(ident(c) for c in cols)
    duck.with_arrow(
        con,
        data,
        f"INSERT INTO {ident(table)} ({col_list}) SELECT"
        f" {', '.join('i.' + ident(c) for c in cols)} FROM {ARROW} i"
        f" WHERE i.{OP_COLUMN} = 'upsert' AND NOT EXISTS"
        f" (SELECT 1 FROM {ident(table)} r WHERE {match})",
    )
