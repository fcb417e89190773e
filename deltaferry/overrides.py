"""Manual conflict overrides: a create-only, numbered log in the lake that every reader applies.

``<job>/<table>/overrides/<n:012d>.json`` holds one entry: pin a key to a producer's
newest version of it, to a value, or to a delete; or remove the key's override. The
newest entry of a key is in force. Entries are numbered without gaps and each names
the sha256 of the one before (a hash chain, like manifests), so a deleted or edited
entry is found; they are signed like manifests when the writer has a signing key, and
readers verify them with the same keyring.
"""

from __future__ import annotations

import getpass
import json
import socket
from typing import Any

from deltaferry.errors import ConfigError, VerificationError
from deltaferry.keys import Keyring
from deltaferry.statedb import now
from destinations.lake import LakeStore
from destinations.manifest import canonical, override_key, overrides_prefix, sha256

FORMAT = "deltaferry.override/1"


def numbers(lake: LakeStore, job: str, table: str, after: int = 0) -> list[int]:
    """The override log's entry numbers, ascending; with ``after``, only those above it,
    listed from after its key (``verify.numbered``)."""
    from deltaferry.verify import numbered

    return numbered(lake, overrides_prefix(job, table), after)


def read_overrides(
    lake: LakeStore,
    job: str,
    table: str,
    *,
    after: int = 0,
    prev_sha256: str | None = None,
    keyring: Keyring | None = None,
) -> list[dict[str, Any]]:
    """Entries numbered after ``after``, in order, each checked: numbered without gaps,
    chained to the one before (``prev_sha256``), in its place, well formed and signed.
    Each entry is returned with its own ``sha256``, which the next one names."""
    keyring = keyring if keyring is not None else Keyring()
    entries = []
    expected, prev = after + 1, prev_sha256
    for n in numbers(lake, job, table, after):
        key = override_key(job, table, n)
        where = f"job '{job}' table '{table}' override #{n}"
        if n != expected:
            raise VerificationError(
                f"job '{job}' table '{table}' override #{expected}: missing from the log "
                f"(next present is #{n})"
            )
        raw = lake.get(key)
        if raw is None:
            raise VerificationError(f"{where}: {key} vanished while reading")
        try:
            entry = json.loads(raw)
        except ValueError:
            raise VerificationError(f"{where}: {key} is not JSON") from None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise VerificationError(f"{where}: {key} is not an override entry")
        if (entry.get("job"), entry.get("table"), entry.get("n")) != (job, table, n):
            raise VerificationError(f"{where}: the entry is for another place (moved or replaced)")
        _check_fields(entry, where)
        keyring.verify(entry, where=where)
        if entry.get("prev_sha256") != prev:
            raise VerificationError(
                f"{where}: chain broken: prev_sha256 {entry.get('prev_sha256')} != {prev}"
            )
        prev = sha256(raw)
        entries.append({**entry, "sha256": prev})
        expected = n + 1
    return entries


