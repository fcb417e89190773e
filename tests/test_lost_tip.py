"""Readers and `verify` notice a lost tip (the lake's head below a known position) and a
replaced one; one table that stops does not stop the others in `pull`. On file:// and on
the S3-compatible server."""

from __future__ import annotations

import json

import duckdb
import pytest
from click.testing import CliRunner

from deltaferry.cli import cli
from deltaferry.errors import VerificationError
from deltaferry.replica import PullFailed
from deltaferry.verify import check_position, lake_head
from destinations.manifest import canonical, manifest_key, sha256


def _cli(*args: str, env: dict | None = None):  # noqa: ANN202
    return CliRunner().invoke(cli, list(args), env=env)


def _last_line(result) -> str:  # noqa: ANN001
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    return lines[-1]


def _applied(replica) -> dict[str, int]:  # noqa: ANN001
    with duckdb.connect(str(replica), read_only=True) as con:
        return dict(
            con.execute("SELECT tbl, max(batch) FROM _deltaferry_batches GROUP BY tbl").fetchall()
        )


@pytest.fixture(params=["file", "s3"])
def four_batches(request, shop_job, shop, tmp_path):  # noqa: ANN001, ANN201
    """Batches 1..4 of both tables; a replica pulled up to batch 3."""
    if request.param == "file":
        shop_job.lake_url = f"file://{tmp_path}/lake"
        shop_job.write_config()
    for i in range(3):
        shop.round(6, 4, churn=0.3 if i else 0)
        shop_job.sync()
    pulled = _cli("pull", "shop", "--replica", str(shop_job.replica), "--config", str(shop_job.config))
    assert pulled.exit_code == 0, pulled.output
    shop.round(3, 3, churn=0.3)
    shop_job.sync()
    return shop_job


def test_lake_head(four_batches):
    lake = four_batches.lake()
    head, digest = lake_head(lake, "shop", "customers")
    assert head == 4 and digest == sha256(lake.get(manifest_key("shop", "customers", 4)))
    assert lake_head(lake, "shop", "nothing") == (0, None)
    check_position(lake, "shop", "customers", 4, digest, whose="x")
    check_position(lake, "shop", "customers", 0, None, whose="x")  # batch 0 always holds
    with pytest.raises(VerificationError, match="x is at batch 5 but the lake's head is batch 4"):
        check_position(lake, "shop", "customers", 5, None, whose="x")
    with pytest.raises(VerificationError, match="batch 4: the lake's manifest .* is not the one x"):
        check_position(lake, "shop", "customers", 4, "0" * 64, whose="x")


def test_a_lost_tip_stops_pull_and_verify_naming_both_positions(four_batches, tmp_path):
    job = four_batches
    lake, config = job.lake(), str(job.config)
    for b in (4, 3):  # the bucket restored from a backup taken at batch 2
        lake.delete(manifest_key("shop", "customers", b))

    # the reader stops on customers (it has batch 3, the lake ends at 2); orders goes on
    p = _cli("pull", "shop", "--replica", str(job.replica), "--config", config)
    assert p.exit_code == 1, p.output
    line = _last_line(p)
    for needle in ("job 'shop' table 'customers'", f"replica {job.replica} is at batch 3",
                   "the lake's head is batch 2", "batch 3 gone"):  # fmt: skip
        assert needle in line, line
    assert _applied(job.replica) == {"customers": 3, "orders": 4}

    # verify knows the producer's checkpoint (batch 4) from $DELTAFERRY_HOME
    v = _cli("verify", "shop", "--config", config)
    assert v.exit_code == 1
    line = _last_line(v)
    assert "table 'customers'" in line and "this producer's checkpoint" in line, line
    assert "is at batch 4 but the lake's head is batch 2 (batches 3..4 gone" in line, line

    # on a reader's machine (no producer state): a position must be given to notice it
    reader_home = {"DELTAFERRY_HOME": str(tmp_path / "reader-home")}
    blind = _cli("verify", "shop", "--config", config, env=reader_home)
    assert blind.exit_code == 0, blind.output
    assert "a deleted newest manifest can only be detected against one" in blind.output
    r = _cli("verify", "shop", "--config", config, "--replica", str(job.replica), env=reader_home)
    assert r.exit_code == 1
    assert f"replica {job.replica} is at batch 3 but the lake's head is batch 2" in _last_line(r)
    at = _cli("verify", "shop", "--config", config, "--at", "customers=3", env=reader_home)
    assert at.exit_code == 1
    assert "(--at customers=3) is at batch 3 but the lake's head is batch 2" in _last_line(at)
    ok = _cli("verify", "shop", "--config", config, "--at", "customers=2", "--at", "orders=4",
              env=reader_home)  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "table orders: 4 batches" in ok.output and "reaches batch 4 of the position" in ok.output
    bad = _cli("verify", "shop", "--config", config, "--at", "customers:3", env=reader_home)
    assert bad.exit_code == 2 and "expected TABLE=BATCH" in bad.output


