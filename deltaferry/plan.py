"""The plan step: cut, validate and encode a table's next batch, assemble its manifest and
record the plan with the manifest's exact bytes before anything is uploaded
(:func:`plan_negotiated`, :func:`plan_table`, :func:`make_manifest`). The plan is the
write-ahead record the commit protocol (``deltaferry/commit.py``) finishes.

See docs/architecture.md, section 2 "The producer: one run".
"""

from __future__ import annotations

from deltaferry.adopt import refuse_types_readers_cannot_merge
from deltaferry.checkpoints import Plan
from deltaferry.config import TableConfig
from deltaferry.context import SyncContext
from deltaferry.delta import Delta, build_delta
from deltaferry.dual import also_manifest, dual_copy
from deltaferry.errors import ContractViolation, DowngradeRefused
from deltaferry.failpoints import failpoint
from deltaferry.keyrange import KeyRange
from deltaferry.negotiate import held_under, migration_of, negotiate, note_readers
from deltaferry.producers import check_chain_mode, logical_time
from deltaferry.quarantine import HeldRecords
from deltaferry.staged import DriftPlan, staged_changes
from deltaferry.statedb import now
from destinations.manifest import (
    FORMAT,
    ContractRef,
    CursorRange,
    DowngradeRefusal,
    Manifest,
    Migration,
    Ops,
    SeqRange,
    data_key,
    sha256,
)


def plan_negotiated(ctx: SyncContext, t: TableConfig) -> tuple[Plan, Delta] | None:
    """``plan_table``; when the negotiated version cannot represent the source's rows (a
    downgrade raises ``MigrationError``: ``DowngradeRefused``), the batch is planned again
    one version up, and so on up to the source's own version, so the readers that read it
    still get their batches; the manifest says which version refused and why
    (``downgrade_refused``), and readers of the older version stop at it with that reason.
    Under a ``contracts rollback`` pin the refusal stops the table (ContractViolation)."""
    while True:
        try:
            return plan_table(ctx, t)
        except DowngradeRefused as e:
            again = ctx.refused.get(t.name)
            if ctx.state.contract_pin(t.name) is not None or (
                again is not None and again[0] >= e.target
            ):
                raise
            ctx.refused[t.name] = (e.target, e.reason)


def plan_table(ctx: SyncContext, t: TableConfig) -> tuple[Plan, Delta] | None:
    """Cut, validate and encode the next batch; record the plan. None if nothing to publish.

    A cut over ``max_batch_rows`` is planned one range of keys at a time (``Plan.keys``;
    ``keys.through`` None: the cut's last batch). A range whose every row is held back
    (or, going on with a split cut, whose rows were all staged again since) publishes
    nothing: the next range is planned instead, and after a cut's last range, the loads
    staged since."""
    while True:
        planned, more = _plan_range(ctx, t)
        if planned is not None or not more:
            return planned


