"""Throughput of a sync over a link where ~10% of S3 requests fail, against a clean link.

One process, one session: an S3-compatible server (moto) in its own process, a
temporary Prefect API, and the seeded chaos proxy of the test suite between deltaferry
and S3. Each run syncs the same source table into a fresh lake prefix and state dir;
the faulty run cuts ~5% of requests with a TCP reset and answers ~5% with 503 Slow Down.
Afterwards the replica of each run is pulled and compared with the source: zero rows
lost or duplicated is part of the result. Prints seconds, rows/s and the ratio
(target: faulty >= 0.6 x clean).

    .venv/bin/python bench/faults_bench.py [--rows 200000] [--rows-per-file 2000] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_source(path: Path, rows: int) -> None:
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL,"
        " status TEXT NOT NULL, updated_at TIMESTAMP NOT NULL)"
    )
    statuses = ["new", "paid", "shipped", "cancelled"]
    con.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
        (
            (
                i,
                1 + i % 997,
                (i * 37) % 50_000,
                statuses[i % 4],
                f"2026-01-01 00:00:{i % 60:02d}.{i:06d}",
            )
            for i in range(1, rows + 1)
        ),
    )
    con.commit()
    con.close()


JOB = """
[jobs.bench]
source = "sql_database"
url = "sqlite:///{db}"
lake = "s3://{bucket}/{prefix}"
rows_per_file = {rows_per_file}

[[jobs.bench.tables]]
name = "orders"
primary_key = ["id"]
cursor = "updated_at"
contract = "contracts.shop:Orders"
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rows-per-file", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="deltaferry-faults-bench-"))
    os.environ.update(
        PREFECT_HOME=str(work / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="ERROR",
        RUNTIME__LOG_LEVEL="ERROR",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        DELTAFERRY_RETRY_BASE_SECONDS="0.2",
        DELTAFERRY_S3_MAX_ATTEMPTS="5",
        DELTAFERRY_STEP_RETRIES="5",
    )
    import boto3
    from prefect.testing.utilities import prefect_test_harness

    from tests.conftest import free_port, wait_for_port
    from tests.support.chaos import ChaosProxy, FaultPlan

    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="faults-bench")
    db = work / "source.db"
    build_source(db, args.rows)
    print(
        f"faults bench: {args.rows:,} rows, {args.rows_per_file:,} rows per object, seed {args.seed}"
    )

    from deltaferry.compare import compare
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from destinations.lake import open_lake
    from flows.sync import sync_job

    results = {}
    try:
        with prefect_test_harness(server_startup_timeout=120):
            for name, plan in (
                ("clean", FaultPlan()),
                ("10% failing", FaultPlan(request_reset_p=0.05, request_503_p=0.05)),
            ):
                proxy = ChaosProxy(port, args.seed)
                proxy.set_plan(plan)
                os.environ["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{proxy.port}"
                os.environ["DELTAFERRY_HOME"] = str(work / name.replace(" ", "_").replace("%", ""))
                config = work / f"{name[:5]}.toml"
                config.write_text(
                    JOB.format(
                        db=db,
                        bucket="faults-bench",
                        prefix=name[:5],
                        rows_per_file=args.rows_per_file,
                    )
                )
                t0 = time.perf_counter()
                sync_job(job="bench", config=str(config))
                seconds = time.perf_counter() - t0
                proxy.close()
                os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
                job = load_job("bench", config)
                replica = work / f"{name[:5]}-replica.duckdb"
                pull(job, open_lake(job.lake), replica)
                conv = compare(job, replica)[0]
                results[name] = (seconds, proxy.requests, dict(proxy.injected), conv)
                print(
                    f"  {name:12s} {seconds:7.2f} s  {args.rows / seconds:10,.0f} rows/s  requests {proxy.requests:4d}"
                    f"  faults {dict(proxy.injected)}  lost {conv.missing_in_replica}"
                    f"  duplicated {conv.extra_in_replica}"
                )
    finally:
        moto.terminate()
    clean, faulty = results["clean"][0], results["10% failing"][0]
    failed = sum(results["10% failing"][2].values())
    rate = failed / max(results["10% failing"][1], 1)
    ratio = clean / faulty
    print(f"failing requests: {failed} of {results['10% failing'][1]} ({rate:.0%})")
    print(
        f"throughput faulty / clean = {ratio:.2f}  (target >= 0.6: {'PASS' if ratio >= 0.6 else 'MISS'})"
    )
    print(
        f"lost or duplicated rows: {sum(r[3].missing_in_replica + r[3].extra_in_replica for r in results.values())}"
    )


if __name__ == "__main__":
    main()
