"""Where a phase's memory goes: its RSS sampled with the main thread's stack.

Used by the bench's phase scripts (``phase_deltaferry.py``, ``phase_pull.py``) when
``scale_bench.py --rss-trace PHASE`` asks for it. A daemon thread reads the process's RSS
(``/proc/self/statm``) every 20 ms; whenever it moved by ``STEP_MIB`` or more since the
last line, it writes one line: seconds since the start, RSS in MiB, and the main thread's
stack (innermost first; frames of installed packages other than DuckDB and dlt left out).
``finish`` appends the ten highest samples. A sample lands between two statements of the
main thread, so a peak inside one DuckDB query is shown at that query's line. Found the
plan step's key lookup that made a 10M-row initial sync peak 1.33x a 1M-row one
(bench/README.md, "The cut's key lookup, and a pull that lets go of its cache").

    from rss_trace import RssTrace
    trace = RssTrace.start(Path("out.rss.txt"))
    ...  # the measured work
    trace.finish()
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from pathlib import Path

INTERVAL_S = 0.02
STEP_MIB = 15
_PAGE = os.sysconf("SC_PAGE_SIZE")
_KEEP_PACKAGES = ("duckdb", "dlt")  # installed packages whose frames are shown


def rss_mib() -> int:
    """This process's resident set size in MiB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE // 2**20


def where(frame: object) -> str:
    """The stack of ``frame``, innermost first, as ``file:line:function`` joined by
    `` < ``; of installed packages, only DuckDB's and dlt's frames."""
    frames = traceback.extract_stack(frame) if frame is not None else []  # type: ignore[arg-type]
    kept = [
        f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}"
        for f in reversed(frames)
        if "site-packages" not in f.filename or any(k in f.filename for k in _KEEP_PACKAGES)
    ]
    return " < ".join(kept)


class RssTrace:
    """The sampling thread of one process; ``start`` it, ``finish`` it once."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.samples: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="rss-trace", daemon=True)

    @classmethod
    def start(cls, out: Path) -> RssTrace:
        trace = cls(out)
        trace._thread.start()
        return trace

    def _run(self) -> None:
        last = -STEP_MIB
        with self.out.open("w") as fh:
            fh.write("# seconds  RSS MiB  main thread (innermost first)\n")
            while not self._stop.is_set():
                rss = rss_mib()
                if abs(rss - last) >= STEP_MIB:
                    stack = where(sys._current_frames().get(self._main or 0))
                    sample = (time.perf_counter() - self._t0, rss, stack)
                    self.samples.append(sample)
                    fh.write(f"{sample[0]:8.2f} {rss:8d}  {stack}\n")
                    fh.flush()
                    last = rss
                self._stop.wait(INTERVAL_S)

    def finish(self) -> list[tuple[float, int, str]]:
        """Stop sampling; append the ten highest samples to the file; return them."""
        self._stop.set()
        self._thread.join()
        top = sorted(self.samples, key=lambda s: -s[1])[:10]
        with self.out.open("a") as fh:
            fh.write("\n# highest samples\n")
            for t, rss, stack in top:
                fh.write(f"{t:8.2f} {rss:8d}  {stack}\n")
        return top