def _check_fields(entry: dict[str, Any], where: str) -> None:
    """An entry either removes a key's override or pins it to exactly one thing."""
    if not isinstance(entry.get("key"), str) or not entry["key"]:
        raise VerificationError(f"{where}: the entry has no key")
    producer, value, delete = entry.get("producer"), entry.get("value"), entry.get("delete")
    if not (producer is None or isinstance(producer, str)):
        raise VerificationError(f"{where}: producer must be text")
    if not (value is None or isinstance(value, dict)):
        raise VerificationError(f"{where}: value must be a JSON object")
    if not isinstance(delete, bool):
        raise VerificationError(f"{where}: delete must be true or false")
    chosen = sum([producer is not None, value is not None, delete])
    if entry.get("action") == "pin" and chosen != 1:
        raise VerificationError(f"{where}: a pin names exactly one of producer, value, delete")
    if entry.get("action") == "remove" and chosen:
        raise VerificationError(f"{where}: a remove names no producer, value or delete")
    if entry.get("action") not in ("pin", "remove"):
        raise VerificationError(f"{where}: action must be 'pin' or 'remove'")


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def write_override(
    lake: LakeStore,
    job: str,
    table: str,
    *,
    key: str,
    action: str,
    producer: str | None = None,
    value: dict[str, Any] | None = None,
    delete: bool = False,
    by: str | None = None,
    reason: str,
    keyring: Keyring | None = None,
) -> dict[str, Any]:
    """Append an entry to the table's override log (create-only; a racing writer's number
    is skipped, never overwritten). Returns the stored entry."""
    if not reason.strip():
        raise ConfigError(
            f"job '{job}' table '{table}' key '{key}': an override needs a reason (--reason)"
        )
    keyring = keyring if keyring is not None else Keyring()
    for _ in range(20):
        existing = numbers(lake, job, table)
        n = (existing[-1] if existing else 0) + 1
        prev = None
        if existing:
            raw = lake.get(override_key(job, table, existing[-1]))
            if raw is None:
                continue  # listed but not readable yet: look again
            prev = sha256(raw)
        entry: dict[str, Any] = {
            "format": FORMAT,
            "job": job,
            "table": table,
            "n": n,
            "key": key,
            "action": action,
            "producer": producer,
            "value": value,
            "delete": delete,
            "by": by or who(),
            "reason": reason.strip(),
            "created_at": now().isoformat(),
            "prev_sha256": prev,
            "signature": None,
        }
        _check_fields(entry, f"job '{job}' table '{table}' override #{n}")
        entry = keyring.sign(entry)
        if lake.put_if_absent(override_key(job, table, n), canonical(entry)):
            return entry
    raise ConfigError(
        f"job '{job}' table '{table}': could not claim an override number after 20 attempts "
        "(many writers at once?); try again"
    )


def in_force(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The entry in force for each key of ``entries`` (the log in order, ``read_overrides``):
    the newest entry of the key, unless it is a remove (``{key: entry}``)."""
    newest: dict[str, dict[str, Any]] = {}
    for entry in entries:
        newest[entry["key"]] = entry
    return {k: e for k, e in newest.items() if e["action"] == "pin"}


def value_types(contract: Any, columns: Any) -> dict[str, str]:
    """``{column: DuckDB type}`` a replica gives the ``columns`` of the contract (a
    ``contracts.Contract``) that have a known type; the others are left out (unchecked)."""
    import pyarrow as pa

    from deltaferry.duck import duck_type

    arrow = contract.arrow_types()
    types = {}
    for c in columns:
        declared = str(contract.schema.columns[c].dtype).lower() if c in contract.columns else ""
        if c in arrow:
            types[c] = duck_type(pa.field(c, arrow[c]))
        elif declared in ("str", "string"):  # kept as objects by pandas: published as text
            types[c] = "VARCHAR"
        elif declared == "date":
            types[c] = "DATE"
    return types


def unfit_pins(
    entries: list[dict[str, Any]], contract: Any, key_columns: list[str], *, strict: bool = False
) -> list[tuple[int, str, str, str]]:
    """The value pins in force among ``entries`` that give a column of ``contract`` a value
    a replica's column of its type cannot hold exactly: ``[(n, key, column, value as
    typed)]`` in log order. What a reader refuses (``resolve.OverrideUnfit``) with
    ``strict=False``; with ``strict``, also the values a reader only takes by a cast (``"12"``
    for an integer, ``5`` for text), which the CLI refuses when it writes an entry."""
    import duckdb

    from deltaferry.merge_tables import unfit_pinned_values

    pins = [e for e in in_force(entries).values() if e.get("value") is not None]
    if not pins:
        return []
    columns = {c for e in pins for c in e["value"] if c not in key_columns}
    types = value_types(contract, sorted(columns))
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE pins (n BIGINT, key VARCHAR, value_json VARCHAR)")
        con.executemany(
            "INSERT INTO pins VALUES (?, ?, ?)",
            [[e["n"], e["key"], json.dumps(e["value"], ensure_ascii=False)] for e in pins],
        )
        unfit = unfit_pinned_values(con, "SELECT n, value_json FROM pins", types, strict=strict)
    finally:
        con.close()
    keys = {e["n"]: e["key"] for e in pins}
    return sorted((n, keys[n], column, value) for n, column, value in unfit)
