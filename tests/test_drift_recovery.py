"""Drift always ends (issue 18): a retyped column, held rows and a renamed column each
clear once the source or the contract is repaired, and held rows are published once.

A one-table SQLite source (``t``: id, a value column, ``updated_at``) with its contract
module written per test; the lake is a folder (file://).
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import uuid
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from deltaferry.errors import SchemaDrift, TerminalError
from deltaferry.state import StateStore

HEADER = """
import pandas as pd, pandera.pandas as pa
from pandera.typing import Series
"""


class Job:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
        self.tmp = tmp
        self.db = tmp / "src.db"
        self.module = f"rc_{uuid.uuid4().hex[:8]}"
        self.path = tmp / f"{self.module}.py"
        self.path.write_text(HEADER + body)
        monkeypatch.syspath_prepend(str(tmp))
        self.config = tmp / "deltaferry.toml"
        self.replica = tmp / "replica.duckdb"

    def write(self, contract: str, drift: str, ratio: float = 0.05, table: str = "") -> None:
        self.config.write_text(
            f'[jobs.j]\nsource = "sql_database"\nurl = "sqlite:///{self.db}"\n'
            f'lake = "file://{self.tmp}/lake"\ndrift = "{drift}"\nmax_quarantine_ratio = {ratio}\n'
            f'[[jobs.j.tables]]\nname = "t"\nprimary_key = ["id"]\ncursor = "updated_at"\n'
            f'contract = "{self.module}:{contract}"\n{table}'
        )

    def adopt_draft(self, source: str, drift: str) -> None:
        """Adopt the v2 draft of contract T as the draft and the README say: the class into
        the contract module, the versions as one chain, the table pointed at the chain."""
        self.add(
            "\nfrom contracts import Chain, MigrationError\n\n"
            + source[source.index("class TV2(T)") :]
            + "\nTChain = Chain(T, TV2)\n"
        )
        self.write("TChain", drift)

    def add(self, body: str) -> None:
        self.replace(self.path.read_text() + body)

    def replace(self, text: str) -> None:
        """The contracts module's text is now ``text`` (read again on the next import)."""
        import importlib
        import sys

        self.path.write_text(text)
        sys.modules.pop(self.module, None)
        importlib.invalidate_caches()

    def sql(self, script: str) -> None:
        con = sqlite3.connect(self.db)
        con.executescript(script)
        con.commit()
        con.close()

    def sync(self) -> dict:
        from flows.sync import sync_job

        return sync_job(job="j", config=str(self.config))

    def pull(self) -> None:
        from deltaferry.config import load_job
        from deltaferry.replica import pull
        from destinations.lake import open_lake

        job = load_job("j", self.config)
        pull(job, open_lake(job.lake), self.replica)

    def replica_rows(self, columns: str) -> list[tuple]:
        con = duckdb.connect(str(self.replica), read_only=True)
        try:
            return con.execute(f"SELECT {columns} FROM t ORDER BY id").fetchall()
        finally:
            con.close()

    def held(self) -> list[tuple]:
        return sorted(
            (json.loads(r["pk"])["id"], r["field"], r["check"])
            for r in StateStore("j").quarantine_rows("t")
        )

    def cli(self, *args: str) -> tuple[int, str]:
        from deltaferry.cli import cli

        result = CliRunner().invoke(cli, [*args, "--config", str(self.config)])
        return result.exit_code, result.output

    def ops(self, step: str) -> list[str]:
        with StateStore("j").connect(read_only=True) as con:
            return [
                r[0]
                for r in con.execute(
                    "SELECT detail FROM ops_log WHERE step = ? ORDER BY id", [step]
                ).fetchall()
            ]

# not strict: columns it does not list are published as staged
LOOSE = """
class Loose(pa.DataFrameModel):
    id: Series[int] = pa.Field(unique=True)
    updated_at: Series[pd.Timestamp]
    class Config:
        coerce = True
"""

RETYPE = """
class T(pa.DataFrameModel):
    id: Series[int] = pa.Field(unique=True)
    n: Series[int] = pa.Field(nullable=True)
    updated_at: Series[pd.Timestamp]
    class Config:
        strict = True
        coerce = True
"""


@pytest.mark.parametrize("policy", ["freeze", "quarantine", "evolve"])
def test_a_retyped_column_ends_under_every_policy(tmp_path, home, prefect_api, monkeypatch, policy):
    job = Job(tmp_path, monkeypatch, RETYPE)
    job.write("T", policy)
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, 10, '2026-01-01 00:00:01'), (2, 20, '2026-01-01 00:00:02');"
    )
    assert job.sync()["tables"]["t"]["rows"] == 2
    job.sql(  # INTEGER -> TEXT, and a value that is not a number
        "CREATE TABLE t2 (id INTEGER PRIMARY KEY, n TEXT, updated_at TIMESTAMP);"
        "INSERT INTO t2 SELECT * FROM t; DROP TABLE t; ALTER TABLE t2 RENAME TO t;"
        "UPDATE t SET n = 'forty', updated_at = '2026-01-01 00:00:03' WHERE id = 1;"
    )
    if policy == "freeze":
        with pytest.raises(SchemaDrift) as e:
            job.sync()
        message = str(e.value)
        assert "\n" not in message
        for part in ("job 'j' table 't'", "column n changed type", "BIGINT", "now text values",
                     "n▶v_text", "repair the values of n at the source"):  # fmt: skip
            assert part in message, message
    else:
        out = job.sync()
        assert out["tables"]["t"].get("rows", 0) == 0  # row 2 re-read unchanged: nothing to publish
        assert job.held() == [(1, "n▶v_text", "schema drift")]
        assert "column n changed type" in out["drift"]["t"]
    job.sql(  # the source repaired: INTEGER again, every value a number
        "CREATE TABLE t2 (id INTEGER PRIMARY KEY, n INTEGER, updated_at TIMESTAMP);"
        "INSERT INTO t2 SELECT id, 40, '2026-01-01 00:00:04' FROM t WHERE id = 1;"
        "INSERT INTO t2 SELECT id, CAST(n AS INTEGER), updated_at FROM t WHERE id = 2;"
        "DROP TABLE t; ALTER TABLE t2 RENAME TO t;"
    )
    out = job.sync()
    assert out["tables"]["t"]["rows"] == 1 and not out.get("drift", {}).get("t")
    assert job.held() == []  # the newer version of key 1 resolved its record
    job.pull()
    assert job.replica_rows("id, n") == [(1, 40), (2, 20)]
    assert job.sync()["tables"]["t"].get("rows", 0) == 0  # and nothing again


