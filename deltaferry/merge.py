"""Merging the chains of several producers of one table into a replica: applying one
producer's batch (its rows as versions of their keys, the batch's record, what it had
seen), an entry of the override log, or the versions of held rows read again, each in
one transaction that re-resolves the keys it touched (the merge rule: ``resolve.py``;
the tables: ``merge_tables.py``).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow as pa

from deltaferry.delta import OP_COLUMN
from deltaferry.duck import (
    ARROW,
    applying,
    column_types,
    duck_type,
    fetch_one,
    fetch_row,
    ident,
    respell_columns,
    widen_columns,
    with_arrow,
)
from deltaferry.failpoints import bug, failpoint
from deltaferry.held import record_held
from deltaferry.merge_tables import (
    HLC_COLUMN,
    PRODUCER_COLUMN,
    RESERVED,
    TableShape,
    key_expr,
    keys_in_utc,
    versions_table,
)
from deltaferry.resolve import resolve


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
    from deltaferry.replica_apply import replace_placeholder

    existing = column_types(con, shape.table)
    if (
        existing
        and not column_types(con, versions_table(shape.table))  # no batch applied yet
        and replace_placeholder(con, shape.table)  # the first batch's columns replace it
    ):
        existing = {}
    if existing and PRODUCER_COLUMN not in existing:
        raise ConfigError(
            f"job '{shape.job}' table '{shape.table}': this replica's table was pulled from a "
            "single producer's chain; pull a job with multi_producer into a new replica"
        )
    added = False
    fields = [f for f in data.schema if f.name != OP_COLUMN]
    # Neither table has a PRIMARY KEY (tables made before 2026-12-06 keep the resolved
    # table's): DuckDB pins a key index whole once a DELETE uses it, and it grows with the
    # rows stored, not the batch (71 bytes a row for a 32-character text key: a 2M-row
    # first batch failed at the default 256MB). Each key's one row is the resolve's own
    # (one winner a key text, ``resolve``: checked there); a (producer, batch) is inserted
    # once, guarded by _deltaferry_chains in the same transaction; an index on the
    # versions table made the first batch of a table 2x slower.
    for name, extra in (
        (shape.table, [(PRODUCER_COLUMN, "VARCHAR"), (HLC_COLUMN, "BIGINT")]),
        (
            versions_table(shape.table),
            [
                (OP_COLUMN, "VARCHAR"),
                (PRODUCER_COLUMN, "VARCHAR"),
                (HLC_COLUMN, "BIGINT"),
                ("_batch", "BIGINT"),
                ("_key", "VARCHAR"),
            ],
        ),
    ):
        have = column_types(con, name)
        if have:  # a column the batch spells in another case only: the batch's spelling
            have = respell_columns(con, name, [f.name for f in fields], have)
        if not have:
            defs = [f"{ident(f.name)} {duck_type(f)}" for f in fields]
            defs += [f"{ident(c)} {t}" for c, t in extra]
            con.execute(f"CREATE TABLE {ident(name)} ({', '.join(defs)})")
            continue
        for f in fields:
            if f.name not in have:
                con.execute(f"ALTER TABLE {ident(name)} ADD COLUMN {ident(f.name)} {duck_type(f)}")
                added = True
        # key columns are kept as they are in both tables: the key texts of the versions
        # stored are their values as these types (``key_expr``), and an older resolved
        # table has them under a PRIMARY KEY, which DuckDB cannot alter. WidenFirst: see
        # duck.applying
        widen_columns(con, name, data, have, keep=shape.pk)
    return added


def stored_key_types(con: duckdb.DuckDBPyConnection, shape: TableShape) -> dict[str, str]:
    """The key columns' types in the versions table (made by ``_ensure_tables``): incoming
    keys are rendered as these (``key_expr``)."""
    have = column_types(con, versions_table(shape.table))
    return {c: have[c] for c in shape.pk if c in have}


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
    ``finish_batch`` instead (what this does, in three steps). Columns the batch brings
    wider are widened first (``duck.applying``)."""

    def once() -> bool:
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

    return applying(con, once)


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
    key = key_expr(shape.pk, types=stored_key_types(con, shape))
    col_list = ", ".join(ident(c) for c in data.column_names)
    with_arrow(
        con,
        data,
        f"INSERT INTO {shape.versions}"
        f" ({col_list}, {ident(PRODUCER_COLUMN)}, {ident(HLC_COLUMN)},"
        f' "_batch", "_key") SELECT {col_list}, ?, ?, ?, {key} FROM {ARROW}',
        [producer, hlc, batch],
    )
    with_arrow(con, data, f"INSERT INTO _deltaferry_touched SELECT DISTINCT {key} FROM {ARROW}")
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
    held: tuple[int, str, str] | tuple[int, str, str, bool] | None = None,
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
    if bug("apply_outside_transaction"):  # the simulator's teeth (failpoints.BUGS)
        con.execute("COMMIT")
        failpoint("after_apply")
        con.execute("BEGIN TRANSACTION")
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


