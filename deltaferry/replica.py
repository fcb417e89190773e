"""Apply verified batches to a replica DuckDB file.

Each batch is applied together with the replica's own checkpoint in one DuckDB
transaction: an incoming row replaces the stored one only if its ``_seq`` is
newer, a tombstone deletes the key, and a batch already recorded is skipped, so
pulling twice changes nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig
from deltaferry.delta import SEQ_COLUMN
from deltaferry.duck import fetch_one
from deltaferry.errors import DeltaferryError, TerminalError
from deltaferry.failpoints import bug, failpoint, killed
from deltaferry.held import ensure_held_table, read_partially, record_held
from deltaferry.keys import Keyring
from deltaferry.merge_tables import HLC_COLUMN, PRODUCER_COLUMN
from deltaferry.reader_contract import hold_reader_contract, reread_held
from deltaferry.replica_apply import admit_files, create_placeholder, merge_into, merge_rows
from deltaferry.shutdown import raise_if_interrupted
from deltaferry.verify import check_position, iter_verified
from destinations.lake import LakeStore
from destinations.manifest import Manifest

_META = """
CREATE TABLE IF NOT EXISTS _deltaferry_batches (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL, batch BIGINT NOT NULL,
    manifest_sha256 VARCHAR NOT NULL, rows BIGINT NOT NULL, trace_id VARCHAR,
    contract_version INTEGER, applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    caution VARCHAR,  -- a batch newer than this reader's contract, applied partially
    PRIMARY KEY (job, tbl, batch)
);
-- the reader contract each table's stored rows are held at (reader_contract.py)
CREATE TABLE IF NOT EXISTS _deltaferry_contracts (
    job VARCHAR NOT NULL, tbl VARCHAR NOT NULL, ref VARCHAR NOT NULL, version INTEGER NOT NULL,
    fingerprint VARCHAR NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (job, tbl)
);
"""


@dataclass
class PullResult:
    table: str
    batches: int
    rows: int
    last_batch: int
    # several producers: the last batch applied of each producer's chain
    chains: dict[str, int] | None = None
    overrides: int = 0
    # batches published at a newer contract version, applied partially (readers.py)
    cautions: int = 0
    warning: str | None = None
    # the one-line reason this table stopped (a bad batch, a lost tip); what verified before
    # it is applied, and the other tables were pulled as usual
    error: str | None = None
    # rows held back for this reader under an earlier contract, applied when it changed
    reread: int = 0
    # of those, still held after they were read again
    still_held: int = 0
    # batches applied partially under an earlier contract, read again when it changed
    reread_partial: int = 0
    # rows held back for this reader from this pull's batches
    held: int = 0
    # the reader's contract changed: how its stored rows were taken to the new one
    migrated: str | None = None


class PullFailed(TerminalError):
    """Several tables of a pull stopped; ``failures`` holds each one's error. The others
    applied what verified. (One failing table re-raises its own error.)"""

    def __init__(self, job: str, failures: list[DeltaferryError]) -> None:
        super().__init__(
            f"job '{job}': {len(failures)} tables stopped, the others applied what verified: "
            + "; ".join(str(e) for e in failures)
        )
        self.failures = failures


def pull(
    job: JobConfig,
    lake: LakeStore,
    replica: Path,
    tables: list[str] | None = None,
    keyring: Keyring | None = None,
    producers: list[str] | None = None,
    *,
    consumer: str | None = None,
    policy: str = "strict",
    retry_held: bool = False,
) -> list[PullResult]:
    """Verify and apply every published batch not yet in ``replica``. For a job with several
    producers, every producer's chain (or only ``producers``) is merged (``merge.py``).

    A batch published at a contract version newer than the job's contract (the version
    this reader knows) is handled by ``policy`` (``readers.py``). Rows held back for this
    reader (``_deltaferry_held``) are read again when its contract (ref or fingerprint)
    changed, or always with ``retry_held``. With ``consumer``, the
    reader's record in the lake (``<job>/<table>/consumers/<id>.json``) is updated.

    Before reading a table, the lake must reach what the replica has applied (its head not
    below the replica's last batch, and the manifest there the one applied: ``verify.
    check_position``). A table that stops (that check, a bad batch, a newer contract under
    ``strict``: a TerminalError) does not stop the others: each table applies what
    verifies, then the error is raised, the table's own when one stopped, else
    ``PullFailed`` naming each; its ``results`` attribute holds every table's PullResult
    (``error`` set on the ones that stopped). Transient and configuration errors stop the
    pull at once."""
    from contracts import load_chain
    from deltaferry.consumers import check_consumer, record_consumer
    from deltaferry.readers import Reading, VersionError

    if consumer is not None:
        check_consumer(consumer, policy)
    replica.parent.mkdir(parents=True, exist_ok=True)
    con = duck.connect_replica(replica)
    duck.configure(con, replica)
    # naive timestamps are UTC wall time in a lake: one stored into (or widened to) a zoned
    # column is that instant, whatever this machine's zone
    con.execute("SET TimeZone = 'UTC'")
    results = []
    failures: list[DeltaferryError] = []
    whose = f"replica {replica}"
    try:
        con.execute(_META)
        duck.add_columns(con, "_deltaferry_batches", {"caution": "VARCHAR"})  # older files
        ensure_held_table(con)
        for t in job.tables:
            if tables and t.name not in tables:
                continue
            raise_if_interrupted()  # a Ctrl-C Python dropped while the last table applied
            where = f"job '{job.name}' table '{t.name}'"
            chain = load_chain(t.contract, where=where)
            reading = Reading(
                job.name, t.name, chain.contract(), list(t.primary_key), policy, chain
            )
            result = PullResult(t.name, 0, 0, 0)
            record = consumer is not None  # not on the way out of a (simulated) kill
            try:
                result.migrated = hold_reader_contract(con, job, t, chain, whose)
                try:
                    result.reread, result.still_held, result.reread_partial = duck.applying(
                        con,
                        functools.partial(
                            reread_held, con, job, lake, t, keyring, reading, retry_held
                        ),
                    )
                except duck.TypeConflict as e:
                    raise duck.over_limit(e, f"{where} (rows held back, read again)") from None
                if job.multi_producer:
                    _pull_merged(con, job, lake, t, keyring, producers, reading, result, whose)
                else:
                    _pull_table(con, job, lake, t, keyring, reading, result, whose)
                _placeholder(con, job, t, reading)  # the lake holds no batch of it yet
            except TerminalError as e:  # this table stops here; the others go on
                result.error = str(e)
                _placeholder(con, job, t, reading)  # stopped before its first batch
                failures.append(e)
                if isinstance(e, VersionError):  # the lake record says so: not counted
                    reading.stuck = str(e)
                if not result.batches:  # stopped before applying: say where it still is
                    at, _ = _position(con, job.name, t.name, job.multi_producer)
                    if job.multi_producer:
                        result.chains = at
                    else:
                        result.last_batch = at or 0
            except BaseException as e:  # noqa: BLE001 - re-raised
                record = record and not killed(e)
                raise
            finally:  # what was applied is recorded, also when a batch stopped the pull
                if record and consumer is not None:
                    position, partial = _position(con, job.name, t.name, job.multi_producer)
                    try:
                        record_consumer(lake, reading, consumer, str(replica), position, partial)
                    except Exception as e:  # noqa: BLE001 - a read-only reader still reads
                        reading.warning = (
                            f"{where}: could not record reader '{consumer}' in the lake "
                            f"({type(e).__name__}: {e}); producers will not see it"
                        )
            result.warning = reading.warning
            results.append(result)
    finally:
        con.close()
    if failures:
        error = failures[0] if len(failures) == 1 else PullFailed(job.name, failures)
        error.results = results  # type: ignore[attr-defined]
        raise error
    return results


def _placeholder(
    con: duckdb.DuckDBPyConnection, job: JobConfig, t: TableConfig, reading: Any
) -> None:
    """An empty ``t`` with the reader contract's columns when the replica has no table of it
    (no batch applied: the lake holds none, or the first stopped the pull), so a query
    finds 0 rows rather than no table (``replica_apply.create_placeholder``). A table it cannot make is said in the table's warning; the pull goes on."""
    if duck.table_exists(con, t.name):
        return
    extra = [(SEQ_COLUMN, "BIGINT")]
    if job.multi_producer:
        extra += [(PRODUCER_COLUMN, "VARCHAR"), (HLC_COLUMN, "BIGINT")]
    try:
        create_placeholder(con, t.name, reading.contract, extra)
    except duckdb.Error as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        said = f"{reading.warning}; " if reading.warning else ""
        reading.warning = (
            f"{said}job '{job.name}' table '{t.name}': no batch applied, and its empty table "
            f"could not be made ({type(e).__name__}: {detail})"
        )


