"""Recovery drill: the lake alone rebuilds what staging holds."""

from __future__ import annotations

from click.testing import CliRunner

from deltaferry.cli import cli
from deltaferry.drill import drill
from destinations.manifest import manifest_key


def test_drill_passes_after_rounds_and_fails_when_the_lake_lacks_a_batch(shop_job, shop):
    for r in range(3):
        shop.round(
            40 if r == 0 else 8,
            40 if r == 0 else 8,
            churn=0 if r == 0 else 0.1,
            invalid=2 if r == 1 else 0,
        )
        shop_job.sync()
    results, seconds = drill(shop_job.job(), shop_job.lake())
    assert all(r.equal for r in results), results
    assert seconds > 0
    by_table = {r.table: r for r in results}
    assert by_table["customers"].staged_rows > 0 and by_table["orders"].replica_rows > 0

    result = CliRunner().invoke(cli, ["drill", "shop", "--config", str(shop_job.config)])
    assert result.exit_code == 0, result.output
    assert "drill passed" in result.output

    # the lake loses its newest orders batch: the drill must notice
    lake = shop_job.lake()
    lake.delete(manifest_key("shop", "orders", 3))
    results, _ = drill(shop_job.job(), lake)
    orders = next(r for r in results if r.table == "orders")
    assert not orders.equal and orders.missing_in_replica > 0
    result = CliRunner().invoke(cli, ["drill", "shop", "--config", str(shop_job.config)])
    assert result.exit_code == 1 and "drill FAILED" in result.output


def test_drill_compares_a_zoned_published_time_with_its_naive_staged_form(
    tmp_path, home, prefect_api
):
    """Staging keeps a time as naive UTC wall time; a contract may publish it zoned. The
    drill compared both as text ('2024-03-01 10:00:00' and '2024-03-01 10:00:00+00') and
    failed every such table; typed, they are one instant. A real difference still shows."""
    import sqlite3

    from deltaferry.config import load_job
    from destinations.lake import open_lake
    from flows.sync import sync_job

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE ev (id INTEGER PRIMARY KEY, v TEXT, updated_at TIMESTAMP)")
        con.execute(
            "INSERT INTO ev VALUES (1, 'a', '2024-03-01 10:00:00'), "
            "(2, 'b', '2024-03-01T12:30:00+02:00'), (3, 'c', '2024-10-27 01:30:00.123456Z')"
        )
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(
        f'[jobs.zoned]\nsource = "sql_database"\nurl = "sqlite:///{db}"\n'
        f'lake = "file://{tmp_path}/lake"\ntimezone = "Europe/Berlin"\n'
        '\n[[jobs.zoned.tables]]\nname = "ev"\nprimary_key = ["id"]\ncursor = "updated_at"\n'
        'contract = "tests.support.contracts_sqltypes:Zoned"\n'
    )
    sync_job(job="zoned", config=str(cfg))
    with sqlite3.connect(db) as con:
        con.execute("UPDATE ev SET v = 'b2', updated_at = '2024-11-02 00:00:00' WHERE id = 2")
    sync_job(job="zoned", config=str(cfg))
    job = load_job("zoned", cfg)
    results, _ = drill(job, open_lake(job.lake))
    assert [(r.table, r.staged_rows, r.replica_rows, r.missing_in_replica, r.extra_in_replica)
            for r in results] == [("ev", 3, 3, 0, 0)]  # fmt: skip
    result = CliRunner().invoke(cli, ["drill", "zoned", "--config", str(cfg)])
    assert result.exit_code == 0 and "drill passed" in result.output, result.output
    # the lake loses the second batch: the replica has id 2's first version
    open_lake(job.lake).delete(manifest_key("zoned", "ev", 2))
    results, _ = drill(job, open_lake(job.lake))
    assert (results[0].missing_in_replica, results[0].extra_in_replica) == (1, 1)


def test_drill_leaves_out_rows_the_lake_has_not_had_yet(tmp_path, home, prefect_api):
    """A change its contract refuses stops the table: staged, not published. The drill
    compared it with the lake and failed on an intact lake; such rows are the next run's
    (or its error's), not the lake's: left out on both sides and counted. A batch the lake
    lost still fails the drill beside them."""
    import sqlite3

    import pytest

    from deltaferry.config import load_job
    from deltaferry.errors import TerminalError
    from destinations.lake import open_lake
    from flows.sync import sync_job

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE lines (id INTEGER PRIMARY KEY, qty INTEGER, at TIMESTAMP)")
        con.execute("INSERT INTO lines VALUES (1, 5, '2024-03-01'), (2, 7, '2024-03-01')")
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(
        f'[jobs.od]\nsource = "sql_database"\nurl = "sqlite:///{db}"\n'
        f'lake = "file://{tmp_path}/lake"\n'
        '\n[[jobs.od.tables]]\nname = "lines"\nprimary_key = ["id"]\ncursor = "at"\n'
        'contract = "tests.support.contracts_sqltypes:NonNegative"\n'
    )
    sync_job(job="od", config=str(cfg))
    with sqlite3.connect(db) as con:  # a changed row and a new one, both refused
        con.execute("UPDATE lines SET qty = -1, at = '2024-03-02' WHERE id = 2")
        con.execute("INSERT INTO lines VALUES (3, -5, '2024-03-02')")
    with pytest.raises(TerminalError, match="break contract"):
        sync_job(job="od", config=str(cfg))
    job = load_job("od", cfg)
    results, _ = drill(job, open_lake(job.lake))
    r = results[0]
    assert (r.staged_rows, r.replica_rows, r.pending, r.missing_in_replica, r.extra_in_replica) == (
        3, 2, 2, 0, 0,
    ), r  # fmt: skip
    result = CliRunner().invoke(cli, ["drill", "od", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "drill passed" in result.output and "not compared" in result.output
    open_lake(job.lake).delete(manifest_key("od", "lines", 1))
    results, _ = drill(job, open_lake(job.lake))
    assert results[0].missing_in_replica == 1 and results[0].pending == 2, results
