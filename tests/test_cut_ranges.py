"""A cut split at a row limit (``deltaferry/cut.py``, ``max_batch_rows``): read range after
range, every staged row comes out exactly once, in key order, whatever the key's types;
and reading a range again by its recorded bounds (a rebuild) gives the same rows.

The oracle is DuckDB's own ``ORDER BY`` of the whole cut, not deltaferry's range logic."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaferry.config import TableConfig
from deltaferry.cut import read_changes
from deltaferry.keyrange import KeyRange

pytestmark = pytest.mark.unit

UTC = dt.UTC
# (DuckDB type, values): each with its edge cases (signs, zero, text that looks like a list
# or holds quotes and commas, far dates, offsets normalised to one instant, bytes)
KINDS = {
    "BIGINT": st.integers(-(2**63), 2**63 - 1),
    "VARCHAR": st.text(alphabet=st.sampled_from(list("aZ0 ,'\"[]\\é中-_")), max_size=6),
    "TIMESTAMPTZ": st.datetimes(
        min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    "TIMESTAMP": st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
    "DECIMAL(20,4)": st.decimals(
        min_value=-(10**15), max_value=10**15, places=4, allow_nan=False, allow_infinity=False
    ),
    "DOUBLE": st.floats(allow_nan=False, allow_infinity=False, width=64),
    "DATE": st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)),
    "BLOB": st.binary(max_size=4),
    "BOOLEAN": st.booleans(),
}


def _staging(types: list[str], keys: list[tuple], load_of: list[str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw")
    cols = ", ".join(f"k{i} {t}" for i, t in enumerate(types))
    con.execute(f"CREATE TABLE raw.t ({cols}, v BIGINT, _dlt_load_id VARCHAR)")
    if keys:
        con.executemany(
            f"INSERT INTO raw.t VALUES ({', '.join('?' for _ in types)}, ?, ?)",
            [[*key, n, lid] for n, (key, lid) in enumerate(zip(keys, load_of, strict=True))],
        )
    return con


def _rows(changes, chunk_rows: int) -> list[tuple]:  # noqa: ANN001
    chunks = list(changes)
    # every chunk is exactly chunk_rows rows, the last may be shorter
    assert all(c.num_rows == chunk_rows for c in chunks[:-1])
    assert all(0 < c.num_rows <= chunk_rows for c in chunks[-1:])
    return [tuple(r.values()) for c in chunks for r in c.to_pylist()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_ranges_cover_the_cut_exactly_once_in_key_order(data: st.DataObject) -> None:
    types = data.draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=3), "types")
    keys = data.draw(
        st.lists(
            st.tuples(*(KINDS[t] for t in types)),
            min_size=0,
            max_size=40,
            unique_by=lambda k: json.dumps([str(v) for v in k]),
        ),
        "keys",
    )
    # the same value two ways (an offset, a DECIMAL's trailing zero) may still collide
    # after DuckDB's cast: keep the first of each as the staged table does
    seen, unique = set(), []
    for k in keys:
        canon = tuple(
            v.astimezone(UTC)
            if isinstance(v, dt.datetime) and v.tzinfo
            else (v.normalize() if isinstance(v, decimal.Decimal) else v)
            for v in k
        )
        if canon not in seen:
            seen.add(canon)
            unique.append(k)
    loads = data.draw(
        st.lists(st.sampled_from(["1.1", "2.2", "3.3"]), min_size=len(unique), max_size=len(unique))
    )
    wanted = data.draw(st.lists(st.sampled_from(["1.1", "2.2", "3.3"]), min_size=1, unique=True))
    limit = data.draw(st.integers(1, 12), "limit")
    chunk = data.draw(st.integers(1, 5), "chunk_rows")
    t = TableConfig("t", tuple(f"k{i}" for i in range(len(types))), None, "none", "x:Y")
    con = _staging(types, unique, loads)
    order = ", ".join(t.primary_key)
    placeholders = ", ".join("?" for _ in wanted)
    oracle = [
        tuple(r)
        for r in con.execute(
            f"SELECT *, 'upsert' FROM raw.t WHERE _dlt_load_id IN ({placeholders}) ORDER BY {order}",
            wanted,
        ).fetchall()
    ]
    oracle = [(*r[:-2], r[-1], r[-2]) for r in oracle]  # columns as the cut reads them

    got: list[tuple] = []
    after = None
    for _ in range(len(oracle) + 2):
        changes = read_changes(con, t, wanted, chunk, keys=KeyRange(after=after), limit=limit)
        assert changes is not None
        rows = _rows(changes, chunk)
        assert len(rows) <= limit
        got += rows
        rng = changes.keys
        # reading the recorded range again (a rebuild) gives the same rows
        again = read_changes(con, t, wanted, chunk, keys=rng)
        assert again is not None and _rows(again, chunk) == rows
        if rng.through is None:
            break
        assert len(rows) == limit
        after = rng.through
    else:
        pytest.fail("the ranges never reached the end of the cut")
    assert got == oracle


def test_a_range_is_recorded_and_read_back_as_json() -> None:
    r = KeyRange(("a,b", "2024-01-01 00:00:00+00"), ('["x"]', "1"))
    assert KeyRange.from_json(r.as_json("after"), r.as_json("through")) == r
    assert KeyRange.from_json(None, None).whole
    assert "after ['a,b'" in r.describe()


def test_chunks_of_a_limited_cut_are_exact() -> None:
    t = TableConfig("t", ("k0",), None, "none", "x:Y")
    con = _staging(["BIGINT"], [(i,) for i in range(23)], ["1.1"] * 23)
    changes = read_changes(con, t, ["1.1"], 4, limit=10)
    assert changes is not None
    sizes = [c.num_rows for c in changes]
    assert sizes == [4, 4, 2]
    assert changes.keys == KeyRange(None, ("9",), ("k0",))
    rest = read_changes(con, t, ["1.1"], 4, keys=KeyRange(after=("9",)), limit=10)
    assert rest is not None
    assert [c.num_rows for c in rest] == [4, 4, 2] and rest.keys.through == ("19",)
    last = read_changes(con, t, ["1.1"], 4, keys=KeyRange(after=("19",)), limit=10)
    assert last is not None
    assert [c.num_rows for c in last] == [3] and last.keys.through is None
    # exactly the limit left: no row past it, so the cut ends there
    exact = read_changes(con, t, ["1.1"], 4, keys=KeyRange(after=("12",)), limit=10)
    assert exact is not None and sum(c.num_rows for c in exact) == 10
    assert exact.keys.through is None


def test_the_key_lookup_sorts_the_keys_and_casts_only_its_one_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key one row past a split cut's limit is found by sorting the key columns alone:
    with each key cast to text in the sorted select, DuckDB sorted (or, for a small offset,
    re-sorted after its late materialization) the text of every row read (a 1M-row batch of
    a 10M-row staged table: 423 against 240 MiB for the query alone, the peak of every
    batch; bench/README.md). Checked on DuckDB's plan: no cast to text below a node that
    sorts. And the batch still ends where DuckDB's own ORDER BY says."""
    import json as json_

    from deltaferry import duck

    sent: list[tuple[str, list]] = []
    real = duck.fetch_one
    monkeypatch.setattr(
        duck,
        "fetch_one",
        lambda con, sql, params=None: (sent.append((sql, params)), real(con, sql, params))[1],
    )
    t = TableConfig("t", ("k0", "k1"), None, "none", "x:Y")
    con = _staging(["BIGINT", "VARCHAR"], [(i % 7, f"v{i}") for i in range(200)], ["1.1"] * 200)
    changes = read_changes(con, t, ["1.1"], 20, limit=60)
    assert changes is not None and len(_rows(changes, 20)) == 60
    lookups = [(sql, params) for sql, params in sent if "OFFSET 60" in sql]
    assert len(lookups) == 1, sent
    sql, params = lookups[0]

    def under_a_sort(node: dict, under: bool = False) -> list[str]:
        """What the plan's nodes below a TOP_N or ORDER_BY compute."""
        found = [json_.dumps(node.get("extra_info", {}))] if under else []
        sorts = node.get("name") in ("TOP_N", "ORDER_BY")
        for child in node.get("children", []):
            found += under_a_sort(child, under or sorts)
        return found

    plan = json_.loads(con.execute("EXPLAIN (FORMAT json) " + sql, params).fetchall()[0][1])
    assert any(name in json_.dumps(plan) for name in ('"TOP_N"', '"ORDER_BY"'))
    assert not [p for n in plan for p in under_a_sort(n) if "VARCHAR" in p]
    # the batch still ends at the 60th key in DuckDB's own order (the oracle)
    sixtieth = con.execute(
        "SELECT CAST(k0 AS VARCHAR), k1 FROM raw.t ORDER BY k0, k1 LIMIT 1 OFFSET 59"
    ).fetchone()
    assert sixtieth is not None and changes.keys.through == sixtieth
