"""The SQL source's connection: the SQLAlchemy engine, connection errors as one line
(to fix, or to retry), which source errors are transient, and the stall watchdog that
cuts a read that stopped delivering.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from deltaferry.config import JobConfig
from deltaferry.errors import ConfigError, TransientError, find_cause
from deltaferry.settings import from_env

# connection errors that retrying cannot cure, with what the user should fix
_CONFIG_CONNECT_ERRORS = (
    (
        r"password authentication failed|authentication failed|access denied",
        "check the user name and password in the source url",
    ),
    (r"no password supplied", "the source url needs a password"),
    (r"permission denied", "grant the source url's user access to the database and tables"),
    (r"no pg_hba\.conf entry", "the server refuses this client: check pg_hba.conf and sslmode"),
    (r"SSL (is )?required|server does not support SSL", "check sslmode in the source url"),
    (r'database ".*" does not exist|unknown database', "check the database name in the source url"),
    (r'role ".*" does not exist', "check the user name in the source url"),
)


_URL_FORM = (
    "the form is dialect+driver://user:password@host:port/database, with reserved characters "
    "in the user or password percent-encoded (@ as %40, : as %3A, / as %2F)"
)


def backend_name(job: JobConfig) -> str:
    """The source's database kind, from its URL as ``engine_for`` reads it (``sqlite``,
    ``postgresql``, ...); the URL is checked by ``engine_for`` before any read."""
    return str(sa.make_url(job.source_url()).get_backend_name())


def engine_for(job: JobConfig) -> sa.Engine:
    """A SQLAlchemy engine for the job's source. ``postgresql://`` uses psycopg (3), which
    deltaferry installs, unless psycopg2 is there; connecting gives up after
    ``DELTAFERRY_SOURCE_CONNECT_TIMEOUT`` seconds (default 10). Nothing of the url is ever
    echoed in an error: it may hold a password."""
    try:
        url = sa.make_url(job.source_url())
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(
            f"job '{job.name}': source url is not a valid SQLAlchemy URL; {_URL_FORM}"
        ) from None
    if url.host and "@" in url.host:  # an unencoded @ in the password moved it into the host
        raise ConfigError(f"job '{job.name}': source url has an '@' in its host; {_URL_FORM}")
    database = url.database or ""
    if (
        url.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and str(url.query.get("uri", "")).lower() not in ("true", "1")
        and not Path(database).exists()
    ):
        # SQLite would fail with "unable to open database file" (taken as a lost connection:
        # retried, exit 1) or create an empty database: a path typed wrong is configuration
        raise ConfigError(  # the path is not echoed: a url is never (it may hold secrets)
            f"job '{job.name}': the source's SQLite database file (the path in its url) does "
            f"not exist; a sqlite:/// path is relative to the working directory, {Path.cwd()}"
        )
    connect_args: dict[str, Any] = {}
    if url.drivername == "postgresql" and not _has_module("psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    timeout = from_env().source_connect_timeout
    if url.drivername in ("postgresql+psycopg", "postgresql+psycopg2", "postgresql"):
        # libpq: give up connecting after the timeout; a peer that vanished (NAT state
        # dropped, host gone) is found by TCP keepalives within about a minute
        connect_args.update(connect_timeout=timeout, keepalives=1, keepalives_idle=30)
        connect_args.update(keepalives_interval=10, keepalives_count=3)
        # every session reads in UTC and prints text forms one way, whatever the database's
        # or role's defaults: a timestamptz read in a session zone of +05:30 was published
        # 5.5 hours off (the driver's aware value lost its offset on the way to Arrow), and
        # an IntervalStyle set on the database changed the text of unchanged rows; with
        # extra_float_digits = 0 (old configurations carry it) every double arrived rounded
        # to 15 significant digits and every real to 6 (the driver parses their text), and
        # bytea_output = 'escape' changed the text of bytea arrays
        session = (
            "-c TimeZone=UTC -c IntervalStyle=postgres -c DateStyle=ISO,MDY"
            " -c extra_float_digits=3 -c bytea_output=hex"
        )
        given = url.query.get("options")
        connect_args["options"] = f"{given} {session}" if isinstance(given, str) else session
    elif url.get_backend_name() == "mysql":
        connect_args["connect_timeout"] = timeout
    try:
        # no pooling: a source connection is open only while it is read (see StallWatchdog)
        engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
        raise ConfigError(
            f"job '{job.name}': source url is not usable: {type(e).__name__} for dialect "
            f"'{url.drivername}' (is the database driver installed?)"
        ) from None
    if url.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _code_point_collation)
    return engine


# the SQLite collation every connection of ``engine_for`` has: text in code point order
SQLITE_CODE_POINT = "deltaferry_code_point"


def _code_point_collation(dbapi_connection: Any, _record: Any) -> None:
    """Every SQLite connection knows ``deltaferry_code_point``: text in code point order
    (Python's order of str), which a text cursor's window compares with in a database
    whose text is UTF-16 (``window.at_or_after``)."""
    dbapi_connection.create_collation(SQLITE_CODE_POINT, _by_code_point)


def _by_code_point(a: str, b: str) -> int:
    return (a > b) - (a < b)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def connect_error(job: JobConfig, e: sa.exc.DBAPIError) -> Exception:
    """A one-line error for a failed source connection: ConfigError when the user must fix
    the url or the server's access rules, TransientError when the server may come back."""
    text = scrub(job, " ".join(str(getattr(e, "orig", None) or e).split()))
    for pattern, fix in _CONFIG_CONNECT_ERRORS:
        if re.search(pattern, text, re.IGNORECASE):
            return ConfigError(
                f"job '{job.name}': source database refused the connection: {text}; {fix}"
            )
    if re.search(
        r"connection failed|refused|timeout expired|could not translate|failed to resolve",
        text,
        re.I,
    ):
        return TransientError(
            f"job '{job.name}': source database unreachable: {text}; check the host and port in "
            "the source url and that the server is up and accepts TCP connections"
        )
    return TransientError(f"job '{job.name}': source database connection lost: {text}")


class StallWatchdog:
    """Cuts the source connections when a read makes no progress for ``timeout`` seconds.

    TCP keepalives find a peer that vanished, not a link that still answers at the TCP
    level but stopped forwarding (a stuck middlebox, a blackholing proxy); libpq has no
    client-side read timeout. While a source connection is open, every chunk read counts
    as progress; after ``timeout`` seconds without any, the connections' sockets are shut
    down, the blocked read fails with an OperationalError and the step is retried as a
    transient error. The engine must not pool connections (``engine_for`` does not), so an
    open connection is one being read."""

    def __init__(self, engine: sa.Engine, timeout: float | None = None) -> None:
        # seconds a source read may go without any data before its connection is cut
        self.timeout = timeout or from_env().source_stall_timeout
        self.fired = 0
        self._fds: dict[int, int] = {}
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._engine = engine
        # ahead of the dialect's own handlers (``insert``): SQLAlchemy runs the dialect's
        # first_connect (version queries, a rollback) before the listeners added after it,
        # and a link that blackholed there hung for ever, unseen (chaos seeds 7038, 7058)
        sa.event.listen(engine, "connect", self._opened, insert=True)
        sa.event.listen(engine, "close", self._closed)
        self._thread = threading.Thread(target=self._watch, name="source-stall-watchdog")
        self._thread.daemon = True
        self._thread.start()

    def progress(self, item: Any = None) -> Any:
        """Note progress; usable as a dlt map step (returns the item unchanged)."""
        self._last = time.monotonic()
        return item

    def _opened(self, dbapi_conn: Any, _record: Any) -> None:
        fileno = getattr(dbapi_conn, "fileno", None)
        if callable(fileno):
            with self._lock:
                self._fds[id(dbapi_conn)] = fileno()
        self.progress()

    def _closed(self, dbapi_conn: Any, _record: Any) -> None:
        with self._lock:
            self._fds.pop(id(dbapi_conn), None)

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            with self._lock:
                fds = list(self._fds.values())
            if not fds:
                self._last = time.monotonic()
                continue
            if time.monotonic() - self._last < self.timeout:
                continue
            self.fired += 1
            with self._lock:  # a connection closing now cannot free its fd for reuse meanwhile
                for fd in self._fds.values():
                    try:
                        with socket.socket(fileno=os.dup(fd)) as sock:
                            sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self._last = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        sa.event.remove(self._engine, "connect", self._opened)
        sa.event.remove(self._engine, "close", self._closed)


def scrub(job: JobConfig, text: str) -> str:
    """The text without the source url's password (drivers may echo parts of the url)."""
    try:
        password = sa.make_url(job.source_url()).password
    except Exception:  # noqa: BLE001 - an unparsable url has nothing to scrub here
        return text
    return text.replace(str(password), "***") if password else text


TRANSIENT_SOURCE_ERRORS = (
    sa.exc.OperationalError,
    sa.exc.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def transient_cause(exc: BaseException) -> BaseException | None:
    """The first transient error in an exception's cause/context chain (dlt wraps errors)."""
    return find_cause(exc, lambda e: isinstance(e, TRANSIENT_SOURCE_ERRORS))
