"""Reading JSON Lines exactly: no number passes through a double unless it is one.

Arrow's JSON reader (multi-threaded, fast) reads an integer as int64 and any other number
as a double: a column with one integer beyond int64 becomes double as a whole (2^53 + 1
turns into 2^53), and 12345678901234567.89 into 12345678901234568. So a file is read with
it only when every column it gives is exact (int64, bool, text, all-null, or a contract
decimal Arrow parsed from the number's text); otherwise the file is parsed again with
Python's ``json`` keeping each number's text, and each column typed from its values and
the contract's type:

- integers: int64; beyond int64, ``decimal(38, 0)`` (exact) when the contract does not
  type the column (an int contract column refuses them: declare it ``Decimal(38, 0)`` or
  ``str``); beyond 38 digits, refused unless the contract says ``str``;
- other numbers: read from their text into the contract's type (a decimal exactly, or
  refused when it has more digits than the contract's scale or precision; a float the
  nearest double); a column the contract does not type becomes double only when every
  value is exactly a double (0.1, 2.5e-3), else it is refused (declare it ``Decimal(p, s)``
  or ``str``);
- a column holding an object or a list (a JSON document) becomes text: each value's JSON,
  compact, numbers as written; ``null`` at the top of a record (or the key left out) is
  NULL, a ``null`` inside a document stays in its text;
- a ``str`` contract column keeps each value's text (numbers as written, ``true``/``false``);
  other mixes of kinds in one column are refused unless the contract types the column.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa

from sources.files.listing import SetAside

_INT64 = (-(2**63), 2**63 - 1)


class _Number(str):
    """A JSON number with a fraction or an exponent, as written."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_jsonl(
    data: bytes, types: dict[str, pa.DataType], name_of: Callable[[str], str] = str
) -> pa.Table:
    """The records of a JSON Lines file (UTF-8) as Arrow, columns in first-seen order, keys
    as written. ``types`` are the contract's, by column name as ``name_of`` makes it of a
    key (dlt's naming). Raises SetAside (with a line and column where it can)."""
    fast = _read_fast(data, types)
    return fast if fast is not None else _read_exact(data, types, name_of)


