#!/usr/bin/env python
"""deltaferry vs. dlt's own sql_database -> DuckDB pipeline, from a real PostgreSQL table.

One run:
  1. starts a PostgreSQL server (tests/support/pg.py: initdb into a temp dir, loopback, fsync off)
     and fills an ``events`` table with --rows rows server-side (INSERT ... SELECT FROM
     generate_series), plus an index on ``updated_at``;
  2. starts moto's S3-compatible server in its own process on loopback, makes a bucket, and
     with --prefect server a Prefect API server in its own process;
  3. deltaferry initial sync (dlt -> DuckDB staging -> pandera -> Parquet + manifest -> S3);
  4. the baseline's initial load: dlt ``sql_table`` (pyarrow backend, incremental on
     ``updated_at``, merge on ``id``) -> dlt's ``duckdb`` destination, a local file;
  5. changes --change of the rows in one transaction (half updated with a newer updated_at,
     half soft-deleted through ``deleted_at``), the same rows sync_bench.py changes;
  6. deltaferry incremental sync, then the baseline's incremental load (same pipelines dir);
  7. prints wall time, rows/s and peak RSS per phase, the ratios against their targets, and
     writes everything to bench/out/pg_results.json.

Phases run as child processes and are measured as in sync_bench.py (whose helpers this
imports): wall time spawn-to-exit, peak RSS from wait4(2) ru_maxrss. PostgreSQL, moto and
the Prefect server are not counted against either contender (they share the CPUs). It is
a measurement, not a test: exit status 0 whether the targets are met or not (non-zero only
if a phase fails to run).

    /work/venv/bin/python bench/pg_bench.py                 # 1,000,000 rows
    /work/venv/bin/python bench/pg_bench.py --rows 20000    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# bench/ for sync_bench's helpers, the repo root for tests.support.pg (the test suite's server)
sys.path[:0] = [str(BENCH), str(ROOT)]

from sync_bench import (  # noqa: E402
    BUCKET,
    JOB,
    KINDS,
    TABLE,
    VARIANTS,
    PhaseResult,
    Service,
    base_env,
    bucket_usage,
    code_line,
    free_port,
    make_bucket,
    run_phase,
    source_tree,
    start_moto,
    start_prefect_server,
    versions,
)

from tests.support.pg import PostgresServer  # noqa: E402

DATABASE = "bench"
BASELINE = "dlt-duckdb"
TARGETS = {
    # name: (description, comparison, target)
    "initial_throughput_vs_dlt": (
        "deltaferry initial rows/s / dlt->DuckDB initial rows/s",
        ">=",
        0.8,
    ),
    "incremental_vs_initial": ("deltaferry incremental wall / deltaferry initial wall", "<=", 0.05),
}
# The table of the brief; the rows are sync_bench.py's (same ids, kinds, amounts, notes,
# one second apart), with timestamptz instead of SQLite's naive TIMESTAMP.
SCHEMA = f"""
CREATE TABLE {TABLE} (
    id bigint PRIMARY KEY,
    account_id integer,
    kind text,
    amount_cents integer,
    note text,
    updated_at timestamptz NOT NULL,
    deleted_at timestamptz
)
"""
# (``%%`` is the modulo operator: psycopg reads ``%`` as the start of a placeholder)
FILL = f"""
INSERT INTO {TABLE}
SELECT g,
       (g * 7919) %% 50000 + 1,
       (%(kinds)s::text[])[(g * 31) %% 5 + 1],
       (g * 104729) %% 250000,
       CASE WHEN g %% 10 = 0 THEN NULL
            ELSE 'event ' || g || ' of account ' || ((g * 7919) %% 50000 + 1) END,
       %(base)s::timestamptz + g * interval '1 second',
       NULL
FROM generate_series(1::bigint, %(rows)s) AS g
"""
# the same job as sync_bench.py's, with the PostgreSQL url
JOBS_TOML = """\
# Written by bench/pg_bench.py
[jobs.{job}]
source = "sql_database"
url = "{url}"
lake = "{lake}"

