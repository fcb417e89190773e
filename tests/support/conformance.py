"""The conformance test every source kind passes (as the Singer SDK's standard tests do).

A harness owns one source of a kind with a single table ``items`` (``id``, ``name``,
``updated_at``; contract ``tests.support.contracts_conformance:Items``) and can change it.
``run_conformance`` checks that the kind loads and follows the interface, that its job
declares primary keys and cursors covered by a contract, that an empty source syncs to
nothing, and that an initial and an incremental sync give a replica equal to the source,
the incremental batch carrying only what changed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb

CONTRACT = "tests.support.contracts_conformance:Items"


def record(i: int, name: str | None = None, second: int | None = None) -> dict[str, Any]:
    s = i if second is None else second
    return {"id": i, "name": name or f"item {i}", "updated_at": f"2026-11-01T10:{s:02d}:00+00:00"}


class Harness:
    kind = ""

    def __init__(self) -> None:
        self.truth: dict[int, dict[str, Any]] = {}

    def start(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def table_settings(self) -> str:
        return ""

    def job_settings(self) -> str:
        return ""

    def url(self) -> str:
        return str(self.folder)

    def jobs_toml(self, name: str, lake: str) -> str:
        return (
            f'[jobs.{name}]\nsource = "{self.kind}"\nurl = "{self.url()}"\nlake = "{lake}"\n'
            f"{self.job_settings()}\n"
            f'[[jobs.{name}.tables]]\nname = "items"\nprimary_key = ["id"]\n'
            f'cursor = "updated_at"\ncontract = "{CONTRACT}"\n{self.table_settings()}'
        )

    def put(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.truth[r["id"]] = r
        self.write(rows)

    def write(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class JsonlFolder(Harness):
    """``<folder>/items.jsonl``, rewritten whole: the scaffolded source kind's default."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def start(self, folder: Path) -> None:
        super().start(folder)
        (folder / "items.jsonl").write_text("")

    def write(self, rows: list[dict[str, Any]]) -> None:
        lines = [json.dumps(self.truth[k]) + "\n" for k in sorted(self.truth)]
        (self.folder / "items.jsonl").write_text("".join(lines))


class SqliteTable(Harness):
    kind = "sql_database"

    def start(self, folder: Path) -> None:
        super().start(folder)
        self.db = folder / "src.db"
        with sqlite3.connect(self.db) as con:
            con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT)")

    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def write(self, rows: list[dict[str, Any]]) -> None:
        with sqlite3.connect(self.db) as con:
            con.executemany("INSERT OR REPLACE INTO items VALUES (:id, :name, :updated_at)", rows)


class RestCollection(Harness):
    """``/api/items`` of the test API server: cursor pages, ``since``, bearer auth."""

    kind = "rest_api"

    def __init__(self, monkeypatch: Any) -> None:
        super().__init__()
        self.monkeypatch = monkeypatch

    def start(self, folder: Path) -> None:
        from tests.support.api_server import ApiServer

        super().start(folder)
        self.server = ApiServer()
        self.server.start()
        self.monkeypatch.setenv("CONFORMANCE_API_TOKEN", self.server.token)

    def url(self) -> str:
        return self.server.url

    def job_settings(self) -> str:
        return 'auth = { type = "bearer", token = "env:CONFORMANCE_API_TOKEN" }\n'

    def table_settings(self) -> str:
        return (
            'cursor_param = "since"\ninitial_value = "2000-01-01T00:00:00+00:00"\n'
            'data_selector = "data"\n'
            'paginator = { type = "cursor", cursor_path = "next", cursor_param = "cursor" }\n'
        )

    def write(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.server.items[r["id"]] = dict(r)

    def stop(self) -> None:
        self.server.stop()


def _replica(job) -> list[tuple]:
    job.pull()
    con = duckdb.connect(str(job.replica), read_only=True)
    try:
        return con.execute("SELECT id, name FROM items ORDER BY id").fetchall()
    finally:
        con.close()


def _published(out: dict) -> int | None:
    s = out["tables"]["items"]
    return s["rows"] if s.get("batch") else None


def run_conformance(h: Harness, job) -> None:  # noqa: ANN001 - a tests.conftest job
    from contracts import load_contract
    from deltaferry.config import source_settings
    from deltaferry.context import preflight_job
    from deltaferry.job_models import JobModel, TableModel
    from sources import source_module

    h.start(job.dir / "source")
    try:
        job.config.write_text(h.jobs_toml(job.name, job.lake_url))
        # the kind loads and follows the interface
        module = source_module(SimpleNamespace(source=h.kind))
        assert callable(module.extract) and callable(module.preflight_source)
        settings = source_settings(h.kind)  # its settings are the jobs file's models
        assert issubclass(getattr(settings, "Job", JobModel), JobModel)
        assert issubclass(getattr(settings, "Table", TableModel), TableModel)
        # its job declares keys and cursors, and a contract covers every table
        cfg = job.job()
        for t in cfg.tables:
            assert t.primary_key
            columns = set(load_contract(t.contract, where=t.name).schema.columns)
            assert set(t.primary_key) <= columns
            assert t.cursor is None or t.cursor in columns
        # an empty source syncs to nothing
        preflight_job(cfg)
        assert _published(job.sync()) is None
        # initial sync
        h.put([record(i) for i in range(1, 7)])
        assert _published(job.sync()) == 6
        assert _replica(job) == [(i, r["name"]) for i, r in sorted(h.truth.items())]
        # incremental: one record changed, one new; only those two are published
        h.put([record(2, "item 2 changed", 20), record(7, second=21)])
        assert _published(job.sync()) == 2
        assert _replica(job) == [(i, r["name"]) for i, r in sorted(h.truth.items())]
        # nothing changed: nothing published
        assert _published(job.sync()) is None
    finally:
        h.stop()


class CsvDrops(Harness):
    """A folder of CSV drops: every change arrives as a new file under ``items/``."""

    kind = "files"

    def start(self, folder: Path) -> None:
        super().start(folder)
        (folder / "items").mkdir()
        self.n = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        import os
        import time

        self.n += 1
        path = self.folder / "items" / f"{self.n:04d}.csv"
        lines = ["id,name,updated_at\n"] + [
            f"{r['id']},{r['name']},{r['updated_at']}\n" for r in rows
        ]
        path.write_text("".join(lines))
        at = time.time() - 3600 + self.n  # each drop newer than the one before
        os.utime(path, (at, at))

    def jobs_toml(self, name: str, lake: str) -> str:
        # files are picked up by modification time: the table has no cursor column
        return super().jobs_toml(name, lake).replace('cursor = "updated_at"\n', "")
