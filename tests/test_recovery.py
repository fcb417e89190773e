"""Commit protocol under crashes: kill the process at every commit point, then run again.

After the next run the lake has exactly one manifest per batch, the chain verifies,
nothing is re-sent, and the replica equals the source.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deltaferry.errors import ConflictError, LakeMismatchError
from deltaferry.failpoints import POINTS
from deltaferry.state import StateStore
from deltaferry.verify import verify_table
from destinations.manifest import manifest_key


def _run_cli_killed_at(shop_job, point: str, skip: int = 0) -> subprocess.CompletedProcess:
    """``deltaferry run shop`` in a child process SIGKILLed at ``point`` (after ``skip``
    hits of it pass)."""
    from prefect.settings import PREFECT_API_URL

    env = dict(
        os.environ,
        DELTAFERRY_FAILPOINT=point,
        DELTAFERRY_FAILPOINT_ACTION="kill",
        DELTAFERRY_FAILPOINT_SKIP=str(skip),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
    )
    return subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "run", "shop", "--config", str(shop_job.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_commit_point_then_recover(shop_job, shop, point):
    shop.round(60, 90, churn=0)
    shop_job.sync()  # batch 1 for both tables
    shop.round(10, 20, churn=0.1)

    killed = _run_cli_killed_at(shop_job, point)
    assert killed.returncode == -9, killed.stderr[-2000:]

    state = StateStore("shop")
    lake = shop_job.lake()
    pending = state.pending_plan("customers")
    if point == "after_extract":
        assert pending is None
    else:
        assert pending is not None and pending.batch == 2
    stored = lake.get(manifest_key("shop", "customers", 2))
    assert (stored is not None) == (point in ("after_manifest", "before_checkpoint"))
    assert state.checkpoint("customers").batch == 1  # never ahead of the lake

    out = shop_job.sync()
    recovered = " ".join(out["recovered"])
    if point in ("after_plan", "after_part_upload", "after_upload"):
        assert "rebuilt byte-identically" in recovered
    elif point in ("after_manifest", "before_checkpoint"):
        assert "manifest already stored" in recovered
    else:
        assert out["tables"]["customers"]["batch"] == 2
    # the recovered batch is not sent again, and the next one follows it
    for table in ("customers", "orders"):
        assert state.checkpoint(table).batch == 2
        assert state.pending_plan(table) is None
        manifests = lake.list(f"shop/{table}/manifests/")
        assert [m.rsplit("/", 1)[-1] for m in manifests] == [
            "000000000001.json",
            "000000000002.json",
        ]
        assert verify_table(lake, "shop", table)[0] == 2

    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_a_manifest_past_our_checkpoint_stops_the_run_without_overwriting(shop_job, shop):
    shop.round(20, 20, churn=0)
    shop_job.sync()
    shop.round(5, 5, churn=0)
    lake = shop_job.lake()
    key = manifest_key("shop", "customers", 2)
    foreign = b'{"format":"deltaferry.manifest/1","producer_id":"someone-else"}'
    assert lake.put_if_absent(key, foreign)
    # the lake is ahead of this producer's checkpoint: stopped before anything is planned
    with pytest.raises(LakeMismatchError, match="ahead of this producer: its head is batch 2"):
        shop_job.sync()
    assert lake.get(key) == foreign  # never overwritten
    state = StateStore("shop")
    assert state.checkpoint("customers").batch == 1 and state.pending_plan("customers") is None
    # it stays stopped, still without overwriting
    with pytest.raises(LakeMismatchError):
        shop_job.sync()
    assert lake.get(key) == foreign


def test_lost_acknowledgement_is_success(shop_job, shop, monkeypatch):
    """The PUT succeeded but its reply was lost: the retry gets 412 and finds our own bytes."""
    from destinations.s3 import S3LakeStore

    real = S3LakeStore.put_if_absent
    calls = {"n": 0}

    def lossy(self, key, data):
        calls["n"] += 1
        created = real(self, key, data)
        if created and "manifests/" in key and calls["n"] == 1:
            return real(self, key, data)  # second attempt, as a retry after a lost reply would be
        return created

    monkeypatch.setattr(S3LakeStore, "put_if_absent", lossy)
    shop.round(15, 15, churn=0)
    out = shop_job.sync()
    assert out["tables"]["customers"]["manifest"] == "already stored (lost acknowledgement)"
    assert StateStore("shop").checkpoint("customers").batch == 1


def test_two_producers_on_one_table_exactly_one_commits(shop_job, shop, tmp_path, monkeypatch):
    """Two hosts (two DELTAFERRY_HOMEs with the same history) publish the same batch
    number: the create-only manifest lets exactly one commit."""
    import shutil

    shop.round(30, 30, churn=0)
    shop_job.sync()  # batch 1, on host A
    host_a = shop_job.dir / "home"
    host_b = tmp_path / "host-b"
    shutil.copytree(host_a, host_b)
    shop.round(5, 5, churn=0.1)
    shop_job.sync()  # host A commits batch 2
    monkeypatch.setenv("DELTAFERRY_HOME", str(host_b))
    with pytest.raises(LakeMismatchError, match="ahead of this producer"):
        shop_job.sync()  # host B sees the lake past its checkpoint before it plans
    # in a race both hosts pass that check before either stores its manifest; the
    # create-only manifest still lets exactly one commit
    import deltaferry.agreement

    monkeypatch.setattr(deltaferry.agreement, "agree_with_lake", lambda ctx, t: "raced")
    with pytest.raises(ConflictError, match="batch 2.*another writer"):
        shop_job.sync()  # host B's own batch 2 is refused, nothing overwritten
    lake = shop_job.lake()
    assert lake.list("shop/customers/manifests/")[-1].endswith("000000000002.json")
    assert verify_table(lake, "shop", "customers")[0] == 2
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_losing_the_whole_home_is_survivable(shop_job, shop):
    import shutil

    for r in range(2):
        shop.round(30 if r == 0 else 5, 30 if r == 0 else 5, churn=0 if r == 0 else 0.1)
        shop_job.sync()
    lake = shop_job.lake()
    before = {k: lake.get(k) for k in lake.list("shop/")}
    shutil.rmtree(shop_job.dir / "home")  # the producer's disk is gone
    shop.con.execute("DELETE FROM orders WHERE id IN (3, 4)")  # deleted while state was lost
    shop.con.commit()
    shop.round(4, 4, churn=0.1)
    out = shop_job.sync()
    assert any("adopted batch 2" in r for r in out["recovered"])
    assert out["tables"]["customers"]["batch"] == 3 and out["tables"]["orders"]["batch"] == 3
    after = {k: lake.get(k) for k in lake.list("shop/")}
    assert all(after[k] == v for k, v in before.items())  # committed batches untouched
    for table in ("customers", "orders"):
        assert verify_table(lake, "shop", table)[0] == 3
    shop_job.pull()
    conv = {c.table: c for c in shop_job.compare()}
    assert all(c.equal for c in conv.values()), conv
    assert shop_job.sync()["tables"]["orders"]["batch"] is None  # and it goes on normally


def test_link_down_longer_than_the_retry_budget_fails_then_resumes(
    shop_job, shop, s3_endpoint, monkeypatch
):
    from tests.support.faults import FaultProxy

    shop.round(25, 25, churn=0)
    shop_job.sync()
    shop.round(5, 5, churn=0.1)
    proxy = FaultProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
    proxy.reset_puts(10_000)  # every upload fails: botocore's and Prefect's budgets both run out
    try:
        with pytest.raises(Exception, match="lake s3://.*customers/data/000000000002"):
            shop_job.sync()
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    state = StateStore("shop")
    assert state.pending_plan("customers").batch == 2 and state.checkpoint("customers").batch == 1
    with state.connect(read_only=True) as con:
        attempts = con.execute(
            "SELECT attempt, outcome FROM ops_log WHERE step = 'upload' AND tbl = 'customers'"
            " AND batch = 2 ORDER BY id"
        ).fetchall()
    assert attempts == [(1, "retry"), (2, "retry"), (3, "retry"), (4, "exhausted")]
    out = shop_job.sync()  # the link is back
    assert any("batch 2" in r for r in out["recovered"])
    lake = shop_job.lake()
    for table in ("customers", "orders"):
        assert verify_table(lake, "shop", table)[0] == 2
        assert lake.list(f"shop/{table}/manifests/")[-1].endswith("000000000002.json")
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_two_runners_started_at_once_commit_each_batch_once(shop_job, shop):
    from prefect.settings import PREFECT_API_URL

    shop.round(40, 40, churn=0)
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    cmd = [sys.executable, "-m", "deltaferry.cli", "run", "shop", "--config", str(shop_job.config)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 1]), results
    if codes == [0, 1]:
        loser = next(err for code, err in results if code == 1)
        assert "is already running" in loser and "Traceback" not in loser
    lake = shop_job.lake()
    for table in ("customers", "orders"):
        assert lake.list(f"shop/{table}/manifests/") == [
            f"shop/{table}/manifests/000000000001.json"
        ]
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())


def test_a_planned_batch_whose_contract_version_is_gone_names_the_way_out(shop_job, shop):
    """Fresh-user trial of issue 18: a run killed after planning leaves a batch planned at
    v1; the jobs file then names a contract without v1. The next run stops in one line
    naming the batch, both version lists and `deltaferry plan discard`; after the discard
    the rows are cut again at the new contract and published."""
    from contracts import load_chain
    from deltaferry.errors import TerminalError

    shop.round(5, 0, churn=0)
    shop_job.sync()
    shop.round(3, 0, churn=0)
    killed = _run_cli_killed_at(shop_job, "after_plan")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert StateStore("shop").pending_plan("customers").batch == 2
    # the contract moves to a v2 that is not a chain with v1 (a bare subclass)
    shop_job.config.write_text(shop_job.config.read_text().replace(
        "contracts.shop:Customers", "tests.support.contracts_versions:CustomersV2"))
    assert load_chain("tests.support.contracts_versions:CustomersV2", where="t").versions == [2]
    shop.con.execute("ALTER TABLE customers ADD COLUMN loyalty TEXT")
    shop.con.commit()
    with pytest.raises(TerminalError) as e:
        shop_job.sync()
    line = str(e.value)
    assert "\n" not in line
    assert "batch 2: the batch was planned at contract v1" in line
    assert "(versions: v2)" in line and "deltaferry plan discard shop --table customers" in line
    from click.testing import CliRunner

    from deltaferry.cli import cli

    out = CliRunner().invoke(cli, ["plan", "discard", "shop", "--table", "customers",
                                   "--reason", "contract moved on", "--config",
                                   str(shop_job.config)])
    assert out.exit_code == 0, out.output
    result = shop_job.sync()
    assert result["tables"]["customers"]["batch"] == 2
    shop_job.pull()
    import duckdb

    con = duckdb.connect(str(shop_job.replica), read_only=True)
    try:
        replica = con.execute("SELECT id, name, loyalty FROM customers ORDER BY id").fetchall()
    finally:
        con.close()
    assert replica == shop.con.execute(
        "SELECT id, name, loyalty FROM customers ORDER BY id").fetchall()
    assert len(replica) == 8


# a process loading through deltaferry's dlt pipeline (sources/load.py:run_load); "killed"
# dies as a SIGKILL would, after dlt's copy of a package into its merge staging dataset
# and before dlt marks that job done (found by the chaos scenarios, seed 7066)
LOAD_STEP = r"""
import os, sys
import dlt, pyarrow as pa
from deltaferry.job import JobConfig, TableConfig
from sources.load import DEDUPLICATED, run_load
from sources.pipeline import pipeline_for

