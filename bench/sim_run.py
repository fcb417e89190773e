#!/usr/bin/env python
"""The simulator's long run: many seeded histories (``tests/support/sim``) on every core,
and the figures issue 17 asks for, in one report.

Runs seeds ``--base`` .. ``--base + --seeds - 1`` in ``--workers`` processes (default: one
per core), each history exactly as ``tests/test_simulation.py`` runs it, and prints
progress every ``--every`` histories, then: histories, steps (producer runs, pulls),
crashes, invariant checks, failures, the faults injected by kind, the named errors met,
wall time and histories per second. Each failing seed is printed with its replay command
(``DELTAFERRY_SIM_SEED_BASE=<seed> DELTAFERRY_SIM_SEEDS=1 .venv/bin/python -m pytest -m
simulation -s tests/test_simulation.py -k histories``). Exit 1 when any seed fails.

    .venv/bin/python bench/sim_run.py --seeds 1000
    .venv/bin/python bench/sim_run.py --seeds 10000 --base 100000   # the long run

The test command runs the same histories under pytest (``DELTAFERRY_SIM_SEEDS``, default
100); pytest-xdist's workers cannot print one total, this does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(seed: int) -> tuple[int, object]:
    from tests.test_simulation import history

    return seed, history(seed).stats


def _init() -> None:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import tests.test_simulation  # noqa: F401 - imported once per worker, before its first seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1000, help="histories to run")
    parser.add_argument("--base", type=int, default=0, help="the first seed")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--every", type=int, default=100, help="print progress every N histories")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from tests.support.sim.world import Stats

    total = Stats()
    seeds = range(args.base, args.base + args.seeds)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.workers, initializer=_init) as pool:
        for done, (seed, stats) in enumerate(pool.imap_unordered(_run, seeds), start=1):
            total.add(stats)  # type: ignore[arg-type]
            for failure in stats.failures:  # type: ignore[attr-defined]
                print(f"FAILED {failure}\n", flush=True)
            if done % args.every == 0 or done == len(seeds):
                took = time.perf_counter() - start
                print(f"{done}/{len(seeds)} histories, {took:.0f} s, failures {len(total.failures)}", flush=True)
    took = time.perf_counter() - start
    print(f"\nseeds {args.base}..{args.base + args.seeds - 1} on {args.workers} worker(s): {took:.1f} s, "
          f"{args.seeds / took:.2f} histories/s ({took * args.workers / args.seeds:.2f} s a history a worker)")
    print(total.report())
    return 1 if total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
