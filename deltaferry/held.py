"""Rows a reader held back from an applied batch (``_deltaferry_held``), for every replica:
a single producer's chain and several producers' alike.

``readers.py`` (``Reading.admit``) decides which rows are held; the pull records how many
in the batch's own transaction (``replica.py``, ``merge.py``); ``reader_contract.py``
reads them again when the reader's contract changes.
"""

from __future__ import annotations

import duckdb

HELD_META = """
-- rows a reader held back from an applied batch (readers.py: Reading.admit), under the
-- reader contract ref and fingerprint; read again when either changes (or on request)
CREATE TABLE IF NOT EXISTS _deltaferry_held (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL,
    producer VARCHAR NOT NULL,        -- '' for a single producer's chain
    batch BIGINT NOT NULL, rows BIGINT NOT NULL,
    ref VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL,
    PRIMARY KEY (job, tbl, producer, batch)
);
"""


def record_held(
    con: duckdb.DuckDBPyConnection,
    job: str,
    table: str,
    producer: str,
    batch: int,
    rows: int,
    ref: str,
    fingerprint: str,
) -> None:
    """Record (``rows`` > 0) or clear (0) the rows a reader held back from an applied batch
    (``producer`` '' for a single producer's chain), inside the caller's transaction."""
    con.execute(
        "DELETE FROM _deltaferry_held WHERE job = ? AND tbl = ? AND producer = ? AND batch = ?",
        [job, table, producer, batch],
    )
    if rows:
        con.execute(
            "INSERT INTO _deltaferry_held VALUES (?, ?, ?, ?, ?, ?, ?)",
            [job, table, producer, batch, rows, ref, fingerprint],
        )
