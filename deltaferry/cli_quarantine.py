"""``deltaferry quarantine``: list the rows a job holds back; release them for validation again.

Registered on the main command group by ``deltaferry/cli.py`` (``register``); the helpers
it shares with the other commands (one-line errors, report tables) are in ``cli_common.py``.

A held row stays in staging as it was held. The next ``deltaferry run`` validates it
again against the table's contract when the contract changed since it was held (a new
version, a relaxed check), or when ``quarantine release`` asked for it; rows that pass
are published in that run's batch (once: their record is resolved by the batch), rows
that fail are held again. A newer version of a held key, extracted later, replaces it.
"""

from __future__ import annotations

import json
from types import ModuleType

import click

from deltaferry.cli_common import config_option, emit, new_report, one_line_errors, out

# records ``quarantine list`` shows unless told otherwise: a batch held back whole holds a
# record a row, and a million-line table helps no one at the terminal
LIST_LIMIT = 100


class _JobFirstGroup(click.Group):
    """``quarantine JOB`` lists; ``quarantine release JOB ...`` releases. A first argument
    that is not a subcommand is the job of the default ``list`` command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


def _key_text(row: dict) -> str:
    """A record's key as ``col=value, ...`` (text quoted, ``code='a, b=c'``, so a composite
    key reads one way only; NULL parts as NULL); for rows held without a key, how many
    source rows share the record and the first one's values, since the key alone does not
    say which rows they are."""
    from deltaferry.quarantine import UNKEYED  # not at import: it brings DuckDB and Arrow

    key = json.loads(row["pk"])
    text = ", ".join(f"{k}={'NULL' if v is None else repr(v)}" for k, v in key.items())
    if row["load_id"] != "held" or row["check"] != UNKEYED:
        return text
    values = json.loads(row["row_json"] or "{}")
    shown = ", ".join(
        f"{k}={'NULL' if v is None else repr(v)}" for k, v in values.items() if k not in key
    )
    if len(shown) > 120:
        shown = shown[:117] + "..."
    n = row.get("source_rows") or 1
    rows = f"{n} source rows, the first" if n > 1 else "the row"
    return f"{text} ({rows}: {shown})" if shown else text


def _when_next(row: dict, fingerprint: str | None) -> str:
    """When the next run validates a held record again, in words."""
    from deltaferry.quarantine import UNKEYED  # not at import: it brings DuckDB and Arrow

    if row["load_id"] == "held":
        if row["check"] == UNKEYED:
            return (
                "when it has a key, by the next run (a table with a cursor reads the rows at "
                "the cursor values of rows held without a key again each run); never staged"
            )
        if row["check"] == "cursor not null":
            return (
                "when the row has a cursor value and is staged (a SQL table reads it again by "
                "key each run; a REST API with cursor_param sends it again with a value newer "
                "than the newest synced, and a whole read finds it with an older one: the run "
                "after the API stops sending it, a full_read_every, a reset); never staged"
            )
        return "read again at the source (never staged)"
    if row["release"] is not None:
        return f"next run (released: {row['release']})"
    if fingerprint is not None and row["contract"] != fingerprint:
        return "next run (contract changed)"
    return "when the contract changes, the row changes, or on release"


def register(ui: ModuleType) -> None:
    @ui.cli.group("quarantine", cls=_JobFirstGroup)
    def quarantine() -> None:
        """Rows a job holds back: `deltaferry quarantine list JOB [--table T]` shows them;
        `deltaferry quarantine release JOB --table T --reason TEXT` has the next run
        validate them against the current contract and publish those that pass."""

    @quarantine.command("list")
    @click.argument("job")
    @click.option("--table", default=None, help="Only this table.")
    @click.option("--all", "everything", is_flag=True, help="Also records already resolved.")
    @click.option(
        "--limit",
        type=click.IntRange(min=0),
        default=LIST_LIMIT,
        show_default=True,
        help="List at most this many records, oldest first (0: all); the rest are counted by check.",
    )
    @config_option
    @one_line_errors
    def list_(
        job: str, table: str | None, everything: bool, limit: int, config: str | None
    ) -> None:
        """List held rows: table, key, field, check, reason, since, and when they are
        validated again (one row per record; `--all` adds resolved ones and by what).
        A list longer than `--limit` ends with the records counted by table, field and
        check (a batch held back whole holds a record a row)."""
        from contracts import load_chain
        from deltaferry.config import load_job
        from deltaferry.negotiate import held_under_contract
        from deltaferry.state import StateStore

        cfg = load_job(job, config)
        tables = [cfg.table(table)] if table else list(cfg.tables)
        state = StateStore(job, read_only=True)
        report = new_report(
            "table", "key", "field", "check", "reason", "held since", "validated again",
            title=f"quarantine {job}",
        )  # fmt: skip
        counts = [c for t in tables for c in state.quarantine_counts(t.name, not everything)]
        held = sum(c[4] for c in counts)
        total = sum(c[3] for c in counts)
        fingerprints: dict[str, str | None] = {}
        for t in tables:
            try:
                chain = load_chain(t.contract, where=f"job '{job}' table '{t.name}'")
                fingerprints[t.name] = held_under_contract(cfg, t, chain)
            except Exception:  # noqa: BLE001 - a broken contract must not hide the list
                fingerprints[t.name] = None
        # the oldest records of all the tables listed, not the first tables' first
        rows = state.quarantine_rows(
            [t.name for t in tables], held_only=not everything, limit=limit or None
        )
        for r in rows:
            when = (
                _when_next(r, fingerprints.get(r["tbl"]))
                if r["resolved"] is None
                else f"resolved: {r['resolved']}"
            )
            report.add_row(
                r["tbl"],
                _key_text(r),
                r["field"] or "-",
                r["check"] or "-",
                r["reason"] or "-",
                r["ts"].isoformat(timespec="seconds"),
                when,
            )
        emit(report)
        resolved = f", {total - held} resolved" if everything else ""
        if len(rows) < total:
            out.print(
                f"{held} held record(s){resolved}; listed the oldest {len(rows)} of {total} "
                "(--limit 0 lists all); by table, field and check:",
                soft_wrap=True,
            )
            for tbl, field, check, n, open_ in counts:
                still = f" ({open_} held)" if everything else ""
                out.print(
                    f"  {tbl}  {field or '-'}  {check or '-'}: {n} record(s){still}",
                    soft_wrap=True,
                    highlight=False,
                )
        else:
            out.print(f"{held} held record(s){resolved}", soft_wrap=True)

    @quarantine.command("release")
    @click.argument("job")
    @click.option("--table", required=True, help="The table whose held rows are released.")
    @click.option("--reason", default="released by operator", help="Why (operations log).")
    @config_option
    @one_line_errors
    def release(job: str, table: str, reason: str, config: str | None) -> None:
        """Have the next `deltaferry run` validate the table's held rows against the
        current contract, whatever contract they were held under, and publish those that
        pass (rows that fail are held again). Recorded in the operations log."""
        from deltaferry.config import load_job
        from deltaferry.state import StateStore

        cfg = load_job(job, config)
        cfg.table(table)
        state = StateStore(job)
        n = state.request_release(table, reason)
        detail = (
            f"job '{job}' table '{table}': {n} held key(s) released for validation against the "
            f"current contract in the next `deltaferry run {job}` ({reason})"
        )
        state.log("quarantine-release", "quarantine-release", "info", table=table, detail=detail)
        out.print(detail)
