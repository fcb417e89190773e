"""Cut a delta from staging, validate it, and build its Parquet parts deterministically.

The same staged rows, load ids, change-sequence start and contract always give
the same Parquet bytes, so an interrupted batch can be rebuilt and checked
against the hashes recorded in its plan.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts import Contract, ValidationResult, example, summarize
from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import ContractViolation, DowngradeRefused
from deltaferry.keyrange import KeyRange
from deltaferry.quarantine import HeldRecords
from destinations.manifest import DataFile, Ops, sha256
from sources.columns import (
    LAKE_COLUMNS,
    LOAD_ID_COLUMN,
    OP_COLUMN,
    SEQ_COLUMN,
)


@dataclass(frozen=True)
class Part:
    data: bytes
    sha256: str
    rows: int
    upserts: int
    deletes: int

    def data_file(self, key: str) -> DataFile:
        """This part's entry in a manifest, stored at ``key``."""
        ops = Ops(upsert=self.upserts, delete=self.deletes)
        return DataFile(key=key, sha256=self.sha256, bytes=len(self.data), rows=self.rows, ops=ops)


@dataclass
class Delta:
    """One table's changes since the last published batch, validated and encoded."""

    table: str
    load_ids: list[str]
    seq_start: int
    seq_end: int
    parts: list[Part]
    upserts: int
    deletes: int
    quarantine: HeldRecords = field(default_factory=HeldRecords)
    cursor_min: str | None = None
    cursor_max: str | None = None
    # dual publishing: the same rows at a newer contract version (version, parts)
    also: tuple[int, list[Part]] | None = None
    # keys held in the quarantine before that this batch cut again (published, or held
    # again with a new record): their old records are resolved by it
    touched: set[str] = field(default_factory=set)
    # the keys of the cut it carries (``deltaferry/keyrange.py``): whole unless split
    keys: KeyRange = field(default_factory=KeyRange)
    # how its zoned times were published (``published_zones``): "published", or
    # "staged:ZONE" for a batch rebuilt as a version before that published it on a host in
    # ZONE (``commit.rebuild``)
    zones: str = "published"

    @property
    def rows(self) -> int:
        return self.upserts + self.deletes


def key_json(t: TableConfig, rec: dict[str, Any]) -> str:
    """A row's primary key as the quarantine records it (JSON object, keys sorted)."""
    return json.dumps({k: rec[k] for k in t.primary_key}, default=str, sort_keys=True)


