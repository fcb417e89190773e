"""What a SQLite table's first load by DuckDB's sqlite scanner needs beyond ``bulk.py``'s
protocol (seed through dlt, copy, keep the copy only when clean): which tables and columns
it may copy, and the checks at the source that make the copy equal to dlt's read.

SQLite keeps any value in any column, and the scanner reads liberally where dlt's read is
exact: it drops a time text's offset (``2025-01-01 00:00:01+02:00`` becomes 00:00:01), cuts
a seventh fraction digit, rolls ``24:00:00`` over to the next day, and takes a number in a
``TIMESTAMP`` column as Unix seconds. So the copy is kept only when every value of every
copied column has the one storage class the dlt read passes through unchanged, counted in
SQLite over the whole table (``source_checks``):

- ``REAL``/``DOUBLE`` columns hold reals and ``BLOB`` columns blobs (a value of another
  class is converted or refused by dlt's read; the scanner would take an integer as a
  double and anything as bytes). Integer and text columns are not counted: the scanner
  itself refuses a value of another class there (``Mismatch Type Error``, the copy is
  rolled back), and SQLite's affinity stores a number given to a text column as its text,
  as the dlt read then reads it;
- a ``TIMESTAMP``/``DATETIME`` column holds text ``YYYY-MM-DD HH:MM:SS`` (or with ``T``),
  optionally with a fraction of 1 to 6 digits, hour 00-23, year from 0001; a ``DATE``
  column text ``YYYY-MM-DD``: exactly the forms ``datetime.fromisoformat`` and DuckDB's
  cast read as the same value (an impossible date, e.g. February 30, fails DuckDB's cast
  and rolls the copy back);
- the cursor's time text has one separator throughout (the seed takes the first rows in
  the text's order, which is the instants' order only then);
- no key is repeated (the seed and the copy are two reads).

Anything else rolls the copy back and dlt reads the whole table, with its own checks and
errors (``bulk.py``). Eligible: a plain table of a UTF-8 database file, ``timezone`` UTC
where it has time columns (naive text is taken in the job's zone), no ``column_types``, a
cursor that is an integer, date or timestamp, key columns that are no time text (SQLite
compares the text, staging the instant), no generated column (the scanner does not list
them), and columns of those families, text, real or blob (``JSON``, ``BOOLEAN``,
``NUMERIC``/``DECIMAL`` and ``TIME`` columns are converted value by value by dlt's read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from deltaferry.config import JobConfig, TableConfig
from deltaferry.duck import ident, literal
from sources.sql_database.settings import source_table
from sources.sql_database.types import Refusal, _family, plan_column
from sources.sql_database.window import text_time_columns

# the attached database's name in DuckDB
ALIAS = "df_sqlite"
# the storage class (SQLite's typeof) each eligible family must hold
_CLASS = {"integer": "integer", "float": "real", "text": "text", "binary": "blob"}
# families whose values of another storage class the scanner refuses itself (an error:
# the copy is rolled back), so SQLite need not count them
_SCANNER_REFUSES = ("integer", "text")
_TIMES = ("timestamp", "date")
_CURSORS = ("integer", "timestamp", "date")
_DIGIT = "[0-9]"
_DAY = f"{_DIGIT * 4}-{_DIGIT * 2}-{_DIGIT * 2}"


def database(engine: sa.Engine) -> Path | None:
    """The engine's SQLite database file, or None where the url names no plain file (an
    in-memory database, a URI with parameters)."""
    url = engine.url
    name = url.database
    if not name or name == ":memory:" or name.startswith("file:") or url.query:
        return None
    path = Path(name).resolve()
    return path if path.is_file() else None


def survey(job: JobConfig, t: TableConfig, engine: sa.Engine) -> tuple[str | None, dict[str, str]]:
    """Why the table's first load cannot take the scanner (one line; None when it can), and
    its copied columns' families by name (what ``source_checks`` counts)."""
    if database(engine) is None:
        return "the SQLite url names no database file (in memory, or a URI with parameters)", {}
    if t.options.get("column_types"):
        return "the table sets column_types", {}
    table = source_table(t)
    with engine.connect() as c:
        kind = c.execute(
            # a trigger may have the table's name (triggers have a namespace of their own)
            sa.text(
                "SELECT type FROM sqlite_master WHERE name = :t COLLATE NOCASE "
                "AND type IN ('table', 'view')"
            ),
            {"t": table},
        ).scalar()
        encoding = c.execute(sa.text("PRAGMA encoding")).scalar()
        # DuckDB's scanner fails with an internal error on a trigger named as a table or
        # view, and the internal error invalidates the staging database for the process
        clash = c.execute(
            sa.text(
                "SELECT t.name FROM sqlite_master t JOIN sqlite_master o ON lower(t.name) = "
                "lower(o.name) AND o.type IN ('table', 'view') WHERE t.type = 'trigger' LIMIT 1"
            )
        ).scalar()
    if kind != "table":
        return f"'{table}' is not a table of the database (sqlite_master type {kind!r})", {}
    if clash is not None:
        return (
            f"the database has a trigger named as a table ('{clash}'), which DuckDB's "
            "sqlite scanner cannot read past"
        ), {}
    if str(encoding).upper() != "UTF-8":
        return f"the database's text is {encoding}, the scanner reads UTF-8", {}
    times = text_time_columns(engine, t)
    excluded = set(t.options.get("exclude_columns", []))
    kinds: dict[str, str] = {}
    for col in sa.inspect(engine).get_columns(table):
        name = col["name"]
        if name in excluded:
            continue
        if col.get("computed"):  # the scanner does not list generated columns
            return f"column '{name}' is a generated column, which the scanner does not read", kinds
        try:
            plan = plan_column(name, col["type"], engine.dialect)
        except Refusal as e:  # preflight refuses the table first, with its own message
            return f"column '{name}': {e.reason}", kinds
        family = times.get(name, _family(col["type"]))
        if family not in _CLASS and family not in _TIMES:
            return (
                f"column '{name}' ({plan.source}) is not a type the scanner copies exactly "
                "as the dlt read stages it (integer, real, text, blob, date, timestamp)"
            ), kinds
        if family in _TIMES and job.timezone != "UTC":
            return (
                f"column '{name}' is time text and the job's timezone is {job.timezone} "
                "(naive text is taken in it: the dlt read converts)"
            ), kinds
        if name == t.cursor and family not in _CURSORS:
            return f"cursor '{name}' is {plan.source}, not an integer, date or timestamp", kinds
        if name in t.primary_key and family in _TIMES:
            # SQLite compares (and keeps unique) the text; staging the instant: two texts
            # of one instant are one key there, which a row the copy leaves to the run's
            # read (a NULL cursor) would join unseen
            return (
                f"key column '{name}' is time text: SQLite compares its text, staging its "
                "instant"
            ), kinds
        kinds[name] = family
    return None, kinds


