"""The jobs file read by its pydantic models (``deltaferry/job_models.py``): unknown keys,
wrong types and rules between keys are one ``ConfigError`` line naming job, table, key and
value; the JSON Schema for editors is the models'; the README's examples parse."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from deltaferry.config import JobConfig, TableConfig, load_job, load_jobs
from deltaferry.errors import ConfigError
from deltaferry.job_models import JobModel, TableModel, jobs_schema, parse_job, schema_text

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]

SQL = """
[jobs.shop]
source = "sql_database"
url = "sqlite:///shop.db"
lake = "file:lake"
{job}

[[jobs.shop.tables]]
name = "orders"
primary_key = ["id"]
cursor = "updated_at"
contract = "contracts.shop:Orders"
{table}
"""

REST = """
[jobs.api]
source = "rest_api"
url = "https://api.example.com/v2"
lake = "file:lake"
auth = {{ type = "bearer", token = "s3cr3t-token" }}
{job}

[[jobs.api.tables]]
name = "tickets"
primary_key = "id"
cursor = "updated_at"
contract = "contracts.tickets:Tickets"
{table}
"""

FILES = """
[jobs.drops]
source = "files"
url = "landing"
lake = "file:lake"
{job}

[[jobs.drops.tables]]
name = "orders"
primary_key = ["id"]
contract = "contracts.shop:Orders"
{table}
"""


def refusal(tmp_path: Path, template: str, job: str = "", table: str = "") -> str:
    path = tmp_path / "jobs.toml"
    path.write_text(template.format(job=job, table=table))
    with pytest.raises(ConfigError) as err:
        load_jobs(path)
    line = str(err.value)
    assert "\n" not in line and "validation error" not in line and "pydantic" not in line, line
    return line


def test_an_unknown_job_key_names_the_job_and_the_closest_key(tmp_path):
    line = refusal(tmp_path, SQL, job="rows_per_fil = 10")
    assert line == (
        "job 'shop': unknown setting(s) rows_per_fil for a sql_database job "
        "(did you mean rows_per_file?)"
    )
    line = refusal(tmp_path, SQL, job="colour = 1\nmax_lag = 60")
    assert line.startswith("job 'shop': unknown setting(s) colour, max_lag for a sql_database")
    assert "max_lag_seconds for max_lag" in line


def test_an_unknown_table_key_names_job_table_and_the_closest_key(tmp_path):
    line = refusal(tmp_path, SQL, table='primary_keys = ["id"]')
    assert line == (
        "job 'shop' table 'orders': unknown setting(s) primary_keys (did you mean primary_key?)"
    )
    assert refusal(tmp_path, SQL, table="zzz = 1") == (
        "job 'shop' table 'orders': unknown setting(s) zzz"
    )


def test_source_kind_keys_are_known_to_their_kind_only(tmp_path):
    # the kind's own keys, misspelt
    line = refusal(tmp_path, REST, table='cursor_parm = "since"')
    assert line == (
        "job 'api' table 'tickets': unknown setting(s) cursor_parm (did you mean cursor_param?)"
    )
    line = refusal(tmp_path, FILES, job="lookback = 60")
    assert "job 'drops': unknown setting(s) lookback for a files job" in line
    assert "(did you mean lookback_seconds?)" in line
    line = refusal(tmp_path, SQL, table='exclude_column = ["notes"]')
    assert "(did you mean exclude_columns?)" in line
    # another kind's key: refused, saying whose it is
    line = refusal(tmp_path, SQL, job='paginator = "header_link"')
    assert line == (
        "job 'shop': unknown setting(s) paginator for a sql_database job "
        "(a setting of rest_api jobs)"
    )
    # another kind's key close to one of ours: still named as that kind's
    line = refusal(tmp_path, SQL, job="lookback_seconds = 3")
    assert line == (
        "job 'shop': unknown setting(s) lookback_seconds for a sql_database job "
        "(a setting of files jobs)"
    )
    # a setting of the other level: said where it goes
    line = refusal(tmp_path, REST, job='full_read_every = "7d"')
    assert line == (
        "job 'api': unknown setting(s) full_read_every for a rest_api job (full_read_every: "
        "a rest_api table setting, in each [[jobs.<job>.tables]] entry)"
    )
    line = refusal(tmp_path, SQL, table="schedule = 60")
    assert "unknown setting(s) schedule" in line
    assert "(schedule: a sql_database job setting, in the [jobs.<job>] table)" in line
    line = refusal(tmp_path, FILES, table='column_types = { id = "text" }')
    assert "job 'drops' table 'orders': unknown setting(s) column_types" in line
    assert "(a setting of sql_database tables)" in line


WRONG = {  # case: (jobs file, job settings, table settings, what the one line says)
    "text-for-int": (SQL, 'rows_per_file = "500"', "", "job 'shop': rows_per_file must be a positive integer (got '500')"),
    "ratio": (SQL, "max_quarantine_ratio = 1.5", "", "max_quarantine_ratio must be a number between 0 and 1 (got 1.5)"),
    "text-for-bool": (SQL, 'multi_producer = "yes"', "", "job 'shop': multi_producer must be true or false (got 'yes')"),
    "schedule": (SQL, "schedule = 5", "", "schedule must be seconds between runs (10 or more)"),
    "cron": (SQL, 'schedule = "every hour"', "", "such as \"*/15 * * * *\" (got 'every hour')"),
    "cursor": (SQL, "", "", "job 'shop' table 'orders': cursor must be a column that grows"),
    "version": (SQL, "", "source_version = true", "source_version must be a contract version number (1, 2, ...) (got True)"),
    "exclude": (SQL, "", 'exclude_columns = "notes"', "exclude_columns must be a list of column names"),
    "types": (SQL, "", "column_types = { v = 3 }", 'column_types must be a table of column = "type"'),
    "pages": (REST, "max_pages = 0", "", "job 'api': max_pages must be a whole number of pages, 1 or more (got 0)"),
    "params": (REST, "", "params = 3", "job 'api' table 'tickets': params must be a table of names and values"),
    "full-read": (REST, "", 'cursor_param = "since"\nfull_read_every = "1 week"', "job 'api' table 'tickets': full_read_every must be a duration: a whole number from 1 to 999999 and a unit, s, m, h or d (\"12h\", \"7d\") (got '1 week')"),
    "lookback": (FILES, "lookback_seconds = -1", "", "job 'drops': lookback_seconds must be a number of seconds, 0 or more (got -1)"),
    "format": (FILES, "", "format = 3", "job 'drops' table 'orders': format must be 'csv', 'jsonl' or 'parquet'"),
}


@pytest.mark.parametrize("case", WRONG, ids=str)
def test_a_wrong_type_or_value_is_one_line_naming_the_key_and_value(tmp_path, case):
    template, job, table, says = WRONG[case]
    if case == "cursor":
        template = template.replace('cursor = "updated_at"', "cursor = 7")
    assert says in refusal(tmp_path, template, job=job, table=table)


def test_missing_keys_and_rules_between_keys_keep_their_messages(tmp_path):
    no_key = SQL.replace('primary_key = ["id"]\n', "")
    assert "job 'shop' table 'orders': primary_key is required" in refusal(tmp_path, no_key)
    assert "multi_producer = true needs producer_id naming this site" in refusal(
        tmp_path, SQL, job="multi_producer = true"
    )
    line = refusal(tmp_path, SQL, table='deletes = "soft:"')
    assert "deletes must be 'none', 'reconcile' or 'soft:<column>' (got 'soft:')" in line
    line = refusal(tmp_path, REST, table='deletes = "reconcile"')
    assert "job 'api' table 'tickets': deletes = 'reconcile' is not available" in line
    # a number a duration cannot hold is refused with the file, not by every run
    line = refusal(tmp_path, REST, table='cursor_param = "since"\nfull_read_every = "99999999999999d"')
    assert "full_read_every must be a duration" in line
    line = refusal(tmp_path, REST, table='full_read_every = "7d"')
    assert "job 'api' table 'tickets': full_read_every needs cursor_param" in line
    line = refusal(tmp_path, FILES, table='format = "parquet"\nencoding = "latin-1"')
    assert "encoding does not apply to parquet files" in line
    line = refusal(tmp_path, SQL, table='exclude_columns = ["updated_at"]')
    assert "exclude_columns names 'updated_at', the table's cursor" in line
    twice = SQL + '[[jobs.shop.tables]]\nname = "orders"\nprimary_key = "id"\ncontract = "m:C"\n'
    assert "a table is listed twice: orders" in refusal(tmp_path, twice)
    # every problem of a job, on the one line
    line = refusal(tmp_path, SQL, job="chunk_size = 0", table='null_cursor = "skip"')
    assert "job 'shop': chunk_size must be" in line and "null_cursor must be" in line


def test_secrets_are_not_echoed(tmp_path):
    line = refusal(tmp_path, REST.replace('"bearer"', '"magic"'))
    assert "job 'api': auth must be a table with type = one of" in line
    assert "s3cr3t-token" not in line
    line = refusal(tmp_path, REST, job='headers = "Authorization: s3cr3t-header"')
    assert "headers must be a table of names and values" in line and "s3cr3t" not in line


def test_settings_reach_the_source_as_given_and_defaults_as_the_dataclasses_have_them(tmp_path):
    path = tmp_path / "jobs.toml"
    path.write_text(REST.format(job="max_pages = 5", table='cursor_param = "since"'))
    job = load_job("api", path)
    assert job.options == {"auth": {"type": "bearer", "token": "s3cr3t-token"}, "max_pages": 5}
    (t,) = job.tables
    assert t.options == {"cursor_param": "since"}
    assert (t.primary_key, t.deletes, t.null_cursor) == (("id",), "none", "include")
    # a table without a cursor reconciles (sql_database); the job's contract module names it
    path.write_text(SQL.format(job="", table="").replace('cursor = "updated_at"\n', ""))
    assert load_job("shop", path).tables[0].deletes == "reconcile"
    # what the models default to is what JobConfig and TableConfig default to
    plain = JobConfig("j", "sql_database", "u", "file:lake", ())
    for name, spec in JobModel.model_fields.items():
        if name not in ("source", "url", "lake", "tables", "contract"):
            assert getattr(plain, name) == spec.default, name
    table = TableConfig("t", ("id",), None, "none", "m:C")
    for name in ("source_version", "null_cursor"):
        assert getattr(table, name) == TableModel.model_fields[name].default


def test_the_checked_in_schema_is_the_models_and_the_cli_prints_it():
    from deltaferry.cli import cli

    assert (ROOT / "deltaferry.schema.json").read_text() == schema_text(), (
        "regenerate it: deltaferry schema jobs > deltaferry.schema.json"
    )
    result = CliRunner().invoke(cli, ["schema", "jobs"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == jobs_schema()
    jsonschema.Draft202012Validator.check_schema(jobs_schema())


def readme_jobs_files() -> list[str]:
    """The complete jobs files (those with a ``[jobs.<name>]`` table) among the TOML
    examples of the README's "The jobs file" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## The jobs file\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    return [b for b in blocks if re.search(r"^\[jobs\.\w+\]$", b, re.M)]


