"""Garbage collection: remove what no manifest names.

Objects left by killed or losing writers are invisible to readers (only manifests
make data visible) but cost storage. ``collect`` finds, per table of a job:

- data objects no manifest names, in a batch that is already committed (they can only
  be leftovers), or older than the grace period (a writer may still be publishing a
  batch that is not committed yet);
- temporary files of interrupted writes (``file://``) older than the grace period;
- incomplete multipart uploads (S3) older than the grace period.

Readers never delete anything; only this command does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from deltaferry.config import JobConfig
from deltaferry.verify import list_batches
from destinations.lake import LakeStore
from destinations.manifest import batch_of_manifest_key, manifest_key, parse, table_prefix


@dataclass
class GcReport:
    referenced: int = 0
    garbage: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    kept_in_flight: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)


def collect(
    job: JobConfig, lake: LakeStore, *, grace_seconds: float = 3600, dry_run: bool = False
) -> GcReport:
    report = GcReport()
    cutoff = time.time() - grace_seconds
    from deltaferry.verify import producers

    chains = [
        (t, p)
        for t in job.tables
        for p in (producers(lake, job.name, t.name) if job.multi_producer else [None])
    ]
    for t, producer in chains:
        base = table_prefix(job.name, t.name, producer)
        batches = list_batches(lake, job.name, t.name, producer)
        last = batches[-1] if batches else 0
        referenced: set[str] = set()
        for b in batches:
            key = manifest_key(job.name, t.name, b, producer)
            raw = lake.get(key)
            referenced.add(key)
            if raw is None:
                continue
            try:
                m = parse(raw, key=key)
                referenced.update(f["key"] for f in m["files"])
                referenced.update(f["key"] for f in (m.get("also") or {}).get("files", []))
            except ValueError:
                continue  # a broken manifest is verify's business; never delete what it may name
        report.referenced += len(referenced)
        for key, mtime in lake.entries(f"{base}/"):
            if key in referenced:
                continue
            name = key.rsplit("/", 1)[-1]
            if "/manifests/" in key and batch_of_manifest_key(key) is not None:
                continue  # a manifest is the commit record itself: never garbage
            batch = _batch_of_data_key(key)
            if name.startswith(".tmp-"):
                reason = "temporary file of an interrupted write"
                if mtime >= cutoff:
                    report.kept_in_flight.append(key)
                    continue
            elif batch is not None and batch <= last:
                reason = f"not named by the manifest of committed batch {batch}"
            elif mtime < cutoff:
                reason = f"uncommitted batch {batch}, older than the grace period"
            else:
                report.kept_in_flight.append(key)
                continue
            report.garbage.append((key, reason))
            if not dry_run:
                lake.delete(key)
        if not dry_run:
            report.aborted_uploads.extend(lake.abort_incomplete_uploads(f"{base}/", cutoff))
    return report


def _batch_of_data_key(key: str) -> int | None:
    parts = key.split("/")
    if "data" in parts:
        i = parts.index("data")
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None
