"""Several producers of one table: the merge rule, conflict records and overrides.

The property tests drive the replica's merge (``deltaferry/merge.py``) directly with
generated producer batches and compare it against a small reference model written
here; the end-to-end tests (``test_two_producers_*``) publish from two real producers
to an S3 server and pull.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import duckdb
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pytest
from pandera.engines import pandas_engine
from pandera.typing import Series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaferry import duck, hlc, merge, merge_tables
from deltaferry.conflicts import conflict_rows, conflicts_markdown, newest

PRODUCERS = ["north", "south", "west"]
SHAPE = merge_tables.TableShape("shop", "items", ["id"])


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
def histories(draw, with_seen: bool = False):  # noqa: ANN001, ANN201
    """Batches of up to three producers (logical times may tie across producers), and
    override entries. ``with_seen``: each batch also says what it had seen of the other
    producers' chains (its manifest's ``hlc_seen``: a logical time before its own)."""
    batches = []
    producers = PRODUCERS[: draw(st.integers(1, 3))]
    for p in producers:
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
            seen = (
                {
                    o: draw(st.integers(0, stamp - 1))
                    for o in producers
                    if o != p and draw(st.booleans())
                }
                if with_seen
                else None
            )
            batches.append(("batch", p, i, stamp, rows, seq, seen))
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
    con.execute(merge_tables.META)
    for item in items:
        if item[0] == "batch":
            _, p, b, stamp, rows, seq, *seen = item
            data = _batch(rows, seq)
            merge.apply_batch(con, SHAPE, p, b, stamp, data, seen=(seen or [None])[0])
        else:
            merge.apply_override(con, SHAPE, item[1])
    table = (
        con.execute("SELECT id, name, _producer, _hlc FROM items ORDER BY id").fetchall()
        if duck.table_exists(con, "items")
        else []
    )
    conflicts = conflict_rows(con, "shop")
    con.close()
    return table, conflicts


def _reference(batches: list, overrides: list) -> tuple[list, set]:  # noqa: ANN001
    """What the README's rule says, computed the plain way: a conflict is a version
    replacing another producer's version it had not seen (its batch's seen time of that
    producer is before the replaced version's logical time, or absent)."""
    versions: dict[int, list] = {}
    seen_by: dict[tuple[str, int], dict] = {}
    for _, p, b, stamp, rows, _, *seen in batches:
        seen_by[(p, b)] = (seen or [None])[0] or {}
        for k, op, name in rows:
            versions.setdefault(k, []).append((stamp, p, b, op, name))
    active: dict[str, dict] = {}
    for _, e in sorted(overrides, key=lambda o: o[1]["n"]):
        active[e["key"]] = e
    table, conflicts = [], set()
    for k, vs in sorted(versions.items()):
        vs.sort(key=lambda v: (v[0], v[1]))
        for prev, cur in zip(vs, vs[1:], strict=False):
            had_seen = seen_by[(cur[1], cur[2])].get(prev[1], -1) >= prev[0]
            if prev[1] != cur[1] and (prev[3], prev[4]) != (cur[3], cur[4]) and not had_seen:
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


@pytest.mark.slow  # 60 examples, each merging every history on DuckDB: ~40 s
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


@pytest.mark.slow  # 60 examples, each merging every history on DuckDB: ~40 s
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(with_seen=True), st.randoms(use_true_random=False))
def test_conflicts_are_concurrent_edits_in_every_arrival_order(
    history, rng: random.Random
) -> None:
    """With what each batch had seen, only versions replacing one they had not seen are
    conflicts; winners are the same as without it, in every arrival order."""
    batches, overrides = history
    items = batches + overrides
    first = _apply_all(items)
    shuffled = list(items)
    rng.shuffle(shuffled)
    shuffled.insert(rng.randrange(len(shuffled) + 1), rng.choice(items))
    assert _apply_all(shuffled) == first
    table, conflicts = _reference(batches, overrides)
    assert first[0] == table
    blind = [b[:6] + (None,) for b in batches]  # the winner rule does not look at hlc_seen
    assert _apply_all(blind + overrides)[0] == table
    assert _conflict_keys(first[1]) == conflicts
    assert len(first[1]) == len(conflicts)


def test_a_hand_off_is_not_a_conflict_and_a_concurrent_edit_is() -> None:
    start = [("batch", "north", 1, 10, [(1, "upsert", "n"), (2, "upsert", "n")], 1, None)]
    # south publishes key 1 after it saw north's batch (stamped 10): a hand-off
    handoff = ("batch", "south", 1, 20, [(1, "upsert", "s")], 1, {"north": 10})
    # south's key 2 replaces north's version without having seen it: a concurrent edit
    blind = ("batch", "south", 2, 30, [(2, "upsert", "s")], 2, {"north": 9})
    table, conflicts = _apply_all([*start, handoff, blind])
    assert table == [(1, "s", "south", 20), (2, "s", "south", 30)]  # the newer wins both
    assert [(c[1], c[2], c[7], c[12]) for c in conflicts] == [
        ("2", "south", "north", "later logical time")
    ]
    # a version that had seen only an older batch of the chain is concurrent with a newer
    again = ("batch", "north", 2, 40, [(1, "upsert", "n2")], 3, {"south": 19})
    table, conflicts = _apply_all([*start, handoff, blind, again])
    assert table[0] == (1, "n2", "north", 40)
    assert ("1", "north", 2, "south", 1) in {(c[1], c[2], c[3], c[7], c[8]) for c in conflicts}
    # the same edit, having seen south's batch 1 (stamped 20): a hand-off back
    back = ("batch", "north", 2, 40, [(1, "upsert", "n2")], 3, {"south": 30})
    table, conflicts = _apply_all([*start, handoff, blind, back])
    assert table[0] == (1, "n2", "north", 40)
    assert [c[1] for c in conflicts] == ["2"]
    # the same logical time is always concurrent: neither can have seen the other
    tie = ("batch", "west", 1, 40, [(1, "upsert", "w")], 1, {"north": 10, "south": 30})
    table, conflicts = _apply_all([*start, handoff, blind, back, tie])
    assert table[0] == (1, "w", "west", 40)
    assert ("1", "west", "north", "same logical time: higher producer id") in {
        (c[1], c[2], c[7], c[12]) for c in conflicts
    }


