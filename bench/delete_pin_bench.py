"""Deleted rows pin DuckDB memory (issue 16): a scattered DELETE against the memory limit.

DuckDB marks each deleted row with the deleting transaction's id, in memory its buffer
manager cannot evict or spill (16 KiB for each 2,048-row vector that holds a deleted row),
from the DELETE - or, once written to the file, from the first read of the row group -
until the database is closed. An incremental sync deletes the changed keys' old rows,
scattered over the table: dlt's merge into staging, and ``replica_apply.merge_rows`` in a
replica. This bench shows the fault and deltaferry's answer (``duck.fitted_limit``: the
configured limit plus ``duck.PINNED_BYTES_PER_ROW`` bytes for every stored row), with
DuckDB alone, no deltaferry code on the measured path:

For each --rows size it builds a table (``k BIGINT, v BIGINT, s VARCHAR``) in a DuckDB file
once, then for each limit (the configured one, and fitted) copies the file and, in a child
process (a fresh DuckDB instance), opens it at that limit and

  1. deletes --keys keys spread evenly over the table (``k % (rows / keys) = 0``),
  2. checkpoints and closes, opens again at the same limit and reads ``count(*)``
     (the persisted marks are read back, and pinned again; after a delete that failed,
     the delete is made at the fitted limit first),
  3. updates the same keys instead, in a fresh copy (what a merge by UPDATE would cost).

Prints, per size and limit, each step's outcome (seconds, or the out-of-memory error) and
DuckDB's own memory use after it (``duckdb_memory()``, MiB), and the bytes pinned per
stored row. Exit 0 whether steps pass or not: a measurement, not a test.

    .venv/bin/python bench/delete_pin_bench.py                         # 2M and 10M rows, 64MB
    .venv/bin/python bench/delete_pin_bench.py --rows 50000000 --keys 100000 --limit 256MB
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(path: Path, rows: int) -> None:
    import duckdb

    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE t AS SELECT i AS k, i * 7 AS v, 'row ' || i::VARCHAR AS s FROM range(?) r(i)",
        [rows],
    )
    con.execute("CHECKPOINT")
    con.close()


def child(path: str, limit: str, step: str, rows: int, keys: int) -> dict:
    """One step at ``limit`` in this (child) process: outcome, seconds, DuckDB MiB after."""
    import duckdb

    con = duckdb.connect(path)
    con.execute(f"SET memory_limit = '{limit}'")
    every = max(rows // keys, 1)
    sql = {
        "delete": f"DELETE FROM t WHERE k % {every} = 0",
        "update": f"UPDATE t SET v = v + 1, s = s || '+' WHERE k % {every} = 0",
        "count": "SELECT count(*) FROM t",
    }[step]
    t0 = time.perf_counter()
    try:
        con.execute(sql).fetchall()
        if step != "count":
            con.execute("CHECKPOINT")
        out = {"ok": True, "seconds": round(time.perf_counter() - t0, 2)}
    except duckdb.OutOfMemoryException as e:
        text = str(e).splitlines()[0]
        out = {"ok": False, "error": text[text.find("(") :] if "(" in text else text}
    used = con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()
    out["duckdb_mib"] = round((used[0] or 0) / 2**20, 1)
    con.close()
    return out


def run_child(path: Path, limit: str, step: str, rows: int, keys: int) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import delete_pin_bench as b; "
        "print(json.dumps(b.child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "bench"), str(path), limit, step, str(rows), str(keys)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        return {"ok": False, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "crashed"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def fitted(limit: str, rows: int) -> str:
    sys.path.insert(0, str(ROOT))
    from deltaferry import duck

    base = duck.size_bytes(limit)
    if base is None:
        raise SystemExit(f"--limit {limit!r} is not a DuckDB memory size (256MB, 2GiB)")
    return f"{base + duck.PINNED_BYTES_PER_ROW * rows}B"


def show(outcome: dict) -> str:
    if outcome["ok"]:
        return f"{outcome['seconds']:.2f} s, {outcome['duckdb_mib']} MiB"
    return f"OUT OF MEMORY {outcome.get('error', '')}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="2000000,10000000", help="table sizes, comma separated")
    ap.add_argument("--keys", type=int, default=10_000, help="keys deleted, spread over the table")
    ap.add_argument("--limit", default="64MB", help="the configured memory limit (DuckDB syntax)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="delete_pin_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for rows in (int(x) for x in a.rows.split(",")):
            src = work / f"t{rows}.duckdb"
            t0 = time.perf_counter()
            build(src, rows)
            print(f"\n{rows:,} rows ({src.stat().st_size / 2**20:.0f} MiB file, built in "
                  f"{time.perf_counter() - t0:.1f} s), {a.keys:,} keys spread over them")
            roomy = fitted(a.limit, rows)
            for name, limit in (("configured", a.limit), ("fitted", roomy)):
                trial = work / "trial.duckdb"
                shutil.copy(src, trial)
                deleted = run_child(trial, limit, "delete", rows, a.keys)
                if not deleted["ok"]:  # delete with room, to read the persisted marks back
                    shutil.copy(src, trial)
                    run_child(trial, roomy, "delete", rows, a.keys)
                counted = run_child(trial, limit, "count", rows, a.keys)
                shutil.copy(src, trial)
                updated = run_child(trial, limit, "update", rows, a.keys)
                trial.unlink()
                shown = limit if name == "configured" else f"{int(limit[:-1]) / 2**20:.0f} MiB"
                print(f"  {name:10} limit {shown:>9}: delete {show(deleted)}")
                print(f"  {'':10} {'':15}  count(*) after reopening {show(counted)}")
                print(f"  {'':10} {'':15}  update instead {show(updated)}")
                results.append({"rows": rows, "keys": a.keys, "limit": limit, "kind": name,
                                "delete": deleted, "count": counted, "update": updated})
                if deleted["ok"] and name == "fitted":
                    pinned = deleted["duckdb_mib"] * 2**20 / rows
                    print(f"  {'':10} {'':15}  DuckDB memory after the delete: {pinned:.1f} B a stored row")
            src.unlink()
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
