"""The simulator's contracts: the two modelled tables, version 1 (see ``source.py``)."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series


class ItemsV1(pa.DataFrameModel):
    """Soft-deleted rows carry ``deleted_at``; ``rev`` is the source's write that made the
    row (unique per write: the oracle's identity of a change)."""

    __version__ = 1

    id: Series[int] = pa.Field(ge=1, unique=True)
    name: Series[str]
    amount: Series[int]
    rev: Series[int] = pa.Field(ge=1)
    updated_at: Series[pd.Timestamp]
    deleted_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True


class TagsV1(pa.DataFrameModel):
    """A composite key; hard deletes, found by comparing key sets (``reconcile``)."""

    __version__ = 1

    a: Series[int]
    b: Series[str]
    val: Series[int]
    rev: Series[int] = pa.Field(ge=1)
    updated_at: Series[pd.Timestamp]

    class Config:
        strict = True
        coerce = True


Items = ItemsV1
Tags = TagsV1
