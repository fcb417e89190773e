"""What every source kind shares: the job's DuckDB staging file, its dlt pipeline, and
the content filter that keeps unchanged rows out of staging.

A source kind loads a job's tables into ``raw.<table>`` of ``staging.duckdb`` with
``write_disposition="merge"`` on the table's primary key. Deltas are cut from staging by
dlt's load id, so whatever a source stages is what the next batch publishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

import dlt
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.configuration.providers import ConfigProvider
from dlt.common.typing import TLoaderFileFormat

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig, job_home
from deltaferry.duck import ident
from deltaferry.settings import from_env
from sources.columns import DELETED_COLUMN, HASH_COLUMN, STAGING_DATASET

PIPELINE_PREFIX = "deltaferry_"

# dlt settings every deltaferry pipeline runs with, as (sections, key): value. They are
# answered by a config provider of ours for pipelines named ``deltaferry_*`` only (dlt looks
# a setting up under the pipeline's name first), so the process's environment and any other
# dlt pipeline in it are left alone.
PIPELINE_SETTINGS: dict[tuple[tuple[str, ...], str], Any] = {
    # dlt writes _dlt_load_id on Arrow rows only when asked; we cut deltas by it.
    (("normalize", "parquet_normalizer"), "add_dlt_load_id"): True,
    # loaded files are plaintext Parquet in the pipeline dir: delete them once loaded
    (("load",), "delete_completed_jobs"): True,
    (("load",), "truncate_staging_dataset"): True,
    # a load job that fails terminally (a value staging cannot take) aborts its package with
    # dlt's own abort (``Pipeline.abort_packages``: pending packages deleted, pipeline state
    # and schemas restored), so a failed load never stays pending and wedges every later run
    (("load",), "auto_abort_on_terminal_error"): True,
}


class _PipelineSettings(ConfigProvider):
    """``PIPELINE_SETTINGS`` for deltaferry's pipelines, through dlt's public config provider
    interface (``dlt.config.register_provider``). A setting also given as a plain environment
    variable (``LOAD__DELETE_COMPLETED_JOBS``) is left to it: that variable still decides, as
    it did when these were environment defaults."""

    def get_value(
        self, key: str, hint: Any, pipeline_name: str | None, *sections: str
    ) -> tuple[Any | None, str]:
        where = "__".join((*sections, key)).upper()
        if not (pipeline_name or "").startswith(PIPELINE_PREFIX) or where in os.environ:
            return None, where
        return PIPELINE_SETTINGS.get((tuple(sections), key)), where

    @property
    def supports_secrets(self) -> bool:
        return False

    @property
    def supports_sections(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return "deltaferry pipeline settings"


_settings_lock = threading.Lock()


def _register_pipeline_settings() -> None:
    """Register ``_PipelineSettings`` with dlt once (again if dlt's run context was
    reloaded); dlt asks it after its own providers."""
    from dlt.common.configuration.exceptions import DuplicateConfigProviderException

    with _settings_lock:
        try:
            dlt.config.register_provider(_PipelineSettings())
        except DuplicateConfigProviderException:
            pass


# a table hint for dlt's merge: each load holds one row per key (our sources resolve
# repeated keys themselves: sources.integrity, rest_api.reads, files.LatestWins), so dlt
# copies staged rows as they are; its own deduplication (ROW_NUMBER() OVER a partition)
# turns -0.0 into 0.0 in DuckDB
DEDUPLICATED: dict[str, Any] = {"x-stage-data-deduplicated": True}


@dataclass(frozen=True)
class ExtractResult:
    load_ids: list[str]
    rows_by_table: dict[str, int]
    tombstones_by_table: dict[str, int]
    # per table, inputs set aside whole (a malformed file), as one-line reasons
    skipped: dict[str, list[str]] | None = None
    # requests the source's client retried on its own (HTTP 429/5xx), as one-line reasons
    retried: list[str] | None = None
    # per table, rows held back before staging (a NULL key, a NULL cursor under
    # null_cursor = "quarantine"): quarantine records {pk, field, check, reason, row_json}
    held: dict[str, list[dict[str, Any]]] | None = None
    # per table, keys read more than once in one extraction and how they were resolved,
    # as one-line notes naming job, table and keys (the flow logs them as warnings)
    duplicates: dict[str, list[str]] | None = None
    # per table, the columns the source has now (when the source knows them): a staged
    # contract column missing here and NULL on every new row was dropped (contracts/drift.py)
    columns: dict[str, list[str]] | None = None


def staging_path(job: str) -> Path:
    return job_home(job) / "staging.duckdb"


def pipeline_for(job: JobConfig) -> tuple[dlt.Pipeline, Any]:
    """The job's dlt pipeline (working dir under the job's state dir) and the DuckDB
    connection it borrows when staging is encrypted (close it after the loads), or None.

    Names are staged under the naming convention dlt recorded for the job's staging, or,
    for a job that has staged nothing yet, ``direct``: source names exactly as they are
    (see ``sources.names``; check source columns with ``sources.names.check_columns``
    and ``staging_naming``)."""
    path = staging_path(job.name)
    con = None
    if duck.encryption_key():
        from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials

        con = duck.connect(path, alias="staging")
        credentials: Any = DuckDbCredentials(con, local_config={"schema": "staging.main"})
    else:
        credentials = str(path)
    # dlt's progress collector: none unless asked for
    progress: dict[str, Any] = {"progress": "log"} if from_env().dlt_progress else {}
    _register_pipeline_settings()
    pipeline = dlt.pipeline(
        pipeline_name=f"{PIPELINE_PREFIX}{job.name}",
        pipelines_dir=str(job_home(job.name) / "dlt"),
        destination=dlt.destinations.duckdb(
            credentials, naming_convention=staging_naming(job, con)
        ),
        dataset_name=STAGING_DATASET,
        **progress,
    )
    return pipeline, con


def pipeline_naming(pipeline: dlt.Pipeline) -> str:
    """The naming convention of a ``pipeline_for`` pipeline's staging: the name it gave the
    destination (``staging_naming``)."""
    convention = pipeline.destination.capabilities().naming_convention
    assert isinstance(convention, str), convention  # pipeline_for passes a name
    return convention


def staging_naming(job: JobConfig, borrowed: Any = None) -> str:
    """The dlt naming convention of the job's staging: the one dlt recorded with the staged
    schema, else ``direct`` (names kept exactly) for a job that has staged nothing."""
    from sources.names import EXACT, recorded_naming

    pipeline_dir = job_home(job.name) / "dlt" / f"deltaferry_{job.name}"
    return recorded_naming(staging_path(job.name), borrowed, pipeline_dir) or EXACT


def read_staging(
    path: Path, borrowed: duckdb.DuckDBPyConnection | None
) -> duckdb.DuckDBPyConnection:
    """A connection that reads staging: a cursor of dlt's connection when staging is
    encrypted (it is attached once, there), else a read-only connection of its own."""
    if borrowed is not None:
        con = borrowed.cursor()
        con.execute("USE staging")
        return con
    return duck.connect(path, read_only=True, alias="staging")


def staged_table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether staging (``con``, from ``read_staging`` or ``duck.connect``) has ``table`` in
    its dataset (``STAGING_DATASET``)."""
    return duck.table_exists(con, table, STAGING_DATASET)


