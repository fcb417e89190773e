"""DuckDB helpers: opening (optionally encrypted) database files, and small queries.

When ``DELTAFERRY_DUCKDB_KEY`` is set, the job's staging, state and replica files are
encrypted at rest with it (DuckDB's ``ATTACH ... (ENCRYPTION_KEY ...)``). DuckDB writes
encrypted files only with the httpfs extension (OpenSSL) loaded; it is loaded from the
``duckdb-extension-httpfs`` package, never downloaded. Without the key, an encrypted
file does not open.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from deltaferry.errors import ConfigError, TerminalError
from deltaferry.settings import env_name, from_env, size_bytes

KEY_ENV = env_name("duckdb_key")

_log = logging.getLogger("deltaferry.replica")
T = TypeVar("T")


def fetch_one(
    con: duckdb.DuckDBPyConnection, sql: str, params: Any = None
) -> tuple[Any, ...] | None:
    """First row of a query, with the result fully consumed (DuckDB refuses some other work
    on a connection while a result is unfinished)."""
    rows = (
        con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()
    )
    return rows[0] if rows else None


def fetch_row(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate without GROUP BY:
    ``count(*)``, ``max(x)``); a query that returns none is a bug, raised as such."""
    row = fetch_one(con, sql, params)
    if row is None:
        raise RuntimeError(f"query returned no row: {sql}")
    return row


def duck_type(field: pa.Field) -> str:
    """The DuckDB column type DuckDB gives an Arrow ``field`` (for CREATE / ALTER TABLE),
    e.g. ``BIGINT``, ``TIMESTAMP WITH TIME ZONE``, ``DECIMAL(38,0)``."""
    return _duck_type(field.type)


@functools.lru_cache(maxsize=512)
def _duck_type(arrow_type: pa.DataType) -> str:
    # asked of an in-memory database made for it (about 10 ms, so once a type a process)
    con = duckdb.connect()
    try:
        con.register("t", pa.table({"c": pa.array([], arrow_type)}))
        return fetch_row(con, "SELECT column_type FROM (DESCRIBE SELECT * FROM t)")[0]
    finally:
        con.close()


ARROW = "_deltaferry_arrow"


def with_arrow(
    con: duckdb.DuckDBPyConnection, data: pa.Table, sql: str, params: Any = None
) -> duckdb.DuckDBPyConnection:
    """Execute ``sql`` (its result is ``con``'s to fetch) with the Arrow table ``data``
    readable as ``_deltaferry_arrow`` (``ARROW``). DuckDB finds it by a replacement scan of
    this frame's local variable, not by ``register``: a registered object stays referenced
    by the open transaction until it ends, even after ``unregister``, so a batch applied
    file by file in one transaction would keep every file in memory; this keeps ``data``
    only for the statement. (A table of that name would take precedence: none is made.)"""
    _deltaferry_arrow = data  # noqa: F841 - read by DuckDB's replacement scan, by name
    return con.execute(sql, params) if params is not None else con.execute(sql)


def ident(name: str) -> str:
    """``name`` as a DuckDB quoted identifier, for a table, column or schema name in SQL text:
    ``order id`` -> ``"order id"``, ``a"b`` -> ``"a""b"`` (embedded quotes doubled). Any
    string is kept exactly (case, spaces, dots, non-ASCII, keywords); never raises."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """``text`` as a SQL string literal: ``it's`` -> ``'it''s'`` (embedded quotes doubled).
    For SQL text that cannot take a parameter (DDL, ``ATTACH``, a view's text)."""
    return "'" + text.replace("'", "''") + "'"


def _in_current(name: str, table: str, schema: str | None) -> tuple[str, list[str]]:
    """The condition (and its parameters) selecting ``table`` of the current database, in
    ``schema`` or any schema, from DuckDB's catalog functions (``duckdb_columns()``,
    ``duckdb_tables()``: ``name`` is the column holding the table's name). They give what
    ``information_schema`` gives (the same ``data_type`` text) at a fraction of the cost:
    ``information_schema.columns`` is a view over every database's catalog, about 7 ms a
    lookup in a file with 20 tables against about 1 ms."""
    where = f"{name} = ? AND database_name = current_database()"
    if schema is None:
        return where, [table]
    return where + " AND schema_name = ?", [table, schema]


def _column_rows(
    con: duckdb.DuckDBPyConnection, table: str, schema: str | None
) -> list[tuple[str, str]]:
    where, params = _in_current("table_name", table, schema)
    return con.execute(
        f"SELECT column_name, data_type FROM duckdb_columns() WHERE {where} ORDER BY column_index",
        params,
    ).fetchall()


def table_exists(con: duckdb.DuckDBPyConnection, table: str, schema: str | None = "main") -> bool:
    """Whether the connection's current database has a table or view ``table`` in
    ``schema`` (in any schema when ``schema`` is None).

    Only the current database (``current_database()``) counts: with an encryption key the
    file is attached and made current, and the empty in-memory database beside it, the
    ``system`` and ``temp`` catalogs and other attached files are not looked at. ``table``
    is the plain name (not quoted), compared with the stored name as it is (case
    included). DuckDB errors (a closed connection) propagate."""
    tables, params = _in_current("table_name", table, schema)
    views, _ = _in_current("view_name", table, schema)
    found = fetch_one(
        con,
        f"SELECT (SELECT count(*) FROM duckdb_tables() WHERE {tables})"
        f" + (SELECT count(*) FROM duckdb_views() WHERE {views})",
        params + params,
    )
    return bool(found[0]) if found else False


def columns(con: duckdb.DuckDBPyConnection, table: str, schema: str | None = "main") -> list[str]:
    """The column names of ``table`` in ``schema`` (any schema when None) of the current
    database, in table order (``ordinal_position``); ``[]`` when there is no such table.
    Looked up as in ``table_exists``."""
    return [name for name, _ in _column_rows(con, table, schema)]


def add_columns(con: duckdb.DuckDBPyConnection, table: str, wanted: dict[str, str]) -> None:
    """Add to ``table`` the columns of ``wanted`` (name -> SQL type) it lacks (a file made by
    an older version), then CHECKPOINT so the change is not left in the write-ahead log.

    DuckDB 1.5.5 cannot replay an ``ADD COLUMN`` of a table that has a ``DEFAULT
    current_timestamp`` column (``Failure while replaying WAL file …: Calling
    DatabaseManager::GetDefaultDatabase with no default database set``): a process killed
    before the next checkpoint left a file no connection could open. So the ALTER runs only
    when a column is missing, never as an ``IF NOT EXISTS`` no-op that is logged anyway."""
    have = set(columns(con, table))
    missing = {name: typ for name, typ in wanted.items() if name not in have}
    for name, typ in missing.items():
        con.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(name)} {typ}")
    if missing:
        con.execute("CHECKPOINT")


