"""Merging the chains of several producers of one table into a replica, with conflicts.

Every change a producer publishes is a *version* of its key: the row (or a delete),
the producer id, and the batch's hybrid logical timestamp (``deltaferry/hlc.py``).
The replica keeps every version it has applied (``_deltaferry_versions_<table>``) and
the table itself holds, for each key, the winner among them:

1. a manual override pins the key first: to a producer's newest version of it, or to
   a value (or a delete) given with the override;
2. otherwise the version with the higher (logical timestamp, producer id) wins;
3. a delete is a version like any other: an older update arriving late never brings a
   deleted key back.

A *conflict* is a concurrent edit: in that order, one producer's version of a key is
followed by a different version from another producer that had **not seen** it. Each
batch records what its producer had seen of the other chains when it stamped the batch
(the manifest's ``hlc_seen``: producer -> the logical timestamp of that chain's newest
batch); a later version has seen an earlier one when its batch's ``hlc_seen`` for the
earlier producer is at or after the earlier version's timestamp. A version that had seen
the one it replaces is a *hand-off* (a site taking over a key another site had already
published): it wins as always, and no conflict is recorded. Batches applied without
``hlc_seen`` (published or pulled before it was recorded) count as having seen nothing.
(Two producers sending the same row, or both a delete, do not conflict.) With an override
in force, the version it pins over the automatic winner is one more record. Winners and
conflicts are computed from the set of versions, what their batches had seen, and
overrides alone, so every arrival order of the same batches, and applying a batch twice,
give the same table and the same conflict records; batches that do not touch a key never
change its winner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from deltaferry.delta import OP_COLUMN, SEQ_COLUMN
from deltaferry.duck import column_types, duck_type, fetch_one, fetch_row, ident

PRODUCER_COLUMN = "_producer"
HLC_COLUMN = "_hlc"
# what a replica table holds besides the published columns (every replica: _seq)
REPLICA_COLUMNS = frozenset({SEQ_COLUMN, PRODUCER_COLUMN, HLC_COLUMN})
OVERRIDE_PRODUCER = "override"

HELD_META = """
-- rows a reader held back from an applied batch (readers.py: Reading.admit), under the
-- reader contract ref and fingerprint; read again when either changes (or on request)
CREATE TABLE IF NOT EXISTS _deltaferry_held (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL,
    producer VARCHAR NOT NULL,        -- '' for a single producer's chain
    batch BIGINT NOT NULL, rows BIGINT NOT NULL,
    ref VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL,
    PRIMARY KEY (job, tbl, producer, batch)
);
"""

META = HELD_META + """
CREATE TABLE IF NOT EXISTS _deltaferry_chains (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL, producer VARCHAR NOT NULL, batch BIGINT NOT NULL,
    manifest_sha256 VARCHAR NOT NULL, hlc BIGINT NOT NULL, rows BIGINT NOT NULL,
    trace_id VARCHAR, contract_version INTEGER,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    caution VARCHAR,                  -- read partially (newer contract version): left out
    PRIMARY KEY (job, tbl, producer, batch)
);
ALTER TABLE _deltaferry_chains ADD COLUMN IF NOT EXISTS caution VARCHAR;
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


def key_expr(pk: list[str], alias: str = "") -> str:
    """The key as text: the value itself for a one-column key; for a composite key, a JSON
    array of the values as text (``["eu","7"]``), so that no two keys share a text.
    Timestamps render in UTC: the connection's TimeZone is set by ``keys_in_utc``."""
    prefix = f"{alias}." if alias else ""
    parts = [f"CAST({prefix}{ident(c)} AS VARCHAR)" for c in pk]
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
    return json.dumps([str(v) for v in values], separators=(",", ":"))


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


