"""Row checks every source kind runs on what it extracts, before anything is staged.

- ``KeyCheck.hold_null_keys``: a row with NULL in a primary-key column cannot be merged,
  tombstoned or applied by a reader; it is held back (quarantined with its reason), never
  staged or published.
- ``KeyCheck.note`` / ``KeyCheck.duplicates``: a configured primary key that is not unique
  within one extraction would make dlt's merge keep one of the rows and drop the others;
  the keys of an extraction are counted (in a temporary DuckDB file in the job's home, so
  memory stays bounded by DuckDB's limit, not by the table: the keys and the count spill
  to disk) and a repeated key stops the run before the load, naming the key and how to fix
  it.

Held rows are reported as quarantine records: ``{"pk", "field", "check", "reason",
"row_json"}`` (``pk`` and ``row_json`` are JSON text), the shape ``ExtractResult.held``
carries per table.
"""

from __future__ import annotations

import json
import math
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from deltaferry.config import JobConfig, TableConfig, job_home
from deltaferry.duck import fetch_row, ident, remove, scratch
from deltaferry.errors import TerminalError
from deltaferry.quarantine import UNFIT, UNKEYED


def held_record(t: TableConfig, row: dict[str, Any], field: str, check: str, reason: str) -> dict:
    """One quarantine record for a row held back during extraction."""
    return {
        "pk": json.dumps({c: row.get(c) for c in t.primary_key}, default=str, sort_keys=True),
        "field": field,
        "check": check,
        "reason": reason,
        "row_json": json.dumps(row, default=str, sort_keys=True),
    }


def non_finite_field(row: dict[str, Any], nested: bool = False) -> tuple[str, str] | None:
    """The first field of a source record holding NaN or an infinity (a float or a
    ``Decimal``, a signalling NaN included), with what it holds (``"NaN"``,
    ``"-Infinity"``; ``"NaN at .a[2]"`` inside an object, array or tuple, looked into when
    ``nested``); None when every number is finite.
    dlt writes such a value as NULL (Parquet and its JSON text of nested values alike)."""
    for name, value in row.items():
        found = _non_finite(value, "", nested)
        if found is not None:
            return str(name), found
    return None


def _non_finite(value: Any, path: str, nested: bool) -> str | None:
    shown = None
    if isinstance(value, float) and not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    elif isinstance(value, Decimal) and not value.is_finite():  # sNaN: no comparison at all
        shown = "NaN" if value.is_nan() else ("-Infinity" if value.is_signed() else "Infinity")
    if shown is not None:
        return shown + (f" at {path}" if path else "")
    if nested and isinstance(value, dict):
        for k, v in value.items():
            found = _non_finite(v, f"{path}.{k}", nested)
            if found is not None:
                return found
    elif nested and isinstance(value, (list, tuple)):  # dlt writes a tuple as an array
        for i, v in enumerate(value):
            found = _non_finite(v, f"{path}[{i}]", nested)
            if found is not None:
                return found
    return None


