"""Operations on a real Prefect server (API and UI, in its own process):

- the deployments in ``deployments/prefect.yaml`` with a process worker: registered with
  ``prefect deploy``, scheduled, run by the worker; two runs of one job started at once are
  serialised by the deployment's concurrency limit of one;
- the alerting automations of ``deployments/automations.py`` calling a loopback webhook;
- the UI in headless Chromium (Debian's ``chromium`` driven by playwright): a sync run's
  page and its artifact, with a screenshot in ``test-output/``."""

from __future__ import annotations

import os
import signal
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
CHROMIUM = os.environ.get("DELTAFERRY_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``prefect server start`` in its own process, with its own home and database."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    prefect_env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
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
        _stop(proc, signal.SIGTERM, 30)
        log.close()


def _stop(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Send ``sig`` and wait ``timeout`` seconds, then SIGKILL: a fresh-clone run under load
    left a `prefect worker` alive 15 minutes after its SIGTERM (what these tests check is the
    runs, not how fast a process stops; a leftover process would hold ports and files)."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


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
        _stop(worker, signal.SIGTERM, 30)
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


class _Hook:
    """A webhook receiver on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    received.append(json.loads(body))
                except ValueError:
                    received.append({"raw": body.decode(errors="replace")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> set[str]:
        return {r.get("alert", "") for r in self.received}

    def close(self) -> None:
        self.server.shutdown()


def test_automations_alert_on_a_failed_run_and_on_silence(prefect_server, shop_job, shop, home):
    hook = _Hook()
    shop_job.write_config(max_lag_seconds=3600)  # the shop's changes are months old
    env = {**os.environ, **prefect_server, "DELTAFERRY_HOME": str(home)}
    try:
        p = subprocess.run(
            [
                sys.executable,
                str(ROOT / "deployments/automations.py"),
                "--webhook",
                hook.url,
                "--allow-private-urls",
                "--quiet-window",
                "15",
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        assert "deltaferry: run failed" in p.stdout and "deltaferry: nothing published" in p.stdout
        names = {a["name"] for a in _api(env, "POST", "/automations/filter", json={})}
        assert {
            "deltaferry: run failed",
            "deltaferry: retries rising",
            "deltaferry: retry budget spent",
            "deltaferry: nothing published",
            "deltaferry: no successful run",
            "deltaferry: lag exceeded",
        } <= names

        run = [
            sys.executable,
            "-m",
            "deltaferry.cli",
            "run",
            "shop",
            "--config",
            str(shop_job.config),
        ]
        shop.round(20, 10, churn=0)
        ok = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0, ok.stderr[-3000:]
        shop.round(10, 0, churn=0, invalid=5)  # half the new customers break the contract
        bad = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 1, bad.stderr[-3000:]

        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and not {"run failed", "nothing published", "lag exceeded"} <= hook.alerts()
        ):
            time.sleep(1)
        assert {"run failed", "nothing published", "lag exceeded"} <= hook.alerts(), hook.received
        behind = next(r for r in hook.received if r.get("alert") == "lag exceeded")
        assert behind["job"] == "shop" and behind["table"] in ("customers", "orders")
        failed = next(r for r in hook.received if r.get("alert") == "run failed")
        assert failed["event"] == "prefect.flow-run.Failed"
        quiet = next(r for r in hook.received if r.get("alert") == "nothing published")
        assert quiet["job"] == "shop"
    finally:
        hook.close()


def test_the_ui_shows_the_run_and_its_artifact(prefect_server, shop_job, shop, home):
    from playwright.sync_api import sync_playwright

    env = {**os.environ, **prefect_server, "DELTAFERRY_HOME": str(home)}
    shop.round(15, 10, churn=0)
    p = subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "run", "shop", "--config", str(shop_job.config)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    runs = _api(
        env,
        "POST",
        "/flow_runs/filter",
        json={"flow_runs": {"name": {"like_": "sync-shop"}}, "sort": "START_TIME_DESC"},
    )
    run = next(r for r in runs if r["state_type"] == "COMPLETED")
    # named after the batches it published, as the runs list shows it
    assert run["name"] == "sync-shop customers#1 orders#1"
    ui = prefect_server["PREFECT_API_URL"].removesuffix("/api")
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui}/runs/flow-run/{run['id']}", wait_until="networkidle")
            page.get_by_text("sync-shop customers#1 orders#1").first.wait_for(timeout=30_000)
            page.get_by_text("Completed").first.wait_for(timeout=30_000)
            page.locator("li.p-tab#artifacts").click()
            page.get_by_text("deltaferry-shop-run").first.wait_for(timeout=30_000)
            page.screenshot(path=str(out / "prefect-ui-flow-run.png"), full_page=True)
            page.locator(".artifact-card, [class*=artifact]").get_by_text(
                "deltaferry-shop-run"
            ).first.click()
            page.get_by_text("deltaferry job").first.wait_for(timeout=30_000)
            assert page.get_by_text("customers").count() > 0
            page.screenshot(path=str(out / "prefect-ui-run-artifact.png"), full_page=True)
        finally:
            browser.close()
    assert (out / "prefect-ui-flow-run.png").stat().st_size > 10_000


def test_serve_runs_every_scheduled_job_from_one_process(prefect_server, shop_job, shop, home):
    shop.round(30, 40, churn=0)
    text = shop_job.config.read_text()
    text = text.replace("[jobs.shop]", "[jobs.served]\nschedule = 10", 1)
    jobs = home.parent / "served.toml"
    jobs.write_text(text.replace("[[jobs.shop.tables]]", "[[jobs.served.tables]]"))
    env = {
        **os.environ,
        **prefect_server,
        "DELTAFERRY_HOME": str(home),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    log_path = home.parent / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltaferry.cli", "serve", "--config", str(jobs)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        deployment: dict = {}
        while not deployment and time.monotonic() < deadline:
            try:
                deployment = _api(env, "GET", "/deployments/name/deltaferry-sync/served")
            except httpx.HTTPStatusError:
                time.sleep(1)
        assert deployment, log_path.read_text()[-3000:]
        assert deployment["parameters"] == {"job": "served", "config": str(jobs)}
        assert {"deltaferry", "job:served"} <= set(deployment["tags"])
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert [s["schedule"].get("interval") for s in deployment["schedules"]] == [10.0]
        # the schedule runs the job twice with nobody triggering it
        done: list = []
        deadline = time.monotonic() + 180
        while len(done) < 2 and time.monotonic() < deadline:
            runs = _api(
                env,
                "POST",
                "/flow_runs/filter",
                json={"deployments": {"id": {"any_": [deployment["id"]]}}},
            )
            done = [r for r in runs if r["state_type"] == "COMPLETED"]
            failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
            assert not failed, log_path.read_text()[-3000:]
            time.sleep(1)
        assert len(done) >= 2, log_path.read_text()[-3000:]
    finally:
        _stop(proc, signal.SIGINT, 60)  # SIGINT, as Ctrl-C
        log.close()
    # the first run published batch 1 of each table; the later ones found nothing new
    lake = shop_job.lake()
    for table in ("customers", "orders"):
        assert lake.list(f"served/{table}/manifests/") == [
            f"served/{table}/manifests/000000000001.json"
        ]


def test_serve_without_a_scheduled_job_is_a_one_line_config_error(shop_job):
    r = subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "serve", "--config", str(shop_job.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "has a schedule; add schedule = <seconds>" in r.stderr
