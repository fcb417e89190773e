"""Loose contracts of the column-type tests (imported as ``tests.support.contracts_sqltypes:Class``):
only the key is declared, every other column is published as staged."""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series


class Loose(pa.DataFrameModel):
    id: Series[int]

    class Config:
        strict = False
