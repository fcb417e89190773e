"""How every read of a SQL table sees its columns (``adapt_table``): a module of its own,
without dlt, so the change check (``quiet.py``) selects the window exactly as dlt's read
does."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from deltaferry.config import JobConfig, TableConfig
from sources.sql_database.types import sqlite_json_text
from sources.sql_database.window import TimeText
from sources.wall_time import ZoneShifts


def adapt_table(
    job: JobConfig,
    t: TableConfig,
    text_times: dict[str, str],
    seen: list[str] | None = None,
    shifts: ZoneShifts | None = None,
) -> Any:
    # tombstones keep only the key; every other staged column must accept NULL. SQLite time
    # columns are parsed from their stored text (window.TimeText), JSON columns read as it
    # (sources/sql_database/types.py leaves a column with a dlt_type alone). ``seen`` gets
    # the names of the columns read (the source's current columns, for drift)
    pk = t.primary_key

    def adapt(table: sa.Table) -> sa.Table:
        if seen is not None:
            seen[:] = [c.name for c in table.columns]
        for col in table.columns:
            if col.name not in pk:
                col.nullable = True
            kind = text_times.get(col.name)
            if kind in ("timestamp", "date", "time"):
                fixed = col.name == t.cursor or col.name in pk
                where = f"job '{job.name}' table '{t.name}'"
                col.type = TimeText(kind, job.timezone, where, col.name, fixed, shifts, t.name)
            elif kind == "json":
                col.type = sqlite_json_text(job.name, t.name, col.name, col.type)
        return table

    return adapt
