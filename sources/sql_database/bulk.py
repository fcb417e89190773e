"""A PostgreSQL or SQLite table's initial load by DuckDB's postgres or sqlite scanner
(``initial_load = "scanner"``, or ``"auto"``, the default, for a table with a cursor and at
least ``settings.AUTO_ROWS`` rows at its first run): the fast path for a large first sync.

dlt's SQL read converts every value to a Python object and back (about 20-50k rows/s
here); DuckDB's postgres extension copies the table with PostgreSQL's binary COPY into
staging at several hundred thousand rows/s (``bench/README.md``, "PostgreSQL fast path"),
its sqlite extension reads the database file with its own SQLite library. The extensions are loaded
from the ``duckdb-extension-postgres-scanner`` and ``duckdb-extension-sqlite-scanner``
packages, built for the pinned DuckDB, never downloaded. What SQLite needs beyond the
protocol below (its own eligibility and checks at the source: SQLite keeps any value in
any column) is in ``bulk_sqlite.py``.

The copy is an optimisation of the first run only, never a second way to stage a row:

1. **Seed, through dlt.** The table's first ``SEED_ROWS`` rows by cursor are read by the
   normal dlt read, with every step it has (value checks, keys held or counted, content
   hash). dlt creates the staging table with its exact types and records the load. A
   seed whose read stops (a refused value, a repeated key) leaves the table to the run's
   dlt read, whose error is then the one a first load without the scanner gives.
2. **Copy, by the scanner.** In one DuckDB transaction the seed's rows at its newest
   cursor value are removed (a run of equal values may go on past the seed's last row) and
   every source row at or after that value is copied into the table, each value cast to
   the staged type (``char(n)`` padded as PostgreSQL prints it), with the seed's load id
   and the content hash the dlt read gives (``content_text``, in UTC). A seed row that
   changed before the copy read it (its cursor moved past the bound) is replaced by the
   copy's newer version.
3. **The run goes on as any later run:** its dlt read starts at the newest staged cursor
   value, so rows committed during the copy and rows with a NULL cursor are read as
   always. The plan cuts the seed's load (copy included) with the run's own.

The copy is kept only when it is clean: a NULL key, a key repeated at the source, a time
value that is infinite or outside years 1-9999, a numeric ``NaN`` or infinity (the scanner
reads those as 0), or any failure (a value DuckDB cannot cast, a lost connection) rolls it
back and removes the seed's rows too, so the run's dlt read reads the whole table as a
first load without the scanner does: one read, whose checks see every row and stop the
run where they would. Every decision is a line of the operations log (``initial-load``).
A crash between the seed and the end of the copy leaves a marker
(``$DELTAFERRY_HOME/<job>/initial_load/<table>``): the next run removes the seed's rows
and starts the table's first load again.

Eligible: a plain table (no partitions, views or inheritance children: the scanner reads
a table's own pages) with nothing staged yet, no ``column_types``, a cursor that is a
number, date or time (compared in both databases: text collations differ), and only
column types whose scanner value is the dlt read's exactly: integers, ``numeric(p,s)``,
``double precision``, text types (enums and ``char(n)`` included), ``uuid``, ``boolean``,
``bytea``, ``date``, ``timestamptz``, ``timestamp`` (in a job whose ``timezone`` is UTC),
``json``/``jsonb`` (SQLite: ``bulk_sqlite.py``). Any other table is read by dlt, and the
log says why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig, job_home
from deltaferry.duck import fetch_one, fetch_row, ident, literal
from sources.change_detection import content_text
from sources.columns import HASH_COLUMN, INTERNAL_COLUMNS, LOAD_ID_COLUMN, STAGING_DATASET
from sources.sql_database import bulk_sqlite
from sources.sql_database.connection import scrub
from sources.sql_database.settings import AUTO_ROWS, source_table
from sources.sql_database.types import Refusal, _family, _unwrap, plan_column
from sources.staging import read_staging, staged_table_exists, staging_path

# rows of the seed: enough to make dlt create the table with its types, few enough to cost
# nothing next to the copy
SEED_ROWS = 1000

# families of ``types.plan_column`` whose scanner value, cast to the staged type, is the
# value the dlt read stages (checked by tests/test_pg_initial_load.py)
_EXACT = {"integer", "numeric", "text", "uuid", "bool", "binary", "date", "timestamptz", "json"}
# PostgreSQL's float8; a float4 goes through Python's float of its text in the dlt read
_DOUBLE = {"DOUBLE PRECISION", "FLOAT"}
_TIME_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE")
# cursor families whose order is the same in DuckDB and PostgreSQL
_ORDERED = {"integer", "numeric", "date", "timestamp", "timestamptz"}


DIALECTS = ("postgresql", "sqlite")


def requested(t: TableConfig, engine: sa.Engine) -> str | None:
    """How the table asks for the scanner: ``"scanner"`` (always tried, and a table that
    cannot take it gets a note), ``"auto"`` (tried when ``large``) or None (never: the
    setting is ``"dlt"``, or ``"auto"`` on a table without a cursor or a source the
    scanner does not read)."""
    how = t.options.get("initial_load", "auto")
    if how == "scanner":
        return how
    if how == "auto" and t.cursor is not None and engine.dialect.name in DIALECTS:
        return how
    return None


def large(t: TableConfig, engine: sa.Engine) -> bool:
    """Whether the source table holds at least ``AUTO_ROWS`` rows: counted up to that many
    (``LIMIT``), so the question costs the same on a table of any size."""
    quote = engine.dialect.identifier_preparer.quote
    sql = f"SELECT count(*) FROM (SELECT 1 FROM {quote(source_table(t))} LIMIT {AUTO_ROWS}) t"
    with engine.connect() as c:
        return int(c.execute(sa.text(sql)).scalar_one()) >= AUTO_ROWS


def survey(job: JobConfig, t: TableConfig, engine: sa.Engine) -> tuple[str | None, dict[str, Any]]:
    """Why the table's initial load cannot take the scanner (one line; None when it can),
    and the table's layout for ``copy_rest``: PostgreSQL's ``char(n)`` columns by name with
    their length (the scanner reads them without their padding, the dlt read with it), or
    SQLite's copied columns by name with their family (``bulk_sqlite.survey``). The table
    is reflected from the source once."""
    if engine.dialect.name == "sqlite":
        return bulk_sqlite.survey(job, t, engine)
    if engine.dialect.name != "postgresql":
        return (
            f"the source is {engine.dialect.name}, the scanner reads PostgreSQL and SQLite only",
            {},
        )
    if t.options.get("column_types"):
        return "the table sets column_types", {}
    kind = _relation(engine, source_table(t))
    if kind is not None:
        return kind, {}
    excluded = set(t.options.get("exclude_columns", []))
    padded: dict[str, int] = {}
    for col in sa.inspect(engine).get_columns(source_table(t)):
        if col["name"] in excluded:
            continue
        try:
            plan = plan_column(col["name"], col["type"], engine.dialect)
        except Refusal as e:  # preflight refuses the table first, with its own message
            return f"column '{col['name']}': {e.reason}", padded
        family = _family(col["type"])
        base = _unwrap(col["type"])
        if isinstance(base, sa.CHAR) and not isinstance(base, sa.NCHAR | sa.VARCHAR):
            padded[col["name"]] = base.length or 1
        if col["name"] == t.cursor and family not in _ORDERED:
            # compared in DuckDB and in PostgreSQL: text collations and NaN order differ
            return f"cursor '{t.cursor}' is {plan.source}, not a number, date or time", padded
        if family == "float" and plan.source.upper() in _DOUBLE:
            continue
        if family == "timestamp" and job.timezone == "UTC":
            continue
        if family not in _EXACT:
            return (
                f"column '{col['name']}' ({plan.source}) is not a type the scanner copies "
                "exactly as the dlt read stages it"
            ), padded
    return None, padded


def _relation(engine: sa.Engine, table: str) -> str | None:
    """Why the scanner cannot read ``table`` as PostgreSQL's ``SELECT`` does, or None: it
    scans a plain table's own pages, so a partitioned table, a table with inheritance
    children (their rows are the parent's in a query, not in its pages), a view or a
    foreign table would be copied in part or not at all."""
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "SELECT c.relkind, EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid) "
                "FROM pg_class c WHERE c.oid = to_regclass(quote_ident(current_schema()) || '.' "
                "|| quote_ident(:t))"
            ),
            {"t": table},
        ).first()
    if row is None:
        return "the table is not in the connection's current schema"
    if row[0] != "r":
        return f"the relation is not a plain table (pg_class.relkind '{row[0]}')"
    if row[1]:
        return "the table has inheritance children, whose rows the scanner does not read"
    return None


def first_rows(t: TableConfig) -> Any:
    """dlt ``query_adapter_callback`` for the seed: the ``SEED_ROWS`` rows with the oldest
    cursor values (NULL cursors last)."""
    cursor = t.cursor
    assert cursor is not None  # settings: initial_load = "scanner" needs a cursor

    def adapt(query: Any, table: sa.Table, *_: Any) -> Any:
        col = table.c[cursor]
        return query.order_by(col.asc().nulls_last()).limit(SEED_ROWS)

    return adapt


def conninfo(engine: sa.Engine) -> str:
    """The engine's PostgreSQL url as a libpq connection string for ``ATTACH``, with
    deltaferry's connect timeout and TCP keepalives (a peer that vanishes mid-copy is found
    within about a minute, as on the dlt read)."""
    from deltaferry.settings import from_env

    url = engine.url
    parts: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
        "connect_timeout": int(from_env().source_connect_timeout),
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    for k, v in url.query.items():
        parts[k] = v[-1] if isinstance(v, tuple) else v

    # libpq's quoting: single quotes, with backslash and quote escaped by a backslash
    def quoted(v: Any) -> str:
        return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quoted(v)}" for k, v in parts.items() if v is not None)


def _scanner_path(dialect: str = "postgresql") -> Path:
    if dialect == "sqlite":
        import duckdb_extension_sqlite_scanner as package

        name = "sqlite_scanner"
    else:
        import duckdb_extension_postgres_scanner as package

        name = "postgres_scanner"
    found = sorted(Path(package.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension"))
    if not found:
        wheel = name.replace("_", "-")
        raise RuntimeError(f"duckdb-extension-{wheel} ships no extension for this platform")
    return found[-1]


def _schema(engine: sa.Engine) -> str:
    with engine.connect() as c:
        return str(c.execute(sa.text("SELECT current_schema()")).scalar_one())


def staged(job: JobConfig, t: TableConfig, borrowed: Any = None) -> bool:
    """Whether the table has staged rows (a load of it committed). A first load by the
    scanner that a crash cut short (``marker``) counts as none: its seed's rows are removed
    here, and the first load starts again."""
    path = staging_path(job.name)
    if not path.exists():
        return False
    pending = marker(job, t)
    if pending.exists():
        con = duck.connect(path, alias="staging") if borrowed is None else borrowed.cursor()
        try:
            if borrowed is not None:
                con.execute("USE staging")
            _undo_seed(con, t)
        finally:
            con.close()
        pending.unlink()
        return False
    con = read_staging(path, borrowed)
    try:
        if not staged_table_exists(con, t.name):
            return False
        table = f"{STAGING_DATASET}.{ident(t.name)}"
        return fetch_one(con, f"SELECT 1 FROM {table} LIMIT 1") is not None
    finally:
        con.close()


def marker(job: JobConfig, t: TableConfig) -> Path:
    """The file that says the table's first load by the scanner is under way: written
    (durably) before the seed, removed when the copy is committed or rolled back."""
    from urllib.parse import quote

    return job_home(job.name) / "initial_load" / quote(t.name, safe="")


def begin(job: JobConfig, t: TableConfig) -> None:
    """Write the table's ``marker`` durably (before its seed)."""
    import os

    path = marker(job, t)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("seeded; the scanner's copy not yet committed\n")
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def end(job: JobConfig, t: TableConfig) -> None:
    """Remove the table's ``marker`` (the copy committed, or the seed's rows removed)."""
    marker(job, t).unlink(missing_ok=True)


