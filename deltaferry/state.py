"""The job's local state, in one DuckDB file per job (``$DELTAFERRY_HOME/<job>/state.duckdb``).

Holds the operations log (every step and attempt), planned batches, checkpoints
(the last batch whose manifest is stored in the lake), the load ids already
published, and the quarantine. This module is the file, its schema and its connections;
``StateStore`` takes what it keeps from its mixins: ``deltaferry/oplog.py`` (the operations
log), ``deltaferry/checkpoints.py`` (plans, checkpoints, published loads, contract pins) and
``deltaferry/quarantine.py``, which share ``deltaferry/statedb.py``.

Connections. DuckDB locks a database file per process: while one process has it open
read-write, no other process can open it, not even read-only. So a run does not keep the
file open for its whole life: it holds one connection per step (:func:`hold`,
``StateStore.hold``; ``deltaferry/context.py:SyncContext.step`` holds one for every step),
opened at the step's first call and closed when the step ends, and lets go of it while it
waits on the source (:meth:`StateStore.released`). Between steps, and while a step waits on
the source, ``status`` and ``report`` (read-only stores, ``StateStore(read_only=True)``)
can open the file. Every open waits up to ``LOCK_WAIT_SECONDS`` for another process to let
go, then stops with ``StateBusyError`` naming the job and the holder's pid.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from deltaferry import duck
from deltaferry.checkpoints import PlansMixin
from deltaferry.config import job_home
from deltaferry.errors import StateBusyError
from deltaferry.oplog import OplogMixin
from deltaferry.quarantine import QuarantineMixin

# how long an open of the state file waits for another process to let go of it
LOCK_WAIT_SECONDS = 30.0

_SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS ops_seq;
CREATE TABLE IF NOT EXISTS ops_log (
    id BIGINT DEFAULT nextval('ops_seq') PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    run_id VARCHAR NOT NULL,
    job VARCHAR NOT NULL,
    tbl VARCHAR,
    batch BIGINT,
    step VARCHAR NOT NULL,
    attempt INTEGER NOT NULL,
    outcome VARCHAR NOT NULL,      -- ok | retry | exhausted (transient, budget spent) | failed | info
    duration_ms DOUBLE,
    detail VARCHAR,
    prev_hash VARCHAR,             -- hash of the previous entry: the log is a hash chain
    hash VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS plans (
    tbl VARCHAR NOT NULL,
    batch BIGINT NOT NULL,
    status VARCHAR NOT NULL,       -- planned | committed
    load_ids VARCHAR NOT NULL,     -- JSON list
    seq_start BIGINT NOT NULL,
    seq_end BIGINT NOT NULL,
    rows BIGINT NOT NULL,
    quarantined BIGINT NOT NULL,
    manifest VARCHAR NOT NULL,     -- the exact manifest bytes (canonical JSON)
    manifest_sha256 VARCHAR NOT NULL,
    chunk_rows BIGINT NOT NULL,    -- rows per part used to cut it: a rebuild must use the same
    created_at TIMESTAMPTZ NOT NULL,
    committed_at TIMESTAMPTZ,
    PRIMARY KEY (tbl, batch)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    tbl VARCHAR PRIMARY KEY,
    batch BIGINT NOT NULL,
    manifest_sha256 VARCHAR NOT NULL,
    seq_end BIGINT NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS published_loads (
    tbl VARCHAR NOT NULL,
    load_id VARCHAR NOT NULL,
    batch BIGINT,                  -- NULL: the load held no change for this table
    PRIMARY KEY (tbl, load_id)
);
CREATE TABLE IF NOT EXISTS quarantine (
    ts TIMESTAMPTZ NOT NULL,
    run_id VARCHAR NOT NULL,
    tbl VARCHAR NOT NULL,
    load_id VARCHAR NOT NULL,
    pk VARCHAR NOT NULL,           -- JSON object of the primary key
    field VARCHAR,
    "check" VARCHAR,
    reason VARCHAR,
    row_json VARCHAR
);
-- a quarantine record is open (the row is held) until a later cut takes its key again
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS contract VARCHAR;  -- fingerprint held under
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS resolved VARCHAR;  -- NULL: held; else by what
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS resolved_at TIMESTAMPTZ;
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS release VARCHAR;  -- `quarantine release` reason
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS planned_in BIGINT;  -- the plan that held it
-- source rows behind a record a source held (rows without a key share one), as the last
-- run that held it counted them; NULL: one
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS source_rows BIGINT;
-- a cut split over several batches (max_batch_rows): the keys each plan carries, as JSON
-- lists of the key's text; NULL: unbounded on that side
ALTER TABLE plans ADD COLUMN IF NOT EXISTS cut_after VARCHAR;
ALTER TABLE plans ADD COLUMN IF NOT EXISTS cut_through VARCHAR;
ALTER TABLE plans ADD COLUMN IF NOT EXISTS cut_key VARCHAR;  -- JSON list: the key's columns
-- the cut a table is half-way through: its loads, and the last key published of them
CREATE TABLE IF NOT EXISTS open_cuts (
    tbl VARCHAR PRIMARY KEY,
    load_ids VARCHAR NOT NULL,     -- JSON list
    through VARCHAR NOT NULL       -- JSON list: the key's text
);
ALTER TABLE open_cuts ADD COLUMN IF NOT EXISTS key_columns VARCHAR;  -- JSON list, by name
CREATE TABLE IF NOT EXISTS plan_releases (
    tbl VARCHAR NOT NULL,          -- held rows a planned batch cut again: a rebuild cuts them too
    batch BIGINT NOT NULL,
    pk VARCHAR NOT NULL,
    load_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS contract_pins (
    tbl VARCHAR PRIMARY KEY,       -- `deltaferry contracts rollback`: publish at this version
    version INTEGER NOT NULL,
    reason VARCHAR,
    set_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    outcome VARCHAR,
    detail VARCHAR
);
"""


