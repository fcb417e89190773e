"""Surviving the loss of a producer's whole ``DELTAFERRY_HOME``.

With no local checkpoint but committed batches in the lake, a run *adopts* the lake:
it pulls (and so verifies) the table's batches into a baseline replica, takes its
checkpoint from the last manifest (batch, hash, change sequence) and goes on from
there — committed batches are never published again. The lost dlt state means the
source is extracted in full once; for tables under ``deletes = "reconcile"``, keys the
lake holds but the source no longer has are merged into staging as tombstones, so
deletes made while the state was lost still reach the readers. The next batch is therefore a re-snapshot plus those
tombstones, applied idempotently by readers (its ``_seq`` values are newer).

A lake whose last manifest was written by another producer is not adopted: that is
another writer's table (ConflictError).
"""

from __future__ import annotations

import contextlib

import duckdb

from deltaferry import duck
from deltaferry.checkpoints import Plan
from deltaferry.config import TableConfig, job_home, write_home_file
from deltaferry.duck import ident
from deltaferry.errors import ConflictError, ContractViolation, VerificationError
from deltaferry.merge_tables import REPLICA_COLUMNS
from deltaferry.replica import pull
from deltaferry.verify import list_batches
from destinations.manifest import Manifest, manifest_key, sha256


def baseline_path(job: str, table: str):  # noqa: ANN201
    return job_home(job) / f"adopt-{table}.duckdb"


def adopt_from_lake(ctx, t: TableConfig) -> str | None:  # noqa: ANN001
    """Adopt the lake's checkpoint for ``t`` when local state is empty. Returns what was done."""
    if ctx.state.checkpoint(t.name).batch or ctx.state.pending_plan(t.name):
        return None
    chain = ctx.job.chain
    batches = list_batches(ctx.lake, ctx.job.name, t.name, chain)
    if not batches:
        return None
    last = batches[-1]
    key = manifest_key(ctx.job.name, t.name, last, chain)
    raw = ctx.lake.get(key)
    try:
        manifest = Manifest.parse(raw, key=key) if raw else None
    except ValueError as e:
        raise VerificationError(f"job '{ctx.job.name}' table '{t.name}': {e}") from None
    writer = manifest.producer_id if manifest is not None else None
    if manifest is None or writer != ctx.job.producer_id:
        raise ConflictError(
            f"job '{ctx.job.name}' table '{t.name}': the lake's batch {last} was written by producer "
            f"'{writer}', not '{ctx.job.producer_id}'; not adopting another writer's table. "
            f"If this host is that producer, set producer_id = \"{writer}\" in the jobs "
            "file; if both publish the table, set multi_producer = true on a new lake prefix (or job); "
            "otherwise check `lake`"
        )
    path = baseline_path(ctx.job.name, t.name)
    path.unlink(missing_ok=True)
    # verifies every batch; with several producers, only this producer's own chain
    pull(
        ctx.job,
        ctx.lake,
        path,
        [t.name],
        keyring=ctx.keyring,
        producers=None if chain is None else [chain],
    )
    base = duck.connect(path, read_only=True, alias="baseline")
    try:
        remember_published_types(ctx.job.name, t.name, base, last)
    finally:
        base.close()
    plan = Plan(
        t.name,
        last,
        [],
        manifest.seq.start,
        manifest.seq.end,
        manifest.rows,
        0,
        raw,
        sha256(raw),
        ctx.job.rows_per_file,
    )
    ctx.state.adopt_checkpoint(plan)
    return f"local state was empty: adopted batch {last} from the lake (verified), re-extracting the source"


def _baseline_batch(base, job: str, table: str, chain: str | None) -> int | None:  # noqa: ANN001
    """The chain's batch the baseline replica was pulled to, or None if it has none."""
    from deltaferry.duck import fetch_one

    try:
        if chain is None:
            row = fetch_one(
                base, "SELECT max(batch) FROM _deltaferry_batches WHERE job = ? AND tbl = ?",
                [job, table],
            )
        else:
            row = fetch_one(
                base,
                "SELECT max(batch) FROM _deltaferry_chains WHERE job = ? AND tbl = ? AND producer = ?",
                [job, table, chain],
            )
    except Exception:  # noqa: BLE001 - no such table: nothing was pulled
        return None
    return row[0] if row else None


ADOPTED_LOAD_ID = "adopted"


