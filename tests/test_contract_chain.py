"""A chain of contract versions between a producer and readers at different versions.

Each migration round-trips; the producer publishes at the highest version every active
reader reads, moves up when a reader times out, and back down on rollback; a reader
that knows a newer version upgrades older batches itself, so its replica holds exactly
the newest version's data whatever version each batch was published at.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from contracts import MigrationError
from deltaferry.cli import cli
from deltaferry.state import StateStore
from destinations.manifest import manifest_key
from tests.support.contracts_versions import Customers3
from tests.test_readers import _q


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3],
            "name": ["Ada", "Grace", None],
            "email": ["ada@example.com", "grace@example.org", None],  # 3 is a delete
            "country": ["GB", "US", None],
            "updated_at": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]),
            "deleted_at": [pd.NaT, pd.NaT, pd.NaT],
        }
    )


@pytest.mark.parametrize("start,target", [(1, 2), (2, 3), (1, 3)])
def test_every_migration_round_trips(start: int, target: int) -> None:
    v1 = _frame()
    at_start = Customers3.migrate(v1.copy(), 1, start)
    there = Customers3.migrate(at_start.copy(), start, target)
    back = Customers3.migrate(there.copy(), target, start)
    assert sorted(back.columns) == sorted(at_start.columns)
    pd.testing.assert_frame_equal(
        back[sorted(back.columns)], at_start[sorted(at_start.columns)], check_dtype=False
    )
    assert not Customers3.contract(target).validate(there.iloc[:2]).failed_rows


def test_a_downgrade_that_would_lose_information_refuses() -> None:
    v3 = Customers3.migrate(_frame(), 1, 3)
    v3.loc[0, "tier"] = "gold"
    with pytest.raises(MigrationError, match="tier other than 'standard'"):
        Customers3.migrate(v3, 3, 2)


def _cli(*args: str):  # noqa: ANN202
    return CliRunner().invoke(cli, list(args))


def _chained(shop_job, tmp_path, setting: str = ""):  # noqa: ANN001, ANN202
    """A jobs file whose customers use the chain Customers3, the source's rows being v1."""
    path = tmp_path / "chained.toml"
    path.write_text(
        shop_job.config.read_text()
        .replace("contracts.shop:Customers", "tests.support.contracts_versions:Customers3")
        .replace('deletes = "soft:deleted_at"', 'deletes = "soft:deleted_at"\nsource_version = 1')
        .replace("max_quarantine_ratio = 0.2", f"max_quarantine_ratio = 0.2\n{setting}")
    )
    return path


def _change(shop, cid: int, country: str) -> None:
    shop.con.execute(
        "UPDATE customers SET country = ?, updated_at = ? WHERE id = ?",
        (country, shop._tick(), cid),
    )
    shop.con.commit()


