"""The SQL source's change check (``sources/quiet.py``, ``sources/sql_database/quiet.py``):
a run that finds the rows its read would see unchanged since a read that staged nothing
skips the read, and says so; any change in the window, a change while a read runs, other
settings, an old record or an open quarantine record make the run read.

Checked from outside deltaferry: the operations log's extract entries and staging's load
records read with duckdb, the replica against the source read with sqlite3."""

from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
import pytest


def _decision(home: Path, job: str = "shop") -> tuple[str, str]:
    """What the change check decided in the job's latest run, from the operations log:
    ("skipped", why) for a ``change-check`` entry, else ("read", why) from the extract
    entry's detail (``...; change check: why``), ("" , detail) when it says nothing."""
    con = duckdb.connect(str(home / job / "state.duckdb"), read_only=True)
    try:
        run = con.execute("SELECT run_id FROM ops_log ORDER BY id DESC LIMIT 1").fetchone()[0]
        rows = con.execute(
            "SELECT step, outcome, detail FROM ops_log WHERE run_id = ? "
            "AND step IN ('extract', 'change-check') ORDER BY id",
            [run],
        ).fetchall()
    finally:
        con.close()
    for step, outcome, detail in rows:
        if step == "change-check":
            assert outcome == "info", rows
            return "skipped", detail
    for step, outcome, detail in rows:
        if step == "extract" and outcome == "ok":
            head, found, why = detail.partition("; change check: ")
            return ("read", why) if found else ("", detail)
    raise AssertionError(f"no extract entry in the latest run: {rows}")


def _outcome(home: Path, job: str = "shop") -> str:
    return _decision(home, job)[0]


def _recorded(home: Path, job: str = "shop") -> bool:
    return "recorded, so runs" in _decision(home, job)[1]