class Skipped(Exception):
    """The copy was rolled back; the run's dlt read stages the rest. ``str()`` is why."""


def copy_rest(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    load_id: str,
    layout: dict[str, Any],
    borrowed: Any = None,
) -> tuple[str, int]:
    """Copy the table's rows at or after the seed's newest cursor value into staging with
    the seed's ``load_id`` (see the module's docstring), in one transaction; ``layout`` is
    ``survey``'s. Returns the operations-log line of what was copied and the rows the
    table then holds (seed and copy); raises ``Skipped`` (one line: why) when the copy was
    rolled back, the seed's rows removed."""
    started = time.monotonic()
    where = f"job '{job.name}' table '{t.name}'"
    if borrowed is not None:
        con = borrowed.cursor()
        con.execute("USE staging")
    else:
        con = duck.connect(staging_path(job.name), alias="staging")
    try:
        try:
            return _copy(job, t, engine, load_id, layout, con, where, started)
        # ValueError: DuckDB's error about text that is not UTF-8 is itself not UTF-8, and
        # its Python client raises UnicodeDecodeError in its place
        except (Skipped, duckdb.Error, sa.exc.DBAPIError, OSError, RuntimeError, ValueError) as e:
            _undo_seed(con, t)
            if isinstance(e, Skipped):
                raise
            # the sqlite scanner's advice to read every column as text is not for our users
            first = scrub(job, " ".join(str(e).split("* SET sqlite_all_varchar")[0].split()))[:300]
            raise Skipped(f"the copy failed: {type(e).__name__}: {first}") from None
    finally:
        try:
            con.execute("DETACH DATABASE IF EXISTS df_pg")
        except duckdb.Error:
            pass
        try:  # an attachment is the database instance's: one left would refuse the next
            con.execute(f"DETACH DATABASE IF EXISTS {bulk_sqlite.ALIAS}")
        except duckdb.Error:
            pass
        con.close()


