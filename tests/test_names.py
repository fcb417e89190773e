"""Source column names: kept exactly from the source through staging, Parquet, manifest and
replica, or refused in one line naming job, table, column(s) and the fix."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from deltaferry.errors import ConfigError
from tests.support.api_server import API_JOB_HEADER, users_table

# every kind of name staging keeps exactly, as SQLite spells them (quoted)
ODD_TABLE = """CREATE TABLE odd (
    "Id" INTEGER PRIMARY KEY,
    "userId" TEXT,
    "UserName" TEXT,
    "first name" TEXT,
    "a.b" TEXT,
    "größe" INTEGER,
    "1st" TEXT,
    "select" TEXT,
    "order" INTEGER,
    "class" TEXT,
    "a__b" TEXT,
    "x_" TEXT,
    "Updated At" TIMESTAMP NOT NULL,
    "Deleted.At" TIMESTAMP
)"""
ODD_COLUMNS = [
    "Id", "userId", "UserName", "first name", "a.b", "größe", "1st", "select", "order",
    "class", "a__b", "x_", "Updated At", "Deleted.At",
]  # fmt: skip

# a contract names each column; a name that is no Python attribute goes in an alias
ODD_CONTRACT = '''
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series


class Odd(pa.DataFrameModel):
    Id: Series[int] = pa.Field(ge=1)
    userId: Series[str]
    UserName: Series[str]
    first_name: Series[str] = pa.Field(alias="first name")
    a_dot_b: Series[str] = pa.Field(alias="a.b")
    größe: Series[int]
    first: Series[str] = pa.Field(alias="1st")
    select: Series[str]
    order: Series[int]
    class_: Series[str] = pa.Field(alias="class")
    a__b: Series[str]
    x_: Series[str]
    updated: Series[pd.Timestamp] = pa.Field(alias="Updated At")
    deleted: Series[pd.Timestamp] = pa.Field(alias="Deleted.At", nullable=True)

    class Config:
        strict = True
        coerce = True


class Plain(pa.DataFrameModel):
    id: Series[int]

    class Config:
        strict = False
        coerce = True
'''


def _row(i: int, ts: str, tag: str = "") -> tuple:
    return (
        i, f"u{i}{tag}", f"User {i}", f"first {i}", f"ab{i}", 100 + i, f"1st-{i}", f"sel{i}",
        i * 10, f"cls{i}", f"dunder{i}", f"x{i}", ts, None,
    )  # fmt: skip


@pytest.fixture
def names_job(tmp_path: Path, home: Path, bucket: str, prefect_api: None, monkeypatch):
    """A SQLite source with the ``odd`` table, a contract module and a jobs file writer."""
    module = f"names_contract_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(ODD_CONTRACT)
    monkeypatch.syspath_prepend(str(tmp_path))
    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.execute(ODD_TABLE)
    con.executemany(
        f"INSERT INTO odd VALUES ({', '.join('?' * len(ODD_COLUMNS))})",
        [_row(i, f"2026-03-01 12:00:0{i}.000000") for i in range(1, 4)],
    )
    con.commit()
    con.close()

    class Job:
        dir = tmp_path
        config = tmp_path / "deltaferry.toml"
        replica = tmp_path / "replica.duckdb"
        lake_url = f"s3://{bucket}/lake"
        contract = module
        source = db

        def write(self, tables: str) -> None:
            self.config.write_text(
                f'[jobs.names]\nsource = "sql_database"\nurl = "sqlite:///{db}"\n'
                f'lake = "{self.lake_url}"\n{tables}'
            )

        def sync(self) -> dict:
            from flows.sync import sync_job

            return sync_job(job="names", config=str(self.config))

        def pull(self):  # noqa: ANN201
            from deltaferry.config import load_job
            from deltaferry.replica import pull
            from destinations.lake import open_lake

            return pull(load_job("names", self.config), open_lake(self.lake_url), self.replica)

    return Job()


ODD_JOB = """
[[jobs.names.tables]]
name = "odd"
primary_key = ["Id"]
cursor = "Updated At"
deletes = "soft:Deleted.At"
contract = "{contract}:Odd"
"""


def _source(db: Path, table: str) -> tuple[list[str], list[tuple]]:
    """Column names and live rows of a source table, by my own SQL read."""
    con = sqlite3.connect(db)
    try:
        cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
        rows = con.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
    finally:
        con.close()
    return cols, rows


def _replica(path: Path, table: str) -> tuple[list[str], list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall() if r[0] != "_seq"]
        select = ", ".join('"' + c.replace('"', '""') + '"' for c in cols)
        rows = con.execute(f'SELECT {select} FROM "{table}" ORDER BY 1').fetchall()
    finally:
        con.close()
    return cols, rows


def _as_source(row: tuple) -> tuple:
    """A replica row in the source's spelling (SQLite keeps timestamps as text)."""
    return tuple(v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v for v in row)


