"""What ``deltaferry status`` reports, read from each job's state file.

Per table: the last published batch, rows, pending plan, quarantine and lag, and, over
the job's last N runs (the *window*): the sizes of the batches published, the share of
changed rows the contracts held back, the share of step attempts that failed
transiently, and a sparkline of rows per batch. ``deltaferry report`` draws the same
numbers as charts (``deltaferry.report_html``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from deltaferry.config import JobConfig, deltaferry_home
from deltaferry.duck import fetch_one, fetch_row
from deltaferry.state import StateStore
from deltaferry.statedb import now
from destinations.manifest import Manifest

DEFAULT_RUNS = 20
SPARK_GLYPHS = "▁▂▃▄▅▆▇█"
# ops_log outcomes of an attempt that failed transiently (retried, or its budget spent),
# and of the source client's own retries (HTTP 429/5xx) during extract
RETRIED = ("retry", "exhausted", "source-retry")
ATTEMPTS = ("ok", "failed", *RETRIED)  # 'info' and 'skipped' entries are not attempts
# the last N runs of the job, newest first
WINDOW_SQL = (
    "SELECT run_id, started_at, finished_at, outcome FROM runs ORDER BY started_at DESC LIMIT ?"
)
_RETRY_PREFIX = re.compile(r"^retry in [0-9.]+s after ")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")

# the source rows behind a quarantine record: rows without a key share one record
_SOURCE_ROWS = "coalesce(source_rows, 1)"
LAG_NEWEST_CHANGE = "newest change"
LAG_LAST_PUBLISH = "last publish"


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def sparkline(values: list[int] | list[float]) -> str:
    """One glyph per value, from ▁ (zero) to █ (the largest value); '' for no values."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARK_GLYPHS[0] * len(values)
    last = len(SPARK_GLYPHS) - 1
    return "".join(SPARK_GLYPHS[max(0, min(last, round(v / top * last)))] for v in values)


def cursor_time(value: Any) -> datetime | None:
    """The cursor value as a UTC time when it is a timestamp (naive ones are taken as UTC);
    None for other cursors (integers, versions) and missing values."""
    if value is None or not _TIMESTAMP.match(str(value)):
        return None
    try:
        ts = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _naive(value: Any) -> bool:
    """Whether a timestamp cursor value (``cursor_time`` is not None) has no offset."""
    return datetime.fromisoformat(str(value)).tzinfo is None


def retry_cause(detail: str | None) -> str:
    """The error class of a retried attempt's detail ('retry in 0.031s after TransientError:
    ...' -> 'TransientError'): the delay and message vary, the class groups them."""
    text = _RETRY_PREFIX.sub("", detail or "")
    return text.split(":", 1)[0].strip() or "(no detail)"


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _empty_table() -> dict[str, Any]:
    return {
        "last_batch": 0,
        "reset": None,  # after an operator's reset: {"at", "lake_head"} until the next run
        "rows_published": 0,
        "pending_batch": None,
        "open_cut": None,
        "quarantined_rows": 0,
        "last_published_at": None,
        "newest_change_published": None,
        "lag_seconds": None,
        "lag_basis": None,
        "seconds_since_last_publish": None,
        "batches": [],
        "batch_rows": {"count": 0, "last": None, "mean": None, "max": None},
        "sparkline": "",
        "quarantine": {"rows": 0, "rows_planned": 0, "rate": None},
        "retries": {"retried": 0, "attempts": 0, "rate": None, "by_cause": []},
        # when the job's last run failed: what it did for this table (_in_failed_run)
        "last_run": None,
    }


def _empty_runs(window: int) -> dict[str, Any]:
    return {"window": window, "count": 0, "ok": 0, "failed": 0, "unfinished": 0, "since": None}