def staged_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The staged columns of ``table`` in table order, dlt's and deltaferry's own included;
    ``[]`` before its first load."""
    return duck.columns(con, table, STAGING_DATASET)


def staged_keyed(
    t: TableConfig,
    path: Path,
    borrowed: duckdb.DuckDBPyConnection | None,
    column: str,
    only: pa.Table | None = None,
    *,
    whole: bool = False,
) -> pa.Table | None:
    """Primary key and ``column`` of every live staged row where it is set (of the keys in
    ``only``, a table of key columns, when given), or None before the first load (or when
    the table was staged without that column). With ``whole``, every other column of the
    row too except staging's own (``INTERNAL_COLUMNS``)."""
    from sources.columns import INTERNAL_COLUMNS

    if not path.exists():
        return None
    con = read_staging(path, borrowed)
    try:
        if not staged_table_exists(con, t.name):
            return None
        cols = staged_columns(con, t.name)
        if column not in cols:
            return None
        live = f"coalesce({DELETED_COLUMN}, false) = false" if DELETED_COLUMN in cols else "true"
        keys = ", ".join(f"s.{ident(c)}" for c in t.primary_key)
        rest = [c for c in cols if c not in INTERNAL_COLUMNS and c not in t.primary_key]
        more = "".join(f", s.{ident(c)}" for c in rest) if whole else ""
        among = ""
        if only is not None:
            con.register("only_keys", only)
            match = " AND ".join(f"s.{ident(c)} = k.{ident(c)}" for c in t.primary_key)
            among = f" AND EXISTS (SELECT 1 FROM only_keys k WHERE {match})"
        return con.execute(
            f"SELECT {keys}, s.{ident(column)}{more} FROM {STAGING_DATASET}.{ident(t.name)} s "
            f"WHERE {live} AND s.{ident(column)} IS NOT NULL{among}"
        ).fetch_arrow_table()
    finally:
        con.close()


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
        head = StateStore(job.name).last_manifest(t.name) or {}
    except Exception:  # noqa: BLE001 - a bad contract or state is reported by the run itself
        return None
    new = t.source_version or chain.latest
    old = (head.get("migration") or {}).get("from") or (head.get("contract") or {}).get("version")
    if old is None or old == new or old not in chain.versions or not chain.reachable(old, new):
        return None
    return chain, old, new