def build_delta(
    job: JobConfig,
    t: TableConfig,
    contract: Contract,
    chunks: Iterable[pa.Table],
    load_ids: list[str],
    seq_start: int,
    held: dict[str, str] | None = None,
    migration: tuple[Any, int, int] | None = None,
    missing: dict[str, str] | None = None,
    open_keys: set[str] | None = None,
    zones: str = "published",
) -> Delta:
    """Validate upserts against the contract, hold back failing rows, assign ``_seq`` and
    encode each chunk as one Parquet part. Raises ContractViolation, before anything is
    recorded, when the share of failing rows is over the job's threshold.

    ``held`` maps columns the contract does not know (source drift under the
    ``quarantine`` policy) to a reason: an upsert with a value in one of them is held
    back with that reason, not counted against the threshold, and the columns are not
    published.

    ``missing`` maps columns the source dropped to a reason: an upsert without a
    value in one of them is held back the same way.

    Rows whose load id is not in ``load_ids`` are held rows cut again for re-validation
    (``read_changes``' ``released``): those that fail again are held again, not counted
    against the threshold. Keys of ``open_keys`` (keys with an open quarantine record)
    found in the cut are returned in ``Delta.touched``.

    ``migration`` is (chain, source version, target version): each chunk's rows are taken
    from the source's version to ``contract``'s before validation (``contracts.Chain``).

    ``zones``: ``"published"`` gives every zoned time column one zone name whatever the
    host (``published_zones``); ``"staged:ZONE"`` gives the columns staged zoned ``ZONE``,
    as versions before it did on a host in that zone (DuckDB's session zone): only to
    rebuild a batch they planned (``commit.rebuild``)."""
    quarantine = HeldRecords()
    parts: list[Part] = []
    seq = seq_start
    changed = failed_total = 0
    cmin: Any = None
    cmax: Any = None
    failures: Counter[tuple[str | None, str]] = Counter()  # by (field, check), every chunk
    examples: dict[tuple[str | None, str], str] = {}  # a failing value of each, with its key
    touched: set[str] = set()
    staged: dict[str, str] = {}  # Arrow type of a column that failed the contract's dtype
    fresh_ids = pa.array(load_ids, pa.string())
    seen = _BatchKeys(list(t.primary_key))
    host_zone = zones.partition("staged:")[2]
    most = getattr(chunks, "limit", None)  # rows the cut yields at most (``cut.Changes``)
    doomed = False
    first = True
    # the keys' DuckDB connection is closed however the loop ends (a ContractViolation
    # keeps this frame in its traceback, a cycle: nothing is left to the collector)
    try:
        # (no ``enumerate``: it keeps the chunk it last gave until it gives the next one, and
        # each chunk's forms are deleted before the next is read: one chunk held at a time)
        for changes in chunks:
            if first:  # every chunk of a cut has the same columns
                _check_published_names(job, t, changes.column_names)
                first = False
            if host_zone:
                changes = _zoned_as(changes, host_zone)
            if open_keys:
                keys = changes.select(list(t.primary_key)).to_pylist()
                touched |= open_keys.intersection(key_json(t, k) for k in keys)
            drifted = _hold_drifted(t, changes, held or {}, quarantine, missing or {}, not doomed)
            if held:
                changes = changes.drop_columns([c for c in held if c in changes.column_names])
            if migration is not None:
                # a nullable column of the source version no change has a value in yet (dlt
                # stages no column for an API field that was null in every record so far) is
                # NULL for the migration too: a downgrade dropping it failed every run
                changes = _add_null_columns(migration[0].contract(migration[1]), changes)
                changes = _migrate_chunk(job, t, changes, *migration)
            changes = _add_null_columns(contract, changes)
            changes = _dates_as_timestamps(contract, changes)
            fresh = pc.is_in(changes[LOAD_ID_COLUMN], value_set=fresh_ids).to_numpy(
                zero_copy_only=False
            )
            keep, upserts, failed, counts, failed_rows = _validate_chunk(
                t, contract, changes, drifted, fresh, examples
            )
            changed += upserts
            failed_total += failed
            failures.update(counts)
            # Over the threshold whatever the rest of the cut holds (``most`` rows at most):
            # the batch is refused below, so no record is made or kept (a cut whose every row
            # broke the contract spent a minute and a GiB a million rows on records the error
            # dropped). The refusal's own comparison, dividing by more rows than it does:
            # ``failed > ratio * most`` is not the same test in floating point (5,700 of a
            # 10,000-row cut at 0.57 made no record and was not refused).
            doomed = doomed or bool(most and failed_total / most > job.max_quarantine_ratio)
            if doomed:
                quarantine.clear()
            elif failed_rows is not None:
                _quarantine_failed(t, failed_rows, quarantine)
            for column, check in counts:
                if column is not None and column in changes.column_names and check.startswith("dtype("):
                    staged.setdefault(column, str(changes.schema.field(column).type))
            published = changes.filter(pa.array(keep)).drop_columns([LOAD_ID_COLUMN])
            del changes, failed_rows
            n = published.num_rows
            if n == 0 or doomed:  # a refused batch's rows are counted, never encoded
                del published
                continue
            published = _to_contract_types(job, t, contract, published)
            if zones == "published":
                published = published_zones(contract, published)
            seen.add(published)
            published = published.append_column(
                SEQ_COLUMN, pa.array(np.arange(seq, seq + n, dtype=np.int64))
            )
            seq += n
            parts.append(_encode(published))
            if t.cursor in published.column_names:
                mm = pc.min_max(published[t.cursor])
                lo, hi = mm["min"].as_py(), mm["max"].as_py()
                cmin = lo if cmin is None or (lo is not None and lo < cmin) else cmin
                cmax = hi if cmax is None or (hi is not None and hi > cmax) else cmax
            del published
        if failed_total:
            ratio = failed_total / changed
            if ratio > job.max_quarantine_ratio or doomed:
                raise ContractViolation(
                    f"job '{job.name}' table '{t.name}': {failed_total} of {changed} changed rows "
                    f"({_share(ratio, job.max_quarantine_ratio)}) break contract {contract.ref} "
                    f"v{contract.version}, over the job's max_quarantine_ratio of "
                    f"{job.max_quarantine_ratio:.1%}; nothing of this table "
                    f"published ({summarize(failures, examples=examples)}{_staged_as(staged)}); the job's other tables go on"
                )
        seen.check(job.name, t.name)
    finally:
        seen.close()
    upserts_n = sum(p.upserts for p in parts)
    total = seq - seq_start
    return Delta(
        table=t.name,
        load_ids=load_ids,
        seq_start=seq_start,
        seq_end=seq - 1,
        parts=parts,
        upserts=upserts_n,
        deletes=total - upserts_n,
        quarantine=quarantine,
        cursor_min=None if cmin is None else str(cmin),
        cursor_max=None if cmax is None else str(cmax),
        touched=touched,
        zones=zones,
    )


