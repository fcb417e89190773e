"""A run that finds nothing changed at its source, told without dlt: the change check.

A scheduled job mostly finds nothing new, and its read (dlt, its pipeline, a window of rows
read again and all found equal to their staged versions) costs seconds of imports and
setup for that answer. A source kind may answer it first, in ``sources/<kind>/quiet.py``:
``check(job, holding, max_age) -> Quiet`` and ``job_state(job) -> dict``; ``holding()``
gives the job's tables with an open quarantine record (such a table is always read: the
read is what settles a record). The check reads what the
source's read would read, as a fingerprint per table (``Quiet.state``), and the run skips
the read only when all of these hold:

- a **record** (``quiet.json`` in the job's home) says a read that *staged nothing* saw
  exactly this state: the same fingerprints, taken before that read and again after it
  (equal both times: the source did not move while it was read), the same staged state
  (the staging file's newest load and each table's window bound), the same job settings
  and the same deltaferry;
- that read was at most ``DELTAFERRY_QUIET_MAX_AGE`` seconds ago (900 by default; 0 turns
  the check off), so every job reads its source in full at least that often whatever a
  fingerprint says;
- the source kind's check did not abstain for any table (a kind abstains wherever its read
  would do more than read a window: see ``sources/sql_database/quiet.py``).

Then the extract step's result is the one that read gave (nothing loaded), and the
operations log says so: a ``change-check`` entry (outcome ``info``) with the record's time
and load. Otherwise the ``extract`` entry's detail ends with why the source was read
(``change check: ...``), and with ``recorded`` when this read leaves the record. Any
error in the check is no answer (``Quiet.why``): the run reads as it always did, so the
check can cost a run its shortcut, never its data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deltaferry.config import JobConfig, job_home, write_home_file
from sources.result import ExtractResult

RECORD_FILE = "quiet.json"
# what a record was written by: a record of another version of the check is no record
RECORD_VERSION = 1
# what a read may have done and still leave a record: everything else of an ExtractResult
# must be empty (a read that staged, held, warned, noted, stopped or read again by key
# leaves none, and its next run reads again)
# (``unkeyed_since``: when rows held without a key were last read again; with no open
# quarantine record, which the check requires, it settles nothing, and a skipped run
# reads nothing again, so the skip's result leaves it out)
_QUIET_FIELDS = ("load_ids", "rows_by_table", "tombstones_by_table", "columns", "unkeyed_since")


@dataclass
class Quiet:
    """What a change check saw. ``state``: per table, the source's fingerprint and the
    staged bound it was taken at, plus the staging file's newest load (``None`` when the
    check abstained: ``why`` says why, one line). ``result``: the read's result to use
    instead of reading, when the record matches (``why`` then says what matched)."""

    job: JobConfig
    state: dict[str, Any] | None
    why: str
    result: ExtractResult | None = None
    checked_at: float = field(default_factory=lambda: dt.datetime.now(dt.UTC).timestamp())


def settings_digest(job: JobConfig) -> str:
    """A digest of everything in the job's settings a read depends on (source, its url as
    the jobs file gives it, zone, and every table's key, cursor, deletes, contract and
    options), with deltaferry's version:
    a record made under other settings or another deltaferry is no record."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("deltaferry")
    except PackageNotFoundError:
        ours = "unknown"
    tables = [
        [
            t.name,
            list(t.primary_key),
            t.cursor,
            t.deletes,
            t.contract,
            t.source_version,
            t.null_cursor,
            repr(sorted(t.options.items())),
        ]
        for t in job.tables
    ]
    text = json.dumps(
        [
            RECORD_VERSION,
            ours,
            job.source,
            job.url,
            str(job.base_dir),
            repr(sorted(job.options.items())),
            job.timezone,
            tables,
        ],
        default=repr,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def record_path(job: JobConfig) -> Any:
    return job_home(job.name) / RECORD_FILE


def read_record(job: JobConfig) -> dict[str, Any] | None:
    """The job's record, or None (none, unreadable, or made by another version)."""
    path = record_path(job)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        return None
    return record


def forget(job: JobConfig) -> None:
    """Remove the job's record: the next run reads its source."""
    record_path(job).unlink(missing_ok=True)


def decide(
    job: JobConfig, state: dict[str, Any], max_age: float, holding: Callable[[], set[str]]
) -> Quiet:
    """Compare ``state`` (the check's fingerprints now) with the job's record: a ``Quiet``
    whose ``result`` is the recorded read's when every condition of the module holds. A
    record that cannot be read back as a read that staged nothing (another build's, a
    damaged file) is no record. ``holding()``: the job's tables with an open quarantine
    record, asked last (a table with one is read: the read settles its records)."""

    def read(why: str) -> Quiet:
        return Quiet(job, state, why[:500])

    record = read_record(job)
    if record is None:
        return read("no read that staged nothing is on record")
    if record.get("settings") != settings_digest(job):
        return read("the job's settings changed since the recorded read")
    try:
        read_at = float(record["read_at"])
        result = ExtractResult(**{**record["result"], "unkeyed_since": None})
        if not _well_formed(result) or not quiet_result(result):
            raise ValueError("its result is not a read that staged nothing")
        when = dt.datetime.fromtimestamp(read_at, dt.UTC).isoformat(timespec="seconds")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        return read(f"the record of the last quiet read is unreadable ({type(e).__name__}: {e})")
    age = dt.datetime.now(dt.UTC).timestamp() - read_at
    if not 0 <= age <= max_age:
        return read(f"the recorded read is {age:.0f} s old (limit {max_age:g} s)")
    if record.get("state") != state:
        return read("the source or staging differs from the recorded read")
    held = sorted(set(holding()) & {t.name for t in job.tables})
    if held:
        names = ", ".join(f"'{n}'" for n in held)
        return read(f"table(s) {names} have rows in the quarantine, which a read settles")
    return Quiet(
        job,
        state,
        f"unchanged since the read at {when} (staged load {state.get('load')}): every "
        "table's window fingerprint as it was; read skipped",
        result=result,
    )


def _well_formed(result: ExtractResult) -> bool:
    """Whether a result read back from a record has the shapes a run uses: no loads, counts
    by table, and source columns by table (or none)."""

    def counts(value: Any) -> bool:
        return isinstance(value, dict) and all(
            isinstance(k, str) and type(v) is int for k, v in value.items()
        )

    columns = result.columns
    return (
        result.load_ids == []
        and counts(result.rows_by_table)
        and counts(result.tombstones_by_table)
        and (
            columns is None
            or isinstance(columns, dict)
            and all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(c, str) for c in v)
                for k, v in columns.items()
            )
        )
    )


