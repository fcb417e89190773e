"""Several jobs at once (``run-all``): in worker processes on this host (Prefect's process
pool), or on an existing Dask cluster (prefect-dask, started here as a local cluster): each
job in a worker process, published and convergent; one job's failure leaves the others'
runs intact."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest


@pytest.fixture
def three_jobs(tmp_path: Path, home: Path, bucket: str, prefect_api: None) -> Path:
    from deltaferry.shop import JOBS_TOML, Shop

    text = ""
    for name, seed in (("alpha", 1), ("beta", 2)):
        shop = Shop(tmp_path / f"{name}.db", seed=seed)
        shop.round(30, 40, churn=0)
        shop.close()
        job = JOBS_TOML.format(db=tmp_path / f"{name}.db", lake=f"s3://{bucket}/lake")
        text += job.replace("jobs.shop", f"jobs.{name}")
    # a third job whose database has no tables: its run fails, the others do not
    sqlite3.connect(tmp_path / "empty.db").close()
    job = JOBS_TOML.format(db=tmp_path / "empty.db", lake=f"s3://{bucket}/lake")
    text += job.replace("jobs.shop", "jobs.gamma")
    config = tmp_path / "deltaferry.toml"
    config.write_text(text)
    return config


def _published_and_convergent(
    results: dict, three_jobs: Path, bucket: str, tmp_path: Path, any_batch: bool = False
):
    """alpha and beta published (their first batch, or with ``any_batch`` whatever batch a
    run interrupted before left to do) and their replicas equal their sources; gamma
    failed alone."""
    from deltaferry.compare import compare
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake

    assert "not found in the source database" in results["gamma"]["error"]
    pids = {results[j]["worker_pid"] for j in ("alpha", "beta")}
    assert os.getpid() not in pids  # each job ran in a worker process
    for name in ("alpha", "beta"):
        if not any_batch:
            assert results[name]["tables"]["customers"]["batch"] == 1
            assert results[name]["tables"]["orders"]["rows"] == 40
        job = load_job(name, three_jobs)
        replica = tmp_path / f"{name}-replica.duckdb"
        pull(job, open_lake(job.lake, base=job.base_dir), replica)
        assert all(c.equal for c in compare(job, replica))
    lake = open_lake(f"s3://{bucket}/lake")
    assert lake.list("gamma/") == []  # the failed job published nothing


def test_jobs_run_in_parallel_in_worker_processes(three_jobs: Path, bucket: str, tmp_path: Path):
    from flows.parallel import run_parallel

    results = run_parallel(["alpha", "beta", "gamma"], str(three_jobs), workers=2)
    _published_and_convergent(results, three_jobs, bucket, tmp_path)


def test_jobs_run_on_an_existing_dask_cluster(three_jobs: Path, bucket: str, tmp_path: Path):
    from distributed import LocalCluster

    from flows.parallel import run_parallel

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        results = run_parallel(
            ["alpha", "beta", "gamma"], str(three_jobs), address=cluster.scheduler_address
        )
        workers = {nanny.pid for nanny in cluster.workers.values()}
    _published_and_convergent(results, three_jobs, bucket, tmp_path)
    # the jobs ran in the cluster's worker processes, not in processes of their own
    assert {results[j]["worker_pid"] for j in ("alpha", "beta")} <= workers


def test_a_dask_address_without_prefect_dask_is_one_clear_error(monkeypatch):
    import sys

    from deltaferry.errors import ConfigError
    from flows.parallel import run_parallel

    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as when it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'deltaferry\[dask\]'"):
        run_parallel(["alpha"], None, address="tcp://127.0.0.1:8786")


def test_run_all_refuses_unknown_jobs_and_bad_worker_counts(three_jobs: Path):
    from click.testing import CliRunner

    from deltaferry.cli import cli

    r = CliRunner().invoke(cli, ["run-all", "--config", str(three_jobs), "--job", "delta"])
    assert r.exit_code == 2 and "unknown job 'delta' (known: alpha, beta, gamma)" in r.stderr
    r = CliRunner().invoke(cli, ["run-all", "--config", str(three_jobs), "--workers", "0"])
    assert r.exit_code == 2 and "--workers must be 1 or more" in r.stderr


def test_a_missing_dask_extra_is_named_before_any_job_is_looked_at(three_jobs, monkeypatch):
    import sys

    from click.testing import CliRunner

    from deltaferry.cli import cli

    # a job whose database file is missing fails its preflight (one line, exit 1) when it is
    # looked at; the missing extra must be said before that
    text = three_jobs.read_text()
    block = text[text.index("[jobs.gamma]") :]
    three_jobs.write_text(
        text + "\n" + block.replace("jobs.gamma", "jobs.delta").replace("empty.db", "none.db")
    )
    r = CliRunner().invoke(cli, ["run-all", "--config", str(three_jobs), "--job", "delta"])
    assert r.exit_code == 1 and "job 'delta'" in r.stderr  # the preflight refuses it
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as when it is not installed
    args = ["run-all", "--config", str(three_jobs), "--job", "delta", "--dask-address", "x:1"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "pip install 'deltaferry[dask]'" in r.stderr
    assert "job 'delta'" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_job_error_says_the_job_once():
    from deltaferry.errors import TerminalError
    from flows.parallel import error_line

    assert error_line("a", TerminalError("job 'a': broke")) == "job 'a': broke"
    assert error_line("a", RuntimeError("boom")) == "job 'a': RuntimeError: boom"


def test_a_job_named_twice_runs_once_and_errors_are_one_line(three_jobs: Path):
    from click.testing import CliRunner

    from deltaferry.cli import cli

    args = ["run-all", "--config", str(three_jobs), "--job", "gamma", "--job", "gamma"]
    r = CliRunner().invoke(cli, args, terminal_width=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.stderr  # one job, one unwrapped line
    assert lines[0].startswith("error: job 'gamma'") and "job gamma: job" not in lines[0]


@pytest.mark.integration  # starts run-all as a process of its own and interrupts it
def test_ctrl_c_stops_run_all_and_its_workers_and_the_next_run_converges(
    three_jobs: Path, bucket: str, tmp_path: Path
):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while the jobs
    run: run-all exits within seconds, no worker process is left, and run-all again
    publishes and converges."""
    import signal
    import subprocess
    import sys
    import time

    from deltaferry.shop import Shop
    from tests.test_chaos import _cli_env

    for name, seed in (("alpha", 1), ("beta", 2)):  # enough rows to be mid-run when stopped
        shop = Shop(tmp_path / f"{name}.db", seed=seed)
        shop.round(20_000, 60_000, churn=0)
        shop.close()
    home = Path(os.environ["DELTAFERRY_HOME"])
    cmd = [sys.executable, "-m", "deltaferry.cli", "run-all", "--config", str(three_jobs)]
    p = subprocess.Popen(
        cmd, env=_cli_env(), start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def group() -> list[int]:  # live processes of run-all's process group
        pids = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and os.getpgid(int(d.name)) == p.pid:
                    state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        pids.append(int(d.name))
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                continue
        return pids

    deadline = time.monotonic() + 180
    locks = [home / name / "run.lock" for name in ("alpha", "beta")]
    while time.monotonic() < deadline and p.poll() is None and not all(x.exists() for x in locks):
        time.sleep(0.1)  # both workers have started their job's run (a worker Ctrl-C'd while
        # it is still starting, importing, may print Python's traceback; it stops all the same)
    assert p.poll() is None, "run-all ended before it was interrupted"
    os.killpg(p.pid, signal.SIGINT)
    try:
        _, stderr = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError(f"run-all did not stop within 60 s of Ctrl-C: {group()}") from None
    assert p.returncode != 0
    time.sleep(1.0)
    assert group() == [], "worker processes outlived run-all"
    assert "Traceback" not in stderr, stderr[-2000:]

    from flows.parallel import run_parallel

    results = run_parallel(["alpha", "beta", "gamma"], str(three_jobs), workers=2)
    _published_and_convergent(results, three_jobs, bucket, tmp_path, any_batch=True)


def test_run_all_output_piped_names_the_job_on_every_row(capsys):
    """Piped, run-all's summaries are one tab-separated report whose rows start with the
    job, so two jobs' tables of one name stay apart; what each recovered is said after."""
    from deltaferry.cli_run import _print_all_summaries

    def summary(job: str, batch: int | None) -> dict:
        table = {"batch": batch, "rows": 3, "upserts": 2, "deletes": 1, "quarantined": 0,
                 "bytes": 10, "manifest": "created"}  # fmt: skip
        return {"job": job, "tables": {"stock": table}, "recovered": ["stock: r"]}

    _print_all_summaries([summary("north", 4), summary("south", None)])
    lines = capsys.readouterr().out.splitlines()
    rows = [ln.split("\t") for ln in lines if "\t" in ln]
    assert rows[0][:3] == ["job", "table", "batch"]
    assert rows[1][:4] == ["north", "stock", "4", "3"]
    assert rows[2][:3] == ["south", "stock", "-"] and rows[2][-1] == "no change"
    assert [ln for ln in lines if ln.startswith("recovered")] == [
        "recovered: job 'north': stock: r",
        "recovered: job 'south': stock: r",
    ]