def test_the_readme_examples_and_the_repository_jobs_file_parse_and_fit_the_schema(tmp_path):
    examples = readme_jobs_files()
    assert len(examples) >= 2  # the sql_database and the rest_api job
    validator = jsonschema.Draft202012Validator(jobs_schema())
    for n, text in enumerate([*examples, (ROOT / "deltaferry.toml").read_text()]):
        path = tmp_path / f"example{n}.toml"
        path.write_text(text)
        assert load_jobs(path)
        validator.validate(tomllib.loads(text))
    # the schema refuses what the models refuse
    bad = tomllib.loads((ROOT / "deltaferry.toml").read_text())
    bad["jobs"]["shop"]["tables"][0]["curser"] = "x"
    assert not validator.is_valid(bad)


def test_an_unknown_top_level_section_is_refused(tmp_path):
    path = tmp_path / "jobs.toml"
    path.write_text("[settings]\nx = 1\n" + SQL.format(job="", table=""))
    with pytest.raises(ConfigError) as err:
        load_jobs(path)
    assert "unknown section(s) settings" in str(err.value)


@pytest.mark.parametrize(
    "change",
    ["empty-key", "ftp-lake", "bad-job-name", "top-level"],
)
def test_the_schema_refuses_what_the_models_refuse(tmp_path, change):
    """Files the CLI refuses are refused by the schema too (editors show them as errors)."""
    good = tomllib.loads(SQL.format(job="", table=""))
    validator = jsonschema.Draft202012Validator(jobs_schema())
    assert not list(validator.iter_errors(good))
    bad = json.loads(json.dumps(good))
    if change == "empty-key":
        bad["jobs"]["shop"]["tables"][0]["primary_key"] = []
    elif change == "ftp-lake":
        bad["jobs"]["shop"]["lake"] = "ftp://x/y"
    elif change == "bad-job-name":
        bad["jobs"]["My-Shop"] = bad["jobs"].pop("shop")
    else:
        bad["settings"] = {"x": 1}
    assert list(validator.iter_errors(bad)), change
    if change != "top-level":  # and the models refuse it (the top level: the test above)
        name, job = next(iter(bad["jobs"].items()))
        with pytest.raises(ConfigError):
            parse_job(name, job, tmp_path)


