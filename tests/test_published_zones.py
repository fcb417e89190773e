"""Zoned times are published with one zone name whatever the host (``delta.published_zones``).

DuckDB stages a ``timestamptz`` in its session zone, the host's: ``Etc/UTC`` from
/etc/localtime, ``UTC`` under ``TZ=UTC``, ``Europe/Berlin`` on a laptop. The zone name is in
every Parquet object's schema, so the same batch had other bytes in another shell: a batch
planned by a scheduled run (a network drop before its upload) and recovered by an operator's
`deltaferry run` from a shell with another ``TZ`` stopped for good with "rebuilt data differs
from the plan", and published objects depended on where they were cut. The oracle is the
PostgreSQL source and the Parquet schema as pyarrow reads it.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import duckdb
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pytest
from pandera.typing import Series

from contracts import Contract
from deltaferry.delta import PUBLISHED_ZONE, published_zones, read_parquet
from deltaferry.state import StateStore
from destinations.manifest import manifest_key

JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}"
lake = "{lake}"

[[jobs.pg.tables]]
name = "events"
primary_key = ["id"]
cursor = "updated_at"
contract = "tests.support.contracts_sqltypes:Loose"
"""

ROWS = (
    "CREATE TABLE events (id int PRIMARY KEY, v text, at timestamptz, "
    "updated_at timestamptz NOT NULL)",
    "INSERT INTO events SELECT g, 'v' || g, CASE WHEN g % 5 = 0 THEN NULL ELSE "
    "timestamptz '2024-03-31 00:30:00+00' + g * interval '37 minutes' END, "
    "timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, 40) g",
)


class Zoned(pa.DataFrameModel):
    id: Series[int]
    at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "Asia/Tokyo"})


def test_zoned_columns_get_the_contracts_zone_or_utc_and_keep_their_instants():
    at = dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.timezone.utc)
    data = pyarrow.table(
        {
            "id": pyarrow.array([1, 2], pyarrow.int64()),
            "at": pyarrow.array([at, None], pyarrow.timestamp("us", tz="Europe/Berlin")),
            "seen": pyarrow.array([at, at], pyarrow.timestamp("ns", tz="Etc/UTC")),
            "naive": pyarrow.array([dt.datetime(2024, 1, 1), None], pyarrow.timestamp("ms")),
        }
    )
    out = published_zones(Contract("t:Zoned", Zoned), data)
    assert out.schema.field("at").type == pyarrow.timestamp("us", tz="Asia/Tokyo")
    assert out.schema.field("seen").type == pyarrow.timestamp("ns", tz=PUBLISHED_ZONE)
    assert out.schema.field("naive").type == pyarrow.timestamp("ms")
    for name in ("at", "seen"):  # the same instants
        assert out.column(name).cast(pyarrow.int64()).to_pylist() == data.column(name).cast(
            pyarrow.int64()
        ).to_pylist()
    # without a contract (or one that does not type them) every zone is PUBLISHED_ZONE
    assert published_zones(None, data).schema.field("at").type.tz == PUBLISHED_ZONE


