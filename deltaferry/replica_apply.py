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
from deltaferry.duck import ARROW, duck_type, fetch_one, fetch_row, ident

BATCH_KEYS = "_deltaferry_batch_keys"

PLACEHOLDER = (
    "deltaferry: no batch of this table is applied yet (the lake holds none); its columns "
    "are the reader's contract's, and the first batch's own columns replace them"
)


_TEXT = {"str", "string", "string[python]", "string[pyarrow]"}


def create_placeholder(
    con: duckdb.DuckDBPyConnection, table: str, contract: Any, extra: list[tuple[str, str]]
) -> None:
    """Create ``table`` empty, for a table the lake holds no batch of (an empty source
    table): a reader's query finds no rows rather than no table. Its columns are the
    reader's ``contract``'s (``Contract.staged_types``: a ``Date`` column is ``DATE``; a
    column whose type cannot be derived, or that DuckDB has no type for, is left out) and ``extra`` ((name, DuckDB type) pairs, e.g. ``_seq BIGINT``).
    Marked by a table comment (``PLACEHOLDER``) so that the first batch applied replaces it
    (``replace_placeholder``) and the replica's columns are the lake's, as if no
    placeholder had been. In one transaction of its own."""
    types = contract.staged_types()
    defs = []
    for name in contract.columns:
        if name in types:
            try:
                defs.append(f"{ident(name)} {duck_type(pa.field(name, types[name]))}")
            except duckdb.Error:  # a type DuckDB has no column for (decimal256): left out
                pass
        elif str(contract.schema.columns[name].dtype) in _TEXT:  # pandas 2: text as objects
            defs.append(f"{ident(name)} VARCHAR")
    defs += [f"{ident(name)} {typ}" for name, typ in extra if name not in contract.columns]
    with duck.transaction(con):
        con.execute(f"CREATE TABLE {ident(table)} ({', '.join(defs)})")
        quoted = PLACEHOLDER.replace("'", "''")
        con.execute(f"COMMENT ON TABLE {ident(table)} IS '{quoted}'")


def is_placeholder(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """``table`` is a placeholder ``create_placeholder`` made (in the current database's
    main schema)."""
    row = fetch_one(
        con,
        "SELECT comment FROM duckdb_tables() WHERE database_name = current_database()"
        " AND schema_name = 'main' AND table_name = ?",
        [table],
    )
    return row is not None and row[0] == PLACEHOLDER


def replace_placeholder(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Drop ``table`` if it is a placeholder (inside the caller's transaction, so that a
    batch that does not commit leaves it as it was). True if dropped."""
    if not is_placeholder(con, table):
        return False
    con.execute(f"DROP TABLE {ident(table)}")
    return True


class BatchMerge:
    """``apply`` for ``admit_files``: merge each admitted file of one batch into ``t``'s
    table (``merge_rows``), and at the batch's end (``finish``, which ``admit_files``
    calls) check that no key came twice in it.

    Make it inside the batch's transaction, before its first file: a table that is absent
    or empty then (a first pull) has no stored row to compare, so each file's upserts are
    only inserted (``merge_rows(fresh=True)``), without the merge's joins, which would also
    read the rows the batch's earlier files inserted (a batch's keys are distinct, so no
    file of it replaces another's row).

    Replica tables have no PRIMARY KEY constraint: DuckDB pins a table's key index at every
    commit, and the index grows with the rows stored, not the batch (a pull of a 50M-row
    table stopped at 29M rows at the default 256MB). What the constraint guarded, a key
    twice in one batch, is checked here instead, on the batch's keys only (a temporary
    table: memory bounded by the batch): ``finish`` raises TerminalError naming job,
    table, batch and key, and the caller's transaction rolls the batch back."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, t: TableConfig, job: str, *, same_seq: bool = False
    ) -> None:
        self.con, self.t, self.job = con, t, job
        self.same_seq = same_seq  # see merge_rows
        self.fresh = not duck.table_exists(con, t.name) or (
            fetch_one(con, f"SELECT 1 FROM {ident(t.name)} LIMIT 1") is None
        )
        if self.fresh:  # an empty table may be a placeholder: the batch's columns replace it
            replace_placeholder(con, t.name)
        self._keys_table = False

    def __call__(self, data: pa.Table) -> None:
        pk = list(self.t.primary_key)
        merge_rows(self.con, self.t.name, pk, data, fresh=self.fresh, same_seq=self.same_seq)
        keys = ", ".join(ident(c) for c in pk)
        if not self._keys_table:
            duck.with_arrow(
                self.con,
                data,
                f"CREATE OR REPLACE TEMP TABLE {BATCH_KEYS} AS SELECT {keys} FROM {ARROW}",
            )
            self._keys_table = True
        else:
            duck.with_arrow(self.con, data, f"INSERT INTO {BATCH_KEYS} SELECT {keys} FROM {ARROW}")

    def finish(self, batch: int) -> None:
        """Raise TerminalError naming job, table, ``batch`` and the key if a key came twice."""
        if not self._keys_table:
            return
        keys = ", ".join(ident(c) for c in self.t.primary_key)
        repeated = fetch_one(
            self.con,
            f"SELECT {keys}, count(*) FROM {BATCH_KEYS} GROUP BY ALL HAVING count(*) > 1 LIMIT 1",
        )
        self.con.execute(f"DROP TABLE {BATCH_KEYS}")
        self._keys_table = False
        if repeated is not None:
            from deltaferry.errors import TerminalError

            shown = ", ".join(
                f"{c}={v!r}" for c, v in zip(self.t.primary_key, repeated[:-1], strict=True)
            )
            raise TerminalError(
                f"job '{self.job}' table '{self.t.name}' batch {batch}: the batch carries "
                f"key ({shown}) {repeated[-1]} times; a batch has each key at most once, so "
                "it was not applied (nothing of it is stored). The lake holds a batch no "
                "deltaferry producer writes: report it with the batch's manifest"
            )


