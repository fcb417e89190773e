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

Reporting never fails a run: an artifact or event that cannot be written is logged.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from deltaferry.context import SyncContext
from deltaferry.errors import ContractViolation, TransientError
from deltaferry.extract import ExtractResult


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
    written to the operations log. Never fails the run."""
    limit = ctx.job.max_lag_seconds
    if not limit:
        return
    try:
        from deltaferry.status import job_status

        for table, s in job_status(ctx.job, runs=1)["tables"].items():
            lag = s.get("lag_seconds")
            if lag is None or lag <= limit:
                continue
            basis = s.get("lag_basis")
            ctx.state.log(
                ctx.run_id,
                "lag",
                "exceeded",
                table=table,
                detail=f"lag {lag:.0f} s over max_lag_seconds {limit:g} (since the {basis})",
            )
            emit(
                ctx,
                "deltaferry.lag.exceeded",
                table,
                {"lag_seconds": lag, "max_lag_seconds": limit, "basis": basis},
            )
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
    if isinstance(error, ContractViolation):
        emit(ctx, "deltaferry.validation.failed", table, {"error": str(error)[:2000]})
    elif isinstance(error, TransientError):
        emit(ctx, "deltaferry.retries.exhausted", table, {"error": str(error)[:2000]})


def _run_facts(ctx: SyncContext) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """(step durations, retries by cause, quarantine by table/field/check/reason) of this run."""
    with ctx.state.connect(read_only=True) as con:
        steps = con.execute(
            "SELECT step, coalesce(tbl, ''), count(*), round(sum(duration_ms)) FROM ops_log "
            "WHERE run_id = ? AND outcome NOT IN ('info', 'skipped', 'source-retry', 'exceeded') "
            "GROUP BY ALL ORDER BY min(id)",
            [ctx.run_id],
        ).fetchall()
        retries = con.execute(
            "SELECT step, outcome, split_part(regexp_replace(detail, '^retry in [0-9.]+s after ', ''), "
            "':', 1) AS cause, count(*) FROM ops_log "
            "WHERE run_id = ? AND outcome IN ('retry', 'exhausted', 'source-retry') "
            "GROUP BY ALL ORDER BY 4 DESC",
            [ctx.run_id],
        ).fetchall()
        held = con.execute(
            'SELECT tbl, field, "check", reason, count(*) FROM quarantine WHERE run_id = ? '
            "GROUP BY ALL ORDER BY 5 DESC, 1, 2 LIMIT 200",
            [ctx.run_id],
        ).fetchall()
    return steps, retries, held


def _lags(ctx: SyncContext) -> dict[str, str]:
    """Per table, the lag as ``deltaferry status`` shows it (since the newest change
    published, else since the last publish)."""
    try:
        from deltaferry.status import job_status, lag_text

        return {t: lag_text(s) for t, s in job_status(ctx.job, runs=1)["tables"].items()}
    except Exception as e:  # noqa: BLE001 - reporting never fails a run
        get_run_logger().warning("could not read the lag: %s", e)
        return {}


def _ops(ctx: SyncContext, outcome: str) -> list[tuple[str, str]]:
    """(table, detail) of this run's operations-log entries with that outcome."""
    with ctx.state.connect(read_only=True) as con:
        return con.execute(
            "SELECT coalesce(tbl, ''), detail FROM ops_log WHERE run_id = ? AND outcome = ? "
            "ORDER BY id LIMIT 200",
            [ctx.run_id, outcome],
        ).fetchall()


def _rows_extracted(extracted: ExtractResult | None, table: str) -> int | str:
    rows = extracted.table(table).rows if extracted is not None else None
    return "" if rows is None else rows


def publish_run_report(
    ctx: SyncContext, summary: dict[str, Any], error: BaseException | None = None
) -> None:
    """The run's markdown artifact and, when rows were held back, its quarantine table."""
    try:
        steps, retries, held = _run_facts(ctx)
        job = ctx.job.name
        lines = [
            f"# deltaferry job `{job}`: {'FAILED' if error else 'ok'}",
            "",
            f"trace id `{ctx.trace_id}` (in every manifest of this run) · run id `{ctx.run_id}`",
        ]
        if error is not None:
            lines += ["", f"**Error:** {str(error)[:1500]}"]
        extracted = summary.get("extracted")  # absent when the run failed before it
        lines += [
            "",
            "| table | rows extracted | batch | rows published | upserts | deletes "
            "| quarantined | bytes | contract | lag |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        lags = _lags(ctx)
        for t in ctx.job.tables:
            s = summary.get("tables", {}).get(t.name, {})
            c = ctx.contracts.get(t.name)
            lines.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    t.name,
                    _rows_extracted(extracted, t.name),
                    s.get("batch") or "—",
                    s.get("rows", 0),
                    s.get("upserts", 0),
                    s.get("deletes", 0),
                    s.get("quarantined", 0),
                    s.get("bytes", 0),
                    f"{c.ref} v{c.version}" if c else "",
                    lags.get(t.name, "-"),
                )
            )
        skipped = _ops(ctx, "skipped")
        behind = _ops(ctx, "exceeded")
        if behind:
            lines += ["", "## Lag over max_lag_seconds", ""]
            lines += [f"- **{tbl}**: {detail}" for tbl, detail in behind]
        if skipped:
            lines += ["", "## Inputs set aside", "", "| table | reason |", "|---|---|"]
            lines += [f"| {tbl} | {detail} |" for tbl, detail in skipped]
        if summary.get("recovered"):
            lines += ["", "Recovered from an earlier run: " + "; ".join(summary["recovered"])]
        lines += ["", "## Steps", "", "| step | table | attempts | ms |", "|---|---|---:|---:|"]
        lines += [f"| {s} | {t} | {n} | {ms or 0:.0f} |" for s, t, n, ms in steps]
        lines += ["", "## Retries by cause", ""]
        if retries:
            lines += ["| step | outcome | cause | count |", "|---|---|---|---:|"]
            lines += [f"| {s} | {o} | {c} | {n} |" for s, o, c, n in retries]
        else:
            lines.append("none")
        create_markdown_artifact(
            markdown="\n".join(lines),
            key=artifact_key(job, "run"),
            description=f"deltaferry run of job {job}",
        )
        if held:
            create_table_artifact(
                table=[
                    {"table": t, "field": f, "check": c, "reason": r, "rows": n}
                    for t, f, c, r, n in held
                ],
                key=artifact_key(job, "quarantine"),
                description=f"rows of job {job} held back by their contracts in this run",
            )
    except Exception as e:  # noqa: BLE001 - reporting never fails a run
        get_run_logger().warning("could not write the run report: %s", e)