def skip_unchanged(ctx, t: TableConfig) -> int:  # noqa: ANN001
    """After the full re-extract of an adopted (or reset) table: staged rows whose values equal
    what this producer's own chain last published for the key (the baseline replica) are
    marked as already published (their load id becomes ``adopted``, a load no cut takes), so
    the next batch carries only real change — never an unchanged row under a new sequence
    number or logical time, which with several producers would win keys back from the others.
    A staged delete of a key the chain does not hold is unchanged too.

    Applies only while the baseline is the chain's head (nothing was published since the
    adoption). Values are compared typed (``IS NOT DISTINCT FROM``, timestamps in UTC) on the
    columns both sides have; a row that cannot be compared counts as changed (republished:
    safe). Returns the rows marked; the count is written to the operations log."""
    from deltaferry.cut import delete_conditions, new_load_ids
    from sources.columns import DELETED_COLUMN, INTERNAL_COLUMNS, LOAD_ID_COLUMN, STAGING_DATASET
    from sources.staging import staged_columns, staging_path

    path = baseline_path(ctx.job.name, t.name)
    if not path.exists() or not staging_path(ctx.job.name).exists():
        return 0
    base = duck.connect(path, read_only=True, alias="baseline")
    try:
        at = _baseline_batch(base, ctx.job.name, t.name, ctx.job.chain)
        base_cols = duck.columns(base, t.name, schema=None)
        held = _baseline_version(base, ctx.job.name, t.name)
    finally:
        base.close()
    if at is None or at != ctx.state.checkpoint(t.name).batch or not base_cols:
        return 0
    con = duck.connect(staging_path(ctx.job.name), alias="staging")
    marked = 0
    try:
        con.execute("SET TimeZone = 'UTC'")
        loads = new_load_ids(con, ctx.state.published_load_ids(t.name))
        staged = staged_columns(con, t.name)
        if not loads or not staged:
            return 0
        key = list(t.primary_key)
        data = [c for c in staged if c not in INTERNAL_COLUMNS and c != DELETED_COLUMN and c not in key]
        common = [c for c in data if c in base_cols]
        match = " AND ".join(f"b.{ident(c)} = s.{ident(c)}" for c in key)
        same = [match, *(f"b.{ident(c)} IS NOT DISTINCT FROM s.{ident(c)}" for c in common)]
        shape = _shape_rule(ctx, t, held)
        hidden = [c for c in data if c not in base_cols]
        if shape is not None and hidden:
            # the migration renamed or dropped a source column: a change in it would not
            # show in the columns both have (a lost update); every row is published again
            ctx.state.log(
                ctx.run_id, "adopt", "info", table=t.name,
                detail=f"re-extracted rows not compared with the adopted chain ({shape}; the "
                f"source's column(s) {', '.join(hidden)} are not in it): all are published",
            )
            return 0
        if shape is None:
            # same shape as published: a column only one side has is a change where it has a
            # value (a column the source gained with values, one it dropped or renamed) —
            # a staged column only if it is published (a strict contract leaves out the
            # columns it does not list: drift, under evolve or quarantine)
            only_base = [c for c in base_cols if c not in staged and c not in REPLICA_COLUMNS]
            contract = ctx.contracts.get(t.name)
            listed = set(contract.columns) if contract is not None else set()
            loose = contract is None or contract.schema.strict is False
            gained = [c for c in data if c not in base_cols and (loose or c in listed)]
            same += [f"s.{ident(c)} IS NULL" for c in gained]
            same += [f"b.{ident(c)} IS NULL" for c in only_base]
        same_sql = " AND ".join(same)
        deleted = " OR ".join(delete_conditions(t, staged)) or "false"
        lids = ", ".join("?" for _ in loads)
        began = False
        try:
            duck.attach(con, path, "df_baseline")  # its deleted rows' memory fitted
            con.execute("BEGIN TRANSACTION")
            began = True
            marked = duck.fetch_row(
                con,
                f"UPDATE {STAGING_DATASET}.{ident(t.name)} s SET {ident(LOAD_ID_COLUMN)} = ? "
                f"WHERE s.{ident(LOAD_ID_COLUMN)} IN ({lids}) AND ("
                f"(NOT ({deleted}) AND EXISTS (SELECT 1 FROM df_baseline.{ident(t.name)} b WHERE {same_sql}))"
                f" OR (({deleted}) AND NOT EXISTS (SELECT 1 FROM df_baseline.{ident(t.name)} b WHERE {match})))",
                [ADOPTED_LOAD_ID, *loads],
            )[0]
            con.execute("COMMIT")
        except duckdb.Error as e:
            if began:
                con.execute("ROLLBACK")
            ctx.state.log(
                ctx.run_id, "adopt", "info", table=t.name,
                detail=f"unchanged rows not compared with the adopted chain ({e}); all re-extracted rows are published",
            )
            return 0
    finally:
        # an attachment outlives the connection when its database is shared (a held or
        # cached instance): the next table's ATTACH of the same name would fail
        with contextlib.suppress(duckdb.Error):
            con.execute("DETACH DATABASE IF EXISTS df_baseline")
        con.close()
    ctx.state.log(
        ctx.run_id,
        "adopt",
        "info",
        table=t.name,
        detail=f"{marked} re-extracted row(s) equal what this producer's chain published up to "
        f"batch {at}: not published again" + (f" ({shape})" if shape else ""),
    )
    return int(marked)


