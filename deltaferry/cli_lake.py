"""``deltaferry pull``, ``verify``, ``gc`` and ``drill``: reading the lake back, checking it and
keeping it clean."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from deltaferry.cli_common import config_option, emit, err, new_report, one_line_errors, out
from deltaferry.errors import DeltaferryError


@click.command()
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
    from deltaferry.consumers import default_consumer_id
    from deltaferry.replica import pull as do_pull
    from deltaferry.shutdown import stop_at_interrupt
    from destinations.lake import open_lake

    stop_at_interrupt()  # a Ctrl-C Python drops still stops the pull before its next batch
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
    table = new_report(
        "table", "batches applied", "rows applied", "replica at batch", title=f"pull {job}"
    )
    for r in results:
        at = (
            str(r.last_batch)
            if r.chains is None
            else " ".join(f"{p}#{b}" for p, b in sorted(r.chains.items())) or "-"
        )
        table.add_row(r.table, str(r.batches), str(r.rows), at)
    emit(table)
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
        if r.reread_partial:
            out.print(
                f"{r.table}: read again the {r.reread_partial} batch(es) applied partially "
                "under an earlier contract: their rows now carry what that read left out",
                highlight=False,
                soft_wrap=True,
            )
        if r.overrides:
            out.print(f"{r.table}: {r.overrides} new conflict override(s) applied", markup=False)
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


def _check_pins(job: str, table: str, entries: list[Any], chain: Any, key: list[str]) -> None:
    """Refuse (VerificationError) a value pin in force that every pull of the table would
    stop at (``resolve.OverrideUnfit``): a value the contract's newest version's column
    cannot hold exactly. A value a reader takes only by a cast (``"12"`` for an integer: an
    entry written by hand, or by an older deltaferry) is said in a note. Unchecked without a
    loadable contract (the note on contracts says so)."""
    from deltaferry.errors import VerificationError
    from deltaferry.overrides import unfit_pins

    if chain is None:
        return
    contract = chain.contract()
    # the strict check finds every pin the lenient one does, and more: most logs have none
    cast = unfit_pins(entries, contract, key, strict=True)
    unfit = unfit_pins(entries, contract, key) if cast else []
    if unfit:
        n, k, column, value = unfit[0]
        raise VerificationError(
            f"job '{job}' table '{table}': override #{n} pins key '{k}' to a row whose "
            f"'{column}' is {value}, which contract {contract.ref} v{contract.version} cannot "
            f"hold exactly: every pull of the table stops at it. Let it go with a later entry: "
            f"deltaferry conflicts override {job} --table {table} --key '{k}' --remove --reason '…'"
        )
    for n, k, column, value in cast:
        out.print(
            f"note: job '{job}' table '{table}': override #{n} (key '{k}') gives '{column}' "
            f"{value}, which readers take by a cast, not as typed: pin the key again with "
            "`conflicts override --value` to write it exactly",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@click.command()
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
@click.option(
    "--incremental",
    is_flag=True,
    help="Verify only the batches after the oldest known position of each chain (what a "
    "--replica pulls next), chained to its manifest (read from the lake for an --at); the "
    "whole chain when none is known.",
)
@one_line_errors
def verify(
    job: str,
    config: str | None,
    oplog: bool,
    replicas: tuple[str, ...],
    at: tuple[str, ...],
    incremental: bool,
) -> None:
    """Check the lake: signatures, manifest chain unbroken, every file present with its sha256,
    row count and change sequence, and the columns of the contract version its manifest
    names (when the job's contract chain has it); and that the lake reaches every known position: each
    --replica's, each --at, and this producer's checkpoint when $DELTAFERRY_HOME holds one.
    The whole chain is read (every object: the cost grows with the lake), or with
    --incremental only what follows the oldest known position. Trusted keys come from
    $DELTAFERRY_KEYS (default $DELTAFERRY_HOME/keys)."""
    from deltaferry import positions as known
    from deltaferry.config import load_job
    from deltaferry.keys import Keyring
    from deltaferry.verify import check_position, producers, verify_table
    from destinations.lake import open_lake
    from destinations.manifest import manifest_key, sha256

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

    from contracts import load_chain

    # each file's columns are checked against the contract version its manifest names; a
    # contract that cannot be loaded here leaves that check out (said in a note)
    contract_chains: dict[str, Any] = {}
    notes: list[str] = []
    for t in cfg.tables:
        try:
            contract_chains[t.name] = load_chain(t.contract, where=f"job '{cfg.name}' table '{t.name}'")
        except DeltaferryError as e:
            contract_chains[t.name] = None
            notes.append(f"note: columns not checked against contracts: {e}")
    keys = {t.name: list(t.primary_key) for t in cfg.tables}

    def verified(table: str, producer: str | None) -> tuple[int, int, str]:
        """verify_table from the oldest known position with --incremental (after
        ``reaches`` checked the lake has it), else from the start; and what was read."""
        mine = [p for p in given if (p.table, p.producer) == (table, producer)]
        start = min(mine, key=lambda p: p.batch) if incremental and mine else None
        if start is None or start.batch == 0:
            n, rows = verify_table(lake, cfg.name, table, producer=producer, chain=contract_chains[table], key=keys[table])
            return n, rows, ""
        sha = start.manifest_sha256
        if sha is None:
            raw = lake.get(manifest_key(cfg.name, table, start.batch, producer))
            sha = sha256(raw) if raw is not None else None
        n, rows = verify_table(
            lake,
            cfg.name,
            table,
            producer=producer,
            after=start.batch,
            prev_sha256=sha,
            chain=contract_chains[table],
            key=keys[table],
        )
        return n, rows, f" after batch {start.batch} ({start.whose})"

    for t in cfg.tables:
        if not cfg.multi_producer:
            # --incremental starts from a position: the lake must reach it first
            where = escape(reaches(t.name, None)) if incremental else None
            n, rows, since = verified(t.name, None)
            where = escape(reaches(t.name, None)) if where is None else where
            out.print(
                f"[green]ok[/] job {cfg.name} table {t.name}: {n} batches, {rows} rows verified"
                + escape(since) + where,
                highlight=False,
                soft_wrap=True,
            )
            continue
        chains = sorted({*producers(lake, cfg.name, t.name)} | {
            p.producer for p in given if p.table == t.name and p.producer
        })  # fmt: skip
        for p in chains:
            # --incremental starts from a position: the lake must reach it first
            where = escape(reaches(t.name, p)) if incremental else None
            n, rows, since = verified(t.name, p)
            where = escape(reaches(t.name, p)) if where is None else where
            out.print(
                f"[green]ok[/] job {cfg.name} table {t.name} producer {p}: {n} batches, "
                f"{rows} rows verified" + escape(since) + where,
                highlight=False,
                soft_wrap=True,
            )
        from deltaferry.overrides import read_overrides

        entries = read_overrides(lake, cfg.name, t.name)
        _check_pins(cfg.name, t.name, entries, contract_chains[t.name], keys[t.name])
        out.print(
            f"[green]ok[/] job {escape(cfg.name)} table {escape(t.name)}: {len(entries)} "
            "conflict overrides verified"
        )
    for note in notes:
        out.print(note, markup=False, highlight=False, soft_wrap=True)
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
        from deltaferry.oplog import verify_oplog
        from deltaferry.state import StateStore

        log_path = deltaferry_home() / cfg.name / "state.duckdb"
        if not log_path.exists():
            raise ConfigError(f"job '{cfg.name}' has no operations log at {log_path}")
        n = verify_oplog(StateStore(cfg.name, log_path, read_only=True))
        out.print(f"[green]ok[/] job {escape(cfg.name)} operations log: {n} entries, hash chain intact")


@click.command()
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
        out.print(f"{verb} {key}: {reason}", markup=False, highlight=False, soft_wrap=True)
    for key in report.aborted_uploads:
        out.print(f"aborted incomplete multipart upload {key}", markup=False, highlight=False, soft_wrap=True)
    for key, why in report.kept_notes:
        out.print(f"kept {key}: {why}", markup=False, highlight=False, soft_wrap=True)
    kept = ", ".join(f"{n} {kind}" for kind, n in sorted(report.kept.items()))
    out.print(
        f"job {cfg.name}: {report.referenced} objects referenced, {len(report.garbage)} garbage "
        f"{verb}, {len(report.kept_in_flight)} recent uncommitted kept, "
        f"{len(report.aborted_uploads)} uploads aborted; kept by kind: {kept or 'nothing'}",
        highlight=False,
        soft_wrap=True,
    )


@click.command()
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
    table = new_report(
        "table",
        "staged live rows",
        "replica rows",
        "held back",
        "not published yet",
        "missing",
        "extra",
        "equal",
    )
    for r in results:
        table.add_row(
            r.table,
            str(r.staged_rows),
            str(r.replica_rows),
            str(r.held_back),
            str(r.pending),
            str(r.missing_in_replica),
            str(r.extra_in_replica),
            "yes" if r.equal else "NO",
        )
    emit(table)
    ok = all(r.equal for r in results)
    out.print(f"drill {'passed' if ok else 'FAILED'} in {seconds:.1f}s", highlight=False)
    waiting = [r.table for r in results if r.pending]
    if waiting:  # left out of the comparison: said, so a pass is not read as more than it is
        out.print(
            "not compared: staged rows the lake has not had yet (the next run publishes "
            f"them, or the run's error says why it cannot): {', '.join(waiting)}",
            highlight=False,
        )
    if not ok:
        sys.exit(1)


COMMANDS = [pull, verify, gc, drill]