table = TableConfig("t", ("id",), None, "none", "tests.support.contracts_files:Orders")
job = JobConfig(name="mid", source="sql_database", url="sqlite://", lake="file:///x", tables=(table,))

def rows(ids, value):
    data = pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array([value] * len(ids))})
    resource = dlt.resource(data, name="t", write_disposition="merge", primary_key=["id"])
    resource.apply_hints(additional_table_hints=DEDUPLICATED)
    return resource

step = sys.argv[1]
pipeline, _ = pipeline_for(job)
if step == "killed":
    from dlt.destinations.impl.duckdb import duck as dlt_duck
    copy = dlt_duck.DuckDbCopyJob.run
    def copy_then_die(self):
        copy(self)
        if str(self._sql_client.dataset_name).endswith("_staging"):
            os._exit(9)
    dlt_duck.DuckDbCopyJob.run = copy_then_die
ids, value = {"first": ([1, 2, 3, 4], "a"), "killed": ([2, 3], "b"), "next": ([9], "c")}[step]
print(list(run_load(job, pipeline, rows(ids, value)).loads_ids))
"""


@pytest.mark.integration  # child processes
def test_a_load_stopped_after_dlts_copy_stages_each_key_once_and_loses_nothing(
    tmp_path, monkeypatch
):
    """dlt resumes a package whose copy into its merge staging dataset ran but was not
    marked done by copying again (it does not empty that dataset on resume); staged without
    dlt's deduplication, every key of the copy came twice into staging, and every later
    cut of the table stopped at "key comes 2 times". And dlt's ``run`` with a package
    pending loads only that package, dropping the data it was given. Both are handled in
    ``sources/load.py:run_load`` (``sources.pipeline.remove_replayed_copies``)."""
    import duckdb as _duckdb

    from sources.staging import staging_path

    env = {**os.environ, "DELTAFERRY_HOME": str(tmp_path / "home")}
    env.pop("DELTAFERRY_DUCKDB_KEY", None)

    def step(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", LOAD_STEP, name], env=env, capture_output=True, text=True,
            timeout=300,
        )

    assert step("first").returncode == 0
    killed = step("killed")
    assert killed.returncode == 9, killed.stderr[-2000:]
    done = step("next")
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path / "home"))
    con = _duckdb.connect(str(staging_path("mid")), read_only=True)
    staged = con.execute("SELECT id, v FROM raw.t ORDER BY id").fetchall()
    con.close()
    # each key once; the stopped load's rows (b) and the next run's (c) both staged
    assert staged == [(1, "a"), (2, "b"), (3, "b"), (4, "a"), (9, "c")], staged
    assert "copies left by loading" in done.stderr


# ``deltaferry run`` of a SQL job (sources/sql_database/reads.py:run_reads) in a process that
# dies as a SIGKILL would, after dlt's copy of the read's package into its merge staging
# dataset and before dlt marks that job done
READ_STEP = r"""
import os, sys
from dlt.destinations.impl.duckdb import duck as dlt_duck
copy = dlt_duck.DuckDbCopyJob.run
def copy_then_die(self):
    copy(self)
    if str(self._sql_client.dataset_name).endswith("_staging") and self.load_table_name == "orders":
        os._exit(9)
