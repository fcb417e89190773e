"""``deltaferry status``, ``report``, ``keys`` and ``iam-policy``: what operators read, and the
keys and permissions a job runs with."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from deltaferry.cli_common import (
    config_option,
    emit,
    new_report,
    one_line_errors,
    out,
    runs_of,
    runs_option,
)


@click.group()
def keys() -> None:
    """Manage the Ed25519 keys that sign manifests ($DELTAFERRY_KEYS, default $DELTAFERRY_HOME/keys)."""


@keys.command("generate")
@one_line_errors
def keys_generate() -> None:
    """Create a signing key (it becomes active if no key is)."""
    from deltaferry.keys import Keyring

    info = Keyring().generate()
    out.print(f"generated {info.key_id} ({info.status})")


@keys.command("rotate")
@one_line_errors
def keys_rotate() -> None:
    """Create a new active key; the previous key is retired but still verifies its batches."""
    from deltaferry.keys import Keyring

    info = Keyring().rotate()
    out.print(f"rotated: {info.key_id} is now active")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--at", "at", default=None, help="Revocation point (ISO 8601 time); default now.")
@one_line_errors
def keys_revoke(key_id: str, at: str | None) -> None:
    """Revoke KEY_ID: manifests it signed from the revocation point on fail verification."""
    from deltaferry.keys import Keyring

    info = Keyring().revoke(key_id, at)
    out.print(f"revoked {info.key_id} from {info.revoked_at}")


@keys.command("list")
@one_line_errors
def keys_list() -> None:
    """List keys with their status."""
    from deltaferry.keys import Keyring

    table = new_report("key id", "status", "created", "revoked from")
    for k in Keyring().keys.values():
        table.add_row(k.key_id, k.status, k.created_at, k.revoked_at or "-")
    emit(table)


@keys.command("export")
@one_line_errors
def keys_export() -> None:
    """Print the public keyring (keyring.json) for readers on other machines."""
    from deltaferry.keys import Keyring

    click.echo(Keyring().export())


@click.command("iam-policy")
@click.argument("job")
@config_option
@click.option("--gc", "gc", is_flag=True, help="Also allow deletes (for garbage collection only).")
@one_line_errors
def iam_policy(job: str, config: str | None, gc: bool) -> None:
    """Print a least-privilege IAM policy for JOB's S3 lake."""
    from deltaferry.config import load_job
    from destinations.iam import policy_for

    click.echo(json.dumps(policy_for(load_job(job, config), allow_delete=gc), indent=2))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@runs_option
@config_option
@one_line_errors
def status(as_json: bool, runs: int, config: str | None) -> None:
    """Per job and table: last batch, rows, last success, pending batch, quarantine, lag;
    over the last runs: batch sizes with a sparkline of rows per batch, quarantine and
    retry rates, runs ok/failed."""
    from deltaferry.config import load_jobs
    from deltaferry.status import STATUS_COLUMNS, job_status, status_rows

    report = [job_status(j, runs) for j in load_jobs(config).values()]
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    table = new_report(*STATUS_COLUMNS)
    for row in status_rows(report):
        table.add_row(*row)
    emit(table)


@click.command("report")
@click.argument("job")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, writable=True),
    required=True,
    help="HTML file to write (self-contained: inline SVG charts, no scripts).",
)
@runs_option
@config_option
@one_line_errors
def report_command(job: str, out_path: str, runs: int, config: str | None) -> None:
    """Write an HTML report of JOB over its last runs: rows and quarantined rows per batch,
    step durations per run, retries by cause, lag, and the numbers of `status`."""
    from deltaferry.config import load_job
    from deltaferry.report_html import write_report

    path = write_report(load_job(job, config), Path(out_path), runs=runs)
    out.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)


@click.command("log")
@click.argument("job")
@click.option("--table", "tables", multiple=True, help="Only entries of this table (repeatable).")
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    help="Only entries with this outcome (repeatable): ok, retry, failed, read-again, ...",
)
@runs_of(1, "How many of the last runs (and operator commands) to show.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_option
@one_line_errors
def log_command(
    job: str,
    tables: tuple[str, ...],
    outcomes: tuple[str, ...],
    runs: int,
    as_json: bool,
    config: str | None,
) -> None:
    """JOB's operations log, oldest entry first: every step and attempt of its last runs and
    operator commands, and why (retries and their causes, tables read again whole, rows
    held back, keys read twice, resets)."""
    from deltaferry.config import load_job
    from deltaferry.oplog import LOG_COLUMNS, recent_entries

    config_job = load_job(job, config)
    for name in tables:
        config_job.table(name)  # a name the job does not have: one line, exit 2
    entries = recent_entries(config_job, runs=runs, tables=tables, outcomes=outcomes)
    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
        return
    report = new_report(*LOG_COLUMNS, title=f"job {job}: operations log")
    for e in entries:
        report.add_row(*("" if e[c] is None else str(e[c]) for c in LOG_COLUMNS))
    emit(report)


COMMANDS = [keys, iam_policy, status, report_command, log_command]
