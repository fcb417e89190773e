"""The operations log of the job's state (``deltaferry/state.py``): every step and attempt,
each entry hashing the one before it (a hash chain ``verify_oplog`` walks), and the runs."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from deltaferry.duck import fetch_one
from deltaferry.statedb import StoreBase, now
from sources.text import printable  # a source's text quoted in a message: a lone surrogate


def _entry_hash(prev: str | None, fields: list[Any]) -> str:
    ts = fields[0].astimezone(UTC).isoformat()
    body = json.dumps([prev, ts, *fields[1:]], default=str, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def verify_oplog(state: StoreBase) -> int:
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


class OplogMixin(StoreBase):
    """``StateStore``'s operations log and runs."""

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
                    None if e.detail is None else printable(e.detail),
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
                [now(), outcome, None if detail is None else printable(detail), run_id],
            )


# the columns of ``deltaferry log`` (``recent_entries``' keys, in order)
LOG_COLUMNS = ("time", "run", "table", "batch", "step", "outcome", "attempt", "ms", "detail")


def recent_entries(
    job: Any,
    *,
    runs: int = 1,
    tables: Sequence[str] = (),
    outcomes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The operations-log entries of ``job``'s last ``runs`` runs (a run, a pull or an
    operator command: each writes under its own run id), oldest first, optionally only
    those of ``tables`` and ``outcomes``: dicts with ``LOG_COLUMNS`` (``time`` ISO-8601 in
    UTC, ``run`` the run id, ``ms`` the step's duration or None). Empty for a job never
    run (no state file)."""
    from deltaferry.config import deltaferry_home
    from deltaferry.state import StateStore

    path = deltaferry_home() / job.name / "state.duckdb"
    if not path.exists():
        return []
    where = ["run_id IN (SELECT run_id FROM last)"]
    params: list[Any] = [runs]
    if tables:
        where.append(f"tbl IN ({', '.join('?' * len(tables))})")
        params.extend(tables)
    if outcomes:
        where.append(f"outcome IN ({', '.join('?' * len(outcomes))})")
        params.extend(outcomes)
    with StateStore(job.name, path, read_only=True).connect(read_only=True) as con:
        rows = con.execute(
            "WITH last AS (SELECT run_id FROM ops_log GROUP BY run_id ORDER BY max(id) DESC "
            "LIMIT ?) SELECT ts, run_id, tbl, batch, step, outcome, attempt, duration_ms, detail "
            f"FROM ops_log WHERE {' AND '.join(where)} ORDER BY id",
            params,
        ).fetchall()
    return [
        {
            "time": ts.astimezone(UTC).isoformat(),
            "run": run,
            "table": tbl or "",
            "batch": "" if batch is None else batch,
            "step": step,
            "outcome": outcome,
            "attempt": attempt,
            "ms": None if ms is None else round(ms),
            "detail": detail or "",
        }
        for ts, run, tbl, batch, step, outcome, attempt, ms, detail in rows
    ]
