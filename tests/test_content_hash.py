"""A row is republished only when its content changed: a source that gains a column (NULL
in the rows it had), reorders its columns, or leaves a field out rather than sending null
changes no row's content hash (``sources.change_detection.content_text`` / ``canonical_json``), and
hashes staged by earlier versions still match an unchanged row (issue 19, point 1: a
re-read must not republish unchanged rows, which with several producers would win keys
back from the others)."""

from __future__ import annotations

import json

import duckdb
import pytest

from tests.test_rest_api import ITEMS_JOB, api_job, items_job  # noqa: F401 - fixtures

FULL_COMPARE = ('cursor = "updated_at"\ndeletes = "soft:deleted_at"', 'deletes = "soft:deleted_at"')


def _batch_rows(job, table: str, batch: int) -> int:  # noqa: ANN001
    from destinations.manifest import manifest_key

    return json.loads(job.lake().get(manifest_key(job.name, table, batch, None)))["rows"]


def _touch(shop, cid: int, country: str) -> None:  # noqa: ANN001
    shop.con.execute(
        "UPDATE customers SET country = ?, updated_at = ? WHERE id = ?", (country, shop._tick(), cid)
    )
    shop.con.commit()


def _replica_is_source(shop, replica, columns: str) -> None:  # noqa: ANN001
    """The replica's customers equal the source's, read with sqlite3 and duckdb (not
    deltaferry's code)."""
    sql = f"SELECT {columns} FROM customers ORDER BY id"
    want = shop.con.execute(sql).fetchall()
    con = duckdb.connect(str(replica), read_only=True)
    try:
        assert con.execute(sql).fetchall() == want
    finally:
        con.close()


def _full_compare(shop_job) -> None:  # noqa: ANN001
    shop_job.config.write_text(shop_job.config.read_text().replace(*FULL_COMPARE))


def test_a_full_compare_table_whose_source_gains_a_column_republishes_only_real_change(
    shop_job, shop
):
    shop.round(12, 0, churn=0)
    _full_compare(shop_job)
    first = shop_job.sync()["tables"]["customers"]
    assert first["batch"] == 1 and first["rows"] == 12
    shop.con.execute("ALTER TABLE customers ADD COLUMN note TEXT")  # NULL in every row
    shop.con.commit()
    _touch(shop, 1, "JP")
    assert shop_job.sync()["tables"]["customers"]["rows"] == 1  # was 12: every row
    assert _batch_rows(shop_job, "customers", 2) == 1
    # nothing changed: nothing published
    assert shop_job.sync()["tables"]["customers"]["batch"] is None
    shop_job.pull()
    _replica_is_source(shop, shop_job.replica, "id, name, country")


def test_hashes_staged_by_the_earlier_format_still_match_unchanged_rows(
    shop_job, shop, monkeypatch
):
    """Upgrading deltaferry republishes nothing: the first sync stages hashes in the format
    used before (``_legacy_text``); after the upgrade an unchanged table publishes no batch,
    and a real change still goes out (its row restaged with the new hash)."""
    import sources.change_detection as change_detection

    shop.round(10, 0, churn=0)
    _full_compare(shop_job)
    with monkeypatch.context() as m:
        m.setattr(change_detection, "content_text", change_detection._legacy_text)
        assert shop_job.sync()["tables"]["customers"]["rows"] == 10
    assert shop_job.sync()["tables"]["customers"]["batch"] is None
    # that read retagged the unchanged rows with the current hash: a shape change now (a
    # new column, NULL everywhere) changes nothing, as for rows staged after the upgrade
    shop.con.execute("ALTER TABLE customers ADD COLUMN note TEXT")
    shop.con.commit()
    assert shop_job.sync()["tables"]["customers"]["batch"] is None
    _touch(shop, 3, "JP")
    assert shop_job.sync()["tables"]["customers"]["rows"] == 1
    assert shop_job.sync()["tables"]["customers"]["batch"] is None


def _hash(con, row: dict, columns: list[str]) -> str:  # noqa: ANN001
    from sources.change_detection import content_text

    select = ", ".join(f"?::VARCHAR AS \"{c}\"" for c in row)
    return con.execute(
        f"SELECT md5({content_text(columns, alias='c')}) FROM (SELECT {select}) c",
        list(row.values()),
    ).fetchone()[0]


