"""The figures of a real-network chaos run, from the report lines its scenarios wrote.

``tests/test_chaos.py`` appends one JSON line per scenario that converged to the file named
by ``DELTAFERRY_CHAOS_REPORT`` (seed, faults injected by kind, kills by point, runs that
failed under faults, rows checked, rows lost, rows duplicated or resurrected). This prints
their sums: scenarios by link (the lake's link alone, or the source's and the lake's),
seeds, faults by kind, kills by point, rows checked and lost/duplicated/resurrected.
A scenario that failed wrote no line: pytest's summary of the same run names it.

    DELTAFERRY_CHAOS_SEEDS=500 DELTAFERRY_CHAOS_REPORT=chaos.jsonl \\
        .venv/bin/python -m pytest -m chaos -n 3 tests/test_chaos.py -k converges
    .venv/bin/python bench/chaos_report.py chaos.jsonl [more.jsonl ...]

Exit status 1 when any line reports a row lost, duplicated or resurrected, else 0.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def summarize(lines: list[dict]) -> dict:
    """Sums over report lines (``tests/test_chaos.py:_report``'s dicts)."""
    links: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    kills: Counter[str] = Counter()
    seeds: set[int] = set()
    out = {"failed_runs": 0, "rows_checked": 0, "lost": 0, "duplicated_or_resurrected": 0}
    for line in lines:
        links[line.get("links", "lake")] += 1
        seeds.add(int(line["seed"]))
        faults.update(line.get("faults", {}))
        kills.update(line.get("kills", {}))
        for key in out:
            out[key] += int(line.get(key, 0))
    return {
        "scenarios": sum(links.values()),
        "by_link": dict(links),
        "seeds": (min(seeds), max(seeds), len(seeds)) if seeds else None,
        "faults": dict(faults.most_common()),
        "kills": dict(kills.most_common()),
        **out,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", type=Path, help="JSON-lines files of a chaos run")
    args = ap.parse_args(argv)
    lines = [
        json.loads(text)
        for path in args.reports
        for text in path.read_text().splitlines()
        if text.strip()
    ]
    s = summarize(lines)
    print(
        f"scenarios converged: {s['scenarios']} ({', '.join(f'{k}: {v}' for k, v in s['by_link'].items())})"
    )
    if s["seeds"]:
        low, high, n = s["seeds"]
        print(f"seeds: {n} distinct, {low}..{high}")
    print(f"faults injected: {sum(s['faults'].values())}")
    for kind, n in s["faults"].items():
        print(f"  {kind:<24} {n}")
    print(f"kills: {sum(s['kills'].values())}")
    for point, n in s["kills"].items():
        print(f"  {point:<24} {n}")
    print(f"runs failed under faults (and recovered by a later run): {s['failed_runs']}")
    print(f"rows checked against the source: {s['rows_checked']}")
    print(f"lost: {s['lost']}, duplicated or resurrected: {s['duplicated_or_resurrected']}")
    return 1 if s["lost"] or s["duplicated_or_resurrected"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
