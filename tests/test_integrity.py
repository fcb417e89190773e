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


def test_many_keys_in_random_order_are_counted_within_the_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The database that took the inserts kept part of them in its buffer pool, beyond the
    limit's reach (a block an insert): 50M integer keys in random order failed the count at 128MB (a 50M-row
    table could never sync), and 100M failed the inserts. Scaled down here: 24M keys at a
    64MB limit failed the count before the fix (the counting database is now opened again
    every ``REOPEN_INSERTS`` inserts and before the count)."""
    import numpy as np

    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path))
    monkeypatch.setattr(KeyCheck, "MEMORY_LIMIT", "64MB")
    monkeypatch.setattr(KeyCheck, "REOPEN_INSERTS", 32)
    t = TableConfig(name="big", primary_key=("id",), cursor=None, deletes="none", contract="m:C")
    job = JobConfig(
        name="keys", source="sql_database", url="sqlite://", lake="file:///x", tables=(t,)
    )
    check = KeyCheck(job, t)
    n, step = 24_000_000, 100_000
    for start in range(0, n, step):
        # an odd multiplier permutes 0..2^32-1: unique keys in a scattered order
        ids = (np.arange(start, start + step, dtype=np.uint64) * 2654435761) % (1 << 32)
        check.note(pa.table({"id": ids.astype(np.int64)}))
    assert check.duplicates() is None
    check.note(pa.table({"id": np.array([(7 * 2654435761) % (1 << 32)], dtype=np.int64)}))
    message = check.duplicates()
    assert message is not None and f"id={(7 * 2654435761) % (1 << 32)} (2 rows)" in message
    check.close()


def test_a_count_over_the_memory_limit_is_one_line_naming_job_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The fault path the key check claims: DuckDB cannot count the keys within its limit
    (3M keys at 20MB: the aggregate needs about 23 MiB) -> a TerminalError in one line naming
    job, table and the number of keys, not DuckDB's multi-line OutOfMemoryException."""
    import numpy as np

    from deltaferry.errors import TerminalError

    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path))
    monkeypatch.setattr(KeyCheck, "MEMORY_LIMIT", "20MB")
    monkeypatch.setattr(KeyCheck, "REOPEN_INSERTS", 8)
    t = TableConfig(name="big", primary_key=("id",), cursor=None, deletes="none", contract="m:C")
    job = JobConfig(
        name="keys", source="sql_database", url="sqlite://", lake="file:///x", tables=(t,)
    )
    check = KeyCheck(job, t)
    for start in range(0, 3_000_000, 100_000):
        ids = (np.arange(start, start + 100_000, dtype=np.uint64) * 2654435761) % (1 << 32)
        check.note(pa.table({"id": ids.astype(np.int64)}))
    with pytest.raises(TerminalError) as caught:
        check.duplicates()
    message = str(caught.value)
    assert "\n" not in message
    assert "job 'keys' table 'big': counting the 3,000,000 keys" in message
    assert "ran out of the key check's DuckDB memory (20MB" in message
    check.close()
