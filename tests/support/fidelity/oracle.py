"""The oracle: the replica table against the source table, value by value, NULL by NULL,
key by key, and each replica column's DuckDB type against the type table.

Written without deltaferry: the source side is the source's own values (read back from
SQLite/PostgreSQL, or the records and files the generator wrote) turned into canonical
values by the type table (standard library parsing); the replica side is read with DuckDB.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any

import duckdb

from tests.support.fidelity.types import TypeSpec, canon_replica, same


def expected_rows(rows: list[dict], columns: dict[str, TypeSpec], key: list[str]) -> dict:
    """Canonical source rows by canonical key."""
    out = {}
    for r in rows:
        canon = {c: (None if r.get(c) is None else spec.canon(r[c])) for c, spec in columns.items()}
        out[tuple(canon[k] for k in key)] = canon
    return out


def replica_rows(replica: Path, table: str, columns: dict[str, TypeSpec], key: list[str]):
    """(types by column, canonical rows by canonical key, extra columns) of the replica."""
    con = duckdb.connect(str(replica), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        described = con.execute(f'DESCRIBE "{table}"').fetchall()
        types = {r[0]: r[1] for r in described}
        present = [c for c in columns if c in types]
        rows = con.execute(
            f'SELECT {", ".join(chr(34) + c + chr(34) for c in present)} FROM "{table}"'
        ).fetchall() if present else []
    finally:
        con.close()
    out = {}
    for r in rows:
        canon = {c: canon_replica(columns[c].family, v) for c, v in zip(present, r)}
        for c in columns:
            canon.setdefault(c, "<column missing>")
        out[tuple(canon[k] for k in key)] = canon
    extra = [c for c in types if c not in columns and not c.startswith("_")]
    return types, out, extra


def differences(
    replica: Path, table: str, columns: dict[str, TypeSpec], key: list[str], source: list[dict]
) -> tuple[list[str], list[str], int]:
    """(type differences, value differences, number of values compared) between source and
    replica, as readable lines."""
    exp = expected_rows(source, columns, key)
    if not replica.exists():
        return [], ([f"no replica file while the source has {len(exp)} rows"] if exp else []), 0
    types, got, extra = replica_rows(replica, table, columns, key)
    diffs: list[str] = []
    type_diffs: list[str] = []
    for c, spec in columns.items():
        if c not in types:
            diffs.append(f"column {c!r} ({spec.name}) missing from the replica; it has {sorted(types)}")
        elif types[c] != spec.replica:
            type_diffs.append(f"column {c!r} ({spec.name}): replica type {types[c]}, expected {spec.replica}")
    for c in extra:
        diffs.append(f"replica column {c!r} is not a source column")
    for k in sorted(set(exp) - set(got), key=repr):
        diffs.append(f"key {k!r}: in the source, missing from the replica: {exp[k]!r}")
    for k in sorted(set(got) - set(exp), key=repr):
        diffs.append(f"key {k!r}: in the replica, not in the source: {got[k]!r}")
    # README's known loss: where -0.0 and 0.0 share a column, DuckDB may store a run of
    # zeros with one sign (DuckDB issue 25580); such a column's zeros compare by value
    mixed = {c for c in columns if _both_zeros(v[c] for v in exp.values())}
    compared = 0
    for k in set(exp) & set(got):
        for c in columns:
            compared += 1
            a, b = exp[k][c], got[k][c]
            if c in mixed and a == 0.0 and b == 0.0 and isinstance(a, float) and isinstance(b, float):
                continue
            if not same(a, b):
                diffs.append(f"key {k!r} column {c!r} ({columns[c].name}): source "
                             f"{exp[k][c]!r}, replica {got[k][c]!r}")
    return type_diffs, diffs, compared


def _both_zeros(values: Any) -> bool:
    signs = {math.copysign(1, v) for v in values if isinstance(v, float) and v == 0.0}
    return len(signs) == 2


def describe(value: Any) -> str:
    return repr(value)[:120]
