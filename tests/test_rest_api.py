"""REST API source: pagination, incremental parameter, auth, throttling, bad answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from deltaferry.errors import DeltaferryError, TerminalError
from tests.support.api_server import API_JOB_HEADER, ApiServer, users_table
from tests.support.api_server import ts as _ts

JOB = API_JOB_HEADER + """
[[jobs.api.tables]]
name = "tickets"
primary_key = ["id"]
cursor = "updated_at"
cursor_param = "since"
initial_value = "2000-01-01T00:00:00+00:00"
data_selector = "data"
paginator = {{ type = "cursor", cursor_path = "next", cursor_param = "cursor" }}
contract = "tests.support.contracts_api:Tickets"

[[jobs.api.tables]]
name = "events"
primary_key = ["id"]
cursor = "updated_at"
cursor_param = "since"
initial_value = "2000-01-01T00:00:00+00:00"
paginator = "header_link"
contract = "tests.support.contracts_api:Events"
""" + users_table("tests.support.contracts_api:Users")


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
contract = "tests.support.contracts_api:Users"
"""
    )
    with pytest.raises(TransientError) as raised:
        rest_api.extract(load_job("api", cfg))  # nothing listens on that port
    assert "job 'api': extract step 'extract' failed: ConnectionError" in str(raised.value)
    assert "SUPERSECRET42" not in "".join(traceback.format_exception(raised.value))


def test_retry_after_is_read_as_seconds_or_an_http_date():
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from sources.rest_api import _retry_after_seconds

    assert _retry_after_seconds("120") == 120
    later = format_datetime(datetime.now(timezone.utc) + timedelta(hours=2), usegmt=True)
    assert 7100 < _retry_after_seconds(later) <= 7200
    assert _retry_after_seconds("soon") is None and _retry_after_seconds(None) is None


# --- one read: keys read twice, reads that do not end, records without a key -------------

ITEMS_JOB = API_JOB_HEADER + """{job_extra}
[[jobs.api.tables]]
name = "items"
primary_key = ["id"]
cursor = "updated_at"
cursor_param = "since"
initial_value = "2000-01-01T00:00:00+00:00"
data_selector = "data"
params = {{ api_key = "env:ITEMS_KEY" }}
paginator = {{ type = "cursor", cursor_path = "next", cursor_param = "cursor" }}
contract = "tests.support.contracts_conformance:Items"
{table_extra}
"""


@pytest.fixture
def items_job(api_job, api, monkeypatch):
    """The ``api`` job reading only ``/api/items`` (ten records, pages of four); a query
    parameter carries a secret (``ITEMS_KEY``) that must never be shown."""
    monkeypatch.setenv("ITEMS_KEY", "QUERYSECRET77")
    for i in range(1, 11):
        api.items[i] = {"id": i, "name": f"item {i}", "updated_at": _ts(i)}

    def write(job_extra: str = "", table_extra: str = "") -> None:
        api_job.config.write_text(
            ITEMS_JOB.format(
                url=api.url, lake=api_job.lake_url, job_extra=job_extra, table_extra=table_extra
            )
        )

    write()
    api_job.write_items = write
    return api_job


def _ops(outcome: str) -> list[tuple]:
    from deltaferry.state import StateStore

    with StateStore("api").connect(read_only=True) as con:
        return con.execute(
            "SELECT tbl, detail FROM ops_log WHERE outcome = ? ORDER BY id", [outcome]
        ).fetchall()


def _items(job) -> list[tuple]:
    job.pull()
    return _rows(job, "SELECT id, name FROM items ORDER BY id")


def test_a_key_read_twice_in_one_read_keeps_one_version_by_a_stated_rule(items_job, api):
    # id 5 listed again on page 1 with an older version (an offset shifted by a change);
    # id 10 listed again with the same cursor value and other content (a tie): the newest
    # cursor wins, a tie goes to the largest canonical JSON ('"name":"item 10"' > '"a tie"')
    old5 = {"id": 5, "name": "item 5, before the edit", "updated_at": _ts(1)}
    tie10 = {"id": 10, "name": "a tie", "updated_at": _ts(10)}
    api.repeats["/api/items"] = [(0, old5), (11, tie10)]
    out = items_job.sync()
    assert out["tables"]["items"]["rows"] == 10  # one row per key
    want = [(i, f"item {i}") for i in range(1, 11)]
    assert _items(items_job) == want
    # recorded: one line naming job, table and both keys
    (table, note), = _ops("duplicate-key")
    assert table == "items" and "job 'api' table 'items'" in note
    assert '{"id": 5} x2' in note and '{"id": 10} x2' in note and "2 key(s)" in note

    # the API unchanged, its pages now in the other order: nothing is published again
    api.repeats["/api/items"] = [(11, old5), (0, tie10)]
    for _ in range(2):
        out = items_job.sync()
        assert out["tables"]["items"]["batch"] is None, out
    assert _items(items_job) == want
    assert len(_ops("duplicate-key")) == 3  # every read that met them says so


def test_duplicates_resolve_the_same_in_every_order_and_cursor_format():
    from itertools import permutations
    from types import SimpleNamespace

    from sources.rest_api.reads import TableRead

    class NothingStaged:
        def staged_among(self, hashes: list[str]) -> set[str]:
            return set()

        def changed_records(self, rows: list[dict], hashes: list[str], staged: set[str]) -> list[dict]:
            return [{**row, "_df_hash": h} for row, h in zip(rows, hashes)]

    def winner(records: list[dict], cursor: str | None = "at") -> dict:
        t = SimpleNamespace(name="t", primary_key=["id"], cursor=cursor, null_cursor="include", options={})
        read = TableRead(SimpleNamespace(name="j", timezone="UTC"), t, NothingStaged())
        (out,) = [r for page in read.read(iter([[dict(r) for r in records]])) for r in page]
        out.pop("_df_hash")
        return out

    def same_in_every_order(records: list[dict], want: dict, **kw) -> None:
        for order in permutations(records):
            assert winner(list(order), **kw) == want, order

    # instants: an offset, Z, a naive value (UTC), nanoseconds
    newest = {"id": 1, "at": "2026-03-02T10:30:00.000001Z", "v": "c"}
    same_in_every_order(
        [
            {"id": 1, "at": "2026-03-02T11:00:00+01:00", "v": "a"},  # 10:00Z
            {"id": 1, "at": "2026-03-02T10:15:00", "v": "b"},
            newest,
            {"id": 1, "at": "2026-03-02T10:30:00Z", "v": "z"},
        ],
        newest,
    )
    # numbers as numbers, numeric text too ("10" > "9")
    same_in_every_order(
        [{"id": 1, "at": "9", "v": "z"}, {"id": 1, "at": "10", "v": "a"}],
        {"id": 1, "at": "10", "v": "a"},
    )
    same_in_every_order(
        [{"id": 1, "at": 9.5, "v": "z"}, {"id": 1, "at": 10, "v": "a"}],
        {"id": 1, "at": 10, "v": "a"},
    )
    # the same instant written two ways, and a table without a cursor: the largest
    # canonical JSON wins
    same_in_every_order(
        [
            {"id": 1, "at": "2026-03-02T10:00:00Z", "v": "b"},
            {"id": 1, "at": "2026-03-02T11:00:00+01:00", "v": "a"},
        ],
        {"id": 1, "at": "2026-03-02T11:00:00+01:00", "v": "a"},
    )
    same_in_every_order(
        [{"id": 1, "v": "b"}, {"id": 1, "v": "c", "w": 0}, {"id": 1, "v": "a"}],
        {"id": 1, "v": "c", "w": 0},
        cursor=None,
    )


def test_a_cursor_that_stops_advancing_stops_the_read_and_publishes_nothing(items_job, api):
    api.stuck.add("/api/items")
    r = _cli(items_job, "run", "api")
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line, line
    # pages at cursors 0, 4, 8, then 10 (empty, next = 10 again): page 5 asks for 10 again
    assert line.startswith("error: job 'api' table 'items': page 5 requested http://127.0.0.1:")
    assert "/api/items?" in line and "cursor=10" in line and "(page 4 did)" in line
    assert "api_key=…" in line and "QUERYSECRET77" not in r.stderr + r.stdout
    # preflight and five pages: not the server's 40
    assert len(api.requests_to("/api/items")) <= 6
    assert _lake_listing(items_job) == []  # nothing published

    api.stuck.clear()  # the API is fixed: the next run reads everything once
    out = items_job.sync()
    assert out["tables"]["items"]["rows"] == 10
    assert _items(items_job) == [(i, f"item {i}") for i in range(1, 11)]


def test_a_paginator_that_ignores_its_cursor_stops_at_the_repeated_page(items_job, api):
    api.frozen.add("/api/items")
    page2 = r"page 2 \(http://127\.0\.0\.1:\d+/api/items\?.*cursor=4.*\) "
    repeats = page2 + "repeats the records of page 1 exactly"
    with pytest.raises(Exception, match=repeats) as raised:
        items_job.sync()
    assert "QUERYSECRET77" not in str(raised.value)
    assert len(api.requests_to("/api/items")) <= 3
    assert _lake_listing(items_job) == []


def test_max_pages_caps_a_read_per_table_or_job(items_job, api, tmp_path):
    from deltaferry.config import load_job
    from deltaferry.errors import ConfigError

    items_job.write_items(table_extra="max_pages = 2")
    with pytest.raises(Exception, match=r"job 'api' table 'items': read 2 pages .* max_pages = 2 "
                       "reached; raise max_pages"):
        items_job.sync()
    assert len(api.requests_to("/api/items")) <= 3  # preflight and two pages: no third
    assert _lake_listing(items_job) == []

    # the job's default, overridden by the table's
    items_job.write_items(job_extra="max_pages = 2", table_extra="max_pages = 3")
    assert items_job.sync()["tables"]["items"]["rows"] == 10
    items_job.write_items(job_extra="max_pages = 0")
    with pytest.raises(ConfigError, match="job 'api': max_pages must be a whole number"):
        load_job("api", items_job.config)


