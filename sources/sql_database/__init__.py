"""Incremental extraction of SQL tables into the job's DuckDB staging file, with dlt.

Each table is a dlt ``sql_table`` resource on the pyarrow backend, merged on its
primary key with an incremental cursor; dlt commits its cursor state in the same
load as the data. Deletes are kept as tombstones in staging: a soft-delete column
is simply data, and under ``reconcile`` the keys that vanished from the source are
merged back as rows flagged ``_df_deleted`` (with a new load id), so the next
delta carries them.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import sqlalchemy as sa

from deltaferry.config import JobConfig, TableConfig
from deltaferry.duck import fetch_row, ident
from deltaferry.errors import ConfigError, TerminalError, TransientError
from deltaferry.settings import from_env
from sources.change_detection import ChangedByKey, ChangedRows
from sources.integrity import KeyCheck
from sources.load import (
    DEDUPLICATED,
    ExtractResult,
    find_cause,
    load_failure,
    row_counts,
    stage_tombstones,
)
from sources.names import check_columns
from sources.pipeline import pipeline_for, staging_naming
from sources.sql_database.settings import (
    DELETED_COLUMN,
    LOAD_ID_COLUMN,
    STAGING_DATASET,
)
from sources.sql_database.types import (
    job_scope,
    key_roles,
    source_columns,
    sql_table,
    sqlite_json_text,
)
from sources.sql_database.window import (
    Normalize,
    TimeText,
    null_cursor_hold,
    null_cursor_keys,
    remember_null_cursor_keys,
    staged_bound,
    text_time_columns,
    window,
)
from sources.staging import read_staging, staged_columns, staged_table_exists, staging_path
from sources.variants import Variants


def _adapt_table(
    job: JobConfig, t: TableConfig, text_times: dict[str, str], seen: list[str] | None = None
) -> Any:
    # tombstones keep only the key; every other staged column must accept NULL. SQLite time
    # columns are parsed from their stored text (window.TimeText), JSON columns read as it
    # (sources/sql_database/types.py leaves a column with a dlt_type alone). ``seen`` gets
    # the names of the columns read (the source's current columns, for drift)
    pk = t.primary_key

    def adapt(table: sa.Table) -> sa.Table:
        if seen is not None:
            seen[:] = [c.name for c in table.columns]
        for col in table.columns:
            if col.name not in pk:
                col.nullable = True
            kind = text_times.get(col.name)
            if kind in ("timestamp", "date"):
                fixed = col.name == t.cursor or col.name in pk
                where = f"job '{job.name}' table '{t.name}'"
                col.type = TimeText(kind, job.timezone, where, col.name, fixed)
            elif kind == "json":
                col.type = sqlite_json_text(job.name, t.name, col.name, col.type)
        return table

    return adapt


# connection errors that retrying cannot cure, with what the user should fix
_CONFIG_CONNECT_ERRORS = (
    (
        r"password authentication failed|authentication failed|access denied",
        "check the user name and password in the source url",
    ),
    (r"no password supplied", "the source url needs a password"),
    (r"permission denied", "grant the source url's user access to the database and tables"),
    (r"no pg_hba\.conf entry", "the server refuses this client: check pg_hba.conf and sslmode"),
    (r"SSL (is )?required|server does not support SSL", "check sslmode in the source url"),
    (r'database ".*" does not exist|unknown database', "check the database name in the source url"),
    (r'role ".*" does not exist', "check the user name in the source url"),
)


_URL_FORM = (
    "the form is dialect+driver://user:password@host:port/database, with reserved characters "
    "in the user or password percent-encoded (@ as %40, : as %3A, / as %2F)"
)


def engine_for(job: JobConfig) -> sa.Engine:
    """A SQLAlchemy engine for the job's source. ``postgresql://`` uses psycopg (3), which
    deltaferry installs, unless psycopg2 is there; connecting gives up after
    ``DELTAFERRY_SOURCE_CONNECT_TIMEOUT`` seconds (default 10). Nothing of the url is ever
    echoed in an error: it may hold a password."""
    try:
        url = sa.make_url(job.source_url())
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(
            f"job '{job.name}': source url is not a valid SQLAlchemy URL; {_URL_FORM}"
        ) from None
    if url.host and "@" in url.host:  # an unencoded @ in the password moved it into the host
        raise ConfigError(f"job '{job.name}': source url has an '@' in its host; {_URL_FORM}")
    connect_args: dict[str, Any] = {}
    if url.drivername == "postgresql" and not _has_module("psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    timeout = from_env().source_connect_timeout
    if url.drivername in ("postgresql+psycopg", "postgresql+psycopg2", "postgresql"):
        # libpq: give up connecting after the timeout; a peer that vanished (NAT state
        # dropped, host gone) is found by TCP keepalives within about a minute
        connect_args.update(connect_timeout=timeout, keepalives=1, keepalives_idle=30)
        connect_args.update(keepalives_interval=10, keepalives_count=3)
    elif url.get_backend_name() == "mysql":
        connect_args["connect_timeout"] = timeout
    try:
        # no pooling: a source connection is open only while it is read (see StallWatchdog)
        return sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
        raise ConfigError(
            f"job '{job.name}': source url is not usable: {type(e).__name__} for dialect "
            f"'{url.drivername}' (is the database driver installed?)"
        ) from None


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def connect_error(job: JobConfig, e: sa.exc.DBAPIError) -> Exception:
    """A one-line error for a failed source connection: ConfigError when the user must fix
    the url or the server's access rules, TransientError when the server may come back."""
    text = _scrub(job, " ".join(str(getattr(e, "orig", None) or e).split()))
    for pattern, fix in _CONFIG_CONNECT_ERRORS:
        if re.search(pattern, text, re.IGNORECASE):
            return ConfigError(
                f"job '{job.name}': source database refused the connection: {text}; {fix}"
            )
    if re.search(
        r"connection failed|refused|timeout expired|could not translate|failed to resolve",
        text,
        re.I,
    ):
        return TransientError(
            f"job '{job.name}': source database unreachable: {text}; check the host and port in "
            "the source url and that the server is up and accepts TCP connections"
        )
    return TransientError(f"job '{job.name}': source database connection lost: {text}")