def attach(con: Any, engine: sa.Engine, extension: Path) -> str:
    """Load the extension and attach the database read-only; returns the source table's
    schema in DuckDB's catalog (``main``)."""
    path = database(engine)
    assert path is not None  # survey
    con.execute(f"LOAD {literal(str(extension))}")
    con.execute(f"ATTACH {literal(str(path))} AS {ALIAS} (TYPE sqlite, READ_ONLY)")
    return "main"


def _odd(column: str, family: str) -> str:
    """A SQLite condition true for a value of ``column`` the copy cannot read exactly. Time
    text is matched by exact ``GLOB`` patterns (one per fraction length, the commonest
    first: cheaper than slicing the text); minutes and seconds past 59 and impossible dates
    fail DuckDB's cast (the copy is rolled back), hour 24 and year 0 do not and are counted
    here."""
    c = ident(column)
    if family in _CLASS:
        return f"typeof({c}) NOT IN ('{_CLASS[family]}', 'null')"
    # SQLite's GLOB and length() stop at a NUL: the text's bytes are measured too
    size = f"length(CAST({c} AS BLOB))"
    if family == "date":
        exact = f"{c} GLOB '{_DAY}' AND {c} >= '0001' AND {size} = 10"
    else:
        clock = f"{_DIGIT * 2}:{_DIGIT * 2}:{_DIGIT * 2}"
        forms = " OR ".join(
            f"{c} GLOB '{_DAY}[ T]{clock}{'.' + _DIGIT * k if k else ''}'"
            for k in (6, 0, 3, 1, 2, 4, 5)
        )
        exact = (
            f"({forms}) AND substr({c}, 12, 2) < '24' AND {c} >= '0001' "
            f"AND {size} IN (19, 21, 22, 23, 24, 25, 26)"
        )
    return f"typeof({c}) NOT IN ('text', 'null') OR ({c} IS NOT NULL AND NOT ({exact}))"


