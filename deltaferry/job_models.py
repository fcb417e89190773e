"""The jobs file's models: what each key may hold, one-line errors, the JSON Schema.

``JobModel`` is a ``[jobs.<name>]`` table, ``TableModel`` one ``[[jobs.<name>.tables]]``
entry. Each field declares its type, default and constraints, its meaning and what a value
must be (``setting``); rules between fields are model validators. A source kind adds the
settings it owns by subclassing them as ``Job`` and ``Table`` in
``sources/<kind>/settings.py``; ``job_model(kind)`` joins them. Unknown keys are refused,
and values are taken as TOML typed them (``"5"`` is not 5).

``parse_job`` turns one job of the file into ``deltaferry.config.JobConfig``; whatever the
models find is one ``ConfigError`` line, ``job 'j' table 't': <key> must be <what> (got
<value>)``, never pydantic's own report (``_one_line``). ``schema_text()`` is the JSON
Schema of the file for editors: ``deltaferry schema jobs`` prints it, and
``deltaferry.schema.json`` holds it (``tests/test_job_models.py`` keeps the two equal).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, Union, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from deltaferry.errors import ConfigError
from deltaferry.job import JobConfig, TableConfig, soft_column, source_kinds, source_settings

IDENT = r"^[a-z_][a-z0-9_]*$"  # job and table names
PRODUCER = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # producer_id with multi_producer
SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"

Column = Annotated[str, StringConstraints(min_length=1)]
Seconds = Annotated[float, Field(gt=0)]


def setting(
    default: Any, meaning: str, must: str, schema: dict[str, Any] | None = None, **constraints: Any
) -> Any:
    """One key of the jobs file: its default (``...``: required), its meaning (the JSON
    Schema's description) and what a value must be: a problem with the value reads
    ``<key> must be <must> (got <value>)``. ``constraints`` are pydantic's (``ge``,
    ``pattern``, ...); ``repr=False`` keeps the value out of error messages (it may hold a
    secret). ``schema``: JSON Schema keywords for editors where a validator checks the value
    (the validator's message is the one users see)."""
    return Field(
        default,
        description=meaning,
        json_schema_extra={"errorMessage": f"must be {must}", **(schema or {})},
        **constraints,
    )


def invalid() -> PydanticCustomError:
    """For a validator to raise when the value is not what its setting's ``must`` says
    (a ``ValueError`` says something more specific, in its own words)."""
    return PydanticCustomError("invalid", "not what the setting must be")


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Section(BaseModel):
    """A table of the jobs file: unknown keys are refused, values taken as TOML typed them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def options(self, common: type[Section]) -> dict[str, Any]:
        """The settings the file gives that a source kind added to ``common``."""
        own = [k for k in type(self).model_fields if k not in common.model_fields]
        return {k: getattr(self, k) for k in own if k in self.model_fields_set}


# a name dlt's snake_case keeps as it is, known without importing dlt (about half a second
# of every command that reads a jobs file): lowercase ASCII letters and digits in words
# joined by single underscores, starting with a letter, ending with no underscore; any
# other name is asked of dlt (``tests/test_names.py`` checks the two agree)
_SNAKE_CASE_KEPT = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def _snake_case(name: str) -> str:
    """``name`` as dlt's snake_case naming convention stages it."""
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return str(NamingConvention().normalize_identifier(name))


class TableModel(Section):
    """One ``[[jobs.<job>.tables]]`` entry. A source kind adds its table settings by
    subclassing it as ``Table`` in ``sources/<kind>/settings.py``."""

    # a source kind that cannot list a table's keys says here why not: deletes =
    # "reconcile" is refused with this message, and deletes default to "none"
    no_reconcile: ClassVar[str | None] = None

    name: str = setting(
        ...,
        "the table's name: the lake path <job>/<name>/, the staging and replica table",
        "lower-case letters, digits and underscores (a SQL source's table spelled otherwise, "
        'e.g. "Users": name = "users" with source_table = "Users")',
        pattern=IDENT,
    )
    primary_key: Annotated[
        list[Column],
        BeforeValidator(
            _listed, json_schema_input_type=Union[str, Annotated[list[str], Field(min_length=1)]]
        ),
    ] = setting(
        ...,
        "the key column, or several, as the source spells them",
        "a column name or a list of column names",
        min_length=1,
    )
    cursor: Column | None = setting(
        None,
        "a column that grows on every insert and update; leave it out for full-compare mode "
        "(every run reads the whole table and stages what changed)",
        "a column that grows on every insert and update (or leave it out for full-compare mode)",
    )
    deletes: Annotated[str, StringConstraints(pattern=r"^(none|reconcile|soft:.+)$")] | None = (
        setting(
            None,
            'how deletes are found: "soft:<column>" (a row with <column> set is a delete), '
            '"reconcile" (hard deletes, by comparing key sets) or "none"; default "none" with '
            'a cursor, "reconcile" without (unless the source kind cannot list keys)',
            "'none', 'reconcile' or 'soft:<column>'",
        )
    )
    contract: Annotated[str, StringConstraints(pattern=":")] | None = setting(
        None,
        'the pandera DataFrameModel, "module:Class" (default: the job\'s contract module and '
        "the class named after the table)",
        "'module:Class' (or a job-level contract module)",
    )
    source_version: int | None = setting(
        None,
        "the contract version the source's rows have (default: the newest of the chain)",
        "a contract version number (1, 2, ...)",
        ge=1,
    )
    null_cursor: Literal["include", "quarantine"] = setting(
        "include",
        'rows whose cursor is NULL: "include" (read again each run, staged when changed) or '
        '"quarantine" (held back until the source gives them a cursor value)',
        "'include' or 'quarantine'",
    )

    @property
    def delete_mode(self) -> str:
        """``deletes``, or its default."""
        return self.deletes or ("none" if self.cursor or self.no_reconcile else "reconcile")

    @property
    def soft_delete_column(self) -> str | None:
        return soft_column(self.delete_mode)

    @field_validator("name")
    @classmethod
    def _kept_by_dlt(cls, name: str) -> str:
        """Table names name lake paths and files: dlt must keep them as they are."""
        normalized = name if _SNAKE_CASE_KEPT.fullmatch(name) else _snake_case(name)
        if normalized != name:
            raise ValueError(
                f"table name '{name}' would be staged by dlt as '{normalized}'; "
                "deltaferry needs table names that dlt keeps as they are"
            )
        if name.startswith(("_deltaferry", "_dlt", "_df_")):
            # the replica's and staging's own tables (_deltaferry_batches, _dlt_loads, ...)
            raise ValueError(
                f"table name '{name}' starts with _deltaferry, _dlt or _df_, which name "
                "deltaferry's and dlt's own tables in staging and the replica"
            )
        if re.fullmatch(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])", name):
            # dlt refuses them when it stages (PV1002): said here, before any table runs
            raise ValueError(
                f"table name '{name}' is a device name on some platforms, which dlt refuses "
                "as a table name; give it another name (a SQL source's table with "
                f'source_table = "{name}")'
            )
        return name

    @model_validator(mode="after")
    def _columns_and_contract(self) -> Self:
        """Key, cursor and soft-delete columns are names staging keeps exactly (see
        ``sources.names``); deletes are ones the kind can find; a contract is named here
        or by the job."""
        from sources.names import cursor_path, name_problem

        soft = [self.soft_delete_column] if self.soft_delete_column else []
        # a cursor starting with $ is a path into a document (a REST record's): its kind
        # checks it (``sources.rest_api.settings``), naming the field it starts with
        path = bool(self.cursor) and str(self.cursor).startswith("$")
        cursor = [self.cursor] if self.cursor and not path else []
        for col in [*self.primary_key, *cursor, *soft]:
            problem = name_problem(col)
            if problem:
                raise ValueError(f"column {col!r} {problem}; name a column staging keeps")
        if self.cursor and not path:
            try:
                cursor_path(self.cursor)
            except ValueError as e:
                raise ValueError(f"{e}; use another cursor column") from None
        if self.no_reconcile and self.delete_mode == "reconcile":
            raise ValueError(self.no_reconcile)
        if self.contract is None:
            raise ValueError(
                "contract is required as 'module:Class' (or a job-level contract module)"
            )
        return self

    def config(self) -> TableConfig:
        return TableConfig(
            name=self.name,
            primary_key=tuple(self.primary_key),
            cursor=self.cursor,
            deletes=self.delete_mode,
            contract=cast(str, self.contract),  # required by _columns_and_contract
            options=self.options(TableModel),
            source_version=self.source_version,
            null_cursor=self.null_cursor,
        )


