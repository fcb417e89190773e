"""Tamper evidence: signed, hash-chained manifests and a hash-chained operations log.

Each fault is applied to a copy of one pristine lake; ``verify`` and ``pull`` must both
name the first bad batch, and a fresh replica must receive nothing from that batch on.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest

from deltaferry.errors import ConfigError, VerificationError
from deltaferry.keys import Keyring
from deltaferry.replica import pull
from deltaferry.verify import verify_table
from destinations.lake import open_lake
from destinations.manifest import canonical, manifest_key


@pytest.fixture
def signed_lake(shop_job, shop, tmp_path):
    """Three signed batches of customers in a file:// lake."""
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    Keyring().generate()
    for r in range(3):
        shop.round(20 if r == 0 else 5, 5, churn=0.1 if r else 0)
        shop_job.sync()
    return shop_job


def _manifest_path(lake_dir: Path, batch: int) -> Path:
    return lake_dir / manifest_key("shop", "customers", batch)


def _rewrite(path: Path, change) -> None:
    m = json.loads(path.read_bytes())
    change(m)
    path.write_bytes(canonical(m))


def _flip_byte(lake: Path) -> None:
    m = json.loads(_manifest_path(lake, 2).read_bytes())
    data = lake / m["files"][0]["key"]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


def _edit_field(lake: Path) -> None:
    _rewrite(_manifest_path(lake, 2), lambda m: m.update(producer_id="mallory"))


def _delete_manifest(lake: Path) -> None:
    _manifest_path(lake, 2).unlink()


def _reorder(lake: Path) -> None:
    a, b = _manifest_path(lake, 2), _manifest_path(lake, 3)
    ta, tb = a.read_bytes(), b.read_bytes()
    a.write_bytes(tb)
    b.write_bytes(ta)


def _replace_signature(lake: Path) -> None:
    first = json.loads(_manifest_path(lake, 1).read_bytes())["signature"]
    _rewrite(_manifest_path(lake, 2), lambda m: m.update(signature=first))


def _unknown_key(lake: Path) -> None:
    rogue = Keyring(lake.parent / "rogue-keys")
    rogue.generate()
    path = _manifest_path(lake, 2)
    m = json.loads(path.read_bytes())
    m["producer_id"] = "rogue"
    path.write_bytes(canonical(rogue.sign({**m, "signature": None})))


FAULTS = {
    "flip a byte in a data object": (_flip_byte, "sha256"),
    "edit a manifest field": (_edit_field, "signature does not match"),
    "delete a manifest in the middle": (_delete_manifest, "manifest missing"),
    "reorder two manifests": (_reorder, "batch 3"),
    "replace a signature": (_replace_signature, "signature does not match"),
    "sign with an unknown key": (_unknown_key, "unknown key"),
}


def test_every_tampering_is_found_at_its_batch_by_verify_and_pull(signed_lake, tmp_path):
    pristine = tmp_path / "lake"
    lake = open_lake(signed_lake.lake_url)
    assert verify_table(lake, "shop", "customers", keyring=Keyring())[0] == 3
    for name, (fault, needle) in FAULTS.items():
        copy = tmp_path / f"tampered-{abs(hash(name))}"
        shutil.copytree(pristine, copy)
        fault(copy)
        tampered = open_lake(f"file://{copy}")
        with pytest.raises(VerificationError, match="batch 2") as found:
            verify_table(tampered, "shop", "customers", keyring=Keyring())
        assert needle in str(found.value), (name, str(found.value))
        replica = tmp_path / f"replica-{abs(hash(name))}.duckdb"
        job = signed_lake.job()
        with pytest.raises(VerificationError, match="batch 2"):
            pull(job, tampered, replica, ["customers"], keyring=Keyring())
        con = duckdb.connect(str(replica), read_only=True)
        applied = con.execute("SELECT batch FROM _deltaferry_batches ORDER BY batch").fetchall()
        con.close()
        assert applied == [(1,)], name