def test_an_edited_newest_manifest_is_found_only_against_a_known_position(four_batches, tmp_path):
    job = four_batches
    lake, config = job.lake(), str(job.config)
    pulled = _cli("pull", "shop", "--replica", str(job.replica), "--config", config)
    assert pulled.exit_code == 0, pulled.output
    key = manifest_key("shop", "customers", 4)
    m = json.loads(lake.get(key))
    m["trace_id"] = "someone-else"  # a plausible edit: the chain still holds
    lake.delete(key)
    lake.put(key, canonical(m))

    reader_home = {"DELTAFERRY_HOME": str(tmp_path / "reader-home")}
    blind = _cli("verify", "shop", "--config", config, env=reader_home)
    assert blind.exit_code == 0, blind.output
    assert "lake is unsigned" in blind.output
    assert "an edit of the newest manifest cannot be detected without signing keys" in " ".join(
        blind.output.split()
    )
    r = _cli("verify", "shop", "--config", config, "--replica", str(job.replica), env=reader_home)
    assert r.exit_code == 1
    line = _last_line(r)
    assert "table 'customers' batch 4: the lake's manifest" in line
    assert f"is not the one replica {job.replica} has" in line
    assert "batch 4: the lake's manifest" in _last_line(_cli("verify", "shop", "--config", config))
    p = _cli("pull", "shop", "--replica", str(job.replica), "--config", config)
    assert p.exit_code == 1 and "is not the one replica" in _last_line(p)


def test_one_bad_table_does_not_stop_the_others(shop_job, shop, tmp_path):
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    for i in range(3):
        shop.round(6, 4, churn=0.3 if i else 0)
        shop_job.sync()
    root, config = tmp_path / "lake", str(shop_job.config)
    (part,) = (root / "shop/customers/data/000000000002").glob("*.parquet")
    part.write_bytes(part.read_bytes() + b"x")

    p = _cli("pull", "shop", "--replica", str(shop_job.replica), "--config", config)
    assert p.exit_code == 1, p.output
    line = _last_line(p)
    assert "job 'shop' table 'customers' batch 2" in line and part.name in line, line
    assert "orders\t3\t" in p.output and "customers\t1\t" in p.output, p.output
    assert _applied(shop_job.replica) == {"customers": 1, "orders": 3}

    # both tables bad: each named in the one line, each applied what verified
    (part,) = (root / "shop/orders/data/000000000001").glob("*.parquet")
    part.write_bytes(part.read_bytes() + b"x")
    fresh = tmp_path / "fresh.duckdb"
    with pytest.raises(PullFailed) as err:
        from deltaferry.replica import pull

        pull(shop_job.job(), shop_job.lake(), fresh)
    text = str(err.value)
    assert "\n" not in text and "2 tables stopped" in text
    assert "table 'customers' batch 2" in text and "table 'orders' batch 1" in text
    assert {r.table: (r.last_batch, bool(r.error)) for r in err.value.results} == {
        "customers": (1, True),
        "orders": (0, True),
    }
    assert _applied(fresh) == {"customers": 1}


def test_pull_flow_reports_every_table_and_fails(shop_job, shop, tmp_path):
    from flows.pull import pull_job

    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    for i in range(2):
        shop.round(6, 4, churn=0.3 if i else 0)
        shop_job.sync()
    (part,) = (tmp_path / "lake/shop/customers/data/000000000002").glob("*.parquet")
    part.write_bytes(part.read_bytes() + b"x")
    with pytest.raises(VerificationError, match="table 'customers' batch 2"):
        pull_job(job="shop", replica=str(shop_job.replica), config=str(shop_job.config))
    assert _applied(shop_job.replica) == {"customers": 1, "orders": 2}
