"""A batch that breaks its contract: what validation reports, what it keeps, and what it
never makes. Failures are kept as pandera's failure cases (``contracts.ValidationResult``)
and quarantine records are made a slice of rows at a time, only while the batch can still
be published (``deltaferry/delta.py``); these tests hold both to what they stand for."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pytest
from pandera.errors import SchemaErrors
from pandera.typing import Series

from contracts import Contract
from deltaferry import delta as delta_mod
from deltaferry.config import JobConfig, TableConfig
from deltaferry.delta import build_delta
from deltaferry.errors import ContractViolation
from deltaferry.quarantine import insert_quarantine, resolve_keys


class Orders(pa.DataFrameModel):
    id: Series[int] = pa.Field(ge=1)
    qty: Series[int] = pa.Field(ge=0)
    status: Series[str] = pa.Field(isin=["new", "paid"])
    note: Series[str] = pa.Field(nullable=True, str_length={"max_value": 5})

    class Config:
        coerce = True


def _frame(seed: int, n: int) -> pd.DataFrame:
    """Rows failing none, one or several checks, NULLs where they may not be, drawn from
    ``seed``."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": rnd.choice([i + 1, i + 1, i + 1, -i]),
                "qty": rnd.choice([1, 2, -3, None, 7]),
                "status": rnd.choice(["new", "paid", "lost", None]),
                "note": rnd.choice([None, "ok", "far too long"]),
            }
        )
    frame = pd.DataFrame(rows)
    frame["qty"] = frame["qty"].astype(object)
    return frame


def _oracle(frame: pd.DataFrame) -> tuple[set[int], Counter]:
    """Failed rows and failures by (field, check), from pandera's own failure cases with
    the rule ``contracts`` states (one NULL, one failure: only ``not_nullable`` is kept for
    a (row, field) whose failing value is NULL), written here without deltaferry's code."""
    try:
        Orders.to_schema().validate(frame, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
    else:
        return set(), Counter()
    kept = []
    nulls = {
        (int(r["index"]), r["column"])
        for _, r in cases.iterrows()
        if r["check"] == "not_nullable"
    }
    for _, r in cases.iterrows():
        key = (int(r["index"]), r["column"])
        if r["check"] != "not_nullable" and key in nulls and pd.isna(r["failure_case"]):
            continue
        kept.append(r)
    return {int(r["index"]) for r in kept}, Counter((r["column"], str(r["check"])) for r in kept)


@pytest.mark.parametrize("seed", range(6))
def test_failed_rows_and_counts_are_pandera_s_own(seed):
    frame = _frame(seed, 60)
    result = Contract("orders", Orders).validate(frame)
    rows, counts = _oracle(frame)
    assert result.failed_rows == rows
    assert list(result.failed_positions) == sorted(rows)
    assert result.counts() == counts
    # every failure of a row is one of its reasons, with the row's own value in its text
    for row, failures in result.row_failures.items():
        assert {f.row for f in failures} == {row}
        for f in failures:
            assert f.reason.startswith(f"{f.check} failed for value ")
    assert sum(len(v) for v in result.row_failures.values()) == sum(counts.values())


def test_a_missing_column_fails_every_row_once_a_check():
    frame = _frame(1, 10).drop(columns=["note"])
    result = Contract("orders", Orders).validate(frame)
    assert result.failed_rows == set(range(10))
    assert [(f.field, f.check, f.row) for f in result.schema_failures] == [
        ("Orders", "column_in_dataframe", -1)
    ]
    assert result.counts()[("Orders", "column_in_dataframe")] == 1
    # counted over some rows: once a failed row among them
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5]] = True
    assert result.counts(mask)[("Orders", "column_in_dataframe")] == 2


def test_examples_and_first_failures_take_the_lowest_row():
    frame = pd.DataFrame(
        {"id": [1, 2, 3, 4], "qty": [5, -1, 6, -2], "status": ["new", "paid", "x", "y"], "note": [None] * 4}
    )
    result = Contract("orders", Orders).validate(frame)
    first = {(f.field, f.check): f.row for f in result.first_failures()}
    assert first[("qty", "greater_than_or_equal_to(0)")] == 1
    assert first[("status", "isin(['new', 'paid'])")] == 2
    mask = np.array([False, False, True, True])
    first = {(f.field, f.check): (f.row, f.value) for f in result.first_failures(mask)}
    assert first[("qty", "greater_than_or_equal_to(0)")] == (3, -2)
    assert result.examples()[("qty", "greater_than_or_equal_to(0)")] == "-1"


