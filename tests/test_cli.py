"""The ``deltaferry`` command line, driven as a user would: real subprocesses (CliRunner for
cases that fail while parsing the jobs file), against a file:// lake and the S3 server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner

from deltaferry.cli import cli as cli_group
from deltaferry.shop import Shop
from destinations.manifest import manifest_key

JOBS = """\
[jobs.shop]
source = "sql_database"
url = "sqlite:///{db}"
lake = "{lake}"
max_quarantine_ratio = 0.2

[[jobs.shop.tables]]
name = "customers"
primary_key = ["id"]
cursor = "updated_at"
deletes = "soft:deleted_at"
contract = "contracts.shop:Customers"

[[jobs.shop.tables]]
name = "orders"
primary_key = ["id"]
cursor = "updated_at"
deletes = "reconcile"
contract = "contracts.shop:Orders"
"""
SECOND_JOB = """
[jobs.billing]
source = "sql_database"
url = "env:BILLING_DB_URL"
lake = "file:billing-lake"
contract = "contracts.billing"

[[jobs.billing.tables]]
name = "invoices"
primary_key = ["invoice_no", "year"]
cursor = "changed_at"
"""
RUN: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 300}
# Errors raised inside the Prefect flow reach the terminal with Prefect's ERROR log and a full
# traceback before the CLI's one-line message (see the report: flows/sync.py + deltaferry/cli.py).


def write_jobs(d: Path, lake: str, db: Path | None = None, *edits: tuple[str, str]) -> Path:
    text = JOBS.format(db=db or d / "shop.db", lake=lake)
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = d / "deltaferry.toml"
    path.write_text(text)
    return path


def make_shop(path: Path, *rounds: tuple[int, int, float], seed: int = 11) -> Path:
    shop = Shop(path, seed=seed)
    for n_c, n_o, churn in rounds:
        shop.round(n_c, n_o, churn=churn)
    shop.close()
    return path


def run_cli(*args: object, env: dict[str, str | None] | None = None, cwd: Path | None = None):
    """``deltaferry ARGS`` in a child process; ``env`` adds to os.environ (None removes)."""
    merged = {**os.environ, "COLUMNS": "200", **(env or {})}
    full = {k: v for k, v in merged.items() if v is not None}
    cmd = [sys.executable, "-m", "deltaferry.cli", *map(str, args)]
    return subprocess.run(cmd, env=full, cwd=cwd, check=False, **RUN)


def error_line(p: Any, code: int, *needles: str) -> str:
    """Exit code ``code``; the last stderr line is ``error: ...`` naming every needle."""
    rc = p.returncode if isinstance(p, subprocess.CompletedProcess) else p.exit_code
    stdout, stderr = p.stdout, p.stderr
    assert rc == code, f"exit {rc}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    assert "Traceback" not in stdout
    return lines[-1]


def assert_clean(stderr: str) -> None:
    """Nothing but the one error line on stderr: no traceback, no log noise."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Body rows of the tab-separated output (stdout is not a terminal), keyed by first cell."""
    body = [ln.split("\t") for ln in stdout.splitlines()[1:] if "\t" in ln]
    return {cells[0]: cells[1:] for cells in body}


def replica_q(replica: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(replica), read_only=True) as con:
        return con.execute(sql).fetchall()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def api_env(prefect_api: None) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value())}


# --- 1. bad configuration: exit 2, one line, no traceback ------------------------------------

