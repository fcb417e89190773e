"""``deltaferry contracts``: what each table's contract is and who reads which version.

Registered on the main command group by ``deltaferry/cli.py`` (``register``).
"""

from __future__ import annotations

from types import ModuleType

import click

from deltaferry.cli_common import config_option, emit, err, new_report, one_line_errors, out


def register(ui: ModuleType) -> None:
    @ui.cli.group("contracts")
    def contracts() -> None:
        """Contracts of a job's tables and the readers of each version."""

    @contracts.command("list")
    @click.argument("job")
    @config_option
    @one_line_errors
    def list_(job: str, config: str | None) -> None:
        """Per table: contract, version, fingerprint, drift policy; then every reader recorded
        in the lake with the versions it reads, its policy, when it was last seen and whether
        it still counts (reader_timeout_seconds)."""
        from contracts import load_chain
        from deltaferry.config import load_job
        from deltaferry.consumers import age_seconds, read_consumers
        from deltaferry.status import human_duration
        from destinations.lake import open_lake

        cfg = load_job(job, config)
        lake = open_lake(cfg.lake, base=cfg.base_dir)
        lake.check()
        report = new_report(
            "table",
            "contract",
            "version",
            "fingerprint",
            "columns",
            "deprecated",
            "drift",
            title=f"contracts {job}",
        )
        readers = new_report(
            "table",
            "reader",
            "reads",
            "policy",
            "at",
            "partial batches",
            "last seen",
            "counts",
            title="readers",
        )
        for t in cfg.tables:
            chain = load_chain(t.contract, where=f"job '{job}' table '{t.name}'")
            for v in chain.versions:
                c = chain.contract(v)
                gone = ", ".join(f"{f} (goes in v{n})" for f, n in sorted(c.deprecated.items()))
                report.add_row(
                    t.name,
                    c.ref,
                    f"v{v}",
                    c.fingerprint[:16],
                    str(len(c.columns)),
                    gone or "-",
                    cfg.drift,
                )
            for r in read_consumers(lake, job, t.name):
                if "error" in r:
                    readers.add_row(t.name, str(r["consumer"]), "-", "-", "-", "-", "-", r["error"])
                    continue
                supports = r.get("supports") or [1]
                age = age_seconds(r)
                counts = age is not None and age <= cfg.reader_timeout_seconds
                verdict = "yes" if counts else "no (timed out)"
                if r.get("stuck"):
                    verdict = "no (stopped at a batch it cannot apply)"
                readers.add_row(
                    t.name,
                    str(r.get("consumer")),
                    f"v{min(supports)}..v{max(supports)}",
                    str(r.get("policy")),
                    str(r.get("position")),
                    str(r.get("partial_batches", 0)),
                    f"{human_duration(age)} ago" if age is not None else "-",
                    verdict,
                )
        emit(report)
        emit(readers)

    @contracts.command("lint")
    @click.argument("job")
    @config_option
    @one_line_errors
    def lint(job: str, config: str | None) -> None:
        """Check every table's contract chain: each version after the first has an upgrade,
        and no version still has a field deprecated to go away by then. Exit 1 on errors."""
        import sys

        from deltaferry.config import load_job

        cfg = load_job(job, config)
        failed = False
        for t in cfg.tables:
            _, chain = _chain(cfg, t.name)
            errors, notes = lint_chain(chain)
            for e in errors:
                err.print(
                    f"error: job '{job}' table '{t.name}': {e}", highlight=False, soft_wrap=True
                )
            for n in notes:
                out.print(
                    f"note: job '{job}' table '{t.name}': {n}", highlight=False, soft_wrap=True
                )
            failed |= bool(errors)
            if not errors:
                out.print(
                    f"ok job {job} table {t.name}: {chain.ref} "
                    f"v{chain.versions[0]}..v{chain.latest}",
                    highlight=False,
                )
        if failed:
            sys.exit(1)

    @contracts.command("simulate")
    @click.argument("job")
    @click.option("--table", required=True, help="The table to simulate.")
    @click.option("--to", "to", type=int, required=True, help="The contract version to migrate to.")
    @click.option("--limit", type=int, default=None, help="Only the first N staged rows.")
    @config_option
    @one_line_errors
    def simulate(job: str, table: str, to: int, limit: int | None, config: str | None) -> None:
        """Migrate the table's staged rows from the source's version to --to and validate them,
        publishing nothing: rows, migrations, failures by field and check, time and memory.
        A row a migration refuses (``contracts.MigrationError``) is a failure too: its check
        is the step (``v2->v1 downgrade``), its field the column whose value it refused.
        Exit 1 when rows fail; exit 2 when the migration cannot run at all."""
        import sys
        import time
        import tracemalloc

        from contracts import MigrationError
        from deltaferry import duck
        from deltaferry.config import load_job
        from deltaferry.cut import delete_conditions
        from deltaferry.errors import ConfigError
        from deltaferry.negotiate import contract_version, source_version
        from sources.columns import INTERNAL_COLUMNS, STAGING_DATASET
        from sources.staging import staged_columns, staging_path

        cfg = load_job(job, config)
        t, chain = _chain(cfg, table)
        start = source_version(cfg, t, chain)
        target = contract_version(cfg, t, chain, to)
        if not chain.reachable(start, to):
            raise ConfigError(
                f"job '{job}' table '{table}': v{to} cannot be reached from the source's v{start} "
                f"({', '.join(chain.steps(start, to))}: a downgrade is missing)"
            )
        path = staging_path(job)
        if not path.exists():
            raise ConfigError(f"job '{job}' has no staging yet ({path}): run it once first")
        tracemalloc.start()
        t0 = time.perf_counter()
        con = duck.connect(path, read_only=True, alias="staging")
        try:
            cols = [
                c
                for c in staged_columns(con, table)
                if c not in INTERNAL_COLUMNS and not c.startswith("_dlt")
            ]
            if not cols:
                raise ConfigError(f"job '{job}' table '{table}' has nothing staged")
            select = ", ".join(duck.ident(c) for c in cols)
            # deletes carry only their key: nothing to validate
            deleted = delete_conditions(t, staged_columns(con, table))
            sql = (
                f"SELECT {select} FROM {STAGING_DATASET}.{duck.ident(table)} WHERE "
                + (f"NOT ({' OR '.join(deleted)})" if deleted else "true")
                + (f" LIMIT {int(limit)}" if limit else "")
            )
            frame = con.execute(sql).to_arrow_table().to_pandas()
        finally:
            con.close()
        try:  # rows a migration refuses (MigrationError) are failures like any other
            migrated, _, refused = chain.migrate_rows(frame, start, to)
        except (MigrationError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(
                f"job '{job}' table '{table}': migrating v{start} -> v{to} failed: "
                f"{type(e).__name__}: {e}"
            ) from None
        result = target.validate(migrated) if len(migrated) else None
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        counts: dict[tuple[str, str], set[int]] = {}
        for f in refused:
            counts.setdefault((f.field or "<row>", f.check), set()).add(f.row)
        invalid = 0
        if result is not None:
            invalid = len(result.failed_rows)
            for f in result.schema_failures:  # a failure of the whole column fails every row
                counts.setdefault((f.field or "<table>", f.check), set()).update(range(len(migrated)))
            for i, fails in result.row_failures.items():
                for f in fails:
                    counts.setdefault((f.field or "<table>", f.check), set()).add(i)
        unmigrated = len({f.row for f in refused})
        why = f" ({refused[0].check}: {refused[0].reason})" if refused else ""
        out.print(
            f"job {job} table {table}: {len(frame)} rows migrated v{start} -> v{to} "
            f"({', '.join(chain.steps(start, to)) or 'no migration'}); "
            + (f"{unmigrated} refused by the migration{why}; " if refused else "")
            + f"{invalid} fail contract {target.ref} v{to}; "
            f"{seconds:.3f} s, peak {peak / 1e6:.1f} MB",
            highlight=False,
            soft_wrap=True,
        )
        if counts:
            report = new_report("field", "check", "rows", title="failures")
            for (field, check), rows in sorted(counts.items(), key=lambda kv: -len(kv[1])):
                report.add_row(field, check, str(len(rows)))
            emit(report)
            sys.exit(1)

    @contracts.command("rollback")
    @click.argument("job")
    @click.option("--table", required=True, help="The table whose batches to pin.")
    @click.option(
        "--to", "to", type=int, default=None, help="Publish later batches at this version."
    )
    @click.option("--release", is_flag=True, help="Remove the pin: negotiate with readers again.")
    @click.option("--reason", required=True, help="Why (kept in the operations log).")
    @config_option
    @one_line_errors
    def rollback(
        job: str, table: str, to: int | None, release: bool, reason: str, config: str | None
    ) -> None:
        """Publish the table's later batches at an earlier contract version (or, with
        --release, let negotiation choose again). Recorded in the operations log."""
        from deltaferry.config import load_job
        from deltaferry.errors import ConfigError
        from deltaferry.negotiate import contract_version, source_version
        from deltaferry.state import StateStore

        cfg = load_job(job, config)
        t, chain = _chain(cfg, table)
        where = f"job '{job}' table '{table}'"
        if (to is None) == (not release):
            raise ConfigError(f"{where}: give --to VERSION or --release")
        if to is not None:
            contract_version(cfg, t, chain, to)  # a version of the chain, or a one-line error
            start = source_version(cfg, t, chain)
            if not chain.reachable(start, to):
                raise ConfigError(
                    f"{where}: the source's v{start} rows cannot be migrated to v{to} "
                    f"({', '.join(chain.steps(start, to))}: a downgrade is missing)"
                )
        state = StateStore(job)
        state.pin_contract(table, to, reason)
        detail = (
            f"{where}: later batches are published at v{to} of {chain.ref} ({reason})"
            if to is not None
            else f"{where}: contract version pin released, negotiated with readers again ({reason})"
        )
        state.log("contracts-rollback", "rollback", "info", table=table, detail=detail)
        out.print(detail, highlight=False, soft_wrap=True)


def _chain(cfg, table: str):  # noqa: ANN001, ANN202
    from contracts import load_chain

    t = cfg.table(table)
    return t, load_chain(t.contract, where=f"job '{cfg.name}' table '{table}'")


def lint_chain(chain) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """(errors, notes) for one contract chain: migrations present, deprecations honoured."""
    errors, notes = [], []
    for v in chain.versions:
        model = chain.models[v]
        c = chain.contract(v)
        if v != chain.versions[0] and not chain.migration(v, "upgrade"):
            errors.append(f"{model.__name__} (v{v}) has no upgrade from v{v - 1}")
        if v != chain.versions[0] and not chain.migration(v, "downgrade"):
            notes.append(
                f"{model.__name__} (v{v}) has no downgrade: readers cannot be served v{v - 1} from v{v} rows"
            )
        for later in chain.versions:
            for field, gone in chain.contract(later).deprecated.items():
                if v >= gone and field in c.columns:
                    errors.append(
                        f"{model.__name__} (v{v}) still has '{field}', deprecated by "
                        f"{chain.models[later].__name__} to go away in v{gone}"
                    )
        for field, gone in c.deprecated.items():
            if gone > chain.latest:
                notes.append(f"'{field}' is deprecated in v{v} and goes away in v{gone}")
    return sorted(set(errors)), sorted(set(notes))
