"""The sync flow: the story of one run of one job, step by step.

lake-head -> recover -> extract -> for each table: plan (cut + validate) -> upload -> manifest -> checkpoint
(the order: ``deltaferry/run.py:sync_steps``; this module runs each step as a Prefect task)

Retry layers, one per failure class: botocore's standard mode retries single S3
requests; the Prefect task retries below retry whole steps, only for
``TransientError``, with exponential backoff and full jitter. Terminal errors
(conflicts, contract violations, bad credentials) fail the run at once.

The flow only wires Prefect around plain functions of ``deltaferry/`` (the steps, and
``deltaferry/run.py`` around them). What a run did is reported by the flow's state hooks
(``flows/report.py``: renamed run, events, lag check, artifacts) from the context and
summary the run hands to ``track``; its row in the state store is finished by
``deltaferry/run.py:recorded``.
"""

from __future__ import annotations

from typing import Any

# imported with the flow, not inside it: nearly every run opens an S3 lake (boto3) and a
# SQL source or its change check (SQLAlchemy), and Prefect's flow heartbeat thread, which
# a flow run joins at its end, sleeps in whole seconds, so a flow's call takes its body's
# time rounded up to the next second: a no-op run's body (about 0.6 s without these
# imports, 1.0 s with them) stays within one (bench/README.md, "A no-op run without dlt")
import boto3  # noqa: F401
import sqlalchemy  # noqa: F401
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run

from deltaferry.agreement import agree_every_table
from deltaferry.checkpoints import Plan
from deltaferry.commit import commit, put_manifest, recover_table, upload_parts
from deltaferry.config import TableConfig, load_job
from deltaferry.context import SyncContext, job_lock
from deltaferry.delta import Delta
from deltaferry.extract import ExtractResult, run_extract
from deltaferry.run import open_run, plan_logged, recorded, run_tags, sync_steps
from deltaferry.settings import from_env
from flows.process import end_quickly_if_the_process_is_the_runs
from flows.report import emit, on_completion, on_end, on_failure, track
from flows.retries import only_transient, step_retry_delays


def _retrying(t: Any, name: str, ctx: SyncContext) -> Any:
    retries, delays = step_retry_delays()
    # kept on the run's context (not globally) so the operations log can say when the
    # next attempt comes; it goes away with the run
    ctx.retry_delays[name] = delays
    return t.with_options(
        task_run_name=name,
        retries=retries,
        retry_delay_seconds=delays,
        retry_condition_fn=only_transient,
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
    return extracted


@task(name="cut-and-validate", **_TASK)
def plan_step(ctx: SyncContext, t: TableConfig) -> tuple[Plan, Delta] | None:
    """Cut the delta, validate it against the contract, record the planned batch."""
    try:
        return plan_logged(ctx, t)
    finally:  # the source's columns drifted from the contract: say so loudly, also on freeze
        if t.name in ctx.drift:
            get_run_logger().warning("%s", ctx.drift[t.name])
            emit(ctx, "deltaferry.schema.drift", t.name, {"detail": ctx.drift[t.name]})


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


def _tag_flow_run(ctx: SyncContext) -> None:
    """Tag the flow run with the job, its tables and their contract versions
    (``deltaferry/run.py:run_tags``), so operators filter runs by them in the UI. Only the
    flow run: Prefect checks tag concurrency limits for every tagged task run, a round trip
    to the API each (about 0.4 s per task here)."""
    run_id = flow_run.id
    if not run_id:
        return
    wanted = run_tags(ctx)
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            current = set(client.read_flow_run(run_id).tags or [])
            if not wanted <= current:
                client.update_flow_run(run_id, tags=sorted(current | wanted))
    except Exception as e:  # noqa: BLE001 - tags are for people; never fail a run over them
        get_run_logger().warning("could not tag the flow run: %s", e)


@flow(
    name="deltaferry-sync",
    flow_run_name="sync-{job}",
    log_prints=True,
    # what the run did is reported by these, from what the run gave ``track``
    on_completion=[on_completion],
    on_failure=[on_failure],
    on_crashed=[on_end],
    on_cancellation=[on_end],
)
def sync_job(job: str, config: str | None = None) -> dict[str, Any]:
    """One sync of ``job``: extract, validate, publish and checkpoint every table."""
    end_quickly_if_the_process_is_the_runs()  # a worker's process: no last full GC passes
    cfg = load_job(job, config)
    with job_lock(job):
        ctx = open_run(cfg, trace_id=str(flow_run.id or "") or None)
        ctx.attempt = _attempt
        ctx.next_delay = _next_delay(ctx)
        ctx.max_attempts = 1 + from_env().step_retries
        _tag_flow_run(ctx)
        with recorded(ctx) as summary:
            track(flow_run.id, ctx, summary)
            sync_steps(ctx, summary, _PrefectSteps(ctx))
    return summary.as_dict()


class _PrefectSteps:
    """``deltaferry/run.py:Steps`` as this flow's tasks: named per table and batch,
    retried on ``TransientError`` (not the plan and checkpoint steps: local, and a plan
    that failed validation fails the same way again), with the run's log lines and
    events."""

    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx
        self.logger = get_run_logger()

    def agree(self) -> None:
        _retrying(agree_step, "lake-head", self.ctx)(self.ctx)

    def recover(self, t: TableConfig) -> str | None:
        done: str | None = _retrying(recover, f"recover-{t.name}", self.ctx)(self.ctx, t)
        return done

    def recovered(self, t: TableConfig, done: str | None, batch: int | None) -> None:
        if done:
            self.logger.info("job %s table %s: recovered %s", self.ctx.job.name, t.name, done)
        if batch is not None:
            emit(self.ctx, "deltaferry.batch.published", t.name, {"batch": batch, "recovered": True})

    def extract(self) -> ExtractResult:
        result: ExtractResult = _retrying(extract_step, "extract", self.ctx)(self.ctx)
        return result

    def plan(self, t: TableConfig) -> tuple[Plan, Delta] | None:
        planned: tuple[Plan, Delta] | None = plan_step.with_options(
            task_run_name=f"cut-and-validate-{t.name}"
        )(self.ctx, t)
        return planned

    def upload(self, plan: Plan, delta: Delta) -> int:
        name = f"upload-{plan.table}-{plan.batch}"
        sent: int = _retrying(upload_step, name, self.ctx)(self.ctx, plan, delta)
        return sent

    def manifest(self, plan: Plan) -> str:
        name = f"manifest-{plan.table}-{plan.batch}"
        stored: str = _retrying(manifest_step, name, self.ctx)(self.ctx, plan)
        return stored

    def checkpoint(self, plan: Plan) -> None:
        checkpoint_step.with_options(task_run_name=f"checkpoint-{plan.table}-{plan.batch}")(
            self.ctx, plan
        )

    def published(self, plan: Plan, delta: Delta, sent: int) -> None:
        emit(
            self.ctx,
            "deltaferry.batch.published",
            plan.table,
            {"batch": plan.batch, "rows": plan.rows, "bytes": sent},
        )
        self.logger.info(
            "job %s table %s: published batch %d (%d rows, %d quarantined)",
            self.ctx.job.name,
            plan.table,
            plan.batch,
            plan.rows,
            plan.quarantined,
        )
