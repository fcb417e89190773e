"""The per-value result processors of SQLite reads (``sources/sql_database/types.py``'s
carried types, ``sources/sql_database/window.py:TimeText``) take one call per value with a
fast path for the common value; they must give exactly what the full path gives (the value,
or the same one-line refusal) for every value."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from deltaferry.errors import TerminalError
from sources.sql_database import types as T
from sources.sql_database.window import TimeText

DIALECT = sqlite.dialect()

TIME_TEXTS = [
    None,
    "2025-01-01 12:34:56",
    "2025-01-01 12:34:56.123456",
    "2025-01-01T12:34:56.5",
    "2025-01-01",
    "2025-01-01 12:34",
    " 2025-01-01 12:34:56",
    "2025-01-01 12:34:56 ",
    "2025-01-01 12:34:56\u00a0",
    "2025-01-01 12:34:56Z",
    "2025-01-01 12:34:56 UTC",
    "2025-01-01 12:34:56gmt",
    "2025-01-01 12:34:56+02:00",
    "2025-01-01 12:34:56.1234567",
    "2025-01-01 12:34:56.1234560",
    "2025-01-01T",
    "12:34:56.1234567",
    "12:34:56+02:00",
    "12:34:56.5Z",
    "24:00:00",
    "",
    "not a time",
    "2025-13-01 00:00:00",
    12,
    1.5,
    b"2025-01-01",
]


def _outcome(process, value):
    try:
        return ("value", process(value))
    except TerminalError as e:
        return ("refused", str(e))


def _processors(typ):
    impl = typ.dialect_impl(DIALECT)
    fast = impl.result_processor(DIALECT, None)
    full = sa.types.TypeDecorator.result_processor(impl, DIALECT, None)
    return fast, full


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
@pytest.mark.parametrize("kind", ["timestamp", "date", "time"])
def test_time_text_fast_path_gives_what_the_full_path_gives(kind, zone):
    fast, full = _processors(TimeText(kind, zone, "job 'j' table 't'", "c", False))
    for value in TIME_TEXTS:
        assert _outcome(fast, value) == _outcome(full, value), value
    if kind == "timestamp" and zone == "UTC":
        assert fast("2025-01-01 12:34:56.5") == dt.datetime(2025, 1, 1, 12, 34, 56, 500000)


VALUES = [None, 0, -1, 2**63 - 1, 1.0, 1.5, float("nan"), "7", "x", "", b"\x00", True]


@pytest.mark.parametrize(
    "sa_type", [sa.Integer(), sa.BigInteger(), sa.Text(), sa.String(20), sa.Float(), sa.Numeric(10, 2)]
)
def test_carried_fast_path_gives_what_the_full_path_gives(sa_type):
    plan = T.plan_column("c", sa_type, DIALECT)
    assert plan.convert is not None and plan.raw  # every SQLite type here is checked per value
    fast, full = _processors(T._carried_type("j", "t", plan, sa_type))
    for value in VALUES:
        got, want = _outcome(fast, value), _outcome(full, value)
        if want[0] == "value" and isinstance(want[1], float) and want[1] != want[1]:
            assert got[0] == "value" and got[1] != got[1]  # NaN
        else:
            assert got == want, value


def test_wall_times_the_jobs_zone_skips_or_repeats_are_read_as_postgresql_reads_them():
    """2024-03-31 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00): read with the
    offset before the change (01:30 UTC); 2024-10-27 02:30 happens twice: the later one
    (01:30 UTC). Both are counted for the run's warning; text that is no time is refused."""
    from sources.wall_time import REPEATED, SKIPPED, ZoneShifts

    shifts = ZoneShifts()
    read = TimeText("timestamp", "Europe/Berlin", "job 'j' table 't'", "c", False, shifts)
    assert read.process_result_value("2024-03-31 02:30:00", None) == dt.datetime(2024, 3, 31, 1, 30)
    assert read.process_result_value("2024-10-27 02:30:00", None) == dt.datetime(2024, 10, 27, 1, 30)
    assert read.process_result_value("2024-10-27 02:30:00+02:00", None) == dt.datetime(
        2024, 10, 27, 0, 30
    )  # an offset says which: not counted
    assert shifts.counts == {("c", SKIPPED): 1, ("c", REPEATED): 1}
    with pytest.raises(TerminalError) as e:
        read.process_result_value("soon", None)
    assert "is not a timestamp (ISO-8601" in str(e.value)
