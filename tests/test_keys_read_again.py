"""Rows the cursor cannot see, read again by key, across key types (SQLite and PostgreSQL).

Three kinds of row are invisible to a cursor window and must be read again by key
(``sources/sql_database/reconcile.py:reextract``, ``window.by_keys``):

- a key deleted, then restored with its old cursor value (reconcile sees it re-created);
- a late row: a new key whose cursor is older than the newest synced (reconcile sees it);
- a row whose cursor was NULL, later given an old value (remembered NULL-cursor keys).

Each case runs the three against one key type and compares the replica with the source
row by row; the expected values come from the standard library (``datetime``,
``decimal``), never from deltaferry's code. A key part that cannot be matched by its
staged value (SQLite time text, a NUMERIC beyond a double's 53 bits, a naive timestamp in
a job zone other than UTC, bytes remembered as JSON) once made such a row silently
vanish, or stopped every later run.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest

from deltaferry.errors import DeltaferryError

CONTRACT = '''
import pandas as pd, pandera.pandas as pa
from pandera.typing import Series
from typing import Optional
class Items(pa.DataFrameModel):
    name: Series[str] = pa.Field(nullable=True)
    updated_at: Optional[Series[pd.DatetimeTZDtype("us", "UTC")]] = pa.Field(nullable=True)
    class Config:
        coerce = True
'''

JOB = """
[jobs.{name}]
source = "sql_database"
url = "{url}"
lake = "{lake}"
timezone = "{zone}"
max_quarantine_ratio = 0.9
max_reconcile_delete_ratio = 0.9

[[jobs.{name}.tables]]
name = "items"
primary_key = {pk}
cursor = "updated_at"
deletes = "{deletes}"
null_cursor = "{null_cursor}"
contract = "{module}:Items"
"""


def instant(text: str | dt.datetime | None, zone: str) -> dt.datetime | None:
    """What a time value means, by the standard library: naive values in ``zone``."""
    if text is None:
        return None
    when = (
        text
        if isinstance(text, dt.datetime)
        else dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    )
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(zone))
    return when.astimezone(dt.timezone.utc)


def utc_wall(text: Any, zone: str) -> dt.datetime:
    """A key time as published without a contract type: the instant's UTC wall time."""
    when = instant(text, zone)
    assert when is not None
    return when.replace(tzinfo=None)


def as_bytes(value: Any, zone: str) -> bytes:
    return bytes(value)


def same(value: Any, zone: str) -> Any:
    return value


class Case:
    """One key type: the key columns, five keys, and how each part reads in the replica."""

    def __init__(
        self,
        columns: Sequence[tuple[str, str]],
        keys: Sequence[tuple[Any, ...]],
        expect: Sequence[Callable[[Any, str], Any]],
        zone: str = "UTC",
        null_cursor: str = "include",
        deletes: str = "reconcile",
    ) -> None:
        self.columns, self.keys, self.expect = columns, keys, expect
        self.zone, self.null_cursor, self.deletes = zone, null_cursor, deletes

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


class Source:
    """What a scenario needs of a source database."""

    url: str
    marker: str  # the driver's parameter marker

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None: ...

    def rows(self, statement: str) -> list[tuple]: ...


class SqliteSource(Source):
    marker = "?"

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self.con = sqlite3.connect(path)

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(statement, params)
        self.con.commit()

    def rows(self, statement: str) -> list[tuple]:
        return self.con.execute(statement).fetchall()


class PostgresSource(Source):
    marker = "%s"

    def __init__(self, server: Any, database: str) -> None:
        self.server, self.database = server, database
        self.url = server.url(database)

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        with self.server.connect(self.database) as conn:
            conn.execute(statement, params)

    def rows(self, statement: str) -> list[tuple]:
        with self.server.connect(self.database) as conn:
            return conn.execute(statement).fetchall()


@pytest.fixture
def contract_module(tmp_path: Path) -> Iterator[str]:
    module = f"keys_again_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(CONTRACT)
    sys.path.insert(0, str(tmp_path))
    yield module
    sys.path.remove(str(tmp_path))


