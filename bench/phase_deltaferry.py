"""Child process of bench/sync_bench.py: one deltaferry sync of the bench job.

Runs in the project's environment with bench/ and the project root on PYTHONPATH
(the contract is ``bench_contract:Events``). Prints one ``BENCH_RESULT {json}`` line.

    python bench/phase_deltaferry.py --job bench --config JOBS.toml [--profile OUT.prof]
        [--rss-trace OUT.rss.txt]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

T_PROCESS = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--profile", help="write a cProfile of the sync call to this file")
    ap.add_argument("--rss-trace", help="write the RSS with the main thread's stack here")
    args = ap.parse_args()
    trace = None
    if args.rss_trace:
        from pathlib import Path

        from rss_trace import RssTrace

        trace = RssTrace.start(Path(args.rss_trace))

    t_import = time.perf_counter()
    from flows.sync import sync_job

    imported = time.perf_counter() - t_import
    # this process stands for the one a Prefect worker starts for a deployment's flow run,
    # where sync_job ends the process without Python's last full collections
    # (deltaferry/shutdown.py; a script that calls sync_job itself keeps them)
    from deltaferry.shutdown import end_without_final_collection

    end_without_final_collection()
    t0 = time.perf_counter()
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        summary = prof.runcall(sync_job, job=args.job, config=args.config)
        prof.dump_stats(args.profile)
    else:
        summary = sync_job(job=args.job, config=args.config)
    work = time.perf_counter() - t0
    if trace is not None:
        trace.finish()
    tables = summary.get("tables", {})
    t_reads = time.perf_counter()
    steps = _step_times(args.job)
    initial_load = _initial_load_notes(args.job)
    dlt_steps = _dlt_step_times(args.job, args.config)
    bench_reads = time.perf_counter() - t_reads
    rows = sum(int(s.get("rows") or 0) for s in tables.values())
    result = {
        "rows": rows,
        "work_s": work,
        "import_s": imported,
        # the bench's own reads after the sync (step times), not part of a user's run:
        # run_phase takes them off the process's wall time
        "bench_reads_s": bench_reads,
        "process_s": time.perf_counter() - T_PROCESS,  # the script's first line to here
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "extracted": dataclasses.asdict(summary["extracted"]) if summary.get("extracted") else None,
        "tables": tables,
        "steps": steps,
        "dlt_steps": dlt_steps,
        # initial_load = "scanner": what the copy did (rows, seconds, rows/s), or why not
        "initial_load": initial_load,
    }
    print("BENCH_RESULT " + json.dumps(result, default=str), flush=True)


def _step_times(job: str) -> dict[str, float]:
    """Seconds per step of the job's latest run, from deltaferry's operations log."""
    from deltaferry.state import StateStore

    store = StateStore(job)
    with store.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT step, sum(duration_ms) / 1000.0 FROM ops_log WHERE run_id = "
            "(SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1) AND duration_ms IS NOT NULL "
            "GROUP BY step ORDER BY min(id)"
        ).fetchall()
    return {step: float(s) for step, s in rows}


def _initial_load_notes(job: str) -> list[str]:
    """The ``initial-load`` lines of the operations log (``sources/sql_database/bulk.py``)."""
    from deltaferry.state import StateStore

    with StateStore(job).connect(read_only=True) as con:
        rows = con.execute(
            "SELECT detail FROM ops_log WHERE outcome = 'initial-load' ORDER BY id"
        ).fetchall()
    return [r[0] for r in rows]


def _dlt_step_times(job: str, config: str) -> dict[str, float]:
    """Seconds per dlt step (extract, normalize, load) of the job's last dlt run."""
    from deltaferry.config import load_job
    from sources.pipeline import pipeline_for

    pipeline, borrowed = pipeline_for(load_job(job, config))
    trace = pipeline.last_trace
    if borrowed is not None:
        borrowed.close()
    if trace is None:
        return {}
    return {
        s.step: (s.finished_at - s.started_at).total_seconds()
        for s in trace.steps
        if s.finished_at and s.step in ("extract", "normalize", "load")
    }


if __name__ == "__main__":
    main()
