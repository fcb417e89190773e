"""Readers at different contract versions: each records itself in the lake when it pulls,
and meets a batch published at a newer version than it knows by its policy (strict stops
naming both versions; partial applies the columns it knows and flags the batch)."""

from __future__ import annotations

import json
import time

import duckdb
import pytest
from click.testing import CliRunner

from deltaferry.cli import cli
from deltaferry.state import StateStore


def _pull(config, replica, *args: str):  # noqa: ANN001, ANN202
    return CliRunner().invoke(
        cli, ["pull", "shop", "--replica", str(replica), "--config", str(config), *args]
    )


def _q(replica, sql: str) -> list:  # noqa: ANN001
    con = duckdb.connect(str(replica), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_readers_at_older_and_newer_versions(shop_job, shop, tmp_path):
    from flows.sync import sync_job

    shop.round(8, 3, churn=0)
    shop_job.sync()
    old = tmp_path / "old.duckdb"
    first = _pull(shop_job.config, old, "--consumer", "old")
    assert first.exit_code == 0, first.output
    record = json.loads(shop_job.lake().get("shop/customers/consumers/old.json"))
    assert (record["supports"], record["policy"], record["position"]) == ([1], "strict", 1)

    # the source gains a loyalty tier; the producer moves to contract v2
    shop.con.execute("ALTER TABLE customers ADD COLUMN loyalty TEXT")
    for cid in (2, 5):
        shop.con.execute(
            "UPDATE customers SET loyalty = 'gold', updated_at = ? WHERE id = ?",
            (shop._tick(), cid),
        )
    shop.con.commit()
    v2 = tmp_path / "producer-v2.toml"
    v2.write_text(
        shop_job.config.read_text().replace(
            "contracts.shop:Customers", "tests.support.contracts_versions:CustomersV2"
        )
    )
    out = sync_job(job="shop", config=str(v2))
    assert out["tables"]["customers"]["batch"] == 2
    with StateStore("shop").connect(read_only=True) as con:
        noted = [
            r[0]
            for r in con.execute("SELECT detail FROM ops_log WHERE step = 'readers'").fetchall()
        ]
    assert noted == [
        "reader 'old' (reads up to v1, policy strict) will stop at batches published at v2"
    ]

    # strict: stops at batch 2, naming both versions; batch 1 stays applied
    stopped = _pull(shop_job.config, old, "--consumer", "old")
    assert stopped.exit_code == 1
    assert "batch 2 is published at contract v2" in stopped.output
    assert "knows up to v1" in stopped.output and "policy is strict" in stopped.output
    assert _q(old, "SELECT max(batch) FROM _deltaferry_batches WHERE tbl = 'customers'") == [(1,)]

    # partial: applies what it knows and flags the batch
    partial = _pull(shop_job.config, old, "--consumer", "old", "--policy", "partial")
    assert partial.exit_code == 0, partial.output
    assert "applied with a caution" in partial.output
    (caution,) = _q(
        old, "SELECT caution FROM _deltaferry_batches WHERE tbl = 'customers' AND batch = 2"
    )[0]
    assert caution == "published at contract v2, read as v1 (partial): left out loyalty"
    assert "loyalty" not in [r[0] for r in _q(old, "DESCRIBE customers")]
    record = json.loads(shop_job.lake().get("shop/customers/consumers/old.json"))
    assert (record["policy"], record["position"], record["reads"]) == ("partial", 2, 1)

    # a reader that knows v2 reads everything
    new = tmp_path / "new.duckdb"
    full = _pull(v2, new, "--consumer", "new")
    assert full.exit_code == 0, full.output
    assert _q(new, "SELECT id FROM customers WHERE loyalty = 'gold' ORDER BY id") == [(2,), (5,)]
    assert _q(new, "SELECT count(*) FROM _deltaferry_batches WHERE caution IS NOT NULL") == [(0,)]

    listed = CliRunner().invoke(cli, ["contracts", "list", "shop", "--config", str(v2)])
    assert listed.exit_code == 0, listed.output
    assert "tests.support.contracts_versions:CustomersV2" in listed.output
    lines = listed.output.splitlines()
    assert any(line.startswith("customers\told\tv1..v1\tpartial\t2\t1\t") for line in lines), lines
    assert any(line.startswith("customers\tnew\tv1..v2\tstrict\t2\t0\t") for line in lines), lines

    # a reader not seen for longer than reader_timeout_seconds no longer counts
    v2.write_text(
        v2.read_text().replace(
            "max_quarantine_ratio = 0.2", "max_quarantine_ratio = 0.2\nreader_timeout_seconds = 1"
        )
    )
    time.sleep(1.5)
    shop.con.execute(
        "UPDATE customers SET loyalty = 'silver', updated_at = ? WHERE id = 3", (shop._tick(),)
    )
    shop.con.commit()
    sync_job(job="shop", config=str(v2))
    with StateStore("shop").connect(read_only=True) as con:
        noted = [
            r[0]
            for r in con.execute(
                "SELECT detail FROM ops_log WHERE step = 'readers' ORDER BY id"
            ).fetchall()
        ]
    assert "over the job's reader_timeout_seconds: not holding v2 back" in noted[-1]
    assert noted[-1].startswith("reader 'old'")


def test_a_version_is_its_fingerprint_not_its_number(shop_job, shop, tmp_path):
    """Regression (shared case reader_ignores_contract_fingerprint): a reader whose v2 is
    another contract than the producer's v2 stops before applying the batch, naming the
    table, the version and both fingerprints, whatever its policy."""
    from contracts import load_chain
    from flows.sync import sync_job

    shop.round(5, 2, churn=0)
    shop.con.execute("ALTER TABLE customers ADD COLUMN loyalty TEXT")
    shop.con.commit()
    producer = tmp_path / "producer.toml"
    producer.write_text(
        shop_job.config.read_text().replace(
            "contracts.shop:Customers", "tests.support.contracts_versions:CustomersV2"
        )
    )
    sync_job(job="shop", config=str(producer))  # no readers: batch 1 at the producer's v2
    reader = tmp_path / "reader.toml"  # the reader's v2 renames name to full_name
    reader.write_text(
        shop_job.config.read_text().replace(
            "contracts.shop:Customers", "tests.support.contracts_versions:Renamed"
        )
    )
    theirs = load_chain("tests.support.contracts_versions:CustomersV2", where="t").contract(2)
    ours = load_chain("tests.support.contracts_versions:Renamed", where="t").contract(2)
    assert theirs.fingerprint != ours.fingerprint
    replica = tmp_path / "r.duckdb"
    for policy in ("strict", "partial"):
        stopped = _pull(reader, replica, "--consumer", "r", "--policy", policy)
        assert stopped.exit_code == 1, stopped.output
        line = " ".join(stopped.output.split())  # one line, however the terminal wraps it
        assert (  # after the table of what was pulled (the tables that did not stop)
            "error: job 'shop' table 'customers' batch 1 is published at contract v2 "
            f"tests.support.contracts_versions:CustomersV2 with fingerprint {theirs.fingerprint[:16]}, "
            f"but this reader's v2 (tests.support.contracts_versions:Renamed) has fingerprint "
            f"{ours.fingerprint[:16]}"
        ) in line, line
        assert "nothing of the batch was applied" in line
        assert _q(replica, "SELECT count(*) FROM _deltaferry_batches WHERE tbl = 'customers'") == [
            (0,)
        ]
        # stopped before its first batch: the table is empty (the reader contract's
        # columns, marked as having no batch applied), not the producer's shape
        assert _q(replica, "SELECT count(*) FROM customers") == [(0,)]
        assert "no batch of this table" in _q(
            replica, "SELECT comment FROM duckdb_tables() WHERE table_name = 'customers'"
        )[0][0]
    # a reader whose v2 is the producer's reads it
    same = _pull(producer, tmp_path / "same.duckdb", "--consumer", "same")
    assert same.exit_code == 0, same.output
    assert _q(tmp_path / "same.duckdb", "SELECT count(*) FROM customers") == [(5,)]


def _set(shop, cid: int, column: str, value: str) -> None:  # noqa: ANN001
    shop.con.execute(
        f"UPDATE customers SET {column} = ?, updated_at = ? WHERE id = ?",
        (value, shop._tick(), cid),
    )
    shop.con.commit()


def test_a_partial_read_never_loses_a_value_the_reader_knows(shop_job, shop, tmp_path):
    """Regression (shared case partial_read_nulls_known_column): a v1 reader reading v2
    batches partially, where v2 renamed `name` (v1 requires it) to `full_name`. Without a
    downgrade, a key it holds keeps its stored name, a new key is held back for it (the
    caution names it), a delete still deletes; with the producer's downgrade at hand the
    batch is taken to v1 and the held key arrives whole. The replica always passes v1."""
    from contracts.shop import CustomersV1
    from flows.sync import sync_job

    shop.round(6, 2, churn=0)
    shop_job.sync()  # batch 1 at v1
    old = tmp_path / "old.duckdb"
    first = _pull(shop_job.config, old, "--consumer", "old", "--policy", "partial")
    assert first.exit_code == 0, first.output

    def producer(chain: str):  # noqa: ANN202
        path = tmp_path / f"{chain}.toml"
        path.write_text(
            shop_job.config.read_text()
            .replace("contracts.shop:Customers", f"tests.support.contracts_versions:{chain}")
            .replace('"soft:deleted_at"', '"soft:deleted_at"\nsource_version = 1')
            .replace("ratio = 0.2", "ratio = 0.2\nreader_timeout_seconds = 1")
        )
        return path

    def rows() -> dict:
        return {r[0]: r[1:] for r in _q(old, "SELECT id, name, country FROM customers")}

    def passes_v1() -> None:
        frame = duckdb.connect(str(old), read_only=True)
        try:
            stored = frame.execute(
                "SELECT id, name, email, country, updated_at, deleted_at FROM customers"
            ).df()
        finally:
            frame.close()
        from contracts import Contract

        assert not Contract("v1", CustomersV1).validate(stored).failed_rows

    def caution(batch: int) -> str:
        sql = "SELECT caution FROM _deltaferry_batches WHERE tbl = 'customers' AND batch = "
        return _q(old, f"{sql}{batch}")[0][0]

    before = rows()
    time.sleep(1.5)  # 'old' (v1 only) stops holding the version back
    _set(shop, 1, "country", "JP")
    at = shop._tick()
    shop.con.execute("UPDATE customers SET deleted_at = ?, updated_at = ? WHERE id = 3", (at, at))
    shop.con.commit()
    shop.round(1, 0, churn=0)  # a new customer, 7
    sync_job(job="shop", config=str(producer("Renamed")))  # batch 2 at v2, no way back to v1
    partial = _pull(shop_job.config, old, "--consumer", "old", "--policy", "partial")
    assert partial.exit_code == 0, partial.output
    assert "applied with a caution" in partial.output
    after = rows()
    assert after[1] == ("customer 1", "JP")  # the name it knew, the country it was sent
    assert 3 not in after and 7 not in after  # deleted; held back
    assert {k: v for k, v in after.items() if k != 1} == {
        k: v for k, v in before.items() if k not in (1, 3)
    }
    assert caution(2) == (
        "published at contract v2, read as v1 (partial): left out full_name; not in the batch: "
        "name; kept the stored name of 1 row(s); held back 1 row(s) of keys this replica does "
        "not have, lacking name (required by v1): id=7"
    )
    passes_v1()

    # the producer's chain now has the downgrade: the batch is taken to v1 whole
    _set(shop, 7, "country", "FR")
    _set(shop, 2, "name", "Grace")
    # the pull above renewed 'old''s record: let it age past reader_timeout_seconds again, or
    # the producer holds v1 for it (RenamedBack can take v2 down) and no caution is written
    time.sleep(1.5)
    sync_job(job="shop", config=str(producer("RenamedBack")))  # batch 3 at v2
    again = _pull(shop_job.config, old, "--consumer", "old", "--policy", "partial")
    assert again.exit_code == 0, again.output
    after = rows()
    assert after[7] == ("customer 7", "FR") and after[2] == ("Grace", before[2][1])
    assert after[1] == ("customer 1", "JP")
    assert caution(3) == (
        "published at contract v2, read as v1 (partial): taken to v1 by "
        "tests.support.contracts_versions:RenamedBack (v2->v1 downgrade)"
    )
    passes_v1()
    record = json.loads(shop_job.lake().get("shop/customers/consumers/old.json"))
    assert (record["position"], record["partial_batches"]) == (3, 2)


def test_several_producers_partial_read_keeps_the_winner_value() -> None:
    """The same rule where several producers' chains are merged: a partial v2 batch that
    lacks `name` keeps the stored winner's name, holds a new key back, deletes still
    delete; a chain that cannot be imported is read partially (no downgrade)."""
    import pandas as pd
    import pyarrow as pa

    from contracts import Chain
    from deltaferry import merge, merge_tables
    from deltaferry.readers import Reading
    from destinations.manifest import ContractRef
    from tests.support.contracts_versions import People
    from tests.support.manifests import sample

    chain = Chain(People).named("tests:People")
    reading = Reading("j", "people", chain.contract(), ["id"], "partial", chain)
    shape = merge_tables.TableShape("j", "people", ["id"])
    con = duckdb.connect()
    con.execute(merge_tables.META)

    def batch(ids, ops, names, nicks, seq0):  # noqa: ANN001, ANN202
        cols = {"id": pa.array(ids, pa.int64())}
        if names is not None:
            cols["name"] = pa.array(names, pa.string())
        cols["nickname"] = pa.array(nicks, pa.string())
        cols["_op"] = pa.array(ops)
        cols["_seq"] = pa.array(range(seq0, seq0 + len(ids)), pa.int64())
        return pa.table(cols)

    def published(ref: str, version: int, fingerprint: str):  # noqa: ANN202
        return sample(contract=ContractRef(ref=ref, version=version, fingerprint=fingerprint))

    v1 = published("tests:People", 1, chain.contract(1).fingerprint)
    one = batch([1, 2, 3], ["upsert"] * 3, ["Ada", "Grace", "Alan"], [None, None, None], 1)
    admitted = reading.admit(1, v1, one, "north", replica=con)
    data, caution = admitted.data, admitted.caution
    assert caution is None and data.equals(one)
    merge.apply_batch(con, shape, "north", 1, 100, data)
    v2 = published("nowhere_to_import:People", 2, "ab" * 32)
    two = batch([1, 3, 4], ["upsert", "delete", "upsert"], None, ["A", None, "D"], 1)
    admitted = reading.admit(1, v2, two, "south", replica=con)
    data, caution = admitted.data, admitted.caution
    assert admitted.held == 1
    assert caution == (
        "published at contract v2, read as v1 (partial): no unknown columns; not in the "
        "batch: name; kept the stored name of 1 row(s); held back 1 row(s) of keys this "
        "replica does not have, lacking name (required by v1): id=4"
    )
    merge.apply_batch(con, shape, "south", 1, 200, data, caution=caution)
    stored = con.execute("SELECT id, name, nickname, _producer FROM people ORDER BY id").fetchall()
    assert stored == [(1, "Ada", "A", "south"), (2, "Grace", None, "north")]
    frame = con.execute("SELECT id, name, nickname FROM people").df()
    assert not chain.contract().validate(frame.astype({"nickname": object})).failed_rows
    assert pd.isna(frame.set_index("id").loc[2, "nickname"])


def test_a_reader_that_moves_to_a_reshaping_contract_migrates_its_stored_rows(
    shop_job, shop, tmp_path
):
    """Regression (second fresh-user trial of issue 19): a reader whose jobs file moves from
    v1 to a chain whose v2 renames `name` to `full_name` kept its old rows half-migrated
    (`full_name` NULL, no caution). The stored rows now go through the chain's migration
    when the reader's contract changes, so the replica equals one pulled fresh and
    satisfies its own contract; a contract that is not a version of the new chain stops the
    table in one line and changes nothing."""
    from contracts import load_chain

    shop_job.write_config(rows_per_file=3)  # the stored rows are migrated 3 at a time
    shop.round(8, 0, churn=0)
    shop_job.sync()
    replica = tmp_path / "reader.duckdb"
    assert _pull(shop_job.config, replica).exit_code == 0
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(
        shop_job.config.read_text().replace("contracts.shop:Customers", "tests.support.contracts_versions:Renamed")
    )
    _set(shop, 2, "country", "JP")
    shop_job.sync()  # batch 2, at v1 (the producer's contract)
    moved = _pull(renamed, replica)
    assert moved.exit_code == 0, moved.output
    fresh = tmp_path / "fresh.duckdb"
    assert _pull(renamed, fresh).exit_code == 0
    sql = "SELECT id, full_name, email, country FROM customers ORDER BY id"
    assert _q(replica, sql) == _q(fresh, sql)
    assert all(r[1] for r in _q(replica, sql))  # every row has its full_name
    src = shop.con.execute("SELECT id, name, email, country FROM customers ORDER BY id").fetchall()
    assert _q(replica, sql) == src
    columns = {r[0] for r in _q(replica, "DESCRIBE customers")}
    assert "name" not in columns and "full_name" in columns
    v2 = load_chain("tests.support.contracts_versions:Renamed", where="test").contract()
    assert _q(replica, "SELECT ref, version, fingerprint FROM _deltaferry_contracts "
                       "WHERE tbl = 'customers'") == [(v2.ref, 2, v2.fingerprint)]
    # pulling again changes nothing
    assert _pull(renamed, replica).exit_code == 0
    assert _q(replica, sql) == src

    # a contract that is no version of the reader's new chain: one line, nothing changed
    other = tmp_path / "other.toml"
    other.write_text(
        shop_job.config.read_text().replace(
            "contracts.shop:Customers", "tests.support.contracts_versions:CustomersV2"
        )
    )
    stopped = _pull(other, replica, "--consumer", "mover")
    assert stopped.exit_code != 0
    assert "cannot be migrated: name the versions as one Chain" in stopped.output
    assert "pull into a new replica" in stopped.output
    assert _q(replica, sql) == src
    # its record in the lake says it is stuck: producers do not hold a version back for it
    from deltaferry.consumers import read_consumers

    (record,) = [r for r in read_consumers(shop_job.lake(), "shop", "customers")
                 if r.get("consumer") == "mover"]
    assert "cannot be migrated" in record["stuck"]["error"]


def _reader(shop_job, tmp_path, ref: str, name: str, extra: str = "", merged: bool = False):  # noqa: ANN001, ANN202, E501
    """A jobs file like the shop's with the customers contract ``ref`` (``merged``: as one
    producer, 'north', of a multi_producer job)."""
    path = tmp_path / f"{name}.toml"
    text = shop_job.config.read_text().replace("contracts.shop:Customers", ref)
    if extra:
        text = text.replace('"soft:deleted_at"', f'"soft:deleted_at"\n{extra}')
    job = "ratio = 0.2\nreader_timeout_seconds = 1"
    if merged:
        job += '\nmulti_producer = true\nproducer_id = "north"'
    path.write_text(text.replace("ratio = 0.2", job))
    return path


def _live(shop) -> list:  # noqa: ANN001
    return shop.con.execute(
        "SELECT id, name, email, country FROM customers WHERE deleted_at IS NULL ORDER BY id"
    ).fetchall()


@pytest.mark.parametrize("merged", [False, True], ids=["one-producer", "multi-producer"])
def test_rows_held_back_arrive_when_the_reader_moves_to_a_contract_that_reads_them(
    shop_job, shop, tmp_path, merged
):
    """Regression (issue 19 point 3): a v1 reader pulling partially from a producer that
    publishes v2 (`name` renamed to `full_name`, no way back) from its first batch holds
    every row back, yet its table has every column of v1. When the reader moves to the
    chain v1 -> v2, the held rows are read again: the replica equals the source (a key
    held, then deleted, stays deleted), and pulling again changes nothing. The same where
    the job merges several producers' chains."""
    from contracts.shop import CustomersV1
    from flows.sync import sync_job

    renamed = "tests.support.contracts_versions:Renamed"
    batches = "_deltaferry_chains" if merged else "_deltaferry_batches"
    shop.round(12, 0, churn=0)
    producer = _reader(shop_job, tmp_path, renamed, "producer", "source_version = 1", merged)
    v1 = _reader(shop_job, tmp_path, "contracts.shop:Customers", "v1", "", merged)
    sync_job(job="shop", config=str(producer))  # batch 1 at v2
    replica = tmp_path / "reader.duckdb"
    first = _pull(v1, replica, "--policy", "partial")
    assert first.exit_code == 0, first.output
    assert "12 row(s) held back for this reader" in " ".join(first.output.split())
    assert _q(replica, "SELECT count(*) FROM customers") == [(0,)]
    columns = {r[0] for r in _q(replica, "DESCRIBE customers")}
    assert set(CustomersV1.to_schema().columns) <= columns
    assert _q(replica, "SELECT batch, rows FROM _deltaferry_held") == [(1, 12)]

    time.sleep(1.5)  # the v1 reader's record ages out: the producer publishes v2 again
    _set(shop, 2, "country", "JP")
    at = shop._tick()
    shop.con.execute("UPDATE customers SET deleted_at = ?, updated_at = ? WHERE id = 3", (at, at))
    shop.con.commit()
    shop.round(1, 0, churn=0)  # customer 13
    sync_job(job="shop", config=str(producer))  # batch 2 at v2
    second = _pull(v1, replica, "--policy", "partial")
    assert second.exit_code == 0, second.output
    assert _q(replica, "SELECT count(*) FROM customers") == [(0,)]

    held = _q(replica, "SELECT sum(rows) FROM _deltaferry_held")[0][0]
    assert held == 14  # 12, then customers 2 (an update) and 13 (new); the delete applied
    v2 = _reader(shop_job, tmp_path, renamed, "v2", "", merged)
    moved = _pull(v2, replica)
    assert moved.exit_code == 0, moved.output
    assert f"read again the {held} row(s) held back under an earlier contract" in moved.output
    assert f"{held} no longer held (applied, or superseded by a later change of their key)" \
        in moved.output
    sql = "SELECT id, full_name, email, country FROM customers ORDER BY id"
    assert _q(replica, sql) == _live(shop) and len(_live(shop)) == 12
    assert _q(replica, "SELECT count(*) FROM _deltaferry_held") == [(0,)]
    caution = _q(replica, f"SELECT caution FROM {batches} WHERE batch = 1")[0][0]
    assert caution.endswith(f"read again under {renamed} (v2): 0 of 12 row(s) still held")
    again = _pull(v2, replica)
    assert again.exit_code == 0 and "held back" not in again.output
    assert _q(replica, sql) == _live(shop)


def test_rows_a_readers_own_migration_breaks_are_never_stored(
    shop_job, shop, tmp_path, monkeypatch
):
    """Regression (issue 19 point 3): rows a reader's own upgrade produces are validated
    against its contract. Strict: the batch stops in one line, nothing applied. Partial:
    the rows that break it are held back (named in the caution) and arrive once the
    migration is fixed (a new contract ref, or ``--retry-held`` for a fix in place). Stored
    rows a contract change would migrate into breaking rows refuse the change."""
    from contracts import Contract
    from tests.support.contracts_versions import CustomersT2

    shop.round(6, 0, churn=0)
    for cid in (2, 4):
        _set(shop, cid, "country", "XX")
    shop_job.sync()  # batch 1 at v1
    bad = _reader(shop_job, tmp_path, "tests.support.contracts_versions:BadTier", "bad")

    strict = tmp_path / "strict.duckdb"
    stopped = _pull(bad, strict)
    assert stopped.exit_code == 1
    line = stopped.output.strip().splitlines()[-1]
    assert "batch 1: 2 row(s) published at v1 break this reader's v2" in line
    assert "tier" in line and "nothing of the batch was applied" in line
    assert _q(strict, "SELECT count(*) FROM _deltaferry_batches") == [(0,)]

    partial = tmp_path / "partial.duckdb"
    read = _pull(bad, partial, "--policy", "partial")
    assert read.exit_code == 0, read.output
    assert [r[0] for r in _q(partial, "SELECT id FROM customers ORDER BY id")] == [1, 3, 5, 6]
    caution = _q(partial, "SELECT caution FROM _deltaferry_batches")[0][0]
    assert "held back 2 row(s) published at v1 break this reader's v2" in caution
    assert caution.endswith("id=2; id=4")
    stored = _q(partial, "SELECT id, name, email, country, updated_at, deleted_at, tier "
                         "FROM customers")
    import pandas as pd

    frame = pd.DataFrame(stored, columns=["id", "name", "email", "country", "updated_at",
                                          "deleted_at", "tier"])
    assert not Contract("v2", CustomersT2).validate(frame).failed_rows

    # fixed in place (same ref, same fingerprint): only --retry-held reads the rows again
    buggy = CustomersT2.__dict__["upgrade"]
    monkeypatch.setattr(CustomersT2, "upgrade", staticmethod(_standard_tier))
    assert _pull(bad, partial).exit_code == 0
    assert _q(partial, "SELECT count(*) FROM customers") == [(4,)]
    retried = _pull(bad, partial, "--retry-held")
    assert retried.exit_code == 0, retried.output
    assert "read again the 2 row(s) held back" in retried.output
    assert "2 no longer held" in retried.output
    assert _q(partial, "SELECT id, name, email, country FROM customers ORDER BY id") == _live(shop)
    assert _q(partial, "SELECT DISTINCT tier FROM customers") == [("standard",)]
    monkeypatch.setattr(CustomersT2, "upgrade", buggy)

    # a v1 replica whose rows the bad upgrade would break refuses the contract change
    plain = tmp_path / "plain.duckdb"
    first = _pull(shop_job.config, plain)
    assert first.exit_code == 0, first.output
    refused = _pull(bad, plain)
    assert refused.exit_code == 1
    assert "2 of them break tests.support.contracts_versions:BadTier" in refused.output
    assert _q(plain, "SELECT id, name, email, country FROM customers ORDER BY id") == _live(shop)
    assert _q(plain, "SELECT version FROM _deltaferry_contracts WHERE tbl = 'customers'") == [(1,)]
    # and the fixed chain (a new ref, same fingerprint) takes them
    fixed = _reader(shop_job, tmp_path, "tests.support.contracts_versions:FixedTier", "fixed")
    moved = _pull(fixed, plain)
    assert moved.exit_code == 0, moved.output
    assert "6 stored row(s) taken from contracts.shop:Customers" in moved.output
    assert _q(plain, "SELECT count(*) FROM customers WHERE tier = 'standard'") == [(6,)]


def _standard_tier(frame):  # noqa: ANN001, ANN202
    frame["tier"] = "standard"
    return frame


def test_producers_count_a_readers_version_only_if_it_is_the_same_contract(
    shop_job, shop, tmp_path
):
    """Fresh-user trial of issue 19: a reader whose v2 is another contract than the
    producer's v2 (same number, other fingerprint) is counted as reading up to v1, so the
    producer publishes v1 for it (its chain can take the rows down) and the reader applies
    the batch, instead of being sent a v2 it must refuse. The reason is in the log."""
    from flows.sync import sync_job

    shop.round(5, 0, churn=0)
    shop.con.execute("ALTER TABLE customers ADD COLUMN loyalty TEXT")
    shop.con.commit()
    producer = tmp_path / "producer.toml"  # readers count for the default 7 days
    producer.write_text(shop_job.config.read_text().replace(
        "contracts.shop:Customers", "tests.support.contracts_versions:Loyalty"))
    reader = _reader(shop_job, tmp_path, "tests.support.contracts_versions:Renamed", "reader")
    replica = tmp_path / "r.duckdb"
    assert _pull(reader, replica, "--consumer", "r").exit_code == 0  # recorded, lake empty
    record = json.loads(shop_job.lake().get("shop/customers/consumers/r.json"))
    assert sorted(record["fingerprints"]) == ["1", "2"]
    out = sync_job(job="shop", config=str(producer))
    assert out["tables"]["customers"]["batch"] == 1
    with StateStore("shop").connect(read_only=True) as con:
        (detail,) = con.execute(
            "SELECT detail FROM ops_log WHERE step = 'negotiate' AND tbl = 'customers'"
        ).fetchone()
    assert "publishing at v1 of tests.support.contracts_versions:Loyalty" in detail
    assert "reader 'r''s v2 is another contract" in detail
    assert "counted as reading up to v1" in detail
    pulled = _pull(reader, replica, "--consumer", "r")
    assert pulled.exit_code == 0, pulled.output
    assert _q(replica, "SELECT contract_version FROM _deltaferry_batches "
                       "WHERE tbl = 'customers'") == [(1,)]
    # the reader's own chain upgrades the v1 rows to its v2 (name -> full_name)
    assert _q(replica, "SELECT id, full_name FROM customers ORDER BY id") == shop.con.execute(
        "SELECT id, name FROM customers ORDER BY id"
    ).fetchall()


@pytest.mark.unit
def test_schema_problems_are_what_no_producer_writes():
    """``schema_problems`` (pull's and verify's check of a data object against the contract
    version its manifest names) flags only what no producer writes: a key column missing,
    a required column missing from an object with upserts (unless the source dropped it:
    ``drift.missing``), another kind of type where the contract types it, ``_op``/``_seq``
    wrong. Legitimate objects pass: a nullable column absent (dual-published delete-only
    batches, lakes written before producers added NULL columns), a required one absent
    from a delete-only object, a text column staged as numbers (a pandas 2 producer does
    not cast to text), integers of another width."""
    from types import SimpleNamespace

    import pyarrow as pa

    from contracts import load_contract
    from deltaferry.readers import schema_problems

    contract = load_contract("contracts.shop:Customers", where="test")
    full = pa.schema(
        [
            ("id", pa.int32()),
            ("name", pa.string()),
            ("email", pa.string()),
            ("country", pa.int64()),  # text in the contract: not cast by a pandas 2 producer
            ("updated_at", pa.timestamp("us")),
            ("deleted_at", pa.timestamp("us")),
            ("_op", pa.string()),
            ("_seq", pa.int64()),
        ]
    )
    plain = SimpleNamespace(drift=None)

    def check(schema: pa.Schema, upserts: bool = True, manifest=plain) -> list[str]:  # noqa: ANN001
        return schema_problems(contract, schema, manifest, ["id"], upserts)

    def without(*names: str) -> pa.Schema:
        return pa.schema([f for f in full if f.name not in names])

    assert check(full) == []
    assert check(without("deleted_at")) == []
    assert check(without("email")) == ["column 'email' is missing"]
    assert check(without("email"), upserts=False) == []
    dropped = SimpleNamespace(drift=SimpleNamespace(missing={"email": "dropped at the source"}))
    assert check(without("email"), manifest=dropped) == []
    assert check(without("id"), upserts=False) == ["column 'id' is missing"]
    retyped = full.set(0, pa.field("id", pa.string()))
    assert check(retyped) == ["column 'id' is string, the contract's is int64"]
    timed = full.set(4, pa.field("updated_at", pa.string()))
    assert check(timed) == ["column 'updated_at' is string, the contract's is timestamp[ns]"]
    assert check(full.set(6, pa.field("_op", pa.int8()))) == ["column '_op' is int8"]
    assert check(without("_seq")) == ["column '_seq' is missing"]


def test_a_date_column_the_lake_has_not_sent_yet_is_a_date_column_of_nulls():
    """A reader's contract column of pandera's ``Date`` that no batch has sent yet (an
    empty source table's placeholder; a batch published without it) is made ``DATE`` of
    NULLs: it was left out (pandas keeps dates as objects), so the replica lacked a column
    of its contract until a batch brought one."""
    import pyarrow as pa

    from contracts import Contract
    from deltaferry.readers import Reading
    from deltaferry.replica_apply import create_placeholder
    from tests.support.contracts_files import Dated

    contract = Contract("tests.support.contracts_files:Dated", Dated)
    con = duckdb.connect()
    create_placeholder(con, "empty", contract, [("_seq", "BIGINT")])
    sql = "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'empty'"
    assert dict(con.execute(sql).fetchall()) == {
        "id": "BIGINT", "day": "DATE", "at": "TIMESTAMP WITH TIME ZONE", "_seq": "BIGINT",
    }
    reading = Reading(job="j", table="dated", contract=contract, primary_key=["id"])
    batch = pa.table({"id": [1, 2], "_op": ["upsert", "upsert"]})
    out, _, held = reading.keep_known(con, 1, batch, None)
    assert held == 0
    assert out.schema.field("day").type == pa.date32() and out["day"].null_count == 2
    assert out.schema.field("at").type == pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize("merged", [False, True], ids=["one-producer", "multi-producer"])
def test_values_a_partial_read_left_out_arrive_when_the_reader_moves_up(
    shop_job, shop, tmp_path, merged
):
    """A v1 reader pulls a producer's v2 batches partially (``loyalty`` left out), then
    moves to the chain v1 -> v2: its stored rows were taken up by the upgrade (loyalty
    NULL) and the partially read batches were never read again, so the replica said v2 and
    held NULL where the lake had 'gold', exit 0 (a fresh-user trial). Now those batches are
    read again: the replica equals a new v2 replica, a later change of a key still wins,
    and pulling again changes nothing."""
    from flows.sync import sync_job

    loyalty = "tests.support.contracts_versions:Loyalty"
    shop.round(8, 0, churn=0)
    shop.con.execute("ALTER TABLE customers ADD COLUMN loyalty TEXT")
    for cid in (2, 5):
        shop.con.execute(
            "UPDATE customers SET loyalty = 'gold', updated_at = ? WHERE id = ?", (shop._tick(), cid)
        )
    shop.con.commit()
    producer = _reader(shop_job, tmp_path, loyalty, "producer", "", merged)
    v1 = _reader(shop_job, tmp_path, "contracts.shop:Customers", "v1", "", merged)
    sync_job(job="shop", config=str(producer))  # batch 1 at v2
    replica = tmp_path / "reader.duckdb"
    assert _pull(v1, replica, "--policy", "partial").exit_code == 0
    shop.con.execute("UPDATE customers SET loyalty = 'silver', updated_at = ? WHERE id = 3", (shop._tick(),))
    shop.con.execute("UPDATE customers SET loyalty = NULL, updated_at = ? WHERE id = 5", (shop._tick(),))
    shop.con.commit()
    sync_job(job="shop", config=str(producer))  # batch 2 at v2
    assert _pull(v1, replica, "--policy", "partial").exit_code == 0
    assert "loyalty" not in [r[0] for r in _q(replica, "DESCRIBE customers")]

    v2 = _reader(shop_job, tmp_path, loyalty, "v2", "", merged)
    moved = _pull(v2, replica)
    assert moved.exit_code == 0, moved.output
    assert "read again the 2 batch(es) applied partially" in " ".join(moved.output.split())
    fresh = tmp_path / "fresh.duckdb"
    assert _pull(v2, fresh).exit_code == 0
    sql = "SELECT id, name, email, country, loyalty FROM customers ORDER BY id"
    assert _q(replica, sql) == _q(fresh, sql)
    tiers = {i: tier for i, *_, tier in _q(replica, sql)}
    assert (tiers[2], tiers[3], tiers[5]) == ("gold", "silver", None)
    again = _pull(v2, replica)
    assert again.exit_code == 0 and "read again" not in again.output
    assert _q(replica, sql) == _q(fresh, sql)
