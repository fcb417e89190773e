"""A job as deltaferry works with it: ``JobConfig`` and its ``TableConfig``s, immutable,
built from the jobs file by ``deltaferry/job_models.py`` (and read through
``deltaferry/config.py:load_job``), plus what they need to know about source kinds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltaferry.errors import ConfigError

# what a run does with a source row whose cursor is NULL (see TableConfig.null_cursor)
NULL_CURSOR_POLICIES = ("include", "quarantine")


def source_kinds() -> list[str]:
    """Source kinds: the packages under ``sources/`` that have a ``settings.py``."""
    import sources

    root = Path(sources.__file__).parent
    return sorted(p.name for p in root.iterdir() if (p / "settings.py").is_file())


def source_settings(kind: str) -> Any:
    """The ``settings`` module of a source kind: ``Job`` and ``Table``, the models of the
    job and table settings it adds (both optional), and its constants."""
    import importlib

    return importlib.import_module(f"sources.{kind}.settings")


@dataclass(frozen=True)
class TableConfig:
    """One source table: key, cursor, delete detection and contract."""

    name: str
    primary_key: tuple[str, ...]
    cursor: str | None  # None: full-compare mode (every run reads the whole table)
    deletes: str  # "none" | "reconcile" | "soft:<column>"
    contract: str  # "module:ClassName"
    # settings of the job's source kind for this table (see sources/<kind>/settings.py)
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # the contract version the source's rows have (default: the newest of the chain)
    source_version: int | None = None
    # a source row whose cursor is NULL: "include" reads it on every run and stages it when
    # its content changed (no row is ever skipped); "quarantine" holds it back, recorded
    # with its reason, until the source gives it a cursor value
    null_cursor: str = "include"

    @property
    def soft_delete_column(self) -> str | None:
        return soft_column(self.deletes)


@dataclass(frozen=True)
class JobConfig:
    """One sync job: a source, its tables, and the lake it publishes to."""

    name: str
    source: str
    url: str  # may be a reference "env:VAR"; resolve with ``source_url()``
    lake: str
    tables: tuple[TableConfig, ...]
    max_quarantine_ratio: float = 0.05
    rows_per_file: int = 500_000
    # a cut of more rows is published as several batches, each a range of keys
    max_batch_rows: int = 1_000_000
    chunk_size: int = 50_000
    max_reconcile_delete_ratio: float = 0.5
    producer_id: str = "default"
    # several producers publish this job's tables, each to its own chain
    # (<job>/<table>/producers/<producer_id>/); readers merge the chains
    multi_producer: bool = False
    # another producer's logical clock further ahead of ours than this is logged as drift
    max_clock_skew_seconds: float = 300.0
    # what a run does when the source's columns drift from the contract (contracts/drift.py)
    drift: str = "freeze"
    # a reader not seen for longer than this no longer holds the contract version back
    reader_timeout_seconds: float = 7 * 24 * 3600.0
    # publishing below the newest contract version: also publish each batch at the newest
    dual_publish: bool = False
    base_dir: Path = field(default_factory=Path.cwd)
    # settings of the job's source kind (see sources/<kind>/settings.py)
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # when `deltaferry serve` runs the job: seconds between runs, or a cron expression
    schedule: int | str | None = None
    # a table whose newest published change is older than this raises deltaferry.lag.exceeded
    max_lag_seconds: float | None = None
    # the IANA time zone that naive source timestamps (no offset) are taken in; published
    # timestamps are the same instants in UTC
    timezone: str = "UTC"

    @property
    def chain(self) -> str | None:
        """This producer's chain in the lake: its id when several producers publish the
        job's tables, None for the table's own single chain."""
        return self.producer_id if self.multi_producer else None

    def table(self, name: str) -> TableConfig:
        for t in self.tables:
            if t.name == name:
                return t
        raise ConfigError(
            f"job '{self.name}' has no table '{name}' (tables: {', '.join(t.name for t in self.tables)})"
        )

    def source_url(self) -> str:
        """The connection URL with secret references resolved. Never log the result."""
        if self.url.startswith("env:"):
            var = self.url[4:]
            value = os.environ.get(var)
            if not value:
                raise ConfigError(
                    f"job '{self.name}': source url refers to environment variable {var}, which is not set"
                )
            return value
        return self.url

    def secret(self, value: Any, what: str) -> Any:
        """A setting that may be given as ``env:VAR``, resolved (never log the result)."""
        if isinstance(value, str) and value.startswith("env:"):
            var = value[4:]
            resolved = os.environ.get(var)
            if not resolved:
                raise ConfigError(
                    f"job '{self.name}': {what} refers to environment variable {var}, which is not set"
                )
            return resolved
        return value


def soft_column(deletes: str) -> str | None:
    """The column of ``deletes = "soft:<column>"``, else None."""
    return deletes.split(":", 1)[1] if deletes.startswith("soft:") else None
