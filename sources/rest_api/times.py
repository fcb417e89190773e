"""Naive times in a REST API's records read as wall time in the job's ``timezone``.

An API's ISO-8601 text without an offset (``"2024-01-01T02:00:00"``) names no instant;
dlt stages such text as a timestamp taken as UTC. The jobs file's ``timezone`` says which
zone a source's naive times were written in, and every other source reads them there (SQL
databases, file drops): a REST record's were taken as UTC whatever the zone, so a job in
``America/New_York`` published 02:00 as 02:00Z, five hours off, and a later record whose
naive cursor was really newer was dropped as older (a fresh-user trial).

``NaiveTimes`` is a dlt map step placed *after* dlt's incremental step (so the cursor
value dlt sends back to the API in ``cursor_param`` stays the text the API wrote): it
rewrites each naive time of a field that staging holds as a timestamp into its instant,
``"2024-01-01T07:00:00+00:00"``, by ``sources.wall_time``'s rule (a wall time the zone
shows twice is the later instant, one it skips lands after the gap; each counted for the
run's notes). A field is a timestamp for staging when dlt's schema has its column as one,
or, for a column staging does not have yet, when its first value in the read is text dlt
detects as a timestamp (dlt's own ``iso_timestamp`` detection decides the column's type
from that value). Text in a column staged as text is never touched. Under ``timezone =
"UTC"`` (the default) no step is added: naive text is UTC wall time already.

The content hash (``_df_hash``) and the duplicate-key rule see the record as the API wrote
it (``reads.TableRead`` runs before this step); the cursor comparisons take naive values
in the zone too (``reads.cursor_rank``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable
from zoneinfo import ZoneInfo

from deltaferry.errors import TerminalError
from sources.wall_time import ZoneShifts, wall_to_utc


class NaiveTimes:
    """The map step (see the module docstring) of the job's table ``table`` (``where``
    names job and table in messages). ``staged``: the staging's column name ->
    dlt data type (``{}`` before the table's first load); ``normalize``: a record field's
    name as staged. Raises TerminalError naming record field and value for a naive time
    whose instant in the zone falls outside years 1-9999."""

    def __init__(
        self,
        where: str,
        table: str,
        zone: str,
        staged: dict[str, str | None],
        normalize: Callable[[str], str],
    ) -> None:
        self.where = where
        self.table = table
        self.zone_name = zone
        self.zone = ZoneInfo(zone)
        self.staged = staged
        self.normalize = normalize
        self.shifts = ZoneShifts()
        self._timestamp: dict[str, bool] = {}  # record field -> staged as a timestamp

    def __call__(self, item: Any) -> Any:
        for row in item if isinstance(item, list) else [item]:
            if isinstance(row, dict):
                self._row(row)
        return item

    def notes(self) -> list[str]:
        return self.shifts.notes(self.where, self.zone_name)

    def _is_timestamp(self, name: str, value: Any) -> bool:
        known = self._timestamp.get(name)
        if known is None:
            from dlt.common.schema.detections import is_iso_timestamp

            column = self.normalize(name)
            if column in self.staged:
                known = self.staged[column] == "timestamp"
            else:  # dlt types a new column by its first value
                known = isinstance(value, str) and is_iso_timestamp(str, value) is not None
            self._timestamp[name] = known
        return known

    def _row(self, row: dict[str, Any]) -> None:
        from dlt.common.time import parse_iso_like_datetime

        for name, value in row.items():
            if value is None or not self._is_timestamp(name, value) or not isinstance(value, str):
                continue
            try:
                at = parse_iso_like_datetime(value)
            except Exception:  # noqa: BLE001 - not a time: dlt keeps it as a variant
                continue
            if not isinstance(at, dt.datetime) or at.tzinfo is not None:
                continue
            wall = dt.datetime(
                at.year, at.month, at.day, at.hour, at.minute, at.second, at.microsecond
            )
            try:
                utc, kind = wall_to_utc(wall, self.zone)
            except OverflowError:
                raise TerminalError(
                    f"{self.where}: field '{name}' value {value!r}, a naive time taken in the "
                    f"job's timezone {self.zone_name}, is outside years 1-9999 in UTC, which "
                    "staging cannot keep; send it with an offset (or as null); nothing of the "
                    "read is published"
                ) from None
            if kind is not None:
                self.shifts.add(self.normalize(name), kind)
            row[name] = utc.isoformat() + "+00:00"