PARSE_ERRORS = {
    "unknown-job": (["run", "nope"], (), ["unknown job 'nope'", "shop"]),
    "no-jobs-file": (["jobs", "--config", "{d}/absent.toml"], (), ["absent.toml", "not found"]),
    "invalid-toml": (["verify", "shop"], [('lake = "', "lake = ")], ["not valid TOML"]),
    "no-primary-key": (
        ["run", "shop"],
        [('primary_key = ["id"]\n', "")],
        ["table 'customers'", "primary_key is required"],
    ),
    "bad-lake-url": (
        ["pull", "shop", "--replica", "{d}/r.duckdb"],
        [("file://", "ftp://x")],
        ["ftp://x", "must start with s3:// or file://"],
    ),
    "unknown-setting": (
        ["status"],
        [("max_quarantine_ratio = 0.2", "max_quarantine = 0.2")],
        ["job 'shop'", "unknown setting(s) max_quarantine"],
    ),
    "multi-producer-without-id": (
        ["run", "shop"],
        [("max_quarantine_ratio = 0.2", "max_quarantine_ratio = 0.2\nmulti_producer = true")],
        ["job 'shop'", "multi_producer = true needs producer_id"],
    ),
    "bad-producer-id": (
        ["run", "shop"],
        [
            (
                "max_quarantine_ratio = 0.2",
                'max_quarantine_ratio = 0.2\nmulti_producer = true\nproducer_id = "a/b"',
            )
        ],
        ["job 'shop'", "producer_id", "'a/b'"],
    ),
    "bad-drift": (
        ["run", "shop"],
        [("max_quarantine_ratio = 0.2", 'max_quarantine_ratio = 0.2\ndrift = "ignore"')],
        ["job 'shop'", "drift must be 'freeze', 'quarantine' or 'evolve'", "'ignore'"],
    ),
    "bad-deletes": (
        ["run", "shop"],
        [('deletes = "reconcile"', 'deletes = "hard"')],
        ["table 'orders'", "deletes must be", "'hard'"],
    ),
}


@pytest.mark.parametrize("case", PARSE_ERRORS, ids=str)
def test_bad_jobs_file_is_one_line_exit_2(case, tmp_path, home):
    args, edits, needles = PARSE_ERRORS[case]
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake", None, *edits)
    args = [a.format(d=tmp_path) for a in args]
    if "--config" not in args:
        args += ["--config", str(config)]
    result = CliRunner().invoke(cli_group, args)
    assert isinstance(result.exception, SystemExit), result.exception
    error_line(result, 2, *needles)
    assert "Traceback" not in result.output
    assert_clean(result.stderr)
    assert not (tmp_path / "lake").exists()  # nothing was started


RUNTIME_ERRORS = {  # case: (command, needles)
    "table-not-in-source": ("run", ["table 'customers'", "not found in the source database"]),
    "contract-not-importable": (
        "run",
        ["table 'orders'", "'contracts.nosuch' cannot be imported", "directory that holds it on PYTHONPATH"],
    ),
    "source-env-unset": ("run", ["DELTAFERRY_TEST_UNSET_URL", "not set"]),
    # a path typed wrong: SQLite's "unable to open database file" was a lost connection
    # (retried, exit 1), or an empty database was created where the directory existed
    "sqlite-file-missing": ("run", ["job 'shop'", "SQLite database file", "does not exist"]),
    "lake-unreachable": ("run", ["unreachable"]),
    "lake-unreachable/verify": ("verify", ["unreachable"]),
    "no-bucket": ("run", ["bucket 'no-such-bucket-df' does not exist"]),
    "no-bucket/verify": ("verify", ["bucket 'no-such-bucket-df' does not exist"]),
}


