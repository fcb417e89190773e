"""Rows a reader held back from an applied batch, and batches it applied below the
contract version they were published at (``_deltaferry_held``), for every replica: a
single producer's chain and several producers' alike.

``readers.py`` (``Reading.admit``) decides which rows are held and reads a newer batch
partially (its unknown columns left out, or taken down by a downgrade); the pull records
both in the batch's own transaction (``replica.py``, ``merge.py``); ``reader_contract.py``
reads those batches again when the reader's contract changes, so that what the new
contract admits arrives: the held rows, and the values a partial read left out (a reader
that moved up to the producer's version kept NULL where the lake had values).
"""

from __future__ import annotations

from typing import Any

import duckdb

HELD_META = """
-- rows a reader held back from an applied batch (readers.py: Reading.admit), and batches
-- it read partially, under the reader contract ref and fingerprint; read again when either
-- changes (or on request)
CREATE TABLE IF NOT EXISTS _deltaferry_held (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL,
    producer VARCHAR NOT NULL,        -- '' for a single producer's chain
    batch BIGINT NOT NULL, rows BIGINT NOT NULL,
    ref VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL,
    partial BOOLEAN,                  -- read below its published version (NULL: no)
    PRIMARY KEY (job, tbl, producer, batch)
);
"""


def ensure_held_table(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``_deltaferry_held`` (and add ``partial`` to one an older pull made)."""
    from deltaferry import duck

    con.execute(HELD_META)
    duck.add_columns(con, "_deltaferry_held", {"partial": "BOOLEAN"})


def read_partially(reading: Any, manifest: Any) -> bool:
    """Whether ``reading`` (a ``readers.Reading``) applies a batch published with
    ``manifest`` below its version: its columns the reader does not know left out, or taken
    down by a downgrade (what a later contract of the reader may read in full)."""
    return manifest.contract.version > reading.known


def record_held(
    con: duckdb.DuckDBPyConnection,
    job: str,
    table: str,
    producer: str,
    batch: int,
    rows: int,
    ref: str,
    fingerprint: str,
    partial: bool = False,
) -> None:
    """Record (``rows`` > 0, or ``partial``: read below its published version) or clear the
    rows a reader held back from an applied batch (``producer`` '' for a single producer's
    chain), inside the caller's transaction."""
    con.execute(
        "DELETE FROM _deltaferry_held WHERE job = ? AND tbl = ? AND producer = ? AND batch = ?",
        [job, table, producer, batch],
    )
    if rows or partial:
        con.execute(
            "INSERT INTO _deltaferry_held (job, tbl, producer, batch, rows, ref, fingerprint,"
            " partial) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [job, table, producer, batch, rows, ref, fingerprint, partial or None],
        )
