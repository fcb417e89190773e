"""A cursor value the read refuses, fixed to a value below the window's bound.

SQLite keeps any value in any column: text that is no time in a TIMESTAMP cursor, text in an
INTEGER cursor, bytes that are not UTF-8. Such a value stops its table; the user fixes it, and
a fix to the row's real time is often *earlier* than the newest cursor value already read.
A user's trial lost a row's change so (the next window starts after it, exit 0). The keys of
the refused rows are kept when the read stops and read again by key on the next run
(sources/sql_database/refused.py). Checked for each kind of refused value, for a changed row
and a new one, against the source read with sqlite3 (not deltaferry's code).
"""

from __future__ import annotations

import sqlite3

import pytest

from deltaferry.errors import TerminalError
from tests.test_sql_types import _pull
from tests.test_sql_types import _sync_lite as _sync


def _job(tmp_path, db, timezone: str = "UTC"):
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(
        f'[jobs.lite]\nsource = "sql_database"\nurl = "sqlite:///{db}"\n'
        f'lake = "file://{tmp_path}/lake"\ntimezone = "{timezone}"\n'
        '\n[[jobs.lite.tables]]\nname = "kinds"\nprimary_key = ["id"]\ncursor = "updated_at"\n'
        'contract = "tests.support.contracts_sqltypes:Loose"\n'
        '\n[[jobs.lite.tables]]\nname = "other"\nprimary_key = ["id"]\ncursor = "v"\n'
        'contract = "tests.support.contracts_sqltypes:Loose"\n'
    )
    return cfg


def _replica(cfg, tmp_path, table: str):
    return _pull(cfg, tmp_path, "id, name", table)


def _source(db, table: str):
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT id, name FROM {table} ORDER BY id").fetchall()


def _two_rows(tmp_path, first: str, second: str, cursor_type: str = "TIMESTAMP"):
    """A source of table ``kinds`` (rows 1 'a' and 2 'b' at cursor values ``first`` and
    ``second``, SQL) and an empty ``other``; its database's path."""
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute(
            f"CREATE TABLE kinds (id INTEGER PRIMARY KEY, name TEXT, updated_at {cursor_type})"
        )
        con.execute(f"INSERT INTO kinds VALUES (1, 'a', {first}), (2, 'b', {second})")
        con.execute("CREATE TABLE other (id INTEGER PRIMARY KEY, name TEXT, v INTEGER)")
    return db


def _log(job: str, outcome: str) -> list[str]:
    from deltaferry.state import StateStore

    with StateStore(job).connect(read_only=True) as con:
        rows = con.execute(
            "SELECT detail FROM ops_log WHERE step = 'extract' AND outcome = ? ORDER BY id",
            [outcome],
        ).fetchall()
    return [r[0] for r in rows]