def _plan_range(ctx: SyncContext, t: TableConfig) -> tuple[tuple[Plan, Delta] | None, bool]:
    """``plan_table`` for one range of keys: the plan (or None) and whether the cut goes on
    after the range, or loads staged after it wait (only asked when there is no plan)."""
    ckpt = ctx.state.checkpoint(t.name)
    with staged_changes(ctx, t, None, ctx.job.rows_per_file) as (load_ids, chunks, drift):
        if not load_ids and not ctx.released.get(t.name):
            return None, False
        _refuse_contract_changed_in_place(ctx, t)
        if len(ctx.chains[t.name].versions) > 1:
            negotiate(ctx, t)
        try:
            delta = (
                build_delta(
                    ctx.job,
                    t,
                    ctx.contracts[t.name],
                    chunks,
                    load_ids,
                    ckpt.seq_end + 1,
                    held=drift.held if drift else None,
                    migration=migration_of(ctx, t),
                    missing=drift.missing if drift else None,
                    open_keys=ctx.state.open_keys(t.name),
                )
                if chunks is not None
                else None
            )
        except ContractViolation as e:
            if chunks is None or chunks.keys.whole:
                raise
            # the load's batches before this one may have been published already
            text = str(e).replace(
                "nothing of this table published", "nothing of this batch of the table published"
            )
            raise ContractViolation(
                f"{text}; the share is of this batch, one part of a split load "
                f"(max_batch_rows = {ctx.job.max_batch_rows}, {chunks.keys.describe()}): a "
                "larger max_batch_rows measures it over more of the load"
            ) from None
        if delta is not None and chunks is not None:
            delta.keys = chunks.keys  # iterated: where a split cut stopped
        refuse_types_readers_cannot_merge(ctx, t, delta)
    released = ctx.released.get(t.name, [])
    if released and delta is not None:
        # of the held rows due, those this batch's keys took (a split cut: some of them)
        cut = {pk for pk, _ in released} & delta.touched if not delta.keys.whole else None
        taken = len(released) if cut is None else len(cut)
        again = delta.quarantine.keys() & {pk for pk, _ in released}
        ctx.state.log(
            ctx.run_id,
            "quarantine",
            "info",
            table=t.name,
            detail=f"job '{ctx.job.name}' table '{t.name}': {taken} held row(s) "
            f"validated again against {ctx.contracts[t.name].ref} "
            f"v{ctx.contracts[t.name].version}: {taken - len(again)} published, "
            f"{len(again)} held again",
        )
    if delta is not None and not delta.keys.whole:
        _log_split(ctx, t, delta)
    if delta is None or delta.rows == 0:
        # no change for this table in these loads, or every change held back by the contract
        if delta is not None and delta.quarantine:
            ctx.held_back[t.name] = ctx.held_back.get(t.name, 0) + delta.quarantine.key_count()
        ctx.state.consume_without_batch(
            t.name,
            load_ids,
            ctx.run_id,
            delta.quarantine if delta else HeldRecords(),
            held_under(ctx, t) if delta and delta.quarantine else None,
            delta.touched if delta else set(),
            delta.keys if delta else KeyRange(),
        )
        # a range of a split cut (not the whole cut) is followed by the next range, or,
        # after the last one, by the loads staged since: as in ``run.sync_steps`` after a
        # published range (found by the simulator: a split cut's empty last range ended
        # the run with "no change" while newer loads waited for the next run)
        return None, delta is not None and not delta.keys.whole
    check_chain_mode(ctx, t)
    if len(ctx.chains[t.name].versions) == 1:  # with a chain, negotiate read the readers
        note_readers(ctx, t)
    if ctx.job.dual_publish:
        delta.also = dual_copy(ctx, t, delta, None, drift, ctx.job.rows_per_file)
    batch = ckpt.batch + 1
    clock = logical_time(ctx, t) if ctx.job.multi_producer else None
    manifest = make_manifest(ctx, t, batch, ckpt.manifest_sha256, delta, clock, drift)
    if ctx.keyring is not None:
        manifest = ctx.keyring.sign_manifest(manifest)
    body = manifest.canonical()
    plan = Plan(
        t.name,
        batch,
        load_ids,
        delta.seq_start,
        delta.seq_end,
        delta.rows,
        delta.quarantine.key_count(),
        body,
        sha256(body),
        ctx.job.rows_per_file,
        delta.keys,
    )
    ctx.state.record_plan(
        plan,
        ctx.run_id,
        delta.quarantine,
        held_under(ctx, t),
        delta.touched,
        ctx.released.get(t.name, []),
    )
    failpoint("after_plan")
    return (plan, delta), False


def _log_split(ctx: SyncContext, t: TableConfig, delta: Delta) -> None:
    """Say in the operations log which keys of a split cut this batch carries, and why."""
    more = (
        "the rest of the cut follows in the next batch"
        if delta.keys.through is not None
        else "the last of the cut"
    )
    ctx.state.log(
        ctx.run_id,
        "cut",
        "info",
        table=t.name,
        detail=f"job '{ctx.job.name}' table '{t.name}': the cut is over max_batch_rows = "
        f"{ctx.job.max_batch_rows}, so it is published as several batches; this one carries "
        f"{delta.keys.describe()}: {delta.rows} row(s); {more}",
    )


