"""Settings of the sql_database source (never secrets): ``Table`` adds the column settings
of its tables (see ``sources/sql_database/types.py`` for what each type publishes). The
column names every source kind stages with are in ``sources.columns``."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import model_validator

from deltaferry.job_models import Column, TableModel, setting

# ``initial_load = "auto"`` (the default) copies a table by the scanner when its first run
# finds at least this many rows: below it the copy's fixed costs (the seed's dlt pipeline,
# the attach, the checks at the source: about a second) are more than the dlt read it
# saves (bench/README.md, "The scanner by default")
AUTO_ROWS = 100_000


class Table(TableModel):
    """A table of a sql_database job."""

    exclude_columns: list[Column] = setting(
        [],
        "columns neither read nor published (not a key, cursor or soft-delete column)",
        'a list of column names as the source spells them, e.g. ["notes", "raw_blob"]',
    )
    column_types: dict[str, str] = setting(
        {},
        'the published type of a column: "text", "decimal(P,S)" (1 <= P <= 38), "int64", '
        '"float64", "bool", "date", "time", "timestamp", "timestamptz" or "binary"',
        'a table of column = "type", e.g. column_types = { amount = "decimal(18,4)", '
        'span = "text" }',
    )

    source_table: str | None = setting(
        None,
        "the table as the source spells it, where that is no valid name (mixed case, a space, "
        "a dash): the source reads it, deltaferry names it by name (default: name)",
        'the source\'s own spelling, e.g. name = "users" with source_table = "Users"',
        min_length=1,
    )
    cursor_unit: Literal["s", "ms", "us", "ns", "number"] = setting(
        None,
        "what a number cursor column (or a SQLite TEXT cursor of numbers) holds: Unix "
        "time in seconds, milliseconds, "
        "microseconds or nanoseconds (the window then starts at the newest value not after "
        'now, as for a time column), or "number" (an id or version: taken as it is, no '
        "warning); without it a number is taken as it is, and a run warns when the newest "
        "staged one, read in the unit most staged values have by size (seconds from 1e9, "
        "milliseconds from 1e12 to 1e15), is after now",
        'one of "s", "ms", "us", "ns", "number"',
    )
    initial_load: Literal["auto", "dlt", "scanner"] = setting(
        "auto",
        'how the table\'s first load reads it: "scanner" (PostgreSQL and SQLite: a seed of '
        "rows through dlt, then the rest copied by DuckDB's postgres or sqlite scanner, many "
        "times faster; a table whose types or values it cannot copy exactly is read by dlt, "
        'and the operations log says why), "dlt" (dlt\'s SQL read, as every later run) or '
        f'"auto": the scanner for a table with a cursor and at least {AUTO_ROWS:,} rows at '
        "its first run, else dlt",
        '"auto", "dlt" or "scanner"',
    )

    @model_validator(mode="after")
    def _columns_a_table_can_honour(self) -> Self:
        """Key, cursor and soft-delete columns are read as they are (they are compared with
        the source as read); every type is one deltaferry publishes."""
        from sources.sql_database.types import MAX_PRECISION, SIMPLE_TYPES, key_roles, parse_type

        role = key_roles(self)
        if self.cursor_unit is not None and self.cursor is None:
            raise ValueError("cursor_unit needs a cursor (the column whose numbers it describes)")
        if self.initial_load == "scanner" and self.cursor is None:
            raise ValueError(
                'initial_load = "scanner" needs a cursor: the run after the copy reads the '
                "table from the newest copied cursor value"
            )
        for c in self.exclude_columns:
            if c in role:
                raise ValueError(
                    f"exclude_columns names '{c}', the table's {role[c]}; it must be read"
                )
        for c, spec in self.column_types.items():
            if c in role:
                raise ValueError(
                    f"column_types names '{c}', the table's {role[c]}; its type cannot be "
                    "changed (it is compared with the source as read)"
                )
            if c in self.exclude_columns:
                raise ValueError(f"column '{c}' is both in exclude_columns and column_types")
            if parse_type(spec) is None:
                raise ValueError(
                    f"column_types {c} = {spec!r} is not a type deltaferry publishes "
                    f"(one of {', '.join(repr(s) for s in SIMPLE_TYPES)} or 'decimal(P,S)' with "
                    f"1 <= P <= {MAX_PRECISION} and 0 <= S <= P)"
                )
        return self


def source_table(t: Any) -> str:
    """The table's name as the source spells it (``source_table``, default ``name``): what
    every read, reflection and query of the source names; ``t.name`` names it everywhere
    else (staging, the lake, the replica, messages)."""
    return str(t.options.get("source_table") or t.name)
