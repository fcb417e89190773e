"""Settings of the files source (file drops in a folder or an S3 prefix); never secrets.

``Job`` adds ``lookback_seconds`` and checks the url is a folder; ``Table`` adds which
files a table reads (``pattern``) and how to parse them (``format``, ``encoding``,
``delimiter``). Imported when the jobs file is read: keep it light (no pyarrow, no boto3).
"""

from __future__ import annotations

import codecs
import re
from typing import Any, ClassVar, Literal, Self, get_args

from pydantic import field_validator, model_validator

from deltaferry.job_models import JobModel, TableModel, setting

# what `deltaferry jobs` shows as the cursor of a table without one
NO_CURSOR_LABEL = "(file modification time)"

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = get_args(Format)
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


class Job(JobModel):
    """A files job: ``url`` is the folder (or ``s3://bucket/prefix``) the files land in."""

    lookback_seconds: float = setting(
        DEFAULT_LOOKBACK_SECONDS,
        "seconds behind the newest file's modification time within which files are still "
        "compared by name, so a file that shows up late with an older time is not lost",
        "a number of seconds, 0 or more",
        ge=0,
    )

    @field_validator("url")
    @classmethod
    def _folder(cls, url: str) -> str:
        if url.startswith("env:"):
            return url  # resolved when the job runs
        m = _SCHEME.match(url)
        scheme = m.group(1).lower() if m and len(m.group(1)) > 1 else None  # "C:" is a drive
        if scheme == "s3":
            if not re.match(r"^s3://[^/]+", url):
                raise ValueError(f"url {url!r} has no bucket (expected s3://bucket/prefix)")
        elif scheme not in (None, "file"):
            raise ValueError(
                f"url {url!r} is not a folder; a files job reads a folder path "
                "(file: prefix optional, relative to the jobs file) or s3://bucket/prefix"
            )
        return url


class Table(TableModel):
    """A table of a files job: the files its ``pattern`` matches."""

    # a folder of drops has no complete key set to compare: deletes come as data, or not at all
    no_reconcile: ClassVar[str | None] = (
        'deletes = "reconcile" is not possible for files (a folder of drops has no complete '
        'key set to compare); use deletes = "soft:<column>" (a column the files set on '
        'deleted rows) or deletes = "none"'
    )

    pattern: str = setting(
        None,
        "the table's files, a glob relative to the job's url (default: <table>/*)",
        'a glob inside the job\'s url such as "orders/*.csv"',
    )
    format: Format = setting(
        None,
        "how the files are parsed (default: told by each file's name ending)",
        "'csv', 'jsonl' or 'parquet' (or leave it out to tell by the file name)",
    )
    encoding: str = setting(
        None,
        f"the text encoding of csv and jsonl files (default {DEFAULT_ENCODING})",
        "an encoding such as utf-8, latin-1, cp1252 or utf-16",
    )
    delimiter: str = setting(
        None,
        f'the field separator of csv files (default "{DEFAULT_DELIMITER}")',
        'one ASCII character such as ",", ";" or "\\t"',
    )

    @field_validator("pattern")
    @classmethod
    def _inside(cls, pattern: str) -> str:
        if not pattern.strip("/") or pattern.startswith("/") or ".." in pattern.split("/"):
            raise ValueError(
                f"pattern {pattern!r} must be a glob that stays inside the job's url "
                '(no leading / or ..), such as "orders/*.csv"'
            )
        return pattern

    @field_validator("encoding")
    @classmethod
    def _known(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(
                f"encoding {encoding!r} is unknown (e.g. utf-8, latin-1, cp1252, utf-16)"
            ) from None
        return encoding

    @field_validator("delimiter")
    @classmethod
    def _separates(cls, delimiter: str) -> str:
        if not (len(delimiter) == 1 and delimiter.isascii()) or delimiter in ('"', "\n", "\r"):
            raise ValueError(
                f"delimiter {delimiter!r} cannot separate csv fields; use one ASCII character "
                'such as ",", ";" or "\\t"'
            )
        return delimiter

    @model_validator(mode="after")
    def _parsing_applies(self) -> Self:
        given = self.model_fields_set
        if "encoding" in given and self.format == "parquet":
            raise ValueError("encoding does not apply to parquet files; remove it")
        if "delimiter" in given and self.format in ("jsonl", "parquet"):
            raise ValueError("delimiter applies to csv files only; remove it")
        return self
