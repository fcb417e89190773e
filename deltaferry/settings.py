"""Process settings: every ``DELTAFERRY_*`` environment variable deltaferry reads, in one place.

(A job's settings come from the jobs file, ``deltaferry.config``; these are the process's.)

``Settings`` declares each variable with its type, default, unit and meaning; the README's
environment table lists the same variables with the same defaults (``tests/test_settings.py``
holds it to that). ``from_env()`` reads the environment when it is called, never at import,
so a variable set after import (a test's ``monkeypatch.setenv``, the demo setting
``DELTAFERRY_HOME``) takes effect: call it where the value is used and do not keep the
result. An empty value counts as unset. A value that does not parse is a ``ConfigError``
(CLI exit 2) of one line naming the variable, the value and what is expected.

The crash tests' failpoint variables are declared the same way next to their only user,
``deltaferry.failpoints``, and read through ``read()``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deltaferry.errors import ConfigError

PREFIX = "DELTAFERRY_"

_UNITS = {
    "B": 1, "BYTES": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "PB": 10**15, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]+)\s*$", re.IGNORECASE)


def size_bytes(text: str) -> int | None:
    """Bytes of a DuckDB memory size (``256MB``, ``2GiB``, ``1G``, ``.5GB``, and DuckDB's own
    display, ``244.1 MiB``); None when ``text`` is not one."""
    m = _SIZE.match(text)
    unit = _UNITS.get(m.group(2).upper()) if m else None
    return None if m is None or unit is None else int(float(m.group(1)) * unit)


# below this, DuckDB cannot open a job's files and run a sync's statements
MIN_DUCKDB_MEMORY = 16 * 10**6
# the shortest DELTAFERRY_DUCKDB_KEY the docs advise (a shorter one is taken: files may be
# encrypted with one already)
MIN_KEY_CHARS = 16
# variables whose value an error never shows
SECRET_VARIABLES = frozenset({PREFIX + "DUCKDB_KEY"})


def env_name(field: str) -> str:
    """The variable of a settings field: ``step_retries`` is ``DELTAFERRY_STEP_RETRIES``."""
    return PREFIX + field.upper()


def var(default: Any, unit: str, meaning: str, **constraints: Any) -> Any:
    """One variable's declaration: its default, unit (``seconds``, ``bytes``, ...) and a
    one-line meaning; ``constraints`` are pydantic's (``ge``, ``gt``)."""
    return Field(default, description=meaning, json_schema_extra={"unit": unit}, **constraints)


class EnvSettings(BaseSettings):
    """Fields read from ``DELTAFERRY_<FIELD>`` variables; unknown ones are left alone (the
    test harness has its own)."""

    model_config = SettingsConfigDict(
        alias_generator=env_name,
        case_sensitive=True,  # DELTAFERRY_HOME, not deltaferry_home
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )


