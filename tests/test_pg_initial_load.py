"""A PostgreSQL table's first load by DuckDB's postgres scanner (``initial_load =
"scanner"``, ``sources/sql_database/bulk.py``) publishes exactly what dlt's read does.

Two jobs read the same source table: ``fast`` with the scanner, ``slow`` through dlt. The
table holds generated values across the types the scanner copies, with their edge cases
(NULL in every column, numeric extremes, NaN and infinities in a double, odd text, padded
char, bytes with NUL, dates and times at the ends of their range, JSON with whitespace
and ``null`` documents, an enum), and a run of equal cursor values across the seed's
last row. Both replicas must hold the same rows with the same types, both must equal the
source (an oracle that reads PostgreSQL with psycopg and builds values with the standard
library), the staged content hashes must agree row for row (else the next run would
publish unchanged rows again), and a change afterwards must publish the same rows from
both. Then: the cases the copy must leave to dlt (a NULL key, a type it cannot copy
exactly), and a crash between the seed and the copy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.support.initial_load import differences as _differences
from tests.support.initial_load import kill_after_seed
from tests.support.initial_load import notes as _notes
from tests.support.initial_load import staged_hashes as _staged_hashes

ROWS = 3000

CONTRACT = """
import pandas as pd, pandera.pandas as pa
from pandera.typing import Series
from typing import Optional
class Items(pa.DataFrameModel):
    updated_at: Optional[Series[pd.DatetimeTZDtype("us", "UTC")]] = pa.Field(nullable=True)
    class Config:
        coerce = True
"""

# the same table as two jobs: "fast" copies its first load with the scanner, "slow" reads
# it through dlt
JOB = """
[jobs.{job}]
source = "sql_database"
url = "{url}"
lake = "{lake}/{job}"
max_quarantine_ratio = 0.9

[[jobs.{job}.tables]]
name = "items"
primary_key = {pk}
cursor = "updated_at"
deletes = "soft:deleted_at"
contract = "{module}:Items"
{extra}
"""

COLUMNS = """
    id bigint {pk},
    i2 smallint, i4 integer, n numeric(20,4), n0 numeric(38,0), f double precision,
    t text, v varchar(20), c char(5), u uuid, b boolean, by bytea, d date,
    ts timestamp, tz timestamptz, j json, jb jsonb, mood mood,
    deleted_at timestamptz, updated_at timestamptz
