"""Failpoints: stop the process at an exact commit point, for crash-recovery tests.

Enabled only through the environment: ``DELTAFERRY_FAILPOINT=<name>`` makes the
named point fire; ``DELTAFERRY_FAILPOINT_ACTION`` is ``kill`` (SIGKILL, the
default: nothing after it runs, not even ``finally``) or ``raise``. Points:
``after_extract``, ``after_plan``, ``after_part_upload`` (after each data object;
``DELTAFERRY_FAILPOINT_SKIP=n`` lets the first n hits pass), ``after_upload``,
``after_manifest`` (stored, reply not yet used), ``before_checkpoint``.

The in-process simulator (``tests/support/sim``) sets a hook instead (:func:`set_hook`),
which decides at every hit, from its seed, whether the process "crashes" there; and it
turns on deliberate protocol bugs (:data:`BUGS`, :func:`bug`) to show that it catches
them. Neither can be set from the environment: production code never runs with them.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
# deliberate protocol bugs the simulator must catch (tests/test_simulation.py), each where
# the code checks ``bug(name)``:
BUGS = {
    # sync_steps: the checkpoint advances before the manifest is stored
    "checkpoint_before_manifest",
    # agreement: the lake-head check is skipped (a producer writes to a lake it disagrees with)
    "skip_lake_head_check",
    # pull: a batch's rows are committed before (not with) the replica's checkpoint (one
    # producer's chain, or several producers' merge)
    "apply_outside_transaction",
    # listings: manifest keys taken in the order (and number) the store returned them
    "trust_listing_order",
    # split cuts: the cut's loads count as published when its first range commits
    "commit_open_cut_early",
    # the manifest is written with a plain put (a racing writer's manifest is replaced)
    "overwrite_manifest",
    # several producers: a batch's logical time ignores the other producers' heads it
    # sees (its own clock and chain only)
    "hlc_ignores_others",
    # several producers: a key's winner is the version that arrived last, not the one
    # with the later logical time
    "merge_by_arrival",
    # several producers: the override log's pins are not applied (the automatic winner stays)
    "overrides_ignored",
    # several producers: a version that had seen the one it replaces (a hand-off) is
    # recorded as a conflict
    "handoff_as_conflict",
}
_bugs: set[str] = set()
_hook: Callable[[str], None] | None = None
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


class SimulatedCrash(BaseException):
    """The simulator's stand-in for SIGKILL (raised only by its hook, never in production).
    Code that writes state on its way out of an error (a run's row finished ``failed``,
    the operations log's failed step, a reader's record in the lake) lets it pass without
    writing, as a killed process would: :func:`killed`."""


def killed(e: BaseException) -> bool:
    """Whether ``e`` stands for the process being killed here (nothing may be written on
    the way out)."""
    return isinstance(e, SimulatedCrash)


def set_hook(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(name)`` at every failpoint hit (it may raise); None removes it."""
    global _hook
    _hook = hook


def bug(name: str) -> bool:
    """Whether the deliberate protocol bug ``name`` (one of :data:`BUGS`) is on."""
    return name in _bugs


@contextmanager
def bugs_on(*names: str) -> Iterator[None]:
    """Turn on deliberate protocol bugs for the block (the simulator's teeth tests)."""
    unknown = set(names) - BUGS
    if unknown:
        raise ValueError(f"unknown bug(s) {sorted(unknown)}; known: {sorted(BUGS)}")
    _bugs.update(names)
    try:
        yield
    finally:
        _bugs.difference_update(names)


def failpoint(name: str) -> None:
    if _hook is not None:
        _hook(name)
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