def _share(ratio: float, limit: float) -> str:
    """``ratio`` as a percentage with one decimal, or more where one would show it equal
    to ``limit``'s (``29.0%`` over a limit of ``29.0%`` read as not over)."""
    for digits in range(1, 7):
        text = f"{ratio:.{digits}%}"
        if text != f"{limit:.{digits}%}":
            return text
    return f"{ratio:%}"


def _check_published_names(job: JobConfig, t: TableConfig, names: list[str]) -> None:
    """ConfigError, before anything is uploaded, for a source column a reader could not
    apply: ``_op``/``_seq`` in any case (every data object has them; DuckDB does not tell
    ``_Op`` from ``_op``: a fresh-user trial lost every row of a batch that way), and with
    ``multi_producer`` the names the merge reserves (``merge_tables.RESERVED``: every pull
    refused the table for good). Source kinds refuse most of them earlier
    (``sources.names``); this is the check every kind passes through."""
    from deltaferry.errors import ConfigError
    from deltaferry.merge_tables import RESERVED

    reserved = {*LAKE_COLUMNS, *(RESERVED if job.multi_producer else ())}
    found = sorted(n for n in names if n.lower() in reserved and n not in (OP_COLUMN, LOAD_ID_COLUMN))
    if found:
        why = "merging several producers" if job.multi_producer else "every published data object"
        raise ConfigError(
            f"job '{job.name}' table '{t.name}': source column(s) {', '.join(found)} have "
            f"names reserved for {why} (in any case); nothing of the table published. Rename "
            "them at the source"
        )


class _BatchKeys:
    """The keys of a batch as it is published (the contract's types applied), kept in an
    in-memory DuckDB table (spilled to disk past its memory limit: bounded by the batch,
    not the table), so a key that comes twice is refused before anything is uploaded. A
    reader refuses such a batch for good (``replica_apply``: "carries key ... 2 times");
    it comes from source records whose keys differ only in ways the contract's types do not
    keep, such as ``1`` and ``"1"`` in a JSON source."""

    def __init__(self, key: list[str]) -> None:
        self.key = key
        self.con: Any = None

    def add(self, chunk: pa.Table) -> None:
        if not self.key or chunk.num_rows == 0:
            return
        import duckdb

        keys = chunk.select(self.key)  # noqa: F841 - read by DuckDB below by its name
        if self.con is None:
            import tempfile

            from deltaferry.duck import configure, literal

            # DELTAFERRY_DUCKDB_MEMORY_LIMIT, spilling past it to the system's temp dir
            self.con = configure(duckdb.connect())
            spill = Path(tempfile.gettempdir()) / f"deltaferry-batch-keys-{os.getpid()}.tmp"
            self.con.execute(f"SET temp_directory = {literal(str(spill))}")
            self.con.execute("CREATE TABLE batch_keys AS SELECT * FROM keys")
        else:
            self.con.execute("INSERT INTO batch_keys SELECT * FROM keys")

    def close(self) -> None:
        """Close the keys' connection (and its spill files), if open. Idempotent."""
        if self.con is not None:
            self.con.close()
            self.con = None

    def check(self, job: str, table: str) -> None:
        """Raise ContractViolation naming the first key that came more than once."""
        if self.con is None:
            return
        from deltaferry.duck import ident

        try:
            cols = ", ".join(ident(c) for c in self.key)
            repeated = self.con.execute(
                f"SELECT {cols}, count(*) FROM batch_keys GROUP BY ALL HAVING count(*) > 1 "
                f"ORDER BY ALL LIMIT 1"
            ).fetchone()
        finally:
            self.close()
        if repeated is None:
            return
        shown = ", ".join(f"{c}={v!r}" for c, v in zip(self.key, repeated[:-1], strict=True))
        raise ContractViolation(
            f"job '{job}' table '{table}': key ({shown}) comes {repeated[-1]} times in this "
            "batch once the contract's types are applied (source records whose keys differ "
            "only in type or form, such as 1 and \"1\", are one key in the lake); nothing of "
            "this table published, since no reader could apply it. Make the source give each "
            "key once in one form (the next run reads it again); if staging still holds both "
            f"forms, `deltaferry reset {job} --table {table} --reason '…'` stages the table "
            "again; the job's other tables go on"
        )