"""
NAMES = [
    "id", "i2", "i4", "n", "n0", "f", "t", "v", "c", "u", "b", "by", "d", "ts", "tz", "j", "jb",
    "mood", "deleted_at", "updated_at",
]  # fmt: skip

EDGE: dict[str, list[Any]] = {
    "i2": [-32768, 32767, 0],
    "i4": [-(2**31), 2**31 - 1],
    "n": [Decimal("9999999999999999.9999"), Decimal("-0.0001"), Decimal("0.0000"), Decimal("1.5")],
    "n0": [Decimal("9" * 38), Decimal("-" + "9" * 38), Decimal(0)],
    "f": [float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324, 0.1, 1 / 3],
    "t": ["", "it's", "a\tb\nc\\d", "é😀 ñ", "x" * 5000, '"quoted"', "  spaced  "],
    "v": ["", "twenty chars exactly", "ü"],
    "c": ["ab", "", "abcde", "é"],
    "b": [True, False],
    "by": [b"", b"\x00", b"\xff\x00\xfe", bytes(range(256))],
    "d": [dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(1969, 12, 31), dt.date(2000, 2, 29)],
    "ts": [
        dt.datetime(1, 1, 1),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        dt.datetime(1969, 12, 31, 23, 59, 59, 1),
        dt.datetime(2024, 3, 10, 2, 30),
    ],
    "tz": [
        dt.datetime(1900, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45))),
        dt.datetime(2024, 3, 31, 1, 30, 0, 123456, tzinfo=dt.timezone(-dt.timedelta(hours=11))),
        dt.datetime(9999, 12, 30, 12, tzinfo=dt.UTC),
    ],
    "j": ['{ "a" :  1.10 , "b": [1,2] }', "null", '"text"', "[]", '{"\\u00e9": 1e400}'],
    "jb": ['{"a": 1.10, "z": {"y": null}}', "null", "12345678901234567890123", '"é"'],
    "mood": ["sad", "ok", "happy"],
}


def _value(rng: random.Random, col: str, i: int) -> Any:
    if rng.random() < 0.15:
        return None
    edge = EDGE.get(col)
    if edge and rng.random() < 0.3:
        return rng.choice(edge)
    match col:
        case "i2":
            return rng.randint(-32768, 32767)
        case "i4":
            return rng.randint(-(2**31), 2**31 - 1)
        case "n":
            return Decimal(rng.randint(-(10**19), 10**19)) / 10000
        case "n0":
            return Decimal(rng.randint(-(10**37), 10**37))
        case "f":
            return rng.uniform(-1e6, 1e6)
        case "t" | "v":
            return "".join(rng.choice("abc xyz'\"é\n") for _ in range(rng.randint(0, 20)))
        case "c":
            return "".join(rng.choice("abc ") for _ in range(rng.randint(0, 5)))
        case "u":
            return uuid.UUID(int=rng.getrandbits(128))
        case "b":
            return rng.random() < 0.5
        case "by":
            return rng.randbytes(rng.randint(0, 16))
        case "d":
            return dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(-20000, 20000))
        case "ts":
            return dt.datetime(2000, 1, 1) + dt.timedelta(microseconds=rng.getrandbits(50))
        case "tz":
            zone = dt.timezone(dt.timedelta(minutes=rng.randint(-720, 840)))
            return dt.datetime(2001, 1, 1, tzinfo=zone) + dt.timedelta(
                microseconds=rng.getrandbits(50)
            )
        case "j" | "jb":
            return json.dumps({"k": rng.randint(0, 9), "s": "é"}, indent=rng.choice([None, 1]))
        case "mood":
            return rng.choice(["sad", "ok", "happy"])
        case "deleted_at":
            return None if rng.random() < 0.95 else dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    raise AssertionError(col)


def _cursor(i: int) -> dt.datetime:
    """Row ``i``'s cursor: one value a row, except rows 900..1199 (across the seed's last row,
    ``bulk.SEED_ROWS`` = 1000) that share one."""
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    if 900 <= i < 1200:
        return base + dt.timedelta(seconds=900)
    return base + dt.timedelta(seconds=i, microseconds=i % 7)


def _fill(pg_job: Any, seed: int, rows: int = ROWS, pk: str = "PRIMARY KEY") -> None:
    rng = random.Random(seed)
    pg_job.sql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
        f"CREATE TABLE items ({COLUMNS.format(pk=pk)})",
    )
    ids = sorted({rng.getrandbits(63) - 2**62 for _ in range(rows * 2)})[: rows - 2]
    ids += [-(2**63), 2**63 - 1]
    rng.shuffle(ids)
    with pg_job.server.connect(pg_job.database) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO items ({', '.join(NAMES)}) VALUES ({', '.join(['%s'] * len(NAMES))})",
                [
                    (ids[i], *(_value(rng, c, i) for c in NAMES[1:-1]), _cursor(i))
                    for i in range(rows)
                ],
            )


@pytest.fixture(autouse=True)
def contract_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The jobs' contract, importable here and in a child process (``PYTHONPATH``)."""
    (tmp_path / "pg_initial_contract.py").write_text(CONTRACT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    return "pg_initial_contract"


def _write(pg_job: Any, pk: str = '["id"]', extra: str = "", suffix: str = "") -> None:
    common = {
        "url": pg_job.server.url(pg_job.database),
        "lake": pg_job.lake_url,
        "pk": pk,
        "module": "pg_initial_contract",
    }
    pg_job.config.write_text(
        JOB.format(job=f"fast{suffix}", extra=f'initial_load = "scanner"\n{extra}', **common)
        + JOB.format(job=f"slow{suffix}", extra=extra, **common)
    )


def _sync(pg_job: Any, job: str) -> dict[str, Any]:  # the table's result of one run
    from flows.sync import sync_job

    return dict(sync_job(job=job, config=str(pg_job.config))["tables"]["items"])


def _same_failure(pg_job: Any, fast: str, slow: str) -> str:
    """Run both jobs, each must fail; their one-line errors must be the same but for the
    job's name. Returns the error."""
    from deltaferry.errors import DeltaferryError

    errors = []
    for job in (fast, slow):
        with pytest.raises(DeltaferryError) as e:
            _sync(pg_job, job)
        errors.append(str(e.value).replace(f"job '{job}'", "job").replace(f"reset {job} ", "reset JOB "))
    assert errors[0] == errors[1], errors
    return errors[0]


def _pull(pg_job: Any, job: str) -> Path:
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake

    replica = pg_job.dir / f"{job}.duckdb"
    loaded = load_job(job, pg_job.config)
    pull(loaded, open_lake(loaded.lake), replica)
    return replica


def _oracle(pg_job: Any, replica: Path) -> None:
    """The replica against PostgreSQL, read with psycopg and compared as Python values."""
    with pg_job.server.connect(pg_job.database) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        want = {
            r[0]: r
            for r in conn.execute(
                'SELECT id, i2, i4, n, n0, t, v, c, u::text, b, "by", d, tz, j::text, jb::text, '
                "mood::text, updated_at FROM items WHERE deleted_at IS NULL"
            ).fetchall()
        }
    with duckdb.connect(str(replica), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        got = {
            r[0]: r
            for r in con.execute(
                'SELECT id, i2, i4, n, n0, t, v, c, u, b, "by", d, tz, j, jb, mood, updated_at '
                "FROM items"
            ).fetchall()
        }
    assert set(got) == set(want)
    for k, w in want.items():
        g = tuple(bytes(v) if isinstance(v, bytearray | memoryview) else v for v in got[k])
        w = tuple(bytes(v) if isinstance(v, memoryview) else v for v in w)
        assert g == w, (k, g, w)


@pytest.mark.parametrize("seed", [7])
def test_the_scanner_publishes_what_dlt_publishes(pg_job: Any, seed: int) -> None:
    _fill(pg_job, seed)
    _write(pg_job)
    fast, slow = _sync(pg_job, "fast"), _sync(pg_job, "slow")
    notes = _notes("fast")
    assert len(notes) == 1 and "initial load by DuckDB's postgres scanner" in notes[0], notes
    assert f"{ROWS - 1000} row(s)" not in notes[0]  # the tie at the seed's end was copied too
    assert fast["upserts"] == slow["upserts"] == ROWS - fast.get("deletes", 0)
    assert fast.get("deletes", 0) == slow.get("deletes", 0)
    assert _staged_hashes("fast") == _staged_hashes("slow")
    only_fast, only_slow, n = _differences(_pull(pg_job, "fast"), _pull(pg_job, "slow"), NAMES)
    assert (only_fast, only_slow) == ([], [])
    assert n == ROWS - fast.get("deletes", 0)
    _oracle(pg_job, pg_job.dir / "fast.duckdb")

    # a change afterwards: rows of the seed, of the tie and of the copy, a soft delete, a new
    # row; both jobs publish the same rows (unchanged rows at the boundary stay unpublished)
    with pg_job.server.connect(pg_job.database) as conn:
        live = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM items WHERE deleted_at IS NULL ORDER BY updated_at, id"
            ).fetchall()
        ]
    first, last, gone = live[:5], live[-5:], live[1000:1003]  # gone: in the tie
    pg_job.sql(
        f"UPDATE items SET t = 'changed', updated_at = now() WHERE id IN {tuple(first)}",
        f"UPDATE items SET n = 1, updated_at = now() WHERE id IN {tuple(last)}",
        f"UPDATE items SET deleted_at = now(), updated_at = now() WHERE id IN {tuple(gone)}",
        "INSERT INTO items (id, t, updated_at) VALUES (1, 'new', now())",
    )
    fast, slow = _sync(pg_job, "fast"), _sync(pg_job, "slow")
    assert fast == slow, (fast, slow)
    assert (fast.get("upserts"), fast.get("deletes")) == (11, 3), fast
    assert _staged_hashes("fast") == _staged_hashes("slow")
    only_fast, only_slow, n = _differences(_pull(pg_job, "fast"), _pull(pg_job, "slow"), NAMES)
    assert (only_fast, only_slow) == ([], [])
    _oracle(pg_job, pg_job.dir / "fast.duckdb")
    assert len(_notes("fast")) == 1  # a later run does not copy again


