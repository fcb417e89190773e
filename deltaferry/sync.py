"""The steps of one sync, as plain functions; ``flows/sync.py`` runs them as Prefect tasks.

Commit protocol per table (see docs/architecture.md, section 3 "Commit protocol and recovery"):
  plan (local, with exact manifest bytes) -> upload data objects -> put manifest
  create-only (the commit point) -> advance the local checkpoint.
On start, a planned-but-uncommitted batch is finished first: manifest present and
identical -> commit; absent -> rebuild byte-identically and publish; present but
different -> another writer holds the table: terminal ConflictError.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from deltaferry import duck

from contracts import Chain, Contract, load_chain, load_contract
from deltaferry.config import JobConfig, TableConfig, job_home
from deltaferry.delta import Delta, build_delta, new_load_ids, read_changes
from deltaferry.errors import (
    ConfigError,
    ContractViolation,
    ConflictError,
    DowngradeRefused,
    JobBusyError,
    SchemaDrift,
    TerminalError,
    TransientError,
)
from deltaferry.failpoints import failpoint
from deltaferry.keys import Keyring
from deltaferry.state import Plan, StateStore, now
from destinations.lake import LakeStore, open_lake
from destinations.manifest import (
    FORMAT,
    canonical,
    data_key,
    manifest_key,
    producers_prefix,
    sha256,
)
from sources.staging import staging_path

T = TypeVar("T")


@dataclass
class SyncContext:
    """Everything the steps of one run share."""

    job: JobConfig
    state: StateStore
    lake: LakeStore
    run_id: str
    trace_id: str
    contracts: dict[str, Contract] = field(default_factory=dict)
    keyring: Keyring | None = None
    attempt: Callable[[], int] = lambda: 1
    max_attempts: int = 1
    # the delay the retry layer will wait before the next attempt of the current step
    next_delay: Callable[[int], float | None] = lambda attempt: None
    retry_delays: dict[str, list[float]] = field(default_factory=dict)
    # inputs the source set aside in this run (a malformed file), one line each
    skipped: list[str] = field(default_factory=list)
    # source drift met in this run, per table, one line each (contracts/drift.py)
    drift: dict[str, str] = field(default_factory=dict)
    # each table's chain of contract versions; the version its source rows have, and the
    # version this run publishes at (after negotiation with the readers), when they differ
    chains: dict[str, Chain] = field(default_factory=dict)
    migrations: dict[str, tuple[int, int]] = field(default_factory=dict)
    # per table, the source's columns as this run's extract read them (when the source
    # says), and the held rows (key JSON, load id) the table's cut validates again
    source_columns: dict[str, set[str]] = field(default_factory=dict)
    released: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # per table, a version the source's rows could not be downgraded to in this run, and
    # the migration's reason: negotiation publishes above it (``plan_negotiated``)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)

    def step(
        self, step: str, fn: Callable[[], T], *, table: str | None = None, batch: int | None = None
    ) -> T:
        """Run one step and record it (and its outcome) in the operations log."""
        t0 = time.perf_counter()
        attempt = self.attempt()
        try:
            result = fn()
        except BaseException as e:
            cause = f"{type(e).__name__}: {e}"
            if not _is_transient(e):
                outcome = "failed"
            else:  # transient: retried by the step's retry layer unless its budget is spent
                outcome = "exhausted" if attempt >= self.max_attempts else "retry"
                delay = self.next_delay(attempt) if outcome == "retry" else None
                if delay is not None:
                    cause = f"retry in {delay:.3f}s after {cause}"
            self.state.log(
                self.run_id,
                step,
                outcome,
                table=table,
                batch=batch,
                attempt=attempt,
                duration_ms=(time.perf_counter() - t0) * 1000,
                detail=cause[:2000],
            )
            raise
        detail = result if isinstance(result, str) else None
        self.state.log(
            self.run_id,
            step,
            "ok",
            table=table,
            batch=batch,
            attempt=attempt,
            duration_ms=(time.perf_counter() - t0) * 1000,
            detail=detail,
        )
        return result


def _is_transient(e: BaseException) -> bool:
    from deltaferry.errors import TransientError

    return isinstance(e, TransientError)


def open_context(
    job: JobConfig, run_id: str | None = None, trace_id: str | None = None
) -> SyncContext:
    """Load contracts, open state and lake, check the lake answers (ConfigError if not)."""
    chains = {
        t.name: load_chain(t.contract, where=f"job '{job.name}' table '{t.name}'")
        for t in job.tables
    }
    contracts = {
        t.name: chains[t.name].contract(source_version(job, t, chains[t.name])) for t in job.tables
    }
    state = StateStore(job.name)
    lake = open_lake(job.lake, base=job.base_dir)
    lake.check()
    rid = run_id or state.start_run()
    return SyncContext(
        keyring=Keyring(),
        job=job,
        state=state,
        lake=lake,
        run_id=rid,
        trace_id=trace_id or rid,
        contracts=contracts,
        chains=chains,
    )


@contextmanager
def job_lock(job: str) -> Iterator[None]:
    """One local runner per job; a second one stops at once, naming the holder."""
    path = job_home(job) / "run.lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise JobBusyError(
            f"job '{job}' is already running (pid {holder}); this run stops"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# --- planning ---------------------------------------------------------------


@dataclass
class DriftPlan:
    """What a batch does about source drift (``contracts/drift.py``); kept in its manifest
    so that a rebuild cuts the same columns."""

    policy: str
    diff: str
    excluded: list[str]  # staged columns not read at all (evolve)
    held: dict[str, str]  # staged columns whose values hold a row back, with the reason
    draft: str | None = None
    # required columns the source dropped: a row without a value holds back, with the reason
    missing: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy,
            "diff": self.diff,
            "excluded": self.excluded,
            "held": self.held,
        }
        if self.missing:
            out["missing"] = self.missing
        return out

    @classmethod
    def recorded(cls, entry: dict[str, Any] | None) -> DriftPlan | None:
        """The plan a manifest's ``drift`` entry records (for a rebuild)."""
        if not entry:
            return None
        return cls(
            entry["policy"],
            entry["diff"],
            entry["excluded"],
            entry["held"],
            missing=entry.get("missing") or {},
        )