def run_case(
    case: Case, src: Source, tmp_path: Path, bucket: str, module: str, timestamp: str
) -> None:
    """Initial sync with key 3's cursor NULL and key 4 absent; delete key 1, restore it with
    its old cursor; add key 4 with a cursor older than any synced; give key 3 an old cursor.
    Without reconcile (``deletes = "none"``) only the last: the remembered NULL-cursor key
    alone must find it. Every run must succeed, and the replica must equal the source."""
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake
    from flows.sync import sync_job

    config = tmp_path / "deltaferry.toml"
    lake = f"s3://{bucket}/lake"
    pk = "[" + ", ".join(f'"{c}"' for c in case.names) + "]"
    config.write_text(
        JOB.format(
            name="k", url=src.url, lake=lake, zone=case.zone, pk=pk,
            null_cursor=case.null_cursor, module=module, deletes=case.deletes,
        )  # fmt: skip
    )
    cols = ", ".join(f'"{c}" {decl}' for c, decl in case.columns)
    keys = ", ".join(f'"{c}"' for c in case.names)
    src.execute(
        f"CREATE TABLE items ({cols}, name TEXT, updated_at {timestamp}, PRIMARY KEY ({keys}))"
    )
    insert = f"INSERT INTO items VALUES ({', '.join([src.marker] * (len(case.names) + 2))})"
    where = " AND ".join(f'"{c}" = {src.marker}' for c in case.names)
    cursor = ["2026-01-01 00:00:00", "2026-01-02 00:00:00", "2026-01-03 00:00:00", None]
    for i in range(4):
        src.execute(insert, (*case.keys[i], f"n{i}", cursor[i]))
    reconciled = case.deletes == "reconcile"
    if not reconciled:
        src.execute(insert, (*case.keys[4], "n4", "2025-01-01 00:00:00"))

    def sync(step: str) -> dict:
        try:
            return dict(sync_job(job="k", config=str(config))["tables"]["items"])
        except DeltaferryError as e:
            pytest.fail(f"{step}: {type(e).__name__}: {e}")

    sync("initial")
    if reconciled:
        src.execute(f"DELETE FROM items WHERE {where}", case.keys[1])
        assert sync("delete")["deletes"] == 1
        src.execute(insert, (*case.keys[1], "n1", cursor[1]))  # restored from a backup
        assert sync("restore with an old cursor").get("upserts") == 1
        src.execute(insert, (*case.keys[4], "n4", "2025-01-01 00:00:00"))
        assert sync("late row").get("upserts") == 1
    else:
        assert sync("a run with a NULL-cursor key remembered")["batch"] is None
    src.execute(
        f"UPDATE items SET updated_at = '2025-06-01 00:00:00', name = 'n3 set' WHERE {where}",
        case.keys[3],
    )
    assert sync("NULL cursor given an old value").get("upserts") == 1
    assert sync("idle")["batch"] is None
    replica = tmp_path / "replica.duckdb"
    pull(load_job("k", config), open_lake(lake), replica)

    def row(values: Sequence[Any]) -> tuple:
        parts = tuple(f(v, case.zone) for f, v in zip(case.expect, values, strict=False))
        return (*parts, values[-2], instant(values[-1], case.zone))

    selected = ", ".join(f'"{c}"' for c in [*case.names, "name", "updated_at"])
    want = sorted((row(r) for r in src.rows(f"SELECT {selected} FROM items")), key=repr)
    with duckdb.connect(str(replica), read_only=True) as r:
        r.execute("SET TimeZone = 'UTC'")
        got = r.execute(f"SELECT {selected} FROM items").fetchall()
    got = sorted(
        (tuple(bytes(v) if isinstance(v, bytearray | memoryview) else v for v in g) for g in got),
        key=repr,
    )
    assert got == want


