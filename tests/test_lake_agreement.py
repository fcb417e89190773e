"""The producer and the lake agree before anything is published (issue 18).

A mistyped lake URL, a lost newest manifest and a head written elsewhere each stop the run
before it writes, in one line naming job, table and both positions; the ways out
(`deltaferry reset`, `deltaferry plan show|discard`) are driven through the command line,
and afterwards a fresh replica equals the source. On file:// and on the S3-compatible
server.
"""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from deltaferry.errors import LakeMismatchError
from deltaferry.state import StateStore
from deltaferry.verify import verify_table
from destinations.manifest import manifest_key


@pytest.fixture(params=["file", "s3"])
def lake_job(request, shop_job, tmp_path):  # noqa: ANN001, ANN201
    """The shop job on a file:// lake or on the S3-compatible server."""
    if request.param == "file":
        shop_job.lake_url = f"file://{tmp_path}/lake"
        shop_job.write_config()
    return shop_job


def _cli(*args: str):  # noqa: ANN202
    from deltaferry.cli import cli

    return CliRunner().invoke(cli, list(args))


def _keys(lake) -> dict[str, bytes | None]:  # noqa: ANN001
    return {k: lake.get(k) for k in lake.list("shop/")}


def _oplog(step: str) -> list[str]:
    with StateStore("shop").connect(read_only=True) as con:
        rows = con.execute(
            "SELECT detail FROM ops_log WHERE step = ? ORDER BY id", [step]
        ).fetchall()
    return [r[0] for r in rows]


def _replica_equals_source(job, tmp_path) -> None:  # noqa: ANN001
    job.replica = tmp_path / "fresh-replica.duckdb"
    job.replica.unlink(missing_ok=True)
    job.pull()
    conv = {c.table: c for c in job.compare()}
    assert all(c.equal for c in conv.values()), conv


def test_a_mistyped_lake_publishes_nothing_and_the_right_lake_goes_on(lake_job, shop, tmp_path):
    shop.round(20, 20, churn=0)
    lake_job.sync()  # batch 1 in the real lake
    right = lake_job.lake_url
    assert right.endswith("/lake")
    lake_job.lake_url = right + "e"  # one letter off: a prefix (folder) the job never used
    lake_job.write_config()
    shop.round(5, 5, churn=0.2)
    with pytest.raises(LakeMismatchError) as e:
        lake_job.sync()
    line = str(e.value)
    assert "\n" not in line
    assert "job 'shop' table 'customers'" in line and "lakee" in line
    assert "head is batch 0 (empty)" in line and "checkpoint is batch 1" in line
    assert "deltaferry reset shop --table customers" in line
    assert lake_job.lake().list("shop/") == []  # nothing published into the typo
    checked = _cli("verify", "shop", "--config", str(lake_job.config))
    assert checked.exit_code == 1 and "lake's head is batch 0" in checked.output, checked.output
    state = StateStore("shop")
    assert state.checkpoint("customers").batch == 1 and state.pending_plan("customers") is None

    lake_job.lake_url = right  # typo fixed: the change reaches the real lake
    lake_job.write_config()
    out = lake_job.sync()
    assert out["tables"]["customers"]["batch"] == 2 and out["tables"]["orders"]["batch"] == 2
    assert verify_table(lake_job.lake(), "shop", "customers")[0] == 2
    checked = _cli("verify", "shop", "--config", str(lake_job.config))
    assert checked.exit_code == 0 and "reaches batch 2 of this producer's checkpoint" in checked.output
    _replica_equals_source(lake_job, tmp_path)


