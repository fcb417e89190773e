"""Reading the lake back: list batches, check the manifest chain and every file.

Used by ``deltaferry verify`` (the whole lake) and by ``pull`` (each batch before
it is applied). Nothing here trusts the lake: hashes, sizes, row counts and the
chain are checked against what the manifests promise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from deltaferry.delta import OP_COLUMN, SEQ_COLUMN, arrow_owned, parquet_metadata, read_parquet
from deltaferry.errors import VerificationError
from deltaferry.failpoints import bug
from deltaferry.keys import Keyring
from destinations.lake import LakeStore
from destinations.manifest import (
    DataFile,
    Manifest,
    batch_of_manifest_key,
    manifest_key,
    manifests_prefix,
    producers_prefix,
    sha256,
)


@dataclass
class VerifiedBatch:
    batch: int
    manifest: Manifest
    manifest_sha256: str
    data: pa.Table | None  # loaded only when asked
    also: pa.Table | None = None  # dual publishing: the rows at the newer version
    # streamed (``iter_verified(stream=True)``): the manifest is verified, its files are
    # fetched and verified one at a time by ``tables``
    lake: LakeStore | None = None
    where: str = ""
    fix: str = ""

    def tables(
        self,
        copy: str = "primary",
        columns: list[str] | None = None,
        check: Callable[[DataFile, pa.Schema], None] | None = None,
    ) -> Iterator[pa.Table]:
        """The batch's files (``copy="also"``: its dual-published copy's), one Arrow table
        each (only ``columns``, when given: ``["_seq"]`` to check a batch without reading
        its rows), in the manifest's order; each file is fetched and checked (size, sha256,
        row count) when it is reached, so memory holds one file. After the last file, the
        ``_seq`` values seen must span exactly the manifest's range. Raises
        VerificationError at the first file (or range) that does not match: a caller
        applying the tables inside a transaction rolls it back. ``check`` is called with
        each file's entry and its whole Arrow schema (from the Parquet footer) before its
        rows are read. Only for a streamed batch."""
        if self.lake is None:
            raise ValueError("tables() reads a streamed batch (iter_verified(stream=True))")
        if copy == "primary":
            files = self.manifest.files
        elif self.manifest.also is not None:
            files = self.manifest.also.files
        else:
            raise ValueError(f"{self.where}: no dual-published copy to read")
        span = _SeqSpan()
        for f in files:
            body, meta = _verified_body(self.lake, f, self.where, self.fix)
            if check is not None:
                check(f, meta.schema.to_arrow_schema())
            table = _parquet(self.where, f, read_parquet, body, columns)
            del body
            _check_values(table, f, self.where)
            span.add(table)
            yield table
            del table  # not held while the next file is fetched and read: one file at a time
        span.check(self.manifest, self.where, copy)


def check_keys(table: pa.Table, key: list[str], where: str) -> None:
    """VerificationError when a key column of the file has a NULL (a producer holds such
    rows back: a NULL key cannot be merged)."""
    for name in key:
        if name in table.column_names and table[name].null_count:
            raise VerificationError(
                f"{where}: a data object has {table[name].null_count} row(s) with no value "
                f"in key column '{name}'; a producer holds such rows back"
            )


def _check_values(table: pa.Table, f: DataFile, where: str) -> None:
    """VerificationError unless the file's ``_seq`` has no NULL and its ``_op`` values (when
    read, as text) are exactly the manifest entry's upserts and deletes: a NULL or unknown
    ``_op`` made a row vanish from the replica with exit 0, a delete counted as an upsert
    removed a key, and a NULL ``_seq`` could never be replaced (a fresh-user trial of a
    re-hashed unsigned lake). Other column types are ``readers.schema_problems``'s."""
    if SEQ_COLUMN in table.column_names and table[SEQ_COLUMN].null_count:
        raise VerificationError(
            f"{where}: data object {f.key} has {table[SEQ_COLUMN].null_count} row(s) with no "
            "_seq; a producer numbers every row"
        )
    if OP_COLUMN not in table.column_names:
        return
    op = table[OP_COLUMN]
    if not (pa.types.is_string(op.type) or pa.types.is_large_string(op.type)):
        return  # not text: named by the column check
    upserts = pc.sum(pc.equal(op, "upsert")).as_py() or 0
    deletes = pc.sum(pc.equal(op, "delete")).as_py() or 0
    other = table.num_rows - upserts - deletes
    if (upserts, deletes, other) != (f.ops.upsert, f.ops.delete, 0):
        odd = f" and {other} other or NULL" if other else ""
        raise VerificationError(
            f"{where}: data object {f.key} has {upserts} upsert(s), {deletes} delete(s){odd} "
            f"in _op, its manifest says {f.ops.upsert} upsert(s), {f.ops.delete} delete(s)"
        )