def test_conflicts_order_by_full_logical_time_counter_included() -> None:
    ms = 1_800_000_000_000
    # three concurrent edits in one millisecond, told apart only by the counter; the
    # key order (1, 2, 3) is not the logical order
    con = duckdb.connect()
    con.execute(merge_tables.META)
    for b, (key, counter) in enumerate(((3, 1), (1, 2), (2, 3)), 1):
        north = _batch([(key, "upsert", "n")], b)
        merge.apply_batch(con, SHAPE, "north", b, hlc.pack(ms - 10, b), north)
        south = _batch([(key, "upsert", "s")], b)
        merge.apply_batch(con, SHAPE, "south", b, hlc.pack(ms, counter), south)
    rows = conflict_rows(con, "shop")
    assert len({r[13] for r in rows}) == 1  # the same wall-clock millisecond
    assert [r[1] for r in newest(rows, 10)] == ["2", "1", "3"]  # counters 3, 2, 1
    assert [r[14] for r in newest(rows, 2)] == [hlc.pack(ms, 3), hlc.pack(ms, 2)]
    text = conflicts_markdown(con, "shop")
    shown = text.split("## Newest records")[1]
    at = [shown.index(f"| items | {k} |") for k in ("2", "1", "3")]
    assert at == sorted(at)


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
    con.execute(merge_tables.META)

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
    rules = [r[12] for r in conflict_rows(con, "shop")]
    assert "manual override #1" in rules
    merge.apply_override(con, SHAPE, {"n": 2, "key": "1", "action": "remove"})
    assert name() == ("s2", "south")
    assert "manual override #1" not in [r[12] for r in conflict_rows(con, "shop")]


def test_a_row_pinned_by_value_shows_its_text_as_typed() -> None:
    """A conflict record of a value override shows the row's text beyond ASCII as the
    versions' rows show theirs, not JSON-escaped (``pinn\\u00e9``: a fresh-user trial)."""
    con = duckdb.connect()
    con.execute(merge_tables.META)
    merge.apply_batch(con, SHAPE, "north", 1, 10, _batch([(1, "upsert", "Zoë")], 1))
    value = {"name": "pinné ü 東京"}
    merge.apply_override(con, SHAPE, {"n": 1, "key": "1", "action": "pin", "value": value})
    assert con.execute("SELECT name, _producer FROM items WHERE id = 1").fetchone() == ("pinné ü 東京", "override")
    records = " ".join(str(r) for r in conflict_rows(con, "shop"))
    assert "pinné ü 東京" in records and "Zoë" in records and "\\u" not in records


def test_a_pinned_value_no_column_can_hold_is_refused_and_a_later_entry_lets_it_go() -> None:
    """A value override in force whose value the replica's column cannot hold exactly
    (written by hand, or before ``conflicts override`` checked it) stops the pull of the
    table with one line naming the entry; nothing is applied, and no value nobody typed
    is pinned (``true`` or ``3.5`` into an integer). An entry after it, applied in the
    same pull, lets it go (a fresh-user trial: the bad pin wedged every pull for good)."""
    import datetime as dt

    from deltaferry.resolve import OverrideUnfit

    shape = merge_tables.TableShape("shop", "stock", ["id"])
    con = duckdb.connect()
    con.execute(merge_tables.META)
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    batch = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "qty": pa.array([5, 6], pa.int64()),
            "at": pa.array([at, at], pa.timestamp("us", "UTC")),
            "_op": pa.array(["upsert", "upsert"]),
            "_seq": pa.array([1, 2], pa.int64()),
        }
    )
    merge.apply_batch(con, shape, "north", 1, 10, batch)

    def rows() -> list:
        return con.execute("SELECT id, qty, \"at\", _producer FROM stock ORDER BY id").fetchall()

    before = rows()
    for value, column, shown in [
        ({"qty": True}, "qty", "true"),
        ({"qty": 3.5}, "qty", "3.5"),
        ({"qty": 1e30}, "qty", "1e30"),
        ({"qty": 9223372036854775808}, "qty", "9223372036854775808"),
        ({"at": "noon"}, "at", '"noon"'),
        ({"at": 12345}, "at", "12345"),
    ]:
        entry = {"n": 1, "key": "1", "action": "pin", "value": {"qty": 1, **value}}
        with pytest.raises(OverrideUnfit) as err:
            merge.apply_override(con, shape, entry)
        message = str(err.value)
        assert "\n" not in message and "override #1 pins key '1'" in message, message
        assert f"'{column}' is {shown}" in message and "--remove" in message, message
        assert rows() == before
        assert con.execute("SELECT count(*) FROM _deltaferry_overrides").fetchone() == (0,)
    # two bad entries at once: the oldest is named first, whatever its columns
    two = [
        {"n": 1, "key": "2", "action": "pin", "value": {"qty": 1, "at": "noon"}},
        {"n": 2, "key": "1", "action": "pin", "value": {"qty": 3.5, "at": None}},
    ]
    with pytest.raises(OverrideUnfit, match=r"override #1 pins key '2' to a row whose 'at'"):
        merge.apply_overrides(con, shape, two)
    assert rows() == before
    # the bad entry and the one that lets it go, in one pull: the automatic winner stays
    bad = {"n": 1, "key": "1", "action": "pin", "value": {"qty": 3.5, "at": None}}
    assert merge.apply_overrides(con, shape, [bad, {"n": 2, "key": "1", "action": "remove"}]) == 2
    assert rows() == before
    # values a column holds exactly are pinned as typed
    fit = {"n": 3, "key": "2", "action": "pin", "value": {"qty": -7, "at": "2026-05-06T07:08:09+02:00"}}
    assert merge.apply_override(con, shape, fit)
    assert rows()[1] == (2, -7, dt.datetime(2026, 5, 6, 5, 8, 9, tzinfo=dt.UTC), "override")


