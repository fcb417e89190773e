"""Child process of bench/scale_bench.py: the reader, ``deltaferry pull`` into a replica.

Does what ``deltaferry pull JOB --replica R`` does (``deltaferry/cli_lake.py``): load the
job, open and check its lake, ``deltaferry.replica.pull`` every batch not yet in the
replica, with the default consumer id; without the CLI's table output. Runs in the
project's environment with bench/ and the project root on PYTHONPATH. Prints one
``BENCH_RESULT {json}`` line.

    python bench/phase_pull.py --job bench --config JOBS.toml --replica REPLICA.duckdb
        [--rss-trace OUT.rss.txt]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--replica", required=True)
    ap.add_argument("--rss-trace", help="write the RSS with the main thread's stack here")
    args = ap.parse_args()
    trace = None
    if args.rss_trace:
        from rss_trace import RssTrace

        trace = RssTrace.start(Path(args.rss_trace))

    t_import = time.perf_counter()
    from deltaferry.config import load_job
    from deltaferry.consumers import default_consumer_id
    from deltaferry.replica import pull
    from destinations.lake import open_lake

    imported = time.perf_counter() - t_import
    t0 = time.perf_counter()
    cfg = load_job(args.job, args.config)
    lake = open_lake(cfg.lake, base=cfg.base_dir)
    lake.check()
    replica = Path(args.replica)
    results = pull(cfg, lake, replica, consumer=default_consumer_id(replica.stem))
    work = time.perf_counter() - t0
    if trace is not None:
        trace.finish()
    result = {
        "rows": sum(int(r.rows) for r in results),
        "batches": sum(int(r.batches) for r in results),
        "work_s": work,
        "import_s": imported,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "errors": [r.error for r in results if r.error],
        "replica_bytes": replica.stat().st_size if replica.exists() else None,
    }
    print("BENCH_RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
