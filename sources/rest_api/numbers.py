"""JSON numbers as the API wrote them, and as the table's contract will hold them.

Python's ``json`` (what ``requests`` and dlt use) reads every number with a fraction or
an exponent as a double: ``12345678901234.123456`` loses digits before a ``Decimal(20, 6)``
contract column ever sees it, ``1e400`` becomes infinity (staged as NULL) and ``1e-400``
zero, with exit 0. Here:

- ``exact_json(response)``: a response's JSON with such numbers as ``Decimal`` (integers
  are exact in Python already). ``_Watch`` (the transport) makes every JSON response of
  the read parse this way, so dlt's data selector and paginators see the same values.
- ``FieldTypes``: each top-level record field whose contract column has a type, converted
  to that type's Python value *exactly*, or the read is stopped (``TerminalError`` naming
  job, table, field, key and value; nothing of the read is published):

  ========================  =============================================================
  contract column           a JSON number becomes
  ========================  =============================================================
  ``Decimal(p, s)``         a ``Decimal``, refused if it has more than ``s`` decimal
                            places or more than ``p - s`` digits before the point
                            (number text such as ``"1.005"`` is checked the same way)
  float                     a ``float``; refused: an integer a double cannot hold
                            (2**53 + 1), a number out of range (would be infinity) or
                            too small (would be 0); other fractions round to the nearest
                            double, as reading decimal text into a double always does
  integer                   an ``int`` when it is whole (``3.0``), else left for the
                            contract to refuse; beyond 64 bits refused (also untyped)
  boolean                   ``True``/``False`` for 1/0, refused for any other number
  timestamp, date           refused: an epoch number is ambiguous (seconds? milliseconds?);
                            the API's ISO-8601 text is what a time column reads
  text, or no type          a ``float`` (as before), refused when out of range or too small
  ========================  =============================================================

- ``document_text(value)``: an object or array as compact JSON text with its numbers as
  written (``1.50`` stays ``1.50``, ``1e400`` stays a number, not ``Infinity``).

A record's content hash (``sources.change_detection.canonical_json``) takes a ``Decimal``
as the float its text reads as, so a record hashes as it did when numbers were read as
doubles: its staged hash still matches and nothing is republished on upgrade.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

import pyarrow as pa
import requests

from deltaferry.errors import TerminalError


def exact_json(response: requests.Response, **kwargs: Any) -> Any:
    """``response.json()`` with fractions and exponents read as ``Decimal``, and the
    ``NaN``/``Infinity``/``-Infinity`` some APIs write (no JSON numbers) read as floats,
    whichever parser ``requests`` uses (``simplejson``, when installed, refuses them unless
    asked): a record holding one is then held back by the read (``KeyCheck.hold_non_finite``)
    instead of the whole response failing to parse."""
    from requests import models

    kwargs.setdefault("parse_float", Decimal)
    if getattr(models.complexjson, "__name__", "") == "simplejson":  # what .json() uses
        kwargs.setdefault("allow_nan", True)
    return requests.Response.json(response, **kwargs)


class ExactJSONResponse(requests.Response):
    """A ``requests.Response`` whose ``json()`` is ``exact_json``, parsed once (dlt's data
    selector, its paginator and the read's own checks all ask for it)."""

    def json(self, **kwargs: Any) -> Any:
        if kwargs:
            return exact_json(self, **kwargs)
        if "_deltaferry_json" not in self.__dict__:
            self.__dict__["_deltaferry_json"] = exact_json(self)
        return self.__dict__["_deltaferry_json"]


def document_text(value: Any) -> str:
    """An object or array as compact JSON (keys in the API's order), numbers as written."""
    if isinstance(value, dict):
        inner = ",".join(
            f"{json.dumps(str(k), ensure_ascii=False)}:{document_text(v)}" for k, v in value.items()
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ",".join(document_text(v) for v in value) + "]"
    if isinstance(value, Decimal) and value.is_finite():
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


_INT64 = (-(2**63), 2**63 - 1)


def _kind(t: pa.DataType | None) -> str | None:
    if t is None:
        return None
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "time"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


class FieldTypes:
    """Converts a record's top-level numbers to its contract columns' types (see the module
    docstring). ``types``: contract column name -> Arrow type (``Contract.arrow_types``);
    ``normalize``: a record field's name as staged (the staging's naming convention)."""

    def __init__(self, where: str, types: dict[str, pa.DataType], normalize: Any) -> None:
        self.where = where
        self.types = types
        self.normalize = normalize
        self._field: dict[str, pa.DataType | None] = {}  # record field -> its column's type

    def decimal_hints(self) -> dict[str, dict[str, Any]]:
        """dlt column hints staging the contract's decimals at their precision and scale
        (dlt's default, decimal(38, 9), would round a 10th decimal place)."""
        return {
            n: {"data_type": "decimal", "precision": t.precision, "scale": t.scale}
            for n, t in self.types.items()
            if pa.types.is_decimal(t) and t.precision <= 38
        }

    def _type(self, name: str) -> pa.DataType | None:
        if name not in self._field:
            self._field[name] = self.types.get(self.normalize(name))
        return self._field[name]

    def convert(self, row: dict[str, Any], key: str) -> None:
        """Convert ``row``'s top-level numbers in place; ``key`` names it in a refusal.
        Number text in a decimal column is checked like a number (dlt's load would refuse
        ``"1.005"`` for ``Decimal(10, 2)`` only after the read, failing the job's load)."""
        for name, value in row.items():
            if _number(value):
                row[name] = self._value(name, value, key)
            elif isinstance(value, str) and _kind(self._type(name)) == "decimal":
                try:
                    number = Decimal(value.strip())
                except InvalidOperation:
                    continue  # not a number: the contract refuses it, naming the row
                if number.is_finite():
                    row[name] = self._value(name, number, key)

    def _value(self, name: str, value: Any, key: str) -> Any:
        target = self._type(name)
        kind = _kind(target) if target is not None else None

        def refuse(why: str) -> TerminalError:
            col = f"contract type {target}" if target is not None else "no contract type: read as a double"
            return TerminalError(
                f"{self.where}: field '{name}' value {_shown(value)} at key {key} {why} "
                f"({col}); nothing of the read is published: fix the API's value or the "
                "table's contract"
            )

        if kind == "decimal":
            return _fits_decimal(value, target, refuse)
        if kind == "time":
            raise refuse(
                "is a number where the contract's column is a time (seconds or milliseconds "
                "since 1970?); the column reads ISO-8601 text"
            )
        if kind == "boolean":
            if value in (0, 1):
                return bool(value)  # staged as the column's type, not BIGINT
            raise refuse("is a number other than 0 or 1 where the contract's column is a boolean")
        if kind == "integer" and isinstance(value, Decimal):
            if not (value.is_finite() and value == value.to_integral_value()):
                return float(value)  # a fraction: the contract refuses it, naming the row
            value = int(value)
        if isinstance(value, int):
            if kind != "float":
                if not _INT64[0] <= value <= _INT64[1]:
                    raise refuse(
                        "is beyond a 64-bit integer (staging's BIGINT); give the field a "
                        "Decimal(38, 0) (or str) contract type"
                    )
                return value
            try:
                if int(float(value)) == value:
                    return float(value)
            except OverflowError:
                pass
            raise refuse("has no exact double (a float column holds integers up to 2**53 exactly)")
        if isinstance(value, Decimal):
            f = float(value)
            if math.isinf(f) and value.is_finite():
                raise refuse("is out of range for a double, it would be infinity")
            if f == 0 and value.is_finite() and value != 0:
                raise refuse("is too small for a double, it would be 0")
            return f
        return value  # NaN or Infinity written as such: a float already


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fits_decimal(value: Any, target: Any, refuse: Any) -> Decimal:
    if isinstance(value, float):  # NaN, Infinity
        raise refuse("is not a finite number")
    d = Decimal(value)
    p, s = int(target.precision), int(target.scale)
    try:
        with localcontext() as ctx:
            ctx.prec = max(p, len(d.as_tuple().digits)) + s + 2
            exact = d.quantize(Decimal(1).scaleb(-s)) == d
    except InvalidOperation:
        exact = False
    if not exact:
        raise refuse(f"has more than {s} decimal places")
    if d != 0 and d.adjusted() + 1 > p - s:
        raise refuse(f"has more than {p - s} digits before the point")
    return d
