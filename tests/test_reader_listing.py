"""The reader's memory and listings (issue 16): Arrow tables handed to DuckDB inside a long
transaction are released statement by statement, the replica's connections have a bounded
``memory_limit``, ``verify`` checks every file's ``_seq`` and can start from a known
position, and reads of a chain's head, of the override log and of another producer's chain
list from a known position (``StartAfter``) instead of the whole chain. Lakes are written
directly through the store API (``bench/lake_build.py``), on the file store."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # lake_build, and bench_contract for its contract

import lake_build  # noqa: E402

from deltaferry.errors import ConfigError, VerificationError  # noqa: E402
from destinations.lake import FileLakeStore  # noqa: E402
from destinations.manifest import manifest_key, overrides_prefix  # noqa: E402
from tests.support.spy import ListingSpy  # noqa: E402

JOB, TABLE = "bench", "events"


@pytest.fixture
def lake(tmp_path: Path) -> FileLakeStore:
    return FileLakeStore(str(tmp_path / "lake"))


def test_with_arrow_keeps_no_table_for_the_rest_of_the_transaction() -> None:
    """A table read by ``with_arrow`` is released when its statement ends, though the
    transaction goes on (``register`` keeps every registered table until the transaction
    ends, so a batch applied file by file would hold the whole batch)."""
    from deltaferry.duck import ARROW, with_arrow

    con = duckdb.connect()
    con.execute("CREATE TABLE x (a BIGINT)")
    gc.collect()
    base = pa.total_allocated_bytes()
    con.execute("BEGIN TRANSACTION")
    for _ in range(3):
        data = pa.table({"a": pa.array(range(200_000), pa.int64())})
        with_arrow(con, data, f"INSERT INTO x SELECT a FROM {ARROW}")
        del data
        gc.collect()
        assert pa.total_allocated_bytes() - base < 1_000_000
    assert with_arrow(
        con, pa.table({"a": [1, 2]}), f"SELECT count(*) FROM x WHERE a IN (SELECT a FROM {ARROW})"
    ).fetchall() == [(6,)]
    con.execute("COMMIT")
    assert con.execute("SELECT count(*) FROM x").fetchone() == (600_000,)


def test_replica_connections_have_a_bounded_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltaferry import duck

    monkeypatch.delenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", raising=False)
    path = tmp_path / "r.duckdb"
    con = duck.connect(path)
    try:
        duck.configure(con, path)
        setting = "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        assert con.execute(setting).fetchone() == ("244.1 MiB", f"{path}.tmp")  # 256MB
        monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", "1GiB")
        duck.configure(con)
        assert con.execute(setting).fetchone()[0] == "1.0 GiB"
        monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", "lots")
        with pytest.raises(ConfigError, match="DELTAFERRY_DUCKDB_MEMORY_LIMIT='lots'"):
            duck.configure(con)
    finally:
        con.close()


def test_verify_reads_the_seq_of_every_file(lake: FileLakeStore) -> None:
    """``verify`` checks each file's ``_seq`` values against the manifest's range (before,
    only a pull did), and every copy's files."""
    from deltaferry.delta import _encode
    from deltaferry.verify import verify_table
    from destinations.manifest import data_key

    head, sha = lake_build.build_chain(lake, JOB, TABLE, 3)
    assert verify_table(lake, JOB, TABLE) == (3, 3)
    part = _encode(lake_build.events(4, 1, 99))  # row 4 carrying _seq 99
    key = data_key(JOB, TABLE, 4, 0, part.sha256)
    lake.put(key, part.data)
    raw = lake_build._manifest(
        JOB, TABLE, 4, sha, lake_build.contract_ref(), [part.data_file(key)], 4, 1
    )
    lake.put_if_absent(manifest_key(JOB, TABLE, 4), raw)
    with pytest.raises(VerificationError, match="batch 4: _seq values do not match"):
        verify_table(lake, JOB, TABLE)