def test_batches_that_do_not_touch_a_key_never_change_its_winner() -> None:
    con = duckdb.connect()
    con.execute(merge_tables.META)
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


@pytest.mark.parametrize("region", ["eu", "ü", "東京", 'o"q', "a\\b", "a/b", "line\nx", "\x01", "😀"])
@pytest.mark.parametrize("composite", [False, True])
def test_key_text_is_what_people_type(composite: bool, region: str) -> None:
    """What a person types for ``conflicts override --key`` is the text the replica keeps
    (``key_expr``), for text beyond ASCII and characters JSON escapes too: a pin on a key
    written otherwise would never match (a simulator review found ``ü`` escaped)."""
    con = duckdb.connect()
    pk = ["region", "id"] if composite else ["region"]
    data = pa.table({"region": [region], "id": [7]})
    con.register("t", data)
    stored = con.execute(f"SELECT {merge_tables.key_expr(pk)} FROM t").fetchone()[0]
    assert stored == merge_tables.key_text(pk, json.dumps([region, "7"]) if composite else region)
    if composite:
        assert stored == merge_tables.key_text(pk, f"{region},7")  # no ',' in any region here
        with pytest.raises(ValueError, match="the key has 2 columns"):
            merge_tables.key_text(pk, region)
    if composite and region == "eu":
        assert stored == merge_tables.key_text(pk, '["eu", 7]') == '["eu","7"]'


def _run(shape: merge_tables.TableShape, batches: list) -> tuple[list, list]:  # noqa: ANN001
    con = duckdb.connect()
    con.execute(merge_tables.META)
    for producer, batch, stamp, data in batches:
        merge.apply_batch(con, shape, producer, batch, stamp, data)
    table = con.execute(f'SELECT * FROM "{shape.table}" ORDER BY ALL').fetchall()
    return table, conflict_rows(con, shape.job)


def test_composite_keys_holding_commas_stay_apart() -> None:
    shape = merge_tables.TableShape("shop", "winners", ["a", "b"])  # a user table may be named so

    def data(a: str, b: str, name: str) -> pa.Table:
        return pa.table({"a": [a], "b": [b], "name": [name], "_op": ["upsert"], "_seq": [1]})

    table, conflicts = _run(
        shape,
        [("north", 1, 10, data("x,y", "z", "first")), ("south", 1, 20, data("x", "y,z", "second"))],
    )
    assert [r[:3] for r in table] == [("x", "y,z", "second"), ("x,y", "z", "first")]
    assert conflicts == []


def test_a_column_added_later_gives_the_same_records_in_any_order() -> None:
    old = pa.table({"id": [1, 2], "name": ["a", "b"], "_op": ["upsert"] * 2, "_seq": [1, 2]})
    new = pa.table({"id": [1], "name": ["c"], "colour": ["red"], "_op": ["upsert"], "_seq": [1]})
    pin = {"n": 1, "key": "2", "action": "pin", "value": {"name": "m", "colour": "blue"}}
    results = []
    for order in ([("b", old), ("o", pin), ("b2", new)], [("b2", new), ("b", old), ("o", pin)]):
        con = duckdb.connect()
        con.execute(merge_tables.META)
        for kind, item in order:
            if kind == "o":
                merge.apply_override(con, SHAPE, item)
            elif kind == "b":
                merge.apply_batch(con, SHAPE, "north", 1, 10, item)
            else:
                merge.apply_batch(con, SHAPE, "south", 1, 20, item)
        results.append(
            (
                con.execute("SELECT id, name, colour FROM items ORDER BY id").fetchall(),
                conflict_rows(con, "shop"),
            )
        )
    assert results[0] == results[1]
    assert results[0][0] == [(1, "c", "red"), (2, "m", "blue")]


