"""What the plan step holds at once (issue 16, flat memory).

Validation a slice at a time (``deltaferry/delta.py:validate_rows``): where a contract's
checks judge each row on its own (``contracts.Contract.row_local``), a chunk's rows are
validated ``VALIDATE_ROWS`` at a time while they pass, which bounds the pandas frame
pandera validates; the first slice with a failure has the chunk validated whole. So the
result is always the one validating every row at once gives: the same failed rows,
counts, first failures, examples and reasons (pandera's coercion and dtype checks judge a
column as a whole; a review found a sliced merge of results differing there). Contracts
whose checks look across rows (``unique`` on a column that is not the key, a dataframe
check, a custom check, even one named as a built-in) are validated whole.

One chunk at a time: neither the cut (``deltaferry/cut.py:Changes``) nor the batch it
feeds (``build_delta``) keeps a chunk once it is done with it, so the next chunk is read
with the last one freed (weak references say whether anything still holds it)."""

from __future__ import annotations

import gc
import random
import weakref

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pytest
from pandera.typing import Series

from contracts import Contract
from deltaferry import delta as delta_mod
from deltaferry.config import JobConfig, TableConfig
from deltaferry.cut import read_changes
from deltaferry.delta import build_delta, validate_rows


class Orders(pa.DataFrameModel):
    id: Series[int] = pa.Field(ge=1, unique=True)
    qty: Series[int] = pa.Field(ge=0)
    status: Series[str] = pa.Field(isin=["new", "paid"])
    note: Series[str] = pa.Field(nullable=True, str_length={"max_value": 5})
    code: Series[str] = pa.Field(nullable=True, str_matches=r"^[A-Z]{2}$")

    class Config:
        coerce = True
        strict = True


class UniqueNote(Orders):
    note: Series[str] = pa.Field(nullable=True, unique=True)


class PositiveTotal(Orders):
    @pa.dataframe_check
    @classmethod
    def some_paid(cls, df: pd.DataFrame) -> bool:
        return bool((df["status"] == "paid").any())


class CustomCheck(Orders):
    @pa.check("qty")
    @classmethod
    def below_mean_times_ten(cls, s: pd.Series) -> pd.Series:
        return s <= s.mean() * 10


def _rows(seed: int, n: int) -> pyarrow.Table:
    """Rows with failures of every kind scattered: negative ids and quantities, unknown
    statuses, NULLs where none may be, long notes, bad codes; drawn from ``seed``."""
    rnd = random.Random(seed)
    ids, qty, status, note, code = [], [], [], [], []
    for i in range(n):
        ids.append(i + 1 if rnd.random() > 0.01 else -(i + 1))
        qty.append(rnd.choice([1, 2, 3, 5, 8, 13, 21, 34]) if rnd.random() > 0.02 else rnd.choice([-3, None]))
        status.append(rnd.choice(["new", "paid"]) if rnd.random() > 0.02 else rnd.choice(["lost", None]))
        note.append(rnd.choice([None, "ok", "fine"]) if rnd.random() > 0.01 else "far too long")
        code.append(rnd.choice(["AB", "CD", None]) if rnd.random() > 0.01 else "abc")
    return pyarrow.table(
        {
            "id": pyarrow.array(ids, pyarrow.int64()),
            "qty": pyarrow.array(qty, pyarrow.int64()),
            "status": pyarrow.array(status, pyarrow.string()),
            "note": pyarrow.array(note, pyarrow.string()),
            "code": pyarrow.array(code, pyarrow.string()),
        }
    )