class JobModel(Section):
    """One ``[jobs.<name>]`` table. A source kind adds its job settings by subclassing it as
    ``Job`` in ``sources/<kind>/settings.py``; ``job_model(kind)`` gives the kind's
    ``source`` and ``tables`` their types."""

    source: str = setting(..., "the source kind (a package under sources/)", "a source kind")
    url: Column = setting(
        ...,
        'where the source is (for sql_database any SQLAlchemy URL); "env:VAR" reads it from '
        "the environment variable VAR",
        'the source\'s url, or "env:VAR" naming the environment variable that holds it',
        repr=False,
    )
    lake: Column = setting(
        ...,
        "the lake: s3://bucket/prefix, file:///abs/path or file:relative/to/this/file",
        "s3://bucket/prefix, file:///abs/path or file:relative/path",
        schema={"pattern": "^(s3://[^/]+|file:.+)"},  # checked by _lake_url
    )
    contract: Column | None = setting(
        None,
        'a module whose classes are the tables\' contracts, by table name ("orders" → '
        "Orders), for tables that name none",
        'a module name such as "contracts.shop"',
    )
    max_quarantine_ratio: float = setting(
        0.05,
        "above this share of failing upserts in a batch, nothing is published",
        "a number between 0 and 1",
        ge=0,
        le=1,
    )
    max_reconcile_delete_ratio: float = setting(
        0.5,
        "reconcile refuses to delete more than this share of a table at once",
        "a number between 0 and 1",
        ge=0,
        le=1,
    )
    rows_per_file: int = setting(
        500_000,
        "rows per Parquet object (and per validation chunk)",
        "a positive integer",
        ge=1,
    )
    max_batch_rows: int = setting(
        1_000_000,
        "staged rows per batch at most: a bigger cut (an initial load) is published as several"
        " batches, each a range of keys, committed one after another (memory follows the batch,"
        " not the table)",
        "a positive integer",
        ge=1,
    )
    chunk_size: int = setting(
        50_000,
        "rows per read from the source (memory stays flat)",
        "a positive integer",
        ge=1,
    )
    producer_id: str = setting(
        "default",
        "this producer, recorded in every manifest; with multi_producer it names this site",
        "letters, digits, '.', '_' or '-'",
    )
    multi_producer: bool = setting(
        False,
        "several sites publish these tables, each to its own chain (<job>/<table>/producers/"
        "<producer_id>/); readers merge the chains",
        "true or false",
    )
    max_clock_skew_seconds: Seconds = setting(
        300.0,
        "with multi_producer: another producer's clock this far ahead is logged",
        "a positive number of seconds",
    )
    drift: Literal["freeze", "quarantine", "evolve"] = setting(
        "freeze",
        "source columns drifting from the contract: fail the run (freeze), hold the rows "
        "back (quarantine), or publish without the new columns and draft the next contract "
        "version (evolve)",
        "'freeze', 'quarantine' or 'evolve'",
    )
    reader_timeout_seconds: Seconds = setting(
        7 * 24 * 3600.0,
        "a reader not seen for longer no longer holds a contract version back",
        "a positive number of seconds",
    )
    dual_publish: bool = setting(
        False,
        "below the newest contract version, also publish each batch at the newest",
        "true or false",
    )
    schedule: Annotated[int, Field(ge=10)] | str | None = setting(
        None,
        "for `deltaferry serve`: seconds between runs, or a cron expression",
        'seconds between runs (10 or more) or a cron expression such as "*/15 * * * *"',
    )
    max_lag_seconds: Seconds | None = setting(
        None,
        "deltaferry.lag.exceeded when a table's newest published change is older",
        "a positive number of seconds",
    )
    timezone: Column = setting(
        "UTC",
        "the IANA time zone naive source timestamps (no offset) were written in",
        "an IANA time zone name such as 'UTC'",
    )

    tables: list[TableModel] = setting(
        ...,
        "the job's tables",
        "a list of [[jobs.<job>.tables]] entries, at least one",
        min_length=1,
    )

    @model_validator(mode="before")
    @classmethod
    def _table_contracts(cls, data: Any) -> Any:
        """A job-level contract module names the contract of each table that names none:
        table ``order_items`` → class ``OrderItems``."""
        if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
            return data
        module = data.get("contract")
        if not (isinstance(module, str) and module):
            return data
        tables = [
            {"contract": f"{module}:{_class_name(t['name'])}", **t}
            if isinstance(t, dict) and "contract" not in t and isinstance(t.get("name"), str)
            else t
            for t in data["tables"]
        ]
        return {**data, "tables": tables}

    @field_validator("lake")
    @classmethod
    def _lake_url(cls, lake: str) -> str:
        from destinations.lake import parse_lake_url  # local import: config stays light

        try:
            parse_lake_url(lake, where="")
        except ConfigError as e:
            raise ValueError(str(e).removeprefix(": ")) from None
        return lake

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: int | str | None) -> int | str | None:
        """A five-field cron expression Prefect can schedule (minute hour day month weekday)."""
        if isinstance(schedule, str):
            from croniter import croniter

            if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
                raise invalid()
        return schedule

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone {zone!r} is not a known IANA time zone (for example 'UTC', "
                "'Europe/Berlin', 'America/New_York')"
            ) from None
        return zone

    @model_validator(mode="after")
    def _producer_and_tables(self) -> Self:
        if self.multi_producer and not (
            "producer_id" in self.model_fields_set and re.match(PRODUCER, self.producer_id)
        ):
            given = self.producer_id if "producer_id" in self.model_fields_set else None
            raise ValueError(
                "multi_producer = true needs producer_id naming this site (letters, digits, "
                f"'.', '_' or '-'; got {given!r})"
            )
        names = [t.name for t in self.tables]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"a table is listed twice: {', '.join(twice)}")
        return self

    def config(self, name: str, base: Path) -> JobConfig:
        """The job as deltaferry runs it (``base``: the jobs file's folder)."""
        common = {k: getattr(self, k) for k in JobModel.model_fields}
        del common["tables"], common["contract"]  # the tables' own contracts hold it
        return JobConfig(
            name=name,
            tables=tuple(t.config() for t in self.tables),
            base_dir=base,
            options=self.options(JobModel),
            **common,
        )


