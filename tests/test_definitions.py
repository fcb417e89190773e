"""Smoke: every definition in the repository loads (jobs file, contracts, flow, deployments)."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from contracts import load_contract
from deltaferry.config import load_jobs

ROOT = Path(__file__).resolve().parents[1]


def test_example_jobs_file_and_its_contracts_load():
    jobs = load_jobs(ROOT / "deltaferry.toml")
    assert "shop" in jobs
    for job in jobs.values():
        for t in job.tables:
            assert load_contract(t.contract, where=t.name).columns


def test_deployments_point_at_the_flow():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        module, _, name = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        assert flow.name == "deltaferry-sync"
        assert d["concurrency_limit"]["limit"] == 1
        assert d["parameters"]["job"] in load_jobs(ROOT / "deltaferry.toml")
