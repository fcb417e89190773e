"""Unit tests of the DuckDB helpers: identifier quoting and the catalog lookups
(``deltaferry.duck.ident``, ``table_exists``, ``columns``, ``column_types``)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from deltaferry import duck
from deltaferry.duck import ident

AWKWARD = ['a"b', '"', '""', "order id", "a.b", "Ünïcødé ▷ 名前", "select", "1st", " pad "]


def test_ident_doubles_quotes_and_keeps_everything_else():
    assert ident("plain") == '"plain"'
    assert ident('a"b') == '"a""b"'
    assert ident("") == '""'
    assert ident("order id") == '"order id"'


@pytest.mark.parametrize("name", AWKWARD)
def test_ident_round_trips_through_create_insert_select(name):
    con = duckdb.connect()
    con.execute(f"CREATE TABLE {ident(name)} ({ident(name)} INTEGER, {ident(name + '2')} VARCHAR)")
    con.execute(f"INSERT INTO {ident(name)} ({ident(name)}, {ident(name + '2')}) VALUES (7, 'x')")
    rel = con.execute(f"SELECT {ident(name)}, {ident(name + '2')} FROM main.{ident(name)}")
    assert [d[0] for d in rel.description] == [name, name + "2"]
    assert rel.fetchall() == [(7, "x")]
    assert duck.table_exists(con, name)
    assert duck.columns(con, name) == [name, name + "2"]
    assert duck.column_types(con, name) == {name: "INTEGER", name + "2": "VARCHAR"}


def test_lookups_on_a_plain_database(tmp_path: Path):
    con = duckdb.connect(str(tmp_path / "plain.duckdb"))
    con.execute("CREATE SCHEMA raw")
    con.execute('CREATE TABLE "Items" (id BIGINT, name VARCHAR, seen TIMESTAMPTZ)')
    con.execute("ALTER TABLE \"Items\" ADD COLUMN price DECIMAL(10, 2)")
    con.execute("CREATE TABLE raw.orders (z INTEGER, a VARCHAR, m DOUBLE)")
    # main is the default schema
    assert duck.table_exists(con, "Items")
    assert not duck.table_exists(con, "items")  # the stored name, exactly
    assert not duck.table_exists(con, "orders")
    assert duck.columns(con, "orders") == []
    assert duck.column_types(con, "missing") == {}
    # another schema, by name, or any schema
    assert duck.table_exists(con, "orders", "raw")
    assert duck.table_exists(con, "orders", schema=None)
    assert not duck.table_exists(con, "Items", "raw")
    # table order (ordinal_position), not name order
    assert duck.columns(con, "orders", "raw") == ["z", "a", "m"]
    assert duck.columns(con, "Items", schema=None) == ["id", "name", "seen", "price"]
    assert duck.column_types(con, "Items") == {
        "id": "BIGINT",
        "name": "VARCHAR",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "price": "DECIMAL(10,2)",
    }
    con.close()


def test_lookups_see_only_the_current_database(tmp_path: Path):
    """An attached file made current (as ``duck.connect`` does with a key) is what is
    looked at: not the in-memory database beside it, not the temp catalog."""
    path = tmp_path / "attached.duckdb"
    with duckdb.connect(str(path)) as seed:
        seed.execute("CREATE SCHEMA raw")
        seed.execute("CREATE TABLE raw.t (k INTEGER, v VARCHAR)")
        seed.execute("CREATE TABLE main.r (k INTEGER)")
    con = duckdb.connect()
    con.execute("CREATE TABLE memory.main.only_here (x INTEGER)")
    con.execute("CREATE TABLE memory.main.r (other INTEGER, columns INTEGER)")
    con.execute(f"ATTACH '{path}' AS staging (READ_ONLY)")
    assert not duck.table_exists(con, "t", "raw")  # current: memory
    assert duck.columns(con, "r") == ["other", "columns"]
    con.execute("USE staging")
    con.execute("CREATE TEMP TABLE tmp_only (x INTEGER)")
    assert duck.table_exists(con, "t", "raw")
    assert duck.columns(con, "t", "raw") == ["k", "v"]
    assert duck.columns(con, "r") == ["k"]  # not memory.main.r
    assert not duck.table_exists(con, "only_here", schema=None)
    assert not duck.table_exists(con, "tmp_only", schema=None)
    con.close()


def test_lookups_on_an_encrypted_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("duckdb_extension_httpfs")
    monkeypatch.setenv("DELTAFERRY_DUCKDB_KEY", "correct horse battery staple")
    path = tmp_path / "secret.duckdb"
    con = duck.connect(path, alias="replica")
    name = 'we"ird ü'
    con.execute(f"CREATE TABLE {ident(name)} ({ident(name)} BIGINT, b VARCHAR)")
    con.execute(f"INSERT INTO {ident(name)} VALUES (1, 'one')")
    con.close()
    con = duck.connect(path, read_only=True, alias="replica")
    try:
        assert duck.table_exists(con, name)
        assert duck.table_exists(con, name, schema=None)
        assert duck.columns(con, name) == [name, "b"]
        assert duck.column_types(con, name) == {name: "BIGINT", "b": "VARCHAR"}
        assert con.execute(f"SELECT {ident(name)}, b FROM {ident(name)}").fetchall() == [
            (1, "one")
        ]
    finally:
        con.close()


def _limit(con: duckdb.DuckDBPyConnection) -> str:
    return str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])


def test_connect_bounds_duckdb_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """DuckDB's own default is 80% of RAM, filled as a table grows; every file deltaferry
    opens gets DELTAFERRY_DUCKDB_MEMORY_LIMIT (default 256MB) instead."""
    monkeypatch.delenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", raising=False)
    con = duck.connect(tmp_path / "a.duckdb")
    try:
        assert _limit(con) == "244.1 MiB"  # 256 MB, as DuckDB prints it
    finally:
        con.close()
    monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", "64MB")
    con = duck.connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert _limit(con) == "61.0 MiB"
    finally:
        con.close()


def test_dlt_staging_gets_the_same_memory_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """dlt's connections to staging take the limit through its documented credentials
    setting (``global_config``), so its merge load is bounded too."""
    from deltaferry.job import JobConfig
    from sources.pipeline import pipeline_for

    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path))
    monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", "96MB")
    monkeypatch.delenv("DELTAFERRY_DUCKDB_KEY", raising=False)
    job = JobConfig(name="mem", source="sql_database", url="sqlite://", lake="file:///x", tables=())
    pipeline, borrowed = pipeline_for(job)
    assert borrowed is None
    with pipeline.sql_client() as client:
        assert client.execute_sql("SELECT current_setting('memory_limit')")[0][0] == "91.5 MiB"
