"""A SQLite table's first load by DuckDB's sqlite scanner (``initial_load = "scanner"``,
``sources/sql_database/bulk.py`` and ``bulk_sqlite.py``) publishes exactly what dlt's read
does, or leaves the table to dlt's read.

Two jobs read the same source table: ``fast`` with the scanner, ``slow`` through dlt. The
table holds generated values across the types the scanner copies, with their edge cases
(NULL in every column, 64-bit integer extremes, infinities, -0.0 and subnormal reals, text
with NUL, emoji, quotes and 5,000 characters, text that looks like a number or a date,
blobs of every byte, dates and timestamps at the ends of their range in both separators
and every fraction length) and a run of equal cursor values across the seed's last row.
Both replicas must hold the same rows with the same types, the fast one must equal the
source (an oracle that reads SQLite with ``sqlite3`` and builds values with the standard
library), the staged content hashes must agree row for row, and a change afterwards must
publish the same rows from both.

SQLite keeps any value in any column, and the scanner reads liberally (it drops a time's
offset, cuts a seventh fraction digit, rolls 24:00 over, takes a number in a TIMESTAMP
column as Unix seconds): each such value past the seed must roll the copy back and leave
the job's result exactly the dlt read's, a success or the same one-line error.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import sqlite3
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.support.initial_load import differences as _differences
from tests.support.initial_load import kill_after_seed
from tests.support.initial_load import notes as _notes
from tests.support.initial_load import staged_hashes as _staged_hashes

ROWS = 3000
SEED_ROWS = 1000  # bulk.SEED_ROWS, written again here

CONTRACT = """
import pandas as pd, pandera.pandas as pa
from pandera.typing import Series
from typing import Optional
class Items(pa.DataFrameModel):
    updated_at: Optional[Series[pd.DatetimeTZDtype("us", "UTC")]] = pa.Field(nullable=True)
    class Config:
        coerce = True
class Loose(pa.DataFrameModel):
    class Config:
        strict = False
class Numbered(pa.DataFrameModel):
    updated_at: Series[int]
    class Config:
        coerce = True
"""

JOB = """
[jobs.{job}]
source = "sql_database"
url = "sqlite:///{db}"
lake = "s3://{bucket}/{job}"
max_quarantine_ratio = 0.9
{job_extra}
[[jobs.{job}.tables]]
name = "items"
primary_key = ["id"]
cursor = "updated_at"
deletes = "soft:deleted_at"
contract = "sqlite_initial_contract:Items"
{extra}
"""

COLUMNS = """
    id {key}, i INTEGER, big BIGINT, r REAL, t TEXT, v VARCHAR(20), b BLOB, d DATE,
    ts DATETIME, deleted_at TIMESTAMP, updated_at TIMESTAMP
