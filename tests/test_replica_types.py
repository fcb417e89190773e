"""A replica column's type holds every batch's values, not only the first one's.

A replica table is created from the first batch applied. A later batch may bring a column
as a wider type (a lake written by another producer, or before a producer cast dates to
the contract's timestamps): the column is widened where every stored value keeps its
value, for the single-producer merge (``replica_apply.merge_rows``) and the
several-producer one (``merge.apply_batch``). Expected values are written here by hand,
not computed with deltaferry's code."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import duckdb
import pyarrow as pa
import pytest

from deltaferry import duck, hlc, merge, merge_tables
from deltaferry.errors import TerminalError
from deltaferry.replica_apply import merge_rows

pytestmark = pytest.mark.unit

UTC = dt.timezone.utc


def _batch(seq0: int, ids: list[int], **columns: pa.Array) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            **columns,
            "_op": pa.array(["upsert"] * len(ids)),
            "_seq": pa.array(range(seq0, seq0 + len(ids)), pa.int64()),
        }
    )


def _types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return duck.column_types(con, table)


def _merge(con: duckdb.DuckDBPyConnection, *files: pa.Table, fresh: bool = False) -> None:
    """One batch of ``files`` into table ``t`` in one transaction, as a pull applies it."""

    def once() -> None:
        with duck.transaction(con):
            for data in files:
                merge_rows(con, "t", ["id"], data, fresh=fresh)

    duck.applying(con, once)


CASES = [
    # (first batch's column, later batch's column, the later value stored as)
    (
        pa.array([dt.date(2024, 2, 1)], pa.date32()),
        pa.array([dt.datetime(2024, 2, 2, 10, 0, 0, 123456)], pa.timestamp("us")),
        "TIMESTAMP",
        dt.datetime(2024, 2, 2, 10, 0, 0, 123456),
        dt.datetime(2024, 2, 1),
    ),
    (
        pa.array([7], pa.int32()),
        pa.array([2**40 + 1], pa.int64()),
        "BIGINT",
        2**40 + 1,
        7,
    ),
    (
        pa.array([1.5], pa.float32()),
        pa.array([0.1], pa.float64()),
        "DOUBLE",
        0.1,
        1.5,
    ),
    (
        pa.array([Decimal("1.25")], pa.decimal128(5, 2)),
        pa.array([Decimal("123456.0001")], pa.decimal128(12, 4)),
        "DECIMAL(12,4)",
        Decimal("123456.0001"),
        Decimal("1.2500"),
    ),
    (
        pa.array([dt.datetime(2024, 1, 1, 23, 30)], pa.timestamp("us")),
        pa.array([dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        "TIMESTAMP WITH TIME ZONE",
        dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC),
        # naive values are UTC wall time, whatever the connection's zone was
        dt.datetime(2024, 1, 1, 23, 30, tzinfo=UTC),
    ),
    (
        pa.array([42], pa.int64()),
        pa.array(["forty-two"], pa.string()),
        "VARCHAR",
        "forty-two",
        "42",
    ),
]


@pytest.mark.parametrize(("first", "later", "widened", "later_value", "first_value"), CASES)
def test_a_later_batchs_wider_values_are_stored_whole_single_producer(
    first, later, widened, later_value, first_value
):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Tokyo'")  # a machine far from UTC
    _merge(con, _batch(1, [1], v=first), fresh=True)
    _merge(con, _batch(2, [2], v=later))
    assert _types(con, "t")["v"] == widened
    con.execute("SET TimeZone = 'UTC'")
    assert con.execute("SELECT v FROM t ORDER BY id").fetchall() == [(first_value,), (later_value,)]


@pytest.mark.parametrize(("first", "later", "widened", "later_value", "first_value"), CASES)
def test_a_later_batchs_wider_values_are_stored_whole_several_producers(
    first, later, widened, later_value, first_value
):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Tokyo'")
    con.execute(merge_tables.META)
    shape = merge_tables.TableShape("shop", "t", ["id"])
    merge.apply_batch(con, shape, "north", 1, hlc.pack(1_000, 0), _batch(1, [1], v=first))
    merge.apply_batch(con, shape, "south", 1, hlc.pack(2_000, 0), _batch(1, [2], v=later))
    assert _types(con, "t")["v"] == widened
    con.execute("SET TimeZone = 'UTC'")
    assert con.execute("SELECT v FROM t ORDER BY id").fetchall() == [(first_value,), (later_value,)]


def _several(con: duckdb.DuckDBPyConnection, first: pa.Array, later: pa.Array) -> None:
    con.execute(merge_tables.META)
    shape = merge_tables.TableShape("shop", "t", ["id"])
    merge.apply_batch(con, shape, "north", 1, hlc.pack(1_000, 0), _batch(1, [1], v=first))
    merge.apply_batch(con, shape, "south", 1, hlc.pack(2_000, 0), _batch(1, [2], v=later))


@pytest.mark.parametrize("several", [False, True])
def test_integers_then_fractions_widen_to_double_while_the_stored_integers_fit(several):
    """An untyped column an integer at one producer (or batch) and a double at another:
    1.5 was stored as 2 in the BIGINT column with a warning only. BIGINT is not DOUBLE
    losslessly beyond 2**53, so the stored values are checked: these fit, the column
    becomes DOUBLE and 1.5 stays 1.5."""
    con = duckdb.connect()
    first, later = pa.array([2**53], pa.int64()), pa.array([1.5])
    if several:
        _several(con, first, later)
    else:
        _merge(con, _batch(1, [1], v=first), fresh=True)
        _merge(con, _batch(2, [2], v=later))
    assert _types(con, "t")["v"] == "DOUBLE"
    assert con.execute("SELECT v FROM t ORDER BY id").fetchall() == [(2.0**53,), (1.5,)]


@pytest.mark.parametrize("several", [False, True])
def test_whole_doubles_into_an_integer_column_are_stored_as_they_are(several):
    con = duckdb.connect()
    first, later = pa.array([2**53 + 1], pa.int64()), pa.array([3.0, None])
    if several:
        _several(con, first, pa.array([3.0]))
    else:
        _merge(con, _batch(1, [1], v=first), fresh=True)
        _merge(con, _batch(2, [2, 3], v=later))
    assert _types(con, "t")["v"] == "BIGINT"
    assert con.execute("SELECT v FROM t WHERE id = 1").fetchall() == [(2**53 + 1,)]
    assert con.execute("SELECT v FROM t WHERE id = 2").fetchall() == [(3,)]


@pytest.mark.parametrize("several", [False, True])
def test_no_type_holding_both_refuses_the_batch_whole(several):
    """A stored 2**53 + 1 has no double and 1.5 has no integer: the batch is refused
    naming table, column, types and the value, and nothing of it is applied."""
    con = duckdb.connect()
    first, later = pa.array([2**53 + 1], pa.int64()), pa.array([1.5])
    with pytest.raises(TerminalError) as e:
        if several:
            _several(con, first, later)
        else:
            _merge(con, _batch(1, [1], v=first), fresh=True)
            _merge(con, _batch(2, [2], v=later))
    message = str(e.value)
    for part in ("table 't' column 'v' is BIGINT", "DOUBLE values", "1.5", "nothing of the batch"):
        assert part in message, message
    assert "\n" not in message
    assert con.execute("SELECT id, v FROM t").fetchall() == [(1, 2**53 + 1)]
    assert _types(con, "t")["v"] == "BIGINT"


def test_a_decimal_column_is_not_widened_to_double_by_its_values():
    """Money stays decimal: 0.30000000000000004 into DECIMAL(18,2) is refused, though every
    stored decimal would survive as a double."""
    con = duckdb.connect()
    _merge(con, _batch(1, [1], v=pa.array([Decimal("0.10")], pa.decimal128(18, 2))), fresh=True)
    with pytest.raises(TerminalError) as e:
        _merge(con, _batch(2, [2], v=pa.array([0.1 + 0.2])))
    assert "DECIMAL(18,2)" in str(e.value) and "0.30000000000000004" in str(e.value)
    assert _types(con, "t")["v"] == "DECIMAL(18,2)"


def test_a_key_column_under_a_primary_key_refuses_values_it_does_not_hold():
    con = duckdb.connect()
    con.execute(merge_tables.META)
    shape = merge_tables.TableShape("shop", "t", ["k"])
    one = pa.table({"k": pa.array([1], pa.int64()), "_op": ["upsert"], "_seq": pa.array([1], pa.int64())})
    merge.apply_batch(con, shape, "north", 1, hlc.pack(1_000, 0), one)
    half = pa.table({"k": pa.array([1.5]), "_op": ["upsert"], "_seq": pa.array([1], pa.int64())})
    with pytest.raises(TerminalError) as e:
        merge.apply_batch(con, shape, "south", 1, hlc.pack(2_000, 0), half)
    assert "table 't' column 'k'" in str(e.value) and "primary key" in str(e.value), str(e.value)
    assert con.execute("SELECT k FROM t").fetchall() == [(1,)]


def test_a_type_that_would_lose_values_is_not_widened_to():
    # DuckDB's common type of these would round or fail the stored values
    assert not duck.widens("DECIMAL(38,10)", "DECIMAL(38,2)")  # scale cut
    assert not duck.widens("BIGINT", "DOUBLE")  # 2**53 + 1 has no double
    assert not duck.widens("TIME", "TIMESTAMP")
    assert not duck.widens("TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE")  # microseconds
    assert not duck.widens("VARCHAR", "BLOB")
    assert not duck.widens("TIMESTAMP", "DATE")
    assert not duck.widens("DATE", "TIMESTAMP_NS")  # 1677-2262 only
    assert duck.widens("DATE", "TIMESTAMP")
    assert duck.widens("UINTEGER", "BIGINT")
    assert not duck.widens("UBIGINT", "BIGINT")


def test_the_same_types_alter_nothing():
    con = duckdb.connect()
    data = _batch(1, [1], v=pa.array([dt.date(2024, 2, 1)], pa.date32()))
    _merge(con, data, fresh=True)
    stored = duck.column_types(con, "t")
    duck.widen_columns(con, "t", data, dict(stored))  # raises WidenFirst if not
    # a narrower later batch is cast into the wider stored column, which stays
    narrower = _batch(2, [2], v=pa.array([dt.date(2024, 2, 2)], pa.date32()))
    _merge(con, narrower.set_column(0, "id", pa.array([2], pa.int8())))
    assert duck.column_types(con, "t") == stored  # applied through the whole merge: no ALTER


def test_a_wider_file_after_a_merged_one_in_the_same_batch():
    """DuckDB cannot commit an ALTER of a table the transaction has deleted from: the batch
    is rolled back, the column widened alone, and the batch applied again whole."""
    con = duckdb.connect()
    day = pa.date32()
    _merge(con, _batch(1, [1, 2], v=pa.array([dt.date(2024, 1, 1)] * 2, day)), fresh=True)
    replaced = _batch(3, [1], v=pa.array([dt.date(2024, 1, 9)], day))  # deletes id 1's row
    timed = _batch(4, [3], v=pa.array([dt.datetime(2024, 2, 2, 10, 30)], pa.timestamp("us")))
    _merge(con, replaced, timed)
    assert _types(con, "t")["v"] == "TIMESTAMP"
    assert con.execute("SELECT id, v, _seq FROM t ORDER BY id").fetchall() == [
        (1, dt.datetime(2024, 1, 9), 3),
        (2, dt.datetime(2024, 1, 1), 2),
        (3, dt.datetime(2024, 2, 2, 10, 30), 4),
    ]


def test_nanoseconds_do_not_narrow_a_columns_range():
    """A nanosecond timestamp column holds 1677-2262 only: a stored 9999-12-31 would not
    convert. A date column is widened to microseconds, a microsecond one stays."""
    con = duckdb.connect()
    far = dt.datetime(9999, 12, 31, 23, 59, 59)
    _merge(con, _batch(1, [1], v=pa.array([far], pa.timestamp("us"))), fresh=True)
    ns = pa.array([dt.datetime(2024, 2, 2, 10, 30)], pa.timestamp("ns"))
    _merge(con, _batch(2, [2], v=ns))
    assert _types(con, "t")["v"] == "TIMESTAMP"
    assert con.execute("SELECT v FROM t ORDER BY id").fetchall() == [
        (far,),
        (dt.datetime(2024, 2, 2, 10, 30),),
    ]
    con.execute("CREATE TABLE d AS SELECT 1::BIGINT AS id, DATE '9999-12-31' AS v, 1::BIGINT AS _seq")
    assert duck.supertype("DATE", "TIMESTAMP_NS") == "TIMESTAMP_NS"  # DuckDB's own choice
    with pytest.raises(duck.WidenFirst) as need:
        ns = pa.table({"v": pa.array([dt.datetime(2024, 2, 2, 10, 30)], pa.timestamp("ns"))})
        duck.widen_columns(con, "d", ns, {"v": "DATE"})
    assert need.value.alters == [("v", "DATE", "TIMESTAMP")]


def test_a_refused_batch_names_job_table_and_batch_through_the_pull_apply():
    """The refusal (``duck.TypeConflict``) reaches the operator through the pull's apply
    (``replica._apply`` and ``duck.over_limit``) naming job, table and batch."""
    from deltaferry.replica import _apply

    con = duckdb.connect()
    _merge(con, _batch(1, [1], v=pa.array([2**53 + 1], pa.int64())), fresh=True)
    with pytest.raises(TerminalError) as e:
        _apply(con, "shop", "t", ["id"], 2, None, "sha", _batch(2, [2], v=pa.array([1.5])))
    message = str(e.value)
    assert not isinstance(e.value, duck.TypeConflict)
    assert message.startswith("job 'shop' table 't' batch 2: table 't' column 'v'"), message
    assert con.execute("SELECT id FROM t").fetchall() == [(1,)]