def _add_null_columns(contract: Contract, changes: pa.Table) -> pa.Table:
    """Nullable contract columns the chunk lacks, added as NULLs of the contract's type: a
    source that never sent a value for a column (an API field that was null in every record
    so far: dlt creates no column for it; a file that leaves out an optional column)
    publishes NULL there, as the contract allows (``Contract.staged_types``)."""
    types = contract.staged_types()
    for name in contract.columns:
        column = contract.schema.columns[name]
        if name in changes.column_names or not column.nullable or name not in types:
            continue
        changes = changes.append_column(
            pa.field(name, types[name]), pa.nulls(changes.num_rows, types[name])
        )
    return changes


def _staged_as(staged: dict[str, str]) -> str:
    """``; staged as: at timestamp[us, tz=UTC]`` for the columns that failed a dtype check
    (the check names the contract's type, not the one that arrived), or ``''``."""
    if not staged:
        return ""
    return "; staged as: " + ", ".join(f"{name} {typ}" for name, typ in sorted(staged.items()))


def _dates_as_timestamps(contract: Contract, changes: pa.Table) -> pa.Table:
    """Date columns (``date32``/``date64``) whose contract column is a timestamp, as naive
    ``timestamp[us]`` at midnight: the same days, a type the contract accepts. A source
    stages a date when every value it has seen is one (a CSV or JSON drop of ``2024-02-01``
    values, a SQLite ``DATE`` column); validating the dates against a timestamp column
    refused every row, and publishing them as dates made a replica's column DATE, into
    which a later batch's times were cut to the day. The zone, if the contract's has one,
    is given by ``_to_contract_types`` (naive values are UTC wall time)."""
    types = contract.arrow_types()
    for i, f in enumerate(changes.schema):
        target = types.get(f.name)
        if (
            target is not None
            and pa.types.is_timestamp(target)
            and (pa.types.is_date32(f.type) or pa.types.is_date64(f.type))
        ):
            changes = changes.set_column(i, f.name, pc.cast(changes.column(i), pa.timestamp("us")))
    return changes


def in_contract_zone(contract: Contract, data: pa.Table) -> pa.Table:
    """``data`` with zoned timestamp columns whose contract column is a naive timestamp
    as their UTC wall time, for validation only: what a contract with ``coerce = True``
    makes of them itself. Sources that stage times zoned (files, REST APIs: dlt stages
    timestamps with a zone) had every row refused under a naive contract without
    ``coerce``. They are published as staged (zoned), as with ``coerce``. The other way,
    naive (UTC wall time) under a zoned contract column, is validated as the instants
    ``_to_contract_types`` publishes (every row of a SQLite timestamp was refused under a
    zoned contract without ``coerce``); a zoned one in another zone than the contract's
    (DuckDB's ``Etc/UTC`` for ``UTC``) as the same instants in the contract's zone."""
    types = contract.arrow_types()
    for i, f in enumerate(data.schema):
        target = types.get(f.name)
        if target is None or not pa.types.is_timestamp(target):
            continue
        if target.tz is None and pa.types.is_timestamp(f.type) and f.type.tz is not None:
            data = data.set_column(i, f.name, pc.cast(data.column(i), pa.timestamp(f.type.unit)))
        elif _gains_zone(f.type, target):  # as _to_contract_types publishes it
            data = data.set_column(i, f.name, _rezone(data.column(i), f.type, target))
        elif (
            pa.types.is_timestamp(f.type)
            and f.type.tz is not None
            and target.tz is not None
            and f.type.tz != target.tz
        ):
            # the same instants in the contract's zone: DuckDB names UTC "Etc/UTC", and a
            # contract's DatetimeTZDtype(tz="UTC") without coerce refused every row
            zoned = pa.timestamp(f.type.unit, target.tz)
            data = data.set_column(i, f.name, pc.cast(data.column(i), zoned))
    return data


# rows validated at a time where the contract's checks judge each row on its own: the
# pandas frame pandera validates is the plan step's largest object (object columns, a
# Python object a value), so it is bounded apart from the Parquet object's size
# (``rows_per_file``, 500,000 by default). bench/README.md, "The plan step holds one chunk".
VALIDATE_ROWS = 100_000


