"""The SQL source's preflight, without dlt: the source answers, has every table and column
the job names, and every column name is one staging keeps exactly (``preflight``). The read
runs it again before it reads (``source.py``); ``deltaferry run`` runs it before its flow
(``deltaferry/context.py:preflight_job``, through ``sources.preflight_module``), so it is
kept apart from the extraction, which imports dlt (about 0.4 s a command)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from deltaferry.config import JobConfig
from deltaferry.errors import ConfigError
from sources.names import check_columns
from sources.sql_database.connection import StallWatchdog, connect_error, engine_for
from sources.sql_database.settings import source_table
from sources.sql_database.types import key_roles, source_columns, text_form_notes
from sources.sql_database.window import TEXT_OF_NUMBERS
from sources.staging import staged_types, staging_naming, staging_path


def preflight_source(job: JobConfig) -> None:
    """Check that the source answers and has every table and column. Under the stall
    watchdog, as the read is: a link that stops forwarding mid-answer fails the check
    after ``DELTAFERRY_SOURCE_STALL_TIMEOUT`` seconds instead of hanging the command."""
    engine = engine_for(job)
    watchdog = StallWatchdog(engine)
    try:
        preflight(job, engine)
    finally:
        watchdog.close()
        engine.dispose()


def preflight(
    job: JobConfig, engine: sa.Engine, convention: str | None = None
) -> dict[str, dict[str, str]]:
    """Check that the source answers, every configured table and column exists, and every
    column name is one staging keeps exactly under the job's naming ``convention``
    (default: the one its staging recorded, see ``sources.names``). Returns, per table,
    the columns published as their text form by default, each with its one-line note
    (``types.text_form_notes``)."""
    if convention is None:
        convention = staging_naming(job)
    try:
        insp = sa.inspect(engine)
        existing = set(insp.get_table_names()) | set(insp.get_view_names())
    except sa.exc.DBAPIError as e:
        raise connect_error(job, e) from None
    texts: dict[str, dict[str, str]] = {}
    for t in job.tables:
        if source_table(t) not in existing:
            raise ConfigError(_not_found(job, t, existing))
        columns = source_columns(job, t, insp)  # types checked too
        names = [c["name"] for c in columns]
        as_text = text_form_notes(job, t, columns, insp.dialect)
        if as_text:
            texts[t.name] = as_text
        # names are staged exactly (or, in a job staged before that, as dlt's snake_case
        # keeps them); any other name is refused here, before dlt renames it, as is a name
        # that differs only in case from a staged one (its load failed on every run)
        staged = staged_types(t, staging_path(job.name), None)
        check_columns(job.name, t.name, names, convention, staged)
        cols = set(names)
        missing = sorted(set(key_roles(t)) - cols)
        if missing:
            raise ConfigError(
                f"job '{job.name}' table '{t.name}': column(s) {', '.join(missing)} not in the source table"
            )
        _unit_fits(job, t, columns, insp.dialect.name)
    return texts


def _unit_fits(job: JobConfig, t: Any, columns: list[dict[str, Any]], dialect: str) -> None:
    """ConfigError when the table's ``cursor_unit`` names a unit of Unix time and its cursor
    column is not a number: the unit was accepted and ignored, so a text cursor holding
    ``'8000000000'`` was the window's bound, no word (a fresh-user trial)."""
    unit = t.options.get("cursor_unit")
    if unit in (None, "number") or not t.cursor:
        return
    from sources.sql_database.types import _unwrap

    kind = next((c["type"] for c in columns if c["name"] == t.cursor), None)
    # Float is not a Numeric in SQLAlchemy 2.1; Boolean is neither; a domain is its base
    if kind is None or isinstance(_unwrap(kind), (sa.Integer, sa.Numeric, sa.Float)):
        return
    text = _unwrap(kind)
    if isinstance(text, sa.String) and not isinstance(text, sa.Enum) and dialect in TEXT_OF_NUMBERS:
        return  # text of numbers (window._text_cursor): other text is refused there
    raise ConfigError(
        f"job '{job.name}' table '{t.name}': cursor_unit = {unit!r} is for a cursor column of "
        f"numbers (Unix times), and '{t.cursor}' is {kind}: leave cursor_unit out (a time "
        "column is compared with the clock as it is), or sync a number column"
    )


def _not_found(job: JobConfig, t: Any, existing: set[str]) -> str:
    """One line for a table the source does not have, naming a spelling it has that differs
    in case or in ``_`` for a space or dash (a job's table name is lower-case letters,
    digits and ``_``: ``source_table`` gives the source's spelling)."""
    import re
    import unicodedata

    def folded(name: str) -> str:  # case, separators, spaces and Unicode form aside
        return re.sub(r"[\W_]+", "", unicodedata.normalize("NFC", name).casefold())

    where = f"job '{job.name}' table '{t.name}'"
    asked = source_table(t)
    near = sorted(n for n in existing if folded(n) == folded(asked) and n != asked)
    if near:
        form = ""
        if unicodedata.normalize("NFC", near[0]) == unicodedata.normalize("NFC", asked):
            form = f" (the same letters in another Unicode form: {ascii(near[0])})"
        return (
            f"{where}: not found in the source database, which has {near[0]!r}{form}: set "
            f'source_table = "{near[0]}" for this table in the jobs file (name stays the '
            "job's name for it)"
        )
    given = f" (source_table {asked!r})" if asked != t.name else ""
    if "." in asked:  # a schema-qualified name: the session's search_path finds it instead
        schema = asked.split(".", 1)[0]
        return (
            f"{where}: not found in the source database{given}: a table name does not name "
            f"its schema; for a table of schema {schema!r}, set source_table to the table's "
            f"name and put the schema first in the session's search_path, in the url: "
            f"...?options=-csearch_path%3D{schema} (PostgreSQL)"
        )
    return f"{where}: not found in the source database{given}"


__all__ = ["preflight", "preflight_source"]
