"""The jobs file: what to sync, from where, to which lake.

Resolution order for the file: explicit path, ``$DELTAFERRY_CONFIG``,
``./deltaferry.toml``. State lives under ``$DELTAFERRY_HOME`` (default
``./.deltaferry``).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltaferry.errors import ConfigError
from deltaferry.settings import from_env

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_PRODUCER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_JOB_KEYS = {
    "chunk_size",
    "source",
    "url",
    "lake",
    "tables",
    "max_quarantine_ratio",
    "rows_per_file",
    "producer_id",
    "multi_producer",
    "drift",
    "reader_timeout_seconds",
    "dual_publish",
    "max_clock_skew_seconds",
    "contract",
    "max_reconcile_delete_ratio",
    "schedule",
    "max_lag_seconds",
    "timezone",
}
_TABLE_KEYS = {
    "name",
    "primary_key",
    "cursor",
    "deletes",
    "contract",
    "source_version",
    "null_cursor",
}
# what a run does with a source row whose cursor is NULL (see TableConfig.null_cursor)
NULL_CURSOR_POLICIES = ("include", "quarantine")


def source_kinds() -> list[str]:
    """Source kinds: the packages under ``sources/`` that have a ``settings.py``."""
    import sources

    root = Path(sources.__file__).parent
    return sorted(p.name for p in root.iterdir() if (p / "settings.py").is_file())


def source_settings(kind: str) -> Any:
    """The ``settings`` module of a source kind: its extra job and table settings
    (``JOB_SETTINGS``, ``TABLE_SETTINGS``) and an optional ``check(job)``."""
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
        return self.deletes.split(":", 1)[1] if self.deletes.startswith("soft:") else None


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


def deltaferry_home() -> Path:
    """Root of all local state: staging, checkpoints, operations log (``$DELTAFERRY_HOME``,
    default ``./.deltaferry``, made absolute)."""
    return from_env().home.resolve()


def job_home(job: str) -> Path:
    path = deltaferry_home() / job
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The jobs file: ``explicit``, else ``$DELTAFERRY_CONFIG``, else ``./deltaferry.toml``."""
    if explicit:
        return Path(explicit)
    return from_env().config


def load_jobs(path: str | os.PathLike[str] | None = None) -> dict[str, JobConfig]:
    """Parse and check the jobs file; every problem is a one-line ConfigError."""
    p = config_path(path)
    if not p.exists():
        raise ConfigError(
            f"jobs file {p} not found (set DELTAFERRY_CONFIG or create deltaferry.toml)"
        )
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"jobs file {p} is not valid TOML: {e}") from None
    jobs_raw = raw.get("jobs")
    if not isinstance(jobs_raw, dict) or not jobs_raw:
        raise ConfigError(f"jobs file {p} defines no [jobs.<name>] section")
    base = p.resolve().parent
    return {name: _parse_job(name, body, base) for name, body in jobs_raw.items()}


def load_job(name: str, path: str | os.PathLike[str] | None = None) -> JobConfig:
    jobs = load_jobs(path)
    if name not in jobs:
        raise ConfigError(f"unknown job '{name}' (known: {', '.join(sorted(jobs)) or 'none'})")
    return jobs[name]


