"""Reading one dropped file into an Arrow table shaped like the table's contract, or
setting it aside with what is wrong and what to do."""

from __future__ import annotations

import codecs
import csv
import functools
import gzip
import io
import re
import zlib
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from contracts import load_contract
from contracts.exact import InexactCast, cast_exact
from deltaferry.config import TableConfig
from deltaferry.delta import arrow_input, read_parquet
from deltaferry.errors import ConfigError
from sources.columns import INTERNAL_COLUMNS, LAKE_COLUMNS
from sources.files.jsonl import documents_as_text, read_jsonl
from sources.files.listing import SetAside
from sources.files.settings import (
    DEFAULT_DELIMITER,
    DEFAULT_ENCODING,
    EXTENSIONS,
)
from sources.wall_time import PER_SECOND, ZoneShifts, assume_zone

# --- reading one file --------------------------------------------------------------------


def file_format(name: str, configured: str | None) -> str:
    if configured:
        return configured
    lower = name.lower().removesuffix(".gz")
    for ext, fmt in EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt
    raise SetAside(
        "format unknown from its name",
        'set format = "csv", "jsonl" or "parquet" on the table, or narrow its pattern',
    )


def read_table(
    raw: bytes,
    fmt: str,
    t: TableConfig,
    types: dict[str, pa.DataType],
    zone: str = "UTC",
    convention: str = "snake_case",
    shifts: ZoneShifts | None = None,
    staged: Iterable[str] = (),
    job: str = "JOB",
) -> pa.Table | None:
    """A file's rows as Arrow, columns named as staging keeps them (``convention``: the
    job's staging naming, ``"direct"`` for a new one; the default is a staging made before
    names were kept) and cast to the contract's types, naive times taken in ``zone`` (those
    its clock shows twice or never counted in ``shifts``, ``sources/wall_time.py``); None
    when the file has nothing in it. Key columns may still hold NULLs (the caller holds
    those rows back). ``staged``: the table's columns staged so far (a name differing from
    one of them only in case sets the file aside; ``job`` names the job in its fix). Raises
    SetAside."""
    if raw[:2] == b"\x1f\x8b":  # gzip (a Parquet file starts with PAR1, never this)
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise SetAside(f"not valid gzip ({e})", "compress it again") from None
    if not raw.strip():
        return None
    try:
        if fmt == "csv":
            table = _read_csv(_utf8(raw, t), t.options.get("delimiter", DEFAULT_DELIMITER))
        elif fmt == "jsonl":
            table = read_jsonl(_utf8(raw, t), types, _dlt_name)
        else:
            table = documents_as_text(read_parquet(raw))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        what = {"csv": "valid CSV", "jsonl": "valid JSON Lines", "parquet": "a valid Parquet file"}
        raise SetAside(f"not {what[fmt]}: {_first_line(e)}", "fix the file") from None
    if convention == "snake_case":
        table = _dlt_names(table)
    else:
        table = _exact_names(table, convention, staged, job, t.name)
    _check_keys(table, t)
    if fmt == "jsonl":  # a JSON record leaves out what it does not have: that is null
        for name, typ in types.items():
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, typ))
    return _stageable(_conform(table, types, zone, shifts), types, zone, shifts)


# the widest decimal staging (DuckDB's DECIMAL) holds
MAX_DECIMAL_DIGITS = 38
INT64_MAX = 2**63 - 1