class KeyCheck:
    """Key checks of one table over one extraction (see the module doc). Close after use."""

    # DuckDB memory for counting keys; beyond it the keys and counts spill to the job's
    # home (10M integer keys: about 170 MiB at the peak, 2 s to count; 50M in random
    # order: 7 s)
    MEMORY_LIMIT = "128MB"
    # An instance of the counting database keeps a block of each insert (a chunk's keys) in
    # its buffer pool, beyond the limit's reach (about 256 KiB an insert, measured: 100 MiB
    # after 500 inserts of 100k integer keys in random order): 50M keys failed the count,
    # 100M the inserts themselves. So the database is closed and opened again after each
    # REOPEN_INSERTS inserts (at most about 32 MiB held) and before the count; 100M integer
    # keys in random order then took 10 s to note and 15 s to count at 128MB.
    REOPEN_INSERTS = 128

    def __init__(self, job: JobConfig, t: TableConfig) -> None:
        self.job = job
        self.t = t
        self.pk = list(t.primary_key)
        self.held: list[dict[str, Any]] = []
        self._con: duckdb.DuckDBPyConnection | None = None
        self._spill: Path = job_home(job.name) / "tmp"
        self._file: Path | None = None  # the counting database, while open
        self._inserts = 0  # inserts since the counting database was opened

    @property
    def where(self) -> str:
        return f"job '{self.job.name}' table '{self.t.name}'"

    def hold_null_keys(self, chunk: pa.Table) -> pa.Table:
        """The chunk without its rows that have NULL in a key column; those are held."""
        null = None
        for c in self.pk:
            if c not in chunk.column_names:
                continue
            is_null = pc.is_null(chunk[c])
            null = is_null if null is None else pc.or_(null, is_null)
        if null is None or not pc.any(null).as_py():
            return chunk
        for row in chunk.filter(null).to_pylist():
            self.hold_unkeyed(row)
        return chunk.filter(pc.invert(null))

    def hold_unkeyed(self, row: dict[str, Any], origin: str = "the source") -> bool:
        """Hold ``row`` back when a key column is missing or NULL in it; whether it was."""
        missing = [c for c in self.pk if row.get(c) is None]
        if missing:
            self.held.append(
                held_record(
                    self.t,
                    row,
                    missing[0],
                    UNKEYED,
                    f"primary key column(s) {', '.join(missing)} missing or NULL in {origin}: "
                    "the row cannot be keyed, so it is held back until it has a key",
                )
            )
        return bool(missing)

    def hold_non_finite(
        self, row: dict[str, Any], origin: str = "the source", nested: bool = False
    ) -> bool:
        """Hold ``row`` back when a field holds NaN or an infinity (``non_finite_field``);
        whether it was. Staged, the value would be NULL with exit 0; held, it is a
        quarantine record (``UNFIT``: resolved once a batch publishes the key, that is
        when the source gives the record a finite number or null and a newer cursor)."""
        found = non_finite_field(row, nested)
        if found is None:
            return False
        field, what = found
        self.held.append(
            held_record(
                self.t,
                row,
                field,
                UNFIT,
                f"field {field} holds {what} in {origin}: staging would keep it as NULL "
                "(dlt writes NaN and infinities as null), so the record is held back until "
                "the source gives a finite number or null",
            )
        )
        return True

    def hold_records(self, rows: list[dict[str, Any]], field: str, check: str, reason: str) -> None:
        for row in rows:
            self.held.append(held_record(self.t, row, field, check, reason))

    def note(self, chunk: pa.Table) -> pa.Table:
        """Count the chunk's keys (returns the chunk unchanged: usable as a dlt map step)."""
        if chunk.num_rows == 0:
            return chunk
        keys = chunk.select(self.pk)
        con = self._connect(keys)
        con.register("keys_", keys)
        try:
            con.execute("INSERT INTO seen SELECT * FROM keys_")
        finally:
            con.unregister("keys_")
        self._inserts += 1
        if self._inserts >= self.REOPEN_INSERTS:
            self._reopen()
        return chunk

    def _open(self, path: Path) -> duckdb.DuckDBPyConnection:
        return scratch(path, self._spill, self.MEMORY_LIMIT)

    def _reopen(self) -> duckdb.DuckDBPyConnection:
        """The counting database closed (its inserts checkpointed) and opened again."""
        assert self._con is not None and self._file is not None
        self._con.close()
        self._con = self._open(self._file)
        self._inserts = 0
        return self._con

    def _connect(self, keys: pa.Table) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._spill.mkdir(parents=True, exist_ok=True)
            # a file, not an in-memory database: its table's blocks can leave memory too
            self._file = self._spill / f"keys-{uuid.uuid4().hex}.duckdb"
            self._con = self._open(self._file)
            self._con.register("keys_", keys.slice(0, 0))
            self._con.execute("CREATE TABLE seen AS SELECT * FROM keys_")
            self._con.unregister("keys_")
        return self._con

    def duplicates(self) -> str | None:
        """One line naming up to three keys seen more than once, or None.

        Raises TerminalError (one line naming job and table) when DuckDB cannot count the
        keys within ``MEMORY_LIMIT``."""
        if self._con is None:
            return None
        cols = ", ".join(ident(c) for c in self.pk)
        con = self._reopen()  # see REOPEN_INSERTS
        try:
            rows = con.execute(
                f"SELECT {cols}, count(*) AS n FROM seen GROUP BY ALL HAVING count(*) > 1 "
                f"ORDER BY n DESC, {cols} LIMIT 3"
            ).fetchall()
            total = (
                fetch_row(
                    con,
                    f"SELECT count(*) FROM (SELECT {cols} FROM seen GROUP BY ALL "
                    "HAVING count(*) > 1)",
                )[0]
                if rows
                else 0
            )
        except duckdb.OutOfMemoryException as e:
            n = fetch_row(con, "SELECT count(*) FROM seen")[0]
            raise TerminalError(
                f"{self.where}: counting the {n:,} keys of this extraction for repeats ran out "
                f"of the key check's DuckDB memory ({self.MEMORY_LIMIT}: "
                f"{str(e).splitlines()[0]}); nothing was staged. This is a bug to report, "
                f"with the key's column types ({', '.join(self.pk)})"
            ) from None
        if not rows:
            return None
        shown = "; ".join(
            ", ".join(f"{c}={v!r}" for c, v in zip(self.pk, r[:-1])) + f" ({r[-1]} rows)"
            for r in rows
        )
        return (
            f"{self.where}: primary key ({', '.join(self.pk)}) is not unique in the source: "
            f"{total} key value(s) appear in more than one row ({shown}); nothing was staged. "
            "Set primary_key to the column(s) that identify one row"
        )

    def close(self) -> None:
        """Drop the key counts (``duplicates`` has nothing to say after it); the held rows
        are kept."""
        if self._con is not None:
            self._con.close()
            self._con = None
        if self._file is not None:
            remove(self._file)
            self._file = None
