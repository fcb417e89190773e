"""Prefect task retries of deltaferry's steps, one policy for every flow: as many as
``DELTAFERRY_STEP_RETRIES``, only for ``TransientError`` (connection errors, timeouts, 5xx,
throttling; a terminal error fails the run at once), after delays drawn with exponential
backoff and full jitter from ``DELTAFERRY_RETRY_BASE_SECONDS``. Each retry is emitted as an
event naming its cause (``flows/report.py:emit_retry``)."""

from __future__ import annotations

import random
from typing import Any

from prefect.runtime import flow_run

from deltaferry.errors import TransientError
from deltaferry.settings import from_env
from flows.report import emit_retry


def full_jitter_delays(retries: int, base: float, cap: float = 60.0) -> list[float]:
    """Delays for ``retries`` attempts: uniform in [0, min(cap, base * 2**i)] ("full jitter")."""
    rng = random.Random()
    return [rng.uniform(0, min(cap, base * 2**i)) for i in range(retries)]


def only_transient(task: Any, run: Any, state: Any) -> bool:
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as e:  # pragma: no cover - defensive
            exc = e
    retrying = isinstance(exc, TransientError)
    if retrying:
        emit_retry(str(flow_run.parameters.get("job", "")), str(getattr(run, "name", "")), exc)
    return retrying


def step_retry_delays() -> tuple[int, list[float]]:
    """(retries, delay in seconds before each) of one task, from the settings as they are
    now; drawn per task, so retries of different steps are not synchronised."""
    env = from_env()
    return env.step_retries, full_jitter_delays(env.step_retries, env.retry_base_seconds)
