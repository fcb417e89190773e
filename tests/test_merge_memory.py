"""Several producers' replica tables hold no key index (``deltaferry/merge.py``): DuckDB
pins a PRIMARY KEY's index whole once a DELETE uses it, and it grows with the rows stored
(71 bytes a row for a 32-character text key), so an incremental batch into a large
several-producer table failed at any memory limit below the index, and a 2M-row first
batch with text keys failed at the default 256MB. Keys arriving as another type than the
stored one are one key (``merge_tables.key_expr`` with the stored types), and two winners
of one key are refused in one line (``resolve._refuse_two_winners``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from deltaferry import duck, merge, merge_tables
from deltaferry.errors import TerminalError

SHAPE = merge_tables.TableShape("job", "events", ["id"])


def _rows(ids: np.ndarray, tag: str, seq0: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([hashlib.md5(str(i).encode()).hexdigest() for i in ids]),
            "name": pa.array([f"{tag}-{i}" for i in ids]),
            "v": pa.array(ids, pa.int64()),
            "_op": pa.array(["upsert"] * len(ids)),
            "_seq": pa.array(np.arange(seq0, seq0 + len(ids)), pa.int64()),
        }
    )


def _constraints(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT table_name, constraint_type FROM duckdb_constraints()"
        " WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
        " AND table_name IN ('events', '_deltaferry_versions_events') ORDER BY ALL"
    ).fetchall()


def test_a_large_text_keyed_table_takes_a_change_within_a_small_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600,000 rows keyed by 32-character text, then 2,000 of them changed by another
    producer with the memory limit at 32MB: with the resolved table's PRIMARY KEY (before)
    the change failed at 48MB too (the index alone is about 40 MiB); without it the change
    applies, and every key still has one row, the other producer's."""
    n, k = 600_000, 2_000
    path = tmp_path / "replica.duckdb"
    con = duck.connect(path)
    con.execute(merge_tables.META)
    merge.apply_batch(con, SHAPE, "north", 1, 1_000, _rows(np.arange(n), "a"))
    con.close()

    monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", "32MB")
    changed = np.sort(np.random.default_rng(7).choice(np.arange(n), size=k, replace=False))
    con = duck.connect(path)
    assert merge.apply_batch(con, SHAPE, "south", 1, 2_000, _rows(changed, "b"))
    total, keys, south = con.execute(
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE _producer = 'south')"
        " FROM events"
    ).fetchone()
    assert (total, keys, south) == (n, n, k)
    assert _constraints(con) == []
    # each changed key's winner is the later producer's row, with its values
    wrong = con.execute(
        "SELECT count(*) FROM events WHERE (_producer = 'south') <> starts_with(name, 'b-')"
    ).fetchone()[0]
    assert wrong == 0
    con.close()


def _typed(ids: list, kind: pa.DataType, name: str) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, kind),
            "name": [name] * len(ids),
            "_op": ["upsert"] * len(ids),
            "_seq": pa.array(range(len(ids)), pa.int64()),
        }
    )


def test_a_key_a_producer_sends_as_another_type_is_the_same_key(tmp_path: Path) -> None:
    """One producer publishes the key as BIGINT, another as whole DOUBLEs (a REST source
    beside a SQL one). The replica stores the key as BIGINT; before, the second producer's
    ``1.0`` was a key text of its own, so its version of key 1 was no conflict with the
    first's and a later older version of ``1`` from the first producer took the key back.
    Now both are one key, rendered as the stored type: one row, the conflict recorded, the higher logical time wins
    in every arrival order."""
    north = _typed([1, 2], pa.int64(), "north")
    south = _typed([1.0, 3.0], pa.float64(), "south")
    north_again = _typed([1], pa.int64(), "north-late")  # stamped before south's batch
    items = [("north", 1, 1_000, north), ("south", 1, 3_000, south), ("north", 2, 2_000, north_again)]
    results = set()
    for order in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        con = duck.connect(tmp_path / f"r{''.join(map(str, order))}.duckdb")
        con.execute(merge_tables.META)
        for i in order:
            producer, batch, stamp, data = items[i]
            merge.apply_batch(con, SHAPE, producer, batch, stamp, data)
        rows = con.execute("SELECT id, name, _producer FROM events ORDER BY id").fetchall()
        keys = con.execute(
            "SELECT DISTINCT _key FROM _deltaferry_versions_events ORDER BY _key"
        ).fetchall()
        conflicts = con.execute(
            "SELECT key, winner_producer, loser_producer FROM _deltaferry_conflicts ORDER BY ALL"
        ).fetchall()
        con.close()
        # one text a key: the stored type's (the first batch applied decides it: 1 or 1.0)
        assert len(keys) == 3, keys
        # the key's text is the stored type's: compared as a number
        results.add((tuple(rows), tuple((float(k), w, lo) for k, w, lo in conflicts)))
    assert len(results) == 1
    rows, conflicts = results.pop()
    assert rows == ((1, "south", "south"), (2, "north", "north"), (3, "south", "south"))
    assert (1.0, "south", "north") in conflicts


