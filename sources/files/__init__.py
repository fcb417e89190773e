"""File drops: CSV, JSON Lines and Parquet files landing in a folder or an S3 prefix.

Each table is one dlt resource over the files its ``pattern`` matches, merged on its
primary key. Files are picked up by modification time and name (see ``Watermark``); the
watermark lives in the resource's dlt state, committed by dlt in the same load as the
rows. Each file is read whole with pyarrow, its columns named as dlt names them and cast
to the contract's types, and passed through ``ChangedRows``, so a file dropped again with
the same rows stages nothing. A file that cannot be read (bad encoding, not CSV/JSON/
Parquet, no primary key) is set aside with a one-line reason; the rest of the run goes on.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import re
import stat
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from contracts import load_contract
from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import ConfigError, TransientError
from sources.files.settings import (
    DEFAULT_DELIMITER,
    DEFAULT_ENCODING,
    EXTENSIONS,
    default_pattern,
    lookback_seconds,
)
from sources.columns import FILE_TIME_COLUMN, INTERNAL_COLUMNS, STAGING_DATASET
from sources.staging import (
    ChangedRows,
    ExtractResult,
    pipeline_for,
    q,
    read_staging,
    row_counts,
    run_load,
    staged_columns,
    staged_table_exists,
    staging_path,
)


@dataclass(frozen=True)
class DropFile:
    """A file as listed: its path relative to the job's url, modification time, and a tag
    that changes with its content (the size in a folder, the ETag on S3)."""

    name: str
    mtime_ns: int
    tag: str


class SetAside(Exception):
    """A file that cannot be read as a table of the job: what is wrong and what to do."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


# --- where the files are -----------------------------------------------------------------