dlt_duck.DuckDbCopyJob.run = copy_then_die
sys.argv = ["deltaferry", "run", "shop", "--config", sys.argv[1]]
from deltaferry.cli import main
main()
"""



def _run_script(shop_job, script: str) -> subprocess.CompletedProcess:
    """``script`` (one of the ``*_STEP`` texts above) in a child process, given the shop
    job's jobs file, against this test's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    return subprocess.run(
        [sys.executable, "-c", script, str(shop_job.config)], env=env,
        capture_output=True, text=True, timeout=300,
    )

@pytest.mark.integration  # a child process
def test_a_sql_read_stopped_after_dlts_copy_stages_each_key_once_and_loses_nothing(
    shop_job, shop
):
    """The SQL read's side of the test above: a ``deltaferry run`` that dies after dlt
    copied the read's package into its merge staging dataset leaves that package to the
    next run, which loads it with its own read (``run_reads``) and removes the copies the
    resumed load leaves. The read's own package replaces the copies of every key it reads
    again; the keys deleted at the source in between it does not, and before, every later
    run stopped at "key comes 2 times" for them."""
    shop.round(40, 60, churn=0)
    shop_job.sync()  # batch 1
    first = shop.con.execute("SELECT max(id) FROM orders").fetchone()[0]
    shop.round(10, 20, churn=0.3)  # new keys and changed ones
    killed = _run_script(shop_job, READ_STEP)
    assert killed.returncode == 9, killed.stderr[-3000:]
    state = StateStore("shop")
    assert state.checkpoint("customers").batch == 1  # the killed run published nothing
    # orders the stopped load held, deleted at the source: the next read does not read
    # them again (its own load would have replaced their copies)
    shop.con.execute("DELETE FROM orders WHERE id > ?", (first,))
    shop.con.commit()

    out = shop_job.sync()
    assert out["tables"]["customers"]["batch"] == 2, out
    shop.round(5, 5, churn=0.2)
    shop_job.sync()  # and the table goes on
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())
    for table in ("customers", "orders"):
        assert verify_table(shop_job.lake(), "shop", table)[0] == 3


