"""The modelled source and the simulator's line to staging.

The source is two tables held in memory, mutated by a seeded workload (``Source.mutate``):
inserts, updates, deletes, cursor ties (a write with the previous write's ``updated_at``),
re-created keys (a key inserted again after its delete) and late rows (a write whose
``updated_at`` is older than rows already extracted).

**Where the line is drawn.** Everything from staging on is deltaferry's real code: the
cut, validation, Parquet encoding, manifests, upload, the checkpoint, recovery, adoption,
republish, pull and merge. What a source kind's dlt extraction does — read the source
incrementally and merge changed rows into ``raw.<table>`` by key under a new load id — is
modelled by :func:`extract`: it stages exactly the rows whose write is not yet staged
(and, for ``tags``, a tombstone per staged key the source no longer has), in one
transaction with its ``_dlt_loads`` row, as dlt's merge leaves them. A dlt run costs about
half a second; a history runs dozens of extractions, and ten thousand histories must take
minutes. How real extraction finds those rows (cursors, ties, late rows, NULL cursors, key
sets) is tested against real databases by the fidelity suites
(``tests/support/fidelity``) and the real-network chaos suite (``tests/test_chaos.py``),
so the simulator takes a correct extraction as given and tests what deltaferry does with
it. Deltaferry's own writes into staging through dlt (adoption's tombstones, ``reset``'s
drop) go through the same modelled writer (``stage_tombstones``, ``drop_staged``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from sources.load import ExtractResult

if TYPE_CHECKING:
    from tests.support.sim.world import World

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
B_VALUES = ("x", "y", "o'q", "ü", "a b")

SCHEMAS = {
    "items": {
        "key": ("id",),
        "columns": {
            "id": "BIGINT",
            "name": "VARCHAR",
            "amount": "BIGINT",
            "rev": "BIGINT",
            "updated_at": "TIMESTAMPTZ",
            "deleted_at": "TIMESTAMPTZ",
        },
    },
    "tags": {
        "key": ("a", "b"),
        "columns": {
            "a": "BIGINT",
            "b": "VARCHAR",
            "val": "BIGINT",
            "rev": "BIGINT",
            "updated_at": "TIMESTAMPTZ",
        },
    },
}


@dataclass
class Source:
    """The source's tables: ``{table: {key tuple: row dict}}``. ``items`` keeps a deleted
    row (``deleted_at`` set: a soft delete); ``tags`` loses it (a hard delete)."""

    world: World
    rows: dict[str, dict[tuple, dict[str, Any]]]
    rev: int = 0
    last_time: int = 0
    writes: int = 0

    @classmethod
    def empty(cls, world: World, rev: int = 0) -> Source:
        """No rows yet; writes are numbered from ``rev + 1`` (several producers' sources
        number theirs apart, so a write is known by its ``rev`` in every chain)."""
        return cls(world, {"items": {}, "tags": {}}, rev=rev)

    def _stamp(self) -> dt.datetime:
        rng = self.world.rng
        r = rng.random()
        if r < 0.15 and self.last_time:  # a cursor tie with the previous write
            t = self.last_time
        elif r < 0.25 and self.last_time > 100:  # a late row: older than what was read
            t = self.last_time - rng.randint(1, 100)
        else:
            t = self.world.now
        self.last_time = max(self.last_time, t)
        return EPOCH + dt.timedelta(seconds=t)

    def mutate(self) -> int:
        """One burst of writes; returns how many."""
        rng = self.world.rng
        n = rng.choice((1, 1, 2, 3, 5, 8, 13))
        for _ in range(n):
            self.rev += 1
            self.writes += 1
            table = "items" if rng.random() < 0.6 else "tags"
            rows = self.rows[table]
            if table == "items":
                key: tuple = (rng.randint(1, 30),)
            else:
                key = (rng.randint(-2, 3), rng.choice(B_VALUES))
            row = rows.get(key)
            live = row is not None and (table == "tags" or row["deleted_at"] is None)
            if live and rng.random() < 0.25:  # delete
                if table == "items":
                    rows[key] = {**row, "rev": self.rev, "updated_at": self._stamp(), "deleted_at": self._stamp()}
                else:
                    del rows[key]
                continue
            stamp = self._stamp()  # insert, update, or re-create a deleted key
            if table == "items":
                rows[key] = {
                    "id": key[0],
                    "name": rng.choice(("a", "b", "Zoë", "", "x" * 40, "quote'", "line\nbreak")),
                    "amount": rng.choice((0, 1, -1, 2**62, -(2**62), rng.randint(-1000, 1000))),
                    "rev": self.rev,
                    "updated_at": stamp,
                    "deleted_at": None,
                }
            else:
                rows[key] = {"a": key[0], "b": key[1], "val": rng.randint(-5, 5), "rev": self.rev, "updated_at": stamp}
        return n

    def live(self, table: str) -> dict[tuple, tuple]:
        """The rows a replica must hold: ``{key: row_values}`` of the live rows."""
        from tests.support.sim.world import row_values

        rows = self.rows[table]
        return {
            k: row_values(table, r)
            for k, r in rows.items()
            if table == "tags" or r["deleted_at"] is None
        }


def _create(con: duckdb.DuckDBPyConnection, table: str) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute(
        "CREATE TABLE IF NOT EXISTS raw._dlt_loads (load_id VARCHAR NOT NULL, schema_name VARCHAR,"
        " status BIGINT NOT NULL, inserted_at TIMESTAMPTZ NOT NULL, schema_version_hash VARCHAR)"
    )
    cols = ", ".join(f'"{c}" {t}' for c, t in SCHEMAS[table]["columns"].items())
    con.execute(
        f'CREATE TABLE IF NOT EXISTS raw."{table}" ({cols}, _dlt_load_id VARCHAR NOT NULL,'
        " _dlt_id VARCHAR NOT NULL, _df_deleted BOOLEAN)"
    )


def _merge(con: duckdb.DuckDBPyConnection, world: World, table: str, rows: list[dict[str, Any]], load_id: str) -> None:
    """dlt's merge of one load's rows by key (``rows`` hold the columns they set; the
    others are NULL), inside the caller's transaction, into a table ``_create`` made."""
    key = SCHEMAS[table]["key"]
    columns = [*SCHEMAS[table]["columns"], "_df_deleted"]
    for row in rows:
        match = " AND ".join(f'"{c}" = ?' for c in key)
        con.execute(f'DELETE FROM raw."{table}" WHERE {match}', [row[c] for c in key])
        marks = ", ".join("?" for _ in columns)
        con.execute(
            f'INSERT INTO raw."{table}" ({", ".join(chr(34) + c + chr(34) for c in columns)}, _dlt_load_id, _dlt_id)'
            f" VALUES ({marks}, ?, ?)",
            [*(row.get(c) for c in columns), load_id, world.new_id()],
        )


