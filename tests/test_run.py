"""``deltaferry/run.py`` without Prefect: the run's row in the state store, its summary,
and what its events, tags and name say (the sync flow wires these to tasks and hooks)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from deltaferry.checkpoints import Plan
from deltaferry.errors import ContractViolation, SchemaDrift, TerminalError, TransientError
from deltaferry.run import RunSummary, failure_event, recorded, run_name, run_tags
from deltaferry.state import StateStore


def _ctx(drift: dict[str, str] | None = None) -> Any:
    state = StateStore("shop")
    return SimpleNamespace(
        job=SimpleNamespace(name="shop"), state=state, run_id=state.start_run(), drift=drift or {}
    )


def _row(ctx: Any) -> tuple:
    with ctx.state.connect(read_only=True) as con:
        return con.execute(
            "SELECT outcome, detail, finished_at IS NOT NULL FROM runs WHERE run_id = ?",
            [ctx.run_id],
        ).fetchone()


def test_a_run_that_ends_well_is_ok_with_its_drift(home):
    ctx = _ctx({"customers": "column 'x' added"})
    with recorded(ctx) as summary:
        summary.note_no_change("customers")
    assert _row(ctx) == ("ok", None, True)
    assert summary.error is None and summary.drift == {"customers": "column 'x' added"}


@pytest.mark.parametrize("error", [ContractViolation("3 rows break contract"), KeyboardInterrupt()])
def test_whatever_ends_a_run_finishes_it_failed_once(home, error):
    ctx = _ctx()
    with pytest.raises(type(error)), recorded(ctx) as summary:
        summary.current = "orders"
        raise error
    outcome, detail, finished = _row(ctx)
    assert (outcome, finished) == ("failed", True)
    assert detail == f"{type(error).__name__}: {error}"
    assert summary.error is error and summary.current == "orders"


def test_the_summary_is_what_the_flow_returns():
    summary = RunSummary("shop")
    assert summary.as_dict() == {"job": "shop", "tables": {}, "recovered": [], "drift": {}}
    plan = Plan("customers", 3, ["1.0"], 41, 45, 5, 1, b"{}", "0" * 64, 10)
    delta: Any = SimpleNamespace(upserts=4, deletes=1)
    summary.note_published(plan, delta, 2048, "stored")
    summary.note_no_change("orders")
    extracted: Any = SimpleNamespace()
    summary.note_extracted(extracted, ["file a.csv set aside"])
    assert summary.published() == {"customers": 3}
    out = summary.as_dict()
    assert list(out) == ["job", "tables", "recovered", "extracted", "skipped", "drift"]
    assert out["tables"] == {
        "customers": {
            "batch": 3,
            "batches": 1,
            "rows": 5,
            "upserts": 4,
            "deletes": 1,
            "quarantined": 1,
            "bytes": 2048,
            "manifest": "stored",
        },
        "orders": {"batch": None},
    }
    assert out["extracted"] is extracted and out["skipped"] == ["file a.csv set aside"]
    # a split cut's next batch in the same run adds up
    summary.note_published(
        Plan("customers", 4, ["1.0"], 46, 47, 2, 0, b"{}", "0" * 64, 10),
        SimpleNamespace(upserts=2, deletes=0),
        100,
        "stored",
    )
    assert summary.as_dict()["tables"]["customers"] | {"manifest": None} == {
        "batch": 4,
        "batches": 2,
        "rows": 7,
        "upserts": 6,
        "deletes": 1,
        "quarantined": 1,
        "bytes": 2148,
        "manifest": None,
    }


def test_recovery_lines_and_the_batch_a_recovery_published(home):
    ctx = _ctx()
    t: Any = SimpleNamespace(name="customers")
    summary = RunSummary("shop")
    assert summary.note_recovered(ctx, t, None) is None and summary.recovered == []
    assert summary.note_recovered(ctx, t, "adopted batch 2 from the lake") is None
    plan = Plan("customers", 1, ["1.0"], 1, 5, 5, 0, b"{}", "0" * 64, 10)
    ctx.state.record_plan(plan, ctx.run_id, [])
    ctx.state.commit_checkpoint(plan)
    assert summary.note_recovered(ctx, t, "batch 1: manifest stored, checkpoint") == 1
    assert summary.recovered == [
        "customers: adopted batch 2 from the lake",
        "customers: batch 1: manifest stored, checkpoint",
    ]


def test_events_tags_and_names():
    assert failure_event(SchemaDrift("drifted")) == "deltaferry.validation.failed"
    assert failure_event(TransientError("reset")) == "deltaferry.retries.exhausted"
    assert failure_event(TerminalError("conflict")) is None
    assert run_name("shop", {"customers": 3, "orders": 4}) == "sync-shop customers#3 orders#4"
    assert run_name("shop", {}) == "sync-shop no change"
    held = {"customers": 6, "orders": 0}
    assert run_name("shop", {}, held) == "sync-shop customers held back"
    assert run_name("shop", {"orders": 2}, held) == "sync-shop orders#2 customers held back"
    ctx: Any = SimpleNamespace(
        job=SimpleNamespace(name="shop", tables=[SimpleNamespace(name="customers")]),
        contracts={"customers": SimpleNamespace(version=2)},
    )
    assert run_tags(ctx) == {"deltaferry", "job:shop", "table:customers", "contract:customers:v2"}


def test_an_error_that_ends_a_run_carries_what_went_on_before_it():
    """Any deltaferry error that ends a run after a table was done carries the run's
    summary (``DeltaferryError.run_summary``, what ``deltaferry run`` prints before the
    error line), with the table the error stopped marked so, not shown as published."""
    from types import SimpleNamespace

    from deltaferry.errors import TransientError
    from deltaferry.run import recorded

    finished = []
    ctx = SimpleNamespace(
        job=SimpleNamespace(name="j"),
        run_id="r1",
        drift={},
        state=SimpleNamespace(finish_run=lambda *a: finished.append(a)),
    )
    error = TransientError("job 'j' table 'b': upload failed after retries")
    with pytest.raises(TransientError) as caught:
        with recorded(ctx) as summary:  # type: ignore[arg-type]
            summary.note_no_change("a")
            summary.current = "b"
            raise error
    assert caught.value is error
    tables = error.run_summary["tables"]  # type: ignore[index]
    assert tables["a"] == {"batch": None}
    assert tables["b"]["batch"] is None and "upload failed" in tables["b"]["stopped"]
    assert finished[0][1] == "failed"


def test_several_stopped_tables_say_whether_any_table_went_on() -> None:
    """One error for the tables that stopped: "the job's other tables went on" only when
    the job has others (a fresh-user trial read it on a job whose every table stopped)."""
    from deltaferry.run import _several_stopped

    stopped = [("a", ContractViolation("a broke")), ("b", TerminalError("b unreadable"))]
    some = _several_stopped(SimpleNamespace(job=SimpleNamespace(name="j", tables=[1, 2, 3])), stopped)
    every = _several_stopped(SimpleNamespace(job=SimpleNamespace(name="j", tables=[1, 2])), stopped)
    assert isinstance(some, ContractViolation) and isinstance(every, ContractViolation)
    assert str(some) == "job 'j': tables 'a', 'b' stopped (the job's other tables went on): a broke | b unreadable"
    assert str(every) == "job 'j': tables 'a', 'b' stopped (every table of the job stopped): a broke | b unreadable"
