"""Rows whose cursor value a read refused: remembered by key, read again by key.

SQLite keeps any value in any column. A cursor value the read cannot take (text that is
no time in a ``TIMESTAMP`` cursor, text that is not UTF-8, text in an ``INTEGER`` cursor)
stops its table (``TableReadError``) until the source is fixed. A fix that gives the row a
cursor value *below* the window's bound (``window.window_start``), as a user fixing a
typo to the row's real, older time does, puts the row out of every later window: its change
would never be published. So when a window read stops, the keys of the window's rows whose
cursor value the read refuses are kept (``remember``, under the job's home), the next run
reads those keys again whatever their cursor (``kept``, with the rows whose cursor was NULL),
and a run whose extract succeeds forgets them (``forget``).

Only SQLite's storage classes let a cursor hold such a value; for other databases
``refused_keys`` finds none (their refusals of a typed value are held in quarantine by key,
``types.Plan.unfit``, and read again the same way).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from deltaferry.config import JobConfig, TableConfig, job_home, write_home_file
from deltaferry.errors import TerminalError
from sources.sql_database.settings import source_table
from sources.sql_database.window import parse_time_text, text_time_columns, window

# the storage classes (SQLite's ``typeof``) a column's declared type reads as one Arrow
# type, by the column's affinity (https://www.sqlite.org/datatype3.html, section 3.1)
_EXPECTED = {
    "integer": {"integer"},
    "real": {"real", "integer"},
    "numeric": {"integer", "real"},
    "text": {"text"},
}
# rows read per fetch of the failure path's query (it keeps only the refused keys)
_FETCH_ROWS = 10_000


def _path(job: JobConfig, t: TableConfig) -> Path:
    return job_home(job.name) / "refused_cursor" / f"{t.name}.json"


def kept(job: JobConfig, t: TableConfig) -> list[dict[str, Any]]:
    """The keys ``remember`` kept for ``t`` (a dict per key, JSON values: ``window._typed``
    reads them back as their column's type); empty when none are."""
    path = _path(job, t)
    if t.cursor is None or not path.exists():
        return []
    try:
        keys = json.loads(path.read_text())
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise ValueError("not a list of keys")
    except ValueError as e:
        raise TerminalError(
            f"job '{job.name}' table '{t.name}': the keys of rows whose cursor value was "
            f"refused ({path}) cannot be read ({e}); remove the file and run "
            f"'deltaferry reset {job.name} --table {t.name} --reason ...' so a whole read "
            "finds every row again"
        ) from None
    return keys


def remember(job: JobConfig, t: TableConfig, keys: Iterable[dict[str, Any]]) -> None:
    """Keep ``keys`` with those kept before (not read again yet: the table stopped before
    its read again by key)."""
    every = {json.dumps(k, sort_keys=True, default=str) for k in kept(job, t)}
    every |= {json.dumps(k, sort_keys=True, default=str) for k in keys}
    write_home_file(_path(job, t), json.dumps([json.loads(k) for k in sorted(every)]))


def forget(job: JobConfig, t: TableConfig) -> None:
    """Drop the kept keys: the run that read them again by key staged what they hold."""
    _path(job, t).unlink(missing_ok=True)


def _affinity(declared: str) -> str:
    """SQLite's column affinity of a declared type name (section 3.1 of its datatype page)."""
    name = declared.upper()
    if "INT" in name:
        return "integer"
    if "CHAR" in name or "CLOB" in name or "TEXT" in name:
        return "text"
    if "BLOB" in name or not name:
        return "blob"
    if "REAL" in name or "FLOA" in name or "DOUB" in name:
        return "real"
    return "numeric"


def refused_keys(
    job: JobConfig, t: TableConfig, engine: sa.Engine, bound: Any
) -> list[dict[str, Any]]:
    """Keys of the rows of ``t``'s window (``window.window`` from ``bound``, the rows the
    stopped read selected) whose cursor value the read refuses or may refuse: text that is
    not UTF-8; in a time-text cursor (``text_time_columns``) a value that is not text or
    text ``parse_time_text`` refuses; elsewhere a storage class the column's affinity does
    not read as one type (text in an ``INTEGER`` cursor). One query of the window, its
    rows fetched ``_FETCH_ROWS`` at a time, only the refused keys kept. Empty for a
    database other than SQLite, a table without a cursor, or no bound (a first read reads
    every row again)."""
    if engine.dialect.name != "sqlite" or t.cursor is None or bound is None:
        return []
    text_times = text_time_columns(engine, t)
    table = sa.Table(source_table(t), sa.MetaData(), autoload_with=engine)
    cursor = table.c[t.cursor]
    kind = text_times.get(t.cursor)
    expected = _EXPECTED.get(_affinity(_declared(engine, source_table(t), t.cursor)))
    zone = ZoneInfo(job.timezone)
    # the key parts as the driver gives them (a declared time key is text here), the
    # cursor's storage class and its bytes (text that is not UTF-8 fails a text read)
    raw = [sa.type_coerce(table.c[k], sa.types.NullType()).label(k) for k in t.primary_key]
    query = sa.select(
        *raw,
        sa.func.typeof(cursor).label("__storage"),
        sa.cast(cursor, sa.LargeBinary).label("__bytes"),
    )
    query = window(job, t, bound, text_times)(query, table, None, engine)
    out: list[dict[str, Any]] = []
    with engine.connect() as con:
        result = con.execution_options(yield_per=_FETCH_ROWS).execute(query)
        for row in result:
            *key, storage, data = row
            if storage == "null" or not _refused(storage, data, kind, expected, zone):
                continue
            out.append(
                {
                    k: _key_part(v, text_times.get(k), zone)
                    for k, v in zip(t.primary_key, key, strict=True)
                }
            )
    return out


def _declared(engine: sa.Engine, table: str, column: str) -> str:
    """The column's declared type as SQLite keeps it ("" when none)."""
    with engine.connect() as con:
        rows = con.execute(sa.text("SELECT name, type FROM pragma_table_info(:t)"), {"t": table})
        return next((str(ty or "") for name, ty in rows if name == column), "")


def _refused(storage: str, data: bytes, kind: str | None, expected: Any, zone: ZoneInfo) -> bool:
    if storage == "text":
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return True
        if kind in ("timestamp", "date"):
            try:
                parse_time_text(text, kind, zone)
            except (ValueError, OverflowError):
                return True
            return False
    elif kind in ("timestamp", "date"):  # a time-text cursor reads text only
        return True
    return expected is not None and storage not in expected


def _key_part(value: Any, kind: str | None, zone: ZoneInfo) -> Any:
    """A key part as staged: time text as its instant (``window._typed`` reads its text
    back), anything else as the driver gave it."""
    if kind in ("timestamp", "date") and isinstance(value, str):
        try:
            return str(parse_time_text(value, kind, zone))
        except (ValueError, OverflowError):
            return value
    return value