def _dual(
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
    from deltaferry.delta import translate_parts

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
        return version, translate_parts(ctx.job, t, delta.parts, chain, target, version)
    # the published rows were downgraded (lossy to upgrade back): cut the copy again from
    # the staged rows, which must be the same rows
    job = dataclasses.replace(ctx.job, rows_per_file=chunk_rows, max_quarantine_ratio=1.0)
    with _staged_changes(ctx, t, delta.load_ids, chunk_rows, drift) as (_, chunks, _d):
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
        )
    if _keyed_rows(t, copy.parts) != _keyed_rows(t, delta.parts):
        raise ContractViolation(
            f"job '{ctx.job.name}' table '{t.name}': dual publishing: the rows that pass "
            f"v{target} ({delta.rows}) and v{version} ({copy.rows}) differ; nothing published"
        )
    return version, copy.parts


def _keyed_rows(t: TableConfig, parts: list[Any]) -> list[tuple[Any, ...]]:
    """(key..., _seq, _op) of every row of some parts, in order."""
    import io

    import pyarrow.parquet as pq

    from deltaferry.delta import OP_COLUMN, SEQ_COLUMN

    rows: list[tuple[Any, ...]] = []
    for part in parts:
        table = pq.read_table(
            io.BytesIO(part.data), columns=[*t.primary_key, SEQ_COLUMN, OP_COLUMN]
        )
        rows.extend(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))
    return rows


def _migration(ctx: SyncContext, t: TableConfig) -> tuple[Chain, int, int] | None:
    if t.name not in ctx.migrations:
        return None
    return (ctx.chains[t.name], *ctx.migrations[t.name])


