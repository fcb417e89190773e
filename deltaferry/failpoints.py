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

POINTS = (
    "after_extract",
    "after_plan",
    "after_part_upload",
    "after_upload",
    "after_manifest",
    "before_checkpoint",
)
_hits: dict[str, int] = {}


class FailpointHit(RuntimeError):
    """Raised by a failpoint whose action is ``raise``."""


def failpoint(name: str) -> None:
    if os.environ.get("DELTAFERRY_FAILPOINT") != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] <= int(os.environ.get("DELTAFERRY_FAILPOINT_SKIP", "0")):
        return
    if os.environ.get("DELTAFERRY_FAILPOINT_ACTION", "kill") == "raise":
        raise FailpointHit(f"failpoint {name}")
    os.kill(os.getpid(), signal.SIGKILL)
