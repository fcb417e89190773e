"""The data contract of bench/pg_fastpath_bench.py's ``orders`` table (PostgreSQL types:
bigint, integer, text, numeric(12,2), double precision, boolean, jsonb, timestamptz)."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.engines import pandas_engine
from pandera.typing import Series

STATUSES = ["new", "paid", "shipped", "returned", "cancelled"]
UTC_US = {"unit": "us", "tz": "UTC"}
DEC_12_2 = {"precision": 12, "scale": 2}


class OrdersV1(pa.DataFrameModel):
    """One order; amounts are exact decimals (negative for refunds)."""

    __version__ = 1

    id: Series[int] = pa.Field(ge=1, unique=True)
    account_id: Series[int] = pa.Field(ge=1)
    status: Series[str] = pa.Field(isin=STATUSES)
    amount: Series[pandas_engine.Decimal] = pa.Field(dtype_kwargs=DEC_12_2)
    discount: Series[pandas_engine.Decimal] = pa.Field(nullable=True, dtype_kwargs=DEC_12_2)
    weight: Series[float] = pa.Field(nullable=True)
    paid: Series[bool] = pa.Field(nullable=True)
    note: Series[str] = pa.Field(nullable=True)
    attrs: Series[str] = pa.Field(nullable=True)
    created_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs=UTC_US)
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs=UTC_US)
    deleted_at: Series[pd.DatetimeTZDtype] = pa.Field(nullable=True, dtype_kwargs=UTC_US)

    class Config:
        strict = True
        coerce = True


Orders = OrdersV1
