"""The jobs file: what to sync, from where, to which lake.

Resolution order for the file: explicit path, ``$DELTAFERRY_CONFIG``,
``./deltaferry.toml``. State lives under ``$DELTAFERRY_HOME`` (default
``./.deltaferry``).

A job read from the file is a frozen ``JobConfig`` with its ``TableConfig``s: what the rest
of deltaferry uses. The file itself is read and checked by the pydantic models of
``deltaferry.job_models`` (with the settings each source kind adds in
``sources/<kind>/settings.py``); every problem is a one-line ``ConfigError`` (exit 2).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from deltaferry.errors import ConfigError
from deltaferry.job import (  # the parsed job; importable from here, where callers look
    NULL_CURSOR_POLICIES,
    JobConfig,
    TableConfig,
    soft_column,
    source_kinds,
    source_settings,
)
from deltaferry.job_models import parse_job
from deltaferry.settings import from_env

__all__ = [
    "NULL_CURSOR_POLICIES",
    "JobConfig",
    "TableConfig",
    "config_path",
    "deltaferry_home",
    "job_home",
    "load_job",
    "load_jobs",
    "soft_column",
    "source_kinds",
    "source_settings",
]


def deltaferry_home() -> Path:
    """Root of all local state: staging, checkpoints, operations log (``$DELTAFERRY_HOME``,
    default ``./.deltaferry``, made absolute)."""
    return from_env().home.resolve()


def job_home(job: str) -> Path:
    path = deltaferry_home() / job
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_home_file(path: Path, text: str) -> None:
    """Replace a small file of a job's home (remembered keys, cursor values, heads seen)
    atomically and durably: written beside it, flushed to disk, renamed over it, the
    directory flushed. A power loss leaves the old file or the new one, never an empty one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The jobs file: ``explicit``, else ``$DELTAFERRY_CONFIG``, else ``./deltaferry.toml``."""
    if explicit:
        return Path(explicit)
    return from_env().config


def load_jobs(path: str | os.PathLike[str] | None = None) -> dict[str, JobConfig]:
    """Parse and check the jobs file, every job of it; every problem is a one-line
    ConfigError."""
    jobs_raw, base = _jobs_sections(path)
    return {name: parse_job(name, body, base) for name, body in jobs_raw.items()}


def _jobs_sections(path: str | os.PathLike[str] | None) -> tuple[dict[str, Any], Path]:
    """The jobs file's ``[jobs.<name>]`` sections as TOML gives them, unchecked, and the
    directory relative paths in them start from; a file that is not a jobs file (missing,
    not TOML, no jobs, other top-level sections) is a one-line ConfigError."""
    p = config_path(path)
    if not p.exists():
        raise ConfigError(
            f"jobs file {p} not found (set DELTAFERRY_CONFIG or create deltaferry.toml)"
        )
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"jobs file {p} is not valid TOML: {e}") from None
    unknown = sorted(set(raw) - {"jobs"})
    if unknown:
        raise ConfigError(
            f"jobs file {p}: unknown section(s) {', '.join(unknown)} (jobs are [jobs.<name>] "
            "sections; nothing else belongs at the top level)"
        )
    jobs_raw = raw.get("jobs")
    if not isinstance(jobs_raw, dict) or not jobs_raw:
        raise ConfigError(f"jobs file {p} defines no [jobs.<name>] section")
    return jobs_raw, p.resolve().parent


def load_job(name: str, path: str | os.PathLike[str] | None = None) -> JobConfig:
    """The job ``name`` of the jobs file, parsed and checked: a ConfigError (one line) for
    a file that is not a jobs file, an unknown name or a problem of this job. Another job's
    problem is not this job's: a typo in a job being added does not stop the file's
    scheduled jobs (``jobs``, ``status``, ``run-all`` and ``serve`` check every job:
    ``load_jobs``)."""
    jobs_raw, base = _jobs_sections(path)
    if name not in jobs_raw:
        raise ConfigError(f"unknown job '{name}' (known: {', '.join(sorted(jobs_raw)) or 'none'})")
    return parse_job(name, jobs_raw[name], base)