def _ensure_tables(con: duckdb.DuckDBPyConnection, shape: TableShape, data: pa.Table) -> bool:
    """Create the table and its versions table, or add the columns this batch brings.
    True if columns were added to an existing table."""
    from deltaferry.errors import ConfigError, VerificationError

    clash = sorted(RESERVED & set(data.column_names))
    if clash:
        raise VerificationError(
            f"job '{shape.job}' table '{shape.table}': column(s) {', '.join(clash)} are reserved "
            "for merging several producers; rename them in the source or the contract"
        )
    existing = column_types(con, shape.table)
    if existing and PRODUCER_COLUMN not in existing:
        raise ConfigError(
            f"job '{shape.job}' table '{shape.table}': this replica's table was pulled from a "
            "single producer's chain; pull a job with multi_producer into a new replica"
        )
    added = False
    fields = [f for f in data.schema if f.name != OP_COLUMN]
    pk = ", ".join(ident(c) for c in shape.pk)
    for name, extra, key in (
        (shape.table, [(PRODUCER_COLUMN, "VARCHAR"), (HLC_COLUMN, "BIGINT")], pk),
        (
            versions_table(shape.table),
            [
                (OP_COLUMN, "VARCHAR"),
                (PRODUCER_COLUMN, "VARCHAR"),
                (HLC_COLUMN, "BIGINT"),
                ("_batch", "BIGINT"),
                ("_key", "VARCHAR"),
            ],
            # no key: a (producer, batch) is inserted once, guarded by _deltaferry_chains in
            # the same transaction; an index here made the first batch of a table 2x slower
            None,
        ),
    ):
        have = column_types(con, name)
        if not have:
            defs = [f"{ident(f.name)} {duck_type(f)}" for f in fields]
            defs += [f"{ident(c)} {t}" for c, t in extra]
            if key:
                defs.append(f"PRIMARY KEY ({key})")
            con.execute(f"CREATE TABLE {ident(name)} ({', '.join(defs)})")
            continue
        for f in fields:
            if f.name not in have:
                con.execute(f"ALTER TABLE {ident(name)} ADD COLUMN {ident(f.name)} {duck_type(f)}")
                added = True
    return added


def applied(
    con: duckdb.DuckDBPyConnection, job: str, table: str, producer: str
) -> tuple[int, str | None, int | None]:
    """(last batch, its manifest sha256, its logical timestamp) of a producer's chain here."""
    row = fetch_one(
        con,
        "SELECT batch, manifest_sha256, hlc FROM _deltaferry_chains WHERE job = ? AND tbl = ?"
        " AND producer = ? ORDER BY batch DESC LIMIT 1",
        [job, table, producer],
    )
    return (row[0], row[1], row[2]) if row else (0, None, None)


def _begin_unless(con: duckdb.DuckDBPyConnection, done_sql: str, params: list[Any]) -> bool:
    """Open a transaction (keys in UTC) unless ``done_sql`` finds the item already applied."""
    keys_in_utc(con)
    con.execute("BEGIN TRANSACTION")
    try:
        done = fetch_one(con, done_sql, params)
    except BaseException:
        con.execute("ROLLBACK")
        raise
    if done:
        con.execute("ROLLBACK")
        return False
    return True


def apply_batch(
    con: duckdb.DuckDBPyConnection,
    shape: TableShape,
    producer: str,
    batch: int,
    hlc: int,
    data: pa.Table,
    *,
    manifest_sha256: str = "",
    trace_id: str | None = None,
    contract_version: int | None = None,
    caution: str | None = None,
    seen: dict[str, int] | None = None,
    held: tuple[int, str, str] | None = None,
) -> bool:
    """Apply one producer batch and its record in one transaction; False if already applied.

    ``hlc`` is the batch's logical timestamp; ``seen`` its manifest's ``hlc_seen`` (other
    producer id -> the logical timestamp of that chain's newest batch when this one was
    stamped), which decides whether a version it replaces is a conflict or a hand-off;
    None counts as having seen nothing. ``held``: (rows the reader held back from it, the
    reader contract's ref and fingerprint), recorded in ``_deltaferry_held`` in the same
    transaction. A batch read file by file uses ``begin_batch`` / ``add_versions`` /
    ``finish_batch`` instead (what this does, in three steps)."""
    if not begin_batch(con, shape, producer, batch):
        return False
    try:
        added = add_versions(con, shape, producer, batch, hlc, data)
        finish_batch(
            con, shape, producer, batch, hlc, data.num_rows, added,
            manifest_sha256=manifest_sha256, trace_id=trace_id,
            contract_version=contract_version, caution=caution, seen=seen, held=held,
        )
        return True
    except BaseException:
        con.execute("ROLLBACK")
        raise