def _position(
    con: duckdb.DuckDBPyConnection, job: str, table: str, merged: bool
) -> tuple[Any, int]:
    """Where the replica is (the last batch applied, of each producer's chain), and how
    many of its batches were applied partially (a caution)."""
    if merged:
        try:
            rows = con.execute(
                "SELECT producer, max(batch), count(*) FILTER (WHERE caution LIKE '%(partial)%')"
                " FROM _deltaferry_chains"
                " WHERE job = ? AND tbl = ? GROUP BY producer ORDER BY producer",
                [job, table],
            ).fetchall()
        except duckdb.CatalogException:
            return {}, 0
        return {p: b for p, b, _ in rows}, sum(r[2] for r in rows)
    row = fetch_one(
        con,
        "SELECT max(batch), count(*) FILTER (WHERE caution LIKE '%(partial)%')"
        " FROM _deltaferry_batches WHERE job = ? AND tbl = ?",
        [job, table],
    )
    return (row[0], row[1]) if row else (None, 0)


def _pull_table(
    con: duckdb.DuckDBPyConnection,
    job: JobConfig,
    lake: LakeStore,
    t: TableConfig,
    keyring: Keyring | None,
    reading: Any,
    result: PullResult,
    whose: str,
) -> None:
    """Apply the table's new batches, counting them in ``result`` as they are applied."""
    last = fetch_one(
        con,
        "SELECT batch, manifest_sha256 FROM _deltaferry_batches WHERE job = ? AND tbl = ?"
        " ORDER BY batch DESC LIMIT 1",
        [job.name, t.name],
    )
    after, prev = (last[0], last[1]) if last else (0, None)
    result.last_batch = after
    check_position(lake, job.name, t.name, after, prev, whose=whose)
    trim = duck.CacheTrim(con)  # the replica's cache let go of as it grows
    for vb in iter_verified(
        lake, job.name, t.name, after=after, prev_sha256=prev, keyring=keyring, stream=True
    ):
        raise_if_interrupted()  # a Ctrl-C Python dropped while the last batch applied
        rows, caution, held = duck.applying(
            con, functools.partial(_apply_batch, con, job, t, reading, vb)
        )
        trim.applied(rows)
        result.batches += 1
        result.cautions += caution is not None
        result.rows += rows
        result.held += held
        result.last_batch = vb.batch