@functools.cache
def table_model(kind: str) -> type[TableModel]:
    """The tables of a ``kind`` job: ``TableModel`` with the kind's table settings."""
    own: type[TableModel] = getattr(source_settings(kind), "Table", TableModel)
    return create_model(f"{_class_name(kind)}Table", __base__=own, __module__=own.__module__)


@functools.cache
def job_model(kind: str) -> type[JobModel]:
    """A ``source = "<kind>"`` job: ``JobModel`` with the kind's job settings and tables."""
    own: type[JobModel] = getattr(source_settings(kind), "Job", JobModel)
    common = JobModel.model_fields
    typed: dict[str, Any] = {  # built at run time: the kind is a value
        "source": (Literal.__getitem__(kind), common["source"]),
        "tables": (list.__class_getitem__(table_model(kind)), common["tables"]),
    }
    return create_model(f"{_class_name(kind)}Job", __base__=own, __module__=own.__module__, **typed)


def parse_job(name: str, body: Any, base: Path) -> JobConfig:
    """Job ``name`` of the jobs file (``body``: its table; ``base``: the file's folder)."""
    where = f"job '{name}'"
    if not re.match(IDENT, name):
        raise ConfigError(f"{where}: name must be lower-case letters, digits and underscores")
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: must be a table of settings")
    source = body.get("source")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"{where}: 'source' is required")
    kinds = source_kinds()
    if source not in kinds:
        raise ConfigError(
            f"{where}: source kind '{source}' is not supported (supported: {', '.join(kinds)})"
        )
    try:
        model = job_model(source).model_validate(body)
    except ValidationError as e:
        raise ConfigError(_one_line(name, source, body, e)) from None
    return model.config(name, base)


