#!/usr/bin/env python
"""Candidates for a fast initial load from PostgreSQL (issue 16, target 2), measured.

One run:
  1. starts a PostgreSQL server (tests/support/pg.py: initdb into a temp dir, loopback, fsync
     off) and fills an ``orders`` table of --rows rows server-side: bigint key, integer,
     text, numeric(12,2) (negative values, a nullable one), double precision, boolean,
     text and jsonb with NULLs (and JSON ``null`` documents), timestamptz with microseconds,
     a nullable timestamptz; an index on ``updated_at``, VACUUM ANALYZE, one warm-up read;
  2. for each method and round, copies the table into a fresh local DuckDB file in a child
     process (bench/phase_pg_fastpath.py; wall time spawn-to-exit, peak RSS from wait4(2)
     ru_maxrss, as sync_bench.run_phase):
       dlt-pyarrow      dlt sql_table(backend="pyarrow") -> dlt duckdb (the baseline)
       dlt-connectorx   the same, backend="connectorx" (one Arrow table)
       dlt-cx-stream    the same, connectorx return_type="arrow_stream"
       dlt-cx-part2     the same, connectorx partition_on the key, 2 partitions
       scanner          DuckDB's postgres extension from the duckdb-extension-postgres-scanner
                        wheel: ATTACH read-only, CREATE TABLE AS SELECT *
       scanner-1t       the same with threads=1
       scanner-text     the same with pg_use_binary_copy=false
       scanner-staged   scanner writing the rows as deltaferry's staging holds them: jsonb as
                        JSON, plus _dlt_load_id and _df_hash (sources.change_detection's content
                        hash, in UTC); its hashes are compared with deltaferry's staged ones
       scanner-dlt      a dlt resource yielding the scanner's Arrow batches (incremental, merge)
       deltaferry       deltaferry's initial sync of the table (phase_deltaferry.py, lake on
                        moto S3, a Prefect server running)
       deltaferry-scanner  the same with initial_load = "scanner" (sources/sql_database/bulk.py)
  3. checks every result against PostgreSQL: row count, per-column non-NULL counts, exact
     sums of the numeric columns, min/max of the timestamps, and ~314 sampled rows value by
     value (numeric scale, timestamptz instant, JSON document, NULL vs JSON null), and
     records each column's DuckDB type;
  4. prints the medians over --rounds with the 1-minute load average before each phase and
     writes everything to bench/out/pg_fastpath_results.json.

A measurement, not a test: exit status 0 unless a phase fails to run.

    .venv/bin/python bench/pg_fastpath_bench.py                      # 1,000,000 rows, 3 rounds
    .venv/bin/python bench/pg_fastpath_bench.py --rows 20000 --rounds 1
    .venv/bin/python bench/pg_fastpath_bench.py --methods scanner,dlt-pyarrow
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from pg_bench import JOBS_TOML as PG_BENCH_JOBS  # noqa: E402
from sync_bench import (  # noqa: E402
    BUCKET,
    PhaseResult,
    Service,
    base_env,
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
TABLE = "orders"
JOB = "pgfast"
TARGET_ROWS_PER_S = 300_000
METHODS: dict[str, tuple[str, list[str]]] = {
    # name: (description, extra arguments of phase_pg_fastpath.py)
    "dlt-pyarrow": ("dlt sql_table(pyarrow) -> dlt duckdb (baseline)", ["--method", "dlt-pyarrow"]),
    "dlt-connectorx": ("dlt sql_table(connectorx) -> dlt duckdb", ["--method", "dlt-connectorx"]),
    "dlt-cx-stream": (
        "dlt sql_table(connectorx, arrow_stream) -> dlt duckdb",
        ["--method", "dlt-cx-stream"],
    ),
    "dlt-cx-part2": (
        "dlt sql_table(connectorx, 2 partitions on id) -> dlt duckdb",
        ["--method", "dlt-cx-part2"],
    ),
    "scanner": ("DuckDB postgres scanner, CTAS (2 threads)", ["--method", "scanner"]),
    "scanner-1t": ("DuckDB postgres scanner, CTAS, threads=1", ["--method", "scanner",
                                                               "--threads", "1"]),
    "scanner-text": (
        "DuckDB postgres scanner, CTAS, pg_use_binary_copy=false",
        ["--method", "scanner", "--set", "pg_use_binary_copy=false"],
    ),
    "scanner-staged": (
        "DuckDB postgres scanner, CTAS as deltaferry stages (+ _dlt_load_id, _df_hash, JSON)",
        ["--method", "scanner-staged"],
    ),
    "scanner-dlt": (
        "dlt resource over the scanner's Arrow batches -> dlt duckdb",
        ["--method", "scanner-dlt"],
    ),
    "deltaferry": ("deltaferry initial sync (staging + contract + lake)", []),
    "deltaferry-scanner": (
        'deltaferry initial sync with initial_load = "scanner" (its fast path)', []
    ),
}  # fmt: skip
DEFAULT_METHODS = list(METHODS)

SCHEMA = f"""
CREATE TABLE {TABLE} (
    id bigint PRIMARY KEY,
    account_id integer NOT NULL,
    status text NOT NULL,
    amount numeric(12,2) NOT NULL,
    discount numeric(12,2),
    weight double precision,
    paid boolean,
    note text,
    attrs jsonb,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    deleted_at timestamptz
)
"""
# (``%%`` is the modulo operator: psycopg reads ``%`` as the start of a placeholder)
FILL = f"""
INSERT INTO {TABLE}
SELECT g,
       (g * 7919) %% 50000 + 1,
       (ARRAY['new', 'paid', 'shipped', 'returned', 'cancelled'])[(g * 31) %% 5 + 1],
       (((g * 104729) %% 2500000) - 500000)::numeric / 100,
       CASE WHEN g %% 3 = 0 THEN NULL ELSE (g %% 1000)::numeric / 100 END,
       CASE WHEN g %% 11 = 0 THEN NULL ELSE (g %% 9973) / 7.0 END,
       CASE WHEN g %% 5 = 0 THEN NULL ELSE g %% 2 = 0 END,
       CASE WHEN g %% 10 = 0 THEN NULL
            ELSE 'order ' || g || ' of account ' || ((g * 7919) %% 50000 + 1) END,
       CASE WHEN g %% 7 = 0 THEN NULL
            WHEN g %% 7 = 1 THEN 'null'::jsonb
            ELSE jsonb_build_object('k', g %% 13, 'price', 1.10, 'tags',
                                    jsonb_build_array('a', g %% 3)) END,
       %(base)s::timestamptz + g * interval '1.000123 second',
       %(base)s::timestamptz + g * interval '1.000123 second' + interval '5 minutes',
       CASE WHEN g %% 50 = 0 THEN %(base)s::timestamptz + g * interval '2 second' END
