"""Starting a run of one job: what it checks first (:func:`preflight_job`), the run lock
(:func:`job_lock`) and what its steps share (:class:`SyncContext`, :func:`open_context`).

The steps themselves: ``deltaferry/agreement.py``, ``deltaferry/extract.py``,
``deltaferry/plan.py`` and ``deltaferry/commit.py``; ``flows/sync.py`` runs them as Prefect
tasks (see docs/architecture.md, section 2 "The producer: one run").
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from contracts import Chain, Contract, load_chain, load_contract
from deltaferry.config import JobConfig, job_home
from deltaferry.errors import DeltaferryError, JobBusyError, TransientError
from deltaferry.failpoints import killed
from deltaferry.keys import Keyring
from deltaferry.negotiate import source_version
from deltaferry.shutdown import raise_if_interrupted
from deltaferry.state import StateStore, hold, state_path
from destinations.lake import LakeStore, open_lake

log = logging.getLogger(__name__)

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
    # per table, the keys this run's cuts held back in the quarantine without a batch to
    # publish (every change held): what the run's summary says instead of "no change"
    held_back: dict[str, int] = field(default_factory=dict)

    def step(
        self, step: str, fn: Callable[[], T], *, table: str | None = None, batch: int | None = None
    ) -> T:
        """Run one step and record it (and its outcome) in the operations log, on one
        state connection held for the step (``deltaferry/state.py``): opened at the step's
        first state call, closed when it ends, so ``status`` can read between steps."""
        with self.state.hold():
            return self._step(step, fn, table=table, batch=batch)

    def _step(self, step: str, fn: Callable[[], T], *, table: str | None, batch: int | None) -> T:
        t0 = time.perf_counter()
        attempt = self.attempt()
        try:
            raise_if_interrupted()  # a Ctrl-C Python dropped during the last step
            result = fn()
        except BaseException as e:
            if killed(e):  # the simulator's SIGKILL: a killed step leaves no line
                raise
            cause = f"{type(e).__name__}: {e}"
            if not isinstance(e, TransientError):
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


def preflight_job(job: JobConfig) -> None:
    """Check everything a run needs before it starts: contracts import, the source answers and
    has every table and column, the lake exists. Raises ConfigError (or TransientError), or
    JobBusyError when another runner holds the job.

    Done under the job's lock (``job_lock``, let go of before the run takes it again): the
    source's check reads the job's staging file, and a second runner's read while the first
    loaded into it failed the second with a raw DuckDB lock error, or the *running* one
    (its write could not lock the file the check held)."""
    from sources import preflight_module

    with job_lock(job.name):
        try:
            for t in job.tables:
                load_contract(t.contract, where=f"job '{job.name}' table '{t.name}'")
            preflight_module(job).preflight_source(job)
            open_lake(job.lake, base=job.base_dir).check()
        except DeltaferryError as e:
            _record_refused(job, e)
            raise


def _record_refused(job: JobConfig, e: DeltaferryError) -> None:
    """A run the preflight refused, in the job's state: a failed run whose operations-log
    step ``preflight`` holds the error's line, so ``deltaferry status`` shows the last
    attempt (not "never run", or an older run's success). Best effort: a state that
    cannot be written (the state file is the problem, say) leaves the error as it is."""
    try:
        state = StateStore(job.name)
        run_id = state.start_run()
        state.log(run_id, "preflight", "failed", detail=str(e)[:2000])
        state.finish_run(run_id, "failed", str(e)[:2000])
    except Exception as failure:  # noqa: BLE001 - the preflight's error is the one to say
        log.warning("job '%s': the refused run was not recorded: %s", job.name, failure)


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
        clear_leftovers(job)
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def clear_leftovers(job: str) -> int:
    """Remove what a killed run left in ``$DELTAFERRY_HOME/<job>/tmp`` (key counts, staged
    hashes, DuckDB's spill files), which only a run holding the job's lock writes: called
    with the lock held, so no run is using them. Returns the bytes removed (logged)."""
    tmp = job_home(job) / "tmp"
    if not tmp.is_dir():
        return 0
    removed = 0
    for path in tmp.iterdir():
        try:
            if path.is_dir() and not path.is_symlink():
                removed += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                shutil.rmtree(path)
            else:
                removed += path.lstat().st_size
                path.unlink()
        except FileNotFoundError:
            continue
    if removed:
        log.info("job '%s': removed %d bytes a stopped run left in %s", job, removed, tmp)
    return removed


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
    with hold(state_path(job.name)):  # the store's schema and the run's row: one connection
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
