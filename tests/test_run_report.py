"""What operators see in the Prefect UI: the run's markdown artifact, the quarantine table
artifact and deltaferry's events, read back from the Prefect API."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from flows.report import artifact_key


def _artifacts(key: str, since: datetime) -> list:
    """Artifacts under ``key`` created since ``since``, newest first (every test of the
    session runs a job named shop)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
        )
    return [a for a in found if a.created >= since]


def _events(name: str, since: datetime, until, wait: float = 30) -> list[dict]:  # noqa: ANN001
    """Events of this name from the API, polled until ``until(events)`` holds (events
    arrive asynchronously) or ``wait`` seconds have passed."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + wait
    while True:
        with get_client(sync_client=True) as client:
            r = client.request(
                "POST",
                "/events/filter",
                json={
                    "filter": {
                        "event": {"name": [name]},
                        "occurred": {"since": since.isoformat()},
                    },
                    "limit": 50,
                },
            )
            events = r.json()["events"]
        if until(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_run_publishes_artifacts_and_events(shop_job, shop):
    since = datetime.now(timezone.utc)
    shop.round(20, 10, churn=0, invalid=3)  # 3 customers break the contract
    out = shop_job.sync()
    assert out["tables"]["customers"]["quarantined"] == 3

    run_md = _artifacts(artifact_key("shop", "run"), since)
    assert run_md, "no run artifact"
    md = run_md[0].data
    assert "deltaferry job `shop`: ok" in md
    assert "| customers | 20 | 1 | 17 |" in md  # extracted, batch, published
    assert (
        "| contracts.shop:Customers v1 | " in md and "(change) |" in md
    )  # lag, since the newest change
    assert "contracts.shop:Customers v1" in md
    assert "## Steps" in md and "| extract |" in md
    assert "## Decisions\n\nnone" in md  # rows the contract held are the quarantine table's

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_md[0].flow_run_id]))
        )
        run = client.read_flow_run(run_md[0].flow_run_id)
        run_tags = set(run.tags)
    # named after the job and the batches it published
    assert run.name == "sync-shop customers#1 orders#1"
    # the flow run carries the job, its tables and their contract versions
    assert {"deltaferry", "job:shop", "table:customers", "table:orders"} <= run_tags
    assert {"contract:customers:v1", "contract:orders:v1"} <= run_tags
    # tasks are named after their step, table and batch (and untagged: see _tag_flow_run)
    upload = next(t for t in tasks if t.name == "upload-customers-1")
    assert upload.tags == []

    held = _artifacts(artifact_key("shop", "quarantine"), since)
    assert held, "no quarantine artifact"
    import json

    rows = json.loads(held[0].data)
    assert sum(r["rows"] for r in rows if r["table"] == "customers") == 3
    assert {r["field"] for r in rows} == {"email"}

    def tables(events: list[dict]) -> set[str]:
        return {e["resource"].get("deltaferry.table") for e in events}

    published = _events("deltaferry.batch.published", since, lambda ev: len(tables(ev)) >= 2)
    assert {"customers", "orders"} <= tables(published)
    e = next(e for e in published if e["resource"].get("deltaferry.table") == "customers")
    assert e["resource"]["deltaferry.contract.version"] == "1"
    assert e["payload"]["batch"] == 1 and e["payload"]["rows"] == 17


def test_failed_validation_is_an_event_and_a_failed_report(shop_job, shop):
    """Reported by the flow's on_failure hook, once: the run's row says failed with the
    error, one validation event, one failure report."""
    from deltaferry.state import StateStore

    since = datetime.now(timezone.utc)
    shop.round(10, 0, churn=0, invalid=5)  # 50% bad, over the 20% threshold
    with pytest.raises(Exception, match="break contract"):
        shop_job.sync()
    failed = _events("deltaferry.validation.failed", since, bool)
    assert any(e["resource"].get("deltaferry.table") == "customers" for e in failed)
    reports = _artifacts(artifact_key("shop", "run"), since)
    md = reports[0].data
    assert "FAILED" in md and "break contract" in md
    with StateStore("shop").connect(read_only=True) as con:
        runs = con.execute("SELECT outcome, detail FROM runs").fetchall()
    assert len(runs) == 1 and runs[0][0] == "failed" and "break contract" in runs[0][1]
    time.sleep(2)  # a second event would have arrived by now
    assert len(_events("deltaferry.validation.failed", since, bool)) == 1
    assert len(reports) == 1
    assert not _events("deltaferry.run.completed", since, bool, wait=0)


def test_a_table_behind_its_max_lag_raises_lag_exceeded(shop_job, shop):
    from deltaferry.state import StateStore

    # the shop's clock starts on 2026-01-01: its newest change is months old
    shop_job.write_config(max_lag_seconds=3600)
    since = datetime.now(timezone.utc)
    shop.round(5, 5, churn=0)
    shop_job.sync()
    behind = _events(
        "deltaferry.lag.exceeded",
        since,
        lambda ev: {"customers", "orders"} <= {e["resource"].get("deltaferry.table") for e in ev},
    )
    e = next(e for e in behind if e["resource"].get("deltaferry.table") == "customers")
    assert e["resource"]["deltaferry.job"] == "shop"
    assert e["payload"]["max_lag_seconds"] == 3600
    assert e["payload"]["lag_seconds"] > 3600 and e["payload"]["basis"] == "newest change"
    with StateStore("shop").connect(read_only=True) as con:
        logged = con.execute(
            "SELECT tbl, detail FROM ops_log WHERE outcome = 'exceeded' ORDER BY id"
        ).fetchall()
    assert [t for t, _ in logged] == ["customers", "orders"]
    assert "over max_lag_seconds 3600" in logged[0][1]
    md = _artifacts(artifact_key("shop", "run"), since)[0].data
    assert "## Lag over max_lag_seconds" in md

    # a limit the lag is under: nothing raised
    shop_job.write_config(max_lag_seconds=10**10)
    shop.round(2, 2, churn=0)
    shop_job.sync()
    with StateStore("shop").connect(read_only=True) as con:
        assert (
            con.execute("SELECT count(*) FROM ops_log WHERE outcome = 'exceeded'").fetchone()[0]
            == 2
        )


def test_the_run_report_shows_the_runs_decisions(shop_job, shop):
    """An operator at the Prefect UI sees why a run did what it did, not only its steps: a
    decision of the run (here a cursor value in the future, read again on every run and
    never the bound) is a row of the report's "Decisions", with its table and reason, and
    not an attempt of a step."""
    since = datetime.now(timezone.utc)
    shop.round(5, 0, churn=0)
    shop.con.execute(
        "INSERT INTO customers VALUES (900, 'typo | year', 'c900@example.com', 'DE', "
        "'2240-01-01 00:00:00', NULL)"
    )
    shop.con.commit()
    out = shop_job.sync()
    assert out["tables"]["customers"]["upserts"] == 6
    md = _artifacts(artifact_key("shop", "run"), since)[0].data
    decisions = md.split("## Decisions", 1)[1].split("## Steps", 1)[0]
    rows = [r for r in decisions.splitlines() if r.startswith("| extract | customers |")]
    assert len(rows) == 1, decisions
    assert "| future-cursor |" in rows[0] and "2240-01-01" in rows[0], rows[0]
    assert rows[0].count(" | ") == 3, rows[0]  # one row of four cells: the detail escaped
    steps = md.split("## Steps", 1)[1].split("## Retries", 1)[0]
    assert "| extract |  | 1 |" in steps and "| extract | customers |" not in steps, steps


def test_a_report_cell_is_one_line_with_its_pipes_escaped():
    """A decision's or a set-aside file's reason may hold pipes and line breaks (a file
    name, a driver's message): each cell stays one line of its table, and a long reason is
    cut (the whole text: ``deltaferry log``)."""
    from deltaferry.run_report import _DETAIL_CHARS, _section

    lines = _section("Inputs set aside", ["table", "reason"], [("t", "a|b.csv:\n  bad row")])
    assert lines == [
        "", "## Inputs set aside", "", "| table | reason |", "|---|---|", "| t | a\\|b.csv: bad row |"
    ]
    (row,) = _section("Steps", ["step", "ms"], [("extract", "x" * 5000)], numbers=1)[-1:]
    assert row.endswith("… |") and len(row) == len("| extract | ") + _DETAIL_CHARS + 2
    assert _section("Retries by cause", ["step"], []) == ["", "## Retries by cause", "", "none"]
