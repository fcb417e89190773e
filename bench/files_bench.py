"""What a files-source run (``sources/files``) costs as the staged table grows, when the
run has nothing new or one small new file, measured in one session.

For each size N (``--sizes``) a folder gets one Parquet drop of N rows and a child process
runs the source's extract (``sources.files.extract``: list, read, the newest-file rule,
the change filter, dlt's load into staging) to stage it; then, each in a fresh child,
the extract again with no new file (``no new file``), after a drop of ``--change-rows``
rows, half of them new keys (``small drop``), and after the first drop is touched
(``touched``: nothing is staged again, every key's staged file time is raised). Each child reports its wall time and peak
RSS (``ru_maxrss`` from ``wait4``). No lake, no Prefect: the source's step alone.

``--before DIR`` runs the same with the code of another checkout (a ``git worktree``)
beside this one's::

    .venv/bin/python bench/files_bench.py                             # 200k and 2M rows
    git worktree add /tmp/before 13cb918
    .venv/bin/python bench/files_bench.py --before /tmp/before

A measurement, not a test: exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import run  # noqa: E402 - bench/child.py, beside this file

ROOT = Path(__file__).resolve().parents[1]

# the table's contract: the files source's test contract (the repository's own)
CONTRACT = "tests.support.contracts_files:Orders"


def drop(path: Path, start: int, n: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.arange(start, start + n)
    pq.write_table(
        pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "customer": pa.array([f"c{i % 1000}" for i in ids]),
                "amount": pa.array((ids % 5000) / 10.0),
                "placed_at": pa.array(
                    [dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)] * n, pa.timestamp("us", "UTC")
                ),
                "note": pa.array([None] * n, pa.string()),
            }
        ),
        path,
    )


def make_drop(path: Path, start: int, n: int) -> None:
    """``drop`` in a child process: Linux keeps a process's peak RSS across ``exec``, so a
    child forked from a parent that built N rows would report the parent's peak as its own."""
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--drop", str(path), str(start), str(n)],
        check=True,
    )


def child(config: str) -> None:
    """One extract of job ``drops`` in this process: prints one JSON line."""
    from deltaferry.config import load_job
    from sources.files import extract

    job = load_job("drops", config)
    t0 = time.perf_counter()
    result = extract(job)
    print(json.dumps({"s": time.perf_counter() - t0, "rows": result.rows_by_table.get("orders", 0)}))


def run_child(code: Path, work: Path) -> dict:
    env = {
        "PYTHONPATH": str(work),
        "DELTAFERRY_HOME": str(work / "home"),
        "DLT_DATA_DIR": str(work / "dlt"),
    }
    return run([str(Path(__file__).resolve()), "--child", str(work / "jobs.toml")], code, env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200000,2000000", help="staged rows, comma-separated")
    ap.add_argument("--change-rows", type=int, default=100)
    ap.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--drop", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    if args.drop:
        drop(Path(args.drop[0]), int(args.drop[1]), int(args.drop[2]))
        return
    codes = [("this", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    print(f"{'code':<7} {'staged':>10} {'step':<14} {'rows':>9} {'wall s':>7} {'peak MiB':>9}")
    for n in [int(s) for s in args.sizes.split(",")]:
        for name, code in codes:
            with tempfile.TemporaryDirectory(prefix="df-files-bench-") as tmp:
                work = Path(tmp)
                (work / "drops" / "orders").mkdir(parents=True)
                (work / "jobs.toml").write_text(
                    f'[jobs.drops]\nsource = "files"\nurl = "{work / "drops"}"\n'
                    f'lake = "file://{work / "lake"}"\n\n[[jobs.drops.tables]]\nname = "orders"\n'
                    f'primary_key = "id"\ncontract = "{CONTRACT}"\n'
                )
                make_drop(work / "drops" / "orders" / "orders-0001.parquet", 1, n)
                steps = [("first load", None), ("no new file", None)]
                steps.append(("small drop", (n - args.change_rows // 2 + 1, args.change_rows)))
                steps.append(("touched", None))
                for step, new in steps:
                    if new is not None:
                        time.sleep(1.1)  # a later modification time than the first drop
                        make_drop(work / "drops" / "orders" / "orders-0002.parquet", *new)
                    if step == "touched":  # the first drop again, newer: every key's time raised
                        os.utime(work / "drops" / "orders" / "orders-0001.parquet")
                    r = run_child(code, work)
                    rows = r.get("rows", "-")
                    print(
                        f"{name:<7} {n:>10,} {step:<14} {rows!s:>9} {r['wall_s']:>7.2f}"
                        f" {r['peak_rss_mib']:>9.0f}" + (f"  {r['error']}" if "error" in r else "")
                    )


if __name__ == "__main__":
    main()