"""
NAMES = ["id", "i", "big", "r", "t", "v", "b", "d", "ts", "deleted_at", "updated_at"]

EDGE: dict[str, list[Any]] = {
    "i": [-(2**63), 2**63 - 1, 0],
    "big": [-(2**63), 2**63 - 1, -1],
    "r": [float("inf"), float("-inf"), -0.0, 1e308, 5e-324, 0.1, 1 / 3, 2.0**53 + 2],
    "t": ["", "it's", "a\tb\nc\\d", "é😀 ñ", "x" * 5000, "a\x00b", "  spaced  ", "123",
          "2025-01-01", '"quoted"'],
    "v": ["", "twenty chars exactly", "ü", "0007"],
    "b": [b"", b"\x00", b"\xff\x00\xfe", bytes(range(256))],
    "d": ["0001-01-01", "9999-12-31", "1969-12-31", "2000-02-29"],
    "ts": ["0001-01-01 00:00:00", "9999-12-31 23:59:59.999999", "2024-03-10T02:30:00",
           "1969-12-31 23:59:59.000001", "2024-02-29T12:00:00.5"],
}  # fmt: skip


def _value(rng: random.Random, col: str) -> Any:
    if rng.random() < 0.15:
        return None
    edge = EDGE.get(col)
    if edge and rng.random() < 0.3:
        return rng.choice(edge)
    match col:
        case "i" | "big":
            return rng.randint(-(2**63), 2**63 - 1)
        case "r":
            return rng.uniform(-1e6, 1e6)
        case "t" | "v":
            return "".join(rng.choice("abc xyz'\"é\n") for _ in range(rng.randint(0, 20)))
        case "b":
            return rng.randbytes(rng.randint(0, 16))
        case "d":
            return (dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(-20000, 20000))).isoformat()
        case "ts":
            at = dt.datetime(2000, 1, 1) + dt.timedelta(microseconds=rng.getrandbits(50))
            return _text(at, rng.choice(" T"), rng.randint(0, 6))
        case "deleted_at":
            return None if rng.random() < 0.95 else "2024-01-01 00:00:00"
    raise AssertionError(col)


def _text(at: dt.datetime, sep: str, digits: int) -> str:
    """``at`` as time text with ``digits`` fraction digits (cut, not rounded)."""
    text = at.isoformat(sep=sep, timespec="microseconds")
    return text[: 20 + digits] if digits else text[:19]


def _cursor(i: int) -> str:
    """Row ``i``'s cursor text: one value a row, except rows 900..1199 (across the seed's
    last row) that share one; fractions of every length, one separator."""
    base = dt.datetime(2025, 1, 1)
    if 900 <= i < 1200:
        return _text(base + dt.timedelta(seconds=900), " ", 0)
    return _text(base + dt.timedelta(seconds=i, microseconds=i * 7919 % 10**6), " ", i % 7)


class Source:
    def __init__(self, tmp_path: Path, bucket: str) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "src.db"
        self.config = tmp_path / "deltaferry.toml"
        self.bucket = bucket
        self.con = sqlite3.connect(self.db)

    def sql(self, *statements: str, params: Any = ()) -> None:
        for s in statements:
            self.con.execute(s, params)
        self.con.commit()

    def fill(self, seed: int, rows: int = ROWS, key: str = "INTEGER PRIMARY KEY") -> list[int]:
        """The generated table; returns its ids in cursor order."""
        rng = random.Random(seed)
        self.sql(f"CREATE TABLE items ({COLUMNS.format(key=key)})")
        ids = sorted({rng.getrandbits(63) - 2**62 for _ in range(rows * 2)})[: rows - 2]
        ids += [-(2**63), 2**63 - 1]
        rng.shuffle(ids)
        self.con.executemany(
            f"INSERT INTO items ({', '.join(NAMES)}) VALUES ({', '.join(['?'] * len(NAMES))})",
            [(ids[i], *(_value(rng, c) for c in NAMES[1:-1]), _cursor(i)) for i in range(rows)],
        )
        self.con.commit()
        return ids

    def write(self, extra: str = "", job_extra: str = "") -> None:
        common = {"db": self.db, "bucket": self.bucket, "job_extra": job_extra}
        self.config.write_text(
            JOB.format(job="fast", extra=f'initial_load = "scanner"\n{extra}', **common)
            + JOB.format(job="slow", extra=extra, **common)
        )

    def sync(self, job: str) -> dict[str, Any]:
        from flows.sync import sync_job

        return dict(sync_job(job=job, config=str(self.config))["tables"]["items"])

    def pull(self, job: str) -> Path:
        from deltaferry.config import load_job
        from deltaferry.replica import pull
        from destinations.lake import open_lake

        replica = self.dir / f"{job}.duckdb"
        loaded = load_job(job, self.config)
        pull(loaded, open_lake(loaded.lake), replica)
        return replica


@pytest.fixture
def source(tmp_path: Path, home: Path, bucket: str, prefect_api: None, monkeypatch: Any):
    (tmp_path / "sqlite_initial_contract.py").write_text(CONTRACT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    s = Source(tmp_path, bucket)
    yield s
    s.con.close()


def _instant(text: str | None) -> dt.datetime | None:
    """The oracle's reading of naive time text (UTC): the standard library alone."""
    return None if text is None else dt.datetime.fromisoformat(text)


