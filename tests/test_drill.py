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