@pytest.mark.parametrize(
    "broken",
    [
        '[jobs."bad name!"]\nsource = "files"\nurl = "x"\nlake = "file:l2"\n',
        '[jobs.other]\nsource = "files"\nurl = "x"\nlake = "file:l2"\nrows_per_fil = 1\n',
        '[jobs.other]\nsource = "no_such_kind"\n',
    ],
)
def test_a_broken_job_stops_itself_not_the_files_other_jobs(tmp_path, broken):
    """A job being added with a typo does not stop the file's scheduled jobs: ``load_job``
    of a good job still works; the broken one, and everything that reads every job
    (``load_jobs``: ``deltaferry jobs``, ``run-all``, ``serve``), is refused in one line."""
    path = tmp_path / "jobs.toml"
    path.write_text(FILES.format(job="", table="") + broken)
    assert load_job("drops", path).tables[0].name == "orders"
    name = broken.split("]")[0].removeprefix("[jobs.").strip('"')
    with pytest.raises(ConfigError) as one:
        load_job(name, path)
    with pytest.raises(ConfigError) as every:
        load_jobs(path)
    assert str(one.value) == str(every.value) and f"job '{name}'" in str(one.value)
    assert "\n" not in str(one.value)
    with pytest.raises(ConfigError, match=r"unknown job 'nope' \(known: "):
        load_job("nope", path)
