"""A seeded generator of an upstream shop database (SQLite): customers and orders.

Each round inserts, updates and deletes rows: customers are soft-deleted
(``deleted_at``), orders are hard-deleted (found by key-set reconciliation).
``updated_at`` grows on every write. Optionally a round writes a few customers
that break the contract (bad e-mail) and the next round repairs them.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

COUNTRIES = ["DE", "FR", "US", "GB", "ES", "IT", "NL", "PL", "SE", "JP"]
STATUSES = ["new", "paid", "shipped", "cancelled"]
SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, country TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL, deleted_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL,
    status TEXT NOT NULL, updated_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS customers_updated ON customers(updated_at);
CREATE INDEX IF NOT EXISTS orders_updated ON orders(updated_at);
"""


@dataclass
class RoundStats:
    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    invalid: int = 0


class Shop:
    """The upstream database of the demo; every change goes through here."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path = path
        self.rng = random.Random(seed)
        self.con = sqlite3.connect(str(path))
        self.con.executescript(SCHEMA)
        self.clock = datetime(2026, 1, 1)
        self.broken: list[int] = []

    def close(self) -> None:
        self.con.close()

    def _tick(self) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(1, 500))
        return self.clock.strftime("%Y-%m-%d %H:%M:%S.%f")

    def _next_id(self, table: str) -> int:
        return int(self.con.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0])

    def _ids(self, table: str, where: str = "1=1") -> list[int]:
        return [r[0] for r in self.con.execute(f"SELECT id FROM {table} WHERE {where} ORDER BY id")]

    def _customer(self, cid: int, bad: bool = False) -> tuple:
        name = f"customer {cid}"
        email = f"c{cid}.example.com" if bad else f"c{cid}@example.com"
        return (cid, name, email, self.rng.choice(COUNTRIES), self._tick(), None)

    def round(
        self, n_customers: int, n_orders: int, *, churn: float = 0.05, invalid: int = 0
    ) -> RoundStats:
        """Apply one round of changes, committed as one source transaction."""
        s = RoundStats()
        cur = self.con.cursor()
        # repair rows broken in the previous round
        for cid in self.broken:
            cur.execute(
                "UPDATE customers SET email = ?, updated_at = ? WHERE id = ?",
                (f"c{cid}@example.com", self._tick(), cid),
            )
        self.broken = []
        live_c = self._ids("customers", "deleted_at IS NULL")
        live_o = self._ids("orders")
        upd_c = self.rng.sample(live_c, min(len(live_c), int(len(live_c) * churn)))
        for cid in upd_c:
            cur.execute(
                "UPDATE customers SET country = ?, updated_at = ? WHERE id = ?",
                (self.rng.choice(COUNTRIES), self._tick(), cid),
            )
        del_c = self.rng.sample(live_c, min(len(live_c), int(len(live_c) * churn / 3)))
        for cid in del_c:
            ts = self._tick()
            cur.execute(
                "UPDATE customers SET deleted_at = ?, updated_at = ? WHERE id = ?", (ts, ts, cid)
            )
        upd_o = self.rng.sample(live_o, min(len(live_o), int(len(live_o) * churn)))
        for oid in upd_o:
            cur.execute(
                "UPDATE orders SET status = ?, amount_cents = ?, updated_at = ? WHERE id = ?",
                (self.rng.choice(STATUSES), self.rng.randint(100, 50_000), self._tick(), oid),
            )
        del_o = self.rng.sample(live_o, min(len(live_o), int(len(live_o) * churn / 2)))
        cur.executemany("DELETE FROM orders WHERE id = ?", [(o,) for o in del_o])
        first = self._next_id("customers")
        new_c = [self._customer(first + i, bad=i < invalid) for i in range(n_customers)]
        self.broken = [first + i for i in range(min(invalid, n_customers))]
        cur.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", new_c)
        live_c = self._ids("customers", "deleted_at IS NULL")
        first_o = self._next_id("orders")
        new_o = [
            (
                first_o + i,
                self.rng.choice(live_c),
                self.rng.randint(100, 50_000),
                "new",
                self._tick(),
            )
            for i in range(n_orders)
        ]
        cur.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", new_o)
        self.con.commit()
        s.inserted = {"customers": len(new_c), "orders": len(new_o)}
        s.updated = {"customers": len(upd_c), "orders": len(upd_o)}
        s.deleted = {"customers": len(del_c), "orders": len(del_o)}
        s.invalid = len(self.broken)
        return s


JOBS_TOML = """\
# Written by `deltaferry demo`. The same format works for your own databases.
[jobs.shop]
source = "sql_database"
url = "sqlite:///{db}"
lake = "{lake}"
max_quarantine_ratio = 0.2

[[jobs.shop.tables]]
name = "customers"
primary_key = ["id"]
cursor = "updated_at"
deletes = "soft:deleted_at"
contract = "contracts.shop:Customers"

[[jobs.shop.tables]]
name = "orders"
primary_key = ["id"]
cursor = "updated_at"
deletes = "reconcile"
contract = "contracts.shop:Orders"
"""
