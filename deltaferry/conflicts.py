"""Several producers: the conflict records a replica keeps (``_deltaferry_conflicts``, written
by ``resolve.py``), as rows, hotspots and Markdown for ``deltaferry conflicts show`` and
the pull flow's artifact.
"""

from __future__ import annotations

from typing import Any

import duckdb

from deltaferry.duck import column_types


def conflict_rows(
    con: duckdb.DuckDBPyConnection, job: str, table: str | None = None
) -> list[tuple]:
    """Every conflict record of the job (or one table), in a stable order: tuples of
    (table, key, winner producer, batch, logical timestamp, op, row JSON, the same five of
    the loser, rule, logical_at (the winner's wall-clock part, a UTC datetime), logical
    timestamp the record is ordered by (counter included; ``newest``))."""
    where = "job = ?" + (" AND tbl = ?" if table else "")
    return con.execute(
        "SELECT tbl, key, winner_producer, winner_batch, winner_hlc, winner_op, winner_row,"
        " loser_producer, loser_batch, loser_hlc, loser_op, loser_row, rule, logical_at,"
        " coalesce(logical_hlc, winner_hlc, CAST(epoch_ms(logical_at) AS BIGINT) << 16)"
        f" FROM _deltaferry_conflicts WHERE {where}"
        " ORDER BY tbl, key, winner_hlc NULLS LAST, winner_producer, loser_hlc, loser_producer, rule",
        [job, table] if table else [job],
    ).fetchall()


def newest(rows: list[tuple], limit: int) -> list[tuple]:
    """The ``limit`` newest of ``conflict_rows`` by full logical time, counter included
    (two records in the same millisecond order by their counters); ties by table, key."""
    return sorted(
        rows,
        key=lambda r: (r[14] is not None, r[14] or 0, r[0], r[1]),
        reverse=True,
    )[:limit]


def hotspots(
    con: duckdb.DuckDBPyConnection, job: str, limit: int = 10
) -> dict[str, list[tuple[Any, ...]]]:
    """Where conflicts concentrate: tables, keys, producer pairs, and days (by logical time)."""
    queries = {
        "tables": "SELECT tbl, count(*) AS n FROM _deltaferry_conflicts WHERE job = ?"
        " GROUP BY tbl ORDER BY n DESC, tbl",
        "keys": "SELECT tbl, key, count(*) AS n FROM _deltaferry_conflicts WHERE job = ?"
        " GROUP BY tbl, key ORDER BY n DESC, tbl, key",
        "producer pairs": "SELECT least(winner_producer, loser_producer) || ' / ' ||"
        " greatest(winner_producer, loser_producer) AS pair, count(*) AS n"
        " FROM _deltaferry_conflicts WHERE job = ? GROUP BY pair ORDER BY n DESC, pair",
        "days": "SELECT strftime(logical_at AT TIME ZONE 'UTC', '%Y-%m-%d') AS day, count(*) AS n"
        " FROM _deltaferry_conflicts WHERE job = ? GROUP BY day ORDER BY day DESC",
    }
    return {
        name: con.execute(f"{q} LIMIT {int(limit)}", [job]).fetchall()
        for name, q in queries.items()
    }


def has_conflict_table(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(column_types(con, "_deltaferry_conflicts"))


def conflicts_markdown(
    con: duckdb.DuckDBPyConnection, job: str, limit: int = 10, level: int = 1
) -> str:
    """The conflicts of a replica as Markdown: hotspots first, then the newest records;
    ``level`` is the heading level of its title."""
    title = "#" * level + f" Conflicts of job `{job}`"
    rows = conflict_rows(con, job)
    if not rows:
        return f"{title}\n\nNo conflicts recorded.\n"
    lines = [title, "", f"{len(rows)} conflict records.", ""]
    for name, found in hotspots(con, job, limit).items():
        lines += [f"## Hotspots: {name}", "", "| " + name + " | conflicts |", "|---|---:|"]
        lines += [f"| {' '.join(str(x) for x in r[:-1])} | {r[-1]} |" for r in found]
        lines.append("")
    lines += [
        "## Newest records",
        "",
        "| table | key | winner | loser | rule |",
        "|---|---|---|---|---|",
    ]
    for r in newest(rows, limit):
        lines.append(
            f"| {r[0]} | {r[1]} | {version_text(r[2], r[3], r[5], r[6])} |"
            f" {version_text(r[7], r[8], r[10], r[11])} | {r[12]} |"
        )
    return "\n".join(lines) + "\n"


def version_text(producer: str, batch: int | None, op: str, row: str | None) -> str:
    where = producer if batch is None else f"{producer}#{batch}"
    return f"{where} deleted" if op == "delete" else f"{where} {row}"