def test_a_failed_staging_load_aborts_its_package_and_the_repaired_source_runs(
    tmp_path, home, prefect_api, monkeypatch
):
    """A load into staging that the database refuses (here made to refuse: every value of
    another type than staged now goes to a variant column first) fails the run with the
    database's one line each time, dlt's package aborted; the next good load runs."""
    from dlt.destinations.impl.duckdb.duck import DuckDbCopyJob

    job = _synced(tmp_path, monkeypatch, "quarantine")
    job.sql("UPDATE t SET n = 2, updated_at = '2026-01-01 00:00:02' WHERE id = 1;")
    load = DuckDbCopyJob.run

    def refused(self):
        self._job_client.sql_client.execute_sql("SELECT CAST('soon' AS TIMESTAMP)")

    monkeypatch.setattr(DuckDbCopyJob, "run", refused)
    for _ in range(2):  # the same one line each time: no package left pending
        with pytest.raises(TerminalError) as e:
            job.sync()
        message = str(e.value)
        assert "\n" not in message and "loading into staging failed" in message, message
        assert "soon" in message and "the load package was aborted" in message
    monkeypatch.setattr(DuckDbCopyJob, "run", load)
    assert job.sync()["tables"]["t"]["rows"] == 1
    job.pull()
    assert job.replica_rows("id, n") == [(1, 2)]


def _synced(tmp_path, monkeypatch, policy: str, rows: str = "(1, 1, '2026-01-01 00:00:01')") -> Job:
    """A RETYPE job under ``policy`` whose table ``t`` (id, n, updated_at) holds ``rows``,
    synced once."""
    job = Job(tmp_path, monkeypatch, RETYPE)
    job.write("T", policy)
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, updated_at TIMESTAMP);"
        f"INSERT INTO t VALUES {rows};"
    )
    job.sync()
    return job


class _Crash(BaseException):
    """A process stopping where it is raised: no ``except Exception`` runs."""


def _poison_normalize(monkeypatch: pytest.MonkeyPatch, value: int) -> None:
    """dlt's normalize step fails for every extracted file whose column ``n`` holds
    ``value``: a value staging cannot take, found by dlt after the extraction (which
    already advanced the cursor in dlt's local state)."""
    import pyarrow.parquet as pq
    from dlt.normalize.items_normalizers.arrow import ArrowItemsNormalizer

    normalize = ArrowItemsNormalizer.__call__

    def poisoned(self, extracted_items_file, root_table_name):
        storage = self.normalize_storage.extracted_packages.storage
        with storage.open_file(extracted_items_file, "rb") as f:
            table = pq.read_table(f)
        if "n" in table.column_names and value in table.column("n").to_pylist():
            raise ValueError(f"value {value} cannot be normalized")
        return normalize(self, extracted_items_file, root_table_name)

    monkeypatch.setattr(ArrowItemsNormalizer, "__call__", poisoned)


def _pending(job: Job) -> bool:
    from deltaferry.config import load_job
    from sources.pipeline import pipeline_for

    pipeline, _ = pipeline_for(load_job("j", job.config))
    return bool(pipeline.has_pending_data)


def _source_rows(job: Job) -> list[tuple]:
    con = sqlite3.connect(job.db)
    try:
        return con.execute("SELECT id, n FROM t ORDER BY id").fetchall()
    finally:
        con.close()


def test_a_failed_normalize_is_not_replayed_and_the_repaired_source_publishes_every_row(
    tmp_path, home, prefect_api, monkeypatch
):
    """A value dlt's normalize step refuses stops each run with one line and leaves no load
    package pending: once the value is repaired at the source, the next run reads again from
    the last committed cursor and publishes every row changed since (dlt replayed the failed
    package first on every run, so the job failed until reset, and the cursor the package
    had advanced would have skipped the rows between)."""
    job = _synced(
        tmp_path, monkeypatch, "quarantine",
        "(1, 1, '2026-01-01 00:00:01'), (2, 2, '2026-01-01 00:00:02')",
    )
    _poison_normalize(monkeypatch, 13)
    job.sql(
        "INSERT INTO t VALUES (3, 3, '2026-01-01 00:00:03');"
        "UPDATE t SET n = 13, updated_at = '2026-01-01 00:00:04' WHERE id = 2;"
    )
    messages = set()
    for _ in range(2):
        with pytest.raises(TerminalError) as e:
            job.sync()
        messages.add(str(e.value))
        assert not _pending(job)
    (message,) = messages  # the same line each run
    assert "\n" not in message and message.startswith(
        "job 'j' table 't': normalizing the extracted rows failed: value 13 cannot be normalized;"
    ), message
    assert "the load package was aborted" in message
    assert not list((home / "j").rglob("load/new/*")), "an aborted package's folder is left"
    job.sql("UPDATE t SET n = 14, updated_at = '2026-01-01 00:00:05' WHERE id = 2;")
    assert job.sync()["tables"]["t"]["rows"] == 2  # row 3, read again, and row 2
    job.pull()
    assert job.replica_rows("id, n") == _source_rows(job) == [(1, 1), (2, 14), (3, 3)]


