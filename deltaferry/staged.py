"""What a batch is cut from: the staged loads not yet published and the held rows due for
validation again (:func:`staged_changes`), and what the job's drift policy does with the
source's columns (:func:`plan_drift`, :class:`DriftPlan`). The drift decision is kept in
the batch's manifest, so that a rebuild (``deltaferry/commit.py:rebuild``) reads the same
rows and columns.

See docs/architecture.md, section 6 "Contracts, versions and drift".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb

from deltaferry import duck
from deltaferry.config import TableConfig, job_home
from deltaferry.context import SyncContext
from deltaferry.cut import Changes, cut_where, new_load_ids, read_changes, released_rows
from deltaferry.delta import key_json
from deltaferry.duck import ident
from deltaferry.errors import SchemaDrift
from deltaferry.keyrange import KeyRange
from deltaferry.negotiate import held_under, source_version
from deltaferry.quarantine import DROPPED
from destinations.manifest import Drift
from sources.staging import staging_path

if TYPE_CHECKING:
    from contracts import Contract


@dataclass
class DriftPlan:
    """What a batch does about source drift (``contracts/drift.py``); kept in its manifest
    so that a rebuild cuts the same columns."""

    policy: str
    diff: str
    excluded: list[str]  # staged columns not read at all (evolve)
    held: dict[str, str]  # staged columns whose values hold a row back, with the reason
    draft: str | None = None
    # columns the source dropped (required, or nullable and staged before): a row without
    # a value holds back, with the reason
    missing: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> Drift:
        """The manifest's ``drift`` entry (``missing`` only when there is any)."""
        entry: dict[str, Any] = {
            "policy": self.policy,
            "diff": self.diff,
            "excluded": self.excluded,
            "held": self.held,
        }
        if self.missing:
            entry["missing"] = self.missing
        return Drift.model_validate(entry)  # validated: the policy is the jobs file's string

    @classmethod
    def recorded(cls, entry: Drift | None) -> DriftPlan | None:
        """The plan a manifest's ``drift`` entry records (for a rebuild)."""
        if entry is None:
            return None
        return cls(
            entry.policy, entry.diff, entry.excluded, entry.held, missing=entry.missing or {}
        )


def _selects_rows(con: Any, dataset: str, table: str, scope: tuple[str, list[Any]]) -> bool:
    """Whether ``scope`` selects a staged row of ``dataset.table`` (True when the table is
    not there: the drift check then says what it finds)."""
    try:
        row = duck.fetch_one(
            con,
            f"SELECT EXISTS (SELECT 1 FROM {ident(dataset)}.{ident(table)} s WHERE {scope[0]})",
            scope[1],
        )
    except duckdb.CatalogException:
        return True
    return bool(row and row[0])


