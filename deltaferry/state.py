"""The job's local state, in one DuckDB file per job (``$DELTAFERRY_HOME/<job>/state.duckdb``).

Holds the operations log (every step and attempt), planned batches, checkpoints
(the last batch whose manifest is stored in the lake), the load ids already
published, and the quarantine.

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
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.config import job_home
from deltaferry.duck import fetch_one, fetch_row
from deltaferry.errors import StateBusyError
from destinations.manifest import Manifest

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


@dataclass(frozen=True)
class Checkpoint:
    batch: int
    manifest_sha256: str | None
    seq_end: int


@dataclass(frozen=True)
class Plan:
    table: str
    batch: int
    load_ids: list[str]
    seq_start: int
    seq_end: int
    rows: int
    quarantined: int
    manifest: bytes
    manifest_sha256: str
    chunk_rows: int


def _entry_hash(prev: str | None, fields: list[Any]) -> str:
    ts = fields[0].astimezone(UTC).isoformat()
    body = json.dumps([prev, ts, *fields[1:]], default=str, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def verify_oplog(state: StateStore) -> int:
    """Walk the operations log's hash chain; raise VerificationError at the first entry that
    was edited, deleted or moved. Returns the number of entries checked."""
    from deltaferry.errors import VerificationError

    with state.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT id, ts, run_id, job, tbl, batch, step, attempt, outcome, duration_ms, detail,"
            " prev_hash, hash FROM ops_log ORDER BY id"
        ).fetchall()
    prev: str | None = None
    for row in rows:
        entry_id, fields, prev_hash, digest = row[0], list(row[1:11]), row[11], row[12]
        if prev_hash != prev:
            raise VerificationError(
                f"job '{state.job}': operations log entry {entry_id} does not follow the entry "
                "before it (an entry was deleted or moved)"
            )
        if _entry_hash(prev, fields) != digest:
            raise VerificationError(
                f"job '{state.job}': operations log entry {entry_id} was edited (hash mismatch)"
            )
        prev = digest
    return len(rows)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Entry:
    """One operations-log entry of ``StateStore.log_many``."""

    step: str
    outcome: str
    table: str | None = None
    batch: int | None = None
    attempt: int = 1
    duration_ms: float | None = None
    detail: str | None = None


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
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_catalog = current_database()"
        ).fetchall()
    }


def _insert_rows(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    columns: dict[str, pa.DataType],
    rows: list[list[Any]],
    params: list[Any],
) -> None:
    """Run ``sql`` (with ``params``) once over all ``rows``, which it reads as the table
    ``df_rows`` of ``columns``: the rows go to DuckDB as one Arrow table (``executemany``
    runs a statement once per row: seconds for ten thousand quarantined rows)."""

    def column(i: int, kind: pa.DataType) -> pa.Array:
        values = [r[i] for r in rows]
        if kind == pa.string():  # as DuckDB casts a parameter to VARCHAR
            values = [v if v is None or isinstance(v, str) else str(v) for v in values]
        return pa.array(values, kind)

    table = pa.table({n: column(i, kind) for i, (n, kind) in enumerate(columns.items())})
    con.register("df_rows", table)
    try:
        con.execute(sql, params)
    finally:
        con.unregister("df_rows")


class StateStore:
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

    # --- operations log -------------------------------------------------

    def log(
        self,
        run_id: str,
        step: str,
        outcome: str,
        *,
        table: str | None = None,
        batch: int | None = None,
        attempt: int = 1,
        duration_ms: float | None = None,
        detail: str | None = None,
    ) -> None:
        """Append one row to the operations log (durable before this returns).

        Each entry carries the hash of the one before it, so an edited, deleted or
        reordered entry is found by ``verify_oplog``."""
        self.log_many(run_id, [Entry(step, outcome, table, batch, attempt, duration_ms, detail)])

    def log_many(self, run_id: str, entries: Sequence[Entry]) -> None:
        """Append ``entries`` to the operations log in order, in one transaction, each
        hashing the one before it as ``log`` does."""
        if not entries:
            return
        with self._transaction() as con:
            last = fetch_one(con, "SELECT hash FROM ops_log ORDER BY id DESC LIMIT 1")
            prev = last[0] if last else None
            rows = []
            for e in entries:
                fields = [
                    now(),
                    run_id,
                    self.job,
                    e.table,
                    e.batch,
                    e.step,
                    e.attempt,
                    e.outcome,
                    e.duration_ms,
                    e.detail,
                ]
                digest = _entry_hash(prev, fields)
                rows.append([*fields, prev, digest])
                prev = digest
            # executemany, not Arrow: the ids (the chain's order) follow the rows' order
            con.executemany(
                "INSERT INTO ops_log (ts, run_id, job, tbl, batch, step, attempt, outcome, duration_ms,"
                " detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def start_run(self) -> str:
        run_id = uuid.uuid4().hex
        with self.connect() as con:
            con.execute("INSERT INTO runs VALUES (?, ?, NULL, NULL, NULL)", [run_id, now()])
        return run_id

    def finish_run(self, run_id: str, outcome: str, detail: str | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "UPDATE runs SET finished_at = ?, outcome = ?, detail = ? WHERE run_id = ?",
                [now(), outcome, detail, run_id],
            )

    # --- checkpoints and plans -------------------------------------------

    def checkpoint(self, table: str) -> Checkpoint:
        with self.connect() as con:
            row = fetch_one(
                con,
                "SELECT batch, manifest_sha256, seq_end FROM checkpoints WHERE tbl = ?",
                [table],
            )
        return Checkpoint(*row) if row else Checkpoint(0, None, 0)

    def contract_pin(self, table: str) -> int | None:
        """The contract version ``contracts rollback`` pinned the table's batches to, if any."""
        with self.connect() as con:
            row = fetch_one(con, "SELECT version FROM contract_pins WHERE tbl = ?", [table])
        return row[0] if row else None

    def pin_contract(self, table: str, version: int | None, reason: str) -> None:
        """Pin (or with None, release) the version the table's next batches are published at."""
        with self.connect() as con:
            con.execute("DELETE FROM contract_pins WHERE tbl = ?", [table])
            if version is not None:
                con.execute(
                    "INSERT INTO contract_pins VALUES (?, ?, ?, ?)", [table, version, reason, now()]
                )

    def last_manifest(self, table: str) -> Manifest | None:
        """The manifest of the table's newest batch planned or committed here."""
        with self.connect() as con:
            row = fetch_one(
                con,
                "SELECT batch, manifest FROM plans WHERE tbl = ? ORDER BY batch DESC LIMIT 1",
                [table],
            )
        if row is None:
            return None
        return Manifest.parse(row[1].encode(), key=f"of {table} batch {row[0]} in {self.path}")

    def pending_plan(self, table: str) -> Plan | None:
        return self._plan(table, "planned")

    def committed_plan(self, table: str, batch: int) -> Plan | None:
        """The plan of a committed batch (its exact manifest bytes and loads), or None."""
        return self._plan(table, "committed", batch)

    def _plan(self, table: str, status: str, batch: int | None = None) -> Plan | None:
        with self.connect() as con:
            row = fetch_one(
                con,
                "SELECT tbl, batch, load_ids, seq_start, seq_end, rows, quarantined, manifest, manifest_sha256,"
                " chunk_rows"
                " FROM plans WHERE tbl = ? AND status = ? AND (? IS NULL OR batch = ?)"
                " ORDER BY batch LIMIT 1",
                [table, status, batch, batch],
            )
        if row is None:
            return None
        return Plan(
            row[0],
            row[1],
            json.loads(row[2]),
            row[3],
            row[4],
            row[5],
            row[6],
            row[7].encode(),
            row[8],
            row[9],
        )

    def record_plan(
        self,
        plan: Plan,
        run_id: str,
        quarantine: list[dict[str, Any]],
        contract: str | None = None,
        touched: set[str] | frozenset[str] = frozenset(),
        released: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Write the planned batch (and its quarantined rows, held under the contract
        fingerprint ``contract``) before anything is uploaded. Open quarantine records of
        the ``touched`` keys are resolved by this batch; ``released`` (key JSON, load id)
        are the held rows it cut again (``plan_releases``, for a rebuild)."""
        with self._transaction() as con:
            self._resolve(con, plan.table, touched, f"batch {plan.batch}")
            if released:
                _insert_rows(
                    con,
                    "INSERT INTO plan_releases SELECT ?, ?, pk, load_id FROM df_rows",
                    {"pk": pa.string(), "load_id": pa.string()},
                    [[pk, lid] for pk, lid in released],
                    [plan.table, plan.batch],
                )
            con.execute(
                "INSERT INTO plans VALUES (?, ?, 'planned', ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                [
                    plan.table,
                    plan.batch,
                    json.dumps(plan.load_ids),
                    plan.seq_start,
                    plan.seq_end,
                    plan.rows,
                    plan.quarantined,
                    plan.manifest.decode(),
                    plan.manifest_sha256,
                    plan.chunk_rows,
                    now(),
                ],
            )
            self._insert_quarantine(con, run_id, plan.table, quarantine, contract)

    def consume_without_batch(
        self,
        table: str,
        load_ids: list[str],
        run_id: str,
        quarantine: list[dict[str, Any]],
        contract: str | None = None,
        touched: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Loads with nothing to publish (no change, or every change quarantined): never look
        again. Open records of the ``touched`` keys are resolved (their rows held again)."""
        with self._transaction() as con:
            self._resolve(con, table, touched, f"held again in run {run_id}")
            if load_ids:
                _insert_rows(
                    con,
                    "INSERT OR IGNORE INTO published_loads SELECT ?, load_id, NULL FROM df_rows",
                    {"load_id": pa.string()},
                    [[lid] for lid in load_ids],
                    [table],
                )
            self._insert_quarantine(con, run_id, table, quarantine, contract)

    def record_held(self, run_id: str, table: str, rows: list[dict[str, Any]]) -> None:
        """Rows a source held back before staging (a NULL key, a NULL cursor): quarantine
        records ``{pk, field, check, reason, row_json}``, with load id ``held``."""
        with self.connect() as con:
            self._insert_quarantine(con, run_id, table, [{**r, "load_id": "held"} for r in rows])

    def commit_checkpoint(self, plan: Plan) -> None:
        """Advance the checkpoint to a batch whose manifest is stored: one transaction."""
        with self._transaction() as con:
            con.execute(
                "UPDATE plans SET status = 'committed', committed_at = ? WHERE tbl = ? AND batch = ?",
                [now(), plan.table, plan.batch],
            )
            con.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                [plan.table, plan.batch, plan.manifest_sha256, plan.seq_end, now()],
            )
            if plan.load_ids:  # none: a batch of held rows released alone
                _insert_rows(
                    con,
                    "INSERT OR REPLACE INTO published_loads SELECT ?, load_id, ? FROM df_rows",
                    {"load_id": pa.string()},
                    [[lid] for lid in plan.load_ids],
                    [plan.table, plan.batch],
                )

    def adopt_checkpoint(self, plan: Plan) -> None:
        """Take a checkpoint from the lake (the local state was lost): recorded as a
        committed plan so that status and the next batch's chain follow it."""
        with self._transaction() as con:
            con.execute(
                "INSERT INTO plans VALUES (?, ?, 'committed', '[]', ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                [
                    plan.table,
                    plan.batch,
                    plan.seq_start,
                    plan.seq_end,
                    plan.rows,
                    plan.manifest.decode(),
                    plan.manifest_sha256,
                    plan.chunk_rows,
                    now(),
                    now(),
                ],
            )
            con.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                [plan.table, plan.batch, plan.manifest_sha256, plan.seq_end, now()],
            )

    def discard_plan(self, table: str, batch: int) -> None:
        """Forget a planned, uncommitted batch (``deltaferry plan discard``): the quarantine
        records its cut made are deleted, the held rows it took again are held again (their
        records reopened), so the next run cuts those loads and rows again and decides again."""
        with self._transaction() as con:
            row = fetch_one(
                con,
                "SELECT load_ids FROM plans WHERE tbl = ? AND batch = ? AND status = 'planned'",
                [table, batch],
            )
            if row is not None:
                con.execute(
                    "DELETE FROM quarantine WHERE tbl = ? AND resolved IS NULL"
                    " AND load_id IN (SELECT unnest(?::VARCHAR[]))",
                    [table, json.loads(row[0])],
                )
                con.execute(
                    "UPDATE quarantine SET resolved = NULL, resolved_at = NULL"
                    " WHERE tbl = ? AND resolved = ?",
                    [table, f"batch {batch}"],
                )
                con.execute(
                    "DELETE FROM plan_releases WHERE tbl = ? AND batch = ?", [table, batch]
                )
                con.execute(
                    "DELETE FROM plans WHERE tbl = ? AND batch = ? AND status = 'planned'",
                    [table, batch],
                )

    def forget_table(self, table: str) -> None:
        """Forget the table's position: checkpoint, plans and published loads (the operations
        log and quarantine records stay). ``deltaferry reset``; the next run adopts the lake."""
        with self._transaction() as con:
            for name in ("checkpoints", "plans", "published_loads"):
                con.execute(f"DELETE FROM {name} WHERE tbl = ?", [table])

    def published_load_ids(self, table: str) -> set[str]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT load_id FROM published_loads WHERE tbl = ?", [table]
            ).fetchall()
        return {r[0] for r in rows}

    # --- quarantine ---------------------------------------------------------

    def open_held(self, table: str) -> list[tuple[str, str, str | None, str | None]]:
        """The table's held staged rows: (key JSON, load id, contract fingerprint held
        under, release reason or None), one per key and load, oldest first. Rows a source
        held back before staging (load id ``held``) are not among them: they are read at
        the source again."""
        with self.connect(read_only=True) as con:
            return [
                tuple(r)
                for r in con.execute(
                    "SELECT pk, load_id, any_value(contract), any_value(release) FROM quarantine"
                    " WHERE tbl = ? AND resolved IS NULL AND load_id <> 'held'"
                    " GROUP BY pk, load_id ORDER BY min(ts), pk",
                    [table],
                ).fetchall()
            ]

    def due_for_release(self, table: str, contract: str) -> list[tuple[str, str]]:
        """Held rows to validate again in the next cut: held under another contract than
        ``contract`` (the fingerprint now), or released by ``quarantine release``."""
        return [
            (pk, lid)
            for pk, lid, held_under, release in self.open_held(table)
            if held_under != contract or release is not None
        ]

    def plan_releases(self, table: str, batch: int) -> list[tuple[str, str]]:
        """The held rows a planned batch cut again (for its rebuild)."""
        with self.connect(read_only=True) as con:
            return [
                (r[0], r[1])
                for r in con.execute(
                    "SELECT pk, load_id FROM plan_releases WHERE tbl = ? AND batch = ? ORDER BY pk",
                    [table, batch],
                ).fetchall()
            ]

    def quarantine_rows(self, table: str | None = None, held_only: bool = True) -> list[dict[str, Any]]:
        """Quarantine records (open ones unless ``held_only`` is False), oldest first, as
        dicts of the quarantine table's columns."""
        where = ["true"]
        params: list[Any] = []
        if table is not None:
            where.append("tbl = ?")
            params.append(table)
        if held_only:
            where.append("resolved IS NULL")
        with self.connect(read_only=True) as con:
            cur = con.execute(
                'SELECT ts, run_id, tbl, load_id, pk, field, "check", reason, row_json, contract,'
                f" resolved, resolved_at, release FROM quarantine WHERE {' AND '.join(where)}"
                " ORDER BY ts, tbl, pk",
                params,
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def request_release(self, table: str, reason: str) -> int:
        """Mark the table's held staged rows for validation against the contract in the
        next run, whatever contract they were held under. Returns the keys marked."""
        with self._transaction() as con:
            n = fetch_row(
                con,
                "SELECT count(DISTINCT pk) FROM quarantine WHERE tbl = ? AND resolved IS NULL"
                " AND load_id <> 'held'",
                [table],
            )[0]
            con.execute(
                "UPDATE quarantine SET release = ? WHERE tbl = ? AND resolved IS NULL"
                " AND load_id <> 'held'",
                [reason, table],
            )
        return int(n)

    @staticmethod
    def _resolve(
        con: duckdb.DuckDBPyConnection, table: str, keys: set[str] | frozenset[str], by: str
    ) -> None:
        """Close the open records of ``keys`` (their rows were cut again)."""
        if not keys:
            return
        _insert_rows(
            con,
            "UPDATE quarantine SET resolved = ?, resolved_at = ? WHERE tbl = ? AND resolved IS"
            " NULL AND load_id <> 'held' AND pk IN (SELECT pk FROM df_rows)",
            {"pk": pa.string()},
            [[k] for k in sorted(keys)],
            [by, now(), table],
        )

    @staticmethod
    def _insert_quarantine(
        con: duckdb.DuckDBPyConnection,
        run_id: str,
        table: str,
        rows: list[dict[str, Any]],
        contract: str | None = None,
    ) -> None:
        if not rows:
            return
        names = ("load_id", "pk", "field", "check", "reason", "row_json")
        _insert_rows(
            con,
            'INSERT INTO quarantine (ts, run_id, tbl, load_id, pk, field, "check", reason,'
            ' row_json, contract) SELECT ?, ?, ?, load_id, pk, field, "check", reason, row_json,'
            " ? FROM df_rows",
            dict.fromkeys(names, pa.string()),
            [[r[n] for n in names] for r in rows],
            [now(), run_id, table, contract],
        )
