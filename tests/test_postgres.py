"""A real PostgreSQL source: types, composite keys, the cursor boundary, hard deletes."""

from __future__ import annotations

import duckdb
import pytest

EVENTS_DDL = """
CREATE TABLE events (
  region text NOT NULL, id integer NOT NULL, amount numeric(12,2),
  happened_at timestamptz NOT NULL, day date, ref uuid, doc json, docb jsonb, blob bytea,
  tags text[], scores int[], note text, big bigint, ratio double precision, flag boolean,
  updated_at timestamptz NOT NULL, PRIMARY KEY (region, id))
"""

EVENTS_JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}"
lake = "{lake}"

[[jobs.pg.tables]]
name = "events"
primary_key = ["region", "id"]
cursor = "updated_at"
deletes = "reconcile"
contract = "tests.support.contracts_pg:Events"
"""

INSERT_EVENTS = """
INSERT INTO events
SELECT r, g, g * 1.25, timestamptz '2026-01-01 00:00:00+02' + g * interval '1 minute',
       date '2026-01-01' + g, gen_random_uuid(), json_build_object('n', g, 'r', r),
       jsonb_build_object('k', ARRAY[g, g + 1], 'ü', 'ß'), decode(md5(g::text), 'hex'),
       ARRAY['x', 'ÿ€', r], ARRAY[g, -g], 'Grüße 東京 🚀 ' || g, 9000000000 + g, g / 7.0,
       g % 2 = 0, timestamptz '2026-02-01 00:00:00+00' + g * interval '1 second'
FROM generate_series({lo}, {hi}) g, unnest(ARRAY['eu', 'us']) r
"""


def _replica(pg_job, sql: str) -> list[tuple]:
    con = duckdb.connect(str(pg_job.replica), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _converged(pg_job) -> None:
    pg_job.pull()
    for c in pg_job.compare():
        assert c.equal, c


def test_common_types_and_a_composite_key_survive_the_round_trip(pg_job):
    pg_job.write(EVENTS_JOB)
    pg_job.sql(EVENTS_DDL, INSERT_EVENTS.format(lo=1, hi=30))
    out = pg_job.sync()
    assert out["tables"]["events"]["rows"] == 60
    _converged(pg_job)
    row = _replica(
        pg_job,
        "SELECT amount, doc, docb, blob, tags, note, big, flag FROM events "
        "WHERE region = 'us' AND id = 4",
    )[0]
    assert str(row[0]) == "5.00"
    assert '"n":4' in row[1].replace(" ", "")
    assert "ß" in row[2]
    assert row[3] == bytes.fromhex(__import__("hashlib").md5(b"4").hexdigest())
    assert "ÿ€" in row[4]
    assert row[5] == "Grüße 東京 🚀 4"
    assert (row[6], row[7]) == (9000000004, True)

    # an update, an insert and a hard delete, each exactly once
    pg_job.sql(
        "UPDATE events SET note = 'changed', updated_at = timestamptz '2027-01-01 00:00:00+00'"
        " WHERE region = 'eu' AND id = 7",
        INSERT_EVENTS.format(lo=31, hi=31),
        "DELETE FROM events WHERE region = 'us' AND id = 9",
    )
    out = pg_job.sync()
    e = out["tables"]["events"]
    assert (e["upserts"], e["deletes"]) == (3, 1), e
    _converged(pg_job)
    assert _replica(pg_job, "SELECT count(*) FROM events")[0][0] == 61


def _lake_snapshot(pg_job) -> dict[str, bytes]:
    lake = pg_job.lake()
    return {k: lake.get(k) for k in lake.list("pg/")}


def test_bad_source_input_is_one_line_naming_the_job_and_touches_nothing(
    pg_job, postgres, monkeypatch
):
    from prefect.settings import PREFECT_API_URL

    from tests.test_cli import assert_clean, closed_port, error_line, run_cli

    pg_job.write(EVENTS_JOB.replace('url = "{url}"', 'url = "env:PG_URL"'))
    pg_job.sql(EVENTS_DDL, INSERT_EVENTS.format(lo=1, hi=5))
    good = postgres.url(pg_job.database)
    env = {"PG_URL": good, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    first = run_cli("run", "pg", "--config", pg_job.config, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _lake_snapshot(pg_job)
    assert any(k.endswith("000000000001.json") for k in before)
    pg_job.sql("UPDATE events SET note = 'pending', updated_at = now() WHERE id = 1")

    cases = [
        (postgres.url(pg_job.database, password="wrong"), 2, "password"),
        (postgres.url("no_such_db"), 2, "database name"),
        (postgres.url(pg_job.database, port=closed_port()), 1, "host and port"),
    ]
    for url, code, fix in cases:
        p = run_cli("run", "pg", "--config", pg_job.config, env={**env, "PG_URL": url})
        line = error_line(p, code, "job 'pg'", fix)
        assert "wrong" not in line and "pg-test-superuser" not in line  # no secret echoed
        assert_clean(p.stderr)

    pg_job.sql("ALTER TABLE events RENAME TO events_gone")
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    error_line(p, 2, "job 'pg' table 'events'", "not found")
    pg_job.sql("ALTER TABLE events_gone RENAME TO events")

    assert _lake_snapshot(pg_job) == before  # nothing committed was touched
    out = run_cli("run", "pg", "--config", pg_job.config, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    after = _lake_snapshot(pg_job)
    assert set(after) > set(before)
    assert all(after[k] == v for k, v in before.items())
    monkeypatch.setenv("PG_URL", good)
    _converged(pg_job)


ITEMS_JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}"
lake = "{lake}"
chunk_size = 7          # many source chunks per run
rows_per_file = 10      # many Parquet parts per batch

[[jobs.pg.tables]]
name = "items"
primary_key = ["sku", "store"]
contract = "tests.support.contracts_pg:Items"
"""


