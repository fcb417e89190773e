"""The deployments in ``deployments/prefect.yaml`` on a real Prefect server with a process
worker: registered with ``prefect deploy``, scheduled, run by the worker; two runs of one
job started at once are serialised by the deployment's concurrency limit of one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``prefect server start`` in its own process, with its own home and database."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    prefect_env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env = {**os.environ, **prefect_env}
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server did not start: {(home / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield prefect_env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _prefect(env: dict[str, str], *args: str) -> str:
    p = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, f"prefect {' '.join(args)}: {p.stdout[-2000:]}{p.stderr[-3000:]}"
    return p.stdout


def _api(env: dict[str, str], method: str, path: str, **kw) -> object:  # noqa: ANN003
    r = httpx.request(method, f"{env['PREFECT_API_URL']}{path}", timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def test_deployment_runs_on_a_worker_and_one_run_per_job_at_a_time(
    prefect_server, shop_job, shop, home
):
    shop.round(40, 60, churn=0)
    env = {
        **os.environ,  # the S3 endpoint and credentials of this test
        **prefect_server,
        "DELTAFERRY_PROJECT_DIR": str(ROOT),
        "DELTAFERRY_CONFIG": str(shop_job.config),
        "DELTAFERRY_HOME": str(home),
    }
    _prefect(env, "work-pool", "create", "deltaferry-process", "--type", "process")
    _prefect(env, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")

    deployment = _api(env, "GET", "/deployments/name/deltaferry-sync/shop")
    assert deployment["parameters"] == {"job": "shop"}
    assert "job:shop" in deployment["tags"]
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert [s["schedule"].get("interval") for s in deployment["schedules"]] == [900.0]

    # the schedule, not only a manual trigger: the server's scheduler creates the runs
    deadline = time.monotonic() + 60
    scheduled: list = []
    while not scheduled and time.monotonic() < deadline:
        scheduled = _api(
            env,
            "POST",
            "/flow_runs/filter",
            json={"deployments": {"id": {"any_": [deployment["id"]]}}},
        )
        time.sleep(1)
    assert scheduled and all(r["state_type"] == "SCHEDULED" for r in scheduled)

    # two runs of the same job at once, now
    runs = [
        _api(env, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={})["id"]
        for _ in range(2)
    ]
    log = open(home.parent / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "deltaferry-process", "--limit", "2"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        states: dict[str, dict] = {}
        while time.monotonic() < deadline:
            states = {r: _api(env, "GET", f"/flow_runs/{r}") for r in runs}
            if all(s["state_type"] in FINAL for s in states.values()):
                break
            time.sleep(1)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    worker_log = (home.parent / "worker.log").read_text()[-4000:]
    assert all(s["state_type"] == "COMPLETED" for s in states.values()), (
        {r: s["state_name"] for r, s in states.items()},
        worker_log,
    )
    first, second = sorted(states.values(), key=lambda s: s["start_time"])
    assert second["start_time"] >= first["end_time"]  # one run per job at a time

    # the first run published batch 1 of each table, the second found nothing new
    lake = shop_job.lake()
    for table in ("customers", "orders"):
        assert lake.list(f"shop/{table}/manifests/") == [
            f"shop/{table}/manifests/000000000001.json"
        ]
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())
