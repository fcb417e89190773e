"""Regressions for the edges of change capture: cursor boundaries, re-created keys, renamed
identifiers, error classes, rebuilds after a config change, and published types."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from deltaferry.errors import ConfigError, TerminalError


def test_row_changed_again_at_the_last_cursor_value_is_published(shop_job, shop):
    shop.round(20, 5, churn=0)
    shop_job.sync()
    # a second write within the same cursor value (clock granularity): same updated_at
    shop.con.execute(
        "UPDATE customers SET country = 'ZZ' WHERE updated_at = (SELECT max(updated_at) FROM customers)"
    )
    shop.con.commit()
    out = shop_job.sync()
    assert out["tables"]["customers"]["rows"] == 1
    # the unchanged boundary row is not sent again
    assert shop_job.sync()["tables"]["customers"]["batch"] is None
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_key_deleted_then_recreated_with_an_old_cursor_comes_back(shop_job, shop):
    shop.round(10, 30, churn=0)
    shop_job.sync()
    old = shop.con.execute("SELECT * FROM orders WHERE id = 5").fetchall()[0]
    shop.con.execute("DELETE FROM orders WHERE id = 5")
    shop.con.commit()
    assert shop_job.sync()["tables"]["orders"]["deletes"] == 1
    shop.con.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", old)  # restored from a backup
    shop.con.commit()
    out = shop_job.sync()
    assert out["tables"]["orders"]["upserts"] == 1
    shop_job.pull()
    conv = {c.table: c for c in shop_job.compare()}
    assert conv["orders"].equal and conv["orders"].replica_rows == 30


def test_reconcile_refuses_to_delete_most_of_a_table(shop_job, shop):
    shop.round(10, 40, churn=0)
    shop_job.sync()
    shop.con.execute("DELETE FROM orders WHERE id > 5")
    shop.con.execute(  # a change of another table in the same run
        "UPDATE customers SET country = 'JP', updated_at = ? WHERE id = 1", (shop._tick(),)
    )
    shop.con.commit()
    with pytest.raises(TerminalError, match=r"reconcile would delete 35 of 40 rows"):
        shop_job.sync()
    assert shop_job.lake().get("shop/orders/manifests/000000000002.json") is None
    assert shop_job.lake().get("shop/orders/manifests/000000000001.json") is not None
    # the refusal stops its table only (it stopped the whole job, every later run too: a
    # fresh-user trial): the other table's change is published in that run
    assert shop_job.lake().get("shop/customers/manifests/000000000002.json") is not None
    shop_job.pull()
    with duckdb.connect(str(shop_job.replica), read_only=True) as r:
        assert r.execute("SELECT country FROM customers WHERE id = 1").fetchall() == [("JP",)]
        assert r.execute("SELECT count(*) FROM orders").fetchall() == [(40,)]


def test_names_dlt_would_rename_are_refused(tmp_path):
    from deltaferry.config import load_jobs

    cfg = tmp_path / "j.toml"
    cfg.write_text(
        '[jobs.j]\nsource = "sql_database"\nurl = "sqlite:///x.db"\nlake = "file:lake"\n'
        '[[jobs.j.tables]]\nname = "orders_"\nprimary_key = "id"\ncursor = "ts"\n'
        'contract = "contracts.shop:Orders"\n'
    )
    with pytest.raises(ConfigError, match="'orders_' would be staged by dlt as 'ordersx'"):
        load_jobs(cfg)


@pytest.mark.parametrize(
    "name, needle",
    [
        ("_deltaferry_batches", "which name deltaferry's and dlt's own tables"),
        ("_dlt_loads", "which name deltaferry's and dlt's own tables"),
        ("_df_x", "which name deltaferry's and dlt's own tables"),
        ("nul", "is a device name on some platforms"),
        ("com1", "is a device name on some platforms"),
    ],
)
def test_table_names_staging_or_the_replica_use_are_refused(tmp_path, name: str, needle: str):
    """A table named ``_deltaferry_batches`` broke every pull of the job (the replica's own
    table); ``nul`` failed every run of the job at dlt's staging (a fresh-user trial)."""
    from deltaferry.config import load_jobs

    cfg = tmp_path / "j.toml"
    cfg.write_text(
        '[jobs.j]\nsource = "sql_database"\nurl = "sqlite:///x.db"\nlake = "file:lake"\n'
        f'[[jobs.j.tables]]\nname = "{name}"\nprimary_key = "id"\ncursor = "ts"\n'
        'contract = "contracts.shop:Orders"\n'
    )
    with pytest.raises(ConfigError, match=f"job 'j' table '{name}': table name '{name}'.*{needle}"):
        load_jobs(cfg)