def test_table_without_cursor_publishes_only_what_changed(pg_job):
    pg_job.write(ITEMS_JOB)
    pg_job.sql(
        "CREATE TABLE items (sku text, store int, qty int, price double precision, "
        "PRIMARY KEY (sku, store))",
        "INSERT INTO items SELECT 'sku-' || g, 1 + g % 3, g, g * 0.5 FROM generate_series(1, 100) g",
    )
    first = pg_job.sync()["tables"]["items"]
    assert (first["batch"], first["rows"]) == (1, 100)
    manifest = pg_job.lake().get("pg/items/manifests/000000000001.json")
    assert len(__import__("json").loads(manifest)["files"]) == 10
    _converged(pg_job)

    assert pg_job.sync()["tables"]["items"]["batch"] is None  # nothing changed, nothing sent

    pg_job.sql(
        "UPDATE items SET qty = qty + 1 WHERE sku IN ('sku-1', 'sku-2', 'sku-3')",
        "DELETE FROM items WHERE sku IN ('sku-50', 'sku-51')",
        "INSERT INTO items VALUES ('sku-new', 2, 5, 1.5)",
        "UPDATE items SET qty = qty WHERE sku = 'sku-4'",  # touched, not changed
    )
    e = pg_job.sync()["tables"]["items"]
    assert (e["batch"], e["upserts"], e["deletes"]) == (2, 4, 2), e
    _converged(pg_job)

    # deleted, then re-created with the very same content: it comes back
    pg_job.sql("INSERT INTO items SELECT 'sku-50', 1 + 50 % 3, 50, 25.0")
    e = pg_job.sync()["tables"]["items"]
    assert (e["upserts"], e["deletes"]) == (1, 0), e
    _converged(pg_job)
    assert _replica(pg_job, "SELECT qty FROM items WHERE sku = 'sku-50'") == [(50,)]
    cols = [r[0] for r in _replica(pg_job, "DESCRIBE items")]
    assert "_df_hash" not in cols and "_dlt_load_id" not in cols


TICKS_JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}"
lake = "{lake}"
chunk_size = 4

