"""Several producers: the merge rule, each touched key's winner and its conflict records.

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

Applying a batch (``merge.py``) adds its versions and calls ``resolve`` for the keys it
touched; the tables are in ``merge_tables.py``.
"""

from __future__ import annotations

import json

import duckdb

from deltaferry.delta import OP_COLUMN, SEQ_COLUMN
from deltaferry.duck import column_types, fetch_one, fetch_row, fit_memory_limit, ident, literal
from deltaferry.errors import TerminalError
from deltaferry.failpoints import bug
from deltaferry.merge_tables import (
    HLC_COLUMN,
    OVERRIDE_PRODUCER,
    PRODUCER_COLUMN,
    TableShape,
    pinned_value_sql,
    unfit_pinned_values,
)


class OverrideUnfit(TerminalError):
    """A value override in force pins a value the replica's column cannot hold exactly."""


def _active_overrides_sql(shape: TableShape) -> str:
    # the newest entry of each key decides; a 'remove' entry ends the override
    if bug("overrides_ignored"):  # the simulator's teeth (failpoints.BUGS)
        return "SELECT * FROM _deltaferry_overrides WHERE false"
    return (
        "SELECT * FROM (SELECT o.*, row_number() OVER (PARTITION BY o.key ORDER BY o.n DESC) AS rn"
        f" FROM _deltaferry_overrides o WHERE o.job = {literal(shape.job)}"
        f" AND o.tbl = {literal(shape.table)} AND o.key IN (SELECT _key FROM _deltaferry_touched))"
        " WHERE rn = 1 AND action = 'pin'"
    )


