"""A cut over ``max_batch_rows`` is published as several batches, each a range of keys
committed before the next is cut (issue 16: memory follows the batch, not the table).

Checked against the source by ``deltaferry/compare.py`` after a pull, and by the lake's
own chain (``verify_table``); the crash points of the commit protocol are hit in the
*second* batch of a split initial load, then the next run finishes the load."""

from __future__ import annotations

import pytest

from deltaferry.failpoints import POINTS
from deltaferry.state import StateStore
from deltaferry.status import job_status
from deltaferry.verify import verify_table
from destinations.manifest import Manifest, manifest_key
from tests.test_recovery import _run_cli_killed_at


def _manifests(lake, table: str) -> list[Manifest]:  # noqa: ANN001
    keys = lake.list(f"shop/{table}/manifests/")
    return [Manifest.parse(lake.get(k), key=k) for k in keys]


def test_an_initial_load_over_the_limit_is_several_batches(shop_job, shop, monkeypatch):
    from deltaferry import duck

    trims: list[object] = []  # the pull lets go of the replica's cache as it grows
    monkeypatch.setattr(duck, "TRIM_EVERY_ROWS", 20)
    real = duck.trim_cache
    monkeypatch.setattr(duck, "trim_cache", lambda con: (trims.append(con), real(con)))
    shop_job.write_config(max_batch_rows=25, rows_per_file=10)
    shop.round(60, 90, churn=0)
    out = shop_job.sync()
    lake = shop_job.lake()
    for table, rows in (("customers", 60), ("orders", 90)):
        ms = _manifests(lake, table)
        expected = -(-rows // 25)
        assert [m.batch for m in ms] == list(range(1, expected + 1))
        assert [m.rows for m in ms] == [25] * (rows // 25) + ([rows % 25] if rows % 25 else [])
        assert all(len(m.files) <= 3 for m in ms)  # 10 rows a file
        assert verify_table(lake, "shop", table)[0] == expected
        assert out["tables"][table]["batches"] == expected
        assert out["tables"][table]["rows"] == rows
        # the ranges do not overlap: every key is in exactly one batch
        assert sum(m.rows for m in ms) == rows
    state = StateStore("shop")
    assert state.open_cut("customers") is None and state.pending_plan("customers") is None
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())
    # a trim after each batch of 25 rows; the last batches (10 and 15 rows) stay below 20
    assert len(trims) == 2 + 3

    # the next change is small: one batch, and no open cut was left behind
    shop.round(3, 4, churn=0.2)
    out = shop_job.sync()
    assert out["tables"]["customers"]["batches"] == 1
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


@pytest.mark.parametrize("point", [p for p in POINTS if p != "after_extract"])
def test_kill_in_the_second_batch_of_a_split_load_then_finish(shop_job, shop, point):
    shop_job.write_config(max_batch_rows=25, rows_per_file=10)
    shop.round(60, 90, churn=0)
    # the first batch of customers passes the point; the second is killed at it
    killed = _run_cli_killed_at(shop_job, point, skip=3 if point == "after_part_upload" else 1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = StateStore("shop")
    lake = shop_job.lake()
    assert state.checkpoint("customers").batch == 1
    assert state.open_cut("customers") is not None
    pending = state.pending_plan("customers")
    assert pending is not None and pending.batch == 2 and pending.keys.after is not None
    stored = lake.get(manifest_key("shop", "customers", 2))
    assert (stored is not None) == (point in ("after_manifest", "before_checkpoint"))
    # what an operator sees: the split load half-way, and the planned batch
    shown = job_status(shop_job.job())["tables"]["customers"]
    assert shown["open_cut"]["through"] == list(state.open_cut("customers")[1].after)
    assert shown["pending_batch"]["batch"] == 2

    # the source moves on before the next run: rows of the unfinished load change again
    shop.round(5, 5, churn=0.3)
    out = shop_job.sync()
    recovered = " ".join(out["recovered"])
    if point in ("after_manifest", "before_checkpoint"):
        assert "manifest already stored" in recovered
    else:
        assert "rebuilt byte-identically" in recovered
    for table in ("customers", "orders"):
        ms = _manifests(lake, table)
        assert [m.batch for m in ms] == list(range(1, len(ms) + 1))
        assert verify_table(lake, "shop", table)[0] == len(ms)
        assert state.pending_plan(table) is None and state.open_cut(table) is None
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_a_key_changed_while_a_split_load_is_half_way_cuts_its_loads_again(shop_job, shop):
    from click.testing import CliRunner

    from deltaferry.cli import cli

    shop_job.write_config(max_batch_rows=25, rows_per_file=10)
    shop.round(60, 90, churn=0)
    killed = _run_cli_killed_at(shop_job, "after_plan", skip=1)  # customers batch 2 planned
    assert killed.returncode == -9, killed.stderr[-2000:]
    shown = CliRunner().invoke(cli, ["plan", "show", "shop", "--config", str(shop_job.config)])
    row = next(line for line in shown.output.splitlines() if line.startswith("customers"))
    assert row.split("\t")[3] == "keys after ['25'] through ['50']", shown.output  # the range
    out = CliRunner().invoke(
        cli,
        [
            "plan",
            "discard",
            "shop",
            "--table",
            "customers",
            "--reason",
            "test",
            "--config",
            str(shop_job.config),
        ],
    )
    assert out.exit_code == 0, out.output
    state = StateStore("shop")
    assert state.open_cut("customers") is not None  # batch 1's range is out, the rest not
    # the key's columns change (order and one more): the saved position means nothing now
    text = shop_job.config.read_text()
    shop_job.config.write_text(
        text.replace('primary_key = ["id"]', 'primary_key = ["email", "id"]', 1)
    )
    shop_job.sync()
    with state.connect(read_only=True) as con:
        rows = con.execute("SELECT detail FROM ops_log WHERE step = 'cut'").fetchall()
    log = " ".join(r[0] for r in rows if r[0])
    assert "primary key changed from ['id'] to ['email', 'id']" in log
    assert state.open_cut("customers") is None
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())
