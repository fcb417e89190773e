#!/usr/bin/env python
"""deltaferry vs. a plain dlt pipeline: initial and incremental sync of one big table to S3.

One run:
  1. builds a SQLite source with an ``events`` table of --rows rows;
  2. starts moto's S3-compatible server in its own process on loopback, makes a bucket;
  3. deltaferry initial sync (dlt -> DuckDB staging -> pandera -> Parquet + manifest -> S3);
  4. plain dlt initial load (sql_table, pyarrow backend -> filesystem destination, Parquet on S3),
     in a separate venv that has dlt[s3] (bench/setup_dlt_s3_venv.sh);
  5. changes --change of the rows (half updated with a newer updated_at, half soft-deleted
     through ``deleted_at``);
  6. deltaferry incremental sync, then plain dlt incremental load (``dlt.sources.incremental``);
  7. prints wall time, rows/s and peak RSS per phase, the ratios against their targets, and
     writes everything to bench/out/results.json.

Every phase is a child process of its own: wall time is spawn-to-exit (imports included),
peak RSS is the child's ru_maxrss from wait4(2) (what ``/usr/bin/time -v`` reports: the
largest single process of the child's tree), and the summed RSS of the child's process
tree is sampled from /proc as well. It is a measurement, not a test: exit status 0
whether the targets are met or not (non-zero only if a phase fails to run).

    /work/venv/bin/python bench/sync_bench.py                 # 1,000,000 rows
    /work/venv/bin/python bench/sync_bench.py --rows 20000    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_DLT_VENV = BENCH / ".venv-dlt-s3"
BUCKET = "deltaferry-bench"
TABLE = "events"
JOB = "bench"
KINDS = ["click", "view", "purchase", "refund", "signup"]
TARGETS = {
    # name: (description, comparison, target)
    "initial_throughput_vs_dlt": (
        "deltaferry initial rows/s / plain dlt initial rows/s",
        ">=",
        0.8,
    ),
    "incremental_vs_initial": ("deltaferry incremental wall / deltaferry initial wall", "<=", 0.05),
    "peak_rss_vs_dlt": ("deltaferry peak RSS / plain dlt peak RSS", "<=", 1.0),
}
SCHEMA = f"""
CREATE TABLE {TABLE} (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    note TEXT,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
);
CREATE INDEX {TABLE}_updated_at ON {TABLE}(updated_at);
CREATE INDEX {TABLE}_updated_at_jd ON {TABLE}(julianday(updated_at));
"""
JOBS_TOML = """\
# Written by bench/sync_bench.py
[jobs.{job}]
source = "sql_database"
url = "sqlite:///{db}"
lake = "{lake}"

