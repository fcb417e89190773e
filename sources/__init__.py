"""Sources: dlt pipelines that load a job's tables into its DuckDB staging file.

A source kind is a package ``sources/<kind>/`` (the jobs file's ``source = "<kind>"``):

- ``settings.py`` (imported when the jobs file is read; keep it light): ``Job`` and
  ``Table``, the pydantic models of the job and table settings the kind adds (subclasses
  of ``deltaferry.job_models.JobModel`` and ``TableModel``, both optional; their fields
  reach the source as ``job.options`` and ``table.options``);
- ``__init__.py``: ``preflight_source(job)``, which checks that the source answers and
  has every table (``ConfigError`` to fix, ``TransientError`` to retry), and
  ``extract(job) -> ExtractResult``, one incremental dlt load of every table into
  staging (see ``sources.load``).

``deltaferry new-source NAME`` writes a new one from a template.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def source_module(job: Any) -> ModuleType:
    """The package implementing the job's source kind."""
    return importlib.import_module(f"sources.{job.source}")
