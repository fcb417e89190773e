"""What every ``deltaferry`` command shares: the consoles, one-line errors (exit 2 for
configuration and usage errors, 1 otherwise), the ``--config``/``--runs`` options, and
reports that print as a rich table on a terminal and as tab-separated lines when piped."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deltaferry.errors import DeltaferryError
from deltaferry.settings import from_env

F = TypeVar("F", bound=Callable[..., Any])
out = Console()
err = Console(stderr=True)


def one_line_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = False
        try:
            debug = from_env().debug  # a bad DELTAFERRY_* value: one line, exit 2
            return fn(*args, **kwargs)
        except DeltaferryError as e:
            err.print(
                f"[bold red]error:[/] {escape(one_line(str(e)))}", highlight=False, soft_wrap=True
            )
            sys.exit(e.exit_code)
        except BrokenPipeError:
            # the reader of a pipe stopped reading (`| head`): stop quietly, as a program
            # killed by SIGPIPE does (exit 141), not with a traceback from the next write or
            # from Python's flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + signal.SIGPIPE)
        except Exception as e:
            if debug:
                raise
            err.print(
                f"[bold red]error:[/] {type(e).__name__}: {escape(one_line(str(e)))} "
                "(set DELTAFERRY_DEBUG=1 for a traceback)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def one_line(message: str) -> str:
    """An error message on one line: a line break inside it (a name or value holding one,
    a database's multi-line error) written ``\\n``/``\\r``."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Jobs file (default: $DELTAFERRY_CONFIG, then ./deltaferry.toml).",
)


def runs_of(default: int, meaning: str) -> Callable[[F], F]:
    """The ``--runs N`` option (1 or more; ``default``), saying what the last N runs are for."""
    return click.option(
        "--runs",
        "runs",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help=meaning,
    )


runs_option = runs_of(20, "How many of the last runs the batch sizes and rates cover.")


class _Report:
    """Rows for the terminal (a rich table) or for another program (tab-separated lines)."""

    def __init__(self, headers: tuple[str, ...], title: str | None) -> None:
        self.headers, self.title = headers, title
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(tuple(cells))


def new_report(*headers: str, title: str | None = None) -> _Report:
    return _Report(headers, title)


def emit(report: _Report) -> None:
    """Print a report: a rich table on a terminal; plain tab-separated lines otherwise, so
    nothing is cut to fit a width when the output is piped or captured."""
    if out.is_terminal:
        table = Table(title=report.title)
        for h in report.headers:
            table.add_column(h, overflow="fold")
        for row in report.rows:
            table.add_row(*row)
        out.print(table)
        return
    click.echo("\t".join(tsv_cell(h) for h in report.headers))
    for row in report.rows:
        click.echo("\t".join(tsv_cell(c) for c in row))


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_cell(text: str) -> str:
    """A cell of a tab-separated line: a backslash, tab, newline or carriage return in it is
    written ``\\\\``, ``\\t``, ``\\n``, ``\\r`` (PostgreSQL's COPY text format), so one row is
    one line with one tab between cells whatever a key or a reason holds."""
    return text.translate(_TSV_ESCAPES)


# Prefect waits 20 s for its temporary API (a run without PREFECT_API_URL) by default: on a
# loaded machine that failed 7 runs in 30 ("Timed out while attempting to connect to
# ephemeral Prefect API server"). Commands that start flows wait this long instead.
EPHEMERAL_STARTUP_SECONDS = 120


@contextmanager
def prefect_startup_wait() -> Iterator[None]:
    """Inside: Prefect's ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` is
    ``EPHEMERAL_STARTUP_SECONDS``, unless the user set it (environment, Prefect profile or
    ``prefect.toml``: kept as set)."""
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if "startup_timeout_seconds" in get_current_settings().server.ephemeral.model_fields_set:
        yield
        return
    updates = {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_SECONDS}
    with temporary_settings(updates=updates):
        yield
