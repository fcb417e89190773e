"""Several producers, the replica's side: the tables a merge keeps and the key as text.

Every version of a key a producer published stays in ``_deltaferry_versions_<table>``
(``versions_table``); ``_deltaferry_chains`` records each producer's applied batches,
``_deltaferry_seen`` what each batch had seen of the other chains, ``_deltaferry_overrides``
the override log entries applied, ``_deltaferry_conflicts`` the conflict records
(``META``). Applying: ``merge.py``; the merge rule: ``resolve.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from deltaferry.delta import SEQ_COLUMN
from deltaferry.duck import ident, literal
from deltaferry.held import HELD_META

PRODUCER_COLUMN = "_producer"
HLC_COLUMN = "_hlc"
# what a replica table holds besides the published columns (every replica: _seq)
REPLICA_COLUMNS = frozenset({SEQ_COLUMN, PRODUCER_COLUMN, HLC_COLUMN})
OVERRIDE_PRODUCER = "override"

META = HELD_META + """
CREATE TABLE IF NOT EXISTS _deltaferry_chains (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL, producer VARCHAR NOT NULL, batch BIGINT NOT NULL,
    manifest_sha256 VARCHAR NOT NULL, hlc BIGINT NOT NULL, rows BIGINT NOT NULL,
    trace_id VARCHAR, contract_version INTEGER,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    caution VARCHAR,                  -- read partially (newer contract version): left out
    PRIMARY KEY (job, tbl, producer, batch)
);
-- (caution: added to older files by duck.add_columns, in replica.py)
CREATE TABLE IF NOT EXISTS _deltaferry_overrides (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL, n BIGINT NOT NULL, "key" VARCHAR NOT NULL,
    action VARCHAR NOT NULL,          -- pin | remove
    producer VARCHAR,                 -- pin to this producer's newest version of the key
    value_json VARCHAR,               -- or pin to this row (JSON object) ...
    is_delete BOOLEAN NOT NULL,       -- ... or to a delete
    by_whom VARCHAR, reason VARCHAR, created_at VARCHAR,
    sha256 VARCHAR,                   -- of the entry's bytes: the next entry names it
    PRIMARY KEY (job, tbl, n)
);
CREATE TABLE IF NOT EXISTS _deltaferry_conflicts (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL, "key" VARCHAR NOT NULL,
    winner_producer VARCHAR NOT NULL, winner_batch BIGINT, winner_hlc BIGINT,
    winner_op VARCHAR NOT NULL, winner_row VARCHAR,
    loser_producer VARCHAR NOT NULL, loser_batch BIGINT, loser_hlc BIGINT,
    loser_op VARCHAR NOT NULL, loser_row VARCHAR,
    rule VARCHAR NOT NULL,
    logical_at TIMESTAMPTZ            -- logical time of the winning version
);
-- the full logical timestamp (counter included) the record is ordered by
ALTER TABLE _deltaferry_conflicts ADD COLUMN IF NOT EXISTS logical_hlc BIGINT;
CREATE TABLE IF NOT EXISTS _deltaferry_seen (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL, producer VARCHAR NOT NULL, batch BIGINT NOT NULL,
    seen_producer VARCHAR NOT NULL,   -- the batch's manifest had seen this producer's chain ...
    seen_hlc BIGINT NOT NULL,         -- ... up to its batch stamped with this logical time
    PRIMARY KEY (job, tbl, producer, batch, seen_producer)
);
"""


def versions_table(table: str) -> str:
    return f"_deltaferry_versions_{table}"


_FLOATS = ("DOUBLE", "FLOAT", "REAL", "FLOAT4", "FLOAT8")


def key_expr(pk: list[str], alias: str = "", types: dict[str, str] | None = None) -> str:
    """The key as text: the value itself for a one-column key; for a composite key, a JSON
    array of the values as text (``["eu","7"]``), so that no two keys share a text.
    Timestamps render in UTC: the connection's TimeZone is set by ``keys_in_utc``.

    ``types`` (column -> DuckDB type, the versions table's: ``stored_key_types``) renders
    incoming values as the replica stores them: a producer that publishes a BIGINT key as
    DOUBLE sends ``1.0``, which is key ``1`` here, not a second key ``1.0`` that neither
    conflicts with nor replaces the first."""
    prefix = f"{alias}." if alias else ""
    types = types or {}

    def text(c: str) -> str:
        if c not in types:
            return f"CAST({prefix}{ident(c)} AS VARCHAR)"
        value = f"CAST({prefix}{ident(c)} AS {types[c]})"
        if types[c].upper() in _FLOATS:  # -0.0 equals 0.0 and prints as '-0.0': + 0 is 0.0
            value = f"({value} + 0)"
        return f"CAST({value} AS VARCHAR)"

    parts = [text(c) for c in pk]
    return parts[0] if len(parts) == 1 else f"CAST(to_json([{', '.join(parts)}]) AS VARCHAR)"


def key_text(pk: list[str], typed: str) -> str:
    """The key as the replica stores it, from what a person typed: a one-column key as is;
    a composite key as a JSON array of values, or as values joined by ',' when none of
    them holds a ','. Raises ValueError saying what is expected."""
    if len(pk) == 1:
        return typed
    if typed.lstrip().startswith("["):
        try:
            values = json.loads(typed)
        except ValueError:
            raise ValueError(f"the key {typed!r} is not a JSON array") from None
    else:
        values = typed.split(",")
    if not isinstance(values, list) or len(values) != len(pk):
        raise ValueError(
            f"the key has {len(pk)} columns ({', '.join(pk)}): give the values joined by ',' "
            'or as a JSON array such as ["eu", "7"]'
        )
    # as DuckDB's to_json writes it (``key_expr``): text beyond ASCII as is, not escaped
    return json.dumps([str(v) for v in values], separators=(",", ":"), ensure_ascii=False)


def json_member(column: str) -> str:
    """A JSON path member for ``column`` (``"name"``, embedded quotes escaped)."""
    return '"' + column.replace('"', '\\"') + '"'


def pinned_value_sql(column: str, duck_type: str, source: str = "a.value_json") -> str:
    """SQL for the value a value override's row (``source``: its JSON text) gives
    ``column``, as the replica column's ``duck_type``; NULL where the row gives NULL or
    nothing. Only rows ``unfit_pinned_values`` passes are cast this way."""
    return f"CAST(json_extract_string({source}, {literal('$.' + json_member(column))}) AS {duck_type})"


# the JSON kinds a value override may give a column of each DuckDB type family (json_type):
# a number is no text, text no number, true no 1, so what is pinned is what was typed
_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
             "UINTEGER", "UBIGINT", "UHUGEINT")  # fmt: skip
_KINDS = {
    **{t: ("BIGINT", "UBIGINT") for t in _INTEGERS},
    "BOOLEAN": ("BOOLEAN",),
    "FLOAT": ("BIGINT", "UBIGINT", "DOUBLE"),
    "DOUBLE": ("BIGINT", "UBIGINT", "DOUBLE"),
    "DECIMAL": ("BIGINT", "UBIGINT", "DOUBLE", "VARCHAR"),
    "VARCHAR": ("VARCHAR",),
    **{t: ("VARCHAR",) for t in ("TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S")},
    "DATE": ("VARCHAR",),
    "TIME": ("VARCHAR",),
}


def unfit_pinned_values(
    con: duckdb.DuckDBPyConnection,
    rows_sql: str,
    types: dict[str, str],
    params: list[Any] | None = None,
    *,
    strict: bool = False,
) -> list[tuple[Any, str, str]]:
    """The values of value overrides that a replica column cannot hold exactly:
    ``[(n, column, the JSON value as typed)]`` for the rows of ``rows_sql`` (columns ``n``
    and ``value_json``), against ``types`` (``{column: DuckDB type}`` of the replica, key
    columns left out). Unfit: a value the type cannot hold (``true`` or ``1e30`` for a
    BIGINT, ``"noon"`` or ``12345`` for a timestamp), or one it would round (``3.5`` for an
    integer, ``1.005`` for a ``DECIMAL(10,2)``). ``strict`` (when an override is written):
    also a JSON kind the column's type does not take (``"5"`` or ``5.0`` for an integer,
    ``5`` for text). NULL and absent members are fit (a NULL)."""
    out: list[tuple[Any, str, str]] = []
    for column, duck_type in types.items():
        path = literal("$." + json_member(column))
        family = duck_type.split("(")[0].split(" ")[0]
        kinds = _KINDS.get(family)
        kind = f"json_type(value_json, {path})"
        text = f"json_extract_string(value_json, {path})"
        cast = f"TRY_CAST({text} AS {duck_type})"
        wrong = [f"{cast} IS NULL"]
        if strict and kinds is not None:
            wrong.append(f"{kind} NOT IN ({', '.join(literal(k) for k in kinds)})")
        if family in (*_INTEGERS, "DECIMAL"):  # rounded on the way in
            wrong.append(f"TRY_CAST({text} AS DOUBLE) IS DISTINCT FROM CAST({cast} AS DOUBLE)")
        out += con.execute(
            f"SELECT n, {literal(column)}, CAST(json_extract(value_json, {path}) AS VARCHAR)"
            f" FROM ({rows_sql}) WHERE value_json IS NOT NULL AND {kind} IS NOT NULL"
            f" AND {kind} <> 'NULL' AND ({' OR '.join(wrong)}) ORDER BY n",
            params,
        ).fetchall()
    return out


RESERVED = frozenset(
    {"_key", "_batch", "_row", "_rank", "_rank_in_producer", "_rule", "_override", "_multi"}
    | {"_lo", "_hi", PRODUCER_COLUMN, HLC_COLUMN}
)


def keys_in_utc(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("SET TimeZone = 'UTC'")


@dataclass(frozen=True)
class TableShape:
    job: str
    table: str
    pk: list[str]

    @property
    def versions(self) -> str:
        return ident(versions_table(self.table))
