#!/usr/bin/env python
"""Reader memory: peak RSS of ``pull`` of an initial batch, by table size, file by file
against whole-batch.

One run, for each --rows size (default 500,000 and 2,000,000):
  1. builds a SQLite source of that many rows (bench/sync_bench.py's ``events`` table) and
     publishes it with one deltaferry sync (one batch, ``rows_per_file`` rows per file) to
     moto's S3-compatible server on loopback; with ``--direct``, writes that batch straight
     through the lake store API instead (``bench/lake_build.py``, the producer's encoding);
  2. pulls it into a new replica, in a child process each, two ways:
     - ``file-by-file``: ``deltaferry.replica.pull`` as shipped (each file fetched, verified,
       admitted and applied in turn, inside the batch's one transaction);
     - ``whole-batch``: the same library pieces the way pull worked before (every file of
       the batch verified and concatenated, admitted, then applied): the baseline;
  3. prints wall time and peak RSS (the child's ru_maxrss) per size and way, and the ratios:
     RSS at the largest size / RSS at the smallest (target <= 1.1 for file-by-file), and
     file-by-file / whole-batch at the largest size.

A measurement, not a test: exit 0 whether targets are met or not.

    .venv/bin/python bench/pull_bench.py
    .venv/bin/python bench/pull_bench.py --rows 20000,60000 --rows-per-file 10000   # smoke
    .venv/bin/python bench/pull_bench.py --direct --rows 1000000,3000000,10000000 \
        --ways file-by-file                   # the lake written directly, no sync
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import sync_bench as sb  # noqa: E402

PULL_CHILD = r"""
import json, sys, time
from pathlib import Path
from deltaferry.config import load_job
from destinations.lake import open_lake
job = load_job(sys.argv[1], sys.argv[2])
replica, how = Path(sys.argv[3]), sys.argv[4]
lake = open_lake(job.lake)
t0 = time.perf_counter()
if how == "file-by-file":
    from deltaferry.replica import pull
    (res,) = pull(job, lake, replica)
    rows = res.rows
else:  # whole-batch: verify and concatenate every file, admit, apply (the old way)
    import duckdb
    from contracts import load_chain
    from deltaferry.readers import Reading
    from deltaferry.replica import _META, _apply
    from deltaferry.verify import iter_verified
    (t,) = job.tables
    chain = load_chain(t.contract, where="bench")
    reading = Reading(job.name, t.name, chain.contract(), list(t.primary_key), "strict", chain)
    con = duckdb.connect(str(replica))
    con.execute(_META)
    rows = 0
    for vb in iter_verified(lake, job.name, t.name):
        a = reading.admit(vb.batch, vb.manifest, vb.data, None, vb.also, con)
        _apply(con, job.name, t.name, list(t.primary_key), vb.batch, vb.manifest,
               vb.manifest_sha256, a.data, a.caution)
        rows += a.data.num_rows
    con.close()