@pytest.mark.parametrize("case", RUNTIME_ERRORS, ids=str)
def test_bad_environment_is_one_line_exit_2(case, request, tmp_path, home, api_env):
    command, needles = RUNTIME_ERRORS[case]
    db = make_shop(tmp_path / "shop.db", (5, 5, 0.0))
    lake, edits, env = f"file://{tmp_path}/lake", [], dict(api_env)
    kind = case.split("/")[0]
    if kind == "table-not-in-source":
        con = sqlite3.connect(db)
        con.execute("DROP TABLE customers")  # the jobs file still lists it
        con.close()
    elif kind == "contract-not-importable":
        edits = [("contracts.shop:Orders", "contracts.nosuch:Orders")]
    elif kind == "sqlite-file-missing":
        edits = [(f'url = "sqlite:///{db}"', f'url = "sqlite:///{tmp_path}/nosuch/shop.db"')]
    elif kind == "source-env-unset":
        edits = [(f'url = "sqlite:///{db}"', 'url = "env:DELTAFERRY_TEST_UNSET_URL"')]
        env["DELTAFERRY_TEST_UNSET_URL"] = None
    elif kind == "lake-unreachable":
        lake = "s3://some-bucket/lake"
        env.update(
            AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{closed_port()}",
            DELTAFERRY_S3_MAX_ATTEMPTS="1",
            DELTAFERRY_S3_CONNECT_TIMEOUT="1",
        )
    elif kind == "no-bucket":
        lake = "s3://no-such-bucket-df/lake"
        env["AWS_ENDPOINT_URL_S3"] = request.getfixturevalue("s3_endpoint")
    config = write_jobs(tmp_path, lake, db, *edits)
    p = run_cli(command, "shop", "--config", config, env=env, cwd=tmp_path)
    error_line(p, 2, *needles)
    if lake.startswith("file://"):
        assert not list((tmp_path / "lake").rglob("*.json"))  # nothing published
    assert_clean(p.stderr)
    if command == "run" and kind != "source-env-unset":  # that one fails loading the job
        # the refused run is the job's last run in `status` (was: "never run")
        shown = run_cli("status", "--json", "--config", config, env=env, cwd=tmp_path)
        last = json.loads(shown.stdout)[0]["last_run"]
        assert last["outcome"] == "failed", shown.stdout
        assert all(n in last["detail"] for n in needles), last


# --- 2. jobs ---------------------------------------------------------------------------------


