"""One table's read of a REST API: every page checked as it arrives, every record resolved
by its key once the read has ended.

``TableRead.wrap(resource)`` puts itself around the data-generating step of a dlt
``rest_api`` resource (as dlt's own ``parallelize()`` does), so the pages reach it before
dlt's incremental step, and only what it yields reaches staging.

Pages (``PageData``: records plus the request that fetched them):

- a page whose request (method, url with its query, body) was already sent in this read
  stops the read: the paginator does not advance (a cursor or next link that repeats);
- a page whose records equal the previous page's exactly stops the read (a paginator that
  ignores its parameter);
- more than ``max_pages`` pages stop the read, before the next request is sent.

Each stop is a ``TerminalError``, one line naming job, table, page number and url (its
secret query values masked); dlt's extract fails, so nothing of the read is staged or
published and the cursor does not move: the next run reads again.

Records: the same primary key read more than once in one read (offset pages shifted by a
change, overlapping pages) is resolved by a rule that does not depend on the order the API
sent them: the record with the newest cursor value wins; ties (and every duplicate of a
table without a cursor) go to the record whose canonical JSON text (keys sorted, no
spaces: the text its content hash ``_df_hash`` is the md5 of) is the largest. Cursor
values compare as instants when they are timestamps (ISO-8601 text with an offset or ``Z``;
without one, wall time in the job's ``timezone``; fractions to the nanosecond), as numbers when numeric (JSON numbers or numeric text, exactly), and values of
different kinds by kind: missing < number < timestamp < other text. The winner is staged
only when its content differs from its staged version. A record with no value (missing or
null) in a primary-key column is held back with its reason (``held``), never staged.

Memory: an index entry per key (its cursor rank, hash and place in a temporary file that
holds each record's canonical JSON and the record itself) until the read ends; the
winners' hashes are then looked up in staging (not read from it whole), so a run's memory
follows what it read, not the staged table.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import tempfile
from collections import Counter
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from itertools import islice
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl, quote, urlsplit
from zoneinfo import ZoneInfo

from contracts.exact import finer_than_microseconds
from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import TerminalError
from sources.change_detection import ChangedRows, canonical_json
from sources.integrity import KeyCheck
from sources.names import cursor_path, cursor_value
from sources.rest_api.numbers import FieldTypes, document_text
from sources.text import lone_surrogate
from sources.wall_time import wall_to_utc

DEFAULT_MAX_PAGES = 100_000
# winners are handed to dlt in lists of this many records
_CHUNK = 1000
# winners not staged with their hash are read back this many at a time, and those with a
# null field looked up by their hash of before null fields were left out (one scan each)
_RECHECK = 20_000
# a duplicate note names at most this many keys
_NAMED_KEYS = 10

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# a data_selector that is a path of plain field names ("data", "result.items")
_PLAIN_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*")
_SECRET_NAME = re.compile(r"key|token|secret|passw|signature|sig$|auth|credential", re.I)


# ISO-8601 text with a date and a time (what dlt stages as a timestamp)
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d")


def _in_utc_range(value: str) -> bool:
    """Whether ISO-8601 ``value``'s instant, in UTC, falls within years 1-9999 (True for
    text Python does not read as a time: dlt keeps that as text)."""
    import datetime as dt

    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        return True
    if at.tzinfo is None:
        return True
    try:
        at.astimezone(dt.timezone.utc)
    except OverflowError:
        return False
    return True


def _documents_as_text(row: dict[str, Any]) -> dict[str, Any]:
    """Objects and arrays as their JSON text (compact, keys in the API's order, numbers as
    written: ``numbers.document_text``): staged as text, so a column that holds documents
    in some records and strings in others keeps each as it came (dlt would parse a string
    such as "null" as JSON in a document column, turning it into SQL NULL)."""
    return {k: document_text(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}


def documents_as_text(item: Any) -> Any:
    """A dlt map step (a record or a list of records): ``_documents_as_text`` of each. It is
    the last step, after dlt's incremental step, which so sees the documents as objects
    and finds a cursor inside one (``meta.updated``: ``api_cursor_path``)."""
    if isinstance(item, list):
        return [_documents_as_text(r) if isinstance(r, dict) else r for r in item]
    return _documents_as_text(item) if isinstance(item, dict) else item


def safe_url(url: str) -> str:
    """A url without its query string (it may carry an api key) or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def newest_cursor(values: Any) -> Any:
    """dlt's ``last_value_func`` for an API cursor: the value with the highest
    ``cursor_rank`` (the latest instant, the largest number), the first of equals."""
    return max(values, key=cursor_rank)


