"""Hybrid logical clock: the logical timestamp that orders changes of several producers.

A timestamp is one integer: milliseconds since the epoch in the high bits and a
16-bit counter in the low bits. A producer's next batch takes

    max(its wall clock, its own last timestamp + 1, the newest timestamp it has seen
        from any other producer of the table + 1)

so its timestamps only grow, and a batch published after a producer *saw* another
producer's batch always orders after it, whatever either wall clock says. A producer
whose clock runs hours ahead therefore wins only against changes made before the
others saw its batches; the next batch of anyone who has seen it orders later. Wall
time alone never decides.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

LOGICAL_BITS = 16
_MASK = (1 << LOGICAL_BITS) - 1


def wall_ms() -> int:
    """This host's wall clock in milliseconds (tests replace it to model a skewed clock)."""
    return time.time_ns() // 1_000_000


def pack(ms: int, counter: int = 0) -> int:
    return (ms << LOGICAL_BITS) | (counter & _MASK)


def physical_ms(hlc: int) -> int:
    return hlc >> LOGICAL_BITS


def tick(last: int, seen: int, now_ms: int) -> int:
    """The next timestamp after our own ``last`` and every timestamp ``seen`` from others."""
    return max(pack(now_ms), last + 1, seen + 1)


def describe(hlc: int | None) -> str:
    """'2026-11-27T08:00:00.123Z+3': wall time and counter, for people."""
    if hlc is None:
        return "-"
    ms = physical_ms(hlc)
    stamp = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    counter = hlc & _MASK
    return f"{stamp}Z" + (f"+{counter}" if counter else "")


def skew_text(seconds: float) -> str:
    s = int(abs(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
