"""Several producers, the producer's side (``multi_producer``): a table's lake folder holds
one chain or one chain per producer, never both (:func:`check_chain_mode`), and each batch
carries a hybrid logical timestamp after every other producer's head it sees
(:func:`logical_time`). The reader's side is ``deltaferry/merge.py``.

See docs/architecture.md, section 5 "Several producers".
"""

from __future__ import annotations

import json
from pathlib import Path

from deltaferry import hlc
from deltaferry.config import TableConfig, job_home, write_home_file
from deltaferry.context import SyncContext
from deltaferry.errors import ConfigError, VerificationError
from deltaferry.failpoints import bug
from deltaferry.verify import head_batch
from destinations.manifest import Manifest, manifest_key, producers_prefix


def check_chain_mode(ctx: SyncContext, t: TableConfig) -> None:
    """A table's lake folder holds one chain or one chain per producer, never both: switching
    ``multi_producer`` on an existing lake is refused (one listing call)."""
    folders = set(ctx.lake.children(f"{ctx.job.name}/{t.name}/"))
    where = f"job '{ctx.job.name}' table '{t.name}'"
    if ctx.job.multi_producer and "manifests" in folders:
        raise ConfigError(
            f"{where}: the lake holds this table's single-producer chain; multi_producer cannot "
            "be switched on for it. Publish to a new lake prefix (or job name) and pull into a "
            "new replica"
        )
    if not ctx.job.multi_producer and "producers" in folders:
        raise ConfigError(
            f"{where}: the lake holds chains of several producers for this table; set "
            "multi_producer = true and this site's producer_id"
        )


def logical_time(ctx: SyncContext, t: TableConfig) -> tuple[int, dict[str, int]]:
    """The hybrid logical timestamp of this producer's next batch of ``t`` (see
    ``deltaferry/hlc.py``), after its own last batch and the newest batch of every other
    producer it can see in the lake: ``(hlc, hlc_seen)`` of its manifest. A clock further
    apart than the job's ``max_clock_skew_seconds`` is written to the operations log."""
    job, me = ctx.job, ctx.job.producer_id
    own = ctx.state.last_manifest(t.name)
    last = (own.hlc or 0) if own is not None else 0
    seen: dict[str, int] = {}
    for producer in ctx.lake.children(producers_prefix(job.name, t.name)):
        if producer == me:
            continue
        head = _chain_head(ctx, t, producer)
        if head is not None:
            seen[producer] = head
    now_ms = hlc.wall_ms()
    others = 0 if bug("hlc_ignores_others") else max(seen.values(), default=0)  # (teeth)
    stamp = hlc.tick(last, others, now_ms)
    limit = job.max_clock_skew_seconds
    notes = [
        f"producer '{producer}' is {hlc.skew_text(ahead)} ahead of this host's clock (its "
        f"newest batch is stamped {hlc.describe(value)}); this batch is stamped after it "
        f"({hlc.describe(stamp)}) so changes made here still win over it"
        for producer, value in sorted(seen.items())
        if (ahead := (hlc.physical_ms(value) - now_ms) / 1000) > limit
    ]
    if (behind := (hlc.physical_ms(last) - now_ms) / 1000) > limit:
        notes.append(
            f"this host's clock is {hlc.skew_text(behind)} behind the last batch it stamped "
            f"({hlc.describe(last)}); logical time keeps counting from there"
        )
    for note in notes:
        ctx.state.log(ctx.run_id, "clock", "info", table=t.name, detail=note)
    return stamp, seen


def _heads_path(ctx: SyncContext) -> Path:
    return job_home(ctx.job.name) / "seen_heads.json"


def _seen_heads(ctx: SyncContext) -> dict[str, int]:
    """The head batch of each other producer's chain this home last saw, by
    ``<table>/<producer>`` (a hint: a lost or unreadable file is an empty one)."""
    try:
        seen = json.loads(_heads_path(ctx).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in seen.items() if isinstance(v, int)} if isinstance(seen, dict) else {}


def _chain_head(ctx: SyncContext, t: TableConfig, producer: str) -> int | None:
    """The logical timestamp of another producer's newest batch (signature checked), or None.
    The chain is listed from the head this home saw last (``verify.head_batch``:
    ``StartAfter``, so the cost follows the batches published since, not the chain's
    length; the whole chain only when that batch is gone), and the head seen is kept in
    ``$DELTAFERRY_HOME/<job>/seen_heads.json`` for the next run."""
    heads = _seen_heads(ctx)
    slot = f"{t.name}/{producer}"
    head = head_batch(ctx.lake, ctx.job.name, t.name, producer, at_least=heads.get(slot, 0))
    if head != heads.get(slot):
        heads[slot] = head
        write_home_file(_heads_path(ctx), json.dumps(heads, sort_keys=True))
    if not head:
        return None
    key = manifest_key(ctx.job.name, t.name, head, producer)
    where = f"job '{ctx.job.name}' table '{t.name}' producer '{producer}' batch {head}"
    raw = ctx.lake.get(key)
    try:
        if raw is None:
            raise VerificationError(f"{where}: the newest manifest is unreadable")
        m = Manifest.parse(raw, key=key)
        if (m.job, m.table, m.producer_id) != (ctx.job.name, t.name, producer):
            raise VerificationError(f"{where}: the newest manifest is not this chain's")
        if ctx.keyring is not None:
            ctx.keyring.verify_manifest(m, where=where)
        if m.hlc is None:
            raise VerificationError(f"{where}: the newest manifest has no logical timestamp")
    except (ValueError, VerificationError) as e:
        # another producer's broken head must not stop this one; readers will refuse it
        ctx.state.log(ctx.run_id, "clock", "info", table=t.name, detail=f"ignored: {e}")
        return None
    return m.hlc