FROM generate_series(1::bigint, %(rows)s) AS g
"""
# pg_bench.py's job (cursor updated_at, soft deletes) with this table's contract
JOBS_TOML = PG_BENCH_JOBS.replace("bench_contract:Events", "pgfast_contract:Orders")
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
COLUMNS = ["id", "account_id", "status", "amount", "discount", "weight", "paid", "note", "attrs",
           "created_at", "updated_at", "deleted_at"]  # fmt: skip
NULLABLE = ["discount", "weight", "paid", "note", "attrs", "deleted_at"]
SAMPLE = 300
PACKAGES = ["dlt", "duckdb", "duckdb-extension-postgres-scanner", "connectorx", "pyarrow",
            "sqlalchemy", "psycopg", "prefect", "pandera"]  # fmt: skip


# --- the source -----------------------------------------------------------------


def make_source(server: PostgresServer, rows: int) -> dict[str, Any]:
    with server.connect(DATABASE) as con:
        con.execute(SCHEMA)
        con.execute(FILL, {"base": BASE_TIME, "rows": rows})
        con.execute(f"CREATE INDEX {TABLE}_updated_at ON {TABLE} (updated_at)")
        con.execute(f"VACUUM ANALYZE {TABLE}")
        size = con.execute(f"SELECT pg_total_relation_size('{TABLE}')").fetchone()[0]
    return {"bytes": int(size)}


def warm_source(server: PostgresServer) -> None:
    with server.connect(DATABASE) as con:
        con.execute(f"SELECT sum(length(note)), max(updated_at), count(attrs) FROM {TABLE}")


AGGREGATES = (
    ["count(*)"]
    + [f"count({c})" for c in NULLABLE]
    + ["sum(amount)", "sum(discount)", "min(created_at)", "max(updated_at)", "max(deleted_at)"]
)


def utc(value: datetime) -> datetime:
    """An instant in UTC; a naive value is taken as UTC."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def pg_reference(server: PostgresServer, rows: int, seed: int) -> dict[str, Any]:
    """Aggregates and sampled rows of the source, to compare each result with."""
    rng = random.Random(seed)
    ids = sorted(set(rng.sample(range(1, rows + 1), min(SAMPLE, rows))) | set(range(1, 15)))
    # jsonb as its text: psycopg would parse the JSON null document to None, like SQL NULL
    select = ", ".join("attrs::text" if c == "attrs" else c for c in COLUMNS)
    with server.connect(DATABASE) as con:
        con.execute("SET TimeZone = 'UTC'")
        agg = con.execute(f"SELECT {', '.join(AGGREGATES)} FROM {TABLE}").fetchone()
        sample = con.execute(
            f"SELECT {select} FROM {TABLE} WHERE id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall()
    return {"ids": ids, "aggregates": list(agg), "sample": sample}


# --- checking a result ----------------------------------------------------------


def _duck_compare(col: str, pg: Any, duck: Any) -> str | None:
    """None when ``duck`` holds ``pg``'s value, else what differs."""
    if pg is None or duck is None:
        return None if pg is None and duck is None else f"{pg!r} vs {duck!r}"
    if col == "attrs":  # the same document, numbers compared as written (1.10 stays 1.10)
        if not isinstance(duck, str):
            return f"{pg!r} vs {duck!r} ({type(duck).__name__})"
        same = json.loads(duck, parse_float=str) == json.loads(pg, parse_float=str)
        return None if same else f"{pg!r} vs {duck!r}"
    if isinstance(pg, Decimal):
        if isinstance(duck, Decimal):
            if duck != pg:
                return f"{pg} vs {duck}"
            return (
                None
                if duck.as_tuple().exponent == pg.as_tuple().exponent
                else (f"scale {pg} vs {duck}")
            )
        return f"{pg} vs {duck!r} ({type(duck).__name__})"
    if isinstance(pg, datetime):
        if not isinstance(duck, datetime):
            return f"{pg!r} vs {duck!r}"
        zone = "" if duck.tzinfo else " (naive)"
        return None if utc(duck) == pg else f"{pg.isoformat()} vs {utc(duck).isoformat()}{zone}"
    return None if pg == duck else f"{pg!r} vs {duck!r}"


def staged_select(load_id: str) -> str:
    """The select list over ``pg.public.orders AS c`` that gives deltaferry's staged row: the
    source columns (jsonb as JSON), ``_dlt_load_id`` and the content hash ``_df_hash``
    exactly as ``sources.change_detection.ChangedRows`` computes it (md5 of
    ``content_text`` of the source columns, timestamps printed in UTC)."""
    from sources.change_detection import content_text
    from sources.columns import HASH_COLUMN, LOAD_ID_COLUMN

    return (
        "c.* REPLACE (CAST(c.attrs AS JSON) AS attrs), "
        f"'{load_id}' AS {LOAD_ID_COLUMN}, md5({content_text(COLUMNS)}) AS {HASH_COLUMN}"
    )


def find_table(con: Any) -> str:
    found = con.execute(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = ? "
        "ORDER BY table_schema",
        [TABLE],
    ).fetchall()
    if not found:
        raise LookupError(f"no table {TABLE!r}")
    return f'"{found[0][0]}"."{TABLE}"'


def check_result(path: Path, ref: dict[str, Any]) -> dict[str, Any]:
    """Compare a result's DuckDB file with the source (see the module docstring)."""
    import duckdb

    out: dict[str, Any] = {"path": str(path)}
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        name = find_table(con)
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ? AND table_schema = ? ORDER BY ordinal_position",
                [TABLE, name.split(".")[0].strip('"')],
            ).fetchall()
        )
        out["types"] = types
        out["extra_columns"] = [c for c in types if c not in COLUMNS]
        missing = [c for c in COLUMNS if c not in types]
        out["missing_columns"] = missing
        present = [c for c in COLUMNS if c in types]
        aggs = []
        for a in AGGREGATES:
            col = a[a.index("(") + 1 : -1]
            aggs.append(a if col == "*" or col in types else "NULL")
        got = list(con.execute(f"SELECT {', '.join(aggs)} FROM {name}").fetchone())
        out["rows"] = int(got[0])
        diffs = {}
        for label, want, have in zip(AGGREGATES, ref["aggregates"], got, strict=True):
            if want is None and have is None:
                continue
            if isinstance(want, Decimal) and have is not None and not isinstance(have, Decimal):
                ok = False
            elif isinstance(want, datetime) and isinstance(have, datetime):
                ok = utc(want) == utc(have)
            else:
                ok = want == have
            if not ok:
                diffs[label] = f"{want!r} vs {have!r}"
        out["aggregate_diffs"] = diffs
        rows = con.execute(
            f"SELECT {', '.join(present)} FROM {name} WHERE id IN "
            f"(SELECT unnest(?::BIGINT[])) ORDER BY id",
            [ref["ids"]],
        ).fetchall()
        if "_df_hash" in types:
            out["hashes"] = dict(
                con.execute(
                    f"SELECT id, _df_hash FROM {name} WHERE id IN (SELECT unnest(?::BIGINT[]))",
                    [ref["ids"]],
                ).fetchall()
            )
    finally:
        con.close()
    mismatches: dict[str, list[str]] = {}
    by_id = {r[0]: r for r in rows}
    for pg_row in ref["sample"]:
        duck_row = by_id.get(pg_row[0])
        if duck_row is None:
            mismatches.setdefault("(row missing)", []).append(str(pg_row[0]))
            continue
        for i, col in enumerate(present):
            d = _duck_compare(col, pg_row[COLUMNS.index(col)], duck_row[i])
            if d:
                mismatches.setdefault(col, []).append(f"id {pg_row[0]}: {d}")
    out["sample_rows"] = len(ref["sample"])
    out["sample_mismatches"] = {k: {"count": len(v), "first": v[:3]} for k, v in mismatches.items()}
    return out