[[jobs.{job}.tables]]
name = "{table}"
primary_key = ["id"]
cursor = "updated_at"
deletes = "soft:deleted_at"
contract = "bench_contract:Events"
"""
BASE_TIME = datetime(2025, 1, 1)


# --- the source -----------------------------------------------------------------


def _ts(dt: datetime) -> str:
    return dt.isoformat(sep=" ", timespec="microseconds")


def make_source(path: Path, rows: int, chunk: int = 1_000_000) -> None:
    """``rows`` events, ids 1..rows, updated_at one second apart (deterministic).

    Generated inside SQLite (a recursive CTE per ``chunk`` ids), about 1.3 s per million
    rows; the same rows, values and storage classes as building them in Python and
    inserting with executemany (which took about 5 s per million)."""
    kinds = " ".join(f"WHEN {k} THEN '{kind}'" for k, kind in enumerate(KINDS))
    account = "((i * 7919) % 50000 + 1)"
    insert = f"""
        WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO {TABLE}
        SELECT i, {account}, CASE (i * 31) % 5 {kinds} END, (i * 104729) % 250000,
               CASE WHEN i % 10 = 0 THEN NULL ELSE 'event ' || i || ' of account ' || {account} END,
               datetime('{BASE_TIME:%Y-%m-%d %H:%M:%S}', '+' || i || ' seconds') || '.000000',
               NULL
        FROM n
    """
    con = sqlite3.connect(str(path))
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        # the indexes after the rows (faster): the plain one plain dlt's text comparison
        # uses, and the one on julianday() deltaferry's window uses (README, "Index a
        # SQLite time-text cursor")
        con.executescript(SCHEMA.split("CREATE INDEX")[0])
        for start in range(1, rows + 1, chunk):
            con.execute(insert, (start, min(rows, start + chunk - 1)))
        con.execute(f"CREATE INDEX {TABLE}_updated_at ON {TABLE}(updated_at)")
        con.execute(f"CREATE INDEX {TABLE}_updated_at_jd ON {TABLE}(julianday(updated_at))")
        con.commit()
    finally:
        con.close()


def change_source(
    path: Path, rows: int, fraction: float, seed: int, count: int | None = None
) -> dict[str, int]:
    """Change ``fraction`` of the rows (or exactly ``count`` rows): half updated, half
    soft-deleted; all get a newer updated_at."""
    n = count if count is not None else max(2, int(rows * fraction))
    rng = random.Random(seed)
    ids = rng.sample(range(1, rows + 1), n)
    updated, deleted = ids[: n // 2], ids[n // 2 :]
    clock = BASE_TIME + timedelta(seconds=rows + 60)
    upd, dele = [], []
    for k, i in enumerate(updated):
        ts = _ts(clock + timedelta(milliseconds=k))
        upd.append((KINDS[rng.randrange(5)], rng.randint(0, 250_000), f"updated {i}", ts, i))
    clock += timedelta(seconds=len(updated))
    for k, i in enumerate(deleted):
        ts = _ts(clock + timedelta(milliseconds=k))
        dele.append((ts, ts, i))
    con = sqlite3.connect(str(path))
    try:
        con.executemany(
            f"UPDATE {TABLE} SET kind = ?, amount_cents = ?, note = ?, updated_at = ? WHERE id = ?",
            upd,
        )
        con.executemany(f"UPDATE {TABLE} SET deleted_at = ?, updated_at = ? WHERE id = ?", dele)
        con.commit()
    finally:
        con.close()
    return {"updated": len(upd), "soft_deleted": len(dele), "changed": n}


# --- the S3 endpoint ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A server the contenders talk to, in its own process group; not part of any measurement."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log}"
                )
            if ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s; see {self.log}")

    def rss_mib(self) -> float:
        """Summed RSS of the service's process tree."""
        table = _proc_table()
        tree = _descendants(self.proc.pid, table)
        return sum(_rss(p) for p in tree) / 2**20

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this script created for it
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def start_moto(log: Path, env: dict[str, str]) -> tuple[Service, str]:
    """moto's S3-compatible server on loopback, in its own process."""
    port = free_port()
    svc = Service(
        "moto server",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env,
        log,
    )
    svc.wait_ready(lambda: _port_open(port), 60)
    return svc, f"http://127.0.0.1:{port}"


