"""Casting a column to its contract type exactly: every value keeps its value (and its
null-ness) or the cast is refused, naming the first value that does not fit.

Arrow's own safe casts already refuse most losses (text that is not a number, an integer
out of range, a decimal with more digits than the target's scale or precision, a
fraction into an integer). This adds the ones it lets through silently:

- a double into a decimal is rounded by Arrow (0.125 into ``decimal(20, 2)`` gives 0.12):
  here the double is read as its shortest text (the digits that read back as the same
  double, 0.1 for 0.1) and that text must fit the decimal, or it is refused;
- text into a double that overflows to infinity (``1e400``) or underflows to zero
  (``1e-400``) is refused; ``inf``, ``-inf`` and ``nan`` written as such are kept.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


class InexactCast(ValueError):
    """A column cannot take its target type without changing a value.

    ``row`` is the 1-based position of the first value that does not fit (None when it
    cannot be told), ``value`` that value as text, ``why`` Arrow's (or our) reason."""

    def __init__(self, target: pa.DataType, row: int | None, value: str | None, why: str) -> None:
        self.target, self.row, self.value, self.why = target, row, value, why
        # where, for messages: " (row 3: '0.125')"
        self.at = "" if row is None else f" (row {row}: {value})"
        super().__init__(f"cannot be {target}{self.at}: {why}")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def cast_exact(col: Any, target: pa.DataType) -> Any:
    """``col`` (an Array or ChunkedArray) as ``target``, value for value. Raises InexactCast."""
    src = col.type
    if pa.types.is_decimal(target) and pa.types.is_floating(src):
        col = pc.cast(col, pa.string())  # shortest text of each double: read back the same
    try:
        out = pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise _locate(col, target, _first_line(e)) from None
    if pa.types.is_floating(target) and _is_text(col.type):
        _check_float_text(col, out, target)
    if pa.types.is_date(target) and pa.types.is_timestamp(src):
        _check_midnights(col, out)
    return out


def _check_midnights(col: Any, out: Any) -> None:
    """A timestamp cast to a date is exact only at midnight (Arrow cuts the time of day)."""
    cut = pc.fill_null(pc.not_equal(pc.cast(out, col.type), col), False)
    if pc.any(cut).as_py():
        i = pc.index(cut, True).as_py()
        raise InexactCast(out.type, i + 1, repr(col[i].as_py()), "a time of day would be cut")


def _check_float_text(text: Any, out: Any, target: pa.DataType) -> None:
    written_inf = pc.match_substring_regex(text, r"(?i)^\s*[+-]?inf")
    overflow = pc.and_(pc.is_inf(out), pc.invert(written_inf))
    # a mantissa with a non-zero digit that reads as zero
    nonzero = pc.match_substring_regex(text, r"^\s*[+-]?[0-9.]*[1-9]")
    underflow = pc.and_(pc.equal(out, pa.scalar(0, out.type)), nonzero)
    for bad, why in ((overflow, "out of range (would be infinity)"), (underflow, "too small (would be 0)")):
        bad = pc.fill_null(bad, False)
        if pc.any(bad).as_py():
            i = pc.index(bad, True).as_py()
            raise InexactCast(target, i + 1, repr(text[i].as_py()), why)


def _locate(col: Any, target: pa.DataType, why: str) -> InexactCast:
    """The first value of ``col`` that does not cast (scanned in slices, on the error path only)."""
    step = 4096
    for start in range(0, len(col), step):
        part = col.slice(start, step)
        try:
            pc.cast(part, target)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        for i in range(len(part)):
            try:
                pc.cast(part.slice(i, 1), target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                return InexactCast(target, start + i + 1, repr(part[i].as_py()), _first_line(e))
    return InexactCast(target, None, None, why)


# the fraction of a time text (after HH:MM:SS)
_FRACTION = re.compile(r"\d:\d\d[.,](\d+)")


def finer_than_microseconds(text: str) -> bool:
    """Whether a time text has non-zero digits beyond microseconds (a timestamp in
    microseconds would cut them)."""
    m = _FRACTION.search(text)
    return bool(m and m.group(1)[6:].strip("0"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