def test_content_text_ignores_nulls_and_order_and_is_unambiguous():
    con = duckdb.connect()
    a = _hash(con, {"id": "1", "name": "x"}, ["id", "name"])
    assert _hash(con, {"name": "x", "id": "1"}, ["name", "id"]) == a  # column order
    assert _hash(con, {"id": "1", "name": "x", "note": None}, ["id", "name", "note"]) == a
    assert _hash(con, {"id": "1", "name": "y"}, ["id", "name"]) != a
    # values that contain the separators cannot make two different rows look alike
    b = _hash(con, {"a": '1;"b"=1:2', "b": None}, ["a", "b"])
    c = _hash(con, {"a": "1", "b": "2"}, ["a", "b"])
    assert b != c
    # an empty string is a value, NULL is not
    assert _hash(con, {"id": "1", "name": "x", "note": ""}, ["id", "name", "note"]) != a
    # a value moved to another column is a change
    assert _hash(con, {"p": "v", "q": None}, ["p", "q"]) != _hash(con, {"p": None, "q": "v"}, ["p", "q"])


def test_record_hashes_leave_out_null_fields():
    from sources.change_detection import legacy_row_hash, row_hash

    assert row_hash({"id": 1, "note": None}) == row_hash({"id": 1})
    assert row_hash({"id": 1, "note": ""}) != row_hash({"id": 1})
    assert row_hash({"id": 1, "doc": {"x": None}}) != row_hash({"id": 1, "doc": {}})  # nested kept
    assert legacy_row_hash({"id": 1, "note": None}) != row_hash({"id": 1})


@pytest.fixture
def full_items(items_job, api):  # noqa: ANN001
    """``items`` read whole on every run (no cursor: full-compare mode)."""
    text = items_job.config.read_text()
    for line in ('cursor = "updated_at"\n', 'cursor_param = "since"\n'):
        text = text.replace(line, "")
    text = "\n".join(x for x in text.splitlines() if not x.startswith("initial_value")) + "\n"
    items_job.config.write_text(text)
    return items_job


def test_api_records_that_gain_a_null_field_are_not_republished(full_items, api, monkeypatch):
    import sources.rest_api.reads as reads
    from sources.change_detection import _json_default

    def before(row):  # noqa: ANN001, ANN202 - the canonical text of earlier versions
        return json.dumps(row, sort_keys=True, separators=(",", ":"), default=_json_default)

    for i in api.items:
        api.items[i]["tag"] = None
    with monkeypatch.context() as m:
        m.setattr(reads, "canonical_json", before)
        assert full_items.sync()["tables"]["items"]["rows"] == 10
    # upgraded: the staged hashes of records with a null field still match
    assert full_items.sync()["tables"]["items"]["batch"] is None
    for i in api.items:  # the API now leaves the field out, or sends one more null field
        del api.items[i]["tag"]
        api.items[i]["colour"] = None
    assert full_items.sync()["tables"]["items"]["batch"] is None
    api.items[4]["name"] = "item four"
    out = full_items.sync()["tables"]["items"]
    assert out["rows"] == 1, out


# --- after a reset (or a lost home): the re-read is compared with what the chain published --

LOOSE_JOB = """
[jobs.j]
source = "sql_database"
url = "sqlite:///{db}"
lake = "s3://{bucket}/lake"

[[jobs.j.tables]]
name = "t"
primary_key = ["id"]
contract = "tests.support.contracts_sqltypes:Loose"
"""


