"""Column types of SQL sources reach the replica exactly, as their text form when they have
no exact published type, or are refused in one line (a row whose value does not fit is held).

Replica values are compared with the source values read independently (psycopg, sqlite3),
never with deltaferry's own compare.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
from decimal import Decimal

import duckdb
import pytest

from deltaferry.errors import ConfigError, TerminalError
from sources.sql_database.types import ValueRefused

JOB = """
[jobs.pg]
source = "sql_database"
url = "{url}"
lake = "{lake}"

[[jobs.pg.tables]]
name = "kinds"
primary_key = ["id"]
cursor = "updated_at"
contract = "tests.support.contracts_sqltypes:Loose"
{extra}
"""

KINDS_DDL = """
CREATE TYPE mood AS ENUM ('calm', 'angry');
CREATE DOMAIN posint AS bigint CHECK (VALUE > 0);
CREATE TABLE kinds (
  id int PRIMARY KEY,
  i2 smallint, i8 bigint, dom posint, n38 numeric(38,10), n12 numeric(12,2),
  r4 real, f8 double precision, flag boolean,
  ts timestamp(6), tstz timestamptz, day date, tod time,
  blob bytea, ref uuid, doc json, docb jsonb,
  ints int[], texts text[], code char(3), label varchar(10), feeling mood, note text,
  amount numeric, big_n numeric, span interval, addr inet, hidden interval,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp())
