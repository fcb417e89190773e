"""Source names as staging keeps them: dlt's naming conventions, and the check that refuses
a source column name staging would not keep exactly.

New stagings use dlt's ``direct`` convention: table and column names are staged exactly
as the source has them (case, spaces, dots, non-ASCII letters, leading digits, SQL
keywords), except what ``direct`` rewrites: quotes, line breaks, ``▶`` (its path
separator) and leading or trailing spaces. Those are refused, as are names that differ
only in case from another column of the table (DuckDB, for staging and the replica, is
case-insensitive) and names deltaferry uses itself (``_dlt_*``, ``_df_*``, and ``_op`` and
``_seq``, which every published data object carries).

dlt records the convention with the staged schema (``raw._dlt_version``; read back by
``sources.staging.staging_naming``) and refuses to change it once a table has data. A
job staged before names were kept exactly keeps dlt's ``snake_case`` (``userId`` would
become ``user_id``); such a job refuses any source name that ``snake_case`` would change,
naming the fix, instead of renaming it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

#: the convention of a new staging: names are kept exactly
EXACT = "direct"
#: dlt's default, used by stagings made before deltaferry kept names exactly
LEGACY = "snake_case"


def naming(convention: str) -> Any:
    """A dlt ``NamingConvention`` instance for ``convention`` (``direct``, ``snake_case``)."""
    import importlib

    module = importlib.import_module(f"dlt.common.normalizers.naming.{convention}")
    return module.NamingConvention()


def _reserved(name: str) -> bool:
    from sources.columns import INTERNAL_COLUMNS, LAKE_COLUMNS

    # in any case: DuckDB (staging, the replica) does not tell `_Op` from `_op`
    low = name.lower()
    return low in INTERNAL_COLUMNS | LAKE_COLUMNS or low.startswith(("_dlt_", "_df_"))


def name_problem(name: str, convention: str = EXACT) -> str | None:
    """Why staging under ``convention`` would not keep ``name`` exactly, or None."""
    if not isinstance(name, str) or not name or not name.strip():
        return "is empty"
    if convention == EXACT:
        if name != name.strip():
            return "has leading or trailing spaces, which dlt drops"
        bad = sorted({c for c in name if c in "\n\r'\"▶"})
        if bad:
            shown = ", ".join({"\n": "line break", "\r": "line break"}.get(c, repr(c)) for c in bad)
            return f"has {shown}, which dlt's staging replaces with '_'"
        return None
    normalized = naming(convention).normalize_identifier(name)
    if normalized != name:
        return (
            f"would be staged as '{normalized}' (this job's staging uses dlt's {convention} "
            "names, from before deltaferry kept source names exactly)"
        )
    return None


def _fix(convention: str) -> str:
    if convention == EXACT:
        return "rename the column at the source"
    return (
        "rename the column at the source, or sync the table in a new job (a new job's "
        "staging keeps source names exactly; its lake path is new)"
    )


def column_problem(
    columns: Iterable[str],
    convention: str = EXACT,
    staged: Iterable[str] = (),
    job: str = "JOB",
    table: str = "TABLE",
) -> tuple[str, str] | None:
    """The first reason staging would not keep ``columns`` exactly and apart, as (problem,
    fix): a name the convention changes, a name reserved by deltaferry and dlt, a name
    twice, two names staging (case-insensitive DuckDB) cannot tell apart, or a name that
    differs only in case from one of ``staged`` (the table's columns staged so far or read
    earlier in the run, as staging names them): dlt's load of it failed on every run.
    ``job`` and ``table`` fill the fix's ``deltaferry reset`` command. None when every name
    is kept."""
    seen: dict[str, str] = {}
    norm = naming(convention) if convention != EXACT else None
    before = {n.casefold(): n for n in staged}
    clash: tuple[str, str] | None = None  # with a staged name: after every other problem
    for name in columns:
        problem = name_problem(name, convention)
        if problem:
            return f"column {name!r} {problem}", _fix(convention)
        if _reserved(name):
            return (
                f"column {name!r} is a name deltaferry and dlt use for their own columns "
                "(_dlt_*, _df_*, and _op and _seq in every published file; in any case)",
                _fix(convention),
            )
        as_staged = norm.normalize_identifier(name) if norm else name
        key = as_staged.casefold()
        other = seen.get(key)
        if other == name:
            return f"column {name!r} more than once", "give every column its own name"
        if other is not None:
            return (
                f"columns {other!r} and {name!r} differ only in case, and staging and the "
                "replica (DuckDB) do not tell names apart by case",
                "rename one of them at the source",
            )
        seen[key] = name
        old = before.get(key)
        if old is not None and old != as_staged and clash is None:
            clash = (
                f"column {name!r} differs only in case from the table's column {old!r} "
                "(staged, or read earlier in this run), and staging and the replica (DuckDB) "
                "do not tell names apart by case",
                f"name it {old!r} at the source again, or stage the table anew under the new "
                f"name (deltaferry reset {job} --table {table} --reason '{name} renamed'), "
                "after which a contract that spells it otherwise holds its rows back",
            )
    return clash


def check_columns(
    job: str, table: str, columns: Iterable[str], convention: str = EXACT, staged: Iterable[str] = ()
) -> None:
    """Refuse, as one ConfigError line naming job, table, column(s) and the fix, source
    columns that staging would not keep exactly (see ``column_problem``; ``staged``: the
    table's columns staged so far)."""
    from deltaferry.errors import ConfigError

    found = column_problem(columns, convention, staged, job, table)
    if found:
        raise ConfigError(_refusal(job, table, *found))


def _refusal(job: str, table: str, problem: str, fix: str) -> str:
    return f"job '{job}' table '{table}': source {problem}; {fix}"


def cursor_value(row: dict[str, Any], cursor: str) -> Any:
    """A record's cursor value as dlt's incremental step finds it: a JSONPath's first
    match (``$.meta.updated``), else the field of that name; None when missing."""
    if not cursor.startswith("$"):
        return row.get(cursor)
    from dlt.common import jsonpath

    found = jsonpath.find_values(cursor, row)
    return found[0] if found else None


# names dlt's JSONPath parser reads as one field as they are (its keywords aside)
_PLAIN_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_KEYWORDS = frozenset({"where", "wherenot"})


def cursor_path(name: str) -> str:
    """``name`` as a dlt incremental cursor path (a quoted JSONPath field, so a name with a
    space, dot or non-ASCII letter is one column); ValueError when no path names it.
    An ASCII identifier other than the parser's keywords is its own path, known without
    importing dlt (read with every jobs file; ``tests/test_names.py`` checks dlt agrees)."""
    if _PLAIN_PATH.fullmatch(name) and name.lower() not in _PATH_KEYWORDS:
        return name
    from dlt.common.jsonpath import extract_simple_field_name

    def simple(path: str) -> str | None:
        try:
            return extract_simple_field_name(path)
        except Exception:  # noqa: BLE001 - the parser's own errors: not a simple path
            return None

    # a plain name stays plain: dlt keys the cursor's state by this text
    for path in (name, f'"{name}"'):
        if simple(path) == name:
            return path
    raise ValueError(f"cursor column {name!r} cannot be named as a dlt cursor path")


class RecordNames:
    """A dlt map step for a source that yields records (dicts, or pages of them): refuses
    (a ``TerminalError`` with ``check_columns``'s line) a record key staging would not keep
    exactly, before dlt renames or stages it, and a key that differs only in case from one
    staged before (``staged``, as staging names them) or read earlier in this run. Each
    distinct key set is checked once."""

    def __init__(
        self, job: str, table: str, convention: str = EXACT, staged: Iterable[str] = ()
    ) -> None:
        self.job, self.table, self.convention = job, table, convention
        self._ok: set[frozenset[str]] = set()
        self._known: dict[str, str] = {n.casefold(): n for n in staged}

    def _check(self, keys: list[str]) -> None:
        """``check_columns``'s refusal, as a ``TerminalError``: the source's data, not the
        job's settings, is at fault, and raised in one table's read it stops that table
        only (``sources.load.table_error``), not the job's other tables."""
        from deltaferry.errors import TerminalError

        found = column_problem(keys, self.convention, self._known.values(), self.job, self.table)
        if found:
            raise TerminalError(_refusal(self.job, self.table, *found))

    def __call__(self, item: Any) -> Any:
        for row in item if isinstance(item, list) else [item]:
            if isinstance(row, dict):
                keys = frozenset(row)
                if keys not in self._ok:
                    self._check(sorted(keys))
                    norm = naming(self.convention) if self.convention != EXACT else None
                    for k in keys:
                        name = norm.normalize_identifier(k) if norm else k
                        self._known.setdefault(name.casefold(), name)
                    self._ok.add(keys)
        return item
