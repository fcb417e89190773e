"""Shared fixtures: real services started once per session, state isolated per test.

- An S3-compatible server (moto in server mode, refusing torn bodies as S3 does:
  ``tests/support/s3_server.py``) in its own process on loopback.
- A temporary Prefect API (``prefect_test_harness``) with its own PREFECT_HOME.
- Every test gets its own DELTAFERRY_HOME, bucket, jobs file and source database.

Tiers (markers registered in pyproject.toml, set by ``pytest_collection_modifyitems``;
every test has exactly one):

- ``e2e``: a real Prefect server with workers (``E2E_FIXTURES``) or a browser;
- ``integration``: a service fixture (``SERVICE_FIXTURES``, directly or through fixtures
  built on them), a child process of its own, or ``slow`` (pure but tens of seconds);
- ``unit``: the rest. ``pytest -m unit tests`` is the fast loop: no S3 server, Prefect API,
  PostgreSQL, REST server, child process or browser.

A test that starts a process, server or browser by itself is marked ``integration`` or
``e2e`` by hand; a ``unit`` test that starts a process anyway fails (``unit_guard``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

SUPPORT = Path(__file__).parent / "support"  # test servers, harnesses, test contracts

SESSION_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "RUNTIME__LOG_LEVEL": "WARNING",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "DELTAFERRY_RETRY_BASE_SECONDS": "0.05",
    "DELTAFERRY_S3_MAX_ATTEMPTS": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# fixtures that start a service; fixtures built on them (bucket, shop_job, pg_job, ...) are
# found through item.fixturenames, which is the closure of every fixture a test requests
SERVICE_FIXTURES = frozenset({"s3_endpoint", "prefect_api", "postgres", "api", "prefect_server"})
E2E_FIXTURES = frozenset({"prefect_server"})
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(t) for t in TIERS):
            continue  # marked by hand
        used = set(getattr(item, "fixturenames", ()))
        if used & E2E_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        elif used & SERVICE_FIXTURES or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The folder the test command (``.ci/test``) made for the run's files in RAM (its
    ``TMPDIR``): removed when the run passes, named when it does not (the command's next run
    removes it). Only in the process the command started, whose pid names the folder: not
    on an xdist worker, nor in a pytest a test runs (which inherits ``TMPDIR``:
    tests/test_new_source.py)."""
    import shutil

    root = os.environ.get("TMPDIR", "")
    if Path(root).name != f"deltaferry-tests.{os.getpid()}":
        return
    if exitstatus == 0:
        shutil.rmtree(root, ignore_errors=True)
    else:
        sys.stderr.write(
            f"\nthe run's files: {root} (in RAM; the test command's next run removes it)\n"
        )


# processes a unit test may start: `git ls-files` (tests/test_docs.py); platform.architecture()
# runs `file -b` on the interpreter
UNIT_MAY_RUN = frozenset({"git", "file"})


@pytest.fixture(autouse=True)
def unit_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``unit`` test that starts a child process fails, naming it: mark the test
    ``integration`` (or give it the service fixture it needs)."""
    if request.node.get_closest_marker("unit") is None:
        return
    import threading

    real_init = subprocess.Popen.__init__

    def guarded(self, args, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        exe = Path(os.fsdecode(argv[0]).split()[0]).name if argv else ""
        if threading.current_thread() is threading.main_thread() and exe not in UNIT_MAY_RUN:
            raise AssertionError(
                f"unit test started a process ({exe}): mark it integration (tests/conftest.py)"
            )
        real_init(self, args, *a, **k)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture(scope="session", autouse=True)
def session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in [*SESSION_ENV, "PREFECT_HOME"]}
    os.environ.update(SESSION_ENV)
    os.environ["PREFECT_HOME"] = str(home)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_endpoint(session_env: None) -> Iterator[str]:
    """A real S3-compatible HTTP server (moto server mode) in a child process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SUPPORT / "s3_server.py"), "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# services of the temporary API that no test of it uses, off so that it takes less of the