class _SeqSpan:
    """The lowest and highest ``_seq`` of a batch's files, added one file at a time."""

    def __init__(self) -> None:
        self.low: int | None = None
        self.high: int | None = None

    def add(self, table: pa.Table) -> None:
        if SEQ_COLUMN in table.column_names and table.num_rows:
            mm = pc.min_max(table[SEQ_COLUMN])
            a, b = mm["min"].as_py(), mm["max"].as_py()
            self.low = a if self.low is None else min(self.low, a)
            self.high = b if self.high is None else max(self.high, b)

    def check(self, manifest: Manifest, where: str, copy: str = "primary") -> None:
        """VerificationError unless the values seen (if any) span exactly the manifest's
        ``seq`` range."""
        seq = manifest.seq
        if self.low is not None and (self.low != seq.start or self.high != seq.end):
            what = "" if copy == "primary" else " of the dual-published copy"
            raise VerificationError(f"{where}: _seq values{what} do not match the manifest's range")


def numbered(lake: LakeStore, prefix: str, after: int = 0) -> list[int]:
    """The numbers of the ``<n:012d>.json`` objects under ``prefix`` (a create-only log:
    manifests, overrides), ascending; other keys are ignored. With ``after``, only numbers
    above it, listed from after its key (S3's ``StartAfter`` on the zero-padded names), so
    the cost follows what is new, not the length of the log."""
    start = f"{prefix}{after:012d}.json" if after > 0 else None
    keys = lake.list(prefix, start_after=start)
    if bug("trust_listing_order"):  # the simulator's teeth (failpoints.BUGS)
        return [n for k in keys if (n := batch_of_manifest_key(k)) is not None and n > after]
    return sorted({n for k in keys if (n := batch_of_manifest_key(k)) is not None and n > after})


def list_batches(
    lake: LakeStore, job: str, table: str, producer: str | None = None, after: int = 0
) -> list[int]:
    """Batch numbers that have a manifest, ascending (other keys are ignored); with
    ``after``, only those above it, listing only what follows (``numbered``)."""
    return numbered(lake, manifests_prefix(job, table, producer), after)


