"""Checkpoints, plans and contract pins of the job's state (``deltaferry/state.py``): the
planned batches (the write-ahead record), the last committed batch per table, the loads
already published, the contract version ``contracts rollback`` pinned."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from deltaferry.duck import fetch_one
from deltaferry.failpoints import bug
from deltaferry.keyrange import KeyRange
from deltaferry.quarantine import HeldRecords, insert_quarantine, resolve_keys
from deltaferry.statedb import StoreBase, insert_rows, now
from destinations.manifest import Manifest


@dataclass(frozen=True)
class Checkpoint:
    batch: int
    manifest_sha256: str | None
    seq_end: int


@dataclass(frozen=True)
class Plan:
    table: str
    batch: int
    load_ids: list[str]
    seq_start: int
    seq_end: int
    rows: int
    quarantined: int
    manifest: bytes
    manifest_sha256: str
    chunk_rows: int
    # the keys of its cut the batch carries (a cut split at max_batch_rows); whole: all
    keys: KeyRange = KeyRange()


class PlansMixin(StoreBase):
    """``StateStore``'s checkpoints, plans, published loads and contract pins."""

    def checkpoint(self, table: str) -> Checkpoint:
        with self.connect() as con:
            row = fetch_one(
                con,
                "SELECT batch, manifest_sha256, seq_end FROM checkpoints WHERE tbl = ?",
                [table],
            )
        return Checkpoint(*row) if row else Checkpoint(0, None, 0)

    def contract_pin(self, table: str) -> int | None:
        """The contract version ``contracts rollback`` pinned the table's batches to, if any."""
        with self.connect() as con:
            row = fetch_one(con, "SELECT version FROM contract_pins WHERE tbl = ?", [table])
        return row[0] if row else None

    def pin_contract(self, table: str, version: int | None, reason: str) -> None:
        """Pin (or with None, release) the version the table's next batches are published at."""
        with self.connect() as con:
            con.execute("DELETE FROM contract_pins WHERE tbl = ?", [table])
            if version is not None:
                con.execute(
                    "INSERT INTO contract_pins VALUES (?, ?, ?, ?)", [table, version, reason, now()]
                )

    def last_manifest(self, table: str) -> Manifest | None:
        """The manifest of the table's newest batch planned or committed here."""
        with self.connect() as con:
            row = fetch_one(
                con,
                "SELECT batch, manifest FROM plans WHERE tbl = ? ORDER BY batch DESC LIMIT 1",
                [table],
            )
        if row is None:
            return None
        return Manifest.parse(row[1].encode(), key=f"of {table} batch {row[0]} in {self.path}")

    def pending_plan(self, table: str) -> Plan | None:
        return self._plan(table, "planned")

    def committed_plan(self, table: str, batch: int) -> Plan | None:
        """The plan of a committed batch (its exact manifest bytes and loads), or None."""
        return self._plan(table, "committed", batch)

    def _plan(self, table: str, status: str, batch: int | None = None) -> Plan | None:
        with self.connect() as con:
            row = fetch_one(
                con,
                "SELECT tbl, batch, load_ids, seq_start, seq_end, rows, quarantined, manifest, manifest_sha256,"
                " chunk_rows, cut_after, cut_through, cut_key"
                " FROM plans WHERE tbl = ? AND status = ? AND (? IS NULL OR batch = ?)"
                " ORDER BY batch LIMIT 1",
                [table, status, batch, batch],
            )
        if row is None:
            return None
        return Plan(
            row[0],
            row[1],
            json.loads(row[2]),
            row[3],
            row[4],
            row[5],
            row[6],
            row[7].encode(),
            row[8],
            row[9],
            KeyRange.from_json(row[10], row[11], row[12]),
        )

    def record_plan(
        self,
        plan: Plan,
        run_id: str,
        quarantine: HeldRecords | list[dict[str, Any]],
        contract: str | None = None,
        touched: set[str] | frozenset[str] = frozenset(),
        released: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Write the planned batch (and its quarantined rows, held under the contract
        fingerprint ``contract``) before anything is uploaded. Open quarantine records of
        the ``touched`` keys are resolved by this batch; ``released`` (key JSON, load id)
        are the held rows it cut again (``plan_releases``, for a rebuild)."""
        with self._transaction() as con:
            resolve_keys(con, plan.table, touched, f"batch {plan.batch}")
            if released:
                insert_rows(
                    con,
                    "INSERT INTO plan_releases SELECT ?, ?, pk, load_id FROM df_rows",
                    {"pk": pa.string(), "load_id": pa.string()},
                    [[pk, lid] for pk, lid in released],
                    [plan.table, plan.batch],
                )
            con.execute(
                "INSERT INTO plans (tbl, batch, status, load_ids, seq_start, seq_end, rows,"
                " quarantined, manifest, manifest_sha256, chunk_rows, created_at, committed_at,"
                " cut_after, cut_through, cut_key) VALUES (?, ?, 'planned', ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, NULL, ?, ?, ?)",
                [
                    plan.table,
                    plan.batch,
                    json.dumps(plan.load_ids),
                    plan.seq_start,
                    plan.seq_end,
                    plan.rows,
                    plan.quarantined,
                    plan.manifest.decode(),
                    plan.manifest_sha256,
                    plan.chunk_rows,
                    now(),
                    plan.keys.as_json("after"),
                    plan.keys.as_json("through"),
                    plan.keys.as_json("columns"),
                ],
            )
            insert_quarantine(con, run_id, plan.table, quarantine, contract, plan.batch)

    def consume_without_batch(
        self,
        table: str,
        load_ids: list[str],
        run_id: str,
        quarantine: HeldRecords | list[dict[str, Any]],
        contract: str | None = None,
        touched: set[str] | frozenset[str] = frozenset(),
        keys: KeyRange = KeyRange(),
    ) -> None:
        """Loads with nothing to publish (no change, or every change quarantined): never look
        again. Open records of the ``touched`` keys are resolved (their rows held again).
        With ``keys`` ending before the cut does (a split cut), only that range is done:
        the cut stays open after it (``open_cut``)."""
        with self._transaction() as con:
            resolve_keys(con, table, touched, f"held again in run {run_id}")
            self._advance_cut(con, table, load_ids, keys, None)
            insert_quarantine(con, run_id, table, quarantine, contract)

    def _advance_cut(
        self, con: Any, table: str, load_ids: list[str], keys: KeyRange, batch: int | None
    ) -> None:
        """Inside a transaction: a range of a cut is done. A range that ends before the cut
        does leaves the cut open at its last key; the last range publishes the loads."""
        if keys.through is not None and not (bug("commit_open_cut_early") and batch is not None):
            con.execute(
                "INSERT OR REPLACE INTO open_cuts (tbl, load_ids, through, key_columns)"
                " VALUES (?, ?, ?, ?)",
                [table, json.dumps(load_ids), keys.as_json("through"), keys.as_json("columns")],
            )
            return
        con.execute("DELETE FROM open_cuts WHERE tbl = ?", [table])
        if load_ids:  # none: a batch of held rows released alone
            insert_rows(
                con,
                "INSERT OR REPLACE INTO published_loads SELECT ?, load_id, ? FROM df_rows"
                if batch is not None
                else "INSERT OR IGNORE INTO published_loads SELECT ?, load_id, ? FROM df_rows",
                {"load_id": pa.string()},
                [[lid] for lid in load_ids],
                [table, batch],
            )

    def open_cut(self, table: str) -> tuple[list[str], KeyRange] | None:
        """The cut the table is half-way through, when the last batch stopped at
        ``max_batch_rows``: its loads, and where it goes on (``KeyRange.after``: the last
        key published, of the key's ``columns``); None otherwise."""
        with self.connect() as con:
            row = fetch_one(
                con,
                "SELECT load_ids, through, key_columns FROM open_cuts WHERE tbl = ?",
                [table],
            )
        if row is None:
            return None
        return json.loads(row[0]), KeyRange.from_json(row[1], None, row[2])

    def commit_checkpoint(self, plan: Plan) -> None:
        """Advance the checkpoint to a batch whose manifest is stored: one transaction."""
        with self._transaction() as con:
            con.execute(
                "UPDATE plans SET status = 'committed', committed_at = ? WHERE tbl = ? AND batch = ?",
                [now(), plan.table, plan.batch],
            )
            con.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                [plan.table, plan.batch, plan.manifest_sha256, plan.seq_end, now()],
            )
            self._advance_cut(con, plan.table, plan.load_ids, plan.keys, plan.batch)

    def adopt_checkpoint(self, plan: Plan) -> None:
        """Take a checkpoint from the lake (the local state was lost): recorded as a
        committed plan so that status and the next batch's chain follow it."""
        with self._transaction() as con:
            con.execute(
                "INSERT INTO plans (tbl, batch, status, load_ids, seq_start, seq_end, rows,"
                " quarantined, manifest, manifest_sha256, chunk_rows, created_at, committed_at)"
                " VALUES (?, ?, 'committed', '[]', ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                [
                    plan.table,
                    plan.batch,
                    plan.seq_start,
                    plan.seq_end,
                    plan.rows,
                    plan.manifest.decode(),
                    plan.manifest_sha256,
                    plan.chunk_rows,
                    now(),
                    now(),
                ],
            )
            con.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                [plan.table, plan.batch, plan.manifest_sha256, plan.seq_end, now()],
            )

    def discard_plan(self, table: str, batch: int) -> None:
        """Forget a planned, uncommitted batch (``deltaferry plan discard``): the quarantine
        records its cut made are deleted, the held rows it took again are held again (their
        records reopened), so the next run cuts those loads and rows again and decides again."""
        with self._transaction() as con:
            row = fetch_one(
                con,
                "SELECT load_ids, cut_after IS NULL AND cut_through IS NULL FROM plans"
                " WHERE tbl = ? AND batch = ? AND status = 'planned'",
                [table, batch],
            )
            if row is not None:
                # records of state files older than `planned_in` are found by their loads,
                # unless the cut was split: then earlier batches held some of those loads' rows
                con.execute(
                    "DELETE FROM quarantine WHERE tbl = ? AND resolved IS NULL AND (planned_in = ?"
                    " OR (planned_in IS NULL AND ? AND load_id IN (SELECT unnest(?::VARCHAR[]))))",
                    [table, batch, row[1], json.loads(row[0])],
                )
                con.execute(
                    "UPDATE quarantine SET resolved = NULL, resolved_at = NULL"
                    " WHERE tbl = ? AND resolved = ?",
                    [table, f"batch {batch}"],
                )
                con.execute("DELETE FROM plan_releases WHERE tbl = ? AND batch = ?", [table, batch])
                con.execute(
                    "DELETE FROM plans WHERE tbl = ? AND batch = ? AND status = 'planned'",
                    [table, batch],
                )

    def forget_table(self, table: str, why: str = "reset") -> None:
        """Forget the table's position: checkpoint, plans and published loads; the operations
        log and quarantine records stay, and the open records of staged rows held back are
        resolved by ``why``: their staged rows go with the staging table, and the next run
        reads the source again whole, so a row that still fails is held again (left open,
        no later cut took their keys, and they stayed open for good: a fresh-user trial).
        Records of rows a source held before staging (load id ``held``) stay open: those rows
        are read at the source again. ``deltaferry reset``; the next run adopts the lake."""
        with self._transaction() as con:
            for name in ("checkpoints", "plans", "published_loads", "open_cuts"):
                con.execute(f"DELETE FROM {name} WHERE tbl = ?", [table])
            con.execute(
                "UPDATE quarantine SET resolved = ?, resolved_at = ? WHERE tbl = ?"
                " AND resolved IS NULL AND load_id <> 'held'",
                [f"{why}: staging read again whole (a row that still fails is held again)", now(), table],
            )

    def published_load_ids(self, table: str) -> set[str]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT load_id FROM published_loads WHERE tbl = ?", [table]
            ).fetchall()
        return {r[0] for r in rows}