def begin_batch(con: duckdb.DuckDBPyConnection, shape: TableShape, producer: str, batch: int) -> bool:
    """Open the transaction of a producer batch (keys in UTC), with an empty set of touched
    keys; False (nothing open) if the batch is already applied."""
    if not _begin_unless(
        con,
        "SELECT 1 FROM _deltaferry_chains WHERE job = ? AND tbl = ? AND producer = ? AND batch = ?",
        [shape.job, shape.table, producer, batch],
    ):
        return False
    con.execute("CREATE OR REPLACE TEMP TABLE _deltaferry_touched (_key VARCHAR)")
    return True


def add_versions(
    con: duckdb.DuckDBPyConnection,
    shape: TableShape,
    producer: str,
    batch: int,
    hlc: int,
    data: pa.Table,
) -> bool:
    """Add a batch's rows (all, or one file of them) as versions, and their keys to the
    touched keys, inside the transaction ``begin_batch`` opened. True if the table gained
    columns."""
    added = _ensure_tables(con, shape, data)
    con.register("_deltaferry_incoming", data)
    try:
        col_list = ", ".join(ident(c) for c in data.column_names)
        con.execute(
            f"INSERT INTO {shape.versions}"
            f" ({col_list}, {ident(PRODUCER_COLUMN)}, {ident(HLC_COLUMN)},"
            f' "_batch", "_key") SELECT {col_list}, ?, ?, ?, {key_expr(shape.pk)} FROM _deltaferry_incoming',
            [producer, hlc, batch],
        )
        con.execute(
            f"INSERT INTO _deltaferry_touched SELECT DISTINCT {key_expr(shape.pk)}"
            " FROM _deltaferry_incoming"
        )
    finally:
        con.unregister("_deltaferry_incoming")
    return added


def finish_batch(
    con: duckdb.DuckDBPyConnection,
    shape: TableShape,
    producer: str,
    batch: int,
    hlc: int,
    rows: int,
    added: bool,
    *,
    manifest_sha256: str = "",
    trace_id: str | None = None,
    contract_version: int | None = None,
    caution: str | None = None,
    seen: dict[str, int] | None = None,
    held: tuple[int, str, str] | None = None,
) -> None:
    """Resolve the touched keys, record the batch (``rows`` applied; ``added``: the table
    gained columns, so keys pinned by an override take them too) and commit."""
    if added:  # a value pinned by an override takes the new columns too
        con.execute(
            "INSERT INTO _deltaferry_touched SELECT DISTINCT key FROM _deltaferry_overrides"
            " WHERE job = ? AND tbl = ? AND key NOT IN (SELECT _key FROM _deltaferry_touched)",
            [shape.job, shape.table],
        )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _deltaferry_touched AS SELECT DISTINCT _key"
        " FROM _deltaferry_touched"
    )
    for other, stamp in sorted((seen or {}).items()):
        if other != producer:
            con.execute(
                "INSERT INTO _deltaferry_seen VALUES (?, ?, ?, ?, ?, ?)",
                [shape.job, shape.table, producer, batch, other, int(stamp)],
            )
    if column_types(con, shape.table):  # a batch of no rows creates no table
        resolve(con, shape)
    con.execute(
        "INSERT INTO _deltaferry_chains (job, tbl, producer, batch, manifest_sha256, hlc, rows,"
        " trace_id, contract_version, caution) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            shape.job,
            shape.table,
            producer,
            batch,
            manifest_sha256,
            hlc,
            rows,
            trace_id,
            contract_version,
            caution,
        ],
    )
    if held is not None:
        record_held(con, shape.job, shape.table, producer, batch, *held)
    con.execute("COMMIT")


