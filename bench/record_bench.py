"""What an incremental run of a record source (``sources.load.extract_records``: the
scaffolded sources; the REST API source's change filter is the same) costs as the staged
table grows, measured in one session.

For each size N (``--sizes``) a child process stages N records of a generated source
(cursor ``at``: the records of one thousand ids share a value); then, each in a fresh
child, the extract again with nothing changed (``no change``: the records at the cursor's
boundary are read again) and after ``--change-rows`` records changed (``change``: they
get a newer cursor value). Each child reports its wall time and peak RSS (``ru_maxrss``
from ``wait4``). No lake, no Prefect: the source's step alone.

``--before DIR`` runs the same with the code of another checkout (a ``git worktree``)
beside this one's::

    .venv/bin/python bench/record_bench.py                            # 200k and 1M records
    git worktree add /tmp/before 12567c4
    .venv/bin/python bench/record_bench.py --before /tmp/before

A measurement, not a test: exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import run  # noqa: E402 - bench/child.py, beside this file

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = "tests.support.contracts_sqltypes:Loose"  # any contract: the step does not check


def records(n: int, changed: int) -> Iterator[dict[str, Any]]:
    """The source: ids 1..n; the last ``changed`` ids edited, with a newer cursor value."""
    for i in range(1, n + 1):
        edited = i > n - changed
        yield {
            "id": i,
            "name": f"name {i}" + (" (edited)" if edited else ""),
            "amount": i % 5000 / 10,
            "note": None if i % 3 else f"note {i}",
            "at": n // 1000 + 1 if edited else i // 1000,
        }


def child(config: str, n: int, changed: int) -> None:
    """One extract of job ``rec`` in this process: prints one JSON line."""
    from deltaferry.config import load_job
    from sources.load import extract_records

    def read(job: Any, t: Any, since: Any) -> Iterator[dict[str, Any]]:
        for r in records(n, changed):
            if since is None or r["at"] >= since:
                yield r

    job = load_job("rec", config)
    t0 = time.perf_counter()
    result = extract_records(job, read)
    print(json.dumps({"s": time.perf_counter() - t0, "rows": result.rows_by_table.get("things", 0)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200000,1000000", help="staged records, comma-separated")
    ap.add_argument("--change-rows", type=int, default=10_000)
    ap.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    ap.add_argument(
        "--first-limit", help="DELTAFERRY_DUCKDB_MEMORY_LIMIT of the first load only (default: "
        "the default limit; code before f6d1d40 needs about 1GB for 1M records)",
    )
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    codes = [("this", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    print(f"{'code':<7} {'staged':>10} {'step':<10} {'rows':>9} {'wall s':>7} {'peak MiB':>9}")
    me = str(Path(__file__).resolve())
    for n in [int(s) for s in args.sizes.split(",")]:
        for name, code in codes:
            with tempfile.TemporaryDirectory(prefix="df-record-bench-") as tmp:
                work = Path(tmp)
                (work / "jobs.toml").write_text(
                    f'[jobs.rec]\nsource = "sql_database"\nurl = "sqlite:///{work}/unused.db"\n'
                    f'lake = "file://{work / "lake"}"\n\n[[jobs.rec.tables]]\nname = "things"\n'
                    f'primary_key = ["id"]\ncursor = "at"\ncontract = "{CONTRACT}"\n'
                )
                env = {"DELTAFERRY_HOME": str(work / "home"), "DLT_DATA_DIR": str(work / "dlt")}
                for step, changed in [("first load", 0), ("no change", 0), ("change", args.change_rows)]:
                    limit = {"DELTAFERRY_DUCKDB_MEMORY_LIMIT": args.first_limit}
                    extra = limit if step == "first load" and args.first_limit else {}
                    r = run(
                        [me, "--child", str(work / "jobs.toml"), str(n), str(changed)],
                        code, {**env, **extra},
                    )
                    rows = r.get("rows", "-")
                    print(
                        f"{name:<7} {n:>10,} {step:<10} {rows!s:>9} {r['wall_s']:>7.2f}"
                        f" {r['peak_rss_mib']:>9.0f}" + (f"  {r['error']}" if "error" in r else ""),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
