"""Garbage collection: remove only objects of a kind known to be garbage.

Objects left by killed or losing writers are invisible to readers (only manifests
make data visible) but cost storage. ``collect`` reads, per table of a job, every
chain's manifests (the table's own, and each producer's with several producers), then
sorts every object under ``<job>/<table>/`` into a kind (``classify``). It removes
only kinds on an allow-list:

- ``data`` objects (``[producers/<p>/]data/<batch>/[v<k>-]part-<n>-<sha>.parquet``) that
  no manifest names, in a batch that is already committed (they can only be leftovers of
  a losing or retried writer), or in a batch not committed yet and older than the grace
  period (a writer may still be publishing it);
- ``temporary`` files of interrupted writes (``file://``: ``.tmp-*.partial``) older than
  the grace period;
- incomplete multipart uploads (S3) under the table older than the grace period.

Everything else is kept, whatever its age: manifests (the commit log), data a manifest
names (its own files and a dual-published ``also`` copy), readers' records
(``consumers/<id>.json``, read by producers for contract negotiation and by
``contracts list``), the conflict override log (``overrides/<n>.json``), data of a batch
whose manifest is unreadable or missing below the chain's head (``verify`` names those),
and any object of a kind this module does not know (reported, never deleted).

Readers never delete anything; only this command does.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from deltaferry.config import JobConfig
from deltaferry.verify import list_batches, producers
from destinations.lake import LakeStore
from destinations.manifest import Manifest, manifest_key

MANIFEST = "manifest"
DATA = "data"
TEMPORARY = "temporary"
READER_RECORD = "reader record"
OVERRIDE = "override"
UNKNOWN = "unknown"

#: The kinds ``collect`` may remove (when the rules above say so); every other kind is kept.
REMOVABLE = frozenset({DATA, TEMPORARY})

_NUMBERED = r"\d{12}\.json"
_CHAIN = r"(?:producers/(?P<producer>[A-Za-z0-9_.-]+)/)?"
_PATTERNS = [
    (MANIFEST, re.compile(rf"^{_CHAIN}manifests/(?P<batch>\d{{12}})\.json$")),
    (
        DATA,
        re.compile(
            rf"^{_CHAIN}data/(?P<batch>\d{{12}})/(?:v\d+-)?part-\d{{5}}-[0-9a-f]{{16}}\.parquet$"
        ),
    ),
    (READER_RECORD, re.compile(r"^consumers/[A-Za-z0-9][A-Za-z0-9_.-]*\.json$")),
    (OVERRIDE, re.compile(rf"^overrides/{_NUMBERED}$")),
]


@dataclass(frozen=True)
class Kind:
    """What an object under ``<job>/<table>/`` is: its kind, and for manifests and data
    the chain (``producer``, None for the table's own) and batch number."""

    kind: str
    producer: str | None = None
    batch: int | None = None


def classify(job: str, table: str, key: str) -> Kind:
    """The kind of a lake key of table ``table`` of job ``job`` (see the module docstring);
    ``UNKNOWN`` for anything that is not part of the layout."""
    base = f"{job}/{table}/"
    if not key.startswith(base):
        return Kind(UNKNOWN)
    rel = key[len(base) :]
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(".tmp-") and name.endswith(".partial"):
        return Kind(TEMPORARY)
    for kind, pattern in _PATTERNS:
        m = pattern.match(rel)
        if m:
            groups = m.groupdict()
            batch = int(groups["batch"]) if groups.get("batch") else None
            return Kind(kind, groups.get("producer"), batch)
    return Kind(UNKNOWN)


@dataclass
class GcReport:
    """What ``collect`` found: ``referenced`` objects (manifests and the data they name),
    ``garbage`` removed (or, in a dry run, to remove) with the reason, recent uncommitted
    objects ``kept_in_flight``, objects ``kept`` by kind (every kind not removed, counted),
    ``kept_notes`` (key, why) for objects kept that look odd, and ``aborted_uploads``."""

    referenced: int = 0
    garbage: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    kept_in_flight: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # kind -> objects kept
    kept_notes: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    aborted_uploads: list[str] = field(default_factory=list)

    def keep(self, kind: str) -> None:
        self.kept[kind] = self.kept.get(kind, 0) + 1


@dataclass
class _Chain:
    batches: set[int]
    last: int
    unreadable: set[int]


def collect(
    job: JobConfig, lake: LakeStore, *, grace_seconds: float = 3600, dry_run: bool = False
) -> GcReport:
    """Remove the garbage of every table of ``job`` (see the module docstring).
    ``grace_seconds``: objects of uncommitted batches and temporary files younger than this
    are kept. ``dry_run``: report, remove nothing (and abort no upload)."""
    report = GcReport()
    cutoff = time.time() - grace_seconds
    for t in job.tables:
        referenced: set[str] = set()
        chains: dict[str | None, _Chain] = {}
        # every chain present, whatever the job's mode says: data is garbage only against
        # the manifests of its own chain
        for producer in [None, *producers(lake, job.name, t.name)]:
            batches = list_batches(lake, job.name, t.name, producer)
            chain = _Chain(set(batches), batches[-1] if batches else 0, set())
            chains[producer] = chain
            for b in batches:
                key = manifest_key(job.name, t.name, b, producer)
                raw = lake.get(key)
                try:
                    if raw is None:
                        raise ValueError("vanished")
                    referenced.update(f.key for f in Manifest.parse(raw, key=key).all_files())
                except ValueError:
                    chain.unreadable.add(b)  # verify's business; never delete what it may name
        report.referenced += sum(len(c.batches) for c in chains.values()) + len(referenced)
        for key, mtime in lake.entries(f"{job.name}/{t.name}/"):
            what = classify(job.name, t.name, key)
            reason = _garbage_reason(what, key, mtime, cutoff, referenced, chains, report)
            if reason is None:
                continue
            report.garbage.append((key, reason))
            if not dry_run:
                lake.delete(key)
        if not dry_run:
            report.aborted_uploads.extend(
                lake.abort_incomplete_uploads(f"{job.name}/{t.name}/", cutoff)
            )
    return report


def _garbage_reason(
    what: Kind,
    key: str,
    mtime: float,
    cutoff: float,
    referenced: set[str],
    chains: dict[str | None, _Chain],
    report: GcReport,
) -> str | None:
    """Why ``key`` is garbage, or None (kept: counted or noted in ``report``)."""
    if what.kind not in REMOVABLE or key in referenced:
        report.keep(what.kind)
        if what.kind == UNKNOWN:
            report.kept_notes.append((key, "not part of the lake layout; gc never removes it"))
        return None
    if what.kind == TEMPORARY:
        if mtime >= cutoff:
            report.kept_in_flight.append(key)
            return None
        return "temporary file of an interrupted write"
    chain = chains.get(what.producer)
    batch = what.batch
    assert batch is not None
    if chain is None:  # a producer folder listed after the manifests were read
        report.kept_in_flight.append(key)
        return None
    if batch in chain.unreadable:
        report.keep(what.kind)
        report.kept_notes.append((key, f"the manifest of batch {batch} is unreadable (run verify)"))
        return None
    if batch in chain.batches:
        return f"not named by the manifest of committed batch {batch}"
    if batch < chain.last:
        report.keep(what.kind)
        report.kept_notes.append(
            (key, f"batch {batch} has no manifest below the chain's head {chain.last} (run verify)")
        )
        return None
    if mtime < cutoff:
        return f"uncommitted batch {batch}, older than the grace period"
    report.kept_in_flight.append(key)
    return None
