"""A source of records (a REST API, a scaffolded record source) costs what it read, not the
staged table: the change filter looks up the hashes of the records it read in staging
(``ChangedRows.staged_among``) and never reads every staged hash. Before, the first record
compared read every staged hash into a Python set (about 130 B a row: 124 MiB at 1M staged
rows, 6 GB at 50M) on every incremental run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

import sources.change_detection
from sources.change_detection import legacy_row_hash
from tests.test_rest_api import ITEMS_JOB, _items, api_job, items_job  # noqa: F401 - fixtures


def _count_lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Reading every staged hash fails the test; returns the sizes of the lookups made."""

    def whole(*_a: object, **_k: object) -> None:
        raise AssertionError("a record source read every staged hash")

    monkeypatch.setattr(sources.change_detection, "staged_hashes", whole)
    asked: list[int] = []
    real = sources.change_detection.staged_hashes_among

    def among(t, path, borrowed, hashes):  # noqa: ANN001, ANN202
        asked.append(len(hashes))
        return real(t, path, borrowed, hashes)

    monkeypatch.setattr(sources.change_detection, "staged_hashes_among", among)
    return asked


def test_an_incremental_api_read_looks_up_only_the_records_it_read(items_job, api, monkeypatch):  # noqa: F811
    out = items_job.sync()["tables"]["items"]
    assert out["rows"] == 10
    asked = _count_lookups(monkeypatch)

    # the boundary record comes back unchanged: nothing is published, nothing read whole
    assert items_job.sync()["tables"]["items"]["batch"] is None
    assert 0 < sum(asked) <= 2, asked  # the records the API sent again (the closed range)

    api.items[10]["name"] = "item ten"  # a change at the boundary, a new record after it
    api.items[11] = {"id": 11, "name": "item 11", "updated_at": api.items[10]["updated_at"]}
    asked.clear()
    out = items_job.sync()["tables"]["items"]
    assert out["rows"] == 2, out
    assert sum(asked) <= 3, asked
    assert _items(items_job) == [(i, f"item {i}") for i in range(1, 10)] + [
        (10, "item ten"),
        (11, "item 11"),
    ]


JOB = """
[jobs.rec]
source = "sql_database"
url = "sqlite:///{dir}/unused.db"
lake = "file:{dir}/lake"

[[jobs.rec.tables]]
name = "things"
primary_key = ["id"]
contract = "tests.support.contracts_sqltypes:Loose"
{cursor}
"""


def _job(tmp_path: Path, cursor: bool) -> Any:
    from deltaferry.config import load_job

    path = tmp_path / "jobs.toml"
    path.write_text(JOB.format(dir=tmp_path, cursor='cursor = "at"' if cursor else ""))
    return load_job("rec", path)


def _staged(job: Any) -> dict[int, tuple[Any, ...]]:
    from sources.staging import staging_path

    con = duckdb.connect(str(staging_path(job.name)), read_only=True)
    try:
        rows = con.execute("SELECT id, name, note, _df_hash FROM raw.things").fetchall()
    finally:
        con.close()
    return {r[0]: r[1:] for r in rows}


