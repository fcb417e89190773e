"""REST API source: pagination, incremental parameter, auth, throttling, bad answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.api_server import ApiServer

JOB = """
[jobs.api]
source = "rest_api"
url = "{url}"
lake = "{lake}"
auth = {{ type = "bearer", token = "env:API_TOKEN" }}

[[jobs.api.tables]]
name = "tickets"
primary_key = ["id"]
cursor = "updated_at"
cursor_param = "since"
initial_value = "2000-01-01T00:00:00+00:00"
data_selector = "data"
paginator = {{ type = "cursor", cursor_path = "next", cursor_param = "cursor" }}
contract = "tests.contracts_api:Tickets"

[[jobs.api.tables]]
name = "events"
primary_key = ["id"]
cursor = "updated_at"
cursor_param = "since"
initial_value = "2000-01-01T00:00:00+00:00"
paginator = "header_link"
contract = "tests.contracts_api:Events"

[[jobs.api.tables]]
name = "users"
primary_key = ["id"]
data_selector = "items"
paginator = {{ type = "offset", limit = 3, total_path = "total" }}
contract = "tests.contracts_api:Users"
"""


def _ts(second: int) -> str:
    return f"2026-11-01T10:00:{second:02d}+00:00"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch):
    server = ApiServer()
    for i in range(1, 11):
        server.tickets[i] = {
            "id": i,
            "title": f"ticket {i} – Grüße",
            "status": "open",
            "tags": ["a", f"t{i}"],
            "meta": {"prio": i % 3, "owner": {"name": "ö"}},
            # tickets 9 and 10 share the last cursor value
            "updated_at": _ts(min(i, 9)),
        }
    for i in range(1, 8):
        server.events[i] = {"id": i, "kind": "click", "updated_at": _ts(i)}
    for i in range(1, 8):
        server.users[i] = {"id": i, "name": f"user {i}", "email": f"u{i}@example.com"}
    server.start()
    monkeypatch.setenv("API_TOKEN", server.token)
    # fast backoff for the tests; Retry-After is still honoured as sent
    monkeypatch.setenv("DELTAFERRY_HTTP_BACKOFF", "0.05")
    yield server
    server.stop()  # idempotent: a test may have stopped it already


@pytest.fixture
def api_job(tmp_path: Path, home: Path, bucket: str, prefect_api: None, api: ApiServer):
    from tests.conftest import PgJob

    job = PgJob(
        dir=tmp_path,
        config=tmp_path / "deltaferry.toml",
        lake_url=f"s3://{bucket}/lake",
        replica=tmp_path / "replica.duckdb",
        name="api",
    )
    job.config.write_text(JOB.format(url=api.url, lake=job.lake_url))
    return job


def _rows(job, sql: str) -> list[tuple]:
    con = duckdb.connect(str(job.replica), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _replica_equals(job, api: ApiServer) -> None:
    job.pull()
    got = _rows(job, "SELECT id, title, status, tags, meta FROM tickets ORDER BY id")
    want = [
        (r["id"], r["title"], r["status"], r["tags"], r["meta"])
        for r in sorted(api.tickets.values(), key=lambda r: r["id"])
    ]
    assert [(i, t, s, json.loads(g), json.loads(m)) for i, t, s, g, m in got] == want
    assert _rows(job, "SELECT id, kind FROM events ORDER BY id") == [
        (r["id"], r["kind"]) for r in sorted(api.events.values(), key=lambda r: r["id"])
    ]
    assert _rows(job, "SELECT id, name, email FROM users ORDER BY id") == [
        (r["id"], r["name"], r["email"]) for r in sorted(api.users.values(), key=lambda r: r["id"])
    ]


def test_three_paginators_initial_and_incremental_sync_converge(api_job, api):
    out = api_job.sync()
    assert {t: s["rows"] for t, s in out["tables"].items()} == {
        "tickets": 10,
        "events": 7,
        "users": 7,
    }
    # every page was fetched: 10 tickets in pages of 4, 7 events in pages of 4, users by 3
    assert len(api.requests_to("/api/tickets")) >= 3
    assert any("page" in r["query"] for r in api.requests_to("/api/events"))
    assert {r["query"].get("offset") for r in api.requests_to("/api/users")} >= {"0", "3", "6"}
    _replica_equals(api_job, api)

    api.log.clear()
    # changes: ticket 10 edited without moving its cursor (same second as ticket 9),
    # ticket 3 edited with a new cursor, a new ticket, a new event, one user renamed
    api.tickets[10]["status"] = "closed"
    api.tickets[3].update(title="ticket 3 edited", updated_at=_ts(30))
    api.tickets[11] = {
        "id": 11,
        "title": "new",
        "status": "pending",
        "tags": [],
        "meta": {},
        "updated_at": _ts(31),
    }
    api.events[8] = {"id": 8, "kind": "view", "updated_at": _ts(40)}
    api.users[2]["name"] = "user two"
    out = api_job.sync()
    # the API was asked only for what changed since the last cursor value (closed range)
    assert {r["query"].get("since") for r in api.requests_to("/api/tickets")} == {_ts(9)}
    # and only changed records were published: the boundary record 9 was read again, not sent
    assert out["tables"]["tickets"]["rows"] == 3
    assert out["tables"]["events"]["rows"] == 1
    assert out["tables"]["users"]["rows"] == 1  # no "since" for users: read all, send one
    _replica_equals(api_job, api)

    out = api_job.sync()  # nothing changed: nothing published
    assert all(s["batch"] is None for s in out["tables"].values())


def test_throttling_and_server_errors_are_retried_and_recorded(api_job, api):
    api.faults += [
        ("/api/tickets", 429, {"Retry-After": "1"}),
        ("/api/events", 503, {}),
        ("/api/events", 502, {}),
    ]
    api_job.sync()
    _replica_equals(api_job, api)
    tickets = api.requests_to("/api/tickets")
    throttled = next(i for i, r in enumerate(tickets) if r.get("status") == 429)
    # Retry-After: 1 was honoured before the same request was sent again
    assert tickets[throttled + 1]["at"] - tickets[throttled]["at"] >= 0.95
    from deltaferry.state import StateStore

    state = StateStore("api")
    with state.connect(read_only=True) as con:
        retried = [
            r[0]
            for r in con.execute(
                "SELECT detail FROM ops_log WHERE outcome = 'source-retry' ORDER BY id"
            ).fetchall()
        ]
    assert len(retried) == 3, retried
    assert retried[0].startswith("HTTP 429 Retry-After 1: job 'api'")
    assert "HTTP 503" in retried[1] and "/api/events" in retried[1]


def test_a_retry_after_past_the_limit_fails_the_step_as_transient(api_job, api, monkeypatch):
    monkeypatch.setenv("DELTAFERRY_STEP_RETRIES", "0")
    monkeypatch.setenv("DELTAFERRY_HTTP_MAX_RETRY_AFTER", "5")
    api.faults.append(("/api/events", 429, {"Retry-After": "3600"}))
    with pytest.raises(Exception, match="asking to wait 3600 s"):
        api_job.sync()
    # nothing was published; the next run publishes everything once
    api_job.sync()
    _replica_equals(api_job, api)


def _cli(job, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", *args, "--config", str(job.config)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _lake_listing(job) -> list[str]:
    lake = job.lake()
    return sorted(lake.list(""))


def test_html_instead_of_json_and_bad_credentials_are_one_line_config_errors(
    api_job, api, monkeypatch
):
    api_job.sync()
    before = _lake_listing(api_job)
    api.html.add("/api/events")
    r = _cli(api_job, "run", "api")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line
    assert "job 'api'" in line and "/api/events" in line and "text/html, not JSON" in line
    assert "check the job's url" in line

    api.html.clear()
    monkeypatch.setenv("API_TOKEN", "wrong")
    r = _cli(api_job, "run", "api")
    assert r.returncode == 2, r.stderr
    assert "answered 401" in r.stderr and "check the job's auth" in r.stderr
    assert "wrong" not in r.stderr  # the token is never echoed

    monkeypatch.delenv("API_TOKEN")
    r = _cli(api_job, "run", "api")
    assert r.returncode == 2 and "API_TOKEN, which is not set" in r.stderr

    monkeypatch.setenv("API_TOKEN", api.token)
    monkeypatch.setenv("DELTAFERRY_HTTP_ATTEMPTS", "2")
    api.stop()  # the API is down: transient, exit 1, not a configuration error
    r = _cli(api_job, "run", "api")
    assert r.returncode == 1, r.stderr
    assert "job 'api': API at http://127.0.0.1:" in r.stderr and "unreachable" in r.stderr
    assert _lake_listing(api_job) == before  # nothing committed was touched


def test_rest_config_errors_name_the_job_and_the_fix(tmp_path: Path):
    from deltaferry.config import load_job
    from deltaferry.errors import ConfigError

    bad = JOB.replace('name = "users"', 'name = "users"\ndeletes = "reconcile"')
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(bad.format(url="http://127.0.0.1:9/api", lake=f"file:{tmp_path}/lake"))
    with pytest.raises(ConfigError, match="table 'users': deletes = 'reconcile' is not available"):
        load_job("api", cfg)
    cfg.write_text(
        JOB.replace("cursor_param", "cursor_parm", 1).format(
            url="http://127.0.0.1:9/api", lake=f"file:{tmp_path}/lake"
        )
    )
    with pytest.raises(ConfigError, match=r"table 'tickets': unknown setting\(s\) cursor_parm"):
        load_job("api", cfg)

    # a token over plain HTTP to a remote host is refused before any request
    from sources import rest_api

    cfg.write_text(JOB.format(url="http://api.example.com/v2", lake=f"file:{tmp_path}/lake"))
    with pytest.raises(
        ConfigError, match="job 'api': API http://api.example.com/v2/: .*plain HTTP"
    ):
        rest_api.preflight_source(load_job("api", cfg))


def test_an_api_key_in_the_query_never_reaches_an_error_or_its_traceback(
    tmp_path: Path, home: Path, monkeypatch
):
    import traceback

    from deltaferry.config import load_job
    from deltaferry.errors import TransientError
    from sources import rest_api

    monkeypatch.setenv("API_KEY", "SUPERSECRET42")
    monkeypatch.setenv("DELTAFERRY_HTTP_ATTEMPTS", "2")
    monkeypatch.setenv("DELTAFERRY_HTTP_BACKOFF", "0.01")
    from tests.conftest import free_port

    cfg = tmp_path / "jobs.toml"
    cfg.write_text(
        f"""[jobs.api]
source = "rest_api"
url = "http://127.0.0.1:{free_port()}/api"
lake = "file:{tmp_path}/lake"
auth = {{ type = "api_key", name = "api_key", api_key = "env:API_KEY", location = "query" }}
[[jobs.api.tables]]
name = "users"
primary_key = ["id"]
contract = "tests.contracts_api:Users"
"""
    )
    with pytest.raises(TransientError) as raised:
        rest_api.extract(load_job("api", cfg))  # nothing listens on that port
    assert "job 'api': extract step 'extract' failed: ConnectionError" in str(raised.value)
    assert "SUPERSECRET42" not in "".join(traceback.format_exception(raised.value))


def test_retry_after_is_read_as_seconds_or_an_http_date():
    from email.utils import format_datetime
    from datetime import datetime, timedelta, timezone

    from sources.rest_api import _retry_after_seconds

    assert _retry_after_seconds("120") == 120
    later = format_datetime(datetime.now(timezone.utc) + timedelta(hours=2), usegmt=True)
    assert 7100 < _retry_after_seconds(later) <= 7200
    assert _retry_after_seconds("soon") is None and _retry_after_seconds(None) is None