def _undo_seed(con: duckdb.DuckDBPyConnection, t: TableConfig) -> None:
    """Remove the seed's rows (the copy was rolled back): the run's dlt read then reads the
    whole table as a first load without the scanner does, in one read, so its checks see
    every row (a key repeated between the seed and the rest, a value it refuses). The
    table stays, empty, as dlt's schema knows it."""
    if staged_table_exists(con, t.name):
        con.execute(f"DELETE FROM {STAGING_DATASET}.{ident(t.name)}")


def _source_checks(
    engine: sa.Engine,
    t: TableConfig,
    schema: str,
    bound: Any,
    numeric: list[str],
    temporal: list[str],
) -> str | None:
    """Why the copy cannot be kept, found at the source (one line), or None. The scanner
    reads a numeric ``NaN`` or ``±Infinity`` as 0 and copies a date or timestamp
    ``±infinity`` (or one before year 1 or after 9999) that the dlt read holds back with its
    row, so such values at or after ``bound`` (the copied rows) are looked for in
    PostgreSQL; and the key is counted
    there: the seed and the copy are two reads, and a key repeated across them must stop
    the first load as it does in one dlt read."""
    # keys are always counted, constraints or not: a unique index may be invalid (a failed
    # CREATE UNIQUE INDEX CONCURRENTLY leaves one), and SQLAlchemy does not say so (found by
    # a trial). Identifiers are quoted as DuckDB quotes them, which is PostgreSQL's way too.
    key = ", ".join(ident(c) for c in t.primary_key)
    not_null = " AND ".join(f"{ident(c)} IS NOT NULL" for c in t.primary_key)
    assert t.cursor is not None
    with engine.connect() as c:
        # numeric infinities exist from PostgreSQL 14 on
        version = int(c.execute(sa.text("SHOW server_version_num")).scalar_one())
        specials = "'NaN', 'Infinity', '-Infinity'" if version >= 140000 else "'NaN'"
        odd = " OR ".join(
            [f"{ident(n)} IN ({specials})" for n in numeric]
            + [
                f"NOT isfinite({ident(c)}) OR {ident(c)} < '0001-01-01' OR {ident(c)} >= '10000-01-01'"
                for c in temporal
            ]
        )
        special_rows = (
            f"count(*) FILTER (WHERE {ident(t.cursor)} >= :bound AND ({odd}))" if odd else "0"
        )
        repeated, special = c.execute(
            sa.text(
                f"SELECT count(*) FILTER (WHERE {not_null}) - count(DISTINCT ({key})), "
                f"{special_rows} FROM {ident(schema)}.{ident(source_table(t))}"
            ),
            {"bound": bound},
        ).one()
    if repeated:
        return f"{repeated} row(s) repeat a key at the source (the dlt read stops the run on it)"
    if special:
        return (
            f"{special} row(s) hold a numeric NaN or infinity, or a date or timestamp that is "
            "infinite or outside years 1-9999 (the scanner reads them as 0 or copies them; the "
            "dlt read holds such rows back)"
        )
    return None


