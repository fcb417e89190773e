"""The ``deltaferry`` command line.

Errors a user can meet are printed as one line, without a traceback:
exit 2 for configuration and usage errors, 1 for a failed run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deltaferry import cli_conflicts as _conflicts
from deltaferry import cli_contracts as _contracts
from deltaferry import cli_quarantine as _quarantine
from deltaferry import cli_runbook as _runbook
from deltaferry import cli_schema as _schema
from deltaferry.errors import ConfigError, DeltaferryError
from deltaferry.settings import from_env

F = TypeVar("F", bound=Callable[..., Any])
out = Console()
err = Console(stderr=True)


def one_line_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = False
        try:
            debug = from_env().debug  # a bad DELTAFERRY_* value: one line, exit 2
            return fn(*args, **kwargs)
        except DeltaferryError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except Exception as e:
            if debug:
                raise
            err.print(
                f"[bold red]error:[/] {type(e).__name__}: {escape(str(e))} "
                "(set DELTAFERRY_DEBUG=1 for a traceback)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Jobs file (default: $DELTAFERRY_CONFIG, then ./deltaferry.toml).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deltaferry")
def cli() -> None:
    """deltaferry: checkpointed, verifiable incremental sync from SQL databases, REST APIs and
    file drops to an S3 lake, and back into replicas.

    State lives under $DELTAFERRY_HOME (default ./.deltaferry). Start with `deltaferry demo`.
    """


@cli.command()
@config_option
@one_line_errors
def jobs(config: str | None) -> None:
    """List jobs and their tables from the jobs file."""
    from deltaferry.config import load_jobs

    table = _table("job", "source", "lake", "table", "primary key", "cursor", "deletes", "contract")
    for job in load_jobs(config).values():
        for t in job.tables:
            table.add_row(
                job.name,
                job.source,
                job.lake,
                t.name,
                ",".join(t.primary_key),
                t.cursor or _no_cursor_label(job.source),
                t.deletes,
                t.contract,
            )
    _emit(table)


@cli.command()
@click.argument("job")
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Also print Prefect's flow and task run logs.")
@one_line_errors
def run(job: str, config: str | None, verbose: bool) -> None:
    """Run one sync of JOB: extract, validate, publish, checkpoint (a Prefect flow)."""
    from deltaferry.config import load_job
    from deltaferry.context import preflight_job

    if not verbose:
        _quiet_prefect_console()
    # configuration problems surface here, as one line, before Prefect starts
    preflight_job(load_job(job, config))
    from flows.sync import sync_job

    with out.status(f"syncing job [bold]{job}[/] ..."):
        summary = sync_job(job=job, config=config)  # the flow tags its own run
    _print_run_summary(summary)


@cli.command("run-all")
@config_option
@click.option("--job", "only", multiple=True, help="Only these jobs (repeatable; default all).")
@click.option(
    "--workers", default=2, show_default=True, help="Worker processes of the local Dask cluster."
)
@click.option(
    "--dask-address",
    default=None,
    help="An existing Dask scheduler (tcp://host:8786) instead of a local cluster.",
)
@one_line_errors
def run_all(
    config: str | None, only: tuple[str, ...], workers: int, dask_address: str | None
) -> None:
    """Sync several jobs at once on Dask workers (prefect-dask); exit 1 if any failed."""
    from deltaferry.config import config_path, load_jobs
    from deltaferry.context import preflight_job

    if workers < 1:
        raise ConfigError("--workers must be 1 or more")
    path = config_path(config).resolve()
    jobs = load_jobs(path)
    names = list(only) or sorted(jobs)
    for name in names:
        if name not in jobs:
            raise ConfigError(f"unknown job '{name}' (known: {', '.join(sorted(jobs))})")
    results: dict[str, Any] = {}
    runnable = []
    for name in names:  # a job that cannot start is reported; the others still run
        try:
            preflight_job(jobs[name])
            runnable.append(name)
        except DeltaferryError as e:
            results[name] = {"job": name, "error": str(e)}
    from flows.parallel import run_parallel

    _quiet_prefect_console()
    if runnable:
        with out.status(f"syncing {len(runnable)} job(s) on Dask ..."):
            results.update(run_parallel(runnable, str(path), workers=workers, address=dask_address))
    failed = []
    for name in names:
        r = results.get(name) or {}
        if "error" in r:
            failed.append(name)
            err.print(f"[bold red]error:[/] job {name}: {escape(r['error'])}", highlight=False)
        else:
            _print_run_summary(r)
    if failed:
        sys.exit(1)


@cli.command()
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


class _Report:
    """Rows for the terminal (a rich table) or for another program (tab-separated lines)."""

    def __init__(self, headers: tuple[str, ...], title: str | None) -> None:
        self.headers, self.title = headers, title
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(tuple(cells))


def _table(*headers: str, title: str | None = None) -> _Report:
    return _Report(headers, title)


def _emit(report: _Report) -> None:
    """Print a report: a rich table on a terminal; plain tab-separated lines otherwise, so
    nothing is cut to fit a width when the output is piped or captured."""
    if out.is_terminal:
        table = Table(title=report.title)
        for h in report.headers:
            table.add_column(h, overflow="fold")
        for row in report.rows:
            table.add_row(*row)
        out.print(table)
        return
    click.echo("\t".join(report.headers))
    for row in report.rows:
        click.echo("\t".join(row))


def _no_cursor_label(kind: str) -> str:
    from deltaferry.config import source_settings

    return getattr(source_settings(kind), "NO_CURSOR_LABEL", "(full compare)")


def _print_run_summary(summary: dict[str, Any]) -> None:
    table = _table(
        "table",
        "batch",
        "rows",
        "upserts",
        "deletes",
        "quarantined",
        "bytes",
        "manifest",
        title=f"job {summary['job']}",
    )
    extracted = summary.get("extracted")  # deltaferry.extract.ExtractResult
    for name, s in summary["tables"].items():
        # rows held back before staging (a NULL key or cursor) count as quarantined too
        held = extracted.table(name).held if extracted is not None else 0
        if s.get("batch") is None:
            table.add_row(name, "-", "0", "", "", str(held) if held else "", "", "no change")
        else:
            table.add_row(
                name,
                str(s["batch"]),
                str(s["rows"]),
                str(s["upserts"]),
                str(s["deletes"]),
                str(int(s["quarantined"]) + held),
                str(s["bytes"]),
                s["manifest"],
            )
    for r in summary.get("recovered", []):
        out.print(f"recovered: {r}")
    _emit(table)
    # the run went on without these inputs, or without these source columns
    for reason in [*summary.get("skipped", []), *summary.get("drift", {}).values()]:
        err.print(f"[bold yellow]warning:[/] {escape(reason)}", highlight=False, soft_wrap=True)


@cli.command()
@click.argument("job")
@click.option(
    "--replica", type=click.Path(dir_okay=False), required=True, help="Replica DuckDB file."
)
@click.option("--table", "tables", multiple=True, help="Only these tables (repeatable).")
@click.option(
    "--consumer",
    default=None,
    help="This reader's id in the lake (consumers/<id>.json); default <host>-<replica>.",
)
@click.option(
    "--policy",
    type=click.Choice(["strict", "partial"]),
    default="strict",
    show_default=True,
    help="A batch at a newer contract version than this reader knows: stop, or apply the "
    "known columns and flag the batch.",
)
@click.option(
    "--retry-held",
    is_flag=True,
    help="Read again the rows held back for this reader (_deltaferry_held), e.g. after a "
    "migration was fixed in place; done by itself when the reader's contract changes.",
)
@config_option
@one_line_errors
def pull(
    job: str,
    replica: str,
    tables: tuple[str, ...],
    consumer: str | None,
    policy: str,
    retry_held: bool,
    config: str | None,
) -> None:
    """Verify and apply every published batch of JOB not yet in the replica (idempotent).
    A table that stops (a bad batch, a lake behind the replica) does not stop the others;
    it is named in the error line and the exit code is 1."""
    from deltaferry.config import load_job
    from deltaferry.readers import default_consumer_id
    from deltaferry.replica import pull as do_pull
    from destinations.lake import open_lake

    cfg = load_job(job, config)
    for name in tables:
        cfg.table(name)
    lake = open_lake(cfg.lake, base=cfg.base_dir)
    lake.check()
    failed: DeltaferryError | None = None
    with out.status(f"pulling job [bold]{job}[/] into {replica} ..."):
        try:
            results = do_pull(
                cfg,
                lake,
                Path(replica),
                list(tables) or None,
                consumer=consumer or default_consumer_id(Path(replica).stem),
                policy=policy,
                retry_held=retry_held,
            )
        except DeltaferryError as e:  # tables that did not stop were pulled: show them
            if not hasattr(e, "results"):
                raise
            failed, results = e, e.results
    table = _table(
        "table", "batches applied", "rows applied", "replica at batch", title=f"pull {job}"
    )
    for r in results:
        at = (
            str(r.last_batch)
            if r.chains is None
            else " ".join(f"{p}#{b}" for p, b in sorted(r.chains.items())) or "-"
        )
        table.add_row(r.table, str(r.batches), str(r.rows), at)
    _emit(table)
    for r in results:
        if r.migrated:
            out.print(
                f"{r.table}: the reader's contract changed: {r.migrated}",
                highlight=False,
                soft_wrap=True,
            )
        if r.reread:
            out.print(
                f"{r.table}: read again the {r.reread} row(s) held back under an earlier contract "
                f"(or --retry-held): {r.reread - r.still_held} no longer held (applied, or "
                f"superseded by a later change of their key), {r.still_held} still held",
                highlight=False,
                soft_wrap=True,
            )
        if r.overrides:
            out.print(f"{r.table}: {r.overrides} new conflict override(s) applied")
        if r.cautions:
            err.print(
                f"[bold yellow]warning:[/] table {r.table}: {r.cautions} batch(es) published at "
                "another contract version were applied with a caution (columns left out or "
                "kept, rows held back: see the caution column of _deltaferry_batches, or "
                "_deltaferry_chains with several producers)"
                + (f"; {r.held} row(s) held back for this reader" if r.held else ""),
                highlight=False,
                soft_wrap=True,
            )
        if r.warning:
            err.print(
                f"[bold yellow]warning:[/] {escape(r.warning)}", highlight=False, soft_wrap=True
            )
    if failed is not None:
        raise failed  # one line naming the table(s) that stopped; exit 1


@cli.command()
@click.argument("job")
@config_option
@click.option(
    "--oplog", is_flag=True, help="Also check the hash chain of the job's local operations log."
)
@click.option(
    "--replica",
    "replicas",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Check the lake reaches what this replica has applied (repeatable).",
)
@click.option(
    "--at",
    "at",
    multiple=True,
    metavar="TABLE=BATCH",
    help="Check the lake reaches this batch of TABLE (TABLE/PRODUCER=BATCH with several "
    "producers; repeatable).",
)
@one_line_errors
def verify(
    job: str, config: str | None, oplog: bool, replicas: tuple[str, ...], at: tuple[str, ...]
) -> None:
    """Check the lake: signatures, manifest chain unbroken, every file present with its sha256
    and row count; and that the lake reaches every known position: each --replica's, each
    --at, and this producer's checkpoint when $DELTAFERRY_HOME holds one. Trusted keys come
    from $DELTAFERRY_KEYS (default $DELTAFERRY_HOME/keys)."""
    from deltaferry import positions as known
    from deltaferry.config import load_job
    from deltaferry.keys import Keyring
    from deltaferry.verify import check_position, producers, verify_table
    from destinations.lake import open_lake

    cfg = load_job(job, config)
    given = [known.from_option(cfg, text) for text in at]
    for path in replicas:
        given += known.from_replica(cfg, Path(path))
    lake = open_lake(cfg.lake, base=cfg.base_dir)
    lake.check()
    given += known.from_checkpoint(cfg)

    producing = bool(known.from_checkpoint(cfg))  # this host is the job's producer

    def reaches(table: str, producer: str | None) -> str:
        checked = [p for p in given if (p.table, p.producer) == (table, producer)]
        for p in checked:
            check_position(
                lake, cfg.name, table, p.batch, p.manifest_sha256, whose=p.whose, producer=producer
            )
        if producing and producer == cfg.chain:
            # the producer's chain ends exactly where its checkpoint says (no head from
            # elsewhere): what `run` checks before it publishes
            from deltaferry.agreement import check_lake
            from deltaferry.state import StateStore

            state = StateStore(cfg.name, read_only=True)
            check_lake(
                lake, cfg.name, table, state.checkpoint(table), state.pending_plan(table), producer
            )
        return "".join(f"; reaches batch {p.batch} of {p.whose}" for p in checked)

    for t in cfg.tables:
        if not cfg.multi_producer:
            n, rows = verify_table(lake, cfg.name, t.name)
            out.print(
                f"[green]ok[/] job {cfg.name} table {t.name}: {n} batches, {rows} rows verified"
                + escape(reaches(t.name, None)),
                highlight=False,
                soft_wrap=True,
            )
            continue
        chains = sorted({*producers(lake, cfg.name, t.name)} | {
            p.producer for p in given if p.table == t.name and p.producer
        })  # fmt: skip
        for p in chains:
            n, rows = verify_table(lake, cfg.name, t.name, producer=p)
            out.print(
                f"[green]ok[/] job {cfg.name} table {t.name} producer {p}: {n} batches, "
                f"{rows} rows verified" + escape(reaches(t.name, p)),
                highlight=False,
                soft_wrap=True,
            )
        from deltaferry.overrides import read_overrides

        n = len(read_overrides(lake, cfg.name, t.name))
        out.print(f"[green]ok[/] job {cfg.name} table {t.name}: {n} conflict overrides verified")
    if not Keyring().keys:
        out.print(
            "note: this lake is unsigned (no trusted keys): an edit of the newest manifest "
            "cannot be detected without signing keys (`deltaferry keys generate` on the "
            "producer, `keys export` to readers), except against a known position's hash",
            highlight=False,
            soft_wrap=True,
        )
    if not given:
        out.print(
            "note: no known position was given: a deleted newest manifest can only be detected "
            "against one (--replica FILE, --at TABLE=BATCH, or this producer's checkpoint)",
            highlight=False,
            soft_wrap=True,
        )
    if oplog:
        from deltaferry.config import deltaferry_home
        from deltaferry.errors import ConfigError
        from deltaferry.state import StateStore, verify_oplog

        log_path = deltaferry_home() / cfg.name / "state.duckdb"
        if not log_path.exists():
            raise ConfigError(f"job '{cfg.name}' has no operations log at {log_path}")
        n = verify_oplog(StateStore(cfg.name, log_path, read_only=True))
        out.print(f"[green]ok[/] job {cfg.name} operations log: {n} entries, hash chain intact")


@cli.command()
@click.argument("job")
@config_option
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option(
    "--grace-seconds",
    default=3600,
    show_default=True,
    help="Uncommitted objects younger than this may belong to a running writer: kept.",
)
@one_line_errors
def gc(job: str, config: str | None, dry_run: bool, grace_seconds: int) -> None:
    """Remove data objects no manifest names (left by killed or losing writers), temporary
    files of interrupted writes, and incomplete multipart uploads. Manifests, readers'
    records, override logs and unknown objects are always kept. Readers never delete."""
    from deltaferry.config import load_job
    from deltaferry.gc import collect
    from destinations.lake import open_lake

    cfg = load_job(job, config)
    lake = open_lake(cfg.lake, base=cfg.base_dir)
    lake.check()
    report = collect(cfg, lake, grace_seconds=grace_seconds, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for key, reason in report.garbage:
        out.print(f"{verb} {key}: {reason}", highlight=False)
    for key in report.aborted_uploads:
        out.print(f"aborted incomplete multipart upload {key}", highlight=False)
    for key, why in report.kept_notes:
        out.print(f"kept {key}: {why}", highlight=False)
    kept = ", ".join(f"{n} {kind}" for kind, n in sorted(report.kept.items()))
    out.print(
        f"job {cfg.name}: {report.referenced} objects referenced, {len(report.garbage)} garbage "
        f"{verb}, {len(report.kept_in_flight)} recent uncommitted kept, "
        f"{len(report.aborted_uploads)} uploads aborted; kept by kind: {kept or 'nothing'}",
        highlight=False,
        soft_wrap=True,
    )


@cli.command()
@click.argument("job")
@config_option
@one_line_errors
def drill(job: str, config: str | None) -> None:
    """Recovery drill: rebuild a fresh replica from the lake alone (verifying every batch)
    and compare it with the job's staging; exits 1 on any difference."""
    from deltaferry.config import load_job
    from deltaferry.drill import drill as run_drill
    from destinations.lake import open_lake

    cfg = load_job(job, config)
    lake = open_lake(cfg.lake, base=cfg.base_dir)
    lake.check()
    with out.status(f"rebuilding job [bold]{job}[/] from the lake ..."):
        results, seconds = run_drill(cfg, lake)
    table = _table(
        "table", "staged live rows", "replica rows", "held back", "missing", "extra", "equal"
    )
    for r in results:
        table.add_row(
            r.table,
            str(r.staged_rows),
            str(r.replica_rows),
            str(r.held_back),
            str(r.missing_in_replica),
            str(r.extra_in_replica),
            "yes" if r.equal else "NO",
        )
    _emit(table)
    ok = all(r.equal for r in results)
    out.print(f"drill {'passed' if ok else 'FAILED'} in {seconds:.1f}s", highlight=False)
    if not ok:
        sys.exit(1)