def plan_drift(
    ctx: SyncContext, t: TableConfig, con: Any, scope: tuple[str, list[Any]]
) -> DriftPlan | None:
    """Compare the staged columns with the contract on the rows being cut (``scope``, see
    ``cut.cut_where``) and apply the job's drift policy: freeze raises SchemaDrift naming
    the columns, types and the fix; quarantine and evolve say which columns to leave out
    and which rows to hold. A dropped column is reported under every policy."""
    from contracts.drift import detect, draft_next_version, write_draft
    from deltaferry.adopt import published_columns
    from sources.columns import INTERNAL_COLUMNS, STAGING_DATASET

    if not _selects_rows(con, STAGING_DATASET, t.name, scope):
        return None  # no rows to cut, no columns to compare (and no contract schema to build)
    chain = ctx.chains[t.name]  # staging has the source's columns: its version's contract
    contract = chain.contract(source_version(ctx.job, t, chain))
    drift = detect(
        con,
        STAGING_DATASET,
        t.name,
        contract,
        set(INTERNAL_COLUMNS),
        scope=scope,
        source_columns=ctx.source_columns.get(t.name),
        published=published_columns(ctx, t) if t.name in ctx.source_columns else None,
    )
    policy, diff = ctx.job.drift, drift.describe()
    where = f"job '{ctx.job.name}' table '{t.name}'"
    versioned = f"contract {contract.ref} v{contract.version}"
    if policy == "freeze" and drift.blocking:
        message = (
            f"{where}: the source's columns drifted from {versioned} (drift = freeze): {diff}; "
            f"nothing published. To go on: {drift.remedy(ctx.job.name, t.name)}"
        )
        ctx.state.log(ctx.run_id, "drift", "info", table=t.name, detail=message)
        ctx.drift[t.name] = message
        raise SchemaDrift(message)
    # said once the batch can be cut (a stopped run would scan staging and say it again)
    left_out = _published_without(ctx, t, con, contract, scope)
    if left_out:
        ctx.state.log(ctx.run_id, "drift", "info", table=t.name, detail=left_out)
        ctx.drift[t.name] = left_out
    if not drift:  # columns without a value on these rows are still left out
        return DriftPlan(policy, "", drift.inert, {}) if drift.inert else None
    plan = DriftPlan(policy, diff, [], {})
    reason = f"schema drift: column '{{}}' is not in {versioned}"
    if policy != "evolve":
        plan.held = {c: reason.format(c) for c in drift.extra_columns}
    else:  # values of a new type would publish as NULL in the original column: hold them
        plan.held = {c: reason.format(c) for c in drift.retyped}
        plan.excluded = sorted(drift.new)
    if policy != "freeze":  # a row without a dropped column waits for the contract
        plan.missing = {
            c: f"schema drift: required column '{c}' of {versioned} {DROPPED}"
            for c in drift.dropped
        }
        plan.missing |= {  # published, the row would overwrite the replica's value with NULL
            c: f"schema drift: column '{c}' of {versioned} {DROPPED} (the row would publish "
            "it NULL); a contract version deprecating it, or the column back, releases the row"
            for c in drift.dropped_nullable
        }
    plan.excluded = sorted({*plan.excluded, *drift.inert})
    if policy == "evolve" and (drift.new or drift.dropped or drift.dropped_nullable):
        staged = duck.column_types(con, t.name, STAGING_DATASET)
        source = draft_next_version(contract, drift, staged)
        plan.draft = str(write_draft(job_home(ctx.job.name), t.name, contract.version + 1, source))
    detail = f"{where}: {diff} (drift = {policy}, {versioned})"
    if plan.held:
        detail += f"; rows with a value in {', '.join(plan.held)} are quarantined"
    if plan.missing:
        detail += f"; rows without a value in {', '.join(plan.missing)} are quarantined"
    if plan.excluded:
        detail += f"; published without {', '.join(plan.excluded)}"
    if plan.draft:
        detail += f"; next version drafted at {plan.draft}"
    ctx.state.log(ctx.run_id, "drift", "info", table=t.name, detail=detail)
    ctx.drift[t.name] = f"{left_out}; {detail}" if left_out else detail
    return plan


def _published_without(
    ctx: SyncContext, t: TableConfig, con: Any, contract: Contract, scope: tuple[str, list[Any]]
) -> str | None:
    """One line when ``contract`` has columns the table's last batch left out
    (``drift.excluded`` of its manifest: new columns ``evolve`` did not publish) and staged
    rows outside this cut (``scope``) hold a value in one: those rows were published
    without it, and no replica has the value until the row changes at the source again.
    Said at the first batch cut under the version that has the columns (the batch after
    it leaves none of them out), with the count and the fix; None otherwise."""
    from sources.columns import STAGING_DATASET

    last = ctx.state.last_manifest(t.name)
    if last is None or last.drift is None:
        return None
    columns = [c for c in last.drift.excluded if c in contract.columns]
    if not columns:
        return None
    having = " OR ".join(f"s.{ident(c)} IS NOT NULL" for c in columns)
    try:
        row = duck.fetch_one(
            con,
            f"SELECT count(*) FROM {ident(STAGING_DATASET)}.{ident(t.name)} s "
            f"WHERE ({having}) AND NOT coalesce(({scope[0]}), false)",
            scope[1],
        )
    except duckdb.Error:  # a column not staged (a contract naming it otherwise): say nothing
        return None
    rows = int(row[0]) if row else 0
    if not rows:
        return None
    names = ", ".join(columns)
    return (
        f"job '{ctx.job.name}' table '{t.name}': contract {contract.ref} v{contract.version} "
        f"publishes {names}, which batch {last.batch} and those before it left out "
        f"(drift = {last.drift.policy}): {rows} row(s) published before hold a value there "
        "that no replica has; they reach the lake when they change at the source, or now "
        f"with `deltaferry reset {ctx.job.name} --table {t.name} --reason 'publish {names}'` "
        "(the table is read again whole; rows the lake has as they are are not published again)"
    )