def _apply_batch(
    con: duckdb.DuckDBPyConnection, job: JobConfig, t: TableConfig, reading: Any, vb: Any
) -> tuple[int, str | None, int]:
    """Apply one verified streamed batch of a single producer's chain and its record in
    one transaction: (rows applied, caution, rows held back)."""
    con.execute("BEGIN TRANSACTION")
    try:
        rows, caution, held = admit_files(con, vb, reading, None, merge_into(con, t, job.name))
        if bug("apply_outside_transaction"):  # the simulator's teeth (failpoints.BUGS)
            con.execute("COMMIT")
            failpoint("after_apply")
            con.execute("BEGIN TRANSACTION")
        _record_batch(
            con, job.name, t.name, vb.batch, vb.manifest, vb.manifest_sha256, rows, caution
        )
        record_held(
            con, job.name, t.name, "", vb.batch, held, *_own(reading),
            partial=read_partially(reading, vb.manifest),
        )
        con.execute("COMMIT")
    except BaseException as e:
        duck.rollback(con)
        raise duck.over_limit(e, f"job '{job.name}' table '{t.name}' batch {vb.batch}")
    return rows, caution, held


def _own(reading: Any) -> tuple[str, str]:
    """The reader contract's (ref, fingerprint) that held rows are recorded under."""
    return reading.contract.ref, reading.contract.fingerprint


