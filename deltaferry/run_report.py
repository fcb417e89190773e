"""The text of a run's and a pull's report, as plain functions: ``flows/report.py`` and
``flows/pull.py`` publish it as Prefect artifacts.

- :func:`run_markdown`: what a sync run did, table by table and step by step, read from the
  run's summary and its rows in the state (operations log, quarantine);
- :func:`held_in_run`: the rows the contracts held back in the run, by table, field, check
  and reason (the quarantine table artifact);
- :func:`pull_markdown`, :func:`pull_summary`: what a pull applied, and the conflicts the
  replica recorded for a job with several producers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltaferry.context import SyncContext
from deltaferry.run import RunSummary


def _run_facts(ctx: SyncContext) -> tuple[list[tuple], list[tuple]]:
    """(step durations, retries by cause) of this run."""
    with ctx.state.connect(read_only=True) as con:
        steps = con.execute(
            "SELECT step, coalesce(tbl, ''), count(*), round(sum(duration_ms)) FROM ops_log "
            f"WHERE run_id = ? AND outcome IN ({_STEP_ATTEMPTS}) GROUP BY ALL ORDER BY min(id)",
            [ctx.run_id],
        ).fetchall()
        retries = con.execute(
            "SELECT step, outcome, split_part(regexp_replace(detail, '^retry in [0-9.]+s after ', ''), "
            "':', 1) AS cause, count(*) FROM ops_log "
            "WHERE run_id = ? AND outcome IN ('retry', 'exhausted', 'source-retry') "
            "GROUP BY ALL ORDER BY 4 DESC",
            [ctx.run_id],
        ).fetchall()
    return steps, retries


def held_in_run(ctx: SyncContext) -> list[dict[str, Any]]:
    """Rows held back in this run by table, field, check and reason: ``{table, field,
    check, reason, rows}``, most first (at most 200)."""
    with ctx.state.connect(read_only=True) as con:
        held = con.execute(
            'SELECT tbl, field, "check", reason, count(*) FROM quarantine WHERE run_id = ? '
            "GROUP BY ALL ORDER BY 5 DESC, 1, 2 LIMIT 200",
            [ctx.run_id],
        ).fetchall()
    return [{"table": t, "field": f, "check": c, "reason": r, "rows": n} for t, f, c, r, n in held]


# ops_log outcomes of a step's attempt (the "Steps" table); every other entry of a run but
# its trace line is a decision: the "Retries by cause", "Inputs set aside", "Lag" sections
# show their own (``source-retry``, ``skipped``, ``exceeded``), "Decisions" the rest
_STEP_ATTEMPTS = "'ok', 'failed', 'retry', 'exhausted'"
_SHOWN_ELSEWHERE = "'source-retry', 'skipped', 'exceeded'"
# a decision's detail in the report (the whole text: ``deltaferry log JOB``)
_DETAIL_CHARS = 600


def _decisions(ctx: SyncContext) -> list[tuple[str, str, str, str]]:
    """(step, table, outcome, detail) of this run's decisions, in the order they were made
    (at most 200): rows held back, keys read twice, wall times, future cursors, tables read
    whole, drift, negotiation, clocks, initial loads, ... (``deltaferry log`` has them all)."""
    with ctx.state.connect(read_only=True) as con:
        return con.execute(
            "SELECT step, coalesce(tbl, ''), outcome, coalesce(detail, '') FROM ops_log "
            f"WHERE run_id = ? AND outcome NOT IN ({_STEP_ATTEMPTS}, {_SHOWN_ELSEWHERE}) "
            "AND step <> 'run' ORDER BY id LIMIT 200",
            [ctx.run_id],
        ).fetchall()


def _cell(text: str) -> str:
    """``text`` as one markdown table cell: one line, pipes escaped, at most
    ``_DETAIL_CHARS`` characters."""
    one = " ".join(str(text).split())
    if len(one) > _DETAIL_CHARS:
        one = one[: _DETAIL_CHARS - 1] + "…"
    return one.replace("|", "\\|")


def _section(title: str, header: list[str], rows: list[tuple], numbers: int = 0) -> list[str]:
    """A report section: ``## title`` and a markdown table of ``rows`` (each cell one line,
    ``_cell``; the last ``numbers`` columns right-aligned), or ``none``."""
    lines = ["", f"## {title}", ""]
    if not rows:
        return [*lines, "none"]
    align = ["---"] * (len(header) - numbers) + ["---:"] * numbers
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]


def _ops(ctx: SyncContext, outcome: str) -> list[tuple[str, str]]:
    """(table, detail) of this run's operations-log entries with that outcome."""
    with ctx.state.connect(read_only=True) as con:
        return con.execute(
            "SELECT coalesce(tbl, ''), detail FROM ops_log WHERE run_id = ? AND outcome = ? "
            "ORDER BY id LIMIT 200",
            [ctx.run_id, outcome],
        ).fetchall()