def staged_hashes(
    t: TableConfig, path: Path, borrowed: duckdb.DuckDBPyConnection | None
) -> pa.Table | None:
    """Primary key and content hash of every live staged row (see ``staged_keyed``)."""
    return staged_keyed(t, path, borrowed, HASH_COLUMN)


def _json_default(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
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


def content_text(columns: list[str], alias: str = "c") -> str:
    """A DuckDB expression: a row's content as text that does not depend on the order of
    its columns nor on columns that are NULL in it, so a source that gains a column (NULL
    in the rows it had) or reorders its columns changes no row's hash. Each column with a
    value gives ``"name"=<bytes>:<value as text>;`` in name order: the length prefix makes
    the text unambiguous whatever the values contain. Timestamps print in the session's
    time zone (``ChangedRows`` sets UTC)."""
    parts = []
    for c in sorted(columns):
        name = json.dumps(c).replace("'", "''")
        v = f"CAST({alias}.{ident(c)} AS VARCHAR)"
        parts.append(f"coalesce('{name}=' || strlen({v}) || ':' || {v} || ';', '')")
    return " || ".join(parts) if parts else "''"


def _legacy_text(columns: list[str], alias: str = "c") -> str:
    """The row text hashed before ``content_text`` (columns in their order, NULLs included
    except in dlt's variant columns); staged rows keep such hashes until they change, so
    a row not matched by its new hash is compared by this one too."""
    variants = [c for c in columns if _is_variant(c, columns)]
    values = ", ".join(f"{ident(c)} := {alias}.{ident(c)}" for c in columns if c not in variants)
    return f"CAST(struct_pack({values}) AS VARCHAR)" + "".join(
        f" || coalesce('|{c}=' || CAST({alias}.{ident(c)} AS VARCHAR), '')" for c in variants
    )


class ChangedRows:
    """Keeps rows whose content differs from their staged version (new keys included) and
    tags each kept row with its content hash (``HASH_COLUMN``), so a source that re-reads
    rows it already sent (a whole table, or the rows at a cursor boundary) stages only
    what changed. The staged hashes are read once, before the load; close() after it.

    Content is compared as ``content_text`` gives it: a column the source gains is no
    change for rows where it is NULL, nor is a new order of columns. Works on Arrow tables
    (hash computed by DuckDB over the row's values, in UTC) and on JSON records (md5 of
    ``canonical_json``). Hashes staged by earlier versions (``_legacy_text``,
    ``legacy_row_hash``) still match an unchanged row."""

    _config: dict[str, Any] = {}  # of the DuckDB connection that hashes and compares

    def __init__(self, job: JobConfig, t: TableConfig, borrowed: Any = None) -> None:
        self.pk = list(t.primary_key)
        self.where = f"job '{job.name}' table '{t.name}'"
        self.con = duckdb.connect(config=self._config)
        self.con.execute("SET TimeZone = 'UTC'")  # timestamps print (and hash) the same everywhere
        self.t = t
        self.path = staging_path(job.name)
        self.borrowed = borrowed
        self._typed = self._read_all()
        # for records: the staged live rows' hashes (a hash covers the key, so membership
        # is enough, and a key needs no text form that matches how DuckDB prints it)
        self._hashes: set[str] | None = None
        self._retag: list[pa.Table] = []  # key, old and new hash of rows matched by an old hash
        self._record_tags: list[dict[str, Any]] = []  # the same, for records
        self._shift = source_shift(job, t)

    def _read_all(self) -> pa.Table | None:
        """Every live staged key and hash, read once before the load."""
        return staged_hashes(self.t, self.path, self.borrowed)

    def _known(self, hashed: pa.Table) -> pa.Table | None:
        """Staged keys and hashes to compare a chunk's rows with (all of them, read once)."""
        return self._typed

    def _anti_join(self, rows: pa.Table, known: pa.Table | None) -> pa.Table:
        """Positions (``__i``) and hashes of the rows not staged with the same hash."""
        if known is None:
            return rows.select(["__i", HASH_COLUMN])
        match = " AND ".join(f"k.{ident(c)} = r.{ident(c)}" for c in [*self.pk, HASH_COLUMN])
        return self._query(
            {"known": known, "rows_": rows},
            f"SELECT __i, {HASH_COLUMN} FROM rows_ r WHERE NOT EXISTS "
            f"(SELECT 1 FROM known k WHERE {match}) ORDER BY __i",
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

    def is_staged(self, h: str) -> bool:
        """Whether a live staged row has content hash ``h`` (``row_hash`` of a record)."""
        if self._hashes is None:
            staged = self._typed[HASH_COLUMN].to_pylist() if self._typed is not None else []
            self._hashes = set(staged)
        return h in self._hashes

    def record(self, row: dict[str, Any]) -> bool:
        """For a per-record filter (``extract_records``): whether the record changed; tags it
        with its hash."""
        row.pop(HASH_COLUMN, None)
        missing = [c for c in self.pk if row.get(c) is None]
        if missing:
            from deltaferry.errors import TerminalError

            raise TerminalError(
                f"{self.where}: a record has no value for primary key column(s) {', '.join(missing)}"
            )
        h = row_hash(row)
        if self.is_staged_record(row, h):
            return False
        row[HASH_COLUMN] = h
        return True

    def is_staged_record(self, row: dict[str, Any], h: str) -> bool:
        """Whether the record ``row`` (``row_hash`` ``h``) is staged unchanged, by its hash or
        by the one staged before null fields were left out (only a record with a null field
        hashes differently)."""
        if self.is_staged(h):
            return True
        if not any(v is None for v in row.values()):
            return False
        old = legacy_row_hash(row)
        if not self.is_staged(old):
            return False
        self._record_tags.append({**{c: row[c] for c in self.pk}, "_old": old, "_new": h})
        return True

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

    def _write_retag(self, tags: pa.Table) -> None:
        con = (
            self.borrowed.cursor() if self.borrowed is not None
            else duck.connect(self.path, alias="staging")
        )
        try:
            if self.borrowed is not None:
                con.execute("USE staging")
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

    def _read_all(self) -> pa.Table | None:
        return None  # looked up per chunk (``_known``)

    def _known(self, hashed: pa.Table) -> pa.Table | None:
        return staged_keyed(self.t, self.path, self.borrowed, HASH_COLUMN, hashed.select(self.pk))


def _is_variant(name: str, columns: list[str]) -> bool:
    """Whether ``name`` is dlt's variant column of another of ``columns``."""
    import re

    m = re.match(r"^(?P<base>.+)(?:__|▶)v_[a-z0-9_]+$", name)
    return m is not None and m.group("base") in columns


# staged dlt types a value of another type may be converted to (DuckDB ``TRY_CAST``)
_CONVERTIBLE = {"bigint": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN", "date": "DATE"}


class Variants:
    """A dlt map step over Arrow chunks that does what dlt's normalizer does for rows (and
    not for Arrow chunks, which it loads as they are): in a column whose values arrive as
    another type than the one staged (a source column retyped INTEGER -> TEXT), a value
    that converts exactly (DuckDB ``TRY_CAST``: ``'40'`` to ``40``; from a non-text type
    only when it converts back to the same value) is kept in the column, and any other
    goes to dlt's variant column ``<column>▶v_<type>`` (``<column>__v_<type>`` under
    snake_case naming), NULL in the column itself. The load into staging then does not
    fail, and the drift policy sees the new type (``contracts/drift.py``). Columns staged
    as other types (text, timestamps, decimals) are left to the load; a value it refuses
    fails it with one line, and dlt aborts the package."""

    def __init__(self, pipeline: dlt.Pipeline, t: TableConfig) -> None:
        self.staged: dict[str, str] = {}
        self.naming: Any = None
        if pipeline.default_schema_name:
            schema = pipeline.default_schema
            self.naming = schema.naming
            columns = (schema.tables.get(t.name) or {}).get("columns") or {}
            self.staged = {
                name: c["data_type"]
                for name, c in columns.items()
                if c.get("data_type") in _CONVERTIBLE and not c.get("variant")
            }
        self.con: duckdb.DuckDBPyConnection | None = None

    def __call__(self, chunk: pa.Table) -> pa.Table:
        from dlt.common.libs.pyarrow import get_column_type_from_py_arrow

        for field in chunk.schema:
            staged = self.staged.get(field.name)
            if staged is None or pa.types.is_null(field.type):
                continue
            arrived = get_column_type_from_py_arrow(field.type).get("data_type")
            if arrived == staged:
                continue
            if self.con is None:
                self.con = duckdb.connect(config={"threads": 1})
            text = pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
            same = "true" if text else "v = c"
            self.con.register("col_", pa.table({"v": chunk[field.name]}))
            try:
                out = self.con.execute(
                    f"SELECT CASE WHEN ok THEN c END AS base, CASE WHEN v IS NOT NULL AND NOT ok"
                    f" THEN v END AS variant FROM (SELECT v, c, c IS NOT NULL AND {same} AS ok"
                    f" FROM (SELECT v, TRY_CAST(v AS {_CONVERTIBLE[staged]}) AS c FROM col_))"
                ).fetch_arrow_table()
            finally:
                self.con.unregister("col_")
            i = chunk.schema.get_field_index(field.name)
            chunk = chunk.set_column(i, field.name, out["base"])
            if out["variant"].null_count < out.num_rows:
                name = self.naming.shorten_fragments(field.name, f"v_{arrived}")
                chunk = chunk.append_column(pa.field(name, field.type), out["variant"])
        return chunk

    def close(self) -> None:
        if self.con is not None:
            self.con.close()


def load_failure(job: JobConfig, e: BaseException) -> str:
    """One line for a load into staging that failed terminally: the database's own first
    line (``Conversion Error: ...``), without dlt's traceback."""
    import re

    from dlt.destinations.exceptions import DatabaseTerminalException

    db = find_cause(e, lambda x: isinstance(x, DatabaseTerminalException))
    text = str(db) if db is not None else str(getattr(e, "exception", None) or e)
    # dlt passes the job's traceback as text: its last "SomeError: message" line says it
    raised = re.findall(r"^[\w.]+(?:Error|Exception): (.+)$", text, re.M)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = raised[-1] if raised else (lines[0] if lines else type(e).__name__)
    return (
        f"job '{job.name}': loading into staging failed: {first[:500]}; dlt aborted the load "
        "package, nothing was staged or published; fix the value at the source (or the "
        "table's column_types) and run again"
    )


def find_cause(exc: BaseException, match: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in ``exc``'s cause/context chain that matches (dlt wraps errors)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if match(e):
            return e
        stack.extend([e.__cause__, e.__context__, getattr(e, "exception", None)])
    return None


def row_counts(pipeline: dlt.Pipeline, tables: Iterable[TableConfig]) -> dict[str, int]:
    """Rows dlt normalized per table in the pipeline's last run."""
    counts = (
        pipeline.last_trace.last_normalize_info.row_counts
        if pipeline.last_trace and pipeline.last_trace.last_normalize_info
        else {}
    )
    return {t.name: int(counts.get(t.name, 0)) for t in tables}


def extract_records(
    job: JobConfig,
    read: Callable[[JobConfig, TableConfig, Any], Iterable[Any]],
) -> ExtractResult:
    """One incremental load of a source that yields records (dicts, or pages of them).

    ``read(job, table, since)`` yields the records of ``table`` whose cursor is at or after
    ``since`` (``None`` on the first run, and always for a table without a cursor). dlt
    keeps the cursor's last value in the pipeline state, committed with the load; the range
    is closed, and records read again unchanged are not staged (``ChangedRows``). Nested
    objects and lists are staged as JSON columns. Errors: a ``DeltaferryError`` raised by
    ``read`` passes as it is; ``ConnectionError`` and ``TimeoutError`` (and client libraries'
    errors of those names) become ``TransientError`` (the step is retried); anything else
    is a ``TerminalError``."""
    from sources.names import RecordNames

    pipeline, borrowed = pipeline_for(job)
    filters: list[ChangedRows] = []
    try:
        resources = []
        for t in job.tables:
            changed = ChangedRows(job, t, borrowed)
            filters.append(changed)
            names = RecordNames(job.name, t.name, pipeline_naming(pipeline))
            resources.append(
                _records_resource(job, t, read).add_map(names).add_filter(changed.record)
            )
        info = run_load(job, pipeline, resources)
        return ExtractResult(list(info.loads_ids), row_counts(pipeline, job.tables), {})
    finally:
        for f in filters:
            f.close()
        if borrowed is not None:
            borrowed.close()


def _records_resource(job: JobConfig, t: TableConfig, read: Callable[..., Iterable[Any]]) -> Any:
    hints: dict[str, Any] = dict(
        name=t.name, primary_key=list(t.primary_key), write_disposition="merge", max_table_nesting=0
    )
    if t.cursor:
        # no dedup by key at the boundary: ChangedRows keeps the boundary records that changed
        cursor: dlt.sources.incremental[Any] = dlt.sources.incremental(t.cursor, primary_key=[])

        @dlt.resource(**hints)
        def records(since: Any = cursor) -> Iterable[Any]:
            yield from read(job, t, since.last_value)

    else:

        @dlt.resource(**hints)
        def records() -> Iterable[Any]:
            yield from read(job, t, None)

    return records()


def run_load(
    job: JobConfig,
    pipeline: dlt.Pipeline,
    data: Any,
    classify: Callable[[BaseException], BaseException | None] | None = None,
    scrub: Callable[[str], str] | None = None,
    loader_file_format: TLoaderFileFormat | None = None,
) -> Any:
    """``pipeline.run(data)`` with its failure as one deltaferry error naming the job: a
    ``DeltaferryError`` raised inside dlt as it is, then what ``classify`` (a source's own
    rules, given dlt's exception) returns, then network errors as transient (named by type
    only: their text may hold a url with credentials), the rest as terminal.

    ``loader_file_format`` picks the files dlt loads from (``"parquet"`` keeps -0.0, which
    dlt's default SQL insert statements turn into 0.0). ``scrub`` cleans secrets out of a
    message; a source that passes it also gets its errors
    without dlt's exception chained (Prefect logs the chain, and it holds the raw text)."""
    from dlt.pipeline.exceptions import PipelineStepFailed

    from deltaferry.errors import DeltaferryError, TerminalError, TransientError

    try:
        # dlt's run() declares ``loader_file_format: TLoaderFileFormat = None`` (None: its default)
        return pipeline.run(data, loader_file_format=loader_file_format)  # type: ignore[arg-type]
    except PipelineStepFailed as e:
        cause = e if scrub is None else None
        ours = find_cause(e, lambda x: isinstance(x, DeltaferryError))
        if ours is not None:
            raise ours from cause
        mapped = classify(e) if classify is not None else None
        if mapped is not None:
            raise mapped from cause
        net = find_cause(e, _is_network_error)
        if net is not None:
            raise TransientError(
                f"job '{job.name}': extract step '{e.step}' failed: {type(net).__name__} "
                "(the source did not answer, or the connection broke); retried"
            ) from cause
        if e.step == "load":
            raise TerminalError(load_failure(job, e)) from cause
        text = str(e.__cause__ or e.exception)
        raise TerminalError(
            f"job '{job.name}': extract step '{e.step}' failed: {scrub(text) if scrub else text}"
        ) from cause


def _is_network_error(e: BaseException) -> bool:
    """A lost or refused connection or a timeout, from the standard library or a client
    library (requests, urllib3, httpx ... name theirs the same way)."""
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        k.__name__ in ("ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout")
        for k in type(e).__mro__
    )


def stage_tombstones(
    job: JobConfig, t: TableConfig, pipeline: dlt.Pipeline, keys: pa.Table, origin: str
) -> list[str]:
    """Merge the given primary keys into staging as tombstones; returns the load ids."""
    # primary keys are NOT NULL in dlt's schema: say so in the Arrow schema too
    keys = keys.cast(pa.schema([f.with_nullable(False) for f in keys.schema]))
    tomb = keys.append_column(
        pa.field(DELETED_COLUMN, pa.bool_()), pa.array([True] * keys.num_rows, pa.bool_())
    )
    resource = dlt.resource(
        tomb,
        name=f"{t.name}__{origin}",
        table_name=t.name,
        write_disposition="merge",
        primary_key=list(t.primary_key),
    )
    resource.apply_hints(additional_table_hints=DEDUPLICATED)
    return list(run_load(job, pipeline, resource).loads_ids)