class Folder:
    """Files under a local (or mounted) folder."""

    reread = "touch the file to re-read it"

    def __init__(self, job: JobConfig, root: Path) -> None:
        self.where = f"job '{job.name}': folder {root}"
        self.root = root

    def check(self) -> None:
        if not self.root.exists():
            raise ConfigError(f"{self.where} does not exist; create it or fix the job's url")
        if not self.root.is_dir():
            raise ConfigError(f"{self.where} is not a folder; fix the job's url")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(f"{self.where} cannot be read (permission denied)")

    def list(self, pattern: str) -> list[DropFile]:
        match = glob_regex(pattern)
        start, deep = _literal_dir(pattern)
        out: list[DropFile] = []
        stack = [self.root / start] if start else [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            except PermissionError:
                raise ConfigError(
                    f"{self.where}: {folder} cannot be read (permission denied)"
                ) from None
            for e in entries:
                if _hidden(e.name):
                    continue
                if e.is_dir(follow_symlinks=False):
                    if deep:
                        stack.append(Path(e.path))
                    continue
                rel = Path(e.path).relative_to(self.root).as_posix()
                if not match.match(rel):
                    continue
                try:
                    st = os.stat(e.path)
                except FileNotFoundError:  # gone since listed
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append(DropFile(rel, st.st_mtime_ns, str(st.st_size)))
        return out

    def read(self, f: DropFile) -> bytes | None:
        """The file's bytes, or None when it is gone."""
        try:
            return (self.root / f.name).read_bytes()
        except FileNotFoundError:
            return None
        except PermissionError:
            raise SetAside("unreadable (permission denied)", "grant read access") from None
        except OSError as e:
            raise TransientError(f"{self.where}: reading {f.name} failed: {e}") from e


class S3Prefix:
    """Objects under an S3 prefix, through boto3 (endpoint and credentials as for the lake)."""

    reread = "upload it again to re-read it"

    def __init__(self, job: JobConfig, bucket: str, prefix: str) -> None:
        from destinations.lake import aws_session, require_tls, s3_client_config

        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.where = f"job '{job.name}': source {self.url}"
        self._client: Any = aws_session().client("s3", config=s3_client_config())
        require_tls(self._client.meta.endpoint_url, f"job '{job.name}': source {self.url}")

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as e:  # noqa: BLE001 - classified below
            raise self._error(e, "listing") from None

    def list(self, pattern: str) -> list[DropFile]:
        match = glob_regex(pattern)
        start, deep = _literal_prefix(pattern)
        extra = {} if deep else {"Delimiter": "/"}
        out: list[DropFile] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + start, **extra
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) :]
                    if rel.endswith("/") or any(_hidden(p) for p in rel.split("/")):
                        continue
                    if match.match(rel):
                        mtime = obj["LastModified"]
                        ns = int(mtime.timestamp()) * 10**9 + mtime.microsecond * 1000
                        out.append(DropFile(rel, ns, obj.get("ETag", "").strip('"')))
        except Exception as e:  # noqa: BLE001 - classified below
            raise self._error(e, "listing") from None
        return out

    def read(self, f: DropFile) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self.prefix + f.name)
            return resp["Body"].read()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                return None
            if code in ("AccessDenied", "403"):
                raise SetAside(
                    "unreadable (access denied)", "allow s3:GetObject on it (and its KMS key)"
                ) from None
            raise self._error(e, f"reading {f.name}") from None
        except Exception as e:  # noqa: BLE001 - classified below
            raise self._error(e, f"reading {f.name}") from None

    def _error(self, e: Exception, doing: str) -> Exception:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchBucket", "404") and doing == "listing":
                return ConfigError(f"{self.where}: bucket '{self.bucket}' does not exist")
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return ConfigError(
                    f"{self.where}: access denied ({code}) {doing}; check the AWS credentials "
                    "and allow s3:ListBucket and s3:GetObject on the prefix"
                )
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                return TransientError(f"{self.where}: {doing} failed ({code}); retry")
            return ConfigError(f"{self.where}: {doing} failed: {code or e}")
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return ConfigError(
                f"{self.where}: no AWS credentials found ({type(e).__name__}); set them as for "
                "an S3 lake (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)"
            )
        if isinstance(e, (BotoCoreError, ConnectionError, TimeoutError)):
            return TransientError(
                f"{self.where} is unreachable at {self._client.meta.endpoint_url}: {e}"
            )
        return e


def drops_for(job: JobConfig) -> Folder | S3Prefix:
    """Where the job's files land: ``s3://bucket/prefix``, or a folder (``file:`` optional;
    a relative path is relative to the jobs file's folder)."""
    url = job.source_url()
    if url.startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        return S3Prefix(job, bucket, prefix)
    if url.startswith("file:"):
        from destinations.lake import parse_lake_url

        return Folder(
            job, Path(parse_lake_url(url, where=f"job '{job.name}'", base=job.base_dir).prefix)
        )
    path = Path(url).expanduser()
    return Folder(job, path if path.is_absolute() else job.base_dir / path)


