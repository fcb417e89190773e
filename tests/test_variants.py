"""A source column whose values arrive as a type its staged column does not hold exactly
(``sources.variants.Variants``): each value the staged type holds is kept in the column,
any other goes to dlt's variant column, so the drift policy sees it; a key or cursor
column refuses. The staged type is the staging table's (DuckDB), which may differ from what
dlt's schema says after a ``column_types`` change: the load used to cast such values into
the staged column (a time of day cut to its DATE, 1.5 stored as 2, text '1.5' as 2), exit 0.

The expected values are written out by hand, not computed with DuckDB.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import TerminalError
from sources import names
from sources.variants import Variants

T = TableConfig("t", ("id",), "updated_at", "none", "x:Y")
JOB = JobConfig("j", "sql_database", "sqlite://", "file:lake", (T,))
MIDNIGHT, TEN = dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 10, 0)
BIG = 2**53 + 1


def split(staged: str, values: pa.Array, convention: str = names.EXACT) -> tuple[list, list | None]:
    v = Variants(names.naming(convention), JOB, T, {"c": staged})
    try:
        out = v(pa.table({"id": pa.array(range(len(values)), pa.int64()), "c": values}))
    finally:
        v.close()
    variant = [n for n in out.column_names if n not in ("id", "c")]
    assert len(variant) <= 1, out.column_names
    return out["c"].to_pylist(), out[variant[0]].to_pylist() if variant else None


@pytest.mark.parametrize(
    ("staged", "values", "kept", "variant"),
    [
        # a time of day into a DATE column (the load cut it to the day)
        ("DATE", pa.array([MIDNIGHT, TEN, None], pa.timestamp("us")), [dt.date(2024, 1, 1), None, None], [None, TEN, None]),
        # 1.5 into BIGINT (stored 2)
        ("BIGINT", pa.array([1.0, 1.5, -0.0]), [1, None, 0], [None, 1.5, None]),
        # 2**53 + 1 into DOUBLE (stored 2**53)
        ("DOUBLE", pa.array([BIG, 3], pa.int64()), [None, 3.0], [BIG, None]),
        # more fraction digits than the staged decimal (rounded)
        ("DECIMAL(10,2)", pa.array([Decimal("1.2400"), Decimal("1.2390")], pa.decimal128(12, 4)), [Decimal("1.24"), None], [None, Decimal("1.2390")]),
        # beyond the staged integer's range
        ("INTEGER", pa.array([5, 2**40], pa.int64()), [5, None], [None, 2**40]),
        # text: a number that reads exactly stays, one the cast rounds or cannot read does not
        ("BIGINT", pa.array(["40", "1.5", "forty", None]), [40, None, None, None], [None, "1.5", "forty", None]),
        # text: the number is kept only as written (trailing fraction zeros aside)
        ("BIGINT", pa.array(["-5", "40.0", "007", "1e3", " 40 ", "+5", "1_000"]), [-5, 40] + [None] * 5, [None, None, "007", "1e3", " 40 ", "+5", "1_000"]),
        ("DOUBLE", pa.array(["2.5", "1", "9007199254740993", "1e400", "NaN", "0.10000000000000000001"]), [2.5, 1.0] + [None] * 4, [None, None, "9007199254740993", "1e400", "NaN", "0.10000000000000000001"]),
        ("DECIMAL(10,2)", pa.array(["1.5", "1.239", "007.5"]), [Decimal("1.50"), None, None], [None, "1.239", "007.5"]),
        ("BOOLEAN", pa.array(["true", "T", "yes", "1"]), [True, None, None, None], [None, "T", "yes", "1"]),
        # text: a date stays, a date with a time of day does not
        ("DATE", pa.array(["2024-01-01", "2024-01-01 10:00:00"]), [dt.date(2024, 1, 1), None], [None, "2024-01-01 10:00:00"]),
        # text: a time finer than the staged microseconds
        ("TIMESTAMP", pa.array(["2024-01-01 10:00:00.5", "2024-01-01 10:00:00.1234567"]), [dt.datetime(2024, 1, 1, 10, 0, 0, 500000), None], [None, "2024-01-01 10:00:00.1234567"]),
        # text: a date beyond the nanosecond range still reads; its 100 ns do not stay
        ("DATE", pa.array(["9999-12-31", "3000-01-01 00:00:00.0000001"]), [dt.date(9999, 12, 31), None], [None, "3000-01-01 00:00:00.0000001"]),
        ("TIMESTAMP", pa.array(["3000-01-01 10:00:00.1234567"]), [None], ["3000-01-01 10:00:00.1234567"]),
        # a zoned instant into a naive column: its UTC wall time, whatever the machine's zone
        ("TIMESTAMP", pa.array([TEN], pa.timestamp("us", "UTC")), [TEN], None),
    ],
)
def test_values_the_staged_type_does_not_hold_go_to_the_variant_column(staged, values, kept, variant):
    assert split(staged, values) == (kept, variant)


@pytest.mark.parametrize(
    ("staged", "values"),
    [
        ("VARCHAR", pa.array([1, 2], pa.int64())),  # every number is text
        ("BIGINT", pa.array([1, 2], pa.int32())),
        ("TIMESTAMP", pa.array([dt.date(2024, 1, 1)], pa.date32())),
    ],
)
def test_a_type_the_staged_one_holds_is_left_to_the_load(staged, values):
    kept, variant = split(staged, values)
    assert variant is None and kept == values.to_pylist()


def test_the_variant_column_is_named_as_dlt_names_it():
    v = Variants(names.naming(names.LEGACY), JOB, T, {"c": "BIGINT"})
    out = v(pa.table({"id": [1], "c": [1.5]}))
    v.close()
    assert out.column_names == ["id", "c", "c__v_double"]
    v = Variants(names.naming(names.EXACT), JOB, T, {"c": "BIGINT"})
    assert v(pa.table({"id": [1], "c": [1.5]})).column_names == ["id", "c", "c▶v_double"]
    v.close()


@pytest.mark.parametrize(("column", "role"), [("id", "primary key column 'id'"), ("updated_at", "cursor column 'updated_at'")])
def test_a_key_or_cursor_the_staged_type_does_not_hold_is_refused(column, role):
    staged = {"id": "BIGINT", "updated_at": "DATE"}
    chunk = pa.table({"id": pa.array([1], pa.int64()), "updated_at": pa.array([MIDNIGHT], pa.timestamp("us"))})
    chunk = chunk.set_column(
        chunk.schema.get_field_index(column), column,
        pa.array([1.5]) if column == "id" else pa.array([TEN], pa.timestamp("us")),
    )
    v = Variants(names.naming(names.EXACT), JOB, T, staged)
    with pytest.raises(TerminalError) as e:
        v(chunk)
    v.close()
    message = str(e.value)
    for part in ("job 'j' table 't'", role, "deltaferry reset j --table t"):
        assert part in message, message
    assert "\n" not in message


def test_time_text_is_read_in_the_jobs_timezone_as_the_sql_source_reads_it():
    """A SQLite DATETIME column re-created as TEXT: its text was read as UTC, an hour off
    the same text read as DATETIME in a Europe/Berlin job (exit 0)."""
    job = JobConfig("j", "sql_database", "sqlite://", "file:lake", (T,), timezone="Europe/Berlin")
    v = Variants(names.naming(names.EXACT), job, T, {"c": "TIMESTAMP WITH TIME ZONE"})
    text = ["2024-01-01 11:00:00", "2024-01-01T10:00:00Z", "2024-03-31 02:30:00", "soon", None]
    out = v(pa.table({"id": pa.array(range(5), pa.int64()), "c": pa.array(text)}))
    v.close()
    utc = dt.timezone.utc
    assert out["c"].to_pylist() == [
        dt.datetime(2024, 1, 1, 10, tzinfo=utc),
        dt.datetime(2024, 1, 1, 10, tzinfo=utc),
        dt.datetime(2024, 3, 31, 1, 30, tzinfo=utc),  # no 02:30 that night: as PostgreSQL reads it
        None,
        None,
    ]
    assert out["c▶v_text"].to_pylist() == [None, None, None, "soon", None]  # not a time


def test_json_text_into_a_json_column_is_left_to_the_load():
    v = Variants(names.naming(names.EXACT), JOB, T, {"c": "JSON"})
    chunk = pa.table({"id": [1], "c": ['{"a": 1}']})
    assert v(chunk) is chunk
    v.close()


@pytest.mark.parametrize(
    ("staged", "text", "kept"),
    [
        ("DATE", "300000-01-01", None),  # beyond TIMESTAMP: not an error every run
        ("DATE", "epoch", None),
        ("DATE", "infinity", None),
        ("TIMESTAMP WITH TIME ZONE", "2024-01-01 10:00:00.1234567+00", None),
        ("TIMESTAMP WITH TIME ZONE", "2024-01-01 10:00:00", None),  # whose zone?
        ("TIMESTAMP WITH TIME ZONE", "2024-01-01 12:00:00+02:00", dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone.utc)),
        ("TIME", "10:00:00.1234567", None),
        ("TIME", "10:00:00.5", dt.time(10, 0, 0, 500000)),
        ("BLOB", "C:\\x41dir", None),  # the cast decodes the escape: not the text's bytes
        ("BLOB", "C:dir", b"C:dir"),
        ("UUID", "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}", None),
        ("INTERVAL", "1.5 days", None),
        ("TIMESTAMP_NS", "1500-01-01 00:00:00", None),
    ],
)
def test_text_into_other_staged_types_is_held_only_as_written(staged, text, kept):
    from deltaferry.duck import split_exact

    base, variant = split_exact(pa.array([text]), staged, "VARCHAR")
    assert base.to_pylist() == [kept]
    assert variant.to_pylist() == [None if kept is not None else text]


def test_date_text_in_a_zoned_job_keeps_its_date_and_extreme_years_do_not_fail():
    job = JobConfig("j", "sql_database", "sqlite://", "file:lake", (T,), timezone="Europe/Berlin")
    v = Variants(names.naming(names.EXACT), job, T, {"c": "DATE", "d": "TIMESTAMP"})
    out = v(pa.table({"id": [1, 2], "c": ["2024-01-01", "2024-01-01 10:00:00"], "d": ["0001-01-01 00:30:00", None]}))
    v.close()
    assert out["c"].to_pylist() == [dt.date(2024, 1, 1), None]
    assert out["c▶v_text"].to_pylist() == [None, "2024-01-01 10:00:00"]
    assert out["d"].to_pylist() == [None, None]  # before year 1 in UTC: not a time here
    assert out["d▶v_text"].to_pylist() == ["0001-01-01 00:30:00", None]
