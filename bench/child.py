"""Run one measured step in a child process and read its figures: wall time, peak RSS
(``ru_maxrss`` from ``wait4``, MiB), exit code, and the last JSON line it printed.

A child forked from a parent that holds much memory reports the parent's peak as its own
(Linux keeps a process's peak RSS across ``exec``): build large inputs in a child too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], code: Path, env: dict[str, str] | None = None) -> dict:
    """``python <args>`` with ``code`` (a checkout) as working directory and first on
    ``PYTHONPATH``; ``env`` adds to this process's environment less its ``DELTAFERRY_*``
    variables. Returns the child's last JSON line (a dict; ``{"error": last stderr line}``
    when it printed none) with ``wall_s``, ``peak_rss_mib`` and ``exit`` added. Output goes
    to temporary files (a pipe the child fills would block it before ``wait4``)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DELTAFERRY_")}
    base.update(env or {})
    base["PYTHONPATH"] = os.pathsep.join(
        [str(code), *([base["PYTHONPATH"]] if base.get("PYTHONPATH") else [])]
    )
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=code, env=base, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        lines = [x for x in out.read().splitlines() if x.startswith("{")]
        last = (err.read().strip().splitlines() or ["?"])[-1]
    result = json.loads(lines[-1]) if lines else {"error": last}
    result.update(wall_s=wall, peak_rss_mib=usage.ru_maxrss / 1024, exit=proc.returncode)
    return result
