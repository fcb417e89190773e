"""dlt variant columns for Arrow chunks: a source column retyped since it was staged."""

from __future__ import annotations

from typing import Any

import dlt
import duckdb
import pyarrow as pa

from deltaferry.config import TableConfig

# staged dlt types a value of another type may be converted to (DuckDB ``TRY_CAST``)
_CONVERTIBLE = {"bigint": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN", "date": "DATE"}


class Variants:
    """A dlt map step over Arrow chunks that does what dlt's normalizer does for rows (and
    not for Arrow chunks, which it loads as they are): in a column whose values arrive as
    another type than the one staged (a source column retyped INTEGER -> TEXT), a value
    that converts exactly (DuckDB ``TRY_CAST``: ``'40'`` to ``40``; from a non-text type
    only when it converts back to the same value) is kept in the column, and any other
    goes to dlt's variant column ``<column>▶v_<type>`` (``<column>__v_<type>`` under
    snake_case naming), NULL in the column itself. The load into staging then does not
    fail, and the drift policy sees the new type (``contracts/drift.py``). Columns staged
    as other types (text, timestamps, decimals) are left to the load; a value it refuses
    fails it with one line, and dlt aborts the package."""

    def __init__(self, pipeline: dlt.Pipeline, t: TableConfig) -> None:
        self.staged: dict[str, str] = {}
        self.naming: Any = None
        if pipeline.default_schema_name:
            schema = pipeline.default_schema
            self.naming = schema.naming
            columns = (schema.tables.get(t.name) or {}).get("columns") or {}
            self.staged = {
                name: c["data_type"]
                for name, c in columns.items()
                if c.get("data_type") in _CONVERTIBLE and not c.get("variant")
            }
        self.con: duckdb.DuckDBPyConnection | None = None

    def __call__(self, chunk: pa.Table) -> pa.Table:
        from dlt.common.libs.pyarrow import get_column_type_from_py_arrow

        for field in chunk.schema:
            staged = self.staged.get(field.name)
            if staged is None or pa.types.is_null(field.type):
                continue
            arrived = get_column_type_from_py_arrow(field.type).get("data_type")
            if arrived == staged:
                continue
            if self.con is None:
                self.con = duckdb.connect(config={"threads": 1})
            text = pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
            same = "true" if text else "v = c"
            self.con.register("col_", pa.table({"v": chunk[field.name]}))
            try:
                out = self.con.execute(
                    f"SELECT CASE WHEN ok THEN c END AS base, CASE WHEN v IS NOT NULL AND NOT ok"
                    f" THEN v END AS variant FROM (SELECT v, c, c IS NOT NULL AND {same} AS ok"
                    f" FROM (SELECT v, TRY_CAST(v AS {_CONVERTIBLE[staged]}) AS c FROM col_))"
                ).fetch_arrow_table()
            finally:
                self.con.unregister("col_")
            i = chunk.schema.get_field_index(field.name)
            chunk = chunk.set_column(i, field.name, out["base"])
            if out["variant"].null_count < out.num_rows:
                name = self.naming.shorten_fragments(field.name, f"v_{arrived}")
                chunk = chunk.append_column(pa.field(name, field.type), out["variant"])
        return chunk

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
