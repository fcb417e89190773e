"""A table's first load into staging is dlt's ``replace`` (no copy through dlt's staging
dataset), every later load a ``merge`` on the key (``sources/load.py:first_load``); the
staged rows are what a merge would stage, and a repeated source key still stops the run
before anything is staged (``sources/integrity.py``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pytest

from deltaferry.errors import ConfigError
from deltaferry.job import JobConfig, TableConfig
from sources.sql_database import extract
from sources.staging import nothing_staged, staging_path


def _job(tmp_path: Path, cursor: str | None) -> JobConfig:
    t = TableConfig(
        name="items", primary_key=("id",), cursor=cursor, deletes="none", contract="m:C"
    )
    return JobConfig(
        name="first",
        source="sql_database",
        url=f"sqlite:///{tmp_path / 'src.db'}",
        lake="file:///unused",
        tables=(t,),
    )


def _source(tmp_path: Path, rows: list[tuple[int, str, str]], *, unique: bool = True) -> None:
    con = sqlite3.connect(tmp_path / "src.db")
    key = "PRIMARY KEY" if unique else ""
    con.execute(f"CREATE TABLE IF NOT EXISTS items (id INTEGER {key}, name TEXT, ts TEXT)")
    con.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()


def _staged(job: JobConfig) -> tuple[list[tuple[int, str]], str | None]:
    con = duckdb.connect(str(staging_path(job.name)), read_only=True)
    try:
        rows = con.execute("SELECT id, name FROM raw.items ORDER BY id").fetchall()
        found = con.execute(
            "SELECT schema FROM raw._dlt_version ORDER BY inserted_at DESC LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    import json

    disposition = json.loads(found[0])["tables"]["items"].get("write_disposition")
    return rows, disposition


@pytest.mark.parametrize("cursor", ["ts", None])
def test_first_load_replaces_then_later_loads_merge(tmp_path, monkeypatch, cursor):
    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path / "home"))
    job = _job(tmp_path, cursor)
    t = job.tables[0]
    assert nothing_staged(t, staging_path(job.name), None)
    _source(tmp_path, [(i, f"n{i}", f"2025-01-01 00:00:{i:02d}") for i in range(1, 6)])
    first = extract(job)
    assert first.rows_by_table["items"] == 5
    rows, disposition = _staged(job)
    assert rows == [(i, f"n{i}") for i in range(1, 6)]
    assert disposition == "replace"
    assert not nothing_staged(t, staging_path(job.name), None)

    _source(tmp_path, [(2, "changed", "2025-01-01 00:01:00"), (9, "new", "2025-01-01 00:01:00")])
    extract(job)
    rows, disposition = _staged(job)
    assert rows == [(1, "n1"), (2, "changed"), (3, "n3"), (4, "n4"), (5, "n5"), (9, "new")]
    assert disposition == "merge"


def test_a_repeated_key_still_stops_a_first_load(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path / "home"))
    job = _job(tmp_path, "ts")
    _source(tmp_path, [(1, "a", "2025-01-01"), (1, "b", "2025-01-02")], unique=False)
    with pytest.raises(ConfigError, match="not unique"):
        extract(job)
    assert nothing_staged(job.tables[0], staging_path(job.name), None)
