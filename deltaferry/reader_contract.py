"""What a change of the reader's own contract does to its replica.

A replica records, per table, the contract its stored rows are held at
(``_deltaferry_contracts``) and the rows it held back from applied batches and under
which contract (``_deltaferry_held``). When the reader's jobs file moves to another
contract, ``hold_reader_contract`` takes the stored rows through the chain's migrations
(or refuses in one line), and ``reread_held`` reads the batches with held rows again so
that what the new contract admits arrives. Both run at the start of each table's pull
(``replica.pull``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig
from deltaferry.duck import duck_type, fetch_one, fetch_row, ident
from deltaferry.held import read_partially, record_held
from deltaferry.keys import Keyring
from deltaferry.replica_apply import admit_files, is_placeholder, merge_into, replace_placeholder
from deltaferry.verify import iter_verified
from destinations.lake import LakeStore


def hold_reader_contract(
    con: duckdb.DuckDBPyConnection, job: JobConfig, t: TableConfig, chain: Any, whose: str
) -> str | None:
    """Keep the table's stored rows at this reader's contract (its chain's newest version).

    The replica records, per table, the contract (ref, version, fingerprint) its rows are
    held at. When the reader's jobs file moves to another contract, the stored rows are
    taken through the chain's migrations from the recorded version (found by fingerprint)
    to the new one, in one transaction with the new record, so old and new rows have the
    same shape and the replica satisfies its own contract. A recorded contract that is no
    version of the new chain, or rows a migration refuses, stop the table with one line
    (``ContractChangeRefused``: the reader's record in the lake is marked stuck) and change
    nothing. Migrated rows must satisfy the new contract (else ``ContractChangeRefused``).
    A replica without a record (a new one, or one written before records were kept)
    records the current contract as it is. Returns what was done to the stored rows (one
    line), or None when nothing was.

    The rows are read, migrated, validated and written ``rows_per_file`` rows at a time
    (as the producer migrates and validates its chunks), inside the one transaction:
    memory holds one chunk, not the table."""
    from deltaferry.readers import ContractChangeRefused

    now = chain.contract()
    where = f"job '{job.name}' table '{t.name}'"
    held = fetch_one(
        con,
        "SELECT ref, version, fingerprint FROM _deltaferry_contracts WHERE job = ? AND tbl = ?",
        [job.name, t.name],
    )
    record = (
        "INSERT OR REPLACE INTO _deltaferry_contracts (job, tbl, ref, version, fingerprint) "
        "VALUES (?, ?, ?, ?, ?)"
    )
    values = [job.name, t.name, now.ref, now.version, now.fingerprint]
    if held is not None and held[2] == now.fingerprint:
        if (held[0], held[1]) != (now.ref, now.version):
            con.execute(record, values)  # the same contract under another name
        return None
    if held is None or not duck.table_exists(con, t.name):
        con.execute(record, values)
        return None
    empty = fetch_one(con, f"SELECT 1 FROM {ident(t.name)} LIMIT 1") is None
    if empty and is_placeholder(con, t.name):  # nothing to migrate: made again at the end
        with duck.transaction(con):
            replace_placeholder(con, t.name)
            con.execute(record, values)
        return None
    ref, version, fingerprint = held
    old = next((v for v in chain.versions if chain.contract(v).fingerprint == fingerprint), None)
    if old is None or not chain.reachable(old, now.version):
        raise ContractChangeRefused(
            f"{where}: {whose} holds its rows at contract {ref} v{version} (fingerprint "
            f"{fingerprint[:12]}), which is no version of this reader's {now.ref} that can reach "
            f"v{now.version} (fingerprint {now.fingerprint[:12]}); the stored rows cannot be "
            "migrated: name the versions as one Chain, oldest first, the old one included and "
            "each later one with its upgrade (README, 'Contract versions, readers and "
            "migrations'), pull into a new replica, or go back to the old contract"
        )
    temp = f"_deltaferry_migrating_{t.name}"
    moved_rows = 0
    with duck.transaction(con):
        con.execute(f"DROP TABLE IF EXISTS {ident(temp)}")
        for stored in _stored_chunks(con, t.name, job.rows_per_file):
            moved = _migrated(stored, chain, old, now, where, whose, ref, version)
            if moved_rows == 0 and not duck.table_exists(con, temp):
                defs = ", ".join(f"{ident(f.name)} {duck_type(f)}" for f in moved.schema)
                # no PRIMARY KEY, as every replica table (replica_apply.BatchMerge): the
                # rows come from the table, one per key
                con.execute(f"CREATE TABLE {ident(temp)} ({defs})")
            cols = ", ".join(ident(c) for c in moved.column_names)
            duck.with_arrow(
                con, moved, f"INSERT INTO {ident(temp)} ({cols}) SELECT {cols} FROM {duck.ARROW}"
            )
            moved_rows += moved.num_rows
        con.execute(f"DROP TABLE {ident(t.name)}")
        con.execute(f"ALTER TABLE {ident(temp)} RENAME TO {ident(t.name)}")
        con.execute(record, values)
    steps = ", ".join(chain.steps(old, now.version)) or "no migration: same columns"
    return (
        f"{moved_rows} stored row(s) taken from {ref} v{version} to {now.ref} "
        f"v{now.version} ({steps})"
    )


def _stored_chunks(con: duckdb.DuckDBPyConnection, table: str, rows: int) -> Iterator[pa.Table]:
    """The stored rows of ``table``, ``rows`` at a time (at least one chunk, empty for an
    empty table, so the migrated shape is known), read through a cursor of ``con``'s
    database so that ``con`` can write between chunks (``table`` is not written until every
    chunk is read)."""
    db = fetch_row(con, "SELECT current_database()")[0]
    cur = con.cursor()
    try:
        reader = cur.execute(f"SELECT * FROM {ident(db)}.main.{ident(table)}").fetch_record_batch(
            max(1, rows)
        )
        first = True
        for chunk in reader:
            first = False
            yield pa.Table.from_batches([chunk])
        if first:
            yield reader.schema.empty_table()
    finally:
        cur.close()


def _migrated(
    stored: pa.Table,
    chain: Any,
    old: int,
    now: Any,
    where: str,
    whose: str,
    ref: str,
    version: int,
) -> pa.Table:
    """One chunk of stored rows taken from version ``old`` to the contract ``now`` (the
    replica's own columns kept), validated against it; ContractChangeRefused when the
    migration refuses a row or a migrated row breaks ``now``."""
    from contracts import MigrationError
    from deltaferry.merge_tables import REPLICA_COLUMNS
    from deltaferry.readers import ContractChangeRefused

    own = [c for c in stored.column_names if c in REPLICA_COLUMNS]
    try:
        moved = chain.migrate_arrow(stored.drop_columns(own), old, now.version)
    except MigrationError as e:
        raise ContractChangeRefused(
            f"{where}: {whose} holds its rows at {ref} v{version}; taking them to "
            f"{now.ref} v{now.version} failed ({e}); nothing changed: pull into a new replica"
        ) from None
    data_cols = [c for c in now.columns if c in moved.column_names]
    from deltaferry.delta import validate_rows

    checked = validate_rows(now, moved.select(data_cols))
    if checked.failed_rows:
        raise ContractChangeRefused(
            f"{where}: {whose} holds its rows at {ref} v{version}; {len(checked.failed_rows)} of "
            f"them break {now.ref} v{now.version} once migrated ({checked.summary()}); nothing "
            "changed: fix the chain's upgrade, or pull into a new replica"
        )
    for c in own:
        moved = moved.append_column(c, stored[c])
    return moved


def reread_held(
    con: duckdb.DuckDBPyConnection,
    job: JobConfig,
    lake: LakeStore,
    t: TableConfig,
    keyring: Keyring | None,
    reading: Any,
    retry: bool = False,
) -> tuple[int, int, int]:
    """Read again the applied batches whose rows this reader held back under another
    contract (``_deltaferry_held`` rows of another ref or fingerprint), now that its
    contract changed, or all of them with ``retry`` (a migration fixed in place keeps its
    ref and fingerprint), and apply what the contract admits now; and the batches it read
    partially (below their published version), whose rows of that batch are replaced by
    the batch read again (the columns the partial read left out, NULL in stored rows a
    migration took up, arrive). Returns (rows that were held, rows still held: recorded
    under the new contract, batches read partially that were read again); the others are
    applied, or were superseded meanwhile by a later change of their key (a delete, a full
    row).

    A single producer's chain is replayed from the first batch with held rows to the last
    applied one (newer ``_seq`` wins, so rows already applied change nothing and a later
    delete still deletes); for several producers, only the versions the replica lacks are
    added to each batch's producer and re-resolved. One transaction; read with the partial
    policy (these batches were applied before: re-reading never stops at a version), so it
    stops only on a batch that no longer verifies or a fingerprint mismatch (a column a batch
    brings wider raises ``duck.WidenFirst``: the caller runs this in ``duck.applying``). Memory: one
    file at a time (``replica_apply.admit_files``); cost: the batches from the first held one on, once per contract
    change."""
    from deltaferry import merge, merge_tables

    own = (reading.contract.ref, reading.contract.fingerprint)
    held = con.execute(
        "SELECT producer, batch, rows, coalesce(partial, false) FROM _deltaferry_held"
        " WHERE job = ? AND tbl = ? AND (? OR ref <> ? OR fingerprint <> ?)"
        " ORDER BY producer, batch",
        [job.name, t.name, retry, *own],
    ).fetchall()
    if not held:
        return 0, 0, 0
    again = dataclasses.replace(reading, policy="partial")
    note = f"read again under {reading.contract.ref} (v{reading.known})"
    where = f"job '{job.name}' table '{t.name}'"
    before, still = sum(r[2] for r in held), 0
    partial = {(producer, batch) for producer, batch, _, p in held if p}
    merge_tables.keys_in_utc(con)
    con.execute("BEGIN TRANSACTION")
    try:
        if job.multi_producer:
            shape = merge_tables.TableShape(job.name, t.name, list(t.primary_key))
            for producer, batch, n, _ in held:
                applied = {
                    b: (sha, hlc)
                    for b, sha, hlc in con.execute(
                        "SELECT batch, manifest_sha256, hlc FROM _deltaferry_chains WHERE job = ?"
                        " AND tbl = ? AND producer = ? AND batch IN (?, ?)",
                        [job.name, t.name, producer, batch - 1, batch],
                    ).fetchall()
                }
                if batch not in applied:
                    record_held(con, job.name, t.name, producer, batch, 0, *own)
                    continue
                full = (producer, batch) in partial  # versions read partially: replaced
                prev_sha, prev_hlc = applied.get(batch - 1, (None, None))
                vb = next(
                    iter_verified(  # file by file, as a pull applies them
                        lake,
                        job.name,
                        t.name,
                        after=batch - 1,
                        prev_sha256=prev_sha,
                        keyring=keyring,
                        producer=producer,
                        prev_hlc=prev_hlc,
                        stream=True,
                    )
                )
                _same_batch(where, producer, vb, batch, applied[batch][0])
                hlc = vb.manifest.clock
                _, _, n_still = admit_files(
                    con,
                    vb,
                    again,
                    producer,
                    lambda d, p=producer, b=batch, h=hlc, f=full: merge.apply_held(
                        con, shape, p, b, h, d, partial=f
                    ),
                )
                record_held(
                    con, job.name, t.name, producer, batch, n_still, *own,
                    partial=read_partially(again, vb.manifest),
                )
                still += n_still
                con.execute(
                    "UPDATE _deltaferry_chains SET caution = coalesce(caution, '') || ? WHERE job = ? AND"
                    " tbl = ? AND producer = ? AND batch = ?",
                    [
                        f"; {note}" + (f": {n_still} of {n} row(s) still held" if n else ""),
                        job.name,
                        t.name,
                        producer,
                        batch,
                    ],
                )
        else:
            first = held[0][1]
            recorded = dict(
                con.execute(
                    "SELECT batch, manifest_sha256 FROM _deltaferry_batches WHERE job = ?"
                    " AND tbl = ? AND batch >= ?",
                    [job.name, t.name, first - 1],
                ).fetchall()
            )
            last = max(recorded, default=0)
            counts = {b: n for _, b, n, _ in held}
            for vb in iter_verified(  # file by file, as a pull applies them
                lake,
                job.name,
                t.name,
                after=first - 1,
                prev_sha256=recorded.get(first - 1),
                keyring=keyring,
                stream=True,
            ):
                if vb.batch > last:
                    break
                _same_batch(where, None, vb, vb.batch, recorded.get(vb.batch))
                full = ("", vb.batch) in partial  # rows read partially: replaced
                _, _, n = admit_files(
                    con, vb, again, None, merge_into(con, t, job.name, same_seq=full)
                )
                if vb.batch in counts:
                    record_held(
                        con, job.name, t.name, "", vb.batch, n, *own,
                        partial=read_partially(again, vb.manifest),
                    )
                    still += n
                    con.execute(
                        "UPDATE _deltaferry_batches SET caution = coalesce(caution, '') || ? WHERE job = ?"
                        " AND tbl = ? AND batch = ?",
                        [
                            f"; {note}"
                            + (f": {n} of {counts[vb.batch]} row(s) still held" if counts[vb.batch] else ""),
                            job.name,
                            t.name,
                            vb.batch,
                        ],
                    )
            # a held batch past the last applied one was never applied: nothing to keep
            con.execute(
                "DELETE FROM _deltaferry_held WHERE job = ? AND tbl = ? AND batch > ?",
                [job.name, t.name, last],
            )
        con.execute("COMMIT")
    except BaseException:
        duck.rollback(con)
        raise
    return before, still, len(partial)


def _same_batch(where: str, producer: str | None, vb: Any, batch: int, sha: str | None) -> None:
    """The batch read again is the one applied (same number, same manifest)."""
    from deltaferry.errors import VerificationError

    if vb.batch != batch or vb.manifest_sha256 != sha:
        chain = f" producer '{producer}'" if producer else ""
        raise VerificationError(
            f"{where}{chain} batch {batch}: the lake's manifest ({vb.manifest_sha256[:12]}) is not "
            f"the one this replica applied ({str(sha)[:12]}); its held rows cannot be read again"
        )