[[jobs.{job}.tables]]
name = "{table}"
primary_key = ["id"]
cursor = "updated_at"
deletes = "soft:deleted_at"
contract = "bench_contract:Events"
"""
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
# versions recorded in the results
PACKAGES = ["dlt", "duckdb", "pandera", "pandas", "pyarrow", "prefect", "boto3", "moto",
            "sqlalchemy", "psycopg"]  # fmt: skip


# --- the source -----------------------------------------------------------------


def make_source(server: PostgresServer, rows: int) -> dict[str, Any]:
    """``rows`` events, ids 1..rows, updated_at one second apart, built inside the server."""
    with server.connect(DATABASE) as con:
        con.execute(SCHEMA)
        con.execute(FILL, {"kinds": KINDS, "base": BASE_TIME, "rows": rows})
        con.execute(f"CREATE INDEX {TABLE}_updated_at ON {TABLE} (updated_at)")
        # statistics and the visibility map now, not by autovacuum during a phase
        con.execute(f"VACUUM ANALYZE {TABLE}")
        size = con.execute(f"SELECT pg_total_relation_size('{TABLE}')").fetchone()[0]
    return {"bytes": int(size)}


def warm_source(server: PostgresServer) -> None:
    """Read the whole table once so that neither contender pays for a cold cache."""
    with server.connect(DATABASE) as con:
        con.execute(f"SELECT sum(length(note)), max(updated_at) FROM {TABLE}").fetchone()


def change_source(server: PostgresServer, rows: int, fraction: float, seed: int) -> dict[str, int]:
    """Change ``fraction`` of the rows in one transaction: half updated, half soft-deleted;
    all get a newer updated_at. Same ids and values as sync_bench.change_source."""
    n = max(2, int(rows * fraction))
    rng = random.Random(seed)
    ids = rng.sample(range(1, rows + 1), n)
    updated, deleted = ids[: n // 2], ids[n // 2 :]
    clock = BASE_TIME + timedelta(seconds=rows + 60)
    kinds, amounts, notes, upd_ts = [], [], [], []
    for k, i in enumerate(updated):
        kinds.append(KINDS[rng.randrange(5)])
        amounts.append(rng.randint(0, 250_000))
        notes.append(f"updated {i}")
        upd_ts.append(clock + timedelta(milliseconds=k))
    clock += timedelta(seconds=len(updated))
    del_ts = [clock + timedelta(milliseconds=k) for k in range(len(deleted))]
    with server.connect(DATABASE) as con, con.transaction():
        # one statement per kind of change, the rows passed as arrays
        con.execute(
            f"UPDATE {TABLE} AS e SET kind = c.kind, amount_cents = c.amount, note = c.note, "
            "updated_at = c.ts FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], "
            "%s::timestamptz[]) AS c(id, kind, amount, note, ts) WHERE e.id = c.id",
            (updated, kinds, amounts, notes, upd_ts),
        )
        con.execute(
            f"UPDATE {TABLE} AS e SET deleted_at = c.ts, updated_at = c.ts "
            "FROM unnest(%s::bigint[], %s::timestamptz[]) AS c(id, ts) WHERE e.id = c.id",
            (deleted, del_ts),
        )
    return {"updated": len(updated), "soft_deleted": len(deleted), "changed": n}


def baseline_counts(path: Path) -> tuple[int, int]:
    """(rows, soft-deleted rows) in the baseline's DuckDB file."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        n, deleted = con.execute(
            f"SELECT count(*), count(deleted_at) FROM bench.{TABLE}"
        ).fetchone()
    finally:
        con.close()
    return int(n), int(deleted)


# --- the report -----------------------------------------------------------------


def ratio_line(name: str, value: float | None) -> tuple[str, bool | None]:
    desc, op, target = TARGETS[name]
    if value is None:
        return f"  {desc:<58} {'n/a':>8}   target {op} {target:<5} n/a", None
    ok = value >= target if op == ">=" else value <= target
    verdict = "PASS" if ok else "MISS"
    return f"  {desc:<58} {value:8.3f}   target {op} {target:<5} {verdict}", ok


def safe(a: float, b: float) -> float | None:
    return a / b if b else None


