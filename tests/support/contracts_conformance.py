"""The contract of the conformance table ``items`` (``tests.support.contracts_conformance:Items``)."""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series


class Items(pa.DataFrameModel):
    id: Series[int] = pa.Field(ge=1)
    name: Series[str] = pa.Field(str_length={"min_value": 1})
    # text in some sources, a timestamp in others: kept as each source stages it
    updated_at: Series[object]

    class Config:
        strict = True
        coerce = True
