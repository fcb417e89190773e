"""What an incremental SQL read selects, and how its values become instants.

**The window.** A table with a cursor is read from the newest cursor value already staged
that is not after now (``window_start``), with the range closed: rows *at* that value are
read again on every run, together with every row whose cursor is NULL or after now (a
typo year is read again each run and warned about, never the bound that hides every later
change), and only rows whose content changed are staged (``sources.change_detection.ChangedByKey``). So a row that commits late with a cursor
value already synced, or changes in place without moving its cursor, is never lost, and an
unchanged row is never staged twice. The bound is derived from staging itself, which a
load commits atomically, so it can never run ahead of what was staged.

**Instants, never text.** SQLite has no time type: ``TIMESTAMP``/``DATETIME``/``DATE``
columns hold text in whatever form the writer chose (``CURRENT_TIMESTAMP`` writes
``2026-03-01 12:00:00``, others write ``T``, fractions of any length, ``Z`` or
``+hh:mm``). Such columns (``text_time_columns``) are read as their text and parsed value
by value (``TimeText``, ``parse_time_text``) into the instant's UTC wall time, naive values
taken in the job's ``timezone``; the window compares them in SQL with ``julianday()`` (an
instant) minus a margin, never as text. A value that is not a timestamp, names a wall time
the zone does not have, or has digits beyond microseconds, is refused in one line naming
job, table, column and value. Naive timestamps of other databases are taken in the job's
``timezone`` the same way (``Normalize``).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import itertools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from contracts.exact import finer_than_microseconds
from deltaferry.config import JobConfig, TableConfig, write_home_file
from deltaferry.duck import column_types, fetch_row, ident
from deltaferry.errors import TableReadError, TerminalError
from deltaferry.quarantine import UNKEYED
from sources import unix_time
from sources.columns import DELETED_COLUMN, STAGING_DATASET
from sources.sql_database.connection import SQLITE_CODE_POINT, backend_name
from sources.sql_database.settings import source_table
from sources.staging import read_staging, staged_columns, staged_table_exists, staging_path
from sources.wall_time import ZoneShifts, assume_zone, wall_to_utc

# SQLite time text is compared through julianday(), which keeps milliseconds (the same
# instant in any text form gives the same julianday); rows up to this many seconds before
# the bound are read again (and kept only when changed), covering its rounding
SQLITE_MARGIN_SECONDS = 0.002
# julianday('0001-01-01'): a value julianday() reads as earlier is no time Python can hold
JULIAN_DAY_YEAR_1 = 1721425.5
# a naive cursor compared in a zone other than UTC: re-read enough to cover any offset
# and a daylight-saving fold
NAIVE_ZONE_MARGIN = dt.timedelta(hours=27)


def text_time_columns(engine: sa.Engine, t: TableConfig) -> dict[str, str]:
    """SQLite columns read as their raw text, by name: ``"timestamp"``, ``"date"`` or
    ``"time"`` (of day) for a declared time type (parsed by ``TimeText``), ``"json"`` for a declared ``JSON`` column
    (the document's text as stored: SQLAlchemy would decode it into Python values of mixed
    kinds, and a JSON ``null`` document would become SQL NULL). A column the table's
    ``column_types`` declares is read as declared instead (a ``DATE`` column declared
    ``"timestamp"`` is parsed as timestamps: SQLite keeps any text there). Empty for other databases (their
    drivers return real time values)."""
    if engine.dialect.name != "sqlite":
        return {}
    declared = t.options.get("column_types", {})
    out: dict[str, str] = {}
    for col in sa.inspect(engine).get_columns(source_table(t)):
        if col["name"] in declared:
            # a DATE column whose text holds times of day, published as timestamps
            if declared[col["name"]] == "timestamp" and isinstance(col["type"], sa.Date):
                out[col["name"]] = "timestamp"
            continue
        if isinstance(col["type"], sa.DateTime):
            out[col["name"]] = "timestamp"
        elif isinstance(col["type"], sa.Date):
            out[col["name"]] = "date"
        elif isinstance(col["type"], sa.Time):
            out[col["name"]] = "time"
        elif isinstance(col["type"], sa.JSON):
            out[col["name"]] = "json"
    return out


_OFFSET = re.compile(r"[+-]\d\d:?(\d\d)(?::?\d\d(?:\.\d+)?)?$")
_UTC_WORD = re.compile(r"\s*(?:UTC|GMT)$", re.IGNORECASE)


def parse_time_text(
    text: str, kind: str, zone: ZoneInfo, shifts: Callable[[str], None] | None = None
) -> dt.datetime | dt.date | dt.time:
    """One SQLite time text as what it means: a ``date``, a ``time`` of day (``kind`` "time":
    ``HH:MM``, ``HH:MM:SS``, fractions whose digits beyond microseconds are zeros, an offset
    only if it is zero; SQLAlchemy's reading cut a 7th digit and dropped an offset), or a
    naive ``datetime`` holding
    the UTC wall time of the instant (naive text taken in ``zone``, by
    ``sources/wall_time.py``'s rule where its clock changes: ``shifts`` is told the kind,
    ``REPEATED`` or ``SKIPPED``, of each such text). Space or ``T``, fractions of any length
    (digits beyond microseconds must be zeros), ``Z``, ``UTC``, ``+hh``, ``+hhmm``,
    ``+hh:mm``. Raises ValueError for anything else."""
    value = text
    if value[:1].isspace() or value[-1:].isspace():
        value = value.strip()
    if value[-1:] in ("C", "c", "T", "t"):  # a trailing UTC/GMT word
        value = _UTC_WORD.sub("Z", value)
    if kind == "date":
        return dt.date.fromisoformat(value)
    if kind == "time":
        return _time_of_day(value)
    if len(value) > 26 and finer_than_microseconds(value):  # longer: more than 6 digits
        raise ValueError("digits beyond microseconds")
    offset = _OFFSET.search(value)
    if offset is not None and int(offset.group(1)) >= 60:  # fromisoformat reads +02:60 as +03
        raise ValueError("offset minutes beyond 59")
    when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        if zone.key == "UTC":  # naive UTC is already what is staged
            return when
        utc, shifted = wall_to_utc(when, zone)
        if shifted is not None and shifts is not None:
            shifts(shifted)
        return utc
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _time_of_day(value: str) -> dt.time:
    if finer_than_microseconds(value):
        raise ValueError("digits beyond microseconds")
    at = dt.time.fromisoformat(value)
    if at.tzinfo is not None:
        if at.utcoffset():  # a time of day has no instant to move to UTC (nor a date)
            raise ValueError("an offset")
        at = at.replace(tzinfo=None)
    return at


class TimeText(sa.types.TypeDecorator):
    """A SQLite time column read as its stored text and parsed by ``parse_time_text``: dlt
    gets real values (``dlt_type``: a naive timestamp, or a date, as SQLAlchemy reflected
    the column), never text compared as text. A value that is not an exact time stops the
    read with a ``TableReadError`` naming job, table, column and value (``table`` given:
    the job's other tables go on; a ``TerminalError`` without it)."""

    impl = sa.Text
    cache_ok = True

    def __init__(
        self,
        kind: str,
        zone: str,
        where: str,
        column: str,
        fixed: bool,
        shifts: ZoneShifts | None = None,
        table: str | None = None,
    ) -> None:
        super().__init__()
        self.kind, self.zone, self.where, self.column, self.fixed = kind, zone, where, column, fixed
        self.table = table  # the job's table: a value refused stops it, not the job
        self._zone = ZoneInfo(zone)
        # texts naming a wall time the zone shows twice or never: counted for the run's notes
        # (an attribute named as the argument: part of SQLAlchemy's cache key, so a cached
        # statement of another read never counts into this read's shifts)
        self.shifts = shifts
        self._shifted = None if shifts is None else lambda k: shifts.add(column, k)
        self.dlt_type = {"timestamp": sa.DateTime(timezone=False), "time": sa.Time()}.get(
            kind, sa.Date()
        )

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        # one call per value (SQLAlchemy's own would be three), and the common value, naive
        # ISO text of a timestamp in a UTC job, parsed on the spot: the same result as
        # ``parse_time_text`` for exactly the text it takes without adjusting it
        if self.impl_instance.result_processor(dialect, coltype) is not None:
            return super().result_processor(dialect, coltype)
        slow = self.process_result_value
        if self.kind != "timestamp" or self._zone.key != "UTC":
            return lambda value: slow(value, dialect)
        parse = dt.datetime.fromisoformat

        def process(value: Any) -> Any:
            if value is None:
                return None
            # text that starts with a space fails fromisoformat and takes the full path
            last = value[-1:] if type(value) is str else ""
            if last and last not in "CcTt" and not last.isspace() and len(value) <= 26:
                try:
                    when = parse(value)
                except ValueError:
                    return slow(value, dialect)
                if when.tzinfo is None:
                    return when
            return slow(value, dialect)

        return process

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        try:
            if not isinstance(value, str):
                raise ValueError("not text")
            return parse_time_text(value, self.kind, self._zone, self._shifted)
        except (ValueError, OverflowError):  # Overflow: year 1 or 9999 moved by a zone
            form = {
                "timestamp": "timestamp (ISO-8601, at most microseconds)",
                "time": "time of day (HH:MM[:SS[.ffffff]], at most microseconds, no offset but Z or +00:00)",
            }.get(self.kind, "date")
            as_text = f'column_types = {{ {self.column} = "text" }}'
            fix = (
                "fix the value in the source (a cursor or key column keeps its type)"
                if self.fixed
                else f"fix the value in the source, or publish the column as text ({as_text})"
            )
            if not self.fixed and self.kind == "date" and _is_timestamp_text(value, self._zone):
                fix = (
                    "it has a time of day: publish the column as timestamps (column_types = "
                    f'{{ {self.column} = "timestamp" }}), as text ({as_text}), or fix the '
                    "value in the source"
                )
            if not self.fixed:  # a staged column keeps its type until the table is staged anew
                fix += "; a job that staged the column already then needs deltaferry reset"
            message = f"{self.where}: column '{self.column}' value {value!r} is not a {form}; {fix}"
            if self.table is not None:
                raise TableReadError(message, self.table) from None
            raise TerminalError(message) from None


def _is_timestamp_text(value: Any, zone: Any) -> bool:
    """Whether ``value`` reads as a timestamp (for the advice of a date column's error)."""
    try:
        parse_time_text(value, "timestamp", zone)
    except (ValueError, TypeError):
        return False
    return True


class Normalize:
    """A dlt map step over Arrow chunks: naive timestamps of databases with time types are
    taken in the job's ``timezone`` and kept naive as UTC wall time (the type they always
    had in staging; publishing gives them the contract's zone). A wall time that is not
    one instant there (the clock set back or forward) is read by ``sources/wall_time.py``'s
    rule and counted in ``shifts``. (SQLite's time text is parsed earlier, by ``TimeText``.)"""

    def __init__(
        self,
        job: JobConfig,
        t: TableConfig,
        text_times: dict[str, str],
        shifts: ZoneShifts | None = None,
    ) -> None:
        self.job = job
        self.t = t
        self.text_times = text_times
        self.zone = job.timezone
        self.shifts = shifts if shifts is not None else ZoneShifts()

    @property
    def where(self) -> str:
        return f"job '{self.job.name}' table '{self.t.name}'"

    def __call__(self, chunk: pa.Table) -> pa.Table:
        if self.zone == "UTC":
            return chunk
        for i, field in enumerate(chunk.schema):
            if (
                pa.types.is_timestamp(field.type)
                and field.type.tz is None
                and field.name not in self.text_times
            ):
                try:
                    local, shifted = assume_zone(chunk.column(i), self.zone)
                except OverflowError:  # year 1 or 9999 moved out of range by the zone
                    raise TerminalError(
                        f"{self.where}: column '{field.name}' holds a naive timestamp that is "
                        f"not an instant in the job's timezone {self.zone} (out of range); fix "
                        "the value in the source, or set the job's timezone to the zone it was "
                        "written in"
                    ) from None
                self.shifts.add_all(field.name, shifted)
                utc = local.cast(pa.timestamp(field.type.unit, "UTC"))
                chunk = chunk.set_column(i, field.name, utc.cast(pa.timestamp(field.type.unit)))
        return chunk


# a staged cursor value further ahead of this worker's clock than this is warned about (a
# typo year, a writer in another zone than the job's ``timezone``); values ahead by less
# (a database clock a little ahead) are left out of the bound as well, silently
FUTURE_CURSOR_WARNING = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class WindowStart:
    """Where a cursor table's window starts (``window_start``).

    ``bound``: the newest staged cursor value not after ``now`` (for time cursors a
    ``datetime`` in UTC, naive when the staged column is; a ``date`` for dates), or None:
    read the table whole (nothing staged yet, or every staged value is after now).
    ``ahead``: staged rows whose cursor value is after now plus ``FUTURE_CURSOR_WARNING``;
    ``newest``: the newest of them (None when ``ahead`` is 0). ``keys``: the key values
    (a dict per row) of every staged row whose cursor value is after now."""

    bound: Any
    ahead: int = 0
    newest: Any = None
    # keys of the staged rows whose cursor value is after now: read again by key every
    # run, so a fix that gives one its real, older time (below the bound) is not missed
    keys: list[dict] = dataclasses.field(default_factory=list)
    # a number cursor without cursor_unit whose newest staged value, read as a Unix time by
    # its size, is after now: that value is the bound as it is (``unix_time.shown``'s text)
    unguarded: str = ""

    def note(self, job: JobConfig, t: TableConfig) -> str | None:
        """The run's warning about cursor values ahead of the clock, or None."""
        if self.unguarded:
            return (
                f"job '{job.name}' table '{t.name}': the newest staged cursor ('{t.cursor}') "
                f"value is {self.unguarded}, after now. A number cursor is taken as it is, so "
                "the window starts there and a row changed later with a smaller value is "
                "not read: if the column holds Unix times, set the table's cursor_unit "
                '("s", "ms", "us" or "ns"; the window then starts at the newest value not '
                "after now, and what this missed is read); if it holds ids or versions, set "
                'cursor_unit = "number" to silence this'
            )
        if not self.ahead:
            return None
        start = "the whole table" if self.bound is None else f"{self.bound}"
        unit = t.options.get("cursor_unit")
        newest = (
            unix_time.shown(self.newest, unit, "cursor_unit")
            if unit in unix_time.UNITS and not isinstance(self.newest, dt.date)
            else f"{self.newest}, UTC"
        )
        return (
            f"job '{job.name}' table '{t.name}': {self.ahead} staged row(s) have a cursor "
            f"('{t.cursor}') value after now (newest {newest}); the window starts "
            f"at the newest value not after now ({start}), so later changes are still read, "
            "and those rows are read again every run, by key as well (kept only when "
            "changed), whatever value a fix gives them. Check the "
            "source for a wrong year, or a writer in another zone than the job's timezone"
        )


_TIME_TYPES = ("TIMESTAMP", "DATE")
# staged types of a number cursor (DuckDB's names)
_NUMBER_TYPES = (
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
    "UBIGINT", "UHUGEINT", "DECIMAL", "DOUBLE", "FLOAT", "REAL",
)  # fmt: skip


# text a SQLite cursor holds that is a number: digits only, at most 18 (a BIGINT's range);
# the same test in DuckDB (staging) and in SQLite (``window``)
_DIGITS = "[0-9]{1,18}"
_MAX_DIGITS = 18
# the sources whose text cursor of numbers is compared as numbers (``window``)
TEXT_OF_NUMBERS = ("sqlite", "postgresql")
# the staged values a TEXT cursor's kind is judged on (every value when there are fewer;
# the same rows for the same table): judging all of 5M time texts took 1.9 s a run
_SAMPLE_ROWS = 20_000
_SAMPLE = f"USING SAMPLE reservoir({_SAMPLE_ROWS} ROWS) REPEATABLE (7)"


def _text_cursor(
    con: Any, col: str, table: str, job: JobConfig, t: TableConfig, unit: Any, times: bool = True
) -> str | None:
    """What a SQLite TEXT cursor's staged values hold (judged on a sample of them, or on
    every value when it finds neither kind): ``"number"`` when some are digits
    (at most 18) and no fewer than are time text, ``"time"`` when some are time text
    DuckDB reads (``2026-03-01 12:00:00``, ``T``, fractions, ``Z``, offsets) and more
    than are digits, else None (compared as text). Compared as text, ``'10'`` sorts
    before ``'9'``, ``2026-03-01T09:00:00Z`` after ``2026-03-01 12:00:00``, and a typo
    (``'8000000000'``, the year 2240) after every later value: such a cursor's window is
    the numbers' or the instants' (``window``), and its other text (empty, words, the
    other kind) is read every run, kept only when changed, whatever share it has. What is
    published stays the text as written. ConfigError when the table sets ``cursor_unit``
    to a unit of time and the cursor holds no numbers (naming a value)."""
    judged = (
        f"SELECT count(*), count({col}), "
        f"count(*) FILTER (WHERE regexp_full_match({col}, '{_DIGITS}')), "
        f"count(TRY_CAST({col} AS TIMESTAMPTZ)), "
        f"min({col}) FILTER (WHERE NOT regexp_full_match({col}, '{_DIGITS}')) FROM {table}"
    )
    # which kind there is more of, from a sample (either way the other text is read every
    # run, so a sample's answer is safe); that there is neither, from every value (again
    # only when the sample was not every row already)
    # ``times=False`` (PostgreSQL): time text is not judged, any digits make it numbers
    rows, values, digits, timed, other = fetch_row(con, f"{judged} {_SAMPLE}")
    if not digits and not timed and rows >= _SAMPLE_ROWS:
        rows, values, digits, timed, other = fetch_row(con, judged)
    timed = timed if times else 0
    kind = "number" if digits and digits >= timed else "time" if timed else None
    if unit in unix_time.UNITS and kind != "number" and values:
        from deltaferry.errors import ConfigError

        raise ConfigError(
            f"job '{job.name}' table '{t.name}': cursor_unit = {unit!r} is for a cursor of "
            f"numbers (Unix times), and '{t.cursor}' holds text that is no number, e.g. "
            f"{other!r}: fix the value at the source, or leave cursor_unit out"
        )
    return kind


def _utc(value: Any) -> Any:
    """An aware datetime in UTC (a text cursor's instants come in the job's zone)."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc)
    return value


def _unguarded(con: Any, col: str, table: str, late: dt.datetime) -> tuple[Any, str]:
    """A number cursor without ``cursor_unit``: its newest staged value, and
    ``unix_time.shown`` of it when, read as a Unix time in the unit most staged values have
    by their size (seconds from 1e9, milliseconds from 1e12 to 1e15; a tie: the smaller),
    it is after ``late`` (a typo year, a millisecond time among seconds); else ""."""
    bands = ", ".join(
        f"count(*) FILTER (WHERE {col} >= {low} AND {col} < {high})"
        for low, high, _ in unix_time.BY_SIZE
    )
    newest, *counts = fetch_row(
        con, f"SELECT max({col}), count({col}), {bands} FROM {table}"
    )
    total, sized = counts[0], counts[1:]
    if newest is None or isinstance(newest, bool) or not total:
        return newest, ""
    sizes = {u: n for (_, _, u), n in zip(unix_time.BY_SIZE, sized)}
    sizes["number"] = total - sum(sized)  # no Unix time by their size (ids, versions)
    unit = unix_time.most_common(sizes)
    if unit is None or unit == "number":
        return newest, ""
    at = unix_time.to_time(newest, unit)
    if at is None or at <= late:
        return newest, ""
    how = "its size" if unix_time.by_size(newest) == unit else "the size most values have"
    return newest, unix_time.shown(newest, unit, how)


def window_start(
    job: JobConfig,
    t: TableConfig,
    borrowed: Any = None,
    now: dt.datetime | None = None,
    *,
    with_keys: bool = True,
    judge_unit: bool = False,
) -> WindowStart:
    """Where the table's window starts: the newest cursor value staged that is not after
    ``now`` (this worker's clock, UTC, by default). Staged values after now (a typo year
    2240, a writer's clock ahead) do not count: were the bound one of them, every later
    change below it would be missed until a reset. Rows with such values are read again on
    every run by the window, and by key (``keys``: a fix may give one a value below the
    bound); the content hash keeps only the changed ones. They are counted for the run's
    warning (``with_keys=False``: the count only, for the warning after the run). Other
    cursor types (integers, text) take the newest value as is, except a number cursor whose
    table's ``cursor_unit`` names a unit of Unix time (``sources.unix_time``): compared with
    the clock as such. Without ``cursor_unit``, a newest number that by its size would be a
    Unix time after now is named for the run's warning (``unguarded``).
    Tombstones carry no cursor and do not count. ``WindowStart(None)`` before the table's
    first load. ``judge_unit`` (after a read): ConfigError when ``cursor_unit`` names a
    unit of time and a SQLite TEXT cursor holds no numbers (``_text_cursor``); before a
    read it is not judged, so a fix at the source is read and judged with the rest."""
    path = staging_path(job.name)
    if t.cursor is None or not path.exists():
        return WindowStart(None)
    con = read_staging(path, borrowed)
    try:
        if not staged_table_exists(con, t.name):
            return WindowStart(None)
        kind = column_types(con, t.name, STAGING_DATASET).get(t.cursor)
        if kind is None:
            return WindowStart(None)
        con.execute("SET TimeZone = 'UTC'")
        col, table = ident(t.cursor), f"{STAGING_DATASET}.{ident(t.name)}"
        clock = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
        late = clock + FUTURE_CURSOR_WARNING
        unit = t.options.get("cursor_unit")
        numeric = kind.upper().startswith(_NUMBER_TYPES)
        source = backend_name(job) if kind.upper() == "VARCHAR" else None
        if source in TEXT_OF_NUMBERS:
            if source == "postgresql":  # char(n) is staged padded; its cast to text is not
                col = f"rtrim({col}, ' ')"
            judged = unit if judge_unit else None
            # PostgreSQL compares no time text as instants: digits make it numbers, and
            # everything else, time text included, is read every run (``window``)
            held = _text_cursor(con, col, table, job, t, judged, times=source == "sqlite")
            if held == "number":  # only digits count: DuckDB's cast reads ' 9', '+9', '1e3'
                digits = f"regexp_full_match({col}, '{_DIGITS}')"
                col, numeric = f"(CASE WHEN {digits} THEN CAST({col} AS BIGINT) END)", True
            elif held == "time" and source == "sqlite":  # (PostgreSQL: compared as text)
                # naive text is a wall time in the job's zone (as TimeText reads it)
                con.execute(f"SET TimeZone = '{job.timezone}'")
                col, kind = f"TRY_CAST({col} AS TIMESTAMPTZ)", "TIMESTAMP WITH TIME ZONE"
        at: Any
        warn: Any
        if numeric and unit in unix_time.UNITS:  # Unix times: compared with the clock
            at, warn = unix_time.of_time(clock, unit), unix_time.of_time(late, unit)
        elif not kind.upper().startswith(_TIME_TYPES):
            if numeric and unit is None:
                newest, guess = _unguarded(con, col, table, late)
                return WindowStart(newest, unguarded=guess)
            return WindowStart(fetch_row(con, f"SELECT max({col}) FROM {table}")[0])
        elif kind.upper() == "DATE":
            at, warn = clock.date(), late.date()
        elif "TIME ZONE" in kind.upper():
            at, warn = clock, late
        else:  # naive staged times are UTC wall times (Normalize, TimeText)
            at, warn = clock.replace(tzinfo=None), late.replace(tzinfo=None)
        bound, ahead, newest, later = fetch_row(
            con,
            f"SELECT max({col}) FILTER (WHERE {col} <= $at), "
            f"count(*) FILTER (WHERE {col} > $warn), max({col}), "
            f"count(*) FILTER (WHERE {col} > $at) FROM {table}",
            {"at": at, "warn": warn},
        )
        keys: list[dict] = []
        if later and with_keys:  # tombstones carry no cursor: only live rows have one
            pk = ", ".join(ident(c) for c in t.primary_key)
            keys = (
                con.execute(f"SELECT {pk} FROM {table} WHERE {col} > $at", {"at": at})
                .fetch_arrow_table()
                .to_pylist()
            )
        return WindowStart(_utc(bound), int(ahead or 0), _utc(newest) if ahead else None, keys)
    finally:
        con.close()


def null_cursor_keys(job: JobConfig, t: TableConfig, borrowed: Any = None) -> list[dict]:
    """Keys of the rows whose cursor was NULL when last read: staged with a NULL cursor
    (``null_cursor = "include"``) or held back for it (``"quarantine"``, remembered by
    ``remember_null_cursor_keys``). Such a row may get a cursor value older than the window's
    bound; the caller reads these keys again whatever their cursor."""
    import json

    if t.cursor is None:
        return []
    if t.null_cursor == "quarantine":
        path = _null_cursor_file(job, t)
        return json.loads(path.read_text()) if path.exists() else []
    path = staging_path(job.name)
    if not path.exists():
        return []
    con = read_staging(path, borrowed)
    try:
        cols = staged_columns(con, t.name) if staged_table_exists(con, t.name) else []
        if t.cursor not in cols:
            return []
        live = (
            f"coalesce({ident(DELETED_COLUMN)}, false) = false"
            if DELETED_COLUMN in cols
            else "true"
        )
        keys = ", ".join(ident(c) for c in t.primary_key)
        return (
            con.execute(
                f"SELECT {keys} FROM {STAGING_DATASET}.{ident(t.name)} "
                f"WHERE {ident(t.cursor)} IS NULL AND {live}"
            )
            .fetch_arrow_table()
            .to_pylist()
        )
    finally:
        con.close()


def remember_null_cursor_keys(job: JobConfig, t: TableConfig, held: list[dict]) -> None:
    """Keep the keys of the rows held back for a NULL cursor in this run (after its load), so
    the next run reads them again by key (see ``null_cursor_keys``)."""
    import json

    keys = [json.loads(r["pk"]) for r in held if r["check"] == "cursor not null"]
    write_home_file(_null_cursor_file(job, t), json.dumps(keys, sort_keys=True))


@dataclass(frozen=True)
class UnkeyedCursors:
    """The cursor values of a cursor table's rows held back for a NULL key, remembered by
    ``remember_unkeyed_cursors`` after each run's extract. A row whose key is set later
    without its cursor moving is out of the window for good; the next run reads the rows at
    these values again (``by_values``), so such a row is read with its key.

    ``since`` (ISO 8601, UTC) is when the table's values were first remembered: every row
    held without a key since then has its value here, so an open record of such rows opened
    at or after it, with no such row held by a run that read these values, is settled.
    Records opened before it (by a deltaferry that did not remember) are not."""

    since: str
    values: list[Any]


def unkeyed_cursors(job: JobConfig, t: TableConfig) -> UnkeyedCursors | None:
    """What the last run remembered for ``t`` (see ``UnkeyedCursors``), or None when nothing
    was remembered yet (or the table has no cursor)."""
    import json

    path = _unkeyed_file(job, t)
    if t.cursor is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return UnkeyedCursors(str(data["since"]), list(data["values"]))
    except (ValueError, KeyError, TypeError) as e:
        raise TerminalError(
            f"job '{job.name}' table '{t.name}': the cursor values of rows held without a key "
            f"({path}) cannot be read ({type(e).__name__}: {e}); remove the file and run "
            f"'deltaferry reset {job.name} --table {t.name} --reason ...' so a whole read "
            "finds those rows again"
        ) from None


def remember_unkeyed_cursors(
    job: JobConfig, t: TableConfig, held: list[dict], last: UnkeyedCursors | None
) -> None:
    """Keep the cursor values of the rows held back for a NULL key in this run (every read
    of it: the window, by key, by these values), atomically, keeping ``last.since``.
    Rows whose cursor is NULL too are left out: the window reads those on every run."""
    import json

    values = {
        json.dumps(v, default=str)
        for r in held
        if r["check"] == UNKEYED and (v := json.loads(r["row_json"]).get(t.cursor)) is not None
    }
    since = last.since if last is not None else dt.datetime.now(dt.timezone.utc).isoformat()
    write_home_file(
        _unkeyed_file(job, t),
        json.dumps({"since": since, "values": [json.loads(v) for v in sorted(values)]}),
    )


def _unkeyed_file(job: JobConfig, t: TableConfig) -> Any:
    from deltaferry.config import job_home

    return job_home(job.name) / "unkeyed_cursor" / f"{t.name}.json"


def _null_cursor_file(job: JobConfig, t: TableConfig) -> Any:
    from deltaferry.config import job_home

    return job_home(job.name) / "null_cursor" / f"{t.name}.json"


# an index on julianday(cursor) (README, "Index a SQLite time-text cursor") is one that
# SQLAlchemy's reflection, run by dlt on every read, cannot represent: it says so in a
# warning each run, which would only alarm the operator who followed the README
warnings.filterwarnings(
    "ignore",
    message="Skipped unsupported reflection of expression-based index",
    category=sa.exc.SAWarning,
)

_JULIANDAY = re.compile(
    r"julianday\s*\(\s*[\"`\[]?(?P<col>[^\"`\]\s)]+)[\"`\]]?\s*\)(\s+(asc|desc))?", re.I
)


def _first_indexed(sql: str) -> str | None:
    """The first column expression of a ``CREATE INDEX`` statement's column list, or None
    for a partial index (``WHERE``: SQLite uses it only for queries that imply its
    condition) or text it cannot read."""
    on = re.search(r"\bON\b", sql, re.I)
    start = sql.find("(", on.end()) if on else -1
    if start < 0:
        return None
    depth, parts, begin = 0, [], start + 1
    for pos in range(start, len(sql)):
        ch = sql[pos]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                parts.append(sql[begin:pos])
                if re.search(r"\bWHERE\b", sql[pos + 1 :], re.I):
                    return None
                return parts[0].strip()
        elif ch == "," and depth == 1:
            parts.append(sql[begin:pos])
            begin = pos + 1
    return None


def julianday_indexed(engine: sa.Engine, table: str, column: str) -> bool:
    """Whether SQLite ``table`` has an index whose first column is the expression
    ``julianday(column)`` and no ``WHERE`` (``CREATE INDEX … ON table(julianday(column))``),
    which lets a time-text cursor's window be read without scanning the table (README,
    "Index a SQLite time-text cursor")."""
    if engine.dialect.name != "sqlite":
        return False
    with engine.connect() as con:
        rows = con.execute(
            sa.text(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t "
                "AND sql IS NOT NULL"
            ),
            {"t": table},
        ).fetchall()
    for (sql,) in rows:
        first = _first_indexed(sql)
        m = _JULIANDAY.fullmatch(first) if first else None
        if m is not None and m.group("col").lower() == column.lower():
            return True
    return False


# libc locales that order text by code point, as DuckDB's ``max`` does
_CODE_POINT_LOCALES = {"c", "posix", "c.utf8", "c.utf-8"}
# PostgreSQL server encodings whose bytes, compared as "C" does, are in code point order
# (LATIN1's byte is its code point; SQL_ASCII holds what clients sent, UTF-8 in practice)
_CODE_POINT_ENCODINGS = {"UTF8", "SQL_ASCII", "LATIN1"}
# PostgreSQL base types compared as text as they are (citext ignores case in any collation)
_PLAIN_TEXT_TYPES = {"text", "varchar", "bpchar", "name"}

# the question to PostgreSQL: the column's type (a domain's base type), its collation and
# the database's, and the server's encoding
_PG_TEXT_ORDER = """
WITH RECURSIVE base AS (
    SELECT t.oid, t.typname, t.typtype, t.typbasetype, t.typcategory FROM pg_type t
    WHERE t.oid = (SELECT atttypid FROM pg_attribute
                   WHERE attrelid = to_regclass(:rel) AND attname = :col)
    UNION ALL
    SELECT t.oid, t.typname, t.typtype, t.typbasetype, t.typcategory
    FROM pg_type t JOIN base b ON t.oid = b.typbasetype WHERE b.typtype = 'd'
)
SELECT b.typname, b.typtype, b.typcategory, co.collname, co.collprovider, co.collcollate,
       d.datcollate, pg_encoding_to_char(d.encoding)
FROM base b
CROSS JOIN pg_attribute a
LEFT JOIN pg_collation co ON co.oid = a.attcollation
CROSS JOIN pg_database d
WHERE b.typtype <> 'd' AND a.attrelid = to_regclass(:rel) AND a.attname = :col
  AND d.datname = current_database()
"""


def at_or_after(col: Any, value: Any, table: sa.Table, engine: Any) -> Any:
    """``col >= value`` for a text ``value`` (the bound), compared in code point order (UTF-8
    byte order), the order of the bound: staging's ``max`` (DuckDB compares text bytewise).
    The source's own order may differ: SQLite's ``NOCASE`` puts ``'kb03'`` before
    ``'KZ02'``, a SQLite database in UTF-16 compares UTF-16 bytes, PostgreSQL's ICU and
    most libc locales put ``'a'`` before ``'B'`` (mixed-case ids such as KSUIDs), ``citext``
    ignores case, an enum has its declared order, and ``"C"`` in a WIN1252 or EUC_JP
    database compares those bytes. Then a value after the bound in staging's order sorted
    before it at the source, was never read, and the replica differed from the source,
    exit 0 (fresh-user trials).

    SQLite: ``COLLATE BINARY`` in a UTF-8 database (an index of a column without a
    collation still serves it), else ``COLLATE deltaferry_code_point`` (Python's order,
    registered by ``engine_for``; no index serves it). PostgreSQL (``_pg_text_order``): the
    column as it is when its type is plain text, its collation (or the database's) orders by
    code point and the encoding's bytes do too (so its plain index still serves it); else
    ``COLLATE "C"`` (an index serves it when made ``(col COLLATE "C")``), a type that is no
    plain text (enum, citext, a domain's base) cast to text first; in a database of another
    encoding, both sides as UTF-8 bytes (``convert_to``; no index). A column of no text type
    (uuid, ...): as it is. Other databases: as they are (not checked here)."""
    name = engine.dialect.name if engine is not None else None
    if name == "sqlite":
        return sa.collate(col, _sqlite_collation(engine)) >= value
    if name != "postgresql":
        return col >= value
    order = _pg_text_order(col, table, engine)
    if order == "as is":
        return col >= value
    if order == "utf8 cast":  # bytea compares bytes: UTF-8's are in code point order
        utf8 = sa.func.convert_to(sa.cast(col, sa.Text), "UTF8")
        return utf8 >= sa.literal(str(value).encode(), sa.LargeBinary)
    return (_c_text(col) if order == "C cast" else sa.collate(col, "C")) >= value


def _c_text(col: Any) -> Any:
    """A PostgreSQL column as text in the "C" collation: bytewise (code point order in a
    UTF-8 database), and usable by a regular expression (a nondeterministic collation
    refuses them); an enum, ``citext`` or domain as its text."""
    return sa.collate(sa.cast(col, sa.Text), "C")


def _sqlite_collation(engine: sa.Engine) -> str:
    with engine.connect() as con:
        encoding = con.exec_driver_sql("PRAGMA encoding").scalar()
    return "BINARY" if str(encoding).upper() == "UTF-8" else SQLITE_CODE_POINT


def _pg_text_order(col: Any, table: sa.Table, engine: sa.Engine) -> str:
    """How PostgreSQL compares ``col`` in code point order: ``as is``, ``C``, ``C cast``
    (to text first), ``utf8 cast`` (as UTF-8 bytes)."""
    with engine.connect() as con:
        row = con.execute(
            sa.text(_PG_TEXT_ORDER),
            {"rel": engine.dialect.identifier_preparer.format_table(table), "col": col.name},
        ).fetchone()
        if row is None:  # not found as named: the safe way
            return "utf8 cast"
        typname, typtype, category, collname, provider, collcollate, datcollate, enc = row
        if typtype != "e" and category != "S":
            return "as is"  # no text: uuid, inet, ... compare in their own order
        if str(enc).upper() not in _CODE_POINT_ENCODINGS:
            return "utf8 cast"
        if typname not in _PLAIN_TEXT_TYPES or typtype == "e":
            return "C cast"
        if collname == "default":  # the database's own collation
            provider, collcollate = _default_provider(con), datcollate
    # builtin (PostgreSQL 17: "C", "C.UTF-8") orders by code point; ICU never does
    if provider == "b" or (provider == "c" and str(collcollate).lower() in _CODE_POINT_LOCALES):
        return "as is"
    return "C"


def _default_provider(con: sa.Connection) -> str:
    """The provider of the PostgreSQL database's default collation: ``c`` (libc), ``i``
    (ICU) or ``b`` (builtin); ``c`` before PostgreSQL 15, which had no other."""
    version = con.execute(sa.text("SHOW server_version_num")).scalar()
    if int(str(version)) < 150000:
        return "c"
    return str(
        con.execute(
            sa.text("SELECT datlocprovider FROM pg_database WHERE datname = current_database()")
        ).scalar()
    )


def window(job: JobConfig, t: TableConfig, bound: Any, text_times: dict[str, str]) -> Any:
    """dlt ``query_adapter_callback`` selecting the rows at or after ``bound`` (closed), and
    every row whose cursor is NULL or not comparable; everything when ``bound`` is None."""

    source = backend_name(job) if bound is not None else None
    sqlite, postgres = source == "sqlite", source == "postgresql"

    def adapt(query: Any, table: sa.Table, _incremental: Any = None, engine: Any = None) -> Any:
        # dlt calls this with (query, table, incremental, engine)
        if bound is None or t.cursor is None:
            return query
        col = table.c[t.cursor]
        kind = getattr(col.type, "source_type", col.type)  # under types.py's read plan
        # a declared time column, or SQLite TEXT holding time text (``_text_cursor``)
        if t.cursor in text_times or (
            isinstance(bound, dt.datetime) and isinstance(kind, sa.String)
        ):
            stamp = _as_utc(bound)
            margin = SQLITE_MARGIN_SECONDS
            if job.timezone != "UTC":
                margin += NAIVE_ZONE_MARGIN.total_seconds()
            text = stamp.strftime("%Y-%m-%d %H:%M:%S.%f")
            jd = sa.func.julianday(col)
            since = jd >= sa.func.julianday(text) - margin / 86400.0
            # NULL (no value, or text julianday cannot read) compares as true: read it. So
            # is a value before year 1 as julianday reads it (a number: julianday reads 5
            # as a Julian day), and, in a scan, any value that is not text: TimeText
            # refuses it, and a table stopped so keeps its key (refused.py); a number
            # below the bound would otherwise never be read, never refused, its change lost
            if engine is not None and julianday_indexed(engine, source_table(t), t.cursor):
                # the same rows, in the form SQLite answers from an index on the
                # expression (index range searches instead of a scan of the table); a
                # number julianday reads as a time from year 1 on, before the bound, is
                # not among them (README, "Index a SQLite time-text cursor")
                # (a closed range: SQLite answers ``jd < x`` in an OR with a scan)
                early = jd.between(-1.0, JULIAN_DAY_YEAR_1)
                return query.where(sa.or_(since, jd.is_(None), early))
            timed = sa.and_(sa.func.typeof(col) == "text", jd >= JULIAN_DAY_YEAR_1)
            text_only = sa.case((timed, since), else_=None)
            return query.where(sa.func.coalesce(text_only, True))  # a scan: ~30% faster than OR
        if sqlite and isinstance(bound, int) and isinstance(kind, sa.String):
            # a TEXT cursor of numbers (``_text_cursor``): compared as numbers; text
            # that is no number (and NULL) is read every run, kept only when changed
            number = sa.and_(
                sa.func.typeof(col) == "text",
                col != "",
                sa.func.length(col) <= _MAX_DIGITS,
                sa.not_(col.op("GLOB")("*[^0-9]*")),
            )
            cast = sa.cast(sa.type_coerce(col, sa.Text), sa.Integer)
            return query.where(sa.func.coalesce(sa.case((number, cast >= bound), else_=None), True))
        if postgres and _numbers_as_text(kind, bound):
            # a text cursor of numbers (``_text_cursor``), as SQLite's above: digits compared
            # as numbers ('10' after '9'), other text (and NULL) read every run
            as_text = _c_text(col)
            number = as_text.op("~")(f"^{_DIGITS}$")
            at = sa.case((number, sa.cast(as_text, sa.BigInteger) >= bound), else_=None)
            return query.where(sa.func.coalesce(at, True))
        value = _bind_value(col, bound, job)
        if not isinstance(bound, str):
            return query.where(sa.or_(col >= value, col.is_(None)))
        # text compared in staging's order, whatever the column's collation or encoding
        since = at_or_after(col, value, table, engine)
        if postgres and _text_type(kind) and re.match("[0-9]", bound) is None:
            # a PostgreSQL text cursor of words (``_text_cursor`` found no digits staged):
            # text that starts with a digit (a number, a date) sorts below a word's bound;
            # it is read too, so the first number is staged and the cursor judged by it
            digit = _c_text(col).op("~")("^[0-9]")
            return query.where(sa.or_(since, col.is_(None), digit))
        if isinstance(kind, sa.String) and sqlite:
            # a TEXT cursor of words (``_text_cursor`` found no numbers, no times staged):
            # text SQLite reads as a time or a number is read too, else the first such
            # value below the bound as text ('2025-...' < 'beta') would never be staged,
            # never judged, and every one after it missed (a fresh-user trial)
            read = sa.func.julianday(col).is_not(None)
            return query.where(sa.or_(since, col.is_(None), read))
        return query.where(sa.or_(since, col.is_(None)))

    return adapt


def _text_type(kind: Any) -> bool:
    """Whether a reflected PostgreSQL column type is text: a string type (enums included), a
    domain over one, or a type SQLAlchemy does not know (``citext`` before it knew it)."""
    from sources.sql_database.types import _unwrap

    return isinstance(_unwrap(kind), (sa.String, sa.types.NullType))


def _numbers_as_text(kind: Any, bound: Any) -> bool:
    """Whether a number ``bound`` is of a text cursor of numbers (``_text_cursor``)."""
    return isinstance(bound, int) and not isinstance(bound, bool) and _text_type(kind)


def by_keys(job: JobConfig, t: TableConfig, keys: list[dict], text_times: dict[str, str]) -> Any:
    """dlt ``query_adapter_callback`` selecting the rows of ``keys`` (staged key values, a
    dict per key), for a read again by key: ``by_values`` on the key columns."""
    return by_values(job, t, list(t.primary_key), keys, text_times)


def by_values(
    job: JobConfig, t: TableConfig, columns: list[str], values: list[dict], text_times: dict[str, str]
) -> Any:
    """dlt ``query_adapter_callback`` selecting the rows whose ``columns`` hold one of
    ``values`` (staged values, a dict per combination: keys, or cursor values); see
    ``_values_condition``."""

    def adapt(query: Any, table: sa.Table, *_: Any) -> Any:
        return query.where(_values_condition(job, table, columns, values, text_times))

    return adapt


def unkeyed_rows(
    job: JobConfig,
    t: TableConfig,
    values: list[Any],
    text_times: dict[str, str],
    with_null_keys: bool = True,
) -> Any:
    """dlt ``query_adapter_callback`` for the rows held without a key (``UnkeyedCursors``):
    those at the cursor ``values`` they had (a row keyed since without its cursor moving
    is read with its key), and every row with a NULL key part wherever its cursor is now
    (so a record is resolved only when no such row is left; a row moved below the window
    is found, held, and its new value remembered). The NULL-key part has no index to use
    unless the source gives it one: a scan, while rows without a key are held; without
    ``with_null_keys`` (the second and later groups of values) only the values are read."""
    cursor = t.cursor
    assert cursor is not None

    def adapt(query: Any, table: sa.Table, *_: Any) -> Any:
        at = _values_condition(job, table, [cursor], [{cursor: v} for v in values], text_times)
        if not with_null_keys:
            return query.where(at)
        return query.where(sa.or_(at, *[table.c[c].is_(None) for c in t.primary_key]))

    return adapt


def _values_condition(
    job: JobConfig,
    table: sa.Table,
    columns: list[str],
    values: list[dict],
    text_times: dict[str, str],
) -> Any:
    """Rows whose ``columns`` hold one of ``values``. Parts the source stores as staged
    are matched exactly (``IN``); a naive timestamp part is matched as wall time in the
    job's zone (``_key_values``). A part of SQLite time text cannot be matched by value (the
    same instant has many texts), so it selects the UTC days around each value's instant
    through ``julianday()``, and every row whose text ``julianday()`` cannot read: a
    superset, whose rows the read keeps only where they differ from staging, as the
    window's margin is."""
    timed = [c for c in columns if text_times.get(c) in ("timestamp", "date")]
    plain = [c for c in columns if c not in timed]
    conds: list[sa.ColumnElement[bool]] = []
    if plain:
        cols = [table.c[c] for c in plain]
        combos = {
            combo
            for k in values
            for combo in itertools.product(
                *(_key_values(col, _typed(col, k[c]), job) for col, c in zip(cols, plain))
            )
        }
        if len(cols) == 1:
            conds.append(cols[0].in_(sorted({v[0] for v in combos}, key=repr)))
        else:
            conds.append(sa.tuple_(*cols).in_(sorted(combos, key=repr)))
    for c in timed:
        col = table.c[c]
        days = sorted(
            {d + step for d in (_day_number(_typed(col, k[c])) for k in values if k[c] is not None)
             for step in (-1, 0, 1)}
        )  # fmt: skip
        jd = sa.func.julianday(col)
        day = sa.cast(jd + 0.5, sa.Integer)  # julian day number: days start at noon
        conds.append(sa.or_(day.in_(days), jd.is_(None)))
    return sa.and_(*conds)


def _typed(col: sa.Column, value: Any) -> Any:
    """A key part as the Python type of its column: the keys of rows held back for a NULL
    cursor are remembered as JSON, where a time, a date, a decimal and bytes became their
    ``str()``; typed values pass as they are. Text that does not parse stays text."""
    if not isinstance(value, str):
        return value
    kind = getattr(col.type, "dlt_type", col.type)
    try:
        if isinstance(kind, sa.DateTime):
            return dt.datetime.fromisoformat(value)
        if isinstance(kind, sa.Date):
            return dt.date.fromisoformat(value)
        if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
            return Decimal(value)
        if isinstance(kind, sa.LargeBinary) and value[:2] in ("b'", 'b"'):
            return ast.literal_eval(value)  # str(bytes): a bytes literal
    except (ValueError, ArithmeticError, SyntaxError):
        return value
    return value


def _day_number(value: dt.datetime | dt.date) -> int:
    """The julian day number of a staged instant's UTC day (a naive datetime holds UTC
    wall time), as ``CAST(julianday(text) + 0.5 AS INTEGER)`` gives it in SQLite."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc)
    day = value.date() if isinstance(value, dt.datetime) else value
    return day.toordinal() + 1_721_425


def _key_values(col: sa.Column, value: Any, job: JobConfig) -> list[Any]:
    """A staged value as the source column may hold it: for a naive timestamp column, every
    wall time in the job's zone that ``sources/wall_time.py``'s rule reads as this instant
    (staging holds UTC wall time): the one its clock shows, and a wall time the clock
    skipped that was read as it (Berlin 02:30 on a spring-forward night is staged as 01:30
    UTC, which the clock shows as 03:30); other values as they are, alone."""
    kind = getattr(col.type, "source_type", col.type)  # under types.py's read plan
    if not (
        isinstance(value, dt.datetime)
        and isinstance(kind, sa.DateTime)
        and not getattr(kind, "timezone", False)
        and job.timezone != "UTC"
    ):
        return [value]
    zone = ZoneInfo(job.timezone)
    instant = _as_utc(value)
    utc = instant.replace(tzinfo=None)
    walls = {instant.astimezone(zone).replace(tzinfo=None)}
    hours = dt.timedelta(hours=6)
    for near in (instant - hours, instant + hours):  # the offsets on both sides of a change
        offset = near.astimezone(zone).utcoffset()
        assert offset is not None
        wall = utc + offset
        if wall_to_utc(wall, zone)[0] == utc:
            walls.add(wall)
    return sorted(walls)


def _as_utc(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    raise TypeError(f"not a time value: {value!r}")


def _bind_value(col: sa.Column, bound: Any, job: JobConfig) -> Any:
    """The staged bound as the source column compares it: a naive timestamp column gets the
    instant as wall time in the job's zone (minus a margin off UTC), an aware one the UTC
    instant; other types the value itself."""
    if not isinstance(bound, dt.datetime):
        return bound
    utc = _as_utc(bound)
    kind = getattr(col.type, "source_type", col.type)  # under types.py's read plan
    if isinstance(kind, sa.DateTime) and not getattr(kind, "timezone", False):
        if job.timezone == "UTC":
            return utc.replace(tzinfo=None)
        local = (utc - NAIVE_ZONE_MARGIN).astimezone(ZoneInfo(job.timezone))
        return local.replace(tzinfo=None)
    return utc


def null_cursor_hold(t: TableConfig, hold: Any) -> Any:
    """A map step for ``null_cursor = "quarantine"``: rows without a cursor value are held
    (``hold(rows, field, check, reason)``) instead of staged."""

    def step(chunk: pa.Table) -> pa.Table:
        if t.cursor not in chunk.column_names:
            return chunk
        null = pc.is_null(chunk[t.cursor])
        if not pc.any(null).as_py():
            return chunk
        hold(
            chunk.filter(null).to_pylist(),
            t.cursor,
            "cursor not null",
            f'cursor column {t.cursor} is NULL in the source (null_cursor = "quarantine"): held '
            "back until the row has a cursor value",
        )
        return chunk.filter(pc.invert(null))

    return step


__all__ = [
    "Normalize",
    "by_keys",
    "by_values",
    "UnkeyedCursors",
    "remember_unkeyed_cursors",
    "unkeyed_cursors",
    "unkeyed_rows",
    "null_cursor_hold",
    "null_cursor_keys",
    "remember_null_cursor_keys",
    "window_start",
    "WindowStart",
    "text_time_columns",
    "window",
]
