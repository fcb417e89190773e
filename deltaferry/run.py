"""One run of a job, around its steps: what ``flows/sync.py:sync_job`` does between and
after the steps, as plain functions (no Prefect here; the flow wires them to tasks, hooks,
events and artifacts).

- :func:`open_run`: the run's context and its first operations-log entry (the trace id);
- :func:`sync_steps`: the order of a run's steps, through a :class:`Steps` that runs each
  one (the Prefect flow's tasks, or the simulator's plain calls: ``tests/support/sim``);
- :func:`tables_to_recover`: the tables the ``recover`` step has work for;
- :func:`plan_logged`: the plan step with its line in the operations log;
- :func:`recorded`: the run's row in ``runs``, finished ``ok`` or ``failed`` by the
  process that ran it, whatever ends it (short of a SIGKILL: recovery's case);
- :class:`RunSummary`: what the run did, the flow's return value and what its report says;
- :func:`lags_exceeded`, :func:`failure_event`, :func:`run_tags`, :func:`run_name`: what
  the run's events, tags and name say.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from deltaferry.checkpoints import Plan
from deltaferry.config import JobConfig, TableConfig
from deltaferry.context import SyncContext, open_context
from deltaferry.delta import Delta
from deltaferry.errors import ContractViolation, DeltaferryError, TerminalError, TransientError
from deltaferry.extract import ExtractResult
from deltaferry.failpoints import bug, killed
from deltaferry.plan import plan_negotiated
from deltaferry.state import hold, state_path


def open_run(job: JobConfig, trace_id: str | None = None) -> SyncContext:
    """``open_context`` and the run's first operations-log entry, which names its trace
    id, on one state connection."""
    with hold(state_path(job.name)):
        ctx = open_context(job, trace_id=trace_id)
        ctx.state.log(ctx.run_id, "run", "info", detail=f"trace_id={ctx.trace_id}")
    return ctx


class Steps(Protocol):
    """How a run's steps are run: each method runs one step of ``ctx`` (with whatever retry
    layer the runner has) and returns its result; the ``*_done`` methods hear what a step
    did (events, log lines). ``flows/sync.py`` runs them as Prefect tasks; the simulator
    (``tests/support/sim``) calls the plain functions."""

    def agree(self) -> None: ...

    def recover(self, t: TableConfig) -> str | None: ...

    def recovered(self, t: TableConfig, done: str | None, batch: int | None) -> None: ...

    def extract(self) -> ExtractResult: ...

    def plan(self, t: TableConfig) -> tuple[Plan, Delta] | None: ...

    def upload(self, plan: Plan, delta: Delta) -> int: ...

    def manifest(self, plan: Plan) -> str: ...

    def checkpoint(self, plan: Plan) -> None: ...

    def published(self, plan: Plan, delta: Delta, sent: int) -> None: ...


def sync_steps(ctx: SyncContext, summary: RunSummary, steps: Steps) -> None:
    """The steps of one run, in order (docs/architecture.md, section 2): lake-head
    agreement; recovery of the tables that need it; the extract; then per table in job
    order plan -> upload -> manifest -> checkpoint, once, or once per range of keys for a
    cut split at ``max_batch_rows`` (each range committed before the next is cut). What
    each step did goes into ``summary``.

    A table whose changes break its contract (``ContractViolation`` from its plan step,
    before anything of the batch is stored) does not stop the job's other tables: they are
    published, and then the run fails with that table's error (several tables' joined).
    So does a table whose source data the extract could not read (``TableReadError``, left
    out of the extract: ``ExtractResult.stopped``); such a table plans nothing this run."""
    steps.agree()
    for t in tables_to_recover(ctx):  # none in the steady state: no task runs
        summary.current = t.name
        done = steps.recover(t)
        steps.recovered(t, done, summary.note_recovered(ctx, t, done))
    summary.current = None
    extracted = steps.extract()
    summary.note_extracted(extracted, ctx.skipped)
    stopped: list[tuple[str, TerminalError]] = []
    for t in ctx.job.tables:
        summary.current = t.name
        unread = extracted.stopped.get(t.name)
        if unread is not None:  # its source data could not be read: nothing else this run
            summary.note_stopped(t.name, unread)
            stopped.append((t.name, unread))
            continue
        try:
            _publish_table(t, summary, steps, ctx.held_back)
        except ContractViolation as e:
            # the table's changes break its contract: nothing of it was stored (the plan
            # step refuses before it records a plan), so the job's other tables go on
            summary.note_stopped(t.name, e)
            stopped.append((t.name, e))
    if stopped:
        summary.current = stopped[0][0]
        raise stopped[0][1] if len(stopped) == 1 else _several_stopped(ctx, stopped)


def _publish_table(
    t: TableConfig, summary: RunSummary, steps: Steps, held_back: dict[str, int]
) -> None:
    """plan -> upload -> manifest -> checkpoint for one table: once, or once per range of
    keys of a cut split at ``max_batch_rows``; ``held_back``: ``SyncContext.held_back``."""
    while True:
        planned = steps.plan(t)
        if planned is None:
            if t.name not in summary.tables:
                summary.note_no_change(t.name, held_back.get(t.name, 0))
            return
        plan, delta = planned
        sent = steps.upload(plan, delta)
        if bug("checkpoint_before_manifest"):  # the simulator's teeth (failpoints.BUGS)
            steps.checkpoint(plan)
            stored = steps.manifest(plan)
        else:
            stored = steps.manifest(plan)
            steps.checkpoint(plan)
        summary.note_published(plan, delta, sent, stored)
        steps.published(plan, delta, sent)
        if plan.keys.whole:  # the whole cut in one batch: nothing newer is staged
            return
        # a split cut goes on; after its last range, loads staged since may be waiting


def _several_stopped(ctx: SyncContext, stopped: list[tuple[str, TerminalError]]) -> TerminalError:
    """One error for several stopped tables (changes that broke their contracts, source data
    that could not be read): each table's own line, joined; a ``ContractViolation`` when any
    is one (its event, ``deltaferry.validation.failed``, is what alerts listen for)."""
    names = ", ".join(f"'{name}'" for name, _ in stopped)
    rest = (
        "the job's other tables went on"
        if len(stopped) < len(ctx.job.tables)
        else "every table of the job stopped"
    )
    message = f"job '{ctx.job.name}': tables {names} stopped ({rest}): " + " | ".join(
        str(e) for _, e in stopped
    )
    if any(isinstance(e, ContractViolation) for _, e in stopped):
        return ContractViolation(message)
    return TerminalError(message)


def needs_recovery(ctx: SyncContext, t: TableConfig) -> bool:
    """Whether ``recover`` has anything to do: a batch planned but not committed, or no
    local checkpoint (a first run, or a lost home that may adopt the lake's)."""
    return ctx.state.pending_plan(t.name) is not None or not ctx.state.checkpoint(t.name).batch


def tables_to_recover(ctx: SyncContext) -> list[TableConfig]:
    """The job's tables ``needs_recovery`` says yes for, in job order. (Recovering one table
    changes only that table's rows of the state, so asking for all at once is asking each
    just before its turn.)"""
    with ctx.state.hold():
        return [t for t in ctx.job.tables if needs_recovery(ctx, t)]


def plan_logged(ctx: SyncContext, t: TableConfig) -> tuple[Plan, Delta] | None:
    """The plan step (``deltaferry/plan.py:plan_negotiated``) as a ``plan`` step of the
    operations log, whose line says what was planned (or ``no change``, or how many changed
    rows the quarantine held when it held every one)."""
    out: list[tuple[Plan, Delta] | None] = []

    def run() -> str:
        before = ctx.held_back.get(t.name, 0)
        planned = plan_negotiated(ctx, t)
        out.append(planned)
        if planned is None:
            held = ctx.held_back.get(t.name, 0) - before
            return f"no batch: {held} changed row(s) held back in the quarantine" if held else "no change"
        plan, delta = planned
        return (
            f"batch {plan.batch}: {delta.upserts} upserts, {delta.deletes} deletes, "
            f"{plan.quarantined} quarantined, seq {plan.seq_start}..{plan.seq_end}"
        )

    ctx.step("plan", run, table=t.name)
    return out[0]


@dataclass
class RunSummary:
    """What one run did, gathered as it goes: per table the batch it published (or None),
    what recovery finished, what the extract read and set aside, the drift met, and, for
    the failure event, the table being worked on and the error that ended the run."""

    job: str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)
    extracted: ExtractResult | None = None  # None: the run ended before the extract did
    skipped: list[str] | None = None
    drift: dict[str, str] = field(default_factory=dict)
    current: str | None = None
    error: BaseException | None = None

    def note_recovered(self, ctx: SyncContext, t: TableConfig, done: str | None) -> int | None:
        """Record what ``recover`` did for ``t`` (its line, None: nothing). Returns the
        batch it published when it finished one an interrupted run left, else None."""
        if not done:
            return None
        self.recovered.append(f"{t.name}: {done}")
        if done.startswith("batch "):  # a batch an interrupted run left is now out
            return ctx.state.checkpoint(t.name).batch
        return None

    def note_extracted(self, extracted: ExtractResult, skipped: list[str]) -> None:
        self.extracted = extracted
        self.skipped = list(skipped)

    def note_no_change(self, table: str, held: int = 0) -> None:
        """No batch of ``table`` in this run; ``held``: changed rows the quarantine took
        (every change held back), 0 when nothing changed."""
        self.tables[table] = {"batch": None, **({"quarantined": held} if held else {})}

    def note_stopped(self, table: str, error: BaseException) -> None:
        """The table's next batch broke its contract (``error``); what it published earlier
        in this run (ranges of a split cut) is kept."""
        before = self.tables.get(table) or {"batch": None}
        self.tables[table] = {**before, "stopped": str(error)}

    def note_published(self, plan: Plan, delta: Delta, sent: int, manifest: str) -> None:
        """A batch committed: its size, and what the manifest step said (``stored``, or
        ``already stored (lost acknowledgement)``). Several batches of one table in a run
        (a cut split at ``max_batch_rows``) add up: ``batch`` is the last, ``batches`` how
        many, the counts their sums."""
        before = self.tables.get(plan.table) or {}
        if not before.get("batch"):
            before = {}

        def total(name: str, value: int) -> int:
            return int(before.get(name) or 0) + value

        self.tables[plan.table] = {
            "batch": plan.batch,
            "batches": total("batches", 1),
            "rows": total("rows", plan.rows),
            "upserts": total("upserts", delta.upserts),
            "deletes": total("deletes", delta.deletes),
            "quarantined": total("quarantined", plan.quarantined),
            "bytes": total("bytes", sent),
            "manifest": manifest,
        }

    def published(self) -> dict[str, int]:
        """``{table: batch}`` of the batches this run published."""
        return {t: s["batch"] for t, s in self.tables.items() if s.get("batch")}

    def as_dict(self) -> dict[str, Any]:
        """The summary the flow returns: job, tables, recovered, extracted, skipped, drift."""
        out: dict[str, Any] = {"job": self.job, "tables": self.tables, "recovered": self.recovered}
        if self.extracted is not None:
            out["extracted"] = self.extracted
        if self.skipped is not None:
            out["skipped"] = self.skipped
        out["drift"] = self.drift
        return out