def test_two_key_texts_of_one_key_are_refused_in_one_line(tmp_path: Path) -> None:
    """A replica whose versions of one key were stored under two texts (by a deltaferry
    before typed key texts): a batch that touches both would give the table the key twice
    (a PRIMARY KEY refused that as a constraint error). It is refused naming job, table and
    key, and nothing of it is applied."""
    con = duck.connect(tmp_path / "r.duckdb")
    con.execute(merge_tables.META)
    merge.apply_batch(con, SHAPE, "north", 1, 1_000, _typed([1, 2], pa.int64(), "north"))
    # what the older rendering stored for a producer's DOUBLE key 1.0
    con.execute("UPDATE _deltaferry_versions_events SET _key = '1.0' WHERE id = 1")
    before = con.execute("SELECT * FROM events ORDER BY id").fetchall()
    assert merge.begin_batch(con, SHAPE, "south", 1)
    merge.add_versions(con, SHAPE, "south", 1, 3_000, _typed([1], pa.int64(), "south"))
    con.execute("INSERT INTO _deltaferry_touched VALUES ('1.0')")  # a batch touching both
    with pytest.raises(TerminalError) as e:
        merge.finish_batch(con, SHAPE, "south", 1, 3_000, 1, False)
    message = str(e.value)
    assert "\n" not in message
    assert "job 'job' table 'events': key id=1 has 2 winners" in message
    assert "'1', '1.0'" in message
    con.execute("ROLLBACK")
    assert con.execute("SELECT * FROM events ORDER BY id").fetchall() == before
    assert merge.applied(con, "job", "events", "south") == (0, None, None)
    con.close()


def test_a_replica_made_with_the_key_constraint_goes_on_as_it_is(tmp_path: Path) -> None:
    """A resolved table made by an earlier deltaferry keeps its PRIMARY KEY (DuckDB cannot
    drop one): later batches, one with a new column, apply to it as before."""
    con = duck.connect(tmp_path / "r.duckdb")
    con.execute(merge_tables.META)
    merge.apply_batch(con, SHAPE, "north", 1, 1_000, _typed([1, 2], pa.int64(), "north"))
    con.execute(
        "CREATE TABLE events2 (id BIGINT, name VARCHAR, _seq BIGINT, _producer VARCHAR,"
        " _hlc BIGINT, PRIMARY KEY (id))"
    )
    con.execute("INSERT INTO events2 SELECT id, name, _seq, _producer, _hlc FROM events")
    con.execute("DROP TABLE events")
    con.execute("ALTER TABLE events2 RENAME TO events")
    assert _constraints(con) == [("events", "PRIMARY KEY")]
    more = _typed([2, 3], pa.int64(), "south").append_column("extra", pa.array(["x", "y"]))
    assert merge.apply_batch(con, SHAPE, "south", 1, 2_000, more)
    rows = con.execute("SELECT id, name, extra, _producer FROM events ORDER BY id").fetchall()
    assert rows == [(1, "north", None, "north"), (2, "south", "x", "south"), (3, "south", "y", "south")]
    con.close()


def test_a_negative_zero_key_is_the_key_zero(tmp_path: Path) -> None:
    """DOUBLE keys: -0.0 equals 0.0 but prints as '-0.0'; rendered as two key texts, they
    shared one row whose winner was the last applied, with no conflict (a fresh-user
    trial). One key now, in either arrival order: the later logical time wins."""
    north = _typed([-0.0], pa.float64(), "north")
    south = _typed([0.0], pa.float64(), "south")
    seen = set()
    for order in ((("north", 2_000, north), ("south", 1_000, south)),
                  (("south", 1_000, south), ("north", 2_000, north))):  # fmt: skip
        con = duck.connect(tmp_path / f"{order[0][0]}.duckdb")
        con.execute(merge_tables.META)
        for producer, stamp, data in order:
            merge.apply_batch(con, SHAPE, producer, 1, stamp, data)
        keys = con.execute("SELECT DISTINCT _key FROM _deltaferry_versions_events").fetchall()
        rows = con.execute("SELECT name, _producer FROM events").fetchall()
        conflicts = con.execute("SELECT count(*) FROM _deltaferry_conflicts").fetchone()[0]
        con.close()
        assert keys == [("0.0",)]
        seen.add((tuple(rows), conflicts))
    assert seen == {((("north", "north"),), 1)}