def iter_verified(
    lake: LakeStore,
    job: str,
    table: str,
    *,
    after: int = 0,
    prev_sha256: str | None = None,
    load: bool = True,
    keyring: Keyring | None = None,
    producer: str | None = None,
    prev_hlc: int | None = None,
    stream: bool = False,
) -> Iterator[VerifiedBatch]:
    """Yield batches after ``after`` in order, each fully verified; raise at the first bad one.
    With ``stream``, each batch's manifest is verified here and its files are left to
    ``VerifiedBatch.tables`` (fetched and checked one at a time, so memory holds one file,
    not the batch): what ``pull``, ``verify`` and re-reading held rows use. Without it,
    ``load`` concatenates each batch's files into ``data`` (memory: the whole batch; kept
    for small reads and the whole-batch baseline of ``bench/pull_bench.py``). The
    manifests are listed from after ``after`` (``numbered``).

    With ``producer``, the chain is that producer's (several producers publish the table):
    every manifest must name it and carry a logical timestamp (``hlc``) that grows."""
    keyring = keyring if keyring is not None else Keyring()
    batches = list_batches(lake, job, table, producer, after=after)
    expected = after + 1
    prev = prev_sha256
    prev_seq_end: int | None = None
    chain = "" if producer is None else f" producer '{producer}'"
    for b in batches:
        where = f"job '{job}' table '{table}'{chain} batch {b}"
        if b != expected:
            raise VerificationError(
                f"job '{job}' table '{table}'{chain} batch {expected}: manifest missing "
                f"(next present is {b})"
            )
        key = manifest_key(job, table, b, producer)
        raw = lake.get(key)
        if raw is None:
            raise VerificationError(f"{where}: manifest {key} vanished while reading")
        try:
            m = Manifest.parse(raw, key=key)
        except ValueError as e:
            raise VerificationError(f"{where}: {e}") from None
        if m.job != job or m.table != table or m.batch != b:
            raise VerificationError(
                f"{where}: the stored manifest is for job '{m.job}' table '{m.table}' "
                f"batch {m.batch} (moved or replaced)"
            )
        keyring.verify_manifest(m, where=where)
        if producer is not None:
            if m.producer_id != producer:
                raise VerificationError(
                    f"{where}: the manifest names producer '{m.producer_id}' but is stored "
                    f"in producer '{producer}''s chain"
                )
            stamp = m.hlc
            if stamp is None:
                raise VerificationError(f"{where}: the manifest has no logical timestamp (hlc)")
            seen = m.hlc_seen or {}
            if any(v >= stamp for v in seen.values()):
                raise VerificationError(
                    f"{where}: logical timestamp {stamp} is not after every timestamp the "
                    f"producer says it saw ({seen})"
                )
            if prev_hlc is not None and stamp <= prev_hlc:
                raise VerificationError(
                    f"{where}: logical timestamp {stamp} does not follow the previous batch's "
                    f"{prev_hlc}"
                )
            prev_hlc = stamp
        if m.prev_sha256 != prev:
            raise VerificationError(f"{where}: chain broken: prev_sha256 {m.prev_sha256} != {prev}")
        seq = m.seq
        if prev_seq_end is not None and seq.start != prev_seq_end + 1:
            raise VerificationError(
                f"{where}: change sequence starts at {seq.start}, expected {prev_seq_end + 1}"
            )
        fix = f'deltaferry republish {job} --table {table} --batch {b} --reason "<why>"'
        tables = [] if stream else _verified_files(lake, m.files, where, load, fix)
        if sum(f.rows for f in m.files) != m.rows:
            raise VerificationError(
                f"{where}: file row counts do not add up to the manifest's {m.rows}"
            )
        also = m.also
        also_tables: list[pa.Table] = []
        if also is not None:
            if not stream:
                also_tables = _verified_files(lake, also.files, where, load, fix)
            ops = [sum(f.ops.upsert for f in also.files), sum(f.ops.delete for f in also.files)]
            if sum(f.rows for f in also.files) != m.rows or ops != [m.ops.upsert, m.ops.delete]:
                raise VerificationError(
                    f"{where}: the v{also.contract.version} copy does not have the "
                    f"batch's {m.rows} rows and ops {m.ops.to_dict()}"
                )
        digest = sha256(raw)
        data = pa.concat_tables(tables, promote_options="permissive") if load and tables else None
        if data is not None and "_seq" in data.column_names:
            mm = pc.min_max(data["_seq"])
            if mm["min"].as_py() != seq.start or mm["max"].as_py() != seq.end:
                raise VerificationError(f"{where}: _seq values do not match the manifest's range")
        alt = (
            pa.concat_tables(also_tables, promote_options="permissive")
            if load and also_tables
            else None
        )
        if (
            also is not None
            and alt is not None
            and data is not None
            and not alt["_seq"].equals(data["_seq"])
        ):
            raise VerificationError(
                f"{where}: the v{also.contract.version} copy's change sequence differs "
                "from the batch's"
            )
        if stream:
            yield VerifiedBatch(b, m, digest, None, None, lake, where, fix)
        else:
            yield VerifiedBatch(b, m, digest, data, alt)
        prev = digest
        prev_seq_end = seq.end
        expected = b + 1


def _verified_files(
    lake: LakeStore, files: list[DataFile], where: str, load: bool, fix: str = ""
) -> list[pa.Table]:
    """Check each data object against its manifest entry; the tables, when ``load``. ``fix``
    is the producer's command that rebuilds the batch's objects, named in the error."""
    tables = []
    for f in files:
        body, _ = _verified_body(lake, f, where, fix)
        if load:
            tables.append(_parquet(where, f, read_parquet, body))
    return tables


