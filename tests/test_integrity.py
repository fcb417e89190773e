"""``sources/integrity.py:KeyCheck``: keys counted across the chunks of one extraction in a
temporary DuckDB file of the job's home (memory bounded, spilled to disk), a repeated key
named, and nothing left behind once closed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from deltaferry.job import JobConfig, TableConfig
from sources.integrity import KeyCheck


@pytest.fixture
def check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyCheck:
    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path))
    t = TableConfig(
        name="events", primary_key=("id", "part"), cursor=None, deletes="none", contract="m:C"
    )
    job = JobConfig(
        name="keys", source="sql_database", url="sqlite://", lake="file:///x", tables=(t,)
    )
    return KeyCheck(job, t)


def _chunk(ids: list[int], parts: list[str]) -> pa.Table:
    return pa.table({"id": ids, "part": parts, "v": [0.5] * len(ids)})


def test_keys_repeated_across_chunks_are_named(check: KeyCheck, tmp_path: Path):
    check.note(_chunk([1, 2, 3], ["a", "a", "a"]))
    check.note(_chunk([3, 4, 3], ["b", "a", "a"]))
    assert list((tmp_path / "keys" / "tmp").glob("keys-*.duckdb"))  # counted on disk
    message = check.duplicates()
    assert message is not None
    assert "job 'keys' table 'events'" in message
    assert "1 key value(s)" in message and "id=3, part='a' (2 rows)" in message
    check.close()
    assert not list((tmp_path / "keys" / "tmp").iterdir())  # the counting file is gone
    assert check.duplicates() is None  # counts dropped with it


def test_unique_keys_pass_and_close_is_idempotent(check: KeyCheck):
    check.note(_chunk([], []))
    assert check.duplicates() is None  # nothing counted yet
    for start in range(0, 20_000, 5_000):
        check.note(_chunk(list(range(start, start + 5_000)), ["x"] * 5_000))
    assert check.duplicates() is None
    check.close()
    check.close()