def _read_fast(data: bytes, types: dict[str, pa.DataType]) -> pa.Table | None:
    import pyarrow.json as pj

    from deltaferry.delta import arrow_input

    decimals = {n: t for n, t in types.items() if pa.types.is_decimal128(t)}
    opts = pj.ParseOptions(explicit_schema=pa.schema(decimals)) if decimals else None
    try:
        table = pj.read_json(arrow_input(data), parse_options=opts)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None  # the exact reader says what is wrong, or reads it
    for f in table.schema:
        t = f.type
        exact = pa.types.is_int64(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
        exact = exact or pa.types.is_string(t) or decimals.get(f.name) == t
        if not exact or (pa.types.is_decimal(t) and _over_precision(table[f.name], t)):
            return None
    return table


def _over_precision(col: Any, t: pa.Decimal128Type) -> bool:
    """Arrow's JSON reader checks a decimal's scale but not its precision (1234567890123456789
    into decimal(20, 2) reads as 1234567890123456789.00): any such value?"""
    import pyarrow.compute as pc

    if t.precision >= 38:  # the type itself holds no more (and 10**38 has no decimal128)
        return False
    wide = pc.abs(pc.cast(col, pa.decimal128(38, t.scale)))
    bound = pa.scalar(Decimal(10) ** (t.precision - t.scale), pa.decimal128(38, t.scale))
    return bool(pc.any(pc.greater_equal(wide, bound)).as_py())


def _read_exact(
    data: bytes, types: dict[str, pa.DataType], name_of: Callable[[str], str]
) -> pa.Table:
    decoder = json.JSONDecoder(parse_float=_Number, parse_constant=_no_constant)
    numbered = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
    lines = [n for n, _ in numbered]
    records: Any = None
    try:  # one array of all the lines: one call into the C scanner
        records = decoder.decode("[" + ",".join(line.decode() for _, line in numbered) + "]")
    except (ValueError, RecursionError):
        pass
    if (
        records is None
        or len(records) != len(numbered)
        or not all(isinstance(r, dict) for r in records)
    ):
        records = []  # line by line, to say which line is wrong
        for n, line in numbered:
            try:
                obj = decoder.decode(line.decode())
            except (ValueError, RecursionError) as e:
                raise SetAside(
                    f"not valid JSON Lines: JSON parse error on line {n}: {e}", "fix the file"
                ) from None
            if not isinstance(obj, dict):
                raise SetAside(
                    f"not valid JSON Lines: JSON parse error on line {n}: not an object",
                    "fix the file",
                )
            records.append(obj)
    if b"\\u" in data:  # only an escape makes a lone surrogate
        _refuse_lone_surrogates(records, lines)
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    arrays = [
        _column(name_of(k), [r.get(k) for r in records], types.get(name_of(k)), lines)
        for k in names
    ]
    return pa.table(arrays, names=list(names)) if names else pa.table({})


def _refuse_lone_surrogates(records: list[dict[str, Any]], lines: list[int]) -> None:
    """Set the file aside at a text (value or field name) holding a lone UTF-16 surrogate
    (``"\\ud800"``): not a Unicode character, so staging (UTF-8) cannot keep it, and the
    whole run failed with a bare "surrogates not allowed"."""
    from sources.text import lone_surrogate

    for n, record in zip(lines, records):
        found = lone_surrogate(record)
        if found is not None:
            raise SetAside(
                f"line {n}: {found}, text with a lone UTF-16 surrogate, "
                "which is not a Unicode character and which staging (UTF-8) cannot keep",
                "fix the file",
            )


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, _Number):
        return "number"
    if isinstance(v, str):
        return "str"
    return "document"  # dict or list


def _column(name: str, values: list[Any], target: pa.DataType | None, lines: list[int]) -> pa.Array:
    kinds = {_kind(v) for v in values if v is not None}
    text = target is not None and (pa.types.is_string(target) or pa.types.is_large_string(target))
    if "document" in kinds:
        return pa.array([None if v is None else _json_text(v) for v in values], pa.string())
    if text or (target is not None and len(kinds) > 1):
        return pa.array([None if v is None else _text(v) for v in values], pa.string())
    if not kinds:
        return pa.nulls(len(values))
    if kinds == {"str"}:
        return pa.array(values, pa.string())
    if kinds == {"bool"}:
        return pa.array(values, pa.bool_())
    if len(kinds) > 1 and not kinds <= {"int", "number"}:
        raise SetAside(
            f"column {name} mixes {' and '.join(sorted(kinds))} values",
            f"declare {name} in the contract (as str to keep each value's text)",
        )
    if target is not None and pa.types.is_integer(target):
        values = [_integral(v) for v in values]
        if any(isinstance(v, _Number) for v in values):  # a fraction: the cast names it
            return pa.array([None if v is None else _text(v) for v in values], pa.string())
        return _ints(name, values, lines, loose=False)
    if target is not None and not pa.types.is_floating(target):
        # decimal (exact from the text), or a type the contract's cast will refuse
        return pa.array([None if v is None else _text(v) for v in values], pa.string())
    if kinds == {"int"}:
        return _ints(name, values, lines, loose=target is None)
    if target is not None:  # float: the nearest double to each number's text
        return pa.array([None if v is None else _text(v) for v in values], pa.string())
    return _doubles(name, values, lines)


def _ints(name: str, values: list[Any], lines: list[int], loose: bool) -> pa.Array:
    lo, hi = _INT64
    for i, v in enumerate(values):
        if v is None or lo <= v <= hi:
            continue
        if loose and all(v is None or abs(v) < 10**38 for v in values):
            return pa.array(values, pa.decimal128(38, 0))
        fix = (
            f"declare {name} as str in the contract to keep its text"
            if loose
            else f"declare {name} as Decimal(38, 0) (exact up to 38 digits) or str in the contract"
        )
        too = "has more than 38 digits" if loose else "is out of int64 range"
        raise SetAside(f"column {name} value {v} (line {lines[i]}) {too}", fix)
    return pa.array(values, pa.int64())