def _hidden(name: str) -> bool:
    # files being written (.orders.csv.tmp) and markers (_SUCCESS) are not drops
    return name.startswith((".", "_"))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative paths: ``*`` and ``?`` stay within one folder, ``**/`` spans
    any number of folders, ``[abc]`` is a character class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _literal_prefix(pattern: str) -> tuple[str, bool]:
    """The pattern's text before its first wildcard, and whether matches may lie in
    sub-folders of where that text ends."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    return pattern[:cut], "/" in pattern[cut:] or "**" in pattern


def _literal_dir(pattern: str) -> tuple[str, bool]:
    prefix, deep = _literal_prefix(pattern)
    return prefix.rpartition("/")[0], deep


# --- which files are new -----------------------------------------------------------------


class Watermark:
    """Which listed files to read, kept in the resource's dlt state.

    State: the high-water modification time and, for every file read (or set aside) whose
    time is within ``lookback`` of it, the (time, tag) it had. A listed file is read when
    its time is at or after ``high_water - lookback`` and it was not read with that same
    time and tag. So a file that lands after a newer one with the same or an older time
    (same-second writes, a rename keeping the writer's time, a slow multipart upload) is
    still read if it is at most ``lookback`` behind; a re-dropped or touched file is read
    again; and the state holds only the files of the last ``lookback`` seconds. The mark
    never moves past the listing's own clock, so one file from the future does not hide
    the files after it.
    """

    def __init__(self, state: Any, lookback_s: float) -> None:
        self.state = state
        self.lookback_ns = int(lookback_s * 1e9)
        self.high: int | None = state.get("high_water_ns")
        self.seen: dict[str, list[Any]] = dict(state.get("seen") or {})

    def new(self, listed: list[DropFile]) -> list[DropFile]:
        floor = None if self.high is None else self.high - self.lookback_ns
        return [
            f
            for f in listed
            if (floor is None or f.mtime_ns >= floor)
            and self.seen.get(f.name) != [f.mtime_ns, f.tag]
        ]

    def advance(self, read: list[DropFile], listed_at_ns: int) -> None:
        """Record the files read (or set aside) in the state dlt commits with the load."""
        for f in read:
            self.seen[f.name] = [f.mtime_ns, f.tag]
        newest = max((f.mtime_ns for f in read), default=None)
        if newest is not None:
            mark = min(newest, listed_at_ns)
            self.high = mark if self.high is None else max(self.high, mark)
        if self.high is not None:
            floor = self.high - self.lookback_ns
            self.seen = {n: v for n, v in self.seen.items() if v[0] >= floor}
            self.state["high_water_ns"] = self.high
        self.state["seen"] = self.seen


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
    raw: bytes, fmt: str, t: TableConfig, types: dict[str, pa.DataType]
) -> pa.Table | None:
    """A file's rows as Arrow, columns named as dlt names them and cast to the contract's
    types; None when the file has nothing in it. Raises SetAside."""
    if fmt != "parquet" and raw[:2] == b"\x1f\x8b":
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
            import pyarrow.json as pj

            table = pj.read_json(pa.BufferReader(_utf8(raw, t)))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        what = {"csv": "valid CSV", "jsonl": "valid JSON Lines", "parquet": "a valid Parquet file"}
        raise SetAside(f"not {what[fmt]}: {_first_line(e)}", "fix the file") from None
    table = _dlt_names(table)
    _check_keys(table, t)
    if fmt == "jsonl":  # a JSON record leaves out what it does not have: that is null
        for name, typ in types.items():
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, typ))
    table = _conform(table, types)
    # the keys were checked: say so, as dlt's schema does (NOT NULL)
    return table.cast(
        pa.schema([f.with_nullable(f.name not in t.primary_key) for f in table.schema])
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
    return pcsv.read_csv(
        pa.BufferReader(data),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def _dlt_names(table: pa.Table) -> pa.Table:
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    naming = NamingConvention()
    names = [naming.normalize_identifier(n) for n in table.column_names]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SetAside(
            f"column(s) {', '.join(twice)} more than once (as dlt names them)",
            "give every column its own name",
        )
    reserved = sorted(set(names) & INTERNAL_COLUMNS)
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
    for c in t.primary_key:
        nulls = table[c].is_null()
        if pc.any(nulls).as_py():
            row = pc.index(nulls, True).as_py() + 1
            raise SetAside(f"row {row} has no value for primary key column {c}", "fill it in")


def _conform(table: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    """Cast the columns the contract types to its types, so every file of a table stages
    alike. Text without a zone offset read into a zoned timestamp is taken as UTC."""
    for name, target in types.items():
        if name not in table.column_names:
            continue
        i = table.column_names.index(name)
        col = table.column(i)
        if col.type == target or _kind(col.type) == _kind(target) != "timestamp":
            continue
        try:
            if pa.types.is_timestamp(target) and target.tz and pa.types.is_string(col.type):
                cast = _zoned_from_text(col, target)
            else:
                cast = pc.cast(col, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SetAside(
                f"column {name} cannot be read as {target} (the contract's type): {_first_line(e)}",
                "fix the values, or the contract",
            ) from None
        table = table.set_column(i, name, cast)
    return table


def _zoned_from_text(col: Any, target: pa.TimestampType) -> Any:
    zoned = pc.match_substring_regex(col, r"(?i)\d\d:\d\d(:\d\d(\.\d+)?)?\s*(z|[+-]\d\d(:?\d\d)?)$")
    with_zone = pc.cast(pc.if_else(zoned, col, pa.scalar(None, pa.string())), target)
    naive = pc.cast(pc.if_else(zoned, pa.scalar(None, pa.string()), col), pa.timestamp(target.unit))
    as_utc = pc.assume_timezone(naive, "UTC").cast(target)
    return pc.coalesce(with_zone, as_utc)


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


def _contract_types(t: TableConfig, where: str) -> dict[str, pa.DataType]:
    types = load_contract(t.contract, where=where).arrow_types()
    return {n: pa.string() if pa.types.is_large_string(ty) else ty for n, ty in types.items()}


# --- one table's resource ----------------------------------------------------------------


class LatestWins:
    """A key's row from the newest file wins, whatever order the files are read in: files
    are read newest first within a run (within a file its last row wins), and a row is
    dropped when a file at least as new already gave its key, in this run or, through the
    file time staged with every row (``FILE_TIME_COLUMN``), in an earlier one. So a file
    that lands late with an older modification time does not overwrite newer rows (dlt's
    merge would otherwise keep whichever came last)."""

    def __init__(self, t: TableConfig, staged: pa.Table | None) -> None:
        self.pk = list(t.primary_key)
        self.con = duckdb.connect()
        keys = ", ".join(f"{q(c)} VARCHAR" for c in self.pk)
        self.con.execute(f"CREATE TABLE seen ({keys}, ns BIGINT)")
        if staged is not None and staged.num_rows:
            text = ", ".join(f"CAST({q(c)} AS VARCHAR)" for c in self.pk)
            self.con.register("staged_", staged)
            self.con.execute(f"INSERT INTO seen SELECT {text}, {FILE_TIME_COLUMN} FROM staged_")
            self.con.unregister("staged_")

    def keep(self, table: pa.Table, file_ns: int) -> pa.Table:
        text = ", ".join(f"CAST({q(c)} AS VARCHAR) AS {q(c)}" for c in self.pk)
        match = " AND ".join(f"s.{q(c)} = l.{q(c)}" for c in self.pk)
        keys = ", ".join(q(c) for c in self.pk)
        positions = pa.array(range(table.num_rows), pa.int64())
        self.con.register("f", table.select(self.pk).append_column("__i", positions))
        try:
            last = (
                f"SELECT __i, {text} FROM f "
                f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY __i DESC) = 1"
            )
            kept = self.con.execute(
                f"SELECT __i FROM ({last}) l WHERE NOT EXISTS "
                f"(SELECT 1 FROM seen s WHERE {match} AND s.ns >= ?) ORDER BY __i",
                [file_ns],
            ).fetch_arrow_table()
            self.con.execute(f"INSERT INTO seen SELECT DISTINCT {text}, ? FROM f", [file_ns])
        finally:
            self.con.unregister("f")
        return table if kept.num_rows == table.num_rows else table.take(kept["__i"])

    def close(self) -> None:
        self.con.close()


def staged_file_times(
    job: JobConfig, t: TableConfig, borrowed: duckdb.DuckDBPyConnection | None
) -> pa.Table | None:
    """Key and file time of every staged row that has one (rows staged before file times
    were kept have none, and so never hold a newer file's row back)."""
    path = staging_path(job.name)
    if not path.exists():
        return None
    con = read_staging(path, borrowed)
    try:
        if not staged_table_exists(con, t.name):
            return None
        if FILE_TIME_COLUMN not in staged_columns(con, t.name):
            return None
        keys = ", ".join(q(c) for c in t.primary_key)
        return con.execute(
            f"SELECT {keys}, {FILE_TIME_COLUMN} FROM {STAGING_DATASET}.{q(t.name)} "
            f"WHERE {FILE_TIME_COLUMN} IS NOT NULL"
        ).fetch_arrow_table()
    finally:
        con.close()


def _resource(
    job: JobConfig,
    t: TableConfig,
    drops: Folder | S3Prefix,
    changed: ChangedRows,
    skipped: dict[str, list[str]],
    borrowed: duckdb.DuckDBPyConnection | None = None,
) -> Any:
    where = f"job '{job.name}' table '{t.name}'"
    types = _contract_types(t, where)
    pattern = t.options.get("pattern") or default_pattern(t.name)
    staged_times = staged_file_times(job, t, borrowed)

    @dlt.resource(
        name=t.name, table_name=t.name, write_disposition="merge", primary_key=list(t.primary_key)
    )
    def files() -> Iterator[pa.Table]:
        mark = Watermark(dlt.current.resource_state(), lookback_seconds(job))
        listed_at = time.time_ns()
        todo = mark.new(drops.list(pattern))
        done: list[DropFile] = []
        reasons: list[tuple[DropFile, str]] = []
        latest = LatestWins(t, staged_times)
        try:
            for f in sorted(todo, key=lambda f: (f.mtime_ns, f.name), reverse=True):
                try:
                    raw = drops.read(f)
                    if raw is None:  # gone since listed
                        continue
                    table = read_table(raw, file_format(f.name, t.options.get("format")), t, types)
                except SetAside as e:
                    done.append(f)
                    reason = f"file {f.name} set aside: {e.problem}; {e.fix}, then {drops.reread}"
                    reasons.append((f, f"{where}: {reason}"))
                    continue
                done.append(f)
                if table is None or table.num_rows == 0:
                    continue
                table = latest.keep(table, f.mtime_ns)
                for start in range(0, table.num_rows, job.chunk_size):
                    rows = changed.arrow(table.slice(start, job.chunk_size))
                    if rows.num_rows:  # the file time is not part of a row's content hash
                        times = pa.array([f.mtime_ns] * rows.num_rows, pa.int64())
                        yield rows.append_column(FILE_TIME_COLUMN, times)
        finally:
            latest.close()
        mark.advance(done, listed_at)
        if reasons:
            reasons.sort(key=lambda r: (r[0].mtime_ns, r[0].name))
            skipped[t.name] = [r for _, r in reasons]

    return files


# --- the source kind's interface ---------------------------------------------------------


def preflight_source(job: JobConfig) -> None:
    """Check that the folder (or bucket and prefix) exists and can be listed."""
    drops_for(job).check()


def extract(job: JobConfig) -> ExtractResult:
    """One incremental dlt load of every table's new files into staging."""
    drops = drops_for(job)
    drops.check()
    pipeline, borrowed = pipeline_for(job)
    filters: list[ChangedRows] = []
    skipped: dict[str, list[str]] = {}
    try:
        resources = []
        for t in job.tables:
            changed = ChangedRows(job, t, borrowed)
            filters.append(changed)
            resources.append(_resource(job, t, drops, changed, skipped, borrowed))
        info = run_load(job, pipeline, resources)
        rows = row_counts(pipeline, job.tables)
        in_order = {t.name: skipped[t.name] for t in job.tables if t.name in skipped}
        return ExtractResult(list(info.loads_ids), rows, {}, in_order)
    finally:
        for changed in filters:
            changed.close()
        if borrowed is not None:
            borrowed.close()


__all__ = ["ExtractResult", "extract", "preflight_source"]