def validate_rows(
    contract: Contract, data: pa.Table, unique_by_key: tuple[str, ...] = ()
) -> ValidationResult:
    """``contract``'s validation of Arrow rows as published (``data``: its columns, a row
    each), times seen as ``in_contract_zone`` makes them, integers with NULLs as objects:
    the one way the producer, dual publishing and a reader's own rules validate rows.

    Rows that pass are validated ``VALIDATE_ROWS`` at a time where ``Contract.row_local``
    says every check judges a row alone (``unique_by_key``: the primary key, when the
    caller's rows hold each key once: a cut, a batch): the first slice with any failure
    has ``data`` validated whole, so a result with failures is always the one of every
    row at once (pandera's coercion and dtype checks judge a column as a whole: one bad
    value fails every row of it, and its failures are listed in pandera's order)."""
    data = in_contract_zone(contract, data)
    n = data.num_rows
    if n > VALIDATE_ROWS and contract.row_local(
        unique_by_key, {f.name: f.type for f in data.schema}
    ):
        for start in range(0, n, VALIDATE_ROWS):
            part = data.slice(start, VALIDATE_ROWS).to_pandas(integer_object_nulls=True)
            if len(contract.validate(part).cases):
                break  # a failure: judged on every row at once, below
        else:
            return ValidationResult(n)
    return contract.validate(data.to_pandas(integer_object_nulls=True))


def _family(t: pa.DataType) -> str:
    for name, test in (
        ("int", pa.types.is_integer),
        ("float", pa.types.is_floating),
        ("str", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)),
        ("time", pa.types.is_temporal),
        ("bool", pa.types.is_boolean),
        ("decimal", pa.types.is_decimal),
    ):
        if test(t):
            return name
    return str(t)


def _to_contract_types(
    job: JobConfig, t: TableConfig, contract: Contract, data: pa.Table
) -> pa.Table:
    """Publish what the contract promises: a column staged as another kind of type (text
    holding numbers, say) is cast to the contract's type, value for value
    (``contracts.exact.cast_exact``: a double becomes a decimal through its shortest text,
    never rounded to the scale). Width and precision are kept. A value that does not fit
    raises ContractViolation naming it; nothing is published."""
    from contracts.exact import InexactCast, cast_exact

    for name, target in contract.arrow_types().items():
        if name not in data.column_names:
            continue
        i = data.column_names.index(name)
        current = data.schema.field(i).type
        if _gains_zone(current, target):  # naive values are UTC wall time by now
            data = data.set_column(i, name, _rezone(data.column(i), current, target))
            continue
        if _family(current) == _family(target) or pa.types.is_null(current):
            continue
        try:
            data = data.set_column(i, name, cast_exact(data.column(i), target))
        except InexactCast as e:
            raise ContractViolation(
                f"job '{job.name}' table '{t.name}': column '{name}' is staged as {current} and "
                f"cannot be the contract's {target}: {e.why}{e.at}; fix the value at the source "
                "or the contract's type; nothing published"
            ) from None
    return data


# The zone name every zoned time column is published with, unless the contract types the
# column with its own zone. DuckDB stages TIMESTAMPTZ values in its session zone, which is
# the host's (``Etc/UTC`` from /etc/localtime, ``UTC`` with TZ=UTC, ``Europe/Berlin``): the
# same instants, but the zone name is in the Parquet schema, so the same batch had other
# bytes on another host or shell, and a batch planned in one could not be rebuilt in the
# other ("rebuilt data differs from the plan").
PUBLISHED_ZONE = "UTC"


def published_zones(contract: Contract | None, data: pa.Table) -> pa.Table:
    """``data`` with every top-level zoned timestamp column in one zone whatever the host:
    the contract's zone where the contract types the column zoned, else ``PUBLISHED_ZONE``.
    Only the type's zone name changes: the stored instants (UTC) and the unit are kept.
    Naive columns and nested values are left as they are."""
    types = contract.arrow_types() if contract is not None else {}

    def zone(name: str) -> str:
        target = types.get(name)
        if target is not None and pa.types.is_timestamp(target) and target.tz is not None:
            return str(target.tz)
        return PUBLISHED_ZONE

    return _zoned_as(data, zone)


def _zoned_as(data: pa.Table, zone: str | Callable[[str], str]) -> pa.Table:
    """Every top-level zoned timestamp column of ``data`` in ``zone`` (or ``zone(name)``),
    the same instants."""
    for i, f in enumerate(data.schema):
        if not pa.types.is_timestamp(f.type) or f.type.tz is None:
            continue
        want = zone(f.name) if callable(zone) else zone
        if f.type.tz != want:
            data = data.set_column(i, f.name, data.column(i).cast(pa.timestamp(f.type.unit, want)))
    return data


def _gains_zone(current: pa.DataType, target: pa.DataType) -> bool:
    """A naive timestamp column whose contract column has a time zone. (The other way, a
    zoned column under a naive contract, is published zoned as before: lakes already hold
    it so.)"""
    return (
        pa.types.is_timestamp(current)
        and pa.types.is_timestamp(target)
        and current.tz is None
        and target.tz is not None
    )


