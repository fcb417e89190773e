#!/usr/bin/env python
"""Listing cost: reads that should follow what is new, on a chain of 10 and of 10,000 batches.

One run, for each --batches size (default 10 and 10,000):
  1. builds a chain of that many one-row batches of bench/sync_bench.py's ``events`` table
     directly through the lake store API (``bench/lake_build.py``) on moto's S3-compatible
     server on loopback;
  2. times, in this process (median of --repeat):
     - ``pull`` of a replica already at the head (nothing new): ``deltaferry.replica.pull``;
     - incremental ``verify`` from that position (``verify_table(after=head)``);
     - the producer's lake-head check (``agreement.check_lake`` at a checkpoint at the head);
     - a chain-head read from a known position (``verify.head_batch(at_least=head)``, what
       another producer's head read and ``check_position`` use);
     - for comparison, the same head read listing the whole chain (``agreement.chain_head``,
       what every read cost before ``StartAfter``), a full ``verify`` (every batch, by
       design) and ``gc --dry-run`` (every object, by design), once each;
  3. prints each time per size, the ListObjectsV2 requests and keys listed by one run of
     it (counted on the S3 client: what the read costs against S3), and the time ratio
     largest / smallest. moto filters every key of the bucket on each request, so on moto
     even a one-key listing grows with the bucket; requests and keys are the measure that
     carries over to S3 (target: the same for 10 and 10,000 batches).

A measurement, not a test: exit 0 whether targets are met or not.

    .venv/bin/python bench/listing_bench.py
    .venv/bin/python bench/listing_bench.py --batches 10,500      # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import lake_build  # noqa: E402
import sync_bench as sb  # noqa: E402

JOB, TABLE = "bench", "events"


def _job(lake_url: str):  # noqa: ANN202
    from deltaferry.job import JobConfig, TableConfig

    table = TableConfig(
        name=TABLE, primary_key=("id",), cursor="updated_at", deletes="none",
        contract=lake_build.CONTRACT,
    )  # fmt: skip
    return JobConfig(name=JOB, source="sql_database", url="", lake=lake_url, tables=(table,))


def _replica_at(path: Path, batch: int, sha: str) -> None:
    """A replica whose record says it applied ``batch`` (its manifest ``sha``)."""
    import duckdb

    from deltaferry.replica import _META

    con = duckdb.connect(str(path))
    con.execute(_META)
    con.execute(
        "INSERT INTO _deltaferry_batches (job, tbl, batch, manifest_sha256, rows) "
        "VALUES (?, ?, ?, ?, 1)",
        [JOB, TABLE, batch, sha],
    )
    con.close()


class Requests:
    """ListObjectsV2 requests the S3 client sends, and the keys they return (botocore's
    ``after-call`` event): what a read costs against S3, whatever the server."""

    def __init__(self, lake: object) -> None:
        self.calls = self.keys = 0
        client = lake._client  # type: ignore[attr-defined]
        client.meta.events.register("after-call.s3.ListObjectsV2", self._count)

    def _count(self, parsed: dict, **_: object) -> None:
        self.calls += 1
        self.keys += int(parsed.get("KeyCount", 0))


def _timed(fn: Callable[[], object], repeat: int, requests: Requests) -> tuple[float, int, int]:
    """Median seconds of ``repeat`` runs, and the listing requests and keys of one."""
    times = []
    for _ in range(repeat):
        before = (requests.calls, requests.keys)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        calls, keys = requests.calls - before[0], requests.keys - before[1]
    return statistics.median(times), calls, keys


def measure(
    n: int, endpoint: str, work: Path, repeat: int, full: bool
) -> dict[str, tuple[float, int, int]]:
    from deltaferry.agreement import chain_head, check_lake
    from deltaferry.checkpoints import Checkpoint
    from deltaferry.gc import collect
    from deltaferry.replica import pull
    from deltaferry.verify import head_batch, verify_table
    from destinations.lake import open_lake

    url = f"s3://{sb.BUCKET}/listing-{n}"
    lake = open_lake(url)
    t0 = time.perf_counter()
    head, sha = lake_build.build_chain(lake, JOB, TABLE, n)
    print(f"  {n:>6,} batches built in {time.perf_counter() - t0:.1f} s", flush=True)
    job = _job(url)
    replica = work / f"replica-{n}.duckdb"
    _replica_at(replica, head, sha)
    ckpt = Checkpoint(head, sha, n)
    req = Requests(lake)
    out = {
        "pull, nothing new": _timed(lambda: pull(job, lake, replica), repeat, req),
        "verify after the position": _timed(
            lambda: verify_table(lake, JOB, TABLE, after=head, prev_sha256=sha), repeat, req
        ),
        "lake-head check (producer)": _timed(
            lambda: check_lake(lake, JOB, TABLE, ckpt, None), repeat, req
        ),
        "head read from a position": _timed(
            lambda: head_batch(lake, JOB, TABLE, at_least=head), repeat, req
        ),
        "head read, whole listing": _timed(lambda: chain_head(lake, JOB, TABLE), repeat, req),
    }
    if full:
        out["full verify (every batch)"] = _timed(lambda: verify_table(lake, JOB, TABLE), 1, req)
        out["gc --dry-run (every object)"] = _timed(
            lambda: collect(job, lake, dry_run=True), 1, req
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", default="10,10000", help="chain lengths, comma separated")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-full", action="store_true", help="skip full verify and gc")
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "listing_results.json")
    args = ap.parse_args(argv)
    sizes = sorted(int(x) for x in args.batches.split(","))
    work = Path(tempfile.mkdtemp(prefix="deltaferry-listing-bench-"))
    base = sb.base_env(work / "prefect-home", work / "dlt-data")
    moto, endpoint = sb.start_moto(work / "moto.log", base)
    os.environ.update(
        {k: v for k, v in base.items() if k.startswith("AWS_")} | {"AWS_ENDPOINT_URL_S3": endpoint}
    )
    for k in [k for k in os.environ if k.startswith("DELTAFERRY_")]:
        del os.environ[k]
    os.environ["DELTAFERRY_HOME"] = str(work / "home")
    results: dict[int, dict[str, tuple[float, int, int]]] = {}
    try:
        sb.make_bucket(endpoint)
        print(f"listing benchmark: chains of {sizes} batches, median of {args.repeat}")
        for n in sizes:
            results[n] = measure(n, endpoint, work, args.repeat, not args.no_full)
    finally:
        moto.stop()
    lo, hi = sizes[0], sizes[-1]
    print()
    print(f"  {'read':<28} " + "  ".join(f"{n:>22,} batches" for n in sizes) + "   ratio")
    for what in results[lo]:
        cells = "  ".join(
            f"{results[n][what][0] * 1000:>9.1f} ms {results[n][what][1]:>3} req {results[n][what][2]:>5} keys"
            for n in sizes
        )
        print(f"  {what:<28} {cells}   {results[hi][what][0] / results[lo][what][0]:7.2f}x")
    print(
        "\n  req/keys: ListObjectsV2 requests and keys listed by one run. moto filters every key "
        "of the bucket on each request, so its time grows with the bucket even when a request "
        "returns one key; S3 lists from StartAfter in its index"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({str(n): r for n, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