"""

KINDS_ROWS = r"""
INSERT INTO kinds (id, i2, i8, dom, n38, n12, r4, f8, flag, ts, tstz, day, tod, blob, ref,
                   doc, docb, ints, texts, code, label, feeling, note,
                   amount, big_n, span, addr, hidden) VALUES
 (1, -32768, -9223372036854775808, 9223372036854775807,
  '1234567890123456789012345678.1234567890', '-0.01', 'NaN', '-Infinity', true,
  '2026-03-29 02:30:00.123456', '2026-03-29 02:30:00.654321+02', '0001-01-01', '23:59:59.999999',
  '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"a" : 1.00000000000000000001, "a": 2}', 'null', '{{1,2},{3,NULL}}', '{"x", NULL, "ÿ€ \""}',
  'a', 'Grüße', 'angry', E'line\nbreak 東京 🚀',
  '0.123456789012', '12345678901234567890123456789012345678901234567890.5', '1 day 02:03:04',
  '10.0.0.1/8', '1 year'),
 (2, 32767, 9223372036854775807, 1, '-0.0000000001', '9999999999.99', '0.1', '2.2250738585072014e-308', false,
  '1970-01-01 00:00:00', '1969-12-31 23:59:59.999999+00', '9999-12-31', '00:00:00', '', NULL,
  '[]', '{"k": [1, 2.50], "ü": "ß"}', '{}', '{}', 'abc', '', 'calm', '',
  '-99999999999999999999999999.000000000001', '-0', '-3 mons', '::1', NULL),
 (3, NULL, NULL, NULL, NULL, NULL, 'Infinity', 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""

DECLARED = """column_types = { amount = "decimal(38,12)", big_n = "text", span = "text", addr = "text" }
exclude_columns = ["hidden"]"""


def _replica(pg_job, sql: str) -> list[tuple]:
    con = duckdb.connect(str(pg_job.replica), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a):
        return math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


def test_postgres_types_arrive_exactly_at_their_published_types(pg_job):
    pg_job.write(JOB, extra=DECLARED)
    pg_job.sql(KINDS_DDL, KINDS_ROWS)
    assert pg_job.sync()["tables"]["kinds"]["rows"] == 3
    pg_job.pull()
    cols = [r[0] for r in _replica(pg_job, "DESCRIBE kinds")]
    assert "hidden" not in cols  # excluded: neither read nor published
    with pg_job.server.connect(pg_job.database) as conn:
        src = {
            r[0]: r
            for r in conn.execute(
                "SELECT id, i2, i8, dom, n38, n12, r4, f8, flag, ts, tstz, day, tod, blob,"
                " ref::text, doc::text, docb::text, ints, texts, code, label, feeling::text, note,"
                " amount, big_n::text, span::text, addr::text FROM kinds"
            ).fetchall()
        }
    types = dict(_replica(pg_job, "SELECT column_name, column_type FROM (DESCRIBE kinds)"))
    assert types["n38"] == "DECIMAL(38,10)" and types["n12"] == "DECIMAL(12,2)"
    assert types["amount"] == "DECIMAL(38,12)"
    assert types["i8"] == "BIGINT" and types["dom"] == "BIGINT"
    assert types["ts"] == "TIMESTAMP" and types["tstz"] == "TIMESTAMP WITH TIME ZONE"
    assert types["f8"] == "DOUBLE" and types["r4"] in ("DOUBLE", "FLOAT")
    got = {
        r[0]: r
        for r in _replica(
            pg_job,
            "SELECT id, i2, i8, dom, n38, n12, r4, f8, flag, ts, tstz, day, tod, blob, ref, doc,"
            " docb, ints, texts, code, label, feeling, note, amount, big_n, span, addr FROM kinds",
        )
    }
    assert sorted(got) == [1, 2, 3]
    names = "id i2 i8 dom n38 n12 r4 f8 flag ts tstz day tod blob ref doc docb ints texts code"
    names = (names + " label feeling note amount big_n span addr").split()
    for key, want_row in src.items():
        have_row = got[key]
        for name, want, have in zip(names, want_row, have_row, strict=True):
            where = f"row {key} column {name}: source {want!r}, replica {have!r}"
            if name in ("r4", "f8"):
                assert _same_float(want, have), where
            elif name in ("ints", "texts"):  # arrays: JSON arrays of the same elements
                assert (None if have is None else json.loads(have)) == want, where
            elif name == "tstz":
                assert (want is None and have is None) or (
                    have.tzinfo is not None and have == want
                ), where
            elif name == "blob":
                assert (None if have is None else bytes(have)) == want, where
            else:
                assert type(have) is type(want) and have == want, where
    # a JSON null document is not SQL NULL; json keeps its text (duplicate keys, every digit)
    assert got[1][16] == "null" and got[3][16] is None
    assert got[1][15] == '{"a" : 1.00000000000000000001, "a": 2}'


def test_negative_zero_keeps_its_sign(pg_job):
    pg_job.write(JOB, extra="")
    pg_job.sql(
        "CREATE TABLE kinds (id int PRIMARY KEY, f8 double precision, updated_at timestamptz"
        " NOT NULL DEFAULT now())",
        "INSERT INTO kinds (id, f8) VALUES (1, '-0.0')",
    )
    pg_job.sync()
    pg_job.pull()
    assert math.copysign(1, _replica(pg_job, "SELECT f8 FROM kinds")[0][0]) == -1


@pytest.mark.parametrize(
    "ddl, value, needles",
    [
        ("v numeric", "'12345678901234567890.123456789012'", ["NUMERIC", "without precision"]),
        ("v numeric(50,2)", "'1.5'", ["NUMERIC(50, 2)", "decimal128"]),
        ("v interval", "'1 day 02:03:04'", ["INTERVAL"]),
        ("v inet", "'10.0.0.1/8'", ["INET"]),
        ("v timetz", "'10:00+02'", ["TIME WITH TIME ZONE", "UTC offset"]),
        ("v float8[]", "'{1.5,NaN}'", ["DOUBLE PRECISION[]", "JSON"]),
        ("v xml", "'<a/>'", ["not known"]),
        ("v money", "'12.34'", ["MONEY"]),
    ],
)
def test_a_type_without_an_exact_published_form_is_published_as_its_text(
    pg_job, ddl, value, needles
):
    """Regression (case pg_types_block_the_job): such a column stopped every run of the job
    until it was declared or excluded. By default it is published as the database's own
    text form (which loses nothing), said once, on the run that first stages it."""
    from prefect.settings import PREFECT_API_URL

    from deltaferry.state import StateStore
    from tests.test_cli import run_cli

    pg_job.write(JOB, extra="")
    pg_job.sql(
        f"CREATE TABLE kinds (id int PRIMARY KEY, {ddl}, updated_at timestamptz NOT NULL "
        f"DEFAULT now())",
        f"INSERT INTO kinds (id, v) VALUES (1, {value}), (2, NULL)",
    )
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: job 'pg' table 'kinds'"), lines
    for needle in ["column 'v'", "published as text", 'column_types = { v = "..." }', *needles]:
        assert needle in lines[0], (needle, lines[0])
    with StateStore("pg").connect(read_only=True) as con:
        logged = con.execute(
            "SELECT tbl, detail FROM ops_log WHERE outcome = 'column-type'"
        ).fetchall()
    assert [t for t, _ in logged] == ["kinds"] and "column 'v'" in logged[0][1]
    pg_job.pull()
    with pg_job.server.connect(pg_job.database) as conn:
        want = conn.execute("SELECT id, v::text FROM kinds ORDER BY id").fetchall()
    assert _replica(pg_job, "SELECT id, v FROM kinds ORDER BY id") == want
    assert dict(_replica(pg_job, "SELECT column_name, column_type FROM (DESCRIBE kinds)"))[
        "v"
    ] == "VARCHAR"

    # said once: the next run (a new row) stages the column it already has, quietly
    pg_job.sql(f"INSERT INTO kinds (id, v) VALUES (3, {value})")
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr[-3000:]
    pg_job.pull()
    assert [r[0] for r in _replica(pg_job, "SELECT id FROM kinds ORDER BY id")] == [1, 2, 3]


@pytest.mark.parametrize("role", ["primary_key", "cursor"])
def test_a_key_or_cursor_without_an_exact_published_form_is_refused_up_front(pg_job, role):
    # compared with the source as read (bounds, key lookups): not published as text
    from prefect.settings import PREFECT_API_URL

    from tests.test_cli import assert_clean, error_line, run_cli

    if role == "primary_key":
        pg_job.write(JOB, extra="")
        ddl = "id numeric PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now()"
        what = "primary key"
    else:
        pg_job.write(JOB.replace('cursor = "updated_at"', 'cursor = "stamp"'), extra="")
        ddl = "id int PRIMARY KEY, stamp interval, updated_at timestamptz DEFAULT now()"
        what = "cursor"
    pg_job.sql(f"CREATE TABLE kinds ({ddl})", "INSERT INTO kinds (id) VALUES (1)")
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    error_line(p, 2, "job 'pg' table 'kinds'", f"the table's {what}", "sync a view that casts")
    assert_clean(p.stderr)
    assert pg_job.lake().list("pg/") == []  # nothing published


def test_a_numeric_nan_holds_its_row_until_it_fits(pg_job):
    """Regression (case pg_types_block_the_job): a NaN in numeric(p,s) stopped the table
    on every run. Its row is held in quarantine (named, counted), the other rows go on;
    once the value is fixed at the source the row is published and the record resolved."""
    from prefect.settings import PREFECT_API_URL

    from deltaferry.state import StateStore
    from tests.test_cli import run_cli

    pg_job.write(JOB, extra="")
    bad = ["'NaN'", "'nan'"]  # (a constrained numeric refuses the infinities)
    pg_job.sql(
        "CREATE TABLE kinds (id int PRIMARY KEY, v numeric(12,2), w numeric(5,0),"
        " updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO kinds (id, v, w) VALUES (1, '9999999999.99', 99999), (2, NULL, -99999)",
        *(f"INSERT INTO kinds (id, v, w) VALUES ({10 + i}, {b}, 1)" for i, b in enumerate(bad)),
        "INSERT INTO kinds (id, v, w) VALUES (20, 1, 'NaN')",
    )
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{len(bad) + 1} source row(s) held back" in lines[0], lines
    for needle in ["column v (NUMERIC(12, 2))", "NaN", "decimal(12,2)", "column w", "fixed at the source"]:
        assert needle in lines[0], (needle, lines[0])
    pg_job.pull()
    assert _replica(pg_job, "SELECT id, v, w FROM kinds ORDER BY id") == [
        (1, Decimal("9999999999.99"), Decimal(99999)),
        (2, None, Decimal(-99999)),
    ]
    with StateStore("pg").connect(read_only=True) as con:
        held = con.execute(
            "SELECT pk, field FROM quarantine WHERE resolved IS NULL ORDER BY pk"
        ).fetchall()
    assert held == sorted(
        [(f'{{"id": {10 + i}}}', "v") for i in range(len(bad))] + [('{"id": 20}', "w")]
    )
    p = run_cli("quarantine", "list", "pg", "--config", pg_job.config, env=env)
    assert p.returncode == 0 and "id=10" in p.stdout and "NaN" in p.stdout, p.stdout

    # fixed at the source, with the cursor moved (20) or not (10: held rows are read again
    # by key), or deleted (11): published, every record resolved
    pg_job.sql(
        "UPDATE kinds SET v = 0.5 WHERE id = 10",
        "DELETE FROM kinds WHERE id = 11",
        "UPDATE kinds SET w = 7, updated_at = now() WHERE id = 20",
    )
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr[-3000:]
    pg_job.pull()
    assert _replica(pg_job, "SELECT id, v, w FROM kinds WHERE id >= 10 ORDER BY id") == [
        (10, Decimal("0.50"), Decimal(1)), (20, Decimal("1.00"), Decimal(7))
    ]
    with StateStore("pg").connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM quarantine WHERE resolved IS NULL").fetchone() == (0,)


@pytest.mark.parametrize(
    "ddl, value, extra, needles",
    [
        ("v numeric", "'-Infinity'", 'column_types = { v = "decimal(38,12)" }',
         ["-Infinity value"]),
        ("v numeric", "'1.1234567890123'", 'column_types = { v = "decimal(38,12)" }',
         ["1.1234567890123", "more than 12 decimal places"]),
        ("v numeric", "'1e30'", 'column_types = { v = "decimal(38,12)" }',
         ["more than 26 digits before the point"]),
        ("v numeric", "'0.1234567890123456789'", 'column_types = { v = "float64" }',
         ["more digits than a float64 holds"]),
        ("v numeric", "'2.5'", 'column_types = { v = "int64" }', ["not an integer within int64"]),
    ],
)
def test_a_value_that_does_not_fit_is_refused_in_one_line_and_nothing_is_published(
    pg_job, ddl, value, extra, needles
):
    from prefect.settings import PREFECT_API_URL

    from tests.test_cli import assert_clean, error_line, run_cli

    pg_job.write(JOB, extra=extra)
    pg_job.sql(
        f"CREATE TABLE kinds (id int PRIMARY KEY, {ddl}, updated_at timestamptz NOT NULL "
        f"DEFAULT now())",
        "INSERT INTO kinds (id, v) VALUES (1, 1), (2, NULL)",
    )
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    assert run_cli("run", "pg", "--config", pg_job.config, env=env).returncode == 0
    before = {k: pg_job.lake().get(k) for k in pg_job.lake().list("pg/")}
    pg_job.sql(f"INSERT INTO kinds (id, v) VALUES (3, {value})")
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    error_line(p, 1, "job 'pg' table 'kinds'", "column 'v'", *needles)
    assert_clean(p.stderr)
    assert {k: pg_job.lake().get(k) for k in pg_job.lake().list("pg/")} == before


def test_an_infinite_or_out_of_range_time_holds_its_row_until_it_fits(pg_job):
    """A date or timestamp 'infinity' (common as an open end: valid_to), '-infinity', a BC
    date or a year past 9999 stopped the run with the driver's error naming no column
    (psycopg: "timestamp too large (after year 10K)"). Its row is held, named; the others
    are published; fixed at the source, it is published and the record resolved. A
    column declared text carries such values as PostgreSQL's text."""
    from prefect.settings import PREFECT_API_URL

    from deltaferry.state import StateStore
    from tests.test_cli import run_cli

    pg_job.write(JOB, extra="")
    pg_job.sql(
        "CREATE TABLE kinds (id int PRIMARY KEY, a timestamptz, b date, c timestamp,"
        " updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO kinds (id, a, b, c) VALUES (1, '9999-12-31 23:59:59.999999+00',"
        " '0001-01-01', '0001-01-01 00:00:00'), (2, NULL, NULL, NULL),"
        " (10, 'infinity', NULL, NULL), (11, '-infinity', NULL, NULL),"
        " (12, NULL, 'infinity', NULL), (13, NULL, '0044-03-15 BC', NULL),"
        " (14, NULL, NULL, '12000-01-01'), (15, NULL, NULL, '-infinity')",
    )
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "6 source row(s) held back" in lines[0], lines
    for needle in ["column a (TIMESTAMP WITH TIME ZONE) holds -infinity and infinity",
                   "column b (DATE)", "BC", "column c", "12000-01-01", 'column_types = { a = "text" }']:
        assert needle in lines[0], (needle, lines[0])
    pg_job.pull()
    got = _replica(pg_job, "SELECT id, a, b, c FROM kinds ORDER BY id")
    assert [r[0] for r in got] == [1, 2]
    assert got[0][1] == dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)
    assert got[0][2:] == (dt.date(1, 1, 1), dt.datetime(1, 1, 1))
    with StateStore("pg").connect(read_only=True) as con:
        held = con.execute("SELECT count(*) FROM quarantine WHERE resolved IS NULL").fetchone()
    assert held == (6,)

    pg_job.sql("UPDATE kinds SET a = NULL, b = NULL, c = NULL, updated_at = now() WHERE id >= 10")
    p = run_cli("run", "pg", "--config", pg_job.config, env=env)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr[-3000:]
    pg_job.pull()
    assert [r[0] for r in _replica(pg_job, "SELECT id FROM kinds ORDER BY id")] == [
        1, 2, 10, 11, 12, 13, 14, 15
    ]
    with StateStore("pg").connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM quarantine WHERE resolved IS NULL").fetchone() == (0,)