def test_a_null_key_leaves_the_rest_to_dlt(pg_job: Any) -> None:
    """A NULL key among the copied rows rolls the copy back; dlt's read then holds that row
    in quarantine as it would without the scanner, and the rest arrives."""
    _fill(pg_job, 11, rows=1500, pk="")  # no PRIMARY KEY in the source: id may be NULL
    pg_job.sql(
        "UPDATE items SET id = NULL WHERE id = (SELECT id FROM items ORDER BY updated_at DESC LIMIT 1)"
    )
    _write(pg_job)
    fast = _sync(pg_job, "fast")
    notes = _notes("fast")
    assert len(notes) == 1 and "rolled back" in notes[0] and "NULL key" in notes[0], notes
    assert fast == _sync(pg_job, "slow")
    from deltaferry.state import StateStore

    for job in ("fast", "slow"):
        with StateStore(job).connect(read_only=True) as con:
            held = con.execute('SELECT field, "check" FROM quarantine').fetchall()
        assert len(held) == 1 and held[0][0] == "id", (job, held)
    replica = _pull(pg_job, "fast")
    with duckdb.connect(str(replica), read_only=True) as con:
        got = con.execute("SELECT count(*), count(DISTINCT id) FROM items").fetchone()
    with pg_job.server.connect(pg_job.database) as conn:
        want = conn.execute(
            "SELECT count(id), count(DISTINCT id) FROM items WHERE deleted_at IS NULL"
        ).fetchone()
    assert got == want and want[0] > 1300


