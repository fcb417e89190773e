"""The simulator's contracts: the two modelled tables at version 1 (see ``source.py``), and
``items``'s chain of two versions, which the producer and the reader each move to at a
moment of the history (``World.upgrade_contract``)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from contracts import Chain


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


def label_of(name: Any) -> Any:
    """``items.label`` at v2: ``name`` reversed (NULL for NULL). Derived, so the downgrade
    to v1 loses nothing, and the oracle can check every replica row that has it."""
    return name[::-1] if isinstance(name, str) else None


class ItemsV2(ItemsV1):
    """v1 and ``label``, made from ``name`` by the upgrade."""

    __version__ = 2

    label: Series[str] = pa.Field(nullable=True)

    @staticmethod
    def upgrade(frame: pd.DataFrame) -> pd.DataFrame:
        frame["label"] = frame["name"].map(label_of)
        return frame

    @staticmethod
    def downgrade(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.drop(columns=["label"])


Items = ItemsV1
Tags = TagsV1
ItemsChain = Chain(ItemsV1, ItemsV2)


class ItemsTitled(pa.DataFrameModel):
    """v1 with ``name`` renamed ``title`` (v1's column gone): a change in ``name`` shows in
    no column a v1 row and a v2 row share (``tests/test_simulation.py``)."""

    __version__ = 2

    id: Series[int] = pa.Field(ge=1, unique=True)
    title: Series[str] = pa.Field(nullable=True)
    amount: Series[int]
    rev: Series[int] = pa.Field(ge=1)
    updated_at: Series[pd.Timestamp]
    deleted_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True

    @staticmethod
    def upgrade(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.rename(columns={"name": "title"})

    @staticmethod
    def downgrade(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.rename(columns={"title": "name"})


ItemsRenameChain = Chain(ItemsV1, ItemsTitled)
