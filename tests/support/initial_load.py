"""What the tests of a first load by a DuckDB scanner (``initial_load = "scanner"``) read
back: the operations log's ``initial-load`` lines, two replicas' differences, the staged
content hashes. Shared by ``tests/test_pg_initial_load.py`` and
``tests/test_sqlite_initial_load.py`` (both run a ``fast`` job with the scanner against a
``slow`` one through dlt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb


def notes(job: str) -> list[str]:
    """The job's ``initial-load`` lines of the operations log, oldest first."""
    from deltaferry.state import StateStore

    with StateStore(job).connect(read_only=True) as con:
        rows = con.execute(
            "SELECT detail FROM ops_log WHERE outcome = 'initial-load' ORDER BY id"
        ).fetchall()
    return [r[0] for r in rows]


def differences(fast: Path, slow: Path, names: list[str]) -> tuple[list[Any], list[Any], int]:
    """Rows of one replica's ``items`` missing from the other's, both ways (compared as
    text: NaN equals NaN, -0.0 differs from 0.0), and the count of ``fast``'s rows; the
    column types must agree."""
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{fast}' AS fast (READ_ONLY)")
        con.execute(f"ATTACH '{slow}' AS slow (READ_ONLY)")
        types = [
            con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {db}.items)").fetchall()
            for db in ("fast", "slow")
        ]
        assert types[0] == types[1]
        cols = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in names)
        a = con.execute(f"SELECT {cols} FROM fast.items EXCEPT ALL SELECT {cols} FROM slow.items")
        only_fast = a.fetchall()
        b = con.execute(f"SELECT {cols} FROM slow.items EXCEPT ALL SELECT {cols} FROM fast.items")
        only_slow = b.fetchall()
        n = con.execute("SELECT count(*) FROM fast.items").fetchone()[0]
        return only_fast, only_slow, n
    finally:
        con.close()


def staged_hashes(job: str) -> dict[Any, str]:
    """The job's staged ``items`` rows' content hashes by ``id``."""
    from sources.staging import staging_path

    with duckdb.connect(str(staging_path(job)), read_only=True) as con:
        return dict(con.execute("SELECT id, _df_hash FROM raw.items").fetchall())


def kill_after_seed(config: Path, job: str = "fast") -> None:
    """Run ``job`` in a child process killed (SIGKILL) right after its seed's load
    committed, before the scanner's copy; assert it died so and left the first load's
    marker (``bulk.marker``) for the next run."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from deltaferry.config import load_job
    from sources.sql_database import bulk

    env = dict(
        os.environ,
        DELTAFERRY_FAILPOINT="after_seed",
        DELTAFERRY_FAILPOINT_ACTION="kill",
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
    )
    killed = subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "run", job, "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    loaded = load_job(job, config)
    assert bulk.marker(loaded, loaded.tables[0]).exists()
