"""REST APIs through dlt's declarative ``rest_api`` source, configured in the jobs file.

Each table is one endpoint: dlt pages through it (cursor, offset, link header, JSON
link ... any rest_api paginator), sends ``cursor_param=<last cursor value>`` when the
table has one, and keeps its cursor in the pipeline state, committed with the load. Every
record is tagged with the md5 of its content and staged only when that differs from its
staged version, so the records at the cursor boundary (asked for again on purpose: the
range is closed) and an API without a "changed since" parameter cost a read, not a batch.

Each read goes through ``reads.TableRead`` (wrapped around the resource's generator): it
stops a paginator that repeats a request or a page, caps a read at ``max_pages``, resolves
a key read twice (newest cursor, then largest canonical JSON), holds back records without
a key (``ExtractResult.held``) and stages only the winners that changed.

HTTP: dlt's retrying session (429 and 5xx retried with exponential backoff, ``Retry-After``
honoured; connection errors retried). deltaferry wraps its transport to record every
retried response in the operations log, to refuse a ``Retry-After`` longer than
``DELTAFERRY_HTTP_MAX_RETRY_AFTER`` seconds (default 300: the step fails as transient
rather than hanging), and to stop at an answer that is HTML, not JSON (a login page,
a proxy's error page).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import requests
from dlt.sources.rest_api import RESTAPIConfig, rest_api_resources

from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import ConfigError, DeltaferryError, TerminalError, TransientError
from deltaferry.settings import from_env
from sources.change_detection import ChangedRows
from sources.load import DEDUPLICATED, ExtractResult, find_cause, row_counts, run_load
from sources.pipeline import pipeline_for, pipeline_naming, schema_columns, schema_types
from sources.rest_api.future import (
    FutureCursors,
    Resent,
    clamp_state,
    due_whole_read,
    forget,
    remember,
    stored_cursor,
)
from sources.rest_api.numbers import ExactJSONResponse, FieldTypes
from sources.rest_api.reads import (
    DEFAULT_MAX_PAGES,
    TableRead,
    api_cursor_path,
    documents_as_text,
    newest_cursor_in,
    safe_url,
)
from sources.rest_api.times import NaiveTimes


def _observer(resent: Resent, ahead: FutureCursors) -> Callable[[str, Any, Any], None]:
    """``TableRead``'s ``observe``: each keyed record the API sent, to both watchers."""

    def observe(key: str, rank: Any, value: Any) -> None:
        resent(key, rank)
        ahead.see(value, rank)

    return observe


def _where(job: JobConfig, t: TableConfig | None = None) -> str:
    return f"job '{job.name}'" + (f" table '{t.name}'" if t else "")


def _no_queries(text: str) -> str:
    """The text with every url's query string cut (it may carry an api key)."""
    return re.sub(r"\?[^\s'\")>]*", "?…", text)


