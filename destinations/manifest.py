"""The manifest: the commit record of one batch, and the lake's key layout.

Lake layout, relative to the lake root::

    <job>/<table>/data/<batch:012d>/part-<n:05d>-<sha256[:16]>.parquet
    <job>/<table>/manifests/<batch:012d>.json     (create-only: the commit log)

A job with several producers (``multi_producer = true``) gives each its own chain,
the same two folders under ``<job>/<table>/producers/<producer_id>/``, and a shared
create-only log of manual conflict overrides at
``<job>/<table>/overrides/<n:012d>.json``.

Manifests are canonical JSON (sorted keys, no spaces), so the same batch always
has the same bytes and the same sha256; each names the previous manifest's sha256,
which chains the log. The format is described in ``manifest.schema.json``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FORMAT = "deltaferry.manifest/1"


def table_prefix(job: str, table: str, producer: str | None = None) -> str:
    """Where one chain lives: the table's folder, or its producer's folder in it."""
    return f"{job}/{table}" if producer is None else f"{job}/{table}/producers/{producer}"


def producers_prefix(job: str, table: str) -> str:
    return f"{job}/{table}/producers/"


def overrides_prefix(job: str, table: str) -> str:
    return f"{job}/{table}/overrides/"


def override_key(job: str, table: str, n: int) -> str:
    return f"{overrides_prefix(job, table)}{n:012d}.json"


def manifest_key(job: str, table: str, batch: int, producer: str | None = None) -> str:
    return f"{table_prefix(job, table, producer)}/manifests/{batch:012d}.json"


def manifests_prefix(job: str, table: str, producer: str | None = None) -> str:
    return f"{table_prefix(job, table, producer)}/manifests/"


def data_key(
    job: str,
    table: str,
    batch: int,
    part: int,
    sha256: str,
    producer: str | None = None,
    version: int | None = None,
) -> str:
    """A data object's key; ``version`` names the second copy of a dual-published batch."""
    prefix = table_prefix(job, table, producer)
    name = f"part-{part:05d}" if version is None else f"v{version}-part-{part:05d}"
    return f"{prefix}/data/{batch:012d}/{name}-{sha256[:16]}.parquet"


def batch_of_manifest_key(key: str) -> int | None:
    """Batch number of a manifest key, or None for anything else under the prefix."""
    name = key.rsplit("/", 1)[-1]
    stem, dot, ext = name.partition(".")
    if ext != "json" or not dot or not stem.isdigit() or len(stem) != 12:
        return None
    return int(stem)


def canonical(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse(data: bytes, *, key: str) -> dict[str, Any]:
    """Parse manifest bytes; raises ValueError naming the key if they are not a manifest."""
    try:
        m = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"manifest {key} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(
            f"manifest {key} has unknown format {m.get('format') if isinstance(m, dict) else None!r}"
        )
    for field in ("job", "table", "batch", "prev_sha256", "files", "seq", "rows"):
        if field not in m:
            raise ValueError(f"manifest {key} lacks required field '{field}'")
    return m