def _loads(home: Path) -> int:
    con = duckdb.connect(str(home / "shop" / "staging.duckdb"), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM raw._dlt_loads").fetchone()[0]
    finally:
        con.close()


def _replica_is_source(shop, replica: Path, gone: list[tuple] = ()) -> None:  # noqa: ANN001
    """The replica holds exactly the source's live rows, compared as text; ``gone``: orders
    deleted at the source, which stay published under ``deletes = "none"``."""
    checks = (
        ("customers", "id, name, email, country", "WHERE deleted_at IS NULL"),
        # deletes = "none": an order deleted at the source stays published
        ("orders", "id, customer_id, amount_cents, status", ""),
    )
    con = duckdb.connect(str(replica), read_only=True)
    try:
        for table, cols, live in checks:
            want = shop.con.execute(f"SELECT {cols} FROM {table} {live} ORDER BY id").fetchall()
            if table == "orders":
                want = sorted(want + list(gone))
            got = con.execute(f"SELECT {cols} FROM {table} ORDER BY id").fetchall()
            assert [tuple(map(str, r)) for r in got] == [tuple(map(str, r)) for r in want], table
    finally:
        con.close()


def _no_reconcile(shop_job) -> None:  # noqa: ANN001
    """The demo job with ``orders`` under ``deletes = "none"`` (reconcile reads every key,
    so the check stands aside for it)."""
    text = shop_job.config.read_text()
    shop_job.config.write_text(text.replace('deletes = "reconcile"', 'deletes = "none"'))


def _quiet(shop_job, home) -> None:  # noqa: ANN001
    """Sync until a run skips its read (a quiet read first leaves the record)."""
    shop_job.sync()
    if _outcome(home) != "skipped":
        shop_job.sync()
    assert _outcome(home) == "skipped", _decision(home)


def test_a_quiet_run_is_recorded_and_the_next_one_skips_the_read(shop_job, shop, home):
    _no_reconcile(shop_job)
    shop.round(15, 10, churn=0)
    shop_job.sync()
    assert _decision(home) == ("read", "nothing staged yet")
    loads = _loads(home)
    shop_job.sync()  # reads, stages nothing: recorded
    outcome, why = _decision(home)
    assert outcome == "read" and why.startswith("no read that staged nothing"), why
    assert _recorded(home), why
    for _ in range(2):
        out = shop_job.sync()
        outcome, why = _decision(home)
        assert outcome == "skipped" and "read skipped" in why, why
        assert out["tables"]["customers"]["batch"] is None
        assert out["tables"]["orders"]["batch"] is None
        assert _loads(home) == loads
    shop.round(3, 2, churn=0)
    out = shop_job.sync()
    assert _decision(home) == ("read", "the source or staging differs from the recorded read")
    assert out["tables"]["customers"]["batch"] == 2 and out["tables"]["orders"]["batch"] == 2
    shop_job.pull()
    _replica_is_source(shop, shop_job.replica)


def _at_bound(shop, table: str) -> tuple[int, str]:  # noqa: ANN001
    return shop.con.execute(
        f"SELECT id, updated_at FROM {table} ORDER BY updated_at DESC, id DESC LIMIT 1"
    ).fetchone()


def _change(
    shop,  # noqa: ANN001
    kind: str,
    rng: random.Random,
    top: dict[str, str],
) -> tuple[list[tuple], bool]:
    """One change of ``kind`` at the source, committed: the orders it deleted, and whether
    the change is in a read's window (at or after its bound). ``top``: per table, the
    newest cursor value the source ever held (the window's bound once synced: a row
    deleted at the source leaves it staged)."""
    con = shop.con
    table = rng.choice(["customers", "orders"])
    rid, at = _at_bound(shop, table)
    if kind == "deleted":
        table = "orders"
        rid, at = _at_bound(shop, table)
    if kind in ("in-place", "deleted") and at != top[table]:
        # the source's newest row is below the bound (the row at it was deleted): a
        # change there is no read's to see, under any cursor: not made
        kind = "none"
    in_window = kind != "none"
    gone: list[tuple] = []
    if kind == "rows":
        shop.round(rng.randint(1, 3), rng.randint(1, 3), churn=0)
    elif kind == "in-place":  # the newest row changed, its cursor as it was
        if table == "customers":
            con.execute("UPDATE customers SET name = name || '+' WHERE id = ?", [rid])
        else:
            con.execute("UPDATE orders SET amount_cents = amount_cents + 1 WHERE id = ?", [rid])
    elif kind == "tie":  # a row committed late at the window's bound, a new key
        at = top[table]
        nid = con.execute(f"SELECT max(id) + 1000 FROM {table}").fetchone()[0]
        if table == "customers":
            con.execute(
                "INSERT INTO customers VALUES (?, ?, ?, 'DE', ?, NULL)",
                [nid, f"late {nid}", f"late{nid}@example.com", at],
            )
        else:
            con.execute("INSERT INTO orders VALUES (?, 1, 100, 'new', ?)", [nid, at])
    elif kind == "soft-delete":
        ts = shop._tick()
        cid = rng.choice(shop._ids("customers", "deleted_at IS NULL"))
        con.execute(
            "UPDATE customers SET deleted_at = ?, updated_at = ? WHERE id = ?", [ts, ts, cid]
        )
    elif kind == "deleted":  # the newest order deleted (deletes = "none": nothing to
        # publish, but the read must run: the check cannot know that)
        oid = rid
        gone = con.execute(
            "SELECT id, customer_id, amount_cents, status FROM orders WHERE id = ?", [oid]
        ).fetchall()
        con.execute("DELETE FROM orders WHERE id = ?", [oid])
    con.commit()
    for name in top:
        top[name] = max(top[name], _at_bound(shop, name)[1])
    return gone, in_window


KINDS = ["none", "rows", "in-place", "tie", "soft-delete", "deleted"]


@pytest.mark.parametrize("seed", [1, 2])
def test_every_change_in_the_window_is_read_and_the_replica_equals_the_source(
    shop_job, shop, home, seed
):
    _no_reconcile(shop_job)
    rng = random.Random(seed)
    shop.round(20, 15, churn=0)
    shop_job.sync()
    _quiet(shop_job, home)
    skipped = read = 0
    gone: list[tuple] = []
    top = {name: _at_bound(shop, name)[1] for name in ("customers", "orders")}
    kinds = ["none"] + rng.sample(KINDS[1:], len(KINDS) - 1) + [rng.choice(KINDS) for _ in range(4)]
    for kind in kinds:
        before = _outcome(home) == "skipped" or _recorded(home)
        lost, in_window = _change(shop, kind, rng, top)
        gone += lost
        shop_job.sync()
        outcome = _outcome(home)
        if in_window:  # every change a read would see is read, never skipped
            assert outcome == "read", (kind, _decision(home))
            read += 1
        elif before:  # nothing changed since a skip or a recorded read: skipped
            assert outcome == "skipped", (kind, _decision(home))
            skipped += 1
    assert read >= 3 and skipped >= 1
    shop_job.pull()
    _replica_is_source(shop, shop_job.replica, gone)


def test_a_source_that_changes_while_it_is_read_leaves_no_record(shop_job, shop, home, monkeypatch):
    # the check's state is taken before the read and again after it: a row committed
    # while the read ran (after dlt's query) must make the next run read, never skip it
    import sources.sql_database.source as source

    _no_reconcile(shop_job)
    shop.round(10, 5, churn=0)
    shop_job.sync()
    real = source.extract

    def racing(job):  # noqa: ANN001, ANN202
        result = real(job)
        rid, _ = _at_bound(shop, "customers")
        shop.con.execute("UPDATE customers SET name = 'during the read' WHERE id = ?", [rid])
        shop.con.commit()
        return result

    monkeypatch.setattr(source, "extract", racing)
    shop_job.sync()  # reads (no record yet), stages nothing, the row changes meanwhile
    assert _outcome(home) == "read" and not _recorded(home), _decision(home)
    monkeypatch.setattr(source, "extract", real)
    shop_job.sync()
    assert _outcome(home) == "read"
    shop_job.pull()
    _replica_is_source(shop, shop_job.replica)
    names = duckdb.connect(str(shop_job.replica), read_only=True)
    try:
        assert (
            names.execute(
                "SELECT count(*) FROM customers WHERE name = 'during the read'"
            ).fetchone()[0]
            == 1
        )
    finally:
        names.close()


def test_the_check_stands_aside_where_its_answer_would_not_hold(shop_job, shop, home, monkeypatch):
    from deltaferry.config import job_home

    shop.round(10, 5, churn=0)
    shop_job.sync()
    shop_job.sync()
    # reconcile reads every key: read, said why
    outcome, why = _decision(home)
    assert outcome == "read" and "reconciles deletes" in why, why
    _no_reconcile(shop_job)
    shop_job.sync()
    assert _outcome(home) == "read" and _recorded(home)
    shop_job.sync()
    assert _outcome(home) == "skipped"
    # other settings: a record made before is no record
    text = shop_job.config.read_text()
    shop_job.config.write_text(
        text.replace('deletes = "none"', 'deletes = "none"\nnull_cursor = "quarantine"')
    )
    shop_job.sync()
    outcome, why = _decision(home)
    assert outcome == "read" and "settings changed" in why, why
    shop_job.config.write_text(text)
    shop_job.sync()  # the settings as they were: read again, and recorded
    assert _outcome(home) == "read" and _recorded(home), _decision(home)
    # a record older than DELTAFERRY_QUIET_MAX_AGE: read again
    record = job_home("shop") / "quiet.json"
    old = json.loads(record.read_text())
    old["read_at"] -= 901
    record.write_text(json.dumps(old))
    shop_job.sync()
    outcome, why = _decision(home)
    assert outcome == "read" and "old (limit 900 s)" in why, why
    # turned off: no check at all, every run reads
    monkeypatch.setenv("DELTAFERRY_QUIET_MAX_AGE", "0")
    for _ in range(2):
        shop_job.sync()
        assert _outcome(home) == "", _decision(home)
    monkeypatch.delenv("DELTAFERRY_QUIET_MAX_AGE")
    # a row held in the quarantine (a contract failure): read while it is held
    shop.round(10, 0, churn=0, invalid=1)
    for _ in range(3):
        shop_job.sync()
    outcome, why = _decision(home)
    assert outcome == "read" and "quarantine" in why, why


def test_the_state_changes_with_the_window_and_only_with_it(shop_job, shop, home):
    # job_state directly: a column added or dropped, a row deleted at the bound, a value
    # retyped, all change it; a change below the window's bound does not (the read would
    # not see it either)
    from sources.sql_database.quiet import job_state

    _no_reconcile(shop_job)
    shop.round(10, 5, churn=0)
    shop_job.sync()
    job = shop_job.job()
    base = job_state(job)
    assert base == job_state(job)  # the same source, the same state
    con = shop.con
    oldest = con.execute("SELECT min(id) FROM customers").fetchone()[0]
    con.execute("UPDATE customers SET name = 'below the bound' WHERE id = ?", [oldest])
    con.commit()
    assert job_state(job) == base
    steps = [
        "ALTER TABLE customers ADD COLUMN note TEXT",
        "ALTER TABLE customers DROP COLUMN note",
        "DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY updated_at DESC LIMIT 1)",
        "UPDATE customers SET country = 7 WHERE id = "
        "(SELECT id FROM customers ORDER BY updated_at DESC LIMIT 1)",
    ]
    last = base
    for sql in steps:
        con.execute(sql)
        con.commit()
        now = job_state(job)
        assert now != last, sql
        last = now


PG_JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}"
lake = "{lake}"