class StallWatchdog:
    """Cuts the source connections when a read makes no progress for ``timeout`` seconds.

    TCP keepalives find a peer that vanished, not a link that still answers at the TCP
    level but stopped forwarding (a stuck middlebox, a blackholing proxy); libpq has no
    client-side read timeout. While a source connection is open, every chunk read counts
    as progress; after ``timeout`` seconds without any, the connections' sockets are shut
    down, the blocked read fails with an OperationalError and the step is retried as a
    transient error. The engine must not pool connections (``engine_for`` does not), so an
    open connection is one being read."""

    def __init__(self, engine: sa.Engine, timeout: float | None = None) -> None:
        # seconds a source read may go without any data before its connection is cut
        self.timeout = timeout or from_env().source_stall_timeout
        self.fired = 0
        self._fds: dict[int, int] = {}
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._engine = engine
        sa.event.listen(engine, "connect", self._opened)
        sa.event.listen(engine, "close", self._closed)
        self._thread = threading.Thread(target=self._watch, name="source-stall-watchdog")
        self._thread.daemon = True
        self._thread.start()

    def progress(self, item: Any = None) -> Any:
        """Note progress; usable as a dlt map step (returns the item unchanged)."""
        self._last = time.monotonic()
        return item

    def _opened(self, dbapi_conn: Any, _record: Any) -> None:
        fileno = getattr(dbapi_conn, "fileno", None)
        if callable(fileno):
            with self._lock:
                self._fds[id(dbapi_conn)] = fileno()
        self.progress()

    def _closed(self, dbapi_conn: Any, _record: Any) -> None:
        with self._lock:
            self._fds.pop(id(dbapi_conn), None)

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            with self._lock:
                fds = list(self._fds.values())
            if not fds:
                self._last = time.monotonic()
                continue
            if time.monotonic() - self._last < self.timeout:
                continue
            self.fired += 1
            with self._lock:  # a connection closing now cannot free its fd for reuse meanwhile
                for fd in self._fds.values():
                    try:
                        with socket.socket(fileno=os.dup(fd)) as sock:
                            sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self._last = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        sa.event.remove(self._engine, "connect", self._opened)
        sa.event.remove(self._engine, "close", self._closed)