def test_reserved_column_names_are_refused_naming_the_table() -> None:
    from deltaferry.errors import VerificationError

    bad = pa.table({"id": [1], "_key": ["x"], "_op": ["upsert"], "_seq": [1]})
    with pytest.raises(VerificationError, match="table 'items': column\\(s\\) _key are reserved"):
        _run(SHAPE, [("north", 1, 10, bad)])


# --- two real producers publishing to one S3 lake ----------------------------------------


class Site:
    """One producer: its own shop database, jobs file and DELTAFERRY_HOME, one shared lake."""

    def __init__(self, root, lake_url: str, name: str, seed: int) -> None:  # noqa: ANN001
        from deltaferry.shop import JOBS_TOML, Shop

        self.name = name
        self.dir = root / name
        self.dir.mkdir()
        self.home = self.dir / "home"
        self.shop = Shop(self.dir / "shop.db", seed=seed)
        self.config = self.dir / "deltaferry.toml"
        self.config.write_text(
            JOBS_TOML.format(db=self.dir / "shop.db", lake=lake_url).replace(
                "max_quarantine_ratio = 0.2",
                f'max_quarantine_ratio = 0.2\nmulti_producer = true\nproducer_id = "{name}"',
            )
        )

    def sync(self, monkeypatch) -> dict:  # noqa: ANN001
        from flows.sync import sync_job

        monkeypatch.setenv("DELTAFERRY_HOME", str(self.home))
        return sync_job(job="shop", config=str(self.config))

    def set_country(self, cid: int, country: str) -> None:
        self.shop.con.execute(
            "UPDATE customers SET country = ?, updated_at = ? WHERE id = ?",
            (country, self.shop._tick(), cid),
        )
        self.shop.con.commit()

    def customers(self) -> dict[int, str]:
        return dict(self.shop.con.execute("SELECT id, country FROM customers").fetchall())

    def job(self):  # noqa: ANN201
        from deltaferry.config import load_job

        return load_job("shop", self.config)


@pytest.fixture
def sites(tmp_path, home, bucket, prefect_api):  # noqa: ANN001, ANN201
    lake = f"s3://{bucket}/lake"
    north, south = Site(tmp_path, lake, "north", 11), Site(tmp_path, lake, "south", 22)
    yield north, south
    north.shop.close()
    south.shop.close()


def _pull(site: Site, replica, **kw) -> list:  # noqa: ANN001
    from deltaferry.replica import pull
    from destinations.lake import open_lake

    job = site.job()
    return pull(job, open_lake(job.lake), replica, **kw)


def _replica(replica) -> dict[int, tuple[str, str]]:  # noqa: ANN001
    con = duckdb.connect(str(replica), read_only=True)
    try:
        return {
            r[0]: (r[1], r[2])
            for r in con.execute("SELECT id, country, _producer FROM customers").fetchall()
        }
    finally:
        con.close()


def _conflicts(replica) -> list:  # noqa: ANN001
    con = duckdb.connect(str(replica), read_only=True)
    try:
        return conflict_rows(con, "shop")
    finally:
        con.close()


def _cli(site: Site, monkeypatch, *args: str):  # noqa: ANN001, ANN202
    from click.testing import CliRunner

    from deltaferry.cli import cli

    monkeypatch.setenv("DELTAFERRY_HOME", str(site.home))
    return CliRunner().invoke(cli, [*args, "--config", str(site.config)])


