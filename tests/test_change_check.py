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


def _extract_entries(home: Path) -> list[tuple[str, str]]:
    """(outcome, detail) of the extract step's entries of the job's latest run."""
    con = duckdb.connect(str(home / "shop" / "state.duckdb"), read_only=True)
    try:
        run = con.execute("SELECT run_id FROM ops_log ORDER BY id DESC LIMIT 1").fetchone()[0]
        return con.execute(
            "SELECT outcome, detail FROM ops_log WHERE run_id = ? AND step = 'extract' ORDER BY id",
            [run],
        ).fetchall()
    finally:
        con.close()


def _outcomes(home: Path) -> list[str]:
    return [s for s, _ in _extract_entries(home)]


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
    if _outcomes(home)[0] != "unchanged":
        shop_job.sync()
    assert _outcomes(home)[0] == "unchanged", _extract_entries(home)


def test_a_quiet_run_is_recorded_and_the_next_one_skips_the_read(shop_job, shop, home):
    _no_reconcile(shop_job)
    shop.round(15, 10, churn=0)
    shop_job.sync()
    assert _outcomes(home)[0] == "read"  # nothing staged yet: no check
    loads = _loads(home)
    shop_job.sync()  # reads, stages nothing: recorded
    assert _outcomes(home) == ["read", "recorded", "ok"], _extract_entries(home)
    for _ in range(2):
        out = shop_job.sync()
        (outcome, why), *_ = _extract_entries(home)
        assert outcome == "unchanged" and "read skipped" in why, why
        assert out["tables"]["customers"]["batch"] is None
        assert out["tables"]["orders"]["batch"] is None
        assert _loads(home) == loads
    shop.round(3, 2, churn=0)
    out = shop_job.sync()
    assert _outcomes(home)[0] == "read"
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
        before = _outcomes(home)
        lost, in_window = _change(shop, kind, rng, top)
        gone += lost
        shop_job.sync()
        outcome = _outcomes(home)[0]
        if in_window:  # every change a read would see is read, never skipped
            assert outcome == "read", (kind, _extract_entries(home))
            read += 1
        elif before[0] == "unchanged" or "recorded" in before:
            assert outcome == "unchanged", (kind, _extract_entries(home))
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
    assert "recorded" not in _outcomes(home)
    monkeypatch.setattr(source, "extract", real)
    shop_job.sync()
    assert _outcomes(home)[0] == "read"
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
    (outcome, why), *_ = _extract_entries(home)
    assert outcome == "read" and "reconciles deletes" in why, why
    _no_reconcile(shop_job)  # other settings: a record made before is no record
    shop_job.sync()
    assert _outcomes(home)[:2] == ["read", "recorded"]
    shop_job.sync()
    assert _outcomes(home)[0] == "unchanged"
    # a record older than DELTAFERRY_QUIET_MAX_AGE: read again
    record = job_home("shop") / "quiet.json"
    old = json.loads(record.read_text())
    old["read_at"] -= 901
    record.write_text(json.dumps(old))
    shop_job.sync()
    (outcome, why), *_ = _extract_entries(home)
    assert outcome == "read" and "old (limit 900 s)" in why, why
    # turned off: no check at all, every run reads
    monkeypatch.setenv("DELTAFERRY_QUIET_MAX_AGE", "0")
    for _ in range(2):
        shop_job.sync()
        assert "unchanged" not in _outcomes(home) and "read" not in _outcomes(home)
    monkeypatch.delenv("DELTAFERRY_QUIET_MAX_AGE")
    # a row held in the quarantine (a contract failure): read until it is settled
    shop.round(10, 0, churn=0, invalid=1)
    shop_job.sync()
    shop_job.sync()
    (outcome, why), *_ = _extract_entries(home)
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