def _drift_plan(
    ctx: SyncContext, t: TableConfig, con: Any, scope: tuple[str, list[Any]]
) -> DriftPlan | None:
    """Compare the staged columns with the contract on the rows being cut (``scope``, see
    ``delta.cut_where``) and apply the job's drift policy: freeze raises SchemaDrift naming
    the columns, types and the fix; quarantine and evolve say which columns to leave out
    and which rows to hold. A dropped column is reported under every policy."""
    from contracts.drift import detect, draft_next_version, write_draft
    from sources.columns import INTERNAL_COLUMNS, STAGING_DATASET

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
    )
    if not drift:  # columns without a value on these rows are still left out
        return DriftPlan(ctx.job.drift, "", drift.inert, {}) if drift.inert else None
    policy, diff = ctx.job.drift, drift.describe()
    where = f"job '{ctx.job.name}' table '{t.name}'"
    versioned = f"contract {contract.ref} v{contract.version}"
    if policy == "freeze" and drift.blocking:
        message = (
            f"{where}: the source's columns drifted from {versioned} (drift = freeze): {diff}; "
            f"nothing published. To go on: {drift.remedy()}"
        )
        ctx.state.log(ctx.run_id, "drift", "info", table=t.name, detail=message)
        ctx.drift[t.name] = message
        raise SchemaDrift(message)
    plan = DriftPlan(policy, diff, [], {})
    reason = f"schema drift: column '{{}}' is not in {versioned}"
    if policy != "evolve":
        plan.held = {c: reason.format(c) for c in drift.extra_columns}
    else:  # values of a new type would publish as NULL in the original column: hold them
        plan.held = {c: reason.format(c) for c in drift.retyped}
        plan.excluded = sorted(drift.new)
    if policy != "freeze":  # a row without a dropped required column waits for the contract
        plan.missing = {
            c: f"schema drift: required column '{c}' of {versioned} was dropped by the source"
            for c in drift.dropped
        }
    plan.excluded = sorted({*plan.excluded, *drift.inert})
    if policy == "evolve" and (drift.new or drift.dropped):
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
    ctx.drift[t.name] = detail
    return plan


@contextmanager
def _staged_changes(
    ctx: SyncContext,
    t: TableConfig,
    load_ids: list[str] | None,
    chunk_rows: int,
    drift: DriftPlan | None = None,
) -> Iterator[tuple[list[str], Iterator[Any] | None, DriftPlan | None]]:
    """Load ids to cut (the given ones, or all not yet published), a stream of their rows,
    and what is done about source drift (``drift`` when rebuilding a plan, else detected).

    The stream also holds the held rows due for validation again (``ctx.released``: when
    planning, set here from the quarantine, see ``StateStore.due_for_release``; when
    rebuilding, the plan's own). Nothing to cut: ``([], None, None)``."""
    from deltaferry.delta import cut_where, released_rows

    path = staging_path(ctx.job.name)
    if not path.exists():
        yield [], None, None
        return
    con = duck.connect(path, read_only=True, alias="staging")
    try:
        ids = (
            load_ids
            if load_ids is not None
            else new_load_ids(con, ctx.state.published_load_ids(t.name))
        )
        if load_ids is None:
            due = ctx.state.due_for_release(t.name, held_under(ctx, t))
            ctx.released[t.name] = due
        released = released_rows(con, t, ctx.released.get(t.name, []))
        if released is None:
            ctx.released[t.name] = []
        else:  # only those still staged as held
            from deltaferry.delta import key_json

            still = {(key_json(t, r), r["_dlt_load_id"]) for r in released.to_pylist()}
            ctx.released[t.name] = [p for p in ctx.released[t.name] if p in still]
        if not ids and released is None:
            yield [], None, None
            return
        if load_ids is None:
            drift = _drift_plan(ctx, t, con, cut_where(con, t, ids, released))
        exclude = frozenset(drift.excluded) if drift else frozenset()
        yield ids, read_changes(con, t, ids, chunk_rows, exclude, released), drift
    finally:
        con.close()


