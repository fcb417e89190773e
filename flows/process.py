"""What a flow knows about the process it runs in: whether Prefect started the process for
this very flow run (a worker, or a deployment's runner: ``prefect deploy``, ``deltaferry
serve``), so the process is the run's and may end without Python's last full garbage
collections (``deltaferry/shutdown.py``)."""

from __future__ import annotations

from prefect.context import FlowRunContext

from deltaferry.shutdown import end_without_final_collection, started_for


def end_quickly_if_the_process_is_the_runs() -> None:
    """``end_without_final_collection`` when Prefect started this process for the flow run
    in progress (``started_for``), read from Prefect's flow-run context (not ``prefect.runtime.flow_run.id``, which outside a flow answers with the
    environment's ``PREFECT__FLOW_RUN_ID`` itself: a flow's ``.fn`` called by a program a
    worker started would pass). Outside a flow run: nothing."""
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    if run is not None and started_for(run.id):
        end_without_final_collection()