def test_records_without_a_key_are_held_back_and_the_rest_is_published(items_job, api):
    from deltaferry.config import load_job
    from sources import rest_api

    api.repeats["/api/items"] = [
        (2, {"id": None, "name": "null key", "updated_at": _ts(3)}),
        (6, {"name": "no key at all", "updated_at": _ts(4)}),
    ]
    result = rest_api.extract(load_job("api", items_job.config))
    held = result.held["items"]
    assert [(h["field"], h["check"]) for h in held] == [("id", "primary key not null")] * 2
    assert json.loads(held[0]["pk"]) == {"id": None}
    assert json.loads(held[1]["row_json"])["name"] == "no key at all"
    assert "primary key column(s) id missing or NULL" in held[0]["reason"]
    assert result.rows_by_table["items"] == 10

    # through the flow: the run goes on, publishes the records that have a key and
    # quarantines the two without
    out = items_job.sync()
    assert out["tables"]["items"]["rows"] == 10
    assert _items(items_job) == [(i, f"item {i}") for i in range(1, 11)]
    from deltaferry.state import StateStore

    with StateStore("api").connect(read_only=True) as con:
        quarantined = con.execute(
            'SELECT tbl, field, "check", row_json, source_rows FROM quarantine'
        ).fetchall()
    # records without a key share one record (as a SQL table's do), counting both rows
    assert [(t, f, c, json.loads(r)["name"], n) for t, f, c, r, n in quarantined] == [
        ("items", "id", "primary key not null", "null key", 2),
    ]


def test_the_cursor_advances_by_instant_not_by_text(items_job, api):
    # as text '...12:00:00+02:00' sorts after '...11:00:00Z', as an instant it is an hour older
    api.items.clear()
    api.items[1] = {"id": 1, "name": "a", "updated_at": "2024-05-01T12:00:00+02:00"}
    api.items[2] = {"id": 2, "name": "b", "updated_at": "2024-05-01T10:30:00Z"}
    assert items_job.sync()["tables"]["items"]["upserts"] == 2
    api.items[3] = {"id": 3, "name": "newest", "updated_at": "2024-05-01T11:00:00Z"}
    out = items_job.sync()["tables"]["items"]
    assert out["upserts"] == 1, out
    # the next request asks from the newest instant, in the form the API wrote it
    assert items_job.sync()["tables"]["items"]["batch"] is None
    assert api.requests_to("/api/items")[-1]["query"]["since"] == "2024-05-01T11:00:00Z"
    assert _items(items_job) == [(1, "a"), (2, "b"), (3, "newest")]


def test_a_timestamp_finer_than_microseconds_is_refused_not_cut(items_job, api):
    api.items[4] = {"id": 4, "name": "fine", "updated_at": "2026-11-01T10:00:04.123456789Z"}
    with pytest.raises(TerminalError) as err:
        items_job.sync()
    assert "field 'updated_at'" in str(err.value) and "beyond microseconds" in str(err.value)
    assert "job 'api' table 'items'" in str(err.value)
    api.items[4]["updated_at"] = "2026-11-01T10:00:04.123456000Z"  # zeros past them are fine
    assert items_job.sync()["tables"]["items"]["upserts"] == 10


def test_documents_are_staged_as_their_json_text_and_strings_stay_strings():
    from sources.rest_api.reads import _documents_as_text

    row = {"id": 1, "doc": {"ü": [1, 2.5, None]}, "list": [], "s": "null", "n": None}
    assert _documents_as_text(row) == {
        "id": 1,
        "doc": '{"ü":[1,2.5,null]}',
        "list": "[]",
        "s": "null",  # the string "null", not a JSON null document
        "n": None,
    }


def test_keys_that_differ_only_in_type_are_refused_before_the_lake_not_by_every_reader(
    items_job, api
):
    """``5`` and ``"5"`` in one read are two records to the source and staging, and one
    key once the contract's types apply: the batch would carry key 5 twice, which every
    reader refuses for good (a fresh-user trial: published, then every pull failed). The
    table stops before anything is uploaded, naming the key; once the API gives the key in
    one form, the next run publishes and readers converge."""
    from destinations.lake import open_lake

    api.items[11] = {"id": "5", "name": "five as text", "updated_at": _ts(11)}
    with pytest.raises(TerminalError) as err:
        items_job.sync()
    message = str(err.value)
    assert "job 'api' table 'items': key (id=5) comes 2 times in this batch" in message, message
    assert "nothing of this table published" in message and "\n" not in message, message
    assert open_lake(items_job.lake_url).list("api/items/") == []  # nothing uploaded
    del api.items[11]
    api.items[5] = {"id": 5, "name": "five, fixed", "updated_at": _ts(12)}
    items_job.sync()
    assert _items(items_job) == [(i, "five, fixed" if i == 5 else f"item {i}") for i in range(1, 11)]


def test_a_soft_delete_flag_that_is_false_for_live_records_is_refused(items_job, api):
    """``deletes = "soft:gone"`` on a field ``gone: false`` published every live record as
    a delete (a row with the column set, not NULL, is a delete): the table stops with one
    line naming it, before anything is uploaded; a deleted-at field works."""
    from deltaferry.errors import ConfigError
    from destinations.lake import open_lake

    for i, item in api.items.items():
        item["gone"] = i == 3
        item["gone_at"] = _ts(3) if i == 3 else None
    items_job.write_items(job_extra='drift = "evolve"', table_extra='deletes = "soft:gone"')
    with pytest.raises(ConfigError) as err:
        items_job.sync()
    message = str(err.value)
    assert "table 'items': deletes = 'soft:gone' names a column staged as BOOLEAN" in message, message
    assert "would delete live rows" in message and "\n" not in message, message
    assert open_lake(items_job.lake_url).list("api/items/") == []
    items_job.write_items(job_extra='drift = "evolve"', table_extra='deletes = "soft:gone_at"')
    items_job.sync()
    assert [i for i, _ in _items(items_job)] == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_empty_text_in_a_soft_delete_field_is_refused_not_read_as_a_delete(items_job, api):
    """``deletes = "soft:deleted"`` on a text field holding ``""`` for live records (as
    applications that never write NULL do) published those records as deletes, exit 0: the
    replica lost them. The table stops naming the key, nothing uploaded; once live records
    hold null, only the deleted one is gone."""
    from deltaferry.errors import ContractViolation
    from destinations.lake import open_lake

    for i, item in api.items.items():
        item["deleted"] = "by admin" if i == 3 else ("  " if i == 5 else "")
    items_job.write_items(job_extra='drift = "evolve"', table_extra='deletes = "soft:deleted"')
    with pytest.raises(ContractViolation) as err:  # the table stops, not the job
        items_job.sync()
    message = str(err.value)
    assert "job 'api' table 'items': the soft-delete column deleted holds empty or blank text " \
        "in 9 changed row(s), e.g. at key {\"id\": 1}" in message, message
    assert "nothing of this table published" in message and "\n" not in message, message
    assert open_lake(items_job.lake_url).list("api/items/") == []
    for i, item in api.items.items():
        item["deleted"] = "by admin" if i == 3 else None
        item["updated_at"] = _ts(20 + i)
    items_job.sync()
    assert [i for i, _ in _items(items_job)] == [1, 2, 4, 5, 6, 7, 8, 9, 10]


MEASURES_JOB = ITEMS_JOB.replace(
    "tests.support.contracts_conformance:Items", "tests.support.contracts_api:Measures"
)


@pytest.fixture
def measures_job(items_job, api):
    items_job.config.write_text(
        MEASURES_JOB.format(url=api.url, lake=items_job.lake_url, job_extra="", table_extra="")
    )
    return items_job


def _asked(api, start: int) -> list:
    """The ``since`` of each request to ``/api/items`` from the ``start``-th on (None: none)."""
    return [r["query"].get("since") for r in api.requests_to("/api/items")[start:]]


def _measure(i: int, **values) -> dict:
    return {"id": i, "name": f"m {i}", "updated_at": _ts(i), **values}


def test_json_numbers_reach_the_replica_as_the_api_wrote_them(measures_job, api):
    """Python's json reads a fraction as a double: a ``Decimal(30, 12)`` column got
    12345678901234.123456789012 cut to 12345678901234.123, a document's ``1.50`` became
    ``1.5`` and ``1e400`` the non-JSON ``Infinity``. Fractions are read exactly; each
    reaches its column as written, a float column gets the nearest double."""
    from decimal import Decimal

    from tests.support.api_server import Raw

    api.items.clear()
    api.items[1] = _measure(
        1,
        amount=Raw("12345678901234.123456789012"),
        x=Raw("0.1"),
        doc={"price": Raw("1.50"), "big": Raw("1e400"), "n": [Raw("2.0"), 9007199254740993]},
    )
    api.items[2] = _measure(2, amount=Raw("-0.000000000001"), x=3, ok=1)  # int into a float
    api.items[3] = _measure(3, amount=7, x=Raw("-2.5e-3"), ok=True)
    measures_job.sync()
    measures_job.pull()
    rows = _rows(measures_job, "SELECT id, amount, x, ok, doc FROM items ORDER BY id")
    assert rows == [
        (
            1,
            Decimal("12345678901234.123456789012"),
            0.1,
            None,
            '{"price":1.50,"big":1E+400,"n":[2.0,9007199254740993]}',
        ),
        (2, Decimal("-0.000000000001"), 3.0, True, None),
        (3, Decimal("7"), -0.0025, True, None),
    ]


def _refused_read(job, api, values: dict) -> str:
    """Sync once, then serve item 4 with ``values`` and check that the next sync is refused
    in one line that says nothing was published, and that the lake is unchanged; the line."""
    from destinations.lake import open_lake

    job.sync()
    before = open_lake(job.lake_url).list("api/items/")
    api.items[4] = _measure(4, **values)
    api.items[4]["updated_at"] = _ts(40)
    with pytest.raises(TerminalError) as err:
        job.sync()
    message = str(err.value)
    assert "nothing of the read is published" in message and "\n" not in message, message
    assert open_lake(job.lake_url).list("api/items/") == before
    return message