def _oracle(source: Source, replica: Path) -> None:
    """The replica against SQLite, read with ``sqlite3`` and compared as Python values
    (reals by value and sign: -0.0 is not 0.0)."""
    want = {
        r[0]: (
            *r[:7],
            None if r[7] is None else dt.date.fromisoformat(r[7]),
            _instant(r[8]),
            None if r[9] is None else _instant(r[9]).replace(tzinfo=dt.UTC),
        )
        for r in source.con.execute(
            "SELECT id, i, big, r, t, v, b, d, ts, updated_at FROM items WHERE deleted_at IS NULL"
        ).fetchall()
    }
    with duckdb.connect(str(replica), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        got = {
            r[0]: r
            for r in con.execute(
                "SELECT id, i, big, r, t, v, b, d, ts, updated_at FROM items"
            ).fetchall()
        }
    assert set(got) == set(want)
    for k, w in want.items():
        g = tuple(bytes(v) if isinstance(v, bytearray | memoryview) else v for v in got[k])
        assert g == w, (k, g, w)
        if isinstance(w[3], float):
            assert math.copysign(1, g[3]) == math.copysign(1, w[3]), (k, g[3], w[3])


@pytest.mark.parametrize("seed", [7])
def test_the_scanner_publishes_what_dlt_publishes(source: Source, seed: int) -> None:
    ids = source.fill(seed)
    # rows without a cursor value, in the seed's range and the copy's: the run's dlt read
    # after the copy reads them, as it reads them every run
    source.sql(f"UPDATE items SET updated_at = NULL WHERE id IN ({ids[5]}, {ids[2000]}, {ids[2999]})")
    source.write()
    fast, slow = source.sync("fast"), source.sync("slow")
    notes = _notes("fast")
    assert len(notes) == 1 and "initial load by DuckDB's sqlite scanner" in notes[0], notes
    assert f"{ROWS - SEED_ROWS} row(s)" not in notes[0]  # the tie at the seed's end copied too
    assert fast["upserts"] == slow["upserts"] == ROWS - fast.get("deletes", 0)
    assert fast.get("deletes", 0) == slow.get("deletes", 0)
    assert _staged_hashes("fast") == _staged_hashes("slow")
    only_fast, only_slow, n = _differences(source.pull("fast"), source.pull("slow"), NAMES)
    assert (only_fast, only_slow) == ([], [])
    assert n == ROWS - fast.get("deletes", 0)
    _oracle(source, source.dir / "fast.duckdb")

    # a change afterwards: rows of the seed, of the tie and of the copy, a soft delete, a new
    # row; both jobs publish the same rows (unchanged rows at the boundary stay unpublished)
    live = [
        r[0]
        for r in source.con.execute(
            "SELECT id FROM items WHERE deleted_at IS NULL ORDER BY updated_at, id"
        ).fetchall()
    ]
    first, last, gone = live[:5], live[-5:], live[1000:1003]  # gone: in the tie
    now = "'2026-01-01 00:00:00.25'"
    source.sql(
        f"UPDATE items SET t = 'changed', updated_at = {now} WHERE id IN {tuple(first)}",
        f"UPDATE items SET r = -0.0, updated_at = {now} WHERE id IN {tuple(last)}",
        f"UPDATE items SET deleted_at = {now}, updated_at = {now} WHERE id IN {tuple(gone)}",
        f"INSERT INTO items (id, t, updated_at) VALUES (1, 'new', {now})",
    )
    fast, slow = source.sync("fast"), source.sync("slow")
    assert fast == slow, (fast, slow)
    assert (fast.get("upserts"), fast.get("deletes")) == (11, 3), fast
    assert _staged_hashes("fast") == _staged_hashes("slow")
    only_fast, only_slow, n = _differences(source.pull("fast"), source.pull("slow"), NAMES)
    assert (only_fast, only_slow) == ([], [])
    _oracle(source, source.dir / "fast.duckdb")
    assert len(_notes("fast")) == 1  # a later run does not copy again


# one value past the seed the scanner would read otherwise than dlt's read: (SQL that puts
# it in row 1400 of a 1500-row table, what the rollback's note says)
ROLLED_BACK = {
    "an offset": ("UPDATE items SET ts = '2025-01-01 00:00:01+02:00'", "not time text"),
    "a Z": ("UPDATE items SET ts = '2025-01-01T00:00:01Z'", "not time text"),
    "seven fraction digits": ("UPDATE items SET ts = '2025-01-01 00:00:01.1234567'", "not time text"),
    "seven zero digits": ("UPDATE items SET ts = '2025-01-01 00:00:01.1234560'", "not time text"),
    "hour 24": ("UPDATE items SET ts = '2025-01-01 24:00:00'", "not time text"),
    "no seconds": ("UPDATE items SET ts = '2025-01-01 12:30'", "not time text"),
    "Unix seconds": ("UPDATE items SET ts = 1735689600", "not time text"),
    "a Julian day": ("UPDATE items SET ts = 2460676.5", "not time text"),
    "February 30": ("UPDATE items SET d = '2025-02-30'", "the copy failed"),
    "a compact date": ("UPDATE items SET d = '20250101'", "not time text"),
    # SQLite's GLOB and length() stop at a NUL; the scanner reads the date before it
    "a date, a NUL, more": ("UPDATE items SET d = '2025-01-01' || char(0) || ' BC'", "not time text"),
    "a time, a NUL, more": ("UPDATE items SET ts = '2025-01-01 00:00:00' || char(0) || 'x'", "timestamp field value"),
    # the scanner refuses a value of another storage class itself
    "text in an integer": ("UPDATE items SET i = 'abc'", 'column "i": column was declared as integer, found "abc" of type "text" instead'),
    "a real in an integer": ("UPDATE items SET i = 1.5", 'column "i": column was declared as integer'),
    "a blob in text": ("UPDATE items SET t = x'41'", 'column "t": column was declared as text'),
    "text in a real": ("UPDATE items SET r = 'x'", 'column "r": expected float or integer'),
    "text in a blob": ("UPDATE items SET b = 'x'", "not blob values"),
    "bytes that are not UTF-8": ("UPDATE items SET t = CAST(x'41ff' AS TEXT)", "not UTF-8 text"),
    "a lone surrogate's bytes": ("UPDATE items SET v = CAST(x'eda080' AS TEXT)", "not UTF-8 text"),
    "a cursor with T": (
        "UPDATE items SET updated_at = replace(updated_at, ' ', 'T')", "both ' ' and 'T'"
    ),
}  # fmt: skip


# values SQLite itself stores as text in a TEXT column (its affinity): copied as dlt reads them
COPIED = {
    "an integer into text": "UPDATE items SET t = 42",
    "a real into text": "UPDATE items SET t = 0.1",
    "a huge real into text": "UPDATE items SET v = 1e300",
    "an integer into a real": "UPDATE items SET r = 9007199254740993",
}


def _same_outcome(source: Source, names: list[str] = NAMES) -> str:
    """Run both jobs: both fail with the same one-line error but for the job's name
    (returned), or both succeed with the same result and the same replica ("")."""
    from deltaferry.errors import DeltaferryError

    outcomes: list[Any] = []
    for job in ("fast", "slow"):
        try:
            outcomes.append(source.sync(job))
        except DeltaferryError as e:
            outcomes.append(str(e).replace(f"job '{job}'", "job").replace(f" {job} ", " JOB "))
    assert outcomes[0] == outcomes[1], outcomes
    if isinstance(outcomes[0], str):
        return outcomes[0]
    only_fast, only_slow, _ = _differences(source.pull("fast"), source.pull("slow"), names)
    assert (only_fast, only_slow) == ([], [])
    return ""


@pytest.fixture
def warnings_seen() -> Any:
    """The messages of the sql_database source's log while the test runs (a handler of its
    own: Prefect's logging setup may stop records reaching pytest's)."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("deltaferry.sql_database")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def _rolled_back(seen: list[str], error: str) -> str:
    """The rollback's line: the run's ``initial-load`` note, or when the run then failed
    (as the dlt read fails) the warning on the process's log."""
    if not error:
        notes = _notes("fast")
        assert len(notes) == 1, notes
        return notes[0]
    assert _notes("fast") == []
    lines = [m for m in seen if "initial load:" in m]
    assert len(lines) == 1, seen
    return lines[0]


@pytest.mark.parametrize("kind", list(ROLLED_BACK))
def test_a_value_the_scanner_reads_otherwise_leaves_the_table_to_dlt(
    source: Source, kind: str, warnings_seen: list[str]
) -> None:
    change, reason = ROLLED_BACK[kind]
    ids = source.fill(3, rows=1500)
    source.sql(f"{change} WHERE id = {ids[1400]}")
    source.write()
    line = _rolled_back(warnings_seen, _same_outcome(source))
    assert "rolled back" in line and reason in line, line
    assert "sqlite_all_varchar" not in line


@pytest.mark.parametrize("kind", list(COPIED))
def test_a_value_sqlite_converts_on_store_is_copied(source: Source, kind: str) -> None:
    ids = source.fill(4, rows=1500)
    source.sql(f"{COPIED[kind]} WHERE id = {ids[1400]}")
    source.write()
    assert _same_outcome(source) == ""
    notes = _notes("fast")
    assert len(notes) == 1 and "initial load by DuckDB's sqlite scanner" in notes[0], notes
    _oracle(source, source.dir / "fast.duckdb")


@pytest.mark.parametrize("kind", ["a NULL key", "a repeated key"])
def test_a_null_or_repeated_key_leaves_the_table_to_dlt(
    source: Source, kind: str, warnings_seen: list[str]
) -> None:
    """Without a primary key in the source: a NULL key past the seed is held as the dlt read
    holds it; a key repeated across the seed and the copy stops the run as it does."""
    ids = source.fill(5, rows=1500, key="INT")
    if kind == "a NULL key":
        source.sql(f"UPDATE items SET id = NULL WHERE id = {ids[1400]}")
    else:
        source.sql(f"UPDATE items SET id = {ids[10]} WHERE id = {ids[1400]}")
    source.write()
    error = _same_outcome(source)
    line = _rolled_back(warnings_seen, error)
    assert "rolled back" in line, line
    if kind == "a NULL key":
        assert error == "" and "NULL key" in line, (error, line)
    else:
        assert "not unique" in error and "repeat a key" in line, (error, line)


# tables the scanner does not copy: (CREATE TABLE ..., job setting, what the note says)
INELIGIBLE = {
    "a JSON column": ("j JSON", "", "'j' (JSON)"),
    "a BOOLEAN column": ("f BOOLEAN", "", "'f' (BOOLEAN)"),
    "a NUMERIC column": ("n NUMERIC(10,2)", "", "'n' (NUMERIC(10, 2))"),
    "a TIME column": ("at TIME", "", "'at' (TIME)"),
    "a zone other than UTC": ("x TEXT", 'timezone = "Europe/Berlin"', "timezone is Europe/Berlin"),
    "a generated column": ("g INTEGER GENERATED ALWAYS AS (id * 2) VIRTUAL", "", "'g' is a generated column"),
}


@pytest.mark.parametrize("kind", list(INELIGIBLE))
def test_a_table_the_scanner_cannot_copy_exactly_is_read_by_dlt(source: Source, kind: str) -> None:
    column, job_extra, reason = INELIGIBLE[kind]
    source.sql(
        f"CREATE TABLE items (id INTEGER PRIMARY KEY, {column}, deleted_at TIMESTAMP, "
        "updated_at TIMESTAMP)",
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 50) "
        "INSERT INTO items (id, updated_at) SELECT i, datetime('2025-01-01', '+' || i || ' "
        "seconds') FROM g",
    )
    source.write(job_extra=job_extra)
    assert source.sync("fast")["upserts"] == 50
    notes = _notes("fast")
    assert len(notes) == 1 and "through dlt" in notes[0] and reason in notes[0], notes


