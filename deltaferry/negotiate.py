"""Which version of a table's contract chain: the one its source rows have
(:func:`source_version`), the one a batch is published at after negotiation with the
readers (:func:`negotiate`), and the one held rows wait under (:func:`held_under`).

See docs/architecture.md, section 6 "Contracts, versions and drift".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts import Chain, Contract
from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import ConfigError

if TYPE_CHECKING:  # deltaferry/context.py imports this module
    from deltaferry.context import SyncContext


def source_version(job: JobConfig, t: TableConfig, chain: Chain) -> int:
    """The contract version the table's source rows have (``source_version``, or the newest)."""
    v = t.source_version or chain.latest
    if v not in chain.versions:
        raise ConfigError(
            f"job '{job.name}' table '{t.name}': source_version {v} is not a version of contract "
            f"{chain.ref} ({', '.join(f'v{n}' for n in chain.versions)})"
        )
    return v


def contract_version(job: JobConfig, t: TableConfig, chain: Chain, version: int) -> Contract:
    """A version of the table's chain, or a one-line error naming job and table."""
    try:
        return chain.contract(version)
    except ConfigError as e:
        raise ConfigError(f"job '{job.name}' table '{t.name}': {e}") from None


def held_under(ctx: SyncContext, t: TableConfig) -> str:
    """The fingerprint quarantine records are held under: the contract version of the
    source's rows (a held row is validated again once it changes)."""
    return held_under_contract(ctx.job, t, ctx.chains[t.name])


def held_under_contract(job: JobConfig, t: TableConfig, chain: Chain) -> str:
    """``held_under`` from a job and a loaded chain (for ``deltaferry quarantine``)."""
    return chain.contract(source_version(job, t, chain)).fingerprint


def migration_of(ctx: SyncContext, t: TableConfig) -> tuple[Chain, int, int] | None:
    """The migration this run's cut of ``t`` takes (chain, from, to), or None."""
    if t.name not in ctx.migrations:
        return None
    return (ctx.chains[t.name], *ctx.migrations[t.name])


def negotiate(ctx: SyncContext, t: TableConfig) -> int:
    """The version this batch is published at: a version pinned by ``contracts rollback``,
    else the highest version every active reader reads (the newest without readers); then
    the nearest one the source's rows can be migrated to. Recorded in the operations log."""
    from deltaferry.consumers import age_seconds, read_consumers

    chain = ctx.chains[t.name]
    source = source_version(ctx.job, t, chain)
    reasons: list[str] = []
    pin = ctx.state.contract_pin(t.name)
    if pin is not None and pin not in chain.versions:
        reasons.append(f"the rollback pin to v{pin} is not a version of {chain.ref}: ignored")
        pin = None
    if pin is not None:
        target = pin
        reasons.append(f"pinned to v{pin} by contracts rollback")
    else:
        target = chain.latest
        counted = []
        for r in read_consumers(ctx.lake, ctx.job.name, t.name):
            age = age_seconds(r)
            if "error" in r or age is None:
                continue
            who = f"reader '{r.get('consumer')}'"
            if r.get("stuck"):  # it cannot get past a batch: holding back helps nobody
                reasons.append(
                    f"{who} stopped at a batch it cannot apply: not holding the version back "
                    "until it pulls again without stopping"
                )
                continue
            if age > ctx.job.reader_timeout_seconds:
                reasons.append(f"{who} not seen for {int(age)}s: not holding the version back")
                continue
            reads = [v for v in r.get("supports") or [] if v in chain.versions]
            other = _other_contracts(r, chain, reads)
            if other:  # its vN is another contract than ours: it reads only what is below
                v = other[0]
                reads = [x for x in reads if x < v]
                reasons.append(
                    f"{who}'s v{v} is another contract (fingerprint {other[1][:12]}, ours "
                    f"{chain.contract(v).fingerprint[:12]}): counted as reading up to "
                    + (f"v{max(reads)}" if reads else "no version")
                )
            if not reads:
                reasons.append(f"{who} reads none of v{chain.versions[0]}..v{chain.latest}")
                continue
            counted.append(f"{who} reads up to v{max(reads)}")
            target = min(target, max(reads))
        reasons[:0] = counted
    wanted = target
    while not chain.reachable(source, target) and target != source:
        target += 1 if target < source else -1
    if target != wanted:
        reasons.append(f"v{wanted} cannot be reached from the source's v{source} (no downgrade)")
    refused = ctx.refused.get(t.name)
    if refused is not None and pin is None and refused[0] >= target and target < source:
        target = refused[0] + 1  # reachable: the refused version was, one step further down
        reasons.append(
            f"the source's rows cannot be taken down to v{refused[0]} ({refused[1]}): "
            f"published at v{target}; readers of older versions stop at this batch"
        )
    ctx.contracts[t.name] = chain.contract(target)
    if target != source:
        ctx.migrations[t.name] = (source, target)
    else:
        ctx.migrations.pop(t.name, None)
    if reasons or target != source:
        steps = ", ".join(chain.steps(source, target)) or "no migration"
        detail = (
            f"job '{ctx.job.name}' table '{t.name}': publishing at v{target} of {chain.ref} "
            f"(source rows are v{source}: {steps})" + (f"; {'; '.join(reasons)}" if reasons else "")
        )
        ctx.state.log(ctx.run_id, "negotiate", "info", table=t.name, detail=detail)
    return target


def _other_contracts(record: dict, chain: Chain, reads: list[int]) -> tuple[int, str] | None:
    """The first version a reader's record says it reads whose fingerprint differs from
    ``chain``'s, and the reader's fingerprint; None when all match or are not recorded
    (records of older readers carry only their newest version's fingerprint)."""
    theirs = record.get("fingerprints")
    if not isinstance(theirs, dict):
        contract = record.get("contract")
        if not isinstance(contract, dict):
            return None
        theirs = {str(contract.get("version")): contract.get("fingerprint")}
    for v in sorted(reads):
        fp = theirs.get(str(v))
        if isinstance(fp, str) and fp != chain.contract(v).fingerprint:
            return v, fp
    return None


def note_readers(ctx: SyncContext, t: TableConfig) -> None:
    """Write to the operations log each reader that cannot read this batch's contract
    version fully (``readers.py``): what it will do, or that it no longer counts."""
    from deltaferry.consumers import readers_behind

    version = ctx.contracts[t.name].version
    if version <= 1:  # every reader reads v1
        return
    for line in readers_behind(
        ctx.lake, ctx.job.name, t.name, version, ctx.job.reader_timeout_seconds
    ):
        ctx.state.log(ctx.run_id, "readers", "info", table=t.name, detail=line)
