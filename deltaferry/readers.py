"""What a reader knows, and what it does with a batch published at a newer contract version.

A reader knows the contract versions its own code has (the job's contract for the table,
and every version before it). Meeting a batch published at a newer version, it follows
its policy (a batch at a version it has must carry that version's fingerprint, else
``FingerprintError`` stops the pull before the batch is applied, whatever the policy):

- ``strict`` (default): it stops with an error naming both versions; nothing of that
  batch is applied (the batches before it are).
- ``partial``: it applies the columns it knows (the key must be among them) and records a
  caution on the batch in the replica (``_deltaferry_batches.caution``, or
  ``_deltaferry_chains.caution`` for several producers) saying what it left out.

Each pull records the reader in the lake, ``<job>/<table>/consumers/<id>.json``: the
versions it reads, its policy, when it was last seen and where it is, so producers and
``deltaferry contracts list`` know who reads what.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from contracts import Contract
from deltaferry.delta import OP_COLUMN, SEQ_COLUMN
from deltaferry.errors import ConfigError, TerminalError
from deltaferry.state import now
from destinations.lake import LakeStore

POLICIES = ("strict", "partial")
FORMAT = "deltaferry.consumer/1"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class VersionError(TerminalError):
    """A batch is published at a contract version newer than a strict reader knows."""


class FingerprintError(VersionError):
    """A batch is published at a version this reader has, but that version's contract is
    another one (its fingerprint differs): the same number names two contracts."""


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


@dataclass
class Reading:
    """One table as a reader knows it."""

    job: str
    table: str
    contract: Contract
    primary_key: list[str]
    policy: str = "strict"
    chain: Any = None  # the reader's contracts.Chain: batches at older versions are upgraded
    newest_read: int = 0  # the newest contract version this pull applied
    warning: str | None = None  # the reader's record could not be written

    @property
    def known(self) -> int:
        return self.contract.version

    @property
    def first(self) -> int:
        """The oldest version this reader reads: its chain's first; a contract of one
        version reads every earlier version as published (missing columns stay NULL)."""
        if self.chain is not None and len(self.chain.versions) > 1:
            return self.chain.versions[0]
        return 1

    @property
    def supports(self) -> list[int]:
        return list(range(self.first, self.known + 1))

    def admit(
        self,
        batch: int,
        manifest: dict[str, Any],
        data: pa.Table,
        producer: str | None = None,
        also: pa.Table | None = None,
    ) -> tuple[pa.Table, str | None]:
        """The batch's data as this reader applies it, and a caution when read partially.
        Raises VersionError when the batch is newer than a strict reader knows. A batch
        published at two versions (``also``) is read at the newer one this reader knows."""
        published = manifest.get("contract") or {}
        version = int(published.get("version") or 1)
        second = manifest.get("also")
        self._same_contract(batch, published, producer)
        if second is not None:
            self._same_contract(batch, second.get("contract") or {}, producer)
        if second is not None and also is not None:
            newer = int(second["contract"]["version"])
            if version < newer <= self.known:
                published, version, data = second["contract"], newer, also
        first = self.first
        chained = self.chain is not None and len(self.chain.versions) > 1
        if chained and first <= version < self.known:
            self.newest_read = max(self.newest_read, version)
            return self._upgrade(batch, data, version, producer), None
        if first <= version <= self.known:  # its own version, or (one version) any older one
            self.newest_read = max(self.newest_read, version)
            return data, None
        if version < first:  # older than anything this reader's chain can upgrade
            self.newest_read = max(self.newest_read, version)
            return data, (
                f"published at contract v{version}, older than this reader's first version "
                f"v{first}: applied as published"
            )
        chain = f" producer '{producer}'" if producer else ""
        where = f"job '{self.job}' table '{self.table}'{chain} batch {batch}"
        if self.policy == "strict":
            raise VersionError(
                f"{where} is published at contract v{version} ({published.get('ref')}, "
                f"fingerprint {str(published.get('fingerprint'))[:12]}); this reader knows up to "
                f"v{self.known} ({self.contract.ref}) and its policy is strict. Upgrade the "
                "reader's contracts, or pull with --policy partial to apply the columns it knows"
            )
        known = set(self.contract.columns) | {OP_COLUMN, SEQ_COLUMN}
        missing_key = [c for c in self.primary_key if c not in data.column_names]
        if missing_key:
            raise VersionError(
                f"{where} is published at contract v{version} without the key column(s) "
                f"{', '.join(missing_key)} this reader (v{self.known}) keys on: even a partial "
                "read cannot apply it; upgrade the reader's contracts"
            )
        self.newest_read = max(self.newest_read, self.known)
        kept = [c for c in data.column_names if c in known]
        left_out = [c for c in data.column_names if c not in known]
        absent = [c for c in self.contract.columns if c not in data.column_names]
        caution = f"published at contract v{version}, read as v{self.known} (partial): " + (
            f"left out {', '.join(left_out)}" if left_out else "no unknown columns"
        )
        if absent:
            caution += f"; not in the batch: {', '.join(absent)}"
        return data.select(kept), caution

    def _same_contract(self, batch: int, published: dict[str, Any], producer: str | None) -> None:
        """Raise FingerprintError when ``published`` (a manifest's ``contract``) names a
        version this reader's chain has, with another fingerprint. Versions the reader does
        not have, and manifests without a fingerprint, are not compared."""
        version = int(published.get("version") or 1)
        theirs = published.get("fingerprint")
        if not theirs or self.chain is None or version not in self.chain.models:
            return
        ours = self.chain.contract(version)
        if ours.fingerprint == theirs:
            return
        chain = f" producer '{producer}'" if producer else ""
        raise FingerprintError(
            f"job '{self.job}' table '{self.table}'{chain} batch {batch} is published at contract "
            f"v{version} {published.get('ref')} with fingerprint {str(theirs)[:16]}, but this "
            f"reader's v{version} ({ours.ref}) has fingerprint {ours.fingerprint[:16]}: one "
            "version number names two different contracts; nothing of the batch was applied. "
            "Use the producer's contract for that version (or give the changed contract a new "
            "version number) and pull again"
        )

    def _upgrade(self, batch: int, data: pa.Table, version: int, producer: str | None) -> pa.Table:
        from contracts import MigrationError

        try:
            return _upgrade_table(self.chain, data, version, self.known)
        except (MigrationError, KeyError, ValueError, TypeError) as e:
            chain = f" producer '{producer}'" if producer else ""
            raise VersionError(
                f"job '{self.job}' table '{self.table}'{chain} batch {batch}: upgrading its rows "
                f"from contract v{version} to v{self.known} failed ({type(e).__name__}: {e})"
            ) from None


def _upgrade_table(chain: Any, data: pa.Table, start: int, target: int) -> pa.Table:
    """A batch's rows taken from contract version ``start`` to ``target`` (``_op``, ``_seq`` kept)."""
    cols = [c for c in data.column_names if c not in (OP_COLUMN, SEQ_COLUMN)]
    out = chain.migrate_arrow(data.select(cols), start, target)
    for c in (OP_COLUMN, SEQ_COLUMN):
        if c in data.column_names:
            out = out.append_column(c, data[c])
    return out


def record_consumer(
    lake: LakeStore,
    reading: Reading,
    consumer: str,
    replica: str,
    position: Any,
    partial: int = 0,
) -> dict[str, Any]:
    """Write (replace) this reader's record for the table in the lake."""
    body = {
        "format": FORMAT,
        "consumer": consumer,
        "job": reading.job,
        "table": reading.table,
        "supports": reading.supports,
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
        if age is None or age > timeout:
            lines.append(
                f"{who} was last seen {human_duration(age) if age is not None else 'never'} ago, "
                f"over the job's reader_timeout_seconds: not holding v{version} back"
            )
        else:
            will = "stop" if r.get("policy") == "strict" else "apply the columns it knows"
            lines.append(f"{who} will {will} at batches published at v{version}")
    return lines
