"""One fidelity example: a random schema drawn from the type table, its contract and jobs
file, random rounds of changes to a real source, `deltaferry run` + `deltaferry pull`
after each, and the oracle's comparison (or the predicted refusal) after each round.

Sources: SQLite file, PostgreSQL (the suite's server), the REST test API
(``tests/support/api_server.py``), CSV / JSON Lines / Parquet drops in a folder.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
from hypothesis import strategies as st

from tests.support.fidelity import oracle
from tests.support.fidelity.types import (
    DUPLICATE_KEY,
    KINDS,
    NULL_CURSOR,
    NULL_KEY,
    TS_CONTRACT,
    TS_FORMS,
    UTC,
    Refusal,
    TypeSpec,
    instant,
    ts_text,
)

JOB, TABLE = "fid", "t"
CURSOR = "updated_at"
SQL_KINDS = ("sqlite", "postgres")
FILE_KINDS = ("csv", "jsonl", "parquet")


@dataclass
class Stats:
    """What a kind's examples did (printed as one line per kind)."""

    examples: int = 0
    rounds: int = 0
    rows: int = 0
    values: int = 0
    refusals: Counter = field(default_factory=Counter)
    failures: int = 0
    seconds: float = 0.0
    faults: list = field(default_factory=list)

    def line(self, kind: str) -> str:
        ref = ", ".join(f"{k}: {v}" for k, v in sorted(self.refusals.items())) or "none"
        return (f"fidelity {kind}: {self.examples} examples, {self.rounds} rounds, "
                f"{self.rows} rows and {self.values} values compared, refusals: {ref}, "
                f"failed examples: {self.failures}, {self.seconds:.0f} s")


# --- schemas ------------------------------------------------------------------------


@dataclass(repr=False)
class Schema:
    kind: str
    key: list[str]
    columns: dict[str, TypeSpec]          # every column, key and cursor included, in order
    cursor: str | None
    cursor_form: str | None = None        # SQLite/REST: the text form of the cursor
    enforce_key: bool = True              # SQL: the key is a PRIMARY KEY at the source
    source_name: str = TABLE              # SQL: the table as the source spells it

    def __repr__(self) -> str:
        return (f"<schema table={self.source_name!r} key={self.key} columns={self.columns} "
                f"cursor_form={self.cursor_form}>")

    @property
    def data(self) -> list[str]:
        return [c for c in self.columns if c not in self.key and c != self.cursor]


NAMES = ["amount", "note", "val_x", "z9", "qty", "label", "price", "misc"]
# source column names that are not lower-case identifiers: drawn for one schema in four
MIXED_NAMES = ["Note2", "userId", "CamelCase", "größe"]
# SQL source tables spelled as no job table name can be (read by source_table): drawn for
# one schema in two
ODD_TABLES = ["Order Lines", "Users", "größe-Tabelle", "select", "a.b", "T"]


@st.composite
def schemas(draw, kind: str) -> Schema:
    specs = KINDS[kind]
    keyable = [s for s in specs if s.key]
    composite = draw(st.booleans()) if kind != "rest" else False
    if kind == "rest":
        keys = [("id", next(s for s in keyable if s.family == "int"))]
    elif composite:
        keys = [("kt", next(s for s in keyable if s.family == "str")),
                ("kn", next(s for s in keyable if s.family == "int"))]
    else:
        keys = [("id", draw(st.sampled_from(keyable)))]
    n = draw(st.integers(1, 6))
    pool = NAMES + MIXED_NAMES if draw(st.integers(0, 3)) == 0 else NAMES
    names = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n, unique=True))
    types = draw(st.lists(st.sampled_from(specs), min_size=n, max_size=n))
    columns: dict[str, TypeSpec] = dict(keys)
    columns.update(zip(names, types))
    cursor = form = None
    if kind in SQL_KINDS or kind == "rest":
        cursor = CURSOR
        ts = next(s for s in specs if s.family == "ts")
        columns[cursor] = ts
        if kind == "sqlite":
            form = draw(st.sampled_from(list(TS_FORMS)))
        elif kind == "rest":
            form = "offset"  # the test API compares cursors as text: one form, "+00:00"
    enforce = draw(st.sampled_from([True, True, True, False])) if kind == "sqlite" else True
    source_name = TABLE
    if kind in SQL_KINDS and draw(st.booleans()):
        source_name = draw(st.sampled_from(ODD_TABLES))
    return Schema(kind, [k for k, _ in keys], columns, cursor, form, enforce, source_name)