def test_verify_from_a_known_position_lists_and_reads_only_what_follows(
    lake: FileLakeStore,
) -> None:
    from deltaferry.verify import verify_table

    _, sha2 = lake_build.build_chain(lake, JOB, TABLE, 2)
    lake_build.build_chain(lake, JOB, TABLE, 5, first=3, prev=sha2)
    spy = ListingSpy(lake)
    assert verify_table(spy, JOB, TABLE, after=2, prev_sha256=sha2) == (3, 3)
    (listed,) = spy.calls
    assert listed[1] == manifest_key(JOB, TABLE, 2)
    assert [k.rsplit("/", 1)[-1] for k in listed[2]] == [f"{b:012d}.json" for b in (3, 4, 5)]
    with pytest.raises(VerificationError, match="batch 3: chain broken"):
        verify_table(lake, JOB, TABLE, after=2, prev_sha256="0" * 64)
    assert verify_table(lake, JOB, TABLE, after=5, prev_sha256="0" * 64) == (0, 0)


def test_a_head_read_lists_from_a_known_position(lake: FileLakeStore) -> None:
    from deltaferry.verify import head_batch, lake_head

    lake_build.build_chain(lake, JOB, TABLE, 6)
    spy = ListingSpy(lake)
    assert head_batch(spy, JOB, TABLE, at_least=4) == 6
    assert [(a, len(keys)) for _, a, keys in spy.calls] == [(manifest_key(JOB, TABLE, 3), 3)]
    assert lake_head(lake, JOB, TABLE, at_least=6)[0] == 6
    # a lost tip: the position's manifest is gone, so the whole chain names the real head
    spy.calls.clear()
    assert head_batch(spy, JOB, TABLE, at_least=9) == 6
    assert [a for _, a, _ in spy.calls] == [manifest_key(JOB, TABLE, 8), None]


def test_the_override_log_is_listed_after_the_entries_applied(lake: FileLakeStore) -> None:
    from deltaferry.overrides import numbers

    for n in range(1, 6):
        lake.put(f"{overrides_prefix(JOB, TABLE)}{n:012d}.json", b"{}")
    spy = ListingSpy(lake)
    assert numbers(spy, JOB, TABLE, after=3) == [4, 5]
    assert spy.calls[0][1] == f"{overrides_prefix(JOB, TABLE)}{3:012d}.json"
    assert numbers(lake, JOB, TABLE) == [1, 2, 3, 4, 5]