def _staged(n: int, start: int = 0, bad: bool = True) -> pyarrow.Table:
    ids = np.arange(start + 1, start + n + 1)
    return pyarrow.table(
        {
            "id": ids,
            "qty": -ids if bad else ids,
            "status": pyarrow.array(["new"] * n, pyarrow.string()),
            "note": pyarrow.array([None] * n, pyarrow.string()),
            "_op": pyarrow.array(["upsert"] * n, pyarrow.string()),
            "_dlt_load_id": pyarrow.array(["1.1"] * n, pyarrow.string()),
        }
    )


class _Cut:
    """Chunks with ``limit``, as ``cut.Changes`` has it."""

    def __init__(self, chunks: list[pyarrow.Table], limit: int | None) -> None:
        self.chunks, self.limit = chunks, limit

    def __iter__(self):
        return iter(self.chunks)


def _job(ratio: float) -> tuple[JobConfig, TableConfig]:
    t = TableConfig("orders", ("id",), None, "none", "tests:Orders")
    job = JobConfig("j", "sql_database", "sqlite://", "file:lake", (t,))
    import dataclasses

    return dataclasses.replace(job, max_quarantine_ratio=ratio), t


def test_a_batch_over_the_threshold_makes_no_record(monkeypatch):
    """Once the failures of a cut are over the threshold for the most rows it can hold,
    the batch cannot be published: no quarantine record is made from then on (a cut of
    a million failing rows spent about 30 s and 1 GiB on records the error dropped). The
    error still counts every chunk and names a failing value with its key."""
    made = []
    real = delta_mod._quarantine_failed
    monkeypatch.setattr(
        delta_mod, "_quarantine_failed", lambda t, f, q: (made.append(len(f.positions)), real(t, f, q))
    )
    job, t = _job(0.05)
    # chunk 1: 2 of 100 fail (within 5% of the 300 the cut may hold: recorded); chunk 2:
    # every row fails, over it: records dropped and none made for chunk 3
    good = _staged(100, bad=False)
    first = pyarrow.concat_tables([good.slice(0, 98), _staged(2, 98)])
    cut = _Cut([first, _staged(100, 100), _staged(100, 200)], limit=300)
    with pytest.raises(ContractViolation) as err:
        build_delta(job, t, Contract("orders", Orders), cut, ["1.1"], 1)
    assert made == [2]
    text = str(err.value)
    assert "202 of 300 changed rows" in text
    assert 'qty: greater_than_or_equal_to(0) (202 rows, e.g. -99 at key {"id": 99})' in text


def test_within_the_threshold_every_failure_is_recorded_the_same_by_slices(monkeypatch):
    """Records are made ``RECORD_ROWS`` rows at a time: the same records, in the same
    order, as made at once; a cut without a limit keeps them all."""
    job, t = _job(1.0)
    chunks = [_staged(25), _staged(25, 25, bad=False), _staged(30, 50)]

    def records() -> list[dict]:
        d = build_delta(job, t, Contract("orders", Orders), _Cut(chunks, None), ["1.1"], 1)
        return list(d.quarantine)

    whole = records()
    monkeypatch.setattr(delta_mod, "RECORD_ROWS", 7)
    sliced = records()
    assert whole == sliced and len(whole) == 55
    d = build_delta(job, t, Contract("orders", Orders), _Cut(chunks, None), ["1.1"], 1)
    assert d.quarantine.key_count() == len(d.quarantine.keys()) == 55
    assert [json.loads(r["pk"])["id"] for r in whole] == [*range(1, 26), *range(51, 81)]
    assert whole[0] == {
        "load_id": "1.1",
        "pk": '{"id": 1}',
        "field": "qty",
        "check": "greater_than_or_equal_to(0)",
        "reason": "greater_than_or_equal_to(0) failed for value -1",
        "row_json": '{"id": 1, "note": null, "qty": -1, "status": "new"}',
    }


