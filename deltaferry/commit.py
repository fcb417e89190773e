"""The commit protocol per table, after the plan step (``deltaferry/plan.py``) recorded a
batch with its exact manifest bytes
(see docs/architecture.md, section 3 "Commit protocol and recovery"):

  upload data objects (:func:`upload_parts`) -> put the manifest create-only, the commit
  point (:func:`put_manifest`) -> advance the local checkpoint (:func:`commit`).

On start, a planned-but-uncommitted batch is finished first (:func:`recover_table`):
manifest present and identical -> commit; absent -> rebuild byte-identically
(:func:`rebuild`) and publish; present but different -> another writer holds the table:
terminal ConflictError.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from deltaferry import duck
from deltaferry.checkpoints import Plan
from deltaferry.config import TableConfig
from deltaferry.context import SyncContext
from deltaferry.delta import Delta, build_delta
from deltaferry.dual import dual_copy
from deltaferry.errors import ConflictError, TerminalError, TransientError
from deltaferry.failpoints import bug, failpoint
from deltaferry.negotiate import contract_version, migration_of
from deltaferry.settings import from_env
from deltaferry.staged import DriftPlan, staged_changes
from destinations.manifest import Manifest, manifest_key, sha256


def upload_parts(ctx: SyncContext, plan: Plan, delta: Delta) -> int:
    """Upload every data object of the plan, ``DELTAFERRY_UPLOAD_CONCURRENCY`` at a time;
    the manifest is written only after all succeed. Returns the bytes sent. Every part is
    checked against the plan's sha256 before anything goes up (TerminalError); the first
    failed upload's error is raised once the others have finished (a retry of the step
    rewrites the same content-derived keys)."""
    planned = planned_manifest(ctx, plan)
    parts = list(delta.parts)
    if planned.also is not None:  # dual publishing: the newer version's copy goes up too
        parts += delta.also[1] if delta.also else []
    files = planned.all_files()
    for f, part in zip(files, parts, strict=True):
        if f.sha256 != part.sha256:
            raise TerminalError(
                f"job '{ctx.job.name}' table '{plan.table}' batch {plan.batch}: part {f.key} "
                "does not match its plan"
            )

    def put(key: str, data: bytes) -> int:
        ctx.lake.put(key, data)
        failpoint("after_part_upload")
        return len(data)

    workers = max(1, min(from_env().upload_concurrency, len(parts)))
    with ThreadPoolExecutor(workers, thread_name_prefix="deltaferry-upload") as pool:
        futures = [pool.submit(put, f.key, p.data) for f, p in zip(files, parts, strict=True)]
        wait(futures)
    sent = sum(f.result() for f in futures)  # the first failure, in part order, raises
    failpoint("after_upload")
    return sent


def planned_manifest(ctx: SyncContext, plan: Plan) -> Manifest:
    """The manifest a plan recorded (its exact bytes, parsed)."""
    key = manifest_key(ctx.job.name, plan.table, plan.batch, ctx.job.chain)
    return Manifest.parse(plan.manifest, key=f"{key} (planned)")


def put_manifest(ctx: SyncContext, plan: Plan) -> str:
    """Write the manifest create-only. A 412 with our own bytes already there is a lost ack: success."""
    key = manifest_key(ctx.job.name, plan.table, plan.batch, ctx.job.chain)
    if bug("overwrite_manifest"):  # the simulator's teeth (failpoints.BUGS)
        ctx.lake.put(key, plan.manifest)
        created = True
    else:
        created = ctx.lake.put_if_absent(key, plan.manifest)
    failpoint("after_manifest")
    if created:
        return "created"
    stored = ctx.lake.get(key)
    if stored is not None and sha256(stored) == plan.manifest_sha256:
        return "already stored (lost acknowledgement)"
    if stored is None:  # reported present, but not readable yet: decide on the next attempt
        raise TransientError(
            f"job '{ctx.job.name}' table '{plan.table}' batch {plan.batch}: the store refused to create "
            f"{key} but the object cannot be read; retrying"
        )
    raise ConflictError(
        f"job '{ctx.job.name}' table '{plan.table}' batch {plan.batch}: a different manifest already exists at "
        f"{ctx.lake.url}/{key} ({_describe(stored, key)}; ours sha256 {plan.manifest_sha256[:16]}); another writer "
        "holds this table. Nothing was overwritten; stop other producers and investigate before running again"
    )


def _describe(stored: bytes, key: str) -> str:
    """Who wrote a manifest, for conflict messages."""
    try:
        m = Manifest.parse(stored, key=key)
    except ValueError as e:
        return (
            f"sha256 {sha256(stored)[:16]}, {len(stored)} bytes, unreadable: {e}; a torn write "
            "the store accepted (S3 refuses incomplete bodies; this store did not) or not a "
            "manifest at all; if no other producer writes this table, delete that object and "
            "run again"
        )
    return (
        f"sha256 {sha256(stored)[:16]}, producer '{m.producer_id}', "
        f"trace {m.trace_id}, created {m.created_at}, {len(stored)} bytes"
    )


def commit(ctx: SyncContext, plan: Plan) -> None:
    """Advance the checkpoint to the plan's batch, whose manifest is stored: one local
    transaction (``StateStore.commit_checkpoint``)."""
    failpoint("before_checkpoint")
    ctx.state.commit_checkpoint(plan)


def recover_table(ctx: SyncContext, t: TableConfig) -> str | None:
    """Finish a planned batch left by an interrupted run, or adopt the lake's chain when
    there is neither a plan nor a checkpoint. Returns what was done, or None."""
    plan = ctx.state.pending_plan(t.name)
    if plan is None:
        from deltaferry.adopt import adopt_from_lake

        return adopt_from_lake(ctx, t)
    key = manifest_key(ctx.job.name, t.name, plan.batch, ctx.job.chain)
    stored = ctx.lake.get(key)
    if stored is not None:
        if sha256(stored) != plan.manifest_sha256:
            raise ConflictError(
                f"job '{ctx.job.name}' table '{t.name}' batch {plan.batch}: the lake holds a different manifest "
                f"than the one planned here; another writer holds this table. Nothing was overwritten; "
                f'stop the other writer, then `deltaferry reset {ctx.job.name} --table {t.name} --reason "<why>"` adopts the lake\'s chain'
            )
        commit(ctx, plan)
        return f"batch {plan.batch}: manifest already stored, checkpoint committed"
    delta = rebuild(ctx, t, plan)
    upload_parts(ctx, plan, delta)
    put_manifest(ctx, plan)
    commit(ctx, plan)
    return f"batch {plan.batch}: rebuilt byte-identically and published"


def rebuild(ctx: SyncContext, t: TableConfig, plan: Plan) -> Delta:
    """Rebuild a planned batch from staging; its parts must hash to what the plan recorded."""
    planned = planned_manifest(ctx, plan)
    chain = ctx.chains[t.name]  # the plan's own version and migration, whatever readers say now
    version = planned.contract.version
    if version not in chain.versions:
        raise TerminalError(
            f"job '{ctx.job.name}' table '{t.name}' batch {plan.batch}: the batch was planned "
            f"at contract v{version}, which {chain.ref} no longer has (versions: "
            f"{', '.join(f'v{v}' for v in chain.versions)}), so it cannot be rebuilt as "
            f"planned; go back to the old contract for one run, or `deltaferry plan discard "
            f'{ctx.job.name} --table {t.name} --reason "<why>"` and run again (its rows are '
            "cut again at the new contract)"
        )
    ctx.contracts[t.name] = contract_version(ctx.job, t, chain, version)
    moved = planned.migration
    if moved is not None:
        ctx.migrations[t.name] = (moved.from_, moved.to)
    else:
        ctx.migrations.pop(t.name, None)
    drift = DriftPlan.recorded(planned.drift)
    ctx.released[t.name] = ctx.state.plan_releases(t.name, plan.batch)
    want = [f.sha256 for f in planned.all_files()]
    delta = _rebuilt(ctx, t, plan, planned, drift, "published")
    got = _hashes(delta)
    if want == got:
        return delta
    # planned by a version that published zoned times in DuckDB's session zone (the host's;
    # ``delta.published_zones``): rebuilt that way in this host's zone, then in the zone
    # names a host in UTC has (a container's /etc/localtime, a shell's TZ=UTC)
    tried = list(dict.fromkeys([duck.session_zone(), "Etc/UTC", "UTC"]))
    for zone in tried:
        legacy = _rebuilt(ctx, t, plan, planned, drift, f"staged:{zone}")
        if _hashes(legacy) == want:
            return legacy
    raise TerminalError(
        f"job '{ctx.job.name}' table '{t.name}' batch {plan.batch}: rebuilt data differs "
        f"from the plan (contract or library changed since?); expected {want}, got {got}. "
        "Restore the contract the plan was cut with, or run `deltaferry plan discard "
        f'{ctx.job.name} --table {t.name} --reason "<why>"` to cut it again at the current '
        "one. A batch planned before deltaferry published zoned times in UTC (in the host's "
        f"zone) rebuilds only in that zone: tried {', '.join(tried)}; run again with TZ set "
        "to the planning host's zone (e.g. TZ=Europe/Berlin)"
    )


def _hashes(delta: Delta) -> list[str]:
    return [p.sha256 for p in delta.parts + (delta.also[1] if delta.also else [])]


def _rebuilt(
    ctx: SyncContext, t: TableConfig, plan: Plan, planned: Manifest, drift: Any, zones: str
) -> Delta:
    """The planned batch cut again from staging, its zoned times published as ``zones``
    says (``delta.build_delta``)."""
    with staged_changes(ctx, t, plan.load_ids, plan.chunk_rows, drift, plan.keys) as (
        _,
        chunks,
        _d,
    ):
        if chunks is None:
            raise TerminalError(
                f"job '{ctx.job.name}' table '{t.name}' batch {plan.batch}: staged rows for the "
                f"planned batch are gone; restore the staging file, or run `deltaferry reset "
                f'{ctx.job.name} --table {t.name} --reason "<why>"` to read the source again from the lake\'s head'
            )
        # the plan's own cut: same part size; its quarantine decision was already taken
        job = dataclasses.replace(ctx.job, rows_per_file=plan.chunk_rows, max_quarantine_ratio=1.0)
        delta = build_delta(
            job,
            t,
            ctx.contracts[t.name],
            chunks,
            plan.load_ids,
            plan.seq_start,
            held=drift.held if drift else None,
            migration=migration_of(ctx, t),
            missing=drift.missing if drift else None,
            zones=zones,
        )
        delta.keys = plan.keys
    if planned.also is not None:
        also_version = planned.also.contract.version
        delta.also = dual_copy(ctx, t, delta, also_version, drift, plan.chunk_rows)
    return delta