def test_every_kind_of_name_arrives_exactly(names_job):
    from destinations.lake import open_lake
    from destinations.manifest import Manifest, manifest_key

    names_job.write(ODD_JOB.format(contract=names_job.contract))
    first = names_job.sync()
    assert first["tables"]["odd"]["rows"] == 3
    names_job.pull()
    src_cols, src_rows = _source(names_job.source, "odd")
    assert src_cols == ODD_COLUMNS
    cols, rows = _replica(names_job.replica, "odd")
    assert cols == ODD_COLUMNS
    assert [_as_source(r) for r in rows] == src_rows

    # the manifest and the Parquet file name the columns as the source does
    from deltaferry.delta import read_parquet

    lake = open_lake(names_job.lake_url)
    key = manifest_key("names", "odd", 1)
    manifest = Manifest.parse(lake.get(key), key=key)
    assert manifest.cursor.column == "Updated At"
    data = read_parquet(lake.get(manifest.files[0].key))
    assert [c for c in data.column_names if c in ODD_COLUMNS] == ODD_COLUMNS

    # a change by the cursor with a space, an insert and a soft delete by a dotted column
    con = sqlite3.connect(names_job.source)
    con.execute(
        'UPDATE odd SET "userId" = \'changed\', "Updated At" = \'2026-03-02 00:00:00.000000\''
        ' WHERE "Id" = 1'
    )
    con.execute(
        'UPDATE odd SET "Deleted.At" = \'2026-03-02 00:00:01.000000\','
        ' "Updated At" = \'2026-03-02 00:00:01.000000\' WHERE "Id" = 2'
    )
    con.execute(
        f"INSERT INTO odd VALUES ({', '.join('?' * len(ODD_COLUMNS))})",
        _row(4, "2026-03-02 00:00:02.000000"),
    )
    con.commit()
    con.close()
    second = names_job.sync()["tables"]["odd"]
    assert (second["batch"], second["upserts"], second["deletes"]) == (2, 2, 1)
    names_job.pull()
    src_cols, src_rows = _source(names_job.source, "odd")
    live = [r for r in src_rows if r[-1] is None]
    cols, rows = _replica(names_job.replica, "odd")
    assert cols == src_cols
    assert [_as_source(r) for r in rows] == live
    assert [r[1] for r in rows] == ["changed", "u3", "u4"]


def test_mixed_case_columns_are_not_renamed_under_a_loose_contract(names_job):
    """The reported case: ``userId`` used to be published as ``user_id``, silently."""
    con = sqlite3.connect(names_job.source)
    con.execute(
        'CREATE TABLE people (id INTEGER PRIMARY KEY, "userId" TEXT, "UserName" TEXT, updated_at TIMESTAMP)'
    )
    con.execute("INSERT INTO people VALUES (1, 'u1', 'Ada', '2026-03-01 12:00:00.000000')")
    con.commit()
    con.close()
    names_job.write(
        '[[jobs.names.tables]]\nname = "people"\nprimary_key = ["id"]\ncursor = "updated_at"\n'
        f'contract = "{names_job.contract}:Plain"\n'
    )
    names_job.sync()
    names_job.pull()
    cols, rows = _replica(names_job.replica, "people")
    assert cols == ["id", "userId", "UserName", "updated_at"]
    assert [r[:3] for r in rows] == [(1, "u1", "Ada")]


@pytest.mark.parametrize(
    "column, needle",
    [
        ("it's", "which dlt's staging replaces with '_'"),
        ('say "hi"', "which dlt's staging replaces with '_'"),
        (" padded", "leading or trailing spaces"),
        ("_dlt_id", "deltaferry and dlt use for their own columns"),
        ("_df_hash", "deltaferry and dlt use for their own columns"),
        # every published data object has these: a source column of the name was published
        # and broke every pull and `verify` for good (a fresh-user trial)
        ("_seq", "_op and _seq in every published file"),
        ("_op", "_op and _seq in every published file"),
        # in any case: DuckDB does not tell them apart (`_Op` lost every row of a batch)
        ("_Op", "_op and _seq in every published file"),
        ("_SEQ", "_op and _seq in every published file"),
        ("_DF_X", "deltaferry and dlt use for their own columns"),
    ],
)
def test_names_staging_cannot_keep_are_refused_in_one_line(names_job, column, needle):
    from deltaferry.config import load_job
    from sources.sql_database.source import preflight_source

    quoted = '"' + column.replace('"', '""') + '"'
    con = sqlite3.connect(names_job.source)
    con.execute(f"CREATE TABLE bad (id INTEGER PRIMARY KEY, {quoted} TEXT, updated_at TIMESTAMP)")
    con.commit()
    con.close()
    names_job.write(
        '[[jobs.names.tables]]\nname = "bad"\nprimary_key = ["id"]\ncursor = "updated_at"\n'
        f'contract = "{names_job.contract}:Plain"\n'
    )
    with pytest.raises(ConfigError) as err:
        preflight_source(load_job("names", names_job.config))
    text = str(err.value)
    assert "\n" not in text
    for part in ("job 'names'", "table 'bad'", repr(column), needle, "rename the column"):
        assert part in text, (part, text)


