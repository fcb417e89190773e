"""Contracts of the PostgreSQL test tables (imported as ``tests.support.contracts_pg:Class``)."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.engines import pandas_engine
from pandera.typing import Series

UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class Events(pa.DataFrameModel):
    """Every common PostgreSQL type; the key is (region, id)."""

    region: Series[str] = pa.Field(isin=["eu", "us", "ap"])
    id: Series[int] = pa.Field(ge=1)
    amount: Series[pandas_engine.Decimal] = pa.Field(
        nullable=True, dtype_kwargs={"precision": 12, "scale": 2}
    )
    happened_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})
    day: Series[pd.Timestamp] = pa.Field(nullable=True)
    ref: Series[str] = pa.Field(nullable=True, str_matches=UUID)
    doc: Series[str] = pa.Field(nullable=True)  # json, published as JSON text
    docb: Series[str] = pa.Field(nullable=True)  # jsonb, as JSON text
    blob: Series[object] = pa.Field(nullable=True)  # bytea
    tags: Series[str] = pa.Field(nullable=True)  # text[], as a JSON array
    scores: Series[str] = pa.Field(nullable=True)  # int[], as a JSON array
    note: Series[str] = pa.Field(nullable=True)
    big: Series[int] = pa.Field(nullable=True)
    ratio: Series[float] = pa.Field(nullable=True)
    flag: Series[bool] = pa.Field(nullable=True)
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})

    class Config:
        strict = True
        coerce = True


class Items(pa.DataFrameModel):
    """Stock per store; the table has no cursor column (full-compare mode)."""

    sku: Series[str] = pa.Field(str_length={"min_value": 1})
    store: Series[int] = pa.Field(ge=1)
    qty: Series[int] = pa.Field(ge=0)
    price: Series[float] = pa.Field(ge=0)

    class Config:
        strict = True
        coerce = True


class Ticks(pa.DataFrameModel):
    """Rows whose cursor value is shared by many rows."""

    id: Series[int] = pa.Field(ge=1)
    v: Series[str]
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})

    class Config:
        strict = True
        coerce = True


class Accounts(pa.DataFrameModel):
    """Accounts changed, deleted and re-created by the chaos scenarios."""

    id: Series[int] = pa.Field(ge=1)
    owner: Series[str] = pa.Field(str_length={"min_value": 1})
    balance: Series[pandas_engine.Decimal] = pa.Field(
        nullable=True, dtype_kwargs={"precision": 14, "scale": 2}
    )
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})

    class Config:
        strict = True
        coerce = True


class Tokens(pa.DataFrameModel):
    """A table keyed by uuid (staged and published as text)."""

    id: Series[str] = pa.Field(str_matches=UUID)
    label: Series[str]
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})

    class Config:
        strict = True
        coerce = True
