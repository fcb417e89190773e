"""The cut: which staged rows a batch carries. Load ids not yet published, the staged rows
of those loads (and held rows due again) streamed from staging in fixed-size chunks, each
with its ``_op``; ``deltaferry/delta.py:build_delta`` turns the chunks into a batch. Reads
only (staging is written by the source, ``sources/load.py``).

A cut larger than the job's ``max_batch_rows`` is published as several batches, each a
range of primary keys (``deltaferry/keyrange.py:KeyRange``): the rows are read in key order, a batch stops
after ``max_batch_rows`` of them, and the next batch starts after its last key. The range
is recorded in the batch's plan, so a rebuild reads the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.config import TableConfig
from deltaferry.delta import OP_COLUMN, key_json
from deltaferry.duck import ident
from deltaferry.keyrange import KeyRange
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
    """SQL conditions, any of which makes a staged row a delete (a tombstone, a soft delete).
    A soft-delete column staging does not have yet (no file of a drop carried it: drops
    without deletes) deletes nothing: every run failed on it with a bare BinderException."""
    deleted = []
    if DELETED_COLUMN in staged:
        deleted.append(f"coalesce({ident(DELETED_COLUMN)}, false)")
    if t.soft_delete_column and t.soft_delete_column in staged:
        deleted.append(f"{ident(t.soft_delete_column)} IS NOT NULL")
    return deleted


_FLAG_TYPES = ("BOOLEAN", *duck._INTEGERS, *duck._UNSIGNED)  # noqa: SLF001 - duck's type families


def _soft_delete_type(con: duckdb.DuckDBPyConnection, t: TableConfig, staged: list[str]) -> str:
    """The DuckDB type the table's soft-delete column is staged as ("" when there is none)."""
    soft = t.soft_delete_column
    if soft is None or soft not in staged:
        return ""
    return duck.column_types(con, t.name, STAGING_DATASET).get(soft, "")


def _check_soft_delete_type(t: TableConfig, kind: str) -> None:
    """ConfigError when the soft-delete column is staged (``kind``) as a boolean or an
    integer (a REST or file field ``deleted: false``, a 0/1 flag): a row with the column set
    (not NULL) is a delete, so every live row would be published as one (a fresh-user
    trial). SQL sources refuse such a column before reading (``sources.sql_database.types``)."""
    from deltaferry.errors import ConfigError

    soft = t.soft_delete_column
    if kind in _FLAG_TYPES:
        raise ConfigError(
            f"table '{t.name}': deletes = 'soft:{soft}' names a column staged as {kind}, but a "
            f"row with the soft-delete column set (not NULL) is a delete, so {soft} = false or "
            "0 would delete live rows; nothing of the table published. Name a field that is "
            "NULL (or absent) for live rows, such as a deleted-at time"
        )


def _check_soft_delete_text(
    con: duckdb.DuckDBPyConnection, t: TableConfig, where: str, params: list[Any], job: str
) -> None:
    """ContractViolation (the table stops, the job's other tables go on) naming how many rows
    and a key when rows of the cut (``where``) hold empty or blank text in the soft-delete
    column (staged as text): it is set (not NULL), so such a row was published as a delete,
    though an application writing ``''`` for "not deleted" means a live row (a fresh-user
    trial). Which it is, only the source can say; nothing of the table is published. Costs
    one pass over the cut's rows, not the table."""
    from deltaferry.errors import ContractViolation

    soft = str(t.soft_delete_column)
    blank = f"FROM {STAGING_DATASET}.{ident(t.name)} s WHERE ({where}) AND trim(s.{ident(soft)}) = ''"
    (count,) = duck.fetch_row(con, f"SELECT count(*) {blank}", params)
    if count:
        cols = ", ".join(f"s.{ident(c)}" for c in t.primary_key)
        first = duck.fetch_row(con, f"SELECT {cols} {blank} ORDER BY {cols} LIMIT 1", params)
        key = key_json(t, dict(zip(t.primary_key, first, strict=True)))
        raise ContractViolation(
            f"job '{job}' table '{t.name}': the soft-delete column {soft} holds empty or blank "
            f"text in {count} changed row(s), e.g. at key {key}: a row with the column set "
            "(not NULL) is a delete, and '' may mean a live row; nothing of this table "
            "published, the job's other tables go on. Store NULL for live rows, or sync a "
            f"view with NULLIF(trim({soft}), '') AS {soft}"
        )


RELEASED_VIEW = "df_released"
LAST_KEY_VIEW = "df_last_key"