def compute_ratios(df: dict[str, PhaseResult], dd: dict[str, PhaseResult]) -> dict[str, Any]:
    dfi, dfc, ddi, ddc = df["initial"], df["incremental"], dd["initial"], dd["incremental"]
    primary = {
        "initial_throughput_vs_dlt": safe(dfi.rows_per_s, ddi.rows_per_s),
        "incremental_vs_initial": safe(dfc.wall_s, dfi.wall_s),
    }
    reference = {
        "dlt_incremental_vs_initial": safe(ddc.wall_s, ddi.wall_s),
        "initial_throughput_vs_dlt_work_only": safe(
            safe(dfi.rows, dfi.work_s) or 0.0, safe(ddi.rows, ddi.work_s) or 0.0
        ),
        "incremental_vs_initial_work_only": safe(dfc.work_s, dfi.work_s),
        "dlt_incremental_vs_initial_work_only": safe(ddc.work_s, ddi.work_s),
        "peak_rss_vs_dlt": safe(
            max(dfi.peak_rss_mib, dfc.peak_rss_mib), max(ddi.peak_rss_mib, ddc.peak_rss_mib)
        ),
    }
    if "no-change" in df and "no-change" in dd:
        # the cost of the change itself: the incremental run minus a run with nothing to do,
        # against the initial run minus the same fixed cost
        dfn, ddn = df["no-change"].wall_s, dd["no-change"].wall_s
        reference["change_cost_vs_initial"] = safe(dfc.wall_s - dfn, dfi.wall_s - dfn)
        reference["dlt_change_cost_vs_initial"] = safe(ddc.wall_s - ddn, ddi.wall_s - ddn)
        reference["no_change_run_s"] = dfn
        reference["dlt_no_change_run_s"] = ddn
    return {"ratios": primary, "reference": reference}


REFERENCE_LABELS = {
    "dlt_incremental_vs_initial": "dlt->DuckDB incremental wall / its initial wall",
    "initial_throughput_vs_dlt_work_only": "initial throughput ratio, sync call only",
    "incremental_vs_initial_work_only": "deltaferry incremental / initial, sync call only",
    "dlt_incremental_vs_initial_work_only": "dlt->DuckDB incremental / initial, sync call only",
    "peak_rss_vs_dlt": "deltaferry peak RSS / dlt->DuckDB peak RSS",
    "change_cost_vs_initial": "deltaferry (incremental - no-change) / (initial - no-change)",
    "dlt_change_cost_vs_initial": "dlt->DuckDB (incremental - no-change) / (initial - no-change)",
    "no_change_run_s": "deltaferry run with nothing to publish, wall s",
    "dlt_no_change_run_s": "dlt->DuckDB run with nothing to load, wall s",
}