def test_a_time_column_declared_text_carries_infinity(pg_job):
    pg_job.write(JOB, extra='column_types = { a = "text" }')
    pg_job.sql(
        "CREATE TABLE kinds (id int PRIMARY KEY, a timestamptz,"
        " updated_at timestamptz NOT NULL DEFAULT now())",
        "SET TimeZone = 'UTC'",
        "INSERT INTO kinds (id, a) VALUES (1, 'infinity'), (2, '2026-01-01 00:00+00')",
    )
    assert pg_job.sync()["tables"]["kinds"]["upserts"] == 2
    pg_job.pull()
    rows = _replica(pg_job, "SELECT id, a FROM kinds ORDER BY id")
    assert rows[0] == (1, "infinity") and rows[1][1].startswith("2026-01-01 00:00:00")


def test_a_database_whose_session_defaults_are_not_utc_is_read_exactly(pg_job):
    """Regression (a new user's trial): with the database's TimeZone set to Asia/Kolkata,
    a timestamptz was published 5.5 hours off, silently; an IntervalStyle set on the
    database changed the text of unchanged rows; with extra_float_digits = 0 every double
    arrived rounded to 15 significant digits and every real to 6, and bytea_output =
    'escape' changed the text of bytea arrays (a fresh-user trial). Sessions now read in
    UTC and print one way."""
    with pg_job.server.connect() as conn:
        conn.execute(f'ALTER DATABASE "{pg_job.database}" SET timezone = \'Asia/Kolkata\'')
        conn.execute(f'ALTER DATABASE "{pg_job.database}" SET IntervalStyle = \'iso_8601\'')
        conn.execute(f'ALTER DATABASE "{pg_job.database}" SET extra_float_digits = 0')
        conn.execute(f'ALTER DATABASE "{pg_job.database}" SET bytea_output = \'escape\'')
    pg_job.write(JOB, extra="")
    pg_job.sql(
        "CREATE TABLE kinds (id int PRIMARY KEY, a timestamptz, span interval, d float8,"
        " r real, ds float8[], bs bytea[], updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO kinds (id, a, span, d, r, ds, bs) VALUES (1, '2024-06-01 12:00+00',"
        " '-1 day', 0.30000000000000004, 16777215, '{3.141592653589793}',"
        " ARRAY['\\x00ff'::bytea])",
    )
    pg_job.sync()
    pg_job.pull()
    assert _replica(pg_job, "SELECT id, a, span, d, r FROM kinds") == [
        (1, dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone.utc), "-1 days",
         0.30000000000000004, 16777215.0)
    ]
    ds, bs = _replica(pg_job, "SELECT ds, bs FROM kinds")[0]
    assert "3.141592653589793" in str(ds) and "x00ff" in str(bs), (ds, bs)