@contextmanager
def recorded(ctx: SyncContext) -> Iterator[RunSummary]:
    """The block is the run: its row in ``runs`` (made by ``open_context``) is finished
    ``ok`` when the block ends, ``failed`` with the error when anything leaves it (an
    exception, Ctrl-C, a termination signal), by the process that ran it: Prefect may run
    a flow's cancellation hooks in another process (the runner's), so this is no hook. A
    SIGKILL leaves the row unfinished (``status``: running or killed); the next run's
    recovery finishes what it left."""
    summary = RunSummary(ctx.job.name)
    try:
        yield summary
    except BaseException as e:
        if killed(e):  # the simulator's SIGKILL: the row stays unfinished, as after a kill
            raise
        summary.drift = dict(ctx.drift)
        summary.error = e
        if isinstance(e, DeltaferryError) and summary.tables:
            current = summary.tables.get(summary.current or "")
            if summary.current and not (current or {}).get("stopped"):
                summary.note_stopped(summary.current, e)  # the table the error stopped
            e.run_summary = summary.as_dict()  # what went on before it: the CLI shows it
        ctx.state.finish_run(ctx.run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
        raise
    summary.drift = dict(ctx.drift)
    ctx.state.finish_run(ctx.run_id, "ok")


def lags_exceeded(ctx: SyncContext) -> list[tuple[str, dict[str, Any]]]:
    """Every table over the job's ``max_lag_seconds`` (lag as ``deltaferry status`` has
    it), written to the operations log (outcome ``exceeded``): ``(table, payload)`` of the
    ``deltaferry.lag.exceeded`` event, with the lag, the limit and its basis."""
    limit = ctx.job.max_lag_seconds
    if not limit:
        return []
    from deltaferry.status import job_status

    out = []
    for table, s in job_status(ctx.job, runs=1)["tables"].items():
        lag = s.get("lag_seconds")
        if lag is None or lag <= limit:
            continue
        basis = s.get("lag_basis")
        ctx.state.log(
            ctx.run_id,
            "lag",
            "exceeded",
            table=table,
            detail=f"lag {lag:.0f} s over max_lag_seconds {limit:g} (since the {basis})",
        )
        out.append((table, {"lag_seconds": lag, "max_lag_seconds": limit, "basis": basis}))
    return out


def failure_event(error: BaseException) -> str | None:
    """The event a failed run emits for ``error``, if any: a broken contract and a spent
    retry budget have their own (the alert automations key on them)."""
    if isinstance(error, ContractViolation):
        return "deltaferry.validation.failed"
    if isinstance(error, TransientError):
        return "deltaferry.retries.exhausted"
    return None


def run_tags(ctx: SyncContext) -> set[str]:
    """The run's tags: deltaferry, the job, its tables and their contract versions."""
    tags = {"deltaferry", f"job:{ctx.job.name}"}
    for t in ctx.job.tables:
        tags |= {f"table:{t.name}", f"contract:{t.name}:v{ctx.contracts[t.name].version}"}
    return tags


def run_name(job: str, published: dict[str, int], held: dict[str, int] | None = None) -> str:
    """A finished run's name after what it published: ``sync-shop customers#3 orders#4``,
    with ``customers held back`` for a table whose every changed row the quarantine took
    (``held``: ``SyncContext.held_back``), or ``sync-shop no change``."""
    what = " ".join(
        [
            *(f"{t}#{b}" for t, b in published.items()),
            *(f"{t} held back" for t, n in (held or {}).items() if n and t not in published),
        ]
    )
    return f"sync-{job} {what or 'no change'}"[:200]