def held_under(ctx: SyncContext, t: TableConfig) -> str:
    """The fingerprint quarantine records are held under: the contract version of the
    source's rows (a held row is validated again once it changes)."""
    return held_under_contract(ctx.job, t, ctx.chains[t.name])


def held_under_contract(job: JobConfig, t: TableConfig, chain: Chain) -> str:
    """``held_under`` from a job and a loaded chain (for ``deltaferry quarantine``)."""
    return chain.contract(source_version(job, t, chain)).fingerprint


def contract_version(job: JobConfig, t: TableConfig, chain: Chain, version: int) -> Contract:
    """A version of the table's chain, or a one-line error naming job and table."""
    try:
        return chain.contract(version)
    except ConfigError as e:
        raise ConfigError(f"job '{job.name}' table '{t.name}': {e}") from None


def source_version(job: JobConfig, t: TableConfig, chain: Chain) -> int:
    """The contract version the table's source rows have (``source_version``, or the newest)."""
    v = t.source_version or chain.latest
    if v not in chain.versions:
        raise ConfigError(
            f"job '{job.name}' table '{t.name}': source_version {v} is not a version of contract "
            f"{chain.ref} ({', '.join(f'v{n}' for n in chain.versions)})"
        )
    return v


def negotiate(ctx: SyncContext, t: TableConfig) -> int:
    """The version this batch is published at: a version pinned by ``contracts rollback``,
    else the highest version every active reader reads (the newest without readers); then
    the nearest one the source's rows can be migrated to. Recorded in the operations log."""
    from deltaferry.readers import age_seconds, read_consumers

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
    """Cut, validate and encode the next batch; record the plan. None if nothing to publish."""
    ckpt = ctx.state.checkpoint(t.name)
    with _staged_changes(ctx, t, None, ctx.job.rows_per_file) as (load_ids, chunks, drift):
        if not load_ids and not ctx.released.get(t.name):
            return None
        if len(ctx.chains[t.name].versions) > 1:
            negotiate(ctx, t)
        delta = (
            build_delta(
                ctx.job,
                t,
                ctx.contracts[t.name],
                chunks,
                load_ids,
                ckpt.seq_end + 1,
                held=drift.held if drift else None,
                migration=_migration(ctx, t),
                missing=drift.missing if drift else None,
                open_keys={pk for pk, *_ in ctx.state.open_held(t.name)},
            )
            if chunks is not None
            else None
        )
    released = ctx.released.get(t.name, [])
    if released and delta is not None:
        again = {q["pk"] for q in delta.quarantine} & {pk for pk, _ in released}
        ctx.state.log(
            ctx.run_id,
            "quarantine",
            "info",
            table=t.name,
            detail=f"job '{ctx.job.name}' table '{t.name}': {len(released)} held row(s) "
            f"validated again against {ctx.contracts[t.name].ref} "
            f"v{ctx.contracts[t.name].version}: {len(released) - len(again)} published, "
            f"{len(again)} held again",
        )
    if delta is None or delta.rows == 0:
        # no change for this table in these loads, or every change held back by the contract
        ctx.state.consume_without_batch(
            t.name,
            load_ids,
            ctx.run_id,
            delta.quarantine if delta else [],
            held_under(ctx, t),
            delta.touched if delta else set(),
        )
        return None
    check_chain_mode(ctx, t)
    if len(ctx.chains[t.name].versions) == 1:  # with a chain, negotiate read the readers
        _note_readers(ctx, t)
    if ctx.job.dual_publish:
        delta.also = _dual(ctx, t, delta, None, drift, ctx.job.rows_per_file)
    batch = ckpt.batch + 1
    clock = logical_time(ctx, t) if ctx.job.multi_producer else None
    manifest = make_manifest(ctx, t, batch, ckpt.manifest_sha256, delta, clock)
    if drift is not None:
        manifest["drift"] = drift.manifest()
    if t.name in ctx.migrations:
        start, target = ctx.migrations[t.name]
        chain = ctx.chains[t.name]
        manifest["migration"] = {
            "from": start,
            "to": target,
            "steps": chain.steps(start, target),
            "source_fingerprint": chain.contract(start).fingerprint,
        }
    if ctx.keyring is not None:
        manifest = ctx.keyring.sign(manifest)
    body = canonical(manifest)
    plan = Plan(
        t.name,
        batch,
        load_ids,
        delta.seq_start,
        delta.seq_end,
        delta.rows,
        len({q["pk"] for q in delta.quarantine}),
        body,
        sha256(body),
        ctx.job.rows_per_file,
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
    return plan, delta


def _note_readers(ctx: SyncContext, t: TableConfig) -> None:
    """Write to the operations log each reader that cannot read this batch's contract
    version fully (``readers.py``): what it will do, or that it no longer counts."""
    from deltaferry.readers import readers_behind

    version = ctx.contracts[t.name].version
    if version <= 1:  # every reader reads v1
        return
    for line in readers_behind(
        ctx.lake, ctx.job.name, t.name, version, ctx.job.reader_timeout_seconds
    ):
        ctx.state.log(ctx.run_id, "readers", "info", table=t.name, detail=line)


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


def logical_time(ctx: SyncContext, t: TableConfig) -> dict[str, Any]:
    """The hybrid logical timestamp of this producer's next batch of ``t`` (see
    ``deltaferry/hlc.py``), after its own last batch and the newest batch of every other
    producer it can see in the lake. A clock further apart than the job's
    ``max_clock_skew_seconds`` is written to the operations log."""
    from deltaferry import hlc

    job, me = ctx.job, ctx.job.producer_id
    last = (ctx.state.last_manifest(t.name) or {}).get("hlc") or 0
    seen: dict[str, int] = {}
    for producer in ctx.lake.children(producers_prefix(job.name, t.name)):
        if producer == me:
            continue
        head = _chain_head(ctx, t, producer)
        if head is not None:
            seen[producer] = head
    now_ms = hlc.wall_ms()
    stamp = hlc.tick(last, max(seen.values(), default=0), now_ms)
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
    return {"hlc": stamp, "hlc_seen": seen}


def _chain_head(ctx: SyncContext, t: TableConfig, producer: str) -> int | None:
    """The logical timestamp of another producer's newest batch (signature checked), or None."""
    import json

    from deltaferry.verify import list_batches

    from deltaferry.errors import VerificationError

    batches = list_batches(ctx.lake, ctx.job.name, t.name, producer)
    if not batches:
        return None
    key = manifest_key(ctx.job.name, t.name, batches[-1], producer)
    where = f"job '{ctx.job.name}' table '{t.name}' producer '{producer}' batch {batches[-1]}"
    raw = ctx.lake.get(key)
    try:
        m = json.loads(raw) if raw is not None else None
        if not isinstance(m, dict):
            raise VerificationError(f"{where}: the newest manifest is unreadable")
        if (m.get("job"), m.get("table"), m.get("producer_id")) != (
            ctx.job.name,
            t.name,
            producer,
        ):
            raise VerificationError(f"{where}: the newest manifest is not this chain's")
        if ctx.keyring is not None:
            ctx.keyring.verify(m, where=where)
        value = m.get("hlc")
        if not isinstance(value, int) or isinstance(value, bool):
            raise VerificationError(f"{where}: the newest manifest has no logical timestamp")
    except (ValueError, VerificationError) as e:
        # another producer's broken head must not stop this one; readers will refuse it
        ctx.state.log(ctx.run_id, "clock", "info", table=t.name, detail=f"ignored: {e}")
        return None
    return value


def _also_manifest(ctx: SyncContext, t: TableConfig, batch: int, delta: Delta) -> dict[str, Any]:
    """The ``also`` entry of a dual-published batch: the newer version and its files."""
    if delta.also is None:
        return {}
    version, parts = delta.also
    c = ctx.chains[t.name].contract(version)
    return {
        "also": {
            "contract": {"ref": c.ref, "version": c.version, "fingerprint": c.fingerprint},
            "files": [
                {
                    "key": data_key(
                        ctx.job.name, t.name, batch, i, p.sha256, ctx.job.chain, version
                    ),
                    "sha256": p.sha256,
                    "bytes": len(p.data),
                    "rows": p.rows,
                    "ops": {"upsert": p.upserts, "delete": p.deletes},
                }
                for i, p in enumerate(parts)
            ],
        }
    }


def make_manifest(
    ctx: SyncContext,
    t: TableConfig,
    batch: int,
    prev: str | None,
    delta: Delta,
    clock: dict[str, Any] | None = None,
) -> dict[str, Any]:
    c = ctx.contracts[t.name]
    job = ctx.job.name
    chain = ctx.job.chain
    manifest = {
        "format": FORMAT,
        "job": job,
        "table": t.name,
        "batch": batch,
        "prev_sha256": prev,
        "producer_id": ctx.job.producer_id,
        "contract": {"ref": c.ref, "version": c.version, "fingerprint": c.fingerprint},
        "primary_key": list(t.primary_key),
        "cursor": {"column": t.cursor, "min": delta.cursor_min, "max": delta.cursor_max},
        "seq": {"start": delta.seq_start, "end": delta.seq_end},
        "load_ids": delta.load_ids,
        "rows": delta.rows,
        "ops": {"upsert": delta.upserts, "delete": delta.deletes},
        "quarantined": len({q["pk"] for q in delta.quarantine}),
        "files": [
            {
                "key": data_key(job, t.name, batch, i, p.sha256, chain),
                "sha256": p.sha256,
                "bytes": len(p.data),
                "rows": p.rows,
                "ops": {"upsert": p.upserts, "delete": p.deletes},
            }
            for i, p in enumerate(delta.parts)
        ],
        **_also_manifest(ctx, t, batch, delta),
        "trace_id": ctx.trace_id,
        "created_at": now().isoformat(),
        "signature": None,
    }
    if clock is not None:
        manifest.update(clock)
    refused = ctx.refused.get(t.name)
    if refused is not None and refused[0] < c.version:
        manifest["downgrade_refused"] = {"to": refused[0], "reason": refused[1]}
    return manifest


# --- publishing ---------------------------------------------------------------


def upload_parts(ctx: SyncContext, plan: Plan, delta: Delta) -> int:
    """Upload every data object of the plan; the manifest is written only after all succeed."""
    import json

    planned = json.loads(plan.manifest)
    files = planned["files"]
    parts = list(delta.parts)
    if "also" in planned:  # dual publishing: the newer version's copy goes up too
        files = files + planned["also"]["files"]
        parts += delta.also[1] if delta.also else []
    sent = 0
    for f, part in zip(files, parts, strict=True):
        if f["sha256"] != part.sha256:
            raise TerminalError(
                f"job '{ctx.job.name}' table '{plan.table}' batch {plan.batch}: part {f['key']} "
                "does not match its plan"
            )
        ctx.lake.put(f["key"], part.data)
        sent += len(part.data)
        failpoint("after_part_upload")
    failpoint("after_upload")
    return sent


def put_manifest(ctx: SyncContext, plan: Plan) -> str:
    """Write the manifest create-only. A 412 with our own bytes already there is a lost ack: success."""
    key = manifest_key(ctx.job.name, plan.table, plan.batch, ctx.job.chain)
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
        f"{ctx.lake.url}/{key} ({_describe(stored)}; ours sha256 {plan.manifest_sha256[:16]}); another writer "
        "holds this table. Nothing was overwritten; stop other producers and investigate before running again"
    )