def test_a_view_and_a_text_cursor_are_read_by_dlt(source: Source) -> None:
    source.sql(
        "CREATE TABLE base (id INTEGER PRIMARY KEY, deleted_at TIMESTAMP, updated_at TEXT)",
        "INSERT INTO base VALUES (1, NULL, '2025-01-01T00:00:00Z')",
        "CREATE VIEW items AS SELECT * FROM base",
    )
    source.write()
    assert source.sync("fast")["upserts"] == 1
    assert "is not a table" in _notes("fast")[0], _notes("fast")
    source.sql("DROP VIEW items", "ALTER TABLE base RENAME TO items")
    source.config.write_text(source.config.read_text().replace("jobs.fast", "jobs.fast2"))
    assert source.sync("fast2")["upserts"] == 1
    assert "cursor 'updated_at' is TEXT" in _notes("fast2")[0], _notes("fast2")


def test_a_crash_between_seed_and_copy_loses_nothing(source: Source) -> None:
    """Killed after the seed's load committed, before the copy: the next run starts the
    first load again (the seed's rows removed) and the replica equals the slow job's."""
    source.fill(9, rows=2500)
    source.write()
    kill_after_seed(source.config)
    after = source.sync("fast")
    source.sync("slow")
    only_fast, only_slow, n = _differences(source.pull("fast"), source.pull("slow"), NAMES)
    assert (only_fast, only_slow) == ([], [])
    assert n == after["upserts"] and n > 2300
    _oracle(source, source.dir / "fast.duckdb")
    assert len(_notes("fast")) == 1 and "sqlite scanner" in _notes("fast")[0]