def test_producer_and_readers_at_different_versions(shop_job, shop, tmp_path):
    from flows.sync import sync_job

    shop.round(8, 3, churn=0)
    shop_job.sync()  # batch 1 at v1 (the shop's own single-version contract)
    old, new = tmp_path / "old.duckdb", tmp_path / "new.duckdb"
    # long enough for a loaded machine between a pull and the next run; 'old' is aged below
    chained = _chained(shop_job, tmp_path, "reader_timeout_seconds = 600")
    assert (
        _cli(
            "pull",
            "shop",
            "--replica",
            str(old),
            "--consumer",
            "old",
            "--config",
            str(shop_job.config),
        ).exit_code
        == 0
    )
    assert (
        _cli(
            "pull", "shop", "--replica", str(new), "--consumer", "new", "--config", str(chained)
        ).exit_code
        == 0
    )

    # the producer moves to the chain; reader 'old' reads v1 only: batch 2 stays at v1
    _change(shop, 1, "JP")
    sync_job(job="shop", config=str(chained))
    m2 = json.loads(shop_job.lake().get(manifest_key("shop", "customers", 2)))
    assert m2["contract"]["version"] == 1 and "migration" not in m2
    with StateStore("shop").connect(read_only=True) as con:
        negotiated = con.execute("SELECT detail FROM ops_log WHERE step = 'negotiate'").fetchall()
    assert (
        "publishing at v1" in negotiated[-1][0]
        and "reader 'old' reads up to v1" in negotiated[-1][0]
    )

    # the v3 reader upgrades v1 batches itself
    assert (
        _cli(
            "pull", "shop", "--replica", str(new), "--consumer", "new", "--config", str(chained)
        ).exit_code
        == 0
    )
    assert _q(
        new, "SELECT full_name, email_user, email_domain, tier, country FROM customers WHERE id = 1"
    ) == [("customer 1", "c1", "example.com", "standard", "JP")]
    described = {r[0]: r[1] for r in _q(new, "DESCRIBE customers")}
    assert "email" not in described
    assert described["updated_at"] == "TIMESTAMP WITH TIME ZONE"  # widened in v2

    # 'old' goes quiet past reader_timeout_seconds: the next batch is published at v3
    lake = shop_job.lake()
    key = "shop/customers/consumers/old.json"
    record = json.loads(lake.get(key))
    record["last_seen"] = "2020-01-01T00:00:00+00:00"  # as if not seen for years
    lake.put(key, json.dumps(record).encode())
    _change(shop, 2, "FR")
    sync_job(job="shop", config=str(chained))
    m3 = json.loads(shop_job.lake().get(manifest_key("shop", "customers", 3)))
    assert m3["contract"]["version"] == 3
    assert m3["migration"] == {
        "from": 1,
        "to": 3,
        "steps": ["v1->v2 upgrade", "v2->v3 upgrade"],
        "source_fingerprint": Customers3.contract(1).fingerprint,
    }
    with StateStore("shop").connect(read_only=True) as con:
        noted = con.execute(
            "SELECT detail FROM ops_log WHERE step = 'negotiate' ORDER BY id"
        ).fetchall()
    assert (
        "reader 'old' not seen for" in noted[-1][0]
        and "not holding the version back" in noted[-1][0]
    )
    stopped = _cli(
        "pull", "shop", "--replica", str(old), "--consumer", "old", "--config", str(shop_job.config)
    )
    assert stopped.exit_code == 1 and "published at contract v3" in stopped.output

    # rollback: later batches at v2 again; the v3 reader stays consistent
    rolled = _cli(
        "contracts",
        "rollback",
        "shop",
        "--table",
        "customers",
        "--to",
        "2",
        "--reason",
        "a v2 dashboard broke",
        "--config",
        str(chained),
    )
    assert rolled.exit_code == 0, rolled.output
    _change(shop, 3, "DE")
    sync_job(job="shop", config=str(chained))
    m4 = json.loads(shop_job.lake().get(manifest_key("shop", "customers", 4)))
    assert m4["contract"]["version"] == 2 and m4["migration"]["steps"] == ["v1->v2 upgrade"]
    with StateStore("shop").connect(read_only=True) as con:
        logged = con.execute("SELECT detail FROM ops_log WHERE step = 'rollback'").fetchall()
    assert (
        "later batches are published at v2" in logged[0][0]
        and "a v2 dashboard broke" in logged[0][0]
    )
    assert (
        _cli(
            "pull", "shop", "--replica", str(new), "--consumer", "new", "--config", str(chained)
        ).exit_code
        == 0
    )

    # the v3 replica holds exactly the source, in v3's shape, whatever each batch's version
    source = {
        r[0]: r[1:]
        for r in shop.con.execute(
            "SELECT id, name, email, country FROM customers WHERE deleted_at IS NULL"
        ).fetchall()
    }
    replica = {
        r[0]: r[1:]
        for r in _q(
            new, "SELECT id, full_name, email_user || '@' || email_domain, country FROM customers"
        )
    }
    assert replica == source
    assert _q(new, "SELECT DISTINCT tier FROM customers") == [("standard",)]
    versions = _q(
        new,
        "SELECT batch, contract_version FROM _deltaferry_batches WHERE tbl = 'customers' ORDER BY batch",
    )
    assert versions == [(1, 1), (2, 1), (3, 3), (4, 2)]

    listed = _cli("contracts", "list", "shop", "--config", str(chained))
    assert listed.exit_code == 0, listed.output
    assert "name (goes in v3)" in listed.output
    assert "tests.support.contracts_versions:Customers3@v1" in listed.output


