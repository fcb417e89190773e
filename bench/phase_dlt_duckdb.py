"""Child process of bench/pg_bench.py: the baseline, dlt's own SQL -> DuckDB pipeline.

``sql_table`` (pyarrow backend, incremental on the cursor column, merge on the primary
key) -> dlt's ``duckdb`` destination, a local DuckDB file. Runs in the project's
environment but imports nothing from deltaferry. Running it again with the same
--pipelines-dir and --duckdb is the incremental run. Prints one ``BENCH_RESULT {json}`` line.

    python bench/phase_dlt_duckdb.py --url URL --table events --cursor updated_at \
        --primary-key id --duckdb OUT.duckdb --pipelines-dir DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="SQLAlchemy URL of the source")
    ap.add_argument("--table", required=True)
    ap.add_argument("--cursor", required=True)
    ap.add_argument("--primary-key", required=True)
    ap.add_argument("--duckdb", required=True, help="the destination DuckDB file")
    ap.add_argument("--pipelines-dir", required=True)
    ap.add_argument("--chunk-size", type=int, default=50_000)
    args = ap.parse_args()

    t_import = time.perf_counter()
    import dlt
    from dlt.sources.sql_database import sql_table

    imported = time.perf_counter() - t_import
    t0 = time.perf_counter()
    pipeline = dlt.pipeline(
        pipeline_name="dlt_duckdb",
        pipelines_dir=args.pipelines_dir,
        destination=dlt.destinations.duckdb(args.duckdb),
        dataset_name="bench",
    )
    resource_ = sql_table(
        credentials=args.url,
        table=args.table,
        backend="pyarrow",
        chunk_size=args.chunk_size,
        incremental=dlt.sources.incremental(args.cursor),
        write_disposition="merge",
        primary_key=args.primary_key,
    )
    info = pipeline.run(resource_)
    work = time.perf_counter() - t0
    norm = pipeline.last_trace.last_normalize_info if pipeline.last_trace else None
    counts = dict(norm.row_counts) if norm else {}
    result = {
        "rows": int(counts.get(args.table, 0)),
        "work_s": work,
        "import_s": imported,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "load_ids": list(info.loads_ids),
        "row_counts": counts,
        "dlt_steps": {
            s.step: (s.finished_at - s.started_at).total_seconds()
            for s in (pipeline.last_trace.steps if pipeline.last_trace else [])
            if s.finished_at and s.step in ("extract", "normalize", "load")
        },
    }
    print("BENCH_RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