def contract_module(schema: Schema) -> str:
    lines = ["import pandas as pd", "import pandera.pandas as pa",
             "from pandera.engines import pandas_engine", "from pandera.typing import Series",
             "", "", "class T(pa.DataFrameModel):"]
    for c, spec in schema.columns.items():
        null = "" if c in schema.key else "nullable=True, "
        decl = TS_CONTRACT if c == schema.cursor else spec.contract
        if "pa.Field(" in decl:
            decl = decl.format(null=null)
        else:
            decl = f"{decl} = pa.Field({null.rstrip(', ')})"
        lines.append(f"    {c}: {decl}")
    lines += ["", "    class Config:", "        strict = True", "        coerce = True", ""]
    return "\n".join(lines)


# --- the sources ----------------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Source:
    """A source of one kind: ``write(rows_changed, deleted)`` then ``read()`` the rows."""

    deletes = "none"

    def __init__(self, schema: Schema, dir: Path) -> None:
        self.schema, self.dir = schema, dir
        self.table = _q(schema.source_name)  # SQL: the source's table, quoted

    def jobs_text(self, lake: str, contract: str) -> str:
        s = self.schema
        t = (f'[jobs.{JOB}]\nsource = "{self.source}"\nurl = "{self.url}"\nlake = "{lake}"\n'
             # a round's changes are cut into batches of at most 3 rows: every key type the
             # kind draws goes through a split cut's key ranges (deltaferry/keyrange.py)
             f"max_quarantine_ratio = 0.0\nmax_batch_rows = 3\n{self.job_extra()}"
             f'\n[[jobs.{JOB}.tables]]\nname = "{TABLE}"\n'
             f"primary_key = {json.dumps(s.key, ensure_ascii=False)}\n"
             f'deletes = "{self.deletes}"\ncontract = "{contract}"\n')
        if s.cursor:
            t += f'cursor = "{s.cursor}"\n'
        if s.source_name != TABLE:
            t += f"source_table = {json.dumps(s.source_name, ensure_ascii=False)}\n"
        return t + self.table_extra()

    def job_extra(self) -> str:
        return ""

    def table_extra(self) -> str:
        return ""

    def close(self) -> None:
        pass


class SqliteSource(Source):
    source = "sql_database"
    deletes = "reconcile"

    def __init__(self, schema: Schema, dir: Path) -> None:
        super().__init__(schema, dir)
        self.path = dir / "src.db"
        self.url = f"sqlite:///{self.path}"
        cols = [f"{_q(c)} {spec.ddl}" for c, spec in schema.columns.items()]
        if schema.enforce_key:
            cols.append(f"PRIMARY KEY ({', '.join(map(_q, schema.key))})")
        with sqlite3.connect(self.path) as con:
            con.execute(f"CREATE TABLE {self.table} ({', '.join(cols)})")

    def _bind(self, v: Any) -> Any:
        return str(v) if isinstance(v, Decimal) else v

    def write(self, upserts: list[dict], deletes: list[tuple]) -> None:
        s = self.schema
        con = sqlite3.connect(self.path)
        try:
            for key in deletes:
                where = " AND ".join(f"{_q(k)} IS ?" for k in s.key)
                con.execute(f"DELETE FROM {self.table} WHERE {where}", key)
            for row in upserts:
                key = tuple(row[k] for k in s.key)
                where = " AND ".join(f"{_q(k)} IS ?" for k in s.key)
                exists = con.execute(f"SELECT 1 FROM {self.table} WHERE {where}", key).fetchone()
                cols = list(s.columns)
                if exists and not row.get("_dup"):
                    sets = ", ".join(f"{_q(c)} = ?" for c in cols)
                    con.execute(f"UPDATE {self.table} SET {sets} WHERE {where}",
                                [self._bind(row[c]) for c in cols] + list(key))
                else:
                    con.execute(f"INSERT INTO {self.table} VALUES ({', '.join('?' * len(cols))})",
                                [self._bind(row[c]) for c in cols])
            con.commit()
        finally:
            con.close()

    def read(self) -> list[dict]:
        con = sqlite3.connect(self.path)
        try:
            cur = con.execute(f"SELECT * FROM {self.table}")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            con.close()