@pytest.mark.parametrize(
    "change, want",
    [
        # a column gained with a value in every row / in two rows
        ("ALTER TABLE t ADD COLUMN c INTEGER DEFAULT 5", {i: 5 for i in range(1, 9)}),
        ("ALTER TABLE t ADD COLUMN c TEXT; UPDATE t SET c = 'v' WHERE id IN (2, 7)", {2: "v", 7: "v"}),
        # a column renamed: its values now live under the new name
        ("ALTER TABLE t RENAME COLUMN name TO c", {i: f"n{i}" for i in range(1, 9)}),
        # a column NULL everywhere: no change at all
        ("ALTER TABLE t ADD COLUMN c TEXT", {}),
    ],
    ids=["gained-default", "gained-two-values", "renamed", "gained-null"],
)
def test_a_reset_publishes_a_shape_change_it_did_not_see(
    tmp_path, home, bucket, prefect_api, change, want
):
    """Regression (fresh-user trial of issue 19): after `reset`, the re-read rows were
    compared with the adopted chain on the columns both had only, so a column the source
    gained with values, or renamed, while the position was lost was never published. Now
    a column only one side has is a change where it has a value (the chain was published at
    the source's own contract version). Checked against the source with sqlite3/duckdb."""
    import sqlite3

    from click.testing import CliRunner

    from deltaferry.cli import cli
    from flows.sync import sync_job

    db = tmp_path / "src.db"
    src = sqlite3.connect(db)
    src.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, extra TEXT)")
    src.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"n{i}", "x") for i in range(1, 9)])
    src.commit()
    config = tmp_path / "jobs.toml"
    config.write_text(LOOSE_JOB.format(db=db, bucket=bucket))
    assert sync_job(job="j", config=str(config))["tables"]["t"]["rows"] == 8
    src.executescript(change)
    src.commit()
    reset = CliRunner().invoke(
        cli, ["reset", "j", "--table", "t", "--reason", "trial", "--config", str(config)]
    )
    assert reset.exit_code == 0, reset.output
    out = sync_job(job="j", config=str(config))["tables"]["t"]
    assert (out.get("rows") or 0) == len(want), out
    assert sync_job(job="j", config=str(config))["tables"]["t"]["batch"] is None  # settled
    replica = tmp_path / "replica.duckdb"
    pulled = CliRunner().invoke(
        cli, ["pull", "j", "--replica", str(replica), "--config", str(config)]
    )
    assert pulled.exit_code == 0, pulled.output
    con = duckdb.connect(str(replica), read_only=True)
    try:
        held = {r[0] for r in con.execute("DESCRIBE t").fetchall()}
        names = [r[1] for r in src.execute("PRAGMA table_info(t)").fetchall() if r[1] in held]
        got = {r[0]: r for r in con.execute(f"SELECT {', '.join(names)} FROM t").fetchall()}
    finally:
        con.close()
    source = {r[0]: r for r in src.execute(f"SELECT {', '.join(names)} FROM t").fetchall()}
    assert got == source
    # a source column the replica lacks is one nothing was ever given to
    for (name,) in src.execute("SELECT name FROM pragma_table_info('t')").fetchall():
        if name not in held:
            assert src.execute(f"SELECT count({name}) FROM t").fetchone()[0] == 0, name


@pytest.mark.parametrize("mode", ["cursor", "full-compare"])
def test_a_rename_the_contract_chain_maps_republishes_only_real_change(shop_job, shop, tmp_path, mode):
    """The source renames `name` to `full_name` and the job moves `source_version` to the
    chain's v2, whose migration is that rename: rows read again (the cursor boundary, or
    every row in full-compare mode) are compared with their staged version taken through
    the migration, so only the 4 edited rows go out (was: every row read again)."""
    from flows.sync import sync_job

    shop.round(12, 0, churn=0)
    text = shop_job.config.read_text()
    if mode == "full-compare":
        text = text.replace(*FULL_COMPARE)
    v1 = tmp_path / "v1.toml"
    v1.write_text(
        text.replace("contracts.shop:Customers", "tests.support.contracts_versions:Renamed").replace(
            '"soft:deleted_at"', '"soft:deleted_at"\nsource_version = 1'
        )
    )
    assert sync_job(job="shop", config=str(v1))["tables"]["customers"]["rows"] == 12
    shop.con.execute("ALTER TABLE customers RENAME COLUMN name TO full_name")
    shop.con.commit()
    for cid in (1, 2, 3, 4):
        _touch(shop, cid, "JP")
    v2 = tmp_path / "v2.toml"
    v2.write_text(v1.read_text().replace("source_version = 1", "source_version = 2"))
    out = sync_job(job="shop", config=str(v2))["tables"]["customers"]
    assert out["rows"] == 4, out
    assert sync_job(job="shop", config=str(v2))["tables"]["customers"]["batch"] is None
    # a real edit of the renamed column still goes out
    shop.con.execute("UPDATE customers SET full_name = 'Ada', updated_at = ? WHERE id = 9", (shop._tick(),))
    shop.con.commit()
    assert sync_job(job="shop", config=str(v2))["tables"]["customers"]["rows"] == 1
    from deltaferry.config import load_job
    from deltaferry.replica import pull

    pull(load_job("shop", v2), shop_job.lake(), shop_job.replica)
    _replica_is_source(shop, shop_job.replica, "id, full_name, country")