@pytest.mark.parametrize(
    "values, says",
    [
        ({"amount": "1.0000000000001"}, "field 'amount' value 1.0000000000001 at key {\"id\": 4} has more than 12 decimal places"),
        ({"amount": "1e20"}, "has more than 18 digits before the point"),
        ({"x": "1e400"}, "field 'x' value 1E+400 at key {\"id\": 4} is out of range for a double"),
        ({"x": "1e-400"}, "is too small for a double, it would be 0 (contract type double)"),
        ({"x": "9007199254740993"}, "has no exact double"),
        ({"ok": "2"}, "is a number other than 0 or 1"),
        ({"at": "1700000000"}, "is a number where the contract's column is a time"),
        ({"id_": "9223372036854775808"}, "is beyond a 64-bit integer"),
        ({"n": "-9223372036854775809"}, "is beyond a 64-bit integer (staging's BIGINT)"),
        ({"n": "1e19"}, "field 'n' value 10000000000000000000 at key {\"id\": 4} is beyond a 64-bit integer"),
        ({"amount": '"1.0000000000001"'}, "has more than 12 decimal places"),
        ({"name": "1e999"}, "field 'name' value 1E+999 at key {\"id\": 4} is out of range for a double, it would be infinity (no contract type: read as a double)"),
    ],
)
def test_a_json_number_its_column_cannot_hold_stops_the_read_naming_it(measures_job, api, values, says):
    """Each was published changed, with exit 0: rounded, infinity staged as NULL, zero,
    ``True`` for 2, an epoch read as microseconds. The read stops, one line naming the
    field, key and value, nothing uploaded; once the API's value is fixed the next run
    publishes."""
    from tests.support.api_server import Raw

    values = {k: v[1:-1] if v.startswith('"') else Raw(v) for k, v in values.items()}
    message = _refused_read(measures_job, api, values)
    assert message.startswith("job 'api' table 'items': field '") and says in message, message
    api.items[4] = _measure(4, x=1.5)
    api.items[4]["updated_at"] = _ts(41)
    measures_job.sync()
    measures_job.pull()
    assert _rows(measures_job, "SELECT x FROM items WHERE id = 4") == [(1.5,)]


@pytest.mark.parametrize(
    "values, says",
    [
        ({"name": "a\ud800b"}, "record {\"id\": 4}: field 'name' holds 'a\\ud800b', text with a lone UTF-16 surrogate"),
        ({"doc": {"p": ["ok", "\udc00"]}}, "record {\"id\": 4}: field 'doc.p[1]' holds '\\udc00'"),
        ({"doc": {"\udbff": 1}}, "record {\"id\": 4}: the field name '\\udbff' (in 'doc'), text"),
        ({"at": "0001-01-01T00:30:00+01:00"}, "record {\"id\": 4} field 'at' value '0001-01-01T00:30:00+01:00' is outside years 1-9999 in UTC"),
        ({"seen": "9999-12-31 23:30:00-01:00"}, "field 'seen' value '9999-12-31 23:30:00-01:00' is outside years 1-9999 in UTC"),
    ],
    ids=["surrogate", "nested surrogate", "surrogate name", "before year 1", "after 9999"],
)
def test_text_staging_cannot_keep_stops_the_read_naming_record_and_field(
    measures_job, api, values, says
):
    """A lone UTF-16 surrogate (JSON's ``"\\ud800"``, not a Unicode character) failed dlt's
    extract with "str is not valid UTF-8", and a time whose UTC instant is before year 1 or
    after 9999 failed its normalize with "date value out of range": both named no table or
    field. The read stops with one line naming record, field and value, nothing uploaded;
    once the API's value is fixed (an emoji, written as a surrogate pair, and the earliest
    time in UTC are kept) the next run publishes them exactly."""
    import datetime as dt

    message = _refused_read(measures_job, api, values)
    assert message.startswith("job 'api' table 'items': ") and says in message, message
    api.items[4] = _measure(4, name="a \U0001F600 b", at="0001-01-01T01:30:00+01:00")
    api.items[4]["updated_at"] = _ts(41)
    measures_job.sync()
    measures_job.pull()
    assert _rows(measures_job, 'SELECT name, "at" FROM items WHERE id = 4') == [
        ("a \U0001F600 b", dt.datetime(1, 1, 1, 0, 30, tzinfo=dt.timezone.utc))
    ]


@pytest.mark.parametrize("policy", ["include", "quarantine"])
def test_a_record_without_a_cursor_value_is_published_or_held_not_a_failed_run(
    measures_job, api, policy
):
    """A record whose cursor field is null or missing failed dlt's incremental step, so
    every run of the job failed (every table) and ``null_cursor`` was ignored. Under
    ``include`` it is published (and read again each run: the content hash keeps it from
    being published twice); under ``quarantine`` it is held back with a warning and
    published once it has a cursor value."""
    api.items.clear()
    for i in (1, 2, 3):
        api.items[i] = _measure(i, x=float(i))
    api.items[2]["updated_at"] = None
    del api.items[3]["updated_at"]
    measures_job.config.write_text(
        MEASURES_JOB.format(
            url=api.url, lake=measures_job.lake_url, job_extra="",
            table_extra=f'null_cursor = "{policy}"',
        )
    )
    out = measures_job.sync()
    measures_job.pull()
    got = _rows(measures_job, "SELECT id FROM items ORDER BY id")
    if policy == "include":
        assert got == [(1,), (2,), (3,)]
        again = measures_job.sync()  # read again, unchanged: nothing new published
        assert again["tables"]["items"].get("batch") is None, again
    else:
        assert got == [(1,)]
        from deltaferry.state import StateStore

        def open_checks() -> list[tuple]:
            with StateStore("api").connect(read_only=True) as con:
                return con.execute(
                    'SELECT "check", count(*) FROM quarantine WHERE resolved IS NULL GROUP BY 1'
                ).fetchall()

        assert open_checks() == [("cursor not null", 2)]
        assert "held back until the record has a cursor value" in str(out), out
        api.items[2]["updated_at"] = _ts(50)
        api.items[3]["updated_at"] = _ts(51)
        measures_job.sync()
        measures_job.pull()
        assert _rows(measures_job, "SELECT id FROM items ORDER BY id") == [(1,), (2,), (3,)]
        assert open_checks() == []


def test_a_held_record_given_an_old_cursor_is_found_by_a_whole_read(measures_job, api):
    """``null_cursor = "quarantine"`` with ``cursor_param``: a record held for a NULL cursor
    (sent on every run: this API's filter keeps nulls) that then gets a value older than the
    newest synced is not sent again (the API filters by ``since``). It was resolved as "the
    row has a cursor value now" though never staged (a fresh-user trial), then stayed held
    for good, exit 0. Its key is watched: the run it is missing from reads the table again
    whole, publishes it and resolves its record."""
    from deltaferry.state import StateStore

    def open_checks() -> list[tuple]:
        with StateStore("api").connect(read_only=True) as con:
            return con.execute(
                'SELECT pk, "check" FROM quarantine WHERE resolved IS NULL ORDER BY 1'
            ).fetchall()

    api.items.clear()
    for i in (1, 2, 3):
        api.items[i] = _measure(i, x=float(i))
    api.items[2]["updated_at"] = None
    measures_job.config.write_text(
        MEASURES_JOB.format(
            url=api.url, lake=measures_job.lake_url, job_extra="",
            table_extra='null_cursor = "quarantine"',
        )
    )
    measures_job.sync()
    assert open_checks() == [('{"id": 2}', "cursor not null")]
    from click.testing import CliRunner

    from deltaferry.cli import cli

    listed = CliRunner().invoke(
        cli, ["quarantine", "list", "api", "--config", str(measures_job.config)]
    )
    assert listed.exit_code == 0, listed.output
    assert "a whole read finds it with an older one" in " ".join(listed.output.split())
    measures_job.sync()  # still null: sent again, still held, no whole read
    assert open_checks() == [('{"id": 2}', "cursor not null")]
    assert all("since" in r["query"] for r in api.requests_to("/api/items")[1:])
    sent = len(api.requests_to("/api/items"))
    api.items[2]["updated_at"] = _ts(2)  # older than record 3's, the newest synced
    out = measures_job.sync()
    assert [r["query"].get("since") for r in api.requests_to("/api/items")[sent:]] == [
        _ts(3), "2000-01-01T00:00:00+00:00"  # asked as usual, then read again whole
    ]
    assert any('were not sent this run ({"id": 2})' in w for w in out["extracted"].warnings)
    assert out["tables"]["items"]["upserts"] == 1, out
    assert open_checks() == []
    measures_job.pull()
    assert _rows(measures_job, "SELECT id FROM items ORDER BY id") == [(1,), (2,), (3,)]
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"].get("batch") is None
    assert [r["query"].get("since") for r in api.requests_to("/api/items")[sent:]] == [_ts(3)]


