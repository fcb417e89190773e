"""A process that ran a flow ends without the interpreter's last full garbage collections
(``flows/shutdown.py``: ``gc.freeze`` at exit), and still closes what it wrote: no DuckDB
write-ahead log is left beside the state, staging or replica files it used (DuckDB 1.5.5
cannot replay some logs: ``tests/test_replica_wal.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import RUN, api_env, make_shop, run_cli, write_jobs  # noqa: F401 - fixture

FLOW = r"""
import atexit, gc, sys
# registered before the flow's own exit handler, so it runs after it (last in, first out)
atexit.register(lambda: print(f"frozen at exit: {gc.get_freeze_count()}", flush=True))
kind, job, config = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "sync":
    from flows.sync import sync_job
    sync_job(job=job, config=config)
else:
    from flows.pull import pull_job
    pull_job(job=job, replica=sys.argv[4], config=config)
print("ran", kind, flush=True)
"""


def _flow(kind: str, config: Path, env: dict[str, str], *more: object) -> int:
    """Run the sync or pull flow in a child process; the objects it froze at exit."""
    p = subprocess.run(
        [sys.executable, "-c", FLOW, kind, "shop", str(config), *map(str, more)],
        env={**os.environ, **env},
        **RUN,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert f"ran {kind}" in lines, p.stdout[-2000:]
    frozen = [ln for ln in lines if ln.startswith("frozen at exit: ")]
    assert len(frozen) == 1, p.stdout[-2000:]
    return int(frozen[0].rsplit(" ", 1)[1])


def _logs_left(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*.wal"))


@pytest.mark.integration  # child processes
def test_a_flows_process_skips_the_last_collections_and_leaves_no_log(tmp_path, home, api_env):
    db = make_shop(tmp_path / "shop.db", (30, 40, 0.0))
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake", db)
    replica = tmp_path / "replica.duckdb"
    env = {**api_env, "DELTAFERRY_HOME": str(home)}

    # a first sync, a second one with nothing new, then a pull: each process froze the
    # objects alive at its exit (tens of thousands with Prefect loaded)
    assert _flow("sync", config, env) > 10_000
    assert (home / "shop").is_dir()
    assert _flow("sync", config, env) > 10_000
    assert _flow("pull", config, env, replica) > 10_000
    assert replica.exists()
    # and closed every DuckDB file it wrote: nothing left to replay
    assert _logs_left(home, tmp_path) == []

    # what they wrote reads back: the replica has the source's live rows
    import duckdb
    import sqlite3

    src = sqlite3.connect(db)
    live = {r[0] for r in src.execute("SELECT id FROM customers WHERE deleted_at IS NULL")}
    src.close()
    con = duckdb.connect(str(replica), read_only=True)
    assert {r[0] for r in con.execute("SELECT id FROM customers").fetchall()} == live
    con.close()

    # a command that runs no flow keeps Python's usual exit
    p = run_cli("status", "--config", config, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    probe = subprocess.run(
        [sys.executable, "-c", "import atexit, gc; import flows.sync; "
         "atexit.register(lambda: print(gc.get_freeze_count()))"],
        **RUN,
    )  # fmt: skip
    assert probe.returncode == 0 and probe.stdout.strip() == "0", probe.stderr[-2000:]