def fidelity_line(check: dict[str, Any]) -> str:
    bits = []
    if check.get("missing_columns"):
        bits.append("missing " + ",".join(check["missing_columns"]))
    for k, v in check.get("aggregate_diffs", {}).items():
        bits.append(f"{k}: {v}")
    for k, v in check.get("sample_mismatches", {}).items():
        bits.append(f"{k} x{v['count']} (e.g. {v['first'][0]})")
    return "; ".join(bits) if bits else "exact (count, aggregates, sampled rows)"


# --- the run --------------------------------------------------------------------


def median_of(runs: list[PhaseResult]) -> dict[str, float]:
    def med(attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs))

    return {
        "rounds": len(runs),
        "wall_s": med("wall_s"),
        "work_s": med("work_s"),
        "import_s": med("import_s"),
        "rows_per_s": float(statistics.median(r.rows_per_s for r in runs)),
        "best_rows_per_s": max(r.rows_per_s for r in runs),
        "work_rows_per_s": float(
            statistics.median(r.rows / r.work_s if r.work_s else 0.0 for r in runs)
        ),
        "peak_rss_mib": med("peak_rss_mib"),
        "tree_rss_mib": med("tree_rss_mib"),
        "cpu_s": med("cpu_s"),
        "loadavg": [round(r.loadavg_before, 2) for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from: {', '.join(METHODS)}",
    )
    ap.add_argument("--chunk-size", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs)")
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "pg_fastpath_results.json")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s): {', '.join(unknown)}")
    if args.rows < 100:
        ap.error("--rows must be >= 100")

    work = Path(tempfile.mkdtemp(prefix="deltaferry-pgfast-bench-")).resolve()
    logs = work / "logs"
    logs.mkdir()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tree = source_tree()
    print(
        f"PostgreSQL fast-path candidates: {args.rows:,} rows, {args.rounds} round(s), "
        f"{os.cpu_count()} CPUs; work dir {work}"
    )
    print(code_line(tree))
    base = base_env(work / "prefect-home", work / "dlt-data")
    services: list[Service] = []
    results: dict[str, list[PhaseResult]] = {m: [] for m in methods}
    checks: dict[str, dict[str, Any]] = {}
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
        ref = pg_reference(pg, args.rows, args.seed)
        url = pg.url(DATABASE)
        env_df: dict[str, str] = {}
        if any(m.startswith("deltaferry") for m in methods):
            moto, endpoint = start_moto(logs / "moto.log", base)
            services.append(moto)
            make_bucket(endpoint)
            t = time.perf_counter()
            server, prefect_api = start_prefect_server(
                logs / "prefect-server.log",
                {**base, "PREFECT_HOME": str(work / "prefect-server-home")},
            )
            services.append(server)
            print(f"  services   moto {endpoint}, prefect {prefect_api} "
                  f"(ready in {time.perf_counter() - t:.1f} s)")  # fmt: skip
            env_df = {
                **base,
                "AWS_ENDPOINT_URL_S3": endpoint,
                "PREFECT_API_URL": prefect_api,
                "PREFECT_HOME": str(work / "prefect-client-home"),
                "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)]),
            }
        warm_source(pg)
        for rnd in range(1, args.rounds + 1):
            for m in methods:
                rdir = work / f"r{rnd}-{m}"
                rdir.mkdir()
                if m.startswith("deltaferry"):
                    jobs = rdir / "jobs.toml"
                    text = JOBS_TOML.format(
                        job=JOB, url=url, lake=f"s3://{BUCKET}/r{rnd}-{m}", table=TABLE
                    )
                    if m == "deltaferry-scanner":  # the table's setting, after its cursor
                        text = text.replace(
                            'cursor = "updated_at"\n',
                            'cursor = "updated_at"\ninitial_load = "scanner"\n',
                        )
                        assert "initial_load" in text, text
                    jobs.write_text(text)
                    cmd = [sys.executable, str(BENCH / "phase_deltaferry.py"), "--job", JOB,
                           "--config", str(jobs)]  # fmt: skip
                    env = {**env_df, "DELTAFERRY_HOME": str(rdir / "home")}
                else:
                    cmd = [
                        sys.executable, str(BENCH / "phase_pg_fastpath.py"), *METHODS[m][1],
                        "--url", url, "--table", TABLE, "--cursor", "updated_at",
                        "--primary-key", "id", "--duckdb", str(rdir / "out.duckdb"),
                        "--pipelines-dir", str(rdir / "pipelines"),
                        "--chunk-size", str(args.chunk_size),
                    ]  # fmt: skip
                    if m == "scanner-staged":
                        cmd += ["--select", staged_select(f"{time.time():.6f}")]
                    env = base
                r = run_phase(m, f"round {rnd}", cmd, env, rdir, logs / f"{m}-r{rnd}.log",
                              args.rows)  # fmt: skip
                results[m].append(r)
                if r.returncode != 0:
                    print(f"    {m} failed; see {r.log}")
                    continue
                for line in r.detail.get("initial_load") or []:  # the copy: rows, s, rows/s
                    print(f"    {line}")
                if rnd == 1:
                    if m.startswith("deltaferry"):
                        staged = sorted((rdir / "home").rglob("staging.duckdb"))
                        target = staged[0] if staged else rdir / "missing"
                    else:
                        target = rdir / "out.duckdb"
                    try:
                        checks[m] = check_result(target, ref)
                    except Exception as e:  # noqa: BLE001 - reported, not fatal
                        checks[m] = {"error": f"{type(e).__name__}: {e}"}
                    print(f"    fidelity: {checks[m].get('error') or fidelity_line(checks[m])}")
                if rnd < args.rounds or not args.keep:
                    # the result files of earlier rounds: disk, not needed
                    for f in rdir.rglob("*.duckdb"):
                        if rnd > 1 or not m.startswith("deltaferry"):
                            f.unlink()
    finally:
        for svc in reversed(services):
            svc.stop()
        pg.stop()

    print()
    header = (
        f"{'method':<17}{'rows':>10}{'wall s':>8}{'rows/s':>10}{'best':>10}{'work rows/s':>13}"
        f"{'peak RSS MiB':>14}{'cpu s':>7}  load avg before each round"
    )
    print(header)
    print("-" * len(header))
    summary: dict[str, Any] = {}
    for m in methods:
        ok = [r for r in results[m] if r.returncode == 0]
        if not ok:
            print(f"{m:<17}  failed")
            continue
        s = median_of(ok)
        s["rows"] = ok[0].rows
        s["vs_baseline"] = None
        summary[m] = s
    base_rps = summary.get("dlt-pyarrow", {}).get("rows_per_s")
    for m, s in summary.items():
        if base_rps:
            s["vs_baseline"] = s["rows_per_s"] / base_rps
        print(
            f"{m:<17}{s['rows']:>10,}{s['wall_s']:>8.2f}{s['rows_per_s']:>10,.0f}"
            f"{s['best_rows_per_s']:>10,.0f}"
            f"{s['work_rows_per_s']:>13,.0f}{s['peak_rss_mib']:>14.1f}{s['cpu_s']:>7.1f}  "
            + ", ".join(f"{x:.2f}" for x in s["loadavg"])
        )
    print(
        "medians over the rounds (best: the fastest round) | wall s: child spawn to exit | work rows/s: rows over the "
        f"copy call alone (no interpreter start, imports) | target {TARGET_ROWS_PER_S:,} rows/s"
    )
    for m, s in summary.items():
        verdict = "PASS" if s["rows_per_s"] >= TARGET_ROWS_PER_S else "MISS"
        rel = f", {s['vs_baseline']:.2f}x dlt-pyarrow" if s["vs_baseline"] else ""
        print(f"  {m:<17} {METHODS[m][0]}: {verdict} (wall){rel}")
    df_hashes = checks.get("deltaferry", {}).pop("hashes", None)
    fp_hashes = checks.get("scanner-staged", {}).pop("hashes", None)
    if df_hashes and fp_hashes:
        same = sum(1 for k, v in df_hashes.items() if fp_hashes.get(k) == v)
        checks["scanner-staged"]["hash_vs_deltaferry"] = {"same": same, "sampled": len(df_hashes)}
        print(f"\n_df_hash of scanner-staged = deltaferry's staged _df_hash for {same} of "
              f"{len(df_hashes)} sampled rows")  # fmt: skip
    print("\nfidelity (first round, against PostgreSQL):")
    for m, c in checks.items():
        print(f"  {m:<17} {c.get('error') or fidelity_line(c)}")
        if "types" in c:
            t = ", ".join(f"{k} {v}" for k, v in c["types"].items() if k in COLUMNS)
            print(f"  {'':<17} types: {t}")
            if c["extra_columns"]:
                print(f"  {'':<17} extra columns: {', '.join(c['extra_columns'])}")

    report = {
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": {
            "rows": args.rows,
            "rounds": args.rounds,
            "chunk_size": args.chunk_size,
            "methods": {m: METHODS[m][0] for m in methods},
        },  # fmt: skip
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "env": versions(sys.executable, PACKAGES),
        },
        "deltaferry_code": tree,
        "source": source,
        "summary": summary,
        "phases": {
            m: [{**asdict(r), "rows_per_s": r.rows_per_s} for r in rs] for m, rs in results.items()
        },
        "fidelity": checks,
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