def apply_held(
    con: duckdb.DuckDBPyConnection, shape: TableShape, producer: str, batch: int, hlc: int,
    data: pa.Table, *, partial: bool = False,
) -> int:
    """Add the versions of an applied batch that the replica does not have yet (rows a
    reader held back, read again as ``data``) and re-resolve their keys, inside the
    caller's transaction. With ``partial`` (the batch was read below its published
    version), the versions it has of ``data``'s keys are replaced too: read again under a
    later contract, they carry what the partial read left out. Returns how many versions
    were added or replaced. Winners depend only on the set of versions, so a version added
    late gives the table it would have had."""
    _ensure_tables(con, shape, data)
    key = key_expr(shape.pk, types=stored_key_types(con, shape))
    if partial:
        with_arrow(
            con,
            data,
            f"DELETE FROM {shape.versions} WHERE {ident(PRODUCER_COLUMN)} = ? AND _batch = ?"
            f" AND _key IN (SELECT {key} FROM {ARROW})",
            [producer, batch],
        )
    with_arrow(
        con,
        data,
        f"CREATE OR REPLACE TEMP TABLE _deltaferry_touched AS SELECT DISTINCT {key} AS _key"
        f" FROM {ARROW} WHERE {key} NOT IN (SELECT _key FROM {shape.versions}"
        f" WHERE {ident(PRODUCER_COLUMN)} = ? AND _batch = ?)",
        [producer, batch],
    )
    cols = ", ".join(ident(c) for c in data.column_names)
    with_arrow(
        con,
        data,
        f"INSERT INTO {shape.versions} ({cols}, {ident(PRODUCER_COLUMN)}, {ident(HLC_COLUMN)},"
        f' "_batch", "_key") SELECT {cols}, ?, ?, ?, {key} FROM {ARROW}'
        f" WHERE {key} IN (SELECT _key FROM _deltaferry_touched)",
        [producer, hlc, batch],
    )
    added = fetch_row(con, "SELECT count(*) FROM _deltaferry_touched")[0]
    if added:
        resolve(con, shape)
    return int(added)


def apply_override(con: duckdb.DuckDBPyConnection, shape: TableShape, entry: dict[str, Any]) -> bool:
    """``apply_overrides`` of one entry: False if the replica has it already."""
    return apply_overrides(con, shape, [entry]) == 1


def apply_overrides(
    con: duckdb.DuckDBPyConnection, shape: TableShape, entries: list[dict[str, Any]]
) -> int:
    """Record the new entries of the lake's override log (``entries``: in number order,
    the log's next ones) and re-resolve their keys, in one transaction; the number
    recorded. All at once, so that a later entry (``--remove``, another pin) lets go of an
    earlier one before anything is resolved under it: an entry that cannot be applied
    (``resolve.OverrideUnfit``) is fixed by the next."""
    entries = [
        e
        for e in entries
        if not fetch_one(
            con,
            "SELECT 1 FROM _deltaferry_overrides WHERE job = ? AND tbl = ? AND n = ?",
            [shape.job, shape.table, e["n"]],
        )
    ]
    if not entries:
        return 0
    keys_in_utc(con)
    con.execute("BEGIN TRANSACTION")
    try:
        for entry in entries:
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
                    # (text beyond ASCII as is: conflict records show this text, beside the
                    # versions' rows as DuckDB's to_json writes them)
                    None
                    if value is None
                    else json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
                    bool(entry.get("delete")),
                    entry.get("by"),
                    entry.get("reason"),
                    entry.get("created_at"),
                    entry.get("sha256"),
                ],
            )
        if column_types(con, versions_table(shape.table)):
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _deltaferry_touched AS"
                " SELECT DISTINCT unnest(?::VARCHAR[]) AS _key",
                [[e["key"] for e in entries]],
            )
            resolve(con, shape)
        con.execute("COMMIT")
        return len(entries)
    except BaseException:
        con.execute("ROLLBACK")
        raise