def state_path(job: str) -> Path:
    """``$DELTAFERRY_HOME/<job>/state.duckdb`` (the job's home is made if missing)."""
    return job_home(job) / "state.duckdb"


def lock_holder(error: duckdb.IOException) -> str | None:
    """The pid of the process holding the file, when ``error`` is DuckDB refusing to open a
    file another process has open ('?' if it names none); None for any other I/O error.

    DuckDB has no error class or code of its own for this: it raises a plain IOException
    whose message names the lock ('Could not set lock on file "...": Conflicting lock is
    held in <program> (PID 1234)'), so the message is the only way to tell a busy file from
    a missing or broken one. This is the one place that reads it."""
    text = str(error)
    if "lock" not in text.lower():
        return None
    found = re.search(r"\(PID (\d+)\)", text)
    return found.group(1) if found else "?"


@dataclass
class _Hold:
    """The connection every StateStore of one file shares in this process during a hold."""

    read_only: bool
    depth: int = 0  # nested holds: the outermost one closes the connection
    released: int = 0  # inside StateStore.released: calls open their own connections
    con: duckdb.DuckDBPyConnection | None = None


# one hold per file (resolved path) and process: DuckDB locks a file per process, and a
# second connection to it in the same process fails while one is open (read-only next to
# read-write, or any second one to an encrypted file), so a hold is shared by every
# StateStore of the file in the process (``status`` read from a run's report included)
_HOLDS: dict[Path, _Hold] = {}
_HOLDS_LOCK = threading.Lock()


def _key(path: Path) -> Path:
    return Path(os.path.realpath(path))


@contextmanager
def hold(path: Path, read_only: bool = False) -> Iterator[None]:
    """Within the block, every StateStore of the file at ``path`` in this process uses one
    connection, opened at the first call (read-only if ``read_only``) and closed when the
    block ends; holds nest (the outermost one closes it). Outside a hold every call opens
    and closes its own connection."""
    key = _key(path)
    with _HOLDS_LOCK:
        held = _HOLDS.get(key)
        if held is None:
            held = _HOLDS[key] = _Hold(read_only=read_only)
        held.depth += 1
    try:
        yield
    finally:
        with _HOLDS_LOCK:
            held.depth -= 1
            last = held.depth == 0
            if last:
                del _HOLDS[key]
        if last and held.con is not None:
            held.con.close()
            held.con = None


