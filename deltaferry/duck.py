"""Small DuckDB helpers."""

from __future__ import annotations

from typing import Any

import duckdb


def fetch_one(
    con: duckdb.DuckDBPyConnection, sql: str, params: Any = None
) -> tuple[Any, ...] | None:
    """First row of a query, with the result fully consumed (DuckDB 2 refuses other work on a
    connection while a result is unfinished)."""
    rows = (
        con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()
    )
    return rows[0] if rows else None
