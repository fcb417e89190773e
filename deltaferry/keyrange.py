"""The range of primary keys a batch of a split cut carries (``deltaferry/cut.py``), as a
plan records it (``deltaferry/checkpoints.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyRange:
    """The primary keys a batch of a cut carries: those after ``after`` (exclusive) and up
    to ``through`` (inclusive), in the order of the key's columns; None: unbounded on that
    side. Each bound is the key's values as DuckDB's text of the staged column (``CAST(k AS
    VARCHAR)``), read back with a cast to the staged column's type, so every key type
    compares exactly as DuckDB orders it. ``KeyRange()`` is the whole cut."""

    after: tuple[str, ...] | None = None
    through: tuple[str, ...] | None = None
    # the key's columns the bounds are values of, by name (None: recorded before names
    # were kept, the table's primary key then)
    columns: tuple[str, ...] | None = None

    @property
    def whole(self) -> bool:
        return self.after is None and self.through is None

    def as_json(self, side: str) -> str | None:
        """``after``, ``through`` or ``columns`` as a JSON list (how a plan records it), or
        None."""
        bound = getattr(self, side)
        return None if bound is None else json.dumps(list(bound))

    @classmethod
    def from_json(
        cls, after: str | None, through: str | None, columns: str | None = None
    ) -> KeyRange:
        """The range a plan recorded (``as_json`` of each side and of ``columns``)."""

        def bound(text: str | None) -> tuple[str, ...] | None:
            return None if text is None else tuple(json.loads(text))

        return cls(bound(after), bound(through), bound(columns))

    def describe(self) -> str:
        """``keys after [..] through [..]`` for logs and errors ('' for the whole cut)."""
        parts = []
        if self.after is not None:
            parts.append(f"after {list(self.after)}")
        if self.through is not None:
            parts.append(f"through {list(self.through)}")
        return "keys " + " ".join(parts) if parts else ""