DATE_BLOB = (
    [("d", "DATE"), ("b", "BLOB")],
    [
        ("2024-01-01", b"\x00"),
        ("2024-01-02", b""),
        ("2024-01-03", b"\xff\xfe"),
        ("2024-01-04", b"'q\"\n"),
        ("2024-01-05", b"\x00\x01"),
    ],
    [lambda v, z: dt.date.fromisoformat(v), as_bytes],
)
SQLITE = {
    "numeric beyond a double": Case(
        [("n", "NUMERIC(20,0)")],
        [(1,), (2**53 + 1,), (2**62 + 1,), (12345678901234567,), (2**63 - 1,)],
        [lambda v, z: Decimal(v)],
    ),
    "time text and int, Kathmandu": Case(
        [("at", "TIMESTAMP"), ("i", "INTEGER")],
        [
            ("2024-01-02T00:00:00.123456+05:45", 1),
            ("2024-01-02 00:30:00", 2),  # naive: wall time in Kathmandu, the day before in UTC
            ("2024-01-02 00:00:00Z", 3),
            ("2024-03-10 23:59:59.999999-11:00", 4),
            ("2024-01-02 05:45:00", 5),
        ],
        [utc_wall, same],
        zone="Asia/Kathmandu",
    ),
    "date and blob, NULL cursors held back": Case(
        *DATE_BLOB,
        null_cursor="quarantine",
    ),
    "date and blob, NULL cursors held back, no reconcile": Case(
        *DATE_BLOB,
        null_cursor="quarantine",
        deletes="none",
    ),
    "odd text and int, NULL cursors held back": Case(
        [("s", "TEXT"), ("i", "INTEGER")],
        [("it's", 1), ("x ", 2), (" é😀", 3), ("a\tb\nc", 4), ('"q"', 5)],
        [same, same],
        null_cursor="quarantine",
    ),
}


@pytest.mark.parametrize("kind", list(SQLITE))
def test_sqlite_rows_read_again_by_key_arrive(
    kind: str, tmp_path: Path, home: Path, bucket: str, prefect_api: None, contract_module: str
) -> None:
    src = SqliteSource(tmp_path / "src.db")
    try:
        run_case(SQLITE[kind], src, tmp_path, bucket, contract_module, "TIMESTAMP")
    finally:
        src.con.close()


def test_a_sqlite_numeric_key_off_its_scale_is_refused_not_rounded(
    tmp_path: Path, home: Path, bucket: str, prefect_api: None, contract_module: str
) -> None:
    """A key value with more decimals than its NUMERIC(p,s) was rounded to the scale and
    published as another key; it is refused in one line naming the column."""
    from flows.sync import sync_job

    src = SqliteSource(tmp_path / "src.db")
    config = tmp_path / "deltaferry.toml"
    config.write_text(
        JOB.format(
            name="k", url=src.url, lake=f"s3://{bucket}/lake", zone="UTC", pk='["n"]',
            null_cursor="include", module=contract_module, deletes="reconcile",
        )  # fmt: skip
    )
    src.execute("CREATE TABLE items (n NUMERIC(12,4) PRIMARY KEY, name TEXT, updated_at TIMESTAMP)")
    src.execute("INSERT INTO items VALUES (1.23456, 'a', '2026-01-01 00:00:00')")
    with pytest.raises(DeltaferryError) as err:
        sync_job(job="k", config=str(config))
    message = str(err.value)
    assert "column 'n'" in message and "more than 4 decimal places" in message
    assert "\n" not in message
    src.con.close()


PG_NAIVE = "timestamp"
NEW_YORK_KEYS = [
    ("2026-03-08 01:30:00", 1),  # just before the spring change
    ("2026-03-08 03:30:00", 2),
    ("2026-11-01 00:30:00", 3),
    ("2026-07-01 23:30:00", 4),
    ("2026-12-31 23:59:59.999999", 5),
]
POSTGRES = {
    "naive timestamp and int, New York, NULL cursors held back": Case(
        [("at", PG_NAIVE), ("i", "int")],
        NEW_YORK_KEYS,
        [lambda v, z: utc_wall(v, z), same],
        zone="America/New_York",
        null_cursor="quarantine",
    ),
    "naive timestamp and int, New York, NULL cursors held back, no reconcile": Case(
        [("at", PG_NAIVE), ("i", "int")],
        NEW_YORK_KEYS,
        [lambda v, z: utc_wall(v, z), same],
        zone="America/New_York",
        null_cursor="quarantine",
        deletes="none",
    ),
    "bytea, NULL cursors held back": Case(
        [("b", "bytea")],
        [(b"\x00",), (b"",), (b"\xff",), (b"'\\",), (b"\x00\x00",)],
        [as_bytes],
        null_cursor="quarantine",
    ),
    "numeric beyond a double": Case(
        [("n", "numeric(20,0)")],
        [(1,), (2**53 + 1,), (2**62 + 1,), (12345678901234567,), (2**63 - 1,)],
        [lambda v, z: Decimal(v)],
    ),
}