def _key_compare(
    t: TableConfig,
    types: dict[str, str],
    columns: tuple[str, ...],
    values: tuple[str, ...],
    op: str,
) -> tuple[str, list[Any]]:
    """SQL (table aliased ``s``) comparing the row's key (``columns``, by name) with
    ``values`` in key order: ``op`` is ``>`` (strictly after) or ``<=`` (at or before).
    Keys are never NULL in staging (the sources hold NULL keys back), so plain comparisons
    order as ORDER BY."""
    cols = list(columns)
    if len(values) != len(cols):
        raise ValueError(
            f"table '{t.name}': a key bound {list(values)} does not match the key {cols}"
        )
    strict = ">" if op == ">" else "<"
    terms, params = [], []
    for i, c in enumerate(cols):
        eqs = [f"s.{ident(k)} = CAST(? AS {types[k]})" for k in cols[:i]]
        last = f"s.{ident(c)} {strict} CAST(? AS {types[c]})"
        terms.append("(" + " AND ".join([*eqs, last]) + ")")
        params += [*values[:i], values[i]]
    if op == "<=":  # at or before: before, or equal on every column
        terms.append(
            "(" + " AND ".join(f"s.{ident(k)} = CAST(? AS {types[k]})" for k in cols) + ")"
        )
        params += list(values)
    return "(" + " OR ".join(terms) + ")", params


def cut_where(
    con: duckdb.DuckDBPyConnection,
    t: TableConfig,
    load_ids: list[str],
    released: pa.Table | None,
    keys: KeyRange = KeyRange(),
) -> tuple[str, list[Any]]:
    """The SQL condition (table aliased ``s``) and parameters that select the staged rows of
    a cut: rows last changed by one of ``load_ids``, and the staged rows named in
    ``released`` (key columns and load id: held rows due for re-validation, see
    ``released_rows``), registered on ``con`` for the query; of those, the keys in
    ``keys``."""
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
    where, params = " OR ".join(conds) or "false", list(load_ids)
    if keys.whole:
        return where, params
    types = duck.column_types(con, t.name, STAGING_DATASET)
    bounds = [where]
    columns = keys.columns or tuple(t.primary_key)
    for values, op in ((keys.after, ">"), (keys.through, "<=")):
        if values is not None:
            cond, more = _key_compare(t, types, columns, values, op)
            bounds.append(cond)
            params += more
    return " AND ".join(f"({b})" for b in bounds), params


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


