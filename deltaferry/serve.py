"""``deltaferry serve``: every job's schedule, run from one process, no work pool or worker.

Each job with a ``schedule`` becomes a Prefect deployment of the sync flow served by this
process (``prefect.serve``): the Prefect API schedules its runs and this process starts
them, one at a time per job (a concurrency limit of one, ENQUEUE, as in
``deployments/prefect.yaml``), each in a subprocess. Runs, logs and artifacts show in the
UI like any other. Stop it with Ctrl-C (SIGINT) or SIGTERM; a run in progress when it
stops is left to the next run's recovery, as after any interruption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltaferry.config import JobConfig, load_jobs
from deltaferry.errors import ConfigError


def served_deployments(config: Path, only: tuple[str, ...] = ()) -> list[Any]:
    """One runner deployment per scheduled job of the jobs file (all, or ``only`` these)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from contracts import load_contract
    from flows.sync import sync_job

    jobs = load_jobs(config)
    for name in only:
        if name not in jobs:
            raise ConfigError(f"unknown job '{name}' (known: {', '.join(sorted(jobs))})")
    chosen: list[JobConfig] = [j for j in jobs.values() if not only or j.name in only]
    unscheduled = [j.name for j in chosen if j.schedule is None]
    if only and unscheduled:
        raise ConfigError(
            f"job(s) {', '.join(unscheduled)} have no schedule; add schedule = <seconds> or "
            'a cron expression ("*/15 * * * *") to the job in the jobs file'
        )
    chosen = [j for j in chosen if j.schedule is not None]
    if not chosen:
        raise ConfigError(
            f"no job in {config} has a schedule; add schedule = <seconds> or a cron "
            'expression ("*/15 * * * *") to a job'
        )
    if unscheduled:  # serving the others: say which are left out, and why
        import logging

        logging.getLogger("deltaferry").warning(
            "not served (no schedule in %s): %s", config, ", ".join(unscheduled)
        )
    out = []
    for job in chosen:
        for t in job.tables:  # a contract that does not import fails here, not at 3 a.m.
            load_contract(t.contract, where=f"job '{job.name}' table '{t.name}'")
        timing: dict[str, Any] = (
            {"interval": job.schedule} if isinstance(job.schedule, int) else {"cron": job.schedule}
        )
        out.append(
            sync_job.to_deployment(
                name=job.name,
                parameters={"job": job.name, "config": str(config)},
                tags=["deltaferry", f"job:{job.name}", "served"],
                description=f"deltaferry job {job.name}, served by `deltaferry serve`",
                concurrency_limit=ConcurrencyLimitConfig(
                    limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                ),
                **timing,
            )
        )
    return out


def serve_jobs(config: Path, only: tuple[str, ...] = (), limit: int | None = None) -> None:
    """Serve the scheduled jobs until interrupted."""
    from prefect import serve

    serve(*served_deployments(config, only), limit=limit, print_starting_message=True)
