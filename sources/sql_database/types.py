"""Column types of SQL sources: what each source column is published as, exactly or refused.

Every column of a table gets a *plan* from its reflected SQLAlchemy type and the table's
``column_types`` setting: the published type, and how a value gets there (as read, read as
the database's own text form with ``CAST(col AS TEXT)``, or converted and checked per value
on the Python side before dlt builds its Arrow chunk). A column whose type has no exact
published form (an unconstrained ``numeric``, ``interval``, ``inet``, ``money``, a type
SQLAlchemy does not know, ...) is published as the database's own text form, which loses
nothing, and the run says so when the column is first staged (``text_form_notes``); as a
key, cursor or soft-delete column it is refused before anything is read (``ConfigError``,
one line naming job, table, column, source type and what resolves it). A single value that
does not fit its column's published type (numeric ``NaN``, a 13th decimal, a REAL in a
SQLite INTEGER column, anything but 0 and 1 in a SQLite BOOLEAN) stops its table
(``ValueRefused``, a ``TableReadError``: one line; the job's other tables go on), never
rounded or nulled.

Table settings (validated when the jobs file is read, see ``sources/sql_database/settings.py``):

* ``exclude_columns = ["col", ...]`` - neither read nor published;
* ``column_types = { col = "text" | "decimal(P,S)" | "int64" | "float64" | "bool" | "date" |
  "time" | "timestamp" | "timestamptz" | "binary" }`` - the published type.

Key, cursor and soft-delete columns cannot be excluded nor retyped (their values are
compared with the source's as read); they are read exactly by their source type's plan too,
and a staged decimal bound back to SQLite goes as an integer or its text, never a double.

This module is imported when the jobs file is read: module level stays light (the
SQLAlchemy and dlt imports are inside the functions that need them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any, Callable, Iterator

from deltaferry.errors import ConfigError, TableReadError
from sources.sql_database.settings import source_table

log = logging.getLogger("deltaferry.sql_database")

# published types a column_types entry may name (decimal takes (P,S), 1 <= P <= 38)
SIMPLE_TYPES = (
    "text",
    "int64",
    "float64",
    "bool",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "binary",
)
_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
# decimal128, the widest exact decimal of Arrow, Parquet readers and DuckDB
MAX_PRECISION = 38
_INT64 = (-(2**63), 2**63 - 1)
_WIDE = Context(prec=200)


class ValueRefused(TableReadError):
    """A source value its column's published type cannot carry exactly (one line)."""


class _BadValue(Exception):
    """Raised by a value converter: ``what`` describes the value class."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


# ---------------------------------------------------------------------------------------
# settings (jobs file)


def parse_type(spec: Any) -> tuple[str, int | None, int | None] | None:
    """``("decimal", P, S)`` or ``(name, None, None)`` for a valid column type spec; None
    for anything else."""
    if not isinstance(spec, str):
        return None
    s = spec.strip().lower()
    if s in SIMPLE_TYPES:
        return s, None, None
    m = _DECIMAL.match(s)
    if m:
        p, sc = int(m.group(1)), int(m.group(2))
        if 1 <= p <= MAX_PRECISION and 0 <= sc <= p:
            return "decimal", p, sc
    return None


def type_name(parsed: tuple[str, int | None, int | None]) -> str:
    kind, p, s = parsed
    return f"decimal({p},{s})" if kind == "decimal" else kind


# ---------------------------------------------------------------------------------------
# plans


@dataclass
class Plan:
    """How one source column is read and published."""

    column: str
    source: str  # the source type, as the database names it
    target: str  # the published type ("decimal(12,2)", "text", "json", ...)
    dlt_type: Any = None  # the SQLAlchemy type dlt maps to the published type (None: as is)
    cast_text: bool = False  # read CAST(col AS TEXT)
    convert: Callable[[Any], Any] | None = None  # per value; raises _BadValue
    raw: bool = False  # skip the dialect's own result processing (convert sees the driver's)
    # SQL (the column -> an expression): the value's text where it is one the published
    # type cannot carry (a PostgreSQL numeric NaN), NULL elsewhere; such rows are
    # held back in quarantine (``hold_unfit``) and ``convert`` turns the value into NULL
    unfit: Callable[[Any], Any] | None = None
    # the driver cannot read an unfit value at all (psycopg and a timestamp 'infinity'):
    # the column is selected as NULL where ``unfit`` says it does not fit
    guard: bool = False
    # why the column is published as its text form by default (no column_types entry, and
    # its type has no exact published type of its own); None for every other plan
    defaulted: str | None = None


def _unwrap(sa_type: Any) -> Any:
    # a PostgreSQL domain is its base type with checks
    while hasattr(sa_type, "data_type") and type(sa_type).__name__ == "DOMAIN":
        sa_type = sa_type.data_type
    return sa_type


def _source_name(sa_type: Any, dialect: Any) -> str:
    try:
        return str(sa_type.compile(dialect=dialect))
    except Exception:  # noqa: BLE001 - a type the dialect cannot render (NullType)
        return type(sa_type).__name__.upper()


def _family(sa_type: Any) -> str:
    import sqlalchemy as sa

    t = _unwrap(sa_type)
    if isinstance(t, sa.types.NullType):
        return "unknown"
    if isinstance(t, sa.Uuid):
        return "uuid"
    if isinstance(t, sa.Float) or (isinstance(t, sa.Numeric) and t.asdecimal is False):
        return "float"
    if isinstance(t, sa.Numeric):  # before Integer: some dialects' numerics are both
        return "numeric"
    if isinstance(t, sa.Integer):
        return "integer"
    if isinstance(t, sa.Boolean):
        return "bool"
    if isinstance(t, sa.String):
        return "text"
    if isinstance(t, sa.types._Binary):
        return "binary"
    if isinstance(t, sa.DateTime):
        return "timestamptz" if t.timezone else "timestamp"
    if isinstance(t, sa.Date):
        return "date"
    if isinstance(t, sa.Time):
        return "timetz" if t.timezone else "time"
    if isinstance(t, sa.JSON):
        return "json"
    if isinstance(t, sa.ARRAY):
        return "array"
    return "other"


def _DOUBLE() -> Any:  # noqa: N802 - what dlt maps to "double" (a Float is no Numeric in SA 2.1)
    import sqlalchemy as sa

    return sa.Numeric(asdecimal=False)


class Refusal(Exception):
    """A column type that cannot be published as is; ``fix`` says which setting resolves it."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason, self.fix = reason, fix


