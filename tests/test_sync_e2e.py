"""End to end against the S3-compatible server: incremental batches, tombstones, convergence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pytest

from destinations.manifest import Manifest, manifest_key


def _manifest(shop_job, table: str, batch: int) -> dict:
    key = manifest_key("shop", table, batch)
    return Manifest.parse(shop_job.lake().get(key), key=key).to_dict()


def _q(shop_job, sql: str) -> list[tuple]:
    con = duckdb.connect(str(shop_job.replica), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_initial_then_no_change_publishes_nothing(shop_job, shop):
    shop.round(50, 80, churn=0)
    first = shop_job.sync()
    assert first["tables"]["customers"]["batch"] == 1
    assert first["tables"]["customers"]["rows"] == 50
    assert first["tables"]["orders"]["rows"] == 80

    again = shop_job.sync()
    assert again["tables"]["customers"]["batch"] is None
    assert again["tables"]["orders"]["batch"] is None
    keys = shop_job.lake().list("shop/customers/manifests/")
    assert keys == ["shop/customers/manifests/000000000001.json"]


def staged_schemas(path: Path) -> set[str]:
    """The schemas of a staging file's tables (``duck.connect``: encrypted ones too)."""
    from deltaferry import duck

    con = duck.connect(path, read_only=True)
    try:
        rows = con.execute(
            "SELECT DISTINCT schema_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def test_the_merge_staging_dataset_is_dropped_after_each_load(shop_job, shop):
    """dlt's merge leaves the last load's rows in ``raw_staging`` and empties it with a
    DELETE at the next load, whose memory grows with those rows (the whole table after a
    first load): it is dropped after every load, and the loads after merge as before."""
    staging = shop_job.dir / "home" / "shop" / "staging.duckdb"
    shop.round(40, 60, churn=0)
    shop_job.sync()
    assert staged_schemas(staging) == {"raw"}
    for _ in range(2):
        shop.round(5, 5, churn=0.3)
        out = shop_job.sync()
        assert out["tables"]["customers"]["batch"] is not None
        assert staged_schemas(staging) == {"raw"}
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_batch_carries_exactly_the_changed_rows(shop_job, shop):
    shop.round(40, 60, churn=0)
    shop_job.sync()
    con = shop.con
    con.execute(
        "UPDATE customers SET country = 'FR', updated_at = '2030-01-01 00:00:00' WHERE id IN (1, 2, 3)"
    )
    con.execute(
        "UPDATE customers SET deleted_at = '2030-01-01 00:00:01', updated_at = '2030-01-01 00:00:01' WHERE id = 4"
    )
    con.execute(
        "INSERT INTO customers VALUES (1000, 'new', 'n@example.com', 'DE', '2030-01-01 00:00:02', NULL)"
    )
    con.execute("DELETE FROM orders WHERE id IN (5, 6)")
    con.commit()
    out = shop_job.sync()
    c = out["tables"]["customers"]
    assert (c["batch"], c["rows"], c["upserts"], c["deletes"]) == (2, 5, 4, 1)
    o = out["tables"]["orders"]
    assert (o["batch"], o["rows"], o["upserts"], o["deletes"]) == (2, 2, 0, 2)
    m = _manifest(shop_job, "customers", 2)
    assert m["prev_sha256"] is not None and m["rows"] == 5
    assert m["ops"] == {"upsert": 4, "delete": 1}
    assert m["seq"] == {"start": 41, "end": 45}


def test_convergence_over_rounds_and_pull_is_idempotent(shop_job, shop):
    for r in range(4):
        shop.round(30 if r else 120, 60 if r else 300, churn=0 if r == 0 else 0.1)
        shop_job.sync()
        shop_job.pull()
        conv = shop_job.compare()
        assert all(c.equal for c in conv), conv
        assert all(c.source_rows == c.replica_rows for c in conv), conv

    before = _q(shop_job, "SELECT count(*), sum(hash(id, country, updated_at)) FROM customers")
    again = shop_job.pull()
    assert all(r.batches == 0 for r in again)
    after = _q(shop_job, "SELECT count(*), sum(hash(id, country, updated_at)) FROM customers")
    assert before == after


def test_deleted_rows_leave_the_replica(shop_job, shop):
    shop.round(20, 40, churn=0)
    shop_job.sync()
    shop_job.pull()
    shop.con.execute(
        "UPDATE customers SET deleted_at = '2031-01-01', updated_at = '2031-01-01' WHERE id = 7"
    )
    shop.con.execute("DELETE FROM orders WHERE id = 9")
    shop.con.commit()
    shop_job.sync()
    shop_job.pull()
    assert _q(shop_job, "SELECT count(*) FROM customers WHERE id = 7") == [(0,)]
    assert _q(shop_job, "SELECT count(*) FROM orders WHERE id = 9") == [(0,)]
    assert _q(shop_job, "SELECT count(*) FROM orders") == [(39,)]
    # a key deleted and then re-created at the source comes back
    shop.con.execute("INSERT INTO orders VALUES (9, 1, 500, 'new', '2031-02-01')")
    shop.con.commit()
    shop_job.sync()
    shop_job.pull()
    assert _q(shop_job, "SELECT amount_cents FROM orders WHERE id = 9") == [(500,)]


def test_operations_log_records_every_step(shop_job, shop):
    shop.round(10, 10, churn=0)
    shop_job.sync()
    state = duckdb.connect(str(shop_job.dir / "home" / "shop" / "state.duckdb"), read_only=True)
    steps = state.execute(
        "SELECT step, tbl, batch, attempt, outcome FROM ops_log WHERE step <> 'run' ORDER BY id"
    ).fetchall()
    names = [s[0] for s in steps]
    for expected in ("recover", "extract", "plan", "upload", "manifest", "checkpoint"):
        assert expected in names
    assert ("checkpoint", "orders", 1, 1, "ok") in steps
    assert all(s[4] == "ok" for s in steps)
    detail = state.execute(
        "SELECT detail FROM ops_log WHERE step = 'plan' AND tbl = 'customers'"
    ).fetchall()[0][0]
    assert "batch 1" in detail and "10 upserts" in detail
    from deltaferry.oplog import verify_oplog
    from deltaferry.state import StateStore

    state.close()
    assert verify_oplog(StateStore("shop")) == len(steps) + 1  # every entry chained ("run" too)
    assert "sqlite" not in detail


def test_large_batches_are_split_into_parts_and_all_verify(shop_job, shop):
    shop_job.write_config(rows_per_file=25)
    shop.round(60, 110, churn=0)
    shop_job.sync()
    m = _manifest(shop_job, "orders", 1)
    assert [f["rows"] for f in m["files"]] == [25, 25, 25, 25, 10]
    assert len({f["key"] for f in m["files"]}) == 5
    assert all(f["key"].startswith("shop/orders/data/000000000001/part-") for f in m["files"])
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_manifest_matches_its_published_json_schema(shop_job, shop):
    import jsonschema

    from destinations.manifest import canonical

    schema = json.loads(
        (Path(__file__).parents[1] / "destinations" / "manifest.schema.json").read_text()
    )
    shop.round(30, 30, churn=0)
    shop_job.sync()
    shop.round(5, 5, churn=0.2)
    shop_job.sync()
    for batch in (1, 2):
        m = _manifest(shop_job, "customers", batch)
        jsonschema.validate(m, schema)
        raw = shop_job.lake().get(manifest_key("shop", "customers", batch))
        assert raw == canonical(m)  # stored bytes are the canonical encoding
    assert _manifest(shop_job, "customers", 1)["prev_sha256"] is None
    m1 = shop_job.lake().get(manifest_key("shop", "customers", 1))
    assert _manifest(shop_job, "customers", 2)["prev_sha256"] == hashlib.sha256(m1).hexdigest()


def test_second_runner_on_the_same_job_stops_cleanly(shop_job, shop):
    from deltaferry.errors import JobBusyError
    from deltaferry.context import job_lock

    shop.round(10, 10, churn=0)
    with job_lock("shop"):
        with pytest.raises(JobBusyError, match="job 'shop' is already running"):
            shop_job.sync()
    assert shop_job.lake().list("shop/") == []
    assert shop_job.sync()["tables"]["customers"]["batch"] == 1


def test_a_source_table_without_rows_compares_equal(shop_job, shop):
    """A source table with no rows (dlt yields no schema for it) compares with its replica:
    equal while the replica has none, one extra row when the replica holds one the
    source lost (the convergence oracle failed with "at least one column")."""
    import duckdb

    shop.round(4, 0, churn=0)  # customers, no orders
    shop_job.sync()
    shop_job.pull()
    by = {c.table: c for c in shop_job.compare()}
    assert by["orders"].equal and by["orders"].source_rows == 0
    assert by["customers"].equal and by["customers"].source_rows == 4
    con = duckdb.connect(str(shop_job.replica))
    try:
        con.execute("INSERT INTO customers SELECT * REPLACE (id + 100 AS id) FROM customers "
                    "LIMIT 1")
        # the pull made orders empty (no batch of it), with the contract's columns
        con.execute("INSERT INTO orders (id, customer_id, amount_cents, status, updated_at, _seq)"
                    " VALUES (1, 1, 0, 'new', TIMESTAMP '2026-01-01', 1)")
    finally:
        con.close()
    by = {c.table: c for c in shop_job.compare()}
    assert not by["orders"].equal and (by["orders"].replica_rows, by["orders"].extra_in_replica) == (1, 1)
    assert not by["customers"].equal and by["customers"].extra_in_replica == 1
