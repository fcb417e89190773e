"""Naive times where the job's zone changes its clock (``sources/wall_time.py``): PostgreSQL's
rule, checked against the examples of PostgreSQL's own manual, and the Arrow path against
the value-by-value path on every minute around clock changes in zones of both hemispheres,
half-hour changes and none."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from sources.wall_time import REPEATED, SKIPPED, ZoneShifts, assume_zone, wall_to_utc

pytestmark = pytest.mark.unit


def test_the_examples_of_postgresqls_manual():
    """"Handling of Invalid or Ambiguous Timestamps": with TimeZone America/New_York,
    '2018-03-11 02:30'::timestamptz is 03:30 EDT (07:30 UTC), and '2018-11-04 01:30' is
    01:30 EST (06:30 UTC)."""
    ny = ZoneInfo("America/New_York")
    assert wall_to_utc(dt.datetime(2018, 3, 11, 2, 30), ny) == (dt.datetime(2018, 3, 11, 7, 30), SKIPPED)
    assert wall_to_utc(dt.datetime(2018, 11, 4, 1, 30), ny) == (dt.datetime(2018, 11, 4, 6, 30), REPEATED)
    assert wall_to_utc(dt.datetime(2018, 7, 1, 12, 0), ny) == (dt.datetime(2018, 7, 1, 16, 0), None)


ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe", "Asia/Kolkata"]


def _minutes_around_changes(zone: ZoneInfo, year: int) -> list[dt.datetime]:
    """Every minute of the three hours around each clock change of ``year`` (and a few
    ordinary times), as naive wall times."""
    found = []
    t = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    last = t.astimezone(zone).utcoffset()
    while t.year == year:
        off = t.astimezone(zone).utcoffset()
        if off != last:
            local = t.astimezone(zone).replace(tzinfo=None)
            found += [local + dt.timedelta(minutes=m) for m in range(-120, 121)]
            last = off
        t += dt.timedelta(hours=1)
    return found + [dt.datetime(year, 6, 15, 12, 0), dt.datetime(year, 12, 31, 23, 59, 59)]


@pytest.mark.parametrize("unit", ["s", "us", "ns"])
@pytest.mark.parametrize("zone", ZONES)
def test_arrow_and_value_by_value_agree_around_every_clock_change(zone, unit):
    tz = ZoneInfo(zone)
    walls = _minutes_around_changes(tz, 2024)
    expect = [wall_to_utc(w, tz) for w in walls]
    kinds = {k: sum(1 for _, x in expect if x == k) for k in (REPEATED, SKIPPED)}
    col = pa.array([*walls, None], pa.timestamp(unit))
    got, counts = assume_zone(col, zone)  # with a skipped time: value by value
    assert got.type == pa.timestamp(unit, zone)
    as_utc = got.cast(pa.timestamp(unit, "UTC")).to_pylist()
    assert [v.replace(tzinfo=None) if v else None for v in as_utc] == [u for u, _ in expect] + [None]
    assert counts == {k: n for k, n in kinds.items() if n}
    if zone == "Asia/Kolkata":
        assert counts == {}
    # the autumn change alone (no skipped time in the column): Arrow's own path
    autumn = [w for w, (_, k) in zip(walls, expect, strict=True) if k != SKIPPED]
    got, counts = assume_zone(pa.chunked_array([pa.array(autumn, pa.timestamp(unit))]), zone)
    want = [wall_to_utc(w, tz)[0] for w in autumn]
    assert [v.replace(tzinfo=None) for v in got.cast(pa.timestamp(unit, "UTC")).to_pylist()] == want
    assert counts == ({REPEATED: kinds[REPEATED]} if kinds[REPEATED] else {})


def test_a_fraction_of_a_second_is_kept_through_the_value_by_value_path():
    col = pa.array([dt.datetime(2024, 3, 31, 2, 30, 0, 123456)], pa.timestamp("us"))
    got, counts = assume_zone(col, "Europe/Berlin")
    assert got.cast(pa.timestamp("us", "UTC"))[0].as_py() == dt.datetime(
        2024, 3, 31, 1, 30, 0, 123456, tzinfo=dt.UTC
    )
    assert counts == {SKIPPED: 1}


def test_the_notes_name_table_column_count_and_rule():
    shifts = ZoneShifts()
    shifts.add_all("at", {REPEATED: 2})
    shifts.add("at", SKIPPED)
    notes = shifts.notes("job 'j' table 't'", "Europe/Berlin")
    assert len(notes) == 2
    assert notes[0].startswith("job 'j' table 't': column 'at': 2 value(s) a wall time Europe/Berlin shows twice")
    assert "1 value(s) a wall time Europe/Berlin never shows" in notes[1]
    assert all("\n" not in n and "as PostgreSQL reads it" in n for n in notes)


def test_a_staged_instant_is_looked_up_at_every_wall_time_that_reads_as_it():
    """Rows read again by value (a key, a cursor value of rows held without a key) are
    asked for in the source's naive wall time: a wall time the clock skipped is staged as
    the instant after the gap, so both texts must be asked for (02:30 was never found)."""
    from types import SimpleNamespace

    import sqlalchemy as sa

    from sources.sql_database.window import _key_values

    job = SimpleNamespace(timezone="Europe/Berlin")
    naive = sa.Column("k", sa.DateTime())
    gap = _key_values(naive, dt.datetime(2024, 3, 31, 1, 30), job)
    assert gap == [dt.datetime(2024, 3, 31, 2, 30), dt.datetime(2024, 3, 31, 3, 30)]
    assert _key_values(naive, dt.datetime(2024, 10, 27, 1, 30), job) == [
        dt.datetime(2024, 10, 27, 2, 30)
    ]  # the later of the two 02:30s
    assert _key_values(naive, dt.datetime(2024, 6, 1, 10), job) == [dt.datetime(2024, 6, 1, 12)]
    zoned = sa.Column("k", sa.DateTime(timezone=True))
    assert _key_values(zoned, dt.datetime(2024, 3, 31, 1, 30), job) == [dt.datetime(2024, 3, 31, 1, 30)]


def test_a_naive_time_the_zone_moves_out_of_range_stops_the_read_naming_the_column():
    """Year 1 at 00:30 in Berlin is before the first UTC instant: ``Normalize`` (naive
    times of databases with time types) refuses it in one line naming table and column,
    as the value-by-value path meets it in a chunk that also has a skipped time."""
    from types import SimpleNamespace

    from deltaferry.errors import TerminalError
    from sources.sql_database.window import Normalize

    job = SimpleNamespace(name="j", timezone="Europe/Berlin")
    t = SimpleNamespace(name="t")
    chunk = pa.table(
        {"at": pa.array([dt.datetime(1, 1, 1, 0, 30), dt.datetime(2024, 3, 31, 2, 30)], pa.timestamp("us"))}
    )
    with pytest.raises(TerminalError) as e:
        Normalize(job, t, {})(chunk)
    message = str(e.value)
    assert "job 'j' table 't'" in message and "column 'at'" in message and "\n" not in message