def _pull_merged(
    con: duckdb.DuckDBPyConnection,
    job: JobConfig,
    lake: LakeStore,
    t: TableConfig,
    keyring: Keyring | None,
    only: list[str] | None,
    reading: Any,
    result: PullResult,
    whose: str,
) -> None:
    """Apply the new override entries, then every producer chain's new batches, counting them in
    ``result`` as they are applied. Chains the replica holds but the lake lacks are checked
    too (a lost chain is a lost tip)."""
    from deltaferry import merge, merge_tables
    from deltaferry.overrides import read_overrides
    from deltaferry.verify import producers

    con.execute(merge_tables.META)
    duck.add_columns(con, "_deltaferry_chains", {"caution": "VARCHAR"})  # older files
    every_producer = only is None
    shape = merge_tables.TableShape(job.name, t.name, list(t.primary_key))
    result.chains = chains = {}
    if only is None:
        known = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT producer FROM _deltaferry_chains WHERE job = ? AND tbl = ?",
                [job.name, t.name],
            ).fetchall()
        ]
        only = sorted({*producers(lake, job.name, t.name), *known})
    if every_producer:  # first: an entry that lets go of one in force is in before any batch
        last = fetch_one(
            con,
            "SELECT n, sha256 FROM _deltaferry_overrides WHERE job = ? AND tbl = ?"
            " ORDER BY n DESC LIMIT 1",
            [job.name, t.name],
        ) or (0, None)
        result.overrides += merge.apply_overrides(
            con,
            shape,
            list(read_overrides(lake, job.name, t.name, after=last[0], prev_sha256=last[1], keyring=keyring)),
        )
    trim = duck.CacheTrim(con)  # the replica's cache let go of as it grows
    for producer in only:
        after, prev, prev_hlc = merge.applied(con, job.name, t.name, producer)
        chains[producer] = after
        result.last_batch = max(chains.values(), default=0)
        check_position(lake, job.name, t.name, after, prev, whose=whose, producer=producer)
        for vb in iter_verified(
            lake,
            job.name,
            t.name,
            after=after,
            prev_sha256=prev,
            keyring=keyring,
            producer=producer,
            prev_hlc=prev_hlc,
            stream=True,
        ):
            raise_if_interrupted()
            applied = duck.applying(
                con, functools.partial(_apply_merged, con, job, t, shape, reading, producer, vb)
            )
            if applied is None:
                continue  # applied meanwhile (cannot happen within one pull)
            rows, caution, held = applied
            trim.applied(rows)
            result.cautions += caution is not None
            result.batches += 1
            result.rows += rows
            result.held += held
            chains[producer] = vb.batch
            result.last_batch = max(chains.values())


def _apply_merged(
    con: duckdb.DuckDBPyConnection,
    job: JobConfig,
    t: TableConfig,
    shape: Any,
    reading: Any,
    producer: str,
    vb: Any,
) -> tuple[int, str | None, int] | None:
    """Apply one verified streamed batch of ``producer``'s chain (several producers) and
    its record in one transaction: (rows applied, caution, rows held back), or None if the
    replica has it already."""
    from deltaferry import merge

    if not merge.begin_batch(con, shape, producer, vb.batch):
        return None
    try:
        added = []
        hlc = vb.manifest.clock
        rows, caution, held = admit_files(
            con,
            vb,
            reading,
            producer,
            lambda d: added.append(merge.add_versions(con, shape, producer, vb.batch, hlc, d)),
        )
        merge.finish_batch(
            con,
            shape,
            producer,
            vb.batch,
            hlc,
            rows,
            any(added),
            manifest_sha256=vb.manifest_sha256,
            trace_id=vb.manifest.trace_id,
            contract_version=vb.manifest.contract.version,
            caution=caution,
            seen=vb.manifest.hlc_seen,
            held=(held, *_own(reading), read_partially(reading, vb.manifest)),
        )
    except BaseException as e:
        duck.rollback(con)
        raise duck.over_limit(
            e, f"job '{job.name}' table '{t.name}' producer '{producer}' batch {vb.batch}"
        )
    return rows, caution, held


def _apply(
    con: duckdb.DuckDBPyConnection,
    job: str,
    table: str,
    pk: list[str],
    batch: int,
    manifest: Manifest | None,
    digest: str,
    data: pa.Table,
    caution: str | None = None,
    held: tuple[int, str, str] | None = None,
) -> None:
    """Apply one batch and its record (and what the reader ``held`` back of it: rows, its
    contract's ref and fingerprint) in one transaction."""

    def once() -> None:
        with duck.transaction(con):
            merge_rows(con, table, pk, data)
            _record_batch(con, job, table, batch, manifest, digest, data.num_rows, caution)
            if held is not None:
                record_held(con, job, table, "", batch, *held)

    try:
        duck.applying(con, once)
    except duck.TypeConflict as e:
        raise duck.over_limit(e, f"job '{job}' table '{table}' batch {batch}") from None


def _record_batch(
    con: duckdb.DuckDBPyConnection,
    job: str,
    table: str,
    batch: int,
    manifest: Manifest | None,
    digest: str,
    rows: int,
    caution: str | None,
) -> None:
    """The replica's record of an applied batch (``_deltaferry_batches``), inside the
    caller's transaction (``manifest`` None: without trace id and contract version)."""
    con.execute(
        "INSERT INTO _deltaferry_batches (job, tbl, batch, manifest_sha256, rows, trace_id,"
        " contract_version, caution) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            job,
            table,
            batch,
            digest,
            rows,
            manifest.trace_id if manifest is not None else None,
            manifest.contract.version if manifest is not None else None,
            caution,
        ],
    )
