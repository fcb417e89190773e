"""The changed-rows filter: hash-based change detection against what is staged.

A source that reads rows again (a whole table without a cursor, the rows at a cursor
boundary, a file dropped again) stages only the rows whose content hash differs from
their staged version's (``ChangedRows``; per chunk of keys: ``ChangedByKey``). The hash
covers the non-NULL values by column name (``content_text``; records: ``row_hash``), so a
column the source adds or a new column order changes nothing; hashes staged by earlier
versions still match, and a ``source_version`` change compares through the contract
chain's migration (``source_shift``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig, job_home
from deltaferry.duck import ident
from sources.columns import HASH_COLUMN, STAGING_DATASET
from sources.staging import (
    staged_hashes,
    staged_hashes_among,
    staged_keyed,
    staging_path,
    write_staging,
)


def source_shift(job: JobConfig, t: TableConfig) -> tuple[Any, int, int] | None:
    """``(chain, old, new)`` when the table's source rows moved to another version of its
    contract chain since its newest batch was planned (``source_version`` changed: the
    source renamed or reshaped columns as a migration of the chain does), else None. The
    old version is the source version that batch's manifest records (its ``migration``'s
    ``from``, else its contract version)."""
    from contracts import load_chain
    from deltaferry.state import StateStore

    try:
        chain = load_chain(t.contract, where=f"job '{job.name}' table '{t.name}'")
        if len(chain.versions) < 2:
            return None
        head = StateStore(job.name).last_manifest(t.name)
    except Exception:  # noqa: BLE001 - a bad contract or state is reported by the run itself
        return None
    if head is None:
        return None
    new = t.source_version or chain.latest
    old = head.migration.from_ if head.migration is not None else head.contract.version
    if old == new or old not in chain.versions or not chain.reachable(old, new):
        return None
    return chain, old, new


def _json_default(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, Decimal):
        # an API's fraction (read exactly, sources.rest_api.numbers) hashes as the double
        # it reads as when that double is the same number (records keep the hash they had
        # when JSON fractions were doubles), else as its exact text: a change beyond a
        # double's digits (...56.78 to ...56.79) is a change
        f = float(v)
        try:
            same = Decimal(repr(f)) == v
        except ArithmeticError:  # inf, nan
            same = False
        return f if same else str(v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def canonical_json(row: dict[str, Any]) -> str:
    """A JSON record as text independent of key order and of its top-level fields that are
    null (a field that is null or absent reaches the replica the same way): what
    ``row_hash`` hashes. Nested values are kept as they are."""
    present = {k: v for k, v in row.items() if v is not None}
    return json.dumps(present, sort_keys=True, separators=(",", ":"), default=_json_default)


def row_hash(row: dict[str, Any]) -> str:
    """md5 of a JSON record (an API record): ``canonical_json``'s text."""
    return hashlib.md5(canonical_json(row).encode()).hexdigest()


