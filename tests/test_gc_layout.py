"""`gc` against every kind of object the lake layout holds: it removes only kinds it knows to
be garbage (unnamed data, temporary files, incomplete multipart uploads) and keeps the rest,
whatever its age: manifests, named data (dual-published copies included), readers' records,
override logs and objects it does not know. On file:// and on the S3-compatible server."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from click.testing import CliRunner

from deltaferry.cli import cli
from deltaferry.gc import (
    DATA,
    MANIFEST,
    OVERRIDE,
    READER_RECORD,
    REMOVABLE,
    TEMPORARY,
    UNKNOWN,
    classify,
    collect,
)
from deltaferry.overrides import read_overrides, write_override
from deltaferry.consumers import read_consumers
from deltaferry.verify import producers, verify_table
from destinations.lake import open_lake
from tests.test_conflicts import Site

HEX = "0123456789abcdef"


def _pull(config, replica, consumer: str):  # noqa: ANN001, ANN202
    return CliRunner().invoke(
        cli,
        ["pull", "shop", "--replica", str(replica), "--consumer", consumer, "--config", str(config)],
    )


def _keys(lake, prefix: str = "shop/") -> set[str]:  # noqa: ANN001
    return {k for k, _ in lake.entries(prefix)}


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_gc_removes_only_garbage_kinds_and_keeps_every_live_kind(
    kind, shop_job, shop, tmp_path, monkeypatch, bucket, s3_endpoint
):
    from flows.sync import sync_job

    if kind == "file":
        shop_job.lake_url, multi_url = f"file://{tmp_path}/lake", f"file://{tmp_path}/multi"
        shop_job.write_config()
    else:
        multi_url = f"s3://{bucket}/multi"
    single = shop_job.lake()

    # one producer, customers dual-published: batch 1 at v1, batch 2 at v1 + a v3 copy
    shop.round(6, 3, churn=0)
    shop_job.sync()
    dual = tmp_path / "dual.toml"
    dual.write_text(
        shop_job.config.read_text()
        .replace("contracts.shop:Customers", "tests.support.contracts_versions:Customers3")
        .replace('deletes = "soft:deleted_at"', 'deletes = "soft:deleted_at"\nsource_version = 1')
        .replace("max_quarantine_ratio = 0.2", "max_quarantine_ratio = 0.2\ndual_publish = true")
    )
    assert _pull(shop_job.config, tmp_path / "old.duckdb", "old").exit_code == 0
    assert _pull(dual, tmp_path / "new.duckdb", "new").exit_code == 0
    shop.round(2, 2, churn=0.5)
    sync_job(job="shop", config=str(dual))
    m2 = json.loads(single.get("shop/customers/manifests/000000000002.json"))
    assert m2["also"]["files"] and all("/v3-part-" in f["key"] for f in m2["also"]["files"])

    # several producers of one table in a second lake, with an override log
    north, south = Site(tmp_path, multi_url, "north", 11), Site(tmp_path, multi_url, "south", 22)
    try:
        for site in (north, south):
            site.shop.round(4, 2, churn=0)
            site.sync(monkeypatch)
    finally:
        north.shop.close()
        south.shop.close()
    multi = open_lake(multi_url)
    assert producers(multi, "shop", "customers") == ["north", "south"]
    write_override(multi, "shop", "customers", key="1", action="pin", producer="north", reason="t")
    assert _pull(north.config, tmp_path / "merged.duckdb", "merged").exit_code == 0

    def leftover(lake, key: str, body: bytes = b"leftover") -> str:  # noqa: ANN001
        lake.put(key, body)
        return key

    # left long enough ago (older than the grace period below)
    old_garbage = {
        (single, leftover(single, f"shop/customers/data/000000000001/part-00009-{HEX}.parquet")),
        (single, leftover(single, f"shop/customers/data/000000000002/v3-part-00007-{HEX}.parquet")),
        (single, leftover(single, f"shop/orders/data/000000000007/part-00000-{HEX}.parquet")),
        (single, leftover(single, "shop/customers/consumers/.tmp-abc.partial")),
        (multi, leftover(multi, f"shop/customers/producers/north/data/000000000001/part-00003-{HEX}.parquet")),
        (multi, leftover(multi, f"shop/customers/producers/south/data/000000000009/part-00000-{HEX}.parquet")),
        (multi, leftover(multi, "shop/customers/overrides/.tmp-def.partial")),
    }  # fmt: skip
    unknown = {
        (single, leftover(single, "shop/customers/data/000000000001/notes.txt")),
        (single, leftover(single, "shop/customers/README.md")),
        (single, leftover(single, "shop/orders/snapshots/2026-01-01.parquet")),
        (multi, leftover(multi, "shop/customers/producers/north/state.json")),
    }
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    uploads = {}
    if kind == "s3":
        up = s3.create_multipart_upload(
            Bucket=bucket, Key=f"lake/shop/customers/data/000000000003/part-00000-{HEX}.parquet"
        )
        uploads["old"] = up["Key"]
    time.sleep(2.5)
    # recent: may belong to a writer still publishing
    in_flight = {
        (single, leftover(single, f"shop/orders/data/000000000008/part-00000-{HEX}.parquet")),
        (single, leftover(single, "shop/customers/manifests/.tmp-young.partial")),
    }
    young_garbage = {  # committed batch: a recent unnamed object there can only be a leftover
        (single, leftover(single, f"shop/orders/data/000000000001/part-00004-{HEX}.parquet")),
    }
    # (no recent multipart upload: the S3 test server reports a fixed, old start time for all)

    before = {(single, k) for k in _keys(single)} | {(multi, k) for k in _keys(multi)}
    kinds = {classify("shop", k.split("/")[1], k).kind for _, k in before}
    assert kinds == {MANIFEST, DATA, TEMPORARY, READER_RECORD, OVERRIDE, UNKNOWN}
    assert REMOVABLE == {DATA, TEMPORARY}
    records = {k for _, k in before if classify("shop", k.split("/")[1], k).kind == READER_RECORD}
    assert records == {
        f"shop/{t}/consumers/{c}.json"
        for t in ("customers", "orders")
        for c in ("old", "new")
    } | {"shop/customers/consumers/merged.json", "shop/orders/consumers/merged.json"}

    dry = collect(shop_job.job(), single, grace_seconds=1.5, dry_run=True)
    assert _keys(single) == {k for lk, k in before if lk is single}  # a dry run removes nothing

    r1 = collect(shop_job.job(), single, grace_seconds=1.5)
    monkeypatch.setenv("DELTAFERRY_HOME", str(north.home))
    r2 = collect(north.job(), multi, grace_seconds=1.5)
    garbage = old_garbage | young_garbage
    assert {k for k, _ in dry.garbage} == {k for lk, k in garbage if lk is single}
    assert {k for k, _ in r1.garbage + r2.garbage} == {k for _, k in garbage}
    assert set(r1.kept_in_flight + r2.kept_in_flight) == {k for _, k in in_flight}
    after = {(single, k) for k in _keys(single)} | {(multi, k) for k in _keys(multi)}
    assert after == before - garbage  # everything else survives, whatever its age
    assert unknown <= after and in_flight <= after
    assert {k for k, _ in r1.kept_notes + r2.kept_notes} == {k for _, k in unknown}
    assert r1.kept[READER_RECORD] == 4 and r2.kept[READER_RECORD] == 2
    assert r2.kept[OVERRIDE] == 1 and r1.kept[UNKNOWN] == 3

    if kind == "s3":
        assert r1.aborted_uploads == [uploads["old"].removeprefix("lake/")]
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    # the lake is whole and every component still finds what it reads
    assert verify_table(single, "shop", "customers") == (2, m2["rows"] + 6)
    for p in ("north", "south"):
        assert verify_table(multi, "shop", "customers", producer=p)[0] == 1
    assert len(read_overrides(multi, "shop", "customers")) == 1
    assert {r["consumer"] for r in read_consumers(single, "shop", "customers")} == {"old", "new"}
    listed = CliRunner().invoke(cli, ["contracts", "list", "shop", "--config", str(dual)])
    assert "\told\t" in listed.output and "\tnew\t" in listed.output, listed.output
    fresh = _pull(dual, tmp_path / "fresh.duckdb", "fresh")
    assert fresh.exit_code == 0, fresh.output


def test_gc_keeps_data_of_an_unreadable_or_missing_manifest(shop_job, shop, tmp_path):
    """Data in a batch whose manifest is broken, or missing below the head, is verify's
    business: gc keeps it and says why."""
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    for _ in range(3):
        shop.round(3, 3, churn=0.3)
        shop_job.sync()
    lake = shop_job.lake()
    root = tmp_path / "lake"
    (root / "shop/customers/manifests/000000000002.json").write_text("{not json")
    (root / "shop/orders/manifests/000000000002.json").unlink()
    data = _keys(lake, "shop/customers/data/000000000002/") | _keys(
        lake, "shop/orders/data/000000000002/"
    )
    assert len(data) >= 2
    report = collect(shop_job.job(), lake, grace_seconds=0)
    assert report.garbage == []
    assert {k for k, _ in report.kept_notes} == data
    notes = dict(report.kept_notes)
    assert all(
        "unreadable (run verify)" in notes[k] for k in data if k.startswith("shop/customers")
    )
    assert all(
        "no manifest below the chain's head 3 (run verify)" in notes[k]
        for k in data
        if k.startswith("shop/orders")
    )
    assert data <= _keys(lake)


def test_gc_command_keeps_reader_records_and_says_so(shop_job, shop, tmp_path):
    """The shell case gc_deletes_reader_records.sh: records older than the grace period stay."""
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    shop.round(3, 3, churn=0)
    shop_job.sync()
    assert _pull(shop_job.config, tmp_path / "r.duckdb", "daily-reader").exit_code == 0
    time.sleep(1.1)
    out = CliRunner().invoke(
        cli, ["gc", "shop", "--grace-seconds", "0", "--config", str(shop_job.config)]
    )
    assert out.exit_code == 0, out.output
    assert "0 garbage removed" in out.output and "2 reader record" in out.output, out.output
    assert (tmp_path / "lake/shop/customers/consumers/daily-reader.json").exists()
    listed = CliRunner().invoke(cli, ["contracts", "list", "shop", "--config", str(shop_job.config)])
    assert "daily-reader" in listed.output


def test_gc_names_an_object_exactly_as_its_key_is(shop_job, shop, tmp_path):
    """A key is printed as it is: ``[x]`` in an object's name is not taken for markup (the
    console used to drop it, naming the object wrongly)."""
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    shop.round(3, 3, churn=0)
    shop_job.sync()
    stray = tmp_path / "lake/shop/customers/data/000000000001/[x]stray [bold].parquet"
    stray.write_bytes(b"not a part of any manifest")
    time.sleep(1.1)
    out = CliRunner().invoke(
        cli, ["gc", "shop", "--grace-seconds", "0", "--config", str(shop_job.config)]
    )
    assert out.exit_code == 0, out.output
    kept = "kept shop/customers/data/000000000001/[x]stray [bold].parquet: not part of the lake"
    assert kept in out.output, out.output
    assert stray.exists()  # a name outside the layout is never removed
