"""The files source: CSV, JSON Lines and Parquet drops in a real folder and on the S3 server,
picked up by modification time and name, malformed files set aside, bad settings refused."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from deltaferry.errors import ConfigError, TransientError

TABLES = {
    "orders": 'primary_key = "id"\ncontract = "tests.support.contracts_files:Orders"',
    "events": 'primary_key = ["id"]\ncontract = "tests.support.contracts_files:Events"\n'
    'deletes = "soft:deleted_at"',
    "stock": 'primary_key = ["sku", "store"]\ncontract = "tests.support.contracts_files:Stock"',
    "numbers": 'primary_key = "id"\ncontract = "tests.support.contracts_files:Numbers"',
    "loose": 'primary_key = "id"\ncontract = "tests.support.contracts_files:Loose"',
    "dated": 'primary_key = "id"\ncontract = "tests.support.contracts_files:Dated"',
}
HEADER = "id,customer,amount,placed_at,note\n"


def jobs_toml(
    lake: str, url: str = "drops", tables: tuple[str, ...] = ("orders", "events", "stock"), **extra: str
) -> str:
    """A ``drops`` job; ``extra`` adds job settings, ``<table>_extra`` table settings."""
    job = "".join(f"{k} = {v}\n" for k, v in extra.items() if not k.endswith("_extra"))
    text = f'[jobs.drops]\nsource = "files"\nurl = "{url}"\nlake = "{lake}"\n{job}'
    for t in tables:
        more = extra.get(f"{t}_extra", "")
        text += f'\n[[jobs.drops.tables]]\nname = "{t}"\n{TABLES[t]}\n{more}\n'
    return text


@dataclass
class DropsJob:
    """A files job over ``dir/drops`` publishing to a file:// lake, with helpers."""

    dir: Path
    config: Path
    lake_url: str
    replica: Path

    @property
    def drops(self) -> Path:
        return self.dir / "drops"

    def write(self, **kw: str) -> None:
        self.config.write_text(jobs_toml(self.lake_url, **kw))

    def job(self):  # noqa: ANN201
        from deltaferry.config import load_job

        return load_job("drops", self.config)

    def sync(self) -> dict:
        from flows.sync import sync_job

        return sync_job(job="drops", config=str(self.config))

    def lake(self):  # noqa: ANN201
        from destinations.lake import open_lake

        return open_lake(self.lake_url)

    def pull(self) -> None:
        from deltaferry.replica import pull

        pull(self.job(), self.lake(), self.replica)

    def q(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.replica), read_only=True) as con:
            return con.execute(sql).fetchall()

    def skipped(self) -> list[tuple[str, str]]:
        state = self.dir / "home" / "drops" / "state.duckdb"
        with duckdb.connect(str(state), read_only=True) as con:
            return con.execute(
                "SELECT tbl, detail FROM ops_log WHERE step = 'extract' AND outcome = 'skipped'"
                " ORDER BY id"
            ).fetchall()


@pytest.fixture
def drops_job(tmp_path: Path, home: Path, prefect_api: None) -> DropsJob:
    job = DropsJob(
        dir=tmp_path,
        config=tmp_path / "deltaferry.toml",
        lake_url=f"file://{tmp_path}/lake",
        replica=tmp_path / "replica.duckdb",
    )
    job.drops.mkdir()
    job.write()
    return job