def resolve(con: duckdb.DuckDBPyConnection, shape: TableShape) -> None:
    """Recompute winners and conflict records of the keys in the temp table ``_deltaferry_touched``."""
    table_cols = column_types(con, shape.table)
    data_cols = [c for c in table_cols if c not in (PRODUCER_COLUMN, HLC_COLUMN)]
    v = shape.versions
    # what a person compares: the row's own columns as JSON, in name order and without
    # NULLs, so the text does not depend on the order columns were added; a delete is NULL
    shown = ", ".join(
        f"CASE WHEN {ident(c)} IS NOT NULL THEN {literal(json.dumps(c) + ':')} ||"
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
    rule = f"{ident(HLC_COLUMN)} DESC, {p} DESC"
    if bug("merge_by_arrival"):  # the simulator's teeth (failpoints.BUGS)
        rule = "rowid DESC"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _deltaferry_ranked AS SELECT * EXCLUDE (_lo, _hi), _lo <> _hi AS _multi,"
        f" CASE WHEN _lo <> _hi OR _key IN (SELECT key FROM _deltaferry_active) THEN {row_json} END AS _row"
        f" FROM (SELECT *,"
        f" row_number() OVER (PARTITION BY _key ORDER BY {rule})"
        f" AS _rank,"
        f" row_number() OVER (PARTITION BY _key, {p} ORDER BY {ident(HLC_COLUMN)} DESC)"
        f" AS _rank_in_producer,"
        f" min({p}) OVER (PARTITION BY _key) AS _lo, max({p}) OVER (PARTITION BY _key) AS _hi"
        f" FROM {v} WHERE _key IN (SELECT _key FROM _deltaferry_touched))"
    )
    # the winner of each touched key: a pinned producer's newest version, a pinned value,
    # or the automatic winner
    _refuse_unfit_pins(con, shape, {c: table_cols[c] for c in data_cols if c not in shape.pk})
    value_cols = ", ".join(
        f"{pinned_value_sql(c, table_cols[c])} AS {ident(c)}"
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
    _refuse_two_winners(con, shape)
    match = " AND ".join(f"t.{ident(c)} = w.{ident(c)}" for c in shape.pk)
    fit_memory_limit(con)
    con.execute(
        f"DELETE FROM {ident(shape.table)} t WHERE EXISTS (SELECT 1 FROM _deltaferry_ranked w WHERE {match})"
    )
    out_cols = ", ".join(ident(c) for c in [*data_cols, PRODUCER_COLUMN, HLC_COLUMN])
    con.execute(
        f"INSERT INTO {ident(shape.table)} ({out_cols}) SELECT {out_cols} FROM _deltaferry_winners"
        f" WHERE {ident(OP_COLUMN)} = 'upsert'"
    )
    _record_conflicts(con, shape)


def _refuse_two_winners(con: duckdb.DuckDBPyConnection, shape: TableShape) -> None:
    """Raise ``TerminalError`` (one line naming job, table and key) when two winners of the
    touched keys have one key's values: two key texts for one key, which the table would
    then hold twice. What a PRIMARY KEY on the table guarded, checked on the touched keys
    alone (memory bounded by the batch; the tables have none: ``merge._ensure_tables``).
    Key texts are the values as the stored types (``merge_tables.key_expr``), so this
    finds a replica whose versions were stored by a deltaferry that rendered a producer's
    ``1.0`` as a key of its own; nothing of the batch is applied (the caller's
    transaction rolls back)."""
    keys = ", ".join(ident(c) for c in shape.pk)
    upserts = f"FROM _deltaferry_winners WHERE {ident(OP_COLUMN)} = 'upsert'"
    # a grouped count spills to disk; a list aggregate over every winner would not
    twice = fetch_one(con, f"SELECT {keys} {upserts} GROUP BY ALL HAVING count(*) > 1 LIMIT 1")
    if twice is None:
        return
    same = " AND ".join(f"{ident(c)} IS NOT DISTINCT FROM ?" for c in shape.pk)
    texts = [t for (t,) in con.execute(
        f"SELECT _key {upserts} AND {same} ORDER BY _key", list(twice)
    ).fetchall()]
    shown = ", ".join(f"{c}={v!r}" for c, v in zip(shape.pk, twice, strict=True))
    raise TerminalError(
        f"job '{shape.job}' table '{shape.table}': key {shown} has {len(texts)} winners under "
        f"different key texts ({', '.join(repr(k) for k in texts)}): versions of it were "
        "stored under more than one text, so the table would hold the key twice; nothing of "
        "the batch was applied. Pull the job into a new replica (its versions are stored "
        "under one text each)"
    )


def _refuse_unfit_pins(con: duckdb.DuckDBPyConnection, shape: TableShape, types: dict[str, str]) -> None:
    """Raise ``OverrideUnfit`` (one line) when a value override in force for a touched key
    gives a column a value the replica's column cannot hold exactly (written by hand, or by
    a deltaferry that did not check it): the key would get a value nobody typed, or none.
    Nothing is applied; a later entry for the key (``--remove``, or another pin) lets it go."""
    # most resolves have no value pin in force: no per-column query for them
    if not fetch_row(con, "SELECT count(*) FROM _deltaferry_active WHERE value_json IS NOT NULL")[0]:
        return
    unfit = unfit_pinned_values(con, "SELECT n, value_json FROM _deltaferry_active", types)
    if not unfit:
        return
    n, column, value = min(unfit)  # the oldest entry first, as the log orders them
    key = fetch_row(con, "SELECT key FROM _deltaferry_active WHERE n = ?", [n])[0]
    raise OverrideUnfit(
        f"job '{shape.job}' table '{shape.table}': override #{n} pins key '{key}' to a row "
        f"whose '{column}' is {value}, which the replica's {types[column]} column cannot hold "
        f"exactly; nothing of the table applied. Let it go with a later entry: deltaferry "
        f"conflicts override {shape.job} --table {shape.table} --key '{key}' --remove "
        "--reason '…' (or pin the key again)"
    )


def _record_conflicts(con: duckdb.DuckDBPyConnection, shape: TableShape) -> None:
    job, table = literal(shape.job), literal(shape.table)
    p, h = ident(PRODUCER_COLUMN), ident(HLC_COLUMN)
    op = ident(OP_COLUMN)
    con.execute(
        f"DELETE FROM _deltaferry_conflicts WHERE job = {job} AND tbl = {table}"
        " AND key IN (SELECT _key FROM _deltaferry_touched)"
    )
    # one producer's version followed, in (logical time, producer) order, by another
    # producer's that had not seen it (its batch's hlc_seen for that producer is older, or
    # absent): a concurrent edit. One that had seen it is a hand-off, not a conflict.
    seen = "s.seen_hlc IS NULL OR s.seen_hlc < x.prev_hlc"
    if bug("handoff_as_conflict"):  # the simulator's teeth (failpoints.BUGS)
        seen = "true"
    con.execute(
        f"""
        INSERT INTO _deltaferry_conflicts
        SELECT {job}, {table}, x._key, x.{p}, x._batch, x.{h}, x.{op}, x._row,
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
        LEFT JOIN _deltaferry_seen s ON s.job = {job} AND s.tbl = {table}
             AND s.producer = x.{p} AND s.batch = x._batch AND s.seen_producer = x.prev_producer
        WHERE x.prev_producer IS NOT NULL AND x.prev_producer <> x.{p}
              AND NOT (x.{op} = x.prev_op AND x._row IS NOT DISTINCT FROM x.prev_row)
              AND ({seen})
        """
    )
    # an override in force: what it pins, over the automatic winner it replaced
    con.execute(
        f"""
        INSERT INTO _deltaferry_conflicts
        SELECT {job}, {table}, w._key, w.{p}, w._batch, w.{h}, w.{op}, w._row,
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