def test_a_long_quarantine_list_is_cut_and_counted(home, tmp_path):
    """A batch held back whole holds a record a row: ``quarantine list`` shows the first
    ``--limit`` records (100 by default), oldest first, then every record counted by
    table, field and check; ``--limit 0`` lists them all."""
    from click.testing import CliRunner

    from deltaferry.cli import cli
    from deltaferry.state import StateStore

    config = tmp_path / "jobs.toml"
    config.write_text(
        '[jobs.j]\nsource = "sql_database"\nurl = "sqlite:///x.db"\nlake = "file:lake"\n'
        '[[jobs.j.tables]]\nname = "orders"\nprimary_key = ["id"]\ncontract = "contracts.shop:Orders"\n'
        '[[jobs.j.tables]]\nname = "customers"\nprimary_key = ["id"]\ncontract = "contracts.shop:Customers"\n'
    )
    store = StateStore("j")
    held = _held_records(
        [("qty", "greater_than_or_equal_to(0)", i) for i in range(230)]
        + [("status", "isin", i) for i in range(20)]
    )
    with store.connect() as con:  # the second table's records are the oldest
        insert_quarantine(con, "r", "customers", _held_records([("email", "str_matches", 1)]))
        resolve_keys(con, "customers", {'{"id": 1}'}, "published by batch 2")
        insert_quarantine(con, "r", "customers", _held_records([("email", "str_matches", 2)]))
        insert_quarantine(con, "r", "orders", held)

    def listed(*more: str) -> list[str]:
        res = CliRunner().invoke(cli, ["quarantine", "list", "j", "--config", str(config), *more])
        assert res.exit_code == 0, res.output
        return res.output.splitlines()

    lines = listed("--table", "orders")
    rows = [line for line in lines if line.startswith("orders\t")]
    assert len(rows) == 100 and rows[0].split("\t")[1] == "id=0"
    text = "\n".join(lines)
    assert "250 held record(s); listed the oldest 100 of 250 (--limit 0 lists all)" in text
    assert "orders  qty  greater_than_or_equal_to(0): 230 record(s)" in text
    assert "orders  status  isin: 20 record(s)" in text
    assert len([ln for ln in listed("--limit", "0") if ln.startswith("orders\t")]) == 250
    assert "251 held record(s)" == listed("--limit", "0")[-1]
    # the oldest of every table listed, whatever their order in the jobs file
    first = [ln.split("\t")[:2] for ln in listed("--limit", "2")[1:3]]
    assert first == [["customers", "id=2"], ["orders", "id=0"]]
    # --all: resolved records are counted apart from the held ones
    text = "\n".join(listed("--all", "--limit", "1"))
    assert "251 held record(s), 1 resolved; listed the oldest 1 of 252" in text
    assert "customers  email  str_matches: 2 record(s) (1 held)" in text


def _held_records(failures: list[tuple[str, str, int]]):
    from deltaferry.quarantine import HeldRecords

    held = HeldRecords()
    held.extend(
        [
            {
                "load_id": "1.1",
                "pk": json.dumps({"id": i}),
                "field": field,
                "check": check,
                "reason": f"{check} failed",
                "row_json": json.dumps({"id": i}),
            }
            for field, check, i in failures
        ]
    )
    return held