# machine from the tests: automations (reactive triggers on every event and, every 5 s,
# proactive ones); the event store stays (tests/test_run_report.py reads events). The real
# server of the e2e tests (``prefect_server``) keeps every service
HARNESS_SERVICES_OFF = {"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}


@pytest.fixture(scope="session")
def prefect_api(session_env: None) -> Iterator[None]:
    """A temporary Prefect API shared by every flow run of the session.

    Flow-run heartbeats are off for the flows run in this process (no test reads them):
    Prefect's heartbeat thread sleeps in whole seconds and a flow run's end waits for it,
    about half a second a run (``prefect.flow_engine._send_heartbeats``)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as env:  # read by the server's process as it starts
            for k, v in HARNESS_SERVICES_OFF.items():
                env.setenv(k, v)
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        stack.enter_context(temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
        yield


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("DELTAFERRY_HOME", str(path))
    monkeypatch.delenv("DELTAFERRY_CONFIG", raising=False)
    monkeypatch.delenv("DELTAFERRY_FAILPOINT", raising=False)
    return path


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    name = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@dataclass
class ShopJob:
    """A shop source, its jobs file, and helpers to sync, pull and compare."""

    dir: Path
    config: Path
    lake_url: str
    replica: Path
    name: str = "shop"

    def write_config(self, **overrides: object) -> None:
        from deltaferry.shop import JOBS_TOML

        text = JOBS_TOML.format(db=self.dir / "shop.db", lake=self.lake_url)
        for key, value in overrides.items():
            text = text.replace(
                "max_quarantine_ratio = 0.2",
                f"max_quarantine_ratio = 0.2\n{key} = {value!r}".replace("'", '"'),
            )
        self.config.write_text(text)

    def job(self):  # noqa: ANN201
        from deltaferry.config import load_job

        return load_job("shop", self.config)

    def sync(self) -> dict:
        from flows.sync import sync_job

        return sync_job(job="shop", config=str(self.config))

    def lake(self):  # noqa: ANN201
        from destinations.lake import open_lake

        return open_lake(self.lake_url)

    def pull(self):  # noqa: ANN201
        from deltaferry.replica import pull

        return pull(self.job(), self.lake(), self.replica)

    def compare(self):  # noqa: ANN201
        from deltaferry.compare import compare

        return compare(self.job(), self.replica)


@pytest.fixture
def shop_job(tmp_path: Path, home: Path, bucket: str, prefect_api: None) -> ShopJob:
    job = ShopJob(
        dir=tmp_path,
        config=tmp_path / "deltaferry.toml",
        lake_url=f"s3://{bucket}/lake",
        replica=tmp_path / "replica.duckdb",
    )
    job.write_config()
    return job


@pytest.fixture
def shop(shop_job: ShopJob) -> Iterator[object]:
    from deltaferry.shop import Shop

    s = Shop(shop_job.dir / "shop.db", seed=1234)
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres(session_env: None) -> Iterator[object]:
    """A real PostgreSQL server (Debian's postgresql) on loopback, once per session."""
    from tests.support.pg import PostgresServer

    server = PostgresServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_job(tmp_path: Path, home: Path, bucket: str, prefect_api: None, postgres) -> ShopJob:
    """A job whose source is a fresh PostgreSQL database; the test writes the jobs file
    (``{url}`` and ``{lake}`` in its text are filled in by ``write``)."""
    db = postgres.create_database(f"src_{uuid.uuid4().hex[:10]}")
    job = PgJob(
        dir=tmp_path,
        config=tmp_path / "deltaferry.toml",
        lake_url=f"s3://{bucket}/lake",
        replica=tmp_path / "replica.duckdb",
        server=postgres,
        database=db,
    )
    return job


@dataclass
class PgJob(ShopJob):
    server: object = None
    database: str = ""
    name: str = "pg"

    def write(self, text: str, **fmt: object) -> None:
        self.config.write_text(
            text.format(url=self.server.url(self.database), lake=self.lake_url, **fmt)
        )

    def sql(self, *statements: str) -> None:
        with self.server.connect(self.database) as conn:
            for s in statements:
                conn.execute(s)

    def job(self):  # noqa: ANN201
        from deltaferry.config import load_job

        return load_job(self.name, self.config)

    def sync(self) -> dict:
        from flows.sync import sync_job

        return sync_job(job=self.name, config=str(self.config))


@pytest.fixture
def conformance_job(tmp_path: Path, home: Path, bucket: str, prefect_api: None) -> PgJob:
    """A job named ``conf`` publishing to a fresh bucket; the harness writes its jobs file
    (see tests/support/conformance.py)."""
    return PgJob(
        dir=tmp_path,
        config=tmp_path / "deltaferry.toml",
        lake_url=f"s3://{bucket}/lake",
        replica=tmp_path / "replica.duckdb",
        name="conf",
    )


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The test REST API (``tests/support/api_server.py``), seeded and started; its token in
    ``API_TOKEN`` and a fast client backoff."""
    from tests.support.api_server import seeded

    server = seeded()
    server.start()
    monkeypatch.setenv("API_TOKEN", server.token)
    # fast backoff for the tests; Retry-After is still honoured as sent
    monkeypatch.setenv("DELTAFERRY_HTTP_BACKOFF", "0.05")
    yield server
    server.stop()  # idempotent: a test may have stopped it already