def respell_columns(
    con: duckdb.DuckDBPyConnection, table: str, incoming: list[str], stored: dict[str, str]
) -> dict[str, str]:
    """Rename the columns of ``table`` (``stored``: name -> type) that an ``incoming`` name
    spells in another case only (a source column renamed ``name`` to ``Name`` and its
    table staged anew, as the refusal of the rename advises) to the incoming spelling;
    returns ``stored`` as it is now. DuckDB does not tell the two apart, so adding the new
    spelling failed ("Column with name Name already exists") on every pull, into an old
    replica and a new one alike; the values stay in their column."""
    folded = {n.casefold(): n for n in stored}
    renamed = dict(stored)
    for name in incoming:
        old = folded.get(name.casefold())
        if old is not None and old != name and name not in renamed:
            con.execute(f"ALTER TABLE {ident(table)} RENAME COLUMN {ident(old)} TO {ident(name)}")
            renamed = {name if n == old else n: t for n, t in renamed.items()}
    return renamed


_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
_UNSIGNED = ("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")
_NAIVE_TIMES = ("DATE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP")  # not _NS: see below
_ZONED = "TIMESTAMP WITH TIME ZONE"
_DECIMAL = re.compile(r"DECIMAL\((\d+),(\d+)\)")


@functools.lru_cache(maxsize=256)
def supertype(a: str, b: str) -> str:
    """The DuckDB type both ``a`` and ``b`` (DuckDB type names, as ``column_types`` gives
    them) cast to, as DuckDB's own rules pick it (the type of a ``UNION`` of the two);
    ``a`` when DuckDB has none."""
    con = duckdb.connect()
    try:
        row = fetch_one(con, f"SELECT typeof(x) FROM (SELECT NULL::{a} AS x UNION ALL SELECT NULL::{b})")
        return str(row[0]) if row else a
    except duckdb.Error:
        return a
    finally:
        con.close()


def widens(stored: str, to: str) -> bool:
    """Whether every value of a ``stored`` column keeps its value as ``to``: a wider
    integer, a float as a double, an integer of at most 32 bits as a double, a decimal with
    as many integer and fraction digits or more, a date or coarser timestamp as a finer
    naive timestamp of at most microseconds, a naive timestamp as a zoned one (naive values
    are UTC wall time here), a number or boolean as text. Anything else (a double as an
    integer, a decimal rounded to a smaller scale, a time of day as a timestamp) is not."""
    if stored == to:
        return False
    for ladder in (_INTEGERS, _UNSIGNED, _NAIVE_TIMES):
        if stored in ladder and to in ladder:
            return ladder.index(to) > ladder.index(stored)
    if stored in _UNSIGNED and to in _INTEGERS:
        return _INTEGERS.index(to) > _UNSIGNED.index(stored)
    if to == "DOUBLE":
        return stored == "FLOAT" or stored in _INTEGERS[:3] or stored in _UNSIGNED[:3]
    a, b = _DECIMAL.fullmatch(stored), _DECIMAL.fullmatch(to)
    if a and b:
        (p1, s1), (p2, s2) = (int(x) for x in a.groups()), (int(x) for x in b.groups())
        return s2 >= s1 and p2 - s2 >= p1 - s1
    if to == _ZONED:
        return stored in _NAIVE_TIMES
    if to == "VARCHAR":
        return stored in _INTEGERS or stored in _UNSIGNED or stored == "BOOLEAN" or bool(a)
    return False


_NUMBERS = (*_INTEGERS, *_UNSIGNED, "DECIMAL")
_TIMES = ("DATE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP", "TIMESTAMP_NS")


def _plain(x: str) -> str:
    # a number's text without trailing fraction zeros ('1.50' and '1.5', '40.0' and '40')
    return f"CASE WHEN contains({x}, '.') THEN rtrim(rtrim({x}, '0'), '.') ELSE {x} END"


