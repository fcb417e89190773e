"""``deltaferry report JOB --out report.html``: the numbers of ``status`` as a page to look at.

One self-contained HTML file: inline CSS and SVG charts drawn here, no scripts, no
external assets. Per table, over the job's last N runs: rows per batch, quarantined rows
per batch, step durations per run, retries by cause, the lag, and the status numbers.
Every piece of text from the state or the jobs file goes through ``html.escape``.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deltaferry.config import JobConfig, deltaferry_home
from deltaferry.state import StateStore
from deltaferry.statedb import now
from deltaferry.status import (
    ATTEMPTS,
    DEFAULT_RUNS,
    LAG_NEWEST_CHANGE,
    WINDOW_SQL,
    human_duration,
    job_status,
    percent,
)

# chart geometry (SVG user units)
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 14, 64
MAX_X_LABELS = 8
STEP_COLOURS = {
    "recover": "#8c6bb1",
    "extract": "#4e79a7",
    "plan": "#59a14f",
    "upload": "#f28e2b",
    "manifest": "#e15759",
    "checkpoint": "#76b7b2",
}
OTHER_COLOUR = "#9c9c9c"
BAR_COLOUR = "#4e79a7"
QUARANTINE_COLOUR = "#e15759"
RETRY_COLOUR = "#f28e2b"

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
       color: #222; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
.meta { color: #555; margin: 2px 0; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f6f6f6; } td.l, th.l { text-align: left; }
.spark { font-family: monospace; letter-spacing: 1px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid #e4e4e4; border-radius: 4px; padding: 8px; }
figcaption { font-size: 13px; color: #444; margin-bottom: 4px; }
svg.chart { display: block; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg .grid { stroke: #e8e8e8; } svg .axis { stroke: #666; }
svg .empty { fill: #888; font-size: 13px; }
.legend span { display: inline-block; margin-right: 10px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
.failed { color: #c0392b; }
"""


