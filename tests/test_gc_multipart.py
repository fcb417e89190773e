"""Garbage left by interrupted writers, and multipart uploads of large objects."""

from __future__ import annotations

import os
import time

import boto3
import pytest

from deltaferry.errors import TransientError
from deltaferry.gc import collect
from deltaferry.verify import verify_table
from destinations.lake import open_lake
from tests.support.faults import FaultProxy


def test_gc_removes_only_what_no_manifest_names(shop_job, shop, tmp_path):
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    shop.round(20, 20, churn=0)
    shop_job.sync()
    lake = shop_job.lake()
    root = tmp_path / "lake"
    junk_committed = "shop/customers/data/000000000001/part-00007-deadbeefdeadbeef.parquet"
    in_flight = "shop/customers/data/000000000002/part-00000-0123456789abcdef.parquet"
    stale = "shop/orders/data/000000000005/part-00000-fedcba9876543210.parquet"
    for key in (junk_committed, in_flight, stale):
        lake.put(key, b"leftover")
    tmp = root / "shop/orders/manifests/.tmp-abc.partial"
    tmp.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(root / stale, (old, old))
    os.utime(tmp, (old, old))

    dry = collect(shop_job.job(), lake, grace_seconds=3600, dry_run=True)
    assert {k for k, _ in dry.garbage} == {
        junk_committed,
        stale,
        "shop/orders/manifests/.tmp-abc.partial",
    }
    assert (root / junk_committed).exists()  # dry run removes nothing

    report = collect(shop_job.job(), lake, grace_seconds=3600)
    assert report.kept_in_flight == [in_flight]  # a running writer may still commit it
    assert not (root / junk_committed).exists() and not (root / stale).exists() and not tmp.exists()
    assert (root / in_flight).exists()
    for table in ("customers", "orders"):
        assert verify_table(lake, "shop", table)[0] == 1
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_pull_never_deletes_garbage(shop_job, shop, tmp_path):
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    shop.round(10, 10, churn=0)
    shop_job.sync()
    junk = "shop/customers/data/000000000001/part-00009-aaaaaaaaaaaaaaaa.parquet"
    shop_job.lake().put(junk, b"leftover")
    shop_job.pull()
    assert (tmp_path / "lake" / junk).exists()


def test_large_objects_go_up_as_multipart_uploads(bucket, s3_endpoint, monkeypatch):
    monkeypatch.setenv("DELTAFERRY_S3_MULTIPART_THRESHOLD", str(5 * 1024 * 1024))
    lake = open_lake(f"s3://{bucket}/mp")
    data = os.urandom(12 * 1024 * 1024)
    lake.put("job/t/data/000000000001/part-00000-x.parquet", data)
    assert lake.get("job/t/data/000000000001/part-00000-x.parquet") == data
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    head = s3.head_object(Bucket=bucket, Key="mp/job/t/data/000000000001/part-00000-x.parquet")
    assert "-" in head["ETag"]  # a multipart ETag: <md5>-<parts>
    assert head["ServerSideEncryption"] == "AES256"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_interrupted_multipart_upload_is_aborted_and_gc_cleans_leftovers(
    shop_job, bucket, s3_endpoint, monkeypatch
):
    monkeypatch.setenv("DELTAFERRY_S3_MULTIPART_THRESHOLD", str(5 * 1024 * 1024))
    monkeypatch.setenv("DELTAFERRY_S3_MAX_ATTEMPTS", "1")
    proxy = FaultProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
    try:
        lake = open_lake(f"s3://{bucket}/lake")
        proxy.reset_puts(100)  # every part upload is cut
        with pytest.raises(TransientError, match="part-00000-y.parquet"):
            lake.put(
                "shop/customers/data/000000000001/part-00000-y.parquet",
                os.urandom(11 * 1024 * 1024),
            )
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # boto3 aborted it
    # a process killed mid-upload cannot abort: simulate one, then let gc abort it
    s3.create_multipart_upload(
        Bucket=bucket, Key="lake/shop/customers/data/000000000003/part-00000-z.parquet"
    )
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) >= 1
    report = collect(shop_job.job(), open_lake(shop_job.lake_url), grace_seconds=0)
    assert "shop/customers/data/000000000003/part-00000-z.parquet" in report.aborted_uploads
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_manifests_can_be_locked_against_deletion(shop_job, shop, s3_endpoint, monkeypatch):
    import uuid

    locked = f"locked-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("DELTAFERRY_OBJECT_LOCK_DAYS", "1")
    monkeypatch.setenv("DELTAFERRY_OBJECT_LOCK_MODE", "COMPLIANCE")
    shop_job.lake_url = f"s3://{locked}/lake"
    shop_job.write_config()
    shop.round(10, 10, churn=0)
    shop_job.sync()
    key = "lake/shop/customers/manifests/000000000001.json"
    head = s3.head_object(Bucket=locked, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"]
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        s3.delete_object(Bucket=locked, Key=key, VersionId=head["VersionId"])
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())