_NS_RANGE = ("1677-09-22", "2262-04-11")  # what TIMESTAMP_NS holds (whole days inside)


def _try_cast(x: str, to: str) -> str:
    """``TRY_CAST(x AS to)``, NULL outside TIMESTAMP_NS's range (DuckDB's TRY_CAST of a
    timestamp beyond it raises instead)."""
    if to != "TIMESTAMP_NS":
        return f"TRY_CAST({x} AS {to})"
    lo, hi = _NS_RANGE
    return (
        f"CASE WHEN TRY_CAST({x} AS TIMESTAMP) BETWEEN TIMESTAMP '{lo}' AND TIMESTAMP '{hi}'"
        f" THEN TRY_CAST({x} AS TIMESTAMP_NS) END"
    )


# a fraction digit beyond microseconds that is not zero
_FINER = "regexp_matches(v, '\\.[0-9]{6}[0-9]*[1-9]')"
_ZONED_TEXT = "regexp_matches(v, '(?i)(z|utc|gmt|[+-][0-9][0-9](:?[0-9][0-9])?)\\s*$')"


def _text_same(staged: str) -> str:
    """A SQL condition on text ``v`` and ``c``, its ``TRY_CAST`` to ``staged``: true when
    ``c`` is the value the text says, as written. A number or boolean: the text is the
    value's own text, but for trailing fraction zeros ('40', '1.50' into DECIMAL(5,2),
    '2.5', 'true'; not '007', '+5', ' 40 ', '1e3', '1_000', 'T', '1.5' into BIGINT,
    '9007199254740993' into DOUBLE, '1e400'). A date or time: digits first (not 'epoch',
    'infinity'), the timestamp it reads as equals the staged value, and no fraction digit
    beyond microseconds is dropped (not '2024-01-01 10:00' into DATE, not a seventh
    fraction digit); into a zoned column only text with its offset (naive text's zone is
    the job's, which this does not know). Text into BLOB: its UTF-8 bytes. Any other
    staged type (UUID, INTERVAL, ...): not held (its text form would be normalised)."""
    if staged.startswith(_NUMBERS) or staged in ("FLOAT", "DOUBLE", "BOOLEAN"):
        return f"{_plain('v')} = {_plain('CAST(c AS VARCHAR)')}"
    digits = "regexp_matches(v, '^\\s*[0-9]')"
    if staged in _TIMES:
        return f"{digits} AND TRY_CAST(v AS TIMESTAMP) = TRY_CAST(c AS TIMESTAMP) AND NOT {_FINER}"
    if staged == _ZONED:
        return f"{digits} AND {_ZONED_TEXT} AND NOT {_FINER}"
    if staged == "TIME":
        return f"{digits} AND NOT {_FINER}"
    if staged == "BLOB":
        return "encode(v) = c"
    return "false"