def test_simulate_and_lint(shop_job, shop, tmp_path):
    shop.round(12, 3, churn=0)
    shop_job.sync()
    chained = _chained(shop_job, tmp_path)
    lake_before = sorted(shop_job.lake().list("shop/"))
    simulate = ("contracts", "simulate", "shop", "--table", "customers", "--to", "3")
    simulated = _cli(*simulate, "--config", str(chained))
    assert simulated.exit_code == 0, simulated.output
    assert "12 rows migrated v1 -> v3 (v1->v2 upgrade, v2->v3 upgrade); 0 fail" in simulated.output
    assert " MB" in simulated.output and " s, peak " in simulated.output
    for cid in (1, 2):  # no domain: v1 rejects them too, so the run fails, but they are staged
        shop.con.execute(
            "UPDATE customers SET email = 'nobody', updated_at = ? WHERE id = ?",
            (shop._tick(), cid),
        )
    shop.con.commit()
    from deltaferry.errors import ContractViolation

    with pytest.raises(ContractViolation):
        shop_job.sync()
    failing = _cli(*simulate, "--config", str(chained))
    assert failing.exit_code == 1
    assert "email_domain" in failing.output and "2 fail contract" in failing.output
    assert sorted(shop_job.lake().list("shop/")) == lake_before  # nothing published

    assert _cli("contracts", "lint", "shop", "--config", str(chained)).exit_code == 0
    stale = tmp_path / "stale.toml"
    stale.write_text(chained.read_text().replace("Customers3", "StaleChain"))
    linted = _cli("contracts", "lint", "shop", "--config", str(stale))
    assert linted.exit_code == 1
    assert (
        "CustomersR3Stale (v3) still has 'name', deprecated by CustomersR2 to go away in v3"
        in linted.output
    )


def test_migrate_rows_names_the_rows_and_fields_a_downgrade_refuses() -> None:
    v3 = Customers3.migrate(_frame(), 1, 3)
    v3.loc[1, "tier"] = "gold"
    migrated, kept, refused = Customers3.migrate_rows(v3, 3, 1)
    assert kept == [0, 2] and list(migrated["id"]) == [1, 3] and migrated["name"][0] == "Ada"
    assert "tier" not in migrated.columns and "email" in migrated.columns
    assert [(f.row, f.field, f.check) for f in refused] == [(1, "tier", "v3->v2 downgrade")]
    assert "tier other than 'standard'" in refused[0].reason
    everything, kept, none = Customers3.migrate_rows(_frame(), 1, 3)  # nothing refused
    assert kept == [0, 1, 2] and none == [] and list(everything["tier"]) == ["standard"] * 3


