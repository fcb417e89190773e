"""Sources: dlt pipelines that load a job's tables into its DuckDB staging file.

A source kind is a package ``sources/<kind>/`` (the jobs file's ``source = "<kind>"``):

- ``settings.py`` (imported when the jobs file is read; keep it light): ``Job`` and
  ``Table``, the pydantic models of the job and table settings the kind adds (subclasses
  of ``deltaferry.job_models.JobModel`` and ``TableModel``, both optional; their fields
  reach the source as ``job.options`` and ``table.options``);
- ``source.py`` (or, in a kind written before it was split out, the package's
  ``__init__.py``): ``preflight_source(job)``, which checks that the source answers and
  has every table (``ConfigError`` to fix, ``TransientError`` to retry), and
  ``extract(job) -> ExtractResult``, one incremental dlt load of every table into
  staging (see ``sources.load``). Keep the package's ``__init__.py`` light: importing
  ``settings.py`` runs it, so a heavy one (dlt is about a second to import) is paid by
  every command that reads the jobs file;
- ``preflight.py`` (optional): ``preflight_source(job)`` where it can be had without
  importing what ``extract`` needs (dlt): ``deltaferry run`` checks the source with it
  before its flow starts (``preflight_module``);
- ``quiet.py`` (optional): ``check(job) -> sources.quiet.Quiet``, a change check that
  needs no dlt, run before ``extract`` (see ``sources/quiet.py``).

``deltaferry new-source NAME`` writes a new one from a template.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any


def source_module(job: Any) -> ModuleType:
    """The module implementing the job's source kind: ``sources/<kind>/source.py`` where the
    kind has one, else the package ``sources/<kind>/`` itself."""
    return _kind_module(job, "source") or importlib.import_module(f"sources.{job.source}")


def preflight_module(job: Any) -> ModuleType:
    """The module with the job's source kind's ``preflight_source``:
    ``sources/<kind>/preflight.py`` where the kind has one (the SQL kind: no dlt to import
    for a check), else ``source_module(job)``."""
    return _kind_module(job, "preflight") or source_module(job)


def _kind_module(job: Any, name: str) -> ModuleType | None:
    """``sources/<kind>/<name>.py``, or None where the kind has none."""
    package = importlib.import_module(f"sources.{job.source}")
    if (Path(package.__file__ or "").parent / f"{name}.py").is_file():
        return importlib.import_module(f"sources.{job.source}.{name}")
    return None
