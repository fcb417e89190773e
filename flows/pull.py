"""A reader as a Prefect flow: pull a job's lake into a replica, on a schedule if deployed.

The run's markdown artifact (key ``deltaferry-<job>-pull``) lists what was applied and,
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

from deltaferry.settings import from_env
from flows.report import artifact_key
from flows.sync import _only_transient


@task(
    name="pull",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_delay_seconds=[2, 8, 30],
    retry_jitter_factor=1.0,
    retry_condition_fn=_only_transient,
)
def pull_step(job: str, replica: str, config: str | None) -> list[Any]:
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake

    cfg = load_job(job, config)
    lake = open_lake(cfg.lake, base=cfg.base_dir)
    lake.check()
    return pull(cfg, lake, Path(replica))


def pull_markdown(job: str, replica: str, results: list[Any]) -> str:
    from deltaferry import conflicts, duck

    lines = [
        f"# Pull of job `{job}` into `{replica}`",
        "",
        "| table | batches applied | rows applied | replica at |",
        "|---|---:|---:|---|",
    ]
    for r in results:
        at = (
            str(r.last_batch)
            if r.chains is None
            else " ".join(f"{p}#{b}" for p, b in sorted(r.chains.items()))
        )
        lines.append(f"| {r.table} | {r.batches} | {r.rows} | {at} |")
    stopped = [f"- **{r.table} stopped:** {r.error}" for r in results if r.error]
    if stopped:
        lines += ["", *stopped]
    text = "\n".join(lines) + "\n"
    if any(r.chains is not None for r in results):
        con = duck.connect(Path(replica), read_only=True, alias="replica")
        try:
            text += "\n" + conflicts.conflicts_markdown(con, job, level=2)
        finally:
            con.close()
    return text


@flow(name="deltaferry-pull", flow_run_name="pull-{job}", log_prints=True)
def pull_job(job: str, replica: str, config: str | None = None) -> dict[str, Any]:
    """Verify and apply every new batch of ``job`` into ``replica``; report it as an artifact.

    A table that stops does not stop the others (``deltaferry.replica.pull``): the artifact
    still lists every table, the stopped ones with their error, and the run then fails
    with that error."""
    from deltaferry.errors import DeltaferryError

    failed: DeltaferryError | None = None
    try:
        retries = from_env().step_retries  # read now, not when this module loads
        results = pull_step.with_options(retries=retries)(job, replica, config)
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
    return {
        r.table: {
            "batches": r.batches,
            "rows": r.rows,
            "chains": r.chains,
            "overrides": r.overrides,
        }
        for r in results
    }