@functools.cache
def _schema_columns() -> frozenset[tuple[str, str]]:
    """(table, column) of every table ``_SCHEMA`` makes: what a current state file has."""
    con = duckdb.connect()
    try:
        con.execute(_SCHEMA)
        return frozenset(_columns(con))
    finally:
        con.close()


def _columns(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    return {
        (t, c)
        for t, c in con.execute(
            "SELECT table_name, column_name FROM duckdb_columns()"
            " WHERE database_name = current_database()"
        ).fetchall()
    }


class StateStore(OplogMixin, PlansMixin, QuarantineMixin):
    """Durable local state of one job.

    A read-write store makes (or brings up to date) the schema when it is made. A
    read-only store (``read_only=True``: ``status``, ``report``, ``verify``) never takes the
    write lock, so it can read while another process reads too; it brings an outdated file
    up to date once, read-write, before it reads. Connections: see the module's docstring
    and :func:`hold`."""

    def __init__(self, job: str, path: Path | None = None, *, read_only: bool = False) -> None:
        self.job = job
        self.path = path or state_path(job)
        self.read_only = read_only
        self._current = not read_only  # read-only: schema checked at the first open
        if not read_only:
            with self.connect() as con:
                con.execute(_SCHEMA)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """:func:`hold` on this store's file (read-only for a read-only store)."""
        with hold(self.path, self.read_only):
            yield

    @contextmanager
    def peek(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the file as it is, its schema not brought up to date
        (so a read-only file of an older version can still be read), waiting for another
        process as every open does (``LOCK_WAIT_SECONDS``, then StateBusyError)."""
        con = self._open_waiting(True)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Inside a hold: close the held connection for the block, so that other processes
        can open the file meanwhile (a run waiting on its source); calls in the block open
        their own connections, and the hold's next call after it opens one again."""
        held = _HOLDS.get(_key(self.path))
        if held is None:
            yield
            return
        if held.con is not None:
            held.con.close()
            held.con = None
        held.released += 1
        try:
            yield
        finally:
            held.released -= 1

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The held connection inside a hold (read-write unless the hold is read-only),
        else a connection of its own (read-only when asked or when the store is), closed
        at the end of the block."""
        held = _HOLDS.get(_key(self.path))
        if held is not None and not held.released:
            if held.con is None:
                held.con = self._open(held.read_only)
            yield held.con
            return
        con = self._open(read_only or self.read_only)
        try:
            yield con
        finally:
            con.close()

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if not read_only or self._current:
            return self._open_waiting(read_only)
        # a read-only store's first open: a missing file is made, and a file an older
        # version wrote is brought up to date, as a read-write store would have on creation
        if not self.path.exists():
            self._make_schema()
        con = self._open_waiting(True)
        if not _schema_columns() <= _columns(con):
            con.close()
            self._make_schema()
            con = self._open_waiting(True)
        self._current = True
        return con

    def _make_schema(self) -> None:
        with closing(self._open_waiting(False)) as con:
            con.execute(_SCHEMA)

    def _open_waiting(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file; while another process has it, try again for up to
        ``LOCK_WAIT_SECONDS``, then raise StateBusyError naming the holder."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                return duck.connect(self.path, read_only=read_only, alias="state")
            except duckdb.IOException as e:
                pid = lock_holder(e)
                if pid is None:
                    raise
                if time.monotonic() > deadline:
                    raise StateBusyError(self._busy(pid)) from e
            time.sleep(0.2)

    def _busy(self, pid: str) -> str:
        """One line: who holds the file (the job's run, when the run lock names that pid)."""
        try:
            runner = (self.path.parent / "run.lock").read_text().strip()
        except OSError:
            runner = ""
        who = (
            f"this job's running sync (pid {pid}), which holds it while a step works on the "
            "state and lets go between steps"
            if runner and runner == pid
            else f"pid {pid}"
        )
        return (
            f"job '{self.job}': the state file {self.path} is held by {who}; still held after "
            f"{LOCK_WAIT_SECONDS:g} s, try again"
        )

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction: committed when the block ends, rolled back if it raises (on a
        held connection nothing else would: the connection lives on)."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:  # the connection itself failed: the error below says why
                    pass
                raise
            con.execute("COMMIT")
