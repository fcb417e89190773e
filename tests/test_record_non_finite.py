"""NaN and infinities in records (a scaffolded record source, a REST API): dlt writes them as
NULL, so a record holding one was staged and published with NULL in its place and exit 0.
Now such a record is held back in the quarantine (check ``value fits``), naming the field
and what it held, and the rest of the read goes on; a batch that later publishes the key
(the source fixed the value) resolves the record. The oracle is the records as written."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sources.integrity import non_finite_field
from tests.test_record_cost import _job
from tests.test_rest_api import _ops, _rows, _ts, api_job, items_job  # noqa: F401 - fixtures

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("row", "nested", "expected"),
    [
        ({"id": 1, "x": 1.5, "y": None, "z": "NaN", "b": True}, True, None),  # text stays
        ({"id": 1, "x": NAN}, False, ("x", "NaN")),
        ({"id": 1, "x": 2.0, "y": -INF}, False, ("y", "-Infinity")),
        ({"id": 1, "x": INF}, False, ("x", "Infinity")),
        ({"id": 1, "d": Decimal("NaN")}, False, ("d", "NaN")),
        ({"id": 1, "d": Decimal("-Infinity")}, False, ("d", "-Infinity")),
        ({"id": 1, "d": Decimal("1e400")}, False, None),  # finite, however large
        ({"id": 1, "n": {"a": [1, {"b": NAN}]}}, True, ("n", "NaN at .a[1].b")),
        ({"id": 1, "n": {"a": [1, {"b": NAN}]}}, False, None),  # nested: the API's text
        ({"id": 1, "l": [0.0, -0.0, INF]}, True, ("l", "Infinity at [2]")),
        ({"id": 1, "t": (1.0, NAN)}, True, ("t", "NaN at [1]")),  # a driver's tuple
        ({"id": 1, "d": Decimal("sNaN")}, False, ("d", "NaN")),  # signalling: no comparison
        ({"id": 1, "d": Decimal("-NaN")}, False, ("d", "NaN")),
    ],
)
def test_the_first_field_holding_nan_or_an_infinity_is_named(
    row: dict[str, Any], nested: bool, expected: tuple[str, str] | None
) -> None:
    assert non_finite_field(row, nested) == expected


def test_a_record_source_holds_a_record_with_nan_and_stages_the_rest(
    tmp_path: Path, home: Path
) -> None:
    from sources.load import extract_records

    job = _job(tmp_path, cursor=True)  # table "things", key id, cursor "at", a loose contract
    source: dict[int, dict[str, Any]] = {
        i: {"id": i, "score": i / 4, "doc": {"w": [i, i / 2]}, "at": 1} for i in range(1, 9)
    }
    source[2]["score"] = NAN
    source[3]["score"] = -INF
    source[4]["doc"] = {"w": [1.0, INF]}
    source[5]["score"] = None  # a NULL is a NULL: staged as one

    def read(job: Any, t: Any, since: Any):  # noqa: ANN202
        yield [dict(r) for r in source.values() if since is None or r["at"] >= since]

    out = extract_records(job, read)
    held = {json.loads(h["pk"])["id"]: h for h in (out.held or {})["things"]}
    assert sorted(held) == [2, 3, 4]
    assert {i: (h["field"], h["check"]) for i, h in held.items()} == {
        2: ("score", "value fits"),
        3: ("score", "value fits"),
        4: ("doc", "value fits"),
    }
    assert "field score holds NaN in the source's record" in held[2]["reason"]
    assert "field doc holds Infinity at .w[1]" in held[4]["reason"]
    assert math.isinf(json.loads(held[3]["row_json"])["score"])  # the record as written
    con = duckdb.connect(str(home / "rec" / "staging.duckdb"), read_only=True)
    try:
        staged = dict(con.execute("SELECT id, score FROM raw.things").fetchall())
    finally:
        con.close()
    assert staged == {1: 0.25, 5: None, 6: 1.5, 7: 1.75, 8: 2.0}  # nothing held is staged

    # the source fixes two of them (their cursor moves): staged as written, not held
    # again; the third is read again (at the window's boundary) and held again
    source[2].update(score=0.5, at=2)
    source[4].update(doc={"w": [4, 2.0]}, at=2)
    out = extract_records(job, read)
    assert [json.loads(h["pk"]) for h in (out.held or {})["things"]] == [{"id": 3}]
    con = duckdb.connect(str(home / "rec" / "staging.duckdb"), read_only=True)
    try:
        staged = dict(con.execute("SELECT id, score FROM raw.things").fetchall())
    finally:
        con.close()
    assert staged[2] == 0.5 and 4 in staged and 3 not in staged


@pytest.mark.parametrize("parser", ["simplejson", "json"])
def test_an_api_record_with_nan_is_held_and_the_rest_published(
    items_job, api, monkeypatch, parser: str  # noqa: F811
) -> None:
    """Through the flow: the record is quarantined with its reason, the others reach the
    replica; once the API sends it with a number (and a newer cursor), it is published and
    its quarantine record resolved. NaN is no JSON number, but some APIs write it:
    ``requests`` parses with ``simplejson`` when it is installed (here), which refuses it
    unless asked, else with Python's own ``json``; both read it as a float
    (``numbers.exact_json``), so the record is held, not the whole response refused.
    ``parser`` is which one."""
    import requests.models

    from deltaferry.state import StateStore

    if parser == "json":
        monkeypatch.setattr(requests.models, "complexjson", json)
    api.items[4]["name"] = NAN  # json.dumps writes NaN: what such an API sends
    api.items[7]["name"] = -INF
    api.items[9]["name"] = INF
    api.items[2]["score"] = NAN  # a fourth reason: the run's line shows three
    out = items_job.sync()
    assert out["tables"]["items"]["rows"] == 6
    items_job.pull()
    assert [i for i, _ in _rows(items_job, "SELECT id, name FROM items ORDER BY id")] == [
        1, 3, 5, 6, 8, 10,
    ]  # fmt: skip
    (line,) = [d for _, d in _ops("held")]
    assert "4 source row(s) held back in quarantine: field name holds" in line
    assert line.endswith("; and 1 other reason(s): deltaferry quarantine list api")
    with StateStore("api").connect(read_only=True) as con:
        open_ = con.execute(
            'SELECT pk, field, "check", reason FROM quarantine WHERE resolved IS NULL ORDER BY pk'
        ).fetchall()
    assert [r[:3] for r in open_] == [
        ('{"id": 2}', "score", "value fits"),
        ('{"id": 4}', "name", "value fits"),
        ('{"id": 7}', "name", "value fits"),
        ('{"id": 9}', "name", "value fits"),
    ]
    assert "field name holds NaN in the API's record" in open_[1][3]
    assert "field name holds -Infinity in the API's record" in open_[2][3]

    api.items[4] = {"id": 4, "name": "item four", "updated_at": _ts(11)}
    out = items_job.sync()
    assert out["tables"]["items"]["rows"] == 1
    with StateStore("api").connect(read_only=True) as con:
        still = con.execute(
            "SELECT pk FROM quarantine WHERE resolved IS NULL ORDER BY pk"
        ).fetchall()
    assert still == [('{"id": 2}',), ('{"id": 7}',), ('{"id": 9}',)]
