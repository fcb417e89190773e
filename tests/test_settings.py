"""The process's settings (``deltaferry/settings.py``): every ``DELTAFERRY_*`` variable has
its documented default, a bad value is a one-line configuration error naming it, and a
variable set after import takes effect (nothing is read when a module loads)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deltaferry import settings
from deltaferry.errors import ConfigError
from deltaferry.settings import Settings, env_name, from_env

ROOT = Path(__file__).resolve().parent.parent

# written out here, not taken from the module: a changed default must change this test too
DEFAULTS: dict[str, object] = {
    "DELTAFERRY_HOME": Path(".deltaferry"),
    "DELTAFERRY_CONFIG": Path("deltaferry.toml"),
    "DELTAFERRY_KEYS": None,
    "DELTAFERRY_DUCKDB_KEY": None,
    "DELTAFERRY_DUCKDB_MEMORY_LIMIT": "256MB",
    "DELTAFERRY_DEBUG": False,
    "DELTAFERRY_DEMO_BUCKET": "deltaferry-demo",
    "DELTAFERRY_S3_SSE": "AES256",
    "DELTAFERRY_S3_SSE_KMS_KEY_ID": None,
    "DELTAFERRY_S3_CHECKSUM": "when_required",
    "DELTAFERRY_S3_MAX_ATTEMPTS": 5,
    "DELTAFERRY_S3_CONNECT_TIMEOUT": 5,
    "DELTAFERRY_S3_READ_TIMEOUT": 30,
    "DELTAFERRY_S3_MULTIPART_THRESHOLD": 64 * 1024 * 1024,
    "DELTAFERRY_UPLOAD_CONCURRENCY": 4,
    "DELTAFERRY_OBJECT_LOCK_DAYS": None,
    "DELTAFERRY_OBJECT_LOCK_MODE": "GOVERNANCE",
    "DELTAFERRY_ASSUME_ROLE_ARN": None,
    "DELTAFERRY_ASSUME_ROLE_SECONDS": 3600,
    "DELTAFERRY_ALLOW_INSECURE_HTTP": False,
    "DELTAFERRY_SOURCE_CONNECT_TIMEOUT": 10,
    "DELTAFERRY_QUIET_MAX_AGE": 900,
    "DELTAFERRY_SOURCE_STALL_TIMEOUT": 600,
    "DELTAFERRY_HTTP_ATTEMPTS": 5,
    "DELTAFERRY_HTTP_BACKOFF": 1,
    "DELTAFERRY_HTTP_TIMEOUT": 30,
    "DELTAFERRY_HTTP_MAX_RETRY_AFTER": 300,
    "DELTAFERRY_DLT_PROGRESS": False,
    "DELTAFERRY_STEP_RETRIES": 3,
    "DELTAFERRY_RETRY_BASE_SECONDS": 2,
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No DELTAFERRY_* variable set (the session sets a few for speed)."""
    for name in list(os.environ):
        if name.startswith("DELTAFERRY_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_every_variable_has_its_default(clean_env: pytest.MonkeyPatch) -> None:
    names = {env_name(field) for field in Settings.model_fields}
    assert names == set(DEFAULTS), "a variable was added or removed: update DEFAULTS"
    env = from_env()
    got = {env_name(field): getattr(env, field) for field in Settings.model_fields}
    assert got == DEFAULTS


def test_empty_counts_as_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DELTAFERRY_STEP_RETRIES", "")
    clean_env.setenv("DELTAFERRY_S3_SSE", "")
    env = from_env()
    assert (env.step_retries, env.s3_sse) == (3, "AES256")


def test_failpoint_defaults(clean_env: pytest.MonkeyPatch) -> None:
    from deltaferry.failpoints import FailpointSettings

    fp = settings.read(FailpointSettings)
    assert (fp.failpoint, fp.failpoint_action, fp.failpoint_skip) == (None, "kill", 0)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DELTAFERRY_STEP_RETRIES", "three", "expected a valid integer"),
        ("DELTAFERRY_STEP_RETRIES", "-1", "expected greater than or equal to 0"),
        ("DELTAFERRY_HTTP_TIMEOUT", "soon", "expected a valid number"),
        ("DELTAFERRY_SOURCE_STALL_TIMEOUT", "0", "expected greater than 0"),
        ("DELTAFERRY_S3_MAX_ATTEMPTS", "0", "expected greater than or equal to 1"),
        ("DELTAFERRY_S3_CHECKSUM", "always", "expected 'when_required' or 'when_supported'"),
        ("DELTAFERRY_OBJECT_LOCK_MODE", "governance", "'GOVERNANCE' or 'COMPLIANCE'"),
        ("DELTAFERRY_S3_SSE", "rot13", "expected 'AES256', 'aws:kms' or 'none'"),
        ("DELTAFERRY_ALLOW_INSECURE_HTTP", "please", "expected a valid boolean"),
    ],
)
def test_a_bad_value_is_one_line_naming_it(
    clean_env: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        from_env()
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{name}={value!r} is not valid: ")
    assert expected in message


def test_a_bad_failpoint_variable_is_named(clean_env: pytest.MonkeyPatch) -> None:
    from deltaferry.failpoints import failpoint

    clean_env.setenv("DELTAFERRY_FAILPOINT", "after_plan")
    clean_env.setenv("DELTAFERRY_FAILPOINT_ACTION", "explode")
    with pytest.raises(ConfigError, match=r"^DELTAFERRY_FAILPOINT_ACTION='explode' is not valid"):
        failpoint("after_plan")


def test_the_cli_exits_2_with_one_line(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deltaferry.cli import cli

    clean_env.setenv("DELTAFERRY_HOME", str(tmp_path))
    clean_env.setenv("DELTAFERRY_S3_READ_TIMEOUT", "-5")
    result = CliRunner().invoke(cli, ["keys", "list"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "DELTAFERRY_S3_READ_TIMEOUT='-5' is not valid" in lines[0]


def test_set_after_import_takes_effect(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from deltaferry import config, duck, keys
    from deltaferry.failpoints import FailpointHit, failpoint
    from destinations import s3
    from sources import rest_api
    from sources.sql_database import connection

    clean_env.setenv("DELTAFERRY_HOME", str(tmp_path / "h"))
    clean_env.setenv("DELTAFERRY_CONFIG", str(tmp_path / "jobs.toml"))
    clean_env.setenv("DELTAFERRY_DUCKDB_KEY", "sekrit")
    clean_env.setenv("DELTAFERRY_S3_MAX_ATTEMPTS", "9")
    clean_env.setenv("DELTAFERRY_S3_READ_TIMEOUT", "12.5")
    clean_env.setenv("DELTAFERRY_HTTP_MAX_RETRY_AFTER", "7")
    clean_env.setenv("DELTAFERRY_SOURCE_STALL_TIMEOUT", "4")
    assert config.deltaferry_home() == tmp_path / "h"
    assert config.config_path() == tmp_path / "jobs.toml"
    assert keys.keyring_dir() == tmp_path / "h" / "keys"
    assert duck.encryption_key() == "sekrit"
    client_config = s3.s3_client_config()
    assert client_config.retries["max_attempts"] == 9  # type: ignore[attr-defined]
    assert client_config.read_timeout == 12.5  # type: ignore[attr-defined]
    assert rest_api._Watch(job=None).max_retry_after == 7  # type: ignore[arg-type]
    import sqlalchemy as sa

    assert connection.StallWatchdog(sa.create_engine("sqlite://")).timeout == 4

    with pytest.raises(ConfigError, match="plain HTTP"):
        s3.require_tls("http://203.0.113.1:9000", "lake s3://b")
    clean_env.setenv("DELTAFERRY_ALLOW_INSECURE_HTTP", "1")
    s3.require_tls("http://203.0.113.1:9000", "lake s3://b")

    clean_env.setenv("DELTAFERRY_KEYS", str(tmp_path / "ring"))
    assert keys.keyring_dir() == tmp_path / "ring"

    clean_env.setenv("DELTAFERRY_FAILPOINT", "after_plan")
    clean_env.setenv("DELTAFERRY_FAILPOINT_ACTION", "raise")
    with pytest.raises(FailpointHit):
        failpoint("after_plan")


@pytest.mark.integration  # imports every module in a fresh interpreter (a child process)
def test_no_module_reads_the_environment_at_import(tmp_path: Path) -> None:
    """Every variable set to a bad value: importing every production module still works."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("deltaferry", "flows", "sources", "destinations")
        for p in (ROOT / package).rglob("*.py")
        if "templates" not in p.parts
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTAFERRY_")}
    env.update({name: "not-valid" for name in DEFAULTS})
    env.update({"DELTAFERRY_FAILPOINT_SKIP": "not-valid", "DELTAFERRY_FAILPOINT_ACTION": "x"})
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    done = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "flows.pull" in modules and "destinations.lake" in modules


def readme_row(field: str) -> str:
    """The README environment table's row for a field, as it must read."""
    info = Settings.model_fields[field]
    default = info.default
    if default is None or default is False:
        shown = "unset"
    elif isinstance(default, (int, float)):
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    elif isinstance(default, Path):
        shown = f"`./{default}`"
    else:
        shown = f"`{default}`"
    unit = (info.json_schema_extra or {})["unit"]  # type: ignore[index]
    return f"| `{env_name(field)}` | {info.description} | {unit} | {shown} |"


def test_readme_table_matches_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if re.match(r"\| `DELTAFERRY_", line)]
    expected = [readme_row(field) for field in Settings.model_fields]
    missing = [row for row in expected if row not in rows]
    extra = [row for row in rows if row not in expected]
    assert not missing and not extra, (
        "README environment table out of date; rows it should have:\n" + "\n".join(expected)
    )


@pytest.mark.parametrize(
    "value, said",
    [
        ("8MB", "at least 16MB"),
        ("100", "a number and a unit, 512MB or 2GiB"),
        ("1e3MB", "a number and a unit, 512MB or 2GiB"),
        ("lots", "a number and a unit, 512MB or 2GiB"),
    ],
)
def test_a_duckdb_memory_limit_it_cannot_work_in_is_one_plain_line(
    monkeypatch: pytest.MonkeyPatch, value: str, said: str
) -> None:
    """A size DuckDB cannot sync in (below 16MB: DuckDB's own multi-line out-of-memory
    error at the first statement, and a run left unfinished) or no size at all: one line
    naming the variable, the value and what is expected, in words, not a pattern."""
    from deltaferry.errors import ConfigError
    from deltaferry.settings import from_env

    monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", value)
    with pytest.raises(ConfigError) as caught:
        from_env()
    assert str(caught.value) == f"DELTAFERRY_DUCKDB_MEMORY_LIMIT={value!r} is not valid: " + (
        "at least 16MB (DuckDB cannot open a job's files and sync in less)"
        if said.startswith("at least")
        else "a size in DuckDB's syntax: a number and a unit, 512MB or 2GiB"
    )
    for fine in ("16MB", "1G", ".5GB", "2 GiB", "512M"):  # as DuckDB takes them
        monkeypatch.setenv("DELTAFERRY_DUCKDB_MEMORY_LIMIT", fine)
        assert from_env().duckdb_memory_limit == fine


def test_a_home_that_is_a_file_and_a_key_of_spaces_are_one_line(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """DELTAFERRY_HOME (or DELTAFERRY_KEYS) naming a file was NotADirectoryError at the first
    job (exit 1, as if the run had failed); a key of spaces alone would encrypt every file
    with a key nobody typed. Both are a configuration error (exit 2) naming the variable,
    the key's value never shown."""
    from click.testing import CliRunner

    from deltaferry.cli import cli

    file = tmp_path / "not-a-dir"
    file.write_text("")
    for name in ("DELTAFERRY_HOME", "DELTAFERRY_KEYS"):
        clean_env.setenv(name, str(file))
        with pytest.raises(ConfigError) as e:
            from_env()
        assert str(e.value) == (
            f"{name}={str(file)!r} is not valid: a directory (or a path to make one at); "
            "this is a file"
        )
        clean_env.delenv(name)
        clean_env.setenv(name, str(file / "sub"))  # below a file: no directory made there
        with pytest.raises(ConfigError) as e:
            from_env()
        assert str(e.value) == (
            f"{name}={str(file / 'sub')!r} is not valid: a directory (or a path to make one "
            f"at); {str(file)!r} is a file"
        )
        clean_env.delenv(name)
    clean_env.setenv("DELTAFERRY_HOME", str(tmp_path / "home"))  # not there yet: made
    assert from_env().home == tmp_path / "home"
    clean_env.setenv("DELTAFERRY_DUCKDB_KEY", "   ")
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: DELTAFERRY_DUCKDB_KEY='***' is not valid: a key, not spaces alone (16 "
        "characters or more advised, e.g. the output of `openssl rand -base64 32`)"
    )
    for taken in ("short", " padded key of old "):  # files may be encrypted with one
        clean_env.setenv("DELTAFERRY_DUCKDB_KEY", taken)
        assert from_env().duckdb_key.get_secret_value() == taken


@pytest.mark.parametrize("key", ["a", "e", "database", "encryption", "secret key 123"])
def test_a_key_is_redacted_without_mangling_the_message(key: str) -> None:
    """A message of DuckDB's naming the key: the key is redacted where DuckDB echoes it (the
    statement's literal), nowhere else: replacing its bare text turned a key ``a`` into
    ``***`` at every ``a``, a key ``encryption`` into "Wrong *** key" (and the error was
    then not told apart as a wrong key), and the places replaced told the key."""
    from deltaferry.duck import literal, redact_key

    text = (
        f"Binder Error: ATTACH 'x.db' (ENCRYPTION_KEY {literal(key)}): Wrong encryption key "
        "used to open the database file /tmp/data/x.db"
    )
    out = redact_key(text, key)
    assert out == (
        "Binder Error: ATTACH 'x.db' (ENCRYPTION_KEY '***'): Wrong encryption key used to "
        "open the database file /tmp/data/x.db"
    )