[[jobs.pg.tables]]
name = "t"
primary_key = ["id"]
cursor = "updated_at"
contract = "tests.support.contracts_sqltypes:Loose"
"""


def _pg_held(home: Path) -> list[tuple]:
    con = duckdb.connect(str(home / "pg" / "state.duckdb"), read_only=True)
    try:
        return con.execute(
            "SELECT tbl, pk, field FROM quarantine WHERE resolved IS NULL ORDER BY pk, field"
        ).fetchall()
    finally:
        con.close()


def _pg_quiet(pg_job, home: Path) -> None:  # noqa: ANN001
    pg_job.sync()
    pg_job.sync()
    if _outcome(home, "pg") != "skipped":
        pg_job.sync()
    assert _outcome(home, "pg") == "skipped", _decision(home, "pg")


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE t SET amount = 'NaN' WHERE id = 2",
        "UPDATE t SET at = 'infinity' WHERE id = 2",
        "UPDATE t SET day = '10000-01-01' WHERE id = 2",
    ],
)
def test_a_value_its_type_cannot_carry_is_read_and_held_not_skipped(pg_job, home, change):
    # PostgreSQL values the published type cannot carry are read as NULL by the read's
    # adapted types and flagged by its own SQL (types.py's unfit plans): a row changed in
    # place from NULL to one must be read (and held), as with the check off (a reviewer's
    # find: the check hashed the NULL and skipped the read)
    pg_job.write(PG_JOB)
    pg_job.sql(
        "CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2), at timestamp, day date,"
        " updated_at timestamptz NOT NULL)",
        "INSERT INTO t VALUES (1, 1.5, '2024-01-01', '2024-01-01', '2024-01-01 00:00+00'),"
        " (2, NULL, NULL, NULL, '2024-01-02 00:00+00')",
    )
    _pg_quiet(pg_job, home)
    assert _pg_held(home) == []
    pg_job.sql(change)
    pg_job.sync()
    assert _outcome(home, "pg") == "read", _decision(home, "pg")
    held = _pg_held(home)
    assert [(tbl, pk) for tbl, pk, _ in held] == [("t", '{"id": 2}')], held


def test_a_record_no_longer_readable_is_no_record(pg_job, home):
    # a record written by another build (an ExtractResult with other fields) or damaged:
    # the run reads, as with no record, and leaves a good one (a reviewer's find: the run
    # failed until the record aged out)
    pg_job.write(PG_JOB)
    pg_job.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL)",
        "INSERT INTO t VALUES (1, 'a', '2024-01-01 00:00+00')",
    )
    _pg_quiet(pg_job, home)
    path = home / "pg" / "quiet.json"
    good = json.loads(path.read_text())
    damages = (
        {"some_new_field": None},
        {"load_ids": None},
        {"columns": {"t": None}},  # (a second reviewer's find: the run failed)
        {"columns": "x"},
        {"rows_by_table": {"t": None}},
    )
    for damage in damages:
        record = dict(good, result={**good["result"], **damage})
        path.write_text(json.dumps(record))
        pg_job.sync()
        outcome, why = _decision(home, "pg")
        assert outcome == "read" and "unreadable" in why, why
    path.write_text('{"version": 1, "settings": ')
    pg_job.sync()
    assert _decision(home, "pg")[0] == "read"
    pg_job.sync()
    assert _decision(home, "pg")[0] == "skipped"


def test_a_read_that_fails_removes_the_record(shop_job, shop, home, monkeypatch):
    # a record is of the last read only: a read that starts and fails leaves none, so the
    # next run reads whatever the fingerprints say
    import sources.sql_database.source as source
    from deltaferry.errors import TerminalError

    _no_reconcile(shop_job)
    shop.round(10, 5, churn=0)
    shop_job.sync()
    _quiet(shop_job, home)
    record = home / "shop" / "quiet.json"
    assert record.exists()
    shop.round(1, 0, churn=0)  # a change: the next run reads

    def fails(job):  # noqa: ANN001, ANN202
        raise TerminalError(f"job '{job.name}': the source went away")

    real = source.extract
    monkeypatch.setattr(source, "extract", fails)
    with pytest.raises(TerminalError, match="the source went away"):
        shop_job.sync()
    assert not record.exists()
    monkeypatch.setattr(source, "extract", real)
    shop_job.sync()
    assert _outcome(home) == "read"
    shop_job.pull()
    _replica_is_source(shop, shop_job.replica)


CLI_RUN = r"""
import atexit, sys
atexit.register(lambda: print("dlt imported:", "dlt" in sys.modules, flush=True))
from deltaferry.cli import cli
cli(["run", "shop", "--config", sys.argv[1]])
"""


@pytest.mark.integration  # a child process
def test_deltaferry_run_with_nothing_new_imports_no_dlt(shop_job, shop, home):
    """``deltaferry run`` checks the source before its flow (``preflight_job``), without dlt
    (``sources/sql_database/preflight.py``); the flow's change check skips the read: the
    whole command imports no dlt (about 0.4 s)."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    def run_cli() -> list[str]:  # `deltaferry run` in a child process: its stdout lines
        p = subprocess.run(
            [sys.executable, "-c", CLI_RUN, str(shop_job.config)],
            env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout.splitlines()

    _no_reconcile(shop_job)
    shop.round(15, 10, churn=0)
    shop_job.sync()  # stages the rows
    _quiet(shop_job, home)
    lines = run_cli()
    assert _outcome(home) == "skipped", _decision(home)
    assert "dlt imported: False" in lines, lines[-20:]
    # and a run that reads imports it: the check above can tell
    shop.round(2, 2, churn=0)
    lines = run_cli()
    assert _outcome(home) == "read"
    assert "dlt imported: True" in lines, lines[-20:]