def plan_column(
    name: str, sa_type: Any, dialect: Any, declared: str | None = None
) -> Plan:
    """The plan for one column; raises ``Refusal`` for a type without an exact published form.
    ``declared`` is the table's ``column_types`` entry for the column, if any."""
    import sqlalchemy as sa

    t = _unwrap(sa_type)
    sqlite = dialect.name == "sqlite"
    source = _source_name(sa_type, dialect)
    fam = _family(t)
    plan = Plan(name, source, fam)
    text_fix = f'column_types = {{ {name} = "text" }} (the database\'s text form)'
    if declared is not None:
        return _declared_plan(plan, t, fam, parse_type(declared), sqlite)
    if fam == "integer":
        plan.target = "int64"
        if sqlite:  # SQLite stores what it is given: a REAL or TEXT may sit in an INTEGER column
            plan.convert, plan.raw = _sqlite_int, True
        return plan
    if fam == "numeric":
        p, s = t.precision, t.scale
        if p is None:
            raise Refusal(
                "a numeric without precision and scale has no fixed decimal type (dlt's "
                "default decimal(38,9) would fail or cut digits on values with more decimals)",
                f'column_types = {{ {name} = "decimal(38,12)" }} (a precision and scale that '
                f'hold every value), {name} = "text"'
                + (f' or {name} = "float64" (SQLite stores these as REAL)' if sqlite else ""),
            )
        s = 0 if s is None else s
        if not (1 <= p <= MAX_PRECISION and 0 <= s <= p):
            raise Refusal(
                f"decimal({p},{s}) does not fit decimal128 (precision 1..{MAX_PRECISION}, "
                "scale 0..precision)",
                f'column_types = {{ {name} = "decimal({MAX_PRECISION},{min(max(s, 0), MAX_PRECISION)})" }}'
                f' if every value fits it, or {name} = "text"',
            )
        plan.target = f"decimal({p},{s})"
        plan.dlt_type = sa.Numeric(p, s)
        if sqlite:  # stored as INTEGER, REAL or TEXT: convert and check every value
            plan.convert, plan.raw = _to_decimal(p, s), True
        else:  # PostgreSQL enforces (p,s) but accepts NaN: its rows are held
            plan.convert, plan.unfit = _finite_or_none, _nan
        return plan
    if fam == "float":
        plan.target = "float64"
        plan.dlt_type = _DOUBLE()
        if sqlite:
            plan.convert, plan.raw = _to_float, True
        return plan
    if fam in ("text", "uuid"):
        plan.target = "text"
        if sqlite:
            plan.convert, plan.raw = _sqlite_text, True
        return plan
    if fam == "bool" and sqlite:
        # SQLite keeps any value in a BOOLEAN column, and SQLAlchemy's reading takes every
        # non-zero one ('no', 'false', 2, 0.5) as true: 0 and 1 only, the rest refused
        plan.target = fam
        plan.dlt_type, plan.convert, plan.raw = sa.Boolean(), _to_bool, True
        return plan
    if fam in ("bool", "binary", "date", "time", "timestamp", "timestamptz"):
        plan.target = fam
        if not sqlite and fam in _PG_TIME_RANGE:
            plan.unfit, plan.guard = _out_of_range(fam), True
        return plan
    if fam == "json":
        # the database's JSON text: a JSON null document stays 'null', SQL NULL stays NULL,
        # and numbers keep every digit (parsing would turn them into floats)
        plan.target, plan.cast_text, plan.dlt_type = "json", True, sa.JSON()
        return plan
    if fam == "array":
        item = _unwrap(t.item_type)
        if _family(item) in ("integer", "text", "bool"):
            plan.target = "json"  # a JSON array, as dlt writes lists
            return plan
        raise Refusal(
            f"arrays of {_source_name(item, dialect)} have no exact JSON form",
            text_fix,
        )
    if fam == "timetz":
        raise Refusal("the time of day would lose its UTC offset", text_fix)
    reason = (
        "the source type is not known to SQLAlchemy"
        if fam == "unknown"
        else "it has no exact published type"
    )
    raise Refusal(reason, text_fix)