def test_an_integer_cursor_over_integers_and_text(source: Source) -> None:
    """Nothing for SQLite to count (the scanner itself refuses another storage class in
    integer and text columns): the copy is kept, and equals the dlt read's."""
    source.sql(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, n INT, deleted_at INTEGER, "
        "updated_at INTEGER)",
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 1500) "
        "INSERT INTO items SELECT i, 'name ' || i, i * i, NULL, i / 3 FROM g",
    )
    source.write()
    text = source.config.read_text().replace(
        'deletes = "soft:deleted_at"', 'deletes = "none"'
    ).replace("sqlite_initial_contract:Items", "sqlite_initial_contract:Numbered")
    source.config.write_text(text)
    assert _same_outcome(source, ["id", "name", "n", "updated_at"]) == ""
    notes = _notes("fast")
    assert len(notes) == 1 and "sqlite scanner: 502 row(s)" in notes[0] and "2 seed row(s)" in notes[0], notes


def test_a_key_of_time_text_is_read_by_dlt(source: Source) -> None:
    """Two texts of one instant are two keys to SQLite and one in staging: such a key is
    not copied (a repeat the copy leaves to the run's read would go unseen)."""
    source.sql(
        "CREATE TABLE items (id INTEGER, at TIMESTAMP PRIMARY KEY, deleted_at TIMESTAMP, "
        "updated_at TIMESTAMP)",
        "INSERT INTO items VALUES (1, '2025-01-01 00:00:00', NULL, '2025-01-02 00:00:00')",
    )
    source.write()
    source.config.write_text(
        source.config.read_text().replace('primary_key = ["id"]', 'primary_key = ["at"]')
    )
    assert source.sync("fast")["upserts"] == 1
    notes = _notes("fast")
    assert len(notes) == 1 and "key column 'at' is time text" in notes[0], notes


