"""Several jobs at once: Prefect's process-pool task runner, or an existing Dask cluster.

``sync_jobs`` is a flow whose tasks each run one job's ``sync_job`` flow (a nested flow
run, with its own report, events and tags), submitted to Prefect's
``ProcessPoolTaskRunner`` (worker processes on this host, no extra dependency), or, given
a scheduler address (``tcp://scheduler:8786``), to prefect-dask's ``DaskTaskRunner`` on an
existing Dask cluster whose workers may sit on several hosts (the ``dask`` extra:
``pip install 'deltaferry[dask]'``; not a default dependency because pandera's model
building imports ``dask.dataframe`` whenever dask is installed: about 0.8 s and 20 MiB in
every process that validates a batch). Every Dask worker needs the
project importable, the jobs file at the same path, the job's environment (secrets, S3)
and one ``DELTAFERRY_HOME`` that every worker shares: Dask does not keep a job on one host,
and a host whose home is stale finds the lake ahead of its checkpoint and stops before it
plans anything (``deltaferry/agreement.py``). A job's lock and its create-only manifests
keep two workers from publishing one job twice. Jobs fail independently: one job's
failure is reported, the others go on.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from deltaferry.errors import ConfigError, DeltaferryError
from flows.sync import sync_job


@task(name="sync-job", cache_policy=NO_CACHE, persist_result=False)
def sync_one(job: str, config: str | None) -> dict[str, Any]:
    """One job's sync, run where the task runner puts it (a worker process)."""
    summary = sync_job(job=job, config=config)
    return {**summary, "worker_pid": os.getpid()}


@flow(name="deltaferry-sync-many", flow_run_name="sync-many", log_prints=True)
def sync_jobs(jobs: list[str], config: str | None = None) -> dict[str, Any]:
    """Sync ``jobs`` in parallel; returns each job's summary or its error (``run_parallel``)."""
    logger = get_run_logger()
    futures = {
        job: sync_one.with_options(task_run_name=f"sync-{job}").submit(job, config) for job in jobs
    }
    out: dict[str, Any] = {}
    for job, future in futures.items():
        try:
            out[job] = future.result()
        except Exception as e:  # noqa: BLE001 - one job's failure does not stop the others
            logger.error("job %s failed: %s", job, e)
            out[job] = {"job": job, "error": error_line(job, e)}
            if isinstance(e, DeltaferryError) and e.run_summary:  # what went on before it
                out[job]["run_summary"] = e.run_summary
    return out


def error_line(job: str, e: BaseException) -> str:
    """A job's failure as ``deltaferry run`` says it: deltaferry's own errors as they are
    (they name the job), anything else with its type, after the job's name."""
    if isinstance(e, DeltaferryError):
        return str(e)
    return f"job '{job}': {type(e).__name__}: {e}"


def require_dask(address: str) -> None:
    """Raise ``ConfigError`` (one line) when prefect-dask, which ``address`` needs, is not
    installed."""
    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--dask-address {address}: running jobs on a Dask cluster needs prefect-dask, "
            "which is not installed: pip install 'deltaferry[dask]' (without an address, "
            "run-all uses worker processes on this host)"
        ) from None


def _stop_at_interrupt() -> None:
    """Run in each local worker process as it starts: Ctrl-C (SIGINT, which a terminal sends
    to the whole process group) ends the worker at once, as a kill would, instead of raising
    ``KeyboardInterrupt`` in whichever thread runs (a worker interrupted while starting kept
    running idle, and run-all waited for it at exit for ever). A job's run may stop at any
    point (its recovery is tested by kills at every commit point); the next run finishes it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_parallel(
    jobs: list[str], config: str | None, *, workers: int = 2, address: str | None = None
) -> dict[str, Any]:
    """``sync_jobs`` on ``workers`` local worker processes (Prefect's
    ``ProcessPoolTaskRunner``), or on the Dask cluster at ``address`` (prefect-dask).

    Returns ``{job: summary}`` (a job that failed: ``{"job", "error"}``, and
    ``"run_summary"`` when its run had gone on before the error). Raises
    ``ConfigError`` when ``address`` is given and prefect-dask is not installed."""
    runner: Any
    if address:
        require_dask(address)
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=address)
    else:
        from prefect.task_runners import ProcessPoolTaskRunner

        runner = ProcessPoolTaskRunner(max_workers=workers, initializer=_stop_at_interrupt)
    # Flow.with_options wants a TaskRunner[PrefectFuture[Any]]; TaskRunner is invariant in its
    # future type, so a runner of a narrower future type does not match it
    return sync_jobs.with_options(task_runner=runner)(jobs=list(dict.fromkeys(jobs)), config=config)
