#!/usr/bin/env python
"""Scale sweep (issue 16): deltaferry and plain dlt, producer and reader, at several table sizes.

For each --rows size (default 1M, 3M, 10M), against one moto S3 server and one Prefect API
server started beforehand (both outside every measurement):
  1. builds the SQLite source (``sync_bench.make_source``: the ``events`` table, generated in SQL);
  2. ``df-initial``: deltaferry initial sync; ``dlt-initial``: plain dlt -> Parquet on S3
     (``bench/.venv-dlt-s3``);
  3. changes a FIXED number of rows (--change-rows, default 10,000: half updated, half
     soft-deleted, as ``sync_bench.change_source``), whatever the table's size;
  4. ``df-incremental`` and ``dlt-incremental`` of that change;
  5. ``df-noop-read``: the first deltaferry run with nothing changed, which reads the source
     and, finding nothing, leaves the change check's record (``sources/quiet.py``); then
     ``df-noop``: the next such run, the steady state of a scheduled job with nothing new
     (its change check finds the record and skips the read); then ``bare-flow``: a bare
     Prefect flow with one task against the same server (the no-op target's reference);
  6. ``pull``: ``deltaferry pull`` of everything the deltaferry job published into a new replica.

Every phase is a child process (``sync_bench.run_phase``): wall time spawn to exit, peak RSS
the child's ru_maxrss from wait4(2). Prints a table per size and the issue's targets as
ratios with PASS/MISS, writes the results to bench/out/scale_results.json and a plot of wall
time and peak RSS against rows to bench/scale.svg. A measurement, not a test: exit 0
whether targets are met or not (non-zero only if a phase fails to run).

    .venv/bin/python bench/scale_bench.py                                   # 1M, 3M, 10M
    .venv/bin/python bench/scale_bench.py --rows 100000,300000              # validation
    .venv/bin/python bench/scale_bench.py --phases df-initial,pull          # a part
    .venv/bin/python bench/scale_bench.py --job-option max_batch_rows=250000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import sync_bench as sb  # noqa: E402

# phase key: (contender, phase) -- in the order they run within one size
PHASES: dict[str, tuple[str, str]] = {
    "df-initial": ("deltaferry", "initial"),
    "dlt-initial": ("plain-dlt", "initial"),
    "df-incremental": ("deltaferry", "incremental"),
    "dlt-incremental": ("plain-dlt", "incremental"),
    "df-noop-read": ("deltaferry", "no-op, read"),
    "df-noop": ("deltaferry", "no-op"),
    "bare-flow": ("bare-flow", "no-op"),
    "pull": ("df-pull", "pull"),
}
LABELS = {
    "df-initial": "deltaferry initial",
    "dlt-initial": "plain dlt initial",
    "df-incremental": "deltaferry incremental",
    "dlt-incremental": "plain dlt incremental",
    "df-noop-read": "deltaferry no-op run, first (reads)",
    "df-noop": "deltaferry no-op run",
    "bare-flow": "bare Prefect flow, 1 task",
    "pull": "deltaferry pull (reader)",
}
# what must have run before a phase (within the same size)
NEEDS = {
    "df-incremental": ["df-initial"],
    "dlt-incremental": ["dlt-initial"],
    "df-noop-read": ["df-initial"],
    "df-noop": ["df-initial", "df-noop-read"],
    "pull": ["df-initial"],
}
# the targets: key -> (description, op, target)
TARGETS: dict[str, tuple[str, str, float]] = {
    "flat_rss_initial": ("deltaferry initial peak RSS, largest / smallest size", "<=", 1.1),
    "flat_rss_incremental": ("deltaferry incremental peak RSS, largest / smallest", "<=", 1.1),
    "flat_rss_pull": ("deltaferry pull peak RSS, largest / smallest", "<=", 1.1),
    "rss_vs_dlt_initial": ("deltaferry / plain dlt peak RSS, initial, smallest size", "<=", 1.0),
    "rss_vs_dlt_incremental": (
        "deltaferry / plain dlt peak RSS, incremental, smallest size",
        "<=",
        1.0,
    ),
    "throughput_vs_dlt": ("deltaferry / plain dlt initial rows/s", ">=", 1.0),
    "incremental_cost_growth": ("deltaferry incremental wall, largest / smallest", "<=", 1.2),
    "noop_vs_bare_flow": ("deltaferry no-op run wall / bare Prefect flow wall", "<=", 1.5),
}


# --- the job --------------------------------------------------------------------


def toml_value(raw: str) -> str:
    """A --job-option value as TOML: a TOML literal as given (250000, true, "x", [..]), any
    other text as a string."""
    try:
        tomllib.loads(f"v = {raw}")
        return raw
    except tomllib.TOMLDecodeError:
        return json.dumps(raw)


def parse_options(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"{flag} takes key=value, got {item!r}")
        out[key.strip()] = toml_value(value.strip())
    return out


def jobs_toml(db: Path, lake: str, job_opts: dict[str, str], table_opts: dict[str, str]) -> str:
    """sync_bench's job, with the extra job keys after ``lake`` and table keys at the end;
    a key the job already has (``deletes``, say) is replaced, not written twice."""
    text = sb.JOBS_TOML.format(job=sb.JOB, db=db, lake=lake, table=sb.TABLE)
    for k, v in {**job_opts, **table_opts}.items():
        text = re.sub(rf"(?m)^{re.escape(k)} = .*\n", "", text)
    lake_line = f'lake = "{lake}"\n'
    extra = "".join(f"{k} = {v}\n" for k, v in job_opts.items())
    text = text.replace(lake_line, lake_line + extra, 1)
    return text + "".join(f"{k} = {v}\n" for k, v in table_opts.items())


# --- what to run ----------------------------------------------------------------


def plan_phases(selected: list[str]) -> tuple[list[str], list[str]]:
    """The phases to run in order, and those added because a selected one needs them."""
    chosen = set(selected)
    added: list[str] = []
    change = any(k in chosen for k in ("df-incremental", "dlt-incremental"))
    while True:
        needed = {n for k in chosen for n in NEEDS.get(k, [])}
        # a no-op run after the change needs the change synced first, or it is not a no-op
        if change and ("df-noop" in chosen or "df-noop-read" in chosen):
            needed.add("df-incremental")
        new = needed - chosen
        if not new:
            break
        chosen |= new
        added += sorted(new)
    return [k for k in PHASES if k in chosen], [k for k in PHASES if k in added]


def delete_prefix(endpoint: str, prefix: str) -> None:
    """Drop a size's objects from moto (it holds them in memory) once the size is done."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sb.BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=sb.BUCKET, Delete={"Objects": keys, "Quiet": True})