def test_declared_types_convert_exactly(pg_job):
    pg_job.write(
        JOB,
        extra='column_types = { a = "decimal(20,4)", b = "int64", c = "float64", d = "timestamp",'
        ' e = "decimal(10,0)" }',
    )
    pg_job.sql(
        "CREATE TABLE kinds (id int PRIMARY KEY, a numeric, b numeric, c numeric, d timestamptz,"
        " e text, updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO kinds VALUES (1, '12.5', '-9223372036854775808', '0.1',"
        " '2026-01-01 12:00:00+05', ' 42 ')",
        "INSERT INTO kinds VALUES (2, '-0.0001', '7', 'NaN', NULL, NULL)",
    )
    pg_job.sync()
    pg_job.pull()
    rows = _replica(pg_job, "SELECT id, a, b, c, d, e FROM kinds ORDER BY id")
    assert rows[0][:3] == (1, Decimal("12.5000"), -9223372036854775808)
    assert rows[0][3] == 0.1 and rows[0][4] == dt.datetime(2026, 1, 1, 7, 0)
    assert rows[0][5] == Decimal(42)
    assert rows[1][:3] == (2, Decimal("-0.0001"), 7) and math.isnan(rows[1][3])
    assert rows[1][4:] == (None, None)


@pytest.mark.parametrize(
    "extra, needles",
    [
        ('exclude_columns = ["id"]', ["exclude_columns", "'id'", "primary key"]),
        ('exclude_columns = ["updated_at"]', ["'updated_at'", "cursor"]),
        ('exclude_columns = "v"', ["exclude_columns must be a list", "'v'"]),
        ('column_types = { v = "decimal(40,2)" }', ["column_types v = 'decimal(40,2)'"]),
        ('column_types = { v = "varchar" }', ["column_types v = 'varchar'", "decimal(P,S)"]),
        ('column_types = { updated_at = "text" }', ["'updated_at'", "cursor"]),
        ('column_types = { v = "text" }\nexclude_columns = ["v"]', ["both"]),
    ],
)
def test_column_settings_are_checked_when_the_jobs_file_is_read(tmp_path, extra, needles):
    from deltaferry.config import load_jobs

    path = tmp_path / "jobs.toml"
    path.write_text(JOB.format(url="sqlite:///x.db", lake=f"file://{tmp_path}/lake", extra=extra))
    with pytest.raises(ConfigError) as err:
        load_jobs(path)
    line = str(err.value)
    assert "\n" not in line and "job 'pg' table 'kinds'" in line
    for needle in needles:
        assert needle in line, (needle, line)