def _one_line(job: str, kind: str, body: dict[str, Any], error: ValidationError) -> str:
    """pydantic's report on one job as one line: each problem as ``job 'j' [table 't']:
    ...``, a section's unknown keys together with the known key closest to each."""
    unknown: dict[str, tuple[type[Section], list[str]]] = {}
    problems: list[str] = []
    for err in error.errors():
        loc: tuple[Any, ...] = err["loc"]
        where, section, raw = f"job '{job}'", cast(type[Section], job_model(kind)), body
        if loc[:1] == ("tables",) and len(loc) > 1 and isinstance(loc[1], int):
            raw = body["tables"][loc[1]]
            tname = raw.get("name") if isinstance(raw, dict) else None
            label = f"table '{tname}'" if isinstance(tname, str) else f"tables entry {loc[1] + 1}"
            where, section, loc = f"{where} {label}", table_model(kind), loc[2:]
        if err["type"] == "extra_forbidden":
            unknown.setdefault(where, (section, []))[1].append(str(loc[0]))
        else:
            problems.append(f"{where}: {_problem(err, loc, section, raw)}")
    named = [
        f"{where}: unknown setting(s) {', '.join(keys)}"
        + (f" for a {kind} job" if issubclass(section, JobModel) else "")
        + _closest(keys, section, kind)
        for where, (section, keys) in sorted(unknown.items(), key=lambda u: len(u[0]))
    ]
    return "; ".join(dict.fromkeys([*named, *problems]))