def drop(root: Path, name: str, data: bytes | str, mtime: float) -> Path:
    """Write a file and set its modification time."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.utime(path, (mtime, mtime))
    return path


def parquet(rows: list[tuple[str, int, int]]) -> bytes:
    table = pa.table(
        {
            "sku": [r[0] for r in rows],
            "store": pa.array([r[1] for r in rows], pa.int32()),
            "qty": [r[2] for r in rows],
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def batches(out: dict) -> dict[str, tuple[int | None, int | None]]:
    return {t: (s["batch"], s.get("rows")) for t, s in out["tables"].items()}


ORDERS = "SELECT id, customer, amount, epoch(placed_at)::BIGINT, note FROM orders ORDER BY id"
T_9H = 1767258000  # 2026-01-01 09:00:00 UTC


def test_csv_jsonl_parquet_initial_then_incremental(drops_job):
    d, t0 = drops_job.drops, time.time() - 3600
    drop(
        d,
        "orders/2026-01-01.csv",
        HEADER + "1,ann,10.5,2026-01-01 09:00:00,\n"
        '2,bob,20,2026-01-01T10:00:00Z,"first, with comma"\n'
        '3,cy,0,2026-01-01 11:00:00+01:00,""\n',
        t0,
    )
    drop(
        d, "events/a.jsonl", '{"id":1,"kind":"click","n":1}\n{"id":2,"kind":"view","n":null}\n', t0
    )
    drop(d, "stock/s1.parquet", parquet([("a", 1, 5), ("a", 2, 0), ("b", 1, 7)]), t0)
    drop(d, "orders/.2026-01-02.csv.tmp", HEADER + "9,in,1,2026-01-01 09:00:00,progress\n", t0)

    first = drops_job.sync()
    assert batches(first) == {"orders": (1, 3), "events": (1, 2), "stock": (1, 3)}
    drops_job.pull()
    assert drops_job.q(ORDERS) == [
        (1, "ann", 10.5, T_9H, None),  # no zone offset: UTC; an empty field is null
        (2, "bob", 20.0, T_9H + 3600, "first, with comma"),
        (3, "cy", 0.0, T_9H + 3600, ""),  # a quoted empty field is the empty string
    ]

    # a new file, a newer one (gzip) sharing a key with it, a file replaced with changed
    # rows, and a file dropped again unchanged
    drop(
        d,
        "orders/2026-01-02.csv",
        HEADER
        + '2,bob,25,2026-01-01T10:00:00Z,"first, with comma"\n4,dan,1,2026-01-02 09:00:00,\n',
        t0 + 60,
    )
    drop(
        d,
        "orders/2026-01-03.csv.gz",
        gzip.compress(
            (
                HEADER + "4,dan,4,2026-01-02 09:00:00,\n5,eve,5,2026-01-03 09:00:00,late\n"
                "6,fay,1,2026-01-03 09:00:00,first\n6,fay,6,2026-01-03 09:00:00,last\n"
            ).encode()
        ),
        t0 + 120,
    )
    drop(
        d,
        "events/a.jsonl",
        '{"id":1,"kind":"click","n":1,"deleted_at":"2026-01-02T00:00:00Z"}\n'
        '{"id":2,"kind":"buy","n":2}\n{"id":3,"kind":"view"}\n',
        t0 + 60,
    )
    drop(d, "stock/s1.parquet", parquet([("a", 1, 5), ("a", 2, 0), ("b", 1, 7)]), t0 + 60)

    second = drops_job.sync()
    # only what changed: orders 2 (updated), 4 (the newest file wins), 5, 6 (a file's last
    # row wins); events 1 (deleted), 2, 3; stock nothing
    assert batches(second) == {"orders": (2, 4), "events": (2, 3), "stock": (None, None)}
    assert second["tables"]["events"]["deletes"] == 1
    drops_job.pull()
    assert drops_job.q(ORDERS) == [
        (1, "ann", 10.5, T_9H, None),
        (2, "bob", 25.0, T_9H + 3600, "first, with comma"),
        (3, "cy", 0.0, T_9H + 3600, ""),
        (4, "dan", 4.0, T_9H + 86400, None),
        (5, "eve", 5.0, T_9H + 2 * 86400, "late"),
        (6, "fay", 6.0, T_9H + 2 * 86400, "last"),
    ]
    assert drops_job.q("SELECT id, kind, n FROM events ORDER BY id") == [
        (2, "buy", 2),
        (3, "view", None),
    ]
    assert drops_job.q("SELECT sku, store, qty FROM stock ORDER BY sku, store") == [
        ("a", 1, 5),
        ("a", 2, 0),
        ("b", 1, 7),
    ]
    for table, n in (("orders", 6), ("events", 2), ("stock", 3)):
        assert drops_job.q(f"SELECT count(*) FROM {table}") == [(n,)]


def test_same_mtime_file_arriving_later_is_not_lost(drops_job):
    d, t = drops_job.drops, float(int(time.time()) - 600)
    drops_job.write(tables=("orders",), lookback_seconds="0")
    drop(d, "orders/b.csv", HEADER + "1,b,1,2026-01-01 09:00:00,\n", t)
    assert batches(drops_job.sync())["orders"] == (1, 1)

    # the same modification time and a name sorting before the one already read: read;
    # an older time, behind the mark: with no lookback, not read ...
    drop(d, "orders/a.csv", HEADER + "2,a,2,2026-01-01 09:00:00,\n", t)
    drop(d, "orders/0.csv", HEADER + "3,z,3,2026-01-01 09:00:00,\n", t - 5)
    assert batches(drops_job.sync())["orders"] == (2, 1)
    # ... within a lookback it is, and the files already read are not read again
    drops_job.write(tables=("orders",), lookback_seconds="60")
    assert batches(drops_job.sync())["orders"] == (3, 1)
    drops_job.pull()
    assert drops_job.q("SELECT id, customer FROM orders ORDER BY id") == [
        (1, "b"),
        (2, "a"),
        (3, "z"),
    ]


def test_malformed_files_are_set_aside_and_the_rest_publish(drops_job):
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("orders", "events"))
    drop(d, "orders/1.csv", HEADER + "1,ann,1,2026-01-01 09:00:00,\n", t0)
    drop(d, "events/1.jsonl", '{"id":1,"kind":"view"}\n', t0)
    assert batches(drops_job.sync())["orders"] == (1, 1)
    committed = drops_job.lake().get("drops/orders/manifests/000000000001.json")
    assert committed

    latin = (HEADER + "3,Zoë,3,2026-01-01 09:00:00,\n").encode("latin-1")
    at = latin.index("ë".encode("latin-1"))
    drop(d, "orders/2.csv", HEADER + "2,bob,2,2026-01-01 09:00:00,\n", t0 + 10)
    drop(d, "orders/3-latin.csv", latin, t0 + 11)
    drop(d, "orders/4-ragged.csv", HEADER + "4,cy,4,2026-01-01 09:00:00,x,EXTRA\n", t0 + 12)
    drop(d, "events/2-nokey.jsonl", '{"kind":"click"}\n', t0 + 10)
    drop(d, "events/3.jsonl", '{"id":3,"kind":"buy"}\n', t0 + 11)

    out = drops_job.sync()
    assert batches(out) == {"orders": (2, 1), "events": (2, 1)}
    assert len(out["extracted"].table("orders").skipped) == 2
    reasons = drops_job.skipped()
    assert [r[0] for r in reasons] == ["orders", "orders", "events"]
    assert reasons[0][1] == (
        "job 'drops' table 'orders': file orders/3-latin.csv set aside: not valid UTF-8 at "
        f'byte {at} (line 2); set encoding = "latin-1" (or the file\'s encoding) on the table, '
        "then touch the file to re-read it"
    )
    assert "file orders/4-ragged.csv set aside: not valid CSV: " in reasons[1][1]
    assert "Expected 5 columns, got 6" in reasons[1][1]
    assert "file events/2-nokey.jsonl set aside: no primary key column(s) id" in reasons[2][1]
    assert all("\n" not in r and r.startswith("job 'drops' table '") for _, r in reasons)
    # what was committed before is untouched
    assert drops_job.lake().get("drops/orders/manifests/000000000001.json") == committed

    # the file fixed (a newer modification time) publishes; the others are not re-reported
    drop(d, "orders/3-latin.csv", latin.decode("latin-1"), t0 + 20)
    assert batches(drops_job.sync())["orders"] == (3, 1)
    assert len(drops_job.skipped()) == 3
    drops_job.pull()
    assert drops_job.q("SELECT id, customer FROM orders ORDER BY id") == [
        (1, "ann"),
        (2, "bob"),
        (3, "Zoë"),
    ]
    assert drops_job.q("SELECT id FROM events ORDER BY id") == [(1,), (3,)]


BAD_FILES = {  # case: (file name, bytes, what the reason says)
    "not-parquet": ("s.parquet", b"PAR1 this is not parquet", "not a valid Parquet file: "),
    "bad-gzip": ("o.csv.gz", b"\x1f\x8b\x08junk", "not valid gzip"),
    "twice": ("o.csv", "id,ID\n1,2\n", "column(s) id more than once"),
    "reserved": ("o.csv", "id,_dlt_id\n1,2\n", "reserved column(s) _dlt_id"),
    "bad-value": (
        "o.csv",
        HEADER + "1,a,abc,2026-01-01,\n",
        "column amount cannot be read as double (the contract's type): Failed to parse string: 'abc'",
    ),
    "utf-16": ("o.csv", HEADER.encode("utf-16"), 'set encoding = "utf-16"'),
    "no-format": ("o.txt", "id\n1\n", 'format unknown from its name; set format = "csv"'),
    "not-jsonl": ("o.jsonl", '{"id": 1}\n[1, 2]\n', "not valid JSON Lines: JSON parse error"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=str)
def test_what_a_bad_file_is_set_aside_for(case):
    from deltaferry.config import TableConfig
    from sources.files import SetAside, contract_types, file_format, read_table

    name, data, says = BAD_FILES[case]
    t = TableConfig("orders", ("id",), None, "none", "tests.support.contracts_files:Orders")
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(SetAside) as caught:
        read_table(raw, file_format(name, None), t, contract_types(t, "here"))
    assert says in f"{caught.value.problem}; {caught.value.fix}"


def test_empty_and_header_only_files_stage_nothing():
    from deltaferry.config import TableConfig
    from sources.files import read_table

    t = TableConfig("orders", ("id",), None, "none", "tests.support.contracts_files:Orders")
    assert read_table(b"", "csv", t, {}) is None
    assert read_table(b"\n", "jsonl", t, {}) is None
    assert read_table(HEADER.encode(), "csv", t, {}).num_rows == 0


def test_timestamps_without_an_offset_are_utc():
    from deltaferry.config import TableConfig
    from sources.files import contract_types, read_table

    t = TableConfig("orders", ("id",), None, "none", "tests.support.contracts_files:Orders")
    stamps = ["2026-01-01", "2026-01-01 09:00:00", "2026-01-01T09:00:00Z"]
    stamps += ["2026-01-01T10:00:00+01:00", "2026-01-01 04:00:00-05", "2026-01-01 09:00:00.5"]
    csv_text = HEADER + "".join(f"{i},c,1,{s},\n" for i, s in enumerate(stamps, 1))
    table = read_table(csv_text.encode(), "csv", t, contract_types(t, "here"))
    assert table.schema.field("placed_at").type == pa.timestamp("us", tz="UTC")
    seconds = [v.timestamp() for v in table["placed_at"].to_pylist()]
    assert seconds == [T_9H - 9 * 3600] + [T_9H] * 4 + [T_9H + 0.5]


def test_timestamps_without_an_offset_are_taken_in_the_jobs_timezone():
    from deltaferry.config import TableConfig
    from sources.files import contract_types, read_table

    t = TableConfig("orders", ("id",), None, "none", "tests.support.contracts_files:Orders")
    types = contract_types(t, "here")
    stamps = ["2026-01-01 10:00:00", "2026-01-01T09:00:00Z", "2026-07-01 11:00:00"]
    csv_text = HEADER + "".join(f"{i},c,1,{s},\n" for i, s in enumerate(stamps, 1))
    table = read_table(csv_text.encode(), "csv", t, types, "Europe/Berlin")
    seconds = [v.timestamp() for v in table["placed_at"].to_pylist()]
    # winter: UTC+1, summer: UTC+2; a stamp with its own zone keeps it
    assert seconds == [T_9H, T_9H, T_9H + 181 * 86400]
    naive = pa.table(
        {
            "id": [1],
            "customer": ["c"],
            "amount": [1.0],
            "placed_at": pa.array([dt.datetime(2026, 1, 1, 10)], pa.timestamp("us")),
        }
    )
    buf = pa.BufferOutputStream()
    pq.write_table(naive, buf)
    table = read_table(buf.getvalue().to_pybytes(), "parquet", t, types, "Europe/Berlin")
    assert [v.timestamp() for v in table["placed_at"].to_pylist()] == [T_9H]


def test_wall_times_the_zone_shows_twice_or_never_are_read_and_counted():
    """CSV text and Parquet naive times at Berlin's clock changes: read as PostgreSQL reads
    them (02:30 on 31 March is 01:30 UTC, 02:30 on 27 October the later one, 01:30 UTC), and
    counted per column for the run's warning (they set the file aside before)."""
    from deltaferry.config import TableConfig
    from sources.files import contract_types, read_table
    from sources.wall_time import REPEATED, SKIPPED, ZoneShifts

    t = TableConfig("orders", ("id",), None, "none", "tests.support.contracts_files:Orders")
    types = contract_types(t, "here")
    stamps = ["2024-03-31 02:30:00", "2024-10-27 02:30:00", "2024-10-27T02:30:00+02:00"]
    csv_text = HEADER + "".join(f"{i},c,1,{s},\n" for i, s in enumerate(stamps, 1))
    shifts = ZoneShifts()
    table = read_table(csv_text.encode(), "csv", t, types, "Europe/Berlin", shifts=shifts)
    utc = dt.timezone.utc
    assert table["placed_at"].to_pylist() == [
        dt.datetime(2024, 3, 31, 1, 30, tzinfo=utc),
        dt.datetime(2024, 10, 27, 1, 30, tzinfo=utc),
        dt.datetime(2024, 10, 27, 0, 30, tzinfo=utc),  # its offset says which
    ]
    assert shifts.counts == {("placed_at", SKIPPED): 1, ("placed_at", REPEATED): 1}
    naive = pa.table(
        {
            "id": [1],
            "customer": ["c"],
            "amount": [1.0],
            "placed_at": pa.array([dt.datetime(2024, 3, 31, 2, 30)], pa.timestamp("us")),
        }
    )
    buf = pa.BufferOutputStream()
    pq.write_table(naive, buf)
    shifts = ZoneShifts()
    table = read_table(buf.getvalue().to_pybytes(), "parquet", t, types, "Europe/Berlin", shifts=shifts)
    assert table["placed_at"].to_pylist() == [dt.datetime(2024, 3, 31, 1, 30, tzinfo=utc)]
    assert shifts.counts == {("placed_at", SKIPPED): 1}
    # year 1 at 00:30 in Berlin is before the first UTC instant: the file is set aside
    from sources.files.listing import SetAside

    early = HEADER + "1,c,1,0001-01-01 00:30:00,\n2,c,1,2024-03-31 02:30:00,\n"
    with pytest.raises(SetAside, match="placed_at.*out of range"):
        read_table(early.encode(), "csv", t, types, "Europe/Berlin")