def test_a_setting_naming_a_missing_column_is_a_config_error(pg_job):
    pg_job.write(JOB, extra='exclude_columns = ["nope"]')
    pg_job.sql("CREATE TABLE kinds (id int PRIMARY KEY, updated_at timestamptz NOT NULL)")
    from sources.sql_database.source import preflight_source

    with pytest.raises(ConfigError, match="exclude_columns names column.s. nope, not in the"):
        preflight_source(pg_job.job())


SQLITE_JOB = """
[jobs.lite]
source = "sql_database"
url = "sqlite:///{db}"
lake = "file://{lake}"

[[jobs.lite.tables]]
name = "kinds"
primary_key = ["id"]
contract = "tests.support.contracts_sqltypes:Loose"
{extra}
"""


def _lite(tmp_path, home, *rows: str, ddl: str, extra: str = ""):
    from flows.sync import sync_job

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute(f"CREATE TABLE IF NOT EXISTS kinds (id INTEGER PRIMARY KEY, {ddl})")
        for r in rows:
            con.execute(f"INSERT OR REPLACE INTO kinds VALUES {r}")
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(SQLITE_JOB.format(db=db, lake=tmp_path / "lake", extra=extra))
    return db, cfg, lambda: sync_job(job="lite", config=str(cfg))


def _pull(
    cfg, tmp_path, columns: str = "*", table: str = "kinds", job: str = "lite", order: str = "id"
):
    """Pull ``job`` into a replica beside the test and read ``columns`` of ``table``."""
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake

    loaded = load_job(job, cfg)
    pull(loaded, open_lake(loaded.lake), tmp_path / "replica.duckdb")
    con = duckdb.connect(str(tmp_path / "replica.duckdb"), read_only=True)
    try:
        return con.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()
    finally:
        con.close()


def _sync_lite(cfg):
    from flows.sync import sync_job

    return sync_job(job="lite", config=str(cfg))