def record_held(
    con: duckdb.DuckDBPyConnection,
    job: str,
    table: str,
    producer: str,
    batch: int,
    rows: int,
    ref: str,
    fingerprint: str,
) -> None:
    """Record (``rows`` > 0) or clear (0) the rows a reader held back from an applied batch
    (``producer`` '' for a single producer's chain), inside the caller's transaction."""
    con.execute(
        "DELETE FROM _deltaferry_held WHERE job = ? AND tbl = ? AND producer = ? AND batch = ?",
        [job, table, producer, batch],
    )
    if rows:
        con.execute(
            "INSERT INTO _deltaferry_held VALUES (?, ?, ?, ?, ?, ?, ?)",
            [job, table, producer, batch, rows, ref, fingerprint],
        )


def apply_held(
    con: duckdb.DuckDBPyConnection, shape: TableShape, producer: str, batch: int, hlc: int,
    data: pa.Table,
) -> int:
    """Add the versions of an applied batch that the replica does not have yet (rows a
    reader held back, read again as ``data``) and re-resolve their keys, inside the
    caller's transaction. Returns how many versions were added. Winners depend only on
    the set of versions, so a version added late gives the table it would have had."""
    _ensure_tables(con, shape, data)
    con.register("_deltaferry_incoming", data)
    try:
        key = key_expr(shape.pk)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _deltaferry_touched AS SELECT DISTINCT {key} AS _key"
            f" FROM _deltaferry_incoming WHERE {key} NOT IN (SELECT _key FROM {shape.versions}"
            f" WHERE {ident(PRODUCER_COLUMN)} = ? AND _batch = ?)",
            [producer, batch],
        )
        cols = ", ".join(ident(c) for c in data.column_names)
        con.execute(
            f"INSERT INTO {shape.versions} ({cols}, {ident(PRODUCER_COLUMN)}, {ident(HLC_COLUMN)},"
            f' "_batch", "_key") SELECT {cols}, ?, ?, ?, {key} FROM _deltaferry_incoming'
            f" WHERE {key} IN (SELECT _key FROM _deltaferry_touched)",
            [producer, hlc, batch],
        )
    finally:
        con.unregister("_deltaferry_incoming")
    added = fetch_row(con, "SELECT count(*) FROM _deltaferry_touched")[0]
    if added:
        resolve(con, shape)
    return int(added)


def apply_override(
    con: duckdb.DuckDBPyConnection, shape: TableShape, entry: dict[str, Any]
) -> bool:
    """Record one entry of the lake's override log and re-resolve its key; False if known."""
    if not _begin_unless(
        con,
        "SELECT 1 FROM _deltaferry_overrides WHERE job = ? AND tbl = ? AND n = ?",
        [shape.job, shape.table, entry["n"]],
    ):
        return False
    try:
        value = entry.get("value")
        con.execute(
            "INSERT INTO _deltaferry_overrides VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                shape.job,
                shape.table,
                entry["n"],
                entry["key"],
                entry["action"],
                entry.get("producer"),
                None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":")),
                bool(entry.get("delete")),
                entry.get("by"),
                entry.get("reason"),
                entry.get("created_at"),
                entry.get("sha256"),
            ],
        )
        if column_types(con, versions_table(shape.table)):
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _deltaferry_touched AS SELECT ? AS _key",
                [entry["key"]],
            )
            resolve(con, shape)
        con.execute("COMMIT")
        return True
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _active_overrides_sql(shape: TableShape) -> str:
    # the newest entry of each key decides; a 'remove' entry ends the override
    return (
        "SELECT * FROM (SELECT o.*, row_number() OVER (PARTITION BY o.key ORDER BY o.n DESC) AS rn"
        f" FROM _deltaferry_overrides o WHERE o.job = '{_esc(shape.job)}'"
        f" AND o.tbl = '{_esc(shape.table)}' AND o.key IN (SELECT _key FROM _deltaferry_touched))"
        " WHERE rn = 1 AND action = 'pin'"
    )


def _esc(s: str) -> str:
    return s.replace("'", "''")


