"""`deltaferry new-source`: from nothing to a source that runs, validates and conforms.

The scaffold is written into a copy of the project, as a data engineer would in theirs;
the copy's own generated test is then run with pytest, as they would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# every test runs `deltaferry new-source` (and the scaffold's own tests) in child processes
pytestmark = pytest.mark.integration
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".venv-*", ".deltaferry", "test-output", "__pycache__", "*.egg-info"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=IGNORE)
    return copy


def _run(project: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(project),
        "DELTAFERRY_HOME": str(project / ".deltaferry"),
        "PREFECT_HOME": str(project / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("DELTAFERRY_CONFIG", None)
    env.pop("PREFECT_API_URL", None)  # the copy's runs use their own ephemeral server
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_new_source_from_a_csv_sample_runs_and_passes_its_own_tests(project: Path):
    sample = project / "orders.csv"
    sample.write_text(
        "order_id,customer,amount,paid,updated_at\n"
        "1,Ann,10.5,true,2026-11-01 10:00:00+00\n"
        "2,Bo,,false,2026-11-01 10:01:00+00\n"
        "3,Cé,7.25,true,2026-11-01 10:02:00+00\n"
    )
    r = _run(
        project,
        "-m",
        "deltaferry.cli",
        "new-source",
        "acme",
        "--sample",
        str(sample),
        "--primary-key",
        "order_id",
    )
    assert r.returncode == 0, r.stderr
    contract = (project / "contracts" / "acme" / "__init__.py").read_text()
    # drafted from what dlt staged: types, the key, and nullability seen in the sample
    assert "order_id: Series[int] = pa.Field(unique=True)" in contract
    assert "amount: Series[float] = pa.Field(nullable=True)" in contract
    assert "paid: Series[bool]" in contract
    assert "customer: Series[str]" in contract
    assert "updated_at: Series[pd.DatetimeTZDtype]" in contract
    jobs = (project / "deltaferry.toml").read_text()
    assert '[jobs.acme]\nsource = "acme"' in jobs and 'name = "orders"' in jobs
    assert (project / "sources" / "acme" / "sample" / "orders.jsonl").read_text().count("\n") == 3
    import yaml

    deployments = yaml.safe_load((project / "deployments" / "prefect.yaml").read_text())
    acme = next(d for d in deployments["deployments"] if d["name"] == "acme")
    assert acme["parameters"] == {"job": "acme"} and acme["concurrency_limit"]["limit"] == 1

    r = _run(project, "-m", "deltaferry.cli", "run", "acme")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "orders" in r.stdout and "created" in r.stdout

    r = _run(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_source_acme.py")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 passed" in r.stdout


def test_new_source_refuses_to_overwrite_and_leaves_nothing_half_written(project: Path):
    jobs_before = (project / "deltaferry.toml").read_text()
    deployments_before = (project / "deployments" / "prefect.yaml").read_text()
    r = _run(project, "-m", "deltaferry.cli", "new-source", "sql_database")
    assert r.returncode == 2 and "exists; pick another name" in r.stderr

    bad = project / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = _run(project, "-m", "deltaferry.cli", "new-source", "beta", "--sample", str(bad))
    assert r.returncode == 2
    assert "primary key 'id' is not a field of the sample (fields: a, b)" in r.stderr
    assert not (project / "sources" / "beta").exists()
    assert not (project / "contracts" / "beta").exists()
    assert (project / "deltaferry.toml").read_text() == jobs_before
    assert (project / "deployments" / "prefect.yaml").read_text() == deployments_before


def test_a_scaffold_that_fails_while_drafting_is_rolled_back(project: Path):
    jobs_before = (project / "deltaferry.toml").read_text()
    sample = project / "keys.jsonl"
    sample.write_text('{"id": 1, "name": "a"}\n{"id": null, "name": "b"}\n')
    r = _run(project, "-m", "deltaferry.cli", "new-source", "gamma", "--sample", str(sample))
    assert r.returncode == 2  # a configuration error: the key chosen is not every record's
    assert "new-source gamma: 1 sample record(s) have no value for primary key column(s) id" in r.stderr
    for path in ("sources/gamma", "contracts/gamma", "tests/test_source_gamma.py"):
        assert not (project / path).exists(), path
    assert (project / "deltaferry.toml").read_text() == jobs_before
    assert "gamma" not in (project / "deployments" / "prefect.yaml").read_text()


def test_the_readme_adding_a_source_commands_work_as_written(project: Path):
    """The README's "Adding a source" commands, run literally in a copy of the project."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Adding a source", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [
        [".venv/bin/deltaferry", "new-source"],
        [".venv/bin/deltaferry", "run"],
        [".venv/bin/python", "-m"],
    ]
    for argv in commands:
        program = {".venv/bin/deltaferry": ["-m", "deltaferry.cli"], ".venv/bin/python": []}
        r = _run(project, *program[argv[0]], *argv[1:])
        assert r.returncode == 0, f"{argv}: {r.stdout[-2000:]} {r.stderr[-2000:]}"