@pytest.mark.parametrize("kind", list(POSTGRES))
def test_postgres_rows_read_again_by_key_arrive(
    kind: str, pg_job: Any, tmp_path: Path, contract_module: str
) -> None:
    src = PostgresSource(pg_job.server, pg_job.database)
    bucket = pg_job.lake_url.split("/")[2]
    run_case(POSTGRES[kind], src, tmp_path, bucket, contract_module, "timestamp")


def _sqlite_job(tmp_path: Path, bucket: str, module: str, table: str) -> tuple[SqliteSource, Path]:
    src = SqliteSource(tmp_path / "src.db")
    config = tmp_path / "deltaferry.toml"
    config.write_text(
        f'[jobs.k]\nsource = "sql_database"\nurl = "{src.url}"\nlake = "s3://{bucket}/lake"\n'
        f"max_reconcile_delete_ratio = 0.9\n\n[[jobs.k.tables]]\n{table}"
        f'contract = "{module}:Items"\n'
    )
    return src, config


def test_numbers_beyond_64_bits_in_a_sqlite_cursor_and_key_do_not_stop_later_runs(
    tmp_path: Path, home: Path, bucket: str, prefect_api: None, contract_module: str
) -> None:
    """A NUMERIC(20,0) value above 2^63 (SQLite keeps it as a REAL, 1e19 exactly) is a
    valid decimal: published, and then bound back to SQLite as the staged bound (the cursor)
    or a key read again; as an integer it overflowed SQLite's 64 bits and stopped every later
    run, until a reset."""
    from flows.sync import sync_job

    src, config = _sqlite_job(
        tmp_path, bucket, contract_module,
        'name = "items"\nprimary_key = ["n"]\ncursor = "seq"\ndeletes = "reconcile"\n',
    )  # fmt: skip
    src.execute("CREATE TABLE items (n NUMERIC(20,0) PRIMARY KEY, name TEXT, seq NUMERIC(20,0))")
    src.execute("INSERT INTO items VALUES (1, 'a', 9007199254740991)")
    sync_job(job="k", config=str(config))
    src.execute("INSERT INTO items VALUES ('10000000000000000000', 'big', '10000000000000000000')")
    assert sync_job(job="k", config=str(config))["tables"]["items"]["upserts"] == 1
    # a late row keyed beyond 64 bits, read again by key; then nothing to do
    src.execute("INSERT INTO items VALUES ('20000000000000000000', 'late', 5)")
    assert sync_job(job="k", config=str(config))["tables"]["items"]["upserts"] == 1
    assert sync_job(job="k", config=str(config))["tables"]["items"]["batch"] is None
    src.con.close()


def test_text_that_is_not_utf8_in_a_key_found_by_reconcile_stops_at_once(
    tmp_path: Path, home: Path, bucket: str, prefect_api: None, contract_module: str
) -> None:
    """Reconcile reads every source key outside dlt's steps: a key of bytes that are not
    UTF-8 there was taken for a lost connection (retried, then "connection lost", no table
    named). It is the same one-line refusal as in the read: job, table, column; not
    retried."""
    from deltaferry.errors import TerminalError
    from deltaferry.state import StateStore
    from flows.sync import sync_job

    src, config = _sqlite_job(
        tmp_path, bucket, contract_module,
        'name = "items"\nprimary_key = ["k"]\ncursor = "updated_at"\ndeletes = "reconcile"\n',
    )  # fmt: skip
    src.execute("CREATE TABLE items (k TEXT PRIMARY KEY, name TEXT, updated_at TIMESTAMP)")
    src.execute("INSERT INTO items VALUES ('a', 'ok', '2024-01-01 00:00:00')")
    sync_job(job="k", config=str(config))
    src.execute("INSERT INTO items VALUES (CAST(X'FF61' AS TEXT), 'late', '2023-01-01 00:00:00')")
    with pytest.raises(TerminalError) as err:
        sync_job(job="k", config=str(config))
    message = str(err.value)
    for part in ("job 'k'", "table 'items'", "column 'k'", "not valid UTF-8"):
        assert part in message, message
    assert "\n" not in message
    with StateStore("k").connect(read_only=True) as con:
        attempts = con.execute(
            "SELECT max(attempt) FROM ops_log WHERE step = 'extract'"
        ).fetchone()[0]
    assert attempts == 1
    src.con.close()
