"""``deltaferry new-source NAME``: a new source kind, ready to run and to test.

Writes, under the project root:

- ``sources/<name>/__init__.py``: the source; ``read_records`` is the one function to
  replace (it starts out reading ``<url>/<table>.jsonl``); staging, the cursor, only
  changed records and error classes come from ``sources.load.extract_records``;
- ``sources/<name>/settings.py`` and ``README.md``;
- ``sources/<name>/sample/<table>.jsonl``: sample records (``--sample`` converted, or an
  example), so the job runs at once;
- ``contracts/<name>/__init__.py``: contract version 1 of the table, drafted from the
  schema dlt gives the sample when it stages it;
- ``tests/test_source_<name>.py``: the conformance test, plus a run of the new job;
- a ``[jobs.<name>]`` entry appended to the jobs file, publishing to a local lake;
- a deployment of the job appended to ``deployments/prefect.yaml`` (hourly, one run at
  a time), when that file exists.

Nothing is overwritten: an existing source, contract or job of that name is an error.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from contracts.drift import pandera_annotation
from deltaferry.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

EXAMPLE_RECORDS = [
    {"id": 1, "name": "first", "updated_at": "2026-11-01T10:00:00+00:00"},
    {"id": 2, "name": "second", "updated_at": "2026-11-01T10:05:00+00:00"},
    {"id": 3, "name": "third", "updated_at": "2026-11-01T10:10:00+00:00"},
]

SOURCE_INIT = '''"""{name}: a deltaferry source kind (scaffolded by `deltaferry new-source {name}`).

Replace ``read_records`` with calls to your system. Everything else (dlt's cursor state,
committed with each load; staging; staging only records that changed; retrying network
errors) is done by ``sources.load.extract_records``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from deltaferry.config import JobConfig, TableConfig
from deltaferry.errors import ConfigError
from sources.load import ExtractResult, extract_records


def read_records(job: JobConfig, table: TableConfig, since: Any) -> Iterator[dict[str, Any]]:
    """Yield the records of ``table`` whose cursor is at or after ``since`` (``None`` on the
    first run and for a table without a cursor: yield them all).

    This starting point reads ``<url>/<table>.jsonl``, one JSON object per line. An API
    would pass ``since`` as a query parameter; a database would put it in its WHERE clause.
    Raise ``ConfigError`` for what the user must fix, ``TransientError`` for what may pass;
    ``ConnectionError`` and ``TimeoutError`` count as transient by themselves."""
    path = _folder(job) / f"{{table.name}}.jsonl"
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"job '{{job.name}}' table '{{table.name}}': {{path}} line {{n}} is not JSON "
                    f"({{e.msg}}); fix or remove that line"
                ) from None
            cursor = record.get(table.cursor) if table.cursor else None
            if since is None or cursor is None or cursor >= since:
                yield record


def preflight_source(job: JobConfig) -> None:
    """Check that every table can be read before a run starts."""
    for t in job.tables:
        path = _folder(job) / f"{{t.name}}.jsonl"
        if not path.is_file():
            raise ConfigError(
                f"job '{{job.name}}' table '{{t.name}}': {{path}} not found; check the job's url"
            )


def extract(job: JobConfig) -> ExtractResult:
    """One incremental load of every table of the job into staging."""
    return extract_records(job, read_records)


def _folder(job: JobConfig) -> Path:
    path = Path(job.source_url())
    return path if path.is_absolute() else job.base_dir / path
'''

SOURCE_SETTINGS = '''"""Settings of the {name} source kind (read with the jobs file: keep it light, no secrets).

Declare the settings your source needs as fields of ``Job`` (job settings) and ``Table``
(table settings), each with ``deltaferry.job_models.setting(default, meaning, must)``; rules
between settings are pydantic model validators that raise ``ValueError`` in one line. The
settings a jobs file gives reach the source as ``job.options`` and ``table.options``;
``job.secret(value, what)`` resolves a value given as ``env:VAR``.
"""

from __future__ import annotations

from typing import ClassVar

from deltaferry.job_models import JobModel, TableModel


class Job(JobModel):
    \"\"\"A {name} job.\"\"\"