def _describe(stored: bytes | None) -> str:
    """Who wrote a manifest, for conflict messages."""
    if stored is None:
        return "unreadable"
    import json

    try:
        m = json.loads(stored)
        return (
            f"sha256 {sha256(stored)[:16]}, producer '{m.get('producer_id')}', "
            f"trace {m.get('trace_id')}, created {m.get('created_at')}, {len(stored)} bytes"
        )
    except ValueError:
        return (
            f"sha256 {sha256(stored)[:16]}, not JSON, {len(stored)} bytes: a torn write the store "
            "accepted (S3 refuses incomplete bodies; this store did not); if no other producer "
            "writes this table, delete that object and run again"
        )


def commit(ctx: SyncContext, plan: Plan) -> None:
    failpoint("before_checkpoint")
    ctx.state.commit_checkpoint(plan)


def agree_with_lake(ctx: SyncContext, t: TableConfig) -> str:
    """The lake's chain for ``t`` ends at this producer's checkpoint (or at its own planned
    batch, stored before a lost acknowledgement); else ``LakeMismatchError``, nothing
    written (``deltaferry/agreement.py``)."""
    from deltaferry.agreement import check_lake

    from deltaferry.errors import LakeMismatchError

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
    from deltaferry.errors import LakeMismatchError

    stopped: list[tuple[str, LakeMismatchError]] = []
    for t in ctx.job.tables:
        try:
            ctx.step("lake-head", lambda t=t: agree_with_lake(ctx, t), table=t.name)
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


