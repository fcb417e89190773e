"""A lake store that records its listings, for tests of what a read lists."""

from __future__ import annotations

from typing import Any


class ListingSpy:
    """The lake ``inner``, recording every listing in ``calls``: (prefix, start_after, keys
    returned). Every other operation is the inner store's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str | None, list[str]]] = []

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        keys = self.inner.list(prefix, start_after=start_after)
        self.calls.append((prefix, start_after, keys))
        return keys

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