def test_sqlite_declared_decimals_and_big_integers(tmp_path, home, prefect_api):
    # SQLite stores DECIMAL(10,2) values as REAL: 0.1 comes back as the double nearest 0.1
    db, cfg, sync = _lite(
        tmp_path,
        home,
        "(1, 0.1, 9223372036854775807, 'x')",
        "(2, '12345678.99', -9223372036854775808, NULL)",
        "(3, NULL, NULL, 1.5)",
        ddl="amount DECIMAL(10,2), big INTEGER, note TEXT",
    )
    sync()
    with sqlite3.connect(db) as con:
        src = con.execute("SELECT id, amount, big, note FROM kinds ORDER BY id").fetchall()
    got = _pull(cfg, tmp_path, "id, amount, big, note")
    assert [r[1] for r in got] == [Decimal("0.10"), Decimal("12345678.99"), None]
    assert [Decimal(repr(r[1])) if r[1] is not None else None for r in src] == [
        Decimal("0.1"),
        Decimal("12345678.99"),
        None,
    ]
    assert [r[2] for r in got] == [r[2] for r in src]  # int64 extremes, not through float
    assert [r[3] for r in got] == ["x", None, "1.5"]  # a REAL in a TEXT column: its exact text

    # a value with more decimals than declared (SQLite does not enforce DECIMAL(10,2))
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO kinds VALUES (4, 1.005, 1, NULL)")
    with pytest.raises(ValueRefused, match=r"column 'amount' .*REAL value 1.005 with more than 2") as err:
        sync()
    assert "\n" not in str(err.value)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE kinds SET amount = 1.25, big = 2.5 WHERE id = 4")
    with pytest.raises(ValueRefused, match=r"column 'big' .*REAL value 2.5, not an INTEGER") as err:
        sync()
    assert "\n" not in str(err.value)


THREE_TABLES = """
[jobs.lite]
source = "sql_database"
url = "sqlite:///{db}"
lake = "file://{lake}"

[[jobs.lite.tables]]
name = "kinds"
primary_key = ["id"]
cursor = "updated_at"
contract = "tests.support.contracts_sqltypes:Loose"

[[jobs.lite.tables]]
name = "other"
primary_key = ["id"]
cursor = "updated_at"
contract = "tests.support.contracts_sqltypes:Loose"

[[jobs.lite.tables]]
name = "third"
primary_key = ["id"]
contract = "tests.support.contracts_sqltypes:Loose"
"""


def test_a_value_that_does_not_fit_stops_its_table_and_the_others_go_on(
    tmp_path, home, prefect_api
):
    """A value its column cannot carry (SQLite does not enforce DECIMAL(10,2); text in a
    TIMESTAMP column that is no time) stops its own table, not the job: the job's other
    tables are read without it and published, the run fails naming each stopped table, and
    every run does so until the value is fixed; then the table publishes all its rows."""
    from deltaferry.errors import TableReadError
    from deltaferry.state import StateStore

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        for name in ("kinds", "other"):
            con.execute(
                f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, amount DECIMAL(10,2), "
                "updated_at TIMESTAMP NOT NULL)"
            )
        con.execute("CREATE TABLE third (id INTEGER PRIMARY KEY, at TIMESTAMP)")
        con.execute("INSERT INTO kinds VALUES (1, 1.25, '2026-01-01 00:00:00'), (2, 1.005, '2026-01-01 00:00:01')")
        con.execute("INSERT INTO other VALUES (1, 2.5, '2026-01-01 00:00:00')")
        con.execute("INSERT INTO third VALUES (1, '2026-01-01 00:00:00'), (2, 'soon')")
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(THREE_TABLES.format(db=db, lake=tmp_path / "lake"))
    lake = tmp_path / "lake"

    def sync():
        return _sync_lite(cfg)

    def published(table):
        return sorted(p.name for p in lake.rglob("*.json") if f"/{table}/" in str(p))

    for _ in range(2):  # every run, until the values are fixed
        with pytest.raises(TerminalError) as err:
            sync()
        message = str(err.value)
        assert "\n" not in message and not isinstance(err.value, TableReadError)
        assert "tables 'kinds', 'third' stopped (the job's other tables went on)" in message
        assert "column 'amount'" in message and "REAL value 1.005" in message
        assert "column 'at' value 'soon' is not a timestamp" in message
        assert published("kinds") == [] and published("third") == []
        assert len(published("other")) == 1  # published on the first run, unchanged after
    assert _pull(cfg, tmp_path, "id, amount", "other") == [(1, Decimal("2.50"))]
    with StateStore("lite", read_only=True).connect(read_only=True) as con:
        failed = con.execute(
            "SELECT tbl, detail FROM ops_log WHERE step = 'extract' AND outcome = 'failed' ORDER BY id"
        ).fetchall()
    assert [t for t, _ in failed] == ["kinds", "third"] * 2
    assert "REAL value 1.005" in failed[0][1]

    with sqlite3.connect(db) as con:  # the values fixed, the cursor moved for kinds
        con.execute("UPDATE kinds SET amount = 1.01, updated_at = '2026-01-02 00:00:00' WHERE id = 2")
        con.execute("UPDATE third SET at = '2026-02-01 00:00:00' WHERE id = 2")
    sync()
    assert _pull(cfg, tmp_path, "id, amount", "kinds") == [(1, Decimal("1.25")), (2, Decimal("1.01"))]
    assert [r[0] for r in _pull(cfg, tmp_path, "id, \"at\"", "third")] == [1, 2]
    assert len(published("other")) == 1