# --- results --------------------------------------------------------------------

Results = dict[int, dict[str, sb.PhaseResult]]


def result_from_dict(d: dict[str, Any]) -> sb.PhaseResult:
    names = {f.name for f in fields(sb.PhaseResult)}
    return sb.PhaseResult(**{k: v for k, v in d.items() if k in names})


def verdict(key: str, value: float | None) -> bool | None:
    if value is None:
        return None
    _, op, target = TARGETS[key]
    return value >= target if op == ">=" else value <= target


def compute_ratios(res: Results) -> list[dict[str, Any]]:
    """Every target the results allow, as {target, sizes, value, verdict, ...}."""
    sizes = sorted(res)
    out: list[dict[str, Any]] = []

    def add(key: str, sizes_: list[int], value: float | None, **extra: Any) -> None:
        desc, op, target = TARGETS[key]
        # a ratio of phases measured in different runs (--merge) is marked
        runs = {r.detail.get("run") for r in extra.pop("of", [])}
        if len(runs) > 1:
            extra["mixed_runs"] = sorted(str(x) for x in runs)
        out.append({"target": key, "desc": desc, "op": op, "goal": target, "sizes": sizes_,
                    "value": value, "ok": verdict(key, value), **extra})  # fmt: skip

    def get(n: int, k: str) -> sb.PhaseResult | None:
        r = res.get(n, {}).get(k)
        return r if r is not None and r.returncode == 0 else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    lo, hi = (sizes[0], sizes[-1]) if sizes else (0, 0)
    if len(sizes) >= 2:
        for key, phase, ref in (
            ("flat_rss_initial", "df-initial", "dlt-initial"),
            ("flat_rss_incremental", "df-incremental", "dlt-incremental"),
            ("flat_rss_pull", "pull", None),
        ):
            a, b = get(hi, phase), get(lo, phase)
            if a and b:
                ra, rb = (get(hi, ref), get(lo, ref)) if ref else (None, None)
                add(key, [hi, lo], a.peak_rss_mib / b.peak_rss_mib, of=[a, b],
                    plain_dlt=div(ra.peak_rss_mib, rb.peak_rss_mib) if ra and rb else None)  # fmt: skip
    for key, phase, ref in (
        ("rss_vs_dlt_initial", "df-initial", "dlt-initial"),
        ("rss_vs_dlt_incremental", "df-incremental", "dlt-incremental"),
    ):
        a, b = get(lo, phase), get(lo, ref)
        if a and b:
            add(key, [lo], a.peak_rss_mib / b.peak_rss_mib, of=[a, b])
    for n in sizes:
        a, b = get(n, "df-initial"), get(n, "dlt-initial")
        if a and b and b.rows_per_s:
            work = div(div(a.rows, a.work_s), div(b.rows, b.work_s))
            add("throughput_vs_dlt", [n], a.rows_per_s / b.rows_per_s, work_only=work, of=[a, b])
    if len(sizes) >= 2:
        a, b = get(hi, "df-incremental"), get(lo, "df-incremental")
        if a and b:
            ra, rb = get(hi, "dlt-incremental"), get(lo, "dlt-incremental")
            add("incremental_cost_growth", [hi, lo], a.wall_s / b.wall_s, of=[a, b],
                work_only=div(a.work_s, b.work_s),
                plain_dlt=div(ra.wall_s, rb.wall_s) if ra and rb else None)  # fmt: skip
    for n in sizes:
        a, b = get(n, "df-noop"), get(n, "bare-flow")
        if a and b:
            add("noop_vs_bare_flow", [n], a.wall_s / b.wall_s, of=[a, b],
                work_only=div(a.work_s, b.work_s))  # fmt: skip
    return out


