"""The benchmark's data contract for the ``events`` table (see bench/sync_bench.py).

Strict (no extra columns), coercing, with checks of the kind a real contract has:
key range and uniqueness, non-negative amounts, a closed set of kinds, a bounded note.
Soft-deleted rows (``deleted_at`` set) are tombstones and are not validated.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

KINDS = ["click", "view", "purchase", "refund", "signup"]


class EventsV1(pa.DataFrameModel):
    """One event of an account; amounts are integer cents, never negative."""

    __version__ = 1

    id: Series[int] = pa.Field(ge=1, unique=True)
    account_id: Series[int] = pa.Field(ge=1)
    kind: Series[str] = pa.Field(isin=KINDS)
    amount_cents: Series[int] = pa.Field(ge=0)
    note: Series[str] = pa.Field(nullable=True, str_length={"max_value": 200})
    updated_at: Series[pd.Timestamp]
    deleted_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True


Events = EventsV1