def job_status(job: JobConfig, runs: int = DEFAULT_RUNS) -> dict[str, Any]:
    """Per table: last published batch, rows, pending plan, quarantine, lag; and over the
    last ``runs`` runs: batch sizes, quarantine and retry rates, a sparkline of rows per
    batch. Values the state cannot give (a job never run) are None, 0 or empty."""
    path = deltaferry_home() / job.name / "state.duckdb"
    out: dict[str, Any] = {"job": job.name, "lake": job.lake, "tables": {}}
    if not path.exists():
        out["last_run"] = None
        out["last_success"] = None
        out["retries_total"] = 0
        out["runs"] = _empty_runs(runs)
        out["retries"] = {"retried": 0, "attempts": 0, "rate": None}
        for t in job.tables:
            out["tables"][t.name] = _empty_table()
        return out
    state = StateStore(job.name, path, read_only=True)
    with state.connect(read_only=True) as con:
        run = fetch_one(
            con,
            "SELECT run_id, started_at, finished_at, outcome, detail FROM runs ORDER BY started_at DESC LIMIT 1",
        )
        ok = fetch_row(con, "SELECT max(finished_at) FROM runs WHERE outcome = 'ok'")[0]
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
        retries = fetch_row(con, "SELECT count(*) FROM ops_log WHERE outcome = 'retry'")[0]
        out["retries_total"] = retries
        window = con.execute(WINDOW_SQL, [runs]).fetchall()
        run_ids = [r[0] for r in window]
        since = min((r[1] for r in window), default=None)
        out["runs"] = {
            "window": runs,
            "count": len(window),
            "ok": sum(1 for r in window if r[3] == "ok"),
            "failed": sum(1 for r in window if r[3] == "failed"),
            "unfinished": sum(1 for r in window if r[3] is None),
            "since": _iso(since),
        }
        out["retries"] = _retry_counts(con, run_ids, None)
        failed_run = run[0] if run is not None and run[3] == "failed" else None
        for t in job.tables:
            out["tables"][t.name] = _table_status(con, t.name, run_ids, since)
            out["tables"][t.name]["last_run"] = _in_failed_run(con, failed_run, t.name)
    return out


def _in_failed_run(con: duckdb.DuckDBPyConnection, run_id: str | None, table: str) -> str | None:
    """What the job's last run did for ``table`` when that run failed: ``"stopped"`` (the
    table's own step failed: its contract, a value its column cannot carry),
    ``"published"`` (it committed a batch before another table or step failed the run),
    ``"no change"`` (read, nothing to publish); None when the run did not fail or the
    operations log says nothing of the table (the run failed before reaching it)."""
    if run_id is None:
        return None
    outcomes = {
        (step, outcome)
        for step, outcome in con.execute(
            "SELECT step, outcome FROM ops_log WHERE run_id = ? AND tbl = ?", [run_id, table]
        ).fetchall()
    }
    if any(outcome == "failed" for _, outcome in outcomes):
        return "stopped"
    if ("manifest", "ok") in outcomes:
        return "published"
    if ("plan", "ok") in outcomes:
        return "no change"
    return None


def _retry_counts(
    con: duckdb.DuckDBPyConnection, run_ids: list[str], table: str | None
) -> dict[str, Any]:
    """Retried attempts / attempts in these runs: of one table's steps plus the job-wide
    ones (extract) when ``table`` is given, of every step otherwise."""
    if not run_ids:
        return {"retried": 0, "attempts": 0, "rate": None}
    where = "run_id IN (SELECT unnest(?::VARCHAR[]))"
    params: list[Any] = [run_ids]
    if table is not None:
        where += " AND (tbl = ? OR tbl IS NULL)"
        params.append(table)
    retried, attempts = fetch_row(
        con,
        f"SELECT count(*) FILTER (WHERE outcome IN ({_in(RETRIED)})),"
        f" count(*) FILTER (WHERE outcome IN ({_in(ATTEMPTS)})) FROM ops_log WHERE {where}",
        params,
    )
    return {"retried": int(retried), "attempts": int(attempts), "rate": _rate(retried, attempts)}


