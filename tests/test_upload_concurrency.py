"""Data objects of a batch go up several at a time (``DELTAFERRY_UPLOAD_CONCURRENCY``), the
manifest only after every one of them; a failed part fails the step after the others end."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from deltaferry.checkpoints import Plan
from deltaferry.commit import upload_parts
from deltaferry.delta import Part
from destinations.manifest import FORMAT, ContractRef, CursorRange, Manifest, Ops, SeqRange, sha256

pytestmark = pytest.mark.unit


class GatedStore:
    """A lake whose ``put`` waits until ``together`` puts are in flight at once (or gives up
    after a timeout), so a test sees concurrency without timing anything."""

    def __init__(self, together: int, fail: str | None = None) -> None:
        self.barrier = threading.Barrier(together, timeout=10)
        self.stored: dict[str, bytes] = {}
        self.met = 0
        self.fail = fail
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        try:
            self.barrier.wait()
            with self.lock:
                self.met += 1
        except threading.BrokenBarrierError:
            pass
        if key == self.fail:
            raise OSError(f"connection reset while sending {key}")
        with self.lock:
            self.stored[key] = data


def _batch(n: int) -> tuple[Any, Plan, Any]:
    parts = [Part(f"part {i}".encode(), sha256(f"part {i}".encode()), 1, 1, 0) for i in range(n)]
    manifest = Manifest(
        format=FORMAT,
        job="j",
        table="t",
        batch=1,
        prev_sha256=None,
        producer_id="default",
        contract=ContractRef(ref="m:C", version=1, fingerprint="0" * 64),
        primary_key=["id"],
        cursor=CursorRange(column=None, min=None, max=None),
        seq=SeqRange(start=1, end=n),
        load_ids=["1.1"],
        rows=n,
        ops=Ops(upsert=n, delete=0),
        quarantined=0,
        files=[p.data_file(f"j/t/data/1/part-{i}") for i, p in enumerate(parts)],
        trace_id="t",
        created_at="2026-11-30T00:00:00+00:00",
        signature=None,
    )
    body = manifest.canonical()
    plan = Plan("t", 1, ["1.1"], 1, n, n, 0, body, sha256(body), 1)
    return parts, plan, SimpleNamespace(parts=parts, also=None)


def _ctx(store: GatedStore) -> Any:
    return SimpleNamespace(job=SimpleNamespace(name="j", chain=None), lake=store)


def test_parts_go_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTAFERRY_UPLOAD_CONCURRENCY", "3")
    parts, plan, delta = _batch(6)
    store = GatedStore(together=3)
    sent = upload_parts(_ctx(store), plan, delta)
    assert sent == sum(len(p.data) for p in parts)
    assert store.stored == {f"j/t/data/1/part-{i}": p.data for i, p in enumerate(parts)}
    assert store.met == 6  # every put met two others in flight: three at once


def test_one_at_a_time_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTAFERRY_UPLOAD_CONCURRENCY", "1")
    parts, plan, delta = _batch(2)
    store = GatedStore(together=2)
    store.barrier = threading.Barrier(2, timeout=0.2)
    upload_parts(_ctx(store), plan, delta)
    assert store.met == 0 and len(store.stored) == 2  # never two in flight


def test_a_failed_part_fails_the_step_after_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTAFERRY_UPLOAD_CONCURRENCY", "4")
    parts, plan, delta = _batch(4)
    store = GatedStore(together=4, fail="j/t/data/1/part-1")
    with pytest.raises(OSError, match="part-1"):
        upload_parts(_ctx(store), plan, delta)
    assert sorted(store.stored) == ["j/t/data/1/part-0", "j/t/data/1/part-2", "j/t/data/1/part-3"]