@pytest.mark.parametrize("mode", ["cursor", "full-compare"])
def test_a_reset_does_not_count_a_column_the_contract_leaves_out(shop_job, shop, mode):
    """Regression (second fresh-user trial of issue 19): under a strict contract with
    `drift = "evolve"`, a column the source gained (with values) is left out of every batch;
    after `reset` it counted as a change of every row, so each reset republished the whole
    table unchanged (with several producers, winning every key back)."""
    from click.testing import CliRunner

    from deltaferry.cli import cli

    shop.round(12, 0, churn=0)
    shop_job.write_config(drift="evolve")
    if mode == "full-compare":
        _full_compare(shop_job)
    assert shop_job.sync()["tables"]["customers"]["rows"] == 12
    shop.con.execute("ALTER TABLE customers ADD COLUMN extra TEXT DEFAULT 'd'")
    shop.con.commit()
    _touch(shop, 5, "JP")
    # published without `extra`; the rows read again carry its value in staging, so they
    # go out once (every row: a cursor table is read whole when the source gains a column)
    assert shop_job.sync()["tables"]["customers"]["rows"] == 12
    for _ in range(2):
        reset = CliRunner().invoke(
            cli, ["reset", "shop", "--table", "customers", "--reason", "trial",
                  "--config", str(shop_job.config)],
        )
        assert reset.exit_code == 0, reset.output
        assert shop_job.sync()["tables"]["customers"]["batch"] is None
    _touch(shop, 6, "FR")
    assert shop_job.sync()["tables"]["customers"]["rows"] == 1
    shop_job.pull()
    _replica_is_source(shop, shop_job.replica, "id, name, country")


def test_rows_the_migration_cannot_compare_are_republished(shop_job, shop, tmp_path, monkeypatch):
    """The fault path of the migrated comparison: when the chain's migration refuses the
    staged rows, the rows read again count as changed (republished, which is safe) and the
    run goes on; nothing is lost."""
    from contracts import Chain, MigrationError
    from flows.sync import sync_job

    shop.round(6, 0, churn=0)
    v1 = tmp_path / "v1.toml"
    v1.write_text(
        shop_job.config.read_text().replace(*FULL_COMPARE)
        .replace("contracts.shop:Customers", "tests.support.contracts_versions:Renamed")
        .replace('"soft:deleted_at"', '"soft:deleted_at"\nsource_version = 1')
    )
    assert sync_job(job="shop", config=str(v1))["tables"]["customers"]["rows"] == 6
    shop.con.execute("ALTER TABLE customers RENAME COLUMN name TO full_name")
    shop.con.commit()
    _touch(shop, 1, "JP")
    v2 = tmp_path / "v2.toml"
    v2.write_text(v1.read_text().replace("source_version = 1", "source_version = 2"))

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise MigrationError("refused by the test")

    with monkeypatch.context() as m:
        m.setattr(Chain, "migrate_arrow", refuse)
        assert sync_job(job="shop", config=str(v2))["tables"]["customers"]["rows"] == 6
    assert sync_job(job="shop", config=str(v2))["tables"]["customers"]["batch"] is None
    from deltaferry.config import load_job
    from deltaferry.replica import pull

    pull(load_job("shop", v2), shop_job.lake(), shop_job.replica)
    _replica_is_source(shop, shop_job.replica, "id, full_name, country")


CURSOR_JOB = LOOSE_JOB.replace('primary_key = ["id"]', 'primary_key = ["id"]\ncursor = "updated"')


