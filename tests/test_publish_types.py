"""Time columns staged as another kind than the contract's, on the producer's side
(``deltaferry/delta.py``): a date for a timestamp column is published as its midnight; a
zoned timestamp for a naive one is validated as its UTC wall time (what ``coerce = True``
does) instead of failing every row. Expected values are written here by hand."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pandera.pandas as pa
import pyarrow
import pytest
from pandera.typing import Series

from contracts import Contract
from deltaferry.delta import _dates_as_timestamps, in_contract_zone

pytestmark = pytest.mark.unit


class Naive(pa.DataFrameModel):
    id: Series[int]
    at: Series[pd.Timestamp] = pa.Field(nullable=True)


def test_a_date_for_a_timestamp_column_is_its_midnight():
    contract = Contract("t:Naive", Naive)
    data = pyarrow.table(
        {
            "id": pyarrow.array([1, 2], pyarrow.int64()),
            "at": pyarrow.array([dt.date(2024, 2, 29), None], pyarrow.date32()),
        }
    )
    assert contract.validate(data.to_pandas()).failed_rows  # refused as it is
    out = _dates_as_timestamps(contract, data)
    assert out.schema.field("at").type == pyarrow.timestamp("us")
    assert out.column("at").to_pylist() == [dt.datetime(2024, 2, 29), None]
    assert not contract.validate(out.to_pandas()).failed_rows


def test_a_zoned_timestamp_for_a_naive_column_is_validated_as_utc_wall_time():
    contract = Contract("t:Naive", Naive)
    data = pyarrow.table(
        {
            "id": pyarrow.array([1], pyarrow.int64()),
            "at": pyarrow.array(
                [dt.datetime(2024, 2, 2, 1, 0, tzinfo=dt.timezone.utc)], pyarrow.timestamp("us", tz="UTC")
            ),
        }
    )
    assert contract.validate(data.to_pandas()).failed_rows  # every row refused before
    seen = in_contract_zone(contract, data)
    assert seen.column("at").to_pylist() == [dt.datetime(2024, 2, 2, 1, 0)]
    assert not contract.validate(seen.to_pandas()).failed_rows
    # other columns, and zoned columns under zoned or untyped contract columns, are kept
    assert in_contract_zone(contract, data.rename_columns(["id", "other"])).equals(
        data.rename_columns(["id", "other"])
    )


class Zoned(pa.DataFrameModel):
    id: Series[int]
    at: Series[pd.DatetimeTZDtype] = pa.Field(nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"})


def test_a_naive_timestamp_for_a_zoned_column_is_validated_as_the_utc_instant():
    contract = Contract("t:Zoned", Zoned)
    data = pyarrow.table(
        {
            "id": pyarrow.array([1, 2], pyarrow.int64()),
            "at": pyarrow.array([dt.datetime(2024, 2, 2, 1, 0), None], pyarrow.timestamp("us")),
        }
    )
    assert contract.validate(data.to_pandas()).failed_rows  # every row refused before
    seen = in_contract_zone(contract, data)
    assert seen.column("at").to_pylist() == [dt.datetime(2024, 2, 2, 1, 0, tzinfo=dt.timezone.utc), None]
    assert not contract.validate(seen.to_pandas()).failed_rows


@pytest.mark.parametrize("zone", ["Etc/UTC", "Europe/Berlin", "+02:00"])
def test_a_zoned_timestamp_in_another_zone_is_validated_as_the_same_instants(zone):
    """DuckDB stages a PostgreSQL ``timestamptz`` as zone ``Etc/UTC``: a contract column
    ``DatetimeTZDtype(tz="UTC")`` without ``coerce`` refused every row ("UTC" is not
    "Etc/UTC", a fresh-user trial). Validated as the same instants in the contract's zone."""
    contract = Contract("t:Zoned", Zoned)
    at = dt.datetime(2024, 6, 1, 10, 0, tzinfo=dt.timezone.utc)
    data = pyarrow.table(
        {
            "id": pyarrow.array([1, 2], pyarrow.int64()),
            "at": pyarrow.array([at, None], pyarrow.timestamp("us", tz=zone)),
        }
    )
    assert contract.validate(data.to_pandas()).failed_rows  # every row refused before
    seen = in_contract_zone(contract, data)
    assert seen.schema.field("at").type == pyarrow.timestamp("us", tz="UTC")
    assert seen.column("at").to_pylist() == [at, None]
    assert not contract.validate(seen.to_pandas()).failed_rows


