"""What merging several producers costs a reader, against the single-producer apply.

For each table size N it builds two replicas (DuckDB files) holding the same N rows:
one applied the single-producer way (``replica._apply``: newer ``_seq`` wins), one the
multi-producer way (``merge.apply_batch``: every version kept, winners and conflict
records recomputed for the keys a batch touches). Then it applies the same small
incremental batch (``--change-rows``, default 10,000, the same for every N; half of it
updates keys another producer wrote, so it records conflicts) to both and reports the
time of each and the ratio. The last line compares the incremental cost at the largest
N with the smallest: a sync whose cost grows with the change, not the table, keeps that
near 1.

    .venv/bin/python bench/merge_bench.py                      # N = 100,000 and 1,000,000
    .venv/bin/python bench/merge_bench.py --sizes 20000 --repeat 1   # smoke test

It prints numbers; it is not a test and exits 0 whether they are good or bad.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from deltaferry import duck, merge, merge_tables  # noqa: E402
from deltaferry.replica import _META, _apply  # noqa: E402


def rows(ids: np.ndarray, seq0: int, tag: str) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([f"{tag}-{i}" for i in ids]),
            "amount_cents": pa.array((ids * 37) % 50_000, pa.int64()),
            "_op": pa.array(["upsert"] * n),
            "_seq": pa.array(np.arange(seq0, seq0 + n), pa.int64()),
        }
    )


def one(n: int, k: int, workdir: Path) -> dict[str, float]:
    base = rows(np.arange(1, n + 1), 1, "a")
    rng = np.random.default_rng(n)
    touched = rng.choice(np.arange(1, n + 1), size=k // 2, replace=False)
    new = np.arange(n + 1, n + 1 + (k - len(touched)))
    incr = rows(np.sort(np.concatenate([touched, new])), n + 1, "b")
    out: dict[str, float] = {}

    single = duck.connect(workdir / f"single-{n}.duckdb")
    single.execute(_META)
    t0 = time.perf_counter()
    _apply(single, "bench", "events", ["id"], 1, None, "x" * 64, base)
    out["single initial"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _apply(single, "bench", "events", ["id"], 2, None, "y" * 64, incr)
    out["single incremental"] = time.perf_counter() - t0
    single.close()

    multi = duck.connect(workdir / f"multi-{n}.duckdb")
    multi.execute(merge_tables.META)
    shape = merge_tables.TableShape("bench", "events", ["id"])
    t0 = time.perf_counter()
    merge.apply_batch(multi, shape, "north", 1, 1000, base)
    out["multi initial"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    merge.apply_batch(multi, shape, "south", 1, 2000, incr)
    out["multi incremental"] = time.perf_counter() - t0
    out["conflicts"] = multi.execute("SELECT count(*) FROM _deltaferry_conflicts").fetchone()[0]
    out["changed rows"] = incr.num_rows
    multi.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="table sizes, comma-separated")
    ap.add_argument("--change-rows", type=int, default=10_000, help="rows of the incremental batch")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, float]] = {}
    for n in sizes:
        rounds = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="deltaferry-merge-bench-") as tmp:
                rounds.append(one(n, min(args.change_rows, n), Path(tmp)))
        results[n] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(
        f"{'N':>10} {'changed':>8} {'phase':<12} {'single s':>9} {'multi s':>9} {'multi/single':>12}"
    )
    for n, r in results.items():
        for phase in ("initial", "incremental"):
            s, m = r[f"single {phase}"], r[f"multi {phase}"]
            print(
                f"{n:>10,} {int(r['changed rows']):>8,} {phase:<12} {s:>9.3f} {m:>9.3f} {m / s:>12.2f}"
            )
        print(
            f"{'':>10} {'':>8} conflicts recorded by the incremental batch: {int(r['conflicts']):,}"
        )
    if len(sizes) > 1:
        lo, hi = results[sizes[0]], results[sizes[-1]]
        growth = hi["multi incremental"] / lo["multi incremental"]
        single_growth = hi["single incremental"] / lo["single incremental"]
        print(
            f"same change, table x{sizes[-1] / sizes[0]:.0f} larger: incremental time "
            f"x{growth:.2f} (multi), x{single_growth:.2f} (single)"
        )


if __name__ == "__main__":
    main()