def test_an_api_that_drops_null_cursors_is_found_out_and_read_whole_as_often_as_asked(
    measures_job, api
):
    """An API whose ``since`` filter drops null cursors (``updated_at >= since``) sends a
    null-cursor record only to a read without ``since``: the first. Given an old time
    later, it was never read again and the replica kept the null, exit 0, no word. The run
    it is first missing from reads the table whole, finds it still null and learns that the
    API drops nulls: every later run warns (one read each, nulls no longer watched) until
    ``full_read_every`` reads the table whole that often, which publishes the change."""
    import datetime as dt

    from deltaferry.config import job_home

    def write(table_extra: str = "") -> None:
        job = MEASURES_JOB.replace('initial_value = "2000-01-01T00:00:00+00:00"\n', "")
        measures_job.config.write_text(
            job.format(url=api.url, lake=measures_job.lake_url, job_extra="", table_extra=table_extra)
        )

    dropped = "does not send a record whose 'updated_at' is null when asked with 'since'"
    api.drops_nulls.add("/api/items")
    api.items.clear()
    for i in (1, 2, 3):
        api.items[i] = _measure(i, x=float(i))
    api.items[2]["updated_at"] = None
    write()
    measures_job.sync()  # no since yet: all three
    sent = len(api.requests_to("/api/items"))
    out = measures_job.sync()
    assert _asked(api, sent) == [_ts(3), None]  # record 2 not sent: read whole, found still null
    warned = " ".join(out["extracted"].warnings)
    assert dropped in warned and '1 at the last whole read: {"id": 2}' in warned, warned
    assert "full_read_every" in warned
    assert out["tables"]["items"].get("batch") is None, out
    sent = len(api.requests_to("/api/items"))
    out = measures_job.sync()
    assert _asked(api, sent) == [_ts(3)]  # known now: one read, and said again
    assert dropped in " ".join(out["extracted"].warnings)
    api.items[2].update(updated_at=_ts(2), name="dated")  # older than since: not sent
    assert measures_job.sync()["tables"]["items"].get("batch") is None  # the limit, warned

    write('full_read_every = "1h"')  # no whole read recorded: read whole at once, once
    sent = len(api.requests_to("/api/items"))
    out = measures_job.sync()
    assert _asked(api, sent) == [None]
    assert out["tables"]["items"]["upserts"] == 1, out
    assert not any(dropped in w for w in out["extracted"].warnings)
    from click.testing import CliRunner

    from deltaferry.cli import cli

    # the reason is in the operations log, which `deltaferry log` shows
    shown = CliRunner().invoke(
        cli, ["log", "api", "--outcome", "read-again", "--json", "--config", str(measures_job.config)]
    )
    assert shown.exit_code == 0, shown.output
    (logged,) = json.loads(shown.output)
    assert (logged["table"], logged["step"]) == ("items", "extract")
    assert "read whole (without 'since'): full_read_every = '1h' (none recorded before)" in (
        logged["detail"]
    )
    table = CliRunner().invoke(cli, ["log", "api", "--config", str(measures_job.config)])
    assert table.exit_code == 0, table.output
    lines = [line.split("\t") for line in table.output.splitlines()]
    assert lines[0] == ["time", "run", "table", "batch", "step", "outcome", "attempt", "ms", "detail"]
    assert {line[1] for line in lines[1:]} == {logged["run"]}  # the last run only, by default
    assert ["extract", "read-again"] in [line[4:6] for line in lines[1:]]
    typo = CliRunner().invoke(cli, ["log", "api", "--table", "itemz", "--config", str(measures_job.config)])
    assert typo.exit_code == 2 and "job 'api' has no table 'itemz' (tables: items)" in typo.output
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"].get("batch") is None
    assert _asked(api, sent) == [_ts(3)]  # within the hour: asked from the newest value again

    remembered = job_home("api") / "rest_cursor" / "items.json"
    stored = json.loads(remembered.read_text())
    hours_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    remembered.write_text(json.dumps({**stored, "full_read_at": hours_ago.isoformat()}))
    api.items[2].update(updated_at=_ts(1), name="dated again")
    sent = len(api.requests_to("/api/items"))
    out = measures_job.sync()
    assert _asked(api, sent) == [None]  # an hour has passed since the last whole read
    assert out["tables"]["items"]["upserts"] == 1, out
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, name FROM items ORDER BY id") == [
        (1, "m 1"), (2, "dated again"), (3, "m 3")
    ]


def test_a_new_null_record_is_found_by_the_due_whole_read_and_the_api_learned(measures_job, api):
    """With ``full_read_every`` from the start and an API that drops nulls: a record created
    later with a null cursor is not sent with ``since`` (nothing can tell) until the due
    whole read publishes it; the next run misses it, reads whole again, finds it still null
    and says so (a fresh-user trial saw only "changed or deleted", with no correction):
    from then on one read a run, no warning, the whole read every hour."""
    import datetime as dt

    from deltaferry.config import job_home

    api.drops_nulls.add("/api/items")
    api.items.clear()
    for i in (1, 2, 3):
        api.items[i] = _measure(i, x=float(i))
    job = MEASURES_JOB.replace('initial_value = "2000-01-01T00:00:00+00:00"\n', "")
    measures_job.config.write_text(
        job.format(
            url=api.url, lake=measures_job.lake_url, job_extra="",
            table_extra='full_read_every = "1h"',
        )
    )
    measures_job.sync()
    api.items[4] = _measure(4, updated_at=None)
    assert measures_job.sync()["tables"]["items"].get("batch") is None  # not sent: unseen
    remembered = job_home("api") / "rest_cursor" / "items.json"
    hours_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    remembered.write_text(
        json.dumps({**json.loads(remembered.read_text()), "full_read_at": hours_ago.isoformat()})
    )
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"]["upserts"] == 1  # the due whole read
    assert _asked(api, sent) == [None]
    sent = len(api.requests_to("/api/items"))
    out = measures_job.sync()
    assert _asked(api, sent) == [_ts(3), None]
    warned = " ".join(out["extracted"].warnings)
    assert "found 1 record(s) it was looking for still null: they were dropped, not changed" in (
        warned
    ), warned
    assert "the table's full_read_every = '1h' reads them" in warned
    sent = len(api.requests_to("/api/items"))
    out = measures_job.sync()
    assert _asked(api, sent) == [_ts(3)] and out["extracted"].warnings == []


def test_a_null_cursor_read_without_since_is_watched_when_the_api_keeps_nulls(measures_job, api):
    """The first read asks without ``since``; a null-cursor record it read is watched from
    then on, so given an old time before the next run it is found by a whole read (before,
    only nulls sent with a ``since`` were watched, and this one was never read again). An
    API that keeps nulls sends them with every ``since``: no whole read while they stay."""

    job = MEASURES_JOB.replace('initial_value = "2000-01-01T00:00:00+00:00"\n', "")
    measures_job.config.write_text(
        job.format(url=api.url, lake=measures_job.lake_url, job_extra="", table_extra="")
    )
    api.items.clear()
    for i in (1, 2, 3, 4):
        api.items[i] = _measure(i, x=float(i))
    api.items[2]["updated_at"] = None
    api.items[4]["updated_at"] = None
    measures_job.sync()  # no since: both nulls read
    api.items[2].update(updated_at=_ts(1), name="dated")  # older than the next since
    sent = len(api.requests_to("/api/items"))
    out = measures_job.sync()
    assert _asked(api, sent) == [_ts(3), None]  # record 2 not sent: read whole
    assert out["tables"]["items"]["upserts"] == 1, out
    assert not any("does not send a record whose" in w for w in out["extracted"].warnings)
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"].get("batch") is None
    assert _asked(api, sent) == [_ts(3)]  # record 4 still sent with since: nothing learned
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, name FROM items ORDER BY id") == [
        (1, "m 1"), (2, "dated"), (3, "m 3"), (4, "m 4")
    ]


def test_a_cursor_inside_a_document_asks_the_api_from_its_newest_value(measures_job, api):
    """``cursor = "$.meta.updated"`` (a field of a nested object) was given to dlt quoted, as
    one field of that name, which no record has: dlt never found a value and every run
    asked the API from ``initial_value``, a whole read each run, no word. The path is
    followed into the record (documents reach dlt's incremental step as objects): the next
    run asks from the newest value, a change is published, the document stays one JSON
    column; a path that does not parse is refused with the jobs file."""

    job = MEASURES_JOB.replace('cursor = "updated_at"', 'cursor = "$.meta.updated"')
    measures_job.config.write_text(
        job.format(url=api.url, lake=measures_job.lake_url, job_extra="", table_extra="")
    )
    api.items.clear()
    for i in (1, 2, 3):  # the API filters on its own time; the record carries it in meta too
        api.items[i] = _measure(i, meta={"updated": _ts(i), "by": "x"})
    measures_job.sync()
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"].get("batch") is None
    assert _asked(api, sent) == [_ts(3)]
    api.items[2].update(updated_at=_ts(5), name="changed", meta={"updated": _ts(5), "by": "y"})
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"]["upserts"] == 1
    assert _asked(api, sent) == [_ts(3)]
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"].get("batch") is None
    assert _asked(api, sent) == [_ts(5)]
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, name, meta FROM items ORDER BY id") == [
        (1, "m 1", f'{{"updated":"{_ts(1)}","by":"x"}}'),
        (2, "changed", f'{{"updated":"{_ts(5)}","by":"y"}}'),
        (3, "m 3", f'{{"updated":"{_ts(3)}","by":"x"}}'),
    ]
    from deltaferry.config import load_jobs
    from deltaferry.errors import ConfigError

    measures_job.config.write_text(
        MEASURES_JOB.replace('cursor = "updated_at"', 'cursor = "$.meta..["').format(
            url=api.url, lake=measures_job.lake_url, job_extra="", table_extra=""
        )
    )
    with pytest.raises(ConfigError) as err:
        load_jobs(measures_job.config)
    assert "job 'api' table 'items': cursor '$.meta..[' is not a JSONPath into the record" in str(
        err.value
    )


def test_a_record_held_for_a_null_cursor_inside_a_document_is_released_once_published(
    measures_job, api
):
    """``cursor = "$.meta.updated"`` under ``null_cursor = "quarantine"``: a record whose
    ``meta.updated`` is null is held; once it has a value it is published, but its
    quarantine record stayed open for good (the settle looked for a staged column named
    ``$.meta.updated``; the value lives in the staged ``meta`` document). It is resolved in
    the run that publishes the record; a record still null stays held."""
    from deltaferry.state import StateStore

    def open_checks() -> list[tuple]:
        with StateStore("api").connect(read_only=True) as con:
            return con.execute(
                'SELECT pk, "check" FROM quarantine WHERE resolved IS NULL ORDER BY 1'
            ).fetchall()

    job = MEASURES_JOB.replace('cursor = "updated_at"', 'cursor = "$.meta.updated"')
    measures_job.config.write_text(
        job.format(
            url=api.url, lake=measures_job.lake_url, job_extra="",
            table_extra='null_cursor = "quarantine"',
        )
    )
    api.items.clear()
    for i in (1, 2, 3, 4):
        api.items[i] = _measure(i, meta={"updated": _ts(i), "by": "x"})
    for i in (2, 4):  # no time yet, in the document nor in the API's own field
        api.items[i].update(updated_at=None, meta={"updated": None, "by": "x"})
    measures_job.sync()
    assert open_checks() == [('{"id": 2}', "cursor not null"), ('{"id": 4}', "cursor not null")]
    api.items[2].update(updated_at=_ts(50), meta={"updated": _ts(50), "by": "y"})
    measures_job.sync()
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, meta FROM items ORDER BY id") == [
        (1, f'{{"updated":"{_ts(1)}","by":"x"}}'),
        (2, f'{{"updated":"{_ts(50)}","by":"y"}}'),
        (3, f'{{"updated":"{_ts(3)}","by":"x"}}'),
    ]
    assert open_checks() == [('{"id": 4}', "cursor not null")]