@pytest.mark.parametrize("where", ["in the abort", "after the abort"])
def test_a_crash_while_a_failed_package_is_aborted_loses_no_row(
    tmp_path, home, prefect_api, monkeypatch, where
):
    """dlt's abort deletes an extracted package before it rewinds the cursors the package
    advanced: a process stopped between the two (or before the mark of the abort is
    removed) is found by the next run, which rebuilds dlt's local state from staging's last
    completed load, so the rows extracted into the aborted package are read again."""
    from dlt.pipeline.pipeline import Pipeline

    job = _synced(tmp_path, monkeypatch, "quarantine")
    _poison_normalize(monkeypatch, 13)
    job.sql(
        "INSERT INTO t VALUES (2, 2, '2026-01-01 00:00:02'), (3, 13, '2026-01-01 00:00:03');"
    )
    if where == "in the abort":
        target, name = Pipeline, "_restore_from_snapshot"
    else:
        import pathlib

        target, name = pathlib.Path, "unlink"
    real = getattr(target, name)

    def crash(self, *args, **kwargs):
        if where == "in the abort" or str(self).endswith(".abort.json"):
            raise _Crash(where)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(target, name, crash)
    with pytest.raises(_Crash):
        job.sync()
    monkeypatch.setattr(target, name, real)
    marks = list((home / "j" / "dlt").glob("*.abort.json"))
    assert len(marks) == 1, marks  # the abort's mark outlived the crash
    job.sql("UPDATE t SET n = 3, updated_at = '2026-01-01 00:00:04' WHERE id = 3;")
    assert job.sync()["tables"]["t"]["rows"] == 2  # row 2 is not skipped
    assert not list((home / "j" / "dlt").glob("*.abort.json"))
    job.pull()
    assert job.replica_rows("id, n") == _source_rows(job) == [(1, 1), (2, 2), (3, 3)]


def test_a_source_column_renamed_in_case_only_is_refused_naming_both(
    tmp_path, home, prefect_api, monkeypatch
):
    """``ALTER TABLE t RENAME COLUMN n TO N``: DuckDB (staging, the replica) does not tell
    ``N`` from the staged ``n``, and dlt's load of it failed on every later run, even after
    the rename was undone, until reset. It is refused before anything is read, in one line
    naming both; undone, the next run goes on."""
    from deltaferry.errors import ConfigError

    job = _synced(tmp_path, monkeypatch, "freeze")
    job.sql(
        "ALTER TABLE t RENAME COLUMN n TO N;"
        "INSERT INTO t VALUES (2, 2, '2026-01-01 00:00:02');"
    )
    for _ in range(2):
        with pytest.raises(ConfigError) as e:
            job.sync()
        assert str(e.value).startswith(
            "job 'j' table 't': source column 'N' differs only in case from the table's "
            "column 'n' (staged, or read earlier in this run), and staging and the replica "
            "(DuckDB) do not tell names apart by case;"
        ), str(e.value)
        assert "(deltaferry reset j --table t --reason 'N renamed')" in str(e.value)
    job.sql("ALTER TABLE t RENAME COLUMN N TO n;")
    assert job.sync()["tables"]["t"]["rows"] == 1
    job.pull()
    assert job.replica_rows("id, n") == _source_rows(job) == [(1, 1), (2, 2)]


def test_text_in_a_timestamp_column_is_drift_not_a_load_failure(tmp_path, home, prefect_api, monkeypatch):
    """A SQLite timestamp column re-created as TEXT holding a word: the word goes to the
    variant column and the row is held under ``quarantine`` (it failed every run's load)."""
    job = Job(
        tmp_path,
        monkeypatch,
        """
class T(pa.DataFrameModel):
    id: Series[int] = pa.Field(unique=True)
    seen: Series[pd.Timestamp] = pa.Field(nullable=True)
    updated_at: Series[pd.Timestamp]
    class Config:
        strict = True
        coerce = True
""",
    )
    job.write("T", "quarantine", ratio=1.0)
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, seen TIMESTAMP, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, '2026-01-01 00:00:00', '2026-01-01 00:00:01');"
    )
    job.sync()
    job.sql(
        "CREATE TABLE t2 (id INTEGER PRIMARY KEY, seen TEXT, updated_at TIMESTAMP);"
        "INSERT INTO t2 VALUES (1, 'soon', '2026-01-01 00:00:02'), (2, '2026-01-03 04:05:06', '2026-01-01 00:00:02');"
        "DROP TABLE t; ALTER TABLE t2 RENAME TO t;"
    )
    job.sync()
    assert [h[0] for h in job.held()] == [1]
    job.pull()
    assert job.replica_rows("id, seen") == [(1, datetime.datetime(2026, 1, 1)), (2, datetime.datetime(2026, 1, 3, 4, 5, 6))]


def test_a_column_typed_anew_for_an_existing_job_is_drift_until_restaged(
    tmp_path, home, prefect_api, monkeypatch
):
    """Following the advice for a SQLite DATE column holding times of day (``column_types
    = { d = "timestamp" }``) on a job that has staged the column as DATE: dlt's schema takes
    the new type, the staged column keeps DATE, and a run with no change in between made
    the next time of day load cut to its day, exit 0. It is drift now, naming the column and
    the reset that stages it anew; after the reset the value is published whole."""
    job = Job(
        tmp_path,
        monkeypatch,
        LOOSE,
    )
    job.write("Loose", "freeze")
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, d DATE, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, '2024-01-01', '2026-01-01 00:00:01');"
    )
    job.sync()
    job.config.write_text(job.config.read_text() + 'column_types = { d = "timestamp" }\n')
    assert job.sync()["tables"]["t"].get("rows", 0) == 0  # no change
    job.sql("UPDATE t SET d = '2024-02-02 10:00:00.25', updated_at = '2026-01-01 00:00:03';")
    for _ in range(2):
        with pytest.raises(SchemaDrift) as e:
            job.sync()
        message = str(e.value)
        for part in ("table 't'", "column d changed type", "DATE", "deltaferry reset j --table t"):
            assert part in message, message
    code, out = job.cli("reset", "j", "--table", "t", "--reason", "d retyped")
    assert code == 0, out
    job.sync()
    job.pull()
    assert job.replica_rows("id, d") == [(1, datetime.datetime(2024, 2, 2, 10, 0, 0, 250000))]


BASE = """
class T(pa.DataFrameModel):
    id: Series[int] = pa.Field(unique=True)
    v: Series[str] = pa.Field(isin=["a", "b", "new row"])
    updated_at: Series[pd.Timestamp]
    class Config:
        strict = True
        coerce = True
"""