def _parse_job(name: str, body: Any, base: Path) -> JobConfig:
    where = f"job '{name}'"
    if not _IDENT.match(name):
        raise ConfigError(f"{where}: name must be lower-case letters, digits and underscores")
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: must be a table of settings")
    source = _req(body, "source", where)
    kinds = source_kinds()
    if source not in kinds:
        raise ConfigError(
            f"{where}: source kind '{source}' is not supported (supported: {', '.join(kinds)})"
        )
    settings = source_settings(source)
    job_keys = set(getattr(settings, "JOB_SETTINGS", ()))
    unknown = set(body) - _JOB_KEYS - job_keys
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))} for a {source} job"
        )
    url = _req(body, "url", where)
    lake = _req(body, "lake", where)
    from destinations.lake import parse_lake_url  # local import: config stays light

    parse_lake_url(lake, where=where, base=base)
    ratio = body.get("max_quarantine_ratio", 0.05)
    if not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(f"{where}: max_quarantine_ratio must be a number between 0 and 1")
    reconcile_ratio = body.get("max_reconcile_delete_ratio", 0.5)
    if not isinstance(reconcile_ratio, (int, float)) or not 0 <= reconcile_ratio <= 1:
        raise ConfigError(f"{where}: max_reconcile_delete_ratio must be a number between 0 and 1")
    rows_per_file = body.get("rows_per_file", 500_000)
    if not isinstance(rows_per_file, int) or rows_per_file < 1:
        raise ConfigError(f"{where}: rows_per_file must be a positive integer")
    chunk_size = body.get("chunk_size", 50_000)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"{where}: chunk_size must be a positive integer")
    schedule = body.get("schedule")
    if schedule is not None and not (
        (isinstance(schedule, int) and not isinstance(schedule, bool) and schedule >= 10)
        or (isinstance(schedule, str) and len(schedule.split()) == 5 and _valid_cron(schedule))
    ):
        raise ConfigError(
            f"{where}: schedule must be seconds between runs (10 or more) or a cron expression "
            f'such as "*/15 * * * *" (got {schedule!r})'
        )
    max_lag = body.get("max_lag_seconds")
    if max_lag is not None and (
        isinstance(max_lag, bool) or not isinstance(max_lag, (int, float)) or max_lag <= 0
    ):
        raise ConfigError(f"{where}: max_lag_seconds must be a positive number of seconds")
    multi = body.get("multi_producer", False)
    if not isinstance(multi, bool):
        raise ConfigError(f"{where}: multi_producer must be true or false")
    if multi and not (
        isinstance(body.get("producer_id"), str) and _PRODUCER.match(body["producer_id"])
    ):
        raise ConfigError(
            f"{where}: multi_producer = true needs producer_id naming this site (letters, digits, "
            f"'.', '_' or '-'; got {body.get('producer_id')!r})"
        )
    skew = body.get("max_clock_skew_seconds", 300)
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or skew <= 0:
        raise ConfigError(f"{where}: max_clock_skew_seconds must be a positive number of seconds")
    drift = body.get("drift", "freeze")
    if drift not in ("freeze", "quarantine", "evolve"):
        raise ConfigError(
            f"{where}: drift must be 'freeze', 'quarantine' or 'evolve' (got {drift!r})"
        )
    reader_timeout = body.get("reader_timeout_seconds", 7 * 24 * 3600)
    if (
        isinstance(reader_timeout, bool)
        or not isinstance(reader_timeout, (int, float))
        or reader_timeout <= 0
    ):
        raise ConfigError(f"{where}: reader_timeout_seconds must be a positive number of seconds")
    dual = body.get("dual_publish", False)
    if not isinstance(dual, bool):
        raise ConfigError(f"{where}: dual_publish must be true or false")
    timezone = body.get("timezone", "UTC")
    _check_timezone(where, timezone)
    tables_raw = body.get("tables")
    if not isinstance(tables_raw, list) or not tables_raw:
        raise ConfigError(f"{where}: needs at least one [[jobs.{name}.tables]] entry")
    default_contract = body.get("contract")
    table_keys = set(getattr(settings, "TABLE_SETTINGS", ()))
    default_deletes = getattr(settings, "DEFAULT_DELETES", None)
    tables = tuple(
        _parse_table(name, t, default_contract, table_keys, default_deletes) for t in tables_raw
    )
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a table is listed twice")
    job = JobConfig(
        name=name,
        source=source,
        url=url,
        lake=lake,
        tables=tables,
        max_quarantine_ratio=float(ratio),
        rows_per_file=rows_per_file,
        chunk_size=chunk_size,
        max_reconcile_delete_ratio=float(reconcile_ratio),
        producer_id=str(body.get("producer_id", "default")),
        multi_producer=multi,
        max_clock_skew_seconds=float(skew),
        drift=drift,
        reader_timeout_seconds=float(reader_timeout),
        dual_publish=dual,
        base_dir=base,
        options={k: v for k, v in body.items() if k in job_keys},
        schedule=schedule,
        max_lag_seconds=float(max_lag) if max_lag is not None else None,
        timezone=timezone,
    )
    check = getattr(settings, "check", None)
    if check is not None:
        check(job)
    return job


