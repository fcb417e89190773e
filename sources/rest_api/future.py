"""A REST cursor value after now must not become the ``since`` of every later run.

With ``cursor_param``, dlt's incremental step keeps the newest cursor value it has seen in
the pipeline's state and sends it as ``cursor_param`` on the next run. One record with a
typo year (``2240-01-02T00:00:00Z``) made that the value, the API then sent nothing newer,
and every later change was missed, exit 0, until a reset (the SQL window had the same
fault: ``sources.sql_database.window.window_start``).

``FutureCursors`` is a dlt map step placed right after the incremental step (the cursor
text as the API wrote it): it keeps the newest cursor value *not after now* among the
records read, and counts the ones ahead. After a successful load that value is
remembered (``$DELTAFERRY_HOME/<job>/rest_cursor/<table>.json``, the API's own text), and
before the next run a stored value after now is replaced by it (``clamp_state``; the
table's ``initial_value`` when none is remembered), so the API is asked from there: later
changes come, and the record ahead comes again on every run (the content hash keeps it
only when it changed). Only time cursors are compared with the clock; a number is kept.
A record whose value is fixed to a time older than that start is not sent again by an
API that filters on ``cursor_param`` (as for a held NULL cursor): ``reset`` reads it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

from deltaferry.config import JobConfig, TableConfig, job_home, write_home_file
from sources.rest_api.reads import _cursor_value, cursor_rank

# values ahead of the clock by more than this are warned about (a clock a little ahead is not)
WARN_AHEAD = dt.timedelta(minutes=5)


def _zone(job: JobConfig) -> ZoneInfo | None:
    return None if job.timezone == "UTC" else ZoneInfo(job.timezone)


def _ahead(rank: tuple[Any, ...], now: dt.datetime) -> bool:
    """Whether a cursor value of ``rank`` (``cursor_rank``) is a time after ``now`` (UTC)."""
    return rank[0] == 2 and rank[1] > now


class FutureCursors:
    """A dlt map step (records or lists of records, unchanged): the newest cursor value
    not after now (``newest``, the API's text), and the values after now plus
    ``WARN_AHEAD`` (``ahead``, and the newest of them, ``latest``)."""

    def __init__(self, job: JobConfig, t: TableConfig, now: dt.datetime | None = None) -> None:
        self.job, self.t = job, t
        self.zone = _zone(job)
        self.now = now or dt.datetime.now(dt.timezone.utc)
        self.newest: Any = None
        self.ahead = 0
        self.latest: Any = None
        # the ranks of newest and latest (``cursor_rank`` parses text: once per value)
        self._newest: tuple[Any, ...] = (0,)
        self._latest: tuple[Any, ...] = (0,)

    def __call__(self, item: Any) -> Any:
        for row in item if isinstance(item, list) else [item]:
            if isinstance(row, dict) and self.t.cursor:
                self._see(_cursor_value(row, self.t.cursor))
        return item

    def _see(self, value: Any) -> None:
        if value is None:
            return
        rank = cursor_rank(value, self.zone)
        if not _ahead(rank, self.now):
            if rank > self._newest:
                self.newest, self._newest = value, rank
        elif rank[1] > self.now + WARN_AHEAD:
            self.ahead += 1
            if rank > self._latest:
                self.latest, self._latest = value, rank

    def note(self) -> str | None:
        """The run's warning about records whose cursor is after now, or None; after
        ``remember``: it names where the next run asks the API from."""
        if not self.ahead:
            return None
        path = _file(self.job, self.t)
        start = (
            json.loads(path.read_text())["newest"]
            if path.exists()
            else self.t.options.get("initial_value")
        )
        return (
            f"job '{self.job.name}' table '{self.t.name}': {self.ahead} record(s) have a cursor "
            f"('{self.t.cursor}') value after now (newest {self.latest!r}); the next run asks "
            f"the API from the newest value not after now ({start!r}), not from it, so "
            "later changes are still read and those records are sent again every run (kept "
            "only when changed). Check the API's data for a wrong year, or the job's timezone"
        )


def _file(job: JobConfig, t: TableConfig) -> Any:
    return job_home(job.name) / "rest_cursor" / f"{t.name}.json"


def remember(job: JobConfig, t: TableConfig, seen: FutureCursors) -> None:
    """After a successful load: the newest cursor value not after now read so far (the
    later of the one remembered and this run's)."""
    if seen.newest is None:
        return
    path = _file(job, t)
    old = json.loads(path.read_text())["newest"] if path.exists() else None
    zone = _zone(job)
    if old is not None and cursor_rank(old, zone) >= cursor_rank(seen.newest, zone):
        return
    write_home_file(path, json.dumps({"newest": seen.newest}, default=str))


def clamp_state(job: JobConfig, t: TableConfig, pipeline: Any, now: dt.datetime | None = None) -> Any:
    """Before a run: when the pipeline's stored cursor value for ``t`` (dlt's incremental
    state) is a time after ``now``, replace it with the remembered newest value not after
    now (else the table's ``initial_value``). Returns the value replaced, or None."""
    from sources.names import cursor_path

    if not t.cursor or not t.options.get("cursor_param"):
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    zone = _zone(job)
    path = cursor_path(t.cursor)
    with pipeline.managed_state() as state:
        for source in state.get("sources", {}).values():
            inc = source.get("resources", {}).get(t.name, {}).get("incremental", {}).get(path)
            if not inc or not _ahead(cursor_rank(inc.get("last_value"), zone), now):
                continue
            was = inc["last_value"]
            remembered = _file(job, t)
            start = (
                json.loads(remembered.read_text())["newest"]
                if remembered.exists()
                else t.options.get("initial_value")
            )
            inc["last_value"] = start
            inc["unique_hashes"] = []
            return was
    return None
