"""Sources: dlt pipelines that load a job's tables into its DuckDB staging file.

A source kind is a package ``sources/<kind>/`` (the jobs file's ``source = "<kind>"``):

- ``settings.py`` (imported when the jobs file is read; keep it light): ``JOB_SETTINGS``
  and ``TABLE_SETTINGS``, the extra settings the kind accepts, and optionally
  ``check(job)``, which raises ``ConfigError`` for bad values;
- ``__init__.py``: ``preflight_source(job)``, which checks that the source answers and
  has every table (``ConfigError`` to fix, ``TransientError`` to retry), and
  ``extract(job) -> ExtractResult``, one incremental dlt load of every table into
  staging (see ``sources.staging``).

``deltaferry new-source NAME`` writes a new one from a template.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def source_module(job: Any) -> ModuleType:
    """The package implementing the job's source kind."""
    return importlib.import_module(f"sources.{job.source}")
