"""Contracts of the REST API test collections (``tests.support.contracts_api:Class``)."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series


class Tickets(pa.DataFrameModel):
    id: Series[int] = pa.Field(ge=1)
    title: Series[str]
    status: Series[str] = pa.Field(isin=["open", "pending", "closed"])
    tags: Series[str] = pa.Field(nullable=True)  # a JSON list, published as JSON text
    meta: Series[str] = pa.Field(nullable=True)  # a JSON object, as JSON text
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})

    class Config:
        strict = True
        coerce = True


class Events(pa.DataFrameModel):
    id: Series[int] = pa.Field(ge=1)
    kind: Series[str]
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})

    class Config:
        strict = True
        coerce = True


class Users(pa.DataFrameModel):
    id: Series[int] = pa.Field(ge=1)
    name: Series[str]
    email: Series[str] = pa.Field(str_matches=r"^[^@\s]+@[^@\s]+$")

    class Config:
        strict = True
        coerce = True