@pytest.mark.parametrize("cursor", [True, False], ids=["cursor", "whole-read"])
def test_a_record_source_stages_what_changed_looking_up_only_what_it_read(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, cursor: bool
) -> None:
    from sources.load import PAGE, extract_records

    n = 2 * PAGE + 500  # three lists of records: each looked up once
    source = {
        i: {"id": i, "name": f"n{i}", "note": None if i % 3 == 0 else "x", "at": i // 1000}
        for i in range(1, n + 1)
    }
    job = _job(tmp_path, cursor)
    read_at: list[int] = []

    def read(job: Any, t: Any, since: Any):  # noqa: ANN202
        out = [dict(r) for r in source.values() if since is None or r["at"] >= since]
        read_at.append(len(out))
        # pages of an odd size, and single records: what a source may yield
        head, tail = out[:-3], out[-3:]
        yield from (head[i : i + 777] for i in range(0, len(head), 777))
        yield from tail

    # the first load stages every record once, with the hashes written before null fields
    # were left out (an upgrade must still see them as unchanged)
    with monkeypatch.context() as m:
        m.setattr(sources.change_detection, "row_hash", legacy_row_hash)
        out = extract_records(job, read)
    assert out.rows_by_table["things"] == n, out
    staged = _staged(job)
    assert len(staged) == n and staged[3][:2] == ("n3", None)

    asked = _count_lookups(monkeypatch)
    out = extract_records(job, read)  # nothing changed
    assert out.rows_by_table["things"] == 0, out
    assert sum(asked) <= 2 * read_at[-1], (asked, read_at)  # current and old hashes only
    assert max(asked) <= PAGE + PAGE // 3 + 1  # one list's hashes at a time, never the table
    # the unchanged records staged with an old hash now carry their current one
    probe = max(i for i in source if i % 3 == 0)  # read again in both modes
    assert _staged(job)[probe][2] == sources.change_detection.row_hash(source[probe])

    source[n]["name"] = "changed"  # at the cursor's boundary
    source[n + 1] = {"id": n + 1, "name": "new", "note": None, "at": source[n]["at"]}
    source[5]["note"] = None  # an old record: seen only by a whole read
    asked.clear()
    out = extract_records(job, read)
    assert out.rows_by_table["things"] == (3 if not cursor else 2), out
    assert sum(asked) <= 2 * read_at[-1], (asked, read_at)
    staged = _staged(job)
    assert staged[n][0] == "changed" and staged[n + 1][:2] == ("new", None)
    assert staged[5][1] == (None if not cursor else "x")
    assert len(staged) == n + 1


def test_a_record_source_refuses_a_key_read_twice_and_keeps_minus_zero(
    tmp_path: Path, home: Path
) -> None:
    from deltaferry.errors import ConfigError
    from sources.load import PAGE, extract_records

    job = _job(tmp_path, cursor=False)
    source: list[dict[str, Any]] = [
        {"id": i, "name": f"n{i}", "note": "x", "at": -0.0 if i == 7 else float(i)}
        for i in range(1, PAGE + 50)
    ]

    def read(job: Any, t: Any, since: Any):  # noqa: ANN202
        yield from (dict(r) for r in source)

    assert extract_records(job, read).rows_by_table["things"] == len(source)
    con = duckdb.connect(str(home / "rec" / "staging.duckdb"), read_only=True)
    try:  # -0.0 staged as written (dlt's SQL insert statements made it 0.0)
        assert con.execute('SELECT CAST("at" AS VARCHAR) FROM raw.things WHERE id = 7').fetchall() == [
            ("-0.0",)
        ]
    finally:
        con.close()

    # the same key twice in one read (in two of its lists): the run stops naming it, and
    # nothing of it is staged
    source[3]["name"] = "changed"
    source.append({"id": 12, "name": "again", "note": "x", "at": 12.0})
    with pytest.raises(ConfigError) as e:
        extract_records(job, read)
    assert "job 'rec' table 'things'" in str(e.value) and "id='12' (2 rows)" in str(e.value)
    assert _staged(job)[4][0] == "n4" and _staged(job)[12][0] == "n12"
    source.pop()  # fixed at the source: the change goes through
    assert extract_records(job, read).rows_by_table["things"] == 1
    assert _staged(job)[4][0] == "changed"


@pytest.mark.parametrize(
    "first, second",
    [(1, 1.0), (7, "7"), (-0.0, 0.0), (2**53, float(2**53))],
    ids=["int-float", "int-text", "minus-zero", "2^53"],
)
def test_keys_staging_would_make_one_are_one_key(first: Any, second: Any) -> None:
    """Keys are counted as staging keys them: two records whose keys become one staged key
    (1 and 1.0 in a BIGINT column; 7 and "7") are a key read twice (with dlt's dedup off,
    both rows were staged under one key: a fresh-user trial)."""
    from sources.load import key_text

    assert key_text(first) == key_text(second)
    assert key_text(1.5) != key_text(15) and key_text("007") != key_text(7)


def test_a_record_source_refuses_keys_that_become_one_and_ints_beyond_64_bits(
    tmp_path: Path, home: Path
) -> None:
    from deltaferry.errors import ConfigError, TerminalError
    from sources.load import extract_records

    job = _job(tmp_path, cursor=False)
    source: list[dict[str, Any]] = [{"id": 1, "name": "a"}, {"id": 1.0, "name": "b"}]

    def read(job: Any, t: Any, since: Any):  # noqa: ANN202
        yield from (dict(r) for r in source)

    with pytest.raises(ConfigError, match=r"table 'things'.*id='1' \(2 rows\)"):
        extract_records(job, read)
    source[:] = [{"id": 1, "name": "a", "n": 2**63}]
    with pytest.raises(TerminalError) as e:
        extract_records(job, read)
    assert str(e.value) == (
        "job 'rec' table 'things': record {\"id\": 1} field 'n' value 9223372036854775808 does "
        "not fit a 64-bit integer, which staging keeps; send it as text (or a Decimal) from "
        "the source; nothing of the read is staged"
    )
    source[:] = [{"id": 1, "name": "a", "n": 2**63 - 1}, {"id": 2, "name": "b", "n": -(2**63)}]
    assert extract_records(job, read).rows_by_table["things"] == 2


@pytest.mark.parametrize("null_cursor", ["include", "quarantine"])
def test_a_record_source_holds_unkeyed_records_and_stages_or_holds_null_cursors(
    tmp_path: Path, home: Path, null_cursor: str
) -> None:
    """What the scaffolded ``read_records`` yields on purpose (a record without a cursor
    value) failed the run with dlt's own advice, naming no table (a fresh-user trial); a
    record without a key stopped the whole run where the other sources hold it back."""
    from deltaferry.quarantine import UNKEYED
    from sources.load import extract_records

    path = tmp_path / "jobs.toml"
    path.write_text(
        JOB.format(dir=tmp_path, cursor=f'cursor = "at"\nnull_cursor = "{null_cursor}"')
    )
    from deltaferry.config import load_job

    job = load_job("rec", path)
    source = [
        {"id": 1, "name": "a", "note": "x", "at": 1},
        {"id": 2, "name": "b", "note": "x", "at": None},
        {"id": 3, "name": "c", "note": "x"},  # no cursor field at all
        {"id": None, "name": "d", "note": "x", "at": 2},
        {"name": "e", "note": "x", "at": 3},  # no key field at all
    ]

    def read(job: Any, t: Any, since: Any):  # noqa: ANN202
        for r in source:
            if since is None or r.get("at") is None or r["at"] >= since:
                yield dict(r)

    out = extract_records(job, read)
    staged = _staged(job)
    held = out.held["things"]
    unkeyed = [h for h in held if h["check"] == UNKEYED]
    assert [json.loads(h["row_json"])["name"] for h in unkeyed] == ["d", "e"]
    assert all(h["field"] == "id" and "primary key" in h["reason"] for h in unkeyed)
    if null_cursor == "include":
        assert sorted(staged) == [1, 2, 3] and len(held) == 2
    else:
        assert sorted(staged) == [1]
        cursorless = [h for h in held if h["field"] == "at"]
        assert [json.loads(h["pk"]) for h in cursorless] == [{"id": 2}, {"id": 3}]
        assert all("null_cursor" in h["reason"] for h in cursorless)