def _scrub(job: JobConfig, text: str) -> str:
    """The text without the source url's password (drivers may echo parts of the url)."""
    try:
        password = sa.make_url(job.source_url()).password
    except Exception:  # noqa: BLE001 - an unparsable url has nothing to scrub here
        return text
    return text.replace(str(password), "***") if password else text


def preflight(job: JobConfig, engine: sa.Engine, convention: str | None = None) -> None:
    """Check that the source answers, every configured table and column exists, and every
    column name is one staging keeps exactly under the job's naming ``convention``
    (default: the one its staging recorded, see ``sources.names``)."""
    if convention is None:
        convention = staging_naming(job)
    try:
        insp = sa.inspect(engine)
        existing = set(insp.get_table_names())
    except sa.exc.DBAPIError as e:
        raise connect_error(job, e) from None
    for t in job.tables:
        if t.name not in existing:
            raise ConfigError(
                f"job '{job.name}' table '{t.name}': not found in the source database"
            )
        names = [c["name"] for c in source_columns(job, t, insp)]  # types checked too
        # names are staged exactly (or, in a job staged before that, as dlt's snake_case
        # keeps them); any other name is refused here, before dlt renames it
        check_columns(job.name, t.name, names, convention)
        cols = set(names)
        missing = sorted(set(key_roles(t)) - cols)
        if missing:
            raise ConfigError(
                f"job '{job.name}' table '{t.name}': column(s) {', '.join(missing)} not in the source table"
            )


def preflight_source(job: JobConfig) -> None:
    """Check that the source answers and has every table and column."""
    engine = engine_for(job)
    try:
        preflight(job, engine)
    finally:
        engine.dispose()


def extract(job: JobConfig) -> ExtractResult:
    """Run one incremental dlt load of every table of the job, then reconcile deletes."""
    engine = engine_for(job)
    watchdog = StallWatchdog(engine)
    try:
        try:
            with job_scope():  # type warnings quiet, a refused value as its own error
                return _extract(job, engine, watchdog)
        except sa.exc.DBAPIError as e:  # reflection and key reads outside dlt's own steps
            raise connect_error(job, e) from e
    except TransientError as e:
        if watchdog.fired:
            raise TransientError(
                f"job '{job.name}': source read stalled: no data for {watchdog.timeout:g} s "
                f"(DELTAFERRY_SOURCE_STALL_TIMEOUT), connection cut to retry ({e})"
            ) from e
        raise
    finally:
        watchdog.close()
        engine.dispose()


def _extract(job: JobConfig, engine: sa.Engine, watchdog: StallWatchdog) -> ExtractResult:
    reads: list[_TableRead] = []
    borrowed = None
    try:
        preflight(job, engine)
        pipeline, borrowed = pipeline_for(job)
        # keys whose cursor was NULL last time: read again by key after the window, since a
        # cursor value given later may be older than the window's bound
        revisit = {t.name: null_cursor_keys(job, t, borrowed) for t in job.tables if t.cursor}
        for t in job.tables:
            if t.cursor is None:  # full-compare mode: the whole table, kept where it changed
                reads.append(
                    _TableRead(
                        job, t, engine, watchdog, ChangedRows(job, t, borrowed), pipeline=pipeline
                    )
                )
            else:
                bound = staged_bound(job, t, borrowed)
                reads.append(
                    _TableRead(
                        job,
                        t,
                        engine,
                        watchdog,
                        ChangedByKey(job, t, borrowed),
                        lambda text_times, t=t, b=bound: window(job, t, b, text_times),
                        pipeline=pipeline,
                    )
                )
        load_ids: list[str] = []
        rows: dict[str, int] = {}
        try:
            info = _run(pipeline, [r.resource for r in reads], job, reads)
        finally:
            for r in reads:
                r.close()
        load_ids.extend(info.loads_ids)
        rows.update(row_counts(pipeline, job.tables))
        tombstones: dict[str, int] = {}
        held = {r.t.name: list(r.keys.held) for r in reads if r.keys.held}
        for t in job.tables:
            keys = revisit.get(t.name)
            if keys:
                ids, more = _reextract(job, t, engine, pipeline, keys, borrowed, watchdog)
                load_ids.extend(ids)
                held.setdefault(t.name, []).extend(more)
        held = {name: _unique_held(rows) for name, rows in held.items() if rows}
        columns = {r.t.name: list(r.columns) for r in reads if r.columns}
        for t in job.tables:
            if t.cursor and t.null_cursor == "quarantine":
                remember_null_cursor_keys(job, t, held.get(t.name, []))
        for t in job.tables:
            if t.deletes == "reconcile":
                n, ids, more = _reconcile(job, t, engine, pipeline, borrowed, watchdog)
                tombstones[t.name] = n
                load_ids.extend(ids)
                if more:
                    held.setdefault(t.name, []).extend(more)
        return ExtractResult(
            load_ids, rows, tombstones, held=held or None, columns=columns or None
        )
    finally:
        if borrowed is not None:
            borrowed.close()


