"""``deltaferry`` commands in processes forked from one that has imported deltaferry already.

A ``python -m deltaferry.cli run`` process spends about 3 s importing Prefect, dlt, DuckDB,
pandas and deltaferry before its first step; the chaos scenarios start one or two such runs
per seed, only to kill them. Here they are forked instead, through the standard library's
``multiprocessing`` fork server: a process started once per test process (with the test
session's Prefect API in its environment) imports those modules, then forks a child per
command. The child is a real process, SIGKILLed from inside (a failpoint) or from outside
(:func:`run_cli` with ``kill_after``); it takes the environment given for the command,
whole, before deltaferry reads any of it (deltaferry reads none at import), and Prefect's
settings context is built again from it.

What differs from a command started from scratch:

- the modules are imported before the command's environment is set: what Prefect sets up
  at import (its logging configuration, from ``PREFECT_LOGGING_*``) is the server's, which
  has the test session's variables; the server is for one Prefect API only;
- every child shares the server's hash seed (``PYTHONHASHSEED``);
- the child ends as the interpreter's exit would end it (threads joined, ``atexit``
  handlers run) but without module teardown, then ``os._exit``.

The chaos scenarios (``tests/test_chaos.py``) use it; the crash tests of
``tests/test_recovery.py`` and the CLI tests start ``python -m deltaferry.cli`` itself.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# what a reading run imports (dlt through the SQL source); a module missing from this list is
# imported by each child instead, which is slower but not wrong
PRELOAD = (
    "deltaferry.cli",
    "flows.sync",
    "flows.pull",
    "sources.sql_database.source",
    "sources.pipeline",
    "dlt",
    "boto3",
)

_started_with: str | None = None  # the Prefect API the fork server imported Prefect for


@dataclass(frozen=True)
class Finished:
    """How a forked command ended: ``returncode`` as ``subprocess`` gives it (``-9`` for a
    SIGKILL), and what it wrote to stdout and stderr, together."""

    returncode: int
    output: str


def _command(argv: list[str], env: dict[str, str], output: str) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_APPEND)  # first: anything said from here is kept
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    code: object = 1
    try:
        missing = [m for m in PRELOAD if m not in sys.modules]
        if missing:  # the server could not import them: each child pays for them
            print(f"cli_fork: not preloaded: {missing}", file=sys.stderr, flush=True)
        os.environ.clear()
        os.environ.update(env)
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # Prefect read its settings at import, in the server
        from deltaferry.cli import main

        sys.argv = ["deltaferry", *argv]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    finally:
        # what the interpreter's exit runs, which multiprocessing's children skip: joining
        # non-daemon threads (and the callbacks Prefect's log and event workers register
        # there to drain), then the exit handlers
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _context(env: Mapping[str, str]) -> multiprocessing.context.BaseContext:
    """The fork server's context, started (once per process) with ``env``'s Prefect API."""
    global _started_with
    api = env.get("PREFECT_API_URL", "")
    if _started_with is None:
        # the server imports Prefect with the session's settings: the variables that differ
        # are set while it starts (only those: other threads of this process read os.environ)
        saved = {k: os.environ.get(k) for k in set(env) | set(os.environ)}
        changed = {k for k in saved if saved[k] != env.get(k)}
        for k in changed:
            if k in env:
                os.environ[k] = env[k]
            else:
                del os.environ[k]
        try:
            multiprocessing.set_forkserver_preload(list(PRELOAD))
            multiprocessing.forkserver.ensure_running()
        finally:
            for k in changed:
                if saved[k] is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = saved[k]  # type: ignore[assignment]
        _started_with = api
    elif api != _started_with:
        raise RuntimeError(
            f"the fork server imported Prefect for {_started_with}; a command for {api} "
            "needs a process of its own (a new test session)"
        )
    return multiprocessing.get_context("forkserver")


def run_cli(
    argv: list[str], env: Mapping[str, str], *, kill_after: float | None = None, timeout: float = 300
) -> Finished:
    """Run ``deltaferry <argv>`` in a forked process with exactly ``env`` as its environment.

    ``kill_after`` (seconds from the fork): SIGKILL the command if it is still running then;
    otherwise it may run for ``timeout`` seconds, after which it is killed and
    ``TimeoutError`` raised. The returned ``Finished.returncode`` is ``-9`` for a kill."""
    ctx = _context(env)
    with tempfile.NamedTemporaryFile("rb", prefix="deltaferry-cli-", suffix=".out") as out:
        proc = ctx.Process(target=_command, args=(list(argv), dict(env), out.name))
        proc.start()
        try:
            proc.join(kill_after if kill_after is not None else timeout)
            timed_out = kill_after is None and proc.is_alive()
        finally:  # however this ends (a timeout, an interrupted test): no run left behind
            if proc.is_alive():
                proc.kill()
            proc.join()
        output = Path(out.name).read_text(errors="replace")
    code = proc.exitcode
    proc.close()
    if timed_out:
        raise TimeoutError(
            f"deltaferry {' '.join(argv)} ran for more than {timeout} s; its output ends:\n"
            + output[-3000:]
        )
    assert code is not None
    return Finished(code, output)
