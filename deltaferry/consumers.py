"""Readers' records in the lake: ``<job>/<table>/consumers/<id>.json``, one per reader,
written by every ``pull`` (``record_consumer``): the contract versions it reads (with
their fingerprints), its policy, its position, when it was last seen, and whether it is
stuck. Producers read them to choose the version they publish at
(``deltaferry/negotiate.py``) and ``contracts list`` shows them."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from deltaferry.errors import ConfigError
from deltaferry.readers import POLICIES, Reading
from deltaferry.statedb import now
from destinations.lake import LakeStore

FORMAT = "deltaferry.consumer/1"  # the record's own format, apart from the manifest's
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def consumers_prefix(job: str, table: str) -> str:
    return f"{job}/{table}/consumers/"


def consumer_key(job: str, table: str, consumer: str) -> str:
    return f"{consumers_prefix(job, table)}{consumer}.json"


def default_consumer_id(replica: str) -> str:
    """``<host>-<replica file stem>``, made safe for an object name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{socket.gethostname()}-{replica}")
    return stem.strip("-.")[:128] or "reader"


def check_consumer(consumer: str, policy: str) -> None:
    if not _ID.match(consumer):
        raise ConfigError(
            f"consumer id {consumer!r} must be letters, digits, '.', '_' or '-' (at most 128)"
        )
    if policy not in POLICIES:
        raise ConfigError(f"reader policy must be 'strict' or 'partial' (got {policy!r})")


def record_consumer(
    lake: LakeStore,
    reading: Reading,
    consumer: str,
    replica: str,
    position: Any,
    partial: int = 0,
) -> dict[str, Any]:
    """Write (replace) this reader's record for the table in the lake; with
    ``reading.stuck`` (the pull stopped at a batch it cannot apply) the record says so
    (``stuck: {error, since}``) and producers stop counting it (``negotiate.negotiate``)."""
    body: dict[str, Any] = {
        "format": FORMAT,
        "consumer": consumer,
        "job": reading.job,
        "table": reading.table,
        "supports": reading.supports,
        # what each version it has is (producers count it only for versions that match)
        "fingerprints": {
            str(v): reading.chain.contract(v).fingerprint
            for v in reading.supports
            if reading.chain is not None and v in reading.chain.models
        },
        "contract": {
            "ref": reading.contract.ref,
            "version": reading.known,
            "fingerprint": reading.contract.fingerprint,
        },
        "policy": reading.policy,
        "reads": reading.newest_read or None,
        "position": position,
        "partial_batches": partial,  # applied with a caution (newer version, partial policy)
        "replica": replica,
        "last_seen": now().isoformat(),
    }
    if reading.stuck:
        body["stuck"] = {"error": reading.stuck, "since": body["last_seen"]}
    lake.put(
        consumer_key(reading.job, reading.table, consumer),
        json.dumps(body, sort_keys=True, indent=1).encode(),
    )
    return body


def read_consumers(lake: LakeStore, job: str, table: str) -> list[dict[str, Any]]:
    """Every reader's record of the table; unreadable records are returned with an error."""
    out = []
    for key in lake.list(consumers_prefix(job, table)):
        if not key.endswith(".json"):
            continue
        raw = lake.get(key)
        try:
            body = json.loads(raw) if raw is not None else None
            if not isinstance(body, dict) or body.get("format") != FORMAT:
                raise ValueError("not a consumer record")
        except ValueError as e:
            body = {"consumer": key.rsplit("/", 1)[-1][:-5], "error": str(e)}
        out.append(body)
    return out


def age_seconds(record: dict[str, Any]) -> float | None:
    """Seconds since the reader was last seen (a time without zone is taken as UTC)."""
    from datetime import UTC, datetime

    try:
        seen = datetime.fromisoformat(str(record.get("last_seen")))
    except ValueError:
        return None
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    return (now() - seen).total_seconds()


def readers_behind(
    lake: LakeStore, job: str, table: str, version: int, timeout: float
) -> list[str]:
    """One line for each reader that cannot read ``version`` fully: active ones (seen within
    ``timeout``) say what they will do; ones not seen for longer no longer count."""
    from deltaferry.status import human_duration

    lines = []
    for r in read_consumers(lake, job, table):
        supports = r.get("supports") or []
        if "error" in r or not supports or max(supports) >= version:
            continue
        age = age_seconds(r)
        who = (
            f"reader '{r.get('consumer')}' (reads up to v{max(supports)}, policy {r.get('policy')})"
        )
        if r.get("stuck"):
            lines.append(f"{who} stopped at a batch it cannot apply: not holding v{version} back")
        elif age is None or age > timeout:
            lines.append(
                f"{who} was last seen {human_duration(age) if age is not None else 'never'} ago, "
                f"over the job's reader_timeout_seconds: not holding v{version} back"
            )
        else:
            will = "stop" if r.get("policy") == "strict" else "apply the columns it knows"
            lines.append(f"{who} will {will} at batches published at v{version}")
    return lines