def _rezone(column: Any, current: pa.TimestampType, target: pa.TimestampType) -> Any:
    """The same instants with the contract's zone: the naive column holds UTC wall time
    (sources take naive values in the job's timezone and stage UTC). The unit is kept."""
    return pc.assume_timezone(column, "UTC").cast(pa.timestamp(current.unit, target.tz))


def _migrate_chunk(
    job: JobConfig, t: TableConfig, changes: pa.Table, chain: Any, start: int, target: int
) -> pa.Table:
    """The chunk's data columns taken from version ``start`` to ``target``; same rows, same
    order, ``_op`` and load id kept. A migration that fails stops the batch."""
    from contracts import MigrationError

    data_cols = [c for c in changes.column_names if c not in (OP_COLUMN, LOAD_ID_COLUMN)]
    try:
        out = chain.migrate_arrow(changes.select(data_cols), start, target)
    except (MigrationError, KeyError, ValueError, TypeError) as e:
        message = (
            f"job '{job.name}' table '{t.name}': migrating rows from contract v{start} to "
            f"v{target} failed ({type(e).__name__}: {e}); nothing published"
        )
        if isinstance(e, MigrationError) and target < start:  # rows v{target} cannot hold
            raise DowngradeRefused(message, start, target, str(e)) from None
        raise ContractViolation(message) from None
    return out.append_column(OP_COLUMN, changes[OP_COLUMN]).append_column(
        LOAD_ID_COLUMN, changes[LOAD_ID_COLUMN]
    )


def _hold_drifted(
    t: TableConfig,
    changes: pa.Table,
    held: dict[str, str],
    quarantine: HeldRecords,
    missing: dict[str, str] | None = None,
    records: bool = True,
) -> np.ndarray:
    """Upserts with a value in a held column, or none in a ``missing`` one (a
    column the source dropped): quarantined with the column's reason (their records
    added to ``quarantine`` unless ``records`` is false, ``RECORD_ROWS`` rows' Python
    objects at a time)."""
    out = np.zeros(changes.num_rows, dtype=bool)
    missing = missing or {}
    cols = [c for c in held if c in changes.column_names]
    if not cols and not missing:
        return out
    upsert = pc.equal(changes[OP_COLUMN], "upsert").to_numpy(zero_copy_only=False)
    reasons = {**{c: held[c] for c in cols}, **missing}
    for c in [*cols, *sorted(missing)]:
        if c in held:
            has = pc.is_valid(changes[c]).to_numpy(zero_copy_only=False) & upsert
        elif c in changes.column_names:
            has = pc.is_null(changes[c]).to_numpy(zero_copy_only=False) & upsert
        else:
            has = upsert.copy()
        rows = np.flatnonzero(has & ~out) if records else np.zeros(0, np.int64)
        for s in range(0, len(rows), RECORD_ROWS):
            part = changes.take(pa.array(rows[s : s + RECORD_ROWS], pa.int64())).to_pylist()
            quarantine.extend(
                [
                    {
                        "load_id": rec[LOAD_ID_COLUMN],
                        "pk": _RECORD_JSON({k: rec[k] for k in t.primary_key}),
                        "field": c,
                        "check": "schema drift",
                        "reason": reasons[c],
                        "row_json": _RECORD_JSON(
                            {k: v for k, v in rec.items() if k not in (OP_COLUMN, LOAD_ID_COLUMN)}
                        ),
                    }
                    for rec in part
                ]
            )
        out |= has
    return out