def test_two_producers_merge_with_conflicts_hotspots_and_override(sites, tmp_path, monkeypatch):
    north, south = sites
    north.shop.round(8, 4, churn=0)
    south.shop.round(8, 4, churn=0)
    rows = "SELECT * FROM customers ORDER BY id"
    differ = {
        a[0]
        for a, b in zip(
            north.shop.con.execute(rows).fetchall(),
            south.shop.con.execute(rows).fetchall(),
            strict=True,
        )
        if a != b
    }
    assert differ  # the two sites disagree on some customers (country, update time)
    north.sync(monkeypatch)
    import deltaferry.producers

    with monkeypatch.context() as m:  # the two publish at once: south lists the lake before
        m.setattr(deltaferry.producers, "_chain_head", lambda *a: None)  # north's batch is there
        south.sync(monkeypatch)
    replica = tmp_path / "replica.duckdb"
    (customers, orders) = _pull(north, replica)
    assert customers.chains == {"north": 1, "south": 1}
    assert _replica(replica) == {c: (v, "south") for c, v in south.customers().items()}
    recorded = {r[1] for r in _conflicts(replica) if r[0] == "customers"}
    assert recorded == {str(c) for c in differ}  # same rows on both sides are no conflict

    # north changes customer 1 later, having seen south's batch: north wins it, a hand-off
    # (no new conflict record); no other key moves
    before, had = _replica(replica), _conflicts(replica)
    north.set_country(1, "JP")
    north.sync(monkeypatch)
    _pull(north, replica)
    after = _replica(replica)
    assert after[1] == ("JP", "north")
    assert {c: v for c, v in after.items() if c != 1} == {c: v for c, v in before.items() if c != 1}
    assert [r[:14] for r in _conflicts(replica)] == [r[:14] for r in had]

    shown = _cli(north, monkeypatch, "conflicts", "shop", "--replica", str(replica))
    assert shown.exit_code == 0, shown.output
    assert "north / south" in shown.output and "later logical time" in shown.output
    assert f"{len(_conflicts(replica))} conflict records" in shown.output

    # pin customer 2 to north: it wins over south's later change until removed
    target = sorted(differ - {1})[0] if differ - {1} else 2
    pinned = _cli(
        north, monkeypatch, "conflicts", "override", "shop", "--table", "customers",
        "--key", str(target), "--producer", "north", "--reason", "north is the system of record",
        "--by", "ops@example",
    )  # fmt: skip
    assert pinned.exit_code == 0, pinned.output
    assert "override #1 by ops@example" in pinned.output
    from deltaferry.state import StateStore

    monkeypatch.setenv("DELTAFERRY_HOME", str(north.home))
    with StateStore("shop").connect(read_only=True) as con:
        logged = con.execute("SELECT detail FROM ops_log WHERE step = 'override'").fetchall()
    assert "north is the system of record" in logged[0][0]
    _pull(north, replica)
    assert _replica(replica)[target] == (north.customers()[target], "north")
    south.set_country(target, "SE")
    south.sync(monkeypatch)
    _pull(north, replica)
    assert _replica(replica)[target] == (north.customers()[target], "north")
    rules = {r[12] for r in _conflicts(replica) if r[1] == str(target)}
    assert any(r.startswith("manual override #1 by ops@example") for r in rules)

    removed = _cli(
        north, monkeypatch, "conflicts", "override", "shop", "--table", "customers",
        "--key", str(target), "--remove", "--reason", "back to the rule",
    )  # fmt: skip
    assert removed.exit_code == 0, removed.output
    _pull(north, replica)
    assert _replica(replica)[target] == ("SE", "south")

    # another reader, pulling south's chain first and everything later, agrees exactly
    other = tmp_path / "other.duckdb"
    _pull(south, other, producers=["south"])
    _pull(south, other)
    assert _replica(other) == _replica(replica)
    assert _conflicts(other) == _conflicts(replica)
    assert _pull(north, replica)[0].batches == 0  # re-pulling changes nothing

    # a scheduled reader (the pull flow) shows the same in its run artifact
    from datetime import datetime, timezone

    from flows.pull import pull_job
    from flows.report import artifact_key
    from tests.test_run_report import _artifacts

    since = datetime.now(timezone.utc)
    third = tmp_path / "third.duckdb"
    done = pull_job(job="shop", replica=str(third), config=str(north.config))
    assert done["customers"]["chains"] == {"north": 2, "south": 2}
    (artifact,) = _artifacts(artifact_key("shop", "pull"), since)
    assert "## Hotspots: producer pairs" in artifact.data and "north / south" in artifact.data
    assert f"{len(_conflicts(replica))} conflict records" in artifact.data
    assert _conflicts(third) == _conflicts(replica)

    verified = _cli(north, monkeypatch, "verify", "shop")
    assert verified.exit_code == 0, verified.output
    assert "producer north" in verified.output and "producer south" in verified.output


def test_a_producer_clock_hours_ahead_does_not_win_forever(sites, tmp_path, monkeypatch):
    north, south = sites
    north.shop.round(5, 0, churn=0)
    south.shop.round(5, 0, churn=0)
    real = hlc.wall_ms
    monkeypatch.setattr(hlc, "wall_ms", lambda: real() + 3 * 3600 * 1000)
    north.set_country(3, "JP")
    north.sync(monkeypatch)  # stamped three hours in the future
    monkeypatch.setattr(hlc, "wall_ms", real)
    south.set_country(3, "SE")  # a later change, on a site with a correct clock
    south.sync(monkeypatch)
    replica = tmp_path / "replica.duckdb"
    _pull(south, replica)
    assert _replica(replica)[3] == ("SE", "south")
    from deltaferry.state import StateStore

    with StateStore("shop").connect(read_only=True) as con:  # south's home
        clock = con.execute("SELECT detail FROM ops_log WHERE step = 'clock'").fetchall()
    assert clock, "the drift was not logged"
    assert "producer 'north' is 2h59m" in clock[0][0] or "producer 'north' is 3h00m" in clock[0][0]
    assert "changes made here still win" in clock[0][0]

    # a manifest copied into another producer's chain is refused, naming both
    import boto3

    from deltaferry.errors import VerificationError

    bucket = north.job().lake.split("/")[2]
    s3 = boto3.client("s3")
    s3.copy_object(
        Bucket=bucket,
        CopySource={
            "Bucket": bucket,
            "Key": "lake/shop/customers/producers/north/manifests/000000000001.json",
        },
        Key="lake/shop/customers/producers/mallory/manifests/000000000001.json",
    )
    with pytest.raises(
        VerificationError, match="names producer 'north' but is stored in producer 'mallory'"
    ):
        _pull(south, tmp_path / "fresh.duckdb")