@pytest.mark.parametrize("declared", ["BOOLEAN", "INTEGER", "TINYINT"])
def test_a_boolean_or_integer_soft_delete_flag_is_refused_not_read_as_deleting_live_rows(
    tmp_path, declared: str
):
    """``deletes = "soft:is_deleted"`` on a 0/1 flag published every live row (flag 0,
    not NULL) as a delete: the replica kept only the rows whose flag was NULL (a
    fresh-user trial). Refused before anything is read; a deleted-at time is taken."""
    import sqlite3

    from deltaferry.config import load_jobs
    from sources.sql_database.source import preflight_source

    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, is_deleted {declared}, gone_at TIMESTAMP)")
    con.close()
    cfg = tmp_path / "j.toml"

    def job(column: str):  # noqa: ANN202
        cfg.write_text(
            f'[jobs.j]\nsource = "sql_database"\nurl = "sqlite:///{db}"\nlake = "file:lake"\n'
            f'[[jobs.j.tables]]\nname = "t"\nprimary_key = "id"\ndeletes = "soft:{column}"\n'
            'contract = "contracts.shop:Orders"\n'
        )
        return load_jobs(cfg)["j"]

    with pytest.raises(ConfigError) as err:
        preflight_source(job("is_deleted"))
    message = str(err.value)
    assert "job 'j' table 't': deletes = 'soft:is_deleted' names a" in message, message
    assert "would delete live rows" in message and "\n" not in message, message
    preflight_source(job("gone_at"))  # a time: taken


def test_transient_source_errors_are_found_inside_dlt_wrappers():
    import sqlalchemy as sa

    from sources.sql_database.connection import transient_cause

    try:
        try:
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("database is locked"))
        except sa.exc.OperationalError as inner:
            raise RuntimeError("resource extraction failed") from inner
    except RuntimeError as outer:
        assert isinstance(transient_cause(outer), sa.exc.OperationalError)
    assert transient_cause(ValueError("bad column")) is None


def test_planned_batch_recovers_after_rows_per_file_changes(shop_job, shop, monkeypatch):
    from deltaferry.failpoints import FailpointHit

    shop_job.write_config(rows_per_file=25)
    shop.round(10, 80, churn=0)
    monkeypatch.setenv("DELTAFERRY_FAILPOINT", "after_plan")
    monkeypatch.setenv("DELTAFERRY_FAILPOINT_ACTION", "raise")
    with pytest.raises(FailpointHit):
        shop_job.sync()
    monkeypatch.delenv("DELTAFERRY_FAILPOINT")
    shop_job.write_config(rows_per_file=40)
    out = shop_job.sync()
    assert any("rebuilt byte-identically" in r for r in out["recovered"])
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_published_columns_follow_the_contract_types():
    from contracts import load_contract
    from deltaferry.config import JobConfig, TableConfig
    from deltaferry.delta import build_delta

    t = TableConfig("orders", ("id",), "updated_at", "none", "contracts.shop:Orders")
    job = JobConfig("j", "sql_database", "sqlite://", "file:lake", (t,))
    contract = load_contract(t.contract, where="test")
    staged = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "customer_id": pa.array([3, 4], pa.int64()),
            "amount_cents": pa.array(["12", "0012"]),  # text at the source
            "status": pa.array(["new", "paid"]),
            "updated_at": pa.array([1, 2], pa.timestamp("us")),
            "_op": pa.array(["upsert", "upsert"]),
            "_dlt_load_id": pa.array(["1.1", "1.1"]),
        }
    )
    delta = build_delta(job, t, contract, [staged], ["1.1"], 1)
    from deltaferry.delta import read_parquet

    published = read_parquet(delta.parts[0].data)
    assert published.schema.field("amount_cents").type == pa.int64()
    assert published["amount_cents"].to_pylist() == [12, 12]
    assert published.schema.field("updated_at").type == pa.timestamp("us")  # precision kept


