"""``sources/rest_api/times.py``: naive REST times as wall time in the job's zone (unit)."""

from __future__ import annotations

import pytest

from deltaferry.errors import TerminalError
from sources.rest_api.times import NaiveTimes


def _step(staged: dict[str, str | None]) -> NaiveTimes:
    return NaiveTimes("job 'j' table 't'", "t", "Europe/Berlin", staged, str.lower)


def test_naive_times_of_timestamp_columns_become_their_instant_and_text_stays():
    step = _step({"at": "timestamp", "label": "text"})
    rows = [
        {"at": "2024-01-01T12:00:00", "label": "2024-01-01T12:00:00", "new": "2024-07-01 12:00"},
        {"at": "2024-01-01T12:00:00Z", "label": None, "new": "not a time"},
    ]
    assert step(rows) is rows
    assert rows[0] == {
        "at": "2024-01-01T11:00:00+00:00",  # CET
        "label": "2024-01-01T12:00:00",  # staged as text: as written
        "new": "2024-07-01T10:00:00+00:00",  # a new column dlt detects as a timestamp (CEST)
    }
    assert rows[1]["at"] == "2024-01-01T12:00:00Z" and rows[1]["new"] == "not a time"
    step([{"at": "2024-03-31T02:30:00"}])  # the clock skips it
    assert step.notes() == [
        "job 'j' table 't': column 'at': 1 value(s) a wall time Europe/Berlin never shows (its "
        "clock set forward): read with the offset before the change (so it lands after the "
        "gap), as PostgreSQL reads it; store an offset with such times to say which instant is "
        "meant"
    ]


def test_a_naive_time_the_zone_moves_before_year_1_stops_the_read_naming_it():
    with pytest.raises(TerminalError) as e:
        _step({"at": "timestamp"})([{"at": "0001-01-01T00:30:00"}])
    assert str(e.value).startswith(
        "job 'j' table 't': field 'at' value '0001-01-01T00:30:00', a naive time taken in the "
        "job's timezone Europe/Berlin, is outside years 1-9999 in UTC"
    )