def staged_checks(con: Any, table: str, load_id: str, kinds: dict[str, str]) -> str | None:
    """Why the copy cannot be kept, found in the copied rows (staged ``table``, its rows of
    ``load_id``), or None: text that is not UTF-8. SQLite stores any bytes as text, the
    scanner copies them as they are (DuckDB does not check a value on insert), and the dlt
    read stops the table on them. DuckDB refuses such text when it compresses a committed
    row group, not always at the insert; ``decode`` checks every copied value, one pass."""
    from sources.columns import LOAD_ID_COLUMN

    texts = [c for c, f in kinds.items() if f == "text"]
    if not texts:
        return None
    counts = ", ".join(
        f"count(*) FILTER (WHERE {ident(c)} IS NOT NULL AND try(decode(encode({ident(c)}))) IS NULL)"
        for c in texts
    )
    found = con.execute(
        f"SELECT {counts} FROM {table} WHERE {ident(LOAD_ID_COLUMN)} = ?", [load_id]
    ).fetchone()
    for name, n in zip(texts, found, strict=True):
        if n:
            return (
                f"column '{name}' holds {n} value(s) that are not UTF-8 text (the dlt read "
                "stops the table on them)"
            )
    return None


def source_checks(engine: sa.Engine, t: TableConfig, kinds: dict[str, str]) -> str | None:
    """Why the copy cannot be kept, counted in SQLite over the whole table (one line), or
    None: a value the scanner would read otherwise than dlt's read, a cursor of time text
    with two separators, a repeated key."""
    table = ident(source_table(t))
    counted = {c: f for c, f in kinds.items() if f not in _SCANNER_REFUSES}
    counts = [f"sum(CASE WHEN {_odd(c, f)} THEN 1 ELSE 0 END)" for c, f in counted.items()]
    cursor = t.cursor
    assert cursor is not None  # settings: initial_load = "scanner" needs a cursor
    if kinds.get(cursor) == "timestamp":
        counts.append(f"count(DISTINCT substr({ident(cursor)}, 11, 1))")
    key = ", ".join(ident(c) for c in t.primary_key)
    whole = " AND ".join(f"{ident(c)} IS NOT NULL" for c in t.primary_key)
    with engine.connect() as c:
        found = list(c.execute(sa.text(f"SELECT {', '.join(counts)} FROM {table}")).one()) if counts else []
        odd, mixed = found[: len(counted)], found[len(counted) :]
        repeated = (
            0
            if _unique(c, source_table(t), set(t.primary_key))
            else c.execute(
                sa.text(
                    f"SELECT (SELECT count(*) FROM {table} WHERE {whole}) - "
                    f"(SELECT count(*) FROM (SELECT DISTINCT {key} FROM {table} WHERE {whole}))"
                )
            ).scalar_one()
        )
    for (name, family), n in zip(counted.items(), odd, strict=True):
        if n:
            what = (
                f"not {_CLASS[family]} values (SQLite's typeof)"
                if family in _CLASS
                else "not time text of the exact forms (YYYY-MM-DD, with HH:MM:SS[.ffffff] "
                "after a space or T)"
                if family in _TIMES
                else family
            )
            return f"column '{name}' holds {n} value(s) {what}: the dlt read converts or refuses them"
    if mixed and mixed[0] > 1:
        return (
            f"cursor '{cursor}' is time text with both ' ' and 'T' between date and time (its "
            "text order is not its instants' order)"
        )
    if repeated:
        return (
            f"{repeated} row(s) repeat a key at the source as SQLite compares it (with the "
            "key's collation; the dlt read stops the run on a repeated key)"
        )
    return None


def _unique(c: Any, table: str, key: set[str]) -> bool:
    """Whether SQLite itself keeps ``key`` unique (NULLs aside): the table's primary key,
    or a unique index that is not partial, is on ``key``'s columns or some of them (an
    ``INTEGER PRIMARY KEY`` is the rowid, which has no index of its own). SQLite enforces
    both on every write, so the key is not counted then."""
    columns = c.exec_driver_sql(f"PRAGMA table_info({ident(table)})").fetchall()
    primary = {r[1] for r in columns if r[5]}
    if primary and primary <= key:
        return True
    for index in c.exec_driver_sql(f"PRAGMA index_list({ident(table)})").fetchall():
        name, unique, partial = index[1], index[2], index[4]
        if not unique or partial:
            continue
        on = [r[2] for r in c.exec_driver_sql(f"PRAGMA index_info({ident(name)})").fetchall()]
        if on and None not in on and set(on) <= key:
            return True
    return False