def as_text(name: str, sa_type: Any, dialect: Any, why: str) -> Plan:
    """The plan of a column published as its text form because its type has none exact
    (``why``, the refusal's reason): PostgreSQL's ``CAST(col AS TEXT)``, SQLite's value as
    stored (a REAL as its shortest exact repr)."""
    t = _unwrap(sa_type)
    plan = Plan(name, _source_name(sa_type, dialect), "text")
    plan = _declared_plan(plan, t, _family(t), ("text", None, None), dialect.name == "sqlite")
    plan.defaulted = why
    return plan


def text_form_notes(job: Any, t: Any, columns: list[dict[str, Any]], dialect: Any) -> dict[str, str]:
    """``{column: one line}`` for the columns of ``t`` published as their text form by
    default (``Plan.defaulted``): what was decided, why, and the setting that chooses
    otherwise."""
    out = {}
    for name, plan in plans(job, t, columns, dialect).items():
        if plan.defaulted is not None:
            out[name] = (
                f"job '{job.name}' table '{t.name}': column '{name}' ({plan.source}) is "
                f"published as text, the database's own text form, because {plan.defaulted}; "
                f'to publish another type set column_types = {{ {name} = "..." }} for the '
                "table (text is exact: nothing of a value is lost)"
            )
    return out


def _declared_plan(
    plan: Plan, t: Any, fam: str, parsed: tuple[str, int | None, int | None] | None, sqlite: bool
) -> Plan:
    import sqlalchemy as sa

    assert parsed is not None  # checked when the jobs file was read
    kind, p, s = parsed
    plan.target = type_name(parsed)
    numberish = ("integer", "numeric", "float", "text")
    allowed: dict[str, tuple[str, ...]] = {
        "decimal": numberish,
        "int64": numberish,
        "float64": numberish,
        "bool": ("bool", "integer"),
        "date": ("date",),
        "time": ("time",),
        "timestamp": ("timestamp", "timestamptz", "date"),  # a date is its midnight
        "timestamptz": ("timestamp", "timestamptz"),
        "binary": ("binary",),
    }
    if kind == "text":
        plan.dlt_type = sa.Text()
        if sqlite:  # SQLite's CAST prints REALs with 15 digits: the exact repr instead
            plan.convert, plan.raw = _sqlite_text, True
        else:
            plan.cast_text = True
        return plan
    if fam not in allowed[kind]:
        raise Refusal(
            f'column_types declares "{plan.target}", which a {plan.source} column cannot '
            "be converted to exactly",
            f'column_types = {{ {plan.column} = "text" }}',
        )
    plan.raw = sqlite or fam == "numeric"
    if kind == "decimal":
        assert p is not None and s is not None  # parse_type gives a decimal both
        plan.dlt_type, plan.convert = sa.Numeric(p, s), _to_decimal(p, s)
    elif kind == "int64":
        plan.dlt_type, plan.convert = sa.BigInteger(), _to_int
    elif kind == "float64":
        plan.dlt_type, plan.convert = _DOUBLE(), _to_float
    elif kind == "bool":
        plan.dlt_type, plan.convert, plan.raw = sa.Boolean(), _to_bool, True
    elif kind in ("timestamp", "timestamptz"):
        plan.raw = False
        plan.dlt_type = sa.DateTime(timezone=kind == "timestamptz")
        if fam != kind:
            plan.convert = _to_utc if kind == "timestamptz" else _to_naive_utc
    else:  # date, time, binary: as they are
        plan.raw = False
    if not sqlite and fam in _PG_TIME_RANGE:
        plan.unfit, plan.guard = _out_of_range(fam), True
    return plan