def test_a_table_refused_after_the_run_staged_stops_the_job(tmp_path, home, prefect_api, monkeypatch):
    """Once the run's reads committed (a key read by reconcile, a row read again by key), a
    table whose data is refused stops the job as a whole, as before: reading the other
    tables again would lose sight of rows their committed reads held back (a NULL key is
    remembered only when the extract ends)."""
    import importlib

    from deltaferry.errors import TableReadError

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        for name in ("kinds", "other"):
            con.execute(
                f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, amount DECIMAL(10,2), "
                "updated_at TIMESTAMP NOT NULL)"
            )
            con.execute(f"INSERT INTO {name} VALUES (1, 1.25, '2026-01-01 00:00:00')")
        con.execute("CREATE TABLE third (id INTEGER PRIMARY KEY, at TIMESTAMP)")
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(
        THREE_TABLES.format(db=db, lake=tmp_path / "lake").replace(
            'name = "kinds"', 'name = "kinds"\ndeletes = "reconcile"', 1
        )
    )
    lake = tmp_path / "lake"
    package = importlib.import_module("sources.sql_database.source")
    real = package.reconcile

    def refused(job, t, *args, **kw):  # noqa: ANN001, ANN202
        # the class a value refused by its column raises (``job_scope`` looks for it in an
        # error's causes and context: the job's error must not carry it there)
        raise ValueRefused(f"job 'lite' table '{t.name}': a key is not UTF-8", t.name)

    monkeypatch.setattr(package, "reconcile", refused)
    with pytest.raises(TerminalError) as err:
        _sync_lite(cfg)
    assert not isinstance(err.value, TableReadError)
    assert str(err.value) == "job 'lite' table 'kinds': a key is not UTF-8"
    assert not list(lake.rglob("*.json"))  # nothing of any table published
    monkeypatch.setattr(package, "reconcile", real)
    _sync_lite(cfg)
    assert _pull(cfg, tmp_path, "id, amount", "other") == [(1, Decimal("1.25"))]
    assert _pull(cfg, tmp_path, "id, amount", "kinds") == [(1, Decimal("1.25"))]


def test_a_sqlite_boolean_holds_0_and_1_and_refuses_anything_else(tmp_path, home, prefect_api):
    """SQLite keeps any value in a BOOLEAN column; SQLAlchemy reads every non-zero one as
    true. 0 and 1 are published as false and true, anything else ('no', 'false', 2, 0.5)
    is refused naming the value, never published as true."""
    db, cfg, sync = _lite(tmp_path, home, "(1, 1)", "(2, 0)", "(3, NULL)", "(4, TRUE)", ddl="v BOOLEAN")
    sync()
    assert _pull(cfg, tmp_path, "id, v") == [(1, True), (2, False), (3, None), (4, True)]
    for bad, shown in (("'no'", "the text 'no'"), ("'false'", "the text 'false'"), ("2", "the value 2"), ("0.5", "the REAL value 0.5")):
        with sqlite3.connect(db) as con:
            con.execute(f"INSERT OR REPLACE INTO kinds VALUES (5, {bad})")
        with pytest.raises(ValueRefused, match=rf"column 'v' .*{shown}, neither 0 nor 1"):
            sync()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE kinds SET v = 0 WHERE id = 5")
    sync()
    assert _pull(cfg, tmp_path, "id, v")[-1] == (5, False)


def test_a_blob_in_a_sqlite_text_column_is_refused_with_a_way_out(tmp_path, home, prefect_api):
    """A BLOB in a TEXT column is published as text already: the refusal names leaving the
    column out or fixing the value, not ``column_types = { v = "text" }`` (which changes
    nothing: the same refusal again)."""
    db, cfg, sync = _lite(tmp_path, home, "(1, 'a')", "(2, CAST(x'6869' AS BLOB))", ddl="v TEXT")
    with pytest.raises(ValueRefused) as err:
        sync()
    message = str(err.value)
    assert "column 'v' (TEXT, published as text) holds a binary (BLOB) value" in message
    assert 'set exclude_columns = ["v"] for this table' in message
    assert "column_types" not in message
    with sqlite3.connect(db) as con:
        con.execute("UPDATE kinds SET v = CAST(v AS TEXT) WHERE id = 2")
    sync()
    assert _pull(cfg, tmp_path, "id, v") == [(1, "a"), (2, "hi")]


def test_sqlite_numeric_without_precision_is_published_as_its_text(tmp_path, home, prefect_api):
    # what SQLite holds, as text: an INTEGER as its digits, a REAL as its shortest exact repr
    db, cfg, sync = _lite(
        tmp_path, home, "(1, 0.5)", "(2, 12)", "(3, '12345678901234567890.5')", "(4, NULL)",
        ddl="v NUMERIC",
    )
    out = sync()
    assert any("column 'v' (NUMERIC) is published as text" in n for n in out["extracted"].warnings)
    with sqlite3.connect(db) as con:
        src = con.execute("SELECT id, v FROM kinds ORDER BY id").fetchall()
    want = [(i, None if v is None else repr(v) if isinstance(v, float) else str(v)) for i, v in src]
    assert _pull(cfg, tmp_path, "id, v") == want
    assert want[0] == (1, "0.5") and want[1] == (2, "12")