def _stageable(
    table: pa.Table,
    types: dict[str, pa.DataType],
    zone: str = "UTC",
    shifts: ZoneShifts | None = None,
) -> pa.Table:
    """The columns the contract does not type (``types``) in a type staging holds: a
    Parquet ``decimal256`` of at most 38 digits as the same decimal in 128 bits, unsigned
    64-bit integers within BIGINT's range as ``int64`` (dlt stages ``uint64`` as BIGINT).
    A wider decimal or a larger integer sets the file aside, naming column and value: it
    stopped the whole run (DuckDB cannot read a 256-bit decimal; BIGINT refused the value
    in the load), the job's other tables and files included. A naive timestamp is wall
    time in ``zone`` (the job's ``timezone``), staged as its UTC wall time, as SQL sources
    stage naive timestamps (it was taken as UTC whatever the job's zone, exit 0)."""
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if field.name in types:
            continue
        col = table.column(i)
        if pa.types.is_timestamp(field.type) and field.type.tz is None and zone != "UTC":
            try:
                zoned = _in_zone(col, zone, shifts, field.name)
            except OverflowError:
                raise _out_of_range(field.name, zone) from None
            table = table.set_column(i, field.name, zoned.cast(field.type))
        elif isinstance(field.type, pa.Decimal256Type):
            if field.type.precision > MAX_DECIMAL_DIGITS:
                raise SetAside(
                    f"column {field.name} is a decimal of {field.type.precision} digits, more "
                    f"than staging's DECIMAL holds ({MAX_DECIMAL_DIGITS})",
                    "type it in the table's contract (a Decimal of at most 38 digits, or str) "
                    "or write it with at most 38 digits",
                )
            table = table.set_column(
                i, field.name, col.cast(pa.decimal128(field.type.precision, field.type.scale))
            )
        elif pa.types.is_uint64(field.type):
            top = pc.max(col).as_py()
            if top is not None and top > INT64_MAX:
                raise SetAside(
                    f"column {field.name} holds {top}, more than staging's BIGINT holds "
                    "(unsigned 64-bit integers are staged as BIGINT)",
                    "type it in the table's contract as Decimal(20, 0) (or str)",
                )
            table = table.set_column(i, field.name, col.cast(pa.int64()))
    return table


def keys_not_null(table: pa.Table, t: TableConfig) -> pa.Table:
    """The key columns declared NOT NULL, as dlt's schema has them, where they hold no NULL
    (rows with a NULL key are held back by the caller, which then calls this again)."""
    return table.cast(
        pa.schema(
            [
                f.with_nullable(f.name not in t.primary_key or table[f.name].null_count > 0)
                for f in table.schema
            ]
        )
    )


def _utf8(raw: bytes, t: TableConfig) -> bytes:
    """The text as UTF-8 (what pyarrow parses), checked or converted from the table's
    encoding; a byte that does not decode sets the file aside, with where it is."""
    encoding = str(t.options.get("encoding", DEFAULT_ENCODING))
    codec = codecs.lookup(encoding).name
    decoder = codecs.getincrementaldecoder(encoding)()
    out: list[bytes] = []
    step = 16 * 1024 * 1024
    for start in range(0, len(raw), step):
        pending = len(decoder.getstate()[0])
        chunk = raw[start : start + step]
        try:
            text = decoder.decode(chunk, final=start + step >= len(raw))
        except UnicodeDecodeError as e:
            at = start - pending + e.start
            raise _bad_encoding(raw, at, encoding, "encoding" in t.options) from None
        if codec != "utf-8":
            out.append(text.encode("utf-8"))
    if codec != "utf-8":
        return b"".join(out)
    return raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw


def _bad_encoding(raw: bytes, at: int, encoding: str, configured: bool) -> SetAside:
    line = raw.count(b"\n", 0, at) + 1
    name = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
    problem = f"not valid {name} at byte {at} (line {line})"
    if configured:
        return SetAside(
            problem,
            f'set encoding to the file\'s encoding (now "{encoding}") or re-save it as {name}',
        )
    guess = "utf-16" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "latin-1"
    return SetAside(problem, f'set encoding = "{guess}" (or the file\'s encoding) on the table')


