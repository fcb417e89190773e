"""How a process that ran a flow ends: without the interpreter's last full collections.

When Python exits, it tears its modules down and runs full garbage collections that walk
every object the collector tracks. A process that has loaded Prefect, pandas, pandera,
pydantic's models and SQLAlchemy tracks millions of them: those passes took 0.5 to 0.8 s
of CPU after a run's last line, half of what a no-op sync costs beyond a bare Prefect flow
(bench/README.md, "A no-op run: the end of the process").

:func:`end_without_final_collection` registers :func:`gc.freeze` as an exit handler: at
exit, the objects alive then are moved where the collector no longer looks. Nothing else
changes: every other exit handler still runs (Prefect's log and event flushes, logging's
shutdown), and objects are still freed by reference counting as the modules are torn
down, closing what they hold (DuckDB connections, files). Only objects kept alive by
reference cycles alone are left to the operating system, as it reclaims everything of a
process; deltaferry closes its files and connections explicitly (``with``), and
``tests/test_shutdown.py`` checks that a process that ran a sync leaves no DuckDB
write-ahead log behind.
"""

from __future__ import annotations

import atexit
import gc
import threading

_registered = False
_lock = threading.Lock()


def end_without_final_collection() -> None:
    """Have this process skip the garbage collector's passes over the objects alive at its
    exit (:func:`gc.freeze` as an exit handler). Idempotent: registered once a process."""
    global _registered
    with _lock:
        if not _registered:
            atexit.register(gc.freeze)
            _registered = True
