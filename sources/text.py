"""Text a source sends that staging cannot keep."""

from __future__ import annotations

from typing import Any


def lone_surrogate(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first text in ``value`` (a record: its field names and values, nested) that
    holds a lone UTF-16 surrogate, as (field path, text); None when there is none. The
    path is printable: a surrogate in a field name is written as its escape."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return (path or "(the record)").encode("utf-8", "backslashreplace").decode(), value
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            inner = f"{path}.{k}" if path else str(k)
            found = lone_surrogate(str(k), inner) or lone_surrogate(v, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = lone_surrogate(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None
