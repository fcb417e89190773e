"""A quick interpreter exit: the objects alive at exit are frozen out of the final garbage
collection.

A deltaferry process holds a few million objects of imported libraries (pyarrow, pandas,
duckdb, prefect, dlt, pandera). At exit Python runs a garbage collection over all of them
before tearing the modules down, which took about 0.4 s of every run on the bench machine
(``bench/README.md``, "Where a no-op run's time goes"). ``gc.freeze()`` in an ``atexit``
handler moves them to the permanent generation, which that collection skips: exit then
takes about 0.03 s. Nothing else changes: ``atexit`` handlers still run (Prefect's flush of
logs and events included: handlers registered later run before this one), modules are
still torn down (objects not in a reference cycle are still deallocated, so files and
connections still close), and the operating system frees the memory. Only objects in
reference cycles that are garbage at exit are left to the operating system instead of
being finalized; deltaferry closes its files and connections explicitly, and a DuckDB
database left unclosed replays its write-ahead log when it is next opened.
"""

from __future__ import annotations

import atexit
import gc

_installed = False


def _freeze() -> None:
    gc.freeze()


def install() -> None:
    """Register the freeze at exit (once per process; later calls do nothing)."""
    global _installed
    if not _installed:
        atexit.register(_freeze)
        _installed = True