def _record_load(con: duckdb.DuckDBPyConnection, world: World, load_id: str) -> None:
    con.execute(
        "INSERT INTO raw._dlt_loads VALUES (?, 'sim', 0, ?, 'sim')",
        [load_id, EPOCH + dt.timedelta(seconds=world.now)],
    )


def extract(job: Any) -> ExtractResult:
    """The modelled extraction of every table of ``job`` into its staging (see the module's
    docstring): one load id for the run, whatever it staged."""
    from sources.staging import staging_path
    from tests.support.sim.world import current

    world = current()
    world.fault_point("extract")
    source = world.source
    path = staging_path(job.name)
    con = duckdb.connect(str(path))
    rows_by_table: dict[str, int] = {}
    tombs: dict[str, int] = {}
    load_id = world.new_load_id()
    try:
        con.execute("BEGIN TRANSACTION")
        for t in job.tables:
            _create(con, t.name)
            key = SCHEMAS[t.name]["key"]
            staged = {
                tuple(r[:-2]): (r[-2], r[-1])
                for r in con.execute(
                    f'SELECT {", ".join(chr(34) + c + chr(34) for c in key)}, rev, coalesce(_df_deleted, false)'
                    f' FROM raw."{t.name}"'
                ).fetchall()
            }
            changed = [
                row
                for k, row in sorted(source.rows[t.name].items(), key=lambda kv: repr(kv[0]))
                if staged.get(k) != (row["rev"], False)
            ]
            gone = []
            if t.name == "tags":
                gone = [
                    dict(zip(key, k), _df_deleted=True)
                    for k, (_, deleted) in sorted(staged.items(), key=lambda kv: repr(kv[0]))
                    if not deleted and k not in source.rows[t.name]
                ]
            _merge(con, world, t.name, [*changed, *gone], load_id)
            rows_by_table[t.name] = len(changed)
            tombs[t.name] = len(gone)
        _record_load(con, world, load_id)
        world.fault_point("extract-commit")
        con.execute("COMMIT")
    finally:
        con.close()
    return ExtractResult(
        [load_id],
        rows_by_table,
        tombs,
        columns={t.name: list(SCHEMAS[t.name]["columns"]) for t in job.tables},
    )


def preflight_source(job: Any) -> None:
    """Nothing to check: the modelled source always answers."""


def stage_tombstones(job: Any, t: Any, pipeline: Any, keys: pa.Table, origin: str) -> list[str]:
    """``sources.load.stage_tombstones`` through the modelled writer."""
    from sources.staging import staging_path
    from tests.support.sim.world import current

    world = current()
    load_id = world.new_load_id()
    con = duckdb.connect(str(staging_path(job.name)))
    try:
        con.execute("BEGIN TRANSACTION")
        rows = [{**r, "_df_deleted": True} for r in keys.to_pylist()]
        _create(con, t.name)
        _merge(con, world, t.name, rows, load_id)
        _record_load(con, world, load_id)
        con.execute("COMMIT")
    finally:
        con.close()
    return [load_id]


def drop_staged(job: Any, t: Any) -> list[str]:
    """``deltaferry/runbook.py:_drop_staged`` (dlt's ``pipeline_drop``) through the
    modelled writer: the table's staged rows go, so the next extraction reads it in full."""
    from sources.staging import staging_path

    path = staging_path(job.name)
    if not path.exists():
        return []
    con = duckdb.connect(str(path))
    try:
        con.execute(f'DROP TABLE IF EXISTS raw."{t.name}"')
    finally:
        con.close()
    return [t.name]
