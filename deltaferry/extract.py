"""The extract step of one sync, as a plain function: :func:`run_extract`.

Owns everything the run's extract step does to the job's state, and what it found:

- the source's incremental load of every table into staging (``sources/<kind>.extract``);
  a table whose source data cannot be read as it is (``TableReadError``: a value its
  column cannot carry, undecodable text) is left out and the others are read again
  without it (what the failed read staged was dropped): it is *stopped* for this run
  (``ExtractResult.stopped``, an operations-log ``failed`` entry) and the run fails after
  the job's other tables are published, as a table whose changes break its contract does;
- after the lake was adopted (a lost or reset home, ``deltaferry/adopt.py``), the
  follow-up on the full re-extract: rows equal to what this producer's chain published are
  marked as already published (``skip_unchanged``), and keys the lake holds that the
  source no longer has are staged as tombstones (``stage_missing_as_tombstones``);
- the operations log's entries for what the source reported: its client's own retries
  (``source-retry``), inputs set aside whole (``skipped``), rows held back before staging
  (``held``, and their quarantine records), keys read more than once (``duplicate-key``),
  naive times read by the wall-time rule where the zone's clock changes (``wall-time``),
  and staged cursor values after now that the window starts before (``future-cursor``);
- the source's current columns, for drift (``ctx.source_columns``), and the run's lines
  about what it went on without (``ctx.skipped``);
- the step's own entry in the operations log (``ctx.step("extract", ...)``).

It returns an :class:`ExtractResult`, one :class:`TableExtract` per table. It knows
nothing of Prefect: ``flows/sync.py`` runs it as the ``extract`` task, retries it on
``TransientError``, logs :attr:`ExtractResult.warnings` and emits
``deltaferry.input.skipped`` from the result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from deltaferry.config import TableConfig
from deltaferry.context import SyncContext
from deltaferry.errors import TableReadError, TerminalError
from deltaferry.failpoints import failpoint
from deltaferry.oplog import Entry


@dataclass
class TableExtract:
    """What one table's extract staged and set aside in one run."""

    # rows the source staged (None when the source did not count them)
    rows: int | None = None
    # deletes the source staged
    tombstones: int = 0
    # keys the adopted lake holds that the full re-extract lacks, staged as deletes
    adopted_tombstones: int = 0
    # re-extracted rows equal to what the adopted chain published: not published again
    unchanged: int = 0
    # inputs set aside whole (a malformed file), one reason each
    skipped: list[str] = field(default_factory=list)
    # rows held back before staging (a NULL key or cursor), recorded in quarantine
    held: int = 0
    # keys read more than once, as the source resolved them, one note each
    duplicates: list[str] = field(default_factory=list)
    # naive times the job's zone shows twice or never, one note per column and kind
    wall_times: list[str] = field(default_factory=list)
    # columns first published as the database's text form (no exact type), one note each
    text_columns: list[str] = field(default_factory=list)
    # staged cursor values after now, where the window starts instead (``future-cursor``)
    future_cursors: list[str] = field(default_factory=list)
    # why the table's source data could not be read this run (``TableReadError``); "" if read
    stopped: str = ""


@dataclass
class ExtractResult:
    """What the extract step of one run did, per table."""

    load_ids: list[str] = field(default_factory=list)
    tables: dict[str, TableExtract] = field(default_factory=dict)
    # the source client's own retries (HTTP 429/5xx), one reason each
    retried: list[str] = field(default_factory=list)
    # lines for the run's log at warning level, in the order they were found: inputs
    # skipped, rows held back, naive times read by the wall-time rule, duplicate keys
    warnings: list[str] = field(default_factory=list)
    # tables left out of this run's extract, with their error (``TableReadError``)
    stopped: dict[str, TableReadError] = field(default_factory=dict)

    def table(self, name: str) -> TableExtract:
        """The table's result; an empty one for a table the extract did not report."""
        return self.tables.get(name) or TableExtract()


# distinct reasons the run's line about held rows shows (each names its field and value)
HELD_REASONS_SHOWN = 3


QUIET_RECORDED = (
    "this read staged nothing and the source did not change while it was read: recorded, so "
    "runs within DELTAFERRY_QUIET_MAX_AGE that find the same state skip the read"
)


