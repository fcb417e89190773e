"""The ``deltaferry`` command line: the command group, ``jobs``, ``demo`` and ``new-source``;
the other commands live in ``cli_*.py`` by what they are for and are added here.

Errors a user can meet are printed as one line, without a traceback:
exit 2 for configuration and usage errors, 1 for a failed run (``cli_common.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deltaferry import cli_conflicts as _conflicts
from deltaferry import cli_contracts as _contracts
from deltaferry import cli_lake, cli_ops, cli_run
from deltaferry import cli_quarantine as _quarantine
from deltaferry import cli_runbook as _runbook
from deltaferry import cli_schema as _schema
from deltaferry.cli_common import config_option, emit, new_report, one_line_errors, out
from deltaferry.cli_run import no_cursor_label


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

    report = new_report(
        "job", "source", "lake", "table", "primary key", "cursor", "deletes", "contract"
    )
    for job in load_jobs(config).values():
        for t in job.tables:
            report.add_row(
                job.name,
                job.source,
                job.lake,
                t.name,
                ",".join(t.primary_key),
                t.cursor or no_cursor_label(job.source),
                t.deletes,
                t.contract,
            )
    emit(report)


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
        out.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"next: edit read_records in sources/{name}/__init__.py, then "
        f"`deltaferry run {name}` and `pytest tests/test_source_{name}.py`"
    )


for command in [*cli_run.COMMANDS, *cli_lake.COMMANDS, *cli_ops.COMMANDS]:
    cli.add_command(command)
_conflicts.register(sys.modules[__name__])
_contracts.register(sys.modules[__name__])
_runbook.register(sys.modules[__name__])
_quarantine.register(sys.modules[__name__])
_schema.register(sys.modules[__name__])


def main() -> None:
    from deltaferry.shutdown import end_without_final_collection, interrupted

    end_without_final_collection()  # our own process: no last full GC passes at its exit
    try:
        cli()  # click's standalone mode: always ends in SystemExit
    except SystemExit as done:
        if interrupted() and not done.code:  # a Ctrl-C Python dropped, after the last step
            click.echo("deltaferry: interrupted (Ctrl-C) after its last step", err=True)
            raise SystemExit(130) from None
        raise


if __name__ == "__main__":
    main()