class Changes:
    """The rows of a cut, iterated as consecutive tables of exactly ``chunk_rows`` rows
    (the last may be shorter), at most ``limit`` rows in all (None: every row). Once
    iterated, ``through`` is the range's end when the limit stopped it (the last key read,
    see ``KeyRange``), else the end of the range asked for (None: the cut's rows ran out)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        t: TableConfig,
        reader: pa.RecordBatchReader,
        chunk_rows: int,
        limit: int | None,
        keys: KeyRange,
    ) -> None:
        self._con, self._t, self._reader = con, t, reader
        self._chunk_rows, self._limit, self._keys = chunk_rows, limit, keys
        self.through: tuple[str, ...] | None = keys.through

    @property
    def limit(self) -> int | None:
        """At most this many rows are iterated (None: every row of the cut)."""
        return self._limit

    @property
    def keys(self) -> KeyRange:
        """The range of keys the rows iterated so far stand for: the range asked for,
        ended at ``through`` when the limit stopped it."""
        return KeyRange(self._keys.after, self.through, tuple(self._t.primary_key))

    def __iter__(self) -> Iterator[pa.Table]:
        # No chunk is referenced here once it was handed on (only a copy of its last row,
        # ``take`` makes new buffers where a slice would keep the chunk's): the consumer's
        # chunk is freed before the next one is read, so a cut holds one chunk at a time
        # (bench/README.md, "The plan step holds one chunk"). The key's text is made only
        # at the end: a query on the connection ends the stream being read.
        taken = 0
        last: pa.Table | None = None  # the last row handed on
        for chunk in _exact_chunks(self._reader, self._chunk_rows):
            if self._limit is not None and taken + chunk.num_rows > self._limit:
                keep = self._limit - taken
                if keep > 0:
                    chunk = chunk.slice(0, keep)
                    last = chunk.take([keep - 1])
                    yield chunk
                    del chunk
                if last is not None:  # the limit stopped the cut: the next batch goes on
                    self.through = self._key_text(last)
                return
            taken += chunk.num_rows
            last = chunk.take([chunk.num_rows - 1])
            yield chunk
            del chunk

    def close(self) -> None:
        """Let go of the query's stream. A stream left open (a cut stopped at its limit, or
        a step that failed after the cut) keeps the staging database open in this process
        after its connection closed, and the next connection to it waits until the stream
        is freed: for a failed run, as long as its exception is kept (found by the
        simulator: the next run in the same process hung)."""
        self._reader.close()

    def _key_text(self, row: pa.Table) -> tuple[str, ...]:
        cols = list(self._t.primary_key)
        self._con.register(LAST_KEY_VIEW, row.select(cols))
        try:
            found = self._con.execute(
                "SELECT "
                + ", ".join(f"CAST({ident(c)} AS VARCHAR)" for c in cols)
                + f" FROM {LAST_KEY_VIEW}"
            ).fetchone()
        finally:
            self._con.unregister(LAST_KEY_VIEW)
        assert found is not None
        return tuple(found)


def read_changes(
    con: duckdb.DuckDBPyConnection,
    t: TableConfig,
    load_ids: list[str],
    chunk_rows: int,
    exclude: frozenset[str] = frozenset(),
    released: pa.Table | None = None,
    keys: KeyRange = KeyRange(),
    limit: int | None = None,
    job: str = "",
) -> Changes | None:
    """Staged rows last changed by one of ``load_ids`` (and the held rows ``released``
    names), of the keys in ``keys`` (see ``cut_where``), ordered by primary key, with
    ``_op``, as consecutive tables of exactly ``chunk_rows`` rows (the last may be
    shorter); at most ``limit`` rows (``Changes.through`` then says where they stopped).
    ``job`` names the job in a refusal.

    Streaming keeps memory bounded by the chunk, not the batch. The connection must stay
    open while the iterator is consumed.
    """
    cols = staged_columns(con, t.name)
    if not cols:
        return None
    data_cols = [c for c in cols if c not in INTERNAL_COLUMNS and c not in exclude]
    soft_type = _soft_delete_type(con, t, cols)
    _check_soft_delete_type(t, soft_type)
    deleted = delete_conditions(t, cols)
    op = (
        f"CASE WHEN {' OR '.join(deleted)} THEN 'delete' ELSE 'upsert' END"
        if deleted
        else "'upsert'"
    )
    select = ", ".join(ident(c) for c in data_cols)
    order = ", ".join(ident(c) for c in t.primary_key)
    where, params = cut_where(con, t, load_ids, released, keys)
    if soft_type == "VARCHAR":
        _check_soft_delete_text(con, t, where, params, job)
    if limit is not None and (keys.columns or tuple(t.primary_key)) == tuple(t.primary_key):
        # The range is first ended at the key one row past the limit, found on the key
        # columns alone; the rows are then read with that end as a filter. The same rows
        # as the bare LIMIT below, but the sort holds at most limit + 1 whole rows instead
        # of a top-N over every staged row after the range's start (a split initial load
        # of 50M rows: about 13 s a batch, growing with the table).
        end = _key_at(con, t, where, params, limit)
        if end is not None:
            narrowed = KeyRange(keys.after, end, tuple(t.primary_key))
            where, params = cut_where(con, t, load_ids, released, narrowed)
    # one row past the limit says whether the cut goes on
    bound = f" LIMIT {limit + 1}" if limit is not None else ""
    # execute() with parameters streams; the relation API with parameters was ~20x slower
    reader = con.execute(
        f"SELECT {select}, {op} AS {OP_COLUMN}, {ident(LOAD_ID_COLUMN)} FROM {STAGING_DATASET}.{ident(t.name)} s"
        f" WHERE {where} ORDER BY {order}{bound}",
        params,
    ).to_arrow_reader(min(chunk_rows, 1_000_000))
    return Changes(con, t, reader, chunk_rows, limit, keys)


def _key_at(
    con: duckdb.DuckDBPyConnection, t: TableConfig, where: str, params: list[Any], offset: int
) -> tuple[str, ...] | None:
    """The key (as ``Changes`` records it: each column cast to text) of the row at position
    ``offset`` (from 0) in key order among the staged rows ``where`` selects; None when
    there are not that many."""
    # The key columns are sorted as they are and only the one row found is cast to text:
    # with the cast in the sorted select, DuckDB sorted the text of every row read (a
    # 1M-row batch of a 10M-row staged table: 423 against 240 MiB for this query alone,
    # the peak of every batch's plan step; bench/README.md, "The cut's key lookup, and a
    # pull that lets go of its cache").
    keys = [ident(c) for c in t.primary_key]
    row = duck.fetch_one(
        con,
        f"SELECT {', '.join(f'CAST({k} AS VARCHAR)' for k in keys)} FROM (SELECT "
        f"{', '.join(f's.{k}' for k in keys)} FROM {STAGING_DATASET}.{ident(t.name)} s "
        f"WHERE {where} ORDER BY {', '.join(f's.{k}' for k in keys)} LIMIT 1 "
        f"OFFSET {int(offset)})",
        params,
    )
    return tuple(row) if row is not None else None


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
        del batch
        while size >= n:
            table = pa.Table.from_batches(pending)
            head = table.slice(0, n).combine_chunks()
            rest = table.slice(n)
            pending, size = rest.to_batches(), rest.num_rows
            del table, rest
            yield head
            del head  # the consumer's chunk, not kept while the next is read
    if size:
        yield pa.Table.from_batches(pending).combine_chunks()