[[jobs.pg.tables]]
name = "ticks"
primary_key = ["id"]
cursor = "updated_at"
deletes = "reconcile"
contract = "tests.support.contracts_pg:Ticks"
"""


def test_rows_sharing_the_cursor_value_across_a_batch_boundary(pg_job):
    pg_job.write(TICKS_JOB)
    t = "timestamptz '2026-03-01 12:00:00+00'"
    pg_job.sql(
        "CREATE TABLE ticks (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL)",
        f"INSERT INTO ticks SELECT g, 'a' || g, {t} FROM generate_series(1, 10) g",
    )
    assert pg_job.sync()["tables"]["ticks"]["rows"] == 10
    # a transaction that committed late, at the cursor value already synced, and a change of
    # a boundary row that kept its cursor value
    pg_job.sql(
        f"INSERT INTO ticks SELECT g, 'late' || g, {t} FROM generate_series(11, 15) g",
        "UPDATE ticks SET v = 'changed' WHERE id = 3",
    )
    e = pg_job.sync()["tables"]["ticks"]
    assert (e["batch"], e["rows"], e["upserts"]) == (2, 6, 6), e
    assert pg_job.sync()["tables"]["ticks"]["batch"] is None  # no duplicates at the boundary
    _converged(pg_job)
    assert _replica(pg_job, "SELECT count(*), count(DISTINCT id) FROM ticks") == [(15, 15)]

    # a transaction that committed late with a cursor value older than the last one synced:
    # the cursor cannot see it, key-set reconciliation does
    pg_job.sql("INSERT INTO ticks VALUES (99, 'late', timestamptz '2020-01-01 00:00:00+00')")
    e = pg_job.sync()["tables"]["ticks"]
    assert (e["batch"], e["upserts"]) == (3, 1), e
    assert pg_job.sync()["tables"]["ticks"]["batch"] is None
    _converged(pg_job)


ACCOUNTS_DDL = (
    "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(14,2),"
    " updated_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
ACCOUNTS_JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}"
lake = "{lake}"
chunk_size = {chunk}
rows_per_file = 500

[[jobs.pg.tables]]
name = "accounts"
primary_key = ["id"]
cursor = "updated_at"
deletes = "reconcile"
contract = "tests.support.contracts_pg:Accounts"
"""


@pytest.mark.timeout(240)
def test_a_stalled_source_link_fails_the_run_clearly_then_the_next_run_resumes(
    pg_job, postgres, monkeypatch
):
    """The source link blackholes mid-result (TCP still answers, no data flows): the stall
    watchdog cuts the connection, retries are spent, the run fails naming the stall; when
    the link heals the next run publishes everything once."""
    from tests.support.chaos import ChaosProxy, FaultPlan

    proxy = ChaosProxy(postgres.port, seed=5)
    pg_job.server = _Via(postgres, proxy.port)
    pg_job.write(ACCOUNTS_JOB, chunk=1000)
    pg_job.sql(
        ACCOUNTS_DDL,
        "INSERT INTO accounts SELECT g, 'owner ' || g, g * 3.5 FROM generate_series(1, 300) g",
    )
    pg_job.sync()
    pg_job.sql(
        "INSERT INTO accounts SELECT g, repeat('x', 200) || g, g FROM generate_series(301, 3000) g"
    )
    monkeypatch.setenv("DELTAFERRY_SOURCE_STALL_TIMEOUT", "2")
    monkeypatch.setenv("DELTAFERRY_STEP_RETRIES", "1")
    # every connection's replies stop after 64 KiB: the catalogue queries fit, the rows do not
    proxy.set_plan(FaultPlan(blackhole_p=1.0, direction="down", fault_at=65_536))
    try:
        import time

        started = time.monotonic()
        try:
            pg_job.sync()
        except Exception as e:  # noqa: BLE001 - the flow re-raises the step's error
            message = str(e)
        else:
            raise AssertionError("a blackholed source link must fail the run")
        elapsed = time.monotonic() - started
        assert "stalled" in message and "job 'pg'" in message, message
        assert proxy.injected["blackhole"] >= 2  # the first attempt and its retry
        assert elapsed < 60, elapsed
        assert len(pg_job.lake().list("pg/accounts/manifests/")) == 1  # nothing half-published
        proxy.set_plan(FaultPlan())
        out = pg_job.sync()["tables"]["accounts"]
        assert (out["batch"], out["rows"]) == (2, 2700)
        _converged(pg_job)  # the jobs file points at the proxy
    finally:
        proxy.close()