def resolve(con: duckdb.DuckDBPyConnection, shape: TableShape) -> None:
    """Recompute winners and conflict records of the keys in the temp table ``_deltaferry_touched``."""
    table_cols = column_types(con, shape.table)
    data_cols = [c for c in table_cols if c not in (PRODUCER_COLUMN, HLC_COLUMN)]
    v = shape.versions
    # what a person compares: the row's own columns as JSON, in name order and without
    # NULLs, so the text does not depend on the order columns were added; a delete is NULL
    shown = ", ".join(
        f"CASE WHEN {ident(c)} IS NOT NULL THEN '{_esc(json.dumps(c))}:' ||"
        f" CAST(to_json({ident(c)}) AS VARCHAR) END"
        for c in sorted(data_cols)
        if c != SEQ_COLUMN
    )
    row_json = (
        f"CASE WHEN {ident(OP_COLUMN)} = 'delete' THEN NULL ELSE '{{' || concat_ws(',', {shown})"
        " || '}' END"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _deltaferry_active AS {_active_overrides_sql(shape)}"
    )
    # rows are rendered as JSON (for conflict records) only where a conflict can be: keys
    # with versions from more than one producer, or under an override
    p = ident(PRODUCER_COLUMN)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _deltaferry_ranked AS SELECT * EXCLUDE (_lo, _hi), _lo <> _hi AS _multi,"
        f" CASE WHEN _lo <> _hi OR _key IN (SELECT key FROM _deltaferry_active) THEN {row_json} END AS _row"
        f" FROM (SELECT *,"
        f" row_number() OVER (PARTITION BY _key ORDER BY {ident(HLC_COLUMN)} DESC, {p} DESC)"
        f" AS _rank,"
        f" row_number() OVER (PARTITION BY _key, {p} ORDER BY {ident(HLC_COLUMN)} DESC)"
        f" AS _rank_in_producer,"
        f" min({p}) OVER (PARTITION BY _key) AS _lo, max({p}) OVER (PARTITION BY _key) AS _hi"
        f" FROM {v} WHERE _key IN (SELECT _key FROM _deltaferry_touched))"
    )
    # the winner of each touched key: a pinned producer's newest version, a pinned value,
    # or the automatic winner
    value_cols = ", ".join(
        f"CAST(json_extract_string(a.value_json, '$.{_json_path(c)}') AS {table_cols[c]})"
        f" AS {ident(c)}"
        if c not in shape.pk
        else f"r.{ident(c)}"
        for c in data_cols
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _deltaferry_winners AS
        SELECT r.* EXCLUDE (_rank, _rank_in_producer, _multi), 'pinned to producer ' || a.producer
               || ' by override #' || a.n AS _rule, a.n AS _override
        FROM _deltaferry_ranked r JOIN _deltaferry_active a ON a.key = r._key
        WHERE a.producer IS NOT NULL AND r.{ident(PRODUCER_COLUMN)} = a.producer
              AND r._rank_in_producer = 1
        UNION ALL BY NAME
        SELECT {value_cols}, CASE WHEN a.is_delete THEN 'delete' ELSE 'upsert' END AS {ident(OP_COLUMN)},
               '{OVERRIDE_PRODUCER}' AS {ident(PRODUCER_COLUMN)},
               NULL::BIGINT AS {ident(HLC_COLUMN)},
               NULL::BIGINT AS _batch, r._key, a.value_json AS _row,
               'value set by override #' || a.n AS _rule, a.n AS _override
        FROM (SELECT * FROM _deltaferry_ranked WHERE _rank = 1) r JOIN _deltaferry_active a ON a.key = r._key
        WHERE a.producer IS NULL
        """
    )
    con.execute(
        """
        INSERT INTO _deltaferry_winners BY NAME
        SELECT r.* EXCLUDE (_rank, _rank_in_producer, _multi), 'automatic' AS _rule, NULL AS _override
        FROM _deltaferry_ranked r WHERE r._rank = 1 AND r._key NOT IN (SELECT _key FROM _deltaferry_winners)
        """
    )
    match = " AND ".join(f"t.{ident(c)} = w.{ident(c)}" for c in shape.pk)
    con.execute(
        f"DELETE FROM {ident(shape.table)} t WHERE EXISTS (SELECT 1 FROM _deltaferry_ranked w WHERE {match})"
    )
    out_cols = ", ".join(ident(c) for c in [*data_cols, PRODUCER_COLUMN, HLC_COLUMN])
    con.execute(
        f"INSERT INTO {ident(shape.table)} ({out_cols}) SELECT {out_cols} FROM _deltaferry_winners"
        f" WHERE {ident(OP_COLUMN)} = 'upsert'"
    )
    _record_conflicts(con, shape)


def _json_path(column: str) -> str:
    """A JSON path member for ``column``, ready to go inside a SQL string literal."""
    return _esc('"' + column.replace('"', '\\"') + '"')


def _record_conflicts(con: duckdb.DuckDBPyConnection, shape: TableShape) -> None:
    job, table = _esc(shape.job), _esc(shape.table)
    p, h = ident(PRODUCER_COLUMN), ident(HLC_COLUMN)
    op = ident(OP_COLUMN)
    con.execute(
        f"DELETE FROM _deltaferry_conflicts WHERE job = '{job}' AND tbl = '{table}'"
        " AND key IN (SELECT _key FROM _deltaferry_touched)"
    )
    # one producer's version followed, in (logical time, producer) order, by another
    # producer's that had not seen it (its batch's hlc_seen for that producer is older, or
    # absent): a concurrent edit. One that had seen it is a hand-off, not a conflict.
    con.execute(
        f"""
        INSERT INTO _deltaferry_conflicts
        SELECT '{job}', '{table}', x._key, x.{p}, x._batch, x.{h}, x.{op}, x._row,
               x.prev_producer, x.prev_batch, x.prev_hlc, x.prev_op, x.prev_row,
               CASE WHEN x.{h} > x.prev_hlc THEN 'later logical time'
                    ELSE 'same logical time: higher producer id' END,
               to_timestamp((x.{h} >> 16) / 1000.0), x.{h}
        FROM (
            SELECT _key, {p}, _batch, {h}, {op}, _row,
                   lag({p}) OVER w AS prev_producer, lag(_batch) OVER w AS prev_batch,
                   lag({h}) OVER w AS prev_hlc, lag({op}) OVER w AS prev_op,
                   lag(_row) OVER w AS prev_row
            FROM _deltaferry_ranked WHERE _multi WINDOW w AS (PARTITION BY _key ORDER BY {h}, {p})
        ) x
        LEFT JOIN _deltaferry_seen s ON s.job = '{job}' AND s.tbl = '{table}'
             AND s.producer = x.{p} AND s.batch = x._batch AND s.seen_producer = x.prev_producer
        WHERE x.prev_producer IS NOT NULL AND x.prev_producer <> x.{p}
              AND NOT (x.{op} = x.prev_op AND x._row IS NOT DISTINCT FROM x.prev_row)
              AND (s.seen_hlc IS NULL OR s.seen_hlc < x.prev_hlc)
        """
    )
    # an override in force: what it pins, over the automatic winner it replaced
    con.execute(
        f"""
        INSERT INTO _deltaferry_conflicts
        SELECT '{job}', '{table}', w._key, w.{p}, w._batch, w.{h}, w.{op}, w._row,
               r.{p}, r._batch, r.{h}, r.{op}, r._row,
               'manual override #' || w._override || coalesce(' by ' || a.by_whom, '')
                   || coalesce(': ' || a.reason, ''),
               to_timestamp(((SELECT max({h}) FROM _deltaferry_ranked x WHERE x._key = w._key) >> 16) / 1000.0),
               (SELECT max({h}) FROM _deltaferry_ranked x WHERE x._key = w._key)
        FROM _deltaferry_winners w JOIN _deltaferry_ranked r ON r._key = w._key AND r._rank = 1
             JOIN _deltaferry_active a ON a.key = w._key
        WHERE w._override IS NOT NULL
              AND NOT (w.{p} = r.{p} AND w._batch IS NOT DISTINCT FROM r._batch)
        """
    )


def conflict_rows(
    con: duckdb.DuckDBPyConnection, job: str, table: str | None = None
) -> list[tuple]:
    """Every conflict record of the job (or one table), in a stable order: tuples of
    (table, key, winner producer, batch, logical timestamp, op, row JSON, the same five of
    the loser, rule, logical_at (the winner's wall-clock part, a UTC datetime), logical
    timestamp the record is ordered by (counter included; ``newest``))."""
    where = "job = ?" + (" AND tbl = ?" if table else "")
    return con.execute(
        "SELECT tbl, key, winner_producer, winner_batch, winner_hlc, winner_op, winner_row,"
        " loser_producer, loser_batch, loser_hlc, loser_op, loser_row, rule, logical_at,"
        " coalesce(logical_hlc, winner_hlc, CAST(epoch_ms(logical_at) AS BIGINT) << 16)"
        f" FROM _deltaferry_conflicts WHERE {where}"
        " ORDER BY tbl, key, winner_hlc NULLS LAST, winner_producer, loser_hlc, loser_producer, rule",
        [job, table] if table else [job],
    ).fetchall()


def newest(rows: list[tuple], limit: int) -> list[tuple]:
    """The ``limit`` newest of ``conflict_rows`` by full logical time, counter included
    (two records in the same millisecond order by their counters); ties by table, key."""
    return sorted(
        rows,
        key=lambda r: (r[14] is not None, r[14] or 0, r[0], r[1]),
        reverse=True,
    )[:limit]


def hotspots(
    con: duckdb.DuckDBPyConnection, job: str, limit: int = 10
) -> dict[str, list[tuple[Any, ...]]]:
    """Where conflicts concentrate: tables, keys, producer pairs, and days (by logical time)."""
    queries = {
        "tables": "SELECT tbl, count(*) AS n FROM _deltaferry_conflicts WHERE job = ?"
        " GROUP BY tbl ORDER BY n DESC, tbl",
        "keys": "SELECT tbl, key, count(*) AS n FROM _deltaferry_conflicts WHERE job = ?"
        " GROUP BY tbl, key ORDER BY n DESC, tbl, key",
        "producer pairs": "SELECT least(winner_producer, loser_producer) || ' / ' ||"
        " greatest(winner_producer, loser_producer) AS pair, count(*) AS n"
        " FROM _deltaferry_conflicts WHERE job = ? GROUP BY pair ORDER BY n DESC, pair",
        "days": "SELECT strftime(logical_at AT TIME ZONE 'UTC', '%Y-%m-%d') AS day, count(*) AS n"
        " FROM _deltaferry_conflicts WHERE job = ? GROUP BY day ORDER BY day DESC",
    }
    return {
        name: con.execute(f"{q} LIMIT {int(limit)}", [job]).fetchall()
        for name, q in queries.items()
    }


def has_conflict_table(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(column_types(con, "_deltaferry_conflicts"))


def conflicts_markdown(
    con: duckdb.DuckDBPyConnection, job: str, limit: int = 10, level: int = 1
) -> str:
    """The conflicts of a replica as Markdown: hotspots first, then the newest records;
    ``level`` is the heading level of its title."""
    title = "#" * level + f" Conflicts of job `{job}`"
    rows = conflict_rows(con, job)
    if not rows:
        return f"{title}\n\nNo conflicts recorded.\n"
    lines = [title, "", f"{len(rows)} conflict records.", ""]
    for name, found in hotspots(con, job, limit).items():
        lines += [f"## Hotspots: {name}", "", "| " + name + " | conflicts |", "|---|---:|"]
        lines += [f"| {' '.join(str(x) for x in r[:-1])} | {r[-1]} |" for r in found]
        lines.append("")
    lines += [
        "## Newest records",
        "",
        "| table | key | winner | loser | rule |",
        "|---|---|---|---|---|",
    ]
    for r in newest(rows, limit):
        lines.append(
            f"| {r[0]} | {r[1]} | {version_text(r[2], r[3], r[5], r[6])} |"
            f" {version_text(r[7], r[8], r[10], r[11])} | {r[12]} |"
        )
    return "\n".join(lines) + "\n"


def version_text(producer: str, batch: int | None, op: str, row: str | None) -> str:
    where = producer if batch is None else f"{producer}#{batch}"
    return f"{where} deleted" if op == "delete" else f"{where} {row}"