def _parquet(where: str, f: DataFile, read: Callable[..., Any], *args: Any) -> Any:
    """``read(*args)`` of a data object whose bytes match its manifest entry, any Arrow error a
    VerificationError naming the object: bytes that hash right but are not (readable)
    Parquet, or lack a column asked for, stop the table at this batch, as a hash mismatch
    does (a fresh-user trial met a raw ``OSError: Couldn't deserialize thrift`` that named
    nothing and stopped every table of the pull)."""
    try:
        return read(*args)
    except MemoryError:  # this machine's limit, not the object's fault (ArrowMemoryError too)
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VerificationError(
            f"{where}: data object {f.key} matches its manifest's sha256 but cannot be read "
            f"as the batch's Parquet ({detail})"
        ) from None


def _verified_body(
    lake: LakeStore, f: DataFile, where: str, fix: str = ""
) -> tuple[pa.Buffer, Any]:
    """One data object's bytes and its Parquet footer (``pq.FileMetaData``), checked against
    its manifest entry ``f`` (size, sha256, Parquet row count), in a buffer Arrow owns (``delta.arrow_input``: copied once, then read
    as it is). ``fix`` is the producer's command that rebuilds it, named in the error."""
    hint = (
        f"; on the producer, `{fix}` rebuilds it from staging (byte-identical), or restore it "
        "from a backup"
        if fix
        else ""
    )
    body = lake.get(f.key)
    if body is None:
        raise VerificationError(f"{where}: data object {f.key} is missing{hint}")
    if len(body) != f.bytes or sha256(body) != f.sha256:
        raise VerificationError(
            f"{where}: data object {f.key} does not match its sha256/size{hint}"
        )
    owned = arrow_owned(body)
    del body
    meta = _parquet(where, f, parquet_metadata, owned)
    if meta.num_rows != f.rows:
        raise VerificationError(
            f"{where}: data object {f.key} has {meta.num_rows} rows, manifest says {f.rows}"
        )
    return owned, meta


def producers(lake: LakeStore, job: str, table: str) -> list[str]:
    """The producers with a chain of the table (several producers publish it)."""
    return lake.children(producers_prefix(job, table))


def verify_table(
    lake: LakeStore,
    job: str,
    table: str,
    keyring: Keyring | None = None,
    producer: str | None = None,
    *,
    after: int = 0,
    prev_sha256: str | None = None,
    chain: Any = None,
    key: list[str] | None = None,
) -> tuple[int, int]:
    """Verify every batch of a table's chain (of ``producer``'s chain of it), or, with
    ``after``, only the batches after that one, chained to ``prev_sha256`` (the sha256 of
    its manifest, from a known position: ``check_position`` checks the lake has that
    manifest). Each file of each copy is fetched and checked (size, sha256, row count) and
    its ``_seq`` column read to check the manifest's range; memory holds one file's
    ``_seq`` column. Returns (batches, rows) verified; raises VerificationError at the
    first bad one. Cost: every object of the batches verified (the whole chain without
    ``after``). With ``chain`` (the job's ``contracts.Chain`` for the table, and ``key``
    its primary key), each file of a copy published at a version the chain has (same
    fingerprint) must have the columns a producer publishes at it
    (``readers.schema_problems``, what ``pull`` refuses)."""
    from deltaferry.readers import REWRITTEN, contract_at, schema_problems, unlike

    n = rows = 0
    for vb in iter_verified(
        lake, job, table, after=after, prev_sha256=prev_sha256, keyring=keyring,
        producer=producer, stream=True,
    ):  # fmt: skip
        for copy in ("primary", "also") if vb.manifest.also is not None else ("primary",):
            also = vb.manifest.also
            published = also.contract if copy == "also" and also else vb.manifest.contract
            contract = contract_at(published, chain) if chain is not None else None

            def check(
                f: DataFile,
                schema: pa.Schema,
                vb: VerifiedBatch = vb,
                contract: Any = contract,
                published: Any = published,
            ) -> None:
                problems = schema_problems(
                    contract, schema, vb.manifest, key or [], f.ops.upsert > 0
                )
                if problems:
                    raise VerificationError(
                        f"{vb.where}: data object {f.key} {unlike(published, problems)}. "
                        f"{REWRITTEN}"
                    )

            for part in vb.tables(
                copy,
                columns=[SEQ_COLUMN, OP_COLUMN, *(key or [])],
                check=check if contract is not None else None,
            ):
                check_keys(part, key or [], vb.where)
        n += 1
        rows += vb.manifest.rows
    return n, rows


