"""``deltaferry run``, ``run-all`` and ``serve``: syncs started from the command line, and
their terminal output (the run summary; Prefect's and dlt's logs kept off the terminal)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
from rich.markup import escape

from deltaferry.cli_common import (
    config_option,
    emit,
    err,
    new_report,
    one_line_errors,
    out,
    prefect_startup_wait,
)
from deltaferry.errors import ConfigError, DeltaferryError


@click.command()
@click.argument("job")
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Also print Prefect's flow and task run logs.")
@one_line_errors
def run(job: str, config: str | None, verbose: bool) -> None:
    """Run one sync of JOB: extract, validate, publish, checkpoint (a Prefect flow)."""
    from deltaferry.config import load_job
    from deltaferry.context import preflight_job
    from deltaferry.shutdown import stop_at_interrupt

    stop_at_interrupt()  # a Ctrl-C Python drops still stops the run at its next step

    if not verbose:
        _quiet_prefect_console()
    # configuration problems surface here, as one line, before Prefect starts
    preflight_job(load_job(job, config))
    from flows.sync import sync_job

    try:
        with out.status(f"syncing job [bold]{job}[/] ..."), prefect_startup_wait():
            summary = sync_job(job=job, config=config)  # the flow tags its own run
    except DeltaferryError as e:
        if _went_on(e.run_summary):  # what the job's other tables did, then the error line
            _print_run_summary(e.run_summary)  # type: ignore[arg-type]
        raise
    _print_run_summary(summary)


@click.command("run-all")
@config_option
@click.option("--job", "only", multiple=True, help="Only these jobs (repeatable; default all).")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    help="Worker processes on this host (not used with --dask-address).",
)
@click.option(
    "--dask-address",
    default=None,
    help="An existing Dask scheduler (tcp://host:8786) whose workers run the jobs, instead of "
    "worker processes on this host (needs the dask extra: pip install 'deltaferry[dask]').",
)
@one_line_errors
def run_all(
    config: str | None, only: tuple[str, ...], workers: int, dask_address: str | None
) -> None:
    """Sync several jobs at once, each in a worker process; exit 1 if any failed."""
    from deltaferry.config import config_path, load_jobs
    from deltaferry.context import preflight_job
    from deltaferry.shutdown import stop_at_interrupt

    stop_at_interrupt()

    if workers < 1:
        raise ConfigError("--workers must be 1 or more")
    if dask_address:
        from flows.parallel import require_dask

        require_dask(dask_address)  # before any job is looked at: one line, exit 2
    path = config_path(config).resolve()
    jobs = load_jobs(path)
    names = list(dict.fromkeys(only)) or sorted(jobs)  # a job named twice runs once
    for name in names:
        if name not in jobs:
            raise ConfigError(f"unknown job '{name}' (known: {', '.join(sorted(jobs))})")
    from flows.parallel import error_line, run_parallel

    results: dict[str, Any] = {}
    runnable = []
    for name in names:  # a job that cannot start is reported; the others still run
        try:
            preflight_job(jobs[name])
            runnable.append(name)
        except DeltaferryError as e:
            results[name] = {"job": name, "error": error_line(name, e)}

    _quiet_prefect_console()
    if runnable:
        where = f"on Dask at {dask_address}" if dask_address else f"in {workers} worker process(es)"
        with out.status(f"syncing {len(runnable)} job(s) {where} ..."), prefect_startup_wait():
            results.update(run_parallel(runnable, str(path), workers=workers, address=dask_address))
    failed = [name for name in names if "error" in (results.get(name) or {})]
    # the jobs that ran, and what each failed job's other tables did before its error
    shown = [results[n] for n in names if n not in failed and n in results]
    shown += [results[n]["run_summary"] for n in failed if _went_on(results[n].get("run_summary"))]
    _print_all_summaries(shown)
    for name in failed:
        err.print(
            f"[bold red]error:[/] {escape(results[name]['error'])}", highlight=False, soft_wrap=True
        )
    if failed:
        sys.exit(1)


@click.command()
@config_option
@click.option("--job", "only", multiple=True, help="Only these jobs (repeatable).")
@click.option("--limit", type=int, default=None, help="At most this many runs at once.")
@one_line_errors
def serve(config: str | None, only: tuple[str, ...], limit: int | None) -> None:
    """Run every job's schedule from this process (no work pool, no worker) until stopped.

    Jobs need `schedule = <seconds>` or a cron expression in the jobs file. Needs a Prefect
    API (PREFECT_API_URL) that stays up: the schedules live there.
    """
    from deltaferry.config import config_path
    from deltaferry.serve import serve_jobs

    serve_jobs(config_path(config).resolve(), only, limit)


class _LevelPrefix(logging.Formatter):
    """``warning: message``, like the CLI's own ``error:`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _quiet_prefect_console() -> None:
    """Keep the terminal to the run's own lines: Prefect's logs go to the API only, dlt logs
    errors only, and library warnings (Python ``warnings``: deprecations, types a driver does
    not know) are not printed around the one-line error. ``--verbose`` shows them all."""
    # Prefect sets its logging up again when a flow starts; the console handler's level
    # comes from this setting each time (the API handler is not affected)
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
    from prefect.logging.configuration import setup_logging

    setup_logging(incremental=False)
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")  # read when dlt sets up its logger
    logging.getLogger("dlt").setLevel(logging.ERROR)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").propagate = False
    own = logging.getLogger("deltaferry")  # deltaferry's own warnings stay on the terminal
    if not own.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LevelPrefix())
        handler.setLevel(logging.WARNING)
        own.addHandler(handler)
        own.propagate = False