def legacy_row_hash(row: dict[str, Any]) -> str:
    """The record hash written before null fields were left out (staged rows keep it until
    they change): md5 of the key-sorted JSON with its nulls."""
    text = json.dumps(row, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.md5(text.encode()).hexdigest()


def content_text(columns: list[str], alias: str = "c", texts: dict[str, str] | None = None) -> str:
    """A DuckDB expression: a row's content as text that does not depend on the order of
    its columns nor on columns that are NULL in it, so a source that gains a column (NULL
    in the rows it had) or reorders its columns changes no row's hash. Each column with a
    value gives ``"name"=<bytes>:<value as text>;`` in name order: the length prefix makes
    the text unambiguous whatever the values contain. Timestamps print in the session's
    time zone (``ChangedRows`` sets UTC).

    ``texts`` maps each column to an expression already holding ``CAST(value AS
    VARCHAR)`` (a column of a subquery that casts once: about 40% faster on a large copy,
    ``sources/sql_database/bulk.py``); by default the value of ``alias.<column>`` is cast
    here. Either way the text is the same."""
    parts = []
    for c in sorted(columns):
        name = duck.literal(json.dumps(c) + "=")
        v = texts[c] if texts is not None else f"CAST({alias}.{ident(c)} AS VARCHAR)"
        present = texts[c] if texts is not None else f"{alias}.{ident(c)}"
        parts.append(
            f"CASE WHEN {present} IS NULL THEN '' ELSE concat({name}, strlen({v}), ':', {v}, ';') END"
        )
    return f"concat({', '.join(parts)})" if parts else "''"


def _legacy_text(columns: list[str], alias: str = "c") -> str:
    """The row text hashed before ``content_text`` (columns in their order, NULLs included
    except in dlt's variant columns); staged rows keep such hashes until they change, so
    a row not matched by its new hash is compared by this one too."""
    variants = [c for c in columns if _is_variant(c, columns)]
    values = ", ".join(f"{ident(c)} := {alias}.{ident(c)}" for c in columns if c not in variants)
    return f"CAST(struct_pack({values}) AS VARCHAR)" + "".join(
        f" || coalesce('|{c}=' || CAST({alias}.{ident(c)} AS VARCHAR), '')" for c in variants
    )


def _is_variant(name: str, columns: list[str]) -> bool:
    """Whether ``name`` is dlt's variant column of another of ``columns``."""
    from contracts.drift import VARIANT

    m = VARIANT.match(name)
    return m is not None and m.group("base") in columns


# records' hashes looked up in staging at once (``ChangedRows.staged_among``): 500k texts of
# 32 characters are about 25 MiB of Arrow
AMONG = 500_000


class ChangedRows:
    """Keeps rows whose content differs from their staged version (new keys included) and
    tags each kept row with its content hash (``HASH_COLUMN``), so a source that re-reads
    rows it already sent (a whole table, or the rows at a cursor boundary) stages only
    what changed. Rows are compared before the load (the source's read runs in dlt's
    extract); close() after the load.

    Content is compared as ``content_text`` gives it: a column the source gains is no
    change for rows where it is NULL, nor is a new order of columns. Works on Arrow tables
    (hash computed by DuckDB over the row's values, in UTC) and on JSON records (md5 of
    ``canonical_json``; their hashes are looked up in staging, ``staged_among``). Hashes staged by earlier versions (``_legacy_text``,
    ``legacy_row_hash``) still match an unchanged row."""

    _config: dict[str, Any] = {}  # of the DuckDB connection that hashes and compares

    def __init__(
        self, job: JobConfig, t: TableConfig, borrowed: Any = None, *, lookups: int = 0
    ) -> None:
        self.pk = list(t.primary_key)
        # the first ``lookups`` chunks are compared with the staged rows of their keys alone,
        # looked up in staging (a join with the chunk's keys: one scan of the staged key and
        # hash columns); later chunks with every staged row, read once (``_staged_all``).
        # So a run that reads a few small files costs what they hold, not the table (2M
        # staged rows: reading them all took 1.2-1.7 s), and one that reads much reads the
        # table once.
        self._lookups = lookups
        self.where = f"job '{job.name}' table '{t.name}'"
        self._spill = job_home(job.name) / "tmp"
        self._spill.mkdir(parents=True, exist_ok=True)
        self._file: Path | None = None  # the staged hashes' database file, while open
        self.con = duck.quiet(
            duckdb.connect(
                config={
                    **self._config,
                    "memory_limit": duck.memory_limit(),
                    "temp_directory": str(self._spill),
                }
            )
        )
        self.con.execute("SET TimeZone = 'UTC'")  # timestamps print (and hash) the same everywhere
        self.t = t
        self.path = staging_path(job.name)
        self.borrowed = borrowed
        # every staged key and hash, read on first use (``_staged_all``): a run that reads
        # nothing again (no new file) reads none, whatever the table's size
        self._all: str | None = None
        self._all_read = False
        self._retag: list[pa.Table] = []  # key, old and new hash of rows matched by an old hash
        self._record_tags: list[dict[str, Any]] = []  # the same, for records
        self._shift = source_shift(job, t)

    _STAGED = "held.staged_hashes"  # the table that holds them (``_read_all``)

    def _read_all(self) -> str | None:
        """Every live staged key and hash, read once (on first use) into a temporary
        DuckDB file of the job's home attached to this filter's database: compressed, and
        out of memory beyond DuckDB's limit, where an Arrow table in Python grew with the
        table (3M rows: +94 MiB instead of +126 MiB, and bounded). The table's name, or None
        before the first load."""
        created = False
        for batch in staged_hashes(self.t, self.path, self.borrowed):
            self.con.register("batch_", batch)
            try:
                if not created:
                    self._file = self._spill / f"hashes-{uuid.uuid4().hex}.duckdb"
                    self.con.execute(f"ATTACH {duck.literal(str(self._file))} AS held")
                    self.con.execute(f"CREATE TABLE {self._STAGED} AS SELECT * FROM batch_")
                    created = True
                else:
                    self.con.execute(f"INSERT INTO {self._STAGED} SELECT * FROM batch_")
            finally:
                self.con.unregister("batch_")
        return self._STAGED if created else None

    def _staged_all(self) -> str | None:
        """``_read_all``'s table, read on the first call."""
        if not self._all_read:
            self._all = self._read_all()
            self._all_read = True
        return self._all

    def _known(self, hashed: pa.Table) -> pa.Table | str | None:
        """Staged keys and hashes to compare a chunk's rows with: all of them, read once
        (the name of their table), or a table of them: those of the chunk's keys, looked up
        while lookups are left and nothing was read whole."""
        if self._lookups > 0 and not self._all_read:
            self._lookups -= 1
            return staged_keyed(self.t, self.path, self.borrowed, HASH_COLUMN, hashed.select(self.pk))
        return self._staged_all()

    def _anti_join(self, rows: pa.Table, known: pa.Table | str | None) -> pa.Table:
        """Positions (``__i``) and hashes of the rows not staged with the same hash;
        ``known`` is a table, or the name of a table of this filter's database."""
        if known is None:
            return rows.select(["__i", HASH_COLUMN])
        match = " AND ".join(f"k.{ident(c)} = r.{ident(c)}" for c in [*self.pk, HASH_COLUMN])
        tables: dict[str, pa.Table] = {"rows_": rows}
        if not isinstance(known, str):
            tables["known"] = known
        name = known if isinstance(known, str) else "known"
        return self._query(
            tables,
            f"SELECT __i, {HASH_COLUMN} FROM rows_ r WHERE NOT EXISTS "
            f"(SELECT 1 FROM {name} k WHERE {match}) ORDER BY __i",
        )

    def _query(self, tables: dict[str, pa.Table], sql: str) -> pa.Table:
        """``sql``'s result, with ``tables`` registered under their names while it runs."""
        for name, table in tables.items():
            self.con.register(name, table)
        try:
            return self.con.execute(sql).fetch_arrow_table()
        finally:
            for name in tables:
                self.con.unregister(name)

    def _hashed(self, chunk: pa.Table, text: str) -> pa.Table:
        """``__i`` (the row's position), the key and ``md5(text)`` of each of the chunk's rows."""
        return self._query(
            {"chunk_": chunk.append_column("__i", pa.array(range(chunk.num_rows)))},
            f"SELECT __i, {', '.join('c.' + ident(c) for c in self.pk)}, "
            f"md5({text}) AS {HASH_COLUMN} FROM chunk_ c ORDER BY __i",
        )

    def arrow(self, chunk: pa.Table) -> pa.Table:
        """The chunk's changed rows, with their hash column."""
        if HASH_COLUMN in chunk.column_names:
            chunk = chunk.drop_columns([HASH_COLUMN])
        hashed = self._hashed(chunk, content_text(chunk.column_names))
        known = self._known(hashed)
        found = self._anti_join(hashed, known)
        if known is not None and found.num_rows:
            # not matched by the current hash: an unchanged row staged with an older one?
            legacy = self._hashed(chunk.take(found["__i"]), _legacy_text(chunk.column_names))
            still = self._anti_join(legacy, known)["__i"]
            if len(still) < found.num_rows:  # unchanged, staged with an old hash: retag it
                same = pc.invert(pc.is_in(legacy["__i"], value_set=still))
                self._retag.append(
                    legacy.filter(same)
                    .rename_columns([*legacy.column_names[:-1], "_old"])
                    .append_column("_new", found.filter(same)[HASH_COLUMN])
                    .drop_columns(["__i"])
                )
            found = found.take(still)
        if self._shift is not None and found.num_rows:
            found = self._migrated_match(chunk, hashed, found)
        return chunk.take(found["__i"]).append_column(HASH_COLUMN, found[HASH_COLUMN])

    def _migrated_match(self, chunk: pa.Table, hashed: pa.Table, found: pa.Table) -> pa.Table:
        """``found`` without the rows equal to their staged version taken through the chain's
        migration from the old source version to the new one (``source_shift``): a column
        the source renamed as the chain's migration renames it is no change. Those rows are
        retagged. Anything that cannot be compared (the migration refuses a row, a key
        column renamed) counts as changed: republished, which is safe."""
        assert self._shift is not None  # called only with a source shift
        chain, old, new = self._shift
        rows = hashed.take(found["__i"])  # __i (chunk positions), key, current hash
        try:
            staged = staged_keyed(
                self.t, self.path, self.borrowed, HASH_COLUMN, rows.select(self.pk), whole=True
            )
            if staged is None or not staged.num_rows:
                return found
            moved = chain.migrate_arrow(staged.drop_columns([HASH_COLUMN]), old, new)
            if moved.num_rows != staged.num_rows:
                return found
            # typed as the source's rows are now, so equal values print alike
            for name in set(moved.column_names) & set(chunk.column_names):
                want = chunk.schema.field(name).type
                if moved.schema.field(name).type != want:
                    try:
                        cast = pc.cast(moved[name], want)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        continue
                    moved = moved.set_column(moved.column_names.index(name), name, cast)
            then = self._hashed(moved, content_text(moved.column_names))
            still = self._anti_join(rows, then)["__i"]
        except Exception:  # noqa: BLE001 - not comparable: counted as changed (safe)
            return found
        if len(still) == rows.num_rows:
            return found
        same = rows.filter(pc.invert(pc.is_in(rows["__i"], value_set=still)))
        keys = ", ".join(f"m.{ident(c)}" for c in self.pk)
        match = " AND ".join(f"m.{ident(c)} = s.{ident(c)}" for c in self.pk)
        self._retag.append(
            self._query(
                {"same_": same, "staged_": staged.select([*self.pk, HASH_COLUMN])},
                f"SELECT {keys}, s.{HASH_COLUMN} AS _old, m.{HASH_COLUMN} AS _new "
                f"FROM same_ m JOIN staged_ s ON {match}",
            )
        )
        return found.filter(pc.is_in(found["__i"], value_set=still))

    def staged_among(self, hashes: list[str]) -> set[str]:
        """Those of ``hashes`` (``row_hash`` of records) that a live staged row has (a hash
        covers the key, so membership is enough, and a key needs no text form that matches
        how DuckDB prints it). Looked up in staging ``AMONG`` hashes at a time, each one
        scan of the staged hash column: memory follows the hashes asked about, never the
        table (a set of every staged hash took about 130 B a row: 6 GB at 50M rows)."""
        found: set[str] = set()
        for i in range(0, len(hashes), AMONG):
            found |= staged_hashes_among(self.t, self.path, self.borrowed, hashes[i : i + AMONG])
        return found

    def changed_records(
        self, rows: list[dict[str, Any]], hashes: list[str], staged: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """Of ``rows`` (records, ``hashes`` their ``row_hash``), those not staged unchanged,
        each tagged with its hash (``HASH_COLUMN``), in order. ``staged``: what
        ``staged_among(hashes)`` gave, when the caller asked already. A record staged with
        the hash written before null fields were left out (``legacy_row_hash``; only a
        record with a null field hashes differently) is unchanged too, and retagged at
        ``close()``."""
        if staged is None:
            staged = self.staged_among(hashes)
        left = [(row, h) for row, h in zip(rows, hashes) if h not in staged]
        legacy = {
            i: legacy_row_hash(row)
            for i, (row, _) in enumerate(left)
            if any(v is None for v in row.values())
        }
        old = self.staged_among(list(legacy.values())) if legacy else set()
        out = []
        for i, (row, h) in enumerate(left):
            before = legacy.get(i)
            if before is not None and before in old:
                self._record_tags.append({**{c: row[c] for c in self.pk}, "_old": before, "_new": h})
                continue
            row[HASH_COLUMN] = h
            out.append(row)
        return out

    def records(self, item: Any) -> list[dict[str, Any]]:
        """A dlt step for a source that yields records (``extract_records``; ``item`` a
        record or a list of them, each with a key value: ``sources.load._checked`` holds the
        others back before this step): the changed ones, tagged with their hash, looked up
        in staging once for the whole list."""
        rows = item if isinstance(item, list) else [item]
        for row in rows:
            row.pop(HASH_COLUMN, None)
        return self.changed_records(rows, [row_hash(row) for row in rows])

    def close(self) -> None:
        """Retag the unchanged rows matched by an old hash with their current one (so the
        next read matches them directly, whatever the source's shape becomes), then close.
        Safe after a failed load too: only a row still staged with that old hash changes."""
        if self._record_tags:  # one table for the records' tags, not one per record
            self._retag.append(pa.Table.from_pylist(self._record_tags))
            self._record_tags = []
        try:
            if self._retag and self.path.exists():
                self._write_retag(pa.concat_tables(self._retag, promote_options="permissive"))
        except duckdb.Error:
            pass  # an optimisation only: the next read matches those rows by the old hash again
        finally:
            self._retag = []
            self.con.close()
            if self._file is not None:
                duck.remove(self._file)
                self._file = None

    def _write_retag(self, tags: pa.Table) -> None:
        con = write_staging(self.path, self.borrowed)
        try:
            con.register("retag", tags)
            match = " AND ".join(f"s.{ident(c)} = r.{ident(c)}" for c in self.pk)
            con.execute(
                f"UPDATE {STAGING_DATASET}.{ident(self.t.name)} s SET {HASH_COLUMN} = r._new "
                f"FROM retag r WHERE {match} AND s.{HASH_COLUMN} = r._old"
            )
        finally:
            con.close()


class ChangedByKey(ChangedRows):
    """``ChangedRows`` for a window of a table (a cursor read): each chunk's rows are compared
    with the staged rows of the same keys only, looked up in staging per chunk, so memory
    follows the chunk, not the table. A staged row without a hash (staged before hashes were
    kept) counts as changed."""

    _config = {"threads": 1}

    def __init__(self, job: JobConfig, t: TableConfig, borrowed: Any = None) -> None:
        super().__init__(job, t, borrowed, lookups=sys.maxsize)  # every chunk looked up

    def _read_all(self) -> str | None:
        return None  # never read whole (``_known`` looks up every chunk)
