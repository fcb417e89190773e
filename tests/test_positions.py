"""``deltaferry/positions.py:from_checkpoint``: what ``verify`` reads of the producer's state."""

from __future__ import annotations

import duckdb

from deltaferry.config import JobConfig
from deltaferry.positions import from_checkpoint


def test_the_checkpoints_are_read_as_the_file_is_without_writing_it(home):
    """``verify`` only reads the state: an older file (fewer tables) is not brought up to
    date, so a read-only file of an older version can still be read."""
    state = home / "shop" / "state.duckdb"
    state.parent.mkdir(parents=True)
    with duckdb.connect(str(state)) as con:
        con.execute("CREATE TABLE checkpoints (tbl VARCHAR, batch BIGINT, manifest_sha256 VARCHAR)")
        con.execute("INSERT INTO checkpoints VALUES ('orders', 3, 'abc'), ('customers', 2, 'def')")
    job = JobConfig(name="shop", source="sql_database", url="u", lake="file:lake", tables=())
    got = [(p.table, p.batch, p.manifest_sha256) for p in from_checkpoint(job)]
    assert got == [("customers", 2, "def"), ("orders", 3, "abc")]
    with duckdb.connect(str(state), read_only=True) as con:
        tables = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    assert tables == [("checkpoints",)]


def test_no_state_file_means_no_checkpoints(home):
    job = JobConfig(name="shop", source="sql_database", url="u", lake="file:lake", tables=())
    assert from_checkpoint(job) == []
    assert not (home / "shop" / "state.duckdb").exists()
