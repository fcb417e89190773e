"""What operators see of a run in the Prefect UI: a markdown artifact (what the run did,
step by step), a table artifact of the rows the contracts held back, and events.

Events, each with the job and table as resource labels and the contract version:

- ``deltaferry.batch.published``: a batch was committed (batch, rows, bytes);
- ``deltaferry.validation.failed``: a batch broke its contract beyond the quarantine
  ratio and nothing was published;
- ``deltaferry.retries.exhausted``: a step kept failing transiently until its retry
  budget was spent;
- ``deltaferry.step.retried``: a step failed transiently and is tried again (cause in
  the payload; job and step labels only);
- ``deltaferry.lag.exceeded``: after a run (successful or not), a table of a job with
  ``max_lag_seconds`` whose lag (``deltaferry status``: time since the newest change
  published, else since the last publish) is over it; lag, limit and basis in the payload;
- ``deltaferry.input.skipped``: the source set a whole input aside (a malformed file),
  with the reason; the rest of the run went on;
- ``deltaferry.run.completed``: a run finished without error, whether or not anything
  changed (the batches it published in the payload).

What a run did is reported by the sync flow's state hooks, from the context and summary
the run handed to :func:`track` (kept by flow run id until a hook takes them):
:func:`on_completion` renames the run after the batches it published, emits
``deltaferry.run.completed``, checks the lag and publishes the report; :func:`on_failure`
emits the failure event, checks the lag and publishes the failure report; :func:`on_end`
(crashed, cancelled) reports nothing, as a run ended by Ctrl-C or a signal never did. The
run's row in the state store is finished by ``deltaferry/run.py:recorded`` in the flow,
not by a hook (Prefect's runner runs cancellation hooks in its own process).

Reporting never fails a run: an artifact or event that cannot be written is logged.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from deltaferry.context import SyncContext
from deltaferry.run import RunSummary, failure_event, lags_exceeded, run_name
from deltaferry.run_report import held_in_run, run_lags, run_markdown

# the runs whose report is still to come, by flow run id (the hooks get the flow run)
_RUNS: dict[str, tuple[SyncContext, RunSummary]] = {}


def artifact_key(job: str, what: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"deltaferry-{job}-{what}".lower())


def _resource(ctx: SyncContext, table: str | None) -> dict[str, str]:
    job = ctx.job.name
    res = {
        "prefect.resource.id": f"deltaferry.table.{job}.{table}"
        if table
        else f"deltaferry.job.{job}",
        "prefect.resource.name": f"{job}.{table}" if table else job,
        "deltaferry.job": job,
        "deltaferry.trace-id": ctx.trace_id,
    }
    if table:
        res["deltaferry.table"] = table
        contract = ctx.contracts.get(table)
        if contract is not None:
            res["deltaferry.contract.version"] = str(contract.version)
            res["deltaferry.contract.fingerprint"] = contract.fingerprint[:16]
    return res


def emit(ctx: SyncContext, event: str, table: str | None, payload: dict[str, Any]) -> None:
    try:
        emit_event(event=event, resource=_resource(ctx, table), payload=payload)
    except Exception as e:  # noqa: BLE001 - reporting never fails a run
        get_run_logger().warning("could not emit %s: %s", event, e)


def check_lag(ctx: SyncContext) -> None:
    """``deltaferry.lag.exceeded`` for every table over the job's ``max_lag_seconds``, also
    written to the operations log (``deltaferry/run.py:lags_exceeded``). Never fails the run."""
    try:
        for table, payload in lags_exceeded(ctx):
            emit(ctx, "deltaferry.lag.exceeded", table, payload)
    except Exception as e:  # noqa: BLE001 - reporting never fails a run
        get_run_logger().warning("could not check the lag: %s", e)


def emit_retry(job: str, step: str, error: BaseException) -> None:
    """``deltaferry.step.retried``: a step failed transiently and will be tried again."""
    try:
        emit_event(
            event="deltaferry.step.retried",
            resource={
                "prefect.resource.id": f"deltaferry.job.{job}",
                "prefect.resource.name": job,
                "deltaferry.job": job,
                "deltaferry.step": step,
            },
            payload={"cause": f"{type(error).__name__}: {error}"[:1000]},
        )
    except Exception:  # noqa: BLE001, S110 - reporting never fails a run
        pass


def emit_failure(ctx: SyncContext, error: BaseException, table: str | None) -> None:
    event = failure_event(error)
    if event is not None:
        emit(ctx, event, table, {"error": str(error)[:2000]})


def _lags(ctx: SyncContext) -> dict[str, str]:
    try:
        return run_lags(ctx)
    except Exception as e:  # noqa: BLE001 - reporting never fails a run
        get_run_logger().warning("could not read the lag: %s", e)
        return {}


def publish_run_report(
    ctx: SyncContext, summary: RunSummary, error: BaseException | None = None
) -> None:
    """The run's markdown artifact (``deltaferry/run_report.py:run_markdown``) and, when rows
    were held back, its quarantine table."""
    try:
        job = ctx.job.name
        create_markdown_artifact(
            markdown=run_markdown(ctx, summary, error, _lags(ctx)),
            key=artifact_key(job, "run"),
            description=f"deltaferry run of job {job}",
        )
        held = held_in_run(ctx)
        if held:
            create_table_artifact(
                table=held,
                key=artifact_key(job, "quarantine"),
                description=f"rows of job {job} held back by their contracts in this run",
            )
    except Exception as e:  # noqa: BLE001 - reporting never fails a run
        get_run_logger().warning("could not write the run report: %s", e)


def _name_flow_run(
    flow_run_id: Any, job: str, published: dict[str, int], held: dict[str, int] | None = None
) -> None:
    """Rename the finished run after the batches it published (``sync-shop customers#3
    orders#4``, or ``sync-shop no change``), so the runs list says what each did."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, name=run_name(job, published, held))
    except Exception as e:  # noqa: BLE001 - names are for people; never fail a run over them
        get_run_logger().warning("could not rename the flow run: %s", e)


def track(flow_run_id: Any, ctx: SyncContext, summary: RunSummary) -> None:
    """Keep the run's context and summary for the flow's state hooks to report from (not
    outside a flow run: no hook would take them)."""
    if flow_run_id:
        _RUNS[str(flow_run_id)] = (ctx, summary)


def _report_ok(flow_run: Any, ctx: SyncContext, summary: RunSummary) -> None:
    with ctx.state.hold():  # the lag check and the report: one state connection
        published = summary.published()
        _name_flow_run(flow_run.id, ctx.job.name, published, ctx.held_back)
        emit(ctx, "deltaferry.run.completed", None, {"published": published})
        check_lag(ctx)
        publish_run_report(ctx, summary)


def on_completion(flow: Any, flow_run: Any, state: Any) -> None:
    """Hook: the run completed (see the module's docstring)."""
    run = _RUNS.pop(str(flow_run.id), None)
    if run is not None:
        _report_ok(flow_run, *run)


def on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Hook: the run failed: its failure event, the lag check and the failure report, once.
    (A run that ended well and failed in Prefect only afterwards is reported as its row in
    the state store has it: ok.)"""
    run = _RUNS.pop(str(flow_run.id), None)
    if run is None:  # failed before it began (the job lock, the lake): nothing to report
        return
    ctx, summary = run
    error = summary.error
    if error is None:
        _report_ok(flow_run, ctx, summary)
        return
    with ctx.state.hold():
        emit_failure(ctx, error, summary.current)
        check_lag(ctx)  # a failing job falls behind: that is when the lag matters
        publish_run_report(ctx, summary, error)


def on_end(flow: Any, flow_run: Any, state: Any) -> None:
    """Hook: the run crashed or was cancelled: forget it (nothing is reported; its row in
    the state says ``failed`` if this process saw it end, else recovery finds it)."""
    _RUNS.pop(str(flow_run.id), None)
