"""A process deltaferry owns ends without the interpreter's last full garbage collections
(``deltaferry/shutdown.py``: ``gc.freeze`` at exit) and still closes what it wrote: no
DuckDB write-ahead log is left beside the state, staging or replica files it used (DuckDB
1.5.5 cannot replay some logs: ``tests/test_replica_wal.py``). A program that calls the
flows itself keeps Python's usual exit, so its own objects are still finalized."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.test_cli import RUN, api_env, make_shop, write_jobs  # noqa: F401 - fixture

# a probe registered before anything deltaferry registers runs after it (last in, first
# out): the objects frozen at exit, 0 when the process keeps Python's usual exit
PROBE = (
    "import atexit, gc\n"
    "atexit.register(lambda: print(f'frozen at exit: {gc.get_freeze_count()}', flush=True))\n"
)
CLI = PROBE + "import sys\nfrom deltaferry.cli import main\nsys.argv[0] = 'deltaferry'\nmain()\n"
# `deltaferry run` in which Python drops a Ctrl-C: SIGINT arrives while a weakref callback
# runs (as SQLAlchemy's ``_collection_gced`` does during a collection), where the
# KeyboardInterrupt cannot propagate ("Exception ignored in ..."), at the n-th hit of a
# failpoint (DROPPED_AT=point:n)
DROPPED_INTERRUPT = r"""
import os, signal, sys, weakref
from deltaferry import failpoints
from deltaferry.cli import main

at, nth = os.environ["DROPPED_AT"].split(":")
hits = []

def drop_an_interrupt(point):
    if point != at:
        return
    hits.append(point)
    if len(hits) != int(nth):
        return
    class Box:
        pass
    box = Box()
    def callback(_):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):  # the handler runs here, inside the callback
            pass
    ref = weakref.ref(box, callback)
    del box
    with open(os.environ["DROPPED_MARK"], "w") as fh:  # prints go to Prefect's logger
        fh.write("the interrupt was dropped")

failpoints.set_hook(drop_an_interrupt)
sys.argv[0] = "deltaferry"
main()
"""
# a user's program that runs the flow itself
SCRIPT = PROBE + r"""
import sys
from flows.sync import sync_job
sync_job(job="shop", config=sys.argv[1])
print("synced", flush=True)
"""
# a flow run as Prefect's engine runs one a worker started: the run made first, the
# process marked with its id, the flow run in that run's context (prefect.flow_engine);
# "fn" calls the flow's function outside any run, with the same mark
ENGINE = PROBE + r"""
import os, sys
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from flows.process import end_quickly_if_the_process_is_the_runs

@flow(name="shutdown-probe")
def probe() -> int:
    end_quickly_if_the_process_is_the_runs()
    return 1

with get_client(sync_client=True) as client:
    run = client.create_flow_run(probe)
mark = {"same": str(run.id), "other": "0b9c6c3a-57a4-4a57-9a3c-4cc6b1c3a0c1"}[sys.argv[2]]
os.environ["PREFECT__FLOW_RUN_ID"] = mark
if sys.argv[1] == "engine":
    assert run_flow(probe, flow_run=run) == 1
else:
    assert probe.fn() == 1