# (cursor's declared type, two good values, a value refused (SQL), a fix below the bound)
CASES = {
    "timestamp-not-a-time": (
        "TIMESTAMP", "'2024-03-01 00:00:00'", "'2024-03-02 00:00:00'",
        "'2024-13-45 99:00:00'", "'2024-01-15 08:00:00'",
    ),
    "timestamp-a-word": (
        "DATETIME", "'2024-03-01T00:00:00Z'", "'2024-03-02T00:00:00Z'",
        "'yesterday'", "'2024-02-01T00:00:00+02:00'",
    ),
    "timestamp-a-number": (
        "TIMESTAMP", "'2024-03-01 00:00:00'", "'2024-03-02 00:00:00'",
        "1709251200", "'2024-02-29 23:00:00'",
    ),
    "timestamp-not-utf8": (
        "TIMESTAMP", "'2024-03-01 00:00:00'", "'2024-03-02 00:00:00'",
        "CAST(x'32303234ff' AS TEXT)", "'2024-01-01 00:00:00'",
    ),
    "integer-text": ("INTEGER", "100", "200", "'abc'", "5"),
    # julianday() reads a number as a Julian day: 2460000 is 2023-02-24, before the bound,
    # so the window's comparison left it out: never read, never refused (a user's trial)
    "timestamp-a-julian-day": (
        "TIMESTAMP", "'2024-03-01 00:00:00'", "'2024-03-02 00:00:00'",
        "2460000.25", "'2024-02-01 00:00:00'",
    ),
    "timestamp-before-year-1": (
        "TIMESTAMP", "'2024-03-01 00:00:00'", "'2024-03-02 00:00:00'",
        "'0000-06-01 00:00:00'", "'2024-02-01 00:00:00'",
    ),
    "timestamp-offset-minutes-60": (
        "TIMESTAMP", "'2024-03-01 00:00:00'", "'2024-03-02 00:00:00'",
        "'2024-03-05 00:00:00+02:60'", "'2024-02-01 00:00:00+02:00'",
    ),
    # an index on julianday(cursor): the window is read through it (README)
    "indexed-a-small-number": (
        "TIMESTAMP", "'2024-03-01 00:00:00'", "'2024-03-02 00:00:00'",
        "5", "'2024-02-01 00:00:00'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_cursor_fixed_below_the_bound_is_read_again(tmp_path, home, prefect_api, case):
    ctype, first, second, bad, fix = CASES[case]
    db = _two_rows(tmp_path, first, second, ctype)
    with sqlite3.connect(db) as con:
        if case.startswith("indexed"):
            con.execute("CREATE INDEX kinds_jd ON kinds (julianday(updated_at))")
        con.execute("INSERT INTO other VALUES (1, 'x', 1)")
    cfg = _job(tmp_path, db)
    _sync(cfg)
    with sqlite3.connect(db) as con:  # a changed row and a new one, both with the bad value
        con.execute(f"UPDATE kinds SET name = 'new', updated_at = {bad} WHERE id = 1")
        con.execute(f"INSERT INTO kinds VALUES (3, 'c', {bad})")
        con.execute("INSERT INTO other VALUES (2, 'y', 2)")
    with pytest.raises(TerminalError) as err:
        _sync(cfg)
    message = str(err.value)
    assert "table 'kinds'" in message, message
    assert "2 row(s) with such a cursor value kept by key" in message, message
    # the job's other table went on meanwhile
    assert _replica(cfg, tmp_path, "other") == _source(db, "other")
    with sqlite3.connect(db) as con:  # the fix: the rows' real times, below the bound
        con.execute(f"UPDATE kinds SET updated_at = {fix} WHERE id IN (1, 3)")
    _sync(cfg)
    assert _replica(cfg, tmp_path, "kinds") == _source(db, "kinds") == [
        (1, "new"), (2, "b"), (3, "c"),
    ]  # fmt: skip
    # the decision is in the operations log: the stop naming the kept keys, the read again
    assert _log("lite", "failed")[-1].endswith("whatever cursor value the fix gives them)")
    assert _log("lite", "read-again") == [
        "job 'lite' table 'kinds': 2 row(s) whose cursor value a stopped run refused read "
        "again by key, whatever their cursor value now"
    ]
    # read again once: the next change of the fixed rows is read by the window as usual
    keep = list((home / "lite" / "refused_cursor").glob("*.json"))
    assert keep == [], keep
    with sqlite3.connect(db) as con:
        con.execute(f"UPDATE kinds SET name = 'newer', updated_at = {second} WHERE id = 3")
    _sync(cfg)
    assert _replica(cfg, tmp_path, "kinds") == _source(db, "kinds")


def test_a_fix_that_is_refused_again_keeps_the_row(tmp_path, home, prefect_api):
    """A fix to another value the read refuses, below the bound (the window no longer
    selects it; the read by key does): the run fails naming it, the key stays kept, and the
    right fix after it is published."""
    db = _two_rows(tmp_path, "'2024-03-01 00:00:00'", "'2024-03-02 00:00:00'")
    cfg = _job(tmp_path, db)
    _sync(cfg)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE kinds SET name = 'new', updated_at = '2024-99-01' WHERE id = 1")
    with pytest.raises(TerminalError, match="1 row"):
        _sync(cfg)
    with sqlite3.connect(db) as con:  # text, and below the bound as text: out of the window
        con.execute("UPDATE kinds SET updated_at = '2024-02-30 00:00:00' WHERE id = 1")
    with pytest.raises(TerminalError) as err:
        _sync(cfg)
    assert "'2024-02-30 00:00:00' is not a timestamp" in str(err.value)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE kinds SET updated_at = '2024-02-28 00:00:00' WHERE id = 1")
    _sync(cfg)
    assert _replica(cfg, tmp_path, "kinds") == _source(db, "kinds") == [(1, "new"), (2, "b")]


def test_a_wall_time_read_again_by_key_is_counted_in_the_runs_notes(tmp_path, home, prefect_api):
    """A naive time the job's zone never shows, on a row read again by key only (its
    cursor fixed below the bound): the run's wall-time note counts it (the notes counted
    the window's reads alone, a trial found)."""
    db = _two_rows(tmp_path, "'2024-06-01 00:00:00'", "'2024-06-02 00:00:00'")
    cfg = _job(tmp_path, db, timezone="Europe/Berlin")
    _sync(cfg)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE kinds SET name = 'new', updated_at = 'soon' WHERE id = 1")
    with pytest.raises(TerminalError):
        _sync(cfg)
    with sqlite3.connect(db) as con:  # 02:30 on 31 March: Berlin's clock jumps 02:00 -> 03:00
        con.execute("UPDATE kinds SET updated_at = '2024-03-31 02:30:00' WHERE id = 1")
    _sync(cfg)
    assert _replica(cfg, tmp_path, "kinds") == [(1, "new"), (2, "b")]
    notes = _log("lite", "wall-time")
    assert len(notes) == 1 and "column 'updated_at': 1 value(s)" in notes[0], notes


def test_keys_that_cannot_be_read_leave_the_advice_where_a_fix_must_go(monkeypatch):
    """The source goes away between the refusal and the read of the refused keys: nothing
    is kept, so the error (still the table's, of its own class) says where a fix must go
    for the window to read the row again: at or after the bound."""
    import datetime as dt

    import sqlalchemy as sa

    from deltaferry.job import JobConfig, TableConfig
    from sources.sql_database import refused
    from sources.sql_database.source import _keep_refused
    from sources.sql_database.types import ValueRefused

    t = TableConfig(
        name="kinds", primary_key=("id",), cursor="updated_at", deletes="none", contract="m:C"
    )
    job = JobConfig(
        name="lite", source="sql_database", url="sqlite://", lake="file:///x", tables=(t,)
    )

    def gone(*_):
        raise sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(refused, "refused_keys", gone)
    stop = ValueRefused("job 'lite' table 'kinds': column 'updated_at' value 'x' is no time", "kinds")
    bound = dt.datetime(2024, 3, 2)
    out = _keep_refused(job, sa.create_engine("sqlite://"), stop, {"kinds": bound})
    assert type(out) is ValueRefused and out.table == "kinds"
    assert str(out) == (
        f"{stop}; the keys of rows whose cursor value is refused could not be read "
        "(OperationalError): fix such a value to a time at or after '2024-03-02 00:00:00' "
        "(UTC; the newest cursor value staged: a row given an earlier one is not read again)"
    )
