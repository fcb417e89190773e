"""A replica killed before its first checkpoint must open again. DuckDB 1.5.5 cannot replay
an ``ADD COLUMN`` of a table with a ``DEFAULT current_timestamp`` column from the
write-ahead log; the replica's metadata ran ``ALTER TABLE _deltaferry_batches ADD COLUMN IF
NOT EXISTS caution`` on every pull (logged even as a no-op), so a ``pull`` killed during its
first batches left a file no connection could open (``Failure while replaying WAL file``;
found by a fresh-user trial: kill -9 of a first pull, 3 times of 4). The columns are now in
the CREATE, and an older file gets the ALTER followed by a CHECKPOINT (``duck.add_columns``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

KILLED = r"""
import os, sys
import duckdb
from deltaferry import duck, replica
from deltaferry.held import HELD_META
path, older = sys.argv[1], sys.argv[2] == "older"
con = duckdb.connect(path)
con.execute("SET checkpoint_threshold = '1GB'")  # nothing checkpointed before the kill
if older:  # a file of an older version: the table without its newer column, checkpointed
    con.execute(
        "CREATE TABLE _deltaferry_batches (job VARCHAR NOT NULL, tbl VARCHAR NOT NULL, "
        "batch BIGINT NOT NULL, manifest_sha256 VARCHAR NOT NULL, rows BIGINT NOT NULL, "
        "trace_id VARCHAR, contract_version INTEGER, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp, PRIMARY KEY (job, tbl, batch))"
    )
    con.execute("CHECKPOINT")
con.execute(replica._META)
duck.add_columns(con, "_deltaferry_batches", {"caution": "VARCHAR"})
con.execute(HELD_META)
con.execute(
    "INSERT INTO _deltaferry_batches (job, tbl, batch, manifest_sha256, rows) "
    "VALUES ('j', 't', 1, 'x', 3)"
)
sys.stdout.flush()
os._exit(0)  # killed: no checkpoint, no close
"""


@pytest.mark.integration  # the kill: a child process
@pytest.mark.parametrize("older", [False, True], ids=["new file", "older file"])
def test_a_replica_killed_before_its_first_checkpoint_opens_again(tmp_path: Path, older: bool):
    path = tmp_path / "replica.duckdb"
    subprocess.run(
        [sys.executable, "-c", KILLED, str(path), "older" if older else "new"], check=True
    )
    assert Path(f"{path}.wal").exists()  # the kill left the log to replay
    con = duckdb.connect(str(path))
    assert con.execute("SELECT job, batch, rows, caution FROM _deltaferry_batches").fetchall() == [
        ("j", 1, 3, None)
    ]
    con.close()
