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
from deltaferry.duck import ARROW, duck_type, fetch_one, ident


def merge_into(con: duckdb.DuckDBPyConnection, t: TableConfig) -> Any:
    """``apply`` for ``admit_files``: merge each admitted file of one batch into ``t``'s
    table. Call it inside the batch's transaction, before its first file: a table that is
    absent or empty then (a first pull) has no stored row to compare, so each file's
    upserts are only inserted (``merge_rows(fresh=True)``), without the merge's joins,
    which would also read the rows the batch's earlier files inserted (a batch's keys are
    distinct, so no file of it replaces another's row)."""
    fresh = not duck.table_exists(con, t.name) or (
        fetch_one(con, f"SELECT 1 FROM {ident(t.name)} LIMIT 1") is None
    )
    return lambda data: merge_rows(con, t.name, list(t.primary_key), data, fresh=fresh)


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


def merge_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    pk: list[str],
    data: pa.Table,
    *,
    fresh: bool = False,
) -> None:
    """Merge a batch's rows into ``table`` (created, or widened by the columns the batch
    brings): a row replaces the stored one of its key only if its ``_seq`` is newer, a
    delete removes the key, an upsert of a key not stored is inserted. Applying the same
    rows again changes nothing. Inside the caller's transaction. ``fresh``: the table held
    no row when the batch began (``merge_into``), so the upserts are inserted and the
    deletes have nothing to remove; a key already stored is then a constraint error."""
    cols = [c for c in data.column_names if c != OP_COLUMN]
    if not duck.table_exists(con, table):
        defs = ", ".join(
            f"{ident(f.name)} {duck_type(f)}" for f in data.schema if f.name != OP_COLUMN
        )
        keys = ", ".join(ident(c) for c in pk)
        con.execute(f"CREATE TABLE {ident(table)} ({defs}, PRIMARY KEY ({keys}))")
    else:
        have = set(duck.columns(con, table))
        for f in data.schema:
            if f.name != OP_COLUMN and f.name not in have:
                con.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(f.name)} {duck_type(f)}")
    col_list = ", ".join(ident(c) for c in cols)
    if fresh:
        duck.with_arrow(
            con,
            data,
            f"INSERT INTO {ident(table)} ({col_list}) SELECT {col_list} FROM {ARROW}"
            f" WHERE {OP_COLUMN} = 'upsert'",
        )
        return
    # newer _seq wins. The keys this file shares with the table are found first (a join
    # whose hash table is built on the file's side), and the deletes and inserts join that
    # small set: a correlated EXISTS over the table made DuckDB hash every stored row
    keys = ", ".join(f"i.{ident(c)}" for c in pk)
    duck.with_arrow(
        con,
        data,
        f"CREATE OR REPLACE TEMP TABLE _deltaferry_stored AS SELECT {keys},"
        f" i.{SEQ_COLUMN} AS _incoming_seq, r.{SEQ_COLUMN} AS _stored_seq"
        f" FROM {ARROW} i JOIN {ident(table)} r ON {_match('r', 'i', pk)}",
    )
    con.execute(
        f"DELETE FROM {ident(table)} USING _deltaferry_stored s"
        f" WHERE {_match(ident(table), 's', pk)} AND s._incoming_seq > s._stored_seq"
    )
    duck.with_arrow(
        con,
        data,
        f"INSERT INTO {ident(table)} ({col_list}) SELECT"
        f" {', '.join('i.' + ident(c) for c in cols)} FROM {ARROW} i LEFT JOIN"
        f" (SELECT * FROM _deltaferry_stored WHERE _incoming_seq <= _stored_seq) s"
        f" ON {_match('s', 'i', pk)} WHERE s.{ident(pk[0])} IS NULL"
        f" AND i.{OP_COLUMN} = 'upsert'",
    )
    con.execute("DROP TABLE _deltaferry_stored")


def _match(a: str, b: str, pk: list[str]) -> str:
    """``a.k = b.k AND ...`` over the key columns."""
    return " AND ".join(f"{a}.{ident(c)} = {b}.{ident(c)}" for c in pk)
