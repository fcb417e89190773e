"""Known positions in a job's chains, for ``deltaferry verify`` to check the lake reaches.

A position is how far someone has got in one chain: a replica (the last batch it applied
of each table, or of each producer's chain of it), the producer itself (its checkpoint in
``$DELTAFERRY_HOME/<job>/state.duckdb``: the last batch whose manifest it stored), or a
batch number an operator gives (``--at TABLE=BATCH``). The lake must reach each: a head
below it means the newest manifests are gone (``verify.check_position``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from deltaferry import duck
from deltaferry.config import JobConfig, deltaferry_home
from deltaferry.errors import ConfigError


@dataclass(frozen=True)
class Position:
    """``batch`` of ``table`` (of ``producer``'s chain with several producers) held by
    ``whose``; ``manifest_sha256`` when known (then the lake's manifest there must match)."""

    table: str
    producer: str | None
    batch: int
    manifest_sha256: str | None
    whose: str


def from_replica(job: JobConfig, replica: Path) -> list[Position]:
    """What a replica has applied of each table (each producer's chain with several
    producers). ConfigError if the file is missing or is not a deltaferry replica."""
    if not replica.exists():
        raise ConfigError(f"job '{job.name}': replica {replica} does not exist")
    whose = f"replica {replica}"
    con = duck.connect_replica(replica, read_only=True)
    try:
        if job.multi_producer:
            sql = (
                "SELECT tbl, producer, batch, manifest_sha256 FROM _deltaferry_chains c"
                " WHERE job = ? AND batch = (SELECT max(batch) FROM _deltaferry_chains d"
                " WHERE d.job = c.job AND d.tbl = c.tbl AND d.producer = c.producer)"
            )
        else:
            sql = (
                "SELECT tbl, NULL, batch, manifest_sha256 FROM _deltaferry_batches b"
                " WHERE job = ? AND batch = (SELECT max(batch) FROM _deltaferry_batches d"
                " WHERE d.job = b.job AND d.tbl = b.tbl)"
            )
        try:
            rows = con.execute(sql, [job.name]).fetchall()
        except duckdb.CatalogException:
            raise ConfigError(
                f"job '{job.name}': {replica} is not a replica of this job (no batches table)"
            ) from None
    finally:
        con.close()
    return [Position(t, p, b, s, whose) for t, p, b, s in sorted(rows, key=str)]


def from_checkpoint(job: JobConfig) -> list[Position]:
    """This producer's checkpoints (``$DELTAFERRY_HOME/<job>/state.duckdb``), if that file
    exists; an empty list otherwise (a reader's machine). While another process holds the
    file, waits as ``StateStore`` does (``LOCK_WAIT_SECONDS``), then StateBusyError."""
    path = deltaferry_home() / job.name / "state.duckdb"
    if not path.exists():
        return []
    from deltaferry.state import StateStore

    # through the store: while a run holds the file (a step at work), wait for it as
    # ``status`` does, rather than fail on DuckDB's lock (a fresh-user trial's `verify`)
    with StateStore(job.name, path, read_only=True).peek() as con:
        try:
            rows = con.execute(
                "SELECT tbl, batch, manifest_sha256 FROM checkpoints ORDER BY tbl"
            ).fetchall()
        except duckdb.CatalogException:
            return []
    producer = job.producer_id if job.multi_producer else None
    whose = f"this producer's checkpoint ({path})"
    return [Position(t, producer, b, s, whose) for t, b, s in rows]


def from_option(job: JobConfig, text: str) -> Position:
    """``TABLE=BATCH`` (or ``TABLE/PRODUCER=BATCH`` with several producers) given with
    ``--at``; ConfigError for anything else or an unknown table."""
    target, eq, number = text.partition("=")
    table, slash, producer = target.partition("/")
    if not eq or not number.strip().isdigit() or (slash and not producer):
        raise ConfigError(
            f"job '{job.name}': --at {text!r}: expected TABLE=BATCH"
            + (" or TABLE/PRODUCER=BATCH" if job.multi_producer else "")
        )
    job.table(table)
    if job.multi_producer and not slash:
        producer = job.producer_id
    if slash and not job.multi_producer:
        raise ConfigError(f"job '{job.name}': --at {text!r}: the job has one producer")
    return Position(
        table, producer or None, int(number), None, f"the position given (--at {text})"
    )
