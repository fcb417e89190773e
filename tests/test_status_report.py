"""``deltaferry status`` over the last runs (batch sizes, quarantine and retry rates, lag,
sparkline) and ``deltaferry report`` (a self-contained HTML page with SVG charts)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from deltaferry.checkpoints import Plan
from deltaferry.cli import cli
from deltaferry.state import StateStore
from deltaferry.status import SPARK_GLYPHS, cursor_time, retry_cause, sparkline

ROOT = Path(__file__).resolve().parents[1]
# every tag the report may contain: anything else came from data that was not escaped
REPORT_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "table", "tr",
    "th", "td", "a", "span", "section", "div", "figure", "figcaption", "svg", "g", "rect",
    "line", "text", "i", "details", "summary",
}  # fmt: skip
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "wbr", "source"}


class Page(HTMLParser):
    """Parses the report: checks that every element is closed in order, collects the tags,
    the text, and per chart (svg) its attributes, its bars' values and its text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: Counter[str] = Counter()
        self.text: list[str] = []
        self.charts: list[dict] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def _chart(self) -> dict | None:
        return self.charts[-1] if "svg" in self.stack else None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.tags[tag] += 1
        if tag == "svg":
            self.charts.append({"attrs": a, "bars": [], "text": []})
        elif tag == "g" and "bar" in (a.get("class") or "").split() and self._chart():
            self._chart()["bars"].append(float(a["data-value"]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags[tag] += 1

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._chart():
            self._chart()["text"].append(data)

    def chart(self, kind: str, table: str) -> dict:
        (found,) = [
            c
            for c in self.charts
            if c["attrs"].get("data-chart") == kind and c["attrs"].get("data-table") == table
        ]
        return found

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def invoke(*args: str):  # noqa: ANN201
    result = CliRunner().invoke(cli, list(args))
    return result


def status_json(config: Path, *extra: str) -> dict:
    result = invoke("status", "--json", "--config", str(config), *extra)
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.output)
    return job


def state_rows(home: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(home / "shop" / "state.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


# --- the computations, on their own ----------------------------------------------------------


def test_sparkline_scales_from_zero_to_the_largest_value():
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "▁▁"
    line = sparkline([30, 17, 53, 5])
    assert len(line) == 4 and line[2] == "█" and line.count("█") == 1
    assert line == "▅▃█▂"
    assert sparkline([1, 8]) == "▂█"
    assert set(sparkline(list(range(100)))) == set(SPARK_GLYPHS)


def test_cursor_time_and_retry_cause():
    assert cursor_time("2026-01-01 00:00:01.5") == datetime(2026, 1, 1, 0, 0, 1, 500000, UTC)
    assert cursor_time("2026-01-01T02:00:00+02:00") == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert cursor_time("20260101") is None  # an integer cursor is not a time
    assert cursor_time(None) is None
    assert retry_cause("retry in 0.031s after TransientError: part-00000 reset") == "TransientError"
    assert retry_cause("HTTP 429: slow down") == "HTTP 429"
    assert retry_cause(None) == "(no detail)"


# --- a state written through StateStore, no flow run ----------------------------------------


def write_config(tmp_path: Path) -> Path:
    from deltaferry.shop import JOBS_TOML

    config = tmp_path / "deltaferry.toml"
    config.write_text(JOBS_TOML.format(db=tmp_path / "shop.db", lake=f"file://{tmp_path}/lake"))
    return config


def publish(
    state: StateStore,
    run_id: str,
    table: str,
    batch: int,
    rows: int,
    held: int = 0,
    cursor: str | None = "2026-01-01 00:00:00",
) -> None:
    from destinations.manifest import CursorRange
    from tests.support.manifests import sample

    manifest = sample(
        table=table, batch=batch, cursor=CursorRange(column="updated_at", min=None, max=cursor)
    ).canonical()
    plan = Plan(
        table,
        batch,
        [f"{batch}.0"],
        batch * 1000,
        batch * 1000 + rows - 1,
        rows,
        held,
        manifest,
        hashlib.sha256(manifest).hexdigest(),
        1000,
    )
    quarantine = [
        {
            "load_id": f"{batch}.0",
            "pk": json.dumps({"id": batch * 1000 + i}),
            "field": "email",
            "check": "str_matches",
            "reason": "bad e-mail",
            "row_json": "{}",
        }
        for i in range(held)
    ]
    state.record_plan(plan, run_id, quarantine)
    state.commit_checkpoint(plan)


def fake_history(detail: str = "TransientError: reset") -> StateStore:
    """Four runs: an old one with a retry, then two ok runs (one with an upload retry, an
    exhausted extract attempt and a source retry) and a failed one."""
    state = StateStore("shop")
    old = state.start_run()
    state.log(old, "upload", "retry", table="customers", batch=1, detail="retry in 0.1s after X: y")
    state.log(old, "upload", "ok", table="customers", batch=1, attempt=2)
    publish(state, old, "customers", 1, 40)
    state.finish_run(old, "ok")

    run = state.start_run()
    state.log(run, "run", "info", detail="trace_id=t")  # not an attempt
    state.log(run, "extract", "exhausted", duration_ms=50, detail=detail)
    state.log(run, "extract", "source-retry", detail="HTTP 429: slow down")
    state.log(run, "extract", "ok", attempt=2, duration_ms=120)
    state.log(run, "plan", "ok", table="customers", duration_ms=30)
    state.log(run, "upload", "retry", table="customers", batch=2, duration_ms=20, detail=detail)
    state.log(run, "upload", "ok", table="customers", batch=2, attempt=2, duration_ms=40)
    state.log(run, "manifest", "ok", table="customers", batch=2, duration_ms=10)
    state.log(run, "checkpoint", "ok", table="customers", batch=2, duration_ms=5)
    state.log(run, "plan", "ok", table="orders", duration_ms=25)
    state.log(run, "extract", "skipped", table="orders", detail="bad file")  # not an attempt
    publish(state, run, "customers", 2, 18, held=2, cursor="2026-01-02 00:00:00")
    state.finish_run(run, "ok")

    run = state.start_run()
    state.log(run, "extract", "ok", duration_ms=100)
    state.log(run, "plan", "ok", table="customers", duration_ms=30)
    publish(state, run, "customers", 3, 7, cursor="2026-01-03 00:00:00")
    state.finish_run(run, "ok")

    run = state.start_run()
    state.log(run, "extract", "failed", duration_ms=10, detail=detail)
    state.finish_run(run, "failed", detail)
    return state


def test_rates_over_the_window_from_the_state(tmp_path, home):
    config = write_config(tmp_path)
    fake_history()
    job = status_json(config, "--runs", "3")  # leaves the old run (and its retry) out
    assert job["runs"] == {**job["runs"], "window": 3, "count": 3, "ok": 2, "failed": 1}
    c, o = job["tables"]["customers"], job["tables"]["orders"]
    # customers: its own steps plus the job-wide extract; info and skipped are no attempts
    # retried: extract exhausted, extract source-retry, upload retry; attempts: those 3 and
    # extract ok x2, extract failed, plan x2, upload ok, manifest, checkpoint
    assert c["retries"]["retried"] == 3 and c["retries"]["attempts"] == 11
    assert c["retries"]["rate"] == round(3 / 11, 4)
    # orders: the 5 extract entries and its plan
    assert (o["retries"]["retried"], o["retries"]["attempts"]) == (2, 6)
    assert job["retries"] == {"retried": 3, "attempts": 12, "rate": round(3 / 12, 4)}
    causes = {(x["step"], x["outcome"], x["cause"]): x["count"] for x in c["retries"]["by_cause"]}
    assert causes == {
        ("extract", "exhausted", "TransientError"): 1,
        ("extract", "source-retry", "HTTP 429"): 1,
        ("upload", "retry", "TransientError"): 1,
    }
    assert [b["rows"] for b in c["batches"]] == [18, 7]
    assert c["batch_rows"] == {"count": 2, "last": 7, "mean": 12.5, "max": 18}
    assert c["quarantine"] == {"rows": 2, "rows_planned": 25, "rate": round(2 / 27, 4)}
    assert o["batches"] == [] and o["batch_rows"]["last"] is None and o["sparkline"] == ""
    assert o["quarantine"]["rate"] is None and o["lag_seconds"] is None

    everything = status_json(config)  # default: the last 20 runs
    c = everything["tables"]["customers"]
    assert [b["rows"] for b in c["batches"]] == [40, 18, 7] and c["sparkline"] == "█▄▂"
    assert c["retries"]["retried"] == 4 and everything["runs"]["count"] == 4
    # lag from the newest cursor value published (naive: taken as UTC)
    newest = datetime(2026, 1, 3, tzinfo=UTC)
    assert (
        c["lag_basis"] == "newest change" and c["newest_change_published"] == "2026-01-03 00:00:00"
    )
    expected = (datetime.now(UTC) - newest).total_seconds()
    assert expected - 5 < c["lag_seconds"] <= expected + 1


def test_lag_is_from_the_newest_change_of_recent_batches_not_after_now(tmp_path, home):
    """The lag was now minus the last batch's newest cursor: a batch of backdated changes
    only (a record given an older time, published by a whole read) made the lag jump to
    weeks, and one typo year (2240) hid every lag. It is from the newest cursor time of the
    recent batches that is not after now."""
    config = write_config(tmp_path)
    state = StateStore("shop")
    run = state.start_run()
    publish(state, run, "customers", 1, 5, cursor="2026-01-03 00:00:00")
    publish(state, run, "customers", 2, 1, cursor="2025-06-01 00:00:00")  # backdated only
    publish(state, run, "customers", 3, 1, cursor="2240-01-02 00:00:00")  # a typo year
    publish(state, run, "customers", 4, 1, cursor=None)  # deletes only
    state.finish_run(run, "ok")
    c = status_json(config)["tables"]["customers"]
    assert c["lag_basis"] == "newest change", c
    assert c["newest_change_published"] == "2026-01-03 00:00:00"
    expected = (datetime.now(UTC) - datetime(2026, 1, 3, tzinfo=UTC)).total_seconds()
    assert expected - 5 < c["lag_seconds"] <= expected + 1
    # a naive value is wall time in the source's zone: east of UTC it reads as ahead of
    # now (Tokyo's now is 9 hours ahead), and is still the newest change
    run = state.start_run()
    tokyo_now = (datetime.now(UTC) + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S")
    publish(state, run, "customers", 5, 1, cursor=tokyo_now)
    state.finish_run(run, "ok")
    assert status_json(config)["tables"]["customers"]["newest_change_published"] == tokyo_now


def test_lag_falls_back_to_the_last_publish_without_a_time_cursor(tmp_path, home):
    config = write_config(tmp_path)
    state = StateStore("shop")
    run = state.start_run()
    publish(state, run, "customers", 1, 5, cursor="41")  # an integer cursor
    state.finish_run(run, "ok")
    c = status_json(config)["tables"]["customers"]
    assert c["lag_basis"] == "last publish" and c["newest_change_published"] == "41"
    assert 0 <= c["lag_seconds"] < 30 and c["lag_seconds"] == c["seconds_since_last_publish"]
    header, customers, _ = [
        line.split("\t") for line in invoke("status", "--config", str(config)).output.splitlines()
    ]
    assert dict(zip(header, customers, strict=True))["lag"].endswith("s (publish)"), customers


def test_never_run_shows_dashes(tmp_path, home):
    config = write_config(tmp_path)
    job = status_json(config)
    assert job["last_run"] is None and job["runs"]["count"] == 0
    c = job["tables"]["customers"]
    assert c["batch_rows"] == {"count": 0, "last": None, "mean": None, "max": None}
    assert c["quarantine"]["rate"] is None and c["retries"]["rate"] is None
    result = invoke("status", "--config", str(config))
    assert result.exit_code == 0, result.output
    header, *rows = [line.split("\t") for line in result.output.splitlines()]
    assert "batch rows last/mean" in header and "retry %" in header
    assert len(rows) == 2
    cells = dict(zip(header, rows[0], strict=True))
    for col in ("batch rows last/mean", "rows/batch", "quar. %", "retry %", "lag"):
        assert cells[col] == "-", (col, cells)
    assert cells["last run"] == "never run"

    out = tmp_path / "empty.html"
    result = invoke("report", "shop", "--out", str(out), "--config", str(config))
    assert result.exit_code == 0, result.output
    page = Page(out.read_text())
    assert not page.errors, page.errors
    assert page.chart("rows", "customers")["bars"] == []
    assert "no batch published in the last 20 runs" in page.chart("rows", "customers")["text"]


def test_report_unknown_job_exits_2(tmp_path, home):
    config = write_config(tmp_path)
    result = invoke("report", "nope", "--out", str(tmp_path / "r.html"), "--config", str(config))
    assert result.exit_code == 2
    assert "unknown job 'nope'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_report_escapes_text_from_the_state(tmp_path, home):
    config = write_config(tmp_path)
    evil = "<img src=x onerror=alert(1)>: </svg><script>alert(2)</script>"
    fake_history(detail=evil)
    out = tmp_path / "r.html"
    result = invoke("report", "shop", "--out", str(out), "--config", str(config))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    page = Page(text)
    assert not page.errors, page.errors
    assert set(page.tags) <= REPORT_TAGS, set(page.tags) - REPORT_TAGS
    assert "<img" not in text and "<script" not in text
    # the cause (the failed run's detail too) is there, as text
    assert "<img src=x onerror=alert(1)>" in " ".join(page.chart("retries", "customers")["text"])
    assert "Last run: failed" in page.all_text and "<script>alert(2)</script>" in page.all_text


@pytest.mark.e2e  # Chromium
def test_report_renders_in_a_browser(tmp_path, home):
    """Optional: Debian's chromium, driven by playwright, draws the report; a screenshot goes
    to test-output/report.png."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    config = write_config(tmp_path)
    fake_history()
    out = tmp_path / "report.html"
    assert invoke("report", "shop", "--out", str(out), "--config", str(config)).exit_code == 0
    shots = ROOT / "test-output"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            assert page.locator("svg.chart").count() == 8  # 4 charts x 2 tables
            box = page.locator('svg[data-chart="rows"][data-table="customers"]').bounding_box()
            assert box and box["width"] > 300 and box["height"] > 100
            assert page.locator('svg[data-chart="rows"][data-table="customers"] g.bar').count() == 3
            page.screenshot(path=str(shots / "report.png"), full_page=True)
        finally:
            browser.close()
    assert requests == [out.as_uri()]  # self-contained: nothing else was fetched
    assert (shots / "report.png").stat().st_size > 10_000


# --- end to end: syncs of the shop job --------------------------------------------------------


def test_status_and_report_after_syncs(shop_job, shop, s3_endpoint, monkeypatch, tmp_path):
    from tests.support.faults import FaultProxy

    sizes = []
    shop.round(30, 20, churn=0)
    sizes.append(shop_job.sync())
    shop.round(20, 10, churn=0, invalid=3)  # 3 customers break the contract
    proxy = FaultProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
    try:
        proxy.reset_puts(4)  # past botocore's 3 attempts: the customers upload step is retried
        sizes.append(shop_job.sync())
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    shop.round(50, 40, churn=0)  # also repairs the 3 broken customers
    sizes.append(shop_job.sync())
    shop.round(5, 5, churn=0)
    sizes.append(shop_job.sync())
    rows = {t: [s["tables"][t]["rows"] for s in sizes] for t in ("customers", "orders")}
    assert rows == {"customers": [30, 17, 53, 5], "orders": [20, 10, 40, 5]}

    home = shop_job.dir / "home"
    job = status_json(shop_job.config)
    assert job["runs"]["count"] == 4 and job["runs"]["ok"] == 4 and job["runs"]["failed"] == 0
    for table, expected in rows.items():
        t = job["tables"][table]
        assert [b["rows"] for b in t["batches"]] == expected
        assert [b["batch"] for b in t["batches"]] == [1, 2, 3, 4]
        assert t["batch_rows"] == {
            "count": 4,
            "last": 5,
            "mean": round(sum(expected) / 4, 1),
            "max": max(expected),
        }
        line = t["sparkline"]
        assert len(line) == 4 and line.index("█") == expected.index(max(expected))
        assert all(line[i] < "█" for i in range(4) if expected[i] < max(expected))
        # consistent with the state: the plans and the quarantine table
        (planned, held_in_plans) = state_rows(
            home, "SELECT sum(rows), sum(quarantined) FROM plans WHERE tbl = ?", [table]
        )[0]
        (held,) = state_rows(
            home, "SELECT count(DISTINCT (run_id, pk)) FROM quarantine WHERE tbl = ?", [table]
        )[0]
        assert t["quarantine"]["rows"] == held == held_in_plans
        assert t["quarantine"]["rows_planned"] == planned
        assert t["quarantine"]["rate"] == (round(held / (planned + held), 4) if held else 0)
    c = job["tables"]["customers"]
    assert c["quarantine"]["rows"] == 3 and [b["quarantined"] for b in c["batches"]] == [0, 3, 0, 0]
    assert job["tables"]["orders"]["quarantine"]["rate"] == 0

    # the retried upload: one retried attempt of the customers' steps, none of the orders'
    (attempts,) = state_rows(
        home,
        "SELECT count(*) FROM ops_log WHERE (tbl = 'customers' OR tbl IS NULL)"
        " AND outcome NOT IN ('info', 'skipped')",
    )[0]
    assert c["retries"]["retried"] == 1 and c["retries"]["attempts"] == attempts
    assert c["retries"]["rate"] == round(1 / attempts, 4)
    assert [x["cause"] for x in c["retries"]["by_cause"]] == ["TransientError"]
    assert job["tables"]["orders"]["retries"]["retried"] == 0

    # lag: now minus the newest change (cursor) published, the source's newest updated_at
    src = sqlite3.connect(shop_job.dir / "shop.db")
    (newest,) = src.execute("SELECT max(updated_at) FROM customers").fetchone()
    src.close()
    assert c["lag_basis"] == "newest change"
    assert cursor_time(c["newest_change_published"]) == cursor_time(newest)
    expected_lag = (datetime.now(UTC) - cursor_time(newest)).total_seconds()
    assert expected_lag - 30 < c["lag_seconds"] <= expected_lag + 1
    assert c["seconds_since_last_publish"] < c["lag_seconds"]  # the shop's clock is in January

    # --runs 2: only the last two runs' batches
    last_two = status_json(shop_job.config, "--runs", "2")["tables"]["customers"]
    assert [b["rows"] for b in last_two["batches"]] == [53, 5]
    assert last_two["quarantine"]["rows"] == 0 and last_two["retries"]["retried"] == 0

    # the table output
    result = invoke("status", "--config", str(shop_job.config))
    assert result.exit_code == 0, result.output
    header, *lines = [line.split("\t") for line in result.output.splitlines()]
    cells = {r[1]: dict(zip(header, r, strict=True)) for r in lines}
    assert cells["customers"]["batch rows last/mean"] == "5/26.2"
    assert cells["customers"]["rows/batch"] == c["sparkline"]
    assert cells["customers"]["quar. %"] == f"{3 / 108 * 100:.1f}%"
    assert cells["customers"]["retry %"] == f"{100 / attempts:.1f}%"
    assert cells["orders"]["retry %"] == "0.0%"
    assert cells["customers"]["runs ok/failed"] == "4/0"
    assert cells["customers"]["lag"].endswith(" (change)")

    # the report
    out = tmp_path / "out" / "report.html"
    result = invoke("report", "shop", "--out", str(out), "--config", str(shop_job.config))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    page = Page(text)
    assert not page.errors, page.errors
    assert set(page.tags) <= REPORT_TAGS, set(page.tags) - REPORT_TAGS
    assert "src=" not in text and "<link" not in text  # nothing to fetch
    assert page.tags["svg"] == 8  # 4 charts per table
    assert "deltaferry job shop" in page.all_text
    for table, expected in rows.items():
        assert page.chart("rows", table)["bars"] == expected
        assert len(page.chart("durations", table)["bars"]) == 4  # one bar per run
        assert f"Table {table}" in page.all_text
    assert page.chart("quarantined", "customers")["bars"] == [0, 3, 0, 0]
    assert page.chart("retries", "customers")["bars"] == [1]
    assert page.chart("retries", "orders")["bars"] == []
    # axis labels, and dates under the bars
    rows_text = " ".join(page.chart("rows", "customers")["text"])
    assert "rows" in rows_text and "published (UTC)" in rows_text
    first = datetime.fromisoformat(c["batches"][0]["published_at"]).astimezone(UTC)
    assert f"#1 {first:%m-%d %H:%M}" in rows_text, rows_text
    assert "since the newest source change published" in page.all_text
