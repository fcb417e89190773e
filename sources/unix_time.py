"""Number cursors as Unix times: which numbers stand for a time, and which time.

A cursor value after now must not become the bound of every later read (a typo year in a
time cursor; ``sources.rest_api.future``, ``sources.sql_database.window``). Many sources
write times as numbers, Unix time in seconds or milliseconds (``updated_at: 1764900000``;
SQLite applications, JavaScript clients): a typo such as ``8000000000`` (the year 2223)
did the same to a number cursor. A table's ``cursor_unit`` says what its numbers are:
``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` since 1970-01-01 UTC, or ``"number"`` (an id, a
version: never compared with the clock). Without it a REST number is read by its size
(``by_size``: the two forms APIs write), and the size most numbers of a table's first read
have is learned as its unit, so that a value of another size later (a millisecond time in
a table of seconds) is read in the table's unit; a SQL number is compared with the clock only when
``cursor_unit`` names a unit, and a value that by its size would be a time after now is
warned about.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

#: cursor_unit's units, in units per second
UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# a number's unit by its size, [from, to): seconds and milliseconds from 2001-09-09 to the
# year 33658; another number is not a time (an id: snowflake ids are about 1.8e18, which as
# nanoseconds would be 2027)
BY_SIZE = ((Decimal(10) ** 9, Decimal(10) ** 12, "s"), (Decimal(10) ** 12, Decimal(10) ** 15, "ms"))
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: what a Unix time past year 9999 (which ``datetime`` cannot hold) is read as
LAST = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


def _decimal(number: Any) -> Decimal:
    return number if isinstance(number, Decimal) else Decimal(str(number))


def by_size(number: Any) -> str | None:
    """The unit a number is a Unix time in by its size (``BY_SIZE``: seconds from 1e9,
    milliseconds from 1e12 to 1e15), or None: another number is not read as a time."""
    n = _decimal(number)
    if not n.is_finite():  # NaN, infinity: no time
        return None
    return next((name for low, high, name in BY_SIZE if low <= n < high), None)


def unit_of(options: dict[str, Any], number: Any, learned: str | None = None) -> str | None:
    """The unit a cursor number of a table with ``options`` (its jobs-file settings) is a
    Unix time in: its ``cursor_unit``; without one, the unit ``learned`` from the table's
    values (``most_common`` of their ``size_of``); without either, ``by_size``. None for
    "number" (set or learned)."""
    unit = options.get("cursor_unit") or learned
    if unit is not None:
        return None if unit == "number" else str(unit)
    return by_size(number)


def most_common(counts: dict[str, int]) -> str | None:
    """Of how many numbers have each size (``size_of``'s names), the most common; on a tie
    the smaller unit ("number" last), so data is read as a time rather than missed. None
    when nothing was counted."""
    order = [*UNITS, "number"]
    counted = [u for u in order if counts.get(u)]
    return max(counted, key=lambda u: (counts[u], -order.index(u))) if counted else None


def size_of(number: Any) -> str:
    """``by_size``'s unit of a number, or "number" (not a time by its size): what a
    table's numbers are learned as."""
    return by_size(number) or "number"


def to_time(number: Any, unit: str) -> dt.datetime | None:
    """The UTC time of a Unix time ``number`` in ``unit`` (``UNITS``); ``LAST`` past year
    9999, None before year 1."""
    n = _decimal(number)
    if n.is_nan():
        return None
    try:
        return EPOCH + dt.timedelta(seconds=float(n / UNITS[unit]))
    except (OverflowError, ArithmeticError, ValueError):
        return LAST if n > 0 else None


def of_time(at: dt.datetime, unit: str) -> int:
    """The Unix time of ``at`` (aware) in ``unit``, a whole number (rounded down)."""
    delta = at - EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * UNITS[unit] // 1_000_000


def shown(number: Any, unit: str, how: str) -> str:
    """A number cursor value with the time it is read as, for a warning."""
    at = to_time(number, unit)
    when = "after 9999" if at == LAST else "no time" if at is None else f"{at:%Y-%m-%d %H:%M:%S} UTC"
    text = str(number) if isinstance(number, Decimal) else repr(number)
    return f"{text}, read as Unix time in {unit} by {how}: {when}"
