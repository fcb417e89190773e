"""What a several-producer replica (``deltaferry/merge.py``) needs in memory as its table
grows, measured in one session.

For each table size N (``--sizes``) a child process applies N rows keyed by 32-character
text (md5, the shape of a UUID-like key) from producer ``north`` into a new replica, in
batches of ``--batch-rows`` (as ``pull`` applies a split initial load); then, for each memory limit (``--limits``, ``DELTAFERRY_DUCKDB_MEMORY_LIMIT``), a
fresh child applies a change of ``--change-rows`` existing keys from producer ``south`` to a
copy of that file. Each child reports its wall time and peak RSS (``ru_maxrss``, from
``wait4``), or the one-line error it stopped with (DuckDB's out-of-memory error).

``--before DIR`` runs the same with the code of another checkout (a ``git worktree`` of an
earlier commit) and prints its figures beside this one's::

    .venv/bin/python bench/merge_memory_bench.py                          # 1M and 2M rows
    .venv/bin/python bench/merge_memory_bench.py --sizes 5000000 --limits 256MB
    git worktree add /tmp/before 7f73e73
    .venv/bin/python bench/merge_memory_bench.py --before /tmp/before

A measurement, not a test: exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import run  # noqa: E402 - bench/child.py, beside this file

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, path: str, n: int, k: int, batch_rows: int) -> None:
    """One step in this process (``first`` or ``change``): prints one JSON line."""
    import hashlib
    import resource

    import numpy as np
    import pyarrow as pa

    from deltaferry import duck, merge, merge_tables

    def rows(ids: np.ndarray, tag: str) -> pa.Table:
        return pa.table(
            {
                "id": pa.array([hashlib.md5(str(i).encode()).hexdigest() for i in ids]),
                "name": pa.array([f"{tag}-{i}" for i in ids]),
                "amount_cents": pa.array((ids * 37) % 50_000, pa.int64()),
                "_op": pa.array(["upsert"] * len(ids)),
                "_seq": pa.array(np.arange(len(ids)), pa.int64()),
            }
        )

    shape = merge_tables.TableShape("bench", "events", ["id"])
    t0 = time.perf_counter()
    out: dict[str, object] = {}
    try:
        con = duck.connect(path)
        if mode == "first":  # the table in batches of batch_rows new keys, as a split load
            con.execute(merge_tables.META)
            for number, start in enumerate(range(0, n, batch_rows), 1):
                out["batches"] = number
                data = rows(np.arange(start, min(n, start + batch_rows)), "a")
                merge.apply_batch(con, shape, "north", number, 1_000 + number, data)
        else:
            changed = np.random.default_rng(n).choice(np.arange(n), size=k, replace=False)
            merge.apply_batch(con, shape, "south", 1, 1_000_000, rows(np.sort(changed), "b"))
        con.close()
    except Exception as e:  # noqa: BLE001 - the figure is the error
        at = f"batch {out['batches']}: " if mode == "first" else ""
        out["error"] = f"{at}{type(e).__name__}: {str(e).splitlines()[0]}"[:160]
    out["s"] = time.perf_counter() - t0
    out["self_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(
    code: Path, mode: str, path: Path, n: int, k: int, limit: str, batch_rows: int
) -> dict:
    me = str(Path(__file__).resolve())
    args = [me, "--child", mode, str(path), str(n), str(k), str(batch_rows)]
    return run(args, code, {"DELTAFERRY_DUCKDB_MEMORY_LIMIT": limit})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,2000000", help="table sizes, comma-separated")
    ap.add_argument("--change-rows", type=int, default=10_000)
    ap.add_argument("--limits", default="256MB,64MB", help="memory limits of the change, comma-separated")
    ap.add_argument("--first-limit", default="256MB", help="memory limit of the first batch")
    ap.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    ap.add_argument(
        "--batch-rows", type=int, default=1_000_000,
        help="rows of each first batch (the producer's max_batch_rows: a split initial load)",
    )
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, path, n, k, batch_rows = args.child
        child(mode, path, int(n), int(k), int(batch_rows))
        return
    codes = [("this", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    sizes = [int(s) for s in args.sizes.split(",")]
    limits = args.limits.split(",")
    print(f"{'code':<7} {'rows':>10} {'step':<30} {'wall s':>7} {'peak MiB':>9}  result")
    for n in sizes:
        for name, code in codes:
            with tempfile.TemporaryDirectory(prefix="df-merge-mem-") as tmp:
                base = Path(tmp) / "base.duckdb"
                r = run_child(code, "first", base, n, 0, args.first_limit, args.batch_rows)
                step = f"{-(-n // args.batch_rows)} first batch(es) at {args.first_limit}"
                print(
                    f"{name:<7} {n:>10,} {step:<30} {r['wall_s']:>7.2f} {r['peak_rss_mib']:>9.0f}"
                    f"  {r.get('error', 'applied')}"
                )
                if "error" in r:
                    continue
                for limit in limits:
                    copy = Path(tmp) / f"change-{limit}.duckdb"
                    shutil.copy(base, copy)
                    r = run_child(code, "change", copy, n, args.change_rows, limit, 0)
                    step = f"change of {args.change_rows:,} at {limit}"
                    print(
                        f"{name:<7} {n:>10,} {step:<30} {r['wall_s']:>7.2f}"
                        f" {r['peak_rss_mib']:>9.0f}  {r.get('error', 'applied')}"
                    )
                    copy.unlink()


if __name__ == "__main__":
    main()