def split_exact(
    values: pa.ChunkedArray | pa.Array,
    staged: str,
    incoming: str,
    con: duckdb.DuckDBPyConnection | None = None,
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """``values`` (of DuckDB type ``incoming``) split in two, as long as ``values``: those a
    column of DuckDB type ``staged`` holds exactly, cast to it (NULL elsewhere), and the
    others, as they are (NULL elsewhere). Exactly: DuckDB's ``TRY_CAST`` to ``staged`` and
    back gives the same value (a time of day into DATE, 1.5 into BIGINT, 2**53 + 1 into
    DOUBLE, 1.239 into DECIMAL(10,2) do not); text must say the value as written
    (``'40'`` into BIGINT is 40; ``'1.5'``, ``'007'``, ``'1e3'`` are not: ``_text_same``).
    Times are compared in UTC: a naive time is UTC wall time. Runs on ``con`` (its
    TimeZone set to UTC; a caller splitting many chunks keeps one), else on an in-memory
    DuckDB of its own."""
    if con is None:
        with duckdb.connect(config={"threads": 1}) as own:
            return split_exact(values, staged, incoming, own)
    con.execute("SET TimeZone = 'UTC'")
    if incoming == "VARCHAR":
        same = _text_same(staged)
    else:
        same = f"{_try_cast('c', incoming)} = v"
    con.register("col_", pa.table({"v": values}))
    try:
        out = con.execute(
            f"SELECT CASE WHEN ok THEN c END AS base, CASE WHEN v IS NOT NULL AND NOT ok"
            f" THEN v END AS variant FROM (SELECT v, c, c IS NOT NULL AND"
            f" coalesce({same}, false) AS ok FROM (SELECT v, {_try_cast('v', staged)} AS c"
            f" FROM col_))"
        ).fetch_arrow_table()
    finally:
        con.unregister("col_")
    return out["base"], out["variant"]


class TypeConflict(TerminalError):
    """A batch's column values a replica column does not hold exactly, and no type holds
    both (``widen_columns``): ``column``, its stored type ``have``, the batch's
    ``incoming`` type and one ``example`` value."""

    column: str = ""
    have: str = ""
    incoming: str = ""
    example: Any = None


class WidenFirst(Exception):
    """A batch being applied needs columns of ``table`` widened first (``widen_columns``).
    DuckDB cannot commit an ``ALTER`` of a table that the same transaction has already
    deleted from or updated (``another transaction has altered this table``), so the caller
    rolls the batch back, ``applying`` widens the columns in a transaction of their own
    (every stored value keeps its value: safe alone) and applies the batch again."""

    def __init__(self, table: str, alters: list[tuple[str, str, str]]) -> None:
        self.table, self.alters = table, alters  # (column, stored type, wider type)
        super().__init__(
            f"table '{table}' needs wider columns first: "
            + "; ".join(f"{c}: {a} -> {b}" for c, a, b in alters)
        )


def widen_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    data: pa.Table,
    stored: dict[str, str],
    keep: Any = (),
) -> None:
    """Make sure ``table``'s columns (their ``stored`` types, from ``column_types``) hold the
    incoming rows' values (``data``, Arrow; a column ``table`` lacks is skipped) exactly,
    inside the caller's transaction on ``con``. Without this a replica's column kept the
    type of the first batch applied and a later batch's values were cast into it (a DATE
    column cut a later batch's times to the day; a BIGINT column stored 1.5 as 2).

    - Incoming values whose type the stored type holds (``widens``: int32 into BIGINT) are
      left to the insert.
    - The column is widened to DuckDB's common type of the two (``supertype``; a
      nanosecond timestamp to microseconds only: a nanosecond column holds 1677-2262) when
      every stored value keeps its value as it by type (``widens``: DATE to TIMESTAMP).
    - Else incoming values the stored type holds one by one (``split_exact``: whole doubles
      into BIGINT) are left to the insert.
    - Else an integer column is widened to the common type when it holds the incoming
      values and the stored ones exactly (BIGINT to DOUBLE below 2**53: one scan of the
      column, at a type change only; never a DECIMAL to DOUBLE). A widening raises
      ``WidenFirst`` (DuckDB cannot alter a table its transaction has written:
      ``applying``).
    - Else (a column under a PRIMARY KEY, ``keep``, which DuckDB cannot alter; or no type
      holds both exactly) ``TypeConflict`` naming table, column, both types and a value:
      nothing of the batch is applied (its transaction rolls back; ``over_limit`` names
      the job and batch)."""
    alters = []
    for f in data.schema:
        have = stored.get(f.name)
        incoming = duck_type(f)
        if have is None or incoming == have or widens(incoming, have) or pa.types.is_null(f.type):
            continue
        to = supertype(have, incoming)
        if to == "TIMESTAMP_NS":  # microseconds at most (the range), as producers publish
            to = "TIMESTAMP" if have in _NAIVE_TIMES[:3] else have
        alter = f.name not in keep and to != have
        if alter and widens(have, to):
            alters.append((f.name, have, to))
            continue
        _, inexact = split_exact(data[f.name], have, incoming)
        if inexact.null_count == len(inexact):
            continue  # every value fits as it is (1.0 and 2.0 into BIGINT)
        fits = have in _INTEGERS or have in _UNSIGNED  # not DECIMAL -> DOUBLE: money
        if alter and fits and split_exact(data[f.name], to, incoming)[1].null_count == len(inexact):
            if not _lossy(con, table, f.name, have, to):
                alters.append((f.name, have, to))
                continue
        first = next(v for v in inexact.to_pylist() if v is not None)
        why = "it is under the table's primary key" if f.name in keep else (
            f"no type holds both exactly ({to} would change stored or incoming values)"
        )
        conflict = TypeConflict(
            f"table '{table}' column '{f.name}' is {have} in the replica and the batch "
            f"brings {incoming} values it does not hold exactly (e.g. {first!r}); {why}: "
            f"nothing of the batch was applied. The lake holds the column as different "
            f"types (producers, or batches before a reset): type it in the table's contract so "
            f"every producer publishes one type (batches already published keep theirs)"
        )
        conflict.column, conflict.have, conflict.incoming = f.name, have, incoming
        conflict.example = first
        raise conflict
    if alters:
        raise WidenFirst(table, alters)


def _lossy(con: duckdb.DuckDBPyConnection, table: str, column: str, have: str, to: str) -> bool:
    """Whether a stored value of ``table.column`` (type ``have``) would change as ``to``."""
    c = ident(column)
    row = fetch_one(
        con,
        f"SELECT count(*) FROM {ident(table)} WHERE {c} IS NOT NULL AND coalesce("
        f"TRY_CAST(TRY_CAST({c} AS {to}) AS {have}) = {c}, false) = false",
    )
    return bool(row and row[0])


def widen(con: duckdb.DuckDBPyConnection, need: WidenFirst) -> None:
    """Alter the columns ``need`` names, in a transaction of their own (none may be open),
    naive timestamps becoming zoned in UTC (the connection's TimeZone is set to UTC: naive
    values are UTC wall time here). Logged as a warning naming table, column and types."""
    if any(b == _ZONED for _, _, b in need.alters):
        con.execute("SET TimeZone = 'UTC'")
    with transaction(con):
        for column, _, to in need.alters:
            con.execute(
                f"ALTER TABLE {ident(need.table)} ALTER COLUMN {ident(column)} SET DATA TYPE {to}"
            )
    _log.warning("replica columns widened for a batch's values: %s", need)