def _table_status(
    con: duckdb.DuckDBPyConnection, table: str, run_ids: list[str], since: datetime | None
) -> dict[str, Any]:
    s = _empty_table()
    ck = fetch_one(con, "SELECT batch, committed_at FROM checkpoints WHERE tbl = ?", [table])
    rows = fetch_row(
        con,
        "SELECT coalesce(sum(rows), 0) FROM plans WHERE tbl = ? AND status = 'committed'",
        [table],
    )[0]
    pending = fetch_one(
        con,
        "SELECT batch, rows FROM plans WHERE tbl = ? AND status = 'planned' ORDER BY batch LIMIT 1",
        [table],
    )
    try:  # a cut split at max_batch_rows, half-way published (none in older state files)
        cut = fetch_one(con, "SELECT load_ids, through FROM open_cuts WHERE tbl = ?", [table])
    except duckdb.CatalogException:
        cut = None
    quarantined = fetch_row(
        con,
        f"SELECT coalesce(sum(n), 0) FROM (SELECT pk, max({_SOURCE_ROWS}) AS n FROM quarantine"
        " WHERE tbl = ? AND resolved IS NULL GROUP BY pk)",
        [table],
    )[0]
    published_at = ck[1] if ck else None
    s.update(
        last_batch=ck[0] if ck else 0,
        rows_published=int(rows),
        pending_batch=None if pending is None else {"batch": pending[0], "rows": pending[1]},
        open_cut=None
        if cut is None
        else {"load_ids": json.loads(cut[0]), "through": json.loads(cut[1])},
        quarantined_rows=int(quarantined),
        last_published_at=_iso(published_at),
    )
    if ck is None:
        s["reset"] = _reset(con, table)
    s.update(_lag(con, table, published_at))
    if since is None:
        return s

    # batches published from the window's first run on, oldest first
    batches = con.execute(
        "SELECT batch, rows, quarantined, committed_at FROM plans WHERE tbl = ? AND status = "
        "'committed' AND created_at >= ? ORDER BY batch",
        [table, since],
    ).fetchall()
    s["batches"] = [
        {"batch": b, "rows": int(n), "quarantined": int(q), "published_at": _iso(at)}
        for b, n, q, at in batches
    ]
    sizes = [int(b[1]) for b in batches]
    if sizes:
        s["batch_rows"] = {
            "count": len(sizes),
            "last": sizes[-1],
            "mean": round(sum(sizes) / len(sizes), 1),
            "max": max(sizes),
        }
    s["sparkline"] = sparkline(sizes)

    # held back / changed: rows of every batch planned in the window (published or pending)
    # plus the rows held back in its runs, also those of loads where every change was
    planned = fetch_row(
        con,
        "SELECT coalesce(sum(rows), 0) FROM plans WHERE tbl = ? AND created_at >= ?",
        [table, since],
    )[0]
    held = fetch_row(
        con,
        f"SELECT coalesce(sum(n), 0) FROM (SELECT run_id, pk, max({_SOURCE_ROWS}) AS n"
        " FROM quarantine WHERE tbl = ? AND run_id IN (SELECT unnest(?::VARCHAR[]))"
        " GROUP BY run_id, pk)",
        [table, run_ids],
    )[0]
    s["quarantine"] = {
        "rows": int(held),
        "rows_planned": int(planned),
        "rate": _rate(int(held), int(planned) + int(held)),
    }

    s["retries"] = _retry_counts(con, run_ids, table)
    causes: dict[tuple[str, str, str], int] = {}
    for step, outcome, detail in con.execute(
        f"SELECT step, outcome, detail FROM ops_log WHERE outcome IN ({_in(RETRIED)}) AND"
        " (tbl = ? OR tbl IS NULL) AND run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY id",
        [table, run_ids],
    ).fetchall():
        key = (step, outcome, retry_cause(detail))
        causes[key] = causes.get(key, 0) + 1
    s["retries"]["by_cause"] = [
        {"step": k[0], "outcome": k[1], "cause": k[2], "count": n}
        for k, n in sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return s


def _lag(
    con: duckdb.DuckDBPyConnection, table: str, published_at: datetime | None
) -> dict[str, Any]:
    """Lag of the lake behind the source: now minus the newest cursor value published when
    the cursor is a timestamp ('newest change'), else now minus the last publish."""
    newest: Any = None
    newest_at: datetime | None = None
    # the newest cursor time of the last 20 batches, not the last batch's: a batch of
    # backdated changes only (a record given an older time) would show an old lag; and not
    # a time after now (a typo year), which would hide any lag for as long as it is newest
    # a naive value is wall time in the source's zone: up to 14 hours ahead of UTC
    ahead = {True: now() + timedelta(hours=14, minutes=5), False: now() + timedelta(minutes=5)}
    for batch, manifest in con.execute(
        "SELECT batch, manifest FROM plans WHERE tbl = ? AND status = 'committed'"
        " ORDER BY batch DESC LIMIT 20",
        [table],
    ).fetchall():
        value = Manifest.parse(manifest.encode(), key=f"of {table} batch {batch}").cursor.max
        at = cursor_time(value)
        if at is None:  # no cursor (deletes only), or not a time: the newest batch's value
            if newest_at is None and newest is None:
                newest = value
        elif at <= ahead[_naive(value)] and (newest_at is None or at > newest_at):
            newest, newest_at = value, at
    since_publish = (
        None if published_at is None else round((now() - published_at).total_seconds(), 1)
    )
    change = cursor_time(newest)
    if change is not None:
        lag, basis = round((now() - change).total_seconds(), 1), LAG_NEWEST_CHANGE
    elif since_publish is not None:
        lag, basis = since_publish, LAG_LAST_PUBLISH
    else:
        lag, basis = None, None
    return {
        # the newest source change (cursor value) that has reached the lake
        "newest_change_published": newest,
        "lag_seconds": lag,
        "lag_basis": basis,
        "seconds_since_last_publish": since_publish,
    }


def human_duration(seconds: float | None) -> str:
    """'42s', '12m', '5h 03m', '12d 05h'; '-' for None; negative when the source's clock
    is ahead."""
    if seconds is None:
        return "-"
    sign, s = ("-" if seconds < 0 else ""), abs(seconds)
    if s < 90:
        return f"{sign}{s:.0f}s"
    if s < 90 * 60:
        return f"{sign}{s / 60:.0f}m"
    if s < 36 * 3600:
        return f"{sign}{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{sign}{int(s // 86400)}d {int(s % 86400 // 3600):02d}h"


def percent(rate: float | None) -> str:
    """A rate (0..1) as '12.5%', '-' when there is nothing to divide by."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


def share(part: int, whole: int) -> str:
    """``part`` of ``whole`` as '12.5%' from the counts themselves (a rate already rounded
    to 4 places would round twice: 1/26 shown as 3.9%), '-' when ``whole`` is 0."""
    return percent(part / whole) if whole else "-"


STATUS_COLUMNS = (
    "job",
    "table",
    "last batch",
    "rows published",
    "batch rows last/mean",
    "rows/batch",
    "pending",
    "quarantined",
    "quar. %",
    "retry %",
    "last published",
    "lag",
    "runs ok/failed",
    "last run",
)


def _utc_text(iso: str | None) -> str:
    if not iso:
        return "never"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def lag_text(s: dict[str, Any]) -> str:
    if s["lag_seconds"] is None:
        return "-"
    basis = "change" if s["lag_basis"] == LAG_NEWEST_CHANGE else "publish"
    return f"{human_duration(s['lag_seconds'])} ({basis})"


def _pending_text(pending: dict[str, Any] | None, cut: dict[str, Any] | None) -> str:
    """The ``pending`` cell: the planned batch, and a split load half-way with the last key
    published (JSON, as the key's text)."""
    split = (
        f"split load: keys after {json.dumps(cut['through'], ensure_ascii=False)}" if cut else ""
    )
    if pending:
        return f"batch {pending['batch']}" + (f" ({split})" if split else "")
    return split or "-"


def _reset(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, Any] | None:
    """A table without a checkpoint that an operator reset: when, and the lake's head batch
    the reset found (the next run adopts it), from the reset's operations-log line; None
    when the table was never reset (a job not run yet)."""
    row = fetch_one(
        con,
        "SELECT ts, detail FROM ops_log WHERE tbl = ? AND step = 'reset' ORDER BY id DESC LIMIT 1",
        [table],
    )
    if row is None:
        return None
    found = re.search(r"is at batch (\d+)", row[1] or "")
    return {"at": _iso(row[0]), "lake_head": int(found.group(1)) if found else None}


def _last_batch_text(s: dict[str, Any]) -> str:
    """``last_batch``, or after a reset (no checkpoint yet) what the next run adopts."""
    reset = s.get("reset")
    if reset is None:
        return str(s["last_batch"])
    head = reset["lake_head"]
    return f"reset (adopts {head})" if head is not None else "reset"


def _last_run_text(run: dict[str, Any], table: str | None) -> str:
    """The ``last run`` cell: the job's last run's outcome, and, when it failed, what it
    did for this table (``_in_failed_run``): one table stopped is not every table failed."""
    outcome = str(run.get("outcome", "never run"))
    if outcome != "failed" or table is None:
        return outcome
    if table == "stopped":
        return "failed: stopped here"
    return f"failed elsewhere ({table} here)"


def status_rows(report: list[dict[str, Any]]) -> list[list[str]]:
    """The rows of ``deltaferry status``'s table (columns: ``STATUS_COLUMNS``); '-' where
    the state has nothing to say."""
    rows = []
    for j in report:
        run = j.get("last_run") or {}
        runs = j["runs"]
        for name, s in j["tables"].items():
            pending = s["pending_batch"]
            sizes = s["batch_rows"]
            rows.append(
                [
                    j["job"],
                    name,
                    _last_batch_text(s),
                    str(s["rows_published"]),
                    f"{sizes['last']}/{sizes['mean']:.1f}".rstrip("0").rstrip(".") if sizes["count"] else "-",
                    s["sparkline"] or "-",
                    _pending_text(pending, s["open_cut"]),
                    str(s["quarantined_rows"]),
                    share(
                        s["quarantine"]["rows"],
                        s["quarantine"]["rows"] + s["quarantine"]["rows_planned"],
                    ),
                    share(s["retries"]["retried"], s["retries"]["attempts"]),
                    _utc_text(s["last_published_at"]),
                    lag_text(s),
                    f"{runs['ok']}/{runs['failed']}" if runs["count"] else "-",
                    _last_run_text(run, s.get("last_run")),
                ]
            )
    return rows