def test_revoked_key_fails_from_its_revocation_point(signed_lake, tmp_path):
    lake = open_lake(signed_lake.lake_url)
    created = [
        json.loads(lake.get(manifest_key("shop", "customers", b)))["created_at"] for b in (1, 2, 3)
    ]
    keyring = Keyring()
    key_id = keyring.active().key_id
    keyring.revoke(key_id, at=created[1])  # compromised from batch 2 on
    with pytest.raises(VerificationError, match="batch 2.*revoked"):
        verify_table(lake, "shop", "customers", keyring=Keyring())
    replica = tmp_path / "revoked-replica.duckdb"
    with pytest.raises(VerificationError, match="batch 2.*revoked"):
        pull(signed_lake.job(), lake, replica, ["customers"], keyring=Keyring())
    con = duckdb.connect(str(replica), read_only=True)
    assert con.execute("SELECT batch FROM _deltaferry_batches").fetchall() == [(1,)]
    con.close()


def test_rotation_keeps_old_batches_verifiable(signed_lake, shop):
    keyring = Keyring()
    old = keyring.active().key_id
    new = keyring.rotate().key_id
    assert new != old and Keyring().keys[old].status == "retired"
    shop.round(5, 5, churn=0.1)
    signed_lake.sync()
    lake = open_lake(signed_lake.lake_url)
    m4 = json.loads(lake.get(manifest_key("shop", "customers", 4)))
    assert m4["signature"]["key_id"] == new
    assert verify_table(lake, "shop", "customers", keyring=Keyring())[0] == 4
    signed_lake.pull()
    assert all(c.equal for c in signed_lake.compare())


def test_unsigned_manifest_is_refused_once_keys_are_trusted(shop_job, shop, tmp_path):
    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    shop.round(10, 5, churn=0)
    shop_job.sync()  # no key yet: unsigned
    Keyring().generate()
    with pytest.raises(VerificationError, match="batch 1: manifest is not signed"):
        verify_table(open_lake(shop_job.lake_url), "shop", "customers", keyring=Keyring())


def test_operations_log_is_hash_chained(signed_lake):
    from deltaferry.oplog import verify_oplog
    from deltaferry.state import StateStore

    state = StateStore("shop")
    n = verify_oplog(state)
    assert n > 10
    with state.connect() as con:
        middle = con.execute("SELECT id FROM ops_log ORDER BY id LIMIT 1 OFFSET 5").fetchall()[0][0]
        con.execute(
            "UPDATE ops_log SET outcome = 'ok', detail = 'nothing to see' WHERE id = ?", [middle]
        )
    with pytest.raises(VerificationError, match=f"operations log entry {middle}"):
        verify_oplog(state)


def test_operations_log_detects_deleted_and_reordered_entries(signed_lake):
    from deltaferry.oplog import verify_oplog
    from deltaferry.state import StateStore

    state = StateStore("shop")
    with state.connect() as con:
        ids = [r[0] for r in con.execute("SELECT id FROM ops_log ORDER BY id").fetchall()]
        con.execute("DELETE FROM ops_log WHERE id = ?", [ids[3]])
    with pytest.raises(VerificationError, match="operations log"):
        verify_oplog(state)
    # moving an entry: swap the contents of two neighbours
    state2 = StateStore("shop")
    with state2.connect() as con:
        con.execute("DELETE FROM ops_log")
    for i in range(3):
        state2.log("r", f"step{i}", "ok")
    with state2.connect() as con:
        a, b = [r[0] for r in con.execute("SELECT id FROM ops_log ORDER BY id").fetchall()][:2]
        con.execute("UPDATE ops_log SET id = -1 WHERE id = ?", [a])
        con.execute("UPDATE ops_log SET id = ? WHERE id = ?", [a, b])
        con.execute("UPDATE ops_log SET id = ? WHERE id = -1", [b])
    with pytest.raises(VerificationError, match=f"operations log entry {a}"):
        verify_oplog(state2)