def applying(con: duckdb.DuckDBPyConnection, apply: Callable[[], T]) -> T:
    """``apply()`` (which runs its own transaction and rolls it back on an exception),
    again after widening the columns it asks for (``WidenFirst``). Each widening makes a
    column strictly wider, so this ends; a batch asks for at most a few."""
    for _ in range(16):
        try:
            return apply()
        except WidenFirst as need:
            widen(con, need)
    return apply()


def column_types(
    con: duckdb.DuckDBPyConnection, table: str, schema: str | None = "main"
) -> dict[str, str]:
    """``{column name: DuckDB type}`` of ``table`` (``data_type`` of
    ``duckdb_columns()``, as ``information_schema.columns`` gives it, e.g. ``BIGINT``, ``VARCHAR``, ``TIMESTAMP WITH TIME
    ZONE``), in table order; ``{}`` when there is no such table. Looked up as in
    ``table_exists``."""
    return dict(_column_rows(con, table, schema))


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN; COMMIT when the block ends, ``rollback`` when it raises (anything)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back ``con``'s open transaction; nothing when a failed COMMIT already ended it
    (DuckDB then has no transaction, and ROLLBACK would raise over the commit's error)."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass


def over_limit(e: BaseException, where: str) -> BaseException:
    """``e`` as the error a batch's apply raises at ``where`` (job, table, batch): a
    ``TypeConflict`` naming ``where``; DuckDB running out of its memory limit
    (``OutOfMemoryException``, or a commit that could not pin a block: a batch's
    primary-key index must fit in memory at its commit) as a one-line TerminalError naming
    ``DELTAFERRY_DUCKDB_MEMORY_LIMIT``; else ``e`` itself."""
    text = str(e)
    if isinstance(e, TypeConflict):
        return TerminalError(f"{where}: {text}")
    if isinstance(e, duckdb.OutOfMemoryException) or (
        isinstance(e, duckdb.Error) and "failed to pin block" in text
    ):
        first = text.splitlines()[0] if text else type(e).__name__
        return TerminalError(
            f"{where}: DuckDB ran out of its memory limit ({first}); nothing of the batch was "
            f"applied. Raise {env_name('duckdb_memory_limit')} (now "
            f"{from_env().duckdb_memory_limit}) and pull again"
        )
    return e


def encryption_key() -> str | None:
    """The configured encryption key, or None. Never log the result."""
    key = from_env().duckdb_key
    return key.get_secret_value() if key else None


def _httpfs_path() -> Path:
    try:
        import duckdb_extension_httpfs as package
    except ImportError:
        raise ConfigError(
            f"{KEY_ENV} is set but the duckdb-extension-httpfs package is not installed"
        ) from None
    found = sorted(Path(package.__file__).parent.glob("extensions/*/httpfs.duckdb_extension"))
    if not found:
        raise ConfigError("duckdb-extension-httpfs ships no httpfs extension for this platform")
    return found[-1]


def memory_limit() -> str:
    """The configured DuckDB ``memory_limit`` (``DELTAFERRY_DUCKDB_MEMORY_LIMIT``), DuckDB's
    syntax (``256MB``): the working memory of every database deltaferry opens, to which
    ``fitted_limit`` adds what the database's deleted rows pin. DuckDB's own default is 80% of
    the machine's RAM, which it fills with cached blocks as a table grows; bounded, it
    spills to disk."""
    return from_env().duckdb_memory_limit.strip()


# DuckDB marks a deleted row with the deleting transaction's id: 8 bytes for every row of
# each 2,048-row vector that holds a deleted row (16 KiB a vector), in memory it cannot evict
# or spill, from the DELETE - or, for a delete already written to the file, from the first
# read of its row group - until the database is closed (CHECKPOINT writes the marks and keeps
# them). An incremental sync deletes the changed keys' old rows, scattered over the table, in
# staging (dlt's merge) and in a replica (``replica_apply.merge_rows``), so a table that has
# seen a few syncs pins about 8 bytes a row whenever it is read: 400 MB at 50M rows, more
# than the default limit, and a DELETE of 100,000 scattered keys in it needs as much
# (``bench/README.md``, "Deleted rows pin memory"). Every limit deltaferry sets therefore
# adds this many bytes (8, and a quarter more) for each row that may pin: of the tables that
# hold deleted rows when read, of every table before a DELETE (``fitted_limit``).
PINNED_BYTES_PER_ROW = 10

# a table this small is counted whole, without a query (it pins at most 1 MB)
_SMALL_TABLE_ROWS = 100_000


def table_rows(con: duckdb.DuckDBPyConnection, *, deleting: bool = True) -> int:
    """Rows the tables of every database ``con`` has attached hold (DuckDB's
    ``estimated_size``: deleted rows not yet vacuumed included), temporary tables left out.

    ``deleting=False``: only the rows of tables whose deleted rows' marks may be pinned
    when they are read: those holding deleted rows (``estimated_size`` above ``count(*)``,
    about 4 ms for a 50M-row table without one) and every table under 100,000 rows; a
    table never deleted from pins nothing. ``count(*)`` reads the marks of a table that
    holds some, so raise the limit to ``fitted_limit(con)`` before asking.

    The answer for a table of a database file is kept for this process while the file and
    its write-ahead log are unchanged and were last written at least ``RACY_NS`` before it
    was counted (``_file_state``): every open of the file counted
    again, 12 times in a no-op run, each ``count(*)`` reading the marks of every row group
    (about 80 ms at 10M rows with deletes, so a no-op run's cost grew with the table)."""
    tables = con.execute(
        "SELECT database_name, schema_name, table_name, coalesce(estimated_size, 0)"
        " FROM duckdb_tables() WHERE NOT temporary"
    ).fetchall()
    paths: dict[str, str | None] | None = None  # database name -> file (None: in memory)
    total = 0
    for database, schema, table, stored in tables:
        if deleting or stored < _SMALL_TABLE_ROWS:
            total += stored
            continue
        if paths is None:
            found = con.execute("SELECT database_name, path FROM duckdb_databases()").fetchall()
            paths = dict(found)
        name = f"{ident(database)}.{ident(schema)}.{ident(table)}"
        path = paths.get(database) or ""
        # the file's state before counting: a change meanwhile makes the next call count again
        state = _file_state(path, stored)
        known = _HOLDS_DELETED.get((path, name)) if state else None
        if known is not None and known[0] == state:
            holds = known[1]
        else:
            holds = fetch_row(con, f"SELECT count(*) FROM {name}")[0] < stored
            if state:
                _HOLDS_DELETED[(path, name)] = (state, holds)
        if holds:
            total += stored
    return int(total)


# ``table_rows``' answers: (file path, table) -> (the file's state and the table's
# ``estimated_size`` when counted, whether it held deleted rows)
_HOLDS_DELETED: dict[tuple[str, str], tuple[tuple[int, ...], bool]] = {}

# A state whose file or log was written this recently is not kept: a filesystem whose
# times are coarse (1 s on ext4 with small inodes, HFS+, some network mounts; 2 s on FAT;
# a kernel timer tick on Linux before 6.13) gives a DELETE checkpointed in the same tick
# the same time, size and inode as the state before it (the log gone again, the
# estimated size unchanged by a DELETE). As git does for its index's "racily clean"
# entries: only a state older than any such tick can stand for the file's content.
RACY_NS = 3 * 10**9


def _file_state(path: str, *more: int) -> tuple[int, ...] | None:
    """Modification time (ns), size and inode of a database file and of its write-ahead log
    (zeros when there is none), then ``more``: every commit writes the log, every
    checkpoint the file, so a table's deleted rows cannot change while these stay the
    same. None when there is nothing to keep: no file (in memory, or not found), or one of
    the two modified less than ``RACY_NS`` ago (or in the future: a clock set back)."""
    if not path:
        return None
    state: list[int] = []
    now = time.time_ns()
    for name in (path, f"{path}.wal"):
        try:
            st = os.stat(name)
        except OSError:
            if name == path:
                return None
            state += [0, 0, 0]
            continue
        if now - st.st_mtime_ns < RACY_NS:
            return None
        state += [st.st_mtime_ns, st.st_size, st.st_ino]
    return (*state, *more)


def fitted_limit(con: duckdb.DuckDBPyConnection, *, deleting: bool = True) -> str:
    """The ``memory_limit`` for ``con``'s database, in bytes (``'268435456B'``): the
    configured limit (``memory_limit``) plus ``PINNED_BYTES_PER_ROW`` for every row its
    tables hold (``table_rows``; with ``deleting=False`` the rows of tables that hold
    deleted rows: for reading, not for a DELETE)."""
    base = size_bytes(memory_limit())
    assert base is not None, memory_limit()  # settings validate it as a size
    return f"{base + PINNED_BYTES_PER_ROW * table_rows(con, deleting=deleting)}B"


def _setting(con: duckdb.DuckDBPyConnection) -> str:
    """The ``memory_limit`` of ``con``'s database as DuckDB shows it (``244.1 MiB``)."""
    return str(fetch_row(con, "SELECT current_setting('memory_limit')")[0])


@functools.lru_cache(maxsize=1)
def _default_limit() -> str:
    """DuckDB's own ``memory_limit`` of a database just opened (80% of RAM), as shown."""
    with duckdb.connect() as con:
        return _setting(con)


def fit_memory_limit(con: duckdb.DuckDBPyConnection, deleting: int | None = None) -> None:
    """Raise the ``memory_limit`` of ``con``'s database before a DELETE of ``deleting``
    rows (None: not known): by what their marks may pin, ``PINNED_BYTES_PER_ROW`` for each
    row of the 2,048-row vector each may be alone in (marks of several DELETEs add up until
    the database is closed), at most to ``fitted_limit`` (every row its tables hold, where
    an unknown count goes at once). Never lowers it (DuckDB refuses a limit below what it
    holds). Call before a DELETE, or after attaching another database (``configure`` fits
    a database at open for reading only). Rows inserted in the open transaction are not
    counted (DuckDB's ``estimated_size`` has committed rows only); deltaferry's DELETEs
    remove committed rows only (a batch holds each key once)."""
    if deleting == 0:
        return
    now = size_bytes(_setting(con))
    if now is None:
        return
    want = size_bytes(fitted_limit(con)) or 0
    if deleting is not None:  # at least past the rounding below, so small DELETEs add up
        want = min(want, now + max(PINNED_BYTES_PER_ROW * 2048 * deleting, 2**20 + 2**18))
    if want > now + 2**20:  # DuckDB shows the limit to 0.1 MiB
        con.execute(f"SET memory_limit = '{want}B'")


# DuckDB keeps every block of a database file it read or wrote in its buffer pool until it
# needs the room: a replica that a pull grows holds more of it after every batch, up to the
# whole memory limit (a pull of ten 1M-row batches: +14 MiB of cached table a batch, the
# process from 540 to 683 MiB; bench/README.md, "The cut's key lookup, and a pull that
# lets go of its cache"). So the peak of a large pull followed the table up to the limit.
# ``CacheTrim`` lets go of the cache after every ``TRIM_EVERY_ROWS`` rows applied, so a
# pull holds about one batch's blocks whatever the table's size.
TRIM_EVERY_ROWS = 100_000
TRIM_TO = 32 * 2**20  # bytes: what the buffer pool is asked to shrink to, for an instant


def trim_cache(con: duckdb.DuckDBPyConnection) -> None:
    """Evict the unpinned blocks ``con``'s database keeps cached: its ``memory_limit`` set to
    ``TRIM_TO`` and back (DuckDB evicts to meet a lower limit, which its maintainers point to
    for this; a clean block is dropped, read again from the file when needed). Pinned
    memory stays (an open query's, the marks of deleted rows): where it is over ``TRIM_TO``
    DuckDB refuses the lower limit after evicting what it could, and the limit stays. Not
    in a transaction that wrote (its blocks are pinned to it): call between transactions.
    The limit is set database-wide for that instant, so no other connection to the
    database may be running a query then (a pull holds its replica alone)."""
    shown = _setting(con)  # "244.1 MiB": cut (not rounded) to a tenth of its unit
    now, unit = size_bytes(shown), size_bytes(f"1 {shown.split()[-1]}")
    # no limit at all ("16383.9 PiB", DuckDB's -1) is left alone: set back by its shown
    # value it would wrap around to a limit of 0 bytes
    if now is None or unit is None or now <= TRIM_TO or now >= 2**60:
        return
    try:
        con.execute(f"SET memory_limit = '{TRIM_TO}B'")
    except duckdb.Error:
        # could not evict down to it: what it could is evicted, the limit unchanged. In a
        # transaction that wrote, DuckDB aborts it too: never let that pass unseen
        try:
            con.execute("SELECT 1").fetchall()
        except duckdb.Error as e:
            raise TerminalError(
                f"trim_cache was called inside a transaction, which DuckDB aborted ({e})"
            ) from e
    # back to at least what it was and shown the same, so that trims never move it
    con.execute(f"SET memory_limit = '{now + unit // 10}B'")


class CacheTrim:
    """Counts rows applied to one database and calls ``trim_cache`` every
    ``TRIM_EVERY_ROWS`` (one statement of cost per 100,000 rows, so a pull of many small
    batches pays almost nothing). Call ``applied(rows)`` after each committed batch."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con, self.pending = con, 0

    def applied(self, rows: int) -> None:
        """``rows`` were committed: trim the cache if ``TRIM_EVERY_ROWS`` rows have been
        since the last trim."""
        self.pending += rows
        if self.pending >= TRIM_EVERY_ROWS:
            self.pending = 0
            trim_cache(self.con)


def configure(
    con: duckdb.DuckDBPyConnection, path: Path | str | None = None
) -> duckdb.DuckDBPyConnection:
    """Bound the memory of ``con``'s database: ``memory_limit`` from
    ``DELTAFERRY_DUCKDB_MEMORY_LIMIT`` plus what the deleted rows its tables hold may pin
    (``fitted_limit(deleting=False)``; ``fit_memory_limit`` before a DELETE adds every
    row; DuckDB's own default is 80% of RAM, which a large table or
    transaction fills); larger sorts, joins and loads spill to the temporary directory,
    DuckDB's default ``<file>.tmp`` beside a database file, or with ``path`` (the database
    file) ``<path>.tmp`` set explicitly. A database-wide setting that every connection to
    the same file in this process shares: set on a database just opened (DuckDB's default
    limit), only raised on one another connection opened before (which may hold more). A
    limit too small for the work is DuckDB's ``OutOfMemoryException`` at the statement that
    needs more (``over_limit`` names the setting). Returns ``con``."""
    now = _setting(con)
    try:
        if now == _default_limit():  # this process's first connection to the database
            # room for every row first: reading the tables that hold deleted rows (to find
            # them) pins their marks; then what reading needs, which a DELETE raises again
            con.execute(f"SET memory_limit = '{fitted_limit(con)}'")
            con.execute(f"SET memory_limit = '{fitted_limit(con, deleting=False)}'")
        else:
            try:
                want = fitted_limit(con, deleting=False)
            except duckdb.OutOfMemoryException:  # no room to find them: every row then
                want = fitted_limit(con)
            if (size_bytes(want) or 0) > (size_bytes(now) or 0) + 2**20:
                con.execute(f"SET memory_limit = '{want}'")
    except duckdb.OutOfMemoryException:
        pass  # DuckDB refused a limit below what the database holds: keep the higher one
    if path is not None:
        con.execute(f"SET temp_directory = {literal(str(path) + '.tmp')}")
    return quiet(con)


# The session settings of every DuckDB connection deltaferry opens for longer work (and of
# dlt's staging connections: its ``local_config``). DuckDB draws a progress bar on stdout
# for a query over 2 s when it takes the process for an interactive one (``python -c``, a
# notebook), even when stdout is a pipe: a plan step of a large batch or a long
# ``quarantine list`` run so left ``100% ▕███▏`` lines in tab-separated output.
QUIET = {"enable_progress_bar": False}


def quiet(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """``con`` with the ``QUIET`` settings (a session's: DuckDB refuses them in
    ``connect``'s config of a database file). Returns ``con``."""
    for name, value in QUIET.items():
        con.execute(f"SET {name} = {str(value).lower()}")
    return con


def scratch(path: Path, spill: Path, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """A working database file of one run (keys counted or compared, never kept): one
    thread, ``memory_limit``, spilling to ``spill``, quiet. Remove it with ``remove``."""
    return quiet(
        duckdb.connect(
            str(path),
            config={"memory_limit": memory_limit, "temp_directory": str(spill), "threads": 1},
        )
    )


def remove(path: Path) -> None:
    """Remove a closed database file and its write-ahead log, if there."""
    for name in (path, Path(f"{path}.wal")):
        name.unlink(missing_ok=True)


def connect_replica(
    path: Path | str, alias: str = "replica", *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """``connect`` for a replica file (``read_only`` for ``verify``, ``conflicts``,
    ``compare``): when another process holds it (a pull into the same replica, a notebook
    holding it open), TerminalError naming the file and the process (DuckDB's own was a
    bare ``IOException: Could not set lock on file``). The state store waits for its file
    instead (``state.StateStore``)."""
    try:
        return connect(path, read_only=read_only, alias=alias)
    except duckdb.IOException as e:
        text = str(e)
        if "Could not set lock" not in text:
            raise
    held = re.search(r"\(PID (\d+)\)", text)
    who = f"process {held.group(1)}" if held else "another process"
    rule = (
        "DuckDB lets no other process read a database file while one writes it"
        if read_only
        else "DuckDB lets one process write a database file at a time"
    )
    raise TerminalError(
        f"{path} is open in {who} (a pull into the same replica, or a program holding "
        f"the file open); {rule}: wait for that pull, or close the other program, and run "
        "this again"
    )


def session_zone() -> str:
    """The zone name DuckDB gives a new connection's ``TimeZone`` in this process: the
    host's (``TZ``, else /etc/localtime), e.g. ``Etc/UTC``, ``UTC``, ``Europe/Berlin``."""
    con = duckdb.connect()
    try:
        row = con.execute("SELECT current_setting('TimeZone')").fetchone()
        return str(row[0]) if row else "UTC"
    finally:
        con.close()


def connect(
    path: Path | str, *, read_only: bool = False, alias: str = "db"
) -> duckdb.DuckDBPyConnection:
    """Open a database file, encrypted when a key is configured, its memory bounded
    (``configure``).

    With a key the file is attached as ``alias`` and made the default catalog, so
    unqualified and schema-qualified names work as with a plain connection.
    """
    key = encryption_key()
    if key is None:
        try:
            return configure(duckdb.connect(str(path), read_only=read_only))
        except duckdb.CatalogException as e:
            if "encrypted" in str(e).lower():
                raise ConfigError(f"{path} is encrypted: set {KEY_ENV} to open it") from None
            raise
    con = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    try:
        con.execute(f"LOAD '{_httpfs_path()}'")
        con.execute("SET temp_file_encryption = true")
        attach(con, path, alias, read_only=read_only, fit=False)  # configure fits below
        con.execute(f"USE {ident(alias)}")
        configure(con, path)  # the temp directory beside the file, not the cwd
    except duckdb.Error as e:
        con.close()
        message = redact_key(str(e), key)
        if "encryption key" in message.lower() or "encrypted" in message.lower():
            raise ConfigError(
                f"{path}: cannot open with the configured {KEY_ENV}: {message}"
            ) from None
        raise type(e)(message) from None  # DuckDB may echo the statement, key and all
    return con


def attach(
    con: duckdb.DuckDBPyConnection,
    path: Path | str,
    alias: str,
    *,
    read_only: bool = True,
    fit: bool = True,
) -> None:
    """ATTACH the database file ``path`` to ``con`` as ``alias`` (read-only unless told),
    with the configured encryption key when there is one; the memory limit refitted to
    what its deleted rows pin (``fit_memory_limit``) unless ``fit`` is False (a caller
    that configures the connection next). Raises duckdb.Error as DuckDB does, the key
    redacted."""
    key = encryption_key()
    options = ["READ_ONLY"] if read_only else []
    if key is not None:
        options.append(f"ENCRYPTION_KEY {literal(key)}")
    suffix = f" ({', '.join(options)})" if options else ""
    try:
        con.execute(f"ATTACH {literal(str(path))} AS {ident(alias)}{suffix}")
    except duckdb.Error as e:
        raise type(e)(redact_key(str(e), key) if key else str(e)) from None
    if fit:
        fit_memory_limit(con)


def redact_key(text: str, key: str) -> str:
    """``text`` without ``key`` where DuckDB shows one: as the SQL literal of the statement
    it echoes (``'key'``, or a name ``"key"``). Its bare text is left alone: a key that is
    a word (``database``, a path's part) would mangle the message, and the places it was
    replaced would tell the key."""
    return text.replace(literal(key), "'***'").replace(ident(key), '"***"')


