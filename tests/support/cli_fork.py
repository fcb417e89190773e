"""``deltaferry`` commands in processes forked from one that has imported deltaferry already.

A ``python -m deltaferry.cli run`` process spends about 3 s importing Prefect, dlt, DuckDB,
pandas and deltaferry before its first step; the chaos scenarios start one or two such runs
per seed, only to kill them. Here they are forked instead, through the standard library's
``multiprocessing`` fork server: a process started once per test process (with the test
session's Prefect API in its environment) imports those modules, then forks a child per
command. The child is a real process, SIGKILLed from inside (a failpoint) or from outside
(:func:`run_cli` with ``kill_after``); it takes the environment given for the command,
whole, before deltaferry reads any of it, and Prefect's settings are read again from it.

What differs from a command started from scratch: the modules are imported before the
command's environment is set (only variables Prefect reads at import are the session's), and
the child ends without Python's interpreter shutdown (``atexit`` handlers run, then
``os._exit``), as multiprocessing's children do.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import sys
import tempfile
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
    os.environ.clear()
    os.environ.update(env)
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()  # Prefect read its settings at import, in the server
    fd = os.open(output, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from deltaferry.cli import main

    sys.argv = ["deltaferry", *argv]
    code: object = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    atexit._run_exitfuncs()  # what the interpreter's exit would run; multiprocessing skips it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _context(env: Mapping[str, str]) -> multiprocessing.context.BaseContext:
    """The fork server's context, started (once per process) with ``env``'s Prefect API."""
    global _started_with
    api = env.get("PREFECT_API_URL", "")
    if _started_with is None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)  # the server imports Prefect with the session's settings
        try:
            multiprocessing.set_forkserver_preload(list(PRELOAD))
            multiprocessing.forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)
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
        proc.join(kill_after if kill_after is not None else timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            if kill_after is None:
                raise TimeoutError(f"deltaferry {' '.join(argv)} ran for more than {timeout} s")
        output = Path(out.name).read_text(errors="replace")
    assert proc.exitcode is not None
    return Finished(proc.exitcode, output)