def _cli_run(pg_job, tz: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    """``deltaferry run pg`` in a child process whose ``TZ`` is ``tz`` (DuckDB's session zone
    follows it), SIGKILLed at ``failpoint`` when given."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, TZ=tz, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    env.pop("DELTAFERRY_FAILPOINT", None)
    if failpoint:
        env.update(DELTAFERRY_FAILPOINT=failpoint, DELTAFERRY_FAILPOINT_ACTION="kill")
    return subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "run", "pg", "--config", str(pg_job.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _parts(pg_job, table: str = "events") -> list[pyarrow.Table]:
    lake = pg_job.lake()
    return [
        read_parquet(lake.get(k))
        for k in lake.list(f"pg/{table}/")
        if k.endswith(".parquet")
    ]


def _source(pg_job) -> list[tuple]:
    with pg_job.server.connect(pg_job.database) as conn:
        rows = conn.execute("SELECT id, v, \"at\", updated_at FROM events ORDER BY id").fetchall()
    return [tuple(r) for r in rows]


def _replica(pg_job) -> list[tuple]:
    con = duckdb.connect(str(pg_job.replica), read_only=True)
    try:
        return con.execute("SELECT id, v, \"at\", updated_at FROM events ORDER BY id").fetchall()
    finally:
        con.close()


def test_a_batch_planned_in_one_zone_is_rebuilt_in_another(pg_job):
    pg_job.write(JOB)
    pg_job.sql(*ROWS)
    killed = _cli_run(pg_job, "Europe/Berlin", failpoint="after_plan")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert StateStore("pg").pending_plan("events").batch == 1

    recovered = _cli_run(pg_job, "America/New_York")
    assert recovered.returncode == 0, recovered.stdout[-2000:] + recovered.stderr[-2000:]
    assert "rebuilt byte-identically" in recovered.stdout + recovered.stderr
    assert StateStore("pg").checkpoint("events").batch == 1

    # a change cut in a third zone: the same zone name in every object
    pg_job.sql("UPDATE events SET v = 'changed', updated_at = now() WHERE id IN (3, 4)")
    assert _cli_run(pg_job, "Asia/Kolkata").returncode == 0
    parts = _parts(pg_job)
    assert len(parts) == 2
    for part in parts:
        for name in ("at", "updated_at"):
            assert part.schema.field(name).type.tz == PUBLISHED_ZONE, part.schema

    pg_job.pull()
    assert _replica(pg_job) == _source(pg_job)


def test_a_batch_planned_before_zones_were_fixed_is_rebuilt_as_planned(pg_job, monkeypatch):
    """A plan left by a version that published the session's zone (on a host where it is
    not ``UTC``) rebuilds as it was planned, not as now publishes: the plan's bytes are
    what the lake may already hold. The old writer is this code with ``published_zones``
    off; the new one publishes another zone than the session's (Asia/Tokyo here, whatever
    the test host's zone), so the fallback is what matches."""
    import deltaferry.delta as delta_module
    from deltaferry.failpoints import FailpointHit

    pg_job.write(JOB)
    pg_job.sql(*ROWS)
    publishing = delta_module.published_zones
    monkeypatch.setattr(delta_module, "published_zones", lambda contract, data: data)
    monkeypatch.setenv("DELTAFERRY_FAILPOINT", "after_plan")
    monkeypatch.setenv("DELTAFERRY_FAILPOINT_ACTION", "raise")
    with pytest.raises(FailpointHit):
        pg_job.sync()
    planned = StateStore("pg").pending_plan("events")
    assert planned is not None
    monkeypatch.delenv("DELTAFERRY_FAILPOINT")
    monkeypatch.setattr(delta_module, "published_zones", publishing)
    monkeypatch.setattr(delta_module, "PUBLISHED_ZONE", "Asia/Tokyo")

    out = pg_job.sync()
    assert any("rebuilt byte-identically" in r for r in out["recovered"]), out["recovered"]
    assert pg_job.lake().get(manifest_key("pg", "events", 1)) == planned.manifest
    session = duckdb.connect().execute("SELECT current_setting('TimeZone')").fetchone()[0]
    (part,) = _parts(pg_job)
    assert part.schema.field("at").type.tz == session  # as planned, not Asia/Tokyo

    pg_job.sql("UPDATE events SET v = 'changed', updated_at = now() WHERE id = 9")
    pg_job.sync()  # a new batch publishes the new way
    assert {p.schema.field("at").type.tz for p in _parts(pg_job)} == {session, "Asia/Tokyo"}
    pg_job.pull()
    assert _replica(pg_job) == _source(pg_job)


@pytest.mark.parametrize("planned_in", ["Etc/UTC", "Europe/Berlin"])
def test_a_batch_planned_before_zones_were_fixed_in_another_zone(pg_job, monkeypatch, planned_in):
    """The same plan recovered from a shell whose zone name differs from the planning
    host's: a container's ``Etc/UTC`` against a shell's ``TZ=UTC`` (both UTC) is rebuilt
    byte-identically; from another zone (Europe/Berlin) the run stops naming the zones it
    tried and the way out, and that way out (the planning host's ``TZ``) works. The old
    writer, on a host in ``planned_in``, is this code publishing every zoned column in
    that zone as staged."""
    import deltaferry.delta as delta_module
    from deltaferry.failpoints import FailpointHit

    pg_job.write(JOB)
    pg_job.sql(*ROWS)
    publishing = delta_module.published_zones
    monkeypatch.setattr(
        delta_module, "published_zones", lambda c, data: delta_module._zoned_as(data, planned_in)
    )
    monkeypatch.setenv("DELTAFERRY_FAILPOINT", "after_plan")
    monkeypatch.setenv("DELTAFERRY_FAILPOINT_ACTION", "raise")
    with pytest.raises(FailpointHit):
        pg_job.sync()
    planned = StateStore("pg").pending_plan("events")
    monkeypatch.delenv("DELTAFERRY_FAILPOINT")
    monkeypatch.setattr(delta_module, "published_zones", publishing)

    recovered = _cli_run(pg_job, "UTC")
    if planned_in == "Europe/Berlin":
        assert recovered.returncode == 1, recovered.stdout[-2000:]
        said = " ".join((recovered.stdout + recovered.stderr).split())
        assert "rebuilds only in that zone: tried UTC, Etc/UTC; run again with TZ set to the " \
               "planning host's zone" in said, said[-3000:]  # fmt: skip
        assert pg_job.lake().get(manifest_key("pg", "events", 1)) is None
        recovered = _cli_run(pg_job, "Europe/Berlin")
    assert recovered.returncode == 0, recovered.stdout[-2000:] + recovered.stderr[-2000:]
    assert "rebuilt byte-identically" in recovered.stdout + recovered.stderr
    assert pg_job.lake().get(manifest_key("pg", "events", 1)) == planned.manifest
    (part,) = _parts(pg_job)
    assert part.schema.field("at").type.tz == planned_in
    pg_job.pull()
    assert _replica(pg_job) == _source(pg_job)
