"""Several producers of one table: the merge rule, conflict records and overrides.

The property tests drive the replica's merge (``deltaferry/merge.py``) directly with
generated producer batches and compare it against a small reference model written
here; the end-to-end tests (``test_two_producers_*``) publish from two real producers
to an S3 server and pull.
"""

from __future__ import annotations

import json
import random

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaferry import hlc, merge

PRODUCERS = ["north", "south", "west"]
SHAPE = merge.TableShape("shop", "items", ["id"])


def _batch(rows: list[tuple[int, str, str | None]], seq0: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "name": pa.array([r[2] for r in rows], pa.string()),
            "_op": pa.array([r[1] for r in rows]),
            "_seq": pa.array(range(seq0, seq0 + len(rows)), pa.int64()),
        }
    )


@st.composite
def histories(draw):  # noqa: ANN001, ANN201
    """Batches of up to three producers (logical times may tie across producers), and
    override entries."""
    batches = []
    for p in PRODUCERS[: draw(st.integers(1, 3))]:
        n = draw(st.integers(1, 4))
        stamps = sorted(draw(st.lists(st.integers(1, 12), min_size=n, max_size=n, unique=True)))
        seq = 1
        for i, stamp in enumerate(stamps, 1):
            keys = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4, unique=True))
            rows = [
                (
                    k,
                    op := draw(st.sampled_from(["upsert", "upsert", "delete"])),
                    None if op == "delete" else draw(st.sampled_from(["x", "y", "z"])),
                )
                for k in keys
            ]
            batches.append(("batch", p, i, stamp, rows, seq))
            seq += len(rows)
    overrides = []
    for n in range(1, draw(st.integers(0, 3)) + 1):
        kind = draw(st.sampled_from(["producer", "value", "delete", "remove"]))
        entry = {"n": n, "key": str(draw(st.integers(1, 5))), "action": "pin"}
        if kind == "producer":
            entry["producer"] = draw(st.sampled_from(PRODUCERS))
        elif kind == "value":
            entry["value"] = {"name": draw(st.sampled_from(["manual-1", "manual-2"]))}
        elif kind == "delete":
            entry["delete"] = True
        else:
            entry["action"] = "remove"
        overrides.append(("override", entry))
    return batches, overrides


def _apply_all(items: list) -> tuple[list, list]:  # noqa: ANN001
    con = duckdb.connect()
    con.execute(merge.META)
    for item in items:
        if item[0] == "batch":
            _, p, b, stamp, rows, seq = item
            merge.apply_batch(con, SHAPE, p, b, stamp, _batch(rows, seq))
        else:
            merge.apply_override(con, SHAPE, item[1])
    table = (
        con.execute("SELECT id, name, _producer, _hlc FROM items ORDER BY id").fetchall()
        if merge._columns(con, "items")
        else []
    )
    conflicts = merge.conflict_rows(con, "shop")
    con.close()
    return table, conflicts


def _reference(batches: list, overrides: list) -> tuple[list, set]:  # noqa: ANN001
    """What the README's rule says, computed the plain way."""
    versions: dict[int, list] = {}
    for _, p, b, stamp, rows, _ in batches:
        for k, op, name in rows:
            versions.setdefault(k, []).append((stamp, p, b, op, name))
    active: dict[str, dict] = {}
    for _, e in sorted(overrides, key=lambda o: o[1]["n"]):
        active[e["key"]] = e
    table, conflicts = [], set()
    for k, vs in sorted(versions.items()):
        vs.sort(key=lambda v: (v[0], v[1]))
        for prev, cur in zip(vs, vs[1:], strict=False):
            if prev[1] != cur[1] and (prev[3], prev[4]) != (cur[3], cur[4]):
                rule = (
                    "later logical time"
                    if cur[0] > prev[0]
                    else "same logical time: higher producer id"
                )
                conflicts.add((str(k), cur[1], cur[2], prev[1], prev[2], rule))
        auto = vs[-1]
        winner, rule = auto, None
        e = active.get(str(k))
        if e is not None and e["action"] == "pin":
            if e.get("producer"):
                mine = [v for v in vs if v[1] == e["producer"]]
                if mine:
                    winner, rule = mine[-1], f"manual override #{e['n']}"
            else:
                op = "delete" if e.get("delete") else "upsert"
                name = None if op == "delete" else e["value"]["name"]
                winner, rule = (None, "override", None, op, name), f"manual override #{e['n']}"
        if rule and (winner[1], winner[2]) != (auto[1], auto[2]):
            conflicts.add((str(k), winner[1], winner[2], auto[1], auto[2], rule))
        if winner[3] == "upsert":
            table.append((k, winner[4], winner[1], winner[0]))
    return table, conflicts


def _conflict_keys(rows: list) -> set:  # noqa: ANN001
    return {(r[1], r[2], r[3], r[7], r[8], r[12]) for r in rows}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.randoms(use_true_random=False))
