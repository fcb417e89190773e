"""The sync flow: the story of one run of one job, step by step.

lake-head -> recover -> extract -> for each table: plan (cut + validate) -> upload -> manifest -> checkpoint

Retry layers, one per failure class: botocore's standard mode retries single S3
requests; the Prefect task retries below retry whole steps, only for
``TransientError``, with exponential backoff and full jitter. Terminal errors
(conflicts, contract violations, bad credentials) fail the run at once.
"""

from __future__ import annotations

import random
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run

from deltaferry.agreement import agree_every_table
from deltaferry.commit import commit, put_manifest, recover_table, upload_parts
from deltaferry.config import TableConfig, load_job
from deltaferry.context import SyncContext, job_lock, open_context
from deltaferry.delta import Delta
from deltaferry.errors import TransientError
from deltaferry.extract import ExtractResult, run_extract
from deltaferry.failpoints import failpoint
from deltaferry.plan import plan_negotiated
from deltaferry.settings import from_env
from deltaferry.state import Plan
from flows.report import check_lag, emit, emit_failure, emit_retry, publish_run_report


def full_jitter_delays(retries: int, base: float, cap: float = 60.0) -> list[float]:
    """Delays for ``retries`` attempts: uniform in [0, min(cap, base * 2**i)] ("full jitter")."""
    rng = random.Random()
    return [rng.uniform(0, min(cap, base * 2**i)) for i in range(retries)]


def _only_transient(task: Any, run: Any, state: Any) -> bool:
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as e:  # pragma: no cover - defensive
            exc = e
    retrying = isinstance(exc, TransientError)
    if retrying:
        emit_retry(str(flow_run.parameters.get("job", "")), str(getattr(run, "name", "")), exc)
    return retrying


def _retrying(t: Any, name: str, ctx: SyncContext) -> Any:
    env = from_env()
    retries = env.step_retries
    # drawn per task: retries are not synchronised
    delays = full_jitter_delays(retries, env.retry_base_seconds)
    # kept on the run's context (not globally) so the operations log can say when the
    # next attempt comes; it goes away with the run
    ctx.retry_delays[name] = delays
    return t.with_options(
        task_run_name=name,
        retries=retries,
        retry_delay_seconds=delays,
        retry_condition_fn=_only_transient,
    )


def _next_delay(ctx: SyncContext) -> Any:
    def delay(attempt: int) -> float | None:
        delays = ctx.retry_delays.get(str(task_run.name or ""), [])
        return delays[attempt - 1] if 0 < attempt <= len(delays) else None

    return delay


def _attempt() -> int:
    return int(task_run.run_count or 1)


_TASK: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="lake-head", **_TASK)
def agree_step(ctx: SyncContext) -> None:
    """Check that the lake's chain of every table ends at this producer's checkpoint
    (``deltaferry/agreement.py``) before anything is recovered or published."""
    agree_every_table(ctx)


@task(name="recover", **_TASK)
def recover(ctx: SyncContext, t: TableConfig) -> str | None:
    """Finish a batch an earlier run planned but did not commit."""
    return ctx.step("recover", lambda: recover_table(ctx, t), table=t.name)


@task(name="extract", **_TASK)
def extract_step(ctx: SyncContext) -> ExtractResult:
    """Incremental dlt load of every table into staging (plus reconciled tombstones,
    ``deltaferry/extract.py``); what the source set aside is logged and, for inputs
    skipped whole, emitted as events."""
    extracted = run_extract(ctx)
    logger = get_run_logger()
    for line in extracted.warnings:
        logger.warning("%s", line)
    for table, done in extracted.tables.items():
        for reason in done.skipped:
            emit(ctx, "deltaferry.input.skipped", table, {"reason": reason})
    failpoint("after_extract")
    return extracted


@task(name="cut-and-validate", **_TASK)
def plan_step(ctx: SyncContext, t: TableConfig) -> tuple[Plan, Delta] | None:
    """Cut the delta, validate it against the contract, record the planned batch."""
    out: list[tuple[Plan, Delta] | None] = []

    def run() -> str:
        planned = plan_negotiated(ctx, t)
        out.append(planned)
        if planned is None:
            return "no change"
        plan, delta = planned
        return (
            f"batch {plan.batch}: {delta.upserts} upserts, {delta.deletes} deletes, "
            f"{plan.quarantined} quarantined, seq {plan.seq_start}..{plan.seq_end}"
        )

    try:
        ctx.step("plan", run, table=t.name)
    finally:  # the source's columns drifted from the contract: say so loudly, also on freeze
        if t.name in ctx.drift:
            get_run_logger().warning("%s", ctx.drift[t.name])
            emit(ctx, "deltaferry.schema.drift", t.name, {"detail": ctx.drift[t.name]})
    return out[0]


@task(name="upload", **_TASK)
def upload_step(ctx: SyncContext, plan: Plan, delta: Delta) -> int:
    """Upload the batch's Parquet objects."""
    return ctx.step(
        "upload", lambda: upload_parts(ctx, plan, delta), table=plan.table, batch=plan.batch
    )


@task(name="manifest", **_TASK)
def manifest_step(ctx: SyncContext, plan: Plan) -> str:
    """Store the manifest create-only: the commit point of the batch."""
    return ctx.step("manifest", lambda: put_manifest(ctx, plan), table=plan.table, batch=plan.batch)


@task(name="checkpoint", **_TASK)
def checkpoint_step(ctx: SyncContext, plan: Plan) -> None:
    """Advance the local checkpoint (only after the manifest is stored)."""
    ctx.step("checkpoint", lambda: commit(ctx, plan), table=plan.table, batch=plan.batch)