def test_a_bad_pin_in_the_log_stops_pulls_until_an_entry_lets_it_go(sites, tmp_path, monkeypatch):
    """An override entry that no replica column can hold (written without the CLI's
    check) stops the pull of its table with one line naming it, on an existing replica
    and a new one; `conflicts override --remove` lets it go, and the next pulls converge
    (a fresh-user trial: the pull failed for good, `--remove` did not help)."""
    from deltaferry.errors import TerminalError
    from deltaferry.overrides import write_override
    from destinations.lake import open_lake

    north, south = sites
    north.shop.round(3, 0, churn=0)
    north.sync(monkeypatch)
    south.shop.round(3, 0, churn=0)
    south.sync(monkeypatch)
    replica = tmp_path / "replica.duckdb"
    _pull(north, replica)
    before = _replica(replica)
    value = {"name": "n", "email": "n@example.com", "country": "DE", "updated_at": 12345, "deleted_at": None}
    write_override(open_lake(north.job().lake), "shop", "customers", key="1", action="pin",
                   value=value, reason="by hand")  # fmt: skip
    for target in (replica, tmp_path / "new.duckdb"):
        with pytest.raises(TerminalError) as err:
            _pull(north, target)
        message = str(err.value)
        assert "\n" not in message and "table 'customers': override #1 pins key '1'" in message, message
        assert "'updated_at' is 12345" in message and "--remove" in message, message
    assert _replica(replica) == before
    # `verify` fails on the entry every pull stops at (a trial: it said ok)
    checked = _cli(north, monkeypatch, "verify", "shop")
    message = " ".join(checked.output.split())
    assert checked.exit_code == 1, checked.output
    assert "override #1 pins key '1' to a row whose 'updated_at' is 12345" in message, message
    assert "every pull of the table stops at it" in message and "--remove" in message, message
    done = _cli(north, monkeypatch, "conflicts", "override", "shop", "--table", "customers",
                "--key", "1", "--remove", "--reason", "a bad pin")  # fmt: skip
    assert done.exit_code == 0, done.output
    # a value readers take only by a cast (a number for text): verify passes, with a note
    write_override(open_lake(north.job().lake), "shop", "customers", key="2", action="pin",
                   value={**value, "updated_at": None, "name": 5}, reason="by hand")  # fmt: skip
    checked = _cli(north, monkeypatch, "verify", "shop")
    message = " ".join(checked.output.split())
    assert checked.exit_code == 0, checked.output
    assert "3 conflict overrides verified" in message, message
    assert "override #3 (key '2') gives 'name' 5, which readers take by a cast" in message, message
    assert "override #1" not in message, message  # removed: not in force
    _pull(north, replica)
    _pull(north, tmp_path / "new.duckdb")
    assert _replica(replica) == _replica(tmp_path / "new.duckdb") != before
    assert _replica(replica)[2] == ("DE", "override")
    con = duckdb.connect(str(replica), read_only=True)
    assert con.execute("SELECT name FROM customers WHERE id = 2").fetchone() == ("5",)
    con.close()