print("BENCH_RESULT " + json.dumps({"rows": rows, "work_s": time.perf_counter() - t0}))
"""

BUILD_CHILD = r"""
import sys
from destinations.lake import open_lake
from lake_build import build_events_lake
url, job, table, rows, per_file, per_batch = sys.argv[1:7]
build_events_lake(open_lake(url), job, table, int(rows), int(per_file), int(per_batch) or None)
print("BENCH_RESULT {\"rows\": " + rows + "}")
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", default="500000,2000000", help="table sizes, comma separated")
    ap.add_argument("--rows-per-file", type=int, default=250_000)
    ap.add_argument(
        "--direct",
        action="store_true",
        help="write the batch straight through the lake store API (bench/lake_build.py) "
        "instead of a SQLite source and a sync: fast enough for 10M rows",
    )
    ap.add_argument(
        "--batch-rows",
        type=int,
        help="with --direct: batches of at most this many rows (the producer's max_batch_rows)"
        " instead of one batch",
    )
    ap.add_argument("--ways", default="file-by-file,whole-batch", help="pull ways to measure")
    ap.add_argument(
        "--memory-limit", help="DELTAFERRY_DUCKDB_MEMORY_LIMIT of the pulls (default: its own)"
    )
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "pull_results.json")
    args = ap.parse_args(argv)
    sizes = sorted(int(x) for x in args.rows.split(","))
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="deltaferry-pull-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    print(f"pull memory benchmark: sizes {sizes}, {args.rows_per_file:,} rows per file; {work}")
    base = sb.base_env(work / "prefect-home", work / "dlt-data")
    moto, endpoint = sb.start_moto(logs / "moto.log", base)
    ways = args.ways.split(",")
    results: dict[str, dict[int, sb.PhaseResult]] = {how: {} for how in ways}
    try:
        sb.make_bucket(endpoint)
        for n in sizes:
            db = work / f"source-{n}.db"
            if not args.direct:
                sb.make_source(db, n)
            jobs = work / f"jobs-{n}.toml"
            jobs.write_text(
                sb.JOBS_TOML.format(
                    job=sb.JOB, db=db, lake=f"s3://{sb.BUCKET}/pull-{n}", table=sb.TABLE
                ).replace('source = "sql_database"', f"rows_per_file = {args.rows_per_file}\n"
                          'source = "sql_database"')
            )
            env = {
                **base,
                "DELTAFERRY_HOME": str(work / f"home-{n}"),
                "AWS_ENDPOINT_URL_S3": endpoint,
                "PYTHONPATH": f"{BENCH}:{sb.ROOT}",
            }
            if args.memory_limit:
                env["DELTAFERRY_DUCKDB_MEMORY_LIMIT"] = args.memory_limit
            if args.direct:
                build = [sys.executable, "-c", BUILD_CHILD, f"s3://{sb.BUCKET}/pull-{n}",
                         sb.JOB, sb.TABLE, str(n), str(args.rows_per_file),
                         str(args.batch_rows or 0)]  # fmt: skip
                sb.run_phase("lake", f"build {n:,}", build, env, work, logs / f"build-{n}.log", n)
            else:
                sync = [sys.executable, str(BENCH / "phase_deltaferry.py"), "--job", sb.JOB,
                        "--config", str(jobs)]  # fmt: skip
                sb.run_phase(
                    "producer", f"sync {n:,}", sync, env, work, logs / f"sync-{n}.log", n
                )
            for how in ways:
                replica = work / f"replica-{n}-{how}.duckdb"
                cmd = [sys.executable, "-c", PULL_CHILD, sb.JOB, str(jobs), str(replica), how]
                results[how][n] = sb.run_phase(
                    how, f"pull {n:,}", cmd, env, work, logs / f"pull-{n}-{how}.log", n
                )
    finally:
        moto.stop()
    lo, hi = sizes[0], sizes[-1]
    print()
    print(f"  {'way':<13} " + "  ".join(f"{n:>12,} rows" for n in sizes) + "   RSS growth")
    summary: dict[str, object] = {"sizes": sizes, "rows_per_file": args.rows_per_file}
    for how, by in results.items():
        cells = "  ".join(f"{by[n].peak_rss_mib:8.0f} MiB {by[n].wall_s:5.1f}s" for n in sizes)
        growth = by[hi].peak_rss_mib / by[lo].peak_rss_mib
        print(f"  {how:<13} {cells}   {growth:.2f}x")
        summary[how] = {n: {"peak_rss_mib": by[n].peak_rss_mib, "wall_s": by[n].wall_s,
                            "rows": by[n].rows} for n in sizes}  # fmt: skip
        summary[f"{how}_growth"] = growth
    if "file-by-file" in results:
        ff = results["file-by-file"]
        flat = ff[hi].peak_rss_mib / ff[lo].peak_rss_mib
        print(f"\n  file-by-file RSS at {hi:,} / at {lo:,} rows: {flat:.2f}x (target <= 1.1)")
        if "whole-batch" in results:
            vs = ff[hi].peak_rss_mib / results["whole-batch"][hi].peak_rss_mib
            print(f"  file-by-file / whole-batch RSS at {hi:,} rows: {vs:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    t = time.perf_counter()
    code = main()
    print(f"  ({time.perf_counter() - t:.0f} s)")
    sys.exit(code)