def test_rows_held_for_a_new_column_are_published_once_the_contract_has_it(
    tmp_path, home, prefect_api, monkeypatch
):
    job = Job(tmp_path, monkeypatch, BASE)
    job.write("T", "quarantine")
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, 'a', '2026-01-01 00:00:01');"
    )
    job.sync()
    job.sql(
        "ALTER TABLE t ADD COLUMN nick TEXT;"
        "UPDATE t SET nick = 'n1', updated_at = '2026-01-01 00:00:02' WHERE id = 1;"
        "INSERT INTO t VALUES (3, 'new row', '2026-01-01 00:00:03', 'n3');"
    )
    assert job.sync()["tables"]["t"].get("rows", 0) == 0
    assert job.held() == [(1, "nick", "schema drift"), (3, "nick", "schema drift")]
    code, listed = job.cli("quarantine", "list", "j", "--table", "t")
    assert code == 0 and "2 held record(s)" in listed and "id=3" in listed, listed
    assert "when the contract changes" in listed
    job.add(
        """
class T2(T):
    __version__ = 2
    nick: Series[str] = pa.Field(nullable=True)
"""
    )
    job.write("T2", "quarantine")
    code, listed = job.cli("quarantine", "list", "j")
    assert "next run (contract changed)" in listed, listed
    out = job.sync()
    assert out["tables"]["t"]["rows"] == 2 and out["tables"]["t"]["batch"] == 2
    assert job.held() == []
    assert any("2 held row(s) validated again" in d and "2 published" in d for d in job.ops("quarantine"))
    job.pull()
    assert job.replica_rows("id, v, nick") == [(1, "a", "n1"), (3, "new row", "n3")]
    assert job.sync()["tables"]["t"].get("rows", 0) == 0  # published once: nothing again
    code, listed = job.cli("quarantine", "list", "j", "--all")
    assert "resolved: batch 2" in listed and "0 held record(s)" in listed


def test_rows_held_by_the_contract_are_published_after_it_is_relaxed_newest_version_wins(
    tmp_path, home, prefect_api, monkeypatch
):
    job = Job(tmp_path, monkeypatch, BASE)
    job.write("T", "freeze", ratio=0.6)
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, 'zzz', '2026-01-01 00:00:01'), (2, 'a', '2026-01-01 00:00:01');"
    )
    assert job.sync()["tables"]["t"]["quarantined"] == 1
    job.sql(
        "UPDATE t SET v = 'yyy', updated_at = '2026-01-01 00:00:02' WHERE id = 1;"
        "UPDATE t SET v = 'b', updated_at = '2026-01-01 00:00:02' WHERE id = 2;"
    )
    job.sync()  # a newer, still bad version: held again, the old record resolved
    rows = StateStore("j").quarantine_rows("t")
    assert [json.loads(r["row_json"])["v"] for r in rows] == ["yyy"]
    # a release under the same contract validates again: held again, not duplicated
    code, said = job.cli("quarantine", "release", "j", "--table", "t", "--reason", "retry")
    assert code == 0 and "1 held key(s) released" in said, said
    assert any("released for validation" in d for d in job.ops("quarantine-release"))
    assert job.sync()["tables"]["t"].get("rows", 0) == 0
    assert len(job.held()) == 1
    assert any("0 published, 1 held again" in d for d in job.ops("quarantine"))
    job.add(
        """
class T2(T):
    __version__ = 2
    v: Series[str]
"""
    )
    job.write("T2", "freeze", ratio=0.6)
    out = job.sync()
    assert out["tables"]["t"]["rows"] == 1 and job.held() == []
    job.pull()
    assert job.replica_rows("id, v") == [(1, "yyy"), (2, "b")]  # the newest version, once
    code, said = job.cli("quarantine", "release", "j", "--table", "nope")
    assert code == 2 and "has no table 'nope'" in said


RENAME = """
class T(pa.DataFrameModel):
    id: Series[int] = pa.Field(unique=True)
    city: Series[str]
    updated_at: Series[pd.Timestamp]
    class Config:
        strict = True
        coerce = True
"""

# rows 1 (Oslo) and 2 (Rome) of table t, row 1 the newest
TWO_CITIES = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, city TEXT, updated_at TIMESTAMP);"
    "INSERT INTO t VALUES (1, 'Oslo', '2026-01-01 00:00:01'), (2, 'Rome', '2026-01-01 00:00:00');"
)


def test_evolve_a_rename_is_held_reported_and_the_adopted_draft_publishes_it(
    tmp_path, home, prefect_api, monkeypatch
):
    job = Job(tmp_path, monkeypatch, RENAME)
    job.write("T", "evolve")
    job.sql(TWO_CITIES)
    job.sync()
    job.pull()  # a replica at v1: adopting the draft must migrate its rows, not strand them
    job.sql(
        "ALTER TABLE t RENAME COLUMN city TO town;"
        "UPDATE t SET town = 'Bergen', updated_at = '2026-01-01 00:00:02' WHERE id = 1;"
    )
    out = job.sync()  # not a failure: the renamed row waits for the next version
    drift = out["drift"]["t"]
    assert "new column town" in drift and "required column city was dropped by the source" in drift
    assert any("city was dropped" in d for d in job.ops("drift"))
    # the rename gave every row a town without moving row 2's cursor: the table is read
    # whole once, so row 2 (now without a city) is held like row 1
    assert job.held() == [(1, "city", "schema drift"), (2, "city", "schema drift")]
    draft = home / "j" / "drafts" / "t_v2.py"
    source = draft.read_text()
    assert "town: Series[str] = pa.Field(nullable=True)" in source
    assert "city: Series[str] = pa.Field(nullable=True)" in source
    assert "__deprecated__ = {'city': 3}" in source
    # city, required by v1, is dropped: v2 rows cannot go back, so no downgrade
    assert "def upgrade(frame)" in source and "def downgrade(frame)" not in source
    assert "Chain(T, TV2)" in source  # the draft says how to adopt it
    # adopt as the draft and the README say: the class into the contract module, the
    # versions as one chain, the table pointed at the chain (pointed at TV2 alone, the
    # replica pulled at v1 had no way to v2 and every pull stopped: a fresh-user trial)
    job.adopt_draft(source, "evolve")
    out = job.sync()
    assert out["tables"]["t"]["rows"] == 2 and job.held() == []
    job.pull()
    assert job.replica_rows("id, city, town") == [(1, None, "Bergen"), (2, None, "Rome")]