def _e(value: Any) -> str:
    """Any value as escaped HTML text (also safe inside a quoted attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _ticks(value: float, whole: bool) -> tuple[float, int]:
    """(top of the y axis, number of intervals): steps of 1, 2 or 5 x 10^k, about four of
    them, whole numbers only for counts."""
    raw = max(value, 1e-9) / 4
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw)
    if whole:
        step = max(1.0, round(step))
    intervals = max(1, math.ceil(value / step - 1e-9))
    return step * intervals, intervals


def _when(ts: datetime | str | None) -> str:
    if ts is None:
        return "-"
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Segment:
    value: float
    colour: str
    title: str


@dataclass
class Bar:
    label: str  # under the bar (x axis)
    title: str  # tooltip of the whole bar
    segments: list[Segment] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(s.value for s in self.segments)


def _svg_open(kind: str, table: str, height: int, label: str) -> str:
    return (
        f'<svg class="chart" data-chart="{_e(kind)}" data-table="{_e(table)}" role="img"'
        f' aria-label="{_e(label)}" width="{WIDTH}" height="{height}"'
        f' viewBox="0 0 {WIDTH} {height}">'
    )


def _empty_svg(kind: str, table: str, label: str, text: str) -> str:
    return (
        _svg_open(kind, table, 80, label)
        + f'<text class="empty" x="{WIDTH / 2:.0f}" y="44" text-anchor="middle">{_e(text)}</text>'
        + "</svg>"
    )


def bar_chart(
    kind: str, table: str, label: str, bars: list[Bar], y_label: str, x_label: str, empty: str
) -> str:
    """A vertical bar chart (stacked when bars have several segments) with a y axis of
    ``y_label`` from zero, and ``x_label`` under the bars' labels. One ``class="bar"``
    element per bar, each with a tooltip."""
    if not bars:
        return _empty_svg(kind, table, label, empty)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [b.total for b in bars]
    top, intervals = _ticks(max(totals), whole=all(t == int(t) for t in totals))
    base = TOP + plot_h
    parts = [_svg_open(kind, table, HEIGHT, label)]
    for i in range(intervals + 1):  # gridlines and y ticks from 0 to top
        v = top * i / intervals
        y = base - plot_h * i / intervals
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_num(v))}</text>'
        )
    slot = plot_w / len(bars)
    width = max(1.0, min(48.0, slot * 0.8))
    every = math.ceil(len(bars) / MAX_X_LABELS)
    for i, b in enumerate(bars):
        x = LEFT + slot * i + (slot - width) / 2
        parts.append(
            f'<g class="bar" data-value="{_e(_num(b.total))}"><title>{_e(b.title)}</title>'
        )
        y = base
        for s in b.segments:
            h = plot_h * s.value / top
            y -= h
            parts.append(
                f'<rect class="seg" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}"'
                f' fill="{_e(s.colour)}"><title>{_e(s.title)}</title></rect>'
            )
        parts.append("</g>")
        if i % every == 0:  # at most MAX_X_LABELS labels, evenly spread
            cx = LEFT + slot * i + slot / 2
            parts.append(
                f'<text x="{cx:.1f}" y="{base + 12:.1f}" text-anchor="end"'
                f' transform="rotate(-30 {cx:.1f} {base + 12:.1f})">{_e(b.label)}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{base}"/>'
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}"/>'
        f'<text x="14" y="{TOP + plot_h / 2:.1f}" text-anchor="middle"'
        f' transform="rotate(-90 14 {TOP + plot_h / 2:.1f})">{_e(y_label)}</text>'
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{_e(x_label)}</text></svg>"
    )
    return "".join(parts)


def count_chart(kind: str, table: str, label: str, rows: list[tuple[str, int]], empty: str) -> str:
    """Horizontal bars, one per (label, count), longest first as given."""
    if not rows:
        return _empty_svg(kind, table, label, empty)
    text_w, row_h = 300, 22
    height = TOP + row_h * len(rows) + 30
    plot_w = WIDTH - text_w - RIGHT - 40
    top = max(n for _, n in rows)
    parts = [_svg_open(kind, table, height, label)]
    for i, (name, n) in enumerate(rows):
        y = TOP + row_h * i
        w = max(1.0, plot_w * n / top)
        short = name if len(name) <= 48 else name[:47] + "…"
        parts.append(
            f'<text x="{text_w - 6}" y="{y + 14}" text-anchor="end">{_e(short)}</text>'
            f'<g class="bar" data-value="{n}"><title>{_e(name)}: {n}</title>'
            f'<rect class="seg" x="{text_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}"'
            f' fill="{RETRY_COLOUR}"/></g>'
            f'<text x="{text_w + w + 4:.1f}" y="{y + 14}">{n}</text>'
        )
    base = TOP + row_h * len(rows)
    parts.append(
        f'<line class="axis" x1="{text_w}" x2="{text_w}" y1="{TOP}" y2="{base}"/>'
        f'<text x="{text_w + plot_w / 2:.0f}" y="{base + 22}" text-anchor="middle">'
        "attempts retried (step · outcome · cause)</text></svg>"
    )
    return "".join(parts)


def _batch_label(b: dict[str, Any]) -> str:
    at = b["published_at"]
    return f"#{b['batch']} " + (
        datetime.fromisoformat(at).astimezone(UTC).strftime("%m-%d %H:%M") if at else "-"
    )


def step_durations(job: JobConfig, runs: int) -> list[dict[str, Any]]:
    """The window's runs, oldest first: ``{run_id, started_at, outcome, steps}`` where steps
    maps (table or None for job-wide steps, step) to the milliseconds of all its attempts."""
    path = deltaferry_home() / job.name / "state.duckdb"
    if not path.exists():
        return []
    state = StateStore(job.name, path, read_only=True)
    with state.connect(read_only=True) as con:
        window = con.execute(WINDOW_SQL, [runs]).fetchall()
        rows = con.execute(
            "SELECT run_id, tbl, step, sum(coalesce(duration_ms, 0)) FROM ops_log WHERE run_id IN"
            f" (SELECT unnest(?::VARCHAR[])) AND outcome IN ({', '.join(repr(a) for a in ATTEMPTS)})"
            " GROUP BY ALL ORDER BY min(id)",
            [[r[0] for r in window]],
        ).fetchall()
    by_run: dict[str, dict[tuple[str | None, str], float]] = {r[0]: {} for r in window}
    for run_id, tbl, step, ms in rows:
        by_run[run_id][(tbl, step)] = float(ms)
    return [
        {"run_id": r[0], "started_at": r[1], "outcome": r[3], "steps": by_run[r[0]]}
        for r in reversed(window)
    ]


def _duration_bars(table: str, history: list[dict[str, Any]]) -> tuple[list[Bar], list[str]]:
    bars, seen = [], []
    for run in history:
        segments = []
        for (tbl, step), ms in run["steps"].items():
            if tbl not in (None, table):
                continue
            if step not in seen:
                seen.append(step)
            segments.append(
                Segment(ms / 1000, STEP_COLOURS.get(step, OTHER_COLOUR), f"{step}: {ms:.0f} ms")
            )
        outcome = run["outcome"] or "running or killed"
        started = run["started_at"].astimezone(UTC).strftime("%m-%d %H:%M")
        bars.append(
            Bar(
                label=started if outcome == "ok" else f"{started} ({outcome})",
                title=f"run {run['run_id'][:8]} started {_when(run['started_at'])} UTC, "
                f"{outcome}: {sum(s.value for s in segments):.2f} s",
                segments=segments,
            )
        )
    return bars, seen


def _legend(steps: list[str]) -> str:
    return (
        '<div class="legend">'
        + "".join(
            f'<span><i style="background:{_e(STEP_COLOURS.get(s, OTHER_COLOUR))}"></i>{_e(s)}</span>'
            for s in steps
        )
        + "</div>"
    )


def _lag_text(s: dict[str, Any]) -> str:
    if s["lag_seconds"] is None:
        return "no batch published yet"
    if s["lag_basis"] == LAG_NEWEST_CHANGE:
        text = (
            f"{human_duration(s['lag_seconds'])} since the newest source change published "
            f"(cursor {s['newest_change_published']})"
        )
    else:
        text = (
            f"{human_duration(s['lag_seconds'])} since the last publish "
            "(the cursor is not a timestamp)"
        )
    return text + f"; last batch published {_when(s['last_published_at'])} UTC"


def _summary_table(status: dict[str, Any]) -> str:
    head = (
        "<tr><th class=l>table</th><th>last batch</th><th>rows published</th>"
        "<th>batches (window)</th><th>batch rows last / mean / max</th>"
        "<th class=l>rows per batch</th><th>quarantined / planned rows</th><th>quarantine</th>"
        "<th>retried / attempts</th><th>retry</th><th>lag</th><th class=l>lag since</th>"
        "<th>pending batch</th></tr>"
    )
    rows = []
    for name, s in status["tables"].items():
        b, q, r = s["batch_rows"], s["quarantine"], s["retries"]
        sizes = f"{b['last']} / {_num(b['mean'])} / {b['max']}" if b["count"] else "-"
        basis = s["lag_basis"] or "-"
        pending = s["pending_batch"]
        rows.append(
            "<tr>"
            f"<td class=l><a href='#table-{_e(name)}'>{_e(name)}</a></td>"
            f"<td>{_e(s['last_batch'])}</td><td>{_e(s['rows_published'])}</td>"
            f"<td>{_e(b['count'])}</td><td>{_e(sizes)}</td>"
            f"<td class='l spark'>{_e(s['sparkline'] or '-')}</td>"
            f"<td>{_e(q['rows'])} / {_e(q['rows_planned'])}</td><td>{_e(percent(q['rate']))}</td>"
            f"<td>{_e(r['retried'])} / {_e(r['attempts'])}</td><td>{_e(percent(r['rate']))}</td>"
            f"<td>{_e(human_duration(s['lag_seconds']))}</td><td class=l>{_e(basis)}</td>"
            f"<td>{_e(pending['batch'] if pending else '-')}</td>"
            "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _table_section(name: str, s: dict[str, Any], history: list[dict[str, Any]], n: int) -> str:
    batches = s["batches"]
    window = f"the last {n} runs"
    rows_bars = [
        Bar(
            _batch_label(b),
            f"batch {b['batch']}, published {_when(b['published_at'])} UTC: {b['rows']} rows",
            [Segment(b["rows"], BAR_COLOUR, f"{b['rows']} rows")],
        )
        for b in batches
    ]
    held_bars = [
        Bar(
            _batch_label(b),
            f"batch {b['batch']}: {b['quarantined']} rows held back",
            [Segment(b["quarantined"], QUARANTINE_COLOUR, f"{b['quarantined']} rows")],
        )
        for b in batches
    ]
    duration_bars, steps = _duration_bars(name, history)
    causes = [
        (f"{c['step']} · {c['outcome']} · {c['cause']}", c["count"])
        for c in s["retries"]["by_cause"]
    ]
    x_batches = "batch and when it was published (UTC)"
    figures = [
        (
            "rows per batch",
            bar_chart(
                "rows",
                name,
                f"rows per batch of {name}",
                rows_bars,
                "rows",
                x_batches,
                f"no batch published in {window}",
            ),
        ),
        (
            "quarantined rows per batch",
            bar_chart(
                "quarantined",
                name,
                f"quarantined rows per batch of {name}",
                held_bars,
                "rows held back",
                x_batches,
                f"no batch published in {window}",
            ),
        ),
        (
            "step durations per run (this table's steps and the job-wide extract)",
            bar_chart(
                "durations",
                name,
                f"step durations per run of {name}",
                duration_bars,
                "seconds",
                "run started (UTC)",
                f"no runs in {window}",
            )
            + (_legend(steps) if steps else ""),
        ),
        (
            "retries by cause",
            count_chart(
                "retries", name, f"retries by cause of {name}", causes, f"no retries in {window}"
            ),
        ),
    ]
    batch_rows = "".join(
        f"<tr><td>{_e(b['batch'])}</td><td class=l>{_e(_when(b['published_at']))}</td>"
        f"<td>{_e(b['rows'])}</td><td>{_e(b['quarantined'])}</td></tr>"
        for b in batches
    )
    return (
        f'<section id="table-{_e(name)}"><h2>Table <code>{_e(name)}</code></h2>'
        f'<p class="meta">Lag: {_e(_lag_text(s))}.</p>'
        f'<p class="meta">Rows per batch: <span class="spark">{_e(s["sparkline"] or "-")}</span>'
        f" · quarantine {_e(percent(s['quarantine']['rate']))}"
        f" · retries {_e(percent(s['retries']['rate']))}</p>"
        '<div class="charts">'
        + "".join(
            f"<figure><figcaption>{_e(title)}</figcaption>{svg}</figure>" for title, svg in figures
        )
        + "</div>"
        + (
            "<details><summary>batches</summary><table><tr><th>batch</th>"
            "<th class=l>published (UTC)</th><th>rows</th><th>quarantined</th></tr>"
            f"{batch_rows}</table></details>"
            if batches
            else ""
        )
        + "</section>"
    )


def render_report(job: JobConfig, runs: int = DEFAULT_RUNS) -> str:
    """The report page of ``job`` over its last ``runs`` runs, as one HTML string."""
    status = job_status(job, runs)
    history = step_durations(job, runs)
    r = status["runs"]
    last = status.get("last_run")
    if last:
        last_text = f"{last['outcome']} (started {_when(last['started_at'])} UTC)"
        if last.get("detail"):
            last_text += f": {last['detail'][:500]}"
    else:
        last_text = "never run"
    window = (
        f"{r['count']} runs since {_when(r['since'])} UTC: {r['ok']} ok, {r['failed']} failed,"
        f" {r['unfinished']} running or killed"
        if r["count"]
        else "no runs yet"
    )
    body = [
        f"<h1>deltaferry job <code>{_e(job.name)}</code></h1>",
        f'<p class="meta">lake {_e(job.lake)} · generated {_e(_when(now()))} UTC'
        f" · the last {_e(runs)} runs ({_e(window)})</p>",
        f'<p class="meta{" failed" if last and last["outcome"] != "ok" else ""}">'
        f"Last run: {_e(last_text)}</p>",
        "<h2>Summary</h2>",
        _summary_table(status),
        '<p class="meta">Quarantine: rows held back by the contract / rows changed (published'
        " or planned, plus held back) in these runs. Retry: step attempts that failed"
        " transiently (retry, exhausted, source-retry) / step attempts, counting the table's"
        " steps and the job-wide extract. Lag: now minus the newest cursor value published"
        " when the cursor is a timestamp, else now minus the last publish.</p>",
    ]
    body += [_table_section(name, s, history, runs) for name, s in status["tables"].items()]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>deltaferry report: {_e(job.name)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_report(job: JobConfig, path: Path, runs: int = DEFAULT_RUNS) -> Path:
    """Write the report to ``path`` (replaced whole: a reader never sees half a file)."""
    page = render_report(job, runs)
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