class PostgresSource(Source):
    source = "sql_database"
    deletes = "reconcile"
    server: Any = None  # set by the test (the session's PostgreSQL server)

    def __init__(self, schema: Schema, dir: Path) -> None:
        super().__init__(schema, dir)
        self.db = self.server.create_database(f"fid_{uuid.uuid4().hex[:10]}")
        self.url = self.server.url(self.db)
        cols = [f"{_q(c)} {spec.ddl}" for c, spec in schema.columns.items()]
        cols.append(f"PRIMARY KEY ({', '.join(map(_q, schema.key))})")
        self.sql(f"CREATE TABLE {self.table} ({', '.join(cols)})")

    def sql(self, stmt: str, params: Any = None) -> Any:
        with self.server.connect(self.db) as conn:
            return conn.execute(stmt, params).fetchall() if stmt.startswith("SELECT") else \
                conn.execute(stmt, params)

    def write(self, upserts: list[dict], deletes: list[tuple]) -> None:
        s = self.schema
        cols = list(s.columns)
        casts = {c: f"::{spec.ddl}" for c, spec in s.columns.items()}
        with self.server.connect(self.db) as conn:
            for key in deletes:
                where = " AND ".join(f"{_q(k)} = %s{casts[k]}" for k in s.key)
                conn.execute(f"DELETE FROM {self.table} WHERE {where}", key)
            for row in upserts:
                vals = ", ".join(f"%s{casts[c]}" for c in cols)
                upd = ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in cols if c not in s.key)
                conn.execute(
                    f"INSERT INTO {self.table} ({', '.join(map(_q, cols))}) VALUES ({vals}) "
                    f"ON CONFLICT ({', '.join(map(_q, s.key))}) DO UPDATE SET {upd}",
                    [row[c] for c in cols])

    def read(self) -> list[dict]:
        sel = []
        for c, spec in self.schema.columns.items():
            as_text = spec.ddl in ("json", "jsonb", "uuid", "interval", "numeric", "inet")
            sel.append(f"{_q(c)}::text" if as_text else _q(c))
        with self.server.connect(self.db) as conn:
            cur = conn.execute(f"SELECT {', '.join(sel)} FROM {self.table}")
            return [dict(zip(self.schema.columns, r)) for r in cur.fetchall()]

    def close(self) -> None:
        with self.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


class _Listing(dict):
    """The API's collection: current records, plus stale copies listed as well (a record
    listed twice, older version first, as offset-paged APIs do while records change)."""

    stale: list[dict]

    def values(self):  # noqa: ANN201
        return [*getattr(self, "stale", []), *super().values()]


class RestSource(Source):
    source = "rest_api"

    def __init__(self, schema: Schema, dir: Path) -> None:
        from tests.support.api_server import ApiServer

        super().__init__(schema, dir)
        self.api = ApiServer()
        self.api.items = _Listing()
        self.api.items.stale = []
        self.url = self.api.start()
        os.environ["FID_API_TOKEN"] = self.api.token

    def job_extra(self) -> str:
        return 'auth = { type = "bearer", token = "env:FID_API_TOKEN" }\n'

    def table_extra(self) -> str:
        return ('path = "items"\ndata_selector = "data"\ncursor_param = "since"\n'
                'initial_value = "2000-01-01 00:00:00+00:00"\n'
                'paginator = { type = "cursor", cursor_path = "next", cursor_param = "cursor" }\n')

    def write(self, upserts: list[dict], deletes: list[tuple]) -> None:
        for row in upserts:
            rec = {c: v for c, v in row.items() if not c.startswith("_")}
            if row.get("_stale") is not None:
                self.api.items.stale.append(row["_stale"])
            self.api.items[rec["id"]] = rec

    def read(self) -> list[dict]:
        return [dict(r) for r in dict.values(self.api.items)]

    def close(self) -> None:
        self.api.stop()


