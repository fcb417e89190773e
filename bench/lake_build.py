"""Lakes for the reader benchmarks, written directly through the lake store API (no source,
no sync): what a producer would have published, fast enough for 10M rows or 10,000 batches.

- ``build_events_lake``: one batch of ``rows`` rows of bench/sync_bench.py's ``events``
  table at ``bench_contract:Events``, in parts of ``rows_per_file`` rows, encoded as the
  producer encodes them (``deltaferry.delta._encode``: same writer options), each part
  generated, encoded and uploaded in turn (memory: one part);
- ``build_chain``: ``batches`` tiny batches (one row each) of the same table, the chain's
  manifests and data uploaded by a few threads.

Both return the head ``(batch, manifest sha256)``. The manifests are unsigned, with a
fixed trace id and creation time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

from destinations import manifest as mf
from destinations.lake import LakeStore

CONTRACT = "bench_contract:Events"  # bench/ must be importable (on sys.path)
KINDS = ["click", "view", "purchase", "refund", "signup"]
BASE = datetime(2025, 1, 1)


def contract_ref() -> mf.ContractRef:
    from contracts import load_chain

    c = load_chain(CONTRACT, where="bench").contract()
    return mf.ContractRef(ref=c.ref, version=c.version, fingerprint=c.fingerprint)


def events(first: int, n: int, seq: int) -> pa.Table:
    """Rows ``first``..``first + n - 1`` of the events table as published: every contract
    column, ``_op`` upsert, ``_seq`` from ``seq``; deterministic."""
    ids = np.arange(first, first + n, dtype=np.int64)
    stamp = pa.array(
        (np.datetime64(BASE, "ns") + ids.astype("timedelta64[s]")).astype("datetime64[ns]")
    )
    return pa.table(
        {
            "id": ids,
            "account_id": ids % 997 + 1,
            "kind": pa.array([KINDS[i % 5] for i in range(n)], pa.large_string()),
            "amount_cents": ids * 7 % 100_000,
            "note": pa.array([f"note {i}" for i in ids.tolist()], pa.large_string()),
            "updated_at": stamp,
            "deleted_at": pa.nulls(n, pa.timestamp("ns")),
            "_op": pa.array(["upsert"] * n, pa.string()),
            "_seq": np.arange(seq, seq + n, dtype=np.int64),
        }
    )


def _manifest(
    job: str,
    table: str,
    batch: int,
    prev: str | None,
    ref: mf.ContractRef,
    files: list[mf.DataFile],
    seq_start: int,
    rows: int,
    producer: str | None = None,
) -> bytes:
    first, last = BASE + timedelta(seconds=seq_start), BASE + timedelta(seconds=seq_start + rows - 1)
    return mf.Manifest(
        format=mf.FORMAT,
        job=job,
        table=table,
        batch=batch,
        prev_sha256=prev,
        producer_id=producer or "bench",
        contract=ref,
        primary_key=["id"],
        cursor=mf.CursorRange(column="updated_at", min=first.isoformat(), max=last.isoformat()),
        seq=mf.SeqRange(start=seq_start, end=seq_start + rows - 1),
        load_ids=[f"bench-{batch}"],
        rows=rows,
        ops=mf.Ops(upsert=rows, delete=0),
        quarantined=0,
        files=files,
        trace_id="bench",
        created_at="2025-01-01T00:00:00+00:00",
        signature=None,
        hlc=batch if producer is not None else None,
        hlc_seen={} if producer is not None else None,
    ).canonical()


def build_events_lake(
    lake: LakeStore,
    job: str,
    table: str,
    rows: int,
    rows_per_file: int,
    batch_rows: int | None = None,
) -> tuple[int, str]:
    """``rows`` rows in parts of ``rows_per_file``: one batch, or with ``batch_rows`` a
    chain of batches of at most that many rows each (what the producer's ``max_batch_rows``
    makes of an initial load); returns (the last batch, its manifest sha256)."""
    from deltaferry.delta import _encode

    per_batch = batch_rows or rows
    batch, prev = 0, None
    for start in range(1, rows + 1, per_batch):
        batch += 1
        n = min(per_batch, rows - start + 1)
        files = []
        for i, first in enumerate(range(start, start + n, rows_per_file)):
            chunk = events(first, min(rows_per_file, start + n - first), first)
            part = _encode(chunk)
            key = mf.data_key(job, table, batch, i, part.sha256)
            lake.put(key, part.data)
            files.append(part.data_file(key))
        raw = _manifest(job, table, batch, prev, contract_ref(), files, start, n)
        lake.put_if_absent(mf.manifest_key(job, table, batch), raw)
        prev = mf.sha256(raw)
    assert prev is not None
    return batch, prev


def build_chain(
    lake: LakeStore,
    job: str,
    table: str,
    batches: int,
    threads: int = 8,
    producer: str | None = None,
    first: int = 1,
    prev: str | None = None,
) -> tuple[int, str]:
    """One-row batches ``first``..``batches`` (row ``b`` in batch ``b``; the chain goes on
    from ``prev``, the manifest sha256 of batch ``first - 1``), of ``producer``'s chain
    when given (logical timestamp ``hlc`` = the batch number); returns the head."""
    from deltaferry.delta import _encode

    ref = contract_ref()
    objects: list[tuple[str, bytes]] = []
    for b in range(first, batches + 1):
        part = _encode(events(b, 1, b))
        key = mf.data_key(job, table, b, 0, part.sha256, producer)
        raw = _manifest(job, table, b, prev, ref, [part.data_file(key)], b, 1, producer)
        objects += [(key, part.data), (mf.manifest_key(job, table, b, producer), raw)]
        prev = mf.sha256(raw)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: lake.put(*kv), objects))
    assert prev is not None
    return batches, prev
