"""Several jobs at once, through Prefect's Dask task runner (prefect-dask).

``sync_jobs`` is a flow whose tasks each run one job's ``sync_job`` flow (a nested flow
run, with its own report, events and tags), submitted to a ``DaskTaskRunner``: a local
Dask cluster of worker processes by default, or an existing cluster
(``tcp://scheduler:8786``) whose workers may sit on several hosts. Every worker needs the
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

from flows.sync import sync_job


@task(name="sync-job", cache_policy=NO_CACHE, persist_result=False)
def sync_one(job: str, config: str | None) -> dict[str, Any]:
    """One job's sync, run where the task runner puts it (a Dask worker process)."""
    summary = sync_job(job=job, config=config)
    return {**summary, "worker_pid": os.getpid()}


@flow(name="deltaferry-sync-many", flow_run_name="sync-many", log_prints=True)
def sync_jobs(jobs: list[str], config: str | None = None) -> dict[str, Any]:
    """Sync ``jobs`` in parallel; returns each job's summary or its error."""
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
            out[job] = {"job": job, "error": f"{type(e).__name__}: {e}"}
    return out


def run_parallel(
    jobs: list[str], config: str | None, *, workers: int = 2, address: str | None = None
) -> dict[str, Any]:
    """``sync_jobs`` on a local Dask cluster of ``workers`` processes (one thread each), or
    on the Dask cluster at ``address``."""
    from prefect_dask import DaskTaskRunner

    runner = (
        DaskTaskRunner(address=address)
        if address
        else DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
        )
    )
    # Flow.with_options wants a TaskRunner[PrefectFuture[Any]]; TaskRunner is invariant in its
    # future type, so prefect-dask's TaskRunner[PrefectDaskFuture[Any]] does not match it
    return sync_jobs.with_options(task_runner=runner)(  # type: ignore[arg-type]
        jobs=jobs, config=config
    )
