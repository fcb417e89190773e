"""Every source kind passes the conformance test (tests/support/conformance.py)."""

from __future__ import annotations

import pytest

from tests.support.conformance import CsvDrops, RestCollection, SqliteTable, run_conformance


def test_sql_database_conforms(conformance_job):
    run_conformance(SqliteTable(), conformance_job)


def test_rest_api_conforms(conformance_job, monkeypatch: pytest.MonkeyPatch):
    run_conformance(RestCollection(monkeypatch), conformance_job)


def test_files_conforms(conformance_job):
    run_conformance(CsvDrops(), conformance_job)