INELIGIBLE = {
    "a real column": (
        ["CREATE TABLE items (id bigint PRIMARY KEY, r real, deleted_at timestamptz, "
         "updated_at timestamptz)"],
        "'r' (REAL)",
    ),
    "a partitioned table": (
        ["CREATE TABLE items (id bigint, deleted_at timestamptz, updated_at timestamptz) "
         "PARTITION BY RANGE (id)",
         "CREATE TABLE items_low PARTITION OF items FOR VALUES FROM (MINVALUE) TO (25)",
         "CREATE TABLE items_high PARTITION OF items FOR VALUES FROM (25) TO (MAXVALUE)"],
        "relkind 'p'",
    ),
    "an inheritance parent": (
        ["CREATE TABLE items (id bigint, deleted_at timestamptz, updated_at timestamptz)",
         "CREATE TABLE items_child () INHERITS (items)"],
        "inheritance children",
    ),
    "a text cursor": (
        ["CREATE TABLE items (id bigint PRIMARY KEY, deleted_at timestamptz, updated_at text)"],
        "cursor 'updated_at' is TEXT",
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(INELIGIBLE))
def test_a_table_the_scanner_cannot_copy_exactly_is_read_by_dlt(pg_job: Any, kind: str) -> None:
    create, reason = INELIGIBLE[kind]
    stamp = "'2025-01-01'::date + g"
    if kind == "a text cursor":  # ISO text with its offset, as the contract reads it
        stamp = "to_char('2025-01-01'::date + g, 'YYYY-MM-DD\"T00:00:00Z\"')"
    pg_job.sql(
        *create,
        f"INSERT INTO items (id, updated_at) SELECT g, {stamp} FROM generate_series(1, 50) g",
    )
    _write(pg_job)
    assert _sync(pg_job, "fast")["upserts"] == 50
    notes = _notes("fast")
    assert len(notes) == 1 and "through dlt" in notes[0] and reason in notes[0], notes


def test_an_infinite_date_past_the_seed_is_held_as_without_the_scanner(pg_job: Any) -> None:
    """DuckDB reads PostgreSQL's 'infinity' date; the dlt read holds its row back (it
    stopped the run before). The copy is rolled back at the source check, and both jobs
    publish the same rows."""
    pg_job.sql(
        "CREATE TABLE items (id int PRIMARY KEY, d date, deleted_at timestamptz, "
        "updated_at timestamptz)",
        "INSERT INTO items SELECT g, CASE WHEN g = 2000 THEN 'infinity'::date ELSE "
        "'2024-01-01'::date + g END, NULL, timestamptz '2025-01-01' + g * interval '1 s' "
        "FROM generate_series(1, 3000) g",
    )
    _write(pg_job)
    fast, slow = _sync(pg_job, "fast"), _sync(pg_job, "slow")
    assert fast["upserts"] == slow["upserts"] == 2999, (fast, slow)
    assert "infinite" in _notes("fast")[-1], _notes("fast")
    only_fast, only_slow, n = _differences(
        _pull(pg_job, "fast"), _pull(pg_job, "slow"), ["id", "d", "updated_at"]
    )
    assert (only_fast, only_slow, n) == ([], [], 2999)


def test_a_crash_between_seed_and_copy_loses_nothing(pg_job: Any) -> None:
    """Killed after the seed's load committed, before the copy: the next run reads the rest
    through dlt from the seed's cursor, and the replica equals the slow job's."""
    _fill(pg_job, 5, rows=2500)
    _write(pg_job)
    kill_after_seed(pg_job.config)
    after = _sync(pg_job, "fast")
    _sync(pg_job, "slow")
    only_fast, only_slow, n = _differences(_pull(pg_job, "fast"), _pull(pg_job, "slow"), NAMES)
    assert (only_fast, only_slow) == ([], [])
    assert n == after["upserts"] and n > 2300
    _oracle(pg_job, pg_job.dir / "fast.duckdb")
    # the next run removed the seed's rows and made the first load again, by the scanner
    assert len(_notes("fast")) == 1 and "postgres scanner" in _notes("fast")[0]


def test_a_composite_key_and_a_repeated_key(pg_job: Any) -> None:
    """A key of text and time is copied and checked as a pair; then a key repeated in the
    source (no unique constraint there) rolls the copy back, and the run stops exactly as
    the dlt read stops it."""

    pg_job.sql(
        "CREATE TABLE items (region text, at timestamptz, v numeric(10,2), "
        "deleted_at timestamptz, updated_at timestamptz)",
        "INSERT INTO items SELECT 'r' || (g % 7), timestamptz '2024-01-01' + g * interval '1 s', "
        "g / 100.0, NULL, timestamptz '2025-01-01' + (g / 3) * interval '1 s' "
        "FROM generate_series(1, 2500) g",
    )
    _write(pg_job, pk='["region", "at"]')
    assert _sync(pg_job, "fast") == _sync(pg_job, "slow")
    # the seed ends in the tie of rows 999-1001 (cursor g / 3 s): two of them copied again
    note = _notes("fast")[0]
    assert "scanner: 1502 row(s)" in note and "2 seed row(s)" in note, note
    only_fast, only_slow, n = _differences(
        _pull(pg_job, "fast"), _pull(pg_job, "slow"), ["region", "at", "v", "updated_at"]
    )
    assert (only_fast, only_slow, n) == ([], [], 2500)

    # a key twice at the source, both rows copied, or one in the seed and one copied (no
    # unique constraint: counted at the source): each pair of new jobs stops the same way
    for suffix, copied, later in (("2", 20, "0 s"), ("3", 5, "1 hour")):
        _write(pg_job, pk='["region", "at"]', suffix=suffix)
        pg_job.sql(
            "INSERT INTO items SELECT region, at, -1, NULL, updated_at + interval "
            f"'{later}' FROM items WHERE v = {copied}"
        )
        assert "not unique" in _same_failure(pg_job, f"fast{suffix}", f"slow{suffix}")
        pg_job.sql("DELETE FROM items WHERE v = -1")


def test_a_numeric_nan_holds_its_row_as_without_the_scanner(pg_job: Any) -> None:
    """The scanner reads a numeric NaN as 0: found at the source, the copy is rolled back
    and the dlt read holds the row back in quarantine, as without the scanner (found by a
    new user's trial; the dlt read stopped the run then)."""

    pg_job.sql(
        "CREATE TABLE items (id int PRIMARY KEY, n numeric(10,2), deleted_at timestamptz, "
        "updated_at timestamptz)",
        "INSERT INTO items SELECT g, CASE WHEN g = 2000 THEN 'NaN'::numeric ELSE g / 4.0 END, "
        "NULL, timestamptz '2025-01-01' + g * interval '1 s' FROM generate_series(1, 3000) g",
    )
    _write(pg_job)
    fast, slow = _sync(pg_job, "fast"), _sync(pg_job, "slow")
    assert fast["upserts"] == slow["upserts"] == 2999, (fast, slow)
    assert "NaN" in _notes("fast")[-1], _notes("fast")  # why the copy was rolled back
    only_fast, only_slow, n = _differences(
        _pull(pg_job, "fast"), _pull(pg_job, "slow"), ["id", "n", "updated_at"]
    )
    assert (only_fast, only_slow, n) == ([], [], 2999)
    # fixed at the source (an update moves the cursor): published by both
    pg_job.sql("UPDATE items SET n = 0.5, updated_at = now() WHERE id = 2000")
    assert _sync(pg_job, "fast")["upserts"] == _sync(pg_job, "slow")["upserts"] == 1
    only_fast, only_slow, n = _differences(
        _pull(pg_job, "fast"), _pull(pg_job, "slow"), ["id", "n", "updated_at"]
    )
    assert (only_fast, only_slow, n) == ([], [], 3000)


def test_a_seed_row_changed_before_the_copy_arrives_once(pg_job: Any) -> None:
    """A row of the seed updated at the source (its cursor moved to now) before the copy
    reads the table: the copy brings its new version, which replaces the seed's, and the
    copy is kept (before, the key was found twice and the copy rolled back)."""
    from deltaferry import failpoints

    _fill(pg_job, 3, rows=2000)
    _write(pg_job)
    with pg_job.server.connect(pg_job.database) as conn:
        oldest = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM items WHERE deleted_at IS NULL ORDER BY updated_at, id LIMIT 3"
            ).fetchall()
        ]

    def meanwhile(point: str) -> None:
        if point == "after_seed":
            pg_job.sql(
                f"UPDATE items SET t = 'after the seed', updated_at = now() WHERE id IN "
                f"({oldest[0]}, {oldest[1]})"
            )

    failpoints.set_hook(meanwhile)
    try:
        fast = _sync(pg_job, "fast")
    finally:
        failpoints.set_hook(None)
    note = _notes("fast")[0]
    assert "postgres scanner" in note and "2 changed since the seed" in note, note
    slow = _sync(pg_job, "slow")
    assert fast == slow
    only_fast, only_slow, n = _differences(_pull(pg_job, "fast"), _pull(pg_job, "slow"), NAMES)
    assert (only_fast, only_slow) == ([], [])
    _oracle(pg_job, pg_job.dir / "fast.duckdb")