def test_override_errors_are_one_line_and_write_nothing(sites, tmp_path, monkeypatch):
    north, south = sites
    north.shop.round(3, 0, churn=0)
    north.sync(monkeypatch)
    base = ["conflicts", "override", "shop", "--table", "customers", "--reason", "r"]
    cases = [
        (["--key", "1", "--producer", "east"], "producer 'east' has published nothing"),
        # the check that failed, with the value that failed it
        (["--key", "1", "--value", '{"email": "not-an-email"}'], "breaks contract contracts.shop:Customers v1: "),
        (["--key", "1", "--value", '{"email": "not-an-email"}'], "(1 row, e.g. 'not-an-email')"),
        (["--key", "1", "--value", '{"email": "not-an-email"}'], "name: not_nullable (1 row, e.g. NULL)"),
        # values pandera would coerce, and a reader would then pin as nobody typed them
        (["--key", "1", "--value", '{"name": 5}'], "--value gives 'name' 5, which its VARCHAR column"),
        (["--key", "1", "--value", '{"updated_at": 12345}'], "--value gives 'updated_at' 12345"),
        (["--key", "1", "--value", '{"updated_at": "noon"}'], "--value gives 'updated_at' \"noon\""),
        (["--key", "1", "--value", '{"colour": "red"}'], "column(s) colour"),
        # passes the contract, but a column is left out (it would become NULL unasked)
        (["--key", "1", "--value", '{"name": "Ada", "email": "ada@example.com", "country": "DE", '
          '"updated_at": "2026-11-27T08:00:00Z"}'], "--value has no 'deleted_at': it replaces"),
        (["--key", "1"], "exactly one of --producer, --value, --delete, --remove"),
    ]
    # keys no row can have (an integer key typed otherwise than the replica writes it):
    # refused, not written to the log for good (a fresh-user trial)
    cases += [(["--key", k, "--delete"], "key column 'id' holds integers") for k in ("x", " 1", "01", "1.0", "None", "9223372036854775808")]
    for args, needle in cases:
        result = _cli(north, monkeypatch, *base, *args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "job 'shop' table 'customers'" in result.output
    from deltaferry.overrides import numbers
    from destinations.lake import open_lake

    assert numbers(open_lake(north.job().lake), "shop", "customers") == []
    # the log is a hash chain without gaps: a deleted entry is found by every reader
    for reason in ("first", "second"):
        done = _cli(north, monkeypatch, *base[:-1], reason, "--key", "1", "--producer", "north")
        assert done.exit_code == 0, done.output
    lake = open_lake(north.job().lake)
    entries = [json.loads(lake.get(k)) for k in lake.list("shop/customers/overrides/")]
    assert [e["n"] for e in entries] == [1, 2] and entries[1]["prev_sha256"]
    lake.delete("shop/customers/overrides/000000000001.json")
    from deltaferry.errors import VerificationError

    with pytest.raises(VerificationError, match="override #1: missing from the log"):
        _pull(north, tmp_path / "replica.duckdb")

    single = north.config.read_text().replace("multi_producer = true\n", "")
    north.config.write_text(single)
    result = _cli(north, monkeypatch, *base, "--key", "1", "--delete")
    assert result.exit_code == 2 and "has a single producer" in result.output
    # switching a published table between one chain and several is refused
    from deltaferry.errors import ConfigError

    north.set_country(1, "JP")
    with pytest.raises(ConfigError, match="holds chains of several producers for this table"):
        north.sync(monkeypatch)


def test_a_producer_killed_mid_batch_and_then_losing_its_home_recovers_its_own_chain(
    sites, tmp_path, monkeypatch
):
    import os
    import shutil
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from destinations.lake import open_lake
    from destinations.manifest import manifest_key

    north, south = sites
    north.shop.round(6, 3, churn=0)
    south.shop.round(6, 3, churn=0)
    south.sync(monkeypatch)
    north.sync(monkeypatch)
    north.set_country(2, "JP")
    killed = subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "run", "shop", "--config", str(north.config)],
        env=dict(
            os.environ,
            DELTAFERRY_HOME=str(north.home),
            DELTAFERRY_FAILPOINT="after_upload",
            DELTAFERRY_FAILPOINT_ACTION="kill",
            PREFECT_API_URL=str(PREFECT_API_URL.value()),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    lake = open_lake(north.job().lake)
    assert lake.get(manifest_key("shop", "customers", 2, "north")) is None
    out = north.sync(monkeypatch)
    assert any("rebuilt byte-identically" in r for r in out["recovered"])
    first = json.loads(lake.get(manifest_key("shop", "customers", 2, "north")))

    shutil.rmtree(north.home)  # north's disk is gone; south's chain is in the same lake
    north.set_country(3, "FR")
    out = north.sync(monkeypatch)
    assert any("adopted batch 2" in r for r in out["recovered"]), out["recovered"]
    third = json.loads(lake.get(manifest_key("shop", "customers", 3, "north")))
    assert third["hlc"] > first["hlc"]  # logical time went on from the adopted chain
    replica = tmp_path / "replica.duckdb"
    _pull(north, replica)
    got = _replica(replica)
    assert got[2] == ("JP", "north") and got[3] == ("FR", "north")

    drilled = _cli(north, monkeypatch, "drill", "shop")
    assert drilled.exit_code == 0, drilled.output


def test_timestamp_keys_are_the_same_text_on_hosts_in_any_time_zone() -> None:
    from datetime import datetime, timezone

    shape = merge_tables.TableShape("shop", "ticks", ["at"])
    at = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)

    def data(name: str) -> pa.Table:
        return pa.table(
            {"at": pa.array([at], pa.timestamp("us", tz="UTC")), "name": [name],
             "_op": ["upsert"], "_seq": [1]}
        )  # fmt: skip

    keys = set()
    for zone in ("UTC", "Asia/Tokyo"):
        con = duckdb.connect()
        con.execute(f"SET TimeZone = '{zone}'")  # the host's zone
        con.execute(merge_tables.META)
        merge.apply_batch(con, shape, "north", 1, 10, data("n"))
        merge.apply_batch(con, shape, "south", 1, 20, data("s"))
        assert con.execute("SELECT name FROM ticks").fetchall() == [("s",)]
        keys |= {
            r[0] for r in con.execute("SELECT _key FROM _deltaferry_versions_ticks").fetchall()
        }
    assert keys == {"2026-11-27 12:00:00+00"}


def test_a_merged_table_no_producer_published_yet_is_empty_then_takes_the_first_batch(
    sites, tmp_path, monkeypatch
):
    """A table of a multi_producer job that no producer has published a batch of is an
    empty table in the replica (the contract's columns, ``_producer``, ``_hlc``), not a
    missing one; the first batch replaces it with its own shape, keeping the versions
    table and the key of a merged table."""
    import duckdb

    north, _ = sites
    north.shop.round(6, 0, churn=0)
    north.sync(monkeypatch)
    replica = tmp_path / "merged.duckdb"
    _pull(north, replica)
    con = duckdb.connect(str(replica), read_only=True)
    cols = [r[0] for r in con.execute("DESCRIBE orders").fetchall()]
    assert con.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    con.close()
    assert {"id", "amount_cents", "_producer", "_hlc"} <= set(cols)

    north.shop.round(0, 4, churn=0)
    north.sync(monkeypatch)
    _pull(north, replica)
    fresh = tmp_path / "fresh.duckdb"
    _pull(north, fresh)
    shapes = []
    for path in (replica, fresh):
        con = duckdb.connect(str(path), read_only=True)
        shapes.append(
            (
                con.execute("DESCRIBE orders").fetchall(),
                con.execute("SELECT * FROM orders ORDER BY id").fetchall(),
                con.execute(
                    "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'orders'"
                    " AND constraint_type = 'PRIMARY KEY'"
                ).fetchone(),
            )
        )
        con.close()
    assert shapes[0] == shapes[1] and len(shapes[0][1]) == 4