@pytest.mark.parametrize(
    "path, why",
    [
        ("$.meta..updated", "'..' matches at any depth"),
        ("$.meta.*", "'*' matches every field or item"),
        ("$.versions[*].at", "'*' matches every field or item"),
        ("$.versions[0:2]", "a slice matches several items"),
        ("$.meta.updated,created", "several fields updated, created"),
        ("$.versions[0,1].at", "several list positions"),
        ("$.versions[?(@.at > 1)].at", "a filter"),
        ("$", "'$' is the whole record"),
    ],
)
def test_a_cursor_path_matching_several_values_is_refused(tmp_path, path, why):
    """A cursor path that can match more than one value (``$.meta..updated`` finds every
    ``updated`` below ``meta``) was accepted and the first match found became the record's
    cursor: which value that was depended on the document's order, and a newer value in
    another match was never the cursor, exit 0. Such a path is refused when the jobs file is
    read; a path of single fields and list positions is not."""
    from deltaferry.config import load_jobs
    from deltaferry.errors import ConfigError

    config = tmp_path / "jobs.toml"

    def jobs(cursor: str) -> str:
        return MEASURES_JOB.replace('cursor = "updated_at"', f"cursor = {json.dumps(cursor)}").format(
            url="http://127.0.0.1:9", lake="file:///tmp/lake", job_extra="", table_extra=""
        )

    config.write_text(jobs(path))
    with pytest.raises(ConfigError) as err:
        load_jobs(config)
    assert f"job 'api' table 'items': cursor '{path}' can match more than one value ({why})" in str(
        err.value
    ), str(err.value)
    for one in ("$.meta.updated", "$.versions[0].at", "$['meta']['updated']", "$.a[-1].b"):
        config.write_text(jobs(one))
        assert load_jobs(config)["api"].tables[0].cursor == one
    # the field a path starts with is staged as a column: named as the column it becomes
    config.write_text(jobs('$["me\\"ta"].updated'))
    with pytest.raises(ConfigError) as err:
        load_jobs(config)
    assert """its first field 'me"ta' has '"', which dlt's staging replaces""" in str(err.value)


def test_a_cursor_value_of_another_kind_stops_the_read_instead_of_jamming_the_job(
    measures_job, api
):
    """A cursor value that is neither a time nor a number among times (text such as
    "yesterday", a flag, an object) ranked newest, became dlt's stored value and was sent as
    ``since`` on every later run: the API refused it (or sent nothing newer) and fixing the
    record did not help, since a stored cursor value never goes down: every run failed
    until a reset (a fresh-user trial). The read stops naming record and value, nothing of
    it published; once the value is fixed the next run publishes; and a cursor path that
    no record has is warned about instead of a silent whole read every run."""
    job = MEASURES_JOB.replace('cursor = "updated_at"', 'cursor = "$.meta.updated"')

    def write(text: str) -> None:
        measures_job.config.write_text(
            text.format(url=api.url, lake=measures_job.lake_url, job_extra="", table_extra="")
        )

    write(job)
    api.items.clear()
    for i in (1, 2, 3):  # the API filters on its own updated_at, the job's cursor is meta's
        api.items[i] = _measure(i, meta={"updated": _ts(i)})
    measures_job.sync()
    for bad in ("yesterday", True, {"t": _ts(5)}):
        api.items[2].update(updated_at=_ts(5), name="changed", meta={"updated": bad})
        with pytest.raises(DeltaferryError) as err:  # the table stopped: the run fails
            measures_job.sync()
        message = " ".join(str(err.value).split())
        assert "record {\"id\": 2} has '$.meta.updated' =" in message, message
        assert "neither a time nor a number, where the table's cursor values are times" in message
    sent = len(api.requests_to("/api/items"))
    api.items[2]["meta"] = {"updated": _ts(5)}
    assert measures_job.sync()["tables"]["items"]["upserts"] == 1
    assert _asked(api, sent) == [_ts(3)]  # the refused reads left dlt's value as it was
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"].get("batch") is None
    assert _asked(api, sent) == [_ts(5)]

    # a nested field written without "$." names a top-level field no record has: warned
    write(MEASURES_JOB.replace('cursor = "updated_at"', 'cursor = "meta.updated"'))
    out = measures_job.sync()
    warned = " ".join(out["extracted"].warnings)
    assert "none of the 3 record(s) read has a value of the cursor 'meta.updated'" in warned, (
        warned
    )
    assert "written as a JSONPath: $.meta.updated" in warned


def test_a_number_cursor_after_now_is_not_sent_as_since(measures_job, api):
    """A number cursor (Unix seconds, as many APIs write ``updated_at``) with a typo,
    ``8000000000`` (the year 2223), became dlt's stored value: every later run asked the API
    from it, the API sent nothing newer, and later changes were missed, exit 0 (only time
    cursors were compared with the clock). A number is read as a Unix time by its size (or
    the table's ``cursor_unit``): the next run asks from the newest value not after now, a
    later change is published, the fixed record too, and the run that read it warns."""
    now = int(time.time())
    job = MEASURES_JOB.replace(
        'initial_value = "2000-01-01T00:00:00+00:00"', "initial_value = 946684800"
    )
    measures_job.config.write_text(
        job.format(url=api.url, lake=measures_job.lake_url, job_extra="", table_extra="")
    )
    api.items.clear()
    for i in (1, 2, 3):
        api.items[i] = _measure(i, updated_at=now - 3000 + i)
    api.items[3]["updated_at"] = 8_000_000_000  # a digit too many
    out = measures_job.sync()
    warned = " ".join(out["extracted"].warnings)
    assert "1 record(s) have a cursor ('updated_at') value after now (newest 8000000000, " \
        "read as Unix time in s by its size: 2223-" in warned, warned
    assert 'set the table\'s cursor_unit = "number"' in warned
    sent = len(api.requests_to("/api/items"))
    api.items[2].update(updated_at=now - 100, name="changed")
    assert measures_job.sync()["tables"]["items"]["upserts"] == 1
    assert _asked(api, sent) == [str(now - 3000 + 2)]  # not 8000000000
    api.items[3].update(updated_at=now - 50, name="fixed")
    assert measures_job.sync()["tables"]["items"]["upserts"] == 1
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, name, updated_at FROM items ORDER BY id") == [
        (1, "m 1", now - 2999), (2, "changed", now - 100), (3, "fixed", now - 50),
    ]
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"].get("batch") is None
    assert _asked(api, sent) == [str(now - 50)]
    # a value of another size later (milliseconds in a table of seconds) is read in the
    # unit the table's first values had: after now, not the since of later runs (by its own
    # size it was a time of now, and every later change was missed, no word)
    api.items[1].update(updated_at=now * 1000, name="ms typo")
    typo = measures_job.sync()
    warned = " ".join(typo["extracted"].warnings)
    assert f"(newest {now * 1000}, read as Unix time in s by the size of the table's first " \
        "values: after 9999)" in warned, warned
    sent = len(api.requests_to("/api/items"))
    api.items[2].update(updated_at=now - 10, name="after the ms typo")
    assert measures_job.sync()["tables"]["items"]["upserts"] == 1
    assert _asked(api, sent) == [str(now - 50)]
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, name FROM items ORDER BY id") == [
        (1, "ms typo"), (2, "after the ms typo"), (3, "fixed"),
    ]


def test_which_numbers_are_unix_times(home):
    """A number cursor value is a Unix time by its size (seconds from 1e9, milliseconds
    from 1e12 to 1e15: each from 2001-09-09) or in the unit ``cursor_unit`` names; another
    number (an id, a snowflake id of 1.8e18), or any under ``cursor_unit = "number"``, is
    never after now; one past year 9999 is after any now."""
    import datetime as dt
    from types import SimpleNamespace

    from sources.rest_api.future import _ahead, instant
    from sources.rest_api.reads import cursor_rank

    utc = dt.timezone.utc

    def at(value, unit=None):
        options = {"cursor_param": "since", **({"cursor_unit": unit} if unit else {})}
        return instant(cursor_rank(value), SimpleNamespace(options=options))

    assert at(1_000_000_000) == dt.datetime(2001, 9, 9, 1, 46, 40, tzinfo=utc)
    assert at(1_000_000_000_000) == at(10**9) and at(10**15 - 1).year == 9999  # past 9999
    assert at(10**15) is None and at(1_800_000_000_000_000_000) is None  # ids
    assert at(1_800_000_000_000_000_000, "ns").year == 2027
    assert at(1_800_000_000_000_000, "us").year == 2027
    assert at(8_000_000_000).year == 2223 and at("8000000000").year == 2223
    assert at(17_330_000_000_000).year == 2519  # milliseconds with a digit too many
    assert at(999_999_999) is None and at(42) is None and at(-5) is None
    assert at(8_000_000_000, "number") is None
    assert at(8_000_000_000, "ms") == dt.datetime(1970, 4, 3, 14, 13, 20, tzinfo=utc)
    assert at(42, "s") == dt.datetime(1970, 1, 1, 0, 0, 42, tzinfo=utc)
    assert at(10**30) is None and at(10**30, "s").year == 9999
    assert at(_ts(3)) == dt.datetime.fromisoformat(_ts(3))
    t = SimpleNamespace(options={"cursor_param": "since"})
    now = dt.datetime(2026, 12, 5, tzinfo=utc)
    assert _ahead(cursor_rank(8_000_000_000), now, t)
    assert not _ahead(cursor_rank(1_764_000_000), now, t)  # 2025
    assert not _ahead(cursor_rank(8_000_000_000), now, SimpleNamespace(
        options={"cursor_param": "since", "cursor_unit": "number"}))
    # a unit learned from the table's values: a number of another size read in it
    assert _ahead(cursor_rank(1_796_400_000_000), now, t, "s")  # by its size: ms of 2026
    assert not _ahead(cursor_rank(1_796_400_000_000), now, t)
    assert _ahead(cursor_rank(1_796_400_000_000_000), now, t, "ms")
    assert not _ahead(cursor_rank(5_000_000_000), now, t, "number")
    # cursor_unit wins over a learned unit
    assert not _ahead(cursor_rank(1_796_400_000_000), now, SimpleNamespace(
        options={"cursor_param": "since", "cursor_unit": "ms"}), "s")