# ``deltaferry run`` of a SQL job in a process that dies as a SIGKILL would after dlt's
# merge of a package into the staged tables committed, before dlt recorded the load as
# completed (its row in ``_dlt_loads``)
COMPLETE_STEP = r"""
import os, sys
from dlt.destinations import job_client_impl
def die_before_recording(self, load_id):
    os._exit(9)
job_client_impl.SqlJobClientBase.complete_load = die_before_recording
sys.argv = ["deltaferry", "run", "shop", "--config", sys.argv[1]]
from deltaferry.cli import main
main()
"""


@pytest.mark.integration  # a child process
def test_a_package_stopped_after_its_merge_is_published_although_the_next_read_fails(
    shop_job, shop
):
    """A package whose merge reached the staged tables, its load not yet recorded, is
    loaded by the next run before it reads anything (``sources.pipeline.
    finish_stopped_loads``). Before, it was loaded with the run's own read, and a read that
    failed first (text that is not UTF-8) aborted it with the read's package: its rows
    stayed staged under a load id no completed load names, and no later run published
    them (the next read starts after them)."""
    import duckdb as _duckdb

    from sources.staging import staging_path

    shop.round(40, 60, churn=0)
    shop_job.sync()  # batch 1
    shop.round(10, 20, churn=0.3)
    killed = _run_script(shop_job, COMPLETE_STEP)
    assert killed.returncode == 9, killed.stderr[-3000:]
    con = _duckdb.connect(str(staging_path("shop")), read_only=True)
    unrecorded = con.execute(
        "SELECT count(*) FROM raw.customers WHERE _dlt_load_id NOT IN"
        " (SELECT load_id FROM raw._dlt_loads)"
    ).fetchone()[0]
    con.close()
    assert unrecorded > 0  # the merge reached staging; its load is not recorded

    newest = shop.con.execute("SELECT max(id) FROM customers").fetchone()[0]
    shop.con.execute(  # at the newest cursor value: read again by the next window
        "UPDATE customers SET name = CAST(X'48C328' AS TEXT),"
        " updated_at = (SELECT max(updated_at) FROM customers) WHERE id = ?", (newest,),
    )
    shop.con.commit()
    with pytest.raises(Exception, match="not valid UTF-8"):
        shop_job.sync()  # the customers read stops; orders go on
    shop.con.execute("UPDATE customers SET name = 'mended' WHERE id = ?", (newest,))
    shop.con.commit()
    shop_job.sync()
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())