def test_a_trigger_named_as_the_table_leaves_it_to_dlt(source: Source) -> None:
    """Triggers have a namespace of their own in SQLite: a trigger called ``items`` on
    another table is no reason to say ``items`` is not a table; but DuckDB's scanner fails
    on it with an internal error (which would invalidate the staging database), so the
    table is read by dlt, and said why."""
    source.sql(
        "CREATE TABLE other (x INTEGER)",
        "CREATE TRIGGER items AFTER INSERT ON other BEGIN SELECT 1; END",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, deleted_at TIMESTAMP, updated_at TIMESTAMP)",
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 50) "
        "INSERT INTO items (id, updated_at) SELECT i, datetime('2025-01-01', '+' || i || ' "
        "seconds') FROM g",
    )
    source.write()
    assert _same_outcome(source, ["id", "updated_at"]) == ""
    notes = _notes("fast")
    assert len(notes) == 1 and "a trigger named as a table ('items')" in notes[0], notes


@pytest.mark.parametrize(
    "create, key, unique",
    [
        ("CREATE TABLE t (id INTEGER PRIMARY KEY, x INT)", {"id"}, True),  # the rowid
        ("CREATE TABLE t (id INT, x INT, PRIMARY KEY (id, x))", {"id", "x"}, True),
        ("CREATE TABLE t (id INT, x INT, PRIMARY KEY (id, x))", {"id"}, False),  # a part only
        ("CREATE TABLE t (id INT, x TEXT); CREATE UNIQUE INDEX u ON t (x)", {"x"}, True),
        ("CREATE TABLE t (id INT, x TEXT); CREATE UNIQUE INDEX u ON t (x)", {"x", "id"}, True),
        ("CREATE TABLE t (id INT, x TEXT); CREATE INDEX u ON t (x)", {"x"}, False),
        ("CREATE TABLE t (id INT, x TEXT); CREATE UNIQUE INDEX u ON t (x) WHERE id > 0", {"x"}, False),
        ("CREATE TABLE t (id INT, x TEXT); CREATE UNIQUE INDEX u ON t (lower(x))", {"x"}, False),
        ("CREATE TABLE t (id INT, x TEXT)", {"x"}, False),
    ],
)
def test_a_key_is_left_uncounted_only_where_sqlite_keeps_it_unique(
    tmp_path: Path, create: str, key: set[str], unique: bool
) -> None:
    """``bulk_sqlite._unique``: the table's primary key or a unique index on the key's
    columns (or some of them) lets the copy skip counting the key; a partial or expression
    index, a plain index, or a primary key on more columns than the key does not."""
    import sqlalchemy as sa

    from sources.sql_database.bulk_sqlite import _unique

    db = tmp_path / "u.db"
    with sqlite3.connect(db) as con:
        con.executescript(create)
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as c:
            assert _unique(c, "t", key) is unique
    finally:
        engine.dispose()


# initial_load = "auto", the default: the scanner for a table with a cursor and at least
# settings.AUTO_ROWS rows at its first run (counted up to that), dlt's read otherwise


