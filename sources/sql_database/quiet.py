"""The SQL source's change check (``sources/quiet.py``): the window a read would select, as
one fingerprint per table, without dlt.

For each table the check reflects the table, adapts its columns as every read does
(``adapt.adapt_table``, ``types.carry_plans``), selects the read's window with the read's
own query adapter (``window.window``, at the bound ``window.window_start`` reads from
staging) and hashes the rows it returns: each row's values (type and ``repr``) with the
column names, as a set. So a row inserted, updated, deleted or re-keyed in the window, a
column added, dropped or retyped, changes the fingerprint; a change below the window's bound
is no more seen than the read would see it.

It abstains (``Quiet.state`` None, the run reads) for a table without a cursor or under
``deletes = "reconcile"`` (their reads see every row), a table with nothing staged, one
with staged cursor values after now or a numeric cursor read as a possible Unix time (the
read warns about them), one with keys to read again (NULL cursors, refused cursor values,
rows held without a key), a window of more than ``MAX_ROWS`` rows, a value of a type it
does not know, and any error (a table with an open quarantine record is read too:
``sources.quiet.decide``). The read's flags of values their published type cannot carry
(``types._unfit_query``: a numeric NaN, a date past year 9999, which the adapted types
read as NULL) are hashed with the row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from deltaferry.config import JobConfig, TableConfig
from sources.quiet import Quiet, decide

# a window of more rows than this is not fingerprinted: the read is the better check
MAX_ROWS = 10_000
_PLAIN = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    Decimal,
    dt.datetime,
    dt.date,
    dt.time,
    dt.timedelta,
    uuid.UUID,
)


class Abstain(Exception):
    """The check has no answer for a table: the run reads (the message says why)."""


def check(job: JobConfig, holding: Callable[[], set[str]], max_age: float) -> Quiet:
    """The job's change check: its state now, compared with the job's record
    (``sources.quiet.decide``; ``holding()``: the tables with open quarantine records)."""
    try:
        state = job_state(job)
    except Abstain as e:
        return Quiet(job, None, str(e))
    except Exception as e:  # noqa: BLE001 - no answer: the read that follows decides
        from sources.sql_database.connection import scrub

        why = scrub(job, f"the change check could not run ({type(e).__name__}: {e})")
        return Quiet(job, None, why[:500])
    return decide(job, state, max_age, holding)


def job_state(job: JobConfig) -> dict[str, Any]:
    """The state the check compares: the staging file's newest load, and per table its
    window's bound and fingerprint. Raises ``Abstain`` (or the error that stopped it)."""
    from sources.sql_database.connection import StallWatchdog, engine_for
    from sources.staging import staging_path

    if not staging_path(job.name).exists():
        raise Abstain("nothing staged yet")
    engine = engine_for(job)
    # a source that stops answering mid-query is cut as a read's would be (connection.py)
    watchdog = StallWatchdog(engine)
    try:
        tables = {t.name: _table_state(job, t, engine) for t in job.tables}
    finally:
        watchdog.close()
        engine.dispose()
    return {"load": _newest_load(job), "tables": tables}


def _newest_load(job: JobConfig) -> str | None:
    from deltaferry.duck import fetch_row
    from sources.columns import STAGING_DATASET
    from sources.staging import read_staging, staging_path

    con = read_staging(staging_path(job.name), None)
    try:
        row = fetch_row(
            con,
            f"SELECT max(load_id), count(*) FROM {STAGING_DATASET}._dlt_loads",
        )
    finally:
        con.close()
    return f"{row[0]}/{row[1]}"


def _table_state(job: JobConfig, t: TableConfig, engine: sa.Engine) -> dict[str, Any]:
    from sources.sql_database import refused
    from sources.sql_database.window import null_cursor_keys, unkeyed_cursors, window_start

    where = f"table '{t.name}'"
    if t.cursor is None:
        raise Abstain(f"{where} has no cursor: its read sees every row")
    if t.deletes == "reconcile":
        raise Abstain(f"{where} reconciles deletes: its read sees every key")
    start = window_start(job, t)
    if start.bound is None:
        raise Abstain(f"{where} has nothing staged yet")
    if start.keys or start.ahead or start.unguarded:
        raise Abstain(f"{where} has staged cursor values the read warns about")
    if null_cursor_keys(job, t) or refused.kept(job, t):
        raise Abstain(f"{where} has rows to read again by key")
    unkeyed = unkeyed_cursors(job, t)
    if unkeyed is not None and unkeyed.values:
        raise Abstain(f"{where} has rows held without a key to read again")
    rows, digest = _fingerprint(job, t, engine, start.bound)
    return {"bound": repr(start.bound), "rows": rows, "fingerprint": digest}


def window_query(
    job: JobConfig, t: TableConfig, engine: sa.Engine, bound: Any
) -> tuple[Any, list[str]]:
    """The select of the table's window as the read makes it (its columns adapted, excluded
    columns left out, the read's query adapter applied), and the names of all the table's
    columns at the source (excluded ones too: the read reports them for drift)."""
    from sources.sql_database.adapt import adapt_table
    from sources.sql_database.settings import source_table
    from sources.sql_database.types import _unfit_query, carry_plans
    from sources.sql_database.window import text_time_columns, window

    text_times = text_time_columns(engine, t)
    table = sa.Table(source_table(t), sa.MetaData(), autoload_with=engine, resolve_fks=False)
    table = adapt_table(job, t, text_times)(table)
    table = carry_plans(job, t, table, engine.dialect)
    excluded = set(t.options.get("exclude_columns", ()))
    query = sa.select(*[c for c in table.columns if c.name not in excluded])
    # with the read's flags of values their published type cannot carry (a numeric NaN, a
    # date past year 9999): the adapted types read such a value as NULL, so without them a
    # row changed from NULL to one is the same row here, while the read holds it
    adapted = _unfit_query(window(job, t, bound, text_times))
    return adapted(query, table, None, engine), [c.name for c in table.columns]


def _fingerprint(job: JobConfig, t: TableConfig, engine: sa.Engine, bound: Any) -> tuple[int, str]:
    query, columns = window_query(job, t, engine, bound)
    with engine.connect() as con:
        result = con.execute(query.limit(MAX_ROWS + 1))
        names = [columns, list(result.keys())]
        rows = result.fetchall()
    if len(rows) > MAX_ROWS:
        raise Abstain(f"table '{t.name}': the window holds more than {MAX_ROWS:,} rows")
    digests = sorted(hashlib.sha256(_row_text(t, row).encode()).digest() for row in rows)
    whole = hashlib.sha256(repr(names).encode())
    for d in digests:
        whole.update(d)
    return len(rows), whole.hexdigest()


def _row_text(t: TableConfig, row: Any) -> str:
    return "\x1f".join(_value_text(t, v) for v in row)


def _value_text(t: TableConfig, v: Any) -> str:
    if isinstance(v, memoryview):
        v = bytes(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value_text(t, x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{" + ",".join(f"{_value_text(t, k)}:{_value_text(t, x)}" for k, x in v.items()) + "}"
        )
    if not isinstance(v, _PLAIN):
        raise Abstain(f"table '{t.name}': a value of type {type(v).__name__} is not fingerprinted")
    if isinstance(v, (dt.datetime, dt.time)) and v.tzinfo is not None:
        return f"{type(v).__name__}:{v!r}:{v.utcoffset()}"
    return f"{type(v).__name__}:{v!r}"