def test_another_producers_head_is_read_from_the_head_seen_last(
    lake: FileLakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer's read of another producer's head (its logical time) lists that chain
    from the head this home saw last, kept in ``seen_heads.json``; a chain that lost its
    tip is listed whole."""
    from deltaferry.producers import _chain_head

    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path / "home"))
    _, sha = lake_build.build_chain(lake, JOB, TABLE, 4, producer="south")
    spy = ListingSpy(lake)
    logged: list[str] = []
    ctx = SimpleNamespace(
        job=SimpleNamespace(name=JOB),
        lake=spy,
        keyring=None,
        run_id="r",
        state=SimpleNamespace(log=lambda *a, **k: logged.append(k.get("detail", ""))),
    )
    t = SimpleNamespace(name=TABLE)
    assert _chain_head(ctx, t, "south") == 4  # type: ignore[arg-type]
    assert [a for _, a, _ in spy.calls] == [None]
    lake_build.build_chain(lake, JOB, TABLE, 6, producer="south", first=5, prev=sha)
    spy.calls.clear()
    assert _chain_head(ctx, t, "south") == 6  # type: ignore[arg-type]
    assert [(a, len(k)) for _, a, k in spy.calls] == [
        (manifest_key(JOB, TABLE, 3, "south"), 3)
    ]
    for b in (5, 6):  # the tip is lost
        (Path(lake.root) / manifest_key(JOB, TABLE, b, "south")).unlink()
    spy.calls.clear()
    assert _chain_head(ctx, t, "south") == 4  # type: ignore[arg-type]
    assert [a for _, a, _ in spy.calls] == [manifest_key(JOB, TABLE, 5, "south"), None]
    assert not logged


def _rows(keys: list[int], seqs: list[int], ops: list[str], values: list[str]) -> pa.Table:
    n = len(keys)
    return pa.table({"k 1": keys, "k2": [1] * n, "v": values, "_op": ops, "_seq": seqs})


def test_merge_rows_newer_seq_wins_and_again_changes_nothing() -> None:
    """The merge joins the file's keys with the table (its set of shared keys first): an
    older change is ignored, a newer delete removes the key, a new key is inserted, a newer
    upsert replaces; odd names and a two-column key included."""
    from deltaferry.replica_apply import merge_rows

    con = duckdb.connect()
    table, pk = 'odd "tbl" name', ["k 1", "k2"]
    sql = 'SELECT * FROM "odd ""tbl"" name" ORDER BY 1'
    merge_rows(con, table, pk, _rows([1, 2, 3], [1, 2, 3], ["upsert"] * 3, ["a", "b", "c"]))
    change = _rows([1, 2, 4, 3], [0, 5, 6, 9], ["upsert", "delete", "upsert", "upsert"],
                   ["old", "x", "d", "c2"])  # fmt: skip
    con.execute("BEGIN TRANSACTION")
    merge_rows(con, table, pk, change)
    con.execute("COMMIT")
    expected = [(1, 1, "a", 1), (3, 1, "c2", 9), (4, 1, "d", 6)]
    assert con.execute(sql).fetchall() == expected
    merge_rows(con, table, pk, change)
    assert con.execute(sql).fetchall() == expected
    assert not duck_tables(con, "_deltaferry_stored")


def duck_tables(con: duckdb.DuckDBPyConnection, name: str) -> list:
    return con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE table_name = ?", [name]
    ).fetchall()


def test_a_first_batch_is_inserted_without_the_merge() -> None:
    """A table absent or empty when the batch begins takes its files' upserts as inserts
    (no join reads the rows the batch's earlier files inserted); a table with rows goes
    through the merge. Decided once per batch, by ``merge_into``."""
    from deltaferry.job import TableConfig
    from deltaferry.replica_apply import merge_into

    t = TableConfig(
        name="t", primary_key=("k 1", "k2"), cursor=None, deletes="none", contract="x:Y"
    )
    from deltaferry.errors import TerminalError

    con = duckdb.connect()
    con.execute("BEGIN TRANSACTION")
    first = merge_into(con, t, "j")
    assert first.fresh
    first(_rows([1, 2], [1, 2], ["upsert"] * 2, ["a", "b"]))
    first(_rows([3], [3], ["upsert"], ["c"]))
    first(_rows([1], [4], ["upsert"], ["a2"]))  # no merge: inserted, then found at the end
    with pytest.raises(TerminalError, match=r"job 'j' table 't' batch 7: .*key \(k 1=1, k2=1\) 2 times"):
        first.finish(7)
    con.execute("ROLLBACK")
    # no PRIMARY KEY on the replica's table: DuckDB would pin its index at every commit
    con.execute("BEGIN TRANSACTION")
    first = merge_into(con, t, "j")
    first(_rows([1, 2, 3], [1, 2, 3], ["upsert"] * 3, ["a", "b", "c"]))
    first.finish(1)
    assert not con.execute(
        "SELECT * FROM duckdb_constraints() WHERE table_name = 't' AND constraint_type = 'PRIMARY KEY'"
    ).fetchall()
    later = merge_into(con, t, "j")
    assert not later.fresh
    later(_rows([1, 2], [4, 5], ["upsert", "delete"], ["a2", "b"]))
    later(_rows([3], [6], ["upsert"], ["c2"]))
    later.finish(2)
    assert con.execute('SELECT "k 1", v FROM t ORDER BY 1').fetchall() == [(1, "a2"), (3, "c2")]
    later = merge_into(con, t, "j")  # a key twice in a batch that merges: found as well
    later(_rows([3], [7], ["upsert"], ["c3"]))
    later(_rows([3], [8], ["delete"], ["c3"]))
    with pytest.raises(TerminalError, match="batch 3: "):
        later.finish(3)
    con.execute("ROLLBACK")


def test_running_out_of_the_memory_limit_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deltaferry import duck
    from deltaferry.errors import TerminalError

    monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", "16MB")
    con = duckdb.connect()
    duck.configure(con)
    con.execute("BEGIN TRANSACTION")
    with pytest.raises(duckdb.Error) as caught:
        con.execute("SELECT list(range) FROM range(10000000) GROUP BY range % 1000000").fetchall()
    error = duck.over_limit(caught.value, "job 'j' table 't' batch 3")
    assert isinstance(error, TerminalError)
    assert "job 'j' table 't' batch 3: DuckDB ran out of its memory limit" in str(error)
    assert "Raise DELTAFERRY_DUCKDB_MEMORY_LIMIT (now 16MB)" in str(error)
    other = ValueError("x")
    assert duck.over_limit(other, "w") is other
    duck.rollback(con)
    duck.rollback(con)  # no transaction open: nothing

