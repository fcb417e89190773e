"""What ``deltaferry status`` reports, read from each job's state file."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from deltaferry.config import JobConfig, deltaferry_home
from deltaferry.state import StateStore, now
from deltaferry.duck import fetch_one


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def job_status(job: JobConfig) -> dict[str, Any]:
    """Per table: last published batch, rows, last success, pending plan, quarantine, lag."""
    path = deltaferry_home() / job.name / "state.duckdb"
    out: dict[str, Any] = {"job": job.name, "lake": job.lake, "tables": {}}
    if not path.exists():
        out["last_run"] = None
        for t in job.tables:
            out["tables"][t.name] = {
                "last_batch": 0,
                "rows_published": 0,
                "pending_batch": None,
                "quarantined_rows": 0,
                "last_published_at": None,
                "newest_change_published": None,
                "lag_seconds": None,
            }
        return out
    state = StateStore(job.name, path)
    with state.connect(read_only=True) as con:
        run = fetch_one(
            con,
            "SELECT run_id, started_at, finished_at, outcome, detail FROM runs ORDER BY started_at DESC LIMIT 1",
        )
        ok = fetch_one(con, "SELECT max(finished_at) FROM runs WHERE outcome = 'ok'")[0]
        out["last_run"] = (
            None
            if run is None
            else {
                "run_id": run[0],
                "started_at": _iso(run[1]),
                "finished_at": _iso(run[2]),
                "outcome": run[3] or "running or killed",
                "detail": run[4],
            }
        )
        out["last_success"] = _iso(ok)
        retries = fetch_one(con, "SELECT count(*) FROM ops_log WHERE outcome = 'retry'")[0]
        out["retries_total"] = retries
        for t in job.tables:
            ck = fetch_one(
                con, "SELECT batch, committed_at FROM checkpoints WHERE tbl = ?", [t.name]
            )
            rows = fetch_one(
                con,
                "SELECT coalesce(sum(rows), 0) FROM plans WHERE tbl = ? AND status = 'committed'",
                [t.name],
            )[0]
            pending = fetch_one(
                con,
                "SELECT batch, rows FROM plans WHERE tbl = ? AND status = 'planned' ORDER BY batch LIMIT 1",
                [t.name],
            )
            quarantined = fetch_one(
                con, "SELECT count(DISTINCT pk) FROM quarantine WHERE tbl = ?", [t.name]
            )[0]
            published_at = ck[1] if ck else None
            last_manifest = fetch_one(
                con,
                "SELECT manifest FROM plans WHERE tbl = ? AND status = 'committed'"
                " ORDER BY batch DESC LIMIT 1",
                [t.name],
            )
            newest = json.loads(last_manifest[0])["cursor"]["max"] if last_manifest else None
            out["tables"][t.name] = {
                "last_batch": ck[0] if ck else 0,
                "rows_published": int(rows),
                "pending_batch": None
                if pending is None
                else {"batch": pending[0], "rows": pending[1]},
                "quarantined_rows": int(quarantined),
                "last_published_at": _iso(published_at),
                # the newest source change (cursor value) that has reached the lake
                "newest_change_published": newest,
                "lag_seconds": None
                if published_at is None
                else round((now() - published_at).total_seconds(), 1),
            }
    return out