def test_freeze_reports_a_dropped_column_with_the_rename(tmp_path, home, prefect_api, monkeypatch):
    job = Job(tmp_path, monkeypatch, RENAME)
    job.write("T", "freeze")
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, city TEXT, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, 'Oslo', '2026-01-01 00:00:01');"
    )
    job.sync()
    job.sql(
        "ALTER TABLE t RENAME COLUMN city TO town;"
        "UPDATE t SET town = 'Bergen', updated_at = '2026-01-01 00:00:02' WHERE id = 1;"
    )
    with pytest.raises(SchemaDrift) as e:
        job.sync()
    assert "new column town" in str(e.value)
    assert "required column city was dropped by the source" in str(e.value)


NULLABLE = RENAME.replace("    city: Series[str]\n", "    city: Series[str] = pa.Field(nullable=True)\n")


def _renamed_nullable(job: Job, drift: str) -> None:
    """Rows 1-3 published with a nullable city (row 3 without one), then the source renames
    city to town and changes row 1."""
    job.write("T", drift)
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, city TEXT, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, 'Oslo', '2026-01-01 00:00:01'), (2, 'Rome', '2026-01-01 00:00:00'),"
        " (3, NULL, '2026-01-01 00:00:00');"
    )
    job.sync()
    job.pull()
    job.sql(
        "ALTER TABLE t RENAME COLUMN city TO town;"
        "UPDATE t SET town = 'Bergen', updated_at = '2026-01-01 00:00:02' WHERE id = 1;"
    )


def test_evolve_a_nullable_column_renamed_is_held_not_published_null(
    tmp_path, home, prefect_api, monkeypatch
):
    """Renaming a *nullable* source column read the table whole (a gained column) and
    published every row with the old column NULL, without the new one: the values were
    gone from the lake and every replica, and each run said "no change" (fresh-user
    trial). The old name is a dropped column like a required one: rows are held, the draft
    deprecates it, and the adopted version publishes the values under the new name."""
    job = Job(tmp_path, monkeypatch, NULLABLE)
    _renamed_nullable(job, "evolve")
    out = job.sync()
    assert "column city was dropped by the source (nullable" in out["drift"]["t"]
    # read whole (the gained column); row 3 had no city and has no town: unchanged, not cut
    assert job.held() == [(1, "city", "schema drift"), (2, "city", "schema drift")]
    job.pull()  # nothing was published: the replica keeps every city
    assert job.replica_rows("id, city") == [(1, "Oslo"), (2, "Rome"), (3, None)]
    source = (home / "j" / "drafts" / "t_v2.py").read_text()
    assert "__deprecated__ = {'city': 3}" in source
    assert "def downgrade(frame)" in source  # city was nullable: v2 rows go back to v1
    job.adopt_draft(source, "evolve")
    out = job.sync()
    assert out["tables"]["t"]["rows"] == 2 and job.held() == [] and not out.get("drift")
    job.pull()
    assert job.replica_rows("id, town") == [(1, "Bergen"), (2, "Rome"), (3, None)]
    out = job.sync()  # deprecated: no longer drift, and nothing to publish
    assert out["tables"]["t"].get("rows", 0) == 0 and not out.get("drift"), out


def test_values_evolve_left_out_are_said_once_the_contract_has_them_and_reset_publishes_them(
    tmp_path, home, prefect_api, monkeypatch
):
    """Under evolve, rows are published without a new column; once the adopted version has
    it, those rows' values reached no replica and every run was green (fresh-user trial).
    The first batch under that version says how many rows and the fix; the fix works."""
    job = Job(tmp_path, monkeypatch, RENAME)
    job.write("T", "evolve")
    job.sql(TWO_CITIES)
    job.sync()
    job.sql(
        "ALTER TABLE t ADD COLUMN zone TEXT;"
        "UPDATE t SET zone = 'north', updated_at = '2026-01-01 00:00:02' WHERE id = 1;"
    )
    assert "published without zone" in job.sync()["drift"]["t"]
    job.adopt_draft((home / "j" / "drafts" / "t_v2.py").read_text(), "evolve")
    job.sql("UPDATE t SET city = 'Milan', updated_at = '2026-01-01 00:00:03' WHERE id = 2;")
    line = job.sync()["drift"]["t"]
    for part in ("job 'j' table 't'", "publishes zone, which batch 2", "1 row(s) published before",
                 "deltaferry reset j --table t"):  # fmt: skip
        assert part in line, line
    assert [d for d in job.ops("drift") if "1 row(s) published before" in d]
    job.pull()
    assert job.replica_rows("id, city, zone") == [(1, "Oslo", None), (2, "Milan", None)]
    code, text = job.cli("reset", "j", "--table", "t", "--reason", "publish zone")
    assert code == 0, text
    assert not job.sync().get("drift")  # said once: the batch after leaves nothing out
    job.pull()
    assert job.replica_rows("id, city, zone") == [(1, "Oslo", "north"), (2, "Milan", None)]


@pytest.mark.parametrize("drift", ["freeze", "quarantine"])
def test_a_nullable_column_dropped_stops_or_holds_until_a_version_deprecates_it(
    tmp_path, home, prefect_api, monkeypatch, drift
):
    """A nullable column the source drops (no rename) would publish NULL over every value
    readers hold, for the rows that change: freeze stops naming it and the fix; quarantine
    holds the rows. A version that leaves the column out ends it either way."""
    job = Job(tmp_path, monkeypatch, NULLABLE)
    _renamed_nullable(job, drift)
    job.sql("ALTER TABLE t DROP COLUMN town")  # the renamed column gone too: a plain drop
    if drift == "freeze":
        with pytest.raises(SchemaDrift) as e:
            job.sync()
        message = str(e.value)
        assert "\n" not in message and "job 'j' table 't'" in message
        assert "column city was dropped by the source" in message and "__deprecated__" in message
    else:
        job.sync()
        assert job.held() == [(1, "city", "schema drift")]  # the row that changed
    job.pull()
    assert job.replica_rows("id, city") == [(1, "Oslo"), (2, "Rome"), (3, None)]
    job.add(
        "\nfrom contracts import Chain\n\n\nclass TV2(T):\n    __version__ = 2\n"
        "    __deprecated__ = {'city': 3}\n\n    @staticmethod\n    def upgrade(frame):\n"
        "        return frame\n\n\nTChain = Chain(T, TV2)\n"
    )
    job.write("TChain", drift)
    out = job.sync()
    assert out["tables"]["t"]["rows"] == 1 and job.held() == []
    job.pull()  # the changed row without city; rows unchanged since keep the value they had
    assert job.replica_rows("id, city") == [(1, None), (2, "Rome"), (3, None)]