"""


def _frozen(p: subprocess.CompletedProcess[str]) -> int:
    assert p.returncode == 0, p.stderr[-3000:]
    frozen = [ln for ln in p.stdout.splitlines() if ln.startswith("frozen at exit: ")]
    assert len(frozen) == 1, p.stdout[-2000:]
    return int(frozen[0].rsplit(" ", 1)[1])


def _python(code: str, *args: object, env: dict[str, str] | None = None) -> int:
    p = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env={**os.environ, **(env or {})}, **RUN
    )
    return _frozen(p)


def _logs_left(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*.wal"))


@pytest.mark.integration  # child processes
def test_deltaferrys_own_processes_skip_the_last_collections_and_leave_no_log(
    tmp_path, home, api_env
):
    db = make_shop(tmp_path / "shop.db", (30, 40, 0.0))
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake", db)
    replica = tmp_path / "replica.duckdb"
    env = {**api_env, "DELTAFERRY_HOME": str(home)}

    # `deltaferry run` twice (the second with nothing new), `pull` and `status`: each
    # process froze the objects alive at its exit (about 300,000 with Prefect loaded)
    for args in (["run", "shop"], ["run", "shop"], ["pull", "shop", "--replica", replica]):
        assert _python(CLI, *args, "--config", config, env=env) > 10_000, args
    assert _python(CLI, "status", "--config", config, env=env) > 0
    # and closed every DuckDB file it wrote: nothing left to replay
    assert (home / "shop" / "state.duckdb").exists() and replica.exists()
    assert _logs_left(home, tmp_path) == []

    # what they wrote reads back: the replica has the source's live rows
    src = sqlite3.connect(db)
    live = {r[0] for r in src.execute("SELECT id FROM customers WHERE deleted_at IS NULL")}
    src.close()
    con = duckdb.connect(str(replica), read_only=True)
    assert {r[0] for r in con.execute("SELECT id FROM customers").fetchall()} == live
    con.close()


@pytest.mark.integration  # child processes
def test_a_program_that_runs_the_flow_itself_keeps_its_exit(tmp_path, home, api_env):
    """A script calling ``sync_job`` keeps Python's usual exit: nothing of its own is left
    unfinalized by deltaferry (a review found the freeze applied to the caller's objects;
    note that a program's DuckDB connection held only by a reference cycle is left open at
    exit by any Prefect flow run in it, Prefect 3.9.1, with or without deltaferry)."""
    db = make_shop(tmp_path / "shop.db", (20, 20, 0.0))
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake", db)
    env = {**api_env, "DELTAFERRY_HOME": str(home)}
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(config)], env={**os.environ, **env}, **RUN)
    assert _frozen(p) == 0
    assert "synced" in p.stdout.splitlines()
    assert _logs_left(home) == []


@pytest.mark.integration  # child processes
def test_a_flow_runs_process_is_the_runs_only_when_prefect_started_it_for_that_run(api_env):
    """A Prefect worker or a deployment's runner starts a flow run in a process whose
    ``PREFECT__FLOW_RUN_ID`` names it: that process ends without the last collections.
    A process marked for another run, or a program calling the flow's function outside a
    run (where ``prefect.runtime.flow_run.id`` would answer with the mark itself), keeps
    its exit."""
    from deltaferry.shutdown import started_for

    assert _python(ENGINE, "engine", "same", env=api_env) > 10_000
    assert _python(ENGINE, "engine", "other", env=api_env) == 0
    assert _python(ENGINE, "fn", "same", env=api_env) == 0
    assert not started_for(None)


@pytest.mark.integration  # child processes
def test_a_ctrl_c_python_drops_still_stops_the_run_at_its_next_step(tmp_path, home, api_env):
    """Ctrl-C inside a weakref callback or ``__del__`` is dropped by Python (printed as
    "Exception ignored in ..."), and the run used to complete with exit 0. The ``deltaferry``
    command remembers it (``deltaferry/shutdown.py:stop_at_interrupt``): the run stops
    before its next step, which the operations log records, and the next run publishes."""
    from deltaferry.shop import Shop

    db = tmp_path / "shop.db"
    shop = Shop(db, seed=11)
    shop.round(20, 30, churn=0.0)
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake", db)
    mark = tmp_path / "dropped"
    env = {**os.environ, **api_env, "DELTAFERRY_HOME": str(home), "DROPPED_MARK": str(mark)}
    env["DROPPED_AT"] = "after_extract:1"
    p = subprocess.run(
        [sys.executable, "-c", DROPPED_INTERRUPT, "run", "shop", "--config", str(config)],
        env=env,
        **RUN,
    )
    assert mark.exists(), p.stdout[-2000:] + p.stderr[-2000:]
    assert "Exception ignored in" in p.stderr and "KeyboardInterrupt" in p.stderr
    assert p.returncode != 0, p.stdout[-2000:]
    assert not (tmp_path / "lake" / "shop" / "customers" / "manifests").exists()
    con = duckdb.connect(str(home / "shop" / "state.duckdb"), read_only=True)
    steps = con.execute("SELECT step, outcome, detail FROM ops_log ORDER BY id").fetchall()
    con.close()
    assert ("extract", "ok") in [(s, o) for s, o, _ in steps], steps
    stopped = [(s, d) for s, o, d in steps if o == "failed"]
    assert stopped and "KeyboardInterrupt: interrupted (Ctrl-C)" in stopped[0][1], steps

    p = subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "run", "shop", "--config", str(config)],
        env=env,
        **RUN,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "lake" / "shop" / "customers" / "manifests").exists()

    # dropped in the run's last step (the second table's checkpoint): nothing is left to
    # stop, the run's work is done, and the command says it was interrupted (exit 130)
    shop.round(10, 10, churn=0.1)
    shop.close()
    mark.unlink()
    env["DROPPED_AT"] = "before_checkpoint:2"
    p = subprocess.run(
        [sys.executable, "-c", DROPPED_INTERRUPT, "run", "shop", "--config", str(config)],
        env=env,
        **RUN,
    )
    assert mark.exists() and "Exception ignored in" in p.stderr, p.stderr[-2000:]
    assert p.returncode == 130, p.stdout[-2000:] + p.stderr[-2000:]
    assert "interrupted (Ctrl-C) after its last step" in p.stderr
    for table in ("customers", "orders"):
        assert len(list((tmp_path / "lake/shop" / table / "manifests").glob("*.json"))) == 2


def test_a_remembered_interrupt_stops_a_pull_before_its_next_batch(shop_job, shop, monkeypatch):
    """The pull's side of :func:`deltaferry.shutdown.raise_if_interrupted`: an interrupt
    remembered while the first batch applied stops the pull before the next batch (and
    the next table); once it is cleared (a new process), the pull applies the rest."""
    from deltaferry import replica, shutdown

    shop.round(20, 20, churn=0)
    shop_job.sync()
    shop.round(5, 5, churn=0.2)
    shop_job.sync()  # two batches of each table

    apply = replica._apply_batch

    def interrupted_while_applying(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        done = apply(*args, **kwargs)
        monkeypatch.setattr(shutdown, "_interrupted", True)  # as the handler does at Ctrl-C
        return done

    monkeypatch.setattr(replica, "_apply_batch", interrupted_while_applying)
    try:
        with pytest.raises(KeyboardInterrupt, match="interrupted"):
            shop_job.pull()
    finally:
        monkeypatch.setattr(replica, "_apply_batch", apply)
        monkeypatch.setattr(shutdown, "_interrupted", False)
    con = duckdb.connect(str(shop_job.replica), read_only=True)
    applied = con.execute("SELECT tbl, batch FROM _deltaferry_batches").fetchall()
    con.close()
    assert applied == [("customers", 1)]  # stopped before the next batch and the next table
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_ctrl_c_inside_dlt_stops_the_load_as_an_interrupt(tmp_path, monkeypatch):
    """dlt's own SIGINT handling (on by default during normalize and load: it drained the
    load's jobs, cleared the signal and went on) is off for deltaferry's pipelines, and a
    ``KeyboardInterrupt`` that dlt wraps in its step error comes out as the interrupt, not
    as a load failure (which would also abort the pending package)."""
    import dlt

    from deltaferry.job import JobConfig
    from sources.load import run_load
    from sources.pipeline import pipeline_for

    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path))
    monkeypatch.delenv("DELTAFERRY_DUCKDB_KEY", raising=False)
    job = JobConfig(name="ctrlc", source="sql_database", url="sqlite://", lake="file:///x", tables=())
    pipeline, _ = pipeline_for(job)
    assert pipeline.runtime_config.intercept_signals is False

    def rows():  # noqa: ANN202
        yield {"id": 1}
        raise KeyboardInterrupt  # Ctrl-C while dlt reads the source

    resource = dlt.resource(rows, name="t", write_disposition="merge", primary_key=["id"])
    with pytest.raises(KeyboardInterrupt, match="inside dlt"):
        run_load(job, pipeline, resource)
