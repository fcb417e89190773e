"""Loose contracts of the column-type tests (imported as ``tests.support.contracts_sqltypes:Class``):
only the key is declared, every other column is published as staged."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series


class Loose(pa.DataFrameModel):
    id: Series[int]

    class Config:
        strict = False


class Zoned(pa.DataFrameModel):
    """The cursor published zoned (UTC): staging keeps it naive, as UTC wall time."""

    id: Series[int]
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})

    class Config:
        strict = False


class NonNegative(pa.DataFrameModel):
    """``qty`` at least 0: a negative one breaks the contract."""

    id: Series[int]
    qty: Series[int] = pa.Field(ge=0, nullable=True)

    class Config:
        strict = False