def test_an_encoding_setting_reads_latin_1(drops_job):
    drops_job.write(tables=("orders",), orders_extra='encoding = "latin-1"\ndelimiter = ";"')
    data = "id;customer;amount;placed_at;note\n1;Zoë;1,5;2026-01-01 09:00:00;café\n"
    drop(drops_job.drops, "orders/1.csv", data.replace("1,5", "1.5").encode("latin-1"), 1e9)
    assert batches(drops_job.sync())["orders"] == (1, 1)
    drops_job.pull()
    assert drops_job.q("SELECT customer, amount, note FROM orders") == [("Zoë", 1.5, "café")]


def test_s3_prefix_initial_then_incremental(tmp_path, home, bucket, s3_endpoint, prefect_api):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    src = f"drops-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=src)

    def put(key: str, body: bytes | str) -> None:
        s3.put_object(Bucket=src, Key=f"landing/{key}", Body=body)

    job = DropsJob(tmp_path, tmp_path / "deltaferry.toml", f"s3://{bucket}/lake", tmp_path / "r.db")
    job.config.write_text(jobs_toml(job.lake_url, url=f"s3://{src}/landing"))
    put("orders/1.csv", HEADER + "1,ann,1,2026-01-01 09:00:00,\n2,bob,2,2026-01-01 09:00:00,\n")
    put("orders/_SUCCESS", "")
    put("orders/.3.csv.partial", "garbage")
    put("orders/old/9.csv", HEADER + "9,sub,9,2026-01-01 09:00:00,\n")  # not in orders/*
    put("events/1.jsonl", '{"id":1,"kind":"view"}\n')
    put("stock/1.parquet", parquet([("a", 1, 1)]))

    assert batches(job.sync()) == {"orders": (1, 2), "events": (1, 1), "stock": (1, 1)}
    put("orders/2.csv", HEADER + "2,bob,20,2026-01-01 09:00:00,\n3,cy,3,2026-01-01 09:00:00,\n")
    put("events/1.jsonl", '{"id":1,"kind":"buy"}\n')  # overwritten, maybe within the second
    assert batches(job.sync()) == {"orders": (2, 2), "events": (2, 1), "stock": (None, None)}
    job.pull()
    assert job.q("SELECT id, amount FROM orders ORDER BY id") == [(1, 1.0), (2, 20.0), (3, 3.0)]
    assert job.q("SELECT id, kind FROM events") == [(1, "buy")]
    assert job.q("SELECT sku, store, qty FROM stock") == [("a", 1, 1)]


