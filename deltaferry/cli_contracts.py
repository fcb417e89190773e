"""``deltaferry contracts``: what each table's contract is and who reads which version.

Registered on the main command group by ``deltaferry/cli.py`` (``register``).
"""

from __future__ import annotations

from types import ModuleType

import click


def register(ui: ModuleType) -> None:
    @ui.cli.group("contracts")
    def contracts() -> None:
        """Contracts of a job's tables and the readers of each version."""

    @contracts.command("list")
    @click.argument("job")
    @ui.config_option
    @ui.one_line_errors
    def list_(job: str, config: str | None) -> None:
        """Per table: contract, version, fingerprint, drift policy; then every reader recorded
        in the lake with the versions it reads, its policy, when it was last seen and whether
        it still counts (reader_timeout_seconds)."""
        from contracts import load_contract
        from deltaferry.config import load_job
        from deltaferry.readers import age_seconds, read_consumers
        from deltaferry.status import human_duration
        from destinations.lake import open_lake

        cfg = load_job(job, config)
        lake = open_lake(cfg.lake, base=cfg.base_dir)
        lake.check()
        report = ui._table(
            "table",
            "contract",
            "version",
            "fingerprint",
            "columns",
            "drift",
            title=f"contracts {job}",
        )
        readers = ui._table(
            "table", "reader", "reads", "policy", "at", "last seen", "counts", title="readers"
        )
        for t in cfg.tables:
            c = load_contract(t.contract, where=f"job '{job}' table '{t.name}'")
            report.add_row(
                t.name, c.ref, f"v{c.version}", c.fingerprint[:16], str(len(c.columns)), cfg.drift
            )
            for r in read_consumers(lake, job, t.name):
                if "error" in r:
                    readers.add_row(t.name, str(r["consumer"]), "-", "-", "-", "-", r["error"])
                    continue
                supports = r.get("supports") or [1]
                age = age_seconds(r)
                counts = age is not None and age <= cfg.reader_timeout_seconds
                readers.add_row(
                    t.name,
                    str(r.get("consumer")),
                    f"v{min(supports)}..v{max(supports)}",
                    str(r.get("policy")),
                    str(r.get("position")),
                    f"{human_duration(age)} ago" if age is not None else "-",
                    "yes" if counts else "no (timed out)",
                )
        ui._emit(report)
        ui._emit(readers)
