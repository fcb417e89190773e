"""Source tables whose names are no valid job table name: mixed case, spaces, a dash.

A job's table ``name`` is the lake path, the staging and the replica table, so it is
lower-case letters, digits and ``_``; ``source_table`` gives the source's own spelling. A
user's trial could not sync a SQLite table named ``Users`` at all. Checked through every
read of the source (cursor window over time text, a read again by key, reconcile's key
read, a view) against the source read with sqlite3.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from deltaferry.errors import ConfigError
from tests.test_sql_types import _pull


def _write(tmp_path, db, tables: str):
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(
        f'[jobs.odd]\nsource = "sql_database"\nurl = "sqlite:///{db}"\n'
        f'lake = "file://{tmp_path}/lake"\n' + tables
    )
    return cfg


TABLES = """
[[jobs.odd.tables]]
name = "users"
source_table = "User Accounts"
primary_key = ["Id"]
cursor = "Updated At"
contract = "tests.support.contracts_oddnames:Accounts"

[[jobs.odd.tables]]
name = "order_lines"
source_table = "Order-Lines"
primary_key = ["OrderId", "Line"]
deletes = "reconcile"
contract = "tests.support.contracts_oddnames:Lines"

[[jobs.odd.tables]]
name = "active_users"
source_table = "Active Users"
primary_key = ["Id"]
contract = "tests.support.contracts_oddnames:Accounts"
"""


def _sync(cfg):
    from flows.sync import sync_job

    return sync_job(job="odd", config=str(cfg))


def _replica(cfg, tmp_path, table: str, columns: str, order: str):
    return _pull(cfg, tmp_path, columns, table, job="odd", order=order)


def _source(db, table: str, columns: str, order: str):
    with sqlite3.connect(db) as con:
        return con.execute(f'SELECT {columns} FROM "{table}" ORDER BY {order}').fetchall()


def test_tables_spelled_as_the_source_spells_them(tmp_path, home, prefect_api):
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute(
            'CREATE TABLE "User Accounts" ("Id" INTEGER PRIMARY KEY, "Full Name" TEXT, '
            '"Updated At" TIMESTAMP)'
        )
        con.execute(
            "INSERT INTO \"User Accounts\" VALUES (1, 'Ann', '2024-03-01 10:00:00'), "
            "(2, 'Bob', '2024-03-01T11:00:00Z')"
        )
        con.execute(
            'CREATE TABLE "Order-Lines" ("OrderId" INTEGER, "Line" INTEGER, "Qty" INTEGER, '
            'PRIMARY KEY ("OrderId", "Line"))'
        )
        con.execute('INSERT INTO "Order-Lines" VALUES (1, 1, 5), (1, 2, 7), (2, 1, 1)')
        con.execute(
            'CREATE VIEW "Active Users" AS SELECT * FROM "User Accounts" WHERE "Full Name" <> \'\''
        )
    cfg = _write(tmp_path, db, TABLES)
    _sync(cfg)
    with sqlite3.connect(db) as con:  # an update, an insert, a delete, a refused cursor
        con.execute(
            "UPDATE \"User Accounts\" SET \"Full Name\" = 'Anne', \"Updated At\" = "
            "'2024-03-02 09:00:00' WHERE \"Id\" = 1"
        )
        con.execute("INSERT INTO \"User Accounts\" VALUES (3, 'Cy', 'not a time')")
        con.execute('DELETE FROM "Order-Lines" WHERE "OrderId" = 1 AND "Line" = 2')
        con.execute('UPDATE "Order-Lines" SET "Qty" = 9 WHERE "OrderId" = 2')
    with pytest.raises(Exception, match="table 'users'.*1 row"):
        _sync(cfg)
    with sqlite3.connect(db) as con:  # fixed below the window's bound: read again by key
        con.execute(
            "UPDATE \"User Accounts\" SET \"Updated At\" = '2024-01-01 00:00:00' WHERE \"Id\" = 3"
        )
    _sync(cfg)
    people = '"Id", "Full Name"'
    lines = '"OrderId", "Line", "Qty"'
    assert _replica(cfg, tmp_path, "users", people, '"Id"') == _source(
        db, "User Accounts", people, '"Id"'
    ) == [(1, "Anne"), (2, "Bob"), (3, "Cy")]  # fmt: skip
    assert _replica(cfg, tmp_path, "order_lines", lines, "1, 2") == _source(
        db, "Order-Lines", lines, "1, 2"
    ) == [(1, 1, 5), (2, 1, 9)]  # fmt: skip
    assert _replica(cfg, tmp_path, "active_users", people, '"Id"') == _source(
        db, "Active Users", people, '"Id"'
    )


def test_a_name_the_source_spells_otherwise_is_named_in_the_error(tmp_path, home):
    from deltaferry.config import load_job
    from sources.sql_database.source import preflight_source

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute('CREATE TABLE "Users" ("Id" INTEGER PRIMARY KEY)')
    one = '[[jobs.odd.tables]]\nprimary_key = ["Id"]\ncontract = "m:C"\n'
    cfg = _write(tmp_path, db, one + 'name = "Users"\n')
    with pytest.raises(ConfigError) as err:
        load_job("odd", cfg)
    assert 'name = "users" with source_table = "Users"' in str(err.value)
    cfg = _write(tmp_path, db, one + 'name = "users"\n')
    with pytest.raises(ConfigError) as err:
        preflight_source(load_job("odd", cfg))
    assert str(err.value) == (
        "job 'odd' table 'users': not found in the source database, which has 'Users': set "
        'source_table = "Users" for this table in the jobs file (name stays the job\'s name '
        "for it)"
    )
    cfg = _write(tmp_path, db, one + 'name = "users"\nsource_table = "Userz"\n')
    with pytest.raises(ConfigError, match=r"not found in the source database \(source_table 'Userz'\)$"):
        preflight_source(load_job("odd", cfg))


@pytest.mark.parametrize(
    "source, asked",
    [
        ("Order Lines", "order_lines"),  # name alone: case and separator
        ("Order Lines", "OrderLines"),  # source_table: no separator
        ("Order Lines", "Order Lines "),  # a trailing space
        ("gro\u0308\u00dfe", "gr\u00f6\u00dfe"),  # another Unicode form (NFD at the source)
    ],
)
def test_a_near_spelling_is_named(tmp_path, home, source, asked):
    from deltaferry.config import load_job
    from sources.sql_database.source import preflight_source

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute(f'CREATE TABLE "{source}" ("Id" INTEGER PRIMARY KEY)')
    given = "" if asked == "order_lines" else f"source_table = {json.dumps(asked)}\n"
    cfg = _write(
        tmp_path, db, f'[[jobs.odd.tables]]\nname = "t"\nprimary_key = ["Id"]\n{given}contract = "m:C"\n'
    )
    if asked == "order_lines":
        cfg.write_text(cfg.read_text().replace('name = "t"', 'name = "order_lines"'))
    with pytest.raises(ConfigError) as err:
        preflight_source(load_job("odd", cfg))
    assert f"which has {source!r}" in str(err.value), str(err.value)
    assert ("another Unicode form" in str(err.value)) == (source != "Order Lines")
