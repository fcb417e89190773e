"""Naive timestamps read as wall time in a job's ``timezone``, where that zone's clock is
changed too: one rule for every source, PostgreSQL's own (its manual, "Handling of Invalid
or Ambiguous Timestamps"), so a replica agrees with ``ts AT TIME ZONE zone`` in the source.

- a wall time the clock shows twice (set back in autumn: Berlin 2024-10-27 02:30) is the
  *later* instant, read with the offset in force after the change (standard time);
- a wall time the clock skips (set forward in spring: Berlin 2024-03-31 02:30) is read
  with the offset in force before the change, so it lands an hour on (03:30 summer time).

Neither is refused: a naive column cannot say which instant was meant, refusing it stopped
the job at every run until the row changed (once a year an hour of rows in every zone that
has summer time). Each such value is counted (``ZoneShifts``) and the run says how many, per
table and column, in its warnings and operations log.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

# what ``wall_to_utc`` found a wall time to be, when it was not one instant
REPEATED = "repeated"  # the clock showed it twice
SKIPPED = "skipped"  # the clock never showed it


def wall_to_utc(value: dt.datetime, zone: ZoneInfo) -> tuple[dt.datetime, str | None]:
    """Naive ``value`` read as wall time in ``zone``: the instant's UTC wall time (naive),
    and ``REPEATED``, ``SKIPPED`` or None (one instant) by the module's rule. Raises
    OverflowError where the instant is outside ``datetime``'s years."""
    first = value.replace(tzinfo=zone, fold=0)  # PEP 495: the offset before a change
    before, after = first.utcoffset(), value.replace(tzinfo=zone, fold=1).utcoffset()
    assert before is not None and after is not None
    if before == after:
        return value - before, None
    shown = first.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None) == value
    if shown:  # both readings give back the wall time: the clock showed it twice
        return value - after, REPEATED
    return value - before, SKIPPED


def assume_zone(values: Any, zone: str) -> tuple[Any, dict[str, int]]:
    """Naive Arrow timestamps (an array or chunked array, any unit) as instants of type
    ``timestamp(unit, zone)`` by the module's rule, and how many values were ``REPEATED``
    or ``SKIPPED`` (only kinds met). Arrow does the common case in one pass, a chunk with a
    repeated wall time in two more; a chunk with a skipped one is taken value by value."""
    try:  # the common case, one pass: every value is one instant
        return pc.assume_timezone(values, zone, ambiguous="raise", nonexistent="raise"), {}
    except pa.ArrowInvalid:
        pass
    try:
        late = pc.assume_timezone(values, zone, ambiguous="latest", nonexistent="raise")
    except pa.ArrowInvalid:
        return _by_value(values, zone)
    early = pc.assume_timezone(values, zone, ambiguous="earliest", nonexistent="raise")
    twice = pc.sum(pc.not_equal(early, late).cast(pa.int64())).as_py() or 0
    return late, ({REPEATED: twice} if twice else {})


# ticks of an Arrow time unit in a second
PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _by_value(values: Any, zone: str) -> tuple[Any, dict[str, int]]:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    unit = values.type.unit
    per = PER_SECOND[unit]
    tz = ZoneInfo(zone)
    epoch = dt.datetime(1970, 1, 1)
    counts: dict[str, int] = {}
    out: list[int | None] = []
    for v in values.cast(pa.int64()).to_pylist():
        if v is None:
            out.append(None)
            continue
        # offsets and clock changes fall on whole seconds: the second is enough to judge
        seconds = dt.timedelta(seconds=v // per)
        utc, kind = wall_to_utc(epoch + seconds, tz)
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
        shift = (epoch + seconds) - utc  # the offset used
        out.append(v - int(shift.total_seconds()) * per)
    as_utc = pa.array(out, pa.int64()).cast(pa.timestamp(unit, "UTC"))
    return as_utc.cast(pa.timestamp(unit, zone)), counts


class ZoneShifts:
    """Values one read took by the module's rule, counted per column and kind, for the
    run's notes (``notes``)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, column: str, kind: str, n: int = 1) -> None:
        self.counts[(column, kind)] = self.counts.get((column, kind), 0) + n

    def add_all(self, column: str, counts: dict[str, int]) -> None:
        for kind, n in counts.items():
            self.add(column, kind, n)

    def merge(self, other: ZoneShifts) -> None:
        for (column, kind), n in other.counts.items():
            self.add(column, kind, n)

    def notes(self, where: str, zone: str) -> list[str]:
        """One line per column and kind: ``where`` (job and table), the column, how many
        values, and how they were read."""
        how = {
            REPEATED: f"a wall time {zone} shows twice (its clock set back): read as the later "
            "instant (the offset after the change), as PostgreSQL reads it",
            SKIPPED: f"a wall time {zone} never shows (its clock set forward): read with the "
            "offset before the change (so it lands after the gap), as PostgreSQL reads it",
        }
        return [
            f"{where}: column '{column}': {n} value(s) {how[kind]}; store an offset with such "
            "times to say which instant is meant"
            for (column, kind), n in sorted(self.counts.items())
        ]