def test_a_remembered_start_after_now_in_the_tables_unit_is_not_asked_from(home):
    """A job stuck on a remembered value that, read in the table's unit as it is now (a
    cursor_unit set since, a unit learned since), is after now: the next run asks from
    initial_value instead (a whole read), not from it (a fresh-user trial: setting
    cursor_unit did not get the job out; only a reset did). Which unit the first read's
    numbers teach: the most common size, the smaller unit on a tie."""
    import datetime as dt
    import json as json_
    from types import SimpleNamespace

    from deltaferry.config import job_home
    from sources.rest_api.future import FutureCursors, _start, instant
    from sources.rest_api.reads import cursor_rank

    job = SimpleNamespace(name="j", timezone="UTC")
    now = dt.datetime(2026, 12, 5, tzinfo=dt.timezone.utc)
    (job_home("j") / "rest_cursor").mkdir(parents=True, exist_ok=True)
    (job_home("j") / "rest_cursor" / "t.json").write_text(json_.dumps({"newest": 1796400000000}))

    def table(**options):
        return SimpleNamespace(
            name="t", cursor="at", options={"cursor_param": "since", "initial_value": 1, **options}
        )

    assert _start(job, table(), now) == 1796400000000  # by its size: milliseconds of now
    assert _start(job, table(cursor_unit="s"), now) == 1
    (job_home("j") / "rest_cursor" / "t.json").write_text(
        json_.dumps({"newest": 1796400000000, "unit": "s"})
    )
    assert _start(job, table(), now) == 1
    assert _start(job, table(cursor_unit="ms"), now) == 1796400000000
    (job_home("j") / "rest_cursor" / "t.json").unlink()
    for values, unit in (
        ([1_700_000_000, 1_700_000_001, 1_700_000_000_000], "s"),
        ([1_700_000_000_000, 1_700_000_000_001, 1_700_000_000], "ms"),
        ([1, 2, 1_700_000_000], "number"),
        ([1_700_000_000, 1_700_000_000_000], "s"),
        ([_ts(1)], None),
    ):
        seen = FutureCursors(job, table(), now)
        seen([{"at": v} for v in values])
        assert seen.unit() == unit, values
    seen = FutureCursors(job, table(cursor_unit="ms"), now)
    seen([{"at": 1_700_000_000}])
    assert seen.unit() is None  # cursor_unit says: nothing to learn
    # the first read judges its numbers in the unit it learns: a millisecond time among
    # seconds is after now there too (by its own size it was a time of now, the newest)
    seen = FutureCursors(job, table(), now)
    seen([{"at": 1_700_000_000}, {"at": 1_700_000_100}, {"at": 1_796_400_000_000}])
    assert (seen.judged(), seen.newest, seen.ahead) == ("s", 1_700_000_100, 1)
    # a read that asked from a stored value teaches nothing: a job stuck on a millisecond
    # value among seconds is sent only that value's like
    seen = FutureCursors(job, table(), now)
    seen([{"at": 1_796_400_000_000}])
    assert seen.unit(from_start=False) is None and seen.unit() == "ms"
    assert instant(cursor_rank(float("nan")), table()) is None


def test_cursor_unit_needs_cursor_param(tmp_path):
    from deltaferry.config import load_jobs
    from deltaferry.errors import ConfigError

    config = tmp_path / "jobs.toml"
    for extra, wrong in (('cursor_unit = "ms"', None), ('cursor_unit = "days"', "cursor_unit")):
        config.write_text(
            MEASURES_JOB.format(
                url="http://127.0.0.1:9", lake="file:///tmp/lake", job_extra="",
                table_extra=extra,
            )
        )
        if wrong is None:
            assert load_jobs(config)["api"].tables[0].options["cursor_unit"] == "ms"
        else:
            with pytest.raises(ConfigError) as err:
                load_jobs(config)
            assert "cursor_unit must be one of" in str(err.value), str(err.value)
    config.write_text(
        MEASURES_JOB.replace('cursor_param = "since"\n', "").format(
            url="http://127.0.0.1:9", lake="file:///tmp/lake", job_extra="",
            table_extra='cursor_unit = "ms"',
        )
    )
    with pytest.raises(ConfigError) as err:
        load_jobs(config)
    assert "cursor_unit needs cursor_param" in str(err.value), str(err.value)


def test_a_job_jammed_by_a_stored_cursor_of_another_kind_is_told_to_reset(home):
    """The other side of the refusal above: a job whose dlt state already holds such a value
    (stored before the check existed) is stopped at the first time or number it reads,
    naming ``reset``, instead of asking the API from the text on every run. Either kind of
    read order and value kind gets the same answer; text among text is not refused."""
    from types import SimpleNamespace

    from sources.rest_api.future import Resent
    from sources.rest_api.reads import cursor_rank

    job = SimpleNamespace(name="j", timezone="UTC")
    t = SimpleNamespace(name="t", cursor="at", options={"cursor_param": "since"})
    for value in (_ts(4), 17):
        jammed = Resent(job, t, since=True, last="yesterday")
        jammed('{"id": 1}', cursor_rank(None))  # a null cursor says nothing of the kind
        with pytest.raises(TerminalError) as err:
            jammed('{"id": 2}', cursor_rank(value))
        message = str(err.value)
        assert message.startswith("job 'j' table 't': the stored cursor value, sent as 'since'")
        assert "record {\"id\": 2} has 'at' = " in message and "`deltaferry reset` the table" in message
    texts = Resent(job, t, since=True, last="v1")
    texts('{"id": 1}', cursor_rank("v2"))  # a table of text cursors goes on
    assert texts.kinds == {3: ('{"id": 1}', "v2")}


def test_a_record_with_a_cursor_in_the_future_hides_no_later_change(measures_job, api):
    """With ``cursor_param``, one record with a typo year became dlt's stored cursor value,
    the API was asked ``since=2240-...`` on every later run and sent nothing newer: every
    later change missed, exit 0, until a reset (the SQL window had the same fault). The API
    is asked from the newest value not after now (as the API wrote it); the record ahead
    comes again each run, published only when it changed, and is warned about when read."""
    api.items.clear()
    for i in (1, 2, 3):
        api.items[i] = _measure(i, x=float(i))
    measures_job.sync()
    api.items[2].update(updated_at="2240-01-02T00:00:00+00:00", name="typo year")
    typo = measures_job.sync()  # published; dlt now holds 2240 as its cursor value
    assert any("value after now (newest '2240-01-02T00:00:00+00:00'); the next run asks the"
               f" API from the newest value not after now ('{_ts(3)}')" in w
               for w in typo["extracted"].warnings), typo["extracted"].warnings  # fmt: skip
    again = measures_job.sync()
    assert again["tables"]["items"].get("batch") is None, again  # sent again, unchanged
    assert [r["query"].get("since") for r in api.requests_to("/api/items")][-1] == _ts(3)
    # said on every run it is sent, not only on the run that staged it (as SQL tables do)
    assert any("value after now (newest '2240-01-02T00:00:00+00:00')" in w
               for w in again["extracted"].warnings), again["extracted"].warnings  # fmt: skip
    api.items[1].update(updated_at=_ts(40), name="later change")
    api.items[4] = _measure(4, x=4.0)
    api.items[4]["updated_at"] = _ts(41)
    out = measures_job.sync()["tables"]["items"]
    assert out["upserts"] == 2, out
    measures_job.pull()
    got = _rows(measures_job, "SELECT id, name FROM items ORDER BY id")
    assert got == [(i, api.items[i]["name"]) for i in sorted(api.items)]
    # after a reset, a whole read of unchanged records (the typo among them) learns where to
    # ask from: it looked only at staged (changed) records, and every later run read the
    # whole table, no word, until some record changed (a fresh-user trial)
    from click.testing import CliRunner

    from deltaferry.cli import cli

    reset = CliRunner().invoke(
        cli, ["reset", "api", "--table", "items", "--reason", "test",
              "--config", str(measures_job.config)],
    )  # fmt: skip
    assert reset.exit_code == 0, reset.output
    whole = measures_job.sync()
    assert whole["tables"]["items"].get("batch") is None
    assert any("value after now" in w for w in whole["extracted"].warnings), whole
    sent = len(api.requests_to("/api/items"))
    measures_job.sync()
    assert _asked(api, sent) == [_ts(41)]