def no_cursor_label(kind: str) -> str:
    from deltaferry.config import source_settings

    return getattr(source_settings(kind), "NO_CURSOR_LABEL", "(full compare)")


def _went_on(summary: dict[str, Any] | None) -> bool:
    """Whether a failed run's summary (``DeltaferryError.run_summary``) shows a table that
    went on (published or had no change) beside the one(s) that stopped it."""
    return bool(summary) and any(not s.get("stopped") for s in summary["tables"].values())  # type: ignore[index]


# the columns of a run's summary, a row per table (run-all puts the job before them)
SUMMARY_COLUMNS = ("table", "batch", "rows", "upserts", "deletes", "quarantined", "bytes", "manifest")


def _summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """A run's summary (``flows.sync.sync_job``'s result) as rows of ``SUMMARY_COLUMNS``."""
    rows = []
    extracted = summary.get("extracted")  # deltaferry.extract.ExtractResult
    for name, s in summary["tables"].items():
        # rows held back before staging (a NULL key or cursor) count as quarantined too
        held = extracted.table(name).held if extracted is not None else 0
        if s.get("batch") is None:
            held += int(s.get("quarantined") or 0)
            what = (
                "stopped (the error below)"
                if s.get("stopped")
                else "held back (deltaferry quarantine list)"
                if s.get("quarantined")
                else "no change"
            )
            rows.append([name, "-", "0", "", "", str(held) if held else "", "", what])
        else:
            rows.append(
                [
                    name,
                    str(s["batch"]),
                    str(s["rows"]),
                    str(s["upserts"]),
                    str(s["deletes"]),
                    str(int(s["quarantined"]) + held),
                    str(s["bytes"]),
                    s["manifest"] + ("; then stopped (the error below)" if s.get("stopped") else ""),
                ]
            )
    return rows


def _print_recovered(summary: dict[str, Any], job: str = "") -> None:
    """What a run recovered (``job``: a prefix naming the job, for run-all)."""
    for r in summary.get("recovered", []):
        out.print(f"recovered: {job}{r}", markup=False, highlight=False, soft_wrap=True)


def _print_warnings(summary: dict[str, Any], job: str = "") -> None:
    """The inputs or source columns a run went on without, the columns it first published as
    their text form, how it read naive times its zone shows twice or never, and staged
    cursor values after now (``job``: a prefix for lines that do not name the job)."""
    extracted = summary.get("extracted")
    read = (
        [
            n
            for t in extracted.tables.values()
            for n in (*t.text_columns, *t.wall_times, *t.future_cursors)
        ]
        if extracted
        else []
    )
    for reason in [*summary.get("skipped", []), *summary.get("drift", {}).values(), *read]:
        line = reason if reason.startswith("job '") else f"{job}{reason}"
        err.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _print_run_summary(summary: dict[str, Any]) -> None:
    table = new_report(*SUMMARY_COLUMNS, title=f"job {summary['job']}")
    for row in _summary_rows(summary):
        table.add_row(*row)
    _print_recovered(summary)
    emit(table)
    _print_warnings(summary)


def _print_all_summaries(summaries: list[dict[str, Any]]) -> None:
    """run-all's jobs that ran, in one report whose rows start with the job (piped, two
    jobs' tables of one name stay apart), then what each recovered or went on without."""
    if not summaries:
        return
    table = new_report("job", *SUMMARY_COLUMNS, title="run-all")
    for summary in summaries:
        for row in _summary_rows(summary):
            table.add_row(summary["job"], *row)
    emit(table)
    for summary in summaries:
        job = f"job '{summary['job']}': "
        _print_recovered(summary, job)
        _print_warnings(summary, job)


COMMANDS = [run, run_all, serve]