class _Via:
    """The server's urls, but through another port (a proxy); everything else as is."""

    def __init__(self, server, port: int) -> None:  # noqa: ANN001
        self._server, self._port = server, port

    def url(self, database: str = "postgres", **kw) -> str:  # noqa: ANN003
        return self._server.url(database, port=self._port, **kw)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._server, name)


UUIDS_JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}"
lake = "{lake}"

[[jobs.pg.tables]]
name = "tokens"
primary_key = ["id"]
cursor = "updated_at"
deletes = "reconcile"
contract = "tests.support.contracts_pg:Tokens"
"""


def test_uuid_keys_with_hard_deletes_and_re_created_rows(pg_job):
    pg_job.write(UUIDS_JOB)
    pg_job.sql(
        "CREATE TABLE tokens (id uuid PRIMARY KEY, label text NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        "INSERT INTO tokens (id, label) SELECT gen_random_uuid(), 't' || g"
        " FROM generate_series(1, 6) g",
    )
    assert pg_job.sync()["tables"]["tokens"]["rows"] == 6
    with pg_job.server.connect(pg_job.database) as conn:
        gone = conn.execute("SELECT id FROM tokens ORDER BY label LIMIT 1").fetchone()[0]
    pg_job.sql(f"DELETE FROM tokens WHERE id = '{gone}'")
    e = pg_job.sync()["tables"]["tokens"]
    assert (e["upserts"], e["deletes"]) == (0, 1), e
    _converged(pg_job)
    # re-created with an old cursor value: found by key, extracted again
    pg_job.sql(
        f"INSERT INTO tokens VALUES ('{gone}', 'back', timestamptz '2001-01-01 00:00:00+00')"
    )
    e = pg_job.sync()["tables"]["tokens"]
    assert (e["upserts"], e["deletes"]) == (1, 0), e
    _converged(pg_job)
    assert _replica(pg_job, "SELECT label FROM tokens WHERE id = '" + str(gone) + "'") == [
        ("back",)
    ]


def test_an_unencoded_at_sign_in_the_password_is_a_config_error_that_hides_it(pg_job):
    from deltaferry.config import load_job
    from deltaferry.errors import ConfigError
    from sources.sql_database.connection import engine_for

    pg_job.write(EVENTS_JOB.replace('url = "{url}"', 'url = "env:PG_URL"'))
    import os

    os.environ["PG_URL"] = "postgresql://app:Sup3r@Secret@127.0.0.1:5432/db"
    try:
        with pytest.raises(ConfigError) as err:
            engine_for(load_job("pg", pg_job.config))
    finally:
        del os.environ["PG_URL"]
    assert "percent-encoded" in str(err.value) and "job 'pg'" in str(err.value)
    assert "Secret" not in str(err.value) and "Sup3r" not in str(err.value)


SCHEMA_JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}?options=-csearch_path%3Dsales"
lake = "{lake}"

[[jobs.pg.tables]]
name = "orders"
primary_key = ["id"]
cursor = "updated_at"
deletes = "reconcile"
contract = "tests.support.contracts_sqltypes:Loose"
"""