def test_files_a_killed_run_left_in_the_jobs_tmp_are_removed_by_the_next_run(shop_job, shop):
    """A SIGKILL leaves the key counts, staged hashes and DuckDB spill of a run in
    ``$DELTAFERRY_HOME/<job>/tmp``; the next run (holding the job's lock, so no run is
    using them) removes them instead of letting them pile up run after run."""
    import duckdb

    from deltaferry.config import job_home

    shop.round(5, 5, churn=0)
    shop_job.sync()
    tmp = job_home(shop_job.name) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    left = [tmp / "keys-0f.duckdb", tmp / "hashes-1e.duckdb"]
    for path in left:
        with duckdb.connect(str(path)) as con:
            con.execute("CREATE TABLE k AS SELECT range AS id FROM range(1000)")
    (tmp / "duckdb_temp_storage_0").mkdir()
    (tmp / "duckdb_temp_storage_0" / "block.tmp").write_bytes(b"x" * 4096)
    shop.round(1, 1, churn=0)
    assert shop_job.sync()["tables"]["orders"]["rows"] >= 1
    assert list(tmp.iterdir()) == []
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def _shape(replica) -> tuple[list, int, object]:  # noqa: ANN001
    """(columns with types, rows, table comment) of the replica's orders table."""
    import duckdb

    con = duckdb.connect(str(replica), read_only=True)
    try:
        cols = con.execute("SELECT column_name, column_type FROM (DESCRIBE orders)").fetchall()
        rows = con.execute("SELECT count(*) FROM orders").fetchone()[0]
        comment = con.execute(
            "SELECT comment FROM duckdb_tables() WHERE table_name = 'orders'"
        ).fetchone()[0]
        return cols, rows, comment
    finally:
        con.close()


def test_a_table_the_lake_holds_no_batch_of_is_an_empty_table_in_the_replica(
    shop_job, shop, tmp_path
):
    """Regression (session 31 trial): an empty source table has no batch in the lake, and a
    pull left no table in the replica: a reader's query failed with "table does not exist"
    where the source answers 0 rows. Now the pull makes it empty, with the reader
    contract's columns; the first batch later replaces those with its own, so the replica
    ends as a new replica pulled from the same lake would (same columns, same types)."""
    from contracts.shop import Orders

    shop.round(10, 0, churn=0)
    assert shop_job.sync()["tables"]["orders"]["batch"] is None
    shop_job.pull()
    cols, rows, comment = _shape(shop_job.replica)
    assert [c for c, _ in cols] == [*Orders.to_schema().columns, "_seq"] and rows == 0
    assert comment and "no batch of this table" in comment
    assert all(c.equal for c in shop_job.compare())
    shop_job.pull()  # again: nothing changes
    assert _shape(shop_job.replica) == (cols, 0, comment)

    shop.round(0, 15, churn=0)
    assert shop_job.sync()["tables"]["orders"]["batch"] == 1
    shop_job.pull()
    fresh = tmp_path / "fresh.duckdb"
    from deltaferry.replica import pull

    pull(shop_job.job(), shop_job.lake(), fresh)
    assert _shape(shop_job.replica) == _shape(fresh)
    assert _shape(fresh)[1] == 15 and _shape(fresh)[2] is None
    assert all(c.equal for c in shop_job.compare())


def test_completed_dlt_load_packages_are_pruned_to_the_newest(shop_job, shop):
    """dlt keeps every completed load package in the pipeline dir (its schema, state and
    job records; about 30 KB a table) and never removes one: a job scheduled every 15
    minutes grew the dir by 96 packages a day, no-op runs included. Each run now keeps the
    newest ``KEEP_LOADED_PACKAGES``, deleted through dlt's own load storage."""
    import shutil

    from deltaferry.config import job_home
    from sources.pipeline import KEEP_LOADED_PACKAGES

    shop.round(10, 10, churn=0)
    shop_job.sync()
    loaded = job_home("shop") / "dlt" / "deltaferry_shop" / "load" / "loaded"
    (first,) = [p.name for p in loaded.iterdir()]
    for i in range(KEEP_LOADED_PACKAGES + 5):  # older packages, as earlier runs left them
        shutil.copytree(loaded / first, loaded / f"{1000000000 + i}.5")
    shop.round(0, 3, churn=0)
    assert shop_job.sync()["tables"]["orders"]["upserts"] == 3
    kept = sorted((p.name for p in loaded.iterdir()), key=float)
    assert len(kept) == KEEP_LOADED_PACKAGES
    assert first in kept and float(kept[-1]) > float(first)  # the newest two are kept
    assert "1000000000.5" not in kept and f"{1000000000 + 14}.5" in kept
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())