def test_jobs_file_names_columns_as_the_source_does(tmp_path):
    from deltaferry.config import load_jobs

    def load(table: str) -> object:
        cfg = tmp_path / "j.toml"
        cfg.write_text(
            '[jobs.j]\nsource = "sql_database"\nurl = "sqlite:///x.db"\nlake = "file:lake"\n'
            f'[[jobs.j.tables]]\nname = "t"\ncontract = "contracts.shop:Orders"\n{table}'
        )
        return load_jobs(cfg)["j"].tables[0]

    t = load('primary_key = ["Id", "first name"]\ncursor = "Updated At"\ndeletes = "soft:a.b"\n')
    assert t.primary_key == ("Id", "first name") and t.cursor == "Updated At"
    assert t.soft_delete_column == "a.b"
    with pytest.raises(ConfigError, match=r"table 't': column \"it's\" has"):
        load('primary_key = ["it\'s"]\n')
    with pytest.raises(ConfigError, match=r"cursor column 'a\\\\b' cannot be named"):
        load('primary_key = ["id"]\ncursor = "a\\\\b"\n')


def test_case_only_collision_is_one_line_naming_both(pg_job):
    """PostgreSQL tells "Email" and email apart; staging and the replica (DuckDB) cannot."""
    pg_job.sql(
        'CREATE TABLE clash (id int PRIMARY KEY, "Email" text, email text,'
        " updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO clash (id, \"Email\", email) VALUES (1, 'A@x.io', 'a@x.io')",
    )
    pg_job.write(
        '[jobs.pg]\nsource = "sql_database"\nurl = "{url}"\nlake = "{lake}"\n'
        '[[jobs.pg.tables]]\nname = "clash"\nprimary_key = ["id"]\ncursor = "updated_at"\n'
        'contract = "contracts.shop:Orders"\n'
    )
    from tests.test_cli import error_line, run_cli

    for _ in range(2):  # every run the same line, nothing left half-loaded by dlt
        p = run_cli("run", "pg", "--config", pg_job.config)
        line = error_line(p, 2, "job 'pg'", "table 'clash'", "'Email'", "'email'", "rename one")
        assert "differ only in case" in line
        assert not [ln for ln in p.stderr.splitlines() if ln.strip()][:-1], p.stderr[-2000:]
    assert not (pg_job.dir / "home" / "pg" / "staging.duckdb").exists()


def test_a_job_staged_under_snake_case_keeps_it_and_refuses_renames(names_job, monkeypatch):
    """Staging made before names were kept exactly: the convention dlt recorded stays; a
    name it would change is refused naming the fix, never renamed."""
    import sources.names

    con = sqlite3.connect(names_job.source)
    con.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, updated_at TIMESTAMP)")
    con.execute("INSERT INTO people VALUES (1, 'Ada', '2026-03-01 12:00:00.000000')")
    con.commit()
    names_job.write(
        '[[jobs.names.tables]]\nname = "people"\nprimary_key = ["id"]\ncursor = "updated_at"\n'
        f'contract = "{names_job.contract}:Plain"\n'
    )
    with monkeypatch.context() as m:
        m.setattr(sources.names, "EXACT", "snake_case")  # as deltaferry staged before
        names_job.sync()
    from deltaferry.config import load_job
    from sources.pipeline import staging_naming

    job = load_job("names", names_job.config)
    assert staging_naming(job) == "snake_case"

    # lower-case names mean the same under both: the job goes on as before
    con.execute("INSERT INTO people VALUES (2, 'Bob', '2026-03-02 12:00:00.000000')")
    con.commit()
    assert names_job.sync()["tables"]["people"]["batch"] == 2

    con.execute('ALTER TABLE people ADD COLUMN "userId" TEXT')
    con.execute("INSERT INTO people VALUES (3, 'Cy', '2026-03-03 12:00:00.000000', 'u3')")
    con.commit()
    con.close()
    with pytest.raises(Exception) as err:
        names_job.sync()
    text = str(err.value)
    assert "\n" not in text
    for part in ("job 'names'", "table 'people'", "'userId'", "'user_id'", "snake_case", "new job"):
        assert part in text, (part, text)
    # nothing staged under the renamed column
    staged = duckdb.connect(str(names_job.dir / "home" / "names" / "staging.duckdb"), read_only=True)
    try:
        cols = [r[0] for r in staged.execute("DESCRIBE raw.people").fetchall()]
    finally:
        staged.close()
    assert "user_id" not in cols and "userId" not in cols

    # the staging file lost, dlt's working dir kept: the convention is read from dlt's own
    # schema there, so the job does not switch conventions silently
    (names_job.dir / "home" / "names" / "staging.duckdb").unlink()
    assert staging_naming(job) == "snake_case"


