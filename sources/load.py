"""Running a load into staging: ``run_load`` (a dlt failure as one deltaferry error), the
load of a source that yields records (``extract_records``), tombstones merged by key
(``stage_tombstones``), and what a source kind's ``extract`` returns (``ExtractResult``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import dlt
import pyarrow as pa
from dlt.common.typing import TLoaderFileFormat

from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import find_cause  # noqa: F401 - kept importable from here
from deltaferry.shutdown import raise_if_interrupt_within
from sources.change_detection import ChangedRows
from sources.columns import DELETED_COLUMN
from sources.pipeline import (
    abort_pending,
    drop_merge_staging,
    finish_stopped_loads,
    pipeline_for,
    pipeline_naming,
    prune_loaded_packages,
    refit_staging,
    schema_columns,
)
from sources.result import ExtractResult  # noqa: F401 - kept importable from here

if TYPE_CHECKING:
    from sources.integrity import KeyCheck

# a table hint for dlt's merge: each load holds one row per key (our sources resolve
# repeated keys themselves: sources.integrity, rest_api.reads, files.LatestWins), so dlt
# copies staged rows as they are; its own deduplication (ROW_NUMBER() OVER a partition)
# turns -0.0 into 0.0 in DuckDB
DEDUPLICATED: dict[str, Any] = {"x-stage-data-deduplicated": True}


def load_failure(job: JobConfig, e: BaseException) -> str:
    """One line for a normalize or a load into staging that failed terminally (dlt's
    ``PipelineStepFailed`` ``e``), naming the table when dlt names the failed job: the
    database's (or dlt's) own first line (``Conversion Error: ...``), without dlt's
    traceback. The caller aborts the failed load package (``sources.pipeline.abort_pending``,
    or dlt's own abort of a load job), so the next run reads the same rows again."""
    import re

    from dlt.common.destination.exceptions import WithJobError
    from dlt.destinations.exceptions import DatabaseTerminalException

    db = find_cause(e, lambda x: isinstance(x, DatabaseTerminalException))
    failed = find_cause(e, lambda x: isinstance(x, WithJobError))
    if db is not None:
        text = str(db)
    elif failed is not None:
        text = str(getattr(failed, "failed_message", "") or failed)
    else:
        text = str(getattr(e, "exception", None) or e)
    # dlt passes the job's traceback as text: its last "SomeError: message" line says it
    raised = re.findall(r"^[\w.]+(?:Error|Exception): (.+)$", text, re.M)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = raised[-1] if raised else (lines[0] if lines else type(e).__name__)
    first = " ".join(first.split()).rstrip(".")  # one line
    where = f"job '{job.name}'"
    # dlt's job id: "<table>.<file id>.<format>" (none for a failure outside a job)
    table = str(getattr(failed, "job_id", "")).rsplit(".", 2)[0]
    if failed is not None and table in {t.name for t in job.tables}:
        where += f" table '{table}'"
    if "Out of Memory Error" in text or "failed to pin block" in text:
        # the staging database's memory limit, not a value: the advice a value gets misleads
        from deltaferry.settings import env_name, from_env

        fix = (
            f"raise {env_name('duckdb_memory_limit')} (now {from_env().duckdb_memory_limit}) "
            "and run again"
        )
    else:
        fix = "fix the value at the source (or the table's column_types) and run again"
    doing = "normalizing the extracted rows" if getattr(e, "step", "") == "normalize" else (
        "loading into staging"
    )
    return (
        f"{where}: {doing} failed: {first[:500]}; the load package was aborted and the "
        "cursors kept where the last completed load left them, nothing was staged or "
        f"published; {fix}"
    )


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
    is closed, and records read again unchanged are not staged (``ChangedRows``: their
    hashes looked up in staging ``PAGE`` records at a time). Nested objects and lists are
    staged as JSON columns. Records without a key value, and under ``null_cursor =
    "quarantine"`` without a cursor value, are held back (``ExtractResult.held``, the
    quarantine's records); a key read twice is a ``ConfigError`` and an integer beyond 64
    bits a ``TerminalError``, before anything is staged (``_checked``). Errors: a
    ``DeltaferryError`` raised by ``read`` passes as it is; ``ConnectionError`` and
    ``TimeoutError`` (and client libraries' errors of those names) become
    ``TransientError`` (the step is retried); anything else is a ``TerminalError``."""
    from sources.integrity import KeyCheck
    from sources.names import RecordNames

    pipeline, borrowed = pipeline_for(job)
    filters: list[ChangedRows] = []
    checks: list[KeyCheck] = []
    try:
        resources = []
        for t in job.tables:
            changed = ChangedRows(job, t, borrowed)
            filters.append(changed)
            checks.append(KeyCheck(job, t))
            names = RecordNames(
                job.name, t.name, pipeline_naming(pipeline), schema_columns(pipeline, t.name)
            )
            resource = (
                _records_resource(job, t, read, checks[-1])
                .add_map(names)
                .add_step(changed.records)
            )
            resource.apply_hints(additional_table_hints=DEDUPLICATED)  # keys counted: KeyCheck
            resources.append(resource)
        # as Parquet: dlt's default for DuckDB (SQL insert statements) turns -0.0 into 0.0,
        # and a first load of 1M records ran out of memory at the default limit
        info = run_load(job, pipeline, resources, loader_file_format="parquet")
        held = {k.t.name: k.held for k in checks if k.held}
        return ExtractResult(
            list(info.loads_ids), row_counts(pipeline, job.tables), {}, held=held or None
        )
    finally:
        for f in filters:
            f.close()
        for check in checks:
            check.close()
        if borrowed is not None:
            borrowed.close()


# records handed to dlt in lists of this many: the change filter looks up each list's
# hashes in staging at once (``ChangedRows.records``)
PAGE = 10_000


def _pages(items: Iterable[Any]) -> Iterator[list[Any]]:
    """A source's records (each item a record or a list of them) in lists of ``PAGE``."""
    page: list[Any] = []
    for item in items:
        for record in item if isinstance(item, list) else [item]:
            page.append(record)
            if len(page) >= PAGE:
                yield page
                page = []
    if page:
        yield page


def _records_resource(
    job: JobConfig, t: TableConfig, read: Callable[..., Iterable[Any]], keys: KeyCheck
) -> Any:
    hints: dict[str, Any] = dict(
        name=t.name, primary_key=list(t.primary_key), write_disposition="merge", max_table_nesting=0
    )
    if t.cursor:
        # no dedup by key at the boundary: ChangedRows keeps the boundary records that changed
        # a record without a cursor value (null_cursor = "include") is staged; under
        # "quarantine" it is held before this step (``_checked``)
        cursor: dlt.sources.incremental[Any] = dlt.sources.incremental(
            t.cursor, primary_key=[], on_cursor_value_missing="include"
        )

        @dlt.resource(**hints)
        def records(since: Any = cursor) -> Iterable[Any]:
            yield from _checked(job, t, _pages(read(job, t, since.last_value)), keys)

    else:

        @dlt.resource(**hints)
        def records() -> Iterable[Any]:
            yield from _checked(job, t, _pages(read(job, t, None)), keys)

    return records()


def _checked(
    job: JobConfig, t: TableConfig, pages: Iterable[list[Any]], keys: KeyCheck
) -> Iterator[list[Any]]:
    """``pages`` less the records held back, once checked (``keys``: the table's
    ``KeyCheck``, which keeps what it held):

    - a record without a value in a key column is held (quarantined with its reason), as
      is one without a cursor value under ``null_cursor = "quarantine"``, and one with NaN
      or an infinity anywhere in it (``KeyCheck.hold_non_finite``: dlt would stage NULL);
    - a top-level integer staging cannot keep (beyond 64 bits) stops the read naming
      table, key, field and value (pyarrow's own error named none of them);
    - every record's key is counted (in a temporary DuckDB file: memory bounded, not by
      the read); a key read twice in one extraction stops it after the last page with a
      ``ConfigError`` naming up to three keys, before anything is staged (dlt would keep
      one of the records, or with ``DEDUPLICATED`` both). Keys are counted as staging
      will key them (``key_text``): 1, 1.0 and "1" are one key."""
    from deltaferry.errors import ConfigError
    from sources.names import cursor_value

    pk = list(t.primary_key)
    quarantine = t.cursor if t.cursor and t.null_cursor == "quarantine" else None
    try:
        for page in pages:
            kept = []
            for r in page:
                if isinstance(r, dict):
                    if keys.hold_unkeyed(r, "the source's record"):
                        continue
                    if quarantine and cursor_value(r, quarantine) is None:
                        keys.hold_records(
                            [r], quarantine, "cursor not null",
                            f"cursor field {quarantine} is null or missing in the source's "
                            'record (null_cursor = "quarantine"): held back until the record '
                            "has a cursor value",
                        )  # fmt: skip
                        continue
                    if keys.hold_non_finite(r, "the source's record", nested=True):
                        continue
                    _refuse_wide_ints(job, t, r)
                kept.append(r)
            if not kept:
                continue
            texts = {
                c: [key_text(r.get(c)) if isinstance(r, dict) else None for r in kept] for c in pk
            }
            keys.note(pa.table({c: pa.array(v, pa.string()) for c, v in texts.items()}))
            yield kept
        message = keys.duplicates()
        if message:
            raise ConfigError(message)
    finally:
        keys.close()  # the key counts' memory, freed before the load (the held rows stay)


def key_text(value: Any) -> str | None:
    """A record's key value as text, as staging keys it whatever type the column gets: a
    whole number is its digits whether it came as an integer, a float or a
    Decimal (1, 1.0, -0.0 and 0 are "1", "1", "0", "0"), other floats their shortest
    text, text as it is (so 7 and "7", one key once staged, are one here), anything else
    its JSON text. None stays None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, Decimal)):
        try:
            if value == int(value):
                return str(int(value))
        except (OverflowError, ValueError, ArithmeticError):  # inf, nan
            pass
        return repr(float(value)) if isinstance(value, float) else str(value)
    return json.dumps(value, default=str, sort_keys=True)


_INT64 = (-(2**63), 2**63 - 1)


def _refuse_wide_ints(job: JobConfig, t: TableConfig, record: dict[str, Any]) -> None:
    """``TerminalError`` naming table, key, field and value for a top-level integer beyond
    64 bits (staging's widest integer)."""
    for name, value in record.items():
        if type(value) is int and not _INT64[0] <= value <= _INT64[1]:
            from deltaferry.errors import TerminalError

            key = json.dumps({c: record.get(c) for c in t.primary_key}, default=str)
            raise TerminalError(
                f"job '{job.name}' table '{t.name}': record {key} field '{name}' value {value} "
                "does not fit a 64-bit integer, which staging keeps; send it as text (or a "
                "Decimal) from the source; nothing of the read is staged"
            )


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

    from deltaferry.errors import TransientError

    try:
        refit_staging(job, pipeline)
        finish_stopped_loads(pipeline, job)  # packages an earlier process stopped loading
        if pipeline.has_pending_data:
            # packages an earlier process extracted: dlt's run() would load only those and
            # drop ``data`` unread ("The data you passed to the run function will not be
            # extracted"), so they are loaded first, then ``data`` is run
            pipeline.normalize()
            pipeline.load()
        # dlt's run() declares ``loader_file_format: TLoaderFileFormat = None`` (None: its default)
        info = pipeline.run(data, loader_file_format=loader_file_format)  # type: ignore[arg-type]
        drop_merge_staging(pipeline)
        prune_loaded_packages(pipeline)
        return info
    except PipelineStepFailed as e:
        raise_if_interrupt_within(e)  # Ctrl-C inside dlt: the package stays for the next run
        error = _step_error(job, e, classify, scrub)
        if not isinstance(error, TransientError):
            # a package dlt kept pending would be replayed, and fail, first on every later run
            abort_pending(pipeline, str(error))
        raise error from (e if scrub is None else None)


def _step_error(
    job: JobConfig,
    e: Any,
    classify: Callable[[BaseException], BaseException | None] | None,
    scrub: Callable[[str], str] | None,
) -> BaseException:
    """The deltaferry error ``run_load`` raises for dlt's ``PipelineStepFailed`` ``e``."""
    from deltaferry.errors import DeltaferryError, TerminalError, TransientError

    ours = find_cause(e, lambda x: isinstance(x, DeltaferryError))
    if ours is not None:
        return table_error(job, e, ours)
    mapped = classify(e) if classify is not None else None
    if mapped is not None:
        return table_error(job, e, mapped)
    net = find_cause(e, _is_network_error)
    if net is not None:
        return TransientError(
            f"job '{job.name}': extract step '{e.step}' failed: {type(net).__name__} "
            "(the source did not answer, or the connection broke); retried"
        )
    if e.step in ("normalize", "load"):
        return TerminalError(load_failure(job, e))
    text = str(e.__cause__ or e.exception)
    return TerminalError(
        f"job '{job.name}': extract step '{e.step}' failed: {scrub(text) if scrub else text}"
    )


def failed_pipe(text: str) -> str | None:
    """The table whose dlt pipe a dlt step error names ("processing pipe `t`", a read again
    by key's ``t__recreated`` as ``t``), or None."""
    import re

    pipe = re.search(r"processing pipe [`']([^`']+)[`']", text)
    return pipe.group(1).removesuffix("__recreated") if pipe else None


def table_error(job: JobConfig, e: BaseException, error: BaseException) -> BaseException:
    """``error``, a plain ``TerminalError`` a source raised inside one table's dlt pipe
    (dlt's step error ``e`` names it: a value the table's read refuses, an answer of
    another shape), as that table's ``TableReadError``: the job's other tables go on
    (``deltaferry/extract.py``) and the run fails naming it. Any other error as it is."""
    from deltaferry.errors import TableReadError, TerminalError

    if type(error) is not TerminalError:
        return error
    name = failed_pipe(str(e))
    if name not in {t.name for t in job.tables}:
        return error
    return TableReadError(str(error), name)


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
