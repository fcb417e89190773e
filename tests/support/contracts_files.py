"""Contracts of the file-drop test tables (imported as ``tests.support.contracts_files:Class``)."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pandera.pandas as pa
from pandera.engines import pandas_engine
from pandera.typing import Series


class Orders(pa.DataFrameModel):
    """CSV drops: every column arrives as text and is typed by this contract."""

    id: Series[int] = pa.Field(ge=1)
    customer: Series[str]
    amount: Series[float] = pa.Field(ge=0)
    placed_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})
    note: Series[str] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True


class Events(pa.DataFrameModel):
    """JSON Lines drops."""

    id: Series[int] = pa.Field(ge=1)
    kind: Series[str] = pa.Field(isin=["click", "view", "buy"])
    n: Series[int] = pa.Field(nullable=True)
    # set on deleted events (deletes = "soft:deleted_at"); absent from most records
    deleted_at: Series[pd.DatetimeTZDtype] = pa.Field(
        nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )

    class Config:
        strict = True
        coerce = True


class Stock(pa.DataFrameModel):
    """Parquet drops; the key is (sku, store)."""

    sku: Series[str]
    store: Series[int] = pa.Field(ge=1)
    qty: Series[int] = pa.Field(ge=0)

    class Config:
        strict = True
        coerce = True


class Numbers(pa.DataFrameModel):
    """Drops whose values must arrive exactly: decimals, big integers, floats, documents.
    Columns it does not name (``big``, ``loose``) stay as the file gives them."""

    id: Series[int]
    amount: Series[pandas_engine.Decimal] = pa.Field(
        nullable=True, dtype_kwargs={"precision": 20, "scale": 2}
    )
    whole: Series[Decimal] = pa.Field(nullable=True)  # pandera's default: Decimal(28, 0)
    n: Series[int] = pa.Field(nullable=True)
    x: Series[float] = pa.Field(nullable=True)
    flag: Series[bool] = pa.Field(nullable=True)
    at: Series[pd.DatetimeTZDtype] = pa.Field(
        nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )
    note: Series[str] = pa.Field(nullable=True)
    doc: Series[str] = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = True


class Loose(pa.DataFrameModel):
    """Drops whose other columns the contract does not type (``strict = False``)."""

    id: Series[int] = pa.Field(ge=1)
    ts: Series[pd.Timestamp] = pa.Field(nullable=True)  # nanoseconds, naive


class Dated(pa.DataFrameModel):
    """Drops with optional typed columns a writer may leave out of a file."""

    id: Series[int] = pa.Field(ge=1)
    day: Series[pandas_engine.Date] = pa.Field(nullable=True)
    at: Series[pd.DatetimeTZDtype] = pa.Field(nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"})

    class Config:
        strict = False
        coerce = True


class FloatKeyed(pa.DataFrameModel):
    """Drops keyed by a float (``tests/test_files_cost.py``: -0.0 is the key 0.0)."""

    id: Series[float]
    v: Series[str]

    class Config:
        strict = True
        coerce = True