class Settings(EnvSettings):
    """The process's settings, as the environment has them when ``from_env()`` is called."""

    # local state, the jobs file, the CLI
    home: Path = var(
        Path(".deltaferry"),
        "directory",
        "local state per job: staging DuckDB, dlt pipeline dir, state DuckDB (checkpoints, "
        "plans, operations log, quarantine)",
    )
    config: Path = var(Path("deltaferry.toml"), "file", "jobs file, when no `--config` is given")
    keys: Path | None = var(
        None,
        "directory",
        "keyring for manifest signing and verification; unset: `$DELTAFERRY_HOME/keys`",
    )
    duckdb_key: SecretStr | None = var(
        None,
        "key",
        "encrypt staging, state and replica DuckDB files with this key (never logged; use "
        "16 characters or more, e.g. `openssl rand -base64 32`; spaces alone are refused)",
    )
    duckdb_memory_limit: str = var(
        "256MB",
        "size",
        "working memory of each DuckDB database deltaferry opens (staging, state, replica, "
        "dlt's load into staging), in DuckDB's syntax (`512MB`, `2GiB`), at least `16MB`; each gets 10 bytes "
        "more for every row of its tables that hold deleted rows, and before the DELETE of "
        "an incremental merge for what the rows it deletes may pin (at most every row), "
        "which DuckDB's marks of deleted rows hold "
        "(`bench/README.md`, \"Deleted rows pin memory\"); larger sorts, joins "
        "and loads spill to a temporary directory beside the file; a replica's tables have no "
        "PRIMARY KEY constraint for this reason (DuckDB pins a key index, which grows with the "
        "rows stored, at every commit: at `256MB` a 50M-row pull stopped at 29M rows, "
        "`bench/README.md`, \"50M rows\"), and a key twice in one batch is "
        "refused at the batch's end instead",
    )

    @field_validator("home", "keys")
    @classmethod
    def _a_directory(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        # the nearest part of the path that exists must be a directory (one is made below it)
        there = next((p for p in (value, *value.absolute().parents) if p.exists()), None)
        if there is not None and not there.is_dir():
            where = "this is a file" if there == value else f"{str(there)!r} is a file"
            raise ValueError(f"a directory (or a path to make one at); {where}")
        return value

    @field_validator("duckdb_key")
    @classmethod
    def _a_key_worth_its_name(cls, value: SecretStr | None) -> SecretStr | None:
        # the value is never in the message (``_problem`` shows a secret as '***'). Keys
        # shorter than MIN_KEY_CHARS or with spaces at either end are taken (files may be
        # encrypted with one already), only a key of spaces alone is refused
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                f"a key, not spaces alone ({MIN_KEY_CHARS} characters or more advised, e.g. "
                "the output of `openssl rand -base64 32`)"
            )
        return value

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _a_size_duckdb_can_work_in(cls, value: str) -> str:
        size = size_bytes(value)
        if size is None:
            raise ValueError("a size in DuckDB's syntax: a number and a unit, 512MB or 2GiB")
        if size < MIN_DUCKDB_MEMORY:
            raise ValueError("at least 16MB (DuckDB cannot open a job's files and sync in less)")
        return value

    debug: bool = var(False, "flag", "`1` prints tracebacks for errors")
    demo_bucket: str = var("deltaferry-demo", "bucket", "bucket the demo uses")

    # the lake (S3)
    s3_sse: Literal["AES256", "aws:kms", "none"] = var(
        "AES256",
        "algorithm",
        "server-side encryption on every object (`AES256`, `aws:kms`, or `none`)",
    )
    s3_sse_kms_key_id: str | None = var(
        None, "key id", "KMS key for `DELTAFERRY_S3_SSE=aws:kms`"
    )
    s3_checksum: Literal["when_required", "when_supported"] = var(
        "when_required",
        "mode",
        "boto3 `request_checksum_calculation`/`response_checksum_validation` "
        "(`when_required` for stores that reject the newer checksum headers, or "
        "`when_supported`)",
    )
    s3_max_attempts: int = var(
        5, "attempts", "botocore standard-mode attempts per S3 request", ge=1
    )
    s3_connect_timeout: float = var(5.0, "seconds", "S3 connect timeout", gt=0)
    s3_read_timeout: float = var(30.0, "seconds", "S3 read timeout", gt=0)
    s3_multipart_threshold: int = var(
        64 * 1024 * 1024, "bytes", "objects from this size up are uploaded in parts", ge=1
    )
    upload_concurrency: int = var(
        4, "requests", "data objects of a batch uploaded at once (the manifest only after all)", ge=1
    )
    object_lock_days: float | None = var(
        None,
        "days",
        "write manifests with Object Lock retention (bucket must have Object Lock): a "
        "committed batch cannot be deleted or overwritten",
        gt=0,
    )
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = var(
        "GOVERNANCE", "mode", "Object Lock mode for `DELTAFERRY_OBJECT_LOCK_DAYS`"
    )
    assume_role_arn: str | None = var(
        None, "ARN", "assume this role through STS for S3 access"
    )
    assume_role_seconds: int = var(
        3600,
        "seconds",
        "lifetime of the assumed role's credentials (refreshed before they expire)",
        ge=1,
    )
    allow_insecure_http: bool = var(
        False,
        "flag",
        "`1` accepts plain HTTP to a non-loopback endpoint (logged as a warning)",
    )

    # sources
    source_connect_timeout: int = var(
        10, "seconds", "wait for a source database connection (PostgreSQL, MySQL)", ge=1
    )
    quiet_max_age: float = var(
        900.0,
        "seconds",
        "a run may skip a source's read when its change check finds the rows the read would "
        "see unchanged since a read that staged nothing (sources/quiet.py), for at most this "
        "long after that read; 0 turns the check off (every run reads)",
        ge=0,
    )
    source_stall_timeout: float = var(
        600.0,
        "seconds",
        "a source read may go this long without delivering a chunk of rows (or of keys, "
        "when reconciling) before its connection is cut and the step retried (a link that "
        "TCP keeps alive but that stopped forwarding; PostgreSQL connections also use TCP "
        "keepalives)",
        gt=0,
    )
    http_attempts: int = var(
        5, "attempts", "REST sources: attempts per request (429, 5xx, connection errors)", ge=1
    )
    http_backoff: float = var(
        1.0, "seconds", "REST sources: the backoff factor between attempts", ge=0
    )
    http_timeout: float = var(30.0, "seconds", "REST sources: the request timeout", gt=0)
    http_max_retry_after: float = var(
        300.0,
        "seconds",
        "REST sources: the longest `Retry-After` (and backoff) waited; a longer one fails "
        "the step as transient",
        ge=0,
    )
    dlt_progress: bool = var(False, "flag", "`1` makes dlt log its progress")

    # retries of a run's steps (Prefect tasks)
    step_retries: int = var(
        3, "retries", "Prefect task retries per step (transient errors only)", ge=0
    )
    retry_base_seconds: float = var(
        2.0, "seconds", "base of the steps' exponential backoff with full jitter", ge=0
    )