def _read_csv(data: bytes, delimiter: str) -> pa.Table:
    """Every column as text (types come from the contract, not from guessing); an empty
    unquoted field is null, a quoted one ("") is the empty string."""
    import pyarrow.csv as pcsv

    head = data[: 1024 * 1024].decode("utf-8", errors="replace")
    names = next(csv.reader(io.StringIO(head), delimiter=delimiter), [])
    if data.count(b'"') % 2:  # a quoted field left open? (Arrow reads it to the end)
        _check_quotes_closed(data, delimiter)
    return pcsv.read_csv(
        arrow_input(data),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def _check_quotes_closed(data: bytes, delimiter: str) -> None:
    """SetAside when the file ends inside a quoted field: Arrow's reader takes everything up
    to the end as that field's text, so a file cut while being written published its last
    row with the following lines inside one value, and those rows were lost. Python's csv
    reader (strict) tells such a file from one with a quote inside an unquoted field
    (``5"``, which is what makes the quote count odd otherwise)."""
    text = io.StringIO(data.decode("utf-8", errors="replace"))
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    line = 1  # where the record being read starts
    try:
        for _ in reader:
            line = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" not in str(e):
            return  # anything else: Arrow's reader says what it finds
        raise SetAside(
            f"not valid CSV: a quoted field of the record on line {line} is not closed "
            "before the file ends (cut while being written?)",
            "write each file whole (to a temporary name, then rename it into the folder)",
        ) from None


@functools.lru_cache(maxsize=4096)
def _dlt_name(name: str) -> str:
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return NamingConvention().normalize_identifier(name)


def _exact_names(
    table: pa.Table, convention: str, staged: Iterable[str] = (), job: str = "JOB", name: str = "TABLE"
) -> pa.Table:
    """The file's column names kept exactly (a job whose staging keeps source names, see
    ``sources.names``); a name staging would change, a reserved one, one twice or two that
    differ only in case (with each other or with a column ``staged``) set the file aside,
    naming them."""
    from sources.names import column_problem

    found = column_problem(table.column_names, convention, staged, job, name)
    if found:
        problem, fix = found
        raise SetAside(problem, fix.replace("at the source", "in the file"))
    return table


def _dlt_names(table: pa.Table) -> pa.Table:
    names = [_dlt_name(n) for n in table.column_names]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SetAside(
            f"column(s) {', '.join(twice)} more than once (as dlt names them)",
            "give every column its own name",
        )
    reserved = sorted(n for n in names if n.lower() in INTERNAL_COLUMNS | LAKE_COLUMNS)
    if reserved:
        raise SetAside(f"reserved column(s) {', '.join(reserved)}", "rename them")
    return table.rename_columns(names)


def _check_keys(table: pa.Table, t: TableConfig) -> None:
    missing = [c for c in t.primary_key if c not in table.column_names]
    if missing:
        raise SetAside(
            f"no primary key column(s) {', '.join(missing)} (columns: "
            f"{', '.join(table.column_names[:20])})",
            "add them to the file, or fix the table's primary_key",
        )
    # rows with NULL in a key column are held back by the caller (sources.integrity)


def _conform(
    table: pa.Table,
    types: dict[str, pa.DataType],
    zone: str = "UTC",
    shifts: ZoneShifts | None = None,
) -> pa.Table:
    """Cast the columns the contract types to its types, value for value
    (``contracts.exact.cast_exact``), so every file of a table stages alike. A decimal
    column always gets the contract's precision and scale; other kinds keep their width
    (int32 stays int32). Text without a zone offset, and a naive timestamp, read into a
    zoned timestamp are taken as wall time in ``zone`` (the job's ``timezone``); text with
    a zone offset read into a naive timestamp is the instant's UTC wall time (as SQL
    sources stage it; it set the file aside), text without one is read as it is. A value
    that does not fit sets the file aside, naming it."""
    for name, target in types.items():
        if name not in table.column_names:
            continue
        i = table.column_names.index(name)
        col = table.column(i)
        if col.type == target or _kind(col.type) == _kind(target) not in ("timestamp", "decimal"):
            continue
        try:
            if pa.types.is_timestamp(target) and target.tz and pa.types.is_string(col.type):
                cast = _zoned_from_text(col, target, zone, shifts, name)
            elif pa.types.is_timestamp(target) and pa.types.is_string(col.type):
                cast = _naive_from_text(col, target)
            elif pa.types.is_timestamp(target) and target.tz and _naive_time(col.type):
                naive = cast_exact(col, pa.timestamp(target.unit))
                cast = _in_zone(naive, zone, shifts, name).cast(target)
            else:
                cast = cast_exact(col, target)
        except InexactCast as e:
            raise SetAside(
                f"column {name} cannot be read as {target} (the contract's type): {e.why}{e.at}",
                "fix the values, or the contract",
            ) from None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SetAside(
                f"column {name} cannot be read as {target} (the contract's type): "
                f"{_first_line(e)}{_first_unzoned(col, target, zone)}",
                "fix the values, or the contract",
            ) from None
        except OverflowError:  # a naive time the zone moves out of the years there are
            raise _out_of_range(name, zone) from None
        table = table.set_column(i, name, cast)
    return table


# the first and the last instant staging holds (0001-01-01 and 10000-01-01 UTC), in
# seconds since 1970
_FIRST_SECOND, _END_SECOND = -62135596800, 253402300800


def _in_zone(naive: Any, zone: str, shifts: ZoneShifts | None, name: str) -> Any:
    """Naive timestamps as instants in ``zone`` (``sources/wall_time.py``'s rule; the wall
    times its clock shows twice or never are counted in ``shifts`` for column ``name``).
    Raises OverflowError when one falls outside years 1-9999 in UTC (0001-01-01 00:30 in
    Berlin): Arrow holds such an instant, staging and the replica do not."""
    zoned, shifted = assume_zone(naive, zone)
    ticks = zoned.cast(pa.int64())
    per = PER_SECOND[zoned.type.unit]
    low, high = pc.min(ticks).as_py(), pc.max(ticks).as_py()
    if low is not None and (low < _FIRST_SECOND * per or high >= _END_SECOND * per):
        raise OverflowError(f"a naive time in column {name} is no instant in {zone}")
    if shifts is not None:
        shifts.add_all(name, shifted)
    return zoned


def _out_of_range(name: str, zone: str) -> SetAside:
    return SetAside(
        f"column {name} holds a naive time that is no instant in the job's timezone {zone} "
        "(out of range)",
        "fix the values, or the job's timezone",
    )


def _naive_time(t: pa.DataType) -> bool:
    return (pa.types.is_timestamp(t) and t.tz is None) or pa.types.is_date(t)


def _first_unzoned(col: Any, target: pa.TimestampType, zone: str = "UTC") -> str:
    """Where the first text that is not a time is, as " (row 3: 'x')" (error path only)."""
    if not pa.types.is_string(col.type):
        return ""
    for i in range(len(col)):
        try:
            _zoned_from_text(col.slice(i, 1), target, zone)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return f" (row {i + 1}: {col[i].as_py()!r})"
        except OverflowError:  # a time, out of range: not the one looked for
            continue
    return ""


_ZONED_TEXT = r"(?i)\d\d:\d\d(:\d\d(\.\d+)?)?\s*(z|[+-]\d\d(:?\d\d)?)$"


def _naive_from_text(col: Any, target: pa.TimestampType) -> Any:
    """Text as naive ``target`` values: with a zone offset, the instant's UTC wall time;
    without, as written (``cast_exact``: no digit beyond the unit dropped)."""
    zoned = pc.match_substring_regex(col, _ZONED_TEXT)
    utc = pa.timestamp(target.unit, "UTC")
    with_zone = cast_exact(pc.if_else(zoned, col, pa.scalar(None, pa.string())), utc)
    naive = cast_exact(pc.if_else(zoned, pa.scalar(None, pa.string()), col), target)
    return pc.coalesce(with_zone.cast(target), naive)


def _zoned_from_text(
    col: Any,
    target: pa.TimestampType,
    zone: str = "UTC",
    shifts: ZoneShifts | None = None,
    name: str = "",
) -> Any:
    zoned = pc.match_substring_regex(col, _ZONED_TEXT)
    with_zone = pc.cast(pc.if_else(zoned, col, pa.scalar(None, pa.string())), target)
    naive = pc.cast(pc.if_else(zoned, pa.scalar(None, pa.string()), col), pa.timestamp(target.unit))
    return pc.coalesce(with_zone, _in_zone(naive, zone, shifts, name).cast(target))


_KINDS = (
    ("int", pa.types.is_integer),
    ("float", pa.types.is_floating),
    ("str", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)),
    ("bool", pa.types.is_boolean),
    ("decimal", pa.types.is_decimal),
    ("date", pa.types.is_date),
    ("timestamp", pa.types.is_timestamp),
)