@pytest.mark.parametrize("ratio, rows", [(0.57, 10_000), (0.29, 50_000)])
def test_failures_exactly_at_the_threshold_are_held_not_dropped(ratio, rows):
    """A cut of exactly ``max_batch_rows`` rows with failures exactly at the threshold is
    published with its failing rows held (a fresh-user trial: ``failed > ratio * most``
    said over the threshold where ``failed / changed > ratio`` did not, in floating
    point, so the records were dropped and the batch published without its failing
    rows). Every row is either published or held."""
    job, t = _job(ratio)
    failing = round(ratio * rows)
    cut = pyarrow.concat_tables([_staged(failing), _staged(rows - failing, failing, bad=False)])
    chunks = [cut.slice(0, rows // 2), cut.slice(rows // 2)]  # failures in both chunks
    d = build_delta(job, t, Contract("orders", Orders), _Cut(chunks, limit=rows), ["1.1"], 1)
    assert d.quarantine.key_count() == failing
    assert d.upserts == rows - failing
    published = sum(delta_mod.read_parquet(p.data).num_rows for p in d.parts)
    assert published + failing == rows


@pytest.mark.parametrize("seed", range(3))
def test_every_row_is_published_held_or_the_batch_refused(seed):
    """Around the threshold, with the cut's limit its size and chunks of any size: the
    batch is refused exactly when the failing share is over the threshold, and otherwise
    every row is published or held (none dropped with its record)."""
    rnd = random.Random(seed)
    for _ in range(60):
        rows = rnd.randint(10, 300)
        ratio = rnd.choice([0.01, 0.05, 0.07, 0.1, 0.14, 0.29, 0.3, 0.57, 0.58, 0.9]) + rnd.choice([0, 0, 1e-9])
        failing = max(0, min(rows, round(ratio * rows) + rnd.choice([-1, 0, 0, 1])))
        cut = pyarrow.concat_tables([_staged(failing), _staged(rows - failing, failing, bad=False)])
        bad = sorted(rnd.sample(range(rows), failing))  # failing rows anywhere in the cut
        order = bad + [i for i in range(rows) if i not in set(bad)]
        cut = cut.take(pyarrow.array(sorted(range(rows), key=order.index)))
        size = rnd.randint(1, rows)
        chunks = [cut.slice(s, size) for s in range(0, rows, size)]
        job, t = _job(ratio)
        try:
            d = build_delta(job, t, Contract("orders", Orders), _Cut(chunks, limit=rows), ["1.1"], 1)
        except ContractViolation:
            assert failing / rows > ratio, (rows, ratio, failing)
            continue
        assert not failing / rows > ratio, (rows, ratio, failing)
        published = sum(delta_mod.read_parquet(p.data).num_rows for p in d.parts)
        assert (published, d.quarantine.key_count()) == (rows - failing, failing)


@pytest.mark.integration
def test_no_progress_bar_on_stdout_from_deltaferry_s_databases(tmp_path):
    """DuckDB draws a progress bar on stdout for a query over 2 s, even into a pipe: a plan
    step of a large batch and a long ``quarantine list`` left ``100% ▕███▏`` lines in the
    tab-separated output (a fresh-user trial). Every connection that does long work has
    it off: deltaferry's database files, the key count, the content filter, and dlt's
    connections to staging. Checked in a child process run with ``-c``, where DuckDB's
    default is the bar on (under pytest, or from a script file, it starts off)."""
    import subprocess
    import sys

    script = """
import duckdb, sys
from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig
from sources.change_detection import ChangedRows
from sources.integrity import KeyCheck
from sources.pipeline import pipeline_for

def run(con, name):
    on = con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0]
    print(name, "bar" if on else "quiet", flush=True)

t = TableConfig("orders", ("id",), None, "none", "contracts.shop:Orders")
job = JobConfig("j", "sql_database", "sqlite://", "file:lake", (t,))
run(duckdb.connect(), "default")  # DuckDB's own, for a process run with -c: the bar on
run(duck.connect(sys.argv[1] + "/x.duckdb"), "file")
keys = KeyCheck(job, t)
run(keys._open(__import__("pathlib").Path(sys.argv[1]) / "keys.duckdb"), "keys")
run(ChangedRows(job, t).con, "changed")
pipeline, _ = pipeline_for(job)
with pipeline.sql_client() as client:
    run(client.native_connection, "dlt")
"""
    env = {**os.environ, "DELTAFERRY_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
        cwd=Path(__file__).resolve().parents[1], timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "default bar",  # so the check can see one left on
        "file quiet",
        "keys quiet",
        "changed quiet",
        "dlt quiet",
    ], done.stdout


def test_a_refusal_never_reads_as_at_the_threshold():
    """1,451 of 5,000 at a ratio of 0.29 said "(29.0%) … over the job's
    max_quarantine_ratio of 29.0%" (a fresh-user trial): the share gets the decimals that
    tell it from the limit."""
    from deltaferry.delta import _share

    assert _share(1451 / 5000, 0.29) == "29.02%"
    assert _share(2851 / 5000, 0.57) == "57.02%"
    assert _share(0.5, 0.05) == "50.0%"
