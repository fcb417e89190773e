"""Incremental extraction of SQL tables into the job's DuckDB staging file, with dlt.

Each table is a dlt ``sql_table`` resource on the pyarrow backend, merged on its
primary key; a table with a cursor reads the window from its newest staged cursor value
(``window.py``: the bound is read from staging, dlt keeps no cursor state), and a read
whose rows all equal their staged versions loads nothing (``reads.run_reads``). Deletes are kept as tombstones in staging: a soft-delete column
is simply data, and under ``reconcile`` the keys that vanished from the source are
merged back as rows flagged ``_df_deleted`` (with a new load id), so the next
delta carries them.

This module runs one extraction (``extract``; ``preflight_source``, which checks the source
before a run, is ``preflight.py``'s, without dlt); the parts live beside it: the
connection (``connection.py``), one
table's read (``reads.py``), deletes under ``reconcile`` (``reconcile.py``), the
incremental read window (``window.py``), exact column types (``types.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from deltaferry.config import JobConfig, TableConfig, write_home_file
from deltaferry.errors import ConfigError, TableReadError, TerminalError, TransientError
from deltaferry.failpoints import failpoint
from deltaferry.quarantine import UNKEYED, held_identity
from sources.change_detection import ChangedByKey, ChangedRows
from sources.columns import INTERNAL_COLUMNS
from sources.load import ExtractResult, row_counts
from sources.pipeline import pipeline_for
from sources.sql_database import bulk, refused
from sources.sql_database.connection import StallWatchdog, connect_error, engine_for
from sources.sql_database.preflight import preflight, preflight_source
from sources.sql_database.reads import TableRead, run_reads
from sources.sql_database.reconcile import (
    DeleteRatioRefused,
    reconcile,
    reextract,
    reread_unkeyed,
)
from sources.sql_database.settings import source_table
from sources.sql_database.types import (
    job_scope,
    log,
    quiet,
)
from sources.sql_database.window import (
    null_cursor_keys,
    remember_null_cursor_keys,
    remember_unkeyed_cursors,
    unkeyed_cursors,
    window,
    window_start,
)
from sources.staging import staged_types, staging_naming, staging_path

# rows held for a NULL cursor are read again by key on every run (``null_cursor_keys``):
# a record not held again has a cursor value now (and was staged) or is gone
READS_NULL_CURSOR_KEYS = True


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
    reads: list[TableRead] = []
    borrowed = None
    # whether this run staged anything yet: a table's read refused after that is the job's
    # error, not the table's (``TableReadError`` has the extract read the job's other
    # tables again without it, which is right only while nothing is staged: rows held back
    # by a committed read - a NULL key - are remembered only at the end of this function)
    staged = False
    try:
        as_text = preflight(job, engine)
        pipeline, borrowed = pipeline_for(job)
        # columns published as their text form by default: said when first staged
        text_columns = _first_staged(job, as_text, borrowed)
        # keys whose cursor was NULL last time: read again by key after the window, since a
        # cursor value given later may be older than the window's bound
        revisit = {t.name: null_cursor_keys(job, t, borrowed) for t in job.tables if t.cursor}
        # rows held for a value their column cannot carry: read again by key each run (a
        # value fixed without moving the cursor past the window's bound, e.g. a NaN cursor
        # fixed to a lower number, was never read again); a table read whole reads them
        unfit = _open_unfit(job)
        for t in job.tables:
            if t.cursor and unfit[t.name]:
                revisit[t.name] = revisit[t.name] + [k for _, k in unfit[t.name]]
        # rows whose cursor value a stopped read refused: read again by key, since the fix
        # may give the row a cursor value below the window's bound (refused.py)
        refused_before = {t.name: refused.kept(job, t) for t in job.tables if t.cursor}
        for name, again in refused_before.items():
            revisit[name] = revisit[name] + again
        # cursor values of the rows held for a NULL key last time (read again below)
        unkeyed = {t.name: unkeyed_cursors(job, t) for t in job.tables if t.cursor}
        # a first load by DuckDB's postgres or sqlite scanner where the table asks (bulk.py)
        first = _initial_loads(job, engine, pipeline, watchdog, borrowed)
        whole: list[str] = []  # tables read whole: every row without a key held again
        gained, gone = _gained_columns(job, engine, borrowed)
        bounds: dict[str, Any] = {}  # where each cursor table's window starts
        stopped_after: dict[str, str] = {}  # tables refused after the run's loads staged
        ahead: dict[str, list[str]] = {}  # tables with staged cursor values after now
        # each read keeps its changed-rows filter (a DuckDB connection, spilling to the
        # job's tmp/): closed however this loop ends, as after the reads below
        try:
            for t in job.tables:
                if t.cursor is None:  # full-compare mode: the whole table, kept where it changed
                    whole.append(t.name)
                    reads.append(
                        TableRead(
                            job, t, engine, watchdog, ChangedRows(job, t, borrowed), pipeline=pipeline
                        )
                    )
                else:
                    start = window_start(job, t, borrowed)
                    bound = bounds[t.name] = start.bound
                    if start.keys:  # after now: a fix may give one a value below the bound
                        revisit[t.name] = revisit.get(t.name, []) + start.keys
                    if bound is not None and gained.get(t.name):
                        # every row has a value in a column the source gained (ADD COLUMN ...
                        # DEFAULT, a rename) while its cursor stayed: read the table whole once
                        bound = bounds[t.name] = None
                        first.notes.setdefault(t.name, []).append(
                            f"column(s) {', '.join(gained[t.name])} new at the source: the table "
                            "is read whole this run, so every row carries their values (a cursor "
                            "read would have staged them for changed rows only)"
                        )
                    if bound is None and t.name not in first.rows:  # a first read, by dlt alone
                        whole.append(t.name)
                    reads.append(
                        TableRead(
                            job,
                            t,
                            engine,
                            watchdog,
                            ChangedByKey(job, t, borrowed),
                            lambda text_times, t=t, b=bound: window(job, t, b, text_times),
                            pipeline=pipeline,
                        )
                    )
        except BaseException:
            for r in reads:
                r.close()
            raise
        load_ids: list[str] = list(first.load_ids)
        # the scanner's copies committed, but one that held no row leaves nothing to
        # remember at the end of this function: a table the read below refuses still
        # lets the job's other tables be read again without it, the copies carried (their
        # notes and rows: the next attempt finds them staged); held seed rows do not
        staged = bool(first.held)
        rows: dict[str, int] = {}
        try:
            info = run_reads(pipeline, [r.resource for r in reads], job, reads)
        except TableReadError as e:
            refused_read = _keep_refused(job, engine, e, bounds)
            copied = {n: c for n, c in first.rows.items() if c > 0}
            if copied and not staged:
                refused_read.carried = {
                    "rows": copied,
                    "notes": {n: first.notes.get(n, []) for n in copied},
                }
            raise refused_read from None
        finally:
            for r in reads:
                r.close()
        staged = True
        load_ids.extend(info.loads_ids)
        if info.loads_ids:  # else no normalize ran: dlt's trace holds an earlier one's counts
            rows.update(row_counts(pipeline, job.tables))
        for name, n in first.rows.items():
            rows[name] = rows.get(name, 0) + n
        tombstones: dict[str, int] = {}
        # what each read held, per table: a row may be read by more than one (the window,
        # by key, at a held row's cursor value, reconcile's superset)
        reads_held: dict[str, list[list[dict[str, Any]]]] = {}

        def note_held(name: str, more: list[dict[str, Any]]) -> None:
            if more:
                reads_held.setdefault(name, []).append(more)

        for r in reads:
            note_held(r.t.name, list(r.keys.held))
        for name, more in first.held.items():
            note_held(name, more)
        shifts = {r.t.name: r.shifts for r in reads}  # per table: the window read's counts
        for t in job.tables:
            keys = revisit.get(t.name)
            if keys:
                ids, more = reextract(
                    job, t, engine, pipeline, keys, borrowed, watchdog, shifts.get(t.name)
                )
                load_ids.extend(ids)
                note_held(t.name, more)
        # rows held for a NULL key: read again at the cursor values they had last time (a
        # row keyed since without its cursor moving is read with its key), and wherever a
        # row still without a key is now (window.UnkeyedCursors, window.unkeyed_rows)
        for t in job.tables:
            last = unkeyed.get(t.name)
            if t.cursor and last is not None and last.values and t.name not in whole:
                ids, per_read = reread_unkeyed(
                    job, t, engine, pipeline, last.values, borrowed, watchdog, shifts.get(t.name)
                )
                load_ids.extend(ids)
                for more in per_read:
                    note_held(t.name, more)
        columns = {r.t.name: list(r.columns) for r in reads if r.columns}
        for t in job.tables:
            if t.deletes == "reconcile":
                try:
                    n, ids, more = reconcile(
                        job, t, engine, pipeline, borrowed, watchdog, shifts.get(t.name)
                    )
                except DeleteRatioRefused as e:  # too many deletes: this table stops, only
                    stopped_after[t.name] = str(e)
                    continue
                tombstones[t.name] = n
                load_ids.extend(ids)
                note_held(t.name, more)
        # naive times read by the zone rule, by the window and every read again (a row read
        # twice counted twice: the note counts values read)
        wall_times = {
            r.t.name: r.shifts.notes(f"job '{job.name}' table '{r.t.name}'", job.timezone)
            for r in reads
            if r.shifts.counts
        }
        # staged cursor values after now as this run leaves staging (the run that stages a
        # typo year says so, the run that stages its fix does not)
        for t in job.tables:
            if t.cursor and t.name not in stopped_after:
                note = window_start(job, t, borrowed, with_keys=False, judge_unit=True).note(job, t)
                if note:
                    ahead[t.name] = [note]
        # a row read by the window and again by key (or by reconcile's superset) held once
        held = {
            name: _unique_held([r for one in lists for r in one], _source_rows_held(lists))
            for name, lists in reads_held.items()
        }
        for t in job.tables:
            if refused_before.get(t.name):  # read again by key above, and staged
                refused.forget(job, t)
            if t.cursor and t.null_cursor == "quarantine":
                remember_null_cursor_keys(job, t, held.get(t.name, []))
            if t.cursor:  # every row read, not one per record: rows without a key share one
                every = [r for one in reads_held.get(t.name, []) for r in one]
                remember_unkeyed_cursors(job, t, every, unkeyed.get(t.name))
            if t.name in gone:  # read whole where one came back: what is absent now
                _remember_absent(job, t, gone[t.name])
        read_again = {
            name: [
                f"job '{job.name}' table '{name}': {len(again)} row(s) whose cursor value a "
                "stopped run refused read again by key, whatever their cursor value now"
            ]
            for name, again in refused_before.items()
            if again
        }
        return ExtractResult(
            load_ids,
            rows,
            tombstones,
            held=held or None,
            held_rows={
                name: sum(_source_rows_held(lists).values()) for name, lists in reads_held.items()
            }
            or None,
            columns=columns or None,
            notes=first.notes or None,
            read_again=read_again or None,
            read_whole=whole or None,
            unkeyed_since={
                name: u.since
                for name, u in unkeyed.items()
                if u is not None and name not in whole
            }
            or None,
            wall_times=wall_times or None,
            future_cursors=ahead or None,
            stopped=stopped_after or None,
            text_columns=text_columns or None,
            reread_unfit={n: [pk for pk, _ in keys] for n, keys in unfit.items() if keys}
            or None,
        )
    except TableReadError as e:
        if not staged:
            raise
        # a read again by key, reconcile, ...: after the run's loads committed. Raised
        # below, outside this handler: an error raised in it carries the refusal as its
        # context, and ``job_scope`` would find and raise the table's error again
        stopped = str(e)
    finally:
        if borrowed is not None:
            borrowed.close()
    raise TerminalError(stopped)


def _keep_refused(
    job: JobConfig, engine: sa.Engine, e: TableReadError, bounds: dict[str, Any]
) -> TableReadError:
    """``e`` (a table's window read stopped) after keeping the keys of the window's rows whose
    cursor value the read refuses (``refused.remember``), so the next run reads them again
    by key whatever cursor value a fix gives them; the error says how many it kept."""
    t = next((x for x in job.tables if x.name == e.table), None)
    if t is None or t.cursor is None:
        return e
    try:
        keys = refused.refused_keys(job, t, engine, bounds.get(t.name))
    except sa.exc.SQLAlchemyError as why:  # the source went away meanwhile: said, not hidden
        return type(e)(  # its class: job_scope raises a ValueRefused it finds as it is
            f"{e}; the keys of rows whose cursor value is refused could not be read "
            f"({type(why).__name__}): fix such a value to a time at or after "
            f"{str(bounds.get(t.name))!r} (UTC; the newest cursor value staged: a row given an "
            "earlier one is not read again)",
            e.table,
        )
    if not keys:
        return e
    refused.remember(job, t, keys)
    return type(e)(
        f"{e} ({len(keys)} row(s) with such a cursor value kept by key: the next run reads "
        "them again by key, whatever cursor value the fix gives them)",
        e.table,
    )


def _open_unfit(job: JobConfig) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per table of the job, (key JSON, key) of its open records of rows held for a value
    their column cannot carry (``deltaferry.quarantine.UNFIT``); one read of the store."""
    import json

    from deltaferry.state import StateStore, state_path

    # one read-only open (the run made the file when it started)
    held = StateStore(job.name, read_only=True).open_unfit() if state_path(job.name).exists() else {}
    return {
        t.name: [(pk, json.loads(pk)) for pk in sorted(held.get(t.name, ()))] for t in job.tables
    }


def _gained_columns(
    job: JobConfig, engine: sa.Engine, borrowed: Any
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per cursor table with staged rows: the source columns staging does not have (not
    excluded by ``exclude_columns``), and those that came back after a run found them gone
    (``ALTER TABLE ... DROP COLUMN c``, then ``ADD COLUMN c ... DEFAULT``: staging keeps a
    dropped column, so its return was not news, and the rows whose cursor stayed kept NULL
    there, exit 0: a fresh-user trial), named as the source has them; and, per such table,
    the staged columns the source lacks now (lowercase staged names, for
    ``_remember_absent`` once the run's reads are staged)."""
    from sources.names import naming

    path = staging_path(job.name)
    staged = {t.name: staged_types(t, path, borrowed) for t in job.tables if t.cursor}
    staged = {name: cols for name, cols in staged.items() if cols}
    if not staged:
        return {}, {}
    insp = sa.inspect(engine)
    norm = naming(staging_naming(job, borrowed)).normalize_identifier
    out: dict[str, list[str]] = {}
    gone: dict[str, list[str]] = {}
    for t in job.tables:
        if t.name not in staged:
            continue
        have = {
            c.lower()
            for c in staged[t.name]
            if c not in INTERNAL_COLUMNS and not c.startswith("_dlt_")
        }
        excluded = set(t.options.get("exclude_columns", ()))
        with quiet():
            names = [c["name"] for c in insp.get_columns(source_table(t))]
        was_absent = _absent(job, t)
        new = [
            n
            for n in names
            if n not in excluded
            and (norm(n).lower() not in have or norm(n).lower() in was_absent)
        ]
        if new:
            out[t.name] = new
        now = {norm(n).lower() for n in names}
        absent = sorted(c for c in have if c not in now)
        if absent or was_absent:
            gone[t.name] = absent
        if set(absent) - set(was_absent):  # remembered now: a failed run keeps it
            _remember_absent(job, t, sorted(set(absent) | set(was_absent)))
    return out, gone


def _absent_file(job: JobConfig, t: TableConfig) -> Any:
    from deltaferry.config import job_home

    return job_home(job.name) / "absent_columns" / f"{t.name}.json"


def _absent(job: JobConfig, t: TableConfig) -> set[str]:
    """Staged columns (lowercase) a run found missing at the source (``_gained_columns``)."""
    import json

    path = _absent_file(job, t)
    return set(json.loads(path.read_text())) if path.exists() else set()


def _remember_absent(job: JobConfig, t: TableConfig, names: list[str]) -> None:
    import json

    if names or _absent_file(job, t).exists():
        write_home_file(_absent_file(job, t), json.dumps(names))


def _first_staged(
    job: JobConfig, notes: dict[str, dict[str, str]], borrowed: Any
) -> dict[str, list[str]]:
    """Of ``notes`` (per table, ``{column: note}``), those of columns staging does not have
    yet: a decision is said on the run that makes it, not on every run after."""
    out: dict[str, list[str]] = {}
    for t in job.tables:
        if t.name in notes:
            staged = staged_types(t, staging_path(job.name), borrowed)
            new = [note for c, note in notes[t.name].items() if c not in staged]
            if new:
                out[t.name] = new
    return out


@dataclass
class _FirstLoads:
    """What the initial loads by the scanner staged: the seed's load ids, rows staged per
    table (seed and copy), rows the seed held back, and one operations-log line per table
    (what was copied, or why dlt reads the rest)."""

    load_ids: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    held: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


def _initial_loads(
    job: JobConfig, engine: sa.Engine, pipeline: Any, watchdog: StallWatchdog, borrowed: Any
) -> _FirstLoads:
    """The first load of each table with ``initial_load = "scanner"`` (or ``"auto"``, the
    default, and at least ``bulk.AUTO_ROWS`` rows) and nothing staged:
    a seed of ``bulk.SEED_ROWS`` rows through dlt, then the rest copied by the scanner
    (``sources/sql_database/bulk.py``). Tables that cannot take it get a note and are read
    by the run's dlt read as usual."""
    out = _FirstLoads()
    tables = []
    layouts: dict[str, dict[str, Any]] = {}  # per table: bulk.survey's layout
    for t in job.tables:
        how = bulk.requested(t, engine)
        if how is None or bulk.staged(job, t, borrowed):
            continue
        if how == "auto" and not bulk.large(t, engine):  # the dlt read, as any later run
            continue
        why, layouts[t.name] = bulk.survey(job, t, engine)
        if why is not None:
            out.notes[t.name] = [
                f"job '{job.name}' table '{t.name}': initial load through dlt, not the "
                f"scanner: {why}"
            ]
            continue
        tables.append(t)
    if not tables:
        return out
    for t in tables:
        bulk.begin(job, t)
    while True:
        seeds = [
            TableRead(
                job,
                t,
                engine,
                watchdog,
                ChangedByKey(job, t, borrowed),
                lambda text_times, t=t: bulk.first_rows(t),
                pipeline=pipeline,
            )
            for t in tables
        ]
        try:
            info = run_reads(pipeline, [r.resource for r in seeds], job, seeds)
            break
        except (TerminalError, ConfigError) as e:
            # a value refused, a key repeated among the seed's rows: the table is read by
            # the run's dlt read whole, which stops it with the error a first load without
            # the scanner gives (the first such value in its order, not the seed's); the
            # other tables are seeded again (a retryable error is the run's, as always)
            failed = [t for t in tables if t.name == getattr(e, "table", None)] or tables
            for t in failed:
                bulk.staged(job, t, borrowed)  # with the marker there: any seed row removed
                bulk.end(job, t)  # (no staging file yet: nothing staged, the marker goes)
                line = (
                    f"job '{job.name}' table '{t.name}': initial load through dlt, not the "
                    f"scanner: the seed's read stopped: {e}"
                )
                log.warning(line)  # on the run's log too: the run may then stop the table
                out.notes[t.name] = [line]
            tables = [t for t in tables if t not in failed]
            if not tables:
                return out
        finally:
            for r in seeds:
                r.close()
    out.held = {r.t.name: list(r.keys.held) for r in seeds if r.keys.held}
    out.load_ids = list(info.loads_ids)
    if not out.load_ids:  # nothing staged: the next run seeds again
        for t in tables:
            bulk.end(job, t)
        return out
    load_id = out.load_ids[-1]
    failpoint("after_seed")  # crash tests: the seed committed, nothing copied
    for t in tables:
        try:
            line, out.rows[t.name] = bulk.copy_rest(
                job, t, engine, load_id, layouts[t.name], borrowed
            )
        except bulk.Skipped as e:  # the seed's rows removed: the run's dlt read reads all
            out.rows[t.name] = 0
            line = (
                f"job '{job.name}' table '{t.name}': initial load: the scanner's copy was "
                f"rolled back, dlt reads the rest of the table: {e}"
            )
            # also on the process's log now: a run that then fails records no extract row
            log.warning(line)
        bulk.end(job, t)
        out.notes[t.name] = [line]
    return out


def _source_rows_held(reads: list[list[dict[str, Any]]]) -> dict[tuple[str, str], int]:
    """How many source rows ``reads`` (what each read of one table held) held, per record
    (``held_identity``): one a key and check, except for rows without a key, which may share
    a record: there each row's text counts as often as the read that saw it most often saw
    it (a row read by the window and at its cursor value is counted once; identical rows
    are each counted)."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for one in reads:
        seen: dict[tuple[tuple[str, str], str], int] = {}
        for r in one:
            text = r["row_json"] if r["check"] == UNKEYED else ""
            seen[(held_identity(r), text)] = seen.get((held_identity(r), text), 0) + 1
        for (identity, text), n in seen.items():
            texts = counts.setdefault(identity, {})
            texts[text] = max(texts.get(text, 0), n if text else 1)
    return {identity: sum(texts.values()) for identity, texts in counts.items()}


def _unique_held(
    rows: list[dict[str, Any]], source_rows: dict[tuple[str, str], int]
) -> list[dict[str, Any]]:
    """Held records, one per key and check (``held_identity``: a row read by the window and
    again by key is held once), each with the ``source_rows`` behind it."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        identity = held_identity(r)
        if identity not in seen:
            seen[identity] = {**r, "source_rows": source_rows.get(identity, 1)}
    return list(seen.values())


__all__ = ["ExtractResult", "extract", "preflight_source"]