def _kind(t: pa.DataType) -> str:
    """A type's kind: a column of the contract's kind keeps its width (int32 stays int32)."""
    return next((name for name, test in _KINDS if test(t)), str(t))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", text).rstrip(".")
    return text if len(text) <= 300 else text[:297] + "..."


def check_staged_types(
    table: pa.Table,
    staged: dict[str, str],
    typed: dict[str, pa.DataType],
    t: TableConfig,
    job: str,
) -> pa.Table:
    """``table`` with its columns of another type than staged cast to the staged type, or
    SetAside when a column the contract does not type (``typed``) has values its staged
    column (``staged``: its DuckDB type, from earlier files) would not hold exactly: staging
    would cast them into it (1.5 into a BIGINT column stored 2, a time into a DATE column
    cut to the day) or fail the whole run on every retry (a number beyond int64, text in a
    number column). A file whose values the staged type holds (int32 into BIGINT, or
    integers within 2**53 into DOUBLE: ``deltaferry.duck.split_exact``) is read.
    A time finer than microseconds (a contract's nanosecond ``pd.Timestamp`` lets it through
    the cast) is set aside too: staging keeps microseconds, and the run failed whole.
    A file that passes adds its new columns' types to ``staged``: a later file of the same
    run is held to them too (dlt cannot load one run's files of two types)."""
    from deltaferry.duck import duck_type, split_exact, widens

    table = _microseconds(table)
    for field in table.schema:
        have = staged.get(field.name)
        if have is None or field.name in typed or pa.types.is_null(field.type):
            continue
        incoming = duck_type(field)
        if incoming == have or widens(incoming, have):
            continue
        exact, inexact = split_exact(table[field.name], have, incoming)
        if inexact.null_count < len(inexact):
            first = next(v for v in inexact.to_pylist() if v is not None)
            raise SetAside(
                f"column {field.name} is staged as {have} (from the files of this table read "
                f"before it) and this file has {incoming} values {have} does not hold exactly "
                f"(e.g. {first!r})",
                f"type {field.name} in the table's contract ({t.contract}) as a type every "
                f"file's values fit, and stage the table again (deltaferry reset {job} --table "
                f"{t.name} --reason '{field.name} retyped'), or fix the file",
            )
        i = table.schema.get_field_index(field.name)  # staged as its staged type
        table = table.set_column(i, field.name, exact)
    for field in table.schema:
        if field.name not in staged and not pa.types.is_null(field.type):
            staged[field.name] = duck_type(field)
    return table


