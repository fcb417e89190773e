"""Dual publishing (``dual_publish``): a batch published at a negotiated older contract
version is published again at the newest version the source's rows reach, as extra files
named in the manifest's ``also`` entry (:func:`dual_copy`, :func:`also_manifest`).

See docs/architecture.md, section 6 "Contracts, versions and drift".
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deltaferry.config import TableConfig
from deltaferry.context import SyncContext
from deltaferry.delta import (
    OP_COLUMN,
    SEQ_COLUMN,
    Delta,
    build_delta,
    read_parquet,
    translate_parts,
)
from deltaferry.errors import ContractViolation
from deltaferry.negotiate import source_version
from deltaferry.staged import DriftPlan, staged_changes
from destinations.manifest import Also, ContractRef, data_key


def dual_copy(
    ctx: SyncContext,
    t: TableConfig,
    delta: Delta,
    version: int | None,
    drift: DriftPlan | None,
    chunk_rows: int,
) -> tuple[int, list[Any]] | None:
    """The batch again at the newest version the source's rows reach (or ``version``, when
    rebuilding a plan), if newer than the version it is published at. Not while a
    ``contracts rollback`` pin holds the table: the pin is for every reader."""
    chain = ctx.chains[t.name]
    target = ctx.contracts[t.name].version
    source = source_version(ctx.job, t, chain)
    if version is None:
        if ctx.state.contract_pin(t.name) is not None:
            return None
        ahead = [v for v in chain.versions if v > target and chain.reachable(source, v)]
        if not ahead:
            return None
        version = max(ahead)
    if source <= target:  # the published rows hold all the source had: upgrade them
        return version, translate_parts(
            ctx.job, t, delta.parts, chain, target, version, zones=delta.zones
        )
    # the published rows were downgraded (lossy to upgrade back): cut the copy again from
    # the staged rows, which must be the same rows
    job = dataclasses.replace(ctx.job, rows_per_file=chunk_rows, max_quarantine_ratio=1.0)
    with staged_changes(ctx, t, delta.load_ids, chunk_rows, drift, delta.keys) as (
        _,
        chunks,
        _d,
    ):
        if chunks is None:  # the staging file, or the batch's loads in it, are gone
            raise ContractViolation(
                f"job '{ctx.job.name}' table '{t.name}': dual publishing v{version}: the batch's "
                "staged rows are gone, so its copy cannot be cut again from them; nothing "
                "published. Run without dual_publish, or publish at the newest version"
            )
        copy = build_delta(
            job,
            t,
            chain.contract(version),
            chunks,
            delta.load_ids,
            delta.seq_start,
            held=drift.held if drift else None,
            migration=(chain, source, version) if version != source else None,
            missing=drift.missing if drift else None,
            zones=delta.zones,
        )
    if _keyed_rows(t, copy.parts) != _keyed_rows(t, delta.parts):
        raise ContractViolation(
            f"job '{ctx.job.name}' table '{t.name}': dual publishing: the rows that pass "
            f"v{target} ({delta.rows}) and v{version} ({copy.rows}) differ; nothing published"
        )
    return version, copy.parts


def _keyed_rows(t: TableConfig, parts: list[Any]) -> list[tuple[Any, ...]]:
    """(key..., _seq, _op) of every row of some parts, in order."""
    rows: list[tuple[Any, ...]] = []
    for part in parts:
        table = read_parquet(part.data, columns=[*t.primary_key, SEQ_COLUMN, OP_COLUMN])
        rows.extend(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))
    return rows


def also_manifest(ctx: SyncContext, t: TableConfig, batch: int, delta: Delta) -> Also | None:
    """The ``also`` entry of a dual-published batch: the newer version and its files."""
    if delta.also is None:
        return None
    version, parts = delta.also
    c = ctx.chains[t.name].contract(version)
    job, chain = ctx.job.name, ctx.job.chain
    return Also(
        contract=ContractRef(ref=c.ref, version=c.version, fingerprint=c.fingerprint),
        files=[
            p.data_file(data_key(job, t.name, batch, i, p.sha256, chain, version))
            for i, p in enumerate(parts)
        ],
    )
