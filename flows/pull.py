"""A reader as a Prefect flow: pull a job's lake into a replica, on a schedule if deployed.

The run's markdown artifact (key ``deltaferry-<job>-pull``, its text
``deltaferry/run_report.py:pull_markdown``) lists what was applied and,
for a job with several producers, the conflicts the replica has recorded: hotspots by
table, key, producer pair and day, and the newest records with both versions, the
winner and the rule. ``deltaferry conflicts JOB --replica R`` shows the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from deltaferry.run_report import pull_markdown, pull_summary
from flows.process import end_quickly_if_the_process_is_the_runs
from flows.report import artifact_key
from flows.retries import only_transient, step_retry_delays


@task(
    name="pull",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=only_transient,
)
def pull_step(job: str, replica: str, config: str | None) -> list[Any]:
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake

    cfg = load_job(job, config)
    lake = open_lake(cfg.lake, base=cfg.base_dir)
    lake.check()
    return pull(cfg, lake, Path(replica))


@flow(name="deltaferry-pull", flow_run_name="pull-{job}", log_prints=True)
def pull_job(job: str, replica: str, config: str | None = None) -> dict[str, Any]:
    """Verify and apply every new batch of ``job`` into ``replica``; report it as an artifact.

    A table that stops does not stop the others (``deltaferry.replica.pull``): the artifact
    still lists every table, the stopped ones with their error, and the run then fails
    with that error."""
    from deltaferry.errors import DeltaferryError

    end_quickly_if_the_process_is_the_runs()  # a worker's process: no last full GC passes
    failed: DeltaferryError | None = None
    try:
        retries, delays = step_retry_delays()  # read now, not when this module loads
        results = pull_step.with_options(retries=retries, retry_delay_seconds=delays)(
            job, replica, config
        )
    except DeltaferryError as e:
        if getattr(e, "results", None) is None:
            raise
        failed, results = e, e.results  # type: ignore[attr-defined]
    markdown = pull_markdown(job, replica, results)
    try:
        create_markdown_artifact(
            key=artifact_key(job, "pull"),
            markdown=markdown,
            description=f"deltaferry pull of job {job}",
        )
    except Exception as e:  # noqa: BLE001 - reporting never fails a pull that succeeded
        get_run_logger().warning("could not write the pull artifact: %s", e)
    if failed is not None:
        raise failed
    return pull_summary(results)
