"""Seeded chaos: faults on the S3 link and kills at commit points, then convergence.

Each scenario prints its seed; rerun one with
``DELTAFERRY_CHAOS_SEED_BASE=<seed> DELTAFERRY_CHAOS_SEEDS=1 pytest -m chaos``.
CI runs a few seeds; ``DELTAFERRY_CHAOS_SEEDS=500 pytest -m chaos`` runs 500 locally.
With ``DELTAFERRY_CHAOS_REPORT=file.jsonl`` each scenario appends its figures.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from deltaferry.errors import ConflictError, VerificationError
from deltaferry.failpoints import POINTS
from deltaferry.shop import Shop
from deltaferry.verify import list_batches, verify_table
from tests.support.chaos import ChaosProxy, FaultPlan
from tests.support.cli_fork import run_cli

BASE = int(os.environ.get("DELTAFERRY_CHAOS_SEED_BASE", "1000"))
COUNT = int(os.environ.get("DELTAFERRY_CHAOS_SEEDS", "3"))


def _cli_env(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    root = str(Path(__file__).resolve().parent.parent)  # tests.* contracts import from here
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()), PYTHONPATH=path, **extra)


def _run_argv(job) -> list[str]:  # noqa: ANN001
    return ["run", job.name, "--config", str(job.config)]


def _kill_at_random_time(job, delay: float) -> int:  # noqa: ANN001
    """Start a run and SIGKILL it from outside ``delay`` seconds after its process started
    (if it is still running then). The run is forked from a process that has imported
    deltaferry (``tests/support/cli_fork.py``), so its first step starts at once."""
    return run_cli(_run_argv(job), _cli_env(), kill_after=delay).returncode


def _kill_run(job, point: str, skip: int) -> int:  # noqa: ANN001
    env = _cli_env(
        DELTAFERRY_FAILPOINT=point,
        DELTAFERRY_FAILPOINT_ACTION="kill",
        DELTAFERRY_FAILPOINT_SKIP=str(skip),
    )
    return run_cli(_run_argv(job), env).returncode


def _sync_under_faults(job) -> int:  # noqa: ANN001
    """One sync while faults are on: 1 if it failed (the next run must recover), else 0. A
    conflict or a verification error is never acceptable with one producer and an honest
    lake, so those are raised."""
    try:
        job.sync()
    except (ConflictError, VerificationError):
        raise
    except Exception:  # noqa: BLE001 - a run may fail under faults
        return 1
    return 0


def _maybe_kill(job, rng: random.Random, kills: Counter) -> None:  # noqa: ANN001
    """Before a round's sync: sometimes a run killed at a commit point, sometimes one killed
    at a random time from outside (both draw from the scenario's seeded RNG)."""
    if rng.random() < 0.4:
        point = rng.choice(POINTS)
        if _kill_run(job, point, skip=rng.randint(0, 1)) == -9:
            kills[point] += 1
    elif rng.random() < 0.3:
        if _kill_at_random_time(job, rng.uniform(0.0, 6.0)) == -9:
            kills["random_time"] += 1


@pytest.mark.chaos
@pytest.mark.parametrize("seed", range(BASE, BASE + COUNT))
def test_chaos_scenario_converges(seed, shop_job, s3_endpoint, monkeypatch):
    print(
        f"chaos seed {seed}: replay with DELTAFERRY_CHAOS_SEED_BASE={seed} DELTAFERRY_CHAOS_SEEDS=1"
    )
    rng = random.Random(seed)
    proxy = ChaosProxy(int(s3_endpoint.rsplit(":", 1)[1]), seed)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("DELTAFERRY_S3_READ_TIMEOUT", "2")
    monkeypatch.setenv("DELTAFERRY_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("DELTAFERRY_S3_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("DELTAFERRY_STEP_RETRIES", "2")
    shop = Shop(shop_job.dir / "shop.db", seed)
    kills: Counter = Counter()
    failed_runs = 0
    try:
        for r in range(rng.randint(2, 4)):
            shop.round(
                rng.randint(20, 80) if r == 0 else rng.randint(0, 15),
                rng.randint(10, 60),
                churn=0 if r == 0 else 0.1,
            )
            proxy.set_plan(FaultPlan.random(rng))
            _maybe_kill(shop_job, rng, kills)
            if rng.random() < 0.2:
                proxy.link_down(rng.uniform(0.2, 1.0))
            failed_runs += _sync_under_faults(shop_job)
        proxy.set_plan(FaultPlan())  # the faults stop
        shop_job.sync()
    finally:
        injected = dict(proxy.injected)
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
        shop.close()

    lake = shop_job.lake()
    shop_job.pull()
    shop_job.pull()  # a batch delivered twice changes nothing
    conv = shop_job.compare()
    assert all(c.equal for c in conv), (seed, conv)
    rows = 0
    for table in ("customers", "orders"):
        manifests = lake.list(f"shop/{table}/manifests/")
        batches = list_batches(lake, "shop", table)
        assert (
            len(manifests) == len(batches) == (batches[-1] if batches else 0)
        )  # one per batch, no gaps
        assert verify_table(lake, "shop", table)[0] == len(batches)
        con = duckdb.connect(str(shop_job.replica), read_only=True)
        dup = con.execute(f"SELECT count(*) - count(DISTINCT id) FROM {table}").fetchall()[0][0]
        rows += con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        con.close()
        assert dup == 0
    report = {
        "seed": seed,
        "faults": injected,
        "kills": dict(kills),
        "failed_runs": failed_runs,
        "rows_checked": rows,
        "lost": sum(c.missing_in_replica for c in conv),
        "duplicated_or_resurrected": sum(c.extra_in_replica for c in conv),
    }
    _report(report)


def _report(report: dict) -> None:
    print(json.dumps(report))
    if os.environ.get("DELTAFERRY_CHAOS_REPORT"):
        with open(os.environ["DELTAFERRY_CHAOS_REPORT"], "a") as fh:
            fh.write(json.dumps(report) + "\n")


@pytest.mark.chaos
@pytest.mark.parametrize("seed", range(BASE, BASE + COUNT))
def test_chaos_on_the_source_and_lake_links_converges(
    seed, pg_job, postgres, s3_endpoint, monkeypatch
):
    """Faults on both links at once (PostgreSQL source and S3 lake), kills at commit points
    and at random times, hard deletes and re-created keys; then the faults stop."""
    from tests.test_postgres import ACCOUNTS_DDL, ACCOUNTS_JOB, _Via

    print(
        f"chaos seed {seed} (source + lake links): replay with "
        f"DELTAFERRY_CHAOS_SEED_BASE={seed} DELTAFERRY_CHAOS_SEEDS=1"
    )
    rng = random.Random(f"pg:{seed}")
    lake_proxy = ChaosProxy(int(s3_endpoint.rsplit(":", 1)[1]), seed)
    source_proxy = ChaosProxy(postgres.port, seed + 1_000_000)
    pg_job.server = _Via(postgres, source_proxy.port)
    pg_job.write(ACCOUNTS_JOB, chunk=rng.choice([40, 400]))
    for var, value in {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{lake_proxy.port}",
        "DELTAFERRY_S3_READ_TIMEOUT": "2",
        "DELTAFERRY_S3_CONNECT_TIMEOUT": "1",
        "DELTAFERRY_S3_MAX_ATTEMPTS": "4",
        "DELTAFERRY_STEP_RETRIES": "2",
        "DELTAFERRY_SOURCE_STALL_TIMEOUT": "3",
        "DELTAFERRY_SOURCE_CONNECT_TIMEOUT": "2",
    }.items():
        monkeypatch.setenv(var, value)
    pg_job.sql(ACCOUNTS_DDL)  # the admin connection goes straight to the server
    next_id, live, deleted = 1, set(), []
    kills: Counter = Counter()
    failed_runs = 0
    try:
        for r in range(rng.randint(2, 4)):
            n_new = rng.randint(60, 200) if r == 0 else rng.randint(0, 30)
            stmts = [
                f"INSERT INTO accounts (id, owner, balance) SELECT g, 'owner ' || g, g * 1.5 "
                f"FROM generate_series({next_id}, {next_id + n_new - 1}) g"
            ]
            live |= set(range(next_id, next_id + n_new))
            next_id += n_new
            if r:
                pool = sorted(live)
                for i in rng.sample(pool, min(len(pool), rng.randint(1, 15))):
                    stmts.append(
                        f"UPDATE accounts SET balance = balance + 1, updated_at = clock_timestamp()"
                        f" WHERE id = {i}"
                    )
                gone = rng.sample(pool, min(len(pool) // 10, rng.randint(0, 8)))
                if gone:
                    stmts.append(f"DELETE FROM accounts WHERE id IN ({', '.join(map(str, gone))})")
                    live -= set(gone)
                    deleted += gone
                if deleted and rng.random() < 0.5:  # a deleted key comes back
                    back = deleted.pop(rng.randrange(len(deleted)))
                    stmts.append(f"INSERT INTO accounts (id, owner) VALUES ({back}, 'back')")
                    live.add(back)
                if rng.random() < 0.5:  # a transaction that committed late: an older cursor
                    stmts.append(
                        f"INSERT INTO accounts VALUES ({next_id}, 'late', 1, "
                        "timestamptz '2000-01-01 00:00:00+00')"
                    )
                    live.add(next_id)
                    next_id += 1
            pg_job.sql(*stmts)
            lake_proxy.set_plan(FaultPlan.random(rng))
            source_proxy.set_plan(FaultPlan.random(rng))
            _maybe_kill(pg_job, rng, kills)
            if rng.random() < 0.2:
                rng.choice([lake_proxy, source_proxy]).link_down(rng.uniform(0.2, 1.0))
            failed_runs += _sync_under_faults(pg_job)
        lake_proxy.set_plan(FaultPlan())  # the faults stop
        source_proxy.set_plan(FaultPlan())
        pg_job.sync()
        pg_job.pull()
        pg_job.pull()  # a batch delivered twice changes nothing
        conv = pg_job.compare()  # reads the source through its (now quiet) proxy
    finally:
        injected = {
            **{f"lake_{k}": v for k, v in lake_proxy.injected.items()},
            **{f"source_{k}": v for k, v in source_proxy.injected.items()},
        }
        lake_proxy.close()
        source_proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)

    assert all(c.equal for c in conv), (seed, conv)
    lake = pg_job.lake()
    manifests = lake.list("pg/accounts/manifests/")
    batches = list_batches(lake, "pg", "accounts")
    assert len(manifests) == len(batches) == batches[-1]  # one per batch, no gaps
    assert verify_table(lake, "pg", "accounts")[0] == len(batches)
    con = duckdb.connect(str(pg_job.replica), read_only=True)
    ids = {r[0] for r in con.execute("SELECT id FROM accounts").fetchall()}
    rows = con.execute("SELECT count(*) FROM accounts").fetchall()[0][0]
    con.close()
    assert rows == len(ids) and ids == live  # none lost, duplicated or resurrected
    _report(
        {
            "seed": seed,
            "links": "source+lake",
            "faults": injected,
            "kills": dict(kills),
            "failed_runs": failed_runs,
            "rows_checked": rows,
            "lost": sum(c.missing_in_replica for c in conv),
            "duplicated_or_resurrected": sum(c.extra_in_replica for c in conv),
        }
    )


def test_same_seed_replays_the_same_faults_in_the_same_order(s3_endpoint):
    import http.client

    def run(seed: int) -> list[tuple[int, str]]:
        proxy = ChaosProxy(int(s3_endpoint.rsplit(":", 1)[1]), seed)
        proxy.set_plan(FaultPlan(reset_p=0.2, close_after_p=0.1, slice_p=0.3, direction="down"))
        try:
            for _ in range(25):  # one request per connection, one after the other
                conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
                try:
                    conn.request("GET", "/", headers={"Connection": "close"})
                    conn.getresponse().read()
                except (OSError, http.client.HTTPException):
                    pass  # faults are the point
                finally:
                    conn.close()
        finally:
            proxy.close()
        return proxy.events

    first, again, other = run(42), run(42), run(43)
    assert first and first == again
    assert other != first


class _ShuffledLake:
    """A lake whose listings come back in a seeded random order (as some stores page them)."""

    def __init__(self, inner, seed: int) -> None:  # noqa: ANN001
        self.inner, self.rng = inner, random.Random(seed)

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        keys = self.inner.list(prefix, start_after)
        self.rng.shuffle(keys)
        return keys

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.inner, name)


def test_reader_is_indifferent_to_listing_order_duplicates_and_half_written_objects(
    shop_job, shop, tmp_path
):
    from deltaferry.replica import pull

    shop_job.lake_url = f"file://{tmp_path}/lake"
    shop_job.write_config()
    for r in range(4):
        shop.round(30 if r == 0 else 6, 30 if r == 0 else 6, churn=0 if r == 0 else 0.15)
        shop_job.sync()
    # a killed writer's half-written object and a stray half-written manifest
    (tmp_path / "lake/shop/customers/data/000000000005").mkdir(parents=True)
    (tmp_path / "lake/shop/customers/data/000000000005/.tmp-x.partial").write_bytes(b"PAR1")
    (tmp_path / "lake/shop/customers/manifests/.tmp-y.partial").write_bytes(b'{"format"')
    for seed in range(3):
        replica = tmp_path / f"shuffled-{seed}.duckdb"
        lake = _ShuffledLake(shop_job.lake(), seed)
        pull(shop_job.job(), lake, replica)
        pull(shop_job.job(), lake, replica)  # delivered twice
        shop_job.replica = replica
        assert all(c.equal for c in shop_job.compare())


def test_a_forked_command_takes_its_own_environment_and_is_killed_where_asked(shop_job, shop):
    """The chaos scenarios' kill runs are forked from a process that imported deltaferry
    (tests/support/cli_fork.py): each must run with the environment it is given (this
    test's home, its failpoint), stop where asked, and a run with neither completes."""
    from deltaferry.state import StateStore

    shop.round(30, 30, churn=0)
    killed = _kill_run(shop_job, "after_plan", skip=0)
    assert killed == -9
    state = StateStore("shop")  # this test's DELTAFERRY_HOME
    assert state.pending_plan("customers") is not None
    assert shop_job.lake().list("shop/customers/manifests/") == []

    done = run_cli(_run_argv(shop_job), _cli_env())
    assert done.returncode == 0, done.output[-2000:]
    assert "not preloaded" not in done.output  # the child found deltaferry imported
    assert shop_job.lake().list("shop/customers/manifests/") == [
        "shop/customers/manifests/000000000001.json"
    ]
    assert state.pending_plan("customers") is None
    assert _kill_at_random_time(shop_job, 0.0) == -9  # killed before it could do anything
    assert len(shop_job.lake().list("shop/customers/manifests/")) == 1
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())

    with pytest.raises(RuntimeError, match="fork server imported Prefect for"):
        run_cli(["status"], {**_cli_env(), "PREFECT_API_URL": "http://127.0.0.1:9/api"})
