"""A well-formed manifest (``destinations/manifest.py:Manifest``) for tests that record or
read one without a sync; ``sample(**fields)`` replaces any of its fields."""

from __future__ import annotations

from typing import Any

from destinations.manifest import (
    FORMAT,
    ContractRef,
    CursorRange,
    DataFile,
    Manifest,
    Ops,
    SeqRange,
)

ZERO = "0" * 64


def sample(**fields: Any) -> Manifest:
    one = Ops(upsert=1, delete=0)
    base: dict[str, Any] = {
        "format": FORMAT,
        "job": "shop",
        "table": "customers",
        "batch": 1,
        "prev_sha256": None,
        "producer_id": "default",
        "contract": ContractRef(ref="contracts.shop:Customers", version=1, fingerprint=ZERO),
        "primary_key": ["id"],
        "cursor": CursorRange(column="updated_at", min=None, max=None),
        "seq": SeqRange(start=1, end=1),
        "load_ids": ["1.0"],
        "rows": 1,
        "ops": one,
        "quarantined": 0,
        "files": [
            DataFile(
                key=f"shop/customers/data/000000000001/part-00000-{ZERO[:16]}.parquet",
                sha256=ZERO,
                bytes=1,
                rows=1,
                ops=one,
            )
        ],
        "trace_id": "trace",
        "created_at": "2026-01-01T00:00:00+00:00",
        "signature": None,
    }
    return Manifest(**{**base, **fields})