def test_a_table_of_another_schema_is_read_through_the_search_path(pg_job):
    """A table outside ``public`` (``sales.orders``) could not be read at all (a fresh-user
    trial: ``source_table = "sales.orders"`` is not a table name; now refused naming the
    way that works). The session's
    ``search_path``, given in the url's ``options`` as libpq takes it, makes it the table
    every read, reflection and key comparison finds, and not ``public.orders`` of the
    same name. The oracle is the source itself."""
    pg_job.write(SCHEMA_JOB)
    pg_job.sql(
        "CREATE SCHEMA sales",
        "CREATE TABLE public.orders (id int PRIMARY KEY, v text, updated_at timestamptz)",
        "INSERT INTO public.orders VALUES (1, 'public, not this one', now())",
        "CREATE TABLE sales.orders (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL)",
        "INSERT INTO sales.orders SELECT g, 'v' || g, timestamptz '2026-01-01 00:00:00+00'"
        " + g * interval '1 minute' FROM generate_series(1, 30) g",
    )
    # what the trial tried first: refused up front, naming the way that works
    from deltaferry.errors import ConfigError

    pg_job.write(
        SCHEMA_JOB.replace("?options=-csearch_path%3Dsales", "").replace(
            'name = "orders"', 'name = "orders"\nsource_table = "sales.orders"'
        )
    )
    with pytest.raises(ConfigError, match=r"'sales', set source_table to the table's name .*"
                       r"\?options=-csearch_path%3Dsales \(PostgreSQL\)$"):  # fmt: skip
        pg_job.sync()
    pg_job.write(SCHEMA_JOB)
    assert pg_job.sync()["tables"]["orders"]["upserts"] == 30
    pg_job.sql(
        "UPDATE sales.orders SET v = 'changed', updated_at = now() WHERE id = 3",
        "DELETE FROM sales.orders WHERE id = 7",
    )
    out = pg_job.sync()["tables"]["orders"]
    assert (out["upserts"], out["deletes"]) == (1, 1), out
    pg_job.pull()
    with pg_job.server.connect(pg_job.database) as conn:
        want = conn.execute("SELECT id, v FROM sales.orders ORDER BY id").fetchall()
    assert _replica(pg_job, "SELECT id, v FROM orders ORDER BY id") == [tuple(r) for r in want]


@pytest.mark.timeout(300)
def test_a_link_that_stops_answering_right_after_login_fails_the_checks_instead_of_hanging(
    pg_job, postgres, monkeypatch
):
    """The source link stops forwarding a few hundred bytes into the server's answers: past
    the login (the connect timeout no longer applies), inside SQLAlchemy's first connect
    (its version queries and rollback). Both the command's preflight and the read's own
    must fail after the stall timeout, not wait for ever (chaos seeds 7038, 7058, 7059,
    7148 hung there: the stall watchdog learned of a connection only after that)."""
    import threading
    import time

    from deltaferry.config import load_job
    from sources.sql_database.preflight import preflight_source
    from tests.support.chaos import ChaosProxy, FaultPlan

    proxy = ChaosProxy(postgres.port, seed=7)
    pg_job.server = _Via(postgres, proxy.port)
    pg_job.write(ACCOUNTS_JOB, chunk=1000)
    pg_job.sql(ACCOUNTS_DDL, "INSERT INTO accounts (id, owner) VALUES (1, 'a')")
    monkeypatch.setenv("DELTAFERRY_SOURCE_STALL_TIMEOUT", "2")
    monkeypatch.setenv("DELTAFERRY_STEP_RETRIES", "0")
    job = load_job("pg", pg_job.config)

    def ends_within(call, seconds: float) -> tuple[bool, BaseException | None]:  # noqa: ANN001
        done: list[BaseException | None] = []

        def run() -> None:
            try:
                call()
                done.append(None)
            except BaseException as e:  # noqa: BLE001 - reported to the test
                done.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(seconds)
        return (not thread.is_alive()), (done[0] if done else None)

    try:
        hung = []
        for at in (400, 700, 1000, 1400, 2000, 3000):  # somewhere past the login
            proxy.set_plan(FaultPlan(blackhole_p=1.0, direction="down", fault_at=at))
            started = time.monotonic()
            ended, error = ends_within(lambda: preflight_source(job), 30)
            if not ended:
                hung.append(("preflight", at))
            ended, error = ends_within(pg_job.sync, 60)
            if not ended:
                hung.append(("sync", at))
            elif error is None:  # the fault struck after the last byte the run needed
                continue
            assert time.monotonic() - started < 90
        assert hung == []
        assert proxy.injected["blackhole"] >= 6
        proxy.set_plan(FaultPlan())
        pg_job.sync()
        _converged(pg_job)
    finally:
        proxy.close()
