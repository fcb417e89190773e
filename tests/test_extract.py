"""``deltaferry.extract.run_extract`` without Prefect, a source or a lake: what the source
reports becomes one typed result per table, the operations log and the run's context."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

import deltaferry.adopt
import sources
from deltaferry.extract import ExtractResult, TableExtract, run_extract
from deltaferry.context import SyncContext
from sources.load import ExtractResult as SourceResult


class _State:
    def __init__(self) -> None:
        self.logged: list[tuple[Any, ...]] = []
        self.held: list[tuple[str, int]] = []

    def log(self, run_id: str, step: str, outcome: str, **kw: Any) -> None:
        self.logged.append((step, outcome, kw.get("table"), kw.get("detail")))

    def log_many(self, run_id: str, entries: list[Any]) -> None:
        self.logged += [(e.step, e.outcome, e.table, e.detail) for e in entries]

    @contextmanager
    def hold(self) -> Iterator[None]:  # one connection for a step: none here
        yield

    released = hold

    def record_held(
        self,
        run_id: str,
        table: str,
        rows: list[dict[str, Any]],
        rereads_null_cursors: bool,
        rereads_unkeyed: bool | str = False,
        reread_unfit: list[str] | tuple[str, ...] = (),
        staged_now: object = None,
    ) -> int:
        self.held.append((table, len(rows)))
        return 0


def _ctx(source: SourceResult, monkeypatch, *, unchanged: int = 0, gone: int = 0) -> SyncContext:
    monkeypatch.setattr(
        sources, "source_module", lambda job: SimpleNamespace(extract=lambda job: source)
    )
    # a fake source kind: no change check of its own to ask (sources/quiet.py)
    monkeypatch.setenv("DELTAFERRY_QUIET_MAX_AGE", "0")
    monkeypatch.setattr(deltaferry.adopt, "skip_unchanged", lambda ctx, t: unchanged)
    monkeypatch.setattr(
        deltaferry.adopt,
        "stage_missing_as_tombstones",
        lambda ctx, t: gone if t.name == "orders" else 0,
    )
    job: Any = SimpleNamespace(
        name="shop",
        tables=[
            SimpleNamespace(name="customers", cursor="updated_at", null_cursor="include"),
            SimpleNamespace(name="orders", cursor=None, null_cursor="include"),
        ],
    )
    state: Any = _State()
    return SyncContext(job=job, state=state, lake=None, run_id="r1", trace_id="t1")


def test_the_source_report_becomes_a_typed_result_per_table(monkeypatch):
    held_row = {"pk": '{"id": null}', "field": "id", "check": "not null", "reason": "no key"}
    source = SourceResult(
        load_ids=["L1"],
        rows_by_table={"customers": 20, "orders": 7},
        tombstones_by_table={"orders": 2},
        skipped={"orders": ["job 'shop' table 'orders': file a.csv set aside: bad"]},
        retried=["HTTP 429, retried"],
        held={"customers": [held_row, held_row]},
        duplicates={"orders": ["job 'shop' table 'orders': key 3 read twice"]},
        columns={"orders": ["id", "total"]},
    )
    ctx = _ctx(source, monkeypatch, unchanged=5, gone=3)

    out = run_extract(ctx)

    assert isinstance(out, ExtractResult)
    assert out.load_ids == ["L1"]
    assert out.retried == ["HTTP 429, retried"]
    assert out.tables["customers"] == TableExtract(rows=20, unchanged=5, held=2)
    assert out.tables["orders"] == TableExtract(
        rows=7,
        tombstones=2,
        adopted_tombstones=3,
        unchanged=5,
        skipped=["job 'shop' table 'orders': file a.csv set aside: bad"],
        duplicates=["job 'shop' table 'orders': key 3 read twice"],
    )
    held_line = "job 'shop' table 'customers': 2 source row(s) held back in quarantine: no key"
    # logged in the order found; the run goes on without the skipped input and held rows
    assert out.warnings == [
        "job 'shop' table 'orders': file a.csv set aside: bad",
        held_line,
        "job 'shop' table 'orders': key 3 read twice",
    ]
    assert ctx.skipped == ["job 'shop' table 'orders': file a.csv set aside: bad", held_line]
    assert ctx.source_columns == {"orders": {"id", "total"}}
    assert ctx.state.held == [("customers", 2)]
    assert [(s, o, t) for s, o, t, _ in ctx.state.logged] == [
        ("extract", "source-retry", None),
        ("extract", "skipped", "orders"),
        ("extract", "held", "customers"),
        ("extract", "duplicate-key", "orders"),
        ("extract", "ok", None),
    ]
    assert ctx.state.logged[-1][3] == (
        "loads ['L1'] rows {'customers': 20, 'orders': 7} tombstones {'orders': 2}"
    )
    # a table the extract did not report reads as empty
    assert out.table("events") == TableExtract()


def test_a_failed_source_is_a_failed_step_and_sets_nothing_aside(monkeypatch):
    ctx = _ctx(SourceResult([], {}, {}), monkeypatch)

    def boom(job):  # noqa: ANN001, ANN202
        raise RuntimeError("source down")

    monkeypatch.setattr(sources, "source_module", lambda job: SimpleNamespace(extract=boom))
    # a fake source kind: no change check of its own to ask (sources/quiet.py)
    monkeypatch.setenv("DELTAFERRY_QUIET_MAX_AGE", "0")
    with pytest.raises(RuntimeError, match="source down"):
        run_extract(ctx)
    assert ctx.skipped == []
    assert [(s, o) for s, o, _, _ in ctx.state.logged] == [("extract", "failed")]


def test_rows_without_a_key_read_by_two_overlapping_reads_are_counted_once():
    """Rows held without a key are read again in groups (SQLite time text selects whole
    days, so neighbouring groups overlap): a row seen by two reads counts once, identical
    rows each count, and a keyed record counts one however many reads held it."""
    import json

    from deltaferry.quarantine import UNKEYED
    from sources.sql_database.source import _source_rows_held

    def unkeyed(v: str) -> dict:
        return {"pk": '{"id": null}', "check": UNKEYED, "row_json": json.dumps({"v": v})}

    cursor = {"pk": '{"id": 5}', "check": "cursor not null", "row_json": "{}"}
    first = [unkeyed("a"), unkeyed("b"), unkeyed("b"), cursor]
    second = [unkeyed("b"), unkeyed("b"), unkeyed("c"), cursor]
    counts = _source_rows_held([first, second])
    assert counts == {('{"id": null}', UNKEYED): 4, ('{"id": 5}', "cursor not null"): 1}


def test_a_staging_load_out_of_memory_names_the_memory_limit_not_a_value(monkeypatch):
    """DuckDB running out of its memory limit while dlt loads into staging is not a bad
    value: the one line names ``DELTAFERRY_DUCKDB_MEMORY_LIMIT`` and its current value."""
    from types import SimpleNamespace

    from sources.load import load_failure

    monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", "64MB")
    job = SimpleNamespace(name="bench")
    oom = RuntimeError(
        "Job failed\nTraceback ...\nduckdb.OutOfMemoryException: Out of Memory Error: failed to "
        "pin block of size 256.0 KiB (60.9 MiB/61.0 MiB used)"
    )
    line = load_failure(job, oom)
    assert "\n" not in line and line.startswith("job 'bench': loading into staging failed: Out of")
    assert "raise DELTAFERRY_DUCKDB_MEMORY_LIMIT (now 64MB)" in line
    assert "fix the value" not in line
    bad = RuntimeError("duckdb.ConversionException: Conversion Error: Could not convert 'x'")
    assert "fix the value at the source" in load_failure(job, bad)


def _isolation_ctx(monkeypatch, bad: set[str], names=("customers", "orders")):
    """A context whose source refuses to read the tables in ``bad`` (the first of them in
    job order raises ``TableReadError``, as a value a column cannot carry does)."""
    import dataclasses

    from deltaferry.errors import TableReadError

    @dataclasses.dataclass(frozen=True)
    class Job:
        name: str
        tables: tuple[Any, ...]

    calls: list[list[str]] = []

    def extract(job):  # noqa: ANN001, ANN202
        calls.append([t.name for t in job.tables])
        for t in job.tables:
            if t.name in bad:
                raise TableReadError(f"job 'shop' table '{t.name}': column 'x' holds 1.005", t.name)
        held = {"pk": '{"id": null}', "field": "id", "check": "not null", "reason": "no key"}
        return SourceResult(
            load_ids=["L2"],
            rows_by_table={t.name: 3 for t in job.tables},
            tombstones_by_table={},
            held={t.name: [held] for t in job.tables},
        )

    adopted: list[str] = []
    monkeypatch.setattr(sources, "source_module", lambda job: SimpleNamespace(extract=extract))
    # a fake source kind: no change check of its own to ask (sources/quiet.py)
    monkeypatch.setenv("DELTAFERRY_QUIET_MAX_AGE", "0")
    monkeypatch.setattr(deltaferry.adopt, "skip_unchanged", lambda ctx, t: adopted.append(t.name) or 0)
    monkeypatch.setattr(deltaferry.adopt, "stage_missing_as_tombstones", lambda ctx, t: 0)
    tables = tuple(SimpleNamespace(name=n, cursor="updated_at", null_cursor="include") for n in names)
    state: Any = _State()
    ctx = SyncContext(job=Job("shop", tables), state=state, lake=None, run_id="r1", trace_id="t1")  # type: ignore[arg-type]
    return ctx, calls, adopted


def test_a_table_whose_data_cannot_be_read_is_left_out_and_the_others_are_read(monkeypatch):
    ctx, calls, adopted = _isolation_ctx(monkeypatch, {"customers"})

    out = run_extract(ctx)

    assert calls == [["customers", "orders"], ["orders"]]  # read again without it
    assert list(out.stopped) == ["customers"]
    assert out.tables["customers"].stopped == "job 'shop' table 'customers': column 'x' holds 1.005"
    assert out.tables["customers"].rows is None and out.tables["orders"].rows == 3
    assert out.tables["orders"].stopped == ""
    # nothing else of the stopped table: no adoption follow-up, its held records untouched
    assert adopted == ["orders"]
    assert ctx.state.held == [("orders", 1)]
    assert [(s, o, t) for s, o, t, _ in ctx.state.logged] == [
        ("extract", "failed", "customers"),
        ("extract", "held", "orders"),
        ("extract", "ok", None),
    ]


def test_a_job_whose_every_table_cannot_be_read_fails_its_extract_naming_each(monkeypatch):
    from deltaferry.errors import TableReadError, TerminalError

    ctx, calls, _ = _isolation_ctx(monkeypatch, {"customers", "orders"})
    with pytest.raises(TerminalError) as err:
        run_extract(ctx)
    assert not isinstance(err.value, TableReadError)
    assert str(err.value).startswith("job 'shop': tables 'customers', 'orders' stopped: ")
    assert "table 'orders': column 'x'" in str(err.value)
    assert calls == [["customers", "orders"], ["orders"]]
    # each table's entry, then the step's own
    assert [(s, o, t) for s, o, t, _ in ctx.state.logged] == [
        ("extract", "failed", "customers"),
        ("extract", "failed", "orders"),
        ("extract", "failed", None),
    ]

    # a job of one table: its own error, as before
    ctx, calls, _ = _isolation_ctx(monkeypatch, {"orders"}, names=("orders",))
    with pytest.raises(TableReadError, match="table 'orders': column 'x' holds 1.005"):
        run_extract(ctx)
    assert calls == [["orders"]]


def test_a_read_that_fails_while_it_is_set_up_closes_the_filters_made_so_far(
    shop_job, shop, monkeypatch
):
    """Each table's read keeps a changed-rows filter (a DuckDB connection spilling to the
    job's ``tmp/``). One table's setup failing (its window's start here) closes the
    filters made for the tables before it, as the reads' own end does: a process deltaferry
    owns ends without the collections that would have closed them (found by a review)."""
    import sources.sql_database.source as sql_source
    from deltaferry.config import load_job

    shop.round(5, 5, churn=0)
    shop_job.sync()  # both tables staged: the next read sets up a window for each
    made: list[Any] = []
    closed: list[Any] = []

    class Tracked(sql_source.ChangedByKey):
        def __init__(self, *a: Any) -> None:
            super().__init__(*a)
            made.append(self)

        def close(self) -> None:
            closed.append(self)
            super().close()

    real_start = sql_source.window_start

    def failing(job, t, borrowed):  # noqa: ANN001, ANN202
        if t.name == "orders":
            raise OSError("orders: the staging file went away")
        return real_start(job, t, borrowed)

    monkeypatch.setattr(sql_source, "ChangedByKey", Tracked)
    monkeypatch.setattr(sql_source, "window_start", failing)
    with pytest.raises(OSError, match="went away"):
        sql_source.extract(load_job("shop", str(shop_job.config)))
    assert len(made) == 1  # customers' filter, made before orders failed
    assert closed == made