@pytest.mark.parametrize("drift", ["freeze", "quarantine", "evolve"])
def test_a_nullable_column_dropped_is_still_drift_after_a_reset(
    tmp_path, home, prefect_api, monkeypatch, drift
):
    """After ``reset --table`` staging has only the source's columns: a nullable column the
    source dropped is not staged, and only the lake says readers hold its values. Every row
    was published again without it, wiping them, exit 0 (fresh-user trial)."""
    job = Job(tmp_path, monkeypatch, NULLABLE)
    _renamed_nullable(job, drift)
    job.sql("ALTER TABLE t DROP COLUMN town")
    code, text = job.cli("reset", "j", "--table", "t", "--reason", "read it again")
    assert code == 0, text
    if drift == "freeze":
        for _ in range(2):  # the next run too: the adoption's record outlives the run
            with pytest.raises(SchemaDrift, match="column city was dropped by the source"):
                job.sync()
    else:
        assert "column city was dropped by the source" in job.sync()["drift"]["t"]
        # rows whose city the lake holds are held; row 3 (no city) equals the lake's
        assert job.held() == [(1, "city", "schema drift"), (2, "city", "schema drift")]
    job.pull()
    assert job.replica_rows("id, city") == [(1, "Oslo"), (2, "Rome"), (3, None)]


def test_after_a_reset_a_dropped_column_stays_drift_once_deletes_were_published(
    tmp_path, home, prefect_api, monkeypatch
):
    """After a reset the rows lacking the dropped column are held, but deletes publish:
    the guard was tied to the adopted batch, so from the next batch on a changed row
    published the column NULL (a review)."""
    job = Job(tmp_path, monkeypatch, NULLABLE)
    job.write("T", "quarantine", table='deletes = "reconcile"\n')
    job.sql(TWO_CITIES + "INSERT INTO t VALUES (3, 'Lima', '2025-12-31');")
    job.sync()
    job.sql("ALTER TABLE t DROP COLUMN city; DELETE FROM t WHERE id = 3;")
    code, text = job.cli("reset", "j", "--table", "t", "--reason", "read it again")
    assert code == 0, text
    assert job.sync()["tables"]["t"]["deletes"] == 1
    job.sql("UPDATE t SET updated_at = '2026-01-03' WHERE id = 2;")
    job.sync()
    assert (2, "city", "schema drift") in job.held()
    job.pull()
    assert job.replica_rows("id, city") == [(1, "Oslo"), (2, "Rome")]


def test_a_contract_column_the_source_never_had_is_no_drift_after_a_reset(
    tmp_path, home, prefect_api, monkeypatch
):
    """A nullable contract column the source never had is published NULL: after a reset
    it is not at the source and not staged, and readers hold no value of it: no drift."""
    job = Job(tmp_path, monkeypatch, NULLABLE.replace(
        "    updated_at:", "    note: Series[str] = pa.Field(nullable=True)\n    updated_at:"
    ))  # fmt: skip
    job.write("T", "freeze")
    job.sql(TWO_CITIES)
    job.sync()
    job.sql("UPDATE t SET city = 'Turin', updated_at = '2026-01-02' WHERE id = 2;")
    code, text = job.cli("reset", "j", "--table", "t", "--reason", "read it again")
    assert code == 0, text
    out = job.sync()
    assert not out.get("drift") and out["tables"]["t"]["rows"] == 1, out
    job.pull()
    assert job.replica_rows("id, city, note") == [(1, "Oslo", None), (2, "Turin", None)]


def test_rows_held_for_a_dropped_column_are_published_once_the_column_is_back(
    tmp_path, home, prefect_api, monkeypatch
):
    """A row held because the source dropped its column did not change when the column was
    added back (NULL there): nothing validated it again, so the change it carries was never
    published and its record stayed open, every run green (fresh-user trial). The column
    back at the source releases it."""
    job = Job(tmp_path, monkeypatch, NULLABLE)
    job.write("T", "quarantine")
    job.sql(TWO_CITIES)
    job.sync()
    job.sql("ALTER TABLE t DROP COLUMN city; UPDATE t SET updated_at = '2026-01-02' WHERE id = 2;")
    job.sync()
    # row 1 too: the newest cursor value's rows are read again every run
    assert job.held() == [(1, "city", "schema drift"), (2, "city", "schema drift")]
    job.sql("ALTER TABLE t ADD COLUMN city TEXT;")  # back, NULL on every row
    job.sync()
    assert job.held() == []
    job.pull()
    assert job.replica_rows("id, city, updated_at") == [
        (1, None, datetime.datetime(2026, 1, 1, 0, 0, 1)),  # as the source has them now
        (2, None, datetime.datetime(2026, 1, 2)),
    ]