S = TypeVar("S", bound=EnvSettings)


# the last value read of each model, with the variables it was read from: reading the
# environment through pydantic-settings costs about 2 ms, and a run reads it hundreds of
# times (measured by the simulator: a third of a no-op run's Python time)
_read_cache: dict[type, tuple[tuple[str | None, ...], Any]] = {}


@functools.cache
def _variables(model: type[EnvSettings]) -> tuple[str, ...]:
    """The environment variables ``model`` reads."""
    return tuple(env_name(name) for name in model.model_fields)


def read(model: type[S]) -> S:
    """``model`` read from the environment now (a frozen value, reused while its variables
    are unchanged); a bad value is a one-line ConfigError."""
    now = tuple(os.environ.get(n) for n in _variables(model))
    cached = _read_cache.get(model)
    if cached is not None and cached[0] == now:
        return cast(S, cached[1])
    try:
        value = model()
    except ValidationError as e:
        raise ConfigError("; ".join(_problem(err) for err in e.errors())) from None
    _read_cache[model] = (now, value)
    return value


def from_env() -> Settings:
    """The process's settings as the environment has them now (read at each call)."""
    return read(Settings)


def _problem(err: Any) -> str:
    """``DELTAFERRY_X='value' is not valid: expected ...`` for one of pydantic's errors (a
    secret's value shown as ``'***'``)."""
    name = str(err["loc"][0])  # the field's alias: its variable
    if name in SECRET_VARIABLES:
        err = {**err, "input": "***"}
    message = str(err["msg"]).removeprefix("Value error, ")  # a validator's own words
    expected = message.removeprefix("Input should be ")
    said = f"expected {expected}" if expected != message else message
    return f"{name}={err.get('input')!r} is not valid: {said}"