@pytest.mark.parametrize("threshold", [ROWS, ROWS + 1])
def test_auto_copies_a_table_of_auto_rows_or_more(
    source: Source, monkeypatch: Any, threshold: int
) -> None:
    """At the threshold the default copies the table by the scanner; one row short of it,
    dlt reads it (and says nothing: that is every later run's read too). Both publish what
    dlt's read publishes."""
    from sources.sql_database import bulk

    monkeypatch.setattr(bulk, "AUTO_ROWS", threshold)
    source.fill(seed=11)
    common = {"db": source.db, "bucket": source.bucket, "job_extra": ""}
    source.config.write_text(
        JOB.format(job="fast", extra="", **common)  # no initial_load: "auto"
        + JOB.format(job="slow", extra='initial_load = "dlt"', **common)
    )
    fast, slow = source.sync("fast"), source.sync("slow")
    assert fast["upserts"] == slow["upserts"] == ROWS - fast.get("deletes", 0)
    notes = _notes("fast")
    if threshold <= ROWS:
        assert len(notes) == 1 and "initial load by DuckDB's sqlite scanner" in notes[0], notes
    else:
        assert notes == []
    assert _notes("slow") == []
    only_fast, only_slow, n = _differences(source.pull("fast"), source.pull("slow"), NAMES)
    assert (only_fast, only_slow, n) == ([], [], fast["upserts"])
    _oracle(source, source.dir / "fast.duckdb")
    assert _staged_hashes("fast") == _staged_hashes("slow")


def test_auto_leaves_a_table_without_cursor_and_a_dlt_table_to_dlt(
    source: Source, monkeypatch: Any
) -> None:
    """A table without a cursor (read whole every run) and one set to "dlt" are never
    copied, however large; nothing is said about them."""
    from sources.sql_database import bulk

    monkeypatch.setattr(bulk, "AUTO_ROWS", 10)
    source.fill(seed=12)
    source.sql("CREATE TABLE plain AS SELECT id, t FROM items")
    source.config.write_text(
        f"""
[jobs.fast]
source = "sql_database"
url = "sqlite:///{source.db}"
lake = "s3://{source.bucket}/fast"
max_quarantine_ratio = 0.9
[[jobs.fast.tables]]
name = "plain"
primary_key = ["id"]
contract = "sqlite_initial_contract:Loose"
[[jobs.fast.tables]]
name = "items"
primary_key = ["id"]
cursor = "updated_at"
deletes = "soft:deleted_at"
contract = "sqlite_initial_contract:Items"
initial_load = "dlt"
"""
    )
    from flows.sync import sync_job

    tables = sync_job(job="fast", config=str(source.config))["tables"]
    assert tables["plain"]["upserts"] == ROWS and tables["items"]["upserts"] > 0
    assert _notes("fast") == []


def test_auto_copies_a_table_of_the_default_threshold(source: Source) -> None:
    """The real threshold (settings.AUTO_ROWS, nothing patched): a table of exactly that
    many rows is copied by the scanner with no setting, and the replica holds the source's
    rows (read back with ``sqlite3``)."""
    from sources.sql_database.settings import AUTO_ROWS

    source.sql(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount REAL, "
        "updated_at TIMESTAMP, deleted_at TIMESTAMP)"
    )
    source.con.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, NULL)",
        (
            (i, f"name {i} é" if i % 7 else None, i / 3, f"2025-01-01 00:00:{i % 60:02d}")
            for i in range(AUTO_ROWS)
        ),
    )
    source.con.commit()
    common = {"db": source.db, "bucket": source.bucket, "job_extra": ""}
    source.config.write_text(JOB.format(job="fast", extra="", **common))
    assert source.sync("fast")["upserts"] == AUTO_ROWS
    notes = _notes("fast")
    assert len(notes) == 1 and "initial load by DuckDB's sqlite scanner" in notes[0], notes
    with duckdb.connect(str(source.pull("fast")), read_only=True) as con:
        got = con.execute(
            "SELECT id, name, amount, strftime(updated_at, '%Y-%m-%d %H:%M:%S') FROM items"
        ).fetchall()
    want = source.con.execute("SELECT id, name, amount, updated_at FROM items").fetchall()
    assert sorted(got) == sorted(want)