def test_a_lost_newest_manifest_stops_the_producer_until_reset(lake_job, shop, tmp_path):
    for r in range(2):
        shop.round(20 if r == 0 else 5, 20 if r == 0 else 5, churn=0 if r == 0 else 0.2)
        lake_job.sync()
    lake = lake_job.lake()
    lake.delete(manifest_key("shop", "customers", 2))  # a bucket restored from an older backup
    before = _keys(lake)
    shop.round(3, 3, churn=0.2)
    with pytest.raises(LakeMismatchError, match=r"behind this producer: its head is batch 1 \(manifest"):
        lake_job.sync()
    assert _keys(lake) == before  # nothing published on top of the lost tip
    checked = _cli("verify", "shop", "--config", str(lake_job.config))
    assert checked.exit_code == 1 and "table 'customers'" in checked.output
    assert "is at batch 2 but the lake's head is batch 1" in checked.output

    # the way out the error names, through the command line, written to the operations log
    result = _cli("reset", "shop", "--table", "customers", "--reason", "tip lost in restore",
                  "--config", str(lake_job.config))
    assert result.exit_code == 0, result.output
    assert "tip lost in restore" in result.output
    logged = _oplog("reset")
    assert len(logged) == 1 and "Local checkpoint was batch 2" in logged[0]
    assert "the lake" in logged[0] and "is at batch 1" in logged[0]
    assert StateStore("shop").checkpoint("customers").batch == 0

    out = lake_job.sync()
    assert any("customers" in r and "adopted batch 1" in r for r in out["recovered"]), out
    assert out["tables"]["customers"]["batch"] == 2  # the lake's chain goes on from its head
    assert verify_table(lake, "shop", "customers")[0] == 2
    assert all(lake.get(k) == v for k, v in before.items())  # committed batches untouched
    _replica_equals_source(lake_job, tmp_path)
    assert lake_job.sync()["tables"]["customers"]["batch"] is None  # and it goes on normally


def test_a_home_restored_from_backup_stops_until_reset(lake_job, shop, tmp_path):
    shop.round(20, 20, churn=0)
    lake_job.sync()
    home = lake_job.dir / "home"
    backup = tmp_path / "home-backup"
    shutil.copytree(home, backup)
    shop.round(5, 5, churn=0.2)
    lake_job.sync()  # batch 2, then the home is restored from the older backup
    shutil.rmtree(home)
    shutil.copytree(backup, home)
    lake = lake_job.lake()
    before = _keys(lake)
    shop.round(4, 4, churn=0.2)
    with pytest.raises(LakeMismatchError) as e:
        lake_job.sync()
    assert "ahead of this producer: its head is batch 2" in str(e.value)
    assert "checkpoint is batch 1" in str(e.value) and "restored from a backup" in str(e.value)
    assert "tables 'orders' disagree with the lake too" in str(e.value)  # both named at once
    assert _keys(lake) == before
    checked = _cli("verify", "shop", "--config", str(lake_job.config))
    assert checked.exit_code == 1 and "ahead of this producer" in checked.output, checked.output

    result = _cli("reset", "shop", "--table", "customers", "--table", "orders", "--reason",
                  "home restored", "--config", str(lake_job.config))
    assert result.exit_code == 0, result.output
    assert len(_oplog("reset")) == 2
    # until the next run, status says what the reset did, not a bare "batch 0"
    status = _cli("status", "--config", str(lake_job.config))
    assert status.exit_code == 0 and "reset (adopts 2)" in status.output, status.output
    out = lake_job.sync()
    assert out["tables"]["customers"]["batch"] == 3 and out["tables"]["orders"]["batch"] == 3
    status = _cli("status", "--config", str(lake_job.config))
    assert "reset" not in status.output, status.output
    assert all(lake.get(k) == v for k, v in before.items())
    _replica_equals_source(lake_job, tmp_path)


def test_a_different_batch_at_the_checkpoint_is_another_lake(shop_job, shop, tmp_path):
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    shop.round(10, 10, churn=0)
    shop_job.sync()
    path = tmp_path / "lake" / manifest_key("shop", "customers", 1)
    other = path.read_bytes().replace(b'"rows":', b'"rows": ')  # same number, other bytes
    path.write_bytes(other)
    shop.round(2, 2, churn=0.5)
    with pytest.raises(LakeMismatchError, match="holds a different batch 1"):
        shop_job.sync()
    assert path.read_bytes() == other
    assert shop_job.lake().list("shop/customers/manifests/") == [
        manifest_key("shop", "customers", 1)
    ]