def run_lags(ctx: SyncContext) -> dict[str, str]:
    """Per table, the lag as ``deltaferry status`` shows it (since the newest change
    published, else since the last publish)."""
    from deltaferry.status import job_status, lag_text

    return {t: lag_text(s) for t, s in job_status(ctx.job, runs=1)["tables"].items()}


def _rows_extracted(summary: RunSummary, table: str) -> int | str:
    rows = summary.extracted.table(table).rows if summary.extracted is not None else None
    return "" if rows is None else rows


def run_markdown(
    ctx: SyncContext,
    summary: RunSummary,
    error: BaseException | None = None,
    lags: dict[str, str] | None = None,
) -> str:
    """The run's report: outcome and error, a row per table (rows extracted, batch, rows
    published, upserts, deletes, quarantined, bytes, contract, lag from ``lags``), tables
    over their lag limit, inputs set aside, recovery, the run's decisions (operations-log
    entries that are no step attempt: rows held back, keys read twice, drift, ...), step
    attempts and durations, retries by cause."""
    steps, retries = _run_facts(ctx)
    steps = [(s, t, n, f"{ms or 0:.0f}") for s, t, n, ms in steps]
    job = ctx.job.name
    lines = [
        f"# deltaferry job `{job}`: {'FAILED' if error else 'ok'}",
        "",
        f"trace id `{ctx.trace_id}` (in every manifest of this run) · run id `{ctx.run_id}`",
    ]
    if error is not None:
        lines += ["", f"**Error:** {str(error)[:1500]}"]
    lines += [
        "",
        "| table | rows extracted | batch | rows published | upserts | deletes "
        "| quarantined | bytes | contract | lag |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    lags = lags or {}
    for t in ctx.job.tables:
        s = summary.tables.get(t.name, {})
        c = ctx.contracts.get(t.name)
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                t.name,
                _rows_extracted(summary, t.name),
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
        lines += _section("Inputs set aside", ["table", "reason"], skipped)
    if summary.recovered:
        lines += ["", "Recovered from an earlier run: " + "; ".join(summary.recovered)]
    lines += _section("Decisions", ["step", "table", "what", "why"], _decisions(ctx))
    lines += _section("Steps", ["step", "table", "attempts", "ms"], steps, numbers=2)
    lines += _section("Retries by cause", ["step", "outcome", "cause", "count"], retries, numbers=1)
    return "\n".join(lines)


def pull_markdown(job: str, replica: str, results: list[Any]) -> str:
    """A pull's report: per table the batches and rows applied and where the replica is
    now, the tables that stopped and why, and (several producers) the conflicts."""
    from deltaferry import conflicts, duck

    lines = [
        f"# Pull of job `{job}` into `{replica}`",
        "",
        "| table | batches applied | rows applied | replica at |",
        "|---|---:|---:|---|",
    ]
    for r in results:
        at = (
            str(r.last_batch)
            if r.chains is None
            else " ".join(f"{p}#{b}" for p, b in sorted(r.chains.items()))
        )
        lines.append(f"| {r.table} | {r.batches} | {r.rows} | {at} |")
    stopped = [f"- **{r.table} stopped:** {r.error}" for r in results if r.error]
    if stopped:
        lines += ["", *stopped]
    text = "\n".join(lines) + "\n"
    if any(r.chains is not None for r in results):
        con = duck.connect_replica(Path(replica), read_only=True)
        try:
            text += "\n" + conflicts.conflicts_markdown(con, job, level=2)
        finally:
            con.close()
    return text


def pull_summary(results: list[Any]) -> dict[str, Any]:
    """What the pull flow returns: per table, batches and rows applied, chains, overrides."""
    return {
        r.table: {
            "batches": r.batches,
            "rows": r.rows,
            "chains": r.chains,
            "overrides": r.overrides,
        }
        for r in results
    }
