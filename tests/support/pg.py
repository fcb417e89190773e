"""A real PostgreSQL server for the tests: initdb into a temporary directory, started
on a free loopback port with password authentication, stopped at the end.

The binaries come from Debian's ``postgresql`` package (``.ci/postgres`` installs it).
PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "pg-test-superuser"


def postgres_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    explicit = os.environ.get("DELTAFERRY_TEST_PG_BINDIR")
    candidates = [explicit] if explicit else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    for c in candidates:
        if c and (Path(c) / "postgres").exists() and (Path(c) / "initdb").exists():
            return Path(c)
    raise RuntimeError(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and "
        "pg_config --bindir); run `bash .ci/postgres`, which installs Debian's postgresql, or set "
        "DELTAFERRY_TEST_PG_BINDIR"
    )


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1:<port>."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bindir = postgres_bindir()
        # not under pytest's tmp dir: as root, the server user must be able to reach it
        self.root = Path(tempfile.mkdtemp(prefix="deltaferry-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if out.returncode:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {out.stderr or out.stdout}\n{log}")
        return out

    def start(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self._as_root:
            user = pwd.getpwnam(SUPERUSER)
            for p in (self.root, pwfile):
                os.chown(p, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        pwfile.unlink()
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(
        self,
        database: str = "postgres",
        *,
        user: str = SUPERUSER,
        password: str = SUPERUSER_PASSWORD,
        port: int | None = None,
    ) -> str:
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{port or self.port}/{database}"

    def connect(self, database: str = "postgres"):  # noqa: ANN201
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=SUPERUSER_PASSWORD,
            dbname=database,
            autocommit=True,
        )

    def create_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name