def test_plan_show_and_discard(shop_job, shop, tmp_path, monkeypatch):
    """A planned batch the lake does not hold is listed and can be discarded (the next run
    cuts its loads again); one whose manifest the lake holds cannot, and the next run
    commits it."""
    from deltaferry.failpoints import FailpointHit

    shop.round(20, 20, churn=0)
    shop_job.sync()
    shop.round(5, 5, churn=0.2)
    monkeypatch.setenv("DELTAFERRY_FAILPOINT", "after_plan")
    monkeypatch.setenv("DELTAFERRY_FAILPOINT_ACTION", "raise")
    with pytest.raises(FailpointHit):
        shop_job.sync()
    monkeypatch.delenv("DELTAFERRY_FAILPOINT")
    state = StateStore("shop")
    planned = state.pending_plan("customers")
    assert planned is not None and planned.batch == 2

    shown = _cli("plan", "show", "shop", "--config", str(shop_job.config))
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.output.splitlines() if line.startswith("customers"))
    assert row.split("\t")[1:4] == ["2", str(planned.rows), "all"] and "\tabsent\t" in row

    no_reason = _cli("plan", "discard", "shop", "--table", "customers", "--config", str(shop_job.config))
    assert no_reason.exit_code == 2  # --reason is required
    done = _cli("plan", "discard", "shop", "--table", "customers", "--reason", "cut again",
                "--config", str(shop_job.config))
    assert done.exit_code == 0, done.output
    assert state.pending_plan("customers") is None
    assert any(
        "planned batch 2" in d and "cut again" in d and "no manifest at that batch" in d
        for d in _oplog("plan-discard")
    )
    again = _cli("plan", "discard", "shop", "--table", "customers", "--reason", "x",
                 "--config", str(shop_job.config))
    assert again.exit_code == 2 and "no planned batch" in again.output

    out = shop_job.sync()  # the discarded loads are cut again: same rows, batch 2
    assert out["tables"]["customers"]["batch"] == 2
    assert out["tables"]["customers"]["rows"] == planned.rows
    _replica_equals_source(shop_job, tmp_path)

    # a plan whose manifest the lake already holds is published: not discarded
    shop.round(3, 3, churn=0.2)
    monkeypatch.setenv("DELTAFERRY_FAILPOINT", "after_manifest")
    with pytest.raises(FailpointHit):
        shop_job.sync()
    monkeypatch.delenv("DELTAFERRY_FAILPOINT")
    shown = _cli("plan", "show", "shop", "--table", "customers", "--config", str(shop_job.config))
    assert "\tstored\t" in shown.output
    refused = _cli("plan", "discard", "shop", "--table", "customers", "--reason", "x",
                   "--config", str(shop_job.config))
    assert refused.exit_code == 2 and "already holds this planned manifest" in refused.output
    out = shop_job.sync()
    assert any("manifest already stored" in r for r in out["recovered"])
    _replica_equals_source(shop_job, tmp_path)


def test_a_lost_tip_is_republished_byte_identically_and_readers_go_on(lake_job, shop, tmp_path):
    from deltaferry.errors import VerificationError

    for r in range(2):
        shop.round(20 if r == 0 else 5, 20 if r == 0 else 5, churn=0 if r == 0 else 0.2)
        lake_job.sync()
    lake_job.pull()  # a reader at batch 2
    lake = lake_job.lake()
    lost = {k: lake.get(k) for k in lake.list("shop/customers/") if "/000000000002" in k}
    assert len(lost) >= 2  # the manifest and its data
    for k in lost:
        lake.delete(k)  # the bucket restored from a backup taken before batch 2
    with pytest.raises(VerificationError, match="deltaferry republish shop --table customers"):
        lake_job.pull()
    with pytest.raises(LakeMismatchError, match="deltaferry republish shop --table customers"):
        lake_job.sync()

    result = _cli("republish", "shop", "--table", "customers", "--reason", "restored bucket",
                  "--config", str(lake_job.config))
    assert result.exit_code == 0, result.output
    assert {k: lake.get(k) for k in lost} == lost  # exactly what was committed, byte for byte
    assert any("restored bucket" in d and "batch 2" in d for d in _oplog("republish"))
    again = _cli("republish", "shop", "--table", "customers", "--reason", "x",
                 "--config", str(lake_job.config))
    assert again.exit_code == 2 and "nothing lost" in again.output

    assert lake_job.pull()  # the reader goes on: nothing to rebuild
    shop.round(3, 3, churn=0.2)
    out = lake_job.sync()
    assert out["tables"]["customers"]["batch"] == 3
    lake_job.pull()
    assert all(c.equal for c in lake_job.compare())