def newest_cursor_in(zone: str) -> Callable[[Any], Any]:
    """``newest_cursor`` with naive times taken as wall time in ``zone`` (the job's
    ``timezone``); ``newest_cursor`` itself for UTC."""
    if zone == "UTC":
        return newest_cursor
    wall = ZoneInfo(zone)

    def newest_cursor_(values: Any) -> Any:
        return max(values, key=lambda v: cursor_rank(v, wall))

    newest_cursor_.__name__ = "newest_cursor"  # what dlt records of it
    return newest_cursor_


def cursor_rank(value: Any, zone: ZoneInfo | None = None) -> tuple[Any, ...]:
    """A cursor value as a sortable tuple: (0,) missing, (1, Decimal) a number,
    (2, UTC datetime) a timestamp (a naive one as wall time in ``zone``, the job's
    ``timezone``, by ``sources.wall_time``'s rule; UTC without one; finer than microseconds
    is refused when read, see ``TableRead._refuse_unstageable_times``), (3, text) anything
    else."""
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (3, str(value).lower())
    if isinstance(value, int):
        return (1, Decimal(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return (3, repr(value))
        return (1, Decimal(repr(value)))
    if isinstance(value, Decimal):
        return (1, value) if value.is_finite() else (3, str(value))
    if isinstance(value, datetime):
        return _instant(value, zone)
    if isinstance(value, date):
        return _instant(datetime(value.year, value.month, value.day), zone)
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            try:
                return (1, Decimal(text))
            except InvalidOperation:  # pragma: no cover - the pattern is a Decimal literal
                pass
        try:
            return _instant(datetime.fromisoformat(text), zone)
        except ValueError:
            return (3, value)
    return (3, json.dumps(value, sort_keys=True, default=str))


def _instant(when: datetime, zone: ZoneInfo | None = None) -> tuple[Any, ...]:
    if when.tzinfo is None:
        if zone is not None:
            try:
                when = wall_to_utc(when, zone)[0]
            except OverflowError:  # outside the years: refused as the record is staged
                pass
        when = when.replace(tzinfo=timezone.utc)
    return (2, when.astimezone(timezone.utc))


def api_cursor_path(cursor: str) -> str:
    """The table's ``cursor`` as dlt's incremental ``cursor_path`` (the key of its state
    too): a JSONPath into the record when it starts with ``$`` (``$.meta.updated``, a field
    of a nested object), else a field name as ``names.cursor_path`` writes it (quoted when
    it holds a dot: a field named ``sys.updated`` is one field). ValueError when a path
    does not parse."""
    if not cursor.startswith("$"):
        return cursor_path(cursor)
    from dlt.common.jsonpath import compile_path

    try:
        expr = compile_path(cursor)
    except Exception as e:  # noqa: BLE001 - the parser's own errors
        raise ValueError(f"cursor {cursor!r} is not a JSONPath into the record: {e}") from None
    wide = _not_singular(expr)
    if wide:
        # a path matching several values took the first match found: which value is the
        # record's cursor depended on the document's order (a silent pick)
        raise ValueError(
            f"cursor {cursor!r} can match more than one value ({wide}): name one value, "
            "with fields and list positions only ('$.meta.updated', '$.versions[0].at')"
        )
    return cursor


def _not_singular(expr: Any) -> str:
    """What in a parsed JSONPath can match more than one value (a wildcard, ``..``, a
    slice, a filter, several fields) or is the record itself (``$``), or "" when it names
    at most one value: the root, then single field names and single list positions."""
    from jsonpath_ng import jsonpath as jp

    if isinstance(expr, jp.Root):
        return "'$' is the whole record"
    while isinstance(expr, jp.Child):
        step = expr.right
        if isinstance(step, jp.Fields):
            if len(step.fields) != 1 or step.fields[0] == "*":
                return f"several fields {', '.join(step.fields)}"
        elif isinstance(step, jp.Index):
            if len(step.indices) != 1:
                return "several list positions"
        else:
            return _WIDE.get(type(step).__name__, f"{type(step).__name__.lower()} step")
        expr = expr.left
    if isinstance(expr, jp.Root):
        return ""
    return _WIDE.get(type(expr).__name__, f"{type(expr).__name__.lower()} step")


# how a step that may match several values is named in the refusal
_WIDE = {
    "Descendants": "'..' matches at any depth",
    "Wildcard": "'*' matches every field or item",
    "Slice": "a slice matches several items",
    "Union": "a union",
    "Where": "a filter",
    "WhereNot": "a filter",
    "Filter": "a filter",
}


class TableRead:
    """The pages and records of one table in one extraction (see the module docstring)."""

    def __init__(
        self,
        job: JobConfig,
        t: TableConfig,
        changed: ChangedRows,
        *,
        max_pages: int = DEFAULT_MAX_PAGES,
        secret_params: frozenset[str] = frozenset(),
        check: Any = None,
        fields: FieldTypes | None = None,
        observe: Callable[[str, Any, Any], None] | None = None,
    ) -> None:
        # check(page): called on each page's records as it arrives (raises to refuse them)
        self.check = check
        # observe(key, cursor rank, cursor value as sent): every keyed record the API sent,
        # changed or not (``future.Resent``, ``future.FutureCursors``)
        self.observe = observe
        # each record's numbers as its contract columns hold them, exactly, or refused
        self.fields = fields
        self.job, self.t, self.changed = job, t, changed
        self.where = f"job '{job.name}' table '{t.name}'"
        self.max_pages = max_pages
        self.secret_params = secret_params
        self.pages = 0
        # records held back (no primary key value), in ExtractResult.held's shape
        self.keys = KeyCheck(job, t)
        # key -> how many records of it were read (only keys read more than once)
        self.repeated: Counter[str] = Counter()
        # without cursor_param (no dlt incremental step), records older than initial_value
        # are not read
        # naive cursor values are wall time in the job's zone (``times.NaiveTimes``)
        self.zone = ZoneInfo(job.timezone) if job.timezone != "UTC" else None
        floor = t.options.get("initial_value")
        self.floor = (
            cursor_rank(floor, self.zone)
            if t.cursor and floor is not None and not t.options.get("cursor_param")
            else None
        )
        self.differing: set[str] = set()

    # --- wiring --------------------------------------------------------------

    def wrap(self, resource: Any) -> Any:
        """Put this read around the resource's data-generating step; returns the resource."""
        pipe = resource._pipe  # what dlt's own parallelize() wraps
        head = pipe.gen
        if not callable(head):
            raise TypeError(f"{self.where}: the rest_api resource has no generator to wrap")

        def _read() -> Iterator[Any]:
            return self.read(head())

        pipe.replace_gen(_read)
        return resource

    @property
    def held(self) -> list[dict[str, str]]:
        return self.keys.held

    def notes(self) -> list[str]:
        """One line naming job, table and keys when a key was read more than once."""
        if not self.repeated:
            return []
        keys = sorted(self.repeated)
        named = "; ".join(f"{k} x{self.repeated[k]}" for k in keys[:_NAMED_KEYS])
        more = f" and {len(keys) - _NAMED_KEYS} more" if len(keys) > _NAMED_KEYS else ""
        rule = (
            f"the newest {self.t.cursor!r} won, ties by the largest canonical JSON"
            if self.t.cursor
            else "no cursor: the largest canonical JSON won"
        )
        return [
            f"{self.where}: {len(keys)} key(s) read more than once in one read "
            f"({len(self.differing)} with differing versions; {rule}): {named}{more}"
        ]

    # --- pages ---------------------------------------------------------------

    def read(self, pages: Iterator[Any]) -> Iterator[list[dict[str, Any]]]:
        """The changed winners of the read, in lists, once every page was read."""
        sent: dict[tuple[str, str, bytes], int] = {}
        previous: str | None = None
        index: dict[str, tuple[tuple[Any, ...], str, int]] = {}
        with tempfile.TemporaryFile(prefix="deltaferry-rest-") as spill:
            for page in pages:
                if self.check is not None:
                    self.check(page)
                self.pages += 1
                n = self.pages
                response = getattr(page, "response", None)
                request = getattr(response, "request", None)
                url = str(getattr(request, "url", "") or "")
                if request is not None:
                    body = request.body or b""
                    ident = (
                        str(request.method),
                        url,
                        body.encode() if isinstance(body, str) else bytes(body),
                    )
                    if ident in sent:
                        raise TerminalError(
                            f"{self.where}: page {n} requested {self._shown(url)} again "
                            f"(page {sent[ident]} did): the paginator does not advance (a "
                            "next cursor, page or link that repeats); the read is stopped and "
                            "nothing of it is published"
                        )
                    sent[ident] = n
                self._check_envelope(response, n, url)
                records = list(page) if isinstance(page, list) else [page]
                if self.fields is not None:
                    for r in records:
                        if isinstance(r, dict):
                            self.fields.convert(r, self._key_text(r))
                texts = [canonical_json(r) for r in records]  # each record's, once
                if any("\\ud" in text for text in texts):
                    self._refuse_lone_surrogates(records, n, url)
                digest = hashlib.md5("\n".join(texts).encode()).hexdigest()
                if records and digest == previous:
                    raise TerminalError(
                        f"{self.where}: page {n} ({self._shown(url)}) repeats the records of "
                        f"page {n - 1} exactly: the paginator does not advance; the read is "
                        "stopped and nothing of it is published"
                    )
                previous = digest
                for row, text in zip(records, texts):
                    self._index(row, text, index, spill)
                paginator = getattr(page, "paginator", None)
                if n >= self.max_pages and getattr(paginator, "has_next_page", False):
                    raise TerminalError(
                        f"{self.where}: read {n} pages (last {self._shown(url)}) and the API has "
                        f"more: max_pages = {self.max_pages} reached; raise max_pages for this "
                        "table (or the job) if the collection is that large; nothing of the read "
                        "is published"
                    )
            yield from self._winners(index, spill)

    def _check_envelope(self, response: Any, n: int, url: str) -> None:
        """Stop the read when the answer has no field at the table's ``data_selector`` (a
        plain path such as ``data`` or ``result.items``): dlt reads that as an empty page, so
        an API that renamed its envelope (``data`` to ``items``) looked like one with no
        changes, run after run. A field that is null is an empty page, as dlt takes it; one
        that holds anything but an object or a list of objects (``"maintenance"``, ``[1, 2]``)
        stops the read too (dlt failed on it with a bare ``'str' object has no attribute``)."""
        selector = self.t.options.get("data_selector")
        if response is None or not isinstance(selector, str) or not _PLAIN_PATH.fullmatch(selector):
            return
        try:
            doc = response.json()
        except ValueError:
            return  # dlt's own parse fails the read with its message
        node = doc
        for part in selector.split("."):
            if not isinstance(node, dict) or part not in node:
                if isinstance(node, dict):
                    has = ", ".join(repr(k) for k in list(node)[:8])
                else:
                    has = f"a JSON {type(node).__name__}"
                raise TerminalError(
                    f"{self.where}: page {n} ({self._shown(url)}) has no field {part!r} of the "
                    f"table's data_selector {selector!r} (the answer there has {has or 'no fields'}): "
                    "the API's answer changed shape? fix the table's data_selector; nothing of "
                    "the read is published"
                )
            node = node[part]
        items = node if isinstance(node, list) else [node]
        odd = next((x for x in items if x is not None and not isinstance(x, dict)), None)
        if odd is not None or (isinstance(node, list) and None in node):
            shown = json.dumps(odd)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise TerminalError(
                f"{self.where}: page {n} ({self._shown(url)}): the table's data_selector "
                f"{selector!r} holds {shown} where records (JSON objects) were expected: the "
                "API answered with something else (a maintenance notice, an error)? nothing "
                "of the read is published; the next run reads it again"
            )

    def _shown(self, url: str) -> str:
        """The url without credentials, its secret query values masked."""
        secret = self.secret_params
        query = "&".join(
            f"{quote(k)}=" + ("…" if k in secret or _SECRET_NAME.search(k) else quote(v))
            for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)
        )
        return safe_url(url) + (f"?{query}" if query else "")

    # --- records -------------------------------------------------------------

    def _key_text(self, row: dict[str, Any]) -> str:
        """The record's key for a message: ``{"id": 7}``."""
        return json.dumps({c: row.get(c) for c in self.t.primary_key}, default=str)

    def _refuse_unstageable_times(self, row: dict[str, Any]) -> None:
        """dlt stages an ISO-8601 text field as a timestamp in microseconds, in UTC: a value
        with non-zero digits beyond microseconds would be cut, and one whose instant falls
        outside years 1-9999 in UTC (``0001-01-01T00:30:00+01:00``) failed dlt's normalize
        with a bare "date value out of range" naming no table. The read stops naming the
        field, the record's key and the value."""
        for name, value in row.items():
            if not isinstance(value, str) or len(value) < 19 or not _ISO_TIME.match(value):
                continue
            if len(value) > 26 and finer_than_microseconds(value):
                raise TerminalError(
                    f"{self.where}: field '{name}' value {value!r} has digits beyond "
                    "microseconds, which staging cannot keep (dlt stages ISO-8601 text as a "
                    "timestamp in microseconds); nothing of the read is published"
                )
            if value[:4] in ("0001", "9999") and not _in_utc_range(value):
                raise TerminalError(
                    f"{self.where}: record {self._key_text(row)} field '{name}' value "
                    f"{value!r} is outside years 1-9999 in UTC, which staging cannot keep (dlt "
                    "stages ISO-8601 text as a UTC timestamp); fix the value at the API (a "
                    "sentinel such as 0001-01-01 is best sent as null or in UTC); nothing of "
                    "the read is published"
                )

    def _refuse_lone_surrogates(self, records: list[Any], n: int, url: str) -> None:
        """Stop the read at a text (a value or a field name) holding a lone UTF-16
        surrogate (JSON's ``"\\ud800"``): it is not a Unicode character, staging and
        Parquet keep only UTF-8, and dlt's extract failed with a bare "str is not valid
        UTF-8" naming no table. Checked only when a page's canonical text escapes a
        surrogate at all (characters beyond the BMP, such as emoji, do that too)."""
        for record in records:
            found = lone_surrogate(record)
            if found is not None:
                key = self._key_text(record) if isinstance(record, dict) else "?"
                raise TerminalError(
                    f"{self.where}: page {n} ({self._shown(url)}): record {key}: {found}, "
                    "text with a lone UTF-16 surrogate, which is not a "
                    "Unicode character and which staging (UTF-8) cannot keep; fix the value "
                    "at the API; nothing of the read is published"
                )

    def _index(
        self,
        row: Any,
        text: str,
        index: dict[str, tuple[tuple[Any, ...], str, int]],
        spill: Any,
    ) -> None:
        """Keep ``row`` (its canonical JSON ``text``) if it is its key's newest version."""
        if not isinstance(row, dict):
            raise TerminalError(
                f"{self.where}: a record is a JSON {type(row).__name__}, not an object; check "
                "the table's data_selector"
            )
        self._refuse_unstageable_times(row)
        pk = list(self.t.primary_key)
        if self.keys.hold_unkeyed(row, "the API's record"):
            return
        # NaN or an infinity in a top-level field would be staged as NULL (nested values are
        # staged as the API's JSON text, ``document_text``, and keep them)
        if self.keys.hold_non_finite(row, "the API's record"):
            return
        key = json.dumps({c: row[c] for c in pk}, default=str, sort_keys=True)
        value = cursor_value(row, self.t.cursor) if self.t.cursor else None
        rank = cursor_rank(value, self.zone) if self.t.cursor else ()
        if self.observe is not None:
            self.observe(key, rank, value)
        if self._hold_without_cursor(row):
            return
        h = hashlib.md5(text.encode()).hexdigest()  # = row_hash(row)
        if self.floor is not None and rank != (0,) and rank < self.floor:
            return  # older than initial_value
        known = index.get(key)
        if known is not None:
            self.repeated[key] = self.repeated.get(key, 1) + 1
            if known[1] != h:
                self.differing.add(key)
            if rank < known[0]:
                return  # an older version: the one read before wins
            if rank == known[0]:
                if h == known[1]:
                    return  # the same record again
                spill.seek(known[2])
                if text <= pickle.load(spill)[0]:
                    return  # a tie, and the one read before has the larger canonical JSON
        pos = spill.seek(0, 2)
        pickle.dump((text, row), spill, protocol=pickle.HIGHEST_PROTOCOL)
        index[key] = (rank, h, pos)

    def _hold_without_cursor(self, row: dict[str, Any]) -> bool:
        """Under ``null_cursor = "quarantine"``, hold a record whose cursor is null or missing."""
        t = self.t
        if not t.cursor or t.null_cursor != "quarantine" or cursor_value(row, t.cursor) is not None:
            return False
        self.keys.hold_records(
            [row],
            t.cursor,
            "cursor not null",
            f"cursor field {t.cursor} is null or missing in the API's record (null_cursor = "
            '"quarantine"): held back until the record has a cursor value',
        )
        return True

    def _winners(
        self, index: dict[str, tuple[tuple[Any, ...], str, int]], spill: Any
    ) -> Iterator[list[dict[str, Any]]]:
        """Each key's winner that is not staged unchanged, tagged with its hash, in the order
        read, in lists of ``_CHUNK``. The winners' hashes are looked up in staging once
        (``ChangedRows.staged_among``: memory follows the read, not the staged table); only
        the others are read back from the spill file, ``_RECHECK`` at a time."""
        winners = sorted((pos, h) for _, h, pos in index.values())
        staged = self.changed.staged_among([h for _, h in winners])
        left = iter([(pos, h) for pos, h in winners if h not in staged])
        while part := list(islice(left, _RECHECK)):
            rows = []
            for pos, _ in part:
                spill.seek(pos)
                rows.append(pickle.load(spill)[1])  # documents as text later: ``documents_as_text``
            changed = self.changed.changed_records(rows, [h for _, h in part], staged)
            for i in range(0, len(changed), _CHUNK):
                yield changed[i : i + _CHUNK]