def test_s3_source_errors(tmp_path, home, bucket, monkeypatch):
    from deltaferry.config import load_job
    from sources.files import preflight_source

    config = tmp_path / "deltaferry.toml"
    config.write_text(jobs_toml(f"s3://{bucket}/lake", url="s3://no-such-drops/landing"))
    with pytest.raises(ConfigError, match="job 'drops'.*bucket 'no-such-drops' does not exist"):
        preflight_source(load_job("drops", config))

    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("DELTAFERRY_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(TransientError, match="job 'drops'.*unreachable"):
        preflight_source(load_job("drops", config))


CONFIG_ERRORS = {  # case: (jobs file settings, needles of the one error line)
    "reconcile": (
        {"orders_extra": 'deletes = "reconcile"'},
        ["job 'drops' table 'orders'", '"reconcile" is not possible', '"soft:<column>"'],
    ),
    "missing-folder": ({"url": "nowhere"}, ["job 'drops'", "nowhere does not exist"]),
    "unknown-format": ({"events_extra": 'format = "xml"'}, ["table 'events'", "'xml'"]),
    "unknown-encoding": ({"orders_extra": 'encoding = "klingon"'}, ["'klingon' is unknown"]),
    "bad-url": ({"url": "ftp://host/x"}, ["job 'drops'", "is not a folder"]),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=str)
def test_config_errors_are_one_line_exit_2(case, tmp_path, home):
    from deltaferry.cli import cli

    settings, needles = CONFIG_ERRORS[case]
    (tmp_path / "drops").mkdir()
    config = tmp_path / "deltaferry.toml"
    config.write_text(jobs_toml(f"file://{tmp_path}/lake", **settings))
    result = CliRunner().invoke(cli, ["run", "drops", "--config", str(config)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "lake").exists()


def test_watermark_rule():
    from sources.files import DropFile, Watermark

    state: dict = {}
    now = 10_000 * 10**9
    mark = Watermark(state, lookback_s=5)
    first = [DropFile("b", 100 * 10**9, "1"), DropFile("c", 90 * 10**9, "1")]
    assert mark.new(first) == first  # the first run reads everything
    mark.advance(first, now)
    assert state["high_water_ns"] == 100 * 10**9
    assert set(state["seen"]) == {"b"}  # c is more than 5 s behind: forgotten

    mark = Watermark(state, lookback_s=5)
    listed = [
        *first,
        DropFile("a", 100 * 10**9, "1"),  # same time as b, arrived later
        DropFile("d", 96 * 10**9, "1"),  # older, within the lookback
        DropFile("e", 94 * 10**9, "1"),  # older, beyond it
        DropFile("b", 100 * 10**9, "2"),  # b rewritten within the same tick
    ]
    assert [f.name for f in mark.new(listed)] == ["a", "d", "b"]

    future = [DropFile("f", now + 3600 * 10**9, "1")]
    mark.advance(future, now)
    assert state["high_water_ns"] == now  # never past the listing's clock
    assert Watermark(state, 5).new([DropFile("g", now - 10**9, "1")])  # not hidden by f


def test_the_cli_run_warns_about_a_set_aside_file(drops_job):
    from deltaferry.cli import cli

    t0 = time.time() - 3600
    drops_job.write(tables=("orders",))
    drop(drops_job.drops, "orders/1.csv", HEADER + "1,ann,1,2026-01-01 09:00:00,\n", t0)
    latin = (HEADER + "2,Zoë,2,2026-01-01 09:00:00,\n").encode("latin-1")
    drop(drops_job.drops, "orders/2.csv", latin, t0 + 1)
    result = CliRunner().invoke(cli, ["run", "drops", "--config", str(drops_job.config)])
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1, result.stderr
    assert "job 'drops' table 'orders': file orders/2.csv set aside: not valid UTF-8" in warnings[0]
    assert 'set encoding = "latin-1"' in warnings[0]


def test_a_lost_home_does_not_delete_rows_of_archived_files(drops_job):
    """After the drop folder was cleaned and the producer's home lost, adopting the lake
    re-reads what is left: rows of archived files are not deletes (no key set to compare)."""
    import shutil

    t0 = time.time() - 3600
    drops_job.write(tables=("orders",))
    d = drops_job.drops
    drop(
        d,
        "orders/a.csv",
        HEADER + "1,ann,1,2026-01-01 09:00:00,\n2,bob,2,2026-01-01 09:00:00,\n",
        t0,
    )
    assert batches(drops_job.sync())["orders"] == (1, 2)
    drop(d, "orders/b.csv", HEADER + "3,cy,3,2026-01-01 09:00:00,\n", t0 + 10)
    assert batches(drops_job.sync())["orders"] == (2, 1)
    (d / "orders" / "a.csv").unlink()  # archived after pickup
    shutil.rmtree(drops_job.dir / "home")  # the producer's state is lost
    out = drops_job.sync()
    assert any("adopted batch 2" in r for r in out["recovered"])
    assert out["tables"]["orders"].get("deletes", 0) == 0
    drops_job.pull()
    assert drops_job.q("SELECT id FROM orders ORDER BY id") == [(1,), (2,), (3,)]


def test_an_older_file_landing_later_does_not_overwrite_newer_rows(drops_job):
    """A key's row from the newest file wins across runs too: a late file with an older
    modification time (a retransmission, a slow upload) only adds the keys it alone has."""
    t0 = time.time() - 3600
    drops_job.write(tables=("orders",))
    d = drops_job.drops
    drop(d, "orders/new.csv", HEADER + "1,ann,99,2026-01-01 09:00:00,\n", t0 + 60)
    assert batches(drops_job.sync())["orders"] == (1, 1)
    old = HEADER + "1,ann,10,2026-01-01 09:00:00,\n2,bob,20,2026-01-01 09:00:00,\n"
    drop(d, "orders/old.csv", old, t0)  # lands later, within the lookback, but is older
    assert batches(drops_job.sync())["orders"] == (2, 1)  # only key 2 is news
    drops_job.pull()
    assert drops_job.q("SELECT id, amount FROM orders ORDER BY id") == [(1, 99.0), (2, 20.0)]
    # touching the old file re-delivers it on purpose: now it is the newest
    os.utime(d / "orders" / "old.csv", (t0 + 120, t0 + 120))
    assert batches(drops_job.sync())["orders"] == (3, 1)
    drops_job.pull()
    assert drops_job.q("SELECT id, amount FROM orders ORDER BY id") == [(1, 10.0), (2, 20.0)]
    # all of it, its unchanged row too (key 2, not staged again): a file landing later,
    # older than the touch but newer than the file that first staged key 2, changes
    # nothing (it replaced key 2: the staged row kept its first file's time)
    mid = HEADER + "1,ann,55,2026-01-01 09:00:00,\n2,bob,77,2026-01-01 09:00:00,\n"
    drop(d, "orders/mid.csv", mid, t0 + 90)
    assert batches(drops_job.sync())["orders"] == (None, None)
    drops_job.pull()
    assert drops_job.q("SELECT id, amount FROM orders ORDER BY id") == [(1, 10.0), (2, 20.0)]


def test_of_two_files_with_the_same_time_the_one_a_later_run_finds_wins(drops_job):
    """S3 keeps modification times to the second: a drop that lands a moment after another
    can have the same time. The one a later run found landed later and wins (the earlier
    run's row was kept, exit 0, when its name sorted last: a fresh-user trial); within one
    run, the name that sorts last wins."""
    t0 = int(time.time()) - 600
    drops_job.write(tables=("orders",))
    d = drops_job.drops
    drop(d, "orders/b-0001.csv", HEADER + "1,ann,10,2026-01-01 09:00:00,first\n", t0)
    assert batches(drops_job.sync())["orders"] == (1, 1)
    drop(d, "orders/a-0002.csv", HEADER + "1,ann,20,2026-01-01 09:00:00,second\n2,bob,5,2026-01-01 09:00:00,\n", t0)
    assert batches(drops_job.sync())["orders"] == (2, 2)
    drops_job.pull()
    assert drops_job.q("SELECT id, amount, note FROM orders ORDER BY id") == [(1, 20.0, "second"), (2, 5.0, None)]
    drop(d, "orders/c-0003.csv", HEADER + "3,cy,1,2026-01-01 09:00:00,c\n", t0 + 60)
    drop(d, "orders/d-0003.csv", HEADER + "3,cy,2,2026-01-01 09:00:00,d\n", t0 + 60)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, note FROM orders WHERE id = 3") == [(3, "d")]


# --- every value exactly: numbers, decimals, empty fields, documents ---------------------

I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def read_numbers(data: bytes | str, fmt: str) -> pa.Table:
    """One file read as the ``numbers`` table (contract tests.support.contracts_files:Numbers)."""
    from deltaferry.config import TableConfig
    from sources.files import contract_types, read_table

    t = TableConfig("numbers", ("id",), None, "none", "tests.support.contracts_files:Numbers")
    raw = data.encode() if isinstance(data, str) else data
    return read_table(raw, fmt, t, contract_types(t, "here"))


def set_aside_for(data: bytes | str, fmt: str) -> str:
    from sources.files import SetAside

    with pytest.raises(SetAside) as caught:
        read_numbers(data, fmt)
    return f"{caught.value.problem}; {caught.value.fix}"


def parquet_of(**columns: pa.Array) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def by_id(table: pa.Table, column: str) -> dict:
    return dict(zip(table["id"].to_pylist(), table[column].to_pylist(), strict=True))


def test_jsonl_integers_never_pass_through_a_double():
    from decimal import Decimal

    ints = [2**53 + 1, I64_MIN, I64_MAX, -(2**53) - 1, 0]
    lines = "".join(f'{{"id": {i}, "n": {v}, "big": {v}}}\n' for i, v in enumerate(ints, 1))
    table = read_numbers(lines, "jsonl")
    assert table.schema.field("n").type == pa.int64()  # contract int
    assert table.schema.field("big").type == pa.int64()  # not in the contract: as the file says
    assert table["n"].to_pylist() == ints and table["big"].to_pylist() == ints
    # one value beyond int64 in a column the contract leaves loose: decimal(38, 0), all exact
    table = read_numbers(lines + f'{{"id": 9, "big": {U64_MAX}}}\n', "jsonl")
    assert table.schema.field("big").type == pa.decimal128(38, 0)
    assert table["big"].to_pylist() == [Decimal(v) for v in ints] + [Decimal(U64_MAX)]
    assert table["n"].to_pylist() == ints + [None]
    # the contract's int column cannot hold it: refused, naming column, value and the fix
    says = set_aside_for(f'{{"id": 1, "n": {U64_MAX}}}\n', "jsonl")
    assert f"column n value {U64_MAX} (line 1) is out of int64 range" in says
    assert "declare n as Decimal(38, 0)" in says
    says = set_aside_for(f'{{"id": 1, "big": {10**38}}}\n', "jsonl")
    assert f"column big value {10**38} (line 1) has more than 38 digits" in says
    # a whole number written with a point, for an int column, is that integer
    assert read_numbers('{"id": 1, "n": 1.0}\n{"id": 2, "n": 2e3}\n', "jsonl")["n"].to_pylist() == [
        1,
        2000,
    ]
    assert "'2.5'" in set_aside_for('{"id": 1, "n": 2.5}\n', "jsonl")


def test_contract_decimals_are_read_exactly_from_every_file_type():
    from decimal import Decimal

    amounts = ["12345678901234567.89", "0.1", "0.10", "-0.00", "999999999999999999.99", "-7"]
    want = [Decimal(a).quantize(Decimal("0.01")) for a in amounts]
    csv_text = "id,amount,whole\n" + "".join(
        f"{i},{a},{U64_MAX if i == 1 else ''}\n" for i, a in enumerate(amounts, 1)
    )
    jsonl = "".join(f'{{"id": {i}, "amount": {a}}}\n' for i, a in enumerate(amounts, 1))
    jsonl += f'{{"id": 7, "amount": "0.5", "whole": {U64_MAX}}}\n'  # text holding a number too
    pq_text = parquet_of(id=pa.array([1, 2, 3]), amount=pa.array(["0.1", None, "-12.5"]))
    pq_double = parquet_of(id=pa.array([1, 2]), amount=pa.array([0.1, -0.0]))  # shortest text
    pq_dec = parquet_of(id=pa.array([1]), amount=pa.array([Decimal("1.2500")], pa.decimal128(10, 4)))
    for data, fmt, expected in [
        (csv_text, "csv", want),
        (jsonl, "jsonl", [*want, Decimal("0.50")]),
        (pq_text, "parquet", [Decimal("0.10"), None, Decimal("-12.50")]),
        (pq_double, "parquet", [Decimal("0.10"), Decimal("0.00")]),
        (pq_dec, "parquet", [Decimal("1.25")]),
    ]:
        table = read_numbers(data, fmt)
        assert table.schema.field("amount").type == pa.decimal128(20, 2), fmt
        if "whole" in table.column_names:
            assert table.schema.field("whole").type == pa.decimal128(28, 0), fmt
        assert table["amount"].to_pylist() == expected, fmt
        assert [str(v) for v in table["amount"].to_pylist()[:1]] == [str(expected[0])], fmt
    assert read_numbers(csv_text, "csv")["whole"].to_pylist()[:2] == [Decimal(U64_MAX), None]


@pytest.mark.parametrize(
    "data, fmt, says",
    [
        ("id,amount\n1,0.5\n2,0.125\n", "csv", "Rescaling Decimal value would cause data loss (row 2: '0.125')"),
        ('{"id": 1, "amount": 0.125}\n', "jsonl", "(row 1: '0.125')"),
        ("id,amount\n1,1234567890123456789\n", "csv", "does not fit in precision 20"),
        ('{"id": 1, "amount": 1234567890123456789}\n', "jsonl", "does not fit in precision 20"),
        (parquet_of(id=pa.array([1]), amount=pa.array([0.125])), "parquet", "(row 1: '0.125')"),
        ('id,amount\n1,""\n', "csv", "Empty string cannot be converted"),  # "" is not NULL
    ],
)
def test_a_decimal_that_does_not_fit_the_contract_is_refused_never_rounded(data, fmt, says):
    text = set_aside_for(data, fmt)
    assert text.startswith("column amount cannot be read as decimal128(20, 2) (the contract's type)")
    assert says in text


def test_floats_keep_their_value_and_sign_or_are_refused():
    import math

    table = read_numbers("id,x\n1,-0.0\n2,0.1\n3,1e308\n4,inf\n5,5e-324\n", "csv")
    xs = table["x"].to_pylist()
    assert math.copysign(1, xs[0]) == -1 and xs[1:] == [0.1, 1e308, math.inf, 5e-324]
    assert "out of range (would be infinity) (row 1: '1e400')" in set_aside_for("id,x\n1,1e400\n", "csv")
    assert "too small (would be 0) (row 1: '1e-400')" in set_aside_for("id,x\n1,1e-400\n", "csv")
    # an int column into a float contract column: 2^53 + 1 is not a double
    assert "9007199254740993" in set_aside_for('{"id": 1, "x": 9007199254740993}\n', "jsonl")
    # a loose JSON number: a double when it is exactly one, else refused with the fix
    table = read_numbers('{"id": 1, "loose": 0.1}\n{"id": 2, "loose": -0.0}\n{"id": 3, "loose": 2}\n', "jsonl")
    assert table.schema.field("loose").type == pa.float64()
    assert table["loose"].to_pylist() == [0.1, 0.0, 2.0]
    assert math.copysign(1, table["loose"][1].as_py()) == -1
    says = set_aside_for('{"id": 1, "loose": 12345678901234567.89}\n', "jsonl")
    assert "column loose value 12345678901234567.89 (line 1) is not exactly a double" in says
    assert "declare loose as Decimal(precision, scale)" in says
    assert "NaN is not JSON" in set_aside_for('{"id": 1, "x": NaN}\n', "jsonl")


def test_csv_empty_fields_are_null_and_quoted_empty_is_the_empty_string():
    header = "id,amount,whole,n,x,flag,at,note,doc\n"
    table = read_numbers(header + '1,,,,,,,,\n2,1,2,3,4.5,false,2026-01-01,"",""\n', "csv")
    rows = table.to_pylist()
    assert all(v is None for k, v in rows[0].items() if k != "id")  # NULL in every type
    assert rows[1]["note"] == "" and rows[1]["doc"] == ""  # quoted empty: the empty string
    assert rows[1]["flag"] is False and rows[1]["n"] == 3
    for column in ("n", "x", "flag", "at"):  # "" is not a number, a bool or a time: refused
        cols = ["id", column]
        says = set_aside_for(",".join(cols) + '\n1,""\n', "csv")
        assert f"column {column} cannot be read as" in says and "(row 1: '')" in says


def test_json_documents_stay_json_text_with_their_numbers_as_written():
    lines = (
        '{"id": 1, "doc": {"a": 0.10, "b": [1, null, 18446744073709551615], "c": "é"}}\n'
        '{"id": 2, "doc": null}\n'
        '{"id": 3}\n'
        '{"id": 4, "doc": "text"}\n'
        '{"id": 5, "doc": []}\n'
    )
    docs = by_id(read_numbers(lines, "jsonl"), "doc")
    assert docs == {
        1: '{"a":0.10,"b":[1,null,18446744073709551615],"c":"é"}',
        2: None,  # a top-level null is NULL, as a key left out
        3: None,
        4: '"text"',  # a string in a document column is its JSON
        5: "[]",
    }
    # Parquet: nested columns (struct, list, map) become the same JSON text
    from decimal import Decimal

    # (an empty map is an empty object, as a map with keys is an object: it was "[]")
    data = parquet_of(
        id=pa.array([1, 2, 3, 4]),
        doc=pa.array([{"d": Decimal("0.10"), "f": 0.1, "l": [1, None]}, None, None, None]),
        tags=pa.array(
            [[("k", 1)], None, [], [("a", 1), ("a", 2)]], pa.map_(pa.string(), pa.int64())
        ),
        nested=pa.array(
            [[{"m": []}], None, [], None],
            pa.list_(pa.struct([("m", pa.map_(pa.string(), pa.int64()))])),
        ),
    )
    table = read_numbers(data, "parquet")
    assert by_id(table, "doc") == {1: '{"d":0.10,"f":0.1,"l":[1,null]}', 2: None, 3: None, 4: None}
    assert by_id(table, "tags") == {1: '{"k":1}', 2: None, 3: "{}", 4: '{"a":1,"a":2}'}
    assert by_id(table, "nested") == {1: '[{"m":{}}]', 2: None, 3: "[]", 4: None}


def test_every_value_reaches_the_replica_exactly(drops_job):
    """CSV, JSON Lines and Parquet drops of one table, synced and pulled: the replica holds
    the contract's types (decimal(20, 2), not text or double) and the values as written.
    (-0.0 arrives as 0.0: dlt's merge into staging drops the sign; read_table keeps it.)"""
    from decimal import Decimal

    d, t0 = drops_job.drops, time.time() - 100
    drops_job.write(tables=("numbers",))
    drop(d, "numbers/a.csv", "id,amount,n,x,note\n1,12345678901234567.89,-9223372036854775808,-0.0,\n2,0.1,,,\"\"\n", t0)
    drop(
        d,
        "numbers/b.jsonl",
        f'{{"id": 3, "amount": 0.1, "n": {I64_MAX}, "whole": {U64_MAX}, "doc": {{"v": 0.10}}}}\n'
        f'{{"id": 4, "amount": 999999999999999999.99, "n": 9007199254740993, "x": 0.1}}\n',
        t0 + 1,
    )
    drop(d, "numbers/c.parquet", parquet_of(id=pa.array([5]), amount=pa.array(["-0.01"])), t0 + 2)
    out = drops_job.sync()
    assert batches(out)["numbers"] == (1, 5)
    assert drops_job.skipped() == []
    drops_job.pull()
    types = dict((r[0], r[1]) for r in drops_job.q("DESCRIBE numbers"))
    assert types["amount"] == "DECIMAL(20,2)" and types["whole"] == "DECIMAL(28,0)"
    assert types["n"] == "BIGINT" and types["x"] == "DOUBLE"
    rows = drops_job.q(
        "SELECT id, amount, CAST(n AS VARCHAR), x, CAST(whole AS VARCHAR), note, doc "
        "FROM numbers ORDER BY id"
    )
    assert rows == [
        (1, Decimal("12345678901234567.89"), str(I64_MIN), -0.0, None, None, None),
        (2, Decimal("0.10"), None, None, None, "", None),
        (3, Decimal("0.10"), str(I64_MAX), None, str(U64_MAX), None, '{"v":0.10}'),
        (4, Decimal("999999999999999999.99"), "9007199254740993", 0.1, None, None, None),
        (5, Decimal("-0.01"), None, None, None, None, None),
    ]


def test_a_row_without_a_key_is_held_back_and_the_rest_of_its_file_published(drops_job):
    d = drops_job.drops
    drop(d, "orders/1.csv", HEADER + "1,ann,1.5,2026-01-01,\n,nobody,2,2026-01-01,\n3,cy,3,2026-01-01,\n", T_9H)
    out = drops_job.sync()
    assert batches(out)["orders"] == (1, 2)
    assert out["extracted"].table("orders").held == 1
    assert any("held back" in s and "primary key column(s) id missing or NULL" in s for s in out["skipped"])
    from deltaferry.state import StateStore

    with StateStore("drops").connect(read_only=True) as con:
        held = con.execute('SELECT pk, field, "check" FROM quarantine WHERE tbl = \'orders\'').fetchall()
    assert held == [('{"id": null}', "id", "primary key not null")]
    drops_job.pull()
    assert drops_job.q("SELECT id, customer FROM orders ORDER BY id") == [(1, "ann"), (3, "cy")]


def test_a_new_jobs_file_columns_keep_their_names_or_the_file_is_set_aside():
    from deltaferry.config import TableConfig
    from sources.files import SetAside, read_table

    t = TableConfig("orders", ("id",), None, "none", "tests.support.contracts_files:Orders")
    table = read_table(b"id,userId,Order Date,select\n1,7,2026-01-01,x\n", "csv", t, {}, "UTC", "direct")
    assert table.column_names == ["id", "userId", "Order Date", "select"]
    for header, says in [
        ("id,Email,email\n", "columns 'Email' and 'email' differ only in case"),
        ("id,_dlt_id\n", "column '_dlt_id' is a name deltaferry and dlt use for their own"),
        ('id," padded"\n', "has leading or trailing spaces"),
    ]:
        with pytest.raises(SetAside) as caught:
            read_table((header + "1,2" + ",3" * (header.count(",") - 1) + "\n").encode(), "csv", t, {}, "UTC", "direct")
        assert says in caught.value.problem
    # a job staged before names were kept: dlt's snake_case names, as before
    assert read_table(b"id,userId\n1,2\n", "csv", t, {}).column_names == ["id", "user_id"]


def test_a_gzipped_parquet_file_is_read_like_the_plain_one():
    """The README says files may be gzipped, whatever their format; ``x.parquet.gz`` was set
    aside as "not a valid Parquet file" (a fresh-user trial)."""
    from deltaferry.config import TableConfig
    from sources.files import contract_types, file_format, read_table

    t = TableConfig("orders", ("id",), None, "none", "tests.support.contracts_files:Orders")
    buf = io.BytesIO()
    pq.write_table(
        pa.table({"id": [1, 2], "customer": ["a", "b"], "amount": ["1.50", "2.00"],
                  "placed_at": ["2026-01-01T09:00:00Z"] * 2, "note": [None, "x"]}),
        buf,
    )
    plain = buf.getvalue()
    types = contract_types(t, "here")
    want = read_table(plain, file_format("o.parquet", None), t, types)
    got = read_table(gzip.compress(plain), file_format("o.parquet.gz", None), t, types)
    assert want is not None and want.num_rows == 2
    assert got is not None and got.equals(want)


def test_a_file_whose_untyped_column_the_staged_type_cannot_hold_is_set_aside(drops_job):
    """A column the contract does not type is staged as the first file had it; a later
    file with values that type does not hold (1.5 in a BIGINT column, text, a time in a
    DATE column) was cast into it in staging (1.5 stored as 2, exit 0) or failed every
    run. It is set aside naming column and types; files whose values fit go on."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    drop(d, "loose/1.jsonl", '{"id":1,"x":1,"day":"2024-02-01"}\n', t0)
    drops_job.sync()
    drop(d, "loose/2.jsonl", '{"id":2,"x":1.5,"day":"2024-02-02"}\n', t0 + 10)
    drop(d, "loose/3.jsonl", '{"id":3,"x":"three"}\n', t0 + 11)
    drop(d, "loose/4.jsonl", '{"id":4,"x":7}\n', t0 + 12)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, x FROM loose ORDER BY id") == [(1, 1), (4, 7)]
    reasons = [r for _, r in drops_job.skipped()]
    assert len(reasons) == 2
    assert "file loose/2.jsonl set aside: column x is staged as BIGINT" in reasons[0]
    assert "DOUBLE" in reasons[0] and "deltaferry reset" in reasons[0]
    assert "file loose/3.jsonl set aside: column x is staged as BIGINT" in reasons[1]
    assert "VARCHAR" in reasons[1]


def test_a_file_naming_a_column_in_another_case_than_staged_is_set_aside(drops_job):
    """A drop whose header spells a column the table has in another case (``Note`` after
    ``note``, in an earlier run or an earlier file of the same run) is set aside naming
    both: DuckDB does not tell them apart, and dlt's load of it failed every run, the files
    that came with it included, until the job was reset. The file dropped again with the
    table's spelling is read."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    drop(d, "loose/1.csv", "id,note\n1,a\n", t0)
    drops_job.sync()
    drop(d, "loose/2.csv", "id,Note\n2,b\n", t0 + 10)
    drop(d, "loose/3.csv", "id,note,Extra\n3,c,x\n", t0 + 11)
    drop(d, "loose/4.csv", "id,EXTRA\n4,y\n", t0 + 12)
    drops_job.sync()
    drops_job.pull()
    # a run reads the newest file first: 4 names EXTRA, so 3's Extra is the one set aside
    assert drops_job.q("SELECT id, note, EXTRA FROM loose ORDER BY id") == [
        (1, "a", None), (4, None, "y")
    ]
    reasons = sorted(r for _, r in drops_job.skipped())
    assert len(reasons) == 2, reasons
    assert "file loose/2.csv set aside: column 'Note' differs only in case from the " \
        "table's column 'note' (staged, or read earlier in this run)" in reasons[0]
    assert "deltaferry reset drops --table loose --reason 'Note renamed'" in reasons[0]
    assert "file loose/3.csv set aside: column 'Extra' differs only in case from the " \
        "table's column 'EXTRA'" in reasons[1]
    drop(d, "loose/2.csv", "id,note\n2,b\n", t0 + 20)  # dropped again, spelled as staged
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, note FROM loose ORDER BY id") == [(1, "a"), (2, "b"), (4, None)]


def _parquet(**columns: pa.Array) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue().to_pybytes()


def test_text_numbers_in_a_staged_number_column_stay_only_as_written(drops_job):
    """Parquet text in a column staged as BIGINT / DOUBLE: '007', '1e3', '+5' were
    published as 7, 1000, 5 and '9007199254740993' as 9007199254740992.0, exit 0. A file
    whose text is the number as written is read; any other is set aside naming a value."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    drop(d, "loose/1.parquet", _parquet(id=pa.array([1, 2]), x=pa.array([10, 20]), y=pa.array([0.5, 1.5])), t0)
    drops_job.sync()
    drop(d, "loose/2.parquet", _parquet(id=pa.array([3]), x=pa.array(["007"]), y=pa.array(["2.5"])), t0 + 10)
    drop(d, "loose/3.parquet", _parquet(id=pa.array([4]), x=pa.array(["40"]), y=pa.array(["9007199254740993"])), t0 + 11)
    drop(d, "loose/4.parquet", _parquet(id=pa.array([5]), x=pa.array(["-41"]), y=pa.array(["0.25"])), t0 + 12)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, x, y FROM loose ORDER BY id") == [(1, 10, 0.5), (2, 20, 1.5), (5, -41, 0.25)]
    reasons = sorted(r for _, r in drops_job.skipped())
    assert len(reasons) == 2, reasons
    assert "file loose/2.parquet set aside: column x is staged as BIGINT" in reasons[0]
    assert "'007'" in reasons[0] and "deltaferry reset" in reasons[0]
    assert "file loose/3.parquet set aside: column y is staged as DOUBLE" in reasons[1]
    assert "'9007199254740993'" in reasons[1]


def test_parquet_wide_decimals_and_unsigned_integers_are_read_or_set_aside(drops_job):
    """Parquet's 256-bit decimals and unsigned 64-bit integers in columns the contract does
    not type: up to 38 digits (DuckDB's DECIMAL) and up to 2**63-1 (BIGINT, as dlt stages
    uint64) they are read exactly; beyond, the file is set aside naming column and value.
    A wider decimal stopped every run of the job ("Unsupported Internal Arrow Type for
    Decimal"), a larger integer failed the load, the job's other files included."""
    import decimal

    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    dec = decimal.Decimal
    drop(d, "loose/1.parquet", _parquet(
        id=pa.array([1, 2]),
        amount=pa.array([dec("12345678901234567890123456.78"), dec("-0.01")], pa.decimal256(38, 2)),
        count=pa.array([0, 2**63 - 1], pa.uint64()),
    ), t0)
    drop(d, "loose/2.parquet", _parquet(
        id=pa.array([3]), amount=pa.array([dec("1.5")], pa.decimal256(39, 2)),
    ), t0 + 1)
    drop(d, "loose/3.parquet", _parquet(
        id=pa.array([4]), count=pa.array([2**63], pa.uint64()),
    ), t0 + 2)
    drop(d, "loose/4.parquet", _parquet(id=pa.array([5]), count=pa.array([7], pa.uint64())), t0 + 3)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, amount, count FROM loose ORDER BY id") == [
        (1, dec("12345678901234567890123456.78"), 0),
        (2, dec("-0.01"), 2**63 - 1),
        (5, None, 7),
    ]
    reasons = sorted(r for _, r in drops_job.skipped())
    assert len(reasons) == 2, reasons
    assert "file loose/2.parquet set aside: column amount is a decimal of 39 digits, more " \
        "than staging's DECIMAL holds (38)" in reasons[0]
    assert "file loose/3.parquet set aside: column count holds 9223372036854775808, more " \
        "than staging's BIGINT holds" in reasons[1]


def test_a_time_finer_than_microseconds_sets_its_file_aside(drops_job):
    """A naive ``pd.Timestamp`` contract column is nanoseconds: a 7th fractional digit
    passed the file's cast and then failed the whole run in staging (microseconds), on
    every retry. The file is set aside naming column and row; the others publish."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    drop(d, "loose/1.csv", "id,ts\n1,2024-03-01T10:30:00.1234567\n", t0)
    drop(d, "loose/2.csv", "id,ts\n2,2024-03-01T10:30:00.123456\n", t0 + 1)
    drops_job.sync()
    drops_job.pull()
    utc = dt.datetime(2024, 3, 1, 10, 30, 0, 123456, tzinfo=dt.timezone.utc)
    assert drops_job.q("SELECT id, epoch_us(ts) FROM loose") == [
        (2, int(utc.timestamp()) * 1_000_000 + 123456)
    ]
    (reason,) = [r for _, r in drops_job.skipped()]
    assert "file loose/1.csv set aside: column ts has a time finer than microseconds" in reason
    assert "row 1" in reason


def test_a_decimal_38_contract_column_reads_jsonl_numbers_beyond_int64():
    """``Decimal(38, 0)`` is what a set-aside reason advises for numbers beyond int64; its
    precision check refused every JSON Lines file (10**38 has no decimal128)."""
    from decimal import Decimal

    from sources.files.jsonl import read_jsonl

    for scale in (0, 4):
        table = read_jsonl(
            f'{{"id": 1, "big": {U64_MAX}}}\n{{"id": 2, "big": 1}}\n'.encode(),
            {"big": pa.decimal128(38, scale)},
        )
        assert table is not None
        assert table["big"].to_pylist() == [Decimal(U64_MAX), Decimal(1)]


def test_two_files_of_one_run_with_types_that_differ_set_aside_the_later_read(drops_job):
    """Files are read newest first; one whose untyped column the files read before it in
    the same run cannot hold was loaded with them, and dlt failed the whole job's run (a
    20-line schema message). It is set aside like one against staging; the rest publish."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    drop(d, "loose/1.jsonl", '{"id":1,"x":2.5}\n', t0)
    drop(d, "loose/2.jsonl", '{"id":2,"x":1}\n', t0 + 10)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, x FROM loose ORDER BY id") == [(2, 1)]
    (reason,) = [r for _, r in drops_job.skipped()]
    assert "file loose/1.jsonl set aside: column x is staged as BIGINT" in reason


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_with_a_zone_offset_under_a_naive_contract_column_is_its_utc_wall_time(fmt):
    """A naive contract timestamp (``Loose.ts``) and text with ``Z`` or ``+02:00``: the file
    was set aside ("expected no zone offset"); SQL sources stage such text as the instant's
    UTC wall time, and so does this now, in a job of any timezone. Text without an offset
    is read as written."""
    from deltaferry.config import TableConfig
    from sources.files import contract_types, read_table

    t = TableConfig("loose", ("id",), None, "none", "tests.support.contracts_files:Loose")
    stamps = ["2024-03-01T10:30:00Z", "2024-03-01 12:30:00.25+02:00", "2024-03-01 10:30:00", None]
    if fmt == "csv":
        raw = "id,ts\n" + "".join(f"{i},{s or ''}\n" for i, s in enumerate(stamps, 1))
    else:
        raw = "".join(json.dumps({"id": i, "ts": s}) + "\n" for i, s in enumerate(stamps, 1))
    table = read_table(raw.encode(), fmt, t, contract_types(t, "here"), "Europe/Berlin")
    assert table is not None and table.schema.field("ts").type.tz is None
    assert table["ts"].to_pylist()[:3] == [
        dt.datetime(2024, 3, 1, 10, 30),
        dt.datetime(2024, 3, 1, 10, 30, 0, 250000),
        dt.datetime(2024, 3, 1, 10, 30),
    ]
    assert table["ts"].to_pylist()[3] is None


@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Berlin", "time of day"])
def test_parquet_files_of_one_run_with_times_in_different_units_are_all_read(drops_job, tz):
    """Parquet writers differ in time units (pandas writes nanoseconds, Spark and pyarrow's
    defaults microseconds or milliseconds). Files of one run in each unit, in a column the
    contract does not type: dlt staged the column at the newest file's unit and the others
    were set aside (TIMESTAMP_MS does not hold microseconds; TIME_NS does not take TIME), or
    with a zone dlt could not join their rows and every run of the job failed with dlt's
    multi-line message. Every file is read at staging's microseconds, compared with the
    values written; a 7th fractional digit still sets its file aside."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    if tz == "time of day":
        us = (10 * 3600 + 30 * 60) * 10**6 + 123456
        types = {"us": pa.time64("us"), "ns": pa.time64("ns"), "ms": pa.time32("ms"),
                 "s": pa.time32("s")}
        read = "(epoch(seen) * 1000000)::BIGINT"
    else:
        base = dt.datetime(2024, 3, 1, 10, 30, 0, 123456, tzinfo=dt.timezone.utc)
        us = int(base.timestamp()) * 1_000_000 + base.microsecond
        types = {unit: pa.timestamp(unit, tz) for unit in ("us", "ns", "ms", "s")}
        read = "epoch_us(seen)"
    for i, unit in enumerate(("us", "ns", "ms", "s")):
        value = {"s": us // 10**6, "ms": us // 1000, "us": us, "ns": us * 1000}[unit]
        drop(d, f"loose/{i}.parquet", _parquet(
            id=pa.array([i + 1]), seen=pa.array([value], types[unit]),
        ), t0 + i)
    drop(d, "loose/5.parquet", _parquet(
        id=pa.array([5]), seen=pa.array([us * 1000 + 7], types["ns"]),
    ), t0 + 5)
    drops_job.sync()
    drops_job.pull()
    got = dict(drops_job.q(f"SELECT id, {read} FROM loose ORDER BY id"))
    assert got == {1: us, 2: us, 3: us // 1000 * 1000, 4: us // 10**6 * 10**6}, got
    (reason,) = [r for _, r in drops_job.skipped()]
    assert "file loose/5.parquet set aside: column seen has a time finer than microseconds" \
        in reason, reason


def test_jsonl_text_with_a_lone_surrogate_sets_its_file_aside(drops_job):
    """``"\\ud800"`` is valid JSON but not a Unicode character: the whole run failed with a
    bare "surrogates not allowed", the job's other files included. The file is set aside
    naming line, field and value; a surrogate pair (an emoji written escaped) is read."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    drop(d, "loose/1.jsonl", '{"id": 1, "note": "a \\ud83d\\ude00 b"}\n', t0)
    drop(d, "loose/2.jsonl", '{"id": 2, "note": "x"}\n{"id": 3, "doc": {"k": ["\\udc00"]}}\n', t0 + 1)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, note FROM loose ORDER BY id") == [(1, "a \U0001F600 b")]
    (reason,) = [r for _, r in drops_job.skipped()]
    assert "file loose/2.jsonl set aside: line 2: field 'doc.k[0]' holds '\\udc00', text with a " \
        "lone UTF-16 surrogate" in reason, reason


def test_a_csv_file_ending_inside_a_quoted_field_is_set_aside(drops_job):
    """A CSV file cut while being written, inside a quoted field: Arrow's reader took the
    rest of the file as that field's text, so row 1's note became 'a\\n2,b' and row 2 was
    lost, exit 0. The file is set aside naming the record's line; a quote inside an unquoted
    field (5") is still read; the whole file, written again, is read."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    drop(d, "loose/1.csv", 'id,note\n1,"a\n2,b\n', t0)
    drop(d, "loose/2.csv", 'id,note\n3,5"\n', t0 + 1)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, note FROM loose ORDER BY id") == [(3, '5"')]
    (reason,) = [r for _, r in drops_job.skipped()]
    assert "file loose/1.csv set aside: not valid CSV: a quoted field of the record on " \
        "line 2 is not closed before the file ends" in reason, reason
    drop(d, "loose/1.csv", 'id,note\n1,"a"\n2,b\n', t0 + 10)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, note FROM loose ORDER BY id") == [(1, "a"), (2, "b"), (3, '5"')]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_file_without_an_optional_contract_column_is_read_with_it_null(drops_job, fmt):
    """A Parquet or CSV file leaving out a nullable column the contract types (a writer
    that omits empty optional columns): the table's validation failed every run as a
    missing column ("column_in_dataframe"), naming no file, even once a later file held the
    column as nulls (JSON Lines already read it as null). Each file is read with the column
    null, and a later file's values arrive."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("dated",))
    if fmt == "parquet":
        drop(d, "dated/1.parquet", _parquet(id=pa.array([1]), note=pa.array(["x"])), t0)
    else:
        drop(d, "dated/1.csv", "id,note\n1,x\n", t0)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, day, \"at\", note FROM dated") == [(1, None, None, "x")]
    drop(d, "dated/2.csv", "id,day,note\n2,2024-02-29,y\n", t0 + 1)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, day, note FROM dated ORDER BY id") == [
        (1, None, "x"), (2, dt.date(2024, 2, 29), "y")
    ]
    assert drops_job.skipped() == []


