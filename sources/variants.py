"""dlt variant columns for Arrow chunks: a source column retyped since it was staged."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from deltaferry.config import JobConfig, TableConfig
from deltaferry.duck import split_exact
from deltaferry.errors import TerminalError

# JSON text into a JSON column: dlt's load checks it (DuckDB's own JSON type)
_JSON = ("VARCHAR", "JSON")


class Variants:
    """A dlt map step over Arrow chunks that does what dlt's normalizer does for rows (and
    not for Arrow chunks, which the load casts into the staged column as they are): in a
    column whose values arrive as a type its staged column (``staged``: the staging table's
    DuckDB types, ``sources.staging.staged_types``; dlt's own schema may already say the
    new type while the staged column keeps the old one) may not hold (``duck.widens`` does
    not say it does), a value the staged type holds exactly (``split_exact``) is kept in the
    column, and any other goes to dlt's variant column ``<column>▶v_<type>``
    (``<column>__v_<type>`` under snake_case naming), NULL in the column itself. The drift policy then sees the new type
    (``contracts/drift.py``): under ``freeze`` the run stops naming the column, where the
    load used to cut the value and exit 0.

    A primary key or cursor column has no variant (a key NULL in its column would be held
    as a NULL key; a NULL cursor, re-read for ever): a value its staged type does not hold
    is a ``TerminalError`` naming job, table, the column, both types and the value, with the
    remedy (stage the table again: ``deltaferry reset``)."""

    def __init__(
        self, naming: Any, job: JobConfig, t: TableConfig, staged: Mapping[str, str]
    ) -> None:
        self.staged = dict(staged)
        self.pk = set(t.primary_key)
        self.cursor = t.cursor
        self.job = job.name
        self.table = t.name
        self.zone = ZoneInfo(job.timezone)  # naive time text is wall time there
        self.naming = naming  # the staging's dlt NamingConvention (names variant columns)
        self.con: duckdb.DuckDBPyConnection | None = None

    def __call__(self, chunk: pa.Table) -> pa.Table:
        from dlt.common.libs.pyarrow import get_column_type_from_py_arrow

        from deltaferry.duck import duck_type, widens

        for field in chunk.schema:
            staged = self.staged.get(field.name)
            if staged is None or pa.types.is_null(field.type):
                continue
            incoming = duck_type(field)
            if incoming == staged or widens(incoming, staged) or (incoming, staged) == _JSON:
                continue  # every value fits (int32 into BIGINT, a number into VARCHAR)
            if self.con is None:
                self.con = duckdb.connect(config={"threads": 1})
            if incoming == "VARCHAR" and staged.startswith(("DATE", "TIMESTAMP")):
                base, variant = self._times(chunk[field.name], staged)
            else:
                base, variant = split_exact(chunk[field.name], staged, incoming, self.con)
            if variant.null_count == len(variant):
                chunk = chunk.set_column(chunk.schema.get_field_index(field.name), field.name, base)
                continue
            if field.name in self.pk or field.name == self.cursor:
                self._refuse(field.name, staged, incoming, variant)
            i = chunk.schema.get_field_index(field.name)
            chunk = chunk.set_column(i, field.name, base)
            arrived = get_column_type_from_py_arrow(field.type).get("data_type")
            name = self.naming.shorten_fragments(field.name, f"v_{arrived}")
            chunk = chunk.append_column(pa.field(name, field.type), variant)
        return chunk

    def _times(self, text: pa.ChunkedArray, staged: str) -> tuple[Any, pa.ChunkedArray]:
        """Time text for a time column read as the SQL source reads SQLite time text
        (``window.parse_time_text``: naive text in the job's ``timezone``, offsets, at most
        microseconds; date text for a DATE column is its date), then split as timestamps (a
        time of day into DATE is not held): the values held, as ``staged``, and the others
        as the text they arrived as."""
        values: list[Any] = []
        for v in text.to_pylist():
            values.append(None if v is None else self._time(v, staged))
        parsed = pa.array(values, pa.timestamp("us"))
        assert self.con is not None
        base, inexact = split_exact(parsed, staged, "TIMESTAMP", self.con)
        keep = pc.and_(pc.is_valid(text), pc.invert(pc.is_valid(base)))
        return base, pc.if_else(keep, text, pa.scalar(None, pa.string()))

    def _time(self, text: str, staged: str) -> Any:
        """``text`` as a naive UTC wall time, None when it is not a time; date text for a
        DATE column is its date (at midnight: not moved by the job's zone)."""
        from sources.sql_database.window import parse_time_text

        try:
            if staged == "DATE":
                try:
                    day = parse_time_text(text, "date", self.zone)
                    if isinstance(day, dt.date):  # "date" gives a date, never a time of day
                        return dt.datetime(day.year, day.month, day.day)
                except ValueError:
                    pass
            return parse_time_text(text, "timestamp", self.zone)
        except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved by the zone
            return None

    def _refuse(self, column: str, staged: str, incoming: str, variant: pa.ChunkedArray) -> None:
        first = next(v for v in variant.to_pylist() if v is not None)
        role = "primary key " if column in self.pk else "cursor " if column == self.cursor else ""
        raise TerminalError(
            f"job '{self.job}' table '{self.table}': {role}column '{column}' is staged as "
            f"{staged} and the source now gives {incoming} values it does not hold exactly "
            f"(e.g. {first!r}); nothing was staged. Stage the table again with the new type: "
            f"deltaferry reset {self.job} --table {self.table}"
        )

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