def test_plain_http_to_a_remote_endpoint_is_refused(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3.example.com")
    monkeypatch.delenv("DELTAFERRY_ALLOW_INSECURE_HTTP", raising=False)
    with pytest.raises(ConfigError, match="plain HTTP"):
        open_lake("s3://bucket/prefix")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    open_lake("s3://bucket/prefix")  # loopback is fine


def test_objects_are_written_with_server_side_encryption(shop_job, shop, s3_endpoint):
    import boto3

    shop.round(5, 5, churn=0)
    shop_job.sync()
    bucket = shop_job.lake_url.split("/")[2]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys
    for key in keys:
        assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_keys_signature_is_base64_ed25519(tmp_path):
    ring = Keyring(tmp_path / "k")
    info = ring.generate()
    assert info.status == "active" and len(base64.b64decode(info.public_key)) == 32
    signed = ring.sign({"format": "x", "signature": None})
    ring.verify(signed, where="t")
    assert (tmp_path / "k" / "private" / f"{info.key_id}.pem").stat().st_mode & 0o777 == 0o600


def test_assumed_role_credentials_are_used(shop_job, shop, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", s3_endpoint)
    monkeypatch.setenv(
        "DELTAFERRY_ASSUME_ROLE_ARN", "arn:aws:iam::123456789012:role/deltaferry-shop"
    )
    monkeypatch.setenv("DELTAFERRY_ASSUME_ROLE_SECONDS", "900")
    lake = open_lake(shop_job.lake_url)
    creds = lake._client._request_signer._credentials
    frozen = creds.get_frozen_credentials()
    assert frozen.access_key != "testing" and frozen.token  # a session, not the base keys
    assert creds.method == "sts-assume-role"
    shop.round(5, 5, churn=0)
    assert shop_job.sync()["tables"]["customers"]["batch"] == 1


def test_iam_policy_is_least_privilege(shop_job):
    from destinations.iam import policy_for

    policy = policy_for(shop_job.job())
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    bucket = shop_job.lake_url.split("/")[2]
    assert by_sid["CreateOnlyManifests"]["Condition"] == {"Null": {"s3:if-none-match": "false"}}
    assert (
        by_sid["CreateOnlyManifests"]["Resource"]
        == f"arn:aws:s3:::{bucket}/lake/shop/*/manifests/*"
    )
    assert by_sid["DenyInsecureTransport"]["Effect"] == "Deny"
    actions = {
        a
        for s in policy["Statement"]
        if s["Effect"] == "Allow"
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert "s3:DeleteObject" not in actions and "s3:*" not in actions
    gc_actions = {
        a
        for s in policy_for(shop_job.job(), allow_delete=True)["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListBucketMultipartUploads",
    } <= gc_actions
    shop_job.config.write_text(
        shop_job.config.read_text().replace(
            "max_quarantine_ratio = 0.2",
            'max_quarantine_ratio = 0.2\nmulti_producer = true\nproducer_id = "north"',
        )
    )
    multi = {s["Sid"]: s for s in policy_for(shop_job.job())["Statement"]}
    assert (
        multi["CreateOnlyManifests"]["Resource"]
        == f"arn:aws:s3:::{bucket}/lake/shop/*/producers/north/manifests/*"
    )
    assert multi["WriteDataObjects"]["Resource"].endswith("/lake/shop/*/producers/north/data/*")
    assert by_sid["ListOwnPrefix"]["Condition"] == {
        "StringLikeIfExists": {"s3:prefix": ["lake/shop/*"]}
    }


def test_secrets_never_leak_into_outputs(shop_job, shop, monkeypatch, tmp_path):
    """Run a job with known secret values, then scan every output for them."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    secret_dir = tmp_path / "S3CRET-DB-PATH-7f3a"
    secret_dir.mkdir()
    db = secret_dir / "shop.db"
    shutil.copy(shop_job.dir / "shop.db", db)
    monkeypatch.setenv("SHOP_DB_URL", f"sqlite:///{db}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3CRET-AWS-KEY-91c2")
    text = shop_job.config.read_text().replace(
        f'url = "sqlite:///{shop_job.dir / "shop.db"}"', 'url = "env:SHOP_DB_URL"'
    )
    assert 'url = "env:SHOP_DB_URL"' in text
    shop_job.config.write_text(text)
    shop.round(10, 10, churn=0)
    shutil.copy(shop_job.dir / "shop.db", db)
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    outputs = []
    for args in (
        ["run", "shop", "-v"],
        ["status", "--json"],
        ["verify", "shop", "--oplog"],
        ["pull", "shop", "--replica", str(tmp_path / "r.duckdb")],
        ["jobs"],
    ):
        p = subprocess.run(
            [sys.executable, "-m", "deltaferry.cli", *args, "--config", str(shop_job.config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, (args, p.stderr[-2000:])
        outputs.append(p.stdout + p.stderr)
    # a failing run's error message too
    (db).unlink()
    p = subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "run", "shop", "--config", str(shop_job.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode != 0
    outputs.append(p.stdout + p.stderr)
    lake = open_lake(shop_job.lake_url)
    outputs.extend(lake.get(k).decode() for k in lake.list("shop/") if k.endswith(".json"))
    con = duckdb.connect(str(shop_job.dir / "home" / "shop" / "state.duckdb"), read_only=True)
    for table in ("ops_log", "plans", "runs", "quarantine"):
        outputs.append(str(con.execute(f"SELECT * FROM {table}").fetchall()))
    con.close()
    everything = "\n".join(outputs)
    assert "S3CRET" not in everything


def test_staging_state_and_replica_are_encrypted_with_a_key(shop_job, shop, monkeypatch):
    from deltaferry import duck

    monkeypatch.setenv("DELTAFERRY_DUCKDB_KEY", "correct horse battery staple")
    shop.round(30, 30, churn=0)
    shop_job.sync()
    shop.round(5, 5, churn=0.2)
    shop_job.sync()
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())
    home = shop_job.dir / "home" / "shop"
    from tests.test_sync_e2e import staged_schemas

    # dlt's merge staging dataset dropped after each load through the borrowed connection
    assert staged_schemas(home / "staging.duckdb") == {"raw"}
    files = [home / "staging.duckdb", home / "state.duckdb", shop_job.replica]
    for f in files:
        assert b"@example.com" not in f.read_bytes(), f  # no plaintext rows on disk
    leftovers = list((home / "dlt").rglob("*.parquet"))
    assert leftovers == []  # dlt's loaded files are deleted
    for f in files:
        with pytest.raises(duckdb.Error, match="encrypted"):
            duckdb.connect(str(f), read_only=True)
    monkeypatch.delenv("DELTAFERRY_DUCKDB_KEY")
    with pytest.raises(ConfigError, match="is encrypted: set DELTAFERRY_DUCKDB_KEY"):
        duck.connect(files[0], read_only=True)
    monkeypatch.setenv("DELTAFERRY_DUCKDB_KEY", "wrong key")
    with pytest.raises(ConfigError, match="cannot open with the configured DELTAFERRY_DUCKDB_KEY"):
        duck.connect(files[0], read_only=True)


def test_keys_commands(home):
    from click.testing import CliRunner

    from deltaferry.cli import cli

    runner = CliRunner()
    first = runner.invoke(cli, ["keys", "generate"])
    assert first.exit_code == 0 and "(active)" in first.output
    rotated = runner.invoke(cli, ["keys", "rotate"])
    assert rotated.exit_code == 0 and "is now active" in rotated.output
    listing = runner.invoke(cli, ["keys", "list"])
    statuses = sorted(line.split("\t")[1] for line in listing.output.splitlines()[1:])
    assert statuses == ["active", "retired"]
    old = next(k for k in Keyring().keys.values() if k.status == "retired").key_id
    revoked = runner.invoke(cli, ["keys", "revoke", old, "--at", "2026-01-01T00:00:00+00:00"])
    assert revoked.exit_code == 0 and "2026-01-01T00:00:00+00:00" in revoked.output
    exported = json.loads(runner.invoke(cli, ["keys", "export"]).output)
    assert {k["status"] for k in exported["keys"]} == {"active", "revoked"}
    assert "PRIVATE" not in runner.invoke(cli, ["keys", "export"]).output
    bad = runner.invoke(cli, ["keys", "revoke", "ed25519-nope"])
    assert bad.exit_code == 2 and "no key 'ed25519-nope'" in bad.output


def test_assumed_role_credentials_refresh_through_the_session(s3_endpoint, monkeypatch):
    from botocore.credentials import RefreshableCredentials

    from destinations.s3 import aws_session

    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", s3_endpoint)
    monkeypatch.setenv(
        "DELTAFERRY_ASSUME_ROLE_ARN", "arn:aws:iam::123456789012:role/deltaferry-shop"
    )
    # 900 s is inside botocore's 15-minute advisory window: every read asks STS again
    monkeypatch.setenv("DELTAFERRY_ASSUME_ROLE_SECONDS", "900")
    session = aws_session()
    creds = session.get_credentials()
    assert isinstance(creds, RefreshableCredentials) and creds.method == "sts-assume-role"
    first = creds.get_frozen_credentials()
    assert first.access_key != "testing" and first.token
    second = creds.get_frozen_credentials()
    assert second.access_key != first.access_key  # refreshed through STS
    assert session.get_credentials() is creds
