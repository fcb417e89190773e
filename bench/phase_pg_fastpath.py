"""Child process of bench/pg_fastpath_bench.py: one candidate way to copy a PostgreSQL
table into a local DuckDB file. Imports nothing from deltaferry. Prints one
``BENCH_RESULT {json}`` line.

Methods (--method):
  dlt-pyarrow        dlt ``sql_table(backend="pyarrow")``, incremental on the cursor, merge on the
                     key -> dlt's ``duckdb`` destination (the baseline of issue 16, as
                     phase_dlt_duckdb.py)
  dlt-connectorx     the same with ``backend="connectorx"`` (dlt's default for it: the whole
                     table as one Arrow table, binary protocol)
  dlt-cx-stream      the same with connectorx's ``return_type="arrow_stream"`` (batches of
                     --chunk-size rows)
  dlt-cx-part2       dlt-connectorx reading in two partitions of the key, in parallel
  scanner            DuckDB's postgres extension (the duckdb-extension-postgres-scanner wheel,
                     LOADed from its file, no autoinstall/autoload): ATTACH the database
                     read-only, ``CREATE TABLE ... AS SELECT * FROM pg.public.<table>``
  scanner-staged     the same with --select as the select list over ``pg.public.<table> AS c``
                     (the parent passes the columns of deltaferry's staging: ``_dlt_load_id``
                     and ``_df_hash``), in a session whose TimeZone is UTC
  scanner-dlt        a dlt resource that yields Arrow batches read through the scanner, with
                     ``dlt.sources.incremental`` on the cursor and merge on the key -> dlt's
                     ``duckdb`` destination (dlt keeps the incremental state as it does for
                     sql_table)

    python bench/phase_pg_fastpath.py --method scanner --url URL --table orders \
        --cursor updated_at --primary-key id --duckdb OUT.duckdb --pipelines-dir DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

DATASET = "bench"
NO_AUTOLOAD = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def libpq_dsn(url: str) -> str:
    """``postgresql+psycopg://u:p@h:port/db`` -> ``host=h port=port user=u password=p dbname=db``."""
    u = urlsplit(url)
    parts = {
        "host": u.hostname,
        "port": u.port,
        "user": unquote(u.username or ""),
        "password": unquote(u.password or ""),
        "dbname": u.path.lstrip("/"),
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v not in (None, ""))


def scanner_extension() -> Path:
    """The postgres_scanner binary the wheel ships for this DuckDB version."""
    import duckdb
    import duckdb_extension_postgres_scanner as package

    root = Path(package.__file__).parent / "extensions"
    found = sorted(root.glob(f"v{duckdb.__version__}/postgres_scanner.duckdb_extension"))
    if not found:
        raise SystemExit(f"no postgres_scanner extension for DuckDB {duckdb.__version__} in {root}")
    return found[0]


def scanner_connection(path: str | None, url: str, threads: int | None, settings: list[str]):
    """A DuckDB connection with the extension loaded from its file and the source attached
    read-only as ``pg``."""
    import duckdb

    config: dict[str, Any] = dict(NO_AUTOLOAD)
    if threads:
        config["threads"] = threads
    con = duckdb.connect(path or ":memory:", config=config)
    con.execute(f"LOAD '{scanner_extension()}'")
    for s in settings:
        con.execute(f"SET {s}")
    dsn = libpq_dsn(url).replace("'", "''")
    con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")
    return con


