"""Failpoints: stop the process at an exact commit point, for crash-recovery tests.

Enabled only through the environment: ``DELTAFERRY_FAILPOINT=<name>`` makes the
named point fire; ``DELTAFERRY_FAILPOINT_ACTION`` is ``kill`` (SIGKILL, the
default: nothing after it runs, not even ``finally``) or ``raise``. Points:
``after_extract``, ``after_plan``, ``after_part_upload`` (after each data object;
``DELTAFERRY_FAILPOINT_SKIP=n`` lets the first n hits pass), ``after_upload``,
``after_manifest`` (stored, reply not yet used), ``before_checkpoint``.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Literal

from deltaferry.settings import EnvSettings, read, var

POINTS = (
    "after_extract",
    "after_plan",
    "after_part_upload",
    "after_upload",
    "after_manifest",
    "before_checkpoint",
)
_hits: dict[str, int] = {}
_lock = threading.Lock()  # parts are uploaded from several threads


class FailpointSettings(EnvSettings):
    """The crash tests' variables (read through ``deltaferry.settings.read``)."""

    failpoint: str | None = var(None, "name", "the point that fires (one of POINTS)")
    failpoint_action: Literal["kill", "raise"] = var(
        "kill", "action", "`kill` sends SIGKILL to this process, `raise` raises FailpointHit"
    )
    failpoint_skip: int = var(0, "hits", "the first n hits pass", ge=0)


class FailpointHit(RuntimeError):
    """Raised by a failpoint whose action is ``raise``."""


def failpoint(name: str) -> None:
    env = read(FailpointSettings)  # now: tests set these per test
    if env.failpoint != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        passed = _hits[name] <= env.failpoint_skip
    if passed:
        return
    if env.failpoint_action == "raise":
        raise FailpointHit(f"failpoint {name}")
    os.kill(os.getpid(), signal.SIGKILL)