def test_a_naive_parquet_time_the_contract_does_not_type_is_wall_time_in_the_jobs_zone(drops_job):
    """A naive Parquet timestamp in a column the contract does not type was staged as if
    it were UTC whatever the job's ``timezone``, and published as that (wrong) instant, exit
    0; a typed column took the job's zone. Both now take it (as SQL sources do): noon in
    Berlin is 11:00 UTC in winter, 10:00 in summer; a time the zone moves before year 1
    sets its file aside."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",), timezone='"Europe/Berlin"')
    noon = [dt.datetime(2026, 1, 1, 12), dt.datetime(2026, 7, 1, 12)]
    drop(d, "loose/1.parquet", _parquet(
        id=pa.array([1, 2]), seen=pa.array(noon, pa.timestamp("us")),
    ), t0)
    drop(d, "loose/2.parquet", _parquet(
        id=pa.array([3]), seen=pa.array([dt.datetime(1, 1, 1, 0, 30)], pa.timestamp("us")),
    ), t0 + 1)
    drops_job.sync()
    drops_job.pull()
    utc = dt.timezone.utc
    want = [int(dt.datetime(2026, 1, 1, 11, tzinfo=utc).timestamp() * 10**6),
            int(dt.datetime(2026, 7, 1, 10, tzinfo=utc).timestamp() * 10**6)]
    assert drops_job.q("SELECT id, epoch_us(seen) FROM loose ORDER BY id") == [
        (1, want[0]), (2, want[1])
    ]
    (reason,) = [r for _, r in drops_job.skipped()]
    assert "file loose/2.parquet set aside: column seen holds a naive time that is no " \
        "instant in the job's timezone Europe/Berlin" in reason, reason


def test_a_parquet_time_of_day_beyond_midnight_sets_its_file_aside(drops_job):
    """Parquet stores a time of day as a count since midnight; a writer can store 25 hours.
    It failed validation with a bare "hour must be in 0..23" naming nothing; the file is
    set aside naming column and row."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("loose",))
    hour = 3600 * 10**9
    drop(d, "loose/1.parquet", _parquet(
        id=pa.array([1, 2]), opens=pa.array([9 * hour, 25 * hour], pa.time64("ns")),
    ), t0)
    drop(d, "loose/2.parquet", _parquet(
        id=pa.array([3]), opens=pa.array([9 * hour], pa.time64("ns")),
    ), t0 + 1)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, opens FROM loose") == [(3, dt.time(9))]
    (reason,) = [r for _, r in drops_job.skipped()]
    assert "file loose/1.parquet set aside: column opens row 2 holds 90000000000000 ns since " \
        "midnight, which is no time of day" in reason, reason


