"""How a deltaferry process ends: without the interpreter's last full garbage collections,
and at Ctrl-C even when Python drops the interrupt.

When Python exits, it tears its modules down and runs full garbage collections over every
object the collector tracks: about 300,000 once Prefect, pandas, pandera, pydantic's models
and SQLAlchemy are loaded. Those passes took 0.5 s more after a no-op sync's last line than
after a bare Prefect flow's (0.77 s against 0.26 s), about half of what the no-op cost
beyond the bare flow (bench/README.md, "A no-op run: the end of the process").

:func:`end_without_final_collection` registers :func:`gc.freeze` as an exit handler: at
exit, the objects alive then are moved where the collector no longer looks. Every other
exit handler still runs (Prefect's log and event flushes, logging's shutdown), and module
teardown still frees by reference counting what holds files and DuckDB connections.
Objects kept alive by reference cycles alone are not finalized: the operating system
reclaims them, unflushed and unclosed. So it is only for a process deltaferry owns, where
every such object is deltaferry's, and deltaferry closes its files and connections
explicitly (``with``, ``finally``; no ``__del__`` or ``weakref.finalize``):

- the ``deltaferry`` command (``deltaferry/cli.py:main``);
- the process a Prefect worker, or a deployment's runner (``prefect deploy``,
  ``deltaferry serve``), starts for a flow run, which it marks with
  ``PREFECT__FLOW_RUN_ID`` (:func:`started_for`, asked by the sync and pull flows with
  the flow-run context's id: ``flows/process.py``). A flow served by
  ``flow.serve`` runs in a process Prefect does not mark, and keeps its usual exit.

A program that calls ``sync_job`` or ``pull_job`` itself (a script, a notebook, a test)
keeps Python's usual exit: its own objects in cycles (a DuckDB connection, say, whose
write-ahead log DuckDB 1.5.5 cannot always replay) are still finalized.
``tests/test_shutdown.py`` checks both, and that no write-ahead log is left behind.

**Ctrl-C.** Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT
arrives. If that is inside a weakref callback or a ``__del__`` (SQLAlchemy's
``_collection_gced`` during a collection, say), the exception cannot propagate: Python
prints "Exception ignored in ..." and goes on, and the run used to complete with exit 0.
:func:`stop_at_interrupt` (installed by the ``run``, ``run-all`` and ``pull`` commands)
remembers the interrupt as well as raising it, and :func:`raise_if_interrupted`, called
before every step of a sync (``deltaferry/context.py``) and before every table and batch
a pull applies (``deltaferry/replica.py``), raises it again there: the run stops at its
next step, as after any interruption, and the next run recovers what it left. A command
that ends after a dropped interrupt with nothing left to stop exits 130, not 0
(``deltaferry/cli.py:main``). dlt's own SIGINT handling during normalize and load is off
for deltaferry's pipelines (``sources/pipeline.py:PIPELINE_SETTINGS``: it waited for the
load's jobs and then went on), and a ``KeyboardInterrupt`` dlt wraps in its step error is
raised as the interrupt (:func:`raise_if_interrupt_within`).
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
from types import FrameType

from deltaferry.errors import find_cause

# set by the SIGINT handler: a plain bool (a lock taken inside a handler could deadlock
# against a second Ctrl-C arriving while the first handler holds it)
_interrupted = False


def end_without_final_collection() -> None:
    """Have this process skip the garbage collector's passes over the objects alive at its
    exit (:func:`gc.freeze` as an exit handler). Idempotent: a handler registered before is
    removed first, so it is registered once. Only for a process deltaferry owns (see the
    module's docstring)."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def started_for(flow_run_id: object) -> bool:
    """Whether a Prefect worker or a deployment's runner started this process to run
    ``flow_run_id`` (it sets ``PREFECT__FLOW_RUN_ID`` in the environment of the process it
    starts). ``flow_run_id`` must come from the flow-run context, not from the environment."""
    given = os.environ.get("PREFECT__FLOW_RUN_ID")
    return bool(given) and flow_run_id is not None and given == str(flow_run_id)


def stop_at_interrupt() -> None:
    """Make Ctrl-C (SIGINT) raise ``KeyboardInterrupt`` as Python's default handler does,
    and remember it for :func:`raise_if_interrupted`. Only for a command deltaferry owns,
    called from the main thread: ``run``, ``run-all`` and ``pull`` (not ``serve``, whose
    event loop handles SIGINT itself when the handler is Python's default). A program
    calling deltaferry keeps its own handler."""
    signal.signal(signal.SIGINT, _on_interrupt)


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether Ctrl-C reached this process since :func:`stop_at_interrupt`."""
    return _interrupted


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if this process was interrupted (Ctrl-C) since
    :func:`stop_at_interrupt`, also when Python dropped the first one (see the module's
    docstring). Called at step, table and batch boundaries; costs one flag read."""
    if _interrupted:
        raise KeyboardInterrupt("interrupted (Ctrl-C); stopped before going on")


def raise_if_interrupt_within(exc: BaseException) -> None:
    """Raise ``KeyboardInterrupt`` if one is in ``exc``'s cause chain (dlt's steps catch it
    and raise their own step error): the run stops as at Ctrl-C, not as at a load error."""
    if find_cause(exc, lambda e: isinstance(e, KeyboardInterrupt)) is not None:
        raise KeyboardInterrupt("interrupted (Ctrl-C) inside dlt's step") from None