def make_manifest(
    ctx: SyncContext,
    t: TableConfig,
    batch: int,
    prev: str | None,
    delta: Delta,
    clock: tuple[int, dict[str, int]] | None = None,
    drift: DriftPlan | None = None,
) -> Manifest:
    """The manifest of batch ``batch`` of ``t`` (unsigned; ``destinations/manifest.py:Manifest``):
    contract, key, cursor and ``_seq`` ranges, load ids, counts, every file, the
    dual-published copy, the drift decision, the migration, the logical ``clock`` with
    several producers, and the version a downgrade was refused at."""
    c = ctx.contracts[t.name]
    migration = None
    if t.name in ctx.migrations:
        start, target = ctx.migrations[t.name]
        chain = ctx.chains[t.name]
        migration = Migration.model_validate(
            {
                "from": start,
                "to": target,
                "steps": chain.steps(start, target),
                "source_fingerprint": chain.contract(start).fingerprint,
            }
        )
    refused = ctx.refused.get(t.name)
    return Manifest(
        format=FORMAT,
        job=ctx.job.name,
        table=t.name,
        batch=batch,
        prev_sha256=prev,
        producer_id=ctx.job.producer_id,
        contract=ContractRef(ref=c.ref, version=c.version, fingerprint=c.fingerprint),
        primary_key=list(t.primary_key),
        cursor=CursorRange(column=t.cursor, min=delta.cursor_min, max=delta.cursor_max),
        seq=SeqRange(start=delta.seq_start, end=delta.seq_end),
        load_ids=delta.load_ids,
        rows=delta.rows,
        ops=Ops(upsert=delta.upserts, delete=delta.deletes),
        quarantined=delta.quarantine.key_count(),
        files=[
            p.data_file(data_key(ctx.job.name, t.name, batch, i, p.sha256, ctx.job.chain))
            for i, p in enumerate(delta.parts)
        ],
        trace_id=ctx.trace_id,
        created_at=now().isoformat(),
        signature=None,
        also=also_manifest(ctx, t, batch, delta),
        drift=drift.manifest() if drift is not None else None,
        migration=migration,
        hlc=clock[0] if clock is not None else None,
        hlc_seen=clock[1] if clock is not None else None,
        downgrade_refused=(
            DowngradeRefusal(to=refused[0], reason=refused[1])
            if refused is not None and refused[0] < c.version
            else None
        ),
    )


def _refuse_contract_changed_in_place(ctx: SyncContext, t: TableConfig) -> None:
    """ContractViolation (the table stops, the job's other tables go on) when the version
    this producer last published the table at is now another contract under the same
    number: its code edited in place (``__version__`` kept), or the jobs file naming
    another contract whose version of that number differs. Publishing would give the lake
    two different contracts under one version, and every reader would stop at the new
    batch, or (a fresh reader, with the new contract) at the old ones ("one version number
    names two different contracts", fresh-user trials). The fingerprint does not depend on
    the contract's name: a contract moved or renamed, or a chain whose version of that
    number is the published one, goes on."""
    last = ctx.state.last_manifest(t.name)
    chain = ctx.chains.get(t.name)
    if last is None or chain is None or last.contract.version not in chain.models:
        return
    version = last.contract.version
    ours = chain.contract(version)
    if ours.fingerprint == last.contract.fingerprint:
        return
    published = (
        f"batch {last.batch} was published at (fingerprint {last.contract.fingerprint[:16]}, "
        f"now {ours.fingerprint[:16]})"
    )
    theirs = last.contract.ref.split("@")[0]
    if ours.ref.split("@")[0] == theirs:
        what = (
            f"contract {ours.ref} v{version} is not the v{version} {published}: it was edited "
            f"in place. Give the changed contract a new version (__version__ = "
            f"{chain.latest + 1}, with its migration) or undo the edit"
        )
    else:
        what = (
            f"the jobs file names contract {chain.ref}, whose v{version} is not the contract "
            f"{last.contract.ref} v{version} {published}. Make the new contract the next "
            "version of a chain that starts with the published one (Chain("
            f"{theirs.split(':')[-1]}, New) with New.__version__ = {version + 1} and its "
            f"upgrade), or name {theirs} again"
        )
    raise ContractViolation(
        f"job '{ctx.job.name}' table '{t.name}': {what}; nothing of this table published, the "
        "job's other tables go on"
    )
