"""Validation before publish, quarantine, the failure threshold, and retry classes."""

from __future__ import annotations

import duckdb
import pytest

from deltaferry.errors import ContractViolation, TransientError
from deltaferry.state import StateStore
from destinations.manifest import manifest_key
from tests.support.faults import FaultProxy


def _state_rows(shop_job, sql: str) -> list[tuple]:
    con = duckdb.connect(str(shop_job.dir / "home" / "shop" / "state.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_invalid_rows_are_quarantined_not_published_then_repaired(shop_job, shop):
    shop.round(50, 50, churn=0)
    shop_job.sync()
    stats = shop.round(20, 10, churn=0, invalid=3)  # 3 of 20 new customers have bad e-mails
    assert stats.invalid == 3
    out = shop_job.sync()
    c = out["tables"]["customers"]
    assert (c["rows"], c["quarantined"]) == (17, 3)
    shop_job.pull()
    bad = shop.broken
    rows = _state_rows(shop_job, 'SELECT pk, field, "check", reason FROM quarantine ORDER BY pk')
    assert {r[0] for r in rows} == {f'{{"id": {i}}}' for i in bad}
    assert all(r[1] == "email" and "str_matches" in r[2] for r in rows)
    rep = duckdb.connect(str(shop_job.replica), read_only=True)
    assert rep.execute(
        f"SELECT count(*) FROM customers WHERE id IN ({','.join(map(str, bad))})"
    ).fetchall() == [(0,)]
    rep.close()
    conv = {c.table: c for c in shop_job.compare()}
    assert conv["customers"].quarantined_keys == 3 and conv["customers"].equal

    shop.round(0, 0, churn=0)  # repairs the broken rows
    out = shop_job.sync()
    assert (
        out["tables"]["customers"]["rows"] == 3 and out["tables"]["customers"]["quarantined"] == 0
    )
    shop_job.pull()
    conv = {c.table: c for c in shop_job.compare()}
    assert conv["customers"].quarantined_keys == 0 and conv["customers"].equal
    assert conv["customers"].source_rows == conv["customers"].replica_rows == 70


def test_batch_over_threshold_is_not_published_and_nothing_is_lost(shop_job, shop):
    shop.round(30, 10, churn=0)
    shop_job.sync()
    shop.round(10, 0, churn=0, invalid=5)  # 50% bad, threshold 20%
    with pytest.raises(
        ContractViolation, match=r"job 'shop' table 'customers'.*max_quarantine_ratio"
    ):
        shop_job.sync()
    lake = shop_job.lake()
    assert lake.get(manifest_key("shop", "customers", 2)) is None
    state = StateStore("shop")
    assert state.checkpoint("customers").batch == 1 and state.pending_plan("customers") is None
    failed = _state_rows(
        shop_job,
        "SELECT attempt, outcome FROM ops_log WHERE step = 'plan' AND tbl = 'customers'"
        " AND outcome <> 'ok'",
    )
    assert failed == [(1, "failed")]  # terminal: not retried

    shop.round(0, 0, churn=0)  # the source fixes the rows; the held-back good rows go out with them
    out = shop_job.sync()
    assert out["tables"]["customers"]["rows"] == 10
    shop_job.pull()
    assert all(c.equal and c.quarantined_keys == 0 for c in shop_job.compare())


def test_transient_upload_failures_are_retried_with_backoff(
    shop_job, shop, s3_endpoint, monkeypatch
):
    port = int(s3_endpoint.rsplit(":", 1)[1])
    proxy = FaultProxy(port)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
    try:
        shop.round(20, 20, churn=0)
        # botocore makes 3 attempts per request (DELTAFERRY_S3_MAX_ATTEMPTS=3); 4 resets exhaust
        # the first step attempt, so the Prefect task retry must take over
        proxy.reset_puts(4)
        out = shop_job.sync()
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    assert proxy.resets_done == 4
    assert out["tables"]["customers"]["batch"] == 1
    attempts = _state_rows(
        shop_job,
        "SELECT attempt, outcome FROM ops_log WHERE step = 'upload' AND tbl = 'customers'"
        " ORDER BY id",
    )
    assert attempts == [(1, "retry"), (2, "ok")]
    detail = _state_rows(
        shop_job,
        "SELECT detail FROM ops_log WHERE step = 'upload' AND outcome = 'retry' AND tbl = 'customers'",
    )[0][0]
    delay = float(detail.split("retry in ", 1)[1].split("s", 1)[0])
    assert 0 <= delay <= 0.05  # full jitter: uniform in [0, base * 2**0]
    assert "TransientError" in detail and "part-00000" in detail  # the cause
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_retry_condition_accepts_only_transient_errors(prefect_api):
    # Failed(data=...) persists its result through the Prefect API (without one, Prefect
    # would start its own server)
    from prefect.states import Failed

    from flows.retries import full_jitter_delays, only_transient

    assert only_transient(None, None, Failed(data=TransientError("timeout")))
    assert not only_transient(None, None, Failed(data=ContractViolation("bad rows")))
    delays = full_jitter_delays(5, base=1.0, cap=8.0)
    assert len(delays) == 5
    assert all(0 <= d <= min(8.0, 2**i) for i, d in enumerate(delays))
    # the bounds grow exponentially, and tasks draw their own delays (not synchronised)
    many = [full_jitter_delays(6, base=1.0, cap=100.0) for _ in range(200)]
    means = [sum(d[i] for d in many) / len(many) for i in range(6)]
    assert all(means[i + 1] > means[i] for i in range(5))
    assert len({tuple(d) for d in many}) == len(many)


def test_a_contract_failure_counts_every_chunk_of_the_batch(shop_job, shop):
    """The refusal's per-check counts add up every chunk the batch was validated in, not
    the first chunk's (6 bad rows read 3 at a time: 6 rows, not 3), and each check shows
    a value that failed it and the key of its row, so the operator can find the row."""
    import re

    shop_job.write_config(rows_per_file=3)
    shop.round(10, 0, churn=0, invalid=6)
    with pytest.raises(ContractViolation) as err:
        shop_job.sync()
    message = str(err.value)
    assert "6 of 10 changed rows" in message
    counts = [int(n) for n in re.findall(r"\((\d+) rows?", message)]
    assert counts and max(counts) == 6, message
    found = re.search(r"email: .*\(6 rows, e\.g\. '(c(\d+)\.example\.com)' at key \{\"id\": (\d+)\}\)", message)
    assert found, message
    assert found.group(2) == found.group(3) and int(found.group(2)) in shop.broken, message


def test_a_table_that_breaks_its_contract_does_not_stop_the_others(shop_job, shop):
    """customers (first in the job) breaks its contract: nothing of it is published, the
    run fails with its one-line error, yet orders' change is published in the same run.
    Once the bad rows are fixed, customers follows; the replica equals the source."""
    shop.round(10, 12, churn=0, invalid=5)  # 50% bad customers, over the 20% threshold
    with pytest.raises(ContractViolation) as err:
        shop_job.sync()
    assert "table 'customers'" in str(err.value) and "\n" not in str(err.value)
    lake = shop_job.lake()
    assert lake.list("shop/customers/manifests/") == []
    assert len(lake.list("shop/orders/manifests/")) == 1
    with StateStore("shop").connect(read_only=True) as con:
        outcome, detail = con.execute("SELECT outcome, detail FROM runs").fetchone()
    assert outcome == "failed" and "customers" in detail
    shop.round(0, 0, churn=0)  # repairs the broken rows
    out = shop_job.sync()["tables"]
    assert out["customers"]["upserts"] == 10 and out["orders"]["batch"] is None
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_a_run_that_holds_every_change_back_says_so(shop_job, shop):
    """Every changed row of a table breaks its contract, under a threshold that lets them
    be held: no batch, and the run's summary, its table and the operations log say how many
    rows were held back, not "no change" (a fresh-user trial read a whole table held back
    as a quiet run)."""
    from deltaferry.cli_run import _summary_rows

    shop.round(20, 0, churn=0)
    shop_job.sync()
    text = shop_job.config.read_text().replace("max_quarantine_ratio = 0.2", "max_quarantine_ratio = 1.0")
    shop_job.config.write_text(text)
    shop.round(6, 0, churn=0, invalid=6)  # every new customer has a bad e-mail
    out = shop_job.sync()
    assert out["tables"]["customers"] == {"batch": None, "quarantined": 6}
    row = next(r for r in _summary_rows(out) if r[0] == "customers")
    assert (row[5], row[-1]) == ("6", "held back (deltaferry quarantine list)")
    plans = _state_rows(
        shop_job,
        "SELECT detail FROM ops_log WHERE step = 'plan' AND tbl = 'customers' ORDER BY id",
    )
    assert plans[-1] == ("no batch: 6 changed row(s) held back in the quarantine",)
    # a run with nothing new after it is a quiet run again
    out = shop_job.sync()
    assert out["tables"]["customers"] == {"batch": None}
    assert next(r for r in _summary_rows(out) if r[0] == "customers")[-1] == "no change"