def test_every_arrival_order_with_duplicates_gives_the_same_replica_and_conflicts(
    history, rng: random.Random
) -> None:
    batches, overrides = history
    items = batches + overrides
    first = _apply_all(items)
    shuffled = list(items)
    rng.shuffle(shuffled)
    for _ in range(rng.randint(1, 3)):  # deliveries arrive twice
        shuffled.insert(rng.randrange(len(shuffled) + 1), rng.choice(items))
    again = _apply_all(shuffled)
    assert again == first
    table, conflicts = _reference(batches, overrides)
    assert first[0] == table
    assert _conflict_keys(first[1]) == conflicts
    assert len(first[1]) == len(conflicts)  # no record twice


def test_a_late_older_update_does_not_resurrect_a_delete() -> None:
    table, conflicts = _apply_all(
        [
            ("batch", "north", 1, 10, [(1, "upsert", "a"), (2, "upsert", "b")], 1),
            ("batch", "north", 2, 30, [(1, "delete", None)], 3),
            ("batch", "south", 1, 20, [(1, "upsert", "late")], 1),  # arrives last, is older
        ]
    )
    assert [r[0] for r in table] == [2]
    # south's late update replaced north's first version, then north's delete replaced it
    assert [(c[2], c[7]) for c in conflicts] == [("south", "north"), ("north", "south")]
    c = conflicts[1]
    assert (c[1], c[2], c[5], c[7], c[10], c[12]) == (
        "1",
        "north",
        "delete",
        "south",
        "upsert",
        "later logical time",
    )
    assert c[6] is None and json.loads(c[11]) == {"id": 1, "name": "late"}


def test_equal_logical_times_are_decided_by_producer_id() -> None:
    table, conflicts = _apply_all(
        [
            ("batch", "south", 1, 10, [(1, "upsert", "s")], 1),
            ("batch", "north", 1, 10, [(1, "upsert", "n")], 1),
        ]
    )
    assert table == [(1, "s", "south", 10)]
    assert conflicts[0][12] == "same logical time: higher producer id"


def test_an_override_wins_over_later_changes_until_removed() -> None:
    con = duckdb.connect()
    con.execute(merge.META)

    def name() -> str:
        return con.execute("SELECT name, _producer FROM items WHERE id = 1").fetchone()

    merge.apply_batch(con, SHAPE, "north", 1, 10, _batch([(1, "upsert", "n1")], 1))
    merge.apply_batch(con, SHAPE, "south", 1, 20, _batch([(1, "upsert", "s1")], 1))
    assert name() == ("s1", "south")
    merge.apply_override(con, SHAPE, {"n": 1, "key": "1", "action": "pin", "producer": "north"})
    assert name() == ("n1", "north")
    merge.apply_batch(con, SHAPE, "south", 2, 40, _batch([(1, "upsert", "s2")], 2))
    assert name() == ("n1", "north")  # a later automatic resolution does not undo it
    merge.apply_batch(con, SHAPE, "north", 2, 30, _batch([(1, "upsert", "n2")], 2))
    assert name() == ("n2", "north")  # pinned to the producer: its newest version
    rules = [r[12] for r in merge.conflict_rows(con, "shop")]
    assert "manual override #1" in rules
    merge.apply_override(con, SHAPE, {"n": 2, "key": "1", "action": "remove"})
    assert name() == ("s2", "south")
    assert "manual override #1" not in [r[12] for r in merge.conflict_rows(con, "shop")]


def test_batches_that_do_not_touch_a_key_never_change_its_winner() -> None:
    con = duckdb.connect()
    con.execute(merge.META)
    merge.apply_batch(con, SHAPE, "north", 1, 50, _batch([(1, "upsert", "n")], 1))
    merge.apply_batch(con, SHAPE, "south", 1, 40, _batch([(1, "upsert", "s")], 1))
    before = con.execute("SELECT * FROM items WHERE id = 1").fetchall()
    for b in range(2, 8):  # later syncs of south, far later in logical time, other keys
        merge.apply_batch(con, SHAPE, "south", b, 100 * b, _batch([(b, "upsert", "s")], b))
    assert not merge.apply_batch(con, SHAPE, "north", 1, 50, _batch([(1, "upsert", "n")], 1))
    assert con.execute("SELECT * FROM items WHERE id = 1").fetchall() == before


def test_logical_clock_follows_a_clock_ahead_and_never_goes_back() -> None:
    now = 1_800_000_000_000
    ahead = hlc.pack(now + 3 * 3600 * 1000)  # another producer, three hours ahead
    mine = hlc.tick(last=hlc.pack(now - 1000), seen=ahead, now_ms=now)
    assert mine > ahead and hlc.physical_ms(mine) == now + 3 * 3600 * 1000
    assert hlc.tick(last=mine, seen=0, now_ms=now) == mine + 1  # wall clock behind: counter
    assert hlc.tick(last=mine, seen=0, now_ms=now + 4 * 3600 * 1000) == hlc.pack(
        now + 4 * 3600 * 1000
    )
    assert hlc.describe(hlc.pack(0, 3)) == "1970-01-01T00:00:00.000Z+3"


@pytest.mark.parametrize("composite", [False, True])
def test_key_text_is_what_people_type(composite: bool) -> None:
    con = duckdb.connect()
    pk = ["region", "id"] if composite else ["id"]
    data = pa.table({"region": ["eu"], "id": [7]})
    con.register("t", data)
    assert con.execute(f"SELECT {merge.key_expr(pk)} FROM t").fetchone()[0] == (
        "eu,7" if composite else "7"
    )