def recover_table(ctx: SyncContext, t: TableConfig) -> str | None:
    """Finish a planned batch left by an interrupted run. Returns what was done, or None."""
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
                f"stop the other writer, then `deltaferry reset {ctx.job.name} --table {t.name} --reason \"<why>\"` adopts the lake's chain"
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
    import json

    planned = json.loads(plan.manifest)
    recorded = planned.get("drift")
    chain = ctx.chains[t.name]  # the plan's own version and migration, whatever readers say now
    version = int((planned.get("contract") or {}).get("version") or chain.latest)
    ctx.contracts[t.name] = contract_version(ctx.job, t, chain, version)
    moved = planned.get("migration")
    if moved:
        ctx.migrations[t.name] = (int(moved["from"]), int(moved["to"]))
    else:
        ctx.migrations.pop(t.name, None)
    drift = DriftPlan.recorded(recorded)
    ctx.released[t.name] = ctx.state.plan_releases(t.name, plan.batch)
    with _staged_changes(ctx, t, plan.load_ids, plan.chunk_rows, drift) as (_, chunks, _d):
        if chunks is None:
            raise TerminalError(
                f"job '{ctx.job.name}' table '{t.name}' batch {plan.batch}: staged rows for the "
                f"planned batch are gone; restore the staging file, or run `deltaferry reset "
                f"{ctx.job.name} --table {t.name} --reason \"<why>\"` to read the source again from the lake's head"
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
            migration=_migration(ctx, t),
            missing=drift.missing if drift else None,
        )
    if "also" in planned:
        also_version = int(planned["also"]["contract"]["version"])
        delta.also = _dual(ctx, t, delta, also_version, drift, plan.chunk_rows)
    want = [f["sha256"] for f in planned["files"] + (planned.get("also") or {}).get("files", [])]
    got = [p.sha256 for p in delta.parts + (delta.also[1] if delta.also else [])]
    if want != got:
        raise TerminalError(
            f"job '{ctx.job.name}' table '{t.name}' batch {plan.batch}: rebuilt data differs "
            f"from the plan (contract or library changed since?); expected {want}, got {got}. "
            f"Restore the contract the plan was cut with, or run `deltaferry plan discard "
            f"{ctx.job.name} --table {t.name} --reason \"<why>\"` to cut it again at the current one"
        )
    return delta


def preflight_job(job: JobConfig) -> None:
    """Check everything a run needs before it starts: contracts import, the source answers and
    has every table and column, the lake exists. Raises ConfigError (or TransientError)."""
    from sources import source_module

    for t in job.tables:
        load_contract(t.contract, where=f"job '{job.name}' table '{t.name}'")
    source_module(job).preflight_source(job)
    open_lake(job.lake, base=job.base_dir).check()
