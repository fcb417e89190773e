"""A pull lists only what is new: manifests are named by zero-padded batch number, so the
reader asks the S3-compatible server for the keys after the last batch it applied
(``StartAfter``) instead of the whole chain; a lost tip is still named with the real head."""

from __future__ import annotations

from tests.support.spy import ListingSpy as _Spy


def test_a_pull_lists_only_the_manifests_after_its_position(shop_job, shop) -> None:
    from deltaferry.replica import pull

    for _ in range(4):  # four batches of customers
        shop.round(3, 0, churn=0)
        shop_job.sync()
    assert [r.last_batch for r in shop_job.pull()][0] == 4
    shop.round(2, 0, churn=0)
    shop_job.sync()  # batch 5
    spy = _Spy(shop_job.lake())
    (customers, _orders) = pull(shop_job.job(), spy, shop_job.replica)
    assert (customers.batches, customers.last_batch) == (1, 5)
    listed = [(a, keys) for prefix, a, keys in spy.calls if prefix.endswith("customers/manifests/")]
    assert listed, spy.calls
    for start_after, keys in listed:  # never the whole chain: from batch 4 on at most
        assert start_after is not None, listed
        assert start_after.endswith(("000000000003.json", "000000000004.json")), start_after
        assert len(keys) <= 2, keys
    # a pull with nothing new lists at most the applied head
    spy.calls.clear()
    (customers, _orders) = pull(shop_job.job(), spy, shop_job.replica)
    assert customers.batches == 0
    assert all(len(keys) <= 1 for p, _, keys in spy.calls if p.endswith("customers/manifests/"))


def test_a_lost_tip_still_names_the_real_head(shop_job, shop) -> None:
    import pytest

    from deltaferry.errors import VerificationError
    from deltaferry.verify import check_position
    from destinations.manifest import manifest_key

    for _ in range(3):
        shop.round(2, 0, churn=0)
        shop_job.sync()
    lake = shop_job.lake()
    raw = lake.get(manifest_key("shop", "customers", 3))
    assert raw is not None
    with pytest.raises(VerificationError, match=r"is at batch 5 but the lake's head is batch 3 "
                       r"\(batches 4\.\.5 gone"):
        check_position(lake, "shop", "customers", 5, None, whose="replica r")
    check_position(lake, "shop", "customers", 3, None, whose="replica r")  # holds


def test_a_batch_is_applied_file_by_file_in_one_transaction(shop_job, shop) -> None:
    """A pull reads a batch one file at a time (memory holds one file, not the batch), all
    inside the batch's one transaction: a batch of several files arrives whole, and a file
    that does not verify, even the last, leaves nothing of its batch applied."""
    import duckdb
    import pytest

    from deltaferry.errors import VerificationError
    from deltaferry.replica import pull

    shop_job.write_config(rows_per_file=3)
    shop.round(10, 0, churn=0)
    shop_job.sync()  # batch 1: 10 customers in 4 files
    shop.round(7, 0, churn=0)
    shop_job.sync()  # batch 2: 7 new customers in 3 files
    lake = shop_job.lake()
    keys = [k for k in lake.list("shop/customers/") if "/data/" in k or k.endswith(".parquet")]
    batch2 = sorted(k for k in keys if "000000000002" in k)
    assert len(batch2) == 3, keys

    class Tampered(_Spy):
        def get(self, key: str) -> bytes | None:
            body = self.inner.get(key)
            if key == batch2[-1] and body is not None:  # the last file of batch 2
                return body[:-1] + bytes([body[-1] ^ 1])
            return body

    with pytest.raises(VerificationError, match="does not match its sha256/size"):
        pull(shop_job.job(), Tampered(lake), shop_job.replica, tables=["customers"])
    con = duckdb.connect(str(shop_job.replica), read_only=True)
    try:
        assert con.execute("SELECT max(batch) FROM _deltaferry_batches "
                           "WHERE tbl = 'customers'").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM customers").fetchone() == (10,)
    finally:
        con.close()
    (customers,) = pull(shop_job.job(), lake, shop_job.replica, tables=["customers"])
    assert (customers.batches, customers.rows, customers.last_batch) == (1, 7, 2)
    con = duckdb.connect(str(shop_job.replica), read_only=True)
    try:
        replica = con.execute("SELECT id, name, email FROM customers ORDER BY id").fetchall()
    finally:
        con.close()
    assert replica == shop.con.execute(
        "SELECT id, name, email FROM customers ORDER BY id"
    ).fetchall()


def test_verify_incremental_reads_only_what_follows_a_known_position(shop_job, shop) -> None:
    """`verify --incremental` verifies the batches after the replica's position, chained to
    its manifest; plain `verify` reads the whole chain."""
    from click.testing import CliRunner

    from deltaferry.cli import cli

    for _ in range(3):
        shop.round(2, 0, churn=0)
        shop_job.sync()
    shop_job.pull()  # the replica is at batch 3
    shop.round(2, 0, churn=0)
    shop_job.sync()  # batch 4
    args = ["verify", "shop", "--config", str(shop_job.config), "--replica", str(shop_job.replica)]
    whole = CliRunner().invoke(cli, args)
    assert whole.exit_code == 0, whole.output
    assert "table customers: 4 batches" in whole.output
    since = CliRunner().invoke(cli, [*args, "--incremental"])
    assert since.exit_code == 0, since.output
    assert "table customers: 1 batches, 2 rows verified after batch 3 (replica" in " ".join(
        since.output.split()
    ), since.output
