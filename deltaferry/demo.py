"""``deltaferry demo``: the whole path, end to end, in under a minute.

A seeded shop database is changed over several rounds; after each round the
``shop`` job syncs it (dlt -> DuckDB staging -> pandera -> Parquet + manifest ->
S3 through boto3) and a replica is pulled and compared with the source.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from deltaferry.config import deltaferry_home
from deltaferry.errors import ConfigError
from deltaferry.settings import from_env


def ensure_bucket(bucket: str) -> None:
    import boto3
    from botocore.exceptions import ClientError

    from destinations.s3 import s3_client_config

    s3 = boto3.client("s3", config=s3_client_config())
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)


def start_local_s3() -> subprocess.Popen[bytes]:
    """Start moto's S3-compatible server on loopback, in its own process, and point boto3 at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise ConfigError("could not start the local S3-compatible server (moto)") from None
            time.sleep(0.1)
    os.environ["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{port}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "deltaferry-demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "deltaferry-demo")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return proc


def run_demo(rounds: int, seed: int, workdir: Path | None, console: Console) -> bool:
    """Run the demo; True when source and replica converge after the last round."""
    from deltaferry.compare import compare
    from deltaferry.config import load_job
    from deltaferry.replica import pull
    from deltaferry.shop import JOBS_TOML, Shop
    from destinations.lake import open_lake

    t_start = time.perf_counter()
    work = (workdir or deltaferry_home() / "demo").resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    os.environ["DELTAFERRY_HOME"] = str(work / "state")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    server = None
    if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        server = start_local_s3()
        console.print(f"started S3-compatible server (moto) at {os.environ['AWS_ENDPOINT_URL_S3']}")
    bucket = from_env().demo_bucket
    ensure_bucket(bucket)
    prefix = f"demo-{int(time.time())}"
    config = work / "deltaferry.toml"
    config.write_text(JOBS_TOML.format(db=work / "shop.db", lake=f"s3://{bucket}/{prefix}"))
    replica = work / "replica.duckdb"
    console.print(f"demo directory {work}; lake s3://{bucket}/{prefix}; seed {seed}")

    from deltaferry.cli_common import prefect_startup_wait
    from flows.sync import sync_job

    shop = Shop(work / "shop.db", seed)
    job = load_job("shop", config)
    lake = open_lake(job.lake)
    ok = False
    try:
        for r in range(1, rounds + 1):
            first = r == 1
            invalid = 3 if r == 2 and rounds > 2 else 0
            stats = shop.round(
                300 if first else 40,
                1000 if first else 120,
                churn=0 if first else 0.08,
                invalid=invalid,
            )
            with console.status(f"round {r}: syncing ..."), prefect_startup_wait():
                summary = sync_job(job="shop", config=str(config))
                pull(job, lake, replica)
                conv = compare(job, replica)
            table = Table(
                "table",
                "src +/~/-",
                "batch",
                "sent",
                "quar.",
                "src rows",
                "replica",
                "held",
                "equal",
                title=f"round {r}: + inserted, ~ updated, - deleted at the source; quar. = quarantined",
            )
            for c in conv:
                s = summary["tables"].get(c.table, {})
                table.add_row(
                    c.table,
                    f"{stats.inserted[c.table]}/{stats.updated[c.table]}/{stats.deleted[c.table]}",
                    str(s.get("batch") or "-"),
                    str(s.get("rows", 0)),
                    str(s.get("quarantined", 0)),
                    str(c.source_rows),
                    str(c.replica_rows),
                    str(c.quarantined_keys),
                    "[green]yes[/]" if c.equal else "[red]NO[/]",
                )
            console.print(table)
            ok = all(c.equal for c in conv)
            if not ok:
                console.print("[red]source and replica differ[/]")
                return False
        final = compare(job, replica)
        held = sum(c.quarantined_keys for c in final)
        ok = all(c.equal for c in final) and held == 0
        console.print(
            f"[bold {'green' if ok else 'red'}]{'converged' if ok else 'NOT converged'}[/]: "
            f"{sum(c.source_rows for c in final)} live source rows, {sum(c.replica_rows for c in final)} replica rows, "
            f"{held} held back; {time.perf_counter() - t_start:.1f}s"
        )
        cli = Path(sys.executable).parent / "deltaferry"
        console.print(
            f"inspect: DELTAFERRY_HOME={work / 'state'} {cli} status --config {config}",
            highlight=False,
            soft_wrap=True,
        )
        return ok
    finally:
        shop.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
