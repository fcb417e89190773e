"""A files-source run costs what its new files hold, not the staged table: a run with no new
file reads no staged row, a run of a few small files looks up only their keys in staging
(``sources/files.LOOKUPS``), and the newest-file rule and the change filter give the same
replica whichever way the staged rows are read. Before, every run read every staged key
and file time into memory (2M staged rows: +100 MiB, with no new file too) and every
staged hash into a temporary file (1.2-1.7 s at 2M)."""

from __future__ import annotations

import os
import time

import pytest

import sources.change_detection
import sources.files
from tests.test_files_source import HEADER, batches, drop, drops_job  # noqa: F401 - fixture


def _no_whole_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading every staged row (key and file time, key and hash) fails the test."""

    def whole(*_a: object, **_k: object) -> None:
        raise AssertionError("a run of a few small files read every staged row")

    monkeypatch.setattr(sources.files, "staged_keyed_batches", whole)
    monkeypatch.setattr(sources.change_detection, "staged_hashes", whole)


def test_a_run_with_nothing_new_reads_no_staged_row_and_a_small_drop_only_its_keys(
    drops_job, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - the fixture
) -> None:
    t0 = time.time() - 3600
    drops_job.write(tables=("orders",))
    d = drops_job.drops
    rows = "".join(f"{i},c{i},{i},2026-01-01 09:00:00,\n" for i in range(1, 201))
    drop(d, "orders/0001.csv", HEADER + rows, t0)
    assert batches(drops_job.sync())["orders"] == (1, 200)

    _no_whole_read(monkeypatch)
    looked_up: list[int] = []
    real = sources.files.staged_keyed

    def lookup(t, path, borrowed, column, only=None, **kw):  # noqa: ANN001, ANN202
        assert only is not None, "a whole read of the staged rows"
        looked_up.append(only.num_rows)
        return real(t, path, borrowed, column, only, **kw)

    monkeypatch.setattr(sources.files, "staged_keyed", lookup)
    out = drops_job.sync()  # nothing new: no staged row read at all
    assert batches(out)["orders"] == (None, None)
    assert looked_up == []

    # a small drop: an unchanged row, a changed one and a new key; only its keys looked up
    small = HEADER + "5,c5,5,2026-01-01 09:00:00,\n6,c6,60,2026-01-01 09:00:00,\n"
    drop(d, "orders/0002.csv", small + "900,new,1,2026-01-01 09:00:00,\n", t0 + 60)
    assert batches(drops_job.sync())["orders"] == (2, 2)
    assert looked_up == [3]
    # an older file landing late: a staged key from a newer file keeps its row
    drop(d, "orders/0000.csv", HEADER + "6,old,1,2026-01-01 09:00:00,\n7,c7,70,2026-01-01 09:00:00,\n", t0 + 30)
    assert batches(drops_job.sync())["orders"] == (3, 1)
    drops_job.pull()
    assert drops_job.q("SELECT count(*), sum(amount) FROM orders") == [(201, sum(range(1, 201)) + 54 + 63 + 1)]
    assert drops_job.q("SELECT id, customer, amount FROM orders WHERE id IN (6, 7, 900) ORDER BY id") == [
        (6, "c6", 60.0),
        (7, "c7", 70.0),
        (900, "new", 1.0),
    ]
    # no temporary file of the run is left in the job's home
    assert not list((drops_job.dir / "home" / "drops" / "tmp").glob("latest-*"))


@pytest.mark.parametrize("lookups", [0, 1, 16])
def test_the_newest_file_wins_whichever_way_staged_rows_are_read(
    drops_job, monkeypatch: pytest.MonkeyPatch, lookups: int  # noqa: F811 - the fixture
) -> None:
    """Looked up by key (the first files of a run), read whole (after them, or at once
    with no lookup left): the same replica, file for file."""
    monkeypatch.setattr(sources.files, "LOOKUPS", lookups)
    t0 = int(time.time()) - 3600
    drops_job.write(tables=("orders",))
    d = drops_job.drops
    drop(d, "orders/new.csv", HEADER + "1,ann,99,2026-01-01 09:00:00,\n3,cy,3,2026-01-01 09:00:00,\n", t0 + 60)
    assert batches(drops_job.sync())["orders"] == (1, 2)
    # one run, four files: older and newer than what is staged, one the same time
    drop(d, "orders/old.csv", HEADER + "1,ann,10,2026-01-01 09:00:00,\n2,bob,20,2026-01-01 09:00:00,\n", t0)
    drop(d, "orders/tie.csv", HEADER + "3,cy,30,2026-01-01 09:00:00,tie\n", t0 + 60)
    drop(d, "orders/later.csv", HEADER + "2,bob,21,2026-01-01 09:00:00,later\n", t0 + 90)
    drop(d, "orders/latest.csv", HEADER + "4,dee,4,2026-01-01 09:00:00,\n1,ann,100,2026-01-01 09:00:00,\n", t0 + 120)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, amount, note FROM orders ORDER BY id") == [
        (1, 100.0, None),
        (2, 21.0, "later"),
        (3, 30.0, "tie"),  # the same time as the staged row's file: a later run's file wins
        (4, 4.0, None),
    ]
    # dropped again unchanged: nothing changes
    os.utime(d / "orders" / "latest.csv", (t0 + 180, t0 + 180))
    out = drops_job.sync()
    assert batches(out)["orders"] == (None, None)
    drops_job.pull()
    assert drops_job.q("SELECT count(*) FROM orders") == [(4,)]


def test_a_float_key_minus_zero_is_the_key_zero_for_the_newest_file_rule(
    drops_job,  # noqa: F811 - the fixture
) -> None:
    """-0.0 equals 0.0 (dlt's merge keeps one row for both) but prints as '-0.0': an older
    file's -0.0 overwrote the newer file's 0.0 (a fresh-user trial)."""
    t0 = time.time() - 3600
    lake = drops_job.lake_url
    drops_job.config.write_text(
        f'[jobs.drops]\nsource = "files"\nurl = "{drops_job.drops}"\nlake = "{lake}"\n\n'
        '[[jobs.drops.tables]]\nname = "fl"\nprimary_key = "id"\n'
        'contract = "tests.support.contracts_files:FloatKeyed"\n'
    )
    d = drops_job.drops
    drop(d, "fl/a.csv", "id,v\n0.0,new\n", t0 + 100)
    assert batches(drops_job.sync())["fl"] == (1, 1)
    drop(d, "fl/b.csv", "id,v\n-0.0,old\n2.5,x\n", t0)  # older, landing late
    assert batches(drops_job.sync())["fl"] == (2, 1)  # only 2.5 is news
    drops_job.pull()
    assert drops_job.q("SELECT id, v FROM fl ORDER BY id") == [(0.0, "new"), (2.5, "x")]


def _float_job(drops_job) -> None:  # noqa: ANN001
    drops_job.config.write_text(
        f'[jobs.drops]\nsource = "files"\nurl = "{drops_job.drops}"\nlake = "{drops_job.lake_url}"\n\n'
        '[[jobs.drops.tables]]\nname = "fl"\nprimary_key = "id"\n'
        'contract = "tests.support.contracts_files:FloatKeyed"\n'
    )


def _parquet(path, ids: list[float], v: str, mtime: float) -> None:  # noqa: ANN001
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(ids, pa.float32()), "v": [v] * len(ids)}), path)
    os.utime(path, (mtime, mtime))


def test_a_float32_key_and_a_touched_file_keep_the_newest_rows(drops_job) -> None:  # noqa: F811
    """A FLOAT key's text (0.1) never matched its staged DOUBLE's (0.10000000149011612), so
    a late older file replaced newer rows; a touched file's unchanged rows kept their
    first file's time (both: fresh-user trials)."""
    t0 = time.time() - 3600
    _float_job(drops_job)
    d = drops_job.drops / "fl"
    _parquet(d / "a.parquet", [0.1, 1.5, -0.0], "a", t0 + 100)
    assert batches(drops_job.sync())["fl"] == (1, 3)
    _parquet(d / "late.parquet", [0.1, 1.5, 0.0], "late", t0 + 50)  # older, landing late
    assert batches(drops_job.sync())["fl"] == (None, None)
    os.utime(d / "a.parquet", (t0 + 300, t0 + 300))  # touched: the newest again
    assert batches(drops_job.sync())["fl"] == (None, None)
    _parquet(d / "mid.parquet", [0.1, 1.5, 0.0], "mid", t0 + 200)  # older than the touch
    assert batches(drops_job.sync())["fl"] == (None, None)
    drops_job.pull()
    assert drops_job.q("SELECT v, count(*) FROM fl GROUP BY v") == [("a", 3)]


def test_staged_times_not_raised_are_a_warning_not_a_failed_run(
    drops_job, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import duckdb

    t0 = time.time() - 3600
    _float_job(drops_job)
    d = drops_job.drops / "fl"
    _parquet(d / "a.parquet", [1.0, 2.0], "a", t0 + 100)
    assert batches(drops_job.sync())["fl"] == (1, 2)

    def locked(*_a: object) -> None:
        raise duckdb.IOException('Could not set lock on file "staging.duckdb"')

    monkeypatch.setattr(sources.files, "write_staging", locked)
    os.utime(d / "a.parquet", (t0 + 300, t0 + 300))
    out = drops_job.sync()
    assert batches(out)["fl"] == (None, None)
    line = (
        "job 'drops' table 'fl': the staged file times of this run's unchanged rows were not "
        'raised (Could not set lock on file "staging.duckdb"): a file landing later'
    )
    state = drops_job.dir / "home" / "drops" / "state.duckdb"
    with duckdb.connect(str(state), read_only=True) as con:  # the operations log says so
        logged = con.execute(
            "SELECT tbl, detail FROM ops_log WHERE step = 'extract' AND outcome = 'warning'"
        ).fetchall()
    assert len(logged) == 1 and logged[0][0] == "fl" and logged[0][1].startswith(line), logged