def test_simulate_counts_rows_a_downgrade_refuses(shop_job, shop, tmp_path):
    """Regression (shared case simulate_migration_failure_exit): a downgrade raising
    MigrationError for some staged rows is a row failure, exit 1 with counts by field and
    step; it used to be a configuration error (exit 2) with no counts."""
    shop.round(6, 2, churn=0)
    shop.con.execute("ALTER TABLE customers ADD COLUMN loyalty TEXT")
    shop.con.execute("UPDATE customers SET loyalty = 'gold' WHERE id IN (2, 5)")
    shop.con.commit()
    loyal = tmp_path / "loyal.toml"
    loyal.write_text(
        _chained(shop_job, tmp_path)
        .read_text()
        .replace("Customers3", "Loyalty")
        .replace("source_version = 1", "source_version = 2")
    )
    from flows.sync import sync_job

    sync_job(job="shop", config=str(loyal))  # no readers: published at v2, rows staged
    simulate = ("contracts", "simulate", "shop", "--table", "customers")
    failing = _cli(*simulate, "--to", "1", "--config", str(loyal))
    assert failing.exit_code == 1, failing.output
    assert "6 rows migrated v2 -> v1 (v2->v1 downgrade); 2 refused by the migration" in (
        failing.output
    )
    assert "0 fail contract tests.support.contracts_versions:Loyalty@v1 v1" in failing.output
    assert "loyalty\tv2->v1 downgrade\t2" in failing.output.splitlines()
    # only the refused rows fail: without them the downgrade goes through
    shop.con.execute("UPDATE customers SET loyalty = NULL, updated_at = ?", (shop._tick(),))
    shop.con.commit()
    sync_job(job="shop", config=str(loyal))
    passing = _cli(*simulate, "--to", "1", "--config", str(loyal))
    assert passing.exit_code == 0, passing.output
    assert "6 rows migrated v2 -> v1 (v2->v1 downgrade); 0 fail" in passing.output


