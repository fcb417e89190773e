"""Contracts of the odd source-name tests (``tests.support.contracts_oddnames:Class``): the
key columns as the source spells them, every other column published as staged."""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series


class Accounts(pa.DataFrameModel):
    Id: Series[int]

    class Config:
        strict = False


class Lines(pa.DataFrameModel):
    OrderId: Series[int]
    Line: Series[int]

    class Config:
        strict = False