def merge_into(
    con: duckdb.DuckDBPyConnection, t: TableConfig, job: str, *, same_seq: bool = False
) -> BatchMerge:
    """``BatchMerge(con, t, job, same_seq=...)``: see there."""
    return BatchMerge(con, t, job, same_seq=same_seq)


def admit_files(
    con: duckdb.DuckDBPyConnection, vb: Any, reading: Any, producer: str | None, apply: Any
) -> tuple[int, str | None, int]:
    """Admit a streamed batch's files one at a time (the copy this reader reads) and hand
    each to ``apply`` (a ``BatchMerge`` is then finished: its key check), inside the
    caller's transaction: (rows applied, the caution — the
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
        del part, admitted  # freed before the next file is fetched: memory holds one file
    if isinstance(apply, BatchMerge):
        apply.finish(vb.batch)
    return rows, " | ".join(cautions) or None, held


def merge_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    pk: list[str],
    data: pa.Table,
    *,
    fresh: bool = False,
    same_seq: bool = False,
) -> None:
    """Merge a batch's rows into ``table`` (created, or widened by the columns the batch
    brings): a row replaces the stored one of its key only if its ``_seq`` is newer (or,
    with ``same_seq``, as new: a batch read partially, read again in full), a delete
    removes the key, an upsert of a key not stored is inserted. Applying the same rows
    again changes nothing. Inside the caller's transaction, which ``duck.applying``
    runs: a column the batch brings wider raises ``duck.WidenFirst``. ``fresh``: the table held
    no row when the batch began (``merge_into``), so the upserts are inserted and the
    deletes have nothing to remove (a key twice in the batch: ``BatchMerge.finish``)."""
    cols = [c for c in data.column_names if c != OP_COLUMN]
    if not duck.table_exists(con, table):
        defs = ", ".join(
            f"{ident(f.name)} {duck_type(f)}" for f in data.schema if f.name != OP_COLUMN
        )
        # no PRIMARY KEY: see BatchMerge
        con.execute(f"CREATE TABLE {ident(table)} ({defs})")
    else:
        fields = [f for f in data.schema if f.name != OP_COLUMN]
        stored = duck.respell_columns(
            con, table, [f.name for f in fields], duck.column_types(con, table)
        )
        for f in fields:
            if f.name not in stored:
                con.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(f.name)} {duck_type(f)}")
        duck.widen_columns(con, table, data, stored)  # WidenFirst: see duck.applying
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
    newer = ">=" if same_seq else ">"
    replaced = fetch_row(
        con, f"SELECT count(*) FROM _deltaferry_stored WHERE _incoming_seq {newer} _stored_seq"
    )[0]
    if replaced:  # (none: no scan of the table) its marks pin memory until the file closes
        duck.fit_memory_limit(con, deleting=replaced)
        con.execute(
            # no alias that a table's own name could be (a table named `s`)
            f"DELETE FROM {ident(table)} USING _deltaferry_stored"
            f" WHERE {_match(ident(table), '_deltaferry_stored', pk)}"
            f" AND _deltaferry_stored._incoming_seq {newer} _deltaferry_stored._stored_seq"
        )
    duck.with_arrow(
        con,
        data,
        f"INSERT INTO {ident(table)} ({col_list}) SELECT"
        f" {', '.join('i.' + ident(c) for c in cols)} FROM {ARROW} i LEFT JOIN"
        f" (SELECT * FROM _deltaferry_stored WHERE NOT (_incoming_seq {newer} _stored_seq)) s"
        f" ON {_match('s', 'i', pk)} WHERE s.{ident(pk[0])} IS NULL"
        f" AND i.{OP_COLUMN} = 'upsert'",
    )
    con.execute("DROP TABLE _deltaferry_stored")


def _match(a: str, b: str, pk: list[str]) -> str:
    """``a.k = b.k AND ...`` over the key columns."""
    return " AND ".join(f"{a}.{ident(c)} = {b}.{ident(c)}" for c in pk)