class FilesSource(Source):
    source = "files"

    def __init__(self, schema: Schema, dir: Path) -> None:
        super().__init__(schema, dir)
        self.folder = dir / "drops"
        (self.folder / TABLE).mkdir(parents=True)
        self.url = str(self.folder)
        self.rows: dict[tuple, dict] = {}
        self.n = 0
        self.t0 = time.time() - 3000

    def write(self, upserts: list[dict], deletes: list[tuple]) -> None:
        if not upserts:
            return
        self.n += 1
        ext = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}[self.schema.kind]
        path = self.folder / TABLE / f"{self.n:04d}.{ext}"
        tmp = self.folder / TABLE / f".{self.n:04d}.tmp"
        tmp.write_bytes(getattr(self, f"_{ext}")(upserts))
        os.utime(tmp, (self.t0 + 10 * self.n, self.t0 + 10 * self.n))
        tmp.rename(path)
        for row in upserts:  # within a file, a key's last row wins
            self.rows[tuple(row[k] for k in self.schema.key)] = row

    def read(self) -> list[dict]:
        return list(self.rows.values())

    def _csv(self, rows: list[dict]) -> bytes:
        cols = list(self.schema.columns)

        def cell(v: Any) -> str:
            return "" if v is None else '"' + str(v).replace('"', '""') + '"'

        out = io.StringIO()
        out.write(",".join(cols) + "\n")
        for r in rows:
            out.write(",".join(cell(r[c]) for c in cols) + "\n")
        return out.getvalue().encode()

    def _jsonl(self, rows: list[dict]) -> bytes:
        lines = []
        for r in rows:
            parts = []
            for c, spec in self.schema.columns.items():
                v = r[c]
                if v is None and r.get("_omit_nulls"):
                    continue  # a field left out is null
                raw = format(v, "f") if isinstance(v, Decimal) else json.dumps(v, ensure_ascii=False)
                parts.append(f"{json.dumps(c, ensure_ascii=False)}: {raw}")
            lines.append("{" + ", ".join(parts) + "}")
        return ("\n".join(lines) + "\n").encode()

    def _parquet(self, rows: list[dict]) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"int64": pa.int64(), "string": pa.string(), "float64": pa.float64(),
                 "decimal128(20,6)": pa.decimal128(20, 6), "bool": pa.bool_(),
                 "timestamp_tz": pa.timestamp("us", tz="UTC"), "timestamp": pa.timestamp("us"),
                 "binary": pa.binary(), "date32": pa.date32()}
        arrays = {c: pa.array([r[c] for r in rows], type=types[spec.ddl])
                  for c, spec in self.schema.columns.items()}
        buf = io.BytesIO()
        pq.write_table(pa.table(arrays), buf)
        return buf.getvalue()


SOURCES = {"sqlite": SqliteSource, "postgres": PostgresSource, "rest": RestSource,
           "csv": FilesSource, "jsonl": FilesSource, "parquet": FilesSource}


# --- rounds -----------------------------------------------------------------------