class _Watch(requests.adapters.HTTPAdapter):
    """The transport under dlt's retrying session: sees every attempt's response."""

    def __init__(self, job: JobConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.retried: list[str] = []
        self.max_retry_after = from_env().http_max_retry_after
        self._lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        response = super().send(request, *args, **kwargs)
        status = response.status_code
        where = f"{_where(self.job)}: {request.method} {safe_url(request.url or '')}"
        if status == 429 or status >= 500:
            after = response.headers.get("Retry-After")
            with self._lock:
                # "cause: detail", as the run report groups retries by what comes first
                self.retried.append(
                    f"HTTP {status}{f' Retry-After {after}' if after else ''}: {where}; "
                    "retried with backoff"
                )
            wait = _retry_after_seconds(after)
            if wait is not None and wait > self.max_retry_after:
                raise TransientError(
                    f"{where} answered {status} asking to wait {wait:.0f} s, longer than "
                    f"DELTAFERRY_HTTP_MAX_RETRY_AFTER ({self.max_retry_after:g} s); "
                    "the run is retried later instead of waiting"
                )
        if _is_json(response):
            # fractions and exponents read as Decimal, exactly (numbers.exact_json)
            response.__class__ = ExactJSONResponse
        elif 200 <= status < 300:
            kind = response.headers.get("Content-Type", "no Content-Type")
            raise ConfigError(
                f"{where} answered {status} with {kind.split(';')[0]}, not JSON (a login page "
                "or a proxy's error page?); check the job's url, the table's path and auth"
            )
        return response


def _retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time as _time

    return max(0.0, when.timestamp() - _time.time())


def _is_json(response: requests.Response) -> bool:
    kind = response.headers.get("Content-Type", "").lower()
    if "json" in kind:
        return True
    body = response.content.lstrip()[:1]
    return body in (b"{", b"[") and "html" not in kind


def _session(job: JobConfig) -> tuple[requests.Session, _Watch]:
    from dlt.sources.helpers.requests import Client

    env = from_env()
    client = Client(
        request_timeout=env.http_timeout,
        raise_for_status=False,  # rest_api raises, after dlt's retries, with a clean message
        request_max_attempts=env.http_attempts,
        request_backoff_factor=env.http_backoff,
        # dlt caps both its backoff and a server's Retry-After at this; a longer Retry-After
        # is refused by _Watch, so what the server asks for is what we wait
        request_max_retry_delay=env.http_max_retry_after,
        respect_retry_after_header=True,
    )
    session = client.session
    # the transport under dlt's retrying send: every attempt goes through it (requests'
    # public Session.mount replaces the adapter dlt mounted for both schemes)
    watch = _Watch(job)
    session.mount("http://", watch)
    session.mount("https://", watch)
    if job.options.get("headers"):
        session.headers.update({k: str(v) for k, v in job.options["headers"].items()})
    return session, watch


def _resolved(job: JobConfig, value: Any, what: str) -> Any:
    if isinstance(value, dict):
        return {k: _resolved(job, v, f"{what}.{k}") for k, v in value.items()}
    return job.secret(value, what)


def api_config(job: JobConfig, session: requests.Session, *, incremental: bool = True) -> dict:
    """The dlt rest_api config of the job: one resource per table, merged on its key."""
    from destinations.s3 import require_tls

    base_url = job.source_url().rstrip("/") + "/"
    # tokens and keys go with every request: never in clear text over the network
    require_tls(base_url, f"job '{job.name}': API {safe_url(base_url)}")
    client: dict[str, Any] = {"base_url": base_url, "session": session}
    if job.options.get("auth"):
        client["auth"] = _resolved(job, job.options["auth"], "auth")
    if job.options.get("paginator"):
        client["paginator"] = job.options["paginator"]
    resources = []
    for t in job.tables:
        o = t.options
        endpoint: dict[str, Any] = {"path": o.get("path", t.name)}
        if o.get("params"):
            endpoint["params"] = {
                k: _resolved(job, v, f"params.{k}") for k, v in o["params"].items()
            }
        for key in ("data_selector", "paginator"):
            if o.get(key):
                endpoint[key] = o[key]
        # without cursor_param every page is read anyway: dlt's incremental step would only
        # drop records whose cursor is older than the last one seen (a late or backdated
        # record, lost for good); the content hash keeps the read's cost to what changed
        if incremental and t.cursor and o.get("cursor_param"):
            inc: dict[str, Any] = {
                "cursor_path": api_cursor_path(t.cursor),
                # closed range without dedup: records at the last cursor value come again and
                # the content filter keeps those that changed (dlt would drop them by key)
                "primary_key": [],
                # the newest cursor value is the latest instant (or number), never the largest
                # text: '2024-05-01T12:00:00+02:00' is older than '2024-05-01T11:00:00Z'; a
                # naive one is wall time in the job's timezone
                "last_value_func": newest_cursor_in(job.timezone),
                # a record whose cursor is null or missing is staged (null_cursor =
                # "include"; under "quarantine" reads.TableRead holds it before dlt sees it)
                "on_cursor_value_missing": "include",
            }
            inc["start_param"] = o["cursor_param"]
            if "initial_value" in o:
                inc["initial_value"] = o["initial_value"]
            endpoint["incremental"] = inc
        resources.append(
            {
                "name": t.name,
                "endpoint": endpoint,
                "primary_key": list(t.primary_key),
                "write_disposition": "merge",
            }
        )
    return {"client": client, "resources": resources}


def preflight_source(job: JobConfig) -> None:
    """Ask each endpoint for its first page: the API answers, with JSON, to our auth."""
    session, _ = _session(job)
    config = api_config(job, session, incremental=False)
    base = config["client"]["base_url"]
    try:
        from dlt.sources.helpers.rest_client.client import RESTClient
        from dlt.sources.rest_api.config_setup import create_auth

        auth = create_auth(config["client"].get("auth"))
        for t, r in zip(job.tables, config["resources"], strict=True):
            rest = RESTClient(base_url=base, session=session, auth=auth)
            params = r["endpoint"].get("params")
            response = rest.get(r["endpoint"]["path"], params=params)
            _check_status(job, t, response)
    except DeltaferryError:
        raise
    except requests.RequestException as e:
        raise TransientError(
            f"{_where(job)}: API at {safe_url(base)} unreachable: {type(e).__name__}; check the url "
            "and that the server is up"
        ) from None
    finally:
        session.close()


def _check_status(job: JobConfig, t: TableConfig, response: requests.Response) -> None:
    status = response.status_code
    where = f"{_where(job, t)}: GET {safe_url(response.url)} answered {status}"
    if status in (401, 403):
        raise ConfigError(f"{where}; check the job's auth (token, key or password)")
    if status == 404:
        raise ConfigError(f"{where}; check the job's url and the table's path")
    if status == 429 or status >= 500:
        raise TransientError(f"{where} after retries; the API is busy or down")
    if status >= 400:
        raise ConfigError(f"{where}; check the table's params")


def extract(job: JobConfig) -> ExtractResult:
    """One incremental load of every endpoint of the job into staging. A table whose API
    did not send again a record it must send on every run (``future.Resent``) is then read
    again whole in the same run, a second load: what that record became is in this run."""
    # a table whose full_read_every has passed is read whole at once (one load)
    due = {t.name: [note] for t in job.tables if (note := due_whole_read(job, t))}
    first, again = _extract(job, full=frozenset(due))
    if due:  # the operations log's read-again entries
        first = dataclasses.replace(first, read_again={**(first.read_again or {}), **due})
    if not again:
        return first
    tables = tuple(t for t in job.tables if t.name in again)
    missed = {name: r.missing() for name, r in again.items()}
    second, _ = _extract(
        dataclasses.replace(job, tables=tables), full=frozenset(again), missed=missed
    )
    return _combined(first, second, {name: r.note() for name, r in again.items()})


def _combined(first: ExtractResult, second: ExtractResult, again: dict[str, str]) -> ExtractResult:
    """One run's result of a first load and of the whole read of the tables ``again`` names
    (with the first load's warning each): the whole read's notes replace the first's for
    its tables (it read every record the first did); loads and rows add up."""

    def per_table(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
        out = {k: v for k, v in (a or {}).items() if k not in again}
        out.update(b or {})
        return out or None

    rows = dict(first.rows_by_table)
    for table, n in second.rows_by_table.items():
        rows[table] = rows.get(table, 0) + n
    future = per_table(first.future_cursors, second.future_cursors) or {}
    for table, note in again.items():
        future[table] = [note, *future.get(table, [])]
    return dataclasses.replace(
        first,
        load_ids=[*first.load_ids, *second.load_ids],
        rows_by_table=rows,
        retried=[*(first.retried or []), *(second.retried or [])] or None,
        held=per_table(first.held, second.held),
        duplicates=per_table(first.duplicates, second.duplicates),
        wall_times=per_table(first.wall_times, second.wall_times),
        future_cursors=future or None,
    )


def _extract(
    job: JobConfig,
    full: frozenset[str] = frozenset(),
    missed: dict[str, list[str]] | None = None,
) -> tuple[ExtractResult, dict[str, Resent]]:
    """One load of the job's tables (those in ``full`` read whole: no ``cursor_param``
    value, or ``initial_value``; ``missed``: per table, the keys the run's first load was
    not sent, which this whole read looks for). Returns the result and, per table whose
    API did not send a record it must send every run, its ``future.Resent`` (``missing()``
    the keys, ``note()`` the warning)."""
    from sources.names import RecordNames

    session, watch = _session(job)
    pipeline, borrowed = pipeline_for(job)
    filters: list[ChangedRows] = []
    try:
        # the jobs file's options as given (auth, paginator, data_selector): dlt checks them
        resources = rest_api_resources(cast(RESTAPIConfig, api_config(job, session)))
        by_name = {r.name: r for r in resources}
        staged, reads = [], []
        times: list[NaiveTimes] = []
        seen: list[tuple[FutureCursors, Resent]] = []
        secrets = _secret_params(job)
        convention = pipeline_naming(pipeline)
        for t in job.tables:
            changed = ChangedRows(job, t, borrowed)
            filters.append(changed)
            resent = None
            observe = None
            if t.cursor and t.options.get("cursor_param"):  # a cursor after now: future.py
                since = clamp_state(job, t, pipeline, full=t.name in full)
                resent = Resent(
                    job,
                    t,
                    since=since,
                    full=t.name in full,
                    missed=(missed or {}).get(t.name, ()),
                    last=stored_cursor(job, t, pipeline),
                )
                # every record sent, changed or not: the newest value not after now and the
                # values ahead come from the whole read, not only from what is staged
                ahead = FutureCursors(job, t)
                seen.append((ahead, resent))
                observe = _observer(resent, ahead)
            # a record key staging would not keep exactly is refused before dlt sees it
            names = RecordNames(job.name, t.name, convention, schema_columns(pipeline, t.name))
            fields = field_types(job, t, convention)
            read = TableRead(
                job,
                t,
                changed,
                max_pages=max_pages(job, t),
                secret_params=secrets,
                check=names,
                fields=fields,
                observe=observe,
            )
            reads.append(read)
            # pages checked as they come; records resolved by key, the changed winners staged
            resource = read.wrap(by_name[t.name])
            # nested objects and lists stay JSON columns of the table (no child tables)
            resource.max_table_nesting = 0
            resource.apply_hints(additional_table_hints=DEDUPLICATED)
            if job.timezone != "UTC":  # after dlt's incremental step: see times.py
                zoned = NaiveTimes(
                    _where(job, t),
                    t.name,
                    job.timezone,
                    schema_types(pipeline, t.name),
                    fields.normalize,
                )
                times.append(zoned)
                resource.add_map(zoned, insert_at=len(resource._pipe.steps))
            resource.add_map(documents_as_text, insert_at=len(resource._pipe.steps))
            hints = _new_decimal_columns(pipeline, t, fields)
            if hints:
                resource.apply_hints(columns=hints)
            staged.append(resource)
        # records go to staging as Parquet: dlt's default (SQL insert statements) turns
        # -0.0 into 0.0
        info = run_load(
            job,
            pipeline,
            staged,
            lambda e: _classify(job, e),
            scrub=_no_queries,
            loader_file_format="parquet",
        )
        for ahead, resent in seen:
            remember(job, ahead.t, ahead, resent)
        notes = {
            a.t.name: found
            for a, r in seen
            if (found := [n for n in (a.note(), r.drops_note(), r.unseen_note()) if n])
        }
        again = {r.t.name: r for _, r in seen if r.missing()}
        return ExtractResult(
            list(info.loads_ids),
            row_counts(pipeline, job.tables),
            {},
            retried=watch.retried,
            held={r.t.name: r.held for r in reads if r.held},
            duplicates={r.t.name: r.notes() for r in reads if r.repeated},
            wall_times={z.table: z.notes() for z in times if z.shifts.counts} or None,
            future_cursors=notes or None,
        ), again
    finally:
        for f in filters:
            f.close()
        if borrowed is not None:
            borrowed.close()
        session.close()


def forget_table(job: JobConfig, t: TableConfig) -> None:
    """``deltaferry reset`` of a table: the cursor values and keys the source remembered for
    it (``future.remember``) are dropped with dlt's state."""
    forget(job, t)


def field_types(job: JobConfig, t: TableConfig, convention: str) -> FieldTypes:
    """The table's contract column types, for converting each record's numbers exactly."""
    from contracts import load_contract
    from sources.names import naming

    where = _where(job, t)
    types = load_contract(t.contract, where=where).arrow_types()
    return FieldTypes(where, types, naming(convention).normalize_identifier)


def _new_decimal_columns(pipeline: Any, t: TableConfig, fields: FieldTypes) -> dict[str, Any]:
    """Hints staging the contract's decimal columns at its precision and scale, for the
    columns not staged yet (a staged column keeps its table type either way: dlt does not
    alter it; leaving the hint off keeps dlt's schema saying what the table holds)."""
    hints = fields.decimal_hints()
    if not hints:
        return {}
    try:
        staged = pipeline.default_schema.tables.get(t.name, {}).get("columns", {})
    except Exception:  # noqa: BLE001 - no schema yet: nothing is staged
        staged = {}
    return {n: h for n, h in hints.items() if n not in staged}


def max_pages(job: JobConfig, t: TableConfig) -> int:
    """The table's page cap: its ``max_pages``, else the job's, else 100000."""
    return int(t.options.get("max_pages", job.options.get("max_pages", DEFAULT_MAX_PAGES)))


def _secret_params(job: JobConfig) -> frozenset[str]:
    """Query parameters whose values are never shown: the api key's (auth in the query)
    and every configured parameter given as ``env:VAR``."""
    names = set()
    auth = job.options.get("auth") or {}
    if isinstance(auth, dict) and auth.get("type") == "api_key" and auth.get("name"):
        names.add(str(auth["name"]))
    for t in job.tables:
        for k, v in (t.options.get("params") or {}).items():
            if isinstance(v, str) and v.startswith("env:"):
                names.add(k)
    return frozenset(names)


def _classify(job: JobConfig, e: BaseException) -> BaseException | None:
    """An HTTP error status dlt gave up on, as the error preflight would have raised; a 4xx
    mid-run (the API changed its mind) stops the run rather than being retried."""
    http = find_cause(e, lambda x: isinstance(x, requests.HTTPError))
    response = getattr(http, "response", None)
    if response is None:
        return None
    try:
        _check_status(job, _table_of(job, response.url), response)
    except ConfigError as ce:
        return TerminalError(str(ce))
    except DeltaferryError as de:
        return de
    return None


def _table_of(job: JobConfig, url: str) -> TableConfig:
    path = urlsplit(url).path.rstrip("/")
    for t in job.tables:
        if path.endswith("/" + str(t.options.get("path", t.name)).strip("/")):
            return t
    return job.tables[0]


__all__ = ["api_config", "extract", "preflight_source"]
