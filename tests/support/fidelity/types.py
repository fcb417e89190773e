"""The type table of the fidelity suite: per source kind and source type, the values the
generator draws (edge values first), the contract column written for it, the DuckDB type
the replica must hold, and how the oracle turns a source value into the value the replica
must hold -- or the refusal expected instead (the error's fragments and the jobs-file
setting that resolves it).

The suite (``tests/test_fidelity.py``) draws its schemas from this table and
``python -m tests.support.fidelity.matrix`` prints the README's type matrix from it, so the two
cannot drift apart. Nothing here imports deltaferry: the oracle parses values with the
standard library only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

UTC = timezone.utc

# --- canonical values ---------------------------------------------------------------
# The oracle compares canonical values: int, Decimal, float, str, bytes, bool, an aware
# UTC datetime, a date, or ("json", parsed document) -- a JSON document, so that the
# document `null` and SQL NULL (None) stay different.


class WrongType(tuple):
    """A replica value of the wrong Python type for its family (never equal to a value)."""


def instant(text_or_dt: str | datetime) -> datetime:
    """A timestamp as the UTC instant it names; naive ones are taken as UTC (the job's
    default zone)."""
    dt = text_or_dt if isinstance(text_or_dt, datetime) else datetime.fromisoformat(text_or_dt)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def json_doc(text: str) -> tuple[str, Any]:
    return ("json", json.loads(text, parse_float=Decimal, parse_int=Decimal))


def sqlite_json_doc(v: Any) -> tuple[str, Any]:
    """A SQLite JSON column's value as a document: SQLite's NUMERIC affinity stores a
    number document ('12', '1.5') as an INTEGER or REAL, read back as a Python number."""
    if isinstance(v, float):
        return json_doc(repr(v))
    if isinstance(v, int):
        return json_doc(str(v))
    return json_doc(v)


def canon_replica(family: str, v: Any) -> Any:
    """A value read from the replica (duckdb's Python types) in canonical form."""
    if v is None:
        return None
    ok = {
        "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
        "dec": lambda x: isinstance(x, Decimal),
        "float": lambda x: isinstance(x, float),
        "str": lambda x: isinstance(x, str),
        "bytes": lambda x: isinstance(x, (bytes, bytearray, memoryview)),
        "bool": lambda x: isinstance(x, bool),
        "ts": lambda x: isinstance(x, datetime),
        "date": lambda x: isinstance(x, date) and not isinstance(x, datetime),
        "time": lambda x: isinstance(x, time),
        "json": lambda x: isinstance(x, str),
    }[family]
    if not ok(v):
        return WrongType((type(v).__name__, repr(v)))
    if family == "bytes":
        return bytes(v)
    if family == "ts":
        return instant(v)
    if family == "json":
        try:
            return json_doc(v)
        except ValueError:
            return WrongType(("not JSON", v))
    return v


def same(a: Any, b: Any) -> bool:
    """Canonical equality: NaN equals NaN, -0.0 is not 0.0, Decimals by value."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is not type(b) and not (a is None or b is None):
        return False
    return a == b


# --- value strategies -----------------------------------------------------------------

INT64 = [0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, -(2**31), 2**31]
TEXTS = ["", " ", "Grüße", "東京", "🚀 rocket", "a\nb", "it's", '"quoted"', "a,b", "null",
         "NULL", "0007", "  padded  ", "tab\there", "ÿ€", "\\N"]
FLOATS = [0.0, 1.5, -2.25, 0.1, 1 / 3, 1e308, -1e-308, 5e-324, 123456789.125, -0.0]
DECIMALS = [Decimal(x) for x in ("0", "0.000001", "-0.000001", "99999999999999.999999",
                                 "-99999999999999.999999", "12345678901234.123456", "0.1",
                                 "1.10", "-5")]
# instants: epoch, the 32-bit rollover, a leap day, pre-epoch, far-ish future
INSTANTS = [datetime(1970, 1, 1, tzinfo=UTC), datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
            datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(1901, 12, 13, 20, 45, 52, tzinfo=UTC),
            datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)]
OFFSETS = [timedelta(0), timedelta(hours=2), timedelta(hours=-5), timedelta(hours=5, minutes=30),
           timedelta(hours=14), timedelta(hours=-9, minutes=-30)]

# text forms of a timestamp found in real data; "naive" ones carry no zone (taken as UTC)
TS_FORMS: dict[str, Callable[[datetime, timedelta], str]] = {
    "naive space": lambda t, o: t.strftime("%Y-%m-%d %H:%M:%S"),
    "naive space micros": lambda t, o: t.strftime("%Y-%m-%d %H:%M:%S.%f"),
    "naive T millis": lambda t, o: t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}",
    "Z": lambda t, o: t.strftime("%Y-%m-%dT%H:%M:%SZ"),
    "Z micros": lambda t, o: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    "offset": lambda t, o: (t + o).strftime("%Y-%m-%d %H:%M:%S") + _off(o, True),
    "offset T micros": lambda t, o: (t + o).strftime("%Y-%m-%dT%H:%M:%S.%f") + _off(o, True),
    "offset no colon": lambda t, o: (t + o).strftime("%Y-%m-%dT%H:%M:%S") + _off(o, False),
}
ZONED_FORMS = [f for f in TS_FORMS if not f.startswith("naive")]


def _off(o: timedelta, colon: bool) -> str:
    s = "-" if o < timedelta(0) else "+"
    m = abs(int(o.total_seconds())) // 60
    return f"{s}{m // 60:02d}{':' if colon else ''}{m % 60:02d}"


def ts_text(t: datetime, form: str, offset: timedelta) -> str:
    """``t`` (aware, UTC) written in ``form``, shown at ``offset`` for zoned forms."""
    t = t.astimezone(UTC).replace(tzinfo=None)
    return TS_FORMS[form](t, offset)


def nullable(s: st.SearchStrategy, null: bool = True) -> st.SearchStrategy:
    return st.one_of(st.none(), s) if null else s


def ints(lo: int = -(2**63), hi: int = 2**63 - 1) -> st.SearchStrategy:
    edges = [x for x in INT64 if lo <= x <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -(10**6)), min(hi, 10**6)))


def texts() -> st.SearchStrategy:
    alphabet = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r")
    return st.one_of(st.sampled_from(TEXTS), st.text(alphabet, max_size=12))


def floats(nan: bool = False) -> st.SearchStrategy:
    edge = FLOATS + ([math.nan, math.inf, -math.inf] if nan else [])
    return st.one_of(st.sampled_from(edge),
                     st.floats(allow_nan=False, allow_infinity=False, width=64))


def decimals(places: int = 6, whole: int = 14) -> st.SearchStrategy:
    lim = Decimal(10) ** whole - Decimal(1).scaleb(-places)
    return st.one_of(
        st.sampled_from([d for d in DECIMALS if abs(d) <= lim]),
        st.decimals(-lim, lim, places=places, allow_nan=False, allow_infinity=False),
    )


def instants() -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(INSTANTS),
        st.datetimes(datetime(1950, 1, 1), datetime(2100, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
    )


def ts_texts(forms: list[str] | None = None) -> st.SearchStrategy:
    forms = forms or list(TS_FORMS)
    return st.builds(ts_text, instants(), st.sampled_from(forms), st.sampled_from(OFFSETS))


# SQLite TIME text as writers write it, and (rarely) forms a time of day cannot be
TIME_FORMS = ["hm", "hms", "us", "short", "ns0", "Z", "+00:00"]
REFUSED_TIME_FORMS = ["ns7", "+02:00", "24:00"]


def time_text(t: time, form: str) -> str:
    base = t.strftime("%H:%M:%S")
    frac = f"{t.microsecond:06d}"
    return {
        "hm": t.strftime("%H:%M"),
        "hms": base,
        "us": f"{base}.{frac}",
        "short": f"{base}.{frac.rstrip('0') or '0'}",
        "ns0": f"{base}.{frac}000",
        "Z": f"{base}.{frac}Z",
        "+00:00": f"{base}+00:00",
        "ns7": f"{base}.{frac}7",
        "+02:00": f"{base}+02:00",
        "24:00": "24:00:00",
    }[form]


def time_texts() -> st.SearchStrategy:
    return st.builds(time_text, st.times(), st.sampled_from(TIME_FORMS * 8 + REFUSED_TIME_FORMS))


_TIME = re.compile(r"(\d\d):(\d\d)(?::(\d\d)(?:\.(\d+))?)?(Z|[+-]\d\d:\d\d)?")


def sqlite_time(text: str) -> time | None:
    """A time-of-day text as the time it names (None: not one a TIME column holds exactly:
    beyond microseconds, a non-zero offset, hour 24, not a time)."""
    m = _TIME.fullmatch(text)
    if m is None:
        return None
    h, mi, sec, frac, zone = m.groups()
    frac = frac or ""
    if int(h) > 23 or int(mi) > 59 or int(sec or 0) > 59 or frac[6:].strip("0"):
        return None
    if zone not in (None, "Z", "+00:00", "-00:00"):
        return None
    return time(int(h), int(mi), int(sec or 0), int(frac[:6].ljust(6, "0")))


def json_values() -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=False, allow_infinity=False), texts())
    return st.recursive(
        leaf,
        lambda kids: st.one_of(st.lists(kids, max_size=3),
                               st.dictionaries(texts(), kids, max_size=3)),
        max_leaves=6,
    )


def json_texts() -> st.SearchStrategy:
    docs = st.one_of(st.sampled_from([None, {}, [], "", {"ü": "ß", "n": [1, 2.5, None]}]),
                     json_values())
    return docs.map(lambda d: json.dumps(d, ensure_ascii=False))


def binaries() -> st.SearchStrategy:
    return st.one_of(st.sampled_from([b"", b"\x00", b"\xff\x00\xfe", "Grüße".encode()]),
                     st.binary(max_size=16))


def dates() -> st.SearchStrategy:
    return st.one_of(st.sampled_from([date(1970, 1, 1), date(2024, 2, 29), date(1, 1, 1),
                                      date(9999, 12, 31)]),
                     st.dates(date(1900, 1, 1), date(2200, 1, 1)))


# --- the table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A refusal: ``reason`` (summary label), fragments the one-line error must hold besides
    the job, table and column (any one of ``needles``), the resolving setting, and whether
    it is required (``must``) or merely allowed instead of exact delivery."""

    reason: str
    needles: tuple[str, ...]
    setting: str
    must: bool = True


@dataclass(frozen=True)
class TypeSpec:
    kind: str
    name: str                      # the source type, as its users name it
    ddl: str                       # SQL column type / file representation
    values: Callable[[], st.SearchStrategy]   # non-NULL values written to the source
    contract: str                  # pandera annotation (the column is nullable unless a key)
    replica: str                   # the DuckDB type the replica column must have
    family: str                    # how replica values are read back (canon_replica)
    canon: Callable[[Any], Any]    # source value (as read back from the source) -> canonical
    refusal: Refusal | None = None  # the type itself is refused (whatever the values)
    refuse_value: Callable[[Any], bool] | None = None  # these values are refused
    value_refusal: Refusal | None = None
    # these values hold their row back (a quarantine record and a warning line holding
    # ``hold_needles``) while the other rows are published; the replica keeps the key's
    # last published version
    hold_value: Callable[[Any], bool] | None = None
    hold_needles: tuple[str, ...] = ()
    key: bool = False              # may be a primary key column
    null: bool = True              # NULLs drawn
    note: str = ""
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


def _ident(x: Any) -> Any:
    return x


def _dec(x: Any) -> Any:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def _sqlite_dec(x: Any) -> Any:
    # SQLite's NUMERIC affinity may store a decimal literal as INTEGER or REAL: the source
    # then holds that number (a double: its exact value at the contract's scale), and the
    # replica must hold it as the contract's decimal
    if isinstance(x, float):  # a double keeps 15 significant digits: more are refused
        return Decimal(repr(x)).quantize(Decimal("0.000001"))
    return Decimal(str(x))


def _sqlite_dec_refused(x: Any) -> bool:
    if isinstance(x, float) and len(Decimal(repr(x)).normalize().as_tuple().digits) > 15:
        return True
    return abs(_sqlite_dec(x)) >= 10**14


def _bool(x: Any) -> Any:
    return bool(x)


DEC_CONTRACT = ('Series[pandas_engine.Decimal] = pa.Field({null}dtype_kwargs={{"precision": 20, '
                '"scale": 6}})')
TS_CONTRACT = ('Series[pd.DatetimeTZDtype] = pa.Field({null}dtype_kwargs={{"unit": "us", '
               '"tz": "UTC"}})')

NOT_CARRIED = ("column_types", "exclude_columns")

SQLITE = [
    TypeSpec("sqlite", "INTEGER", "INTEGER", ints, "Series[int]", "BIGINT", "int", _ident, key=True),
    TypeSpec("sqlite", "TEXT", "TEXT", texts, "Series[str]", "VARCHAR", "str", _ident, key=True),
    TypeSpec("sqlite", "REAL", "REAL", floats, "Series[float]", "DOUBLE", "float", _ident),
    TypeSpec("sqlite", "NUMERIC(20,6)", "NUMERIC(20,6)", decimals, DEC_CONTRACT, "DECIMAL(20,6)",
             "dec", _sqlite_dec, refuse_value=_sqlite_dec_refused,
             value_refusal=Refusal("decimal out of range", ("cannot carry exactly", "precision"),
                                   "column_types"),
             note="written as decimal text; SQLite may store it as a REAL (a double): one "
                  "with more than 15 significant digits, or that no longer fits (20,6), is refused"),
    TypeSpec("sqlite", "TIMESTAMP (text, zoned and naive forms)", "TIMESTAMP", ts_texts,
             TS_CONTRACT, "TIMESTAMP WITH TIME ZONE", "ts", instant,
             note="the UTC instant; naive text taken as UTC"),
    TypeSpec("sqlite", "TIME (text)", "TIME", time_texts, "Series[object]", "TIME", "time",
             sqlite_time, refuse_value=lambda x: sqlite_time(x) is None,
             value_refusal=Refusal("not an exact time of day", ("is not a time of day",),
                                   "column_types"),
             note="HH:MM[:SS[.ffffff]], `Z`/`+00:00` allowed; digits beyond microseconds, "
                  "another offset or 24:00:00 are refused"),
    TypeSpec("sqlite", "BOOLEAN (0/1)", "BOOLEAN", lambda: st.booleans().map(int), "Series[bool]",
             "BOOLEAN", "bool", _bool,
             note="any other value ('no', 'false', 2, 0.5) is refused, never read as true"),
    TypeSpec("sqlite", "BLOB", "BLOB", binaries, "Series[object]", "BLOB", "bytes", bytes),
    TypeSpec("sqlite", "JSON (text)", "JSON", json_texts, "Series[str]", "VARCHAR", "json",
             sqlite_json_doc, note="JSON text; the document null is not SQL NULL; a number "
             "document SQLite stores as a number is read as its JSON text"),
]


POSTGRES = [
    TypeSpec("postgres", "bigint", "bigint", ints, "Series[int]", "BIGINT", "int", _ident, key=True),
    TypeSpec("postgres", "integer", "integer", lambda: ints(-(2**31), 2**31 - 1), "Series[int]",
             "BIGINT", "int", _ident, key=True),
    TypeSpec("postgres", "text", "text", texts, "Series[str]", "VARCHAR", "str", _ident, key=True),
    TypeSpec("postgres", "double precision", "double precision", lambda: floats(nan=True),
             "Series[float]", "DOUBLE", "float", _ident, note="NaN and ±Infinity included"),
    TypeSpec("postgres", "numeric(20,6)", "numeric(20,6)", decimals, DEC_CONTRACT, "DECIMAL(20,6)",
             "dec", _dec),
    TypeSpec("postgres", "numeric(20,6) holding NaN", "numeric(20,6)",
             lambda: st.one_of(st.just(Decimal("NaN")), decimals()), DEC_CONTRACT, "DECIMAL(20,6)",
             "dec", _dec, hold_value=lambda v: isinstance(v, Decimal) and v.is_nan(),
             hold_needles=("NaN", "held back"),
             note="NaN has no DECIMAL value: its row is held back in quarantine (`warning:` "
                  "line), the others are published"),
    TypeSpec("postgres", "timestamptz", "timestamptz", instants, TS_CONTRACT,
             "TIMESTAMP WITH TIME ZONE", "ts", instant, key=True),
    TypeSpec("postgres", "timestamp (naive)", "timestamp",
             lambda: instants().map(lambda d: d.replace(tzinfo=None)), TS_CONTRACT,
             "TIMESTAMP WITH TIME ZONE", "ts", instant, note="taken as UTC"),
    TypeSpec("postgres", "date", "date", dates, "Series[pandas_engine.Date]", "DATE", "date",
             _ident),
    TypeSpec("postgres", "boolean", "boolean", st.booleans, "Series[bool]", "BOOLEAN", "bool",
             _bool),
    TypeSpec("postgres", "bytea", "bytea", binaries, "Series[object]", "BLOB", "bytes", bytes),
    TypeSpec("postgres", "jsonb", "jsonb", json_texts, "Series[str]", "VARCHAR", "json",
             json_doc, note="JSON text; the document null is not SQL NULL"),
    TypeSpec("postgres", "json", "json", json_texts, "Series[str]", "VARCHAR", "json", json_doc),
    TypeSpec("postgres", "uuid", "uuid", lambda: st.uuids().map(str), "Series[str]", "VARCHAR",
             "str", _ident, key=True),
    TypeSpec("postgres", "interval", "interval",
             lambda: st.sampled_from(["1 day 02:03:04", "-3 months", "00:00:00.000001"]),
             "Series[str]", "VARCHAR", "str", _ident,
             note="PostgreSQL's own text form (no exact DuckDB/Arrow path through dlt): a "
                  "type without an exact published type is published as text, said once"),
    TypeSpec("postgres", "numeric (no precision)", "numeric",
             lambda: st.one_of(st.sampled_from([Decimal("12345678901234567890.123456789012"),
                                                Decimal("-0.000000000001"), Decimal("0")]),
                               decimals()),
             "Series[str]", "VARCHAR", "str", lambda v: v,
             note="PostgreSQL's own text form: every digit"),
    TypeSpec("postgres", "inet", "inet",
             lambda: st.sampled_from(["10.0.0.1/8", "::1", "192.168.0.1"]),
             "Series[str]", "VARCHAR", "str", _ident, note="PostgreSQL's own text form"),
]


def _api_dec(x: Any) -> Any:
    return Decimal(x)


REST = [
    TypeSpec("rest", "integer", "number", ints, "Series[int]", "BIGINT", "int", _ident, key=True),
    TypeSpec("rest", "string", "string", texts, "Series[str]", "VARCHAR", "str", _ident, key=True),
    TypeSpec("rest", "number (float)", "number", floats, "Series[float]", "DOUBLE", "float",
             _ident),
    TypeSpec("rest", "decimal string", "string",
             lambda: decimals().map(lambda d: format(d, "f")), DEC_CONTRACT, "DECIMAL(20,6)",
             "dec", _api_dec),
    TypeSpec("rest", "boolean", "boolean", st.booleans, "Series[bool]", "BOOLEAN", "bool", _ident),
    TypeSpec("rest", "timestamp string", "string", lambda: ts_texts(ZONED_FORMS), TS_CONTRACT,
             "TIMESTAMP WITH TIME ZONE", "ts", instant, note="the UTC instant"),
    TypeSpec("rest", "object / array", "object",
             lambda: json_values().filter(lambda v: isinstance(v, (dict, list))),
             "Series[str]", "VARCHAR", "json",
             lambda v: json_doc(json.dumps(v)), note="JSON text"),
]


def _csv_int(x: Any) -> Any:
    return int(x)


CSV = [
    TypeSpec("csv", "integer text", "int", lambda: ints().map(str), "Series[int]", "BIGINT", "int",
             _csv_int, key=True),
    TypeSpec("csv", "text", "str", texts, "Series[str]", "VARCHAR", "str", _ident, key=True,
             note='an unquoted empty field is NULL, "" the empty string'),
    TypeSpec("csv", "decimal text", "dec", lambda: decimals().map(lambda d: format(d, "f")),
             DEC_CONTRACT, "DECIMAL(20,6)", "dec", _api_dec),
    TypeSpec("csv", "float text", "float", lambda: floats().map(repr), "Series[float]", "DOUBLE",
             "float", float),
    TypeSpec("csv", "true/false", "bool", lambda: st.sampled_from(["true", "false"]),
             "Series[bool]", "BOOLEAN", "bool", lambda x: x == "true"),
    TypeSpec("csv", "timestamp text", "ts", ts_texts, TS_CONTRACT, "TIMESTAMP WITH TIME ZONE",
             "ts", instant, note="the UTC instant; naive text taken as UTC"),
]

JSONL = [
    TypeSpec("jsonl", "integer", "int", ints, "Series[int]", "BIGINT", "int", _ident, key=True),
    TypeSpec("jsonl", "string", "str", texts, "Series[str]", "VARCHAR", "str", _ident, key=True),
    TypeSpec("jsonl", "number (float)", "float", floats, "Series[float]", "DOUBLE", "float",
             _ident),
    TypeSpec("jsonl", "decimal number", "decnum", decimals, DEC_CONTRACT, "DECIMAL(20,6)", "dec",
             _dec, note="a JSON number with up to 20 digits"),
    TypeSpec("jsonl", "boolean", "bool", st.booleans, "Series[bool]", "BOOLEAN", "bool", _ident),
    TypeSpec("jsonl", "timestamp string", "str", ts_texts, TS_CONTRACT,
             "TIMESTAMP WITH TIME ZONE", "ts", instant, note="naive text taken as UTC"),
    TypeSpec("jsonl", "object / array", "obj",
             lambda: json_values().filter(lambda v: isinstance(v, (dict, list))),
             "Series[str]", "VARCHAR", "json", lambda v: json_doc(json.dumps(v)),
             note="JSON text"),
]

PARQUET = [
    TypeSpec("parquet", "int64", "int64", ints, "Series[int]", "BIGINT", "int", _ident, key=True),
    TypeSpec("parquet", "string", "string", texts, "Series[str]", "VARCHAR", "str", _ident,
             key=True),
    TypeSpec("parquet", "double", "float64", lambda: floats(nan=True), "Series[float]", "DOUBLE",
             "float", _ident),
    TypeSpec("parquet", "decimal128(20,6)", "decimal128(20,6)", decimals, DEC_CONTRACT,
             "DECIMAL(20,6)", "dec", _dec),
    TypeSpec("parquet", "bool", "bool", st.booleans, "Series[bool]", "BOOLEAN", "bool", _ident),
    TypeSpec("parquet", "timestamp[us, UTC]", "timestamp_tz", instants, TS_CONTRACT,
             "TIMESTAMP WITH TIME ZONE", "ts", instant),
    TypeSpec("parquet", "timestamp[us] (naive)", "timestamp",
             lambda: instants().map(lambda d: d.replace(tzinfo=None)), TS_CONTRACT,
             "TIMESTAMP WITH TIME ZONE", "ts", instant, note="taken as UTC"),
    TypeSpec("parquet", "binary", "binary", binaries, "Series[object]", "BLOB", "bytes", bytes),
    TypeSpec("parquet", "date32", "date32", dates, "Series[pandas_engine.Date]", "DATE", "date",
             _ident),
]

KINDS: dict[str, list[TypeSpec]] = {
    "sqlite": SQLITE, "postgres": POSTGRES, "rest": REST,
    "csv": CSV, "jsonl": JSONL, "parquet": PARQUET,
}
KIND_TITLES = {
    "sqlite": "SQLite (`sql_database`)", "postgres": "PostgreSQL (`sql_database`)",
    "rest": "REST JSON (`rest_api`)", "csv": "CSV (`files`)", "jsonl": "JSON Lines (`files`)",
    "parquet": "Parquet (`files`)",
}

# refusals that do not belong to one type: what the key and the rows may hold
NULL_KEY = Refusal("NULL key", ("null", "NULL", "no value"), "primary_key")
DUPLICATE_KEY = Refusal("duplicate key", ("unique", "duplicate", "Duplicate"), "primary_key")
NULL_CURSOR = Refusal("NULL cursor", ("null", "NULL"), "cursor", must=False)