@pytest.mark.parametrize(
    ("column", "typed"),
    [
        ("n", "3.5"), ("n", "3.0"), ("n", "true"), ("n", '"12"'), ("n", "1e30"), ("n", "9223372036854775808"),
        ("x", "1e400"), ("x", "1e-400"), ("x", "9007199254740993"), ("x", '"1.5"'), ("x", "true"),
        ("amount", "0.1000000000000000055511151231257827"), ("amount", "1.10000000000000000001"),
        ("amount", "3.105"), ("amount", '"3.10"'), ("amount", "1e400"),
        ("flag", '"yes"'), ("flag", "1"), ("note", "42"),
        ("at", '"2026-05-01T12:00:00.123456789Z"'), ("at", "12345"), ("at", '"noon"'),
        ("day", '"2026-12-31T10:00:00"'), ("day", "20261231"),
    ],
)  # fmt: skip
def test_a_pinned_value_its_column_cannot_hold_exactly_is_refused(column: str, typed: str) -> None:
    """``conflicts override --value``: a value of the wrong kind, or one its column would
    round, clip or read as something else, is refused naming the column (a fresh-user
    trial: 0.1000000000000000055 was pinned as 0.10, 1e400 as Infinity, 2^53+1 rounded,
    nanoseconds cut, a date's time dropped)."""
    from deltaferry.cli_conflicts import _checked_value
    from deltaferry.errors import ConfigError

    t = SimpleNamespace(primary_key=["id"], contract="tests.test_conflicts:Pinned")
    with pytest.raises(ConfigError, match=f"--value gives '{column}' .*column cannot hold exactly"):
        _checked_value(t, ["1"], '{"%s": %s}' % (column, typed), "job 'j' table 't' key '1'")


def test_a_pinned_value_is_written_as_its_column_will_hold_it() -> None:
    from deltaferry.cli_conflicts import _checked_value
    from deltaferry.errors import ConfigError

    t = SimpleNamespace(primary_key=["id"], contract="tests.test_conflicts:Pinned")
    typed = (
        '{"n": -7, "x": 0.1, "amount": 12345678901.23, "flag": false, "note": "ü",'
        ' "at": "2026-05-01T12:00:00.123456+02:00", "day": "2026-12-31"}'
    )
    row = _checked_value(t, ["1"], typed[:-1] + ', "big": null}', "w")
    assert row == {"n": -7, "x": 0.1, "amount": 12345678901.23, "flag": False, "note": "ü",
                   "at": "2026-05-01T12:00:00.123456+02:00", "day": "2026-12-31", "big": None}  # fmt: skip
    nulls = ', '.join(f'"{c}": null' for c in ("n", "x", "amount", "flag", "note", "at", "day"))
    # more digits than a float keeps: written as text, which a reader casts exactly
    row = _checked_value(t, ["1"], '{"big": 123456789012345678.25, %s}' % nulls, "w")
    assert row["big"] == "123456789012345678.25"
    with pytest.raises(ConfigError, match="NaN is not a JSON number"):
        _checked_value(t, ["1"], '{"x": NaN}', "w")
    # the value replaces the row: a column left out is refused, not made NULL unasked
    with pytest.raises(ConfigError, match=r"--value has no 'big': it replaces the whole row"):
        _checked_value(t, ["1"], typed, "w")


class Pinned(pandera.DataFrameModel):
    """A contract with a column of each kind, for the override value checks."""

    id: Series[int]
    n: Series[int] = pandera.Field(nullable=True)
    x: Series[float] = pandera.Field(nullable=True)
    amount: Series[pandas_engine.Decimal] = pandera.Field(
        nullable=True, dtype_kwargs={"precision": 20, "scale": 2}
    )
    big: Series[pandas_engine.Decimal] = pandera.Field(
        nullable=True, dtype_kwargs={"precision": 38, "scale": 2}
    )
    flag: Series[bool] = pandera.Field(nullable=True)
    note: Series[str] = pandera.Field(nullable=True)
    at: Series[pd.DatetimeTZDtype] = pandera.Field(nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"})
    day: Series[pandas_engine.Date] = pandera.Field(nullable=True)

    class Config:
        strict = True
        coerce = True


def test_a_column_respelled_in_case_keeps_its_values_in_a_merged_replica() -> None:
    """A producer's batches spell a column ``name``, later ones ``Name`` (the source renamed
    it in case and the table was staged anew): DuckDB does not tell the two apart, and
    adding ``Name`` failed every pull of a multi-producer replica. The replica's table and
    its versions table take the new spelling; the older rows keep their values."""
    con = duckdb.connect()
    con.execute(merge_tables.META)
    merge.apply_batch(con, SHAPE, "north", 1, 10, _batch([(1, "upsert", "n1")], 1))
    respelled = _batch([(2, "upsert", "n2")], 2).rename_columns(["id", "Name", "_op", "_seq"])
    merge.apply_batch(con, SHAPE, "north", 2, 20, respelled)
    assert con.execute("SELECT id, Name FROM items ORDER BY id").fetchall() == [(1, "n1"), (2, "n2")]
    for table in ("items", merge_tables.versions_table("items")):
        assert "Name" in duck.columns(con, table) and "name" not in duck.columns(con, table)