def test_migrating_keeps_exact_types_and_values() -> None:
    """Integers with NULLs stay integers (no float round trip), decimals keep their
    precision, an all-NULL date column keeps its type, and no pandas metadata is written."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    from contracts import Chain
    from tests.support.contracts_versions import LedgerV1, LedgerV2

    big = 2**53 + 1
    data = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "amount": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(10, 2)),
            "ref": pa.array([big, None], pa.int64()),
            "booked": pa.array([None, None], pa.date32()),
        }
    )
    chain = Chain(LedgerV1, LedgerV2)
    out = chain.migrate_arrow(data, 1, 2)
    assert out["ref"].to_pylist() == [big, None] and out.schema.field("ref").type == pa.int64()
    assert out.schema.field("amount").type == pa.decimal128(10, 2)
    assert out.schema.field("booked").type == pa.date32()
    assert out["note"].to_pylist() == ["", ""]
    assert out.schema.metadata is None
    back = chain.migrate_arrow(out, 2, 1)
    assert back.equals(data)
    pq.write_table(out, pa.BufferOutputStream())  # writes without pandas metadata


def test_a_version_never_runs_the_migration_it_inherits() -> None:
    from contracts import Chain, load_chain
    from deltaferry.cli_contracts import lint_chain
    from tests.support.contracts_versions import CustomersR2, CustomersV1, ForgetfulV3

    chain = Chain(CustomersV1, CustomersR2, ForgetfulV3)
    assert chain.reachable(1, 2) and not chain.reachable(1, 3)
    with pytest.raises(MigrationError, match="ForgetfulV3 has no upgrade from v2"):
        chain.migrate(_frame(), 1, 3)
    errors, _ = lint_chain(chain)
    assert "ForgetfulV3 (v3) has no upgrade from v2" in errors
    # two references to one chain object each keep their own name in manifests
    a = load_chain("tests.support.contracts_versions:Customers3", where="a")
    b = load_chain("tests.support.contracts_versions:Customers3", where="b")
    assert a is not b and a.contract().ref == "tests.support.contracts_versions:Customers3"
    assert a.contract(1).ref == "tests.support.contracts_versions:Customers3@v1"


def test_dual_publishing_during_a_rollout(shop_job, shop, tmp_path, monkeypatch):
    """A v1 reader holds the version back; with dual_publish each batch is also published
    at v3, which the v3 reader reads as published. Both replicas agree with the source; a
    tampered second copy is caught; an interrupted batch rebuilds both copies byte for byte."""
    from deltaferry.failpoints import FailpointHit
    from deltaferry.verify import verify_table
    from flows.sync import sync_job

    shop.round(6, 2, churn=0)
    shop_job.sync()
    old, new = tmp_path / "old.duckdb", tmp_path / "new.duckdb"
    dual = _chained(shop_job, tmp_path, "dual_publish = true")
    for replica, config, who in ((old, shop_job.config, "old"), (new, dual, "new")):
        pulled = _cli(
            "pull", "shop", "--replica", str(replica), "--consumer", who, "--config", str(config)
        )
        assert pulled.exit_code == 0, pulled.output

    _change(shop, 1, "JP")
    monkeypatch.setenv("DELTAFERRY_FAILPOINT", "after_upload")
    monkeypatch.setenv("DELTAFERRY_FAILPOINT_ACTION", "raise")
    with pytest.raises(FailpointHit):
        sync_job(job="shop", config=str(dual))
    planned = StateStore("shop").pending_plan("customers")
    monkeypatch.delenv("DELTAFERRY_FAILPOINT")
    out = sync_job(job="shop", config=str(dual))
    assert any("rebuilt byte-identically" in r for r in out["recovered"]), out["recovered"]
    stored = shop_job.lake().get(manifest_key("shop", "customers", 2))
    assert stored == planned.manifest
    m = json.loads(stored)
    assert m["contract"]["version"] == 1 and m["also"]["contract"]["version"] == 3
    assert all("/v3-part-" in f["key"] for f in m["also"]["files"])
    assert verify_table(shop_job.lake(), "shop", "customers") == (2, m["rows"] + 6)

    for replica, config, who in ((old, shop_job.config, "old"), (new, dual, "new")):
        pulled = _cli(
            "pull", "shop", "--replica", str(replica), "--consumer", who, "--config", str(config)
        )
        assert pulled.exit_code == 0, pulled.output
    assert json.loads(shop_job.lake().get("shop/customers/consumers/new.json"))["reads"] == 3
    assert _q(old, "SELECT country FROM customers WHERE id = 1") == [("JP",)]
    assert _q(new, "SELECT country, email_user, tier FROM customers WHERE id = 1") == [
        ("JP", "c1", "standard")
    ]

    # while a rollback pin holds the table, no second copy goes out
    rolled = _cli(
        "contracts", "rollback", "shop", "--table", "customers", "--to", "1",
        "--reason", "hold v1", "--config", str(dual),
    )  # fmt: skip
    assert rolled.exit_code == 0, rolled.output
    _change(shop, 2, "FR")
    sync_job(job="shop", config=str(dual))
    pinned = json.loads(shop_job.lake().get(manifest_key("shop", "customers", 3)))
    assert pinned["contract"]["version"] == 1 and "also" not in pinned

    # a tampered second copy fails verification, naming the object
    key = m["also"]["files"][0]["key"]
    shop_job.lake().put(key, shop_job.lake().get(key) + b"x")
    from deltaferry.errors import VerificationError

    with pytest.raises(VerificationError, match="v3-part-00000"):
        verify_table(shop_job.lake(), "shop", "customers")


def test_dual_publishing_below_the_source_version_cuts_the_copy_from_the_source(
    shop_job, shop, tmp_path
):
    """Source rows at v2 published at v1 for a v1 reader: the v3 copy must carry what the
    source had (v2's full_name), not v1's rows upgraded back (full_name = name)."""
    from flows.sync import sync_job

    shop.round(6, 2, churn=0)
    shop.con.execute("ALTER TABLE customers ADD COLUMN full_name TEXT")
    shop.con.execute("UPDATE customers SET full_name = name || ' Jr'")
    shop.con.commit()
    dual = _chained(shop_job, tmp_path, "dual_publish = true")
    dual.write_text(dual.read_text().replace("source_version = 1", "source_version = 2"))
    sync_job(job="shop", config=str(dual))  # no readers yet: batch 1 at v3
    old, new = tmp_path / "old.duckdb", tmp_path / "new.duckdb"
    # 'old' reads batch 1 (v3) partially: a strict reader would stop at it and, stuck,
    # no longer hold the version back
    old_pull = _cli(
        "pull", "shop", "--replica", str(old), "--consumer", "old", "--policy", "partial",
        "--config", str(shop_job.config),
    )  # fmt: skip
    assert old_pull.exit_code == 0, old_pull.output
    pulled = _cli("pull", "shop", "--replica", str(new), "--consumer", "new", "--config", str(dual))
    assert pulled.exit_code == 0, pulled.output

    _change(shop, 1, "JP")
    sync_job(job="shop", config=str(dual))  # 'old' reads v1 only: published at v1, copy at v3
    m = json.loads(shop_job.lake().get(manifest_key("shop", "customers", 2)))
    assert m["contract"]["version"] == 1 and m["migration"]["steps"] == ["v2->v1 downgrade"]
    assert m["also"]["contract"]["version"] == 3
    pulled = _cli("pull", "shop", "--replica", str(new), "--consumer", "new", "--config", str(dual))
    assert pulled.exit_code == 0, pulled.output
    assert _q(new, "SELECT full_name, country FROM customers WHERE id = 1") == [
        ("customer 1 Jr", "JP")
    ]


def test_rows_an_old_version_cannot_hold_go_out_above_it_and_a_stuck_reader_stops_counting(
    shop_job, shop, tmp_path
):
    """Issue 19 point 5. The source gains loyalty tiers v1 cannot hold (Loyalty's v2->v1
    downgrade refuses them): the batch goes out at v2 instead of stopping for everyone, the
    v2 reader gets it, the strict v1 reader stops naming the batch and the refusal. Its
    record in the lake then says it is stuck, so the next batch goes out at v2 without
    trying v1; after it upgrades its contracts and pulls again it counts again."""
    from flows.sync import sync_job

    def _negotiated() -> list[str]:
        with StateStore("shop").connect(read_only=True) as con:
            q = "SELECT detail FROM ops_log WHERE step = 'negotiate' ORDER BY rowid"
            return [r[0] for r in con.execute(q).fetchall()]

    shop.round(6, 2, churn=0)
    shop_job.sync()  # batch 1 at v1
    loyal = tmp_path / "loyal.toml"
    loyal.write_text(
        _chained(shop_job, tmp_path)
        .read_text()
        .replace("Customers3", "Loyalty")
        .replace("source_version = 1", "source_version = 2")
    )
    old, new = tmp_path / "old.duckdb", tmp_path / "new.duckdb"
    for replica, who, config in ((old, "old", shop_job.config), (new, "new", loyal)):
        pulled = _cli("pull", "shop", "--replica", str(replica), "--consumer", who,
                      "--config", str(config))  # fmt: skip
        assert pulled.exit_code == 0, pulled.output

    lake = shop_job.lake()
    shop.con.execute("ALTER TABLE customers ADD COLUMN loyalty TEXT")
    gold = "UPDATE customers SET loyalty = 'gold', updated_at = ? WHERE id IN (2, 5)"
    shop.con.execute(gold, (shop._tick(),))
    shop.con.commit()
    out = sync_job(job="shop", config=str(loyal))
    assert out["tables"]["customers"]["batch"] == 2  # published, not stopped
    m2 = json.loads(lake.get(manifest_key("shop", "customers", 2)))
    assert m2["contract"]["version"] == 2 and "migration" not in m2
    assert m2["downgrade_refused"]["to"] == 1
    assert "loyalty tier v1 cannot hold" in m2["downgrade_refused"]["reason"]
    negotiated = _negotiated()
    assert "publishing at v2" in negotiated[-1]
    assert "cannot be taken down to v1" in negotiated[-1]

    pulled = _cli("pull", "shop", "--replica", str(new), "--consumer", "new",
                  "--config", str(loyal))  # fmt: skip
    assert pulled.exit_code == 0, pulled.output
    assert _q(new, "SELECT id, loyalty FROM customers WHERE loyalty IS NOT NULL ORDER BY id") == [
        (2, "gold"),
        (5, "gold"),
    ]
    stopped = _cli("pull", "shop", "--replica", str(old), "--consumer", "old",
                   "--config", str(shop_job.config))  # fmt: skip
    assert stopped.exit_code == 1, stopped.output
    line = " ".join(stopped.output.split())
    assert "table 'customers' batch 2 is published at contract v2" in line
    assert "cannot be taken down to v1" in line and "loyalty tier v1 cannot hold" in line
    assert _q(old, "SELECT max(batch) FROM _deltaferry_batches WHERE tbl = 'customers'") == [(1,)]
    record = json.loads(lake.get("shop/customers/consumers/old.json"))
    assert "batch 2 is published at contract v2" in record["stuck"]["error"]
    listed = _cli("contracts", "list", "shop", "--config", str(loyal))
    assert "stopped at a batch" in " ".join(listed.output.split()), listed.output

    # the stuck reader no longer holds the version back: the next batch is v2 from the start
    _change(shop, 1, "JP")  # a row v1 could hold
    sync_job(job="shop", config=str(loyal))
    m3 = json.loads(lake.get(manifest_key("shop", "customers", 3)))
    assert m3["contract"]["version"] == 2 and "downgrade_refused" not in m3
    negotiated = _negotiated()
    assert "reader 'old' stopped at a batch it cannot apply" in negotiated[-1]
    assert "reader 'new' reads up to v2" in negotiated[-1]

    # it recovers by upgrading its contracts and pulling again: counted again
    pulled = _cli("pull", "shop", "--replica", str(old), "--consumer", "old",
                  "--config", str(loyal))  # fmt: skip
    assert pulled.exit_code == 0, pulled.output
    record = json.loads(lake.get("shop/customers/consumers/old.json"))
    assert "stuck" not in record and record["supports"] == [1, 2]
    _change(shop, 3, "FR")
    sync_job(job="shop", config=str(loyal))
    negotiated = _negotiated()
    assert "reader 'old' reads up to v2" in negotiated[-1]


def test_a_nullable_column_no_change_has_a_value_in_yet_is_null_for_the_migration():
    """A producer taking its source rows (v2) down to a reader's v1: a nullable v2 column
    that no record had a value in yet (dlt stages no column for an API field that was null
    in every record) reached the downgrade missing, and every run failed with ``KeyError``
    although the rows were valid (a fresh-user trial). It is NULL for the migration, as it
    is for validation."""
    import pyarrow as pa

    from contracts import Chain
    from deltaferry.config import JobConfig, TableConfig
    from deltaferry.delta import build_delta, read_parquet
    from tests.support.contracts_versions import TierV1, TierV2

    chain = Chain(TierV1, TierV2)
    chain.ref = "tests:Items"
    t = TableConfig("items", ("id",), None, "none", "tests:Items")
    job = JobConfig("j", "rest_api", "https://example.com", "file:lake", (t,))
    staged = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "name": pa.array(["a", "b"]),
            "_op": pa.array(["upsert", "upsert"]),
            "_dlt_load_id": pa.array(["1.1", "1.1"]),
        }
    )
    delta = build_delta(job, t, chain.contract(1), [staged], ["1.1"], 1, migration=(chain, 2, 1))
    published = read_parquet(delta.parts[0].data)
    assert published.select(["id", "name"]).to_pylist() == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert "tier" not in published.column_names


def test_simulate_counts_a_failure_of_the_whole_column_for_every_row(shop_job, shop):
    """A column the strict contract lacks fails every row as a whole: ``simulate`` counts
    every staged row for it (it said 1, the row count of a schema failure, while every row
    failed: a fresh-user trial)."""
    import duckdb

    from sources.columns import STAGING_DATASET

    shop.round(12, 0, churn=0)
    shop_job.sync()
    con = duckdb.connect(str(shop_job.dir / "home" / "shop" / "staging.duckdb"))
    con.execute(f"ALTER TABLE {STAGING_DATASET}.customers ADD COLUMN extra INTEGER DEFAULT 1")
    con.close()
    res = _cli("contracts", "simulate", "shop", "--table", "customers", "--to", "1",
               "--config", str(shop_job.config))  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "12 fail contract" in res.output
    row = next(line for line in res.output.splitlines() if "column_in_schema" in line)
    assert row.split("\t")[-1] == "12", res.output