def _validate_chunk(
    t: TableConfig,
    contract: Contract,
    changes: pa.Table,
    held: np.ndarray | None = None,
    fresh: np.ndarray | None = None,
    examples: dict[tuple[str | None, str], str] | None = None,
) -> tuple[np.ndarray, int, int, Counter[tuple[str | None, str]], _Failed | None]:
    """Rows to keep, the number of upserts validated, the number that failed, the counted
    failures by (field, check) (a row once per check it fails), and the failed rows
    (``_Failed``: their quarantine records are made by ``_quarantine_failed``, only when
    the batch can still be published); the first counted failing value of each (field,
    check) with its row's key is added to ``examples``. Deletes are not validated: they
    carry only a key. Rows already ``held`` back (source drift) are neither kept nor
    validated. Only ``fresh`` rows (of the new loads; all when None) are counted: a held
    row validated again and failing again is held again without counting."""
    keep = np.ones(changes.num_rows, dtype=bool) if held is None else ~held
    is_upsert = pc.equal(changes[OP_COLUMN], "upsert")
    upsert_idx = np.flatnonzero(is_upsert.to_numpy(zero_copy_only=False) & keep)
    if not len(upsert_idx):
        return keep, 0, 0, Counter(), None
    data_cols = [c for c in changes.column_names if c not in (OP_COLUMN, LOAD_ID_COLUMN)]
    all_upserts = len(upsert_idx) == changes.num_rows
    upserts = (changes if all_upserts else changes.take(pa.array(upsert_idx))).select(data_cols)
    result = validate_rows(contract, upserts, t.primary_key)
    failed = result.failed_positions
    counted = len(upsert_idx) if fresh is None else int(fresh[upsert_idx].sum())
    if not len(failed):
        return keep, counted, 0, Counter(), None
    keep[upsert_idx[failed]] = False
    is_fresh = None if fresh is None else fresh[upsert_idx]
    counts = result.counts(is_fresh)
    failed_n = len(failed) if is_fresh is None else int(is_fresh[failed].sum())
    if examples is not None and failed_n:
        for f in result.first_failures(is_fresh):
            if (f.field, f.check) in examples:
                continue
            if f.row < 0:  # a failure of the whole column: pandera names no row
                value = example(f.value)
                whole = "the column as a whole" if value == "NULL" else f"{value} (the column as a whole)"
                examples[(f.field, f.check)] = whole
                continue
            rec = upserts.slice(f.row, 1).to_pylist()[0]
            # the key in key order, as typed (a record's ``pk`` is for matching)
            shown = json.dumps({c: rec[c] for c in t.primary_key}, default=str, ensure_ascii=False)
            examples[(f.field, f.check)] = f"{_as_staged(f, rec)} at key {shown[:80]}"
    lids = changes[LOAD_ID_COLUMN].take(pa.array(upsert_idx[failed]))
    return keep, counted, failed_n, counts, _Failed(upserts, lids, failed, result)


@dataclass
class _Failed:
    """A chunk's upserts (``rows``), the positions among them that failed (``positions``,
    ascending), the load id of each failed row (``load_ids``) and the validation's
    ``result``."""

    rows: pa.Table
    load_ids: pa.ChunkedArray
    positions: np.ndarray
    result: ValidationResult


# Failed or held rows made into quarantine records at a time (their Python objects)
RECORD_ROWS = 10_000
# a record's key (``pk``) and row (``row_json``) as JSON text: ``json.dumps(x, default=str,
# sort_keys=True)``, without making an encoder for every call
_RECORD_JSON = json.JSONEncoder(default=str, sort_keys=True).encode


def _quarantine_failed(t: TableConfig, failed: _Failed, quarantine: HeldRecords) -> None:
    """The quarantine records of ``failed``: one a (row, failure), ``RECORD_ROWS`` rows'
    Python objects at a time."""
    pos = failed.positions
    whole = list(failed.result.schema_failures)
    for s in range(0, len(pos), RECORD_ROWS):
        part = pos[s : s + RECORD_ROWS]
        reasons = failed.result.row_failures_between(int(part[0]), int(part[-1]) + 1)
        records = failed.rows.take(pa.array(part)).to_pylist()
        lids = failed.load_ids.slice(s, len(part)).to_pylist()
        out = []
        for p, rec, lid in zip(part.tolist(), records, lids, strict=True):
            pk = _RECORD_JSON({c: rec[c] for c in t.primary_key})
            row_json = _RECORD_JSON(rec)
            for f in [*whole, *reasons.get(p, [])]:
                shown = example(f.value)
                staged = _as_staged(f, rec, shown)  # a row's own failure: its reason names that value
                reason = f.reason if staged == shown else f"{f.check} failed for value {staged}"
                out.append(
                    {
                        "load_id": lid,
                        "pk": pk,
                        "field": f.field,
                        "check": f.check,
                        "reason": reason,
                        "row_json": row_json,
                    }
                )
        quarantine.extend(out)


def _as_staged(failure: Any, rec: dict[str, Any], shown: str | None = None) -> str:
    """The failing value of ``failure`` for a message: pandera gives the value after its
    coercion, NULL when coercing failed (``'0001-01-01'`` out of a pandas timestamp's range,
    ``2.5`` for an integer), so the staged value of the row ``rec`` is shown then (for a
    failure of that row only: a failure of the whole column names no row's value)."""
    shown = example(failure.value) if shown is None else shown
    missing = shown == "NULL" and failure.check != "not_nullable"
    if missing and failure.row >= 0 and rec.get(failure.field) is not None:
        return example(rec[failure.field])
    return shown