def _microseconds(table: pa.Table) -> pa.Table:
    """``table`` with its times (``timestamp`` columns, zoned or not, and times of day) in
    microseconds, the unit staging keeps. Parquet writers differ (pandas writes
    nanoseconds, others milliseconds or seconds), and dlt stages a column at the unit of the
    first file it sees: a later file of another unit was set aside (TIMESTAMP_MS does not
    hold microseconds, TIME_NS does not take TIME) or, with a zone, dlt could not join one
    run's files and every run failed. Seconds and milliseconds convert exactly; nanoseconds
    beyond microseconds set the file aside naming column and row."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            target: pa.DataType = pa.timestamp("us", field.type.tz)
        elif pa.types.is_time(field.type):
            _check_time_of_day(table.column(i), field)
            target = pa.time64("us")
        else:
            continue
        if field.type == target:
            continue
        try:
            us = cast_exact(table.column(i), target)
        except InexactCast as e:
            raise SetAside(
                f"column {field.name} has a time finer than microseconds{e.at}, which "
                "staging does not keep",
                "fix the file (at most 6 fractional digits)",
            ) from None
        table = table.set_column(i, field.name, us)
    return table


def _check_time_of_day(col: Any, field: pa.Field) -> None:
    """SetAside when a time-of-day column holds a value outside 00:00 to 24:00 (Parquet
    stores a count since midnight, which a writer can make anything): it failed the
    contract's validation with a bare "hour must be in 0..23"."""
    width = pa.int32() if pa.types.is_time32(field.type) else pa.int64()
    ticks = col.cast(width).cast(pa.int64())
    day = 86_400 * PER_SECOND[field.type.unit]
    bad = pc.or_(pc.less(ticks, 0), pc.greater_equal(ticks, day))
    bad = pc.fill_null(bad, False)
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise SetAside(
            f"column {field.name} row {row + 1} holds {ticks[row].as_py()} {field.type.unit} "
            "since midnight, which is no time of day",
            "fix the file",
        )


def contract_types(t: TableConfig, where: str) -> dict[str, pa.DataType]:
    """The contract's Arrow types, as staged (a ``Date`` column as ``date32``: files of one
    run holding it as a date and as a timestamp failed dlt's load of the whole job). A
    decimal wider than the 38 digits staging (DuckDB) holds is a ConfigError."""
    types = load_contract(t.contract, where=where).staged_types()
    for n, ty in types.items():
        if pa.types.is_decimal(ty) and ty.precision > 38:
            raise ConfigError(
                f"{where}: contract {t.contract} column {n} is Decimal({ty.precision}, "
                f"{ty.scale}) and staging holds at most 38 digits; declare it with precision "
                "38 or less, or as str"
            )
    return {n: pa.string() if pa.types.is_large_string(ty) else ty for n, ty in types.items()}