def test_republish_refuses_when_staging_has_moved_on(shop_job, shop, tmp_path):
    """Batch 2 is lost, but batch 3 changed every row in staging since: batch 2 can no
    longer be rebuilt exactly, and republish says so (naming reset) without publishing."""
    for r in range(2):
        shop.round(20 if r == 0 else 5, 20 if r == 0 else 5, churn=0 if r == 0 else 0.2)
        shop_job.sync()
    shop.con.execute(
        "UPDATE customers SET email = 'moved-' || id || '@example.com', "
        "updated_at = '2099-01-01 00:00:00'"
    )
    shop.con.commit()
    assert shop_job.sync()["tables"]["customers"]["batch"] == 3
    lake = shop_job.lake()
    for b in (2, 3):
        lake.delete(manifest_key("shop", "customers", b))
    before = _keys(lake)
    result = _cli("republish", "shop", "--table", "customers", "--reason", "x",
                  "--config", str(shop_job.config))
    assert result.exit_code == 1, result.output
    assert "batch 2" in result.output and "cannot be republished exactly" in result.output
    assert "deltaferry reset shop --table customers" in result.output
    assert _keys(lake) == before  # nothing uploaded


def test_a_corrupted_data_object_is_rebuilt_by_republish_batch(shop_job, shop, tmp_path):
    from deltaferry.errors import VerificationError

    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    for r in range(2):
        shop.round(20 if r == 0 else 5, 20 if r == 0 else 5, churn=0 if r == 0 else 0.2)
        shop_job.sync()
    lake = shop_job.lake()
    part = next(k for k in lake.list("shop/customers/data/000000000002/"))
    good = lake.get(part)
    path = tmp_path / "lake" / part
    path.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])  # one flipped byte
    with pytest.raises(VerificationError) as e:
        shop_job.pull()
    assert "does not match its sha256/size" in str(e.value)
    import re
    import shlex

    named = re.search(r"`(deltaferry republish [^`]+)`", str(e.value))
    assert named and named.group(1).startswith("deltaferry republish shop --table customers --batch 2")
    # the command as printed, with the reason filled in, is what the operator runs
    args = shlex.split(named.group(1).replace("<why>", "bit rot"))[1:]
    result = _cli(*args, "--config", str(shop_job.config))
    assert result.exit_code == 0, result.output
    assert lake.get(part) == good  # the committed bytes again
    assert any("bit rot" in d and "batch 2" in d for d in _oplog("republish"))
    _replica_equals_source(shop_job, tmp_path)
    unknown = _cli("republish", "shop", "--table", "customers", "--batch", "9", "--reason", "x",
                   "--config", str(shop_job.config))
    assert unknown.exit_code == 2 and "holds no plan of it" in unknown.output


def test_reset_refuses_a_lake_another_producer_wrote(shop_job, shop, tmp_path):
    shop.round(10, 10, churn=0)
    shop_job.sync()
    shop_job.write_config(producer_id="site-b")  # an empty home would be 'site-b'
    shutil.rmtree(shop_job.dir / "home")
    from deltaferry.errors import ConflictError

    with pytest.raises(ConflictError, match='set producer_id = "default"'):
        shop_job.sync()
    result = _cli("reset", "shop", "--table", "customers", "--reason", "x",
                  "--config", str(shop_job.config))
    assert result.exit_code == 2 and "written by producer 'default', not 'site-b'" in result.output