def start_prefect_server(log: Path, env: dict[str, str]) -> tuple[Service, str]:
    """A Prefect API server on loopback, as a deployment would have one running already."""
    port = free_port()
    svc = Service(
        "prefect server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env,
        log,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api"
    svc.wait_ready(lambda: _http_ok(f"{api}/health"), 180)
    return svc, api


def make_bucket(endpoint: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)


def bucket_usage(endpoint: str, prefix: str) -> tuple[int, int]:
    """(objects, bytes) under a prefix."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )
    n = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            n += 1
            size += int(obj["Size"])
    return n, size


# --- measuring a child process ----------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc_table() -> dict[int, int]:
    """pid -> ppid for every process visible in /proc."""
    table: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        rest = stat[stat.rfind(b")") + 2 :].split()
        table[int(entry.name)] = int(rest[1])
    return table


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(root: int, table: dict[int, int]) -> set[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.max_procs = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            tree = _descendants(self.pid, _proc_table())
            self.peak = max(self.peak, sum(_rss(p) for p in tree))
            self.max_procs = max(self.max_procs, len(tree))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class PhaseResult:
    contender: str
    phase: str
    rows: int
    expected_rows: int
    wall_s: float  # spawn to exit of the child process, less the child's own bench reads
    work_s: float  # the sync call itself, timed inside the child (no interpreter start, imports)
    import_s: float
    peak_rss_mib: float  # ru_maxrss of the child from wait4 (largest single process)
    tree_rss_mib: float  # sampled peak of the summed RSS of the child's process tree
    tree_procs: int
    cpu_s: float  # user + system CPU of the child and its reaped descendants
    loadavg_before: float  # 1-minute load average when the phase started (other work on the box)
    returncode: int
    log: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


def run_phase(
    contender: str,
    phase: str,
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    log: Path,
    expected_rows: int,
) -> PhaseResult:
    print(f"  {contender:<10} {phase:<12} ...", end="", flush=True)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    out: dict[str, Any] = {}
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("BENCH_RESULT "):
            out = json.loads(line[len("BENCH_RESULT ") :])
    # what the child read for the bench after its work (step times) is not the contender's
    wall -= float(out.get("bench_reads_s", 0.0))
    res = PhaseResult(
        contender=contender,
        phase=phase,
        rows=int(out.get("rows", 0)),
        expected_rows=expected_rows,
        wall_s=wall,
        work_s=float(out.get("work_s", 0.0)),
        import_s=float(out.get("import_s", 0.0)),
        peak_rss_mib=usage.ru_maxrss / 1024,
        tree_rss_mib=sampler.peak / 2**20,
        tree_procs=sampler.max_procs,
        cpu_s=usage.ru_utime + usage.ru_stime,
        loadavg_before=load,
        returncode=proc.returncode,
        log=str(log),
        detail={k: v for k, v in out.items() if k not in ("rows", "work_s", "import_s")},
    )
    if proc.returncode != 0 or not out:
        print(f" FAILED (exit {proc.returncode}); last lines of {log}:")
        print("\n".join("    " + line for line in text.splitlines()[-25:]))
    else:
        print(
            f" {wall:7.2f} s  {res.rows:>9,} rows  {res.peak_rss_mib:7.1f} MiB"
            f"  (load avg before {load:.2f})"
        )
    return res


# --- the run --------------------------------------------------------------------


def base_env(prefect_home: Path, dlt_data: Path) -> dict[str, str]:
    """The parent's environment without settings that would change what is measured."""
    drop = ("AWS_", "DELTAFERRY_", "DESTINATION__", "PREFECT_", "SOURCES__", "NORMALIZE__")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "DO_NOT_TRACK": "1",
            "RUNTIME__LOG_LEVEL": "WARNING",
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "DLT_DATA_DIR": str(dlt_data),
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def source_tree() -> dict[str, Any]:
    """The deltaferry code measured: commit and files changed outside bench/ (uncommitted)."""

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=True
            ).stdout.rstrip("\n")
        except (OSError, subprocess.CalledProcessError):
            return ""

    changed = [
        line[3:]
        for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        if not line[3:].startswith("bench/")
    ]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted": changed}


def code_line(tree: dict[str, Any]) -> str:
    """The progress line naming the code measured (``source_tree()``)."""
    dirty = tree["uncommitted"]
    return f"  code       commit {tree['commit']}" + (
        f", uncommitted changes in {', '.join(dirty)}" if dirty else ""
    )