def _size(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit}"
    return f"{n:,}"


def print_size(n: int, by: dict[str, sb.PhaseResult], extra: dict[str, Any]) -> None:
    built = extra.get("source_build_s")
    print(
        f"\n{n:,} rows"
        + (
            f" (source built in {built:.1f} s, {extra.get('source_mib', 0):.0f} MiB)"
            if built
            else ""
        )
    )
    header = (
        f"  {'phase':<28}{'rows':>11}{'wall s':>9}{'rows/s':>10}{'peak RSS MiB':>14}"
        f"{'tree RSS MiB':>14}{'work s':>9}{'cpu s':>8}{'load':>6}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for key in PHASES:
        r = by.get(key)
        if r is None:
            continue
        rate = f"{r.rows_per_s:>10,.0f}" if r.rows else f"{'-':>10}"
        flag = "" if r.rows == r.expected_rows else f"  (expected {r.expected_rows:,})"
        if r.returncode != 0:
            flag = f"  FAILED (exit {r.returncode})"
        print(
            f"  {LABELS[key]:<28}{r.rows:>11,}{r.wall_s:>9.2f}{rate}{r.peak_rss_mib:>14.1f}"
            f"{r.tree_rss_mib:>14.1f}{r.work_s:>9.2f}{r.cpu_s:>8.1f}{r.loadavg_before:>6.2f}{flag}"
        )
    for key in ("df-initial", "df-incremental", "df-noop-read", "df-noop"):
        r = by.get(key)
        steps = (r.detail.get("steps") or {}) if r else {}
        if r and steps:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
            print(f"  {LABELS[key]} steps (s): {parts}; outside the steps "
                  f"{r.work_s - sum(steps.values()):.2f}")  # fmt: skip


def print_ratios(ratios: list[dict[str, Any]]) -> None:
    print("\ntargets (issue 16)")
    for r in ratios:
        sizes = " / ".join(_size(n) for n in r["sizes"])
        label = f"{r['desc']} [{sizes}]"
        ok = {True: "PASS", False: "MISS", None: "n/a"}[r["ok"]]
        value = f"{r['value']:8.3f}" if r["value"] is not None else f"{'n/a':>8}"
        notes = []
        if r.get("work_only") is not None:
            notes.append(f"work only {r['work_only']:.3f}")
        if r.get("plain_dlt") is not None:
            notes.append(f"plain dlt {r['plain_dlt']:.3f}")
        if r.get("mixed_runs"):
            notes.append("phases from different runs")
        note = f"  ({', '.join(notes)})" if notes else ""
        print(f"  {label:<78} {value}  {r['op']} {r['goal']:<4} {ok}{note}")
    missing = sorted(set(TARGETS) - {r["target"] for r in ratios})
    if missing:
        print(f"  not measured in this run: {', '.join(missing)}")


def plot(report: dict[str, Any], path: Path) -> None:
    """Wall time and peak RSS against rows, one line per contender and phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plt.rcParams["svg.hashsalt"] = "deltaferry-bench"  # stable ids: the SVG diffs cleanly
    series: dict[str, list[tuple[int, float, float]]] = {}
    for p in report["phases"]:
        if p.get("returncode") == 0:
            series.setdefault(p["key"], []).append((p["size"], p["wall_s"], p["peak_rss_mib"]))
    styles = {
        "df-initial": ("tab:blue", "-", "o"),
        "dlt-initial": ("tab:orange", "-", "o"),
        "df-incremental": ("tab:blue", "--", "s"),
        "dlt-incremental": ("tab:orange", "--", "s"),
        "df-noop-read": ("tab:cyan", ":", "v"),
        "df-noop": ("tab:blue", ":", "^"),
        "bare-flow": ("tab:gray", ":", "^"),
        "pull": ("tab:green", "-", "D"),
    }
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5.4))
    for key in PHASES:
        pts = sorted(series.get(key, []))
        if not pts:
            continue
        color, ls, marker = styles[key]
        xs = [p[0] for p in pts]
        kw = {"color": color, "linestyle": ls, "marker": marker, "label": LABELS[key]}
        ax_t.plot(xs, [p[1] for p in pts], **kw)
        ax_m.plot(xs, [p[2] for p in pts], **kw)
    sizes = sorted({p["size"] for p in report["phases"]})
    for ax, ylabel in ((ax_t, "wall time, s (spawn to exit)"), (ax_m, "peak RSS, MiB (ru_maxrss)")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [_size(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("rows in the source table")
        ax.set_ylabel(ylabel)
        if ax is ax_m:
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ax_t.set_yscale("log")  # initial loads and 10k-row runs differ by 10-100x
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax_t.yaxis.set_major_formatter(plain)
    ax_t.yaxis.set_minor_formatter(plain)
    ax_t.set_title("wall time (log-log)")
    ax_m.set_title("peak RSS")
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    code = report.get("deltaferry_code") or {}
    change = report.get("config", {}).get("change_rows")
    loads = [p["loadavg_before"] for p in report["phases"] if "loadavg_before" in p]
    load = f", load avg {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    fig.suptitle(
        f"deltaferry vs plain dlt, SQLite -> S3 (moto), incremental = {change:,} changed rows; "
        f"commit {code.get('commit')}, {report.get('created_at', '')[:10]}, "
        f"{report.get('machine', {}).get('cpus')} CPUs{load}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    print(f"plot: {path}")


def load_results(report: dict[str, Any]) -> Results:
    res: Results = {}
    for p in report.get("phases", []):
        res.setdefault(int(p["size"]), {})[p["key"]] = result_from_dict(p)
    return res


def finish(report: dict[str, Any], res: Results, out: Path, plot_path: Path | None) -> None:
    """Print the per-size tables and the targets, write the JSON and the plot."""
    report["phases"] = [
        {"size": n, "key": k, **asdict(r), "rows_per_s": r.rows_per_s}
        for n in sorted(res)
        for k, r in sorted(res[n].items(), key=lambda kv: list(PHASES).index(kv[0]))
    ]
    for n in sorted(res):
        print_size(n, res[n], report.get("sizes", {}).get(str(n), {}))
    report["ratios"] = compute_ratios(res)
    print_ratios(report["ratios"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nresults: {out}")
    if plot_path is not None:
        try:
            plot(report, plot_path)
        except ImportError:
            print("no plot: matplotlib is missing (.venv/bin/pip install -e '.[bench]')")


# --- the run --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", default="1000000,3000000,10000000", help="sizes, comma separated")
    ap.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"phases to run, comma separated, of: {', '.join(PHASES)} (what a phase needs, "
        "e.g. df-initial before pull, is run too and reported)",
    )
    ap.add_argument("--change-rows", type=int, default=10_000, help="rows changed (fixed)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per size (fresh source copy and state each); medians are reported",
    )
    ap.add_argument(
        "--job-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra key of the deltaferry job (e.g. rows_per_file=250000); VALUE is a TOML "
        "literal, anything else a string; repeatable",
    )
    ap.add_argument(
        "--table-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra key of the job's table, as --job-option",
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable of deltaferry's phases (e.g. "
        "DELTAFERRY_DUCKDB_MEMORY_LIMIT=64MB; the parent's DELTAFERRY_* are not passed on); "
        "repeatable",
    )
    ap.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="PHASE",
        help="profile the sync call of a deltaferry phase (df-initial, df-incremental, df-noop-read, df-noop) "
        "with cProfile: bench/out/<phase>-<rows>-r<round>.prof and a .txt of the top "
        "functions by cumulative time (the profile's cost is in that phase's wall); repeatable",
    )
    ap.add_argument(
        "--rss-trace",
        action="append",
        default=[],
        metavar="PHASE",
        help="sample the RSS of a deltaferry phase (df-initial, df-incremental, df-noop-read, df-noop, pull) "
        "every 20 ms with its main thread's stack (bench/rss_trace.py): "
        "bench/out/<phase>-<rows>-r<round>.rss.txt, a line whenever RSS moved by 15 MiB and "
        "the ten highest samples at its end; repeatable",
    )
    ap.add_argument("--workdir", type=Path, help="working directory (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep every size's work files")
    ap.add_argument("--dlt-python", type=Path, default=sb.DEFAULT_DLT_VENV / "bin" / "python")
    ap.add_argument(
        "--setup-dlt-venv", action="store_true", help="build the dlt[s3] venv if missing"
    )
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "scale_results.json")
    ap.add_argument("--plot", type=Path, default=BENCH / "scale.svg", help="plot file (.svg/.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument(
        "--merge",
        type=Path,
        metavar="RESULTS.json",
        help="start from an earlier run's results: phases measured now replace its, the rest "
        "are kept (to re-run part of a sweep with --phases)",
    )
    ap.add_argument(
        "--plot-only",
        type=Path,
        metavar="RESULTS.json",
        help="measure nothing: print the tables and targets of a results file and plot it",
    )
    args = ap.parse_args(argv)
    plot_path = None if args.no_plot else args.plot

    report: dict[str, Any] = {}
    if args.plot_only:
        report = json.loads(args.plot_only.read_text())
        finish(report, load_results(report), args.out, plot_path)
        return 0

    sizes = sorted({int(x.replace("_", "")) for x in args.rows.split(",") if x.strip()})
    selected = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in selected if p not in PHASES]
    if unknown:
        ap.error(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    traceable = ("df-initial", "df-incremental", "df-noop-read", "df-noop", "pull")
    untraceable = [p for p in args.rss_trace if p not in traceable]
    if untraceable:
        ap.error(f"--rss-trace: {', '.join(untraceable)} is not one of {', '.join(traceable)}")
    if not sizes:
        ap.error("--rows names no size")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if sizes[0] < 2 * args.change_rows:
        ap.error("every size needs at least 2 x --change-rows rows")
    job_opts = parse_options(args.job_option, "--job-option")
    if any("=" not in item for item in args.env):
        ap.error("--env takes KEY=VALUE")
    table_opts = parse_options(args.table_option, "--table-option")
    order, added = plan_phases(selected)
    if "dlt-initial" in order:
        sb.ensure_dlt_venv(args.dlt_python, args.setup_dlt_venv)

    work, logs = sb.prepare_workdir(args.workdir, "deltaferry-scale-")
    tree = sb.source_tree()
    t_start = time.perf_counter()
    print(
        f"deltaferry scale sweep: sizes {', '.join(f'{n:,}' for n in sizes)}; "
        f"{args.change_rows:,}-row change; phases {', '.join(order)}"
        + (f" ({', '.join(added)} added: needed)" if added else "")
        + f"; {args.repeat} round(s); {os.cpu_count()} CPUs; work dir {work}"
    )
    print(sb.code_line(tree))
    if job_opts or table_opts:
        print(f"  job options {job_opts or '-'}; table options {table_opts or '-'}")

    res: Results = {}
    if args.merge:
        report = json.loads(args.merge.read_text())
        res = load_results(report)
        print(f"  merging into {args.merge} ({sum(len(v) for v in res.values())} phases)")
    report.update(
        {
            "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "config": {
                **report.get("config", {}),
                "rows": sorted(set(sizes) | set(res)),
                "change_rows": args.change_rows,
                "seed": args.seed,
                "rounds": args.repeat,
                "phases_this_run": order,
                "job_options": job_opts,
                "table_options": table_opts,
                "env": args.env,
                "deletes": "soft:deleted_at",
                "source": "sqlite",
                "s3": "moto server (own process, loopback)",
                "prefect": "API server already running (own process, loopback)",
            },
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "deltaferry_env": sb.versions(
                    sys.executable, ["dlt", "duckdb", "pandera", "pyarrow", "prefect", "moto"]
                ),
                "plain_dlt_env": sb.versions(str(args.dlt_python), ["dlt", "pyarrow", "s3fs"]),
            },
            "deltaferry_code": tree,
        }
    )
    if args.merge:
        report.setdefault("merged_runs", []).append(
            {"at": report["created_at"], "sizes": sizes, "phases": order, "code": tree}
        )
    size_info: dict[str, Any] = report.setdefault("sizes", {})
    every_round: list[dict[str, Any]] = []
    report["phase_rounds"] = [
        p for p in report.get("phase_rounds", [])
        if not (p["size"] in sizes and p["key"] in order)
    ]  # fmt: skip

    base = sb.base_env(work / "prefect-home", work / "dlt-data")
    services: list[sb.Service] = []
    failed: str | None = None
    try:
        moto, endpoint = sb.start_moto(logs / "moto.log", base)
        services.append(moto)
        sb.make_bucket(endpoint)
        print(f"  moto S3    {endpoint}")
        t = time.perf_counter()
        server, api = sb.start_prefect_server(
            logs / "prefect-server.log", {**base, "PREFECT_HOME": str(work / "prefect-server-home")}
        )
        services.append(server)
        print(f"  prefect    {api} (ready in {time.perf_counter() - t:.1f} s)")
        # unmeasured: a fresh server's first flow run pays for its own warm-up, which would
        # otherwise land on the first size's first phase
        warm = {**base, "PREFECT_API_URL": str(api), "PREFECT_HOME": str(work / "warm-up")}
        sb.run_phase("warm-up", "bare flow", [sys.executable, str(BENCH / "phase_bare_flow.py")],
                     warm, work, logs / "warm-up.log", 0)  # fmt: skip
        for n in sizes:
            t_size = time.perf_counter()
            sdir = work / f"rows-{n}"
            sdir.mkdir()
            pristine = sdir / "source-pristine.db"
            t = time.perf_counter()
            sb.make_source(pristine, n)
            built = time.perf_counter() - t
            info = {"source_build_s": built, "source_mib": pristine.stat().st_size / 2**20}
            size_info[str(n)] = info
            print(f"\n{n:,} rows: source built in {built:.1f} s ({info['source_mib']:.0f} MiB)")
            rounds: dict[str, list[sb.PhaseResult]] = {}
            for rnd in range(1, args.repeat + 1):
                if args.repeat > 1:
                    print(f"  round {rnd}")
                rdir = sdir / f"round-{rnd}"
                rdir.mkdir()
                db = rdir / "source.db"
                if rnd == args.repeat:  # the last round takes the pristine copy itself
                    pristine.rename(db)
                else:
                    shutil.copyfile(pristine, db)
                spec = Round(n, rnd, rdir, db, f"rows-{n}/round-{rnd}/", endpoint, str(api))
                failed = run_round(spec, order, args, job_opts, table_opts, logs, info, rounds)
                for key, runs in rounds.items():
                    if len(runs) == rnd:
                        every_round.append(
                            {"size": n, "key": key, "round": rnd, **asdict(runs[-1])}
                        )
                delete_prefix(endpoint, spec.prefix)
                if failed:
                    break
                if not args.keep:
                    shutil.rmtree(rdir, ignore_errors=True)
            for key, runs in rounds.items():
                res.setdefault(n, {})[key] = med = sb.median_result(runs)
                med.detail["run"] = report["created_at"]  # ratios across runs are flagged
            info["sweep_s"] = time.perf_counter() - t_size
            print(f"  ({info['sweep_s']:.0f} s for {n:,} rows)")
            if failed:
                break
            if not args.keep:
                shutil.rmtree(sdir, ignore_errors=True)
        report["services_rss_mib"] = {svc.name: svc.rss_mib() for svc in services}
    finally:
        for svc in reversed(services):
            svc.stop()

    report["phase_rounds"] += every_round
    report["total_s"] = time.perf_counter() - t_start
    if failed:
        print(f"\n{failed}")
    finish(report, res, args.out, plot_path)
    print(f"total {report['total_s']:.0f} s")
    if args.keep or args.workdir is not None or failed:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


@dataclass
class Round:
    size: int
    round: int
    dir: Path
    db: Path
    prefix: str  # of this round's objects in the bucket
    endpoint: str
    prefect_api: str


def run_round(
    spec: Round,
    order: list[str],
    args: argparse.Namespace,
    job_opts: dict[str, str],
    table_opts: dict[str, str],
    logs: Path,
    info: dict[str, Any],
    rounds: dict[str, list[sb.PhaseResult]],
) -> str | None:
    """The phases of one size, once, fresh state; results appended to ``rounds``. Returns
    what failed, if a phase did (the rest of the round is skipped)."""
    n, rdir = spec.size, spec.dir
    jobs = rdir / "jobs.toml"
    lake = f"s3://{sb.BUCKET}/{spec.prefix}deltaferry"
    jobs.write_text(jobs_toml(spec.db, lake, job_opts, table_opts))
    env = sb.base_env(rdir / "prefect-home", rdir / "dlt-data")
    df_env = {
        **env,
        "DELTAFERRY_HOME": str(rdir / "home"),
        "AWS_ENDPOINT_URL_S3": spec.endpoint,
        "PYTHONPATH": os.pathsep.join([str(BENCH), str(sb.ROOT)]),
        "PREFECT_API_URL": spec.prefect_api,
        "PREFECT_HOME": str(rdir / "prefect-client-home"),
        **dict(item.split("=", 1) for item in args.env),
    }
    df_cmd = [sys.executable, str(BENCH / "phase_deltaferry.py"), "--job", sb.JOB,
              "--config", str(jobs)]  # fmt: skip
    dlt_cmd, dlt_env = sb.plain_dlt_command(
        args.dlt_python, spec.db, f"s3://{sb.BUCKET}/{spec.prefix}plain-dlt",
        rdir / "dlt-pipelines", env, spec.endpoint,
    )  # fmt: skip
    pull_cmd = [sys.executable, str(BENCH / "phase_pull.py"), "--job", sb.JOB,
                "--config", str(jobs), "--replica", str(rdir / "replica.duckdb")]  # fmt: skip
    change = args.change_rows
    commands = {
        "df-initial": (df_cmd, df_env, n),
        "dlt-initial": (dlt_cmd, dlt_env, n),
        "df-incremental": (df_cmd, df_env, change),
        "dlt-incremental": (dlt_cmd, dlt_env, change),
        "df-noop-read": (df_cmd, df_env, 0),
        "df-noop": (df_cmd, df_env, 0),
        "bare-flow": ([sys.executable, str(BENCH / "phase_bare_flow.py")], df_env, 0),
        "pull": (pull_cmd, df_env, n + (change if "df-incremental" in order else 0)),
    }
    changed = False
    for key in order:
        if key in ("df-incremental", "dlt-incremental") and not changed:
            t = time.perf_counter()
            info["change"] = sb.change_source(spec.db, n, 0.0, args.seed, count=change)
            changed = True
            print(
                f"  change     {info['change']['updated']:,} updated + "
                f"{info['change']['soft_deleted']:,} soft-deleted in {time.perf_counter() - t:.1f} s"
            )
        cmd, e, expected = commands[key]
        contender, phase = PHASES[key]
        log = logs / f"{n}-r{spec.round}-{key}.log"
        prof, ours = None, cmd is df_cmd or cmd is pull_cmd  # deltaferry's own phases
        if key in args.profile and cmd is df_cmd:
            prof = BENCH / "out" / f"{key}-{n}-r{spec.round}.prof"
            prof.parent.mkdir(parents=True, exist_ok=True)
            cmd = [*cmd, "--profile", str(prof)]
        rss = BENCH / "out" / f"{key}-{n}-r{spec.round}.rss.txt"
        if key in args.rss_trace and ours:
            rss.parent.mkdir(parents=True, exist_ok=True)
            cmd = [*cmd, "--rss-trace", str(rss)]
        r = sb.run_phase(contender, phase, cmd, e, spec.dir, log, expected)
        if prof is not None and prof.exists():
            _profile_text(prof)
        if key in args.rss_trace and ours and rss.exists():
            print(f"  rss trace  {rss}")
        rounds.setdefault(key, []).append(r)
        if r.returncode != 0 or (expected and r.rows == 0):
            return f"phase {key} at {n:,} rows (round {spec.round}) failed; see {log}"
    if "df-initial" in order and spec.round == 1:
        objects, size = sb.bucket_usage(spec.endpoint, f"{spec.prefix}deltaferry/")
        info["lake_deltaferry"] = {"objects": objects, "bytes": size}
    return None


def _profile_text(prof: Path) -> None:
    """Write the profile's 40 top functions by cumulative time next to it (``.txt``)."""
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(str(prof), stream=out).sort_stats("cumulative").print_stats(40)
    prof.with_suffix(".txt").write_text(out.getvalue())
    print(f"  profile    {prof.with_suffix('.txt')}")


if __name__ == "__main__":
    sys.exit(main())
