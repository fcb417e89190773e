"""What a batch that breaks its contract costs the producer's plan step, against a batch
that passes (the baseline), measured in one session.

Each case runs ``deltaferry.delta.build_delta`` (validate, hold back, encode) over ``--rows``
staged rows in chunks of ``--chunk-rows`` in a fresh child process, and reports its wall
time and peak RSS (the child's ``ru_maxrss``, from ``wait4``):

- ``valid``: every row passes (the baseline);
- ``over-threshold``: every row fails one check, ``max_quarantine_ratio`` 5%: the batch is
  refused with ``ContractViolation`` (the common case: a source starts sending bad values);
- ``all-held``: the same rows with ``max_quarantine_ratio`` 1.0: every row is held back
  and gets a quarantine record;
- ``drift-held``: every row has a value in a column the contract does not know, under the
  ``quarantine`` drift policy: every row held back with a record.

``--before DIR`` runs the same cases with the code of another checkout too (for example a
``git worktree`` of an earlier commit) and prints its figures beside this one's::

    .venv/bin/python bench/failing_batch_bench.py                      # 1,000,000 rows
    .venv/bin/python bench/failing_batch_bench.py --rows 200000        # quicker
    git worktree add /tmp/before a9dcda7
    .venv/bin/python bench/failing_batch_bench.py --before /tmp/before

It is a measurement, not a test: it exits 0 whatever the figures (non-zero only when a
case did not run as described).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandera.pandas as pa
from pandera.typing import Series

ROOT = Path(__file__).resolve().parents[1]
CASES = ("valid", "over-threshold", "all-held", "drift-held")


class Events(pa.DataFrameModel):
    """The contract of every case: four checks a real contract has."""

    id: Series[int] = pa.Field(ge=1)
    account_id: Series[int] = pa.Field(ge=1)
    amount_cents: Series[int] = pa.Field(ge=0)
    kind: Series[str] = pa.Field(isin=["click", "view", "purchase"])
    note: Series[str] = pa.Field(nullable=True)

    class Config:
        coerce = True


def child(case: str, rows: int, chunk_rows: int) -> None:
    """One case, in this process: prints one JSON line."""
    import dataclasses

    import numpy as np
    import pyarrow

    from contracts import Contract
    from deltaferry.config import JobConfig, TableConfig
    from deltaferry.delta import build_delta
    from deltaferry.errors import ContractViolation

    t = TableConfig("events", ("id",), None, "none", "bench:Events")
    job = JobConfig("bench", "sql_database", "sqlite://", "file:lake", (t,))
    job = dataclasses.replace(job, max_quarantine_ratio=1.0 if case == "all-held" else 0.05)

    class Cut:
        limit = rows  # as deltaferry.cut.Changes: the most rows the cut yields

        def __iter__(self):
            for start in range(0, rows, chunk_rows):
                n = min(chunk_rows, rows - start)
                ids = np.arange(start + 1, start + n + 1)
                data = {
                    "id": ids,
                    "account_id": ids % 997 + 1,
                    "amount_cents": -ids if case in ("over-threshold", "all-held") else ids,
                    "kind": pyarrow.array(["click", "view", "purchase"] * (n // 3) + ["view"] * (n % 3)),
                    "note": pyarrow.array([f"note {i % 100}" for i in range(n)]),
                    "_op": pyarrow.array(["upsert"] * n),
                    "_dlt_load_id": pyarrow.array(["1.1"] * n),
                }
                if case == "drift-held":
                    data["extra"] = ids
                yield pyarrow.table(data)

    held = {"extra": "column extra is not in contract v1"} if case == "drift-held" else None
    t0 = time.perf_counter()
    try:
        delta = build_delta(job, t, Contract("events", Events), Cut(), ["1.1"], 1, held=held)
        outcome = {"parts": len(delta.parts), "records": len(delta.quarantine)}
    except ContractViolation as e:
        outcome = {"refused": str(e)[:100]}
    print(json.dumps({"case": case, "seconds": time.perf_counter() - t0, **outcome}))


def run_case(code: Path, case: str, rows: int, chunk_rows: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, __file__, "--child", case, "--rows", str(rows), "--chunk-rows", str(chunk_rows)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=code, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    if status != 0 or not out.strip():
        raise SystemExit(f"case {case} with code {code} failed (status {status})")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall": wall, "peak_mib": usage.ru_maxrss / 1024}


def expected(case: str, r: dict, rows: int) -> bool:
    if case == "valid":
        return r.get("records") == 0
    if case == "over-threshold":
        return "refused" in r
    return r.get("records") == rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--chunk-rows", type=int, default=500_000, help="rows_per_file (default 500,000)")
    ap.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rows, args.chunk_rows)
        return
    codes = [("this", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    print(f"failing batch bench: {args.rows:,} rows in chunks of {args.chunk_rows:,}; 2 CPUs load {os.getloadavg()[0]:.2f}")
    results: dict[str, dict[str, dict]] = {}
    bad = []
    for label, code in codes:
        for case in CASES:
            r = run_case(code, case, args.rows, args.chunk_rows)
            results.setdefault(case, {})[label] = r
            if not expected(case, r, args.rows):
                bad.append(f"{label} {case}: {r}")
    head = f"{'case':<16}" + "".join(
        f"{label + ' plan s':>14}{'x valid':>9}{label + ' peak MiB':>16}{'x valid':>9}" for label, _ in codes
    )
    print(head)
    print("-" * len(head))
    for case in CASES:
        line = f"{case:<16}"
        for label, _ in codes:
            r, base = results[case][label], results["valid"][label]
            line += f"{r['seconds']:>14.2f}{r['seconds'] / base['seconds']:>8.1f}x"
            line += f"{r['peak_mib']:>16.0f}{r['peak_mib'] / base['peak_mib']:>8.2f}x"
        print(line)
    print(
        "(plan s: build_delta's time in the child; peak MiB: the child's peak RSS, imports\n"
        " included; x valid: over the valid batch's, same code)"
    )
    if bad:
        raise SystemExit("cases that did not run as described:\n" + "\n".join(bad))


if __name__ == "__main__":
    main()
