"""The job's dlt pipeline: its working dir, its staging destination (encrypted or not),
the dlt settings every deltaferry pipeline runs with, and the naming convention its
staging was made under (``sources.names``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import dlt
import duckdb
from dlt.common.configuration.providers import ConfigProvider

from deltaferry import duck
from deltaferry.config import JobConfig, job_home
from deltaferry.settings import from_env
from sources.columns import STAGING_DATASET
from sources.staging import (  # the staging naming lives there: read without dlt
    PIPELINE_PREFIX,
    staging_naming,
    staging_path,
)

logger = logging.getLogger(__name__)


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
    # Ctrl-C is deltaferry's to handle (``deltaferry/shutdown.py``): dlt's own handler, on
    # during normalize and load, took it as "drain the job pool", then cleared it, and the
    # run went on to exit 0
    (("runtime",), "intercept_signals"): False,
}


# completed load packages dlt keeps in the pipeline dir (``load/loaded/<load id>``: the
# package's schema, state and job records, about 30 KB a table; the job files themselves
# are deleted, ``delete_completed_jobs``). dlt never removes them: a job run every 15
# minutes left 96 a day (2 GB a year for a two-table job). The newest are kept for an
# operator looking into a load.
KEEP_LOADED_PACKAGES = 10


def prune_loaded_packages(pipeline: dlt.Pipeline, keep: int = KEEP_LOADED_PACKAGES) -> int:
    """Delete all but the newest ``keep`` completed load packages of ``pipeline`` (dlt's
    own ``LoadStorage.delete_loaded_package``); returns how many were deleted. Nothing
    deltaferry reads is in them: staged rows carry their load id, and a package is only
    completed after its rows are in staging. Housekeeping: whatever fails here (a file
    system error, a package gone meanwhile, another dlt's storage layout) is left for the
    next run and never fails this one. Package ids not in dlt's timestamp form are kept
    and not counted."""
    try:
        storage = pipeline._get_load_storage()
        if not storage.is_storage_ready():
            return 0
        stamped = []
        for load_id in storage.list_loaded_packages():
            try:
                stamped.append((float(load_id), load_id))
            except ValueError:
                continue
    except Exception:  # noqa: BLE001 - housekeeping
        return 0
    deleted = 0
    for _, load_id in sorted(stamped)[: max(0, len(stamped) - keep)]:
        try:
            storage.delete_loaded_package(load_id)
        except Exception:  # noqa: BLE001 - housekeeping: the next run tries again
            continue
        deleted += 1
    return deleted


def drop_merge_staging(pipeline: dlt.Pipeline) -> bool:
    """Drop the staging dataset of ``pipeline``'s merge loads (``raw_staging``), which dlt
    leaves holding the last load's rows and empties with ``TRUNCATE`` at the start of the
    next merge load. After a first load of N rows that was a second copy of the table in
    ``staging.duckdb`` until the next run, and DuckDB pins memory in proportion to the rows a
    ``TRUNCATE``/``DELETE`` removes (a 10M-row table's fails at a 64MB ``memory_limit``;
    ``bench/README.md``, "DuckDB's memory limit is the growth"). Dropping is free; the next
    merge load makes the dataset again, as it does on a job's first load. Call it after a
    load completed. Housekeeping: a failure is left for the next load and never fails this
    one; returns whether the dataset was dropped."""
    try:
        with pipeline.sql_client() as client:
            name = client.fully_qualified_dataset_name(staging=True)
            client.execute_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    except Exception as e:  # noqa: BLE001 - housekeeping: the next load tries again
        logger.warning("dlt's merge staging of %s not dropped (the next load tries again): %s",
                       pipeline.pipeline_name, e)
        return False
    return True


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


def pipeline_for(job: JobConfig) -> tuple[dlt.Pipeline, Any]:
    """The job's dlt pipeline (working dir under the job's state dir) and the DuckDB
    connection it borrows when staging is encrypted (close it after the loads), or None.

    Names are staged under the naming convention dlt recorded for the job's staging, or,
    for a job that has staged nothing yet, ``direct``: source names exactly as they are
    (see ``sources.names``; check source columns with ``sources.names.check_columns``
    and ``staging_naming``)."""
    from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials

    path = staging_path(job.name)
    con = None
    if duck.encryption_key():
        con = duck.connect(path, alias="staging")  # its memory bounded there
        credentials = DuckDbCredentials(con, local_config={"schema": "staging.main", **duck.QUIET})
    else:
        # DuckDB's memory bounded as on our own connections (``duck.configure``), set by dlt
        # on each connection it opens: its default, 80% of RAM, grows with the table loaded
        limit = staging_limit(path) or duck.memory_limit()
        credentials = DuckDbCredentials(
            str(path), global_config={"memory_limit": limit}, local_config=dict(duck.QUIET)
        )
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
    _finish_abort(pipeline)
    return pipeline, con


# written beside the pipeline's working dir (it survives dlt's ``drop``) before deltaferry
# aborts the pipeline's pending load packages, removed once the abort is done. dlt's abort
# of an extracted package deletes the package first and rewinds the local state (the
# cursors the package advanced) after: a process killed between the two would keep the
# advanced cursors with no package to load, and the rows between the two cursor values
# would never be staged. A mark found by ``pipeline_for`` means an abort may not have ended.
ABORT_MARK_SUFFIX = ".abort.json"


def _abort_mark(pipeline: dlt.Pipeline) -> Path:
    return Path(pipeline.pipelines_dir) / f"{pipeline.pipeline_name}{ABORT_MARK_SUFFIX}"


def extracted_nothing(pipeline: dlt.Pipeline, staged: Mapping[str, Collection[str]]) -> bool:
    """Whether loading ``pipeline``'s pending load packages would change nothing in staging.
    ``staged``: per table (its name as the job gives it) the columns of its staged table.

    True when none is normalized yet (a package a crash left before its load is loaded as
    always), and every job file an extracted one holds is of dlt's own tables (``_dlt*``:
    its state) or a Parquet file of no rows (an Arrow read whose every row the content
    filter dropped) of a table in ``staged`` whose staged table has every column of the
    file. A file with a column staging lacks carries a schema change (a source column
    gained, NULL in every row, so no row's hash changed) that only its load applies; the
    file of a table never staged creates its staged table (a table whose every row was held
    back: later steps read it). A file of another format, of a table not in ``staged``, or
    one that cannot be read counts as a change (the load goes on as always)."""
    try:
        return _extracted_nothing(pipeline, staged)
    except Exception as e:  # noqa: BLE001 - an optimisation: a doubt loads as always
        logger.warning("pending packages of %s not inspected (loaded as always): %s",
                       pipeline.pipeline_name, e)
        return False


def _extracted_nothing(pipeline: dlt.Pipeline, staged: Mapping[str, Collection[str]]) -> bool:
    import pyarrow.parquet as pq

    if pipeline.list_normalized_load_packages():
        return False
    schema = pipeline.default_schema if pipeline.default_schema_name else None
    prefix = getattr(schema, "_dlt_tables_prefix", "_dlt")  # dlt's own tables' names
    naming = schema.naming if schema is not None else None
    table = naming.normalize_table_identifier if naming else str
    column = naming.normalize_identifier if naming else str  # staged names are normalized
    tables = {table(name): set(columns) for name, columns in staged.items()}
    for load_id in pipeline.list_extracted_load_packages():
        for listed in pipeline.get_load_package_info(load_id).jobs.values():
            for j in listed:
                name = j.job_file_info.table_name
                if name.startswith(prefix):
                    continue
                if j.job_file_info.file_format != "parquet" or name not in tables:
                    return False
                meta = pq.read_metadata(j.file_path)
                columns = tables[name]
                named = {column(c) for c in meta.schema.names}
                if meta.num_rows or not columns or not named <= columns:
                    return False
    return True


def left_mid_load(pipeline: dlt.Pipeline) -> list[str]:
    """The load ids of ``pipeline``'s normalized packages not yet loaded: ones an earlier
    process left, stopped (killed, interrupted) in their load, which dlt loads again before
    anything new (:func:`finish_stopped_loads`)."""
    return sorted(pipeline.list_normalized_load_packages())


def finish_stopped_loads(pipeline: dlt.Pipeline, job: JobConfig) -> list[str]:
    """Load the packages an earlier process left stopped in their load (normalized, not
    loaded: killed or interrupted), before the run extracts anything, then remove the
    copies their resumed load left (:func:`remove_replayed_copies`). Returns their load ids
    (``[]``: none, nothing done). The plan finds them among staging's completed loads as
    any other (``deltaferry/cut.py:new_load_ids``).

    First, not with the run's own package: a failure of the run before its load (a key
    read twice, a read error) aborts the pending packages, and a stopped package whose merge
    had already reached the staged table would have been aborted with it, its rows staged
    under a load id no completed load names, never published. Raises what dlt's
    ``load()`` raises (``PipelineStepFailed``), for the caller's handling of a failed
    load. Both ``sources.load.run_load`` and ``sources.sql_database.reads.run_reads`` start
    with it."""
    stopped = left_mid_load(pipeline)
    if stopped:
        refit_staging(job, pipeline)
        pipeline.load()
        remove_replayed_copies(pipeline, job, stopped)
    return stopped


def remove_replayed_copies(pipeline: dlt.Pipeline, job: JobConfig, load_ids: list[str]) -> int:
    """Delete the extra copies of staged rows that loading ``load_ids`` again left; returns
    how many were deleted.

    dlt loads a merge in two jobs: a copy of the package's files into its merge staging
    dataset, then the merge from there. A process stopped after the copy's ``INSERT`` but
    before dlt marked the job done leaves it to be run again, and dlt does not empty its
    merge staging dataset when it resumes a package, so the second copy doubles those rows.
    Staged without dlt's own deduplication (``DEDUPLICATED``: a package holds each key
    once), both copies reached staging, and every later cut of the table stopped at "key
    comes 2 times" until the table was reset (found by the chaos scenarios, seed 7066).
    Copies are rows of one key with the same load id: within one package a key is read or
    tombstoned once, so all but the first stored are such copies, byte for byte the same.
    They are deleted by ``rowid``: the row kept is not rewritten. Cost: the rows of
    ``load_ids``, only after a process stopped mid-load."""
    if not load_ids:
        return 0
    removed = 0
    with pipeline.sql_client() as client:
        dataset = client.fully_qualified_dataset_name()
        staged = {
            r[0]
            for r in client.execute_sql(
                "SELECT table_name FROM duckdb_columns()"
                " WHERE schema_name = ? AND column_name = '_dlt_load_id'",
                STAGING_DATASET,
            )
            or []
        }
        marks = ", ".join("?" for _ in load_ids)
        # names as the job's staging convention gives them (``direct``: as the source's;
        # a job staged under dlt's older ``snake_case`` has them normalized)
        naming = pipeline.default_schema.naming if pipeline.default_schema_name else None
        table_name = naming.normalize_table_identifier if naming else str
        column_name = naming.normalize_identifier if naming else str
        for t in job.tables:
            name = table_name(t.name)
            if name not in staged or not t.primary_key:
                continue  # not staged yet: nothing of it loaded, nothing copied
            table = f"{dataset}.{duck.ident(name)}"
            keys = ", ".join(duck.ident(column_name(c)) for c in t.primary_key)
            rows = client.execute_sql(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM (SELECT rowid,"
                f" row_number() OVER (PARTITION BY {keys}, _dlt_load_id ORDER BY rowid) AS n"
                f" FROM {table} WHERE _dlt_load_id IN ({marks})) WHERE n > 1) RETURNING 1",
                *load_ids,
            )
            count = len(rows or [])
            if count:
                logger.warning(
                    "job '%s' table '%s': %d staged row(s) were copies left by loading "
                    "package(s) %s again after a stopped run; removed",
                    job.name, t.name, count, ", ".join(load_ids),
                )
            removed += count
    return removed


def abort_pending(pipeline: dlt.Pipeline, why: str) -> list[str]:
    """Abort every pending load package of ``pipeline`` and rewind its local state and
    schemas to where the oldest began (dlt's ``Pipeline.abort_packages``), after a step
    failed terminally: dlt keeps a package that failed to normalize (and one whose load
    failed outside a load job) pending and replays it first on every later run, so the run
    fails identically until the job is reset, even once the source is fixed. The rewound
    state is the one committed with the last completed load, so the next run reads the same
    rows again. Crash-safe: a mark (``ABORT_MARK_SUFFIX``) is written durably before the abort
    and removed after it; ``pipeline_for`` finishes an abort a mark outlived.

    ``why`` (one line) is kept in the mark for an operator. Returns the load ids aborted (none
    pending: ``[]``). An abort that fails is logged and left to the next ``pipeline_for``:
    the caller's error is the one to report."""
    from deltaferry.config import write_home_file

    try:
        plan = pipeline.abort_packages(dry_run=True)
        if plan is None:
            return []
        ids = sorted(
            {
                *plan["extracted_packages_to_delete"],
                *plan["packages_to_delete"],
                *([plan["package_to_abort"]["load_id"]] if plan["package_to_abort"] else []),
            }
        )
        mark = _abort_mark(pipeline)
        write_home_file(mark, json.dumps({"load_ids": ids, "why": why}))
        pipeline.abort_packages()
        _remove_left_folders(pipeline, ids)
        mark.unlink()
        return ids
    except Exception as e:  # noqa: BLE001 - finished by the next pipeline_for
        logger.warning(
            "pending load packages of %s not aborted now (the next run finishes it): %s",
            pipeline.pipeline_name, e,
        )
        return []


def _remove_left_folders(pipeline: dlt.Pipeline, load_ids: list[str]) -> None:
    """Remove the folders dlt's abort leaves under ``load/new`` for the aborted ``load_ids``
    (a package whose normalize failed left its empty folder there, one more every failed
    run). Only aborted ids are touched; anything else there is dlt's."""
    import shutil

    new = Path(pipeline.working_dir) / "load" / "new"
    for load_id in load_ids:
        folder = new / load_id
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _finish_abort(pipeline: dlt.Pipeline) -> None:
    """Finish an abort that ``abort_pending`` began and a crash (or an error) cut short:
    the local state, schemas and pending packages are dropped and rebuilt from staging
    (dlt's ``drop`` and ``sync_destination``), which holds the state and schema committed
    with the last completed load. A job that never completed a load starts afresh."""
    mark = _abort_mark(pipeline)
    if not mark.exists():
        return
    try:
        why = json.loads(mark.read_text()).get("why", "")
    except (OSError, ValueError):
        why = ""
    pipeline.drop()
    pipeline.sync_destination()
    mark.unlink()
    logger.warning(
        "%s: an abort of pending load packages had not ended (%s); local dlt state rebuilt "
        "from staging's last completed load", pipeline.pipeline_name, why or "no reason kept",
    )


def staging_limit(path: Path) -> str | None:
    """The ``memory_limit`` dlt's connections to the staging file ``path`` get: the
    configured limit plus what the rows staged so far may pin once dlt's merge deletes
    among them (``duck.fitted_limit``, every row); the configured limit before the first
    load. Rows a load brings are not counted: dlt's merge deletes only the old versions of
    the keys it brings, and a load's new rows hold no deleted row. None when the file
    cannot be read now (open read-write elsewhere in this process): keep the limit known.
    Unencrypted staging only (an encrypted one is fitted on its borrowed connection)."""
    if not path.exists():
        return duck.memory_limit()
    try:
        # the catalog only (every row counted, none read): not ``duck.connect``, whose
        # ``configure`` would count the live rows of tables holding deleted rows for nothing
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as e:  # open read-write elsewhere in this process: not counted
        logger.warning("staging %s not read for its memory limit: %s", path, e)
        return None
    try:
        return duck.fitted_limit(con)
    finally:
        con.close()


def refit_staging(job: JobConfig, pipeline: dlt.Pipeline) -> None:
    """Fit the ``memory_limit`` of a ``pipeline_for`` pipeline's staging to the rows staged
    now, before a load (``run_load``, ``sources.sql_database.reads.run_reads``): a run
    loads several times (first load or scanner seed, reads by key, reconcile, tombstones),
    and each load's merge may delete among the rows the earlier ones staged. For the
    connections dlt opens next (``global_config``, applied at each connect: a new database
    instance each time, so the limit follows the rows, down too), or the borrowed
    connection's (encrypted staging: raised only, as it stays open)."""
    credentials = pipeline.destination.config_params.get("credentials")
    borrowed = getattr(credentials, "external_conn", lambda: None)()
    if borrowed is not None:
        duck.fit_memory_limit(borrowed)
    elif credentials is not None and "memory_limit" in (credentials.global_config or {}):
        limit = staging_limit(staging_path(job.name))
        if limit is not None:
            credentials.global_config["memory_limit"] = limit


def schema_columns(pipeline: dlt.Pipeline, table: str) -> list[str]:
    """The columns dlt's schema of ``pipeline`` (its local copy, as of the last load or
    abort) has for ``table``, as staging names them, its own ``_dlt_*`` columns left out;
    ``[]`` before the table's first load."""
    return list(schema_types(pipeline, table))


def schema_types(pipeline: dlt.Pipeline, table: str) -> dict[str, str | None]:
    """``schema_columns`` with dlt's data type of each (``"timestamp"``, ``"text"``, ...;
    None for a column dlt has not typed yet)."""
    if not pipeline.default_schema_name:
        return {}
    columns = pipeline.default_schema.tables.get(table, {}).get("columns", {})
    return {
        name: column.get("data_type")
        for name, column in columns.items()
        if not name.startswith("_dlt_")
    }


def pipeline_naming(pipeline: dlt.Pipeline) -> str:
    """The naming convention of a ``pipeline_for`` pipeline's staging: the name it gave the
    destination (``staging_naming``)."""
    convention = pipeline.destination.capabilities().naming_convention
    assert isinstance(convention, str), convention  # pipeline_for passes a name
    return convention