def run_extract(ctx: SyncContext) -> ExtractResult:
    """Extract every table of the job into staging and record what the source set aside
    (see the module's docstring). Errors are the source's (``TransientError`` for a
    failure worth retrying); the step is written to the operations log either way."""
    from deltaferry.adopt import skip_unchanged, stage_missing_as_tombstones
    from sources import source_module
    from sources.quiet import change_check, remember_read
    from sources.quiet import forget as forget_record
    from sources.staging import staged_keys_among

    out = ExtractResult(tables={t.name: TableExtract() for t in ctx.job.tables})
    set_aside: list[str] = []  # what the run went on without, one line each

    def run() -> str:
        job = ctx.job
        out.stopped = {}  # an attempt after a transient failure starts over
        result: Any = None  # the source's ExtractResult
        # what an attempt that stopped on a table committed for the others (a first load's
        # copy: its rows and notes), which the next attempt finds staged and reads no more
        carried: dict[str, Any] = {"rows": {}, "notes": {}}
        # the source kind's change check (sources/quiet.py): a run that finds the rows its
        # read would see unchanged since a read that staged nothing skips the read
        # (the tables with open quarantine records are asked of the state only when the
        # check would skip: every read settles them)
        with ctx.state.released():
            quiet = change_check(job, lambda: ctx.state.tables_holding())
        checked: list[Entry] = []  # the decision to skip, in the operations log
        if quiet is not None and quiet.result is not None:
            result = quiet.result
            checked.append(Entry("change-check", "info", detail=quiet.why[:2000]))
        elif quiet is not None:  # a read starts: a record is only ever of the last read
            forget_record(job)
        while result is None:
            try:
                with ctx.state.released():  # the source's time: status can read meanwhile
                    result = source_module(job).extract(job)
            except TableReadError as e:
                for kind, values in (e.carried or {}).items():
                    carried[kind].update(values)
                # one table's data cannot be read: the others are read without it (the
                # failed read staged nothing); a job with no other table fails here
                rest = tuple(t for t in job.tables if t.name != e.table)
                if len(rest) == len(job.tables) or not (rest or out.stopped):
                    raise
                # kept without its traceback: the failed read's frames (its chunks) go
                out.stopped[e.table] = e.with_traceback(None)
                if not rest:  # every table stopped: raised below, naming each
                    break
                job = dataclasses.replace(job, tables=rest)
        for name, why in ((result.stopped or {}) if result is not None else {}).items():
            out.stopped[name] = TableReadError(why, name)  # refused after its loads staged
        if result is not None and carried["rows"]:
            rows = dict(result.rows_by_table)
            for name, n in carried["rows"].items():
                rows[name] = rows.get(name, 0) + n
            notes = dict(result.notes or {})
            for name, lines in carried["notes"].items():
                notes[name] = list(lines) + notes.get(name, [])
            result = dataclasses.replace(result, rows_by_table=rows, notes=notes)
        if result is not None and len(out.stopped) == len(ctx.job.tables):
            result = None  # every table stopped
        if quiet is not None and quiet.result is None:
            with ctx.state.released():  # keep a record of a read that staged nothing
                kept = remember_read(quiet, result if not out.stopped else None)
            quiet.why += f"; {QUIET_RECORDED}" if kept else ""
        stopped = [
            Entry("extract", "failed", table=name, detail=str(error)[:2000])
            for name, error in out.stopped.items()
        ]
        if result is None:  # every table stopped: the step fails, each table in the log
            ctx.state.log_many(ctx.run_id, stopped)
            names = ", ".join(f"'{n}'" for n in out.stopped)
            raise TerminalError(
                f"job '{ctx.job.name}': tables {names} stopped: "
                + " | ".join(str(x) for x in out.stopped.values())
            )
        entries: list[Entry] = checked + stopped  # to the operations log at once, in order
        for name, error in out.stopped.items():
            out.tables[name].stopped = str(error)
        out.load_ids = list(result.load_ids)
        for t in job.tables:  # only after the lake was adopted (lost local state)
            done = out.tables[t.name]
            done.unchanged = skip_unchanged(ctx, t)
            done.adopted_tombstones = stage_missing_as_tombstones(ctx, t)
        for table, rows in result.rows_by_table.items():
            out.tables.setdefault(table, TableExtract()).rows = rows
        for table, columns in (result.columns or {}).items():  # for drift: dropped columns
            ctx.source_columns[table] = set(columns)
        for table, tombstones in result.tombstones_by_table.items():
            out.tables.setdefault(table, TableExtract()).tombstones = tombstones
        for reason in result.retried or []:  # the source client's own retries (HTTP 429/5xx)
            out.retried.append(reason)
            entries.append(Entry("extract", "source-retry", detail=reason[:2000]))
        for table, reasons in (result.skipped or {}).items():
            # inputs set aside whole (a malformed file): recorded, the rest went on
            out.tables.setdefault(table, TableExtract()).skipped = list(reasons)
            for reason in reasons:
                entries.append(Entry("extract", "skipped", table=table, detail=reason[:2000]))
                out.warnings.append(reason)
                set_aside.append(reason)
        whole = set(result.read_whole or ())
        since = result.unkeyed_since or {}
        for t in job.tables:  # a stopped table's records stay as they are
            # rows that cannot be staged (a NULL key, a NULL cursor under quarantine); the
            # NULL-cursor rows are read on every run, and a table read whole has every row
            # without a key read again (a cursor table its rows held without a key since a
            # time: at their cursor values), so a record of a row no longer held is settled
            rows = (result.held or {}).get(t.name, [])
            rereads = bool(t.cursor) and t.null_cursor == "quarantine"
            unkeyed: bool | str = t.name in whole or since.get(t.name, False)
            unfit = (result.reread_unfit or {}).get(t.name, [])
            if not rows and not rereads and not unkeyed and not unfit:
                continue
            staged_now = None
            if rereads and not getattr(source_module(job), "READS_NULL_CURSOR_KEYS", False):
                # a source that cannot read a held row by key: settled once staged

                def staged_now(keys: list[str], t: TableConfig = t) -> set[str]:
                    return staged_keys_among(job.name, t, keys, list(result.load_ids))

            settled = ctx.state.record_held(
                ctx.run_id, t.name, rows, rereads, unkeyed, reread_unfit=unfit,
                staged_now=staged_now,
            )
            if settled:
                entries.append(
                    Entry(
                        "extract",
                        "released",
                        table=t.name,
                        detail=f"{settled} row(s) held for a NULL cursor or key, or a value "
                        "their column cannot carry, have a cursor value, a key or a value that "
                        "fits now (or are gone): their quarantine records are resolved",
                    )
                )
            if not rows:
                continue
            table = t.name
            n = (result.held_rows or {}).get(table, len(rows))
            out.tables[table].held = n
            reasons = sorted({r["reason"] for r in rows})
            # the rest are in the quarantine's records, ``deltaferry quarantine list``
            more = len(reasons) - HELD_REASONS_SHOWN
            line = (
                f"job '{ctx.job.name}' table '{table}': {n} source row(s) held back "
                f"in quarantine: {'; '.join(reasons[:HELD_REASONS_SHOWN])}"
                + (
                    f"; and {more} other reason(s): deltaferry quarantine list {ctx.job.name}"
                    if more > 0
                    else ""
                )
            )
            entries.append(Entry("extract", "held", table=table, detail=line[:2000]))
            out.warnings.append(line)
            set_aside.append(line)
        for table, lines in (result.warnings or {}).items():  # what the source could not do
            for line in lines:
                entries.append(Entry("extract", "warning", table=table, detail=line[:2000]))
                out.warnings.append(line)
        for table, notes in (result.notes or {}).items():  # how the source read the table
            for note in notes:
                entries.append(Entry("extract", "initial-load", table=table, detail=note[:2000]))
        for table, notes in (result.read_again or {}).items():  # rows read again by key, why
            for note in notes:
                entries.append(Entry("extract", "read-again", table=table, detail=note[:2000]))
        for table, notes in (result.future_cursors or {}).items():
            out.tables.setdefault(table, TableExtract()).future_cursors = list(notes)
            for note in notes:  # where the window starts when staged values are ahead
                entries.append(Entry("extract", "future-cursor", table=table, detail=note[:2000]))
                out.warnings.append(note)
        for table, notes in (result.wall_times or {}).items():
            # naive times the job's zone shows twice or never, read by one rule: said
            out.tables.setdefault(table, TableExtract()).wall_times = list(notes)
            for note in notes:
                entries.append(Entry("extract", "wall-time", table=table, detail=note[:2000]))
                out.warnings.append(note)
        for table, notes in (result.text_columns or {}).items():
            # a column without an exact published type, published as its text form
            out.tables.setdefault(table, TableExtract()).text_columns = list(notes)
            for note in notes:
                entries.append(Entry("extract", "column-type", table=table, detail=note[:2000]))
                out.warnings.append(note)
        for table, notes in (result.duplicates or {}).items():
            # a key read more than once in one read, resolved by the source's rule: recorded
            out.tables.setdefault(table, TableExtract()).duplicates = list(notes)
            for note in notes:
                entries.append(Entry("extract", "duplicate-key", table=table, detail=note[:2000]))
                out.warnings.append(note)
        ctx.state.log_many(ctx.run_id, entries)
        line = (
            f"loads {result.load_ids} rows {result.rows_by_table} "
            f"tombstones {result.tombstones_by_table}"
        )
        # what the change check found (why the source was read, or that it was not)
        return line if quiet is None else f"{line}; change check: {quiet.why}"

    ctx.step("extract", run)
    ctx.skipped.extend(set_aside)
    failpoint("after_extract")  # crash tests: staged, nothing planned
    return out
