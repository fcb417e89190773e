"""Recovery republishes only real change (issue 19, point 1), as a seeded property.

Several producers publish one job (``multi_producer``) with overlapping keys; at a random
moment one of them loses its whole ``DELTAFERRY_HOME`` (or its operator runs
``deltaferry reset``) while its source is unchanged. Whatever the seed, after it recovers
every replica holds exactly the winners it held before — no edit of another site reverted,
no delete undone — and later edits still flow.
"""

from __future__ import annotations

import random
import shutil

import duckdb
import pytest

SEEDS = (3, 17, 41)


class Producer:
    """One site: its own shop database, jobs file and home; the lake is shared."""

    def __init__(self, root, lake: str, name: str, seed: int) -> None:  # noqa: ANN001
        from deltaferry.shop import JOBS_TOML, Shop

        self.name = name
        self.dir = root / name
        self.dir.mkdir()
        self.home = self.dir / "home"
        self.shop = Shop(self.dir / "shop.db", seed=seed)
        self.config = self.dir / "deltaferry.toml"
        self.config.write_text(
            JOBS_TOML.format(db=self.dir / "shop.db", lake=lake).replace(
                "max_quarantine_ratio = 0.2",
                f'max_quarantine_ratio = 0.2\nmulti_producer = true\nproducer_id = "{name}"',
            )
        )

    def sync(self, monkeypatch) -> dict:  # noqa: ANN001
        from flows.sync import sync_job

        monkeypatch.setenv("DELTAFERRY_HOME", str(self.home))
        return sync_job(job="shop", config=str(self.config))

    def job(self):  # noqa: ANN201
        from deltaferry.config import load_job

        return load_job("shop", self.config)


def _winners(producer: Producer, replica) -> dict[str, dict]:  # noqa: ANN001
    """Every table's rows (with the winning producer) after pulling into ``replica``."""
    from deltaferry.replica import pull
    from destinations.lake import open_lake

    job = producer.job()
    pull(job, open_lake(job.lake), replica)
    con = duckdb.connect(str(replica), read_only=True)
    try:
        return {
            t: {
                r[0]: r
                for r in con.execute(f'SELECT * EXCLUDE (_seq, _hlc) FROM "{t}" ORDER BY id').fetchall()
            }
            for t in ("customers", "orders")
        }
    finally:
        con.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_losing_a_producers_home_never_changes_the_winners(
    seed, tmp_path, home, bucket, prefect_api, monkeypatch
):
    from click.testing import CliRunner

    from deltaferry.cli import cli

    rng = random.Random(seed)
    lake = f"s3://{bucket}/lake"
    sites = [Producer(tmp_path, lake, name, seed * 10 + i) for i, name in enumerate("abc")]
    try:
        for s in sites:  # every site publishes its initial table: keys overlap
            s.shop.round(12, 12, churn=0)
            s.sync(monkeypatch)
        for _ in range(rng.randint(1, 3)):  # edits and deletes at random sites
            s = rng.choice(sites)
            s.shop.round(rng.randint(0, 3), rng.randint(0, 3), churn=0.3)
            s.sync(monkeypatch)
        replica = tmp_path / "replica.duckdb"
        before = _winners(sites[0], replica)

        lost = rng.choice(sites)
        if rng.random() < 0.5:
            shutil.rmtree(lost.home)  # the disk is replaced; the source is unchanged
            how = "lost home"
        else:
            monkeypatch.setenv("DELTAFERRY_HOME", str(lost.home))
            for table in ("customers", "orders"):
                done = CliRunner().invoke(
                    cli, ["reset", "shop", "--table", table, "--reason", "property",
                          "--config", str(lost.config)],
                )
                assert done.exit_code == 0, done.output
            how = "reset"
        out = lost.sync(monkeypatch)
        assert any("adopted batch" in r for r in out["recovered"]), (how, out)
        # nothing changed at that site's source: nothing to publish
        assert all(v.get("batch") is None for v in out["tables"].values()), (how, out)
        assert _winners(sites[1], tmp_path / "second.duckdb") == before, how
        assert _winners(sites[0], replica) == before, how

        # later edits still flow, from the recovered site too
        lost.shop.round(1, 1, churn=0.5)
        assert any(v.get("batch") for v in lost.sync(monkeypatch)["tables"].values())
        after = _winners(sites[2], replica)
        assert after != before
    finally:
        for s in sites:
            s.shop.close()
