"""The job's local state, in one DuckDB file per job (``$DELTAFERRY_HOME/<job>/state.duckdb``).

Holds the operations log (every step and attempt), planned batches, checkpoints
(the last batch whose manifest is stored in the lake), the load ids already
published, and the quarantine. Connections are short-lived so that ``status``
can read while no run is writing.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from deltaferry import duck
from deltaferry.config import job_home
from deltaferry.duck import fetch_one, fetch_row

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


class StateStore:
    """Durable local state of one job."""

    def __init__(self, job: str, path: Path | None = None) -> None:
        self.job = job
        self.path = path or job_home(job) / "state.duckdb"
        with self.connect() as con:
            con.execute(_SCHEMA)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits briefly if another process holds the file."""
        deadline = time.monotonic() + 30
        while True:
            try:
                con = duck.connect(self.path, read_only=read_only, alias="state")
                break
            except duckdb.IOException as e:
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            yield con
        finally:
            con.close()

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
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            last = fetch_one(con, "SELECT hash FROM ops_log ORDER BY id DESC LIMIT 1")
            prev = last[0] if last else None
            fields = [
                now(),
                run_id,
                self.job,
                table,
                batch,
                step,
                attempt,
                outcome,
                duration_ms,
                detail,
            ]
            con.execute(
                "INSERT INTO ops_log (ts, run_id, job, tbl, batch, step, attempt, outcome, duration_ms,"
                " detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [*fields, prev, _entry_hash(prev, fields)],
            )
            con.execute("COMMIT")

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

    def last_manifest(self, table: str) -> dict[str, Any] | None:
        """The manifest of the table's newest batch planned or committed here."""
        with self.connect() as con:
            row = fetch_one(
                con, "SELECT manifest FROM plans WHERE tbl = ? ORDER BY batch DESC LIMIT 1", [table]
            )
        return json.loads(row[0]) if row else None

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
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            self._resolve(con, plan.table, touched, f"batch {plan.batch}")
            if released:
                con.executemany(
                    "INSERT INTO plan_releases VALUES (?, ?, ?, ?)",
                    [[plan.table, plan.batch, pk, lid] for pk, lid in released],
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
            con.execute("COMMIT")

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
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            self._resolve(con, table, touched, f"held again in run {run_id}")
            if load_ids:
                con.executemany(
                    "INSERT OR IGNORE INTO published_loads VALUES (?, ?, NULL)",
                    [[table, lid] for lid in load_ids],
                )
            self._insert_quarantine(con, run_id, table, quarantine, contract)
            con.execute("COMMIT")

    def record_held(self, run_id: str, table: str, rows: list[dict[str, Any]]) -> None:
        """Rows a source held back before staging (a NULL key, a NULL cursor): quarantine
        records ``{pk, field, check, reason, row_json}``, with load id ``held``."""
        with self.connect() as con:
            self._insert_quarantine(con, run_id, table, [{**r, "load_id": "held"} for r in rows])

    def commit_checkpoint(self, plan: Plan) -> None:
        """Advance the checkpoint to a batch whose manifest is stored: one transaction."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            con.execute(
                "UPDATE plans SET status = 'committed', committed_at = ? WHERE tbl = ? AND batch = ?",
                [now(), plan.table, plan.batch],
            )
            con.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                [plan.table, plan.batch, plan.manifest_sha256, plan.seq_end, now()],
            )
            if plan.load_ids:  # none: a batch of held rows released alone
                con.executemany(
                    "INSERT OR REPLACE INTO published_loads VALUES (?, ?, ?)",
                    [[plan.table, lid, plan.batch] for lid in plan.load_ids],
                )
            con.execute("COMMIT")

    def adopt_checkpoint(self, plan: Plan) -> None:
        """Take a checkpoint from the lake (the local state was lost): recorded as a
        committed plan so that status and the next batch's chain follow it."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
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
            con.execute("COMMIT")

    def discard_plan(self, table: str, batch: int) -> None:
        """Forget a planned, uncommitted batch (``deltaferry plan discard``): the quarantine
        records its cut made are deleted, the held rows it took again are held again (their
        records reopened), so the next run cuts those loads and rows again and decides again."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
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
            con.execute("COMMIT")

    def forget_table(self, table: str) -> None:
        """Forget the table's position: checkpoint, plans and published loads (the operations
        log and quarantine records stay). ``deltaferry reset``; the next run adopts the lake."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            for name in ("checkpoints", "plans", "published_loads"):
                con.execute(f"DELETE FROM {name} WHERE tbl = ?", [table])
            con.execute("COMMIT")

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
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
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
            con.execute("COMMIT")
        return int(n)

    @staticmethod
    def _resolve(
        con: duckdb.DuckDBPyConnection, table: str, keys: set[str] | frozenset[str], by: str
    ) -> None:
        """Close the open records of ``keys`` (their rows were cut again)."""
        if not keys:
            return
        con.execute("CREATE TEMP TABLE IF NOT EXISTS df_resolved (pk VARCHAR)")
        con.execute("DELETE FROM df_resolved")
        con.executemany("INSERT INTO df_resolved VALUES (?)", [[k] for k in sorted(keys)])
        con.execute(
            "UPDATE quarantine SET resolved = ?, resolved_at = ? WHERE tbl = ? AND resolved IS"
            " NULL AND load_id <> 'held' AND pk IN (SELECT pk FROM df_resolved)",
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
        ts = now()
        con.executemany(
            'INSERT INTO quarantine (ts, run_id, tbl, load_id, pk, field, "check", reason,'
            " row_json, contract) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    ts,
                    run_id,
                    table,
                    r["load_id"],
                    r["pk"],
                    r["field"],
                    r["check"],
                    r["reason"],
                    r["row_json"],
                    contract,
                ]
                for r in rows
            ],
        )
