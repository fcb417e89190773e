"""File drops: CSV, JSON Lines and Parquet files landing in a folder or an S3 prefix.

Each table is one dlt resource over the files its ``pattern`` matches, merged on its
primary key. Files are picked up by modification time and name (see ``Watermark``); the
watermark lives in the resource's dlt state, committed by dlt in the same load as the
rows. Each file is read whole with pyarrow, its columns named as dlt names them and cast
to the contract's types, and passed through ``ChangedRows``, so a file dropped again with
the same rows stages nothing. A file that cannot be read (bad encoding, not CSV/JSON/
Parquet, no primary key column) is set aside with a one-line reason; the rest of the run goes
on. A row with NULL in a key column is held back in the quarantine (``sources.integrity``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa

from deltaferry import duck
from deltaferry.config import JobConfig, TableConfig, job_home
from deltaferry.duck import ident
from sources.change_detection import ChangedRows
from sources.columns import FILE_TIME_COLUMN, STAGING_DATASET
from sources.files.listing import DropFile, Folder, S3Prefix, SetAside, drops_for
from sources.files.reading import (
    check_staged_types,
    contract_types,
    file_format,
    keys_not_null,
    read_table,
)
from sources.files.settings import (
    default_pattern,
    lookback_seconds,
)
from sources.integrity import KeyCheck
from sources.load import DEDUPLICATED, ExtractResult, row_counts, run_load
from sources.pipeline import pipeline_for, pipeline_naming
from sources.staging import (
    batch_reader,
    staged_keyed,
    staged_keyed_batches,
    staged_types,
    staging_path,
    write_staging,
)
from sources.wall_time import ZoneShifts

logger = logging.getLogger(__name__)

# --- which files are new -----------------------------------------------------------------


class Watermark:
    """Which listed files to read, kept in the resource's dlt state.

    State: the high-water modification time and, for every file read (or set aside) whose
    time is within ``lookback`` of it, the (time, tag) it had. A listed file is read when
    its time is at or after ``high_water - lookback`` and it was not read with that same
    time and tag. So a file that lands after a newer one with the same or an older time
    (same-second writes, a rename keeping the writer's time, a slow multipart upload) is
    still read if it is at most ``lookback`` behind; a re-dropped or touched file is read
    again; and the state holds only the files of the last ``lookback`` seconds. The mark
    never moves past the listing's own clock, so one file from the future does not hide
    the files after it.
    """

    def __init__(self, state: Any, lookback_s: float) -> None:
        self.state = state
        self.lookback_ns = int(lookback_s * 1e9)
        self.high: int | None = state.get("high_water_ns")
        self.seen: dict[str, list[Any]] = dict(state.get("seen") or {})

    def new(self, listed: list[DropFile]) -> list[DropFile]:
        floor = None if self.high is None else self.high - self.lookback_ns
        return [
            f
            for f in listed
            if (floor is None or f.mtime_ns >= floor)
            and self.seen.get(f.name) != [f.mtime_ns, f.tag]
        ]

    def advance(self, read: list[DropFile], listed_at_ns: int) -> None:
        """Record the files read (or set aside) in the state dlt commits with the load."""
        for f in read:
            self.seen[f.name] = [f.mtime_ns, f.tag]
        newest = max((f.mtime_ns for f in read), default=None)
        if newest is not None:
            mark = min(newest, listed_at_ns)
            self.high = mark if self.high is None else max(self.high, mark)
        if self.high is not None:
            floor = self.high - self.lookback_ns
            self.seen = {n: v for n, v in self.seen.items() if v[0] >= floor}
            self.state["high_water_ns"] = self.high
        self.state["seen"] = self.seen


# --- one table's resource ----------------------------------------------------------------

# how many files (``LatestWins``) and chunks (``ChangedRows``) of a run are compared with
# the staged rows of their keys alone, looked up in staging, before the run reads every
# staged row once: a run of a few small files costs what they hold, not the table
LOOKUPS = 16


def _key_text(column: str, schema: pa.Schema | dict[str, str], alias: str = "") -> str:
    """A key column's text, as ``LatestWins`` compares keys: a float as the DOUBLE staging
    keeps it (a FLOAT column's 0.1 never matched its staged key, so a late older file
    won: a fresh-user trial), its -0.0 (equal to 0.0, and one key to dlt's merge) 0.0
    (+ 0 makes it so). ``schema``: an Arrow schema, or
    ``{column: DuckDB type}`` of a staged table."""
    name = f"{alias}.{ident(column)}" if alias else ident(column)
    if isinstance(schema, dict):
        floating = schema[column].upper() in ("FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8")
    else:
        floating = pa.types.is_floating(schema.field(column).type)
    if floating:  # as DOUBLE, which staging keeps (a FLOAT's 0.1 is 0.10000000149011612 there)
        name = f"(CAST({name} AS DOUBLE) + 0)"
    return f"CAST({name} AS VARCHAR)"


class LatestWins:
    """A key's row from the newest file wins, whatever order the files are read in: files
    are read newest first within a run (within a file its last row wins), and a row is
    dropped when a file at least as new already gave its key, in this run or, through the
    file time staged with every row (``FILE_TIME_COLUMN``), in an earlier one (strictly
    newer there: of two files with the same time, the one a later run found landed later,
    since S3 keeps times to the second; it kept the earlier file's row, exit 0, a fresh-user
    trial). So a file that lands late with an older modification time does not overwrite
    newer rows (dlt's merge would otherwise keep whichever came last)."""

    # This run's keys and file times are kept in a temporary DuckDB file of the job's home
    # under the job's DuckDB memory limit (``close`` removes it). The staged rows' are
    # looked up by the keys of each of the run's first ``LOOKUPS`` files alone (one scan
    # of staging's key and file-time columns each), then, for a run that reads more, read
    # whole into that file once. Before, every run read every staged key into Arrow and an
    # in-memory database: memory and time grew with the table (2M staged rows: +100 MiB,
    # with no new file too; 50M about 2.5 GB).

    def __init__(
        self,
        job: JobConfig,
        t: TableConfig,
        borrowed: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        self.job, self.t, self.borrowed = job, t, borrowed
        self.pk = list(t.primary_key)
        self._spill = job_home(job.name) / "tmp"
        self._file: Path | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lookups = LOOKUPS
        self._staged_read = False  # every staged row's key and time is in ``seen``

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The keys' database, made on first use."""
        if self._con is not None:
            return self._con
        if self._file is not None:  # released (``release``): opened again
            self._con = duck.scratch(self._file, self._spill, duck.memory_limit())
            return self._con
        self._spill.mkdir(parents=True, exist_ok=True)
        self._file = self._spill / f"latest-{uuid.uuid4().hex}.duckdb"
        self._con = duck.scratch(self._file, self._spill, duck.memory_limit())
        keys = ", ".join(f"{ident(c)} VARCHAR" for c in self.pk)
        # earlier: staged by an earlier run (a tie goes to this run's file)
        self._con.execute(f"CREATE TABLE seen ({keys}, ns BIGINT, earlier BOOLEAN)")
        return self._con

    def _staged_of(self, table: pa.Table) -> pa.Table | None:
        """The staged keys and file times of ``table``'s keys (looked up), or None once
        every staged row's are in ``seen`` (read whole on the first call without a lookup
        left). Rows staged before file times were kept have none, and so never hold a newer
        file's row back."""
        path = staging_path(self.job.name)
        if not self._staged_read and self._lookups > 0:
            self._lookups -= 1
            return staged_keyed(self.t, path, self.borrowed, FILE_TIME_COLUMN, table.select(self.pk))
        if not self._staged_read:
            self._staged_read = True
            reader = batch_reader(staged_keyed_batches(self.t, path, self.borrowed, FILE_TIME_COLUMN))
            if reader is not None:  # one INSERT: each keeps a block beyond the limit's reach
                text = ", ".join(_key_text(c, reader.schema) for c in self.pk)
                self.con.register("staged_", reader)
                try:
                    self.con.execute(
                        f"INSERT INTO seen SELECT {text}, {ident(FILE_TIME_COLUMN)}, true"
                        " FROM staged_"
                    )
                finally:
                    self.con.unregister("staged_")
        return None

    def keep(self, table: pa.Table, file_ns: int) -> pa.Table:
        text = ", ".join(f"{_key_text(c, table.schema)} AS {ident(c)}" for c in self.pk)
        match = " AND ".join(f"s.{ident(c)} = l.{ident(c)}" for c in self.pk)
        keys = ", ".join(ident(c) for c in self.pk)
        positions = pa.array(range(table.num_rows), pa.int64())
        staged = self._staged_of(table)
        newer_staged = ""
        if staged is not None and staged.num_rows:
            # strictly newer there (a tie goes to this run's file)
            on = " AND ".join(f"{_key_text(c, staged.schema, 's')} = l.{ident(c)}" for c in self.pk)
            newer_staged = (
                f" AND NOT EXISTS (SELECT 1 FROM staged_ s WHERE {on}"
                f" AND s.{ident(FILE_TIME_COLUMN)} > ?)"
            )
            self.con.register("staged_", staged)
        self.con.register("f", table.select(self.pk).append_column("__i", positions))
        try:
            last = (
                f"SELECT __i, {text} FROM f "
                f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY __i DESC) = 1"
            )
            params = [file_ns, file_ns] + ([file_ns] if newer_staged else [])
            kept = self.con.execute(
                f"SELECT __i FROM ({last}) l WHERE NOT EXISTS (SELECT 1 FROM seen s WHERE"
                f" {match} AND (s.ns > ? OR (s.ns = ? AND NOT s.earlier))){newer_staged}"
                " ORDER BY __i",
                params,
            ).fetch_arrow_table()
            self.con.execute(
                f"INSERT INTO seen SELECT DISTINCT {text}, ?, false FROM f", [file_ns]
            )
        finally:
            self.con.unregister("f")
            if newer_staged:
                self.con.unregister("staged_")
        return table if kept.num_rows == table.num_rows else table.take(kept["__i"])

    def release(self) -> None:
        """Close the keys' database, keeping its file for ``raise_staged_times`` (its
        memory is not held through the load)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def raise_staged_times(self) -> str | None:
        """After the run's load: raise the staged file time of each key this run read to its
        newest file's where staging holds an older one. A row this rule kept that the
        change filter dropped (unchanged: a file touched, or dropped again) was not staged,
        so it kept the earlier file's time, and a file landing later, older than the touch
        but newer than that file, replaced it (a fresh-user trial). One UPDATE joining this
        run's newest time per key (streamed from the keys' file) with staging. On a DuckDB
        error (staging locked by another process, out of memory) the older times stay, as
        before this rule: returns one line naming job and table saying so
        (``ExtractResult.warnings``: shown and written to the operations log), else None."""
        if self._file is None or not self._file.exists():
            return None
        path = staging_path(self.job.name)
        if not path.exists():
            return None
        con = None
        try:
            mine = self.con
            con = write_staging(path, self.borrowed)
            types = duck.column_types(con, self.t.name, STAGING_DATASET)
            if FILE_TIME_COLUMN not in types or any(c not in types for c in self.pk):
                return None
            # key texts printed alike on both sides (a timestamp's text follows TimeZone)
            zone = mine.execute("SELECT current_setting('TimeZone')").fetchone()
            con.execute(f"SET TimeZone = {duck.literal(str(zone[0] if zone else 'UTC'))}")
            keys = ", ".join(ident(c) for c in self.pk)
            newest = mine.execute(
                f"SELECT {keys}, max(ns) AS ns FROM seen WHERE NOT earlier GROUP BY ALL"
            ).fetch_record_batch(100_000)
            match = " AND ".join(
                f"{_key_text(c, types, 's')} = x.{ident(c)}" for c in self.pk
            )
            at = ident(FILE_TIME_COLUMN)
            con.register("newest_", newest)
            con.execute(
                f"UPDATE {STAGING_DATASET}.{ident(self.t.name)} s SET {at} = x.ns FROM newest_ x "
                f"WHERE {match} AND (s.{at} IS NULL OR s.{at} < x.ns)"
            )
            return None
        except duckdb.Error as e:
            line = (
                f"job '{self.job.name}' table '{self.t.name}': the staged file times of this "
                f"run's unchanged rows were not raised ({str(e).splitlines()[0]}): a file "
                "landing later that is older than this run's newest file of such a row but "
                "newer than the file it was staged from will replace it"
            )
            logger.warning("%s", line)
            return line
        finally:
            if con is not None:
                con.close()

    def close(self) -> None:
        self.release()
        if self._file is not None:
            duck.remove(self._file)
            self._file = None


def _resource(
    job: JobConfig,
    t: TableConfig,
    drops: Folder | S3Prefix,
    changed: ChangedRows,
    skipped: dict[str, list[str]],
    borrowed: duckdb.DuckDBPyConnection | None,
    keys: KeyCheck,
    naming_convention: str,
    shifts: ZoneShifts,
    latest: LatestWins,
) -> Any:
    where = f"job '{job.name}' table '{t.name}'"
    types = contract_types(t, where)
    convention = str(naming_convention)
    pattern = t.options.get("pattern") or default_pattern(t.name)
    staged = staged_types(t, staging_path(job.name), borrowed)

    @dlt.resource(
        name=t.name, table_name=t.name, write_disposition="merge", primary_key=list(t.primary_key)
    )
    def files() -> Iterator[pa.Table]:
        mark = Watermark(dlt.current.resource_state(), lookback_seconds(job))
        listed_at = time.time_ns()
        todo = mark.new(drops.list(pattern))
        done: list[DropFile] = []
        reasons: list[tuple[DropFile, str]] = []
        try:
            for f in sorted(todo, key=lambda f: (f.mtime_ns, f.name), reverse=True):
                try:
                    raw = drops.read(f)
                    if raw is None:  # gone since listed
                        continue
                    fmt = file_format(f.name, t.options.get("format"))
                    read = ZoneShifts()  # counted for the run once the file is taken
                    table = read_table(
                        raw, fmt, t, types, job.timezone, convention, read, staged=staged, job=job.name
                    )
                    if table is not None:
                        table = check_staged_types(table, staged, types, t, job.name)
                    shifts.merge(read)
                except SetAside as e:
                    done.append(f)
                    reason = f"file {f.name} set aside: {e.problem}; {e.fix}, then {drops.reread}"
                    reasons.append((f, f"{where}: {reason}"))
                    continue
                done.append(f)
                if table is not None:  # NULL keys held in the quarantine; the rest NOT NULL
                    table = keys_not_null(keys.hold_null_keys(table), t)
                if table is None or table.num_rows == 0:
                    continue
                table = latest.keep(table, f.mtime_ns)
                for start in range(0, table.num_rows, job.chunk_size):
                    rows = changed.arrow(table.slice(start, job.chunk_size))
                    if rows.num_rows:  # the file time is not part of a row's content hash
                        times = pa.array([f.mtime_ns] * rows.num_rows, pa.int64())
                        yield rows.append_column(FILE_TIME_COLUMN, times)
        finally:
            latest.release()  # its file stays for ``raise_staged_times``, after the load
        mark.advance(done, listed_at)
        if reasons:
            reasons.sort(key=lambda r: (r[0].mtime_ns, r[0].name))
            skipped[t.name] = [r for _, r in reasons]

    files.apply_hints(additional_table_hints=DEDUPLICATED)
    return files


# --- the source kind's interface ---------------------------------------------------------


def preflight_source(job: JobConfig) -> None:
    """Check that the folder (or bucket and prefix) exists and can be listed."""
    drops_for(job).check()


def extract(job: JobConfig) -> ExtractResult:
    """One incremental dlt load of every table's new files into staging."""
    drops = drops_for(job)
    drops.check()
    pipeline, borrowed = pipeline_for(job)
    filters: list[ChangedRows] = []
    checks: list[KeyCheck] = []
    newest: list[LatestWins] = []
    skipped: dict[str, list[str]] = {}
    # the names staging keeps: exactly, unless this job staged under dlt's snake_case before
    convention = pipeline_naming(pipeline)
    try:
        resources = []
        shifts = {t.name: ZoneShifts() for t in job.tables}
        for t in job.tables:
            changed = ChangedRows(job, t, borrowed, lookups=LOOKUPS)
            filters.append(changed)
            checks.append(KeyCheck(job, t))
            newest.append(LatestWins(job, t, borrowed))
            resources.append(
                _resource(
                    job, t, drops, changed, skipped, borrowed, checks[-1], convention,
                    shifts[t.name], newest[-1],
                )  # fmt: skip
            )
        info = run_load(job, pipeline, resources)
        late = {latest.t.name: latest.raise_staged_times() for latest in newest}
        rows = row_counts(pipeline, job.tables)
        in_order = {t.name: skipped[t.name] for t in job.tables if t.name in skipped}
        held = {k.t.name: k.held for k in checks if k.held}
        wall_times = {
            name: s.notes(f"job '{job.name}' table '{name}'", job.timezone)
            for name, s in shifts.items()
            if s.counts
        }
        return ExtractResult(
            list(info.loads_ids),
            rows,
            {},
            in_order,
            held=held or None,
            wall_times=wall_times or None,
            warnings={name: [line] for name, line in late.items() if line} or None,
        )
    finally:
        for changed in filters:
            changed.close()
        for check in checks:
            check.close()
        for latest in newest:
            latest.close()
        if borrowed is not None:
            borrowed.close()


__all__ = [
    "DropFile",
    "Folder",
    "LatestWins",
    "S3Prefix",
    "SetAside",
    "Watermark",
    "contract_types",
    "drops_for",
    "extract",
    "file_format",
    "preflight_source",
    "read_table",
]