def test_a_future_cursor_fixed_to_an_older_time_is_found_by_a_whole_read(measures_job, api):
    """A record with a typo year is sent on every run (its cursor is after every ``since``);
    fixed to its real, older time it was never sent again by an API that filters on
    ``cursor_param``: the replica kept the typo for good, exit 0. The run that misses it
    reads the table again whole (``initial_value`` as ``since``) and publishes the fix; a
    deleted record is looked for once, not on every run."""
    api.items.clear()
    for i in (1, 2, 3, 4):
        api.items[i] = _measure(i, x=float(i))
    measures_job.sync()
    api.items[2].update(updated_at="2240-01-02T00:00:00+00:00", name="typo year")
    api.items[4].update(updated_at="2231-05-06T07:08:09Z", name="another typo")
    measures_job.sync()
    measures_job.sync()
    sent = len(api.requests_to("/api/items"))
    api.items[2].update(updated_at=_ts(2), name="fixed")  # older than since
    del api.items[4]  # gone: looked for once
    out = measures_job.sync()
    assert [r["query"].get("since") for r in api.requests_to("/api/items")[sent:]] == [
        _ts(4), "2000-01-01T00:00:00+00:00"
    ]
    warned = " ".join(out["extracted"].warnings)
    assert '2 record(s) the API sent on every run' in warned and '{"id": 2}, {"id": 4}' in warned
    assert out["tables"]["items"]["upserts"] == 1, out
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, name FROM items ORDER BY id") == [
        (1, "m 1"), (2, "fixed"), (3, "m 3"), (4, "another typo")  # no delete of a REST record
    ]
    sent = len(api.requests_to("/api/items"))
    assert measures_job.sync()["tables"]["items"].get("batch") is None
    assert [r["query"].get("since") for r in api.requests_to("/api/items")[sent:]] == [_ts(4)]
    # a reset forgets what the source remembered with dlt's state: the next run reads all
    from click.testing import CliRunner

    from deltaferry.cli import cli
    from deltaferry.config import job_home

    remembered = job_home("api") / "rest_cursor" / "items.json"
    assert remembered.exists()
    reset = CliRunner().invoke(
        cli, ["reset", "api", "--table", "items", "--reason", "test",
              "--config", str(measures_job.config)],
    )
    assert reset.exit_code == 0, reset.output
    assert not remembered.exists()


def test_without_cursor_param_a_late_record_older_than_the_last_cursor_is_published(
    measures_job, api
):
    """Without ``cursor_param`` every run reads every page, but dlt's incremental step
    dropped each record whose cursor was older than the newest one seen: a record added
    late with a backdated time (or updated while keeping its time) never reached the
    lake, exit 0. Only ``initial_value`` is a floor."""
    job = MEASURES_JOB.replace('cursor_param = "since"\n', "").replace(
        'initial_value = "2000-01-01T00:00:00+00:00"', 'initial_value = "2026-11-01T10:00:02+00:00"'
    )
    measures_job.config.write_text(
        job.format(url=api.url, lake=measures_job.lake_url, job_extra="", table_extra="")
    )
    api.items.clear()
    for i in (1, 2, 3, 9):
        api.items[i] = _measure(i, x=float(i))
    measures_job.sync()
    measures_job.pull()
    assert _rows(measures_job, "SELECT id FROM items ORDER BY id") == [(2,), (3,), (9,)]
    api.items[4] = _measure(4, x=4.0)  # its time (second 4) is older than item 9's
    api.items[3]["x"] = 30.0  # changed, its time kept
    measures_job.sync()
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, x FROM items ORDER BY id") == [
        (2, 2.0), (3, 30.0), (4, 4.0), (9, 9.0)
    ]
    assert all("since" not in r["query"] for r in api.requests_to("/api/items"))


def test_an_answer_without_the_data_selectors_field_stops_the_read(measures_job, api, monkeypatch):
    """An API that renamed its envelope (``{"data": [...]}`` to ``{"items": [...]}``) was
    read by dlt as empty pages: every run published nothing, exit 0, while the source
    changed. The read stops naming the page, the selector and the fields the answer has."""
    from tests.support.api_server import ApiServer

    measures_job.sync()
    send = ApiServer._send

    def renamed(h, status, body, headers=None):
        if isinstance(body, dict) and "data" in body:
            body = {"items": body.pop("data"), **body}
        return send(h, status, body, headers)

    monkeypatch.setattr(ApiServer, "_send", staticmethod(renamed))
    with pytest.raises(TerminalError) as err:
        measures_job.sync()
    message = str(err.value)
    assert message.startswith("job 'api' table 'items': page 1 (http://"), message
    assert "has no field 'data' of the table's data_selector 'data'" in message, message
    assert "(the answer there has 'items', 'next')" in message and "\n" not in message, message


@pytest.mark.parametrize(
    "data, shown",
    [("maintenance", '"maintenance"'), ([1, 2], "1"), ([{"id": 9}, None], "null"), (7, "7")],
)
def test_records_that_are_not_objects_stop_the_read_naming_the_value(
    measures_job, api, monkeypatch, data, shown
):
    """An answer whose ``data`` holds a notice (``"maintenance"``) or a list of non-objects
    failed inside dlt with a bare ``'str' object has no attribute 'items'``: the read stops
    with one line naming page, selector and value; the next run, answered properly, goes on."""
    from tests.support.api_server import ApiServer

    measures_job.sync()
    send = ApiServer._send

    def odd(h, status, body, headers=None):
        if isinstance(body, dict) and "data" in body:
            body = {**body, "data": data, "next": None}
        return send(h, status, body, headers)

    monkeypatch.setattr(ApiServer, "_send", staticmethod(odd))
    with pytest.raises(TerminalError) as err:
        measures_job.sync()
    message = str(err.value)
    assert message.startswith("job 'api' table 'items': page 1 (http://"), message
    assert f"the table's data_selector 'data' holds {shown} where records (JSON objects) " \
        "were expected" in message and "\n" not in message, message
    monkeypatch.setattr(ApiServer, "_send", staticmethod(send))
    api.items[1]["updated_at"] = _ts(50)
    assert measures_job.sync()["tables"]["items"]["rows"] == 1


def test_a_change_beyond_a_doubles_digits_is_a_change(measures_job, api):
    """A record's content hash took a decimal as its double: 1234567890123456.78 to .79
    (or a document's 0.1000000000000000000001 to ...2) hashed the same, so the change was
    "no change" for good when the cursor stayed (a fresh-user trial)."""
    from decimal import Decimal

    from tests.support.api_server import Raw

    api.items.clear()
    # item 1 holds the newest cursor value: read again at the boundary (closed range)
    api.items[1] = _measure(1, amount=Raw("123456789012345678.78"), doc={"p": Raw("0.1000000000000000000001")})
    api.items[1]["updated_at"] = _ts(9)
    api.items[2] = _measure(2, amount=Raw("1.5"), x=Raw("0.1"))
    measures_job.sync()
    api.items[1] = _measure(1, amount=Raw("123456789012345678.79"), doc={"p": Raw("0.1000000000000000000002")})
    api.items[1]["updated_at"] = _ts(9)  # the same cursor value
    out = measures_job.sync()
    assert out["tables"]["items"].get("rows") == 1, out  # item 2 unchanged: not published again
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, amount, doc FROM items ORDER BY id") == [
        (1, Decimal("123456789012345678.79"), '{"p":0.1000000000000000000002}'),
        (2, Decimal("1.5"), None),
    ]


def test_a_decimal_column_staged_before_keeps_its_staged_type_and_the_run_goes_on(
    measures_job, api
):
    """Upgrade path: a contract Decimal column already staged as DOUBLE (an older
    deltaferry, or a contract that did not type it) keeps DOUBLE and the run goes on (no
    failure, no variant column); the values go in as doubles until ``reset``, as the
    README says. The typed contract comes as the next version of a chain that starts with
    the published one: naming another contract at the published version is refused (every
    reader would stop at one of the two)."""
    from deltaferry.config import load_job
    from deltaferry.errors import ContractViolation
    from sources.staging import staged_types, staging_path
    from tests.support.api_server import Raw

    def write(contract: str) -> None:
        text = MEASURES_JOB.replace("tests.support.contracts_api:Measures", contract)
        measures_job.config.write_text(
            text.format(url=api.url, lake=measures_job.lake_url, job_extra='drift = "evolve"', table_extra="")
        )

    api.items.clear()
    api.items[1] = _measure(1, amount=Raw("1.5"))
    write("tests.support.contracts_files:Loose")
    measures_job.sync()
    api.items[2] = _measure(2, amount=Raw("2.125"))
    api.items[2]["updated_at"] = _ts(9)
    write("tests.support.contracts_api:Measures")
    with pytest.raises(ContractViolation) as e:
        measures_job.sync()
    assert "names contract tests.support.contracts_api:Measures, whose v1 is not the contract tests.support.contracts_files:Loose v1 batch 1 was published at" in str(e.value)
    assert "Chain(Loose, New) with New.__version__ = 2" in str(e.value)
    write("tests.support.contracts_api:LooseThenMeasures")
    assert measures_job.sync()["tables"]["items"]["rows"] == 1
    measures_job.pull()  # a reader of the chain takes batch 1 at v1 and batch 2 at v2
    assert _rows(measures_job, "SELECT id, amount FROM items ORDER BY id") == [(1, 1.5), (2, 2.125)]
    job = load_job("api", measures_job.config)
    t = next(t for t in job.tables if t.name == "items")
    assert staged_types(t, staging_path("api"), None)["amount"] == "DOUBLE"


@pytest.mark.parametrize("when", ["staged before", "in the same run"])
def test_a_field_differing_only_in_case_from_another_is_refused_and_the_fixed_api_syncs(
    api_job, api, when
):
    """A record whose field differs only in case from a column staged before (or from a
    field of an earlier record of the same run) is refused with one line naming both:
    staging and the replica (DuckDB) do not tell names apart by case. dlt failed that load
    on every later run, even once the API was fixed (its package stayed pending), until
    the job was reset. Once the API sends the field as before, the record is published."""
    from deltaferry.errors import TableReadError
    from sources.pipeline import pipeline_for

    if when == "staged before":
        api_job.sync()
    api.tickets[11] = {
        "id": 11, "Title": "new", "status": "pending", "tags": [], "meta": {},
        "updated_at": _ts(31),
    }
    for _ in range(2):  # the same line every run, nothing left pending
        with pytest.raises(TableReadError) as e:  # the job's other tables go on
            api_job.sync()
        assert str(e.value) == (
            "job 'api' table 'tickets': source column 'Title' differs only in case from the "
            "table's column 'title' (staged, or read earlier in this run), and staging and the "
            "replica (DuckDB) do not tell names apart by case; name it 'title' at the source "
            "again, or stage the table anew under the new name (deltaferry reset api --table "
            "tickets --reason 'Title renamed'), after which a contract that spells it "
            "otherwise holds its rows back"
        )
        pipeline, _ = pipeline_for(api_job.job())
        assert not pipeline.has_pending_data
    api.tickets[11]["title"] = api.tickets[11].pop("Title")
    api.tickets[11]["updated_at"] = _ts(32)
    out = api_job.sync()
    assert out["tables"]["tickets"]["rows"] == (1 if when == "staged before" else 11)
    _replica_equals(api_job, api)