def quiet_result(result: ExtractResult) -> bool:
    """Whether ``result`` is a read that staged nothing and has nothing to tell."""
    if result.load_ids or any(result.rows_by_table.values()):
        return False
    if any(result.tombstones_by_table.values()):
        return False
    for f in dataclasses.fields(result):
        if f.name not in _QUIET_FIELDS and getattr(result, f.name):
            return False
    return True


def remember(before: Quiet, after: dict[str, Any] | None, result: ExtractResult) -> bool:
    """After a read: keep a record when the read staged nothing (``quiet_result``) and the
    check's state before it (``before.state``) equals the state after it (``after``).
    Returns whether a record was kept. (There is none to remove otherwise: a read that
    starts removes it, ``deltaferry/extract.py:run_extract``.)"""
    job = before.job
    if before.state is None or after is None or after != before.state:
        return False
    if not quiet_result(result):
        return False
    record = {
        "version": RECORD_VERSION,
        "settings": settings_digest(job),
        "read_at": before.checked_at,  # the state was seen before the read began
        "state": after,
        "result": dataclasses.asdict(result),
    }
    write_home_file(record_path(job), json.dumps(record, sort_keys=True, default=str))
    return True


def _kind_check(job: JobConfig) -> Any:
    """The job's source kind's ``quiet`` module, or None when the kind has none."""
    import importlib
    import importlib.util

    name = f"sources.{job.source}.quiet"
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    return importlib.import_module(name) if found is not None else None


def change_check(job: JobConfig, holding: Callable[[], set[str]]) -> Quiet | None:
    """The job's change check (None when its source kind has none, or checks are off):
    see the module. ``holding()``: the tables with an open quarantine record."""
    from deltaferry.settings import from_env

    max_age = from_env().quiet_max_age
    if max_age <= 0:  # checks off (DELTAFERRY_QUIET_MAX_AGE=0)
        return None
    try:
        kind = _kind_check(job)
        if kind is None:  # no check for this kind
            return None
        quiet: Quiet = kind.check(job, holding, max_age)
    except Exception as e:  # noqa: BLE001 - no answer: the read decides, as always
        why = f"the change check could not run ({type(e).__name__}: {e})"[:500]
        return Quiet(job, None, why)
    return quiet


def remember_read(before: Quiet, result: ExtractResult | None) -> bool:
    """After the read that ``before`` did not skip: the check's state again, and a record
    when the read staged nothing (``remember``). ``result`` None: a table stopped, no
    record. Never raises: a record not kept costs the next run its shortcut only."""
    if result is None or before.state is None:
        return False
    try:
        after = _kind_check(before.job).job_state(before.job)
        return remember(before, after, result)
    except Exception:  # noqa: BLE001 - see above
        return False
