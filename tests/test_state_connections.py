"""The state store's connections (``deltaferry/state.py``; docs/architecture.md, section 7
"Operations"): one connection per hold, read-only readers, the lock wait and its one-line
message, bulk writes; and that a sync holds the file per step, so ``status`` reads between
steps."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from deltaferry import duck, state
from deltaferry.errors import StateBusyError
from deltaferry.oplog import Entry, verify_oplog
from deltaferry.state import StateStore, lock_holder


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every open of a state file from now on: its read_only flag."""
    seen: list[bool] = []
    real = duck.connect

    def counting(path, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).endswith("state.duckdb"):
            seen.append(bool(k.get("read_only")))
        return real(path, *a, **k)

    monkeypatch.setattr(duck, "connect", counting)
    return seen


def test_lock_holder_tells_a_busy_file_from_other_io_errors():
    busy = duckdb.IOException(
        'IO Error: Could not set lock on file "/h/shop/state.duckdb": Conflicting lock is held '
        "in /usr/bin/python3.11 (PID 4242). See also https://duckdb.org/docs/stable/connect/concurrency"
    )
    assert lock_holder(busy) == "4242"
    assert lock_holder(duckdb.IOException("IO Error: Could not set lock on file")) == "?"
    assert lock_holder(duckdb.IOException('IO Error: Cannot open file "x": No such file')) is None


def test_a_hold_is_one_connection_for_every_store_of_the_file(home, opens):
    store = StateStore("shop")  # made outside a hold: its own connection
    assert len(opens) == 1
    with store.hold():
        run = store.start_run()
        store.log(run, "extract", "ok")
        assert store.checkpoint("t").batch == 0
        # another store of the same file in this process, read-only (status from a run's
        # report): DuckDB refuses a second connection here, so it reads through the hold
        other = StateStore("shop", home / "shop" / "state.duckdb", read_only=True)
        with other.connect(read_only=True) as con:
            assert con.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        with store.hold():  # nested: still the same connection
            store.finish_run(run, "ok")
        assert len(opens) == 2
    assert len(opens) == 2  # closed at the end of the outermost hold
    store.log(run, "after", "ok")  # outside a hold: a connection of its own again
    assert len(opens) == 3
    assert verify_oplog(store) == 2


def test_released_lets_go_inside_a_hold(home, opens):
    store = StateStore("shop")
    with store.hold():
        store.checkpoint("t")
        with store.released():
            store.checkpoint("t")  # its own connection
            store.checkpoint("t")
        store.checkpoint("t")  # the hold's again, opened anew
    assert len(opens) == 1 + 1 + 2 + 1


def test_a_failed_transaction_on_a_held_connection_is_rolled_back(home, monkeypatch):
    from deltaferry.checkpoints import Plan

    store = StateStore("shop")
    plan = Plan("t", 1, ["1.0"], 1, 1, 1, 0, b"{}", "0" * 64, 10)
    with store.hold():
        store.record_plan(plan, "r", [])
        with pytest.raises(duckdb.ConstraintException):
            store.record_plan(plan, "r", [])  # the same batch twice: refused
        store.log("r", "after", "ok")  # the connection is usable: no transaction left open
    assert store.pending_plan("t") == plan


def test_rows_are_written_in_bulk_and_in_order(home):
    store = StateStore("shop")
    entries = [Entry("extract", "skipped", table="t", detail=f"file {i}") for i in range(3)]
    store.log_many("r", entries)
    with store.connect(read_only=True) as con:
        details = [r[0] for r in con.execute("SELECT detail FROM ops_log ORDER BY id").fetchall()]
    assert details == ["file 0", "file 1", "file 2"]
    assert verify_oplog(store) == 3
    rows = [
        {"load_id": "1.0", "pk": f'{{"id": {i}}}', "field": "email", "check": "c", "reason": "r",
         "row_json": "{}"}
        for i in range(10_000)
    ]  # fmt: skip
    t0 = time.perf_counter()
    store.record_held("r", "t", rows, rereads_null_cursors=False)
    assert time.perf_counter() - t0 < 5  # one statement: executemany took seconds here
    assert len(store.quarantine_rows("t")) == 10_000