def run_scanner(args: argparse.Namespace) -> dict[str, Any]:
    con = scanner_connection(args.duckdb, args.url, args.threads, args.set)
    try:
        con.execute("SET TimeZone = 'UTC'")  # how timestamps print, so hash
        con.execute(f"CREATE SCHEMA {DATASET}")
        con.execute(
            f"CREATE TABLE {DATASET}.{args.table} AS SELECT {args.select} "
            f"FROM pg.public.{args.table} AS c"
        )
        rows = con.execute(f"SELECT count(*) FROM {DATASET}.{args.table}").fetchone()[0]
        current = dict(
            con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN ('threads', "
                "'pg_use_binary_copy', 'pg_use_ctid_scan', 'pg_pages_per_task', "
                "'pg_connection_limit', 'pg_use_text_protocol')"
            ).fetchall()
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return {"rows": int(rows), "settings": current}


def run_dlt(args: argparse.Namespace) -> dict[str, Any]:
    import dlt

    pipeline = dlt.pipeline(
        pipeline_name="pg_fastpath",
        pipelines_dir=args.pipelines_dir,
        destination=dlt.destinations.duckdb(args.duckdb),
        dataset_name=DATASET,
    )
    if args.method == "scanner-dlt":
        data = scanner_resource(args)
    else:
        from dlt.sources.sql_database import sql_table

        backend = "pyarrow" if args.method == "dlt-pyarrow" else "connectorx"
        kwargs: dict[str, Any] = {}
        if args.method == "dlt-cx-part2":
            kwargs["backend_kwargs"] = {"partition_on": args.primary_key, "partition_num": 2}
        if args.method == "dlt-cx-stream":
            kwargs["backend_kwargs"] = {
                "return_type": "arrow_stream",
                "batch_size": args.chunk_size,
            }
        data = sql_table(
            credentials=args.url,
            table=args.table,
            backend=backend,
            chunk_size=args.chunk_size,
            incremental=dlt.sources.incremental(args.cursor),
            write_disposition="merge",
            primary_key=args.primary_key,
            **kwargs,
        )
    info = pipeline.run(data)
    trace = pipeline.last_trace
    norm = trace.last_normalize_info if trace else None
    counts = dict(norm.row_counts) if norm else {}
    state = pipeline.state.get("sources", {})
    return {
        "rows": int(counts.get(args.table, 0)),
        "load_ids": list(info.loads_ids),
        "row_counts": counts,
        "dlt_steps": {
            s.step: (s.finished_at - s.started_at).total_seconds()
            for s in (trace.steps if trace else [])
            if s.finished_at and s.step in ("extract", "normalize", "load")
        },
        "incremental_state": _incremental_state(state),
    }


def _incremental_state(sources: dict[str, Any]) -> dict[str, Any]:
    """The cursor's last_value per resource, as dlt stored it after the load."""
    out: dict[str, Any] = {}
    for src in sources.values():
        for name, res in (src.get("resources") or {}).items():
            for cursor, inc in (res.get("incremental") or {}).items():
                out[f"{name}.{cursor}"] = {
                    "last_value": str(inc.get("last_value")),
                    "unique_hashes": len(inc.get("unique_hashes") or []),
                }
    return out


def scanner_resource(args: argparse.Namespace) -> Any:
    """dlt resource over the scanner: Arrow record batches of --chunk-size rows."""
    import dlt

    @dlt.resource(name=args.table, primary_key=args.primary_key, write_disposition="merge")
    def rows(cursor: Any = dlt.sources.incremental(args.cursor)) -> Any:
        import pyarrow as pa

        con = scanner_connection(None, args.url, args.threads, args.set)
        try:
            where = ""
            if cursor.start_value is not None:
                where = f" WHERE {args.cursor} >= $1"
            query = f"SELECT * FROM pg.public.{args.table}{where}"
            params = [cursor.start_value] if where else []
            reader = con.execute(query, params).fetch_record_batch(args.chunk_size)
            for batch in reader:
                yield pa.Table.from_batches([batch])
        finally:
            con.close()

    return rows()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--method",
        required=True,
        choices=["dlt-pyarrow", "dlt-connectorx", "dlt-cx-stream", "dlt-cx-part2", "scanner",
                 "scanner-staged", "scanner-dlt"],
    )  # fmt: skip
    ap.add_argument("--url", required=True, help="SQLAlchemy URL of the source")
    ap.add_argument("--table", required=True)
    ap.add_argument("--cursor", required=True)
    ap.add_argument("--primary-key", required=True)
    ap.add_argument("--duckdb", required=True, help="the destination DuckDB file")
    ap.add_argument("--pipelines-dir", required=True)
    ap.add_argument("--chunk-size", type=int, default=50_000)
    ap.add_argument("--threads", type=int, help="DuckDB threads (scanner methods)")
    ap.add_argument("--select", default="c.*", help="the select list (scanner methods)")
    ap.add_argument(
        "--set", action="append", default=[], help="a DuckDB setting, e.g. pg_use_binary_copy=false"
    )
    args = ap.parse_args()

    t_import = time.perf_counter()
    if args.method.startswith("scanner") and args.method != "scanner-dlt":
        import duckdb  # noqa: F401
    else:
        import dlt  # noqa: F401
    imported = time.perf_counter() - t_import
    t0 = time.perf_counter()
    if args.method in ("scanner", "scanner-staged"):
        out = run_scanner(args)
    else:
        out = run_dlt(args)
    work = time.perf_counter() - t0
    result = {
        **out,
        "work_s": work,
        "import_s": imported,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print("BENCH_RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