def test_a_reset_resolves_the_records_of_staged_rows_held(
    tmp_path, home, prefect_api, monkeypatch
):
    """A reset drops the staged rows held back; their records stayed open for good when the
    re-read found the rows equal to the lake (no cut took their keys again), and status
    counted them held (fresh-user trial). The reset resolves them (a row that still fails
    is held again by the run after it: ``..._still_drift_after_a_reset``)."""
    job = Job(tmp_path, monkeypatch, NULLABLE)
    job.write("T", "quarantine")
    job.sql(TWO_CITIES + "INSERT INTO t VALUES (3, 'Lima', '2025-12-31');")
    job.sync()
    job.sql("ALTER TABLE t DROP COLUMN city; UPDATE t SET updated_at = '2026-01-02' WHERE id = 2;")
    job.sync()
    assert job.held() == [(1, "city", "schema drift"), (2, "city", "schema drift")]
    job.sql(  # back: as it was for rows 1 (equal to the lake: not cut again) and 3
        "ALTER TABLE t ADD COLUMN city TEXT; UPDATE t SET city = 'Oslo' WHERE id = 1;"
        "UPDATE t SET city = 'Lima' WHERE id = 3;"
    )
    code, text = job.cli("reset", "j", "--table", "t", "--reason", "read it again")
    assert code == 0, text
    resolved = [r for r in StateStore("j").quarantine_rows("t", held_only=False) if r["resolved"]]
    assert {r["resolved"] for r in resolved} == {
        "reset by the operator: read it again: staging read again whole (a row that still fails"
        " is held again)"
    }
    job.sync()
    assert job.held() == []  # the column is back: row 2 publishes with city NULL
    job.pull()
    assert job.replica_rows("id, city") == [(1, "Oslo"), (2, None), (3, "Lima")]


@pytest.mark.parametrize(
    ("change", "back", "cities"),
    [  # a rename reverted (cursor untouched); a drop, then the column added with a default
        ("ALTER TABLE t RENAME COLUMN city TO town;", "ALTER TABLE t RENAME COLUMN town TO city;",
         [(1, "Oslo"), (2, "Rome")]),
        ("ALTER TABLE t DROP COLUMN city;", "ALTER TABLE t ADD COLUMN city TEXT DEFAULT 'Paris';",
         [(1, "Paris"), (2, "Paris")]),
    ],
)  # fmt: skip
def test_rows_held_while_a_column_was_away_publish_the_values_it_came_back_with(
    tmp_path, home, prefect_api, monkeypatch, change, back, cities
):
    """Released when their column is back, held rows must not publish the copy staged while
    it was away (NULL there): the column's return reads the table whole first (a review)."""
    job = Job(tmp_path, monkeypatch, NULLABLE)
    job.write("T", "quarantine")
    job.sql(TWO_CITIES)
    job.sync()
    job.sql(change + "UPDATE t SET updated_at = '2026-01-02' WHERE id = 2;")
    job.sync()
    assert len(job.held()) == 2
    job.sql(back)
    job.sync()
    assert job.held() == []
    job.pull()
    assert job.replica_rows("id, city") == cities


def test_a_column_holding_values_of_two_types_is_one_line_and_ends_when_repaired(
    tmp_path, home, prefect_api, monkeypatch
):
    """SQLite keeps any value in any column: a column redeclared BLOB holding bytes and
    integers cannot be read as one Arrow column. One line names table and column, nothing is
    staged, the same line again next run, and the repaired source publishes."""
    job = Job(
        tmp_path,
        monkeypatch,
        """
class T(pa.DataFrameModel):
    id: Series[int] = pa.Field(unique=True)
    n: Series[int] = pa.Field(nullable=True)
    updated_at: Series[pd.Timestamp]
    class Config:
        strict = True
        coerce = True
""",
    )
    job.write("T", "quarantine")
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, 5, '2026-01-01 00:00:01'), (2, 6, '2026-01-01 00:00:01');"
    )
    job.sync()
    job.sql(
        "CREATE TABLE t2 (id INTEGER PRIMARY KEY, n BLOB, updated_at TIMESTAMP);"
        "INSERT INTO t2 SELECT * FROM t; DROP TABLE t; ALTER TABLE t2 RENAME TO t;"
        "UPDATE t SET n = X'07', updated_at = '2026-01-01 00:00:02' WHERE id = 1;"
        "UPDATE t SET n = 9, updated_at = '2026-01-01 00:00:03' WHERE id = 2;"
    )
    for _ in range(2):
        with pytest.raises(TerminalError) as e:
            job.sync()
        message = str(e.value)
        assert "\n" not in message and "table 't' column 'n'" in message, message
        assert "more than one type" in message and "nothing was staged" in message
    job.sql(
        "CREATE TABLE t2 (id INTEGER PRIMARY KEY, n INTEGER, updated_at TIMESTAMP);"
        "INSERT INTO t2 SELECT id, CASE WHEN id = 1 THEN 7 ELSE n END, updated_at FROM t;"
        "DROP TABLE t; ALTER TABLE t2 RENAME TO t;"
    )
    assert job.sync()["tables"]["t"]["rows"] == 2


def test_a_column_the_contract_does_not_type_retyped_is_drift_too(tmp_path, home, prefect_api, monkeypatch):
    """A contract that is not strict publishes columns it does not list. Such a column
    retyped at the source (a SQLite TEXT column's numbers, then a word) sent the new values
    to dlt's variant column and published NULL in the column itself, exit 0. It is drift
    like a contract column's retype: freeze stops the run naming it; repaired, it ends."""
    job = Job(
        tmp_path,
        monkeypatch,
        LOOSE,
    )
    job.write("Loose", "freeze")
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, 10, '2026-01-01 00:00:01'), (2, 20, '2026-01-01 00:00:02');"
    )
    assert job.sync()["tables"]["t"]["rows"] == 2
    job.sql(
        "CREATE TABLE t2 (id INTEGER PRIMARY KEY, n TEXT, updated_at TIMESTAMP);"
        "INSERT INTO t2 SELECT * FROM t; DROP TABLE t; ALTER TABLE t2 RENAME TO t;"
        "UPDATE t SET n = 'forty', updated_at = '2026-01-01 00:00:03' WHERE id = 1;"
    )
    with pytest.raises(SchemaDrift) as e:
        job.sync()
    message = str(e.value)
    assert "\n" not in message
    for part in ("job 'j' table 't'", "column n changed type", "n▶v_text", "deltaferry reset"):
        assert part in message, message
    # a number's text not as the number is written ('007' was published as 7, exit 0)
    job.sql("UPDATE t SET n = '007', updated_at = '2026-01-01 00:00:04' WHERE id = 1;")
    with pytest.raises(SchemaDrift) as e:
        job.sync()
    assert "column n changed type" in str(e.value)
    job.sql("UPDATE t SET n = '40', updated_at = '2026-01-01 00:00:05' WHERE id = 1;")
    assert job.sync()["tables"]["t"]["rows"] == 1
    job.pull()
    assert job.replica_rows("id, n") == [(1, 40), (2, 20)]