def test_drift_finds_variant_columns_under_both_conventions():
    from contracts.drift import VARIANT

    assert VARIANT.match("userId▶v_text").group("base") == "userId"
    assert VARIANT.match("user_id__v_text").group("base") == "user_id"
    assert VARIANT.match("first name") is None


API_JOB = API_JOB_HEADER + users_table("{contract}:Plain")


def test_record_keys_arrive_exactly_and_a_case_collision_is_refused(names_job, api):
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake
    from flows.sync import sync_job

    for r in api.users.values():
        r["userId"] = f"U{r['id']}"
        r["first name"] = f"F{r['id']}"
    names_job.config.write_text(
        API_JOB.format(url=api.url, lake=names_job.lake_url, contract=names_job.contract)
    )
    sync_job(job="api", config=str(names_job.config))
    pull(load_job("api", names_job.config), open_lake(names_job.lake_url), names_job.replica)
    cols, rows = _replica(names_job.replica, "users")
    assert cols == ["id", "name", "email", "userId", "first name"]
    want = sorted(api.users.values(), key=lambda r: r["id"])
    assert rows == [(r["id"], r["name"], r["email"], r["userId"], r["first name"]) for r in want]

    api.users[3]["Email"] = "X@example.com"
    api.users[3]["name"] = "changed"
    for _ in range(2):
        with pytest.raises(Exception) as err:
            sync_job(job="api", config=str(names_job.config))
        text = str(err.value)
        assert "\n" not in text
        for part in ("job 'api'", "table 'users'", "'Email'", "'email'", "differ only in case"):
            assert part in text, (part, text)
    del api.users[3]["Email"]  # fixed at the source: the next run goes through
    out = sync_job(job="api", config=str(names_job.config))
    assert out["tables"]["users"]["rows"] == 1


def test_table_names_known_kept_without_dlt_are_kept_by_dlt():
    # deltaferry/job_models.py answers "dlt's snake_case keeps this table name" without
    # importing dlt for names of one shape; dlt must agree on every such name, and on
    # names just outside the shape the job model must still ask dlt (and refuse)
    import random

    from dlt.common.normalizers.naming.snake_case import NamingConvention

    from deltaferry.job_models import _SNAKE_CASE_KEPT, TableModel

    naming = NamingConvention()
    rng = random.Random(20261207)
    letters, tail = "abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz0123456789"
    shaped = 0
    for _ in range(20_000):
        words = [
            rng.choice(letters if i == 0 else tail)
            + "".join(rng.choice(tail) for _ in range(rng.randrange(0, 6)))
            for i in range(rng.randrange(1, 4))
        ]
        name = "_".join(words)
        assert _SNAKE_CASE_KEPT.fullmatch(name), name
        assert naming.normalize_identifier(name) == name, name
        shaped += 1
    assert shaped == 20_000
    for name in ("Orders", "order__lines", "orders_", "1orders", "order-lines", "ordersÄ",
                 "order lines", "orderLines"):
        assert not _SNAKE_CASE_KEPT.fullmatch(name), name
        assert naming.normalize_identifier(name) != name, name
        with pytest.raises(ValueError, match="would be staged by dlt as"):
            TableModel._kept_by_dlt(name)


def test_cursor_paths_known_without_dlt_are_the_paths_dlt_reads():
    # sources/names.py:cursor_path answers an ASCII identifier without importing dlt: dlt's
    # JSONPath parser must read each such name as that one field, and the parser's keywords
    # (which it cannot read plain) still get dlt's quoted path
    import random

    from dlt.common.jsonpath import extract_simple_field_name

    from sources.names import _PLAIN_PATH, cursor_path

    rng = random.Random(7)
    first = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
    rest = first + "0123456789"
    for _ in range(20_000):
        name = rng.choice(first) + "".join(rng.choice(rest) for _ in range(rng.randrange(12)))
        assert _PLAIN_PATH.fullmatch(name)
        if cursor_path(name) == name:
            assert extract_simple_field_name(name) == name, name
    for word in ("where", "wherenot", "WHERE", "Where"):
        path = cursor_path(word)
        assert extract_simple_field_name(path) == word, (word, path)