def test_a_record_of_rows_without_a_key_is_resolved_only_if_opened_since_their_rereads(home):
    """A cursor table's rows held for a NULL key are read again at the cursor values
    remembered since a time (``sources/sql_database/window.py:UnkeyedCursors``): a record
    opened before that time (by a version that did not remember) stays open, since its rows
    were not read again; one opened since is resolved when no such row is held."""
    from deltaferry.quarantine import UNKEYED

    store = StateStore("shop")

    def held(v: str) -> dict:
        return {"load_id": "1.0", "pk": '{"id": null}', "field": "id", "check": UNKEYED,
                "reason": "r", "row_json": json.dumps({"id": None, "v": v})}  # fmt: skip

    store.record_held("r1", "old", [held("a")], rereads_null_cursors=False)
    since = dt.datetime.now(dt.UTC).isoformat()
    store.record_held("r2", "new", [held("b")], rereads_null_cursors=False)
    for table in ("old", "new"):
        store.record_held("r3", table, [], rereads_null_cursors=False, rereads_unkeyed=since)
    with store.connect(read_only=True) as con:
        still_open = con.execute(
            "SELECT tbl FROM quarantine WHERE resolved IS NULL ORDER BY tbl"
        ).fetchall()
        why = con.execute("SELECT resolved FROM quarantine WHERE tbl = 'new'").fetchone()[0]
    assert still_open == [("old",)]
    assert "read again at their cursor values" in why
    # a whole read (True) settles the old one too
    store.record_held("r4", "old", [], rereads_null_cursors=False, rereads_unkeyed=True)
    assert _open_count(store) == 0


def _open_count(store: StateStore) -> int:
    with store.connect(read_only=True) as con:
        return con.execute("SELECT count(*) FROM quarantine WHERE resolved IS NULL").fetchone()[0]


def test_a_read_only_store_makes_or_updates_the_file_as_a_writer_would(home, opens):
    path = home / "shop" / "state.duckdb"
    path.parent.mkdir(parents=True)
    reader = StateStore("shop", path, read_only=True)
    assert reader.quarantine_rows() == []  # no file yet: made, then read
    with duckdb.connect(str(path)) as con:  # a file from a version without `release`
        con.execute("ALTER TABLE quarantine DROP COLUMN release")
    reader = StateStore("shop", path, read_only=True)
    assert reader.quarantine_rows() == []
    assert StateStore("shop", path, read_only=True).quarantine_rows() == []
    # every read after the first check is read-only; the file was written twice to make it
    # and to bring it up to date
    assert opens.count(False) == 2 and opens.count(True) >= 3


HOLDER = """
import os, sys, time, duckdb
con = duckdb.connect(sys.argv[1])
if sys.argv[2] == "run":
    open(os.path.join(os.path.dirname(sys.argv[1]), "run.lock"), "w").write(str(os.getpid()))
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _holder(path: Path, kind: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), kind, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.integration
def test_a_reader_waits_for_the_holder_then_names_it_in_one_line(home, monkeypatch):
    StateStore("shop")
    path = home / "shop" / "state.duckdb"
    monkeypatch.setattr(state, "LOCK_WAIT_SECONDS", 0.5)
    proc = _holder(path, "run", 30)
    try:
        with pytest.raises(StateBusyError) as e:
            StateStore("shop", path, read_only=True).quarantine_rows()
        text = str(e.value)
        assert "\n" not in text and "job 'shop'" in text
        assert f"this job's running sync (pid {proc.pid})" in text
    finally:
        proc.kill()
        proc.wait()
    proc = _holder(path, "other", 30)
    try:
        with pytest.raises(StateBusyError, match=f"held by pid {proc.pid};"):
            StateStore("shop").checkpoint("t")
    finally:
        proc.kill()
        proc.wait()
    # a holder that lets go within the wait: the reader gets in
    monkeypatch.setattr(state, "LOCK_WAIT_SECONDS", 30)
    proc = _holder(path, "run", 1)
    t0 = time.monotonic()
    assert StateStore("shop", path, read_only=True).quarantine_rows() == []
    assert time.monotonic() - t0 < 20
    proc.wait()


def test_a_sync_holds_the_state_per_step(shop_job, shop, opens):
    """Opens of the state file in one steady run: the run's start, the lake-head steps,
    the recovery check, extract (and its one read of rows held for a value that does not
    fit, read again by key), four steps per table, the run's end and its report (40 when
    every call opened its own); nothing is left holding it after the run."""
    shop.round(20, 20, churn=0)
    shop_job.sync()
    shop.round(5, 5, churn=0.2)
    opens.clear()
    shop_job.sync()
    assert len(opens) <= 7 + 4 * 2, len(opens)
    assert state._HOLDS == {}


def test_status_reads_while_a_sync_runs(shop_job, shop):
    """A sync in another process (as a scheduled run is) and ``status`` read meanwhile:
    every read gets in, waiting at most for a step."""
    from prefect.settings import PREFECT_API_URL

    from deltaferry.status import job_status

    shop.round(30, 30, churn=0)
    shop_job.sync()
    shop.round(200, 2000, churn=0.2)
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    cmd = [sys.executable, "-m", "deltaferry.cli", "run", "shop", "--config", str(shop_job.config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads, slowest = 0, 0.0
    while proc.poll() is None:
        t0 = time.monotonic()
        status = job_status(shop_job.job(), runs=1)
        slowest = max(slowest, time.monotonic() - t0)
        reads += status["job"] == "shop"
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert reads >= 3 and slowest < 20, (reads, slowest)
    assert job_status(shop_job.job(), runs=1)["tables"]["orders"]["last_batch"] == 2
