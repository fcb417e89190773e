"""An in-memory object store with S3's semantics, whose every request the world may fail.

- ``put`` stores (overwrites) an object; ``put_if_absent`` creates one only when absent
  (S3's ``If-None-Match: *``); a request is whole or not at all (torn bodies are refused,
  as the S3-compatible server of the real-network suite does);
- listings are strongly consistent and sorted, unless the world reorders and repeats them
  (a fault for readers: code must not trust a listing's order or count);
- before a request takes effect the world may fail it (timeout, 5xx, throttling: a
  ``TransientError``, as ``destinations/s3.py`` reports them) or crash the process; after
  it took effect, it may lose the reply (a lost acknowledgement) or crash.

The objects themselves (``objects``) are what the invariants read: never through a fault.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.sim.world import World


class SimStore:
    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.url = f"sim://{name}"
        self.objects: dict[str, bytes] = {}
        # objects a request replaced with other bytes (an invariant: must stay empty for
        # manifests; data objects are content-addressed, so replacing changes nothing)
        self.replaced: list[str] = []

    def _request(self, op: str, key: str, effect):  # noqa: ANN001, ANN202
        self.world.before_request(self, op, key)
        out = effect()
        self.world.after_request(self, op, key)
        return out

    def check(self) -> None:
        """The simulated lake always exists (a missing lake is the CLI's preflight, tested
        by the real-network suites)."""

    def put(self, key: str, data: bytes) -> None:
        def effect() -> None:
            old = self.objects.get(key)
            if old is not None and old != data:
                self.replaced.append(key)
            self.objects[key] = bytes(data)

        self._request("put", key, effect)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        def effect() -> bool:
            if key in self.objects:
                return False
            self.objects[key] = bytes(data)
            return True

        return bool(self._request("put_if_absent", key, effect))

    def get(self, key: str) -> bytes | None:
        return self._request("get", key, lambda: self.objects.get(key))

    def list(self, prefix: str, start_after: str | None = None) -> builtins.list[str]:
        def effect() -> builtins.list[str]:
            keys = sorted(k for k in self.objects if k.startswith(prefix))
            if start_after is not None:
                keys = [k for k in keys if k > start_after]
            return self.world.listing(self, keys)

        return self._request("list", prefix, effect)

    def children(self, prefix: str) -> builtins.list[str]:
        def effect() -> builtins.list[str]:
            rests = (k[len(prefix) :] for k in self.objects if k.startswith(prefix))
            return sorted({r.split("/", 1)[0] for r in rests if "/" in r.strip("/")})

        return self._request("list", prefix, effect)

    def delete(self, key: str) -> None:
        self._request("delete", key, lambda: self.objects.pop(key, None))

    def entries(self, prefix: str) -> builtins.list[tuple[str, float]]:
        return self._request(
            "list", prefix, lambda: [(k, 0.0) for k in sorted(self.objects) if k.startswith(prefix)]
        )

    def abort_incomplete_uploads(self, prefix: str, older_than: float) -> builtins.list[str]:
        return []