class Table(TableModel):
    \"\"\"A table of a {name} job.\"\"\"

    # records a source stops returning are not deletes it can see: deletes are
    # soft:<column> if it marks deleted records, or none (the default)
    no_reconcile: ClassVar[str | None] = (
        "deletes = 'reconcile' needs the source's key set, which {name} does not list; "
        "use 'soft:<column>' or 'none'"
    )
'''

SOURCE_README = """# {name} source

Scaffolded by `deltaferry new-source {name}`. It reads `<url>/<table>.jsonl` until you
replace `read_records` in `__init__.py` with calls to your system.

- Job `[jobs.{name}]` in `{jobs}` syncs table `{table}` (primary key `{pk}`, cursor
  `{cursor}`) from `sources/{name}/sample` to a local lake.
- Contract version 1: `contracts/{name}/__init__.py`, drafted from the sample as dlt
  staged it. Tighten its checks (ranges, patterns, `isin`) before relying on it.
- Test: `tests/test_source_{name}.py` (the conformance test every source passes, and a
  run of the job).

Deletes: `none` or `soft:<column>`; `reconcile` needs a key listing this source lacks.
"""

TEST_TEMPLATE = '''"""Conformance of the {name} source kind (scaffolded by `deltaferry new-source {name}`)."""

from __future__ import annotations

from pathlib import Path

from tests.support.conformance import JsonlFolder, run_conformance


def test_{name}_source_conforms(conformance_job):
    run_conformance(JsonlFolder("{name}"), conformance_job)


def test_{name}_job_runs_on_its_sample(tmp_path, monkeypatch, prefect_api):
    """The scaffolded job, on its sample, through the drafted contract."""
    from deltaferry.config import load_job
    from deltaferry.context import preflight_job
    from flows.sync import sync_job

    monkeypatch.setenv("DELTAFERRY_HOME", str(tmp_path / "home"))
    sample = Path(__file__).resolve().parents[1] / "sources" / "{name}" / "sample"
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        f"""[jobs.{name}]
source = "{name}"
url = "{{sample}}"
lake = "file:{{tmp_path}}/lake"
[[jobs.{name}.tables]]
name = "{table}"
primary_key = {pk_list}
{cursor_line}contract = "contracts.{name}:{cls}"
"""
    )
    preflight_job(load_job("{name}", jobs))
    out = sync_job(job="{name}", config=str(jobs))
    assert out["tables"]["{table}"]["rows"] == {sample_rows}
    assert out["tables"]["{table}"]["quarantined"] == 0