@cli.group()
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

    table = _table("key id", "status", "created", "revoked from")
    for k in Keyring().keys.values():
        table.add_row(k.key_id, k.status, k.created_at, k.revoked_at or "-")
    _emit(table)


@keys.command("export")
@one_line_errors
def keys_export() -> None:
    """Print the public keyring (keyring.json) for readers on other machines."""
    from deltaferry.keys import Keyring

    click.echo(Keyring().export())


@cli.command("iam-policy")
@click.argument("job")
@config_option
@click.option("--gc", "gc", is_flag=True, help="Also allow deletes (for garbage collection only).")
@one_line_errors
def iam_policy(job: str, config: str | None, gc: bool) -> None:
    """Print a least-privilege IAM policy for JOB's S3 lake."""
    from deltaferry.config import load_job
    from destinations.iam import policy_for

    click.echo(json.dumps(policy_for(load_job(job, config), allow_delete=gc), indent=2))


runs_option = click.option(
    "--runs",
    "runs",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many of the last runs the batch sizes and rates cover.",
)


@cli.command()
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
    table = _table(*STATUS_COLUMNS)
    for row in status_rows(report):
        table.add_row(*row)
    _emit(table)


@cli.command("report")
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


@cli.command()
@click.option(
    "--rounds",
    default=4,
    show_default=True,
    help="Rounds of source changes, each followed by a sync.",
)
@click.option("--seed", default=7, show_default=True, help="Seed of the change generator.")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Working directory (default: $DELTAFERRY_HOME/demo).",
)
@one_line_errors
def demo(rounds: int, seed: int, workdir: str | None) -> None:
    """Mutate a demo shop database, sync it to an S3 lake, pull a replica, report convergence.

    Starts an S3-compatible server (moto) on loopback unless AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL is set. Exits non-zero if source and replica differ.
    """
    from deltaferry.demo import run_demo

    ok = run_demo(rounds=rounds, seed=seed, workdir=Path(workdir) if workdir else None, console=out)
    sys.exit(0 if ok else 1)


