"""Constants of the sql_database source (never secrets).

The column names are shared by every source kind (``sources.columns``); they are
importable from here too."""

from __future__ import annotations

from sources.columns import (  # noqa: F401 - re-exported
    DELETED_COLUMN,
    HASH_COLUMN,
    INTERNAL_COLUMNS,
    LOAD_ID_COLUMN,
    STAGING_DATASET,
)