def _same(sliced, whole) -> None:  # noqa: ANN001 - two ValidationResults
    assert sliced.n_rows == whole.n_rows
    assert sliced.failed_positions.tolist() == whole.failed_positions.tolist()
    assert sliced.counts() == whole.counts()
    assert [(f.row, f.field, f.check, f.reason) for f in sliced.first_failures()] == [
        (f.row, f.field, f.check, f.reason) for f in whole.first_failures()
    ]
    assert sliced.examples() == whole.examples()
    assert sliced.summary() == whole.summary()
    failed = whole.failed_positions
    lo, hi = int(failed[len(failed) // 3]), int(failed[2 * len(failed) // 3]) + 1
    assert sliced.row_failures_between(lo, hi) == whole.row_failures_between(lo, hi)
    for row in failed[:50].tolist():
        assert sliced.reasons(row) == whole.reasons(row)


def _sliced_at_1000(monkeypatch) -> list[int]:  # noqa: ANN001
    """Slices of 1,000 rows from now on; the returned list gets the row count of every
    frame ``Contract.validate`` is given."""
    calls: list[int] = []
    validate = Contract.validate

    def counted(self, frame):  # noqa: ANN001, ANN202
        calls.append(len(frame))
        return validate(self, frame)

    monkeypatch.setattr(Contract, "validate", counted)
    monkeypatch.setattr(delta_mod, "VALIDATE_ROWS", 1_000)
    return calls


def test_rows_that_pass_are_validated_a_slice_at_a_time(monkeypatch) -> None:  # noqa: ANN001
    contract = Contract("t:Orders", Orders)
    data = _rows(1, 9_000)
    clean = data.filter(_passing(contract, data))
    assert 7_000 < clean.num_rows < 9_000
    assert contract.row_local(("id",), {f.name: f.type for f in clean.schema})
    calls = _sliced_at_1000(monkeypatch)
    result = validate_rows(contract, clean, ("id",))
    n = clean.num_rows
    assert calls == [1_000] * (n // 1_000) + ([n % 1_000] if n % 1_000 else [])
    assert not len(result.failed_positions) and result.n_rows == clean.num_rows


def _passing(contract: Contract, data: pyarrow.Table) -> pyarrow.Array:
    """A mask of the rows of ``data`` that pass ``contract`` (validated whole)."""
    failed = validate_rows(contract, data).failed_positions
    keep = np.ones(data.num_rows, dtype=bool)
    keep[failed] = False
    return pyarrow.array(keep)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_failing_slice_has_the_chunk_validated_whole(seed: int, monkeypatch) -> None:  # noqa: ANN001
    contract = Contract("t:Orders", Orders)
    data = _rows(seed, 9_000)
    whole = validate_rows(contract, data, ("id",))  # at most VALIDATE_ROWS: one frame
    assert len(whole.failed_positions) > 500  # the draw fails rows of every check
    assert {check for _, check in whole.counts()} >= {
        "greater_than_or_equal_to(1)",
        "greater_than_or_equal_to(0)",
        "not_nullable",
        "isin(['new', 'paid'])",
        "str_length(None, 5)",
    }
    calls = _sliced_at_1000(monkeypatch)
    sliced = validate_rows(contract, data, ("id",))
    assert calls == [1_000, 9_000]  # the first slice failed: every row at once
    _same(sliced, whole)


class Dated(pa.DataFrameModel):
    id: Series[int] = pa.Field(ge=1)
    d: Series[pa.Date]
    q: Series[int] = pa.Field(ge=0)
    a: Series[int] = pa.Field(ge=0)

    class Config:
        coerce = True
        strict = True


class NamedLikeABuiltin(pa.DataFrameModel):
    id: Series[int]
    q: Series[int]

    @pa.check("q", name="greater_than_or_equal_to")
    @classmethod
    def at_most_twice_the_mean(cls, s: pd.Series) -> pd.Series:
        return s <= s.mean() * 2


def _review_cases() -> list[tuple[type, pyarrow.Table]]:
    """The cases a review found a merge of slices' results getting wrong: a date that does
    not coerce (pandera then fails the whole column), text in an integer column next to a
    failing value check, two columns a strict contract does not know, failures of two
    columns in different slices (examples and the summary's order), a custom check named
    as a built-in, each with its failure in the second of two slices."""
    n = 14
    ids = pyarrow.array(range(1, n + 1))
    dates = ["2020-01-01"] * n
    dates[10] = "notadate"
    qs = ["1"] * n
    qs[2], qs[10] = "ten", "-3"
    a = [1] * n
    a[10] = -1
    b = [1] * n
    b[10], b[3] = -5, -7
    return [
        (Dated, pyarrow.table({"id": ids, "d": dates, "q": [1] * n, "a": [1] * n})),
        (Dated, pyarrow.table({"id": ids, "d": ["2020-01-01"] * n, "q": qs, "a": [1] * n})),
        (Dated, pyarrow.table({"id": ids, "d": ["2020-01-01"] * n, "q": [1] * n, "a": a, "x": [1] * n, "y": [2] * n})),
        (Dated, pyarrow.table({"id": ids, "d": ["2020-01-01"] * n, "q": b, "a": a})),
        (NamedLikeABuiltin, pyarrow.table({"id": ids, "q": [1] * 7 + [3] * 6 + [6]})),
    ]


@pytest.mark.parametrize("case", range(5))
def test_what_a_merge_of_slices_got_wrong_is_the_whole_result(case: int, monkeypatch) -> None:  # noqa: ANN001
    model, data = _review_cases()[case]
    contract = Contract(f"t:{model.__name__}", model)
    whole = validate_rows(contract, data, ("id",))
    assert len(whole.failed_positions)  # each case fails something
    monkeypatch.setattr(delta_mod, "VALIDATE_ROWS", 7)
    sliced = validate_rows(contract, data, ("id",))
    _same(sliced, whole)
    assert sliced.schema_failures == whole.schema_failures
    assert [(f.field, f.check, f.row) for f in sliced.first_failures()] == [
        (f.field, f.check, f.row) for f in whole.first_failures()
    ]
    if model is NamedLikeABuiltin:  # not taken for pandera's own check of that name
        assert not contract.row_local(("id",), {f.name: f.type for f in data.schema})


def test_a_unique_key_coerced_from_text_is_judged_whole(monkeypatch) -> None:  # noqa: ANN001
    """Text keys "1" and "01" are two keys in staging and one integer under the contract:
    ``unique`` on the key is row-local only where the key already has the contract's type."""
    contract = Contract("t:Orders", Orders)
    n = 3_000
    data = _rows(6, n).set_column(0, "id", pyarrow.array([str(i + 1) for i in range(n)]))
    ids = data["id"].to_pylist()
    ids[2_500] = "01"  # the same integer as row 0, in another slice
    data = data.set_column(0, "id", pyarrow.array(ids))
    assert not contract.row_local(("id",), {f.name: f.type for f in data.schema})
    whole = validate_rows(contract, data, ("id",))
    calls = _sliced_at_1000(monkeypatch)
    again = validate_rows(contract, data, ("id",))
    assert calls == [n]
    _same(again, whole)
    assert {0, 2_500} <= set(again.failed_positions.tolist())


@pytest.mark.parametrize("model", [UniqueNote, PositiveTotal, CustomCheck])
def test_checks_across_rows_validate_the_chunk_whole(model, monkeypatch) -> None:  # noqa: ANN001
    """Uniqueness of a column that is not the key, a dataframe check and a custom check
    see more than one row: such a contract is validated whole, and a duplicate that lies
    in two slices is still found."""
    contract = Contract(f"t:{model.__name__}", model)
    data = _rows(5, 3_000)
    assert not contract.row_local(("id",), {f.name: f.type for f in data.schema})
    if model is UniqueNote:  # one duplicate note, its two rows in different slices
        notes = [f"n{i}" for i in range(3_000)]
        notes[2_500] = notes[10]
        data = data.set_column(3, "note", pyarrow.array(notes))
    whole = validate_rows(contract, data, ("id",))
    calls = _sliced_at_1000(monkeypatch)
    again = validate_rows(contract, data, ("id",))
    assert calls == [3_000]
    _same(again, whole)
    if model is UniqueNote:
        assert {10, 2_500} <= set(again.failed_positions.tolist())


def test_unique_key_only_when_the_caller_says_it_is_the_key() -> None:
    """``unique`` on ``id`` is row-local only for rows keyed by ``id`` alone (a cut or a
    batch holds each key once); validated without that promise, it is judged whole."""
    contract = Contract("t:Orders", Orders)
    types = {"id": pyarrow.int64()}
    assert contract.row_local(("id",), types)
    assert not contract.row_local(("id",))  # the rows' types not given
    assert not contract.row_local((), types)
    assert not contract.row_local(("id", "code"), types)


def _chunk(n: int, start: int) -> pyarrow.Table:
    ids = np.arange(start + 1, start + n + 1)
    return pyarrow.table(
        {
            "id": ids,
            "qty": np.where(ids % 7 == 0, -ids, ids),  # some rows fail: held in quarantine
            "status": pyarrow.array(["new"] * n, pyarrow.string()),
            "note": pyarrow.array([None] * n, pyarrow.string()),
            "code": pyarrow.array(["AB"] * n, pyarrow.string()),
            "_op": pyarrow.array(["upsert"] * n, pyarrow.string()),
            "_dlt_load_id": pyarrow.array(["1.1"] * n, pyarrow.string()),
        }
    )


class _Watched:
    """Chunks handed out one by one; asking for the next, it checks (by weak reference)
    that nothing holds the one it handed out before."""

    def __init__(self, sizes: list[int], limit: int | None = None) -> None:
        self.sizes, self.limit, self.held_on = sizes, limit, []

    def __iter__(self):  # noqa: ANN204
        start, before = 0, None
        for n in self.sizes:
            if before is not None:
                gc.collect()
                self.held_on.append(before() is not None)
            chunk = _chunk(n, start)
            start += n
            before = weakref.ref(chunk)
            yield chunk
            del chunk


def test_a_batch_lets_go_of_each_chunk_before_the_next_is_read() -> None:
    t = TableConfig("orders", ("id",), None, "none", "t:Orders")
    job = JobConfig("j", "sql_database", "sqlite://", "file:lake", (t,), max_quarantine_ratio=0.5)
    cut = _Watched([300, 300, 300, 100], limit=1_000)
    d = build_delta(job, t, Contract("t:Orders", Orders), cut, ["1.1"], 1)
    assert cut.held_on == [False, False, False]  # checked before chunks 2, 3 and 4
    assert d.upserts == 1_000 - 1_000 // 7 and len(d.parts) == 4  # every chunk was used


def test_a_cut_lets_go_of_each_chunk_it_handed_on() -> None:
    """``Changes`` keeps a copy of the last row it handed on (for the key it stops at),
    not the chunk: when it reads the stream's next batch, no chunk it handed on is alive
    (the consumer let go of each). The stream goes on to the end, also with the limit in
    the middle of a chunk, and the key it stopped at is the last row's."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw")
    con.execute(
        "CREATE TABLE raw.t AS SELECT i AS k, repeat('x', 100) AS v, '1.1' AS _dlt_load_id "
        "FROM range(10000) r(i)"
    )
    t = TableConfig("t", ("k",), None, "none", "x:Y")
    changes = read_changes(con, t, ["1.1"], 1_000, limit=5_500)
    assert changes is not None
    refs: list[weakref.ref] = []
    alive_at_read: list[int] = []

    class Watched:  # the query's stream, checking what is alive at each read
        def __init__(self, reader) -> None:  # noqa: ANN001
            self.reader = reader

        def __iter__(self):  # noqa: ANN204
            for batch in self.reader:
                gc.collect()
                alive_at_read.append(sum(r() is not None for r in refs))
                yield batch

        def close(self) -> None:
            self.reader.close()

    changes._reader = Watched(changes._reader)
    rows, last = 0, None
    for chunk in changes:
        refs.append(weakref.ref(chunk))
        rows += chunk.num_rows
        last = chunk["k"][-1].as_py()
        del chunk
    assert rows == 5_500 and last == 5_499
    assert changes.keys.through == ("5499",)
    assert len(alive_at_read) >= 6 and not any(alive_at_read)


def test_row_local_judges_each_kind_of_check() -> None:
    """An element-wise custom check judges one value: row-local. A check grouped by another
    column, and ``unique`` over several columns of the schema, see other rows: not."""

    class ElementWise(pa.DataFrameModel):
        id: Series[int]
        q: Series[int] = pa.Field(ge=0)

        @pa.check("q", element_wise=True)
        @classmethod
        def even(cls, v: int) -> bool:
            return v % 2 == 0

    class Grouped(pa.DataFrameModel):
        id: Series[int]
        status: Series[str]
        q: Series[int] = pa.Field(ge=0)

        @pa.check("q", groupby="status")
        @classmethod
        def some_group(cls, groups: dict) -> bool:
            return True

    class UniqueTogether(pa.DataFrameModel):
        id: Series[int]
        q: Series[int]

        class Config:
            unique = ["id", "q"]

    types = {"id": pyarrow.int64(), "q": pyarrow.int64(), "status": pyarrow.string()}
    assert Contract("t:ElementWise", ElementWise).row_local(("id",), types)
    assert not Contract("t:Grouped", Grouped).row_local(("id",), types)
    assert not Contract("t:UniqueTogether", UniqueTogether).row_local(("id",), types)


def test_a_refused_batch_closes_its_keys_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's keys live in an in-memory DuckDB (``delta._BatchKeys``); a batch refused
    over the quarantine ratio, or failing in the middle of its chunks, closes it before the
    error leaves ``build_delta``: the error's traceback holds the frame (a cycle), and a
    process deltaferry owns ends without the collections that would have closed it
    (``deltaferry/shutdown.py``). Found by a review."""
    made: list[delta_mod._BatchKeys] = []
    real_init = delta_mod._BatchKeys.__init__

    def tracked(self, key) -> None:  # noqa: ANN001
        real_init(self, key)
        made.append(self)

    monkeypatch.setattr(delta_mod._BatchKeys, "__init__", tracked)
    t = TableConfig("orders", ("id",), None, "none", "t:Orders")
    # every 7th row fails: 1/7 of the rows is over a ratio of 0.1, after the keys were added
    job = JobConfig("j", "sql_database", "sqlite://", "file:lake", (t,), max_quarantine_ratio=0.1)
    with pytest.raises(delta_mod.ContractViolation, match="max_quarantine_ratio"):
        build_delta(job, t, Contract("t:Orders", Orders), [_chunk(300, 0), _chunk(300, 300)], ["1.1"], 1)

    class Broken:  # a cut whose second chunk fails to read
        def __iter__(self):  # noqa: ANN204
            yield _chunk(300, 0)
            raise OSError("the staging file went away")

    job = JobConfig("j", "sql_database", "sqlite://", "file:lake", (t,), max_quarantine_ratio=0.5)
    with pytest.raises(OSError, match="went away"):
        build_delta(job, t, Contract("t:Orders", Orders), Broken(), ["1.1"], 1)
    assert len(made) == 2
    assert [k.con for k in made] == [None, None]
