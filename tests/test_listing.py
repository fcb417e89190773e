"""A pull lists only what is new: manifests are named by zero-padded batch number, so the
reader asks the S3-compatible server for the keys after the last batch it applied
(``StartAfter``) instead of the whole chain; a lost tip is still named with the real head."""

from __future__ import annotations

from typing import Any


class _Spy:
    """The lake, recording every listing: (prefix, start_after, keys returned)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str | None, list[str]]] = []

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        keys = self.inner.list(prefix, start_after=start_after)
        self.calls.append((prefix, start_after, keys))
        return keys

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


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