def prepare_workdir(workdir: Path | None, prefix: str) -> tuple[Path, Path]:
    """A fresh work dir (``workdir`` emptied if an earlier benchmark run made it, else a new
    temp dir) with ``logs/`` in it: (work dir, logs dir)."""
    work = (workdir or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    marker = work / ".deltaferry-bench"
    if work.exists() and any(work.iterdir()):
        if not marker.exists():
            sys.exit(f"{work} is not empty and not a benchmark work dir; pick another --workdir")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    marker.touch()
    logs = work / "logs"
    logs.mkdir()
    return work, logs


def plain_dlt_command(
    dlt_python: Path, db: Path, bucket_url: str, pipelines_dir: Path, env: dict[str, str],
    endpoint: str,
) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The plain-dlt baseline's child (``phase_plain_dlt.py``): command and environment."""
    cmd = [
        str(dlt_python), str(BENCH / "phase_plain_dlt.py"), "--db", f"sqlite:///{db}",
        "--table", TABLE, "--cursor", "updated_at", "--bucket-url", bucket_url,
        "--pipelines-dir", str(pipelines_dir),
    ]  # fmt: skip
    creds = "DESTINATION__FILESYSTEM__CREDENTIALS__"
    return cmd, {
        **env,
        f"{creds}ENDPOINT_URL": endpoint,
        f"{creds}AWS_ACCESS_KEY_ID": "bench",
        f"{creds}AWS_SECRET_ACCESS_KEY": "bench",
        f"{creds}REGION_NAME": "us-east-1",
    }


def ensure_dlt_venv(python: Path, build: bool) -> None:
    if python.exists():
        return
    if not build:
        sys.exit(
            f"the plain-dlt baseline needs a venv with dlt[s3] at {python.parent.parent}; "
            f"run `bash {BENCH / 'setup_dlt_s3_venv.sh'}` (or pass --setup-dlt-venv)"
        )
    print(f"building the dlt[s3] venv at {python.parent.parent} ...", flush=True)
    subprocess.run(
        ["bash", str(BENCH / "setup_dlt_s3_venv.sh"), str(python.parent.parent)],
        env={**os.environ, "PROJECT_PYTHON": sys.executable},
        check=True,
    )


def versions(python: str, packages: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except Exception: out[p] = None\n"
        "print(json.dumps(out))"
    )
    try:
        return json.loads(
            subprocess.run(
                [python, "-c", code, *packages], capture_output=True, text=True, check=True
            ).stdout
        )
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        return {}


def ratio_line(name: str, value: float | None) -> tuple[str, bool | None]:
    desc, op, target = TARGETS[name]
    if value is None:
        return f"  {desc:<58} {'n/a':>8}   target {op} {target:<5} n/a", None
    ok = value >= target if op == ">=" else value <= target
    verdict = "PASS" if ok else "MISS"
    return f"  {desc:<58} {value:8.3f}   target {op} {target:<5} {verdict}", ok


def print_profile(prof: Path, out_txt: Path, top: int = 25) -> None:
    """Write the full report; print the project's own functions by cumulative time and the
    top functions by own time. cProfile sees the main thread only (Prefect runs sync tasks
    there)."""
    import io
    import pstats
    import re

    project = re.escape(str(ROOT)) + "/(?!bench/)"
    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    buf.write(f"=== project code by cumulative time ({ROOT}) ===\n")
    stats.sort_stats("cumulative").print_stats(project, top)
    buf.write("=== everything by cumulative time ===\n")
    stats.sort_stats("cumulative").print_stats(top * 2)
    buf.write("=== everything by own time ===\n")
    stats.sort_stats("tottime").print_stats(top * 2)
    out_txt.write_text(buf.getvalue())

    def table(sort: str, restrict: str | None, n: int) -> str:
        out = io.StringIO()
        st = pstats.Stats(str(prof), stream=out)
        st.sort_stats(sort)
        if restrict:
            st.print_stats(restrict, n)
        else:
            st.print_stats(n)
        lines = out.getvalue().splitlines()
        first = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        text = "\n".join(line for line in lines[first:] if line.strip())
        return text.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")

    print(
        "\ncProfile of one more deltaferry initial sync (untimed, main thread): project "
        "functions by cumulative time"
    )
    print(table("cumulative", project, top))
    print(f"\ntop {top} functions by own time")
    print(table("tottime", None, top))
    print(f"(full report: {out_txt}; raw profile: {prof})")


def compute_ratios(df: dict[str, PhaseResult], pl: dict[str, PhaseResult]) -> dict[str, Any]:
    def safe(a: float, b: float) -> float | None:
        return a / b if b else None

    dfi, dfc, pli, plc = df["initial"], df["incremental"], pl["initial"], pl["incremental"]
    primary = {
        "initial_throughput_vs_dlt": safe(dfi.rows_per_s, pli.rows_per_s),
        "incremental_vs_initial": safe(dfc.wall_s, dfi.wall_s),
        "peak_rss_vs_dlt": safe(
            max(dfi.peak_rss_mib, dfc.peak_rss_mib), max(pli.peak_rss_mib, plc.peak_rss_mib)
        ),
    }
    reference = {
        "initial_throughput_vs_dlt_work_only": safe(
            safe(dfi.rows, dfi.work_s) or 0.0, safe(pli.rows, pli.work_s) or 0.0
        ),
        "incremental_vs_initial_work_only": safe(dfc.work_s, dfi.work_s),
        "tree_rss_vs_dlt": safe(
            max(dfi.tree_rss_mib, dfc.tree_rss_mib), max(pli.tree_rss_mib, plc.tree_rss_mib)
        ),
    }
    return {"ratios": primary, "reference": reference}


REFERENCE_LABELS = {
    "initial_throughput_vs_dlt_work_only": "initial throughput ratio, sync call only",
    "incremental_vs_initial_work_only": "incremental / initial, sync call only",
    "tree_rss_vs_dlt": "peak RSS ratio, summed over process trees",
}
VARIANTS = {
    # contender name: what it is
    "deltaferry": "deltaferry, Prefect ephemeral API (what `deltaferry run` does out of the box)",
    "df+server": "deltaferry, Prefect API server already running (started outside the measurement)",
}


def median_result(runs: list[PhaseResult]) -> PhaseResult:
    """One result per contender and phase: the median of each measure over the rounds."""
    if len(runs) == 1:
        return runs[0]

    def med(attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs))

    def med_steps(key: str) -> dict[str, float]:
        names = list(dict.fromkeys(k for r in runs for k in (r.detail.get(key) or {})))
        return {
            k: statistics.median((r.detail.get(key) or {}).get(k, 0.0) for r in runs) for k in names
        }

    first = runs[0]
    return PhaseResult(
        contender=first.contender,
        phase=first.phase,
        rows=first.rows,
        expected_rows=first.expected_rows,
        wall_s=med("wall_s"),
        work_s=med("work_s"),
        import_s=med("import_s"),
        peak_rss_mib=med("peak_rss_mib"),
        tree_rss_mib=med("tree_rss_mib"),
        tree_procs=max(r.tree_procs for r in runs),
        cpu_s=med("cpu_s"),
        loadavg_before=med("loadavg_before"),
        returncode=max(r.returncode for r in runs),
        log=first.log,
        detail={
            "steps": med_steps("steps"),
            "dlt_steps": med_steps("dlt_steps"),
            "rounds": len(runs),
        },
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the source table")
    ap.add_argument("--change", type=float, default=0.01, help="fraction of rows changed")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--prefect",
        choices=["ephemeral", "server", "both"],
        default="both",
        help="how deltaferry reaches a Prefect API: its ephemeral one (the default of "
        "`deltaferry run`), a server started beforehand, or both as two contenders",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds (each: fresh source copy and state, every contender initial + incremental, "
        "contender order rotated); the medians are reported",
    )
    ap.add_argument("--workdir", type=Path, help="working directory (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument(
        "--dlt-python",
        type=Path,
        default=DEFAULT_DLT_VENV / "bin" / "python",
        help="interpreter of the venv with dlt[s3] (default: bench/.venv-dlt-s3)",
    )
    ap.add_argument(
        "--setup-dlt-venv", action="store_true", help="build the dlt[s3] venv if it is missing"
    )
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "results.json")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, profile one more (untimed) deltaferry initial sync with cProfile",
    )
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.rows < 100:
        ap.error("--repeat must be >= 1 and --rows >= 100")

    ensure_dlt_venv(args.dlt_python, args.setup_dlt_venv)
    work, logs = prepare_workdir(args.workdir, "deltaferry-bench-")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    variants = {"ephemeral": ["deltaferry"], "server": ["df+server"]}.get(
        args.prefect, ["deltaferry", "df+server"]
    )
    contenders = [*variants, "plain-dlt"]
    tree = source_tree()
    print(
        f"deltaferry sync benchmark: {args.rows:,} rows, {args.change:.1%} change, "
        f"{os.cpu_count()} CPUs, {args.repeat} round(s); work dir {work}"
    )

    print(code_line(tree))
    t = time.perf_counter()
    pristine = work / "source-pristine.db"
    make_source(pristine, args.rows)
    t_source = time.perf_counter() - t
    print(
        f"  source     {args.rows:,} rows in {t_source:.1f} s "
        f"({pristine.stat().st_size / 2**20:.0f} MiB)"
    )

    base = base_env(work / "prefect-home", work / "dlt-data")
    services: list[Service] = []
    results: list[PhaseResult] = []
    change: dict[str, int] = {}
    service_rss: dict[str, float] = {}
    lake: dict[str, tuple[int, int]] = {}
    try:
        moto, endpoint = start_moto(logs / "moto.log", base)
        services.append(moto)
        make_bucket(endpoint)
        print(f"  moto S3    {endpoint}")
        prefect_api = None
        if "df+server" in variants:
            t = time.perf_counter()
            server, prefect_api = start_prefect_server(
                logs / "prefect-server.log",
                {**base, "PREFECT_HOME": str(work / "prefect-server-home")},
            )
            services.append(server)
            print(f"  prefect    {prefect_api} (ready in {time.perf_counter() - t:.1f} s)")

        def commands_for(rdir: Path, db: Path, prefix: str) -> dict[str, Any]:
            env = base_env(rdir / "prefect-home", rdir / "dlt-data")
            commands: dict[str, tuple[list[str], dict[str, str]]] = {}
            for name in variants:
                slug = "deltaferry" if name == "deltaferry" else "deltaferry-server"
                jobs = rdir / f"jobs-{slug}.toml"
                jobs.write_text(
                    JOBS_TOML.format(
                        job=JOB, db=db, lake=f"s3://{BUCKET}/{prefix}{slug}", table=TABLE
                    )
                )
                e = {
                    **env,
                    "DELTAFERRY_HOME": str(rdir / f"home-{slug}"),
                    "AWS_ENDPOINT_URL_S3": endpoint,
                    "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)]),
                }
                if name == "df+server":
                    e["PREFECT_API_URL"] = str(prefect_api)
                    e["PREFECT_HOME"] = str(rdir / "prefect-client-home")
                cmd = [sys.executable, str(BENCH / "phase_deltaferry.py"), "--job", JOB,
                       "--config", str(jobs)]  # fmt: skip
                commands[name] = (cmd, e)
            commands["plain-dlt"] = plain_dlt_command(
                args.dlt_python,
                db,
                f"s3://{BUCKET}/{prefix}plain-dlt",
                rdir / "dlt-pipelines",
                env,
                endpoint,
            )
            return commands

        for rnd in range(1, args.repeat + 1):
            rdir = work / f"round-{rnd}"
            rdir.mkdir()
            db = rdir / "source.db"
            shutil.copyfile(pristine, db)
            prefix = f"round-{rnd}/"
            commands = commands_for(rdir, db, prefix)
            k = (rnd - 1) % len(contenders)
            order = contenders[k:] + contenders[:k]
            if args.repeat > 1:
                print(f"round {rnd}: order {', '.join(order)}")

            def phase(
                contender: str,
                name: str,
                expected: int,
                commands: dict[str, Any] = commands,
                rnd: int = rnd,
            ) -> PhaseResult:
                cmd, e = commands[contender]
                log = logs / f"r{rnd}-{contender.replace('+', '-')}-{name}.log"
                r = run_phase(contender, name, cmd, e, work, log, expected)
                results.append(r)
                if r.returncode != 0 or (r.rows == 0 and expected):
                    raise SystemExit(f"phase {contender} {name} failed; see {r.log}")
                return r

            for name in order:
                phase(name, "initial", args.rows)
            t = time.perf_counter()
            change = change_source(db, args.rows, args.change, args.seed)
            print(
                f"  change     {change['updated']:,} updated + {change['soft_deleted']:,} "
                f"soft-deleted in {time.perf_counter() - t:.1f} s"
            )
            for name in order:
                phase(name, "incremental", change["changed"])
            if rnd == 1:
                for slug in ("deltaferry", "deltaferry-server", "plain-dlt"):
                    lake[slug] = bucket_usage(endpoint, f"{prefix}{slug}/")
        service_rss = {svc.name: svc.rss_mib() for svc in services}

        if args.profile:
            rdir = work / "profile"
            rdir.mkdir()
            db = rdir / "source.db"
            shutil.copyfile(pristine, db)
            cmd, e = commands_for(rdir, db, "profile/")[variants[0]]
            prof = args.out.parent / "deltaferry_initial.prof"
            run_phase(
                variants[0],
                "profiled",
                [*cmd, "--profile", str(prof)],
                e,
                work,
                logs / "deltaferry-profiled.log",
                args.rows,
            )
    finally:
        for svc in reversed(services):
            svc.stop()

    grouped: dict[tuple[str, str], list[PhaseResult]] = {}
    for r in results:
        grouped.setdefault((r.contender, r.phase), []).append(r)
    by: dict[str, dict[str, PhaseResult]] = {}
    for phase_name in ("initial", "incremental"):
        for name in contenders:
            by.setdefault(name, {})[phase_name] = median_result(grouped[(name, phase_name)])
    table_rows = [by[name][ph] for ph in ("initial", "incremental") for name in contenders]

    print()
    if args.repeat > 1:
        print(f"medians over {args.repeat} rounds")
    header = (
        f"{'contender':<11}{'phase':<13}{'rows':>10}{'wall s':>9}{'rows/s':>10}"
        f"{'peak RSS MiB':>14}{'tree RSS MiB':>14}{'work s':>9}{'import s':>10}{'cpu s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in table_rows:
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
    if args.repeat > 1:
        for (name, ph), runs in grouped.items():
            walls = ", ".join(f"{r.wall_s:.2f}" for r in runs)
            print(f"  {name} {ph} wall s per round: {walls}")
    for name in variants:
        for r in by[name].values():
            steps = r.detail.get("steps") or {}
            if steps:
                parts = ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
                print(
                    f"{name} {r.phase} steps (s): {parts}; outside the steps (Prefect, setup) "
                    f"{r.work_s - sum(steps.values()):.2f}"
                )
    for name in contenders:
        for r in by[name].values():
            dsteps = r.detail.get("dlt_steps") or {}
            if dsteps:
                parts = ", ".join(f"{k} {v:.2f}" for k, v in dsteps.items())
                print(f"{name} {r.phase} dlt pipeline steps (s): {parts}")
    print(
        "lake: "
        + "; ".join(f"{k} {n} objects {b / 2**20:.1f} MiB" for k, (n, b) in lake.items() if n)
        + "; services RSS: "
        + ", ".join(f"{k} {v:.0f} MiB" for k, v in service_rss.items())
    )

    all_ratios: dict[str, Any] = {}
    verdicts: dict[str, dict[str, bool | None]] = {}
    for name in variants:
        rr = compute_ratios(by[name], by["plain-dlt"])
        all_ratios[name] = rr
        print(f"\nratios, {VARIANTS[name]}:")
        verdicts[name] = {}
        for key, value in rr["ratios"].items():
            line, ok = ratio_line(key, value)
            verdicts[name][key] = ok
            print(line)
        for key, value in rr["reference"].items():
            shown = f"{value:8.3f}" if value is not None else f"{'n/a':>8}"
            print(f"  ({REFERENCE_LABELS[key]:<56} {shown})")
    pli, plc = by["plain-dlt"]["initial"], by["plain-dlt"]["incremental"]
    print(f"\nfor scale: plain dlt incremental / initial wall = {plc.wall_s / pli.wall_s:.3f}")
    for name in variants:
        met = [k for k, ok in verdicts[name].items() if ok]
        missed = [k for k, ok in verdicts[name].items() if ok is False]
        print(
            f"{name}: {len(met)} of {len(verdicts[name])} targets met"
            + (f"; missed: {', '.join(missed)}" if missed else "")
        )

    report = {
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": {
            "rows": args.rows,
            "change_fraction": args.change,
            "change": change,
            "seed": args.seed,
            "rounds": args.repeat,
            "deletes": "soft:deleted_at",
            "source": "sqlite",
            "s3": "moto server (own process, loopback)",
            "prefect": args.prefect,
            "variants": {k: VARIANTS[k] for k in variants},
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "deltaferry_env": versions(
                sys.executable,
                [
                    "dlt",
                    "duckdb",
                    "pandera",
                    "pandas",
                    "pyarrow",
                    "prefect",
                    "boto3",
                    "moto",
                    "sqlalchemy",
                ],
            ),
            "plain_dlt_env": versions(
                str(args.dlt_python), ["dlt", "pyarrow", "sqlalchemy", "s3fs", "botocore"]
            ),
        },
        "deltaferry_code": tree,
        "source_build_s": t_source,
        "summary": [{**asdict(r), "rows_per_s": r.rows_per_s} for r in table_rows],
        "phases": [{**asdict(r), "rows_per_s": r.rows_per_s} for r in results],
        "lake": {k: {"objects": n, "bytes": b} for k, (n, b) in lake.items()},
        "services_rss_mib": service_rss,
        "ratios": {k: v["ratios"] for k, v in all_ratios.items()},
        "ratios_reference": {k: v["reference"] for k, v in all_ratios.items()},
        "targets": {n: {"desc": d, "op": op, "target": tv} for n, (d, op, tv) in TARGETS.items()},
        "met": verdicts,
    }
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results: {args.out}")

    if args.profile:
        prof = args.out.parent / "deltaferry_initial.prof"
        if prof.exists():
            print_profile(prof, args.out.parent / "deltaferry_initial_profile.txt")

    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work dir kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