# --- the run --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the source table")
    ap.add_argument("--change", type=float, default=0.01, help="fraction of rows changed")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--prefect",
        choices=["ephemeral", "server"],
        default="server",
        help="how deltaferry reaches a Prefect API: a server started beforehand (default, as in "
        "a deployment) or its ephemeral one (the default of `deltaferry run`)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs)")
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "pg_results.json")
    args = ap.parse_args(argv)
    if args.rows < 100:
        ap.error("--rows must be >= 100")

    work = Path(tempfile.mkdtemp(prefix="deltaferry-pg-bench-")).resolve()
    logs = work / "logs"
    logs.mkdir()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    variant = "deltaferry" if args.prefect == "ephemeral" else "df+server"
    contenders = [variant, BASELINE]
    tree = source_tree()
    print(
        f"deltaferry PostgreSQL benchmark: {args.rows:,} rows, {args.change:.1%} change, "
        f"{os.cpu_count()} CPUs, {VARIANTS[variant]}; work dir {work}"
    )
    print(code_line(tree))

    base = base_env(work / "prefect-home", work / "dlt-data")
    services: list[Service] = []
    results: list[PhaseResult] = []
    by: dict[str, dict[str, PhaseResult]] = {name: {} for name in contenders}
    checks: dict[str, Any] = {}
    service_rss: dict[str, float] = {}
    change: dict[str, int] = {}
    pg = PostgresServer(free_port())
    try:
        t = time.perf_counter()
        pg.start()
        pg.create_database(DATABASE)
        source = make_source(pg, args.rows)
        source["build_s"] = time.perf_counter() - t
        print(
            f"  source     PostgreSQL on port {pg.port}: {args.rows:,} rows in "
            f"{source['build_s']:.1f} s ({source['bytes'] / 2**20:.0f} MiB with indexes)"
        )
        moto, endpoint = start_moto(logs / "moto.log", base)
        services.append(moto)
        make_bucket(endpoint)
        print(f"  moto S3    {endpoint}")
        env_df = {
            **base,
            "DELTAFERRY_HOME": str(work / "home-deltaferry"),
            "AWS_ENDPOINT_URL_S3": endpoint,
            "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)]),  # bench_contract
        }
        if variant == "df+server":
            t = time.perf_counter()
            server, prefect_api = start_prefect_server(
                logs / "prefect-server.log",
                {**base, "PREFECT_HOME": str(work / "prefect-server-home")},
            )
            services.append(server)
            print(f"  prefect    {prefect_api} (ready in {time.perf_counter() - t:.1f} s)")
            env_df["PREFECT_API_URL"] = prefect_api
            env_df["PREFECT_HOME"] = str(work / "prefect-client-home")

        url = pg.url(DATABASE)
        jobs = work / "jobs.toml"
        jobs.write_text(
            JOBS_TOML.format(job=JOB, url=url, lake=f"s3://{BUCKET}/deltaferry", table=TABLE)
        )
        dlt_db = work / "dlt-duckdb.duckdb"
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            variant: (
                [sys.executable, str(BENCH / "phase_deltaferry.py"), "--job", JOB,
                 "--config", str(jobs)],
                env_df,
            ),
            BASELINE: (
                [sys.executable, str(BENCH / "phase_dlt_duckdb.py"), "--url", url,
                 "--table", TABLE, "--cursor", "updated_at", "--primary-key", "id",
                 "--duckdb", str(dlt_db), "--pipelines-dir", str(work / "dlt-pipelines")],
                base,
            ),
        }  # fmt: skip

        def phase(contender: str, name: str, expected: int) -> PhaseResult:
            cmd, env = commands[contender]
            log = logs / f"{contender.replace('+', '-')}-{name}.log"
            r = run_phase(contender, name, cmd, env, work, log, expected)
            results.append(r)
            by[contender][name] = r
            if r.returncode != 0 or (r.rows == 0 and expected):
                raise SystemExit(f"phase {contender} {name} failed; see {r.log}")
            return r

        warm_source(pg)
        for name in contenders:
            phase(name, "initial", args.rows)
        checks["baseline_after_initial"] = baseline_counts(dlt_db)
        t = time.perf_counter()
        change = change_source(pg, args.rows, args.change, args.seed)
        print(
            f"  change     {change['updated']:,} updated + {change['soft_deleted']:,} "
            f"soft-deleted in {time.perf_counter() - t:.1f} s"
        )
        for name in contenders:
            phase(name, "incremental", change["changed"])
        # nothing changed since: what a run costs whatever the change (imports, orchestration,
        # reading the cursor); the change's own cost is what the incremental run adds to it
        for name in contenders:
            phase(name, "no-change", 0)
        checks["baseline_after_incremental"] = baseline_counts(dlt_db)
        objects, size = bucket_usage(endpoint, "deltaferry/")
        staging = sorted((work / "home-deltaferry").rglob("staging.duckdb"))
        checks["sizes_mib"] = {
            "deltaferry lake": size / 2**20,
            "deltaferry staging.duckdb": sum(p.stat().st_size for p in staging) / 2**20,
            "dlt->DuckDB file": dlt_db.stat().st_size / 2**20,
        }
        checks["lake_objects"] = objects
        service_rss = {svc.name: svc.rss_mib() for svc in services}
    finally:
        for svc in reversed(services):
            svc.stop()
        pg.stop()

    print()
    header = (
        f"{'contender':<11}{'phase':<13}{'rows':>10}{'wall s':>9}{'rows/s':>10}"
        f"{'peak RSS MiB':>14}{'tree RSS MiB':>14}{'work s':>9}{'import s':>10}{'cpu s':>8}"
    )
    print(header)
    print("-" * len(header))
    phases = ("initial", "incremental", "no-change")
    for r in [by[name][ph] for ph in phases for name in contenders if ph in by[name]]:
        flag = "" if r.rows == r.expected_rows else f"  (expected {r.expected_rows:,})"
        print(
            f"{r.contender:<11}{r.phase:<13}{r.rows:>10,}{r.wall_s:>9.2f}{r.rows_per_s:>10,.0f}"
            f"{r.peak_rss_mib:>14.1f}{r.tree_rss_mib:>14.1f}{r.work_s:>9.2f}{r.import_s:>10.2f}"
            f"{r.cpu_s:>8.1f}{flag}"
        )
    print(
        "wall s: child spawn to exit | work s: the sync call inside the child | peak RSS: the "
        "child's ru_maxrss (wait4) | tree RSS: sampled sum over the child's process tree | "
        "cpu s: user+sys of the child and its descendants"
    )
    for r in by[variant].values():
        steps = r.detail.get("steps") or {}
        if steps:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
            print(
                f"{variant} {r.phase} steps (s): {parts}; outside the steps (Prefect, setup) "
                f"{r.work_s - sum(steps.values()):.2f}"
            )
    for name in contenders:
        for r in by[name].values():
            dsteps = r.detail.get("dlt_steps") or {}
            if dsteps:
                parts = ", ".join(f"{k} {v:.2f}" for k, v in dsteps.items())
                print(f"{name} {r.phase} dlt pipeline steps (s): {parts}")
    (n0, _), (n1, d1) = checks["baseline_after_initial"], checks["baseline_after_incremental"]
    print(
        f"dlt->DuckDB table: {n0:,} rows after the initial load, {n1:,} rows ({d1:,} soft-deleted) "
        f"after the incremental one"
        + ("" if (n0, n1, d1) == (args.rows, args.rows, change["soft_deleted"]) else "  UNEXPECTED")
    )
    print(
        "sizes: "
        + "; ".join(f"{k} {v:.1f} MiB" for k, v in checks["sizes_mib"].items())
        + f" ({checks['lake_objects']} objects); services RSS: "
        + ", ".join(f"{k} {v:.0f} MiB" for k, v in service_rss.items())
    )

    rr = compute_ratios(by[variant], by[BASELINE])
    print(f"\nratios, {VARIANTS[variant]}:")
    verdicts: dict[str, bool | None] = {}
    for key, value in rr["ratios"].items():
        line, ok = ratio_line(key, value)
        verdicts[key] = ok
        print(line)
    for key, value in rr["reference"].items():
        shown = f"{value:8.3f}" if value is not None else f"{'n/a':>8}"
        print(f"  ({REFERENCE_LABELS[key]:<56} {shown})")
    print(f"  ({'change fraction, for reference':<56} {args.change:8.3f})")
    met = [k for k, ok in verdicts.items() if ok]
    missed = [k for k, ok in verdicts.items() if ok is False]
    print(
        f"{variant}: {len(met)} of {len(verdicts)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )

    report = {
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": {
            "rows": args.rows,
            "change_fraction": args.change,
            "change": change,
            "seed": args.seed,
            "deletes": "soft:deleted_at",
            "source": "postgresql (tests/support/pg.py, loopback, fsync off)",
            "s3": "moto server (own process, loopback)",
            "prefect": args.prefect,
            "variant": VARIANTS[variant],
            "baseline": "dlt sql_table(pyarrow, incremental updated_at, merge on id) -> duckdb",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "env": versions(sys.executable, PACKAGES),
        },
        "deltaferry_code": tree,
        "source": source,
        "phases": [{**asdict(r), "rows_per_s": r.rows_per_s} for r in results],
        "checks": checks,
        "services_rss_mib": service_rss,
        "ratios": rr["ratios"],
        "ratios_reference": rr["reference"],
        "targets": {n: {"desc": d, "op": op, "target": tv} for n, (d, op, tv) in TARGETS.items()},
        "met": verdicts,
    }
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results: {args.out}")

    if args.keep:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