def _parse_table(
    job: str,
    body: Any,
    default_contract: str | None,
    source_keys: set[str],
    default_deletes: str | None = None,
) -> TableConfig:
    if not isinstance(body, dict):
        raise ConfigError(f"job '{job}': each tables entry must be a table of settings")
    tname = body.get("name")
    where = f"job '{job}' table '{tname}'"
    if not isinstance(tname, str) or not _IDENT.match(tname):
        raise ConfigError(f"job '{job}': every table needs a lower-case 'name' (got {tname!r})")
    unknown = set(body) - _TABLE_KEYS - source_keys
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    pk = body.get("primary_key")
    if isinstance(pk, str):
        pk = [pk]
    if not pk or not isinstance(pk, list) or not all(isinstance(c, str) and c for c in pk):
        raise ConfigError(
            f"{where}: primary_key is required (a column name or a list of column names)"
        )
    cursor = body.get("cursor")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise ConfigError(
            f"{where}: cursor must be a column that grows on every insert and update "
            "(or leave it out for full-compare mode)"
        )
    # without a cursor every run reads the whole table; hard deletes are then found for free
    # (unless the source kind says otherwise: a folder of files has no key set to compare)
    deletes = body.get("deletes", default_deletes or ("none" if cursor else "reconcile"))
    if not (
        deletes in ("none", "reconcile")
        or (isinstance(deletes, str) and deletes.startswith("soft:") and deletes[5:])
    ):
        raise ConfigError(
            f"{where}: deletes must be 'none', 'reconcile' or 'soft:<column>' (got {deletes!r})"
        )
    contract = body.get("contract")
    if contract is None and default_contract:
        contract = f"{default_contract}:{_class_name(tname)}"
    if not isinstance(contract, str) or ":" not in contract:
        raise ConfigError(
            f"{where}: contract is required as 'module:Class' (or a job-level contract module)"
        )
    _dlt_name_check(where, "table name", tname)
    soft = [deletes[5:]] if deletes.startswith("soft:") else []
    for col in [*pk, *([cursor] if cursor else []), *soft]:
        _dlt_name_check(where, "column", col)
    if cursor:
        from sources.names import cursor_path

        try:
            cursor_path(cursor)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}; use another cursor column") from None
    source_version = body.get("source_version")
    if source_version is not None and (
        isinstance(source_version, bool)
        or not isinstance(source_version, int)
        or source_version < 1
    ):
        raise ConfigError(f"{where}: source_version must be a contract version number (1, 2, ...)")
    null_cursor = body.get("null_cursor", "include")
    if null_cursor not in NULL_CURSOR_POLICIES:
        raise ConfigError(
            f"{where}: null_cursor must be 'include' or 'quarantine' (got {null_cursor!r})"
        )
    return TableConfig(
        name=tname,
        primary_key=tuple(pk),
        cursor=cursor,
        deletes=deletes,
        contract=contract,
        options={k: v for k, v in body.items() if k in source_keys},
        source_version=source_version,
        null_cursor=null_cursor,
    )


def _check_timezone(where: str, zone: Any) -> None:
    """An IANA time zone name Python knows (``UTC``, ``Europe/Berlin`` ...)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(zone, str) or not zone:
        raise ConfigError(f"{where}: timezone must be an IANA time zone name such as 'UTC'")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}: timezone {zone!r} is not a known IANA time zone (for example 'UTC', "
            "'Europe/Berlin', 'America/New_York')"
        ) from None


def _dlt_name_check(where: str, what: str, name: str) -> None:
    """Refuse a name staging would not keep exactly. Table names are lower-case identifiers
    (they name lake paths and files); column names are kept as the source has them, case
    and all, except what dlt's ``direct`` naming rewrites (see ``sources.names``)."""
    if what == "table name":
        from dlt.common.normalizers.naming.snake_case import NamingConvention

        normalized = NamingConvention().normalize_identifier(name)
        if normalized != name:
            raise ConfigError(
                f"{where}: {what} '{name}' would be staged by dlt as '{normalized}'; "
                "deltaferry needs table names that dlt keeps as they are"
            )
        return
    from sources.names import name_problem

    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{where}: {what} {name!r} {problem}; name a column staging keeps")


def _valid_cron(expr: str) -> bool:
    """A five-field cron expression Prefect can schedule (minute hour day month weekday)."""
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover - Prefect installs it
        return True
    return bool(croniter.is_valid(expr))


def _class_name(table: str) -> str:
    return "".join(part.capitalize() for part in table.split("_"))


def _req(body: dict[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' is required")
    return value