def _resume_from(ctx: SyncContext, t: TableConfig, resume: KeyRange) -> KeyRange:
    """Where a split cut goes on: after ``resume``, while the table's primary key is the
    one the position was taken under. When the jobs file changed the key (its columns or
    their order) since, the position means nothing under the new key: the cut's loads are
    cut again from the first key (``KeyRange()``; rows already published are published
    again, and the replica keeps the newer ``_seq``: nothing is lost), and the operations
    log says so."""
    if resume.columns is None or resume.columns == tuple(t.primary_key):
        return resume
    ctx.state.log(
        ctx.run_id,
        "cut",
        "info",
        table=t.name,
        detail=f"job '{ctx.job.name}' table '{t.name}': the primary key changed from "
        f"{list(resume.columns)} to {list(t.primary_key)} while a split load was half-way "
        f"({resume.describe()}); its loads are cut again from the first key, so rows "
        "already published are published again (the newer _seq wins in the replica)",
    )
    return KeyRange()


@contextmanager
def staged_changes(
    ctx: SyncContext,
    t: TableConfig,
    load_ids: list[str] | None,
    chunk_rows: int,
    drift: DriftPlan | None = None,
    keys: KeyRange = KeyRange(),
) -> Iterator[tuple[list[str], Changes | None, DriftPlan | None]]:
    """Load ids to cut (the given ones, or all not yet published), a stream of their rows
    (``cut.Changes``), and what is done about source drift (``drift`` when rebuilding a
    plan, else detected).

    Planning (``load_ids`` None) reads at most the job's ``max_batch_rows`` rows, going on
    from where the last batch of a cut that was split stopped (``StateStore.open_cut``:
    that cut's loads, keys after its last one); rebuilding reads the plan's ``keys``.
    ``Changes.keys`` then says which keys the batch carries.

    The stream also holds the held rows due for validation again (``ctx.released``: when
    planning, set here from the quarantine, see ``StateStore.due_for_release``; when
    rebuilding, the plan's own). Nothing to cut: ``([], None, None)``."""
    path = staging_path(ctx.job.name)
    if not path.exists():
        yield [], None, None
        return
    con = duck.connect(path, read_only=True, alias="staging")
    try:
        limit = None
        if load_ids is not None:
            ids = load_ids
        else:
            limit = ctx.job.max_batch_rows
            open_cut = ctx.state.open_cut(t.name)
            if open_cut is not None:  # a split cut goes on before any newer load
                ids, keys = open_cut[0], _resume_from(ctx, t, open_cut[1])
            else:
                ids = new_load_ids(con, ctx.state.published_load_ids(t.name))
        if load_ids is None:
            due = ctx.state.due_for_release(
                t.name, lambda: held_under(ctx, t), ctx.source_columns.get(t.name)
            )
            ctx.released[t.name] = due
        released = released_rows(con, t, ctx.released.get(t.name, []))
        if released is None:
            ctx.released[t.name] = []
        else:  # only those still staged as held
            still = {(key_json(t, r), r["_dlt_load_id"]) for r in released.to_pylist()}
            ctx.released[t.name] = [p for p in ctx.released[t.name] if p in still]
        if not ids and released is None:
            yield [], None, None
            return
        if load_ids is None:
            drift = plan_drift(ctx, t, con, cut_where(con, t, ids, released, keys))
        exclude = frozenset(drift.excluded) if drift else frozenset()
        changes = read_changes(
            con, t, ids, chunk_rows, exclude, released, keys, limit, job=ctx.job.name
        )
        try:
            yield ids, changes, drift
        finally:
            if changes is not None:
                changes.close()
    finally:
        con.close()