def _copy(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    load_id: str,
    layout: dict[str, Any],
    con: duckdb.DuckDBPyConnection,
    where: str,
    started: float,
) -> tuple[str, int]:
    sqlite = engine.dialect.name == "sqlite"
    padded = {} if sqlite else layout
    if not staged_table_exists(con, t.name):
        raise Skipped("the seed staged no row (the table is empty or all its rows were held)")
    staged = duck.column_types(con, t.name, STAGING_DATASET)
    source = [c for c in staged if c not in INTERNAL_COLUMNS]
    table = f"{STAGING_DATASET}.{ident(t.name)}"
    con.execute("SET TimeZone = 'UTC'")  # as the dlt read hashes; naive times are UTC here
    if sqlite:
        alias, name = bulk_sqlite.ALIAS, "sqlite"
        schema = bulk_sqlite.attach(con, engine, _scanner_path("sqlite"))
    else:
        alias, name = "df_pg", "postgres"
        con.execute(f"LOAD {literal(str(_scanner_path()))}")
        schema = _schema(engine)
        con.execute(
            f"ATTACH {literal(conninfo(engine))} AS df_pg (TYPE postgres, READ_ONLY, "
            f"SCHEMA {literal(schema)})"
        )
    pg_columns = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_catalog = ? AND table_schema = ? AND "
            # SQLite's names are case-insensitive, PostgreSQL's are not
            + ("lower(table_name) = lower(?)" if sqlite else "table_name = ?"),
            [alias, schema, source_table(t)],
        ).fetchall()
    }
    missing = [c for c in source if c not in pg_columns]
    if missing:
        raise Skipped(f"staged column(s) {missing} are not source columns by these names")

    def cast(c: str) -> str:
        value = f"CAST(p.{ident(c)} AS {staged[c]})"
        return f"rpad({value}, {padded[c]}, ' ')" if c in padded else value

    casts = ", ".join(f"{cast(c)} AS {ident(c)}" for c in source)
    names = ", ".join(ident(c) for c in source)
    assert t.cursor is not None  # settings: initial_load = "scanner" needs a cursor
    cursor = ident(t.cursor)
    con.execute("BEGIN")
    try:
        # the staged table holds the seed alone: its rows at its newest cursor value are
        # copied again (a tie may go on past the seed's last row)
        bound = fetch_row(con, f"SELECT max({cursor}) FROM {table}")[0]
        replaced = fetch_row(con, f"DELETE FROM {table} WHERE {cursor} >= ?", [bound])[0]
        marks = {"prepare": time.monotonic() - started}
        # each value's text for the hash cast once, in a subquery of its own
        texts = {c: f"c.__df_text_{i}" for i, c in enumerate(source)}
        as_text = ", ".join(
            f"CAST(c.{ident(c)} AS VARCHAR) AS __df_text_{i}" for i, c in enumerate(source)
        )
        # the rows in any order (nothing reads staging by its order: the cut sorts by key):
        # DuckDB then inserts on every thread, about half the time (a database-wide setting,
        # for this statement only)
        con.execute("SET preserve_insertion_order = false")
        try:
            copied = fetch_row(
                con,
                f"INSERT INTO {table} ({names}, {ident(LOAD_ID_COLUMN)}, {ident(HASH_COLUMN)}) "
                f"SELECT {', '.join('c.' + ident(x) for x in source)}, ?, "
                f"md5({content_text(source, texts=texts)}) "
                f"FROM (SELECT c.*, {as_text} FROM (SELECT {casts} "
                f"FROM {alias}.{ident(schema)}.{ident(source_table(t))} AS p "
                f"WHERE p.{cursor} >= ?) AS c) AS c",
                [load_id, bound],
            )[0]
        finally:
            _keep_insertion_order(con)
        # a seed row changed at the source before the copy read it, its cursor moved past
        # the bound: the copy has its newer version, the seed's goes
        pk = list(t.primary_key)
        same = " AND ".join(f"n.{ident(c)} = s.{ident(c)}" for c in pk)
        newer = fetch_row(
            con,
            f"DELETE FROM {table} AS s WHERE s.{cursor} < ? AND EXISTS "
            f"(SELECT 1 FROM {table} AS n WHERE n.{cursor} >= ? AND {same})",
            [bound, bound],
        )[0]
        marks["copy"] = time.monotonic() - started - sum(marks.values())
        rows = _check(con, t, table, load_id, source, staged)
        numeric = [c for c in source if staged[c].upper().startswith("DECIMAL")]
        temporal = [
            c for c in source if staged[c].upper() == "DATE" or staged[c].upper().startswith("TIMESTAMP")
        ]
        why = (
            bulk_sqlite.staged_checks(con, table, load_id, layout)
            or bulk_sqlite.source_checks(engine, t, layout)
            if sqlite
            else _source_checks(engine, t, schema, bound, numeric, temporal)
        )
        if why is not None:
            raise Skipped(why)
        marks["checks"] = time.monotonic() - started - sum(marks.values())
        con.execute("COMMIT")
        marks["commit"] = time.monotonic() - started - sum(marks.values())
    except BaseException:
        duck.rollback(con)
        _keep_insertion_order(con)  # an aborted transaction refused the reset above
        raise
    took = time.monotonic() - started
    return (
        f"{where}: initial load by DuckDB's {name} scanner: {copied} row(s) from cursor "
        f"{bound!s} on copied in {took:.1f} s ({copied / max(took, 1e-9):,.0f} rows/s; "
        f"{replaced} seed row(s) at that value copied again, {newer} changed since the seed; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items())
        + f"), load {load_id}",
        rows,
    )