def _baseline_version(base, job: str, table: str) -> int | None:  # noqa: ANN001
    """The contract version the baseline replica holds ``table``'s rows at (its reader's,
    ``_deltaferry_contracts``: pull takes every batch to it), or None if unrecorded."""
    from deltaferry.duck import fetch_one

    try:
        row = fetch_one(
            base, "SELECT version FROM _deltaferry_contracts WHERE job = ? AND tbl = ?", [job, table]
        )
    except duckdb.Error:  # no such table: an older baseline
        return None
    return int(row[0]) if row and row[0] is not None else None


def _shape_rule(ctx, t: TableConfig, held: int | None) -> str | None:  # noqa: ANN001
    """None when the baseline holds its rows at the contract version the source's rows have
    (so staged and baseline rows have the same columns, and a column only one side has is a
    change); else why only the columns both sides have are compared (a migration between
    them adds, renames or drops columns by design). ``held``: the baseline's version
    (``_baseline_version``), else the chain's newest (the version ``pull`` reads at). Not
    the version the head was published at: the baseline took every batch to its own."""
    from deltaferry.negotiate import source_version

    chain = ctx.chains.get(t.name)
    if chain is None:
        return None
    at = chain.latest if held is None else held
    source = source_version(ctx.job, t, chain)
    if at == source:
        return None
    return (
        f"compared on the columns both have: the adopted chain is held at v{at}, "
        f"the source's rows are v{source}"
    )


def stage_missing_as_tombstones(ctx, t: TableConfig) -> int:  # noqa: ANN001
    """After the full re-extract: keys the lake holds that staging does not are tombstoned,
    for a table whose deletes are found by comparing key sets (``reconcile``). Under other
    delete modes a key missing from the re-extract proves nothing (an archived file, an API
    that only returns recent records, a table whose deletes are not tracked): nothing is
    tombstoned."""
    path = baseline_path(ctx.job.name, t.name)
    if not path.exists():  # (every run asks: dlt is imported only when there is one)
        return 0
    from sources.load import stage_tombstones
    from sources.pipeline import pipeline_for

    if t.deletes != "reconcile":
        path.unlink()
        return 0
    from sources.columns import STAGING_DATASET
    from sources.staging import staging_path

    pk = list(t.primary_key)
    keys = ", ".join(ident(c) for c in pk)
    base = duck.connect(path, read_only=True, alias="baseline")
    try:
        lake_keys = base.sql(f"SELECT {keys} FROM {ident(t.name)}").to_arrow_table()
    finally:
        base.close()
    staging = duck.connect(staging_path(ctx.job.name), read_only=True, alias="staging")
    try:
        staging.register("lake_keys", lake_keys)
        match = " AND ".join(f"k.{ident(c)} = s.{ident(c)}" for c in pk)
        missing = staging.sql(
            f"SELECT {', '.join('k.' + ident(c) for c in pk)} FROM lake_keys k "
            f"WHERE NOT EXISTS (SELECT 1 FROM {STAGING_DATASET}.{ident(t.name)} s WHERE {match})"
        ).to_arrow_table()
    finally:
        staging.close()
    if missing.num_rows:
        pipeline, borrowed = pipeline_for(ctx.job)
        try:
            stage_tombstones(ctx.job, t, pipeline, missing, "adopted_tombstones")
        finally:
            if borrowed is not None:
                borrowed.close()
    path.unlink()
    return missing.num_rows


def valued_columns_path(job: str, table: str):  # noqa: ANN201
    """``$DELTAFERRY_HOME/<job>/published_columns/<table>.json``: the columns holding a
    value in the chain the last adoption pulled (``published_columns``)."""
    return job_home(job) / "published_columns" / f"{table}.json"


def published_types_path(job: str, table: str):  # noqa: ANN201
    """``$DELTAFERRY_HOME/<job>/published_types/<table>.json``: the column types of the chain
    an adoption pulled (``remember_published_types``)."""
    return job_home(job) / "published_types" / f"{table}.json"


