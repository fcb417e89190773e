"""``deltaferry plan show|discard`` and ``deltaferry reset``: the ways out of a stopped job
(see ``deltaferry/runbook.py`` and the README's runbook).

Registered on the main command group by ``deltaferry/cli.py`` (``register``).
"""

from __future__ import annotations

from types import ModuleType

import click

from deltaferry.cli_common import config_option, emit, new_report, one_line_errors, out


def register(ui: ModuleType) -> None:
    reason_option = click.option(
        "--reason", required=True, help="Why: written to the operations log with the act."
    )

    @ui.cli.group("plan")
    def plan() -> None:
        """Batches planned here but not committed (a run stopped between plan and checkpoint)."""

    @plan.command("show")
    @click.argument("job")
    @click.option("--table", "tables", multiple=True, help="Only this table (repeatable).")
    @config_option
    @one_line_errors
    def show(job: str, tables: tuple[str, ...], config: str | None) -> None:
        """List each table's planned batch and what the lake holds at its number."""
        from deltaferry.config import load_job
        from deltaferry.runbook import pending_plans

        cfg = load_job(job, config)
        chosen = [cfg.table(n) for n in tables] if tables else list(cfg.tables)
        report = new_report(
            "table",
            "planned batch",
            "rows",
            "keys",
            "loads",
            "manifest sha256",
            "in the lake",
            "checkpoint",
            "lake head",
            title=f"planned batches of {job}",
        )
        found = pending_plans(cfg, chosen)
        for p in found:
            report.add_row(
                p.table,
                str(p.batch),
                str(p.rows),
                p.keys or "all",
                str(len(p.load_ids)),
                p.manifest_sha256[:16],
                p.lake,
                str(p.checkpoint),
                str(p.head),
            )
        if not found:
            out.print(f"job {job}: no planned batch waiting", markup=False, highlight=False)
            return
        emit(report)

    @plan.command("discard")
    @click.argument("job")
    @click.option("--table", required=True, help="The table whose planned batch is forgotten.")
    @reason_option
    @config_option
    @one_line_errors
    def discard(job: str, table: str, reason: str, config: str | None) -> None:
        """Forget a planned batch the lake does not hold; the next run cuts its loads again."""
        from deltaferry.config import load_job
        from deltaferry.runbook import discard_plan

        cfg = load_job(job, config)
        out.print(discard_plan(cfg, cfg.table(table), reason), highlight=False, soft_wrap=True)

    @ui.cli.command("republish")
    @click.argument("job")
    @click.option(
        "--table", required=True, help="The table whose lost batches are published again."
    )
    @click.option(
        "--batch",
        type=click.IntRange(min=1),
        default=None,
        help="Only upload again the data objects of this committed batch (lost or corrupted).",
    )
    @reason_option
    @config_option
    @one_line_errors
    def republish(job: str, table: str, batch: int | None, reason: str, config: str | None) -> None:
        """Publish again the committed batches the lake lost after its head (or, with --batch,
        one batch's data objects), rebuilt from staging and checked byte-identical to what was
        committed; readers go on unchanged."""
        from deltaferry.config import load_job
        from deltaferry.runbook import republish_lost

        cfg = load_job(job, config)
        done = republish_lost(cfg, cfg.table(table), reason, batch)
        out.print(done, highlight=False, soft_wrap=True)

    @ui.cli.command("reset")
    @click.argument("job")
    @click.option(
        "--table",
        "tables",
        required=True,
        multiple=True,
        help="A table whose local position is forgotten (repeatable).",
    )
    @reason_option
    @config_option
    @one_line_errors
    def reset(job: str, tables: tuple[str, ...], reason: str, config: str | None) -> None:
        """Forget each TABLE's local checkpoint, plans and staged rows; the next run adopts the
        lake's head (verified) and reads the source again in full, publishing only real
        change. The lake is not touched."""
        from deltaferry.config import load_job
        from deltaferry.runbook import reset_table

        cfg = load_job(job, config)
        chosen = [cfg.table(name) for name in tables]  # every name checked before any reset
        for t in chosen:
            out.print(reset_table(cfg, t, reason), highlight=False, soft_wrap=True)