def arrow_input(body: bytes | pa.Buffer) -> pa.BufferReader:
    """An Arrow input stream over a copy of ``body`` that Arrow owns, for every Arrow reader
    (Parquet, CSV, JSON) of bytes held in Python.

    Arrow releases a read's input on its own threads, possibly after the read returned;
    when the input wraps a Python object (``io.BytesIO``, or ``pa.BufferReader`` over
    ``bytes``) that thread must take the GIL, and if the interpreter is exiting by then the
    process aborts in C++ (``terminate called without an active exception``, exit -6
    instead of its own code: a failing ``deltaferry pull`` did in CI). Measured here: 27 of
    40 processes that read a 200k-row Parquet file three times through
    ``pa.BufferReader(bytes)`` (pandas imported) and exited, 74 of 100 through
    ``io.BytesIO``; 0 of 60 through the copy (``tests/test_parquet_io.py``). The copy is one
    memcpy of the object; a ``pa.Buffer`` is taken as it is (it must be one Arrow owns,
    as ``arrow_owned`` makes: read several times, copied once)."""
    return pa.BufferReader(body if isinstance(body, pa.Buffer) else arrow_owned(body))


def arrow_owned(body: bytes) -> pa.Buffer:
    """A copy of ``body`` in a buffer Arrow owns (``arrow_input``)."""
    sink = pa.BufferOutputStream()
    sink.write(body)
    return sink.getvalue()


def read_parquet(body: bytes | pa.Buffer, columns: list[str] | None = None) -> pa.Table:
    """A Parquet object's rows (``columns`` only, when given) from its bytes
    (``arrow_input``). Raises ``pa.ArrowInvalid`` for bytes that are not Parquet or a column
    not in the file."""
    return pq.read_table(arrow_input(body), columns=columns)


def parquet_metadata(body: bytes | pa.Buffer) -> pq.FileMetaData:
    """The footer of a Parquet object (row count, row groups, schema) from its bytes."""
    return pq.read_metadata(arrow_input(body))


# fixed writer options: the same rows must always give the same bytes
WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "row_group_size": 128 * 1024,
    "store_schema": True,
}


def _encode(chunk: pa.Table) -> Part:
    buf = pa.BufferOutputStream()  # an Arrow sink, not a Python file (``read_parquet``)
    pq.write_table(chunk, buf, **WRITE_OPTIONS)
    data = buf.getvalue().to_pybytes()
    ups = int(pc.sum(pc.equal(chunk[OP_COLUMN], "upsert")).as_py() or 0)
    return Part(
        data=data,
        sha256=sha256(data),
        rows=chunk.num_rows,
        upserts=ups,
        deletes=chunk.num_rows - ups,
    )


def translate_parts(
    job: JobConfig,
    t: TableConfig,
    parts: list[Part],
    chain: Any,
    start: int,
    target: int,
    zones: str = "published",
) -> list[Part]:
    """The published parts of a batch at version ``start``, upgraded to ``target`` and
    validated against it, one part for each (dual publishing). Derived from the parts'
    bytes alone, so a rebuilt batch derives the same bytes. ``zones`` as ``build_delta``'s
    (the batch's own ``Delta.zones``)."""
    contract = chain.contract(target)
    out = []
    for part in parts:
        table = read_parquet(part.data)
        data = table.drop_columns([c for c in (OP_COLUMN, SEQ_COLUMN) if c in table.column_names])
        try:
            moved = chain.migrate_arrow(data, start, target)
        except (ValueError, KeyError, TypeError) as e:
            raise ContractViolation(
                f"job '{job.name}' table '{t.name}': dual publishing v{start} -> v{target} "
                f"failed ({type(e).__name__}: {e}); nothing published"
            ) from None
        if zones == "published":
            moved = published_zones(contract, moved)
        moved = moved.append_column(OP_COLUMN, table[OP_COLUMN]).append_column(
            SEQ_COLUMN, table[SEQ_COLUMN]
        )
        upserts = moved.filter(pc.equal(moved[OP_COLUMN], "upsert")).drop_columns(
            [OP_COLUMN, SEQ_COLUMN]
        )
        result = validate_rows(contract, upserts, t.primary_key)  # a batch holds a key once
        if result.failed_rows:
            raise ContractViolation(
                f"job '{job.name}' table '{t.name}': dual publishing: {len(result.failed_rows)} "
                f"row(s) valid at v{start} break v{target} after the upgrade "
                f"({result.summary()}); nothing published. Fix the chain's upgrade"
            )
        out.append(_encode(moved))
    return out