# ---------------------------------------------------------------------------------------
# per-value converters (None is NULL and passes through untouched)


def _describe(v: Any) -> str:
    if isinstance(v, Decimal):
        if v.is_nan():
            return "a NaN value"
        if v.is_infinite():
            return f"a {'-' if v < 0 else ''}Infinity value"
        return f"the value {v}"
    if isinstance(v, float) and not math.isfinite(v):
        return f"a {'NaN' if math.isnan(v) else ('-' if v < 0 else '') + 'Infinity'} value"
    if isinstance(v, str):
        return f"the text {v[:40]!r}"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "a binary (BLOB) value"
    if isinstance(v, float):
        return f"the REAL value {v!r}"
    return f"the value {v!r}"


def _finite_or_none(v: Any) -> Any:
    # a PostgreSQL numeric NaN: its row is held (``Plan.unfit``, ``hold_unfit``)
    return v if v is None or v.is_finite() else None


def _nan(column: Any) -> Any:
    """``Plan.unfit`` of a PostgreSQL ``numeric(p,s)``: 'NaN' where the value is NaN (the
    one value such a column holds that no decimal does: a constrained numeric refuses the
    infinities), else NULL."""
    import sqlalchemy as sa

    n = sa.type_coerce(column, sa.Numeric())
    return sa.case((n == sa.literal_column("'NaN'::numeric"), sa.literal("NaN")), else_=sa.null())


# the PostgreSQL values Python's date and datetime hold (psycopg refuses the others with
# "timestamp too large (after year 10K)"): bounds of each type, as PostgreSQL literals
_PG_TIME_RANGE = {
    "date": ("'0001-01-01'::date", "'10000-01-01'::date"),
    "timestamp": ("'0001-01-01 00:00'::timestamp", "'10000-01-01 00:00'::timestamp"),
    "timestamptz": ("'0001-01-01 00:00+00'::timestamptz", "'10000-01-01 00:00+00'::timestamptz"),
}


def _out_of_range(fam: str) -> Callable[[Any], Any]:
    """``Plan.unfit`` of a PostgreSQL date or timestamp: the value's text where it is
    ``infinity``, ``-infinity``, before year 1 (BC) or after 9999, which no Python date,
    Arrow or Parquet time of deltaferry's holds; else NULL."""
    import sqlalchemy as sa

    lo, hi = _PG_TIME_RANGE[fam]

    def unfit(column: Any) -> Any:
        c = sa.type_coerce(column, sa.Date() if fam == "date" else sa.DateTime())
        out = sa.or_(
            sa.not_(sa.func.isfinite(c)), c < sa.literal_column(lo), c >= sa.literal_column(hi)
        )
        return sa.case((out, sa.cast(c, sa.Text())), else_=sa.null())

    return unfit


def _as_decimal(v: Any) -> Decimal:
    if isinstance(v, Decimal):
        d = v
    elif isinstance(v, bool):
        raise _BadValue(_describe(v))
    elif isinstance(v, int):
        d = Decimal(v)
    elif isinstance(v, float):
        d = Decimal(repr(v)) if math.isfinite(v) else Decimal(repr(v).replace("inf", "Infinity"))
    elif isinstance(v, str):
        try:
            d = Decimal(v.strip())
        except InvalidOperation:
            raise _BadValue(_describe(v)) from None
    else:
        raise _BadValue(_describe(v))
    if not d.is_finite():
        raise _BadValue(_describe(d))
    return d


def _to_decimal(p: int, s: int) -> Callable[[Any], Any]:
    quantum = Decimal(1).scaleb(-s)

    def convert(v: Any) -> Any:
        if v is None:
            return None
        d = _as_decimal(v)
        q = d.quantize(quantum, context=_WIDE)
        if isinstance(v, float) and len(d.normalize().as_tuple().digits) > 15:
            # a double keeps 15 significant decimal digits: past that, the decimal that was
            # written cannot be told from its neighbours (SQLite stores DECIMAL as REAL)
            raise _BadValue(f"{_describe(v)}, a REAL (double) with more than 15 significant digits")
        if q != d:
            raise _BadValue(f"{_describe(v)} with more than {s} decimal places")
        if q and q.adjusted() + 1 > p - s:
            raise _BadValue(f"{_describe(v)} with more than {p - s} digits before the point")
        return q

    return convert


def _to_int(v: Any) -> Any:
    if v is None or (type(v) is int and _INT64[0] <= v <= _INT64[1]):
        return v
    d = _as_decimal(v)
    if d != d.to_integral_value() or not _INT64[0] <= d <= _INT64[1]:
        raise _BadValue(f"{_describe(v)}, not an integer within int64")
    return int(d)


