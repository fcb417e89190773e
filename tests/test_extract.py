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
    ) -> int:
        self.held.append((table, len(rows)))
        return 0


def _ctx(source: SourceResult, monkeypatch, *, unchanged: int = 0, gone: int = 0) -> SyncContext:
    monkeypatch.setattr(
        sources, "source_module", lambda job: SimpleNamespace(extract=lambda job: source)
    )
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
    from sources.sql_database import _source_rows_held

    def unkeyed(v: str) -> dict:
        return {"pk": '{"id": null}', "check": UNKEYED, "row_json": json.dumps({"v": v})}

    cursor = {"pk": '{"id": 5}', "check": "cursor not null", "row_json": "{}"}
    first = [unkeyed("a"), unkeyed("b"), unkeyed("b"), cursor]
    second = [unkeyed("b"), unkeyed("b"), unkeyed("c"), cursor]
    counts = _source_rows_held([first, second])
    assert counts == {('{"id": null}', UNKEYED): 4, ('{"id": 5}', "cursor not null"): 1}