def remember_published_types(job: str, table: str, base, batch: int) -> None:  # noqa: ANN001
    """Record the DuckDB types of ``table``'s columns in the baseline replica ``base`` (the
    chain as published up to ``batch``), with the contract version it holds them at, for
    ``refuse_types_readers_cannot_merge``, and the columns holding a value on some row, for
    ``published_columns``. The baseline itself is removed after the extract."""
    import json

    types = {
        c: kind
        for c, kind in duck.column_types(base, table, schema=None).items()
        if c not in REPLICA_COLUMNS
    }
    # the columns holding a value on some row: what a re-read without them would wipe
    listed = ", ".join(f"count({ident(c)})" for c in types)
    counts = duck.fetch_row(base, f"SELECT {listed} FROM {ident(table)}") if types else ()
    valued = sorted(c for c, n in zip(types, counts, strict=True) if n)
    record = {"batch": batch, "version": _baseline_version(base, job, table), "types": types}
    write_home_file(published_types_path(job, table), json.dumps(record, sort_keys=True))
    # kept past the next batch (the types record is not): deletes publish while upserts
    # that lack a dropped column are held, and the guard must outlive them
    write_home_file(valued_columns_path(job, table), json.dumps(valued))


def published_columns(ctx, t: TableConfig) -> set[str]:  # noqa: ANN001
    """The columns of ``t`` holding a value on some row of the chain as published when the
    table was last adopted (a ``reset``, a lost home: ``remember_published_types``); empty
    when it never was. A column published NULL everywhere (a contract column the source
    never had) is not among them. Kept until the next adoption: a column in it counts as
    dropped only while the source lacks it and the contract lists it undeprecated, which
    is drift whenever it holds. For drift (``contracts/drift.py:detect``): after a reset staging has
    only the source's columns, so a column the source dropped is not staged and only this
    record still says readers hold values in it."""
    import json

    path = valued_columns_path(ctx.job.name, t.name)
    return set(json.loads(path.read_text())) if path.exists() else set()


def refuse_types_readers_cannot_merge(ctx, t: TableConfig, delta) -> None:  # noqa: ANN001
    """ContractViolation (the table stops, the job's other tables go on) when the first
    batch after an adoption (a ``reset``, a lost home) brings a column's values under a type
    that the chain published up to the adopted batch cannot hold exactly, at the same
    contract version: a column the contract does not type, retyped at the source (``double
    precision`` to ``numeric(30,20)``), was staged again as the new type. Published, every
    reader, a new one too, would stop at that batch for good (``duck.TypeConflict``; a
    fresh-user trial). The check is the readers' own (``duck.widen_columns``) against the
    types the adoption recorded (``remember_published_types``): types a reader widens to,
    or values it holds exactly, go on. ``delta``: the planned ``Delta``, whose Parquet parts
    are read one at a time."""
    import json

    from deltaferry.delta import read_parquet
    from sources.columns import LAKE_COLUMNS

    path = published_types_path(ctx.job.name, t.name)
    if delta is None or not delta.parts or not path.exists():
        return
    record = json.loads(path.read_text())
    last = ctx.state.last_manifest(t.name)
    contract = ctx.contracts.get(t.name)
    at = record["batch"]
    if at != ctx.state.checkpoint(t.name).batch:
        path.unlink(missing_ok=True)  # published since the adoption: readers took that
        return
    if (
        last is None
        or contract is None
        or record["version"] != contract.version
        or last.contract.version != contract.version
    ):
        return  # another version than published: readers migrate between the two
    stored = {c: k for c, k in record["types"].items() if c not in LAKE_COLUMNS}
    con = duckdb.connect()
    try:
        columns = ", ".join(f"{ident(c)} {k}" for c, k in stored.items())
        con.execute(f"CREATE TABLE {ident(t.name)} ({columns})")
        for part in delta.parts:
            data = read_parquet(part.data)
            data = data.select([c for c in data.column_names if c in stored])
            try:
                duck.widen_columns(con, t.name, data, stored, keep=tuple(t.primary_key))
            except duck.WidenFirst:
                continue  # a reader widens the column: every value keeps its value
            except duck.TypeConflict as e:
                typed = "" if e.column in contract.columns else ", which does not type it"
                raise ContractViolation(
                    f"job '{ctx.job.name}' table '{t.name}': column '{e.column}' was published "
                    f"as {e.have} up to batch {at} (contract {contract.ref} v{contract.version}"
                    f"{typed}), and this batch brings {e.incoming} values {e.have} does not "
                    f"hold exactly (e.g. {e.example!r}): every reader would stop at this batch. "
                    "Nothing of this table published, the job's other tables go on. Give the "
                    "column its type in the next version of the contract (Chain("
                    f"{contract.ref.split(':')[-1]}, New) with New.__version__ = "
                    f"{contract.version + 1} typing it), so the batch is published at a "
                    "version readers migrate to"
                ) from None
    finally:
        con.close()
