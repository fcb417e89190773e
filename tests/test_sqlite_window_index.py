"""A SQLite time-text cursor's window (``sources/sql_database/window.py:window``) compares
``julianday()`` of the column, which a plain index on the column cannot serve: every run
scanned the whole table (a no-op run's extract: 0.23 s at 1M rows, 1.33 s at 10M). With an
index on the expression ``julianday(column)`` the window is written in the form SQLite
answers from it, and selects exactly the same rows: odd values (NULL, text julianday cannot
read, a number) are still read, so they are still refused or held as before."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from deltaferry.job import JobConfig, TableConfig
from sources.sql_database.window import julianday_indexed, window

VALUES = [
    "2024-01-01 09:59:59",  # before the bound
    "2024-01-01 10:00:00",  # at it
    "2024-01-01T10:00:00.001Z",
    "2024-01-01T12:30:00+02:00",  # 10:30 UTC
    "2024-01-01T11:00:00+02:00",  # 09:00 UTC: before
    "2024-01-02",
    "2023-12-31 23:59:59.999999",
    None,
    "not a time",  # julianday() cannot read it: read, then refused by the read
    "01/02/2024",
    2460311.0,  # a number: julianday() takes it as a Julian day (2024-01-01 12:00 UTC)
    17,  # a Julian day before year 1: read (then refused), by the index too
    2460300.0,  # a Julian day before the bound: a scan reads every value that is not text
    "0000-06-01 00:00:00",  # before year 1: read (then refused)
]


@pytest.fixture
def source(tmp_path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
    with engine.begin() as con:
        con.exec_driver_sql("CREATE TABLE events (id INTEGER PRIMARY KEY, updated_at TIMESTAMP)")
        for i, v in enumerate(VALUES):
            con.exec_driver_sql("INSERT INTO events VALUES (?, ?)", (i, v))
        con.exec_driver_sql("CREATE INDEX events_plain ON events(updated_at)")
    return engine


def _read(engine: sa.Engine, zone: str) -> tuple[set[int], str]:
    t = TableConfig(
        name="events", primary_key=("id",), cursor="updated_at", deletes="none", contract="m:C"
    )
    job = JobConfig(
        name="w",
        source="sql_database",
        url=str(engine.url),
        lake="file:///x",
        tables=(t,),
        timezone=zone,
    )
    table = sa.Table("events", sa.MetaData(), autoload_with=engine)
    adapt = window(job, t, dt.datetime(2024, 1, 1, 10, 0, 0), {"updated_at": "timestamp"})
    query = adapt(sa.select(table.c.id), table, None, engine)  # ids: no time parsing
    with engine.connect() as con:
        ids = {r.id for r in con.execute(query)}
        compiled = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(r) for r in con.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled))
    return ids, plan


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_an_index_on_julianday_serves_the_window_with_the_same_rows(source: sa.Engine, zone):
    assert not julianday_indexed(source, "events", "updated_at")  # a plain index is not one
    scanned, plan = _read(source, zone)
    assert "SCAN" in plan and "USING INDEX" not in plan
    # the bound is 10:00 UTC (less a margin, and 27 h more for a naive zone other than UTC)
    if zone == "UTC":
        assert scanned == {1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 13}
    assert {7, 8, 9, 10, 11, 12, 13} <= scanned  # odd values are read (and refused)
    with source.begin() as con:
        con.exec_driver_sql("CREATE INDEX events_jd ON events(JULIANDAY(updated_at))")
    assert julianday_indexed(source, "events", "updated_at")
    indexed, plan = _read(source, zone)
    # the same rows, but a number julianday() reads as a time from year 1 on, before the
    # bound (README, "Index a SQLite time-text cursor")
    assert indexed == scanned - {12}
    assert "USING INDEX events_jd" in plan and "SCAN" not in plan


@pytest.mark.parametrize(
    ("index", "used"),
    [
        ('CREATE INDEX "e jd" ON "events" ( JULIANDAY( "Updated_At" ) )', True),
        ("CREATE INDEX e_jd ON events (julianday(updated_at) DESC, id)", True),
        # found by a fresh-user trial: indexes SQLite cannot use for the window
        ("CREATE INDEX e_jd ON events (julianday(updated_at)) WHERE updated_at IS NOT NULL", False),
        ("CREATE INDEX e_jd ON events (id, julianday(updated_at))", False),
        ("CREATE INDEX e_jd ON events (id) WHERE julianday(updated_at) > 0", False),
    ],
)
def test_only_an_index_sqlite_can_use_counts(source: sa.Engine, index: str, used: bool):
    with source.begin() as con:
        con.exec_driver_sql(index)
    assert julianday_indexed(source, "events", "updated_at") is used
    _, plan = _read(source, "UTC")
    assert ("USING INDEX e" in plan) is used
