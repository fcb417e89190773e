"""Contracts of the demo shop: customers and orders, version 1.

``Customers`` and ``Orders`` name the version currently published.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series


class CustomersV1(pa.DataFrameModel):
    """A shop customer. Soft-deleted rows carry ``deleted_at``."""

    __version__ = 1

    id: Series[int] = pa.Field(ge=1, unique=True)
    name: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 200})
    email: Series[str] = pa.Field(str_matches=r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
    country: Series[str] = pa.Field(str_length={"min_value": 2, "max_value": 2})
    updated_at: Series[pd.Timestamp]
    deleted_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True


class OrdersV1(pa.DataFrameModel):
    """An order of a customer; amounts are integer cents, never negative."""

    __version__ = 1

    id: Series[int] = pa.Field(ge=1, unique=True)
    customer_id: Series[int] = pa.Field(ge=1)
    amount_cents: Series[int] = pa.Field(ge=0)
    status: Series[str] = pa.Field(isin=["new", "paid", "shipped", "cancelled"])
    updated_at: Series[pd.Timestamp]

    class Config:
        strict = True
        coerce = True


Customers = CustomersV1
Orders = OrdersV1