def _problem(err: Any, loc: tuple[Any, ...], section: type[Section], raw: Any) -> str:
    """One problem, without its job and table."""
    if err["type"] == "value_error":  # a validator's own words
        return str(err["ctx"]["error"])
    if not loc:
        return f"must be a table of settings (got {raw!r})"
    key = str(loc[0])
    spec = section.model_fields.get(key)
    extra = spec.json_schema_extra if spec is not None else None
    must = extra.get("errorMessage") if isinstance(extra, dict) else None
    if err["type"] == "missing":
        return f"{key} is required" + (f" (it {must})" if must else "")
    shown = f" (got {raw.get(key)!r})" if spec is None or spec.repr else ""
    return f"{key} {must}{shown}" if must else f"{key}: {err['msg']}{shown}"


def _closest(keys: list[str], section: type[Section], kind: str) -> str:
    """The known key closest to each unknown one, or the source kinds that know it."""
    level = "job" if issubclass(section, JobModel) else "table"
    model = job_model if level == "job" else table_model
    # a key of the other level of this kind: said where it goes (no "did you mean")
    other = (table_model if level == "job" else job_model)(kind)
    misplaced = [k for k in keys if k in other.model_fields and k not in section.model_fields]
    if misplaced:
        where = "each [[jobs.<job>.tables]] entry" if level == "job" else "the [jobs.<job>] table"
        return f" ({', '.join(misplaced)}: a {kind} {'table' if level == 'job' else 'job'} setting, in {where})"
    # a key another source kind knows is that kind's, however close it is to one of ours
    others = [o for o in source_kinds() if o != kind and set(keys) & set(model(o).model_fields)]
    if others:
        return f" (a setting of {' and '.join(others)} {level}s)"
    close = {k: difflib.get_close_matches(k, list(section.model_fields), n=1) for k in keys}
    hints = [c[0] if len(keys) == 1 else f"{c[0]} for {k}" for k, c in close.items() if c]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def jobs_schema() -> dict[str, Any]:
    """The JSON Schema of the jobs file: each job is the model of its ``source`` kind."""
    kinds: Any = Union.__getitem__(tuple(job_model(k) for k in source_kinds()))
    job: Any = Annotated[kinds, Field(discriminator="source")]
    jobs_file = create_model(
        "JobsFile",
        __config__=ConfigDict(extra="forbid"),
        __doc__="deltaferry jobs file (deltaferry.toml): what to sync, from where, to which lake.",
        jobs=(
            dict[Annotated[str, StringConstraints(pattern=IDENT)], job],
            Field(..., description="the jobs, by name", min_length=1),
        ),
    )
    schema = _no_null(jobs_file.model_json_schema())
    # a job name that breaks the pattern is an error, not a job the schema skips
    schema["properties"]["jobs"]["additionalProperties"] = False
    return {"$schema": SCHEMA_URL, **schema}


def _no_null(node: Any) -> Any:
    """TOML has no null: an optional key is one left out, not one that may be null."""
    if isinstance(node, list):
        return [_no_null(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _no_null(v) for k, v in node.items() if not (k == "default" and v is None)}
    branches = [b for b in out.pop("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        return {**branches[0], **out}
    return {**out, "anyOf": branches} if branches else out


def schema_text() -> str:
    """``jobs_schema()`` as ``deltaferry schema jobs`` prints it and
    ``deltaferry.schema.json`` holds it."""
    return json.dumps(jobs_schema(), indent=2, ensure_ascii=False) + "\n"


def _class_name(table: str) -> str:
    return "".join(part.capitalize() for part in table.split("_"))