def test_a_contract_edited_in_place_stops_its_table_before_publishing(
    tmp_path, home, prefect_api, monkeypatch
):
    """A contract's code changed with its ``__version__`` kept: the producer published the
    next batch under the same version with another fingerprint, and every reader then
    stopped at it ("one version number names two different contracts"), a fresh replica
    included (a fresh-user trial). The table stops before anything is published, naming
    both fingerprints and the fix; the edit undone, the next run publishes."""
    from deltaferry.errors import ContractViolation

    job = Job(tmp_path, monkeypatch, LOOSE)
    job.write("Loose", "freeze")
    job.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, updated_at TIMESTAMP);"
        "INSERT INTO t VALUES (1, 1, '2026-01-01 00:00:01');"
    )
    job.sync()
    edited = LOOSE.replace("pa.Field(unique=True)", "pa.Field(unique=True, ge=0)")
    assert edited != LOOSE
    job.replace(HEADER + edited)
    job.sql("INSERT INTO t VALUES (2, 2, '2026-01-01 00:00:02');")
    with pytest.raises(ContractViolation) as e:
        job.sync()
    message = str(e.value)
    assert message.startswith(
        f"job 'j' table 't': contract {job.module}:Loose v1 is not the v1 batch 1 was "
        "published at (fingerprint "
    ), message
    assert "edited in place. Give the changed contract a new version (__version__ = 2" in message
    assert len(list((tmp_path / "lake").rglob("manifests/*.json"))) == 1
    job.replace(HEADER + LOOSE)
    job.sync()
    job.pull()
    assert job.replica_rows("id, n") == [(1, 1), (2, 2)]


TYPED_AFTER_LOOSE = """
class Typed(Loose):
    __version__ = 2
    c: Series[str] = pa.Field(nullable=True)
    @staticmethod
    def upgrade(frame):
        frame["c"] = frame["c"].map(lambda v: None if pd.isna(v) else repr(float(v)))
        return frame
    @staticmethod
    def downgrade(frame):
        return frame
from contracts import Chain
LooseThenTyped = Chain(Loose, Typed)
"""


def _retyped_and_reset(job: Job, was: str, now: str, values: str, new_value: str) -> None:
    """Table ``t`` (id, ``c`` of SQL type ``was``, updated_at) with rows ``values``, synced
    and pulled; then recreated with ``c`` as ``now``, row 1 set to ``new_value``: the run
    stops as drift (freeze), and ``reset`` is done as its message advises."""
    job.write("Loose", "freeze")
    job.sql(
        f"CREATE TABLE t (id INTEGER PRIMARY KEY, c {was}, updated_at TIMESTAMP);"
        f"INSERT INTO t VALUES {values};"
    )
    job.sync()
    job.pull()
    job.sql(
        f"CREATE TABLE t2 (id INTEGER PRIMARY KEY, c {now}, updated_at TIMESTAMP);"
        "INSERT INTO t2 SELECT * FROM t; DROP TABLE t; ALTER TABLE t2 RENAME TO t;"
        f"UPDATE t SET c = {new_value}, updated_at = '2026-01-01 00:00:03' WHERE id = 1;"
    )
    with pytest.raises(SchemaDrift):
        job.sync()
    code, out = job.cli("reset", "j", "--table", "t", "--reason", "c retyped")
    assert code == 0, out


def test_a_column_retyped_and_reset_stops_before_readers_would(
    tmp_path, home, prefect_api, monkeypatch
):
    """A column the contract does not type, retyped at the source (REAL to TEXT, with a
    word): the run stops as drift and advises a reset; after the reset the producer staged
    the column as text and published it, while batch 1 had it as DOUBLE, and every reader,
    a fresh one too, stopped at batch 2 for good (a fresh-user trial, PostgreSQL double to
    numeric). The producer now stops the table before publishing, naming column, both
    types, a value and the fix; with the column typed in contract v2, readers old and new
    go on and equal the source."""
    from deltaferry.errors import ContractViolation

    job = Job(tmp_path, monkeypatch, LOOSE)
    values = "(1, 1.5, '2026-01-01 00:00:01'), (2, 2.5, '2026-01-01 00:00:02')"
    _retyped_and_reset(job, "REAL", "TEXT", values, "'forty'")
    with pytest.raises(ContractViolation) as e:
        job.sync()
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        f"job 'j' table 't': column 'c' was published as DOUBLE up to batch 1 (contract "
        f"{job.module}:Loose v1, which does not type it), and this batch brings VARCHAR "
        "values DOUBLE does not hold exactly (e.g. 'forty'): every reader would stop"
    ), message
    assert "New.__version__ = 2" in message
    assert len(list((tmp_path / "lake").rglob("manifests/*.json"))) == 1
    job.add(TYPED_AFTER_LOOSE)
    job.write("LooseThenTyped", "freeze")
    job.sync()
    want = [(1, "forty"), (2, "2.5")]
    fresh = tmp_path / "fresh.duckdb"
    for replica in (job.replica, fresh):  # the replica of batch 1 and a new one
        job.replica = replica
        job.pull()
        assert job.replica_rows("id, c") == want


def test_a_column_retyped_to_one_readers_widen_to_is_published_after_reset(
    tmp_path, home, prefect_api, monkeypatch
):
    """The other side of the check above: INTEGER retyped to REAL (a reader widens BIGINT to
    DOUBLE, every stored value kept) is not refused after the reset; an existing replica
    and a new one equal the source."""
    job = Job(tmp_path, monkeypatch, LOOSE)
    values = "(1, 10, '2026-01-01 00:00:01'), (2, 20, '2026-01-01 00:00:02')"
    _retyped_and_reset(job, "INTEGER", "REAL", values, "20.5")
    assert job.sync()["tables"]["t"]["batch"] == 2
    fresh = tmp_path / "fresh.duckdb"
    for replica in (job.replica, fresh):
        job.replica = replica
        job.pull()
        assert job.replica_rows("id, c") == [(1, 20.5), (2, 20.0)]