def _keep_insertion_order(con: duckdb.DuckDBPyConnection) -> None:
    """Set ``preserve_insertion_order`` back to DuckDB's default (true) after the copy, where
    the connection's transaction allows it (an aborted one refuses every statement but its
    rollback, after which this is called again)."""
    try:
        con.execute("RESET preserve_insertion_order")
    except duckdb.Error:
        pass


def _check(
    con: duckdb.DuckDBPyConnection,
    t: TableConfig,
    table: str,
    load_id: str,
    source: list[str],
    staged: dict[str, str],
) -> int:
    """Raise ``Skipped`` when the staged table, after the copy, holds a row the dlt read
    would have held back or refused, or a key twice; else return its rows (one scan)."""
    pk = list(t.primary_key)
    null_key = " OR ".join(f"{ident(c)} IS NULL" for c in pk)
    key = ident(pk[0]) if len(pk) == 1 else f"({', '.join(ident(c) for c in pk)})"
    odd = [
        f"NOT (isfinite({ident(c)}) AND year({ident(c)}) BETWEEN 1 AND 9999)"
        for c in source
        if staged[c].upper() in _TIME_TYPES
    ]
    out_of_range = (
        f"count(*) FILTER (WHERE {ident(LOAD_ID_COLUMN)} = ? AND ({' OR '.join(odd)}))"
        if odd
        else "0"
    )
    rows, nulls, repeated, times = fetch_row(
        con,
        f"SELECT count(*), count(*) FILTER (WHERE {null_key}), "
        f"count(*) FILTER (WHERE NOT ({null_key})) - count(DISTINCT {key}), {out_of_range} "
        f"FROM {table}",
        [load_id] if odd else None,
    )
    if nulls:
        raise Skipped("a row has a NULL key (the dlt read holds such rows in quarantine)")
    if repeated:
        raise Skipped(
            f"{repeated} row(s) repeat a key (not unique in the source; the dlt read stops "
            "the run on it)"
        )
    if times:
        raise Skipped("a time value is infinite or outside years 1-9999 (the dlt read refuses it)")
    return int(rows)