@pytest.mark.parametrize("threshold", [ROWS, ROWS + 1])
def test_auto_copies_a_table_of_auto_rows_or_more(
    pg_job: Any, monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    """``initial_load = "auto"`` (the default): the scanner for a table with a cursor and
    at least ``settings.AUTO_ROWS`` rows at its first run, dlt's read (and no note) one row
    short of it; both publish what ``initial_load = "dlt"`` publishes."""
    from sources.sql_database import bulk

    monkeypatch.setattr(bulk, "AUTO_ROWS", threshold)
    _fill(pg_job, 5)
    common = {
        "url": pg_job.server.url(pg_job.database),
        "lake": pg_job.lake_url,
        "pk": '["id"]',
        "module": "pg_initial_contract",
    }
    pg_job.config.write_text(
        JOB.format(job="fast", extra="", **common)
        + JOB.format(job="slow", extra='initial_load = "dlt"', **common)
    )
    fast, slow = _sync(pg_job, "fast"), _sync(pg_job, "slow")
    assert fast == slow, (fast, slow)
    notes = _notes("fast")
    if threshold <= ROWS:
        assert len(notes) == 1 and "initial load by DuckDB's postgres scanner" in notes[0], notes
    else:
        assert notes == []
    assert _notes("slow") == []
    assert _staged_hashes("fast") == _staged_hashes("slow")
    only_fast, only_slow, n = _differences(_pull(pg_job, "fast"), _pull(pg_job, "slow"), NAMES)
    assert (only_fast, only_slow, n) == ([], [], ROWS - fast.get("deletes", 0))
    _oracle(pg_job, pg_job.dir / "fast.duckdb")
