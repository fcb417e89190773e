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

# table settings: columns neither read nor published, and the published type of a column
# ({ col = "text" | "decimal(P,S)" | "int64" | "float64" | "bool" | "date" | "time" |
# "timestamp" | "timestamptz" | "binary" }); see sources/sql_database/types.py
TABLE_SETTINGS = frozenset({"exclude_columns", "column_types"})


def check(job: object) -> None:
    """Refuse column settings a table cannot honour, as one-line ConfigErrors."""
    from sources.sql_database.types import check_table

    for t in job.tables:  # type: ignore[attr-defined]
        check_table(job.name, t)  # type: ignore[attr-defined]