def lake_head(
    lake: LakeStore, job: str, table: str, producer: str | None = None, at_least: int = 0
) -> tuple[int, str | None]:
    """The head of a table's chain (or of ``producer``'s chain of it): the newest batch
    number that has a manifest, and that manifest's sha256 (hex); ``(0, None)`` for an
    empty chain. Only the newest manifest is read, not verified (``iter_verified`` does
    that); raises VerificationError if it vanishes while being read. With ``at_least``
    (a batch the caller expects to exist), only the keys from that batch on are listed;
    the whole chain only when there are none (a lost tip, to name the real head)."""
    head = head_batch(lake, job, table, producer, at_least)
    if head == 0:
        return 0, None
    key = manifest_key(job, table, head, producer)
    raw = lake.get(key)
    if raw is None:
        chain = "" if producer is None else f" producer '{producer}'"
        raise VerificationError(
            f"job '{job}' table '{table}'{chain} batch {head}: manifest {key} vanished "
            "while reading"
        )
    return head, sha256(raw)


def head_batch(
    lake: LakeStore, job: str, table: str, producer: str | None = None, at_least: int = 0
) -> int:
    """The newest batch number of a chain that has a manifest (0: none), nothing read but
    the listing. With ``at_least`` (a batch expected to exist: a known position), only the
    keys from that batch on are listed (``StartAfter``), the whole chain only when there
    are none (a lost tip, to name the real head)."""
    batches = list_batches(lake, job, table, producer, after=max(0, at_least - 1))
    if not batches and at_least > 1:
        batches = list_batches(lake, job, table, producer)
    return batches[-1] if batches else 0


def check_position(
    lake: LakeStore,
    job: str,
    table: str,
    batch: int,
    manifest_sha256: str | None,
    *,
    whose: str,
    producer: str | None = None,
) -> None:
    """Check that the lake reaches a known position: its chain has a manifest at ``batch``
    (the head is not below it) and, when ``manifest_sha256`` is given, that manifest is the
    one with that sha256. ``whose`` names who holds the position in the message (``"replica
    r.duckdb"``, ``"this producer's checkpoint"``). Batch 0 always holds. Raises
    VerificationError, one line naming job, table, both positions and what to do."""
    if batch <= 0:
        return
    chain = "" if producer is None else f" producer '{producer}'"
    where = f"job '{job}' table '{table}'{chain}"
    head, _ = lake_head(lake, job, table, producer, at_least=batch)
    if head < batch:
        lost = f"batch {batch}" if head + 1 == batch else f"batches {head + 1}..{batch}"
        raise VerificationError(
            f"{where}: {whose} is at batch {batch} but the lake's head is batch {head} "
            f"({lost} gone: a lake restored from an older copy, or the wrong lake); check the "
            f"job's lake URL, or have the producer run `deltaferry republish {job} --table "
            f'{table} --reason "<why>"` or restore {lost} from a backup; if they are gone for good, the '
            f'producer goes on after `deltaferry reset {job} --table {table} --reason "<why>"` and readers past '
            f"batch {head} pull into a new replica"
        )
    if manifest_sha256 is None:
        return
    key = manifest_key(job, table, batch, producer)
    raw = lake.get(key)
    if raw is None:
        raise VerificationError(
            f"{where} batch {batch}: {whose} is at batch {batch} but its manifest is missing "
            f"from the lake (head is batch {head}); run `deltaferry verify {job}`"
        )
    if sha256(raw) != manifest_sha256:
        raise VerificationError(
            f"{where} batch {batch}: the lake's manifest (sha256 {sha256(raw)[:16]}) is not the "
            f"one {whose} has (sha256 {manifest_sha256[:16]}): the lake was rewritten or is "
            "another lake; check the job's lake URL. If the producer went on from an earlier "
            f"batch after `deltaferry reset`, pull into a new replica"
        )