def test_a_value_the_seed_refuses_stops_the_table_as_the_dlt_read_does(
    source: Source, warnings_seen: list[str]
) -> None:
    """A value dlt's read refuses among the seed's rows (the first 1,000 by cursor) and
    another past them, first in the table's own order: the seed's read stops on its value,
    so the table is read by the run's dlt read whole, which stops it with the error a first
    load without the scanner gives (the other value). Found by a fresh-user trial: the
    seed's error went out as the run's."""
    ids = source.fill(5, rows=1500)
    in_seed = max(ids[:900])  # rows 0..899 are the seed's (900..1199 tie past its end)
    past = min(ids[1200:])
    assert past < in_seed  # the table's own order (its rowid) meets `past` first
    source.sql(
        f"UPDATE items SET ts = '2025-01-01 00:00:01.' WHERE id = {in_seed}",
        f"UPDATE items SET ts = '2025-01-01 00:00:02.1234567' WHERE id = {past}",
    )
    source.write()
    error = _same_outcome(source)
    assert "2025-01-01 00:00:02.1234567" in error, error
    lines = [m for m in warnings_seen if "the seed's read stopped" in m]
    assert len(lines) == 1 and "2025-01-01 00:00:01." in lines[0], warnings_seen
    assert not bulk_marker(source, "fast").exists()


def bulk_marker(source: Source, job: str) -> Path:
    from deltaferry.config import load_job
    from sources.sql_database import bulk

    loaded = load_job(job, source.config)
    return bulk.marker(loaded, loaded.tables[0])


def test_a_table_refused_on_a_first_run_lets_the_copied_tables_publish(
    source: Source, monkeypatch: Any
) -> None:
    """On a job's first run, one table's read refuses a value (its copy rolled back first),
    another table was copied by the scanner: the copied one is published that same run, as
    a job reading both through dlt publishes it, and its copy is in the operations log.
    Found by a fresh-user trial: the committed copy made the refusal the whole job's."""
    from deltaferry.errors import DeltaferryError
    from sources.sql_database import bulk

    monkeypatch.setattr(bulk, "AUTO_ROWS", 1000)
    ids = source.fill(6, rows=1500)
    source.sql(
        f"CREATE TABLE other ({COLUMNS.format(key='INTEGER PRIMARY KEY')})",
        "INSERT INTO other SELECT * FROM items",
        f"UPDATE items SET ts = '2025-01-01 00:00:01.' WHERE id = {ids[1400]}",
    )
    text = ""
    for job, extra in (("fast", ""), ("slow", 'initial_load = "dlt"')):
        one = JOB.format(job=job, db=source.db, bucket=source.bucket, job_extra="", extra=extra)
        table = one[one.index(f"[[jobs.{job}.tables]]") :]  # the same table, named other
        text += one + table.replace('name = "items"', 'name = "other"')
    source.config.write_text(text)
    errors = []
    for job in ("fast", "slow"):
        with pytest.raises(DeltaferryError) as e:
            source.sync(job)
        errors.append(str(e.value).replace(f"job '{job}'", "job"))
    assert errors[0] == errors[1] and "2025-01-01 00:00:01." in errors[0], errors
    replicas = {job: source.pull(job) for job in ("fast", "slow")}
    want = source.con.execute("SELECT count(*) FROM other WHERE deleted_at IS NULL").fetchone()[0]
    for job, replica in replicas.items():
        with duckdb.connect(str(replica), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM items").fetchone()[0] == 0, job
            assert con.execute("SELECT count(*) FROM other").fetchone()[0] == want, job
    notes = _notes("fast")
    # other's copy, carried over the attempt the refusal ended (items' rollback is a
    # warning line of the run's log: the table stopped)
    assert len(notes) == 1 and "table 'other': initial load by DuckDB's sqlite scanner" in notes[0]


def test_a_key_repeated_in_the_seed_stops_the_run_as_the_dlt_read_does(
    source: Source, warnings_seen: list[str]
) -> None:
    """A key repeated among the seed's rows (a ``ConfigError`` of the seed's key check,
    naming no table) and another past them: the seed's read stops, the run's dlt read
    reads the table whole and stops with the line a first load without the scanner gives,
    naming both keys."""
    ids = source.fill(7, rows=1500, key="INTEGER")  # no constraint: a key may repeat
    source.sql(
        f"UPDATE items SET id = {ids[3]} WHERE id = {ids[4]}",  # both in the seed
        f"UPDATE items SET id = {ids[1300]} WHERE id = {ids[1301]}",  # both past it
    )
    source.write()
    error = _same_outcome(source)
    assert "not unique" in error and str(ids[1300]) in error and str(ids[3]) in error, error
    lines = [m for m in warnings_seen if "the seed's read stopped" in m]
    assert len(lines) == 1 and str(ids[1300]) not in lines[0], warnings_seen
    assert not bulk_marker(source, "fast").exists()
