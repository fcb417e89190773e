"""The quarantine of the job's state (``deltaferry/state.py``): rows held back, by a source
before staging or by a cut's validation, until a later cut takes their key again."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from deltaferry.duck import fetch_row
from deltaferry.statedb import StoreBase, insert_rows, insert_table, now

# the check of a row held back because a key column is missing or NULL in it
UNKEYED = "primary key not null"
# the check of a row held back because a value of it is one its column's published type
# cannot carry (a PostgreSQL numeric NaN): resolved when a batch publishes (or deletes) the
# key, i.e. the row was read again with a value that fits
UNFIT = "value fits"
# in the reason of a row held for a column the source dropped (``staged.plan_drift``)
DROPPED = "was dropped by the source"

RECORD_FIELDS = ("load_id", "pk", "field", "check", "reason", "row_json")


class HeldRecords:
    """The quarantine records of a cut (``{load_id, pk, field, check, reason, row_json}``,
    all text), kept as Arrow tables of text columns, one a ``extend``: a record's Python
    objects live only while its slice of rows is made into records. Records of a whole
    1M-row cut held back (a column every row has a value in, under the ``quarantine``
    drift policy) took about 750 MiB as Python dicts, a third of that as Arrow."""

    def __init__(self) -> None:
        self._tables: list[pa.Table] = []
        self._rows = 0

    def extend(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self._tables.append(
            pa.table(
                {
                    n: pa.array([None if r[n] is None else str(r[n]) for r in records], pa.string())
                    for n in RECORD_FIELDS
                }
            )
        )
        self._rows += len(records)

    def clear(self) -> None:
        self._tables, self._rows = [], 0

    def __len__(self) -> int:
        return self._rows

    def __bool__(self) -> bool:
        return self._rows > 0

    def __iter__(self) -> Any:
        for table in self._tables:
            yield from table.to_pylist()

    def table(self) -> pa.Table:
        """Every record, one table (an empty one of the record columns when none)."""
        if not self._tables:
            return pa.table({n: pa.array([], pa.string()) for n in RECORD_FIELDS})
        return pa.concat_tables(self._tables)

    def keys(self) -> set[str]:
        """The distinct keys (``pk``) held."""
        return {k for t in self._tables for k in pc.unique(t["pk"]).to_pylist()}

    def key_count(self) -> int:
        """How many distinct keys are held (counted in Arrow)."""
        if not self._tables:
            return 0
        return int(pc.count_distinct(self.table()["pk"]).as_py())


def held_identity(record: dict[str, Any]) -> tuple[str, str]:
    """What makes held records one: key and check. Every row without a key has the same key
    text (``{"id": null}``), so a table's rows without a key share one record (its
    ``row_json`` is the first such row of the last run that held it, ``source_rows`` how
    many there were)."""
    return (record["pk"], record["check"])


class QuarantineMixin(StoreBase):
    """``StateStore``'s quarantine records."""

    def record_held(
        self,
        run_id: str,
        table: str,
        rows: list[dict[str, Any]],
        rereads_null_cursors: bool,
        rereads_unkeyed: bool | str = False,
        reread_unfit: list[str] | tuple[str, ...] = (),
        staged_now: Callable[[list[str]], set[str]] | None = None,
    ) -> int:
        """Rows a source held back before staging (a NULL key, a NULL cursor): quarantine
        records ``{pk, field, check, reason, row_json}`` and optionally ``source_rows`` (the
        source rows behind the record, more than one for rows without a key), with load id
        ``held``, one open record per key and check (``held_identity``; a row held again
        keeps its first record, with this run's count and first row; a table's rows without
        a key share one).

        With ``rereads_null_cursors`` (the extract read every row whose cursor is NULL:
        ``null_cursor = "quarantine"``), an open NULL-cursor record whose key was not held
        this time is resolved: its row has a cursor value now (it was staged) or is gone.
        A source that cannot read a row by key (a REST API: a record whose cursor is set to
        a value older than the newest synced is never sent again) gives ``staged_now``:
        keys (JSON) in, those staged by this run out; only those are resolved, the others
        stay open (still held, as ``quarantine list`` says).
        With ``rereads_unkeyed`` (True: the extract read the whole table, so every row
        without a key; a time, ISO 8601: it read every row held without a key since then, at
        its cursor value), an open record of rows without a key (opened since that time) is
        resolved when no such row was held this time: each has a key now (it was read, and
        staged) or is gone. ``reread_unfit``: keys (JSON) of rows held for a value their
        column cannot carry (``UNFIT``) that the extract read again; one not held again is
        resolved (its value fits now and it was staged, or it is gone).
        Returns how many records were resolved."""
        cursor_check = "cursor not null"
        with self.connect() as con:
            opened = {
                (pk, check): ts
                for pk, check, ts in con.execute(
                    'SELECT pk, "check", min(ts) FROM quarantine WHERE tbl = ?'
                    " AND load_id = 'held' AND resolved IS NULL GROUP BY pk, \"check\"",
                    [table],
                ).fetchall()
            }
            open_ = set(opened)
            # one record per key and check; without a count from the source, its rows here
            counted: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
            for r in rows:
                first, n = counted.get(held_identity(r), (r, 0))
                counted[held_identity(r)] = (first, n + 1)
            rows = [{**r, "source_rows": r.get("source_rows") or n} for r, n in counted.values()]
            new = [r for r in rows if held_identity(r) not in open_]
            insert_quarantine(con, run_id, table, [{**r, "load_id": "held"} for r in new])
            again = [r for r in rows if held_identity(r) in open_]
            if again:
                insert_rows(
                    con,
                    "UPDATE quarantine SET source_rows = df_rows.n, row_json = df_rows.row_json"
                    " FROM df_rows WHERE tbl = ? AND load_id = 'held' AND resolved IS NULL"
                    ' AND quarantine.pk = df_rows.pk AND quarantine."check" = df_rows."check"',
                    {"pk": pa.string(), "check": pa.string(), "n": pa.int64(),
                     "row_json": pa.string()},  # fmt: skip
                    [[r["pk"], r["check"], r["source_rows"], r["row_json"]] for r in again],
                    [table],
                )
            settled = 0
            if rereads_null_cursors:
                still = {r["pk"] for r in rows if r["check"] == cursor_check}
                keys = sorted(pk for pk, check in open_ if check == cursor_check and pk not in still)
                if staged_now is not None and keys:
                    staged = staged_now(keys)
                    keys = [k for k in keys if k in staged]
                settled += self._resolve_held(
                    con, run_id, table, cursor_check, keys, "the row has a cursor value now"
                )
            if reread_unfit:
                still = {r["pk"] for r in rows if r["check"] == UNFIT}
                keys = sorted(pk for pk in set(reread_unfit) if pk not in still)
                settled += self._resolve_held(
                    con, run_id, table, UNFIT, keys,
                    "read again by key: the row's values fit now (it was staged) or it is gone",
                )
            if rereads_unkeyed:
                since = None
                if isinstance(rereads_unkeyed, str):
                    since = dt.datetime.fromisoformat(rereads_unkeyed)
                still = {r["pk"] for r in rows if r["check"] == UNKEYED}
                keys = sorted(
                    pk
                    for (pk, check), ts in opened.items()
                    if check == UNKEYED and pk not in still and (since is None or ts >= since)
                )
                how = (
                    "the whole table was read"
                    if since is None
                    else "the rows held without it were read again at their cursor values"
                )
                settled += self._resolve_held(
                    con,
                    run_id,
                    table,
                    UNKEYED,
                    keys,
                    f"no row of the table is without this key any more ({how}): each such "
                    "row has a key now (and was read with it) or is gone",
                )
            return settled

    @staticmethod
    def _resolve_held(
        con: duckdb.DuckDBPyConnection,
        run_id: str,
        table: str,
        check: str,
        keys: list[str],
        why: str,
    ) -> int:
        """Resolve the open held records of ``table`` and ``check`` whose key text is one of
        ``keys``; how many keys there were."""
        if keys:
            insert_rows(
                con,
                "UPDATE quarantine SET resolved = ?, resolved_at = ? WHERE tbl = ? AND"
                " load_id = 'held' AND \"check\" = ? AND resolved IS NULL"
                " AND pk IN (SELECT pk FROM df_rows)",
                {"pk": pa.string()},
                [[k] for k in keys],
                [f"run {run_id}: {why}", now(), table, check],
            )
        return len(keys)

    def open_held(self, table: str) -> list[tuple[str, str, str | None, str | None]]:
        """The table's held staged rows: (key JSON, load id, contract fingerprint held
        under, release reason or None), one per key and load, oldest first. Rows a source
        held back before staging (load id ``held``) are not among them: they are read at
        the source again."""
        with self.connect(read_only=True) as con:
            return [
                tuple(r)
                for r in con.execute(
                    "SELECT pk, load_id, any_value(contract), any_value(release) FROM quarantine"
                    " WHERE tbl = ? AND resolved IS NULL AND load_id <> 'held'"
                    " GROUP BY pk, load_id ORDER BY min(ts), pk",
                    [table],
                ).fetchall()
            ]

    def tables_holding(self) -> set[str]:
        """The tables with an open quarantine record of any kind, in one read of the store
        (a run's change check reads them whatever it finds: ``sources/quiet.py``)."""
        with self.connect(read_only=True) as con:
            rows = con.execute(
                "SELECT DISTINCT tbl FROM quarantine WHERE resolved IS NULL"
            ).fetchall()
        return {r[0] for r in rows}

    def open_unfit(self) -> dict[str, set[str]]:
        """Per table, keys (JSON) of open records of rows held for a value their column
        cannot carry (``UNFIT``), in one read of the store: a batch that publishes or
        deletes one resolves it."""
        out: dict[str, set[str]] = {}
        with self.connect(read_only=True) as con:
            for tbl, pk in con.execute(
                "SELECT DISTINCT tbl, pk FROM quarantine WHERE resolved IS NULL"
                " AND load_id = 'held' AND \"check\" = ?",
                [UNFIT],
            ).fetchall():
                out.setdefault(tbl, set()).add(pk)
        return out

    def open_keys(self, table: str) -> set[str]:
        """Keys (JSON) with an open record that a batch publishing or deleting them
        resolves: held staged rows (``open_held``) and rows held for a value their column
        cannot carry (``UNFIT``), in one read of the store."""
        with self.connect(read_only=True) as con:
            return {
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT pk FROM quarantine WHERE tbl = ? AND resolved IS NULL"
                    " AND (load_id <> 'held' OR \"check\" = ?)",
                    [table, UNFIT],
                ).fetchall()
            }

    def due_for_release(
        self, table: str, contract: Callable[[], str], at_source: Collection[str] | None = None
    ) -> list[tuple[str, str]]:
        """Held rows to validate again in the next cut: held under another contract than
        ``contract()`` (the fingerprint now, asked for only when rows are held: it builds the
        contract's schema), released by ``quarantine release``, or held for a column the
        source had dropped (``staged.plan_drift``) that is among ``at_source`` (the source's
        columns now, when known) again: the rows did not change when the column came back
        (NULL where it was re-added), so nothing else would ever validate them again and the
        changes they carry would never be published (fresh-user trial)."""
        held = self.open_held(table)
        if not held:
            return []
        now = contract()
        back = self._dropped_and_back(table, at_source) if at_source else set()
        return [
            (pk, lid)
            for pk, lid, held_under, release in held
            if held_under != now or release is not None or (pk, lid) in back
        ]

    def _dropped_and_back(self, table: str, at_source: Collection[str]) -> set[tuple[str, str]]:
        """(key JSON, load id) of open records held for a dropped column (``DROPPED`` in
        their reason) that ``at_source`` has again, spelled the same (a column only spelled
        anew in case is not back: drift says it is dropped)."""
        names = sorted(set(at_source))
        marks = ", ".join("?" for _ in names)
        with self.connect(read_only=True) as con:
            return {
                (r[0], r[1])
                for r in con.execute(
                    "SELECT pk, load_id FROM quarantine WHERE tbl = ? AND resolved IS NULL"
                    " AND \"check\" = 'schema drift' AND contains(reason, ?)"
                    f" AND field IN ({marks})",
                    [table, DROPPED, *names],
                ).fetchall()
            }

    def plan_releases(self, table: str, batch: int) -> list[tuple[str, str]]:
        """The held rows a planned batch cut again (for its rebuild)."""
        with self.connect(read_only=True) as con:
            return [
                (r[0], r[1])
                for r in con.execute(
                    "SELECT pk, load_id FROM plan_releases WHERE tbl = ? AND batch = ? ORDER BY pk",
                    [table, batch],
                ).fetchall()
            ]

    def quarantine_rows(
        self,
        table: str | list[str] | None = None,
        held_only: bool = True,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Quarantine records of ``table`` (a table, several, or every one: None; open
        ones unless ``held_only`` is False), oldest first, as dicts of the quarantine
        table's columns; the first ``limit`` only when given."""
        where, params = _records_where(table, held_only)
        with self.connect(read_only=True) as con:
            cur = con.execute(
                'SELECT ts, run_id, tbl, load_id, pk, field, "check", reason, row_json, contract,'
                " resolved, resolved_at, release, source_rows FROM quarantine"
                f" WHERE {where} ORDER BY ts, tbl, pk"
                + ("" if limit is None else f" LIMIT {int(limit)}"),
                params,
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def quarantine_counts(
        self, table: str | None = None, held_only: bool = True
    ) -> list[tuple[str, str | None, str | None, int, int]]:
        """``(table, field, check, records, open records)`` of the records
        ``quarantine_rows`` lists, most records first: what a long list holds, counted."""
        where, params = _records_where(table, held_only)
        with self.connect(read_only=True) as con:
            return [
                (str(tbl), field, check, int(n), int(held))
                for tbl, field, check, n, held in con.execute(
                    'SELECT tbl, field, "check", count(*), count(*) FILTER (resolved IS NULL)'
                    f' FROM quarantine WHERE {where} GROUP BY ALL ORDER BY 4 DESC, 1, 2, 3',
                    params,
                ).fetchall()
            ]

    def request_release(self, table: str, reason: str) -> int:
        """Mark the table's held staged rows for validation against the contract in the
        next run, whatever contract they were held under. Returns the keys marked."""
        with self._transaction() as con:
            n = fetch_row(
                con,
                "SELECT count(DISTINCT pk) FROM quarantine WHERE tbl = ? AND resolved IS NULL"
                " AND load_id <> 'held'",
                [table],
            )[0]
            con.execute(
                "UPDATE quarantine SET release = ? WHERE tbl = ? AND resolved IS NULL"
                " AND load_id <> 'held'",
                [reason, table],
            )
        return int(n)


def _records_where(table: str | list[str] | None, held_only: bool) -> tuple[str, list[Any]]:
    """The WHERE of the quarantine records of ``table`` (a table, several, or every table:
    None), open ones only with ``held_only``, and its parameters."""
    where = ["true"]
    params: list[Any] = []
    if isinstance(table, str):
        where.append("tbl = ?")
        params.append(table)
    elif table is not None:
        where.append("list_contains(?, tbl)")
        params.append(list(table))
    if held_only:
        where.append("resolved IS NULL")
    return " AND ".join(where), params


def resolve_keys(
    con: duckdb.DuckDBPyConnection, table: str, keys: set[str] | frozenset[str], by: str
) -> None:
    """Close the open records of ``keys`` (their rows were cut again; a row held for a value
    that did not fit, ``UNFIT``, was read again with one that does, or deleted)."""
    if not keys:
        return
    insert_rows(
        con,
        "UPDATE quarantine SET resolved = ?, resolved_at = ? WHERE tbl = ? AND resolved IS"
        " NULL AND (load_id <> 'held' OR \"check\" = ?) AND pk IN (SELECT pk FROM df_rows)",
        {"pk": pa.string()},
        [[k] for k in sorted(keys)],
        [by, now(), table, UNFIT],
    )


def insert_quarantine(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    table: str,
    rows: list[dict[str, Any]] | HeldRecords,
    contract: str | None = None,
    planned_in: int | None = None,
) -> None:
    """Write quarantine records ``rows`` (``{load_id, pk, field, check, reason, row_json}``),
    held under the contract fingerprint ``contract``; ``planned_in``: the planned batch whose
    cut held them (discarding that plan deletes them), None when no plan did."""
    if not rows:
        return
    sql = (
        'INSERT INTO quarantine (ts, run_id, tbl, load_id, pk, field, "check", reason,'
        " row_json, contract, planned_in, source_rows) SELECT ?, ?, ?, load_id, pk, field,"
        ' "check", reason, row_json, ?, ?, source_rows FROM df_rows'
    )
    params = [now(), run_id, table, contract, planned_in]
    if isinstance(rows, HeldRecords):
        data = rows.table()
        data = data.append_column("source_rows", pa.nulls(data.num_rows, pa.int64()))
        insert_table(con, sql, data, params)
        return
    names = RECORD_FIELDS
    insert_rows(
        con,
        sql,
        {**dict.fromkeys(names, pa.string()), "source_rows": pa.int64()},
        [[r[n] for n in names] + [r.get("source_rows")] for r in rows],
        params,
    )