'''


DEPLOYMENT = """  - name: {name}
    description: Incremental sync of the {name} source (scaffolded by deltaferry new-source).
    entrypoint: flows/sync.py:sync_job
    parameters:
      job: {name}
    tags: ["deltaferry", "job:{name}"]
    schedules:
      - interval: 3600
    concurrency_limit:
      limit: 1
      collision_strategy: ENQUEUE
    work_pool:
      name: deltaferry-process
"""


def _class_name(table: str) -> str:
    return "".join(part.capitalize() for part in table.split("_"))


def new_source(
    name: str,
    *,
    root: Path,
    jobs_file: Path,
    table: str | None = None,
    primary_key: str = "id",
    cursor: str | None = "updated_at",
    sample: Path | None = None,
) -> list[Path]:
    """Write the source kind ``name``; returns the paths written."""
    if not _NAME.match(name):
        raise ConfigError(f"source name '{name}' must be lower-case letters, digits and _")
    table = table or (re.sub(r"[^a-z0-9_]", "_", sample.stem.lower()) if sample else "items")
    src = root / "sources" / name
    contract_dir = root / "contracts" / name
    test = root / "tests" / f"test_source_{name}.py"
    for p in (src, contract_dir, test):
        if p.exists():
            raise ConfigError(f"new-source {name}: {p} exists; pick another name")
    if jobs_file.exists() and re.search(rf"^\[jobs\.{name}\]", jobs_file.read_text(), re.M):
        raise ConfigError(f"new-source {name}: {jobs_file} already has a job '{name}'")
    records = _sample_records(sample) if sample else EXAMPLE_RECORDS
    if not records:
        raise ConfigError(f"new-source {name}: sample {sample} has no records")
    columns = set().union(*(r.keys() for r in records))
    if primary_key not in columns:
        raise ConfigError(
            f"new-source {name}: primary key '{primary_key}' is not a field of the sample "
            f"(fields: {', '.join(sorted(columns))}); pass --primary-key"
        )
    if cursor and cursor not in columns:
        cursor = None  # full-compare: every run reads all records, stages the changed ones

    written: list[Path] = []
    jobs_before = jobs_file.read_text() if jobs_file.exists() else None
    deployments = root / "deployments" / "prefect.yaml"
    deployments_before = deployments.read_text() if deployments.exists() else None
    try:
        _write_all(
            name,
            root,
            jobs_file,
            table,
            primary_key,
            cursor,
            records,
            src,
            contract_dir,
            test,
            written,
        )
    except BaseException:
        # all or nothing: a failed scaffold leaves the project as it was
        import shutil

        for path in (src, contract_dir):
            shutil.rmtree(path, ignore_errors=True)
        test.unlink(missing_ok=True)
        if jobs_before is None:
            jobs_file.unlink(missing_ok=True)
        else:
            jobs_file.write_text(jobs_before)
        if deployments_before is not None:
            deployments.write_text(deployments_before)
        raise
    return written


def _write_all(
    name: str,
    root: Path,
    jobs_file: Path,
    table: str,
    primary_key: str,
    cursor: str | None,
    records: list[dict[str, Any]],
    src: Path,
    contract_dir: Path,
    test: Path,
    written: list[Path],
) -> None:
    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    fmt = dict(name=name, table=table, pk=primary_key, cursor=cursor or "(none: full compare)")
    write(src / "__init__.py", SOURCE_INIT.format(**fmt))
    write(src / "settings.py", SOURCE_SETTINGS.format(**fmt))
    write(src / "README.md", SOURCE_README.format(jobs=jobs_file.name, **fmt))
    write(
        src / "sample" / f"{table}.jsonl",
        "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in records),
    )
    cls = _class_name(table)
    entry = (
        f'\n[jobs.{name}]\nsource = "{name}"\n'
        f'url = "{os.path.relpath(src / "sample", jobs_file.resolve().parent)}"\n'
        f'lake = "file:.deltaferry/lake-{name}"\n\n'
        f'[[jobs.{name}.tables]]\nname = "{table}"\nprimary_key = ["{primary_key}"]\n'
        + (f'cursor = "{cursor}"\n' if cursor else "")
        + f'contract = "contracts.{name}:{cls}"\n'
    )
    with jobs_file.open("a") as f:
        f.write(entry)
    written.append(jobs_file)
    deployments = root / "deployments" / "prefect.yaml"
    if deployments.exists():
        with deployments.open("a") as f:
            f.write(DEPLOYMENT.format(name=name))
        written.append(deployments)
    fields = draft_fields(name, jobs_file, table)
    contract = contract_module(name, table, fields, primary_key)
    try:  # a draft that does not compile is a bug here; never leave it behind
        compile(contract, str(contract_dir / "__init__.py"), "exec")
    except SyntaxError as e:
        raise ConfigError(
            f"new-source {name}: the drafted contract does not compile ({e.msg}, line {e.lineno})"
        ) from None
    write(contract_dir / "__init__.py", contract)
    write(
        test,
        TEST_TEMPLATE.format(
            pk_list=json.dumps([primary_key]),
            cursor_line=f'cursor = "{cursor}"\n' if cursor else "",
            cls=cls,
            sample_rows=len(records),
            **fmt,
        ),
    )


def _sample_records(sample: Path) -> list[dict[str, Any]]:
    """The sample's records (CSV, JSON Lines, JSON or Parquet), read with DuckDB."""
    import duckdb

    if not sample.is_file():
        raise ConfigError(f"new-source: sample {sample} not found")
    reader = {
        ".csv": "read_csv_auto",
        ".parquet": "read_parquet",
        ".jsonl": "read_json_auto",
        ".ndjson": "read_json_auto",
        ".json": "read_json_auto",
    }.get(sample.suffix.lower())
    if reader is None:
        raise ConfigError(f"new-source: sample {sample} must be .csv, .jsonl, .json or .parquet")
    con = duckdb.connect()
    try:
        path = str(sample).replace("'", "''")
        # through JSON: the records look as a JSON API would send them
        rows = con.execute(
            f"SELECT to_json(t)::VARCHAR FROM (SELECT * FROM {reader}('{path}') LIMIT 10000) t"
        ).fetchall()
    except duckdb.Error as e:
        raise ConfigError(f"new-source: sample {sample} could not be read: {e}") from None
    finally:
        con.close()
    return [json.loads(r[0]) for r in rows]


def draft_fields(name: str, jobs_file: Path, table: str) -> list[tuple[str, str, bool]]:
    """Stage the sample with the new source into a throwaway home and read back the
    columns dlt made of it: (column, DuckDB type, has nulls)."""
    import importlib

    from deltaferry import duck
    from deltaferry.config import load_job
    from sources.columns import INTERNAL_COLUMNS, STAGING_DATASET
    from sources.staging import staging_path

    importlib.invalidate_caches()
    old = os.environ.get("DELTAFERRY_HOME")
    with tempfile.TemporaryDirectory(prefix="deltaferry-draft-") as tmp:
        os.environ["DELTAFERRY_HOME"] = tmp
        try:
            job = load_job(name, jobs_file)
            module = importlib.import_module(f"sources.{name}")
            held = (module.extract(job).held or {}).get(table) or []
            if held:  # a record the key does not identify: the key chosen is not the key
                pk = ", ".join(job.tables[0].primary_key)
                raise ConfigError(
                    f"new-source {name}: {len(held)} sample record(s) have no value for "
                    f"primary key column(s) {pk} (first: {held[0]['row_json']}); pick a "
                    "--primary-key every record has"
                )
            con = duck.connect(staging_path(name), read_only=True, alias="staging")
            try:
                out = []
                for col, typ in duck.column_types(con, table, STAGING_DATASET).items():
                    if col in INTERNAL_COLUMNS or col.startswith("_dlt"):
                        continue
                    nulls = duck.fetch_row(
                        con,
                        f"SELECT count(*) FROM {STAGING_DATASET}.{duck.ident(table)}"
                        f" WHERE {duck.ident(col)} IS NULL",
                    )[0]
                    out.append((col, typ, bool(nulls)))
                return out
            finally:
                con.close()
        finally:
            if old is None:
                os.environ.pop("DELTAFERRY_HOME", None)
            else:
                os.environ["DELTAFERRY_HOME"] = old


def contract_module(
    name: str, table: str, fields: list[tuple[str, str, bool]], primary_key: str
) -> str:
    cls = _class_name(table)
    lines = [
        f'"""Contracts of the {name} source, version 1 (drafted by `deltaferry new-source`',
        "from the schema dlt staged for the sample: tighten the checks before relying on it).",
        "",
        f"``{cls}`` names the version currently published.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import pandas as pd  # noqa: F401 - used by timestamp fields",
        "import pandera.pandas as pa",
        "from pandera.typing import Series",
        "",
        "",
        f"class {cls}V1(pa.DataFrameModel):",
        f'    """A record of {table}."""',
        "",
        "    __version__ = 1",
        "",
    ]
    for col, typ, nulls in fields:
        annotation, extra = pandera_annotation(typ)
        args = [a for a in (extra, "nullable=True" if nulls and col != primary_key else "") if a]
        if col == primary_key:
            args.append("unique=True")
        attr = col
        if keyword.iskeyword(col) or not col.isidentifier():  # `from`, `class` ...
            attr = f"{col}_"
            args.insert(0, f'alias="{col}"')
        lines.append(f"    {attr}: {annotation} = pa.Field({', '.join(args)})  # staged as {typ}")
    lines += [
        "",
        "    class Config:",
        "        strict = True",
        "        coerce = True",
        "",
        "",
        f"{cls} = {cls}V1",
        "",
    ]
    return "\n".join(lines)
