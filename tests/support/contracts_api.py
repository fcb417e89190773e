"""Contracts of the REST API test collections (``tests.support.contracts_api:Class``)."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.engines import pandas_engine
from pandera.typing import Series

from contracts import Chain
from tests.support.contracts_files import Loose


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


class Measures(pa.DataFrameModel):
    """Numbers that must arrive exactly: a decimal beyond a double's digits and dlt's
    default scale of 9, a float, a flag and a document."""

    id: Series[int] = pa.Field(ge=1)
    amount: Series[pandas_engine.Decimal] = pa.Field(
        nullable=True, dtype_kwargs={"precision": 30, "scale": 12}
    )
    x: Series[float] = pa.Field(nullable=True)
    n: Series[int] = pa.Field(nullable=True)
    ok: Series[bool] = pa.Field(nullable=True)
    at: Series[pd.DatetimeTZDtype] = pa.Field(
        nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )
    doc: Series[str] = pa.Field(nullable=True)
    updated_at: Series[object] = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = True


class MeasuresAfterLoose(Measures):
    """``Measures`` as the version after ``contracts_files:Loose``: a table published under
    the loose contract goes on under this chain (its v1 is the published contract)."""

    __version__ = 2

    @staticmethod
    def upgrade(frame: pd.DataFrame) -> pd.DataFrame:
        return frame


LooseThenMeasures = Chain(Loose, MeasuresAfterLoose)
