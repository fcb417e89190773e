"""What the parts of the state store share (``deltaferry/state.py:StateStore`` is made of
the core there and the mixins of ``deltaferry/oplog.py``, ``deltaferry/checkpoints.py`` and
``deltaferry/quarantine.py``): the clock its timestamps take, the bulk insert, and
``StoreBase``, what the mixins use of the core."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa


def now() -> datetime:
    return datetime.now(UTC)


def insert_rows(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    columns: dict[str, pa.DataType],
    rows: list[list[Any]],
    params: list[Any],
) -> None:
    """Run ``sql`` (with ``params``) once over all ``rows``, which it reads as the table
    ``df_rows`` of ``columns``: the rows go to DuckDB as one Arrow table (``executemany``
    runs a statement once per row: seconds for ten thousand quarantined rows)."""

    def column(i: int, kind: pa.DataType) -> pa.Array:
        values = [r[i] for r in rows]
        if kind == pa.string():  # as DuckDB casts a parameter to VARCHAR
            values = [v if v is None or isinstance(v, str) else str(v) for v in values]
        return pa.array(values, kind)

    insert_table(con, sql, pa.table({n: column(i, kind) for i, (n, kind) in enumerate(columns.items())}), params)


def insert_table(con: duckdb.DuckDBPyConnection, sql: str, table: pa.Table, params: list[Any]) -> None:
    """Run ``sql`` (with ``params``) once, reading ``table`` as ``df_rows``."""
    con.register("df_rows", table)
    try:
        con.execute(sql, params)
    finally:
        con.unregister("df_rows")


class StoreBase:
    """What a mixin of ``StateStore`` uses of its core (``deltaferry/state.py``): the job,
    the file, and its connections."""

    job: str
    path: Path

    if TYPE_CHECKING:

        def connect(
            self, read_only: bool = False
        ) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...

        def _transaction(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...
