"""Text a source sends that staging cannot keep."""

from __future__ import annotations

from typing import Any


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """Where ``value`` (a record: its field names and values, nested) first holds text with a
    lone UTF-16 surrogate, as a phrase for a message (``field 'doc.p[1]' holds '\\udc00'``,
    ``the field name '\\udbff' (in 'doc')``); None when it holds none. Printable: a
    surrogate is written as its escape."""
    if isinstance(value, str):
        return None if _valid(value) else f"field '{printable(path)}' holds {value!r}"
    if isinstance(value, dict):
        for k, v in value.items():
            name = str(k)
            if not _valid(name):
                where = f" (in '{printable(path)}')" if path else ""
                return f"the field name {name!r}{where}"
            found = lone_surrogate(v, f"{path}.{name}" if path else name)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = lone_surrogate(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _valid(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` as valid UTF-8, a lone UTF-16 surrogate written as its escape (``\\ud800``):
    a message quoting a source's text must still reach a terminal, a log or DuckDB (which
    refuses such text)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