def test_a_table_whose_read_is_refused_stops_alone_and_the_others_are_published(api_job, api, monkeypatch):
    """One endpoint answering with something that is not records stops that table's read
    only: the job's other tables are published in the same run, which fails naming the
    table (it stopped every table of the job); the table goes on once answered properly."""
    from deltaferry.errors import TableReadError
    from tests.support.api_server import ApiServer

    api_job.sync()
    title = api.tickets[3]["title"]
    send = ApiServer._send

    def notice(h, status, body, headers=None):
        if isinstance(body, dict) and "data" in body:  # tickets only: events is a bare list
            body = {"data": "maintenance", "next": None}
        return send(h, status, body, headers)

    monkeypatch.setattr(ApiServer, "_send", staticmethod(notice))
    api.events[8] = {"id": 8, "kind": "view", "updated_at": _ts(40)}
    api.users[2]["name"] = "user two"
    api.tickets[3].update(title="ticket 3 edited", updated_at=_ts(30))
    with pytest.raises(TableReadError) as err:
        api_job.sync()
    assert err.value.table == "tickets" and str(err.value).startswith(
        "job 'api' table 'tickets': page 1 ("
    ), str(err.value)
    api_job.pull()
    assert (8, "view") in _rows(api_job, "SELECT id, kind FROM events")
    assert (2, "user two") in _rows(api_job, "SELECT id, name FROM users")
    assert _rows(api_job, "SELECT title FROM tickets WHERE id = 3") == [(title,)]
    monkeypatch.setattr(ApiServer, "_send", staticmethod(send))
    out = api_job.sync()
    assert {t: s.get("rows", 0) for t, s in out["tables"].items()} == {
        "tickets": 1, "events": 0, "users": 0
    }
    _replica_equals(api_job, api)


def test_a_field_renamed_in_case_and_reset_as_advised_reaches_every_replica(
    measures_job, api, tmp_path
):
    """The API renames ``name`` to ``Name`` (a column the contract leaves untyped): the run
    is refused with the advice to reset the table, and after the reset it publishes under
    the new name. Then ``pull`` failed ("Column with name Name already exists": DuckDB
    does not tell the two apart) into the replica that had the old name and into a new
    one. A replica now takes the new spelling for the same column, old rows kept."""
    from click.testing import CliRunner

    from deltaferry.cli import cli
    from deltaferry.errors import TableReadError

    measures_job.sync()
    measures_job.pull()
    for i, r in api.items.items():
        r["Name"] = r.pop("name")
        r["updated_at"] = _ts(40 + i)
    with pytest.raises(TableReadError):
        measures_job.sync()
    reset = CliRunner().invoke(
        cli, ["reset", "api", "--table", "items", "--reason", "Name renamed",
              "--config", str(measures_job.config)]
    )
    assert reset.exit_code == 0, reset.output
    assert measures_job.sync()["tables"]["items"]["rows"] == len(api.items)
    want = [(i, r["Name"]) for i, r in sorted(api.items.items())]
    measures_job.pull()
    assert _rows(measures_job, 'SELECT id, "Name" FROM items ORDER BY id') == want
    fresh = tmp_path / "fresh.duckdb"
    pulled = CliRunner().invoke(
        cli, ["pull", "api", "--replica", str(fresh), "--config", str(measures_job.config)]
    )
    assert pulled.exit_code == 0, pulled.output
    con = duckdb.connect(str(fresh), read_only=True)
    try:
        assert con.execute('SELECT id, "Name" FROM items ORDER BY id').fetchall() == want
        names = [r[0] for r in con.execute("DESCRIBE items").fetchall()]
    finally:
        con.close()
    assert "Name" in names and "name" not in names, names
    assert measures_job.sync()["tables"]["items"]["batch"] is None


def test_naive_times_are_wall_time_in_the_jobs_timezone(measures_job, api):
    """A REST record's ISO time without an offset is wall time in the job's ``timezone``,
    as every other source reads it (it was taken as UTC whatever the zone: 02:00 in New
    York published as 02:00Z, and a later record whose naive cursor was newer, 05:00 New
    York = 10:00Z, was dropped as older than a 06:00Z one). The cursor value sent back to
    the API is the text it wrote; text in a column staged as text is left as it is; a wall
    time the zone skips is read by the wall-time rule and said."""
    import datetime as dt

    measures_job.config.write_text(
        MEASURES_JOB.format(url=api.url, lake=measures_job.lake_url, job_extra='timezone = "America/New_York"', table_extra="")
    )
    api.items.clear()
    api.items[1] = {"id": 1, "updated_at": "2024-01-01T02:00:00", "at": "2024-07-01T12:00:00", "label": "n/a", "seen": "2024-01-01 02:00:00.5"}
    api.items[2] = {"id": 2, "updated_at": "2024-01-01T06:00:00Z", "at": "2024-07-01T12:00:00Z", "label": "2024-01-01T02:00:00", "seen": None}
    measures_job.sync()
    api.items[3] = {"id": 3, "updated_at": "2024-01-01T05:00:00", "at": "2024-03-10T02:30:00", "label": "x", "seen": "2024-11-03T01:30:00"}
    api.log.clear()
    out = measures_job.sync()
    assert out["tables"]["items"]["rows"] == 1
    sent = {e["query"].get("since") for e in api.log if e["path"] == "/api/items"}
    assert sent == {"2024-01-01T02:00:00"}  # the API's own text, the newest instant
    measures_job.pull()
    utc = dt.timezone.utc
    rows = _rows(measures_job, "SELECT id, updated_at, \"at\", label, seen FROM items ORDER BY id")
    assert rows == [
        (1, dt.datetime(2024, 1, 1, 7, tzinfo=utc), dt.datetime(2024, 7, 1, 16, tzinfo=utc), "n/a", dt.datetime(2024, 1, 1, 7, 0, 0, 500000, tzinfo=utc)),
        (2, dt.datetime(2024, 1, 1, 6, tzinfo=utc), dt.datetime(2024, 7, 1, 12, tzinfo=utc), "2024-01-01T02:00:00", None),
        # 02:30 is skipped (03:30 EDT = 07:30Z); 01:30 shows twice: the later (06:30Z)
        (3, dt.datetime(2024, 1, 1, 10, tzinfo=utc), dt.datetime(2024, 3, 10, 7, 30, tzinfo=utc), "x", dt.datetime(2024, 11, 3, 6, 30, tzinfo=utc)),
    ]
    notes = [d for t, d in _ops("wall-time")]
    assert any("column 'at': 1 value(s) a wall time America/New_York never shows" in n for n in notes), notes
    assert any("column 'seen': 1 value(s) a wall time America/New_York shows twice" in n for n in notes), notes


def test_a_failed_whole_read_does_not_leave_the_api_asked_from_the_start(
    measures_job, api, monkeypatch
):
    """A whole read (a watched record not sent) lowers dlt's stored value to
    ``initial_value`` before it reads; when it failed, that value stayed, and every later run
    read the whole API, exit 0 (a fresh-user trial). The value from before is put back by
    the next run, which looks for the record again and finds it."""
    from deltaferry.errors import TransientError

    api.items.clear()
    for i in (1, 2, 3, 4):
        api.items[i] = _measure(i, x=float(i))
    measures_job.sync()
    api.items[3].update(updated_at="2240-01-02T00:00:00+00:00", name="typo year")
    measures_job.sync()
    api.items[3].update(updated_at=_ts(1), name="fixed")  # older than since
    handle = api._handle

    def failing(h):  # the whole read's first page fails, every attempt
        if "since=2000-01-01" in h.path:
            return api._send(h, 500, {"error": "injected"})
        return handle(h)

    monkeypatch.setattr(api, "_handle", failing)
    monkeypatch.setenv("DELTAFERRY_HTTP_ATTEMPTS", "1")
    monkeypatch.setenv("DELTAFERRY_STEP_RETRIES", "0")
    with pytest.raises(TransientError, match="answered 500"):
        measures_job.sync()
    monkeypatch.setattr(api, "_handle", handle)
    sent = len(api.requests_to("/api/items"))
    out = measures_job.sync()
    assert [r["query"].get("since") for r in api.requests_to("/api/items")[sent:]] == [
        _ts(4), "2000-01-01T00:00:00+00:00"  # asked from where it was, then looked again
    ]
    assert out["tables"]["items"]["upserts"] == 1, out
    for _ in range(2):  # then as usual: no whole read
        sent = len(api.requests_to("/api/items"))
        assert measures_job.sync()["tables"]["items"].get("batch") is None
        assert [r["query"].get("since") for r in api.requests_to("/api/items")[sent:]] == [
            _ts(4)
        ]
    measures_job.pull()
    assert _rows(measures_job, "SELECT id, name FROM items WHERE id = 3") == [(3, "fixed")]


def test_a_deleted_watched_record_is_looked_for_once(measures_job, api):
    """A watched record deleted from a table that has no cursor value not after now: the
    emptied watch list was never stored, so every later run read the table again whole
    (a fresh-user trial)."""
    api.items.clear()
    api.items[1] = _measure(1, x=1.0)
    api.items[1]["updated_at"] = "2240-01-02T00:00:00+00:00"  # no value not after now at all
    measures_job.sync()
    measures_job.sync()
    del api.items[1]
    reads = []  # requests a run (one page each): a second is the whole read
    for _ in range(3):
        sent = len(api.requests_to("/api/items"))
        measures_job.sync()
        reads.append(len(api.requests_to("/api/items")) - sent)
    assert reads == [2, 1, 1]