def test_a_date_column_written_as_dates_timestamps_and_text_in_one_run_is_read_as_dates(
    drops_job,
):
    """A ``Date`` contract column that one Parquet writer stores as date32, another as a
    timestamp at midnight, and CSV and JSON Lines as text: in one run dlt could not join
    the files' rows and every run of the job failed with its ~1 KB message naming no table.
    Each file's values are read as dates; a timestamp that is not a midnight sets its file
    aside (it would be cut to its day)."""
    d, t0 = drops_job.drops, time.time() - 3600
    drops_job.write(tables=("dated",))
    day = dt.date(2024, 2, 29)
    drop(d, "dated/1.parquet", _parquet(id=pa.array([1]), day=pa.array([day], pa.date32())), t0)
    drop(d, "dated/2.parquet", _parquet(
        id=pa.array([2]), day=pa.array([dt.datetime(2024, 2, 29)], pa.timestamp("us")),
    ), t0 + 1)
    drop(d, "dated/3.csv", "id,day\n3,2024-02-29\n", t0 + 2)
    drop(d, "dated/4.jsonl", '{"id": 4, "day": "2024-02-29"}\n', t0 + 3)
    drop(d, "dated/5.parquet", _parquet(
        id=pa.array([5]), day=pa.array([dt.datetime(2024, 2, 29, 10)], pa.timestamp("us")),
    ), t0 + 4)
    drops_job.sync()
    drops_job.pull()
    assert drops_job.q("SELECT id, day FROM dated ORDER BY id") == [(i, day) for i in (1, 2, 3, 4)]
    (reason,) = [r for _, r in drops_job.skipped()]
    assert "file dated/5.parquet set aside: column day cannot be read as date32" in reason, reason


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_naive_time_the_jobs_zone_moves_before_year_1_sets_its_file_aside(fmt):
    """0001-01-01 00:30 in Berlin is an instant before year 1 in UTC: read into a zoned
    contract column (a naive Parquet time, or CSV text without an offset) it became an
    instant Arrow holds and staging and the replica do not. The file is set aside."""
    from deltaferry.config import TableConfig
    from sources.files import SetAside, contract_types, read_table

    t = TableConfig("dated", ("id",), None, "none", "tests.support.contracts_files:Dated")
    if fmt == "parquet":
        raw = _parquet(id=pa.array([1]), at=pa.array([dt.datetime(1, 1, 1, 0, 30)], pa.timestamp("us")))
    else:
        raw = b"id,at\n1,0001-01-01 00:30:00\n"
    with pytest.raises(SetAside) as e:
        read_table(raw, fmt, t, contract_types(t, "here"), "Europe/Berlin")
    assert e.value.problem == (
        "column at holds a naive time that is no instant in the job's timezone Europe/Berlin "
        "(out of range)"
    )
    at_one = b"id,at\n1,0001-01-01 01:30:00\n"  # 00:36:32 UTC (Berlin's local mean time): kept
    table = read_table(at_one, "csv", t, contract_types(t, "here"), "Europe/Berlin")
    assert table is not None and table["at"][0].as_py().year == 1


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_drops_without_the_soft_delete_column_publish_their_rows_live(drops_job, kind):
    """``deletes = "soft:deleted_at"`` where the drops so far carry no ``deleted_at`` (a drop
    with no deletes in it): every run of a CSV job failed with a bare BinderException
    naming no job or table, until a file with the column landed (a fresh-user trial; a
    JSON Lines job passed, and is kept beside it). The rows are live; a later drop with the
    column deletes as before."""
    drops_job.write(tables=("events",))
    t0 = time.time() - 600
    if kind == "jsonl":
        drop(drops_job.drops, "events/a.jsonl", '{"id":1,"kind":"click","n":1}\n{"id":2,"kind":"buy"}\n', t0)
    else:
        drop(drops_job.drops, "events/a.csv", "id,kind,n\n1,click,1\n2,buy,\n", t0)
    first = drops_job.sync()
    assert first["tables"]["events"]["rows"] == 2
    drops_job.pull()
    assert drops_job.q("SELECT id, kind, n, deleted_at FROM events ORDER BY id") == [
        (1, "click", 1, None), (2, "buy", None, None),
    ]
    drop(drops_job.drops, "events/b.jsonl", '{"id":1,"kind":"click","deleted_at":"2026-01-02T00:00:00Z"}\n', t0 + 60)
    second = drops_job.sync()
    assert second["tables"]["events"]["deletes"] == 1
    drops_job.pull()
    assert drops_job.q("SELECT id FROM events ORDER BY id") == [(2,)]