def _unique_held(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Held records, one per key and check (a row read by the window and again by key)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        seen.setdefault((r["pk"], r["check"]), r)
    return list(seen.values())


class _TableRead:
    """One table's dlt resource on the pyarrow backend and its map steps, in order: stall
    watchdog, value normalisation (``window.Normalize``), rows held back (NULL key; NULL
    cursor under ``null_cursor = "quarantine"``), key counting (``KeyCheck``), and the
    content filter (``changed``) that keeps only rows that differ from their staged version
    and tags them with their hash. ``query`` makes dlt's query adapter from the table's
    SQLite text columns (the window of a cursor read, or a key list); ``name`` renames the
    resource (it still loads into the table)."""

    def __init__(
        self,
        job: JobConfig,
        t: TableConfig,
        engine: sa.Engine,
        watchdog: StallWatchdog,
        changed: ChangedRows,
        query: Any = None,
        name: str | None = None,
        pipeline: dlt.Pipeline | None = None,
    ) -> None:
        self.t = t
        self.keys = KeyCheck(job, t)
        self.columns: list[str] = []
        self.variants = Variants(pipeline, t) if pipeline is not None else None
        self.changed = changed
        text_times = text_time_columns(engine, t)
        self.normalize = Normalize(job, t, text_times)
        resource = sql_table(
            job,
            credentials=engine,
            table=t.name,
            backend="pyarrow",
            chunk_size=job.chunk_size,
            write_disposition="merge",
            primary_key=list(t.primary_key),
            table_adapter_callback=_adapt_table(job, t, text_times, self.columns),
            query_adapter_callback=query(text_times) if query is not None else None,
        )
        if name is not None:
            resource = resource.with_name(name)
            resource.apply_hints(table_name=t.name)
        resource.apply_hints(additional_table_hints=DEDUPLICATED)  # keys checked: KeyCheck
        resource = resource.add_map(watchdog.progress).add_map(self.normalize)
        if self.variants is not None:  # a value of a new type: to dlt's variant column
            resource = resource.add_map(self.variants)
        resource = resource.add_map(self.keys.hold_null_keys)
        if t.cursor and t.null_cursor == "quarantine":
            resource = resource.add_map(null_cursor_hold(t, self.keys.hold_records))
        self.resource = resource.add_map(self.keys.note).add_map(changed.arrow)

    def close(self) -> None:
        self.changed.close()
        self.keys.close()
        if self.variants is not None:
            self.variants.close()


_TRANSIENT_SOURCE_ERRORS = (
    sa.exc.OperationalError,
    sa.exc.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def _transient_cause(exc: BaseException) -> BaseException | None:
    """The first transient error in an exception's cause/context chain (dlt wraps errors)."""
    return find_cause(exc, lambda e: isinstance(e, _TRANSIENT_SOURCE_ERRORS))


def _run(
    pipeline: dlt.Pipeline, data: Any, job: JobConfig, reads: Sequence[_TableRead] = ()
) -> Any:
    """Extract ``data``, check the reads' keys (a key seen twice stops the run before the
    load: the extracted package is dropped), then normalize and load. Errors become one
    deltaferry error naming the job."""
    from dlt.pipeline.exceptions import PipelineStepFailed

    from deltaferry.errors import DeltaferryError

    try:
        pipeline.extract(data)
        for r in reads:
            message = r.keys.duplicates()
            if message:
                pipeline.abort_packages()
                raise ConfigError(message)
        pipeline.normalize()
        return pipeline.load()
    except PipelineStepFailed as e:
        ours = find_cause(e, lambda x: isinstance(x, DeltaferryError))
        if ours is not None:
            if e.step == "extract":
                pipeline.abort_packages()
            raise ours from None
        transient = _transient_cause(e)
        if isinstance(transient, sa.exc.DBAPIError):
            classified = connect_error(job, transient)
            if isinstance(classified, ConfigError):  # credentials changed under a running job
                raise TerminalError(str(classified)) from e
        if transient is not None:
            raise TransientError(
                f"job '{job.name}': extract step '{e.step}' failed: {_scrub(job, str(transient))}"
            ) from e
        if e.step == "load":  # dlt aborted the package (LOAD__AUTO_ABORT_ON_TERMINAL_ERROR)
            raise TerminalError(load_failure(job, e)) from None
        mixed = _mixed_types(job, e)
        if mixed is not None:
            pipeline.abort_packages()
            raise TerminalError(mixed) from None
        cause = e.__cause__ or e.exception
        raise TerminalError(f"job '{job.name}': extract step '{e.step}' failed: {cause}") from e


def _mixed_types(job: JobConfig, e: BaseException) -> str | None:
    """One line for a column whose values arrive in more than one type (SQLite keeps any value
    in any column), which Arrow cannot read as one column; None for any other failure."""
    import re

    text = str(e)
    pipe = re.search(r"processing pipe [`']([^`']+)[`']", text)
    field = re.search(r"Conversion to arrow failed for field [`']([^`']+)[`']", text)
    if pipe is None or field is None:
        return None
    why = re.search(r"\(([^()]*got a[^()]*)\)", text)
    return (
        f"job '{job.name}' table '{pipe.group(1)}' column '{field.group(1)}': its values arrive "
        f"in more than one type ({why.group(1) if why else 'mixed types'}), which cannot be read "
        "as one column; nothing was staged. Make the column's values one type at the source "
        "(and its declared type match them), or leave it out with exclude_columns; the next "
        "run reads the table again"
    )


def _reconcile(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    pipeline: dlt.Pipeline,
    borrowed: duckdb.DuckDBPyConnection | None,
    watchdog: StallWatchdog,
) -> tuple[int, list[str], list[dict[str, Any]]]:
    """Compare the source's key set with staging (cost grows with the key count).

    Staged live keys gone from the source become tombstones. Source keys whose staged row
    is a tombstone (deleted, then re-created with a cursor value already passed), and
    source keys never staged at all (a transaction that committed late, with a cursor value
    older than the last one synced), are extracted again by key, so neither is lost.
    Source keys with a NULL part are left out (their rows are held back by the read).
    Returns the tombstone count, the load ids and the rows held back by the re-extract.
    """
    progress = watchdog.progress
    pk = list(t.primary_key)
    try:
        table = sa.Table(t.name, sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=KEYS_PER_READ).execute(
                sa.select(*[table.c[c] for c in pk])
            )
            source_keys = _keys_arrow(result, pk, progress)
        if source_keys.num_rows:
            source_keys = source_keys.drop_null()
    except sa.exc.DBAPIError as e:
        raise connect_error(job, e) from e
    except _TRANSIENT_SOURCE_ERRORS as e:
        raise TransientError(
            f"job '{job.name}' table '{t.name}': reading source keys failed: {_scrub(job, str(e))}"
        ) from e
    path = staging_path(job.name)
    if not path.exists():
        return 0, [], []
    con = read_staging(path, borrowed)
    try:
        if not staged_table_exists(con, t.name):
            return 0, [], []
        has_flag = DELETED_COLUMN in staged_columns(con, t.name)
        live = f"coalesce({DELETED_COLUMN}, false) = false" if has_flag else "true"
        keys = ", ".join(ident(c) for c in pk)
        match = " AND ".join(f"s.{ident(c)} = k.{ident(c)}" for c in pk)
        con.register("source_keys", source_keys)
        staged_live = fetch_row(
            con, f"SELECT count(*) FROM {STAGING_DATASET}.{ident(t.name)} WHERE {live}"
        )[0]
        if source_keys.num_rows == 0:
            missing = con.sql(
                f"SELECT {keys} FROM {STAGING_DATASET}.{ident(t.name)} WHERE {live}"
            ).to_arrow_table()
        else:
            missing = con.sql(
                f"SELECT {keys} FROM {STAGING_DATASET}.{ident(t.name)} s WHERE {live}"
                f" AND NOT EXISTS (SELECT 1 FROM source_keys k WHERE {match})"
            ).to_arrow_table()
        unseen = (
            con.sql(
                f"SELECT {', '.join('k.' + ident(c) for c in pk)} FROM source_keys k WHERE NOT"
                f" EXISTS (SELECT 1 FROM {STAGING_DATASET}.{ident(t.name)} s WHERE {match})"
            )
            .to_arrow_table()
            .to_pylist()
            if source_keys.num_rows
            else []
        )
        recreated = (
            con.sql(
                f"SELECT {', '.join('s.' + ident(c) for c in pk)}"
                f" FROM {STAGING_DATASET}.{ident(t.name)} s"
                f" JOIN source_keys k ON {match} WHERE coalesce(s.{DELETED_COLUMN}, false)"
            )
            .to_arrow_table()
            .to_pylist()
            if has_flag and source_keys.num_rows
            else []
        )
    finally:
        con.close()
    load_ids: list[str] = []
    if missing.num_rows:
        ratio = missing.num_rows / max(staged_live, 1)
        if staged_live >= 20 and ratio > job.max_reconcile_delete_ratio:
            raise TerminalError(
                f"job '{job.name}' table '{t.name}': reconcile would delete {missing.num_rows} of "
                f"{staged_live} rows ({ratio:.0%}), over max_reconcile_delete_ratio "
                f"{job.max_reconcile_delete_ratio:.0%}; refusing (is the source table truncated?)"
            )
        load_ids.extend(stage_tombstones(job, t, pipeline, missing, "tombstones"))
    held: list[dict[str, Any]] = []
    if recreated or unseen:
        ids, held = _reextract(job, t, engine, pipeline, recreated + unseen, borrowed, watchdog)
        load_ids.extend(ids)
    return missing.num_rows, load_ids, held


def _reextract(
    job: JobConfig,
    t: TableConfig,
    engine: sa.Engine,
    pipeline: dlt.Pipeline,
    keys: list[dict],
    borrowed: duckdb.DuckDBPyConnection | None,
    watchdog: StallWatchdog,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Extract the given keys again, ignoring the cursor (rows re-created at the source or
    committed late), in groups of ``REEXTRACT_KEYS`` keys per query. Returns the load ids
    and the rows held back."""
    pk = list(t.primary_key)
    load_ids: list[str] = []
    held: list[dict[str, Any]] = []
    for start in range(0, len(keys), REEXTRACT_KEYS):
        group = keys[start : start + REEXTRACT_KEYS]

        def only_keys(query: Any, table: sa.Table, *_: Any, group: list[dict] = group) -> Any:
            cols = [table.c[c] for c in pk]
            if len(cols) == 1:
                return query.where(cols[0].in_([k[pk[0]] for k in group]))
            return query.where(sa.tuple_(*cols).in_([tuple(k[c] for c in pk) for k in group]))

        read = _TableRead(
            job,
            t,
            engine,
            watchdog,
            ChangedByKey(job, t, borrowed),
            lambda _text_times, f=only_keys: f,
            name=f"{t.name}__recreated",
            pipeline=pipeline,
        )
        try:
            load_ids.extend(_run(pipeline, read.resource, job, [read]).loads_ids)
        finally:
            read.close()
        held.extend(read.keys.held)
    return load_ids, held


# keys per query when rows are extracted again by key
REEXTRACT_KEYS = 5_000


# source keys fetched per round trip when reconciling (each counts as progress)
KEYS_PER_READ = 100_000


def _keys_arrow(result: Any, pk: list[str], progress: Any = None) -> pa.Table:
    """The key columns as Arrow; uuid values as text, as dlt stages them."""
    parts: list[pa.Table] = []
    for rows in result.partitions():
        if progress is not None:
            progress()
        cols = {}
        for i, c in enumerate(pk):
            values = [r[i] for r in rows]
            if any(isinstance(v, uuid.UUID) for v in values):
                values = [None if v is None else str(v) for v in values]
            cols[c] = values
        parts.append(pa.table(cols))
    if not parts:
        return pa.table({c: pa.array([], pa.int64()) for c in pk})
    return pa.concat_tables(parts, promote_options="permissive")


__all__ = [
    "ExtractResult",
    "extract",
    "pipeline_for",
    "preflight_source",
    "staging_path",
    "LOAD_ID_COLUMN",
]
