"""Differential fidelity suite (issue 14): per source kind, hypothesis draws a table with
a random schema from the kind's common types and their edge values (tests/support/fidelity/types.py),
applies 1-4 random rounds of inserts, updates, deletes and ties at the cursor, runs
`deltaferry run` and `deltaferry pull` after each round, and compares the replica with
the source value by value through an oracle that uses no deltaferry code. Every example
converges exactly or is refused with the one-line error the type table predicts (nothing
of that round published); anything else fails the example.

Bounded by default (DELTAFERRY_FIDELITY_EXAMPLES examples per kind, default 8, derandomized
so CI is reproducible); a long run:

    DELTAFERRY_FIDELITY_EXAMPLES=500 .venv/bin/python -m pytest -s tests/test_fidelity.py

DELTAFERRY_FIDELITY_SEED picks another reproducible sequence, DELTAFERRY_FIDELITY_SHRINK=1
lets hypothesis shrink a failing example to a minimal one (slow: each try syncs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.support.fidelity import harness
from tests.support.fidelity.types import KINDS

EXAMPLES = int(os.environ.get("DELTAFERRY_FIDELITY_EXAMPLES", "8"))
SEED = int(os.environ.get("DELTAFERRY_FIDELITY_SEED", "14"))
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + (
    [Phase.shrink] if os.environ.get("DELTAFERRY_FIDELITY_SHRINK") == "1" else []
)
STATS = {kind: harness.Stats() for kind in KINDS}


@pytest.fixture(scope="module")
def fidelity_env(s3_endpoint, prefect_api, tmp_path_factory) -> Path:
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "DELTAFERRY_CONFIG")}
    os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    os.environ.pop("DELTAFERRY_CONFIG", None)
    yield tmp_path_factory.mktemp("fidelity")
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    for kind, s in STATS.items():
        if s.examples:
            print("\n" + s.line(kind), end="")


def _check(kind: str, workdir: Path, endpoint: str) -> None:
    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED == 14, phases=PHASES,
              database=None, suppress_health_check=list(HealthCheck), print_blob=True)
    @given(st.data())
    def example(data) -> None:
        t0 = time.monotonic()
        try:
            harness.run_example(kind, data.draw, workdir, endpoint, STATS[kind])
        except harness.Fault as e:
            if Phase.shrink in PHASES:
                raise
            STATS[kind].faults.append(str(e))
        finally:
            STATS[kind].seconds += time.monotonic() - t0

    example()
    faults = STATS[kind].faults
    assert not faults, f"{len(faults)} of {STATS[kind].examples} {kind} examples failed:\n\n" + \
        "\n\n".join(faults)


@pytest.mark.parametrize("kind", ["sqlite", "rest", "csv", "jsonl", "parquet"])
def test_fidelity(kind: str, fidelity_env: Path, s3_endpoint: str) -> None:
    _check(kind, fidelity_env, s3_endpoint)


def test_fidelity_postgres(fidelity_env: Path, s3_endpoint: str, postgres) -> None:
    harness.PostgresSource.server = postgres
    _check("postgres", fidelity_env, s3_endpoint)


def test_readme_type_matrix_is_generated_from_the_type_table() -> None:
    from tests.support.fidelity.matrix import BEGIN, section

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert BEGIN in readme and section() in readme, (
        "README's Type fidelity section is stale: paste `python -m tests.support.fidelity.matrix`"
    )