def _doubles(name: str, values: list[Any], lines: list[int]) -> pa.Array:
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        f = float(v)
        if not _same(v, f):
            raise SetAside(
                f"column {name} value {v} (line {lines[i]}) is not exactly a double",
                f"declare {name} as Decimal(precision, scale) (or float, or str) in the contract",
            )
        out.append(f)
    return pa.array(out, pa.float64())


def _same(v: int | str, f: float) -> bool:
    """Whether the double ``f`` is the number written as ``v`` (0.1 and 0.10 are 0.1)."""
    if f != f or f in (float("inf"), float("-inf")):
        return False
    if isinstance(v, str) and repr(f) == v:  # the common case, without Decimal
        return True
    try:
        return Decimal(repr(f)) == Decimal(v)
    except InvalidOperation:
        return False


def _integral(v: Any) -> Any:
    """A number with a fraction or an exponent that is a whole number, as int (1.0, 1e3)."""
    if isinstance(v, _Number):
        d = Decimal(v)
        if d == d.to_integral_value() and d.adjusted() < 40:
            return int(d)
    return v


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _json_text(v: Any) -> str:
    """A value as compact JSON, numbers as written: a JSON value parsed here, or a nested
    Arrow value's Python form (a map's (key, value) pairs become an object; a decimal its
    digits, a double its shortest text, a date or time its ISO text). Raises ValueError
    for a value JSON cannot hold (NaN, infinity)."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(v, dict):
        items = v.items()
    elif isinstance(v, list) and v and all(isinstance(x, tuple) and len(x) == 2 for x in v):
        items = v  # an Arrow map
    elif isinstance(v, (list, tuple)):
        return "[" + ",".join(_json_text(x) for x in v) + "]"
    elif isinstance(v, _Number):
        return str.__str__(v)
    elif isinstance(v, (float, Decimal)):
        if not Decimal(v).is_finite():
            raise ValueError(f"{v} is not a JSON number")
        return repr(v) if isinstance(v, float) else str(v)
    elif isinstance(v, (str, int, bool)) or v is None:
        return json.dumps(v, ensure_ascii=False)
    elif hasattr(v, "isoformat"):
        return json.dumps(v.isoformat())
    else:
        return json.dumps(v.hex() if isinstance(v, bytes) else str(v), ensure_ascii=False)
    return (
        "{"
        + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{_json_text(x)}" for k, x in items)
        + "}"
    )


def _map_pairs(value: pa.Scalar) -> Any:
    try:
        return value.as_py(maps_as_pydicts="strict")
    except KeyError:
        return value.as_py()


def documents_as_text(table: pa.Table) -> pa.Table:
    """Nested columns (struct, list, map) of a Parquet file as JSON text (``_json_text``):
    a NULL stays NULL. Raises SetAside for a value JSON cannot hold."""
    for i, f in enumerate(table.schema):
        t = f.type
        if not (
            pa.types.is_struct(t)
            or pa.types.is_map(t)
            or pa.types.is_list(t)
            or pa.types.is_large_list(t)
            or pa.types.is_fixed_size_list(t)
        ):
            continue
        try:
            # maps as objects, an empty one too ({}: as pairs it was the list [])
            values = table[i].to_pylist(maps_as_pydicts="strict")
        except KeyError:  # a key twice in one map: that value kept as written, {"a":1,"a":2}
            values = [_map_pairs(v) for v in table[i]]
        try:
            text = [None if v is None else _json_text(v) for v in values]
        except ValueError as e:
            raise SetAside(f"column {f.name} cannot be JSON text: {e}", "fix the values") from None
        table = table.set_column(i, f.name, pa.array(text, pa.string()))
    return table
