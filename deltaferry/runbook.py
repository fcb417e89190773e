"""Ways out of the states a run can stop in, for ``deltaferry plan`` and ``deltaferry reset``.

``plan show`` only reads. Each act takes the job's run lock (never while a run works on the
job) and is written to the operations log with the operator's reason and the positions it
saw; ``plan discard`` and ``reset`` change only the producer's local state (``state.duckdb``
and staging), ``republish`` uploads again what the lake lost of committed batches (data
objects, then create-only manifests byte-identical to the committed ones).

- ``plan show``: the batches planned here but not committed, and whether the lake holds
  each one's manifest.
- ``plan discard``: forget a planned batch the lake does not hold (its loads are cut again
  by the next run, at the current contract). Refused when the lake already holds exactly
  that manifest: the next run commits it.
- ``republish``: the lake lost its newest batches (restored from an older backup, a deleted
  manifest): rebuild each committed batch after the lake's head from staging, check it is
  byte-identical to what was committed (the manifest bytes are kept in ``state.duckdb``)
  and publish it again, so readers go on as if nothing happened. Refused, naming
  ``reset``, when staging has moved on and a batch can no longer be rebuilt exactly.
- ``reset``: forget the table's local position (checkpoint, plans, staged rows and dlt's
  state for it); the next run adopts the lake's head as a producer with a lost home does
  (``deltaferry/adopt.py``: verified, then the source read in full and reconciled),
  so committed batches are never published again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltaferry.agreement import Position, chain_head
from deltaferry.checkpoints import Plan
from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import ConfigError
from deltaferry.failpoints import killed
from deltaferry.state import StateStore
from destinations.lake import LakeStore, open_lake
from destinations.manifest import Manifest, manifest_key, sha256


@dataclass(frozen=True)
class PendingPlan:
    """One batch planned here and not committed: ``lake`` is ``"absent"`` (not published),
    ``"stored"`` (the lake holds these exact manifest bytes: the next run commits it) or
    ``"different"`` (the lake holds another manifest at this batch number)."""

    table: str
    batch: int
    rows: int
    load_ids: list[str]
    manifest_sha256: str
    lake: str
    checkpoint: int
    head: Position
    keys: str = ""  # a range of a cut split at max_batch_rows: ``KeyRange.describe``; '' whole


# what ``_lake_state`` found, in words, for the operations log
_LAKE_HOLDS = {
    "absent": "the lake holds no manifest at that batch",
    "different": "the lake holds another writer's manifest at that batch",
}


def _lake_state(lake: LakeStore, job: JobConfig, plan: Plan) -> str:
    stored = lake.get(manifest_key(job.name, plan.table, plan.batch, job.chain))
    if stored is None:
        return "absent"
    return "stored" if sha256(stored) == plan.manifest_sha256 else "different"


def pending_plans(job: JobConfig, tables: list[TableConfig]) -> list[PendingPlan]:
    """The planned, uncommitted batch of each of ``tables`` (none for most), with what the
    lake holds at its batch number. Reads the lake; writes nothing."""
    state = StateStore(job.name, read_only=True)
    lake = open_lake(job.lake, base=job.base_dir)
    lake.check()
    found = []
    for t in tables:
        plan = state.pending_plan(t.name)
        if plan is None:
            continue
        found.append(
            PendingPlan(
                t.name,
                plan.batch,
                plan.rows,
                plan.load_ids,
                plan.manifest_sha256,
                _lake_state(lake, job, plan),
                state.checkpoint(t.name).batch,
                chain_head(lake, job.name, t.name, job.chain),
                plan.keys.describe(),
            )
        )
    return found


def discard_plan(job: JobConfig, t: TableConfig, reason: str) -> str:
    """Forget the table's planned batch (and the quarantine records it made), so the next
    run cuts its loads again. ConfigError when there is none, or when the lake already holds
    exactly its manifest (then it is published: ``deltaferry run`` commits it)."""
    from deltaferry.context import job_lock

    with job_lock(job.name):
        state = StateStore(job.name)
        plan = state.pending_plan(t.name)
        where = f"job '{job.name}' table '{t.name}'"
        if plan is None:
            raise ConfigError(
                f"{where}: no planned batch to discard (`deltaferry plan show {job.name}`)"
            )
        lake = open_lake(job.lake, base=job.base_dir)
        lake.check()
        held = _lake_state(lake, job, plan)
        if held == "stored":
            raise ConfigError(
                f"{where} batch {plan.batch}: the lake already holds this planned manifest, so "
                f"the batch is published; `deltaferry run {job.name}` commits it. Not discarded"
            )
        state.discard_plan(t.name, plan.batch)
        detail = (
            f"planned batch {plan.batch} ({plan.rows} rows, loads {', '.join(plan.load_ids)}, "
            f"manifest sha256 {plan.manifest_sha256[:12]}…; {_LAKE_HOLDS[held]}) discarded "
            f"by the operator: {reason}. The next run cuts these loads again"
        )
        state.log("plan-discard", "plan-discard", "info", table=t.name, batch=plan.batch, detail=detail)
        return f"{where}: {detail}"


def _drop_staged(job: JobConfig, t: TableConfig) -> list[str]:
    """Drop the table's staged rows and dlt's state for its resource (dlt's
    ``pipeline_drop``), so the next extraction reads the source in full. Load packages dlt
    extracted but never loaded are dropped first (the source is read again anyway).
    Returns the staged tables dropped."""
    from dlt.pipeline.helpers import pipeline_drop

    from sources.pipeline import abort_pending, pipeline_for
    from sources.staging import staging_path

    if not staging_path(job.name).exists():
        return []
    pipeline, borrowed = pipeline_for(job)
    try:
        schema = pipeline.default_schema if pipeline.default_schema_name else None
        if schema is None:
            return []
        resources = sorted(
            {
                str(tbl.get("resource"))
                for name, tbl in schema.tables.items()
                if (name == t.name or name.startswith(f"{t.name}__")) and tbl.get("resource")
            }
        )
        if not resources:
            return []
        abort_pending(pipeline, f"reset of job '{job.name}' table '{t.name}'")
        dropping = pipeline_drop(pipeline, resources=resources)
        dropping()
        info: Any = dropping.info
        return sorted(info.get("tables", []))
    finally:
        if borrowed is not None:
            borrowed.close()


def reset_table(job: JobConfig, t: TableConfig, reason: str) -> str:
    """Forget the table's local position so that the next run adopts the lake's chain
    (verified) and reads the source again in full; committed batches are never published
    again. Changes local state only; written to the operations log."""
    from deltaferry.context import job_lock

    with job_lock(job.name):
        state = StateStore(job.name)
        lake = open_lake(job.lake, base=job.base_dir)
        lake.check()
        ckpt = state.checkpoint(t.name)
        plan = state.pending_plan(t.name)
        head = chain_head(lake, job.name, t.name, job.chain)
        if head.batch:
            key = manifest_key(job.name, t.name, head.batch, job.chain)
            raw = lake.get(key)
            writer = Manifest.parse(raw, key=key).producer_id if raw else None
            if writer is not None and writer != job.producer_id:
                raise ConfigError(
                    f"job '{job.name}' table '{t.name}': the lake's {head} was written by "
                    f"producer '{writer}', not '{job.producer_id}': a reset would not adopt it. "
                    f"If this host is that producer, set producer_id = \"{writer}\"; otherwise "
                    "check `lake`. Nothing was changed"
                )
        dropped = _drop_staged(job, t)
        from sources import source_module

        forget = getattr(source_module(job), "forget_table", None)
        if forget is not None:  # what a source remembers of the table beside dlt's state
            forget(job, t)
        state.forget_table(t.name, f"reset by the operator: {reason}")
        planned = f", batch {plan.batch} planned" if plan is not None else ""
        detail = (
            f"reset by the operator: {reason}. Local checkpoint was {Position(ckpt.batch, ckpt.manifest_sha256)}"
            f"{planned}; the lake {lake.url} is at {head}. Staged tables dropped: "
            f"{', '.join(dropped) or 'none'}. The next run adopts the lake's head (verified) "
            "and reads the source in full"
        )
        state.log("reset", "reset", "info", table=t.name, detail=detail)
        return f"job '{job.name}' table '{t.name}': {detail}"


def republish_lost(job: JobConfig, t: TableConfig, reason: str, batch: int | None = None) -> str:
    """Publish again, byte-identically, the committed batches the lake lost after its head
    (its head must be a batch this producer committed, with the same manifest). Each batch
    is rebuilt from staging and checked against the committed manifest's file hashes before
    anything is uploaded; ConfigError when there is nothing to republish or the head is not
    this producer's, TerminalError when a batch cannot be rebuilt exactly (then ``reset``).

    With ``batch``, that one committed batch's data objects are rebuilt and uploaded again
    (a data object the lake lost or corrupted; its manifest must be in the lake, unchanged)."""
    from deltaferry.commit import put_manifest, upload_parts
    from deltaferry.context import job_lock, open_context
    from deltaferry.errors import TerminalError

    where = f"job '{job.name}' table '{t.name}'"
    with job_lock(job.name):
        ctx = open_context(job, run_id="republish")  # an operator act, not a run
        try:
            state, lake = ctx.state, ctx.lake
            ckpt = state.checkpoint(t.name)
            head = chain_head(lake, job.name, t.name, job.chain)
            if batch is not None:
                return _republish_objects(ctx, job, t, batch, reason)
            if head.batch >= ckpt.batch:
                raise ConfigError(
                    f"{where}: the lake's head is {head}, this producer's checkpoint "
                    f"{Position(ckpt.batch, ckpt.manifest_sha256)}: nothing lost to republish"
                )
            if head.batch:
                mine = state.committed_plan(t.name, head.batch)
                if mine is None or mine.manifest_sha256 != head.manifest_sha256:
                    raise ConfigError(
                        f"{where}: the lake's head {head} is not the batch this producer "
                        f"committed there; run `deltaferry reset {job.name} --table {t.name} --reason \"<why>\"`"
                    )
            done = []
            for batch in range(head.batch + 1, ckpt.batch + 1):
                plan = state.committed_plan(t.name, batch)
                if plan is None or not plan.load_ids:
                    raise TerminalError(
                        f"{where} batch {batch}: this producer holds no plan of it (adopted from "
                        f"the lake); run `deltaferry reset {job.name} --table {t.name} --reason \"<why>\"`"
                    )
                delta = _rebuild_exact(
                    ctx, t, plan,
                    f"run `deltaferry reset {job.name} --table {t.name} --reason \"<why>\"`",
                )
                upload_parts(ctx, plan, delta)
                outcome = put_manifest(ctx, plan)
                done.append(f"batch {batch} ({plan.rows} rows, {outcome})")
            detail = (
                f"republished by the operator: {reason}. The lake's head was {head}; rebuilt "
                f"byte-identically from staging and published: {', '.join(done)}"
            )
            state.log(ctx.run_id, "republish", "info", table=t.name, batch=ckpt.batch, detail=detail)
            return f"{where}: {detail}"
        except BaseException as e:
            if not killed(e):  # the simulator's SIGKILL writes nothing on its way out
                ctx.state.log(ctx.run_id, "republish", "failed", table=t.name, detail=str(e)[:2000])
            raise


def _republish_objects(ctx, job: JobConfig, t: TableConfig, batch: int, reason: str) -> str:  # noqa: ANN001
    """Rebuild one committed batch from staging and upload its data objects again (their
    keys are content-derived: an overwrite stores the committed bytes)."""
    from deltaferry.commit import upload_parts

    where = f"job '{job.name}' table '{t.name}' batch {batch}"
    plan = ctx.state.committed_plan(t.name, batch)
    if plan is None or not plan.load_ids:
        raise ConfigError(
            f"{where}: this producer holds no plan of it (not published here, or adopted from "
            "the lake): restore the batch's objects from a backup"
        )
    stored = ctx.lake.get(manifest_key(job.name, t.name, batch, job.chain))
    if stored is None or sha256(stored) != plan.manifest_sha256:
        raise ConfigError(
            f"{where}: the lake does not hold this producer's manifest of it; "
            f"`deltaferry republish {job.name} --table {t.name} --reason \"<why>\"` (without --batch) publishes lost batches"
        )
    delta = _rebuild_exact(ctx, t, plan, "restore its objects from a backup (or bucket versioning)")
    sent = upload_parts(ctx, plan, delta)
    detail = (
        f"data objects of batch {batch} rebuilt byte-identically from staging and uploaded "
        f"again ({sent} bytes) by the operator: {reason}"
    )
    ctx.state.log(ctx.run_id, "republish", "info", table=t.name, batch=batch, detail=detail)
    return f"{where}: {detail}"


def _rebuild_exact(ctx, t: TableConfig, plan: Plan, advice: str):  # noqa: ANN001, ANN202
    """A committed batch rebuilt from staging, byte-identical to its manifest; a
    TerminalError naming ``advice`` when staging has moved on since it was cut."""
    from deltaferry.commit import rebuild
    from deltaferry.errors import TerminalError

    try:
        return rebuild(ctx, t, plan)
    except TerminalError as e:
        raise TerminalError(
            f"{e}; staging has moved on since batch {plan.batch}, so it cannot be "
            f"republished exactly: {advice}"
        ) from e