@pytest.mark.integration  # the CLI in a child process
def test_jobs_lists_every_job_and_table(tmp_path, home):
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake")
    config.write_text(config.read_text() + SECOND_JOB)
    p = run_cli("jobs", "--config", config)
    assert p.returncode == 0, p.stderr
    rows = [ln.split("\t") for ln in p.stdout.splitlines()[1:]]
    listed = {(r[0], r[3]) for r in rows}
    assert {("shop", "customers"), ("shop", "orders"), ("billing", "invoices")} <= listed
    shown = ["soft:deleted_at", "reconcile", "invoice_no,year", "changed_at", "file:billing-lake"]
    assert [t for t in shown if t not in p.stdout] == []
    assert "contracts.billing:Invoices" in p.stdout  # job-level contract module + table class
    assert "sqlite:///" not in p.stdout  # the source column is the kind, never the URL
    # piped into another program (no terminal, 80 columns) table names must stay readable
    narrow = run_cli("jobs", "--config", config, env={"COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    assert "customers" in narrow.stdout and "contracts.shop:Customers" in narrow.stdout


@pytest.mark.integration
@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, 120), ({"env": "45"}, 45), ({"profile": "300"}, 300)],
    ids=["default", "user-set-env", "user-set-profile"],
)
def test_run_waits_longer_for_prefects_temporary_api(tmp_path, given, expected):
    """Prefect waits 20 s for its temporary API by default, and on a loaded machine a
    `run` without PREFECT_API_URL failed 7 times in 30 ("Timed out while attempting to
    connect to ephemeral Prefect API server"): `run` makes it 120 s around the flow, and
    keeps a value the user set in the environment or a Prefect profile. The flow is
    replaced by a probe that reads the setting where Prefect reads it."""
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake")
    probe = (
        "import sys\n"
        "import deltaferry.context, deltaferry.cli_run, flows.sync\n"
        "from deltaferry.cli import cli\n"
        "def flow(job, config):\n"
        "    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s\n"
        "    print('timeout', s.value())\n"
        "    return {}\n"
        "flows.sync.sync_job = flow\n"
        "deltaferry.context.preflight_job = lambda job: None\n"
        "deltaferry.cli_run._print_run_summary = lambda summary: None\n"
        "cli(['run', 'shop', '--config', sys.argv[1]], standalone_mode=False)\n"
    )
    name = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    env = {k: v for k, v in os.environ.items() if k not in (name, "PREFECT_PROFILE")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    (tmp_path / "prefect").mkdir()
    if given and "env" in given:
        env[name] = given["env"]
    if given and "profile" in given:
        (tmp_path / "prefect" / "profiles.toml").write_text(
            f'active = "mine"\n[profiles.mine]\n{name} = {given["profile"]}\n'
        )
    p = subprocess.run(
        [sys.executable, "-c", probe, str(config)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"timeout {expected}" in p.stdout.splitlines()


HELP = {  # command: words of its purpose
    "": "incremental sync from SQL databases, REST APIs and file drops to an S3 lake",
    "jobs": "List jobs and their tables",
    "run": "Run one sync of JOB",
    "pull": "Verify and apply every published batch",
    "verify": "manifest chain unbroken",
    "status": "last batch, rows, last success",
    "demo": "Mutate a demo shop database",
}


@pytest.mark.parametrize("command", HELP)
def test_help(command):
    purpose = HELP[command]
    result = CliRunner().invoke(cli_group, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
    assert purpose in " ".join(result.output.split())
    assert "Usage:" in result.output


# --- 3. the full cycle -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_run_pull_verify_status(kind, request, tmp_path, home, api_env):
    s3 = f"s3://{request.getfixturevalue('bucket')}/lake" if kind == "s3" else None
    lake = s3 or f"file://{tmp_path}/lake"
    db = make_shop(tmp_path / "shop.db", (40, 60, 0.0), (10, 10, 0.2))
    src = sqlite3.connect(db)
    live_c = {r[0] for r in src.execute("SELECT id FROM customers WHERE deleted_at IS NULL")}
    all_c = src.execute("SELECT count(*) FROM customers").fetchone()[0]
    live_o = {r[0] for r in src.execute("SELECT id FROM orders")}
    src.close()
    assert 0 < len(live_c) < all_c  # some customers are soft-deleted
    config = write_jobs(tmp_path, lake, db)

    p = run_cli("run", "shop", "--config", config, env=api_env)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = table_rows(p.stdout)
    assert summary["customers"][:2] == ["1", str(all_c)] and summary["orders"][0] == "1"

    replica = tmp_path / "replica.duckdb"
    p = run_cli("pull", "shop", "--replica", replica, "--config", config)
    assert p.returncode == 0, p.stderr
    assert table_rows(p.stdout)["customers"] == ["1", str(all_c), "1"]
    assert {r[0] for r in replica_q(replica, "SELECT id FROM customers")} == live_c
    assert {r[0] for r in replica_q(replica, "SELECT id FROM orders")} == live_o

    before = replica_q(replica, "SELECT count(*), sum(hash(id, _seq)) FROM customers")
    p = run_cli("pull", "shop", "--replica", replica, "--config", config)
    assert p.returncode == 0, p.stderr
    assert table_rows(p.stdout) == {"customers": ["0", "0", "1"], "orders": ["0", "0", "1"]}
    assert replica_q(replica, "SELECT count(*), sum(hash(id, _seq)) FROM customers") == before
    assert replica_q(replica, "SELECT count(*) FROM _deltaferry_batches") == [(2,)]

    p = run_cli("verify", "shop", "--config", config)
    assert p.returncode == 0, p.stderr
    assert f"ok job shop table customers: 1 batches, {all_c} rows verified" in p.stdout
    assert "ok job shop table orders: 1 batches" in p.stdout

    p = run_cli("status", "--json", "--config", config)
    assert p.returncode == 0, p.stderr
    (job,) = json.loads(p.stdout)
    assert job["job"] == "shop" and job["last_run"]["outcome"] == "ok"
    for name in ("customers", "orders"):
        t = job["tables"][name]
        assert t["last_batch"] == 1 and t["pending_batch"] is None, t
    assert job["tables"]["customers"]["rows_published"] == all_c


# --- 4. verify and pull catch tampering ------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory, api_env) -> Path:
    """A file:// lake holding batches 1..3 of both tables (built once, copied per test)."""
    d = tmp_path_factory.mktemp("chain")
    config = write_jobs(d, f"file://{d}/lake")
    shop = Shop(d / "shop.db", seed=5)
    env = {**api_env, "DELTAFERRY_HOME": str(d / "home")}
    for i in range(3):
        shop.round(5 if i else 30, 5 if i else 30, churn=0.1 if i else 0.0)
        p = run_cli("run", "shop", "--config", config, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
    shop.close()
    return d


def tampered_copy(chain: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(chain / "lake", tmp_path / "lake")
    return tmp_path / "lake", write_jobs(tmp_path, f"file://{tmp_path}/lake", chain / "shop.db")


def assert_replica_stops_before_batch_2(lake: Path, config: Path, tmp_path: Path) -> str:
    replica = tmp_path / "fresh.duckdb"
    p = run_cli("pull", "shop", "--replica", replica, "--config", config)
    line = error_line(p, 1, "table 'customers' batch 2")
    # customers stops before batch 2; orders, a good table, is applied in full
    assert replica_q(
        replica, "SELECT tbl, max(batch) FROM _deltaferry_batches GROUP BY tbl ORDER BY tbl"
    ) == [("customers", 1), ("orders", 3)]
    m1 = json.loads((lake / manifest_key("shop", "customers", 1)).read_text())
    assert replica_q(replica, "SELECT count(*), max(_seq) FROM customers") == [
        (m1["ops"]["upsert"], m1["seq"]["end"])
    ]
    return line


def test_verify_and_pull_reject_a_changed_data_object(chain, tmp_path, home):
    lake, config = tampered_copy(chain, tmp_path)
    assert run_cli("verify", "shop", "--config", config).returncode == 0
    (part,) = (lake / "shop/customers/data/000000000002").glob("*.parquet")
    body = bytearray(part.read_bytes())
    body[len(body) // 2] ^= 0xFF  # same size, different bytes
    part.write_bytes(bytes(body))

    p = run_cli("verify", "shop", "--config", config)
    error_line(p, 1, "table 'customers' batch 2", "sha256", part.name)
    assert_clean(p.stderr)
    assert_replica_stops_before_batch_2(lake, config, tmp_path)


def test_an_object_that_hashes_right_but_is_not_parquet_stops_only_its_table(chain, tmp_path, home):
    """Bytes that match the manifest's sha256 (a writer that hashed garbage) are a named
    VerificationError of that table and batch; the other tables are pulled (found by a
    fresh-user trial: a raw ``OSError: Couldn't deserialize thrift`` stopped every table)."""
    import hashlib

    lake, config = tampered_copy(chain, tmp_path)
    key = manifest_key("shop", "customers", 3)  # the newest: no later manifest links to it
    m = json.loads((lake / key).read_text())
    garbage = b"PAR1" + b"\x00not parquet\xff" * 64 + b"PAR1"
    (lake / m["files"][0]["key"]).write_bytes(garbage)
    m["files"][0].update(sha256=hashlib.sha256(garbage).hexdigest(), bytes=len(garbage))
    (lake / key).write_text(json.dumps(m))

    p = run_cli("verify", "shop", "--config", config)
    error_line(p, 1, "table 'customers' batch 3", m["files"][0]["key"], "cannot be read")
    assert_clean(p.stderr)
    replica = tmp_path / "fresh.duckdb"
    p = run_cli("pull", "shop", "--replica", replica, "--config", config)
    error_line(p, 1, "table 'customers' batch 3", "cannot be read as the batch's Parquet")
    assert_clean(p.stderr)
    assert replica_q(
        replica, "SELECT tbl, max(batch) FROM _deltaferry_batches GROUP BY tbl ORDER BY tbl"
    ) == [("customers", 2), ("orders", 3)]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda t: t.drop_columns(["email"]), "column 'email' is missing"),
        (lambda t: t.drop_columns(["id"]), "column 'id' is missing"),
        (
            lambda t: t.set_column(0, "id", t["id"].cast("string")),
            "column 'id' is string, the contract's is int64",
        ),
        (
            lambda t: t.set_column(
                t.column_names.index("updated_at"), "updated_at", t["updated_at"].cast("string")
            ),
            "column 'updated_at' is string",
        ),
        (
            lambda t: t.set_column(
                t.column_names.index("_op"), "_op", pa.array(["frobnicate"] * t.num_rows)
            ),
            "and {n} other or NULL in _op",
        ),
        (
            lambda t: t.set_column(
                t.column_names.index("_op"), "_op", pa.array(["delete"] * t.num_rows)
            ),
            "0 upsert(s), {n} delete(s) in _op, its manifest says",
        ),
        (
            lambda t: t.set_column(
                t.column_names.index("_seq"), "_seq", pa.nulls(t.num_rows, pa.int64())
            ),
            "row(s) with no _seq",
        ),
        (
            lambda t: t.set_column(0, "id", pa.nulls(t.num_rows, t["id"].type)),
            "row(s) with no value in key column 'id'",
        ),
        (
            lambda t: t.append_column("extra", pa.array(["x"] * t.num_rows)),
            "column(s) 'extra' not in the contract, which is strict",
        ),
    ],
    ids=[
        "required-column-dropped",
        "key-dropped",
        "key-as-text",
        "time-as-text",
        "op-unknown",
        "op-counts-differ",
        "seq-null",
        "key-null",
        "extra-column-strict",
    ],
)
def test_an_object_that_does_not_match_its_manifests_contract_stops_only_its_table(
    chain, tmp_path, home, change, says
):
    """Readable Parquet, re-hashed into an unsigned lake's manifest, whose columns are not
    what a producer publishes at the contract version the manifest names: the key or a
    required column of an object with upserts is missing, or a column is of another kind
    of type (a nullable column may be absent: ``test_readers``). Applied before with exit 0 (a
    fresh-user trial: the column's values NULL in the replica, keys stored as text); now a
    VerificationError naming table, batch and column (``verify`` names the object too), and
    the other tables are pulled."""
    import hashlib

    import pyarrow.parquet as pq

    from deltaferry.delta import read_parquet

    lake, config = tampered_copy(chain, tmp_path)
    key = manifest_key("shop", "customers", 3)  # the newest: no later manifest links to it
    m = json.loads((lake / key).read_text())
    obj = lake / m["files"][0]["key"]
    out = tmp_path / "changed.parquet"
    pq.write_table(change(read_parquet(obj.read_bytes())), out)
    body = out.read_bytes()
    obj.write_bytes(body)
    m["files"][0].update(sha256=hashlib.sha256(body).hexdigest(), bytes=len(body))
    (lake / key).write_text(json.dumps(m))

    template, says = says, says.format(n=m["files"][0]["rows"])
    p = run_cli("verify", "shop", "--config", config)
    error_line(p, 1, "table 'customers' batch 3", says)
    assert_clean(p.stderr)
    replica = tmp_path / "fresh.duckdb"
    p = run_cli("pull", "shop", "--replica", replica, "--config", config)
    error_line(p, 1, "table 'customers' batch 3", says)
    assert_clean(p.stderr)
    assert replica_q(
        replica, "SELECT tbl, max(batch) FROM _deltaferry_batches GROUP BY tbl ORDER BY tbl"
    ) == [("customers", 2), ("orders", 3)]
    # a replica whose first batch of a table stops has that table empty, not missing
    key1 = manifest_key("shop", "customers", 1)
    m1 = json.loads((lake / key1).read_text())
    first = tmp_path / "first.duckdb"
    for n in (3, 2):  # batch 1 the newest, so that re-hashing it breaks no link
        (lake / manifest_key("shop", "customers", n)).unlink()
    obj = lake / m1["files"][0]["key"]
    pq.write_table(change(read_parquet(obj.read_bytes())), out)
    body = out.read_bytes()
    obj.write_bytes(body)
    m1["files"][0].update(sha256=hashlib.sha256(body).hexdigest(), bytes=len(body))
    (lake / key1).write_text(json.dumps(m1))
    comment = "SELECT comment FROM duckdb_tables() WHERE table_name = 'customers'"
    says = template.format(n=m1["files"][0]["rows"])
    for _ in range(2):  # the second: the batch's DROP of the empty table is rolled back
        p = run_cli("pull", "shop", "--replica", first, "--config", config, "--table", "customers")
        error_line(p, 1, "table 'customers' batch 1", says)
        assert replica_q(first, "SELECT count(*) FROM customers") == [(0,)]
        assert "no batch of this table" in replica_q(first, comment)[0][0]


def test_verify_waits_for_a_run_that_holds_the_state(chain, tmp_path):
    """``verify`` while a run's step holds the state file waits for it (as ``status``
    does) instead of failing on DuckDB's lock (a fresh-user trial: ``verify`` exited 1 with
    a raw lock error while ``run`` was going)."""
    import threading
    import time

    lake, config = tampered_copy(chain, tmp_path)
    shutil.copytree(chain / "home", tmp_path / "home")
    state = tmp_path / "home" / "shop" / "state.duckdb"
    step = duckdb.connect(str(state))  # this process is the run, inside a step
    release = threading.Timer(8.0, step.close)  # longer than a loaded CI takes to start it
    release.start()
    try:
        started = time.monotonic()
        env = {"DELTAFERRY_HOME": str(tmp_path / "home")}
        p = run_cli("verify", "shop", "--config", config, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        assert time.monotonic() - started > 8.0  # it waited for the step
        assert p.stderr.strip() == "", p.stderr[-2000:]
    finally:
        release.cancel()
        release.join()


def test_verify_and_pull_reject_a_gap_in_the_manifest_chain(chain, tmp_path, home):
    lake, config = tampered_copy(chain, tmp_path)
    (lake / manifest_key("shop", "customers", 2)).unlink()

    p = run_cli("verify", "shop", "--config", config)
    error_line(p, 1, "table 'customers' batch 2", "missing")
    assert_clean(p.stderr)
    line = assert_replica_stops_before_batch_2(lake, config, tmp_path)
    assert "batch 2: manifest missing" in line


def test_a_second_run_stops_before_touching_the_running_jobs_files(tmp_path, home, api_env):
    """A second ``run`` while one is loading into staging stops at once, naming the holder,
    and leaves staging alone: its pre-run check used to read staging before the job's lock,
    failing with a raw DuckDB lock error, or failing the running job instead (found by a
    fresh-user trial: two ``run`` loops on one job)."""
    from deltaferry.context import job_lock
    from sources.staging import staging_path

    shop = Shop(tmp_path / "shop.db", seed=3)
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake")
    shop.round(10, 10, churn=0)
    shop.close()
    assert run_cli("run", "shop", "--config", config, env=api_env).returncode == 0
    with job_lock("shop"):  # this process is the running job, in its load into staging
        loading = duckdb.connect(str(staging_path("shop")))
        try:
            p = run_cli("run", "shop", "--config", config, env=api_env)
            error_line(p, 1, "job 'shop'", "is already running", f"pid {os.getpid()}")
            assert_clean(p.stderr)
            loading.execute("CREATE TABLE still_mine AS SELECT 1 AS a")  # the file is still ours
        finally:
            loading.close()


# --- 5. quarantine threshold -----------------------------------------------------------------


def test_run_over_quarantine_ratio_fails_and_publishes_nothing(tmp_path, home, api_env):
    shop = Shop(tmp_path / "shop.db", seed=3)
    config = write_jobs(tmp_path, f"file://{tmp_path}/lake")
    shop.round(30, 30, churn=0)
    assert run_cli("run", "shop", "--config", config, env=api_env).returncode == 0
    stats = shop.round(10, 5, churn=0, invalid=6)  # 6 of 10 changed customers break the contract
    shop.close()
    assert stats.invalid == 6

    p = run_cli("run", "shop", "--config", config, env=api_env)
    needles = ("job 'shop'", "table 'customers'", "max_quarantine_ratio", "6 of 10")
    error_line(p, 1, *needles)
    lake = tmp_path / "lake"
    assert (lake / manifest_key("shop", "customers", 1)).exists()
    assert not (lake / manifest_key("shop", "customers", 2)).exists()
    assert not (lake / "shop/customers/data/000000000002").exists()

    status = json.loads(run_cli("status", "--json", "--config", config).stdout)[0]
    assert status["tables"]["customers"]["last_batch"] == 1
    assert status["tables"]["customers"]["pending_batch"] is None
    assert status["last_run"]["outcome"] == "failed"
    assert_clean(p.stderr)


def test_a_run_that_stops_a_table_shows_what_the_others_published(tmp_path, home, api_env):
    """A table whose source value its column cannot carry stops; the job's other table is
    published. ``deltaferry run`` prints the run's table (the published batch, the stopped
    table marked) on stdout before the error line, which names the stopped table; exit 1.
    ``run-all`` too, for a job that failed in its worker process."""
    import sqlite3

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        for name in ("good", "bad"):
            con.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, amount DECIMAL(10,2))")
        con.execute("INSERT INTO good VALUES (1, 1.25), (2, 2.5)")
        con.execute("INSERT INTO bad VALUES (1, 1.25), (2, 1.005)")
    config = tmp_path / "jobs.toml"
    config.write_text(
        f'[jobs.lite]\nsource = "sql_database"\nurl = "sqlite:///{db}"\nlake = "file://{tmp_path}/lake"\n'
        + "".join(
            f'\n[[jobs.lite.tables]]\nname = "{n}"\nprimary_key = ["id"]\n'
            'contract = "tests.support.contracts_sqltypes:Loose"\n'
            for n in ("good", "bad")
        )
    )
    p = run_cli("run", "lite", "--config", config, env=api_env)
    line = error_line(p, 1, "table 'bad'", "1.005")
    rows = table_rows(p.stdout)
    assert rows["good"][:2] == ["1", "2"], p.stdout  # batch 1, 2 rows
    assert rows["bad"][0] == "-" and "stopped" in rows["bad"][-1], p.stdout
    assert "good" not in line
    # status: the run failed, but only 'bad' stopped; 'good' published in it
    p = run_cli("status", "--config", config, env=api_env)
    last = {ln.split("\t")[1]: ln.split("\t")[-1] for ln in p.stdout.splitlines()[1:] if "\t" in ln}
    assert last == {
        "good": "failed elsewhere (published here)",
        "bad": "failed: stopped here",
    }, p.stdout
    # run-all (the job in a worker process): the same rows, after the job's name
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO good VALUES (3, 3.75)")
    p = run_cli("run-all", "--config", config, "--workers", "1", env=api_env)
    error_line(p, 1, "table 'bad'", "1.005")
    rows = [ln.split("\t") for ln in p.stdout.splitlines()[1:] if "\t" in ln]
    assert [r[:4] for r in rows] == [["lite", "good", "2", "1"], ["lite", "bad", "-", "0"]], p.stdout


def test_the_import_advice_is_for_the_contract_module_not_for_what_it_imports(tmp_path, monkeypatch):
    """A contract module that is not found gets the advice on how Python finds it; one that
    is found but fails on its own import names that import, without the advice (it would
    send the user to PYTHONPATH for a missing dependency)."""
    from contracts import load_chain
    from deltaferry.errors import ConfigError

    (tmp_path / "pandas_contracts.py").write_text("import pandas_con  # a prefix of the module name, no dot boundary\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_chain("pandas_contracts:Orders", where="job 'j' table 'orders'")
    assert "No module named 'pandas_con'" in str(err.value)
    assert "PYTHONPATH" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_chain("my_missing_contracts.shop:Orders", where="job 'j' table 'orders'")
    assert "on PYTHONPATH" in str(err.value)
