"""The producer and the lake agree before anything is published.

A producer's local checkpoint says "the lake's chain for this table ends at batch N,
whose manifest has sha256 H". Before a run recovers, plans or publishes anything, that
is checked against the lake itself (:func:`check_lake`): the manifest of batch N must be
there with exactly those bytes, and no batch after N may exist — except the batch this
producer planned and whose manifest it already stored (a lost acknowledgement, which
recovery then commits). Anything else stops the run before it writes, with one line
naming the job, the table, both positions and what to run:

- the lake holds nothing, or less than the checkpoint (a mistyped ``lake``, a bucket
  restored from a backup, a deleted newest manifest): **behind**;
- batch N is there with other bytes: **diverged** (another lake, another writer);
- batches after N exist that this producer did not plan here: **ahead** (another host
  publishing this job, or a ``DELTAFERRY_HOME`` restored from a backup).

An empty checkpoint (a first run, a lost home) agrees with any lake: a first run starts
the chain and a lost home adopts it (``deltaferry/adopt.py``, verified and recorded).
``deltaferry reset`` is the explicit way to adopt the lake's head from a non-empty home.

Cost: one GET of the checkpoint's manifest and one listing of the manifests after it
(``start_after``), per table and run, whatever the chain's length.

:func:`agree_every_table` is the run's ``lake-head`` step (``flows/sync.py:agree_step``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from deltaferry.checkpoints import Checkpoint, Plan
from deltaferry.config import TableConfig
from deltaferry.context import SyncContext
from deltaferry.errors import LakeMismatchError
from deltaferry.failpoints import bug
from deltaferry.producers import check_chain_mode
from destinations.lake import LakeStore
from destinations.manifest import batch_of_manifest_key, manifest_key, manifests_prefix, sha256


@dataclass(frozen=True)
class Position:
    """A place in one table's chain: the batch number and its manifest's sha256
    (None for batch 0, the empty chain, or for a manifest that cannot be read)."""

    batch: int
    manifest_sha256: str | None

    def __str__(self) -> str:
        if self.batch == 0:
            return "batch 0 (empty)"
        sha = (self.manifest_sha256 or "?")[:12]
        return f"batch {self.batch} (manifest sha256 {sha}…)"


def chain_head(
    lake: LakeStore, job: str, table: str, producer: str | None = None, at_least: int = 0
) -> Position:
    """The newest batch of a chain and its manifest's sha256; ``Position(0, None)`` when the
    chain has no manifest. Lists the manifests from ``at_least`` on (a batch known to
    exist), the whole folder without it or when there are none (``verify.head_batch``):
    for error messages and ``reset``, not for the steady state."""
    from deltaferry.verify import head_batch

    head = head_batch(lake, job, table, producer, at_least)
    if not head:
        return Position(0, None)
    raw = lake.get(manifest_key(job, table, head, producer))
    return Position(head, sha256(raw) if raw is not None else None)


def check_lake(
    lake: LakeStore,
    job: str,
    table: str,
    checkpoint: Checkpoint,
    pending: Plan | None,
    producer: str | None = None,
) -> None:
    """Raise :class:`LakeMismatchError` unless the lake's chain for ``table`` (this
    producer's chain when ``producer`` is set) ends exactly at ``checkpoint``, or at the
    ``pending`` plan's batch with the plan's own manifest bytes. Nothing is written."""
    if checkpoint.batch == 0 and pending is None:
        return  # a first run, or a lost home: adoption decides (deltaferry/adopt.py)
    where = f"job '{job}' table '{table}'" + (f" producer '{producer}'" if producer else "")
    mine = Position(checkpoint.batch, checkpoint.manifest_sha256)
    fix = f"`deltaferry reset {job} --table {table} --reason \"<why>\"`"
    if checkpoint.batch:
        stored = lake.get(manifest_key(job, table, checkpoint.batch, producer))
        if stored is None:
            head = chain_head(lake, job, table, producer)
            raise LakeMismatchError(
                f"{where}: the lake {lake.url} is behind this producer: its head is {head}, "
                f"this producer's checkpoint is {mine}; nothing was published. If `lake` is "
                "mistyped, correct it in the jobs file; if the lake lost batches "
                f"{head.batch + 1}..{checkpoint.batch}, run `deltaferry republish {job} --table "
                f"{table} --reason \"<why>\"` (rebuilt from staging, byte-identical), or restore them from a backup, "
                f"or run {fix} to go on from the lake's head (readers past it rebuild their replica)"
            )
        if sha256(stored) != checkpoint.manifest_sha256:
            raise LakeMismatchError(
                f"{where}: the lake {lake.url} holds a different batch {checkpoint.batch} "
                f"(manifest sha256 {sha256(stored)[:12]}…) than this producer committed "
                f"({mine}): another lake or another writer; nothing was published. Check "
                f"`lake` in the jobs file, or run {fix} to adopt this lake's chain"
            )
    after = manifest_key(job, table, checkpoint.batch, producer) if checkpoint.batch else None
    newer = sorted(
        n
        for k in lake.list(manifests_prefix(job, table, producer), start_after=after)
        if (n := batch_of_manifest_key(k)) is not None and n > checkpoint.batch
    )
    if not newer:
        return
    if pending is not None and newer == [pending.batch]:
        stored = lake.get(manifest_key(job, table, pending.batch, producer))
        if stored is not None and sha256(stored) == pending.manifest_sha256:
            return  # our own planned batch, stored before a lost acknowledgement
    head = chain_head(lake, job, table, producer, at_least=newer[-1])
    raise LakeMismatchError(
        f"{where}: the lake {lake.url} is ahead of this producer: its head is {head}, this "
        f"producer's checkpoint is {mine}"
        + (f" with batch {pending.batch} planned" if pending is not None else "")
        + "; another host publishes this job, or DELTAFERRY_HOME was restored from a backup. "
        f"Nothing was published. Stop the other producer, or run {fix} to adopt the lake's "
        "head (verified; the source is read again in full)"
    )


def agree_with_lake(ctx: SyncContext, t: TableConfig) -> str:
    """The lake's chain for ``t`` ends at this producer's checkpoint (or at its own planned
    batch, stored before a lost acknowledgement); else ``LakeMismatchError``, nothing
    written (:func:`check_lake`)."""
    ckpt = ctx.state.checkpoint(t.name)
    try:
        check_lake(
            ctx.lake, ctx.job.name, t.name, ckpt, ctx.state.pending_plan(t.name), ctx.job.chain
        )
    except LakeMismatchError:
        check_chain_mode(ctx, t)  # multi_producer switched on a published table: say that
        raise
    return f"lake and checkpoint agree at batch {ckpt.batch}"


def agree_every_table(ctx: SyncContext) -> None:
    """:func:`agree_with_lake` for every table of the job, each a ``lake-head`` step in the
    operations log. Every table is checked, so one run names all that disagree: one
    ``LakeMismatchError``, the first table's, naming the others."""
    stopped: list[tuple[str, LakeMismatchError]] = []
    if bug("skip_lake_head_check"):  # the simulator's teeth (failpoints.BUGS)
        return
    with ctx.state.hold():  # every table's step on one state connection
        for t in ctx.job.tables:
            try:
                ctx.step("lake-head", functools.partial(agree_with_lake, ctx, t), table=t.name)
            except LakeMismatchError as e:
                stopped.append((t.name, e))
    if len(stopped) == 1:
        raise stopped[0][1]
    if stopped:
        others = ", ".join(f"'{name}'" for name, _ in stopped[1:])
        raise LakeMismatchError(
            f"{stopped[0][1]} (tables {others} disagree with the lake too; `deltaferry reset` "
            "takes --table once per table)"
        )