def _needs_recovery(ctx: SyncContext, t: TableConfig) -> bool:
    """Whether ``recover`` has anything to do: a batch planned but not committed, or no
    local checkpoint (a first run, or a lost home that may adopt the lake's)."""
    return ctx.state.pending_plan(t.name) is not None or not ctx.state.checkpoint(t.name).batch


def _name_flow_run(job: str, published: dict[str, int]) -> None:
    """Rename the finished run after the batches it published (``sync-shop customers#3
    orders#4``, or ``sync-shop no change``), so the runs list says what each did."""
    run_id = flow_run.id
    if not run_id:
        return
    what = " ".join(f"{t}#{b}" for t, b in published.items()) or "no change"
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=f"sync-{job} {what}"[:200])
    except Exception as e:  # noqa: BLE001 - names are for people; never fail a run over them
        get_run_logger().warning("could not rename the flow run: %s", e)


def _tag_flow_run(ctx: SyncContext) -> None:
    """Tag the flow run with the job, its tables and their contract versions, so operators
    filter runs by them in the UI. Only the flow run: Prefect checks tag concurrency limits
    for every tagged task run, a round trip to the API each (about 0.4 s per task here)."""
    run_id = flow_run.id
    if not run_id:
        return
    wanted = {"deltaferry", f"job:{ctx.job.name}"}
    for t in ctx.job.tables:
        wanted |= {f"table:{t.name}", f"contract:{t.name}:v{ctx.contracts[t.name].version}"}
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            current = set(client.read_flow_run(run_id).tags or [])
            if not wanted <= current:
                client.update_flow_run(run_id, tags=sorted(current | wanted))
    except Exception as e:  # noqa: BLE001 - tags are for people; never fail a run over them
        get_run_logger().warning("could not tag the flow run: %s", e)


@flow(name="deltaferry-sync", flow_run_name="sync-{job}", log_prints=True)
def sync_job(job: str, config: str | None = None) -> dict[str, Any]:
    """One sync of ``job``: extract, validate, publish and checkpoint every table."""
    logger = get_run_logger()
    cfg = load_job(job, config)
    summary: dict[str, Any] = {"job": job, "tables": {}, "recovered": []}
    with job_lock(job):
        ctx = open_context(cfg, trace_id=str(flow_run.id or "") or None)
        ctx.attempt = _attempt
        ctx.next_delay = _next_delay(ctx)
        ctx.max_attempts = 1 + from_env().step_retries
        ctx.state.log(ctx.run_id, "run", "info", detail=f"trace_id={ctx.trace_id}")
        _tag_flow_run(ctx)
        current: str | None = None  # the table being worked on, for failure events
        try:
            _retrying(agree_step, "lake-head", ctx)(ctx)
            for t in cfg.tables:
                current = t.name
                if not _needs_recovery(ctx, t):
                    continue  # the steady state: no task run (each costs API round trips)
                done = _retrying(recover, f"recover-{t.name}", ctx)(ctx, t)
                if done:
                    logger.info("job %s table %s: recovered %s", job, t.name, done)
                    summary["recovered"].append(f"{t.name}: {done}")
                    if done.startswith("batch "):  # a batch an interrupted run left is now out
                        batch = ctx.state.checkpoint(t.name).batch
                        emit(
                            ctx,
                            "deltaferry.batch.published",
                            t.name,
                            {"batch": batch, "recovered": True},
                        )
            current = None
            summary["extracted"] = _retrying(extract_step, "extract", ctx)(ctx)
            summary["skipped"] = list(ctx.skipped)
            for t in cfg.tables:
                current = t.name
                planned = plan_step.with_options(task_run_name=f"cut-and-validate-{t.name}")(ctx, t)
                if planned is None:
                    summary["tables"][t.name] = {"batch": None}
                    continue
                plan, delta = planned
                sent = _retrying(upload_step, f"upload-{t.name}-{plan.batch}", ctx)(
                    ctx, plan, delta
                )
                outcome = _retrying(manifest_step, f"manifest-{t.name}-{plan.batch}", ctx)(
                    ctx, plan
                )
                checkpoint_step.with_options(task_run_name=f"checkpoint-{t.name}-{plan.batch}")(
                    ctx, plan
                )
                summary["tables"][t.name] = {
                    "batch": plan.batch,
                    "rows": plan.rows,
                    "upserts": delta.upserts,
                    "deletes": delta.deletes,
                    "quarantined": plan.quarantined,
                    "bytes": sent,
                    "manifest": outcome,
                }
                emit(
                    ctx,
                    "deltaferry.batch.published",
                    t.name,
                    {"batch": plan.batch, "rows": plan.rows, "bytes": sent},
                )
                logger.info(
                    "job %s table %s: published batch %d (%d rows, %d quarantined)",
                    job,
                    t.name,
                    plan.batch,
                    plan.rows,
                    plan.quarantined,
                )
        except BaseException as e:
            summary["drift"] = dict(ctx.drift)
            ctx.state.finish_run(ctx.run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
            if isinstance(e, Exception):
                emit_failure(ctx, e, current)
                check_lag(ctx)  # a failing job falls behind: that is when the lag matters
                publish_run_report(ctx, summary, e)
            raise
        summary["drift"] = dict(ctx.drift)
        ctx.state.finish_run(ctx.run_id, "ok")
        published = {t: s["batch"] for t, s in summary["tables"].items() if s.get("batch")}
        _name_flow_run(job, published)
        emit(ctx, "deltaferry.run.completed", None, {"published": published})
        check_lag(ctx)
        publish_run_report(ctx, summary)
    return summary