class Clock:
    """Cursor values: strictly growing between rounds, shared (a tie) within a round when
    the draw says so."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
        self.boundary: datetime | None = None

    def tick(self, draw) -> datetime:
        self.now += timedelta(seconds=draw(st.integers(1, 90)))
        return self.now


def cursor_value(schema: Schema, t: datetime, rng_offset: timedelta) -> Any:
    if schema.kind == "postgres":
        return t
    form = schema.cursor_form
    if schema.kind == "rest":
        return t.strftime("%Y-%m-%d %H:%M:%S+00:00")
    return ts_text(t, form, rng_offset)


def draw_value(draw, spec: TypeSpec, column: str, schema: Schema) -> Any:
    if column in schema.key or not spec.null:
        return draw(spec.values())
    return draw(st.one_of(st.none(), spec.values()))


@dataclass
class Round:
    upserts: list[dict]
    deletes: list[tuple]
    what: list[str]


def draw_round(draw, schema: Schema, current: dict[tuple, dict], clock: Clock, first: bool
               ) -> Round:
    """Random changes: inserts, updates, ties at the cursor boundary, deletes, and (rarely)
    NULL keys, duplicate keys and NULL cursors."""
    s = schema
    what: list[str] = []
    upserts: list[dict] = []
    deletes: list[tuple] = []
    t = clock.tick(draw)
    off = draw(st.sampled_from([timedelta(0), timedelta(hours=2), timedelta(hours=-7)]))

    def fresh_row() -> dict:
        row = {c: draw_value(draw, spec, c, s) for c, spec in s.columns.items() if c != s.cursor}
        if s.cursor:
            row[s.cursor] = cursor_value(s, t + timedelta(seconds=draw(st.integers(0, 2))), off)
        return row

    taken = set(current)
    for _ in range(draw(st.integers(1 if first else 0, 6))):
        row = fresh_row()
        k = tuple(row[c] for c in s.key)
        if k in taken:
            continue
        taken.add(k)
        upserts.append(row)
    if upserts:
        what.append(f"insert {len(upserts)}")
    keys = sorted(current, key=repr)
    if keys and s.data:
        for k in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            row = dict(current[k])
            for c in draw(st.lists(st.sampled_from(s.data), min_size=1, unique=True)):
                row[c] = draw_value(draw, s.columns[c], c, s)
            if s.cursor:
                row[s.cursor] = cursor_value(s, t, off)
            if s.kind == "rest" and draw(st.integers(0, 3)) == 0:
                row["_stale"] = dict(current[k])  # listed twice: the older version first
                what.append("stale duplicate")
            upserts.append(row)
            what.append("update")
    # ties: rows at the last synced cursor value change without their cursor moving, and a
    # late row arrives with that same value
    if s.cursor and clock.boundary is not None and s.data:
        at = [k for k in keys if s.kind != "files" and _cursor_of(s, current[k]) == clock.boundary]
        if at and draw(st.booleans()):
            k = draw(st.sampled_from(at))
            row = dict(current[k])
            c = draw(st.sampled_from(s.data))
            row[c] = draw_value(draw, s.columns[c], c, s)
            upserts = [u for u in upserts if tuple(u[x] for x in s.key) != k] + [row]
            what.append("update at the boundary without moving the cursor")
        if draw(st.booleans()):
            row = fresh_row()
            row[s.cursor] = current[at[0]][s.cursor] if at else row[s.cursor]
            k = tuple(row[c] for c in s.key)
            if k not in taken and at:
                taken.add(k)
                upserts.append(row)
                what.append("late insert at the boundary")
    if s.kind in SQL_KINDS and keys and not first:
        changed = {tuple(u[c] for c in s.key) for u in upserts}
        for k in draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)):
            if k not in changed:
                deletes.append(k)
                what.append("delete")
    if s.kind in FILE_KINDS and upserts and draw(st.integers(0, 3)) == 0:
        # a key twice in one file: the earlier row is superseded by the later one
        row = dict(upserts[-1])
        for c in s.data:
            row[c] = draw_value(draw, s.columns[c], c, s)
        upserts.insert(len(upserts) - 1, row)
        what.append("key twice in a file")
    if s.kind in FILE_KINDS + ("sqlite",) and draw(st.integers(0, 11)) == 0:
        row = fresh_row()
        if len(s.key) > 1 or s.kind in FILE_KINDS:
            row[s.key[0]] = None
            upserts.append(row)
            what.append("NULL key")
    if s.kind == "sqlite" and not s.enforce_key and keys and draw(st.integers(0, 3)) == 0:
        row = fresh_row()
        for c in s.key:
            row[c] = current[keys[0]][c]
        row["_dup"] = True
        upserts.append(row)
        what.append("duplicate key")
    if s.kind == "sqlite" and draw(st.integers(0, 11)) == 0:
        row = fresh_row()
        row[s.cursor] = None
        if tuple(row[c] for c in s.key) not in taken:
            upserts.append(row)
            what.append("NULL cursor")
    if s.kind in FILE_KINDS:
        for u in upserts:
            u["_omit_nulls"] = draw(st.booleans())
    return Round(upserts, deletes, what)


def _cursor_of(s: Schema, row: dict) -> datetime | None:
    v = row.get(s.cursor)
    return None if v is None else instant(v)


# --- what must be refused --------------------------------------------------------------


def held_columns(schema: Schema, row: dict) -> list[str]:
    """The columns of ``row`` holding a value that holds the row back (``hold_value``)."""
    return [
        c for c, spec in schema.columns.items()
        if spec.hold_value and row.get(c) is not None and spec.hold_value(row[c])
    ]


def predicted_refusals(schema: Schema, rows: list[dict]) -> list[tuple[Refusal, str]]:
    """(refusal, column) for everything the source now holds that the path cannot carry."""
    out: list[tuple[Refusal, str]] = []
    for c, spec in schema.columns.items():
        if spec.refusal:
            out.append((spec.refusal, c))
        if spec.refuse_value and any(r.get(c) is not None and spec.refuse_value(r[c]) for r in rows):
            out.append((spec.value_refusal, c))
    if any(r.get(k) is None for r in rows for k in schema.key):
        out.append((NULL_KEY, next(k for k in schema.key if any(r.get(k) is None for r in rows))))
    keys = [tuple(r.get(k) for k in schema.key) for r in rows]
    if len(keys) != len(set(keys)):
        out.append((DUPLICATE_KEY, schema.key[0]))
    if schema.cursor and any(r.get(schema.cursor) is None for r in rows):
        out.append((NULL_CURSOR, schema.cursor))
    return out


def refusal_matches(line: str, ref: Refusal, column: str) -> list[str]:
    """What the one-line error lacks to be this refusal ([] when it is)."""
    lacks = []
    for needle in (f"'{JOB}'", f"'{TABLE}'", column):
        if needle not in line:
            lacks.append(needle)
    if not any(n.lower() in line.lower() for n in ref.needles):  # type names in any case
        lacks.append(" or ".join(ref.needles))
    alt = {"column_types": "exclude_columns", "primary_key": "primary key"}.get(ref.setting, "-")
    if ref.setting not in line and alt not in line:
        lacks.append(f"the setting {ref.setting}")
    return lacks


# --- one example ----------------------------------------------------------------------


class Fault(AssertionError):
    """The example neither converged exactly nor was refused as the type table predicts."""


def _manifests(s3: Any, bucket: str) -> set[str]:
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys |= {o["Key"] for o in page.get("Contents", []) if "/manifests/" in o["Key"]}
    return keys


def _cli(*args: str):  # noqa: ANN202
    from click.testing import CliRunner

    from deltaferry.cli import cli

    return CliRunner().invoke(cli, list(args))


def run_example(kind: str, draw, workdir: Path, endpoint: str, stats: Stats) -> None:
    """Draw a schema and 1-4 rounds for ``kind``; raise Fault on the first divergence."""
    schema = draw(schemas(kind))
    stats.examples += 1
    d = workdir / uuid.uuid4().hex[:12]
    d.mkdir(parents=True)
    module = f"fidc_{d.name}"
    (d / f"{module}.py").write_text(contract_module(schema))
    sys.path.insert(0, str(d))
    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"fid-{d.name}"
    s3.create_bucket(Bucket=bucket)
    saved = os.environ.get("DELTAFERRY_HOME")
    os.environ["DELTAFERRY_HOME"] = str(d / "home")
    source = SOURCES[kind](schema, d)
    config = d / "deltaferry.toml"
    config.write_text(source.jobs_text(f"s3://{bucket}/lake", f"{module}:T"))
    replica = d / "replica.duckdb"
    clock = Clock()
    log: list[str] = [f"schema: key {schema.key}, cursor {schema.cursor} ({schema.cursor_form}), "
                      f"key enforced: {schema.enforce_key}, columns "
                      + ", ".join(f"{c}: {sp.name}" for c, sp in schema.columns.items())]

    def fault(msg: str) -> Fault:
        stats.failures += 1
        return Fault("\n".join([msg, *log, f"(example folder {d})"]))

    try:
        current: dict[tuple, dict] = {}
        type_faults: set[str] = set()
        for n in range(draw(st.integers(1, 4))):
            rnd = draw_round(draw, schema, current, clock, first=(n == 0))
            log.append(f"round {n + 1}: {', '.join(rnd.what) or 'no change'}; rows "
                       + "; ".join(repr({k: v for k, v in u.items() if not k.startswith('_')})[:300]
                                   for u in rnd.upserts[:8]))
            source.write(rnd.upserts, rnd.deletes)
            rows = source.read()
            stats.rounds += 1
            before = _manifests(s3, bucket)
            res = _cli("run", JOB, "--config", str(config))
            err_lines = [ln for ln in (res.stderr or "").splitlines() if ln.strip()]
            warn = [ln for ln in err_lines if ln.startswith("warning:") and "set aside" in ln]
            # rows held back in quarantine (a NULL key): the run goes on without them
            held = [ln for ln in err_lines if ln.startswith("warning:") and "held back" in ln]
            predicted = predicted_refusals(schema, rows)
            null_keyed = [r for r in rows if any(r.get(k) is None for k in schema.key)]
            # a NULL-keyed row written this round must be reported; one written earlier was
            # reported then (a file already read is not read again)
            written = [
                u for u in rnd.upserts if any(u.get(k) is None for k in schema.key)
            ]
            if null_keyed and res.exit_code == 0 and not warn:
                if written and (
                    not held
                    or not any(
                        not refusal_matches(ln, NULL_KEY, k) for ln in held for k in schema.key
                    )
                ):
                    raise fault(f"rows with a NULL key were neither refused nor held back: {err_lines!r}")
                if written:
                    stats.refusals["NULL key held back"] += 1
                predicted = [(r, c) for r, c in predicted if r is not NULL_KEY]
                rows = [r for r in rows if r not in null_keyed]
            # rows holding a value their column holds back (numeric NaN): held, named in a
            # warning line; the replica keeps the key's last published version
            by_value = [r for r in rows if held_columns(schema, r)]
            if by_value and res.exit_code == 0 and not warn:
                written = [  # (a row without a key is held for that instead)
                    u for u in rnd.upserts
                    if held_columns(schema, u) and all(u.get(k) is not None for k in schema.key)
                ]
                for u in written:
                    for c in held_columns(schema, u):
                        needles = (c, *schema.columns[c].hold_needles)
                        if not any(all(n in ln for n in needles) for ln in held):
                            raise fault(f"a row holding a value of {c!r} to hold back was not "
                                        f"said held back (needles {needles}): {err_lines!r}")
                if written:
                    stats.refusals["value held back"] += 1
                keys_held = {tuple(r[k] for k in schema.key) for r in by_value}
                rows = [r for r in rows if tuple(r[k] for k in schema.key) not in keys_held]
                rows += [current[k] for k in keys_held if k in current]
            refused = res.exit_code != 0 or bool(warn)
            if refused:
                line = (warn or err_lines or ["(nothing on stderr)"])[-1]
                log.append(f"run exit {res.exit_code}: {line[:400]}")
                if res.exit_code != 0:
                    errors = [ln for ln in err_lines if ln.startswith("error:")]
                    if len(errors) != 1 or len(err_lines) != 1:
                        raise fault(f"run failed without one error line: {err_lines[-5:]!r}")
                    if _manifests(s3, bucket) != before:
                        raise fault("run failed but published a manifest: "
                                    f"{sorted(_manifests(s3, bucket) - before)}")
                hit = next((r for r, c in predicted if not refusal_matches(line, r, c)), None)
                if hit is not None:
                    stats.refusals[hit.reason] += 1
                    break  # the example ends at its refusal
                if predicted:
                    lacks = {f"{r.reason} ({c})": refusal_matches(line, r, c) for r, c in predicted}
                    raise fault(f"refused, but the line is not the predicted refusal: {line!r}; "
                                f"it lacks {lacks}")
                raise fault(f"refused although nothing in the source needs refusing: {line!r}")
            must = [(r, c) for r, c in predicted if r.must]
            if must:
                raise fault("run succeeded although the source holds "
                            + ", ".join(f"{r.reason} in column {c!r}" for r, c in must)
                            + " (should be refused before publishing)")
            res = _cli("pull", JOB, "--replica", str(replica), "--config", str(config))
            if res.exit_code != 0:
                raise fault(f"pull failed (exit {res.exit_code}): {(res.stderr or res.output)[-600:]}")
            tdiffs, diffs, compared = oracle.differences(replica, TABLE, schema.columns,
                                                         schema.key, rows)
            type_faults |= set(tdiffs)
            stats.rows += len(rows)
            stats.values += compared
            if diffs:
                raise fault(f"replica differs from the source after round {n + 1} "
                            f"({len(diffs)} differences):\n  " + "\n  ".join(diffs[:12])
                            + "".join(f"\n  {t}" for t in sorted(type_faults)))
            current = {tuple(r[k] for k in schema.key): r for r in rows}
            if schema.cursor:
                cursors = [instant(r[schema.cursor]) for r in rows if r[schema.cursor] is not None]
                clock.boundary = max(cursors) if cursors else None
                if schema.kind in ("sqlite", "rest"):
                    clock.boundary = max(cursors, default=None)
        if type_faults:
            raise fault("replica column types differ from the contract's:\n  "
                        + "\n  ".join(sorted(type_faults)))
    finally:
        source.close()
        sys.path.remove(str(d))
        sys.modules.pop(module, None)
        if saved is None:
            os.environ.pop("DELTAFERRY_HOME", None)
        else:
            os.environ["DELTAFERRY_HOME"] = saved
