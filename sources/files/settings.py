"""Settings of the files source (file drops in a folder or an S3 prefix); never secrets.

Imported when the jobs file is read: keep it light (no pyarrow, no boto3).
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from deltaferry.errors import ConfigError

# job settings: seconds behind the newest file's modification time within which files are
# still compared by name, so a file that shows up late with an older time is not lost
JOB_SETTINGS = frozenset({"lookback_seconds"})
# table settings: which files (a glob relative to the url), how to parse them
TABLE_SETTINGS = frozenset({"pattern", "format", "encoding", "delimiter"})
# a folder of drops has no complete key set to compare: deletes come as data, or not at all
DEFAULT_DELETES = "none"
# what `deltaferry jobs` shows as the cursor of a table without one
NO_CURSOR_LABEL = "(file modification time)"

FORMATS = ("csv", "jsonl", "parquet")
# name endings (after an optional .gz) that tell a file's format when the table sets none
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
DEFAULT_LOOKBACK_SECONDS = 300
DEFAULT_ENCODING = "utf-8"
DEFAULT_DELIMITER = ","

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


def default_pattern(table: str) -> str:
    """Files of a table when it sets no ``pattern``: those directly in the folder named
    after the table (``orders/*`` for table ``orders``)."""
    return f"{table}/*"


def lookback_seconds(job: Any) -> float:
    return float(job.options.get("lookback_seconds", DEFAULT_LOOKBACK_SECONDS))


def check(job: Any) -> None:
    """Refuse settings a files job cannot honour, as one-line ConfigErrors."""
    where = f"job '{job.name}'"
    _check_url(where, job.url)
    lookback = job.options.get("lookback_seconds", DEFAULT_LOOKBACK_SECONDS)
    if isinstance(lookback, bool) or not isinstance(lookback, (int, float)) or lookback < 0:
        raise ConfigError(f"{where}: lookback_seconds must be a number of seconds, 0 or more")
    for t in job.tables:
        _check_table(f"{where} table '{t.name}'", t)


def _check_url(where: str, url: str) -> None:
    if url.startswith("env:"):
        return  # resolved when the job runs
    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m and len(m.group(1)) > 1 else None  # "C:" is a drive
    if scheme == "s3":
        if not re.match(r"^s3://[^/]+", url):
            raise ConfigError(f"{where}: url {url!r} has no bucket (expected s3://bucket/prefix)")
    elif scheme not in (None, "file"):
        raise ConfigError(
            f"{where}: url {url!r} is not a folder; a files job reads a folder path "
            "(file: prefix optional, relative to the jobs file) or s3://bucket/prefix"
        )


def _check_table(where: str, t: Any) -> None:
    if t.deletes == "reconcile":
        raise ConfigError(
            f'{where}: deletes = "reconcile" is not possible for files (a folder of drops has '
            'no complete key set to compare); use deletes = "soft:<column>" (a column the '
            'files set on deleted rows) or deletes = "none"'
        )
    opts = t.options
    pattern = opts.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern.strip("/"):
            raise ConfigError(f'{where}: pattern must be a glob such as "{t.name}/*.csv"')
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise ConfigError(
                f"{where}: pattern {pattern!r} must stay inside the job's url (no leading / or ..)"
            )
    fmt = opts.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(
            f"{where}: format {fmt!r} is not supported (supported: {', '.join(FORMATS)}; "
            "leave it out to tell by the file name)"
        )
    encoding = opts.get("encoding")
    if encoding is not None:
        if fmt == "parquet":
            raise ConfigError(f"{where}: encoding does not apply to parquet files; remove it")
        try:
            codecs.lookup(str(encoding))
        except LookupError:
            raise ConfigError(
                f"{where}: encoding {encoding!r} is unknown (e.g. utf-8, latin-1, cp1252, utf-16)"
            ) from None
    delimiter = opts.get("delimiter")
    if delimiter is not None:
        if fmt in ("jsonl", "parquet"):
            raise ConfigError(f"{where}: delimiter applies to csv files only; remove it")
        if not (isinstance(delimiter, str) and len(delimiter) == 1 and delimiter.isascii()):
            raise ConfigError(
                f'{where}: delimiter must be one ASCII character such as ",", ";" or "\\t"'
            )
        if delimiter in ('"', "\n", "\r"):
            raise ConfigError(f"{where}: delimiter {delimiter!r} cannot separate csv fields")