def _eight_rows_synced(tmp_path, bucket):  # noqa: ANN001, ANN202
    """A SQLite table ``t`` of eight rows (cursor ``updated``) synced once by job ``j``
    (``drift = "evolve"``): (the source's connection, the jobs file)."""
    import sqlite3

    from flows.sync import sync_job

    db = tmp_path / "src.db"
    src = sqlite3.connect(db)
    src.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, extra TEXT, updated INTEGER)")
    src.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [(i, f"n{i}", "x", i) for i in range(1, 9)])
    src.commit()
    config = tmp_path / "jobs.toml"
    config.write_text(
        CURSOR_JOB.format(db=db, bucket=bucket).replace(
            "[[jobs.j.tables]]", 'drift = "evolve"\n\n[[jobs.j.tables]]'
        )
    )
    sync_job(job="j", config=str(config))
    return src, config


@pytest.mark.parametrize(
    "change, whole",
    [
        ("ALTER TABLE t ADD COLUMN c INTEGER DEFAULT 5", True),
        ("ALTER TABLE t ADD COLUMN c TEXT", True),  # NULL in every row: read whole once
        ("ALTER TABLE t RENAME COLUMN name TO c", True),
        ("UPDATE t SET name = 'x', updated = 100 WHERE id = 3", False),
    ],
    ids=["default", "null", "renamed", "no-new-column"],
)
def test_a_column_the_source_gains_reaches_every_row_of_a_cursor_table(
    tmp_path, home, bucket, prefect_api, change, whole
):
    """A column added with a DEFAULT (or a rename) gives every row a value without moving
    its cursor: the cursor read staged it for the rows that changed only, and the replica
    kept NULL in every other row, exit 0. The run that first sees the column reads the
    table whole (said in the operations log), and only that run. Checked against the
    source with sqlite3 and duckdb."""
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from deltaferry.state import StateStore
    from destinations.lake import open_lake
    from flows.sync import sync_job

    src, config = _eight_rows_synced(tmp_path, bucket)
    src.executescript(change + "; UPDATE t SET updated = 50, extra = 'y' WHERE id = 8;")
    src.commit()

    def read_whole() -> list[str]:
        with StateStore("j").connect(read_only=True) as con:
            return [
                d for (d,) in con.execute("SELECT detail FROM ops_log ORDER BY id").fetchall()
                if d and "new at the source: the table is read whole" in d
            ]

    sync_job(job="j", config=str(config))
    assert len(read_whole()) == (1 if whole else 0), read_whole()
    sync_job(job="j", config=str(config))
    assert len(read_whole()) == (1 if whole else 0), read_whole()  # once, not every run
    replica = tmp_path / "replica.duckdb"
    job = load_job("j", config)
    pull(job, open_lake(job.lake), replica)
    names = [r[1] for r in src.execute("PRAGMA table_info(t)").fetchall()]
    want = src.execute(f"SELECT {', '.join(names)} FROM t ORDER BY id").fetchall()
    con = duckdb.connect(str(replica), read_only=True)
    try:
        got = con.execute(f"SELECT {', '.join(names)} FROM t ORDER BY id").fetchall()
    finally:
        con.close()
    assert got == want


def test_a_column_dropped_and_added_again_reaches_every_row(tmp_path, home, bucket, prefect_api):
    """``DROP COLUMN extra`` (a row changing in that run), then ``ADD COLUMN extra ...
    DEFAULT``: staging kept the dropped column, so its return was not news, and the rows
    whose cursor stayed kept NULL in the replica where the source has the default, exit 0
    (a fresh-user trial). The run that sees it come back reads the table whole, once."""
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake
    from flows.sync import sync_job

    src, config = _eight_rows_synced(tmp_path, bucket)
    src.executescript("ALTER TABLE t DROP COLUMN extra; UPDATE t SET updated = 40 WHERE id = 1;")
    sync_job(job="j", config=str(config))
    src.executescript("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'z'; UPDATE t SET updated = 50 WHERE id = 2;")
    sync_job(job="j", config=str(config))
    assert sync_job(job="j", config=str(config))["tables"]["t"]["batch"] is None  # once
    replica = tmp_path / "replica.duckdb"
    job = load_job("j", config)
    pull(job, open_lake(job.lake), replica)
    want = src.execute("SELECT id, name, extra FROM t ORDER BY id").fetchall()
    con = duckdb.connect(str(replica), read_only=True)
    try:
        got = con.execute("SELECT id, name, extra FROM t ORDER BY id").fetchall()
    finally:
        con.close()
    assert got == want and want[5] == (6, "n6", "z")
