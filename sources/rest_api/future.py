"""A REST cursor value after now must not become the ``since`` of every later run.

With ``cursor_param``, dlt's incremental step keeps the newest cursor value it has seen in
the pipeline's state and sends it as ``cursor_param`` on the next run. One record with a
typo year (``2240-01-02T00:00:00Z``) made that the value, the API then sent nothing newer,
and every later change was missed, exit 0, until a reset (the SQL window had the same
fault: ``sources.sql_database.window.window_start``).

``FutureCursors`` sees every keyed record the API sent, changed or not (``reads.TableRead``'s
``observe``, with the cursor value as the API wrote it): it keeps the newest cursor value
*not after now* among them, and counts the ones ahead (so a record ahead that is sent again
unchanged is warned about on every run, and a whole read of unchanged records still
learns where to ask from). After a successful load that value is
remembered (``$DELTAFERRY_HOME/<job>/rest_cursor/<table>.json``, the API's own text), and
before the next run a stored value after now is replaced by it (``clamp_state``; the
table's ``initial_value`` when none is remembered), so the API is asked from there: later
changes come, and the record ahead comes again on every run (the content hash keeps it
only when it changed). A number cursor is compared with the clock as a Unix time
(``instant``, ``sources.unix_time``): in the unit the table's ``cursor_unit`` names, else in
the unit learned from the first read that asked from the table's start (the size most of
its numbers have: from 1e9, seconds; from 1e12 to 1e15, milliseconds; else not a time;
``unit`` in the file, kept until a reset); a number that is not a time, or any with
``cursor_unit = "number"``, is kept as it is. Before, ``8000000000`` (a typo in epoch seconds, the year 2223) became the ``since``
for good.

A record whose value is then fixed to a time older than that start is not sent again by
an API that filters on ``cursor_param``, nor is a record whose null cursor (sent on every
run by an API whose filter keeps nulls) is given an old time: the replica kept the typo or
the record stayed held, exit 0. ``Resent`` watches the keys of both kinds (the API must send
them on every run); when one the last run saw is not sent, the table is read again whole
in the same run (``sources.rest_api.extract``), and the content hash keeps what changed.

An API whose filter drops null cursors (``updated_at >= since``, false for NULL) sends a
record with a null cursor only to a read without ``since``: given a time older than the
``since`` later, or created with a null cursor, it is never read by a run that asks from
one. A null-cursor record is watched like the others; when the whole read its absence
caused finds it still null, the API is known to drop them (``drops_nulls`` in the file):
nulls are no longer watched (every run would read twice) and every run warns, until the
table's ``full_read_every`` bounds how long such a record can wait (``due_whole_read``: the
table is read whole when the last whole read started that long ago).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from deltaferry.config import JobConfig, TableConfig, job_home, write_home_file
from deltaferry.errors import TerminalError
from sources import unix_time
from sources.names import cursor_value
from sources.rest_api.reads import api_cursor_path, cursor_rank

# values ahead of the clock by more than this are warned about (a clock a little ahead is not)
WARN_AHEAD = dt.timedelta(minutes=5)
# full_read_every's units, in seconds (the setting's pattern: a whole number and one of them)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# keys of null-cursor records named in the warning about an API that drops them
NAMED = 5


def _zone(job: JobConfig) -> ZoneInfo | None:
    return None if job.timezone == "UTC" else ZoneInfo(job.timezone)


def instant(
    rank: tuple[Any, ...], t: TableConfig, learned: str | None = None
) -> dt.datetime | None:
    """The UTC time a cursor value of ``rank`` (``cursor_rank``) stands for: a time's own,
    a number's as a Unix time (``unix_time.unit_of``: the table's ``cursor_unit``, else the
    unit ``learned`` from its values, stored as ``unit`` in the file, else by its size),
    else None."""
    if rank[0] == 2:
        return rank[1]
    if rank[0] != 1:
        return None
    unit = unix_time.unit_of(t.options, rank[1], learned=learned)
    return None if unit is None else unix_time.to_time(rank[1], unit)


def _ahead(
    rank: tuple[Any, ...], now: dt.datetime, t: TableConfig, learned: str | None = None
) -> bool:
    """Whether a cursor value of ``rank`` (``cursor_rank``) is a time after ``now`` (UTC),
    a number read as a Unix time included (``instant``)."""
    at = instant(rank, t, learned)
    return at is not None and at > now


def _as_time(value: Any, rank: tuple[Any, ...], t: TableConfig, judged: str | None) -> str:
    """A number cursor value with the time it is read as (in the unit it was ``judged``
    in), for a warning; else the value."""
    unit = unix_time.unit_of(t.options, rank[1], learned=judged) if rank[0] == 1 else None
    if unit is None:
        return repr(value)
    how = (
        "cursor_unit"
        if t.options.get("cursor_unit")
        else "the size of the table's first values"
        if unit != unix_time.by_size(rank[1])
        else "its size"
    )
    return unix_time.shown(value, unit, how)


@dataclass
class _Seen:
    """The newest value not after now and the values ahead, as one unit reads numbers."""

    newest: Any = None
    ahead: int = 0
    latest: Any = None
    # the ranks of newest and latest (``cursor_rank`` parses text: once per value)
    newest_rank: tuple[Any, ...] = (0,)
    latest_rank: tuple[Any, ...] = (0,)


class FutureCursors:
    """Of the cursor values the API sent (``see``, every keyed record): the newest not
    after now (``newest``, the API's text), and the values after now plus ``WARN_AHEAD``
    (``ahead``, and the newest of them, ``latest``), numbers read in the table's unit
    (``cursor_unit``, or the one learned before). Until a unit is learned, each number is
    read in each unit it may be in (seconds, milliseconds, not a time) and the unit most
    numbers of the read have by size decides (``judged``): a millisecond time among seconds
    is after now on the first read too."""

    def __init__(self, job: JobConfig, t: TableConfig, now: dt.datetime | None = None) -> None:
        self.job, self.t = job, t
        self.zone = _zone(job)
        self.now = now or dt.datetime.now(dt.timezone.utc)
        # the unit the table's numbers were learned as (``unix_time.size_of``), and, until
        # one is, how many numbers of this read have each size
        self.learned: str | None = _stored(job, t).get("unit")
        self.sizes: dict[str, int] = {}
        fixed = t.options.get("cursor_unit") or self.learned
        self._seen = {str(u): _Seen() for u in ([fixed] if fixed else ["s", "ms", "number"])}

    def judged(self) -> str:
        """The unit this read's numbers are judged in: the table's (set or learned), else
        the size most of them have (a tie: the smaller unit), else seconds."""
        if len(self._seen) == 1:
            return next(iter(self._seen))
        return unix_time.most_common(self.sizes) or "s"

    @property
    def _now(self) -> _Seen:
        return self._seen[self.judged()]

    @property
    def newest(self) -> Any:
        return self._now.newest

    @property
    def ahead(self) -> int:
        return self._now.ahead

    @property
    def latest(self) -> Any:
        return self._now.latest

    def __call__(self, item: Any) -> Any:
        """Records or lists of records (as a dlt map step would get them), seen; unchanged."""
        for row in item if isinstance(item, list) else [item]:
            if isinstance(row, dict) and self.t.cursor:
                value = cursor_value(row, self.t.cursor)
                self.see(value, cursor_rank(value, self.zone))
        return item

    def see(self, value: Any, rank: tuple[Any, ...]) -> None:
        """One record's cursor value as the API sent it, and its ``cursor_rank``."""
        if value is None:
            return
        if rank[0] == 1 and len(self._seen) > 1:
            size = unix_time.size_of(rank[1])
            self.sizes[size] = self.sizes.get(size, 0) + 1
        for unit, seen in self._seen.items():
            at = instant(rank, self.t, unit)
            if at is None or at <= self.now:
                if rank > seen.newest_rank:
                    seen.newest, seen.newest_rank = value, rank
            elif at > self.now + WARN_AHEAD:
                seen.ahead += 1
                if rank > seen.latest_rank:
                    seen.latest, seen.latest_rank = value, rank

    def note(self) -> str | None:
        """The run's warning about records whose cursor is after now, or None; after
        ``remember``: it names where the next run asks the API from."""
        if not self.ahead:
            return None
        start = _start(self.job, self.t, self.now)
        asked = (
            f"the newest value not after now ({start!r})"
            if start is not None
            else f"no value (no '{self.t.options.get('cursor_param')}': every page)"
        )
        number = self._now.latest_rank[0] == 1
        unit = self.judged()
        shown = _as_time(self.latest, self._now.latest_rank, self.t, unit)
        return (
            f"job '{self.job.name}' table '{self.t.name}': {self.ahead} record(s) have a cursor "
            f"('{self.t.cursor}') value after now (newest {shown}); the next run asks "
            f"the API from {asked}, not from it, so "
            "later changes are still read and those records are sent again every run (kept "
            "only when changed). Check the API's data for a "
            + (
                "wrong value"
                + (
                    '; if the cursor is a number that is not a time, set the table\'s '
                    'cursor_unit = "number"'
                    if not self.t.options.get("cursor_unit")
                    else ""
                )
                if number
                else "wrong year, or the job's timezone"
            )
        )

    def unit(self, from_start: bool = True) -> str | None:
        """The unit the table's numbers are read in from now on (stored as ``unit``): the
        one learned before, else, when this read asked from the table's start
        (``from_start``: not from a stored value, which may itself be a wrong-unit value
        that only its like follow), the size most numbers of this read have
        (``unix_time.size_of``); None when none is known yet or ``cursor_unit`` says."""
        if self.t.options.get("cursor_unit"):
            return None
        if self.learned is not None or not from_start:
            return self.learned
        return unix_time.most_common(self.sizes)


class Resent:
    """The keys the API must send on every run that asks it from a ``since`` value: a
    record whose cursor is after now (any ``since`` not after now is before it), and a
    record whose cursor is null (until the API is known to drop nulls: ``drops()``). It
    also refuses a cursor value of another kind (``_kind``). Called by
    ``reads.TableRead`` with every keyed record the API sent: ``(key JSON, cursor_rank of
    its cursor value)``, the rank in the job's zone.

    ``missing()``: the keys the last run watched that this run was not sent, when it asked
    from a ``since`` (``since``) and was not itself the whole read (``full``): each was
    changed to a cursor older than that ``since`` (a typo fixed, a null given an old time)
    or deleted, and only a read without the ``since`` can tell. ``watch``: what the next run
    watches (stored by ``remember``)."""

    def __init__(
        self,
        job: JobConfig,
        t: TableConfig,
        *,
        since: bool,
        full: bool = False,
        now: dt.datetime | None = None,
        missed: Iterable[str] = (),
        last: Any = None,
    ) -> None:
        self.job, self.t = job, t
        # the kind of cursor value dlt stored (``cursor_rank``'s first element; 0: none):
        # a value of another kind in a read is refused (``_kind``)
        self.stored_kind = cursor_rank(last, _zone(job))[0]
        self.last = last  # dlt's stored value this read asks from (None: none)
        self.kinds: dict[int, tuple[str, Any]] = {}  # kind -> the first (key, value) of it
        self.records = 0  # keyed records sent
        self.now = now or dt.datetime.now(dt.timezone.utc)
        self.since, self.full = since, full
        # the file as this read found it (``clamp_state`` wrote it first): ``remember``
        # updates this, nothing else writes it before
        self.stored = stored = _stored(job, t)
        self.before: dict[str, str] = stored.get("watch", {})
        # what the file says of an API that drops null cursors (``drops()``), or None
        self.dropped: dict[str, Any] | None = stored.get("drops_nulls")
        # the keys this run's first read missed (``missing()``), which this whole read seeks
        self.missed = frozenset(missed)
        self.sent: set[str] = set()
        self.watch: dict[str, str] = {}
        self.nulls = 0  # records sent with a null cursor
        self.named: list[str] = []  # the first NAMED of their keys
        self.still_null: list[str] = []  # missed keys this read without since found null

    def __call__(self, key: str, rank: tuple[Any, ...]) -> None:
        self.records += 1
        if key in self.before:
            self.sent.add(key)
        if rank[0] not in self.kinds:
            self.kinds[rank[0]] = (key, rank[-1])
            self._kind()
        if rank == (0,):  # null or missing
            self.watch[key] = "null"
            self.nulls += 1
            if len(self.named) < NAMED:
                self.named.append(key)
            if key in self.missed and not self.since:
                self.still_null.append(key)
        elif _ahead(rank, self.now, self.t, self.stored.get("unit")):
            self.watch[key] = "ahead"

    def _kind(self) -> None:
        """Refuse a cursor value that is neither a time nor a number (text, a flag, an
        object: ``cursor_rank`` kind 3) among times or numbers (of this read, or dlt's
        stored value): it ranks newest, becomes the value sent as ``cursor_param`` on every
        later run (the API refuses it, or sends nothing newer), and a stored cursor value
        never goes down, so fixing the record did not help: every run failed, or missed
        every change, until a reset (a fresh-user trial)."""
        param = self.t.options.get("cursor_param")
        other = {1, 2} & set(self.kinds)
        if self.stored_kind == 3 and other:  # jammed before this check existed
            key, value = self.kinds[2 if 2 in other else 1]
            raise TerminalError(
                f"job '{self.job.name}' table '{self.t.name}': the stored cursor value, sent "
                f"as '{param}', is neither a time nor a number, while record {key} has "
                f"'{self.t.cursor}' = {value!r}: `deltaferry reset` the table (the next run "
                "reads the API whole); nothing of the read is published"
            )
        other |= {1, 2} & {self.stored_kind}
        if 3 not in self.kinds or not other:
            return
        key, value = self.kinds[3]
        kind = "times" if 2 in other else "numbers"
        raise TerminalError(
            f"job '{self.job.name}' table '{self.t.name}': record {key} has '{self.t.cursor}' "
            f"= {value!r}, neither a time nor a number, where the table's cursor values are "
            f"{kind}: as the newest value it would be sent as '{param}' on every later run; "
            "fix the value at the source (the next run reads the table again), or leave out "
            "the table's cursor_param (every run then reads every page); nothing of the read "
            "is published"
        )

    def unseen_note(self) -> str | None:
        """The run's warning when records came and none had a cursor value: a cursor path
        no record has (a typo, ``meta.changed``) makes every run a whole read, no word."""
        if not self.records or set(self.kinds) != {0} or self.stored_kind != 0:
            return None  # dlt holds a value: the API is asked from it
        return (
            f"job '{self.job.name}' table '{self.t.name}': none of the {self.records} "
            f"record(s) read has a value of the cursor '{self.t.cursor}' (missing or null in "
            f"every one): the API is asked without '{self.t.options.get('cursor_param')}' "
            "(or from initial_value) until one has, so every run reads the whole table; "
            "check the cursor's name (a field inside an object is written as a JSONPath: "
            "$.meta.updated)"
        )

    def whole(self) -> bool:
        """Whether this read was a whole read (a ``full`` one, or a first without since)."""
        return self.full or not self.since

    def drops(self) -> dict[str, Any] | None:
        """What the next run knows of an API that drops null cursors when asked with a
        since: ``{"nulls": N, "keys": [...]}`` (the null-cursor records of the last whole
        read without since), or None: learned when this read, without since, found null a
        record the run's first read (with since) missed; forgotten when a read with since
        is sent a null cursor (the API keeps them after all)."""
        if self.since and self.nulls:
            return None
        if self.still_null or (self.dropped is not None and not self.since):
            return {"nulls": self.nulls, "keys": self.named}
        return self.dropped

    def drops_note(self) -> str | None:
        """The run's warning when the API drops null cursors: on every run while no
        ``full_read_every`` bounds how long a record it does not send can wait, and on the
        run that learns it (its whole read found null the records it was looking for);
        else None."""
        dropped = self.drops()
        every = self.t.options.get("full_read_every")
        if dropped is None or (every is not None and not self.still_null):
            return None
        param, cursor = self.t.options.get("cursor_param"), self.t.cursor
        keys = ", ".join(dropped["keys"])
        held = f" ({dropped['nulls']} at the last whole read: {keys})" if dropped["nulls"] else ""
        found = (
            f" (the whole read found {len(self.still_null)} record(s) it was looking for still "
            "null: they were dropped, not changed)"
            if self.still_null
            else ""
        )
        then = (
            f"the table's full_read_every = {every!r} reads them"
            if every is not None
            else 'set the table\'s full_read_every (e.g. "1d") to read it whole that often'
        )
        return (
            f"job '{self.job.name}' table '{self.t.name}': the API does not send a record "
            f"whose '{cursor}' is null when asked with '{param}'{held}{found}: such a record "
            f"(a new one too) and the time it is given later, when older than the '{param}' "
            f"asked from, are read only by a whole read; {then}"
        )

    def missing(self) -> list[str]:
        if not self.since or self.full:
            return []
        return sorted(k for k in self.before if k not in self.sent)

    def note(self) -> str:
        """The warning of a run that reads the table again whole (``missing()`` not empty)."""
        keys = self.missing()
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        return (
            f"job '{self.job.name}' table '{self.t.name}': {len(keys)} record(s) the API sent "
            f"on every run (a value of '{self.t.cursor}' after now, or null) were not sent "
            f"this run ({shown}): changed to a value older than the one the API was asked "
            "from, deleted (the replica keeps a record the API deleted unless the table has "
            "soft deletes), or null and dropped by the API's filter; the table was read "
            f"again whole ({_how(self.t)}) to find them"
        )


def _how(t: TableConfig) -> str:
    """How a whole read of ``t`` asks the API, for the log."""
    initial = t.options.get("initial_value")
    if initial is not None:
        return f"from the table's initial_value {initial!r}"
    return f"without '{t.options.get('cursor_param')}'"


def whole_read_interval(t: TableConfig) -> dt.timedelta | None:
    """The table's ``full_read_every`` (``"12h"``, ``"7d"``) as a duration, or None."""
    text = t.options.get("full_read_every")
    if not text:
        return None
    return dt.timedelta(seconds=int(text[:-1]) * UNITS[text[-1]])


def due_whole_read(job: JobConfig, t: TableConfig, now: dt.datetime | None = None) -> str | None:
    """Why ``t`` is read whole this run (its ``full_read_every`` has passed since the last
    whole read started, or none is recorded), as the operations log's line; None when it
    is not (no ``full_read_every``, or the last whole read is recent enough)."""
    every = whole_read_interval(t)
    if every is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    last = _stored(job, t).get("full_read_at")
    if last is not None and now - dt.datetime.fromisoformat(last) < every:
        return None
    when = f"the last one started {last}" if last else "none recorded before"
    return (
        f"job '{job.name}' table '{t.name}': read whole ({_how(t)}): full_read_every = "
        f"{t.options['full_read_every']!r} ({when})"
    )


def _file(job: JobConfig, t: TableConfig) -> Any:
    return job_home(job.name) / "rest_cursor" / f"{t.name}.json"


def _stored(job: JobConfig, t: TableConfig) -> dict[str, Any]:
    """What ``remember`` stored for the table: ``newest`` (the API's text, or None),
    ``watch`` (``Resent.watch``), ``unit`` (what its numbers were learned as:
    ``FutureCursors.unit``); empty before its first run."""
    path = _file(job, t)
    return json.loads(path.read_text()) if path.exists() else {}


def _start(job: JobConfig, t: TableConfig, now: dt.datetime) -> Any:
    """Where a run asks the API from when dlt's stored value is after now: the remembered
    newest value not after now (still not, as the table's numbers are read now: a
    ``cursor_unit`` set since, a unit learned since), else the table's ``initial_value``
    (or None: no ``since``)."""
    stored = _stored(job, t)
    newest = stored.get("newest")
    if newest is not None and _ahead(cursor_rank(newest, _zone(job)), now, t, stored.get("unit")):
        newest = None
    return newest if newest is not None else t.options.get("initial_value")


def remember(
    job: JobConfig, t: TableConfig, seen: FutureCursors, resent: Resent | None = None
) -> None:
    """After a successful load: the newest cursor value not after now read so far (the
    later of the one remembered and this run's), and the keys the next run watches."""
    stored = resent.stored if resent is not None else _stored(job, t)
    newest = stored.get("newest")
    zone = _zone(job)
    initial = t.options.get("initial_value")
    from_start = resent is None or resent.whole() or resent.last in (None, initial)
    unit = seen.unit(from_start) or seen.judged()
    # a value read in the table's unit (set or learned by this run) is after now: neither
    # the remembered one (a millisecond time remembered in a table of seconds) nor this
    # read's newest (judged by its own size before the unit was learned) is kept
    if newest is not None and _ahead(cursor_rank(newest, zone), seen.now, t, unit):
        newest = None
    fresh = seen.newest
    if fresh is not None and _ahead(cursor_rank(fresh, zone), seen.now, t, unit):
        fresh = None
    if fresh is not None and (
        newest is None or cursor_rank(newest, zone) < cursor_rank(fresh, zone)
    ):
        newest = fresh
    out: dict[str, Any] = {"newest": newest}
    learned = seen.unit(from_start)
    if learned is not None:
        out["unit"] = learned
    # a key not sent stays watched until a whole read has looked for it: a failed whole
    # read leaves the next run to look again
    watch = {**{k: resent.before[k] for k in resent.missing()}, **resent.watch} if resent else {}
    dropped = resent.drops() if resent else stored.get("drops_nulls")
    if dropped is not None:  # nulls are not sent with a since: watching them reads twice
        out["drops_nulls"] = dropped
        watch = {k: v for k, v in watch.items() if v != "null"}
    if watch:
        out["watch"] = watch
    # when the last whole read started, for ``due_whole_read``
    full_read_at = stored.get("full_read_at")
    if resent is not None and resent.whole() and whole_read_interval(t) is not None:
        full_read_at = resent.now.isoformat()
    if full_read_at is not None:
        out["full_read_at"] = full_read_at
    # a "resume" (clamp_state) is kept through the whole read that set it, for the next
    # run to apply, and dropped by a load that had it applied
    if resent is not None and resent.full and stored.get("resume") is not None:
        out["resume"] = stored["resume"]
    normalized = json.loads(json.dumps(out, default=str))
    if normalized == stored:
        return
    if normalized == {"newest": None}:  # nothing to remember (a watched key deleted)
        _file(job, t).unlink(missing_ok=True)
        return
    write_home_file(_file(job, t), json.dumps(out, default=str))


def clamp_state(
    job: JobConfig,
    t: TableConfig,
    pipeline: Any,
    now: dt.datetime | None = None,
    *,
    full: bool = False,
) -> bool:
    """Before a run, on the pipeline's stored cursor value for ``t`` (dlt's incremental
    state): a ``resume`` left by a whole read is put back when it is newer (a whole read
    lowers the value, and afterwards holds only the newest *changed* record's; without this
    every later run asked from there); then a time after ``now`` is replaced with the
    remembered newest value not after now (else the table's ``initial_value``). With
    ``full`` (the table is read again whole) the value is kept as ``resume`` and replaced
    with ``initial_value``. Returns whether the run asks the API from a value (sends
    ``cursor_param``)."""
    initial = t.options.get("initial_value")
    if not t.cursor or not t.options.get("cursor_param"):
        return False
    now = now or dt.datetime.now(dt.timezone.utc)
    zone = _zone(job)
    stored = _stored(job, t)
    resume = stored.get("resume")
    with pipeline.managed_state() as state:
        for source in state.get("sources", {}).values():
            incremental = source.get("resources", {}).get(t.name, {}).get("incremental", {})
            inc = incremental.get(api_cursor_path(t.cursor))
            if not inc:
                continue
            rank = cursor_rank(inc.get("last_value"), zone)
            if resume is not None and rank < cursor_rank(resume, zone):
                inc["last_value"], inc["unique_hashes"] = resume, []
            if full:
                if inc.get("last_value") is not None:  # ``remember`` keeps it for the next run
                    resumed = {**stored, "resume": inc["last_value"]}
                    write_home_file(_file(job, t), json.dumps(resumed, default=str))
                inc["last_value"], inc["unique_hashes"] = initial, []
            elif _ahead(cursor_rank(inc.get("last_value"), zone), now, t, stored.get("unit")):
                inc["last_value"], inc["unique_hashes"] = _start(job, t, now), []
            return inc.get("last_value") is not None or initial is not None
    return initial is not None


def stored_cursor(job: JobConfig, t: TableConfig, pipeline: Any) -> Any:
    """dlt's stored cursor value of ``t`` (after ``clamp_state``), or None."""
    for source in pipeline.state.get("sources", {}).values():
        incremental = source.get("resources", {}).get(t.name, {}).get("incremental", {})
        inc = incremental.get(api_cursor_path(t.cursor)) if t.cursor else None
        if inc:
            return inc.get("last_value")
    return None


def forget(job: JobConfig, t: TableConfig) -> None:
    """What ``remember`` stored for the table, dropped (``deltaferry reset``: the next run
    reads the API in full and watches what it sends)."""
    _file(job, t).unlink(missing_ok=True)