def _to_float(v: Any) -> Any:
    if v is None or type(v) is float:
        return v
    if type(v) is int:
        f = float(v)
        if int(f) != v:
            raise _BadValue(f"{_describe(v)}, more digits than a float64 holds")
        return f
    if isinstance(v, Decimal) and not v.is_finite():
        return float(v)  # NaN and +-Infinity exist in float64
    d = _as_decimal(v)
    f = float(d)
    if Decimal(repr(f)) != d:
        raise _BadValue(f"{_describe(v)}, more digits than a float64 holds")
    return f


def _to_bool(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if type(v) is int and v in (0, 1):
        return bool(v)
    raise _BadValue(f"{_describe(v)}, neither 0 nor 1")


def _to_utc(v: Any) -> Any:
    import datetime as dt

    if v is None:
        return v
    return v.replace(tzinfo=dt.timezone.utc) if v.tzinfo is None else v.astimezone(dt.timezone.utc)


def _to_naive_utc(v: Any) -> Any:
    import datetime as dt

    if v is None:
        return v
    if type(v) is dt.date:  # a DATE column declared "timestamp": its midnight
        return dt.datetime.combine(v, dt.time())
    if v.tzinfo is None:
        return v
    return v.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _sqlite_int(v: Any) -> Any:
    if v is None or type(v) is int:
        return v
    raise _BadValue(f"{_describe(v)}, not an INTEGER")


def _sqlite_text(v: Any) -> Any:
    if v is None or type(v) is str:
        return v
    if type(v) is int:
        return str(v)
    if type(v) is float:
        return repr(v)
    raise _BadValue(_describe(v))


# per value converter, the Python type of the values it returns unchanged: a value of that
# type needs no call (``_carried_type``)
_KEPT: dict[Callable[[Any], Any], type] = {_sqlite_int: int, _sqlite_text: str}


# ---------------------------------------------------------------------------------------
# reflection and the dlt resource


def _carried_type(
    job: str, table: str, plan: Plan, original: Any, role: str | None = None
) -> Any:
    """A SQLAlchemy type that reads the column as ``plan`` says; ``role``: the column's
    role when it is a key, cursor or soft-delete column (which cannot be retyped or left
    out, so a refused value names other fixes)."""
    import sqlalchemy as sa

    impl_type = sa.Text() if plan.cast_text else (sa.types.NullType() if plan.raw else original)

    class Carried(sa.types.TypeDecorator):
        impl = sa.types.NullType
        cache_ok = False

        def load_dialect_impl(self, dialect: Any) -> Any:
            return impl_type

        def process_bind_param(self, value: Any, dialect: Any) -> Any:
            # a staged value compared with the source (a cursor bound, a key read again):
            # the driver of a raw column gets it as the column stores it, a decimal as an
            # integer when whole and within SQLite's 64 bits, else as its text (SQLite's
            # NUMERIC affinity reads it back as the number, never through a double)
            if plan.raw and isinstance(value, Decimal):
                whole = value == value.to_integral_value()
                if whole and _INT64[0] <= value <= _INT64[1]:
                    return int(value)
                return str(value)
            return value

    def refused(bad: _BadValue) -> ValueRefused:
        fix = (
            f"fix the value at the source (the table's {role} cannot be retyped or left out;"
            " or sync a view that casts it)"
            if role
            else (
                # published as text already (a BLOB in a TEXT column): text is no way out
                f'set exclude_columns = ["{plan.column}"]'
                if plan.target == "text"
                else f'set column_types = {{ {plan.column} = "text" }} or exclude_columns = '
                f'["{plan.column}"]'
            )
            + f" for this table (then deltaferry reset {job} --table {table} --reason "
            f"'{plan.column} retyped' if the job staged the column already), or fix the value "
            "at the source"
        )
        return ValueRefused(
            f"job '{job}' table '{table}': column '{plan.column}' ({plan.source}, "
            f"published as {plan.target}) holds {bad.what}, which {plan.target} cannot "
            f"carry exactly; nothing of the table published; {fix}",
            table,
        )

    def process_result_value(self: Any, value: Any, dialect: Any) -> Any:
        try:
            return plan.convert(value)  # type: ignore[misc]
        except _BadValue as bad:
            raise refused(bad) from None

    def result_processor(self: Any, dialect: Any, coltype: Any) -> Any:
        # a raw column (the driver's values, no processing of the dialect's own): one call
        # per value, and none beyond a type test for a value its column type already is
        # (SQLAlchemy's own would call three: its wrapper, process_result_value, convert)
        if self.impl_instance.result_processor(dialect, coltype) is not None:
            return sa.types.TypeDecorator.result_processor(self, dialect, coltype)
        convert = plan.convert
        kept = _KEPT.get(convert)  # type: ignore[arg-type]

        def process(value: Any) -> Any:
            if value is None or type(value) is kept:
                return value
            try:
                return convert(value)  # type: ignore[misc]
            except _BadValue as bad:
                raise refused(bad) from None

        return process

    if plan.convert is not None:  # no per-value call for a column read as it comes
        Carried.process_result_value = process_result_value  # type: ignore[method-assign]
        if plan.raw:
            Carried.result_processor = result_processor  # type: ignore[method-assign]
    if plan.guard and plan.unfit is not None:  # NULL where the driver would fail
        unfit = plan.unfit

        def guarded(self: Any, column: Any) -> Any:
            return sa.case(
                (unfit(column).is_(None), sa.type_coerce(column, original)), else_=sa.null()
            )

        Carried.column_expression = guarded  # type: ignore[method-assign]
    if plan.cast_text:  # SELECT CAST(col AS TEXT): the database's own text form

        def column_expression(self: Any, column: Any) -> Any:
            return sa.cast(sa.type_coerce(column, original), sa.Text())

        Carried.column_expression = column_expression  # type: ignore[method-assign]
    Carried.dlt_type = plan.dlt_type or _unwrap(original)  # type: ignore[attr-defined]
    Carried.plan = plan  # type: ignore[attr-defined]
    # the column's own type, for code that binds values compared with it (window.py: a
    # naive timestamp key or cursor gets wall times in the job's zone)
    Carried.source_type = _unwrap(original)  # type: ignore[attr-defined]
    return Carried()


def sqlite_json_text(job: str, table: str, column: str, original: Any) -> Any:
    """The type a declared ``JSON`` column of SQLite is read with: the document's text as
    stored. SQLite's NUMERIC affinity keeps a number document (``'12'``, ``'1.5'``) as an
    INTEGER or REAL, so such values arrive as numbers and are given back as their JSON text
    (shortest round-trip form for a REAL); a BLOB is refused with ``ValueRefused``."""
    import sqlalchemy as sa

    plan = Plan(column, "JSON", "json", dlt_type=sa.Text(), convert=_sqlite_text, raw=True)
    return _carried_type(job, table, plan, original)


def key_roles(t: Any) -> dict[str, str]:
    """The table's columns that are read as they are, whatever ``column_types`` says (they
    are compared with the source as read), by name: their role."""
    roles = {c: "primary key" for c in t.primary_key}
    if t.cursor:
        roles[t.cursor] = "cursor"
    if t.soft_delete_column:
        roles[t.soft_delete_column] = "soft-delete column"
    return roles


def plans(job: Any, t: Any, columns: list[dict[str, Any]], dialect: Any) -> dict[str, Plan]:
    """Plans of a table's columns (as ``Inspector.get_columns`` gives them), excluded columns
    left out; ConfigError (one line) for a column that cannot be published exactly."""
    excluded = set(t.options.get("exclude_columns", ()))
    declared = dict(t.options.get("column_types", {}))
    where = f"job '{job.name}' table '{t.name}'"
    out: dict[str, Plan] = {}
    for c in columns:
        name = c["name"]
        if name in excluded:
            continue
        try:
            out[name] = plan_column(name, c["type"], dialect, declared.get(name))
        except Refusal as r:
            source = _source_name(c["type"], dialect)
            role = key_roles(t).get(name)
            if role is None and name not in declared:
                # no exact published type, nothing declared: the database's own text form
                # (lossless; the run says so when the column is first staged)
                out[name] = as_text(name, c["type"], dialect, r.reason)
                continue
            fix = (
                f"it is the table's {role}, so it cannot be excluded or retyped: change its type "
                "at the source or sync a view that casts it"
                if role
                else f"set {r.fix}, or exclude_columns = [\"{name}\"], for this table in the jobs file"
            )
            raise ConfigError(f"{where}: column '{name}' has source type {source}: {r.reason}; {fix}") from None
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Library warnings about types (SQLAlchemy's reflection, dlt's Arrow conversion) go to
    the ``deltaferry.sql_database`` log at debug level, not to stderr."""
    import sqlalchemy as sa

    dlt_logger = logging.getLogger("dlt")
    filt = _TypeNoise()
    dlt_logger.addFilter(filt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sa.exc.SAWarning)
            yield
    finally:
        dlt_logger.removeFilter(filt)


class _TypeNoise(logging.Filter):
    _FROM = ("sql_database", "libs/pyarrow", "libs\\pyarrow")

    def filter(self, record: logging.LogRecord) -> bool:
        noise = any(s in record.pathname for s in self._FROM) or (
            "column hints were different" in str(record.msg)
        )
        if record.levelno <= logging.WARNING and noise:
            log.debug("dlt: %s", record.getMessage())
            return False
        return True


def source_columns(job: Any, t: Any, insp: Any) -> list[dict[str, Any]]:
    """The source table's columns (``Inspector.get_columns``), reflected without library
    warnings, after checking that every column can be published exactly (ConfigError; a
    column whose type has no exact published type of its own is published as its text form
    unless it is a key, cursor or soft-delete column)."""
    with quiet():
        columns = insp.get_columns(source_table(t))
    names = {c["name"] for c in columns}
    for setting in ("exclude_columns", "column_types"):
        missing = sorted(set(t.options.get(setting, ())) - names)
        if missing:
            raise ConfigError(
                f"job '{job.name}' table '{t.name}': {setting} names column(s) "
                f"{', '.join(missing)}, not in the source table"
            )
    plans(job, t, columns, insp.dialect)
    _check_soft_delete_type(job, t, columns, insp.dialect)
    return columns


def _check_soft_delete_type(job: Any, t: Any, columns: list[dict[str, Any]], dialect: Any) -> None:
    """Refuse a soft-delete column of a boolean or integer type: a row with the column set
    (not NULL) is a delete, so ``is_deleted = false`` (or 0) would delete every live row
    (a fresh-user trial: the replica kept only the rows whose flag was NULL)."""
    import sqlalchemy as sa

    soft = t.soft_delete_column
    column = next((c for c in columns if c["name"] == soft), None) if soft else None
    if column is None:
        return
    kind = _unwrap(column["type"])
    if isinstance(kind, (sa.Boolean, sa.Integer)):
        raise ConfigError(
            f"job '{job.name}' table '{t.name}': deletes = 'soft:{soft}' names a "
            f"{_source_name(column['type'], dialect)} column, but a row with the soft-delete "
            f"column set (not NULL) is a delete, so {soft} = false or 0 would delete live "
            "rows. Name a column that is NULL for live rows (a deleted-at time), or sync a "
            f"view that gives one (CASE WHEN {soft} THEN updated_at END AS deleted_at)"
        )


@contextlib.contextmanager
def job_scope() -> Iterator[None]:
    """Around one extract: library type warnings stay off stderr, and a refused value
    surfaces as its own one-line ``ValueRefused`` rather than wrapped in dlt's step error."""
    from sources.load import find_cause

    try:
        with quiet():
            yield
    except Exception as e:
        refused = find_cause(e, lambda x: isinstance(x, ValueRefused))
        if refused is not None and refused is not e:
            raise refused from None
        raise


def carry_plans(job: Any, t: Any, table: Any, dialect: Any) -> Any:
    """``table`` (a reflected ``sa.Table``) with every column read as its plan says: key,
    cursor and soft-delete columns included, with the plan of their source type (they
    cannot be retyped), so a SQLite NUMERIC key is read as the exact decimal it holds, not
    through a double. A column whose type already carries a ``dlt_type`` is left alone.
    Returns ``table``."""
    columns = [
        {"name": c.name, "type": c.type} for c in table.columns if not hasattr(c.type, "dlt_type")
    ]
    roles = key_roles(t)
    for name, plan in plans(job, t, columns, dialect).items():
        if not (plan.cast_text or plan.convert or plan.raw or plan.unfit):
            continue
        col = table.columns[name]
        col.type = _carried_type(job.name, t.name, plan, col.type, roles.get(name))
    return table


UNFIT = "_deltaferry_unfit_"  # the label of an unfit-value column a read selects (and drops)


def _unfit_query(inner: Any) -> Any:
    """A dlt query adapter: ``inner``'s query (if any) with, for each column whose plan
    has ``unfit`` SQL, that expression labelled ``UNFIT`` + its position."""

    def adapt(query: Any, table: Any, incremental: Any = None, engine: Any = None) -> Any:
        if inner is not None:
            query = inner(query, table, incremental, engine)
        unfit = [c for c in table.columns if getattr(getattr(c.type, "plan", None), "unfit", None)]
        for i, c in enumerate(unfit):
            query = query.add_columns(c.type.plan.unfit(c).label(f"{UNFIT}{i}"))
        return query

    return adapt


def hold_unfit(job: Any, t: Any, table: Any, hold: Any) -> Callable[[Any], Any]:
    """A map step over the read's Arrow chunks: rows with a value their column's published
    type cannot carry (``Plan.unfit``) are held, ``hold(rows, field, check, reason)`` (a
    quarantine record each, check ``deltaferry.quarantine.UNFIT``: resolved when the key is published or
    deleted), and the ``UNFIT`` columns dropped. ``table`` is the adapted ``sa.Table`` holder: a one-item
    list filled by the table adapter."""
    import pyarrow.compute as pc

    from deltaferry.quarantine import UNFIT as CHECK

    def step(chunk: Any) -> Any:
        flags = [n for n in chunk.column_names if n.startswith(UNFIT)]
        if not flags:  # dlt drops a column that is NULL in every row of the chunk
            return chunk
        columns = [c for c in table[0].columns if getattr(getattr(c.type, "plan", None), "unfit", None)]
        # a row without a key is held for that by the read (and read again by its cursor
        # value until it has one): its value is NULL here, the row not held twice
        keyed = None
        for k in t.primary_key:
            if k in chunk.column_names:
                valid = pc.is_valid(chunk[k])
                keyed = valid if keyed is None else pc.and_(keyed, valid)
        left = None
        for name in flags:
            plan = columns[int(name[len(UNFIT):])].type.plan
            here = pc.is_valid(chunk[name])
            if keyed is not None:
                here = pc.and_(here, keyed)
            if left is not None:
                here = pc.and_(here, pc.invert(left))
            if not pc.any(here).as_py():
                continue
            left = here if left is None else pc.or_(left, here)
            bad = chunk.filter(here)
            values = sorted(set(bad[name].to_pylist()))
            what = f"{' and '.join(values)} value(s)"
            role = key_roles(t).get(plan.column)
            fix = (
                f" (the table's {role} cannot be retyped; or sync a view that casts it)"
                if role
                else f' or the column is published as text (column_types = {{ {plan.column} = "text" }}, '
                f"then deltaferry reset {job.name} --table {t.name} --reason '{plan.column} "
                "as text')"
            )
            hold(
                bad.drop_columns(flags).to_pylist(),
                plan.column,
                CHECK,
                f"column {plan.column} ({plan.source}) holds {what} in the source, which "
                f"{plan.target} cannot carry: held back until the value is fixed at the source"
                f"{fix}",
            )
        chunk = chunk.drop_columns(flags)
        return chunk if left is None else chunk.filter(pc.invert(left))

    return step


def sql_table(job: Any, hold: Any, **kwargs: Any) -> Any:
    """dlt's ``sql_table`` for a table of ``job`` with its column plans applied: excluded
    columns are not selected, the others read and typed as their plan says. A column whose
    type already carries a ``dlt_type`` (adapted by the caller's ``table_adapter_callback``,
    or by this function on an earlier reflection) is left as it is. Rows holding a value
    their column cannot carry are given to ``hold(rows, field, check, reason)`` (see
    ``hold_unfit``). ``table``: the job's name for it; the source is read by the table's
    ``source_table`` spelling, and the resource keeps the job's name."""
    from dlt.sources.sql_database import sql_table as dlt_sql_table

    t = job.table(kwargs["table"])
    kwargs["table"] = source_table(t)
    excluded = sorted(t.options.get("exclude_columns", ()))
    if excluded:
        kwargs["excluded_columns"] = excluded
    inner = kwargs.get("table_adapter_callback")

    adapted: list[Any] = [None]

    def adapt(table: Any) -> Any:
        result = inner(table) if inner is not None else None
        table = result if result is not None else table
        adapted[0] = carry_plans(job, t, table, kwargs["credentials"].dialect)
        return adapted[0]

    def dlt_type(sa_type: Any) -> Any:
        if hasattr(sa_type, "dlt_type"):  # the type dlt stages the adapted column as
            return sa_type.dlt_type
        sa_type = _unwrap(sa_type)
        return _DOUBLE() if _family(sa_type) == "float" else sa_type

    kwargs["table_adapter_callback"] = adapt
    kwargs["type_adapter_callback"] = dlt_type
    kwargs["query_adapter_callback"] = _unfit_query(kwargs.get("query_adapter_callback"))
    kwargs.setdefault("table_loader_class", _loader_class())
    resource = dlt_sql_table(**kwargs)
    if kwargs["table"] != t.name:  # staged, published and named as the job names it
        resource = resource.with_name(t.name)
        resource.apply_hints(table_name=t.name)
    return resource.add_map(hold_unfit(job, t, adapted, hold))


def _loader_class() -> Any:
    """dlt's ``TableLoader``, except that the columns the cursor has beyond the table's
    (the ``UNFIT`` columns) are added to the loader's own copy of the column hints: dlt adds
    them to the resource's hints, where they became columns of the staging schema that
    "did not receive any data" (a dlt warning on every load)."""
    from dlt.sources.sql_database.helpers import TableLoader

    class OwnHints(TableLoader):
        def _load_rows(self, query: Any, backend_kwargs: Any) -> Any:
            self.columns = dict(self.columns)
            return super()._load_rows(query, backend_kwargs)

    return OwnHints