def test_a_sqlite_json_column_holding_numbers_is_read_as_its_json_text(tmp_path, home, prefect_api):
    """Regression (fidelity suite, seed 14 under another hash order): SQLite's NUMERIC
    affinity stores the JSON documents '5444889355683045.0', '12' and '1.5' as INTEGER or
    REAL, so one JSON column held text and numbers and every run stopped ("its values arrive
    in more than one type"). The numbers are read as their JSON text; documents compare
    equal to what SQLite holds."""
    import json

    db, cfg, sync = _lite(
        tmp_path,
        home,
        "(1, '5444889355683045.0')",
        "(2, '12')",
        "(3, '1.5')",
        "(4, '\"\"')",
        "(5, '{\"n\": [1, 2.5]}')",
        "(6, 'null')",
        "(7, NULL)",
        "(8, '6.629350339143434e+16')",
        ddl="doc JSON",
    )
    with sqlite3.connect(db) as con:
        src = con.execute("SELECT id, doc, typeof(doc) FROM kinds ORDER BY id").fetchall()
    assert {r[2] for r in src} == {"integer", "real", "text", "null"}  # what SQLite did
    sync()
    got = _pull(cfg, tmp_path, "id, doc")
    assert [r[0] for r in got] == [r[0] for r in src]
    for (i, text), (_, value, kind) in zip(got, src, strict=True):
        if value is None:
            assert text is None, i
        elif kind == "text":
            assert text == value, i  # the stored text, as it is
        else:  # a number: the same number, as JSON text
            assert json.loads(text) == value and type(json.loads(text)) is type(value), i


def test_a_sqlite_time_column_declared_text_is_published_as_its_text(tmp_path, home, prefect_api):
    # the fix a refused time value names (column_types = { ts = "text" }) takes effect
    db, cfg, sync = _lite(
        tmp_path, home, "(1, 'not a time')", "(2, '2026-03-01T12:00:00Z')", ddl="ts DATETIME"
    )
    with pytest.raises(TerminalError, match=r'column \'ts\' value .not a time.*column_types'):
        sync()
    cfg.write_text(cfg.read_text() + 'column_types = { ts = "text" }\n')
    sync()
    assert _pull(cfg, tmp_path, "id, ts") == [(1, "not a time"), (2, "2026-03-01T12:00:00Z")]
    # deltaferry's own compare (drill, demo) reads the source as the sync does
    from deltaferry.compare import compare
    from deltaferry.config import load_job

    assert all(c.equal for c in compare(load_job("lite", cfg), tmp_path / "replica.duckdb"))


@pytest.mark.parametrize(
    "ddl, extra, needles",
    [
        ("v BLOB", 'column_types = { v = "int64" }', ["column 'v'", 'declares "int64"', "BLOB"]),
        ("v TEXT", 'column_types = { v = "date" }', ["column 'v'", 'declares "date"', "TEXT"]),
    ],
)
def test_sqlite_declared_types_that_cannot_be_exact_are_refused_up_front(
    tmp_path, home, prefect_api, ddl, extra, needles
):
    db, cfg, sync = _lite(tmp_path, home, "(1, NULL)", ddl=ddl, extra=extra)
    with pytest.raises(ConfigError) as err:
        sync()
    line = str(err.value)
    assert "\n" not in line and "job 'lite' table 'kinds'" in line
    for needle in needles:
        assert needle in line, (needle, line)


def test_a_time_the_driver_cannot_read_stops_its_table_only_naming_it(pg_job):
    """PostgreSQL allows a ``time`` of 24:00:00; psycopg cannot read it into Python's time.
    The extract failed with the driver's bare "can't parse time", naming no table, and the
    job's other tables stopped with it (a fresh-user trial). Now that table stops in one
    line naming it and the fix; the others publish; once the value is fixed it publishes."""
    from deltaferry.errors import TerminalError

    other = (
        '\n[[jobs.pg.tables]]\nname = "other"\nprimary_key = ["id"]\ncursor = "updated_at"\n'
        'contract = "tests.support.contracts_sqltypes:Loose"\n'
    )
    pg_job.write(JOB, extra=other)
    pg_job.sql(
        "CREATE TABLE kinds (id int PRIMARY KEY, tod time, updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO kinds (id, tod) VALUES (1, '10:00'), (2, '24:00:00')",
        "CREATE TABLE other (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO other (id) VALUES (1)",
    )
    with pytest.raises(TerminalError) as e:
        pg_job.sync()
    text = str(e.value)
    assert "job 'pg' table 'kinds': the database driver cannot read a value the source holds" in text
    assert "24:00:00" in text and 'column_types = { <column> = "text" }' in text
    pg_job.pull()
    assert _replica(pg_job, "SELECT id FROM other") == [(1,)]
    pg_job.sql("UPDATE kinds SET tod = '23:59:59.999999', updated_at = now() WHERE id = 2")
    pg_job.sync()
    pg_job.pull()
    assert _replica(pg_job, "SELECT id, tod FROM kinds ORDER BY id") == [
        (1, dt.time(10, 0)), (2, dt.time(23, 59, 59, 999999)),
    ]