@cli.command("new-source")
@click.argument("name")
@click.option(
    "--table", default=None, help="Table name (default: the sample's file name, or items)."
)
@click.option("--primary-key", default="id", show_default=True, help="Primary key field.")
@click.option(
    "--cursor",
    default="updated_at",
    show_default=True,
    help="Field that grows on every change; left out when the sample lacks it (full compare).",
)
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Sample records (.csv, .jsonl, .json, .parquet): copied as the source's sample and "
    "used to draft contract v1.",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="Project root (holds sources/, contracts/, tests/).",
)
@config_option
@one_line_errors
def new_source(
    name: str,
    table: str | None,
    primary_key: str,
    cursor: str,
    sample: str | None,
    root: str,
    config: str | None,
) -> None:
    """Scaffold source kind NAME: package, contract v1, conformance test and a job entry."""
    from deltaferry.config import config_path
    from deltaferry.scaffold import new_source as scaffold

    written = scaffold(
        name,
        root=Path(root).resolve(),
        jobs_file=config_path(config).resolve(),
        table=table,
        primary_key=primary_key,
        cursor=cursor or None,
        sample=Path(sample) if sample else None,
    )
    for path in written:
        out.print(f"wrote {path}")
    out.print(
        f"next: edit read_records in sources/{name}/__init__.py, then "
        f"`deltaferry run {name}` and `pytest tests/test_source_{name}.py`"
    )


_conflicts.register(sys.modules[__name__])
_contracts.register(sys.modules[__name__])
_runbook.register(sys.modules[__name__])
_quarantine.register(sys.modules[__name__])
_schema.register(sys.modules[__name__])


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