def test_a_null_in_a_boolean_column_that_may_not_be_null_breaks_the_contract():
    """pandera coerces None to False before its not_nullable check, so a NULL in a
    non-nullable boolean column passed the contract and was published (a fresh-user trial,
    through an override's --value; the sync's own validation is the same call). Validated
    as a batch's rows are (Arrow to pandas, integers with NULLs as objects)."""

    class Flags(pa.DataFrameModel):
        id: Series[int]
        flag: Series[bool]
        maybe: Series[bool] = pa.Field(nullable=True)

        class Config:
            coerce = True

    contract = Contract("flags", Flags)
    data = pyarrow.table(
        {
            "id": pyarrow.array([1, 2, 3], pyarrow.int64()),
            "flag": pyarrow.array([True, None, False], pyarrow.bool_()),
            "maybe": pyarrow.array([None, None, True], pyarrow.bool_()),
        }
    )
    result = contract.validate(data.to_pandas(integer_object_nulls=True))
    assert result.failed_rows == {1}
    assert result.summary() == "flag: not_nullable (1 row, e.g. NULL)"
    assert not contract.validate(data.slice(2).to_pandas(integer_object_nulls=True)).failed_rows


def test_a_null_that_may_not_be_there_is_one_failure_not_three():
    """A NULL in a non-nullable integer column failed pandera's not_nullable, coerce_dtype
    and dtype checks: one value, three failures in refusals and quarantine reasons (a
    fresh-user trial). It is one not_nullable failure; a value of the wrong kind in the same
    column still fails its dtype checks; the summary's tail counts checks and failures."""
    from collections import Counter

    from contracts import summarize

    class Counts(pa.DataFrameModel):
        id: Series[int]
        qty: Series[int]
        size: Series[int] = pa.Field(ge=0)

        class Config:
            coerce = True

    contract = Contract("counts", Counts)
    frame = pd.DataFrame(
        {"id": [1, 2, 3], "qty": [5, None, "ten"], "size": [1, 2, -1]}, dtype=object
    )
    result = contract.validate(frame)
    assert result.failed_rows == {1, 2}
    assert [(f.field, f.check) for f in result.row_failures[1]] == [("qty", "not_nullable")]
    assert {f.check for f in result.row_failures[2] if f.field == "qty"} >= {"coerce_dtype('int64')"}
    assert "qty: not_nullable (1 row, e.g. NULL)" in result.summary(), result.summary()
    counts = Counter({("a", "x"): 5, ("b", "y"): 3, ("c", "z"): 2, ("d", "w"): 1})
    assert summarize(counts, limit=2).endswith("; and 2 more checks (3 failures)")
    assert summarize(Counter({("a", "x"): 1, ("b", "y"): 1}), limit=1).endswith(
        "; and 1 more check (1 failure)"
    )


def test_a_failure_of_the_whole_column_names_no_rows_value_as_its_example():
    """pandera reports a column it cannot coerce as a whole (``'0001-01-01'`` beside
    ordinary times: out of a pandas timestamp's range) with no row and no value; the
    refusal said ``e.g. NULL at key {"id": 1}``, naming a row whose value was fine (a
    fresh-user trial). It says the column as a whole failed."""
    from types import SimpleNamespace

    from deltaferry.delta import _validate_chunk

    class Times(pa.DataFrameModel):
        id: Series[int]
        at: Series[pd.DatetimeTZDtype] = pa.Field(nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"})

        class Config:
            coerce = True

    changes = pyarrow.table(
        {
            "id": [1, 2],
            "at": ["2024-01-01T00:00:00Z", "0001-01-01"],
            "_op": ["upsert", "upsert"],
            "_dlt_load_id": ["1", "1"],
        }
    )
    examples: dict = {}
    keep, _, failed, counts, _ = _validate_chunk(
        SimpleNamespace(primary_key=["id"]), Contract("times", Times), changes, examples=examples
    )
    assert failed == 2 and not keep.any()
    coerce = next(k for k in counts if k[1].startswith("coerce_dtype"))
    assert examples[coerce] == "the column as a whole", examples
    assert not any("NULL at key" in e for e in examples.values()), examples


@pytest.mark.parametrize(
    "multi, columns, refused",
    [
        (False, ["id", "_Op", "_op"], "_Op"),  # any case: DuckDB does not tell them apart
        (False, ["id", "_SEQ", "_op"], "_SEQ"),
        (True, ["id", "_key", "_op"], "_key"),  # the merge's names, with several producers
        (True, ["id", "_Producer", "_op"], "_Producer"),
        (False, ["id", "_key", "_producer", "_op"], None),  # one producer: no merge, kept
    ],
)
def test_columns_a_reader_could_not_apply_are_refused_before_upload(multi, columns, refused):
    """A fresh-user trial: with multi_producer a source column `_key` was published and every
    pull refused the table for good; `_Op` was published beside the real `_op`, which a reader
    never saw (every row lost), `_SEQ` broke every pull. The producer refuses them."""
    from types import SimpleNamespace

    from deltaferry.delta import _check_published_names
    from deltaferry.errors import ConfigError

    job = SimpleNamespace(name="j", multi_producer=multi)
    t = SimpleNamespace(name="t")
    if refused is None:
        _check_published_names(job, t, columns)
        return
    with pytest.raises(ConfigError, match=rf"job 'j' table 't': source column\(s\) {refused} have names reserved"):
        _check_published_names(job, t, columns)
