"""Source drift: the columns dlt staged for a table, compared with the table's contract.

dlt evolves its staging schema as the source changes: a new source column becomes a
new staged column, and a value whose type changed goes to a *variant* column
``<column>▶v_<type>`` (``<column>__v_<type>`` in a staging made under dlt's
snake_case names) beside the original (for Arrow sources ``sources.variants.Variants``
does what dlt's normalizer does for rows). dlt never drops a staged column, so drift is
judged on the rows being cut (the new loads, and held rows due for re-validation):

- a **new** column: staged, not in the contract, with a value on a row being cut;
- a **retyped** column: a variant of a staged column (of the contract, or one a contract
  that is not strict accepts) with a value on a row being cut;
- a **dropped** column: required by the contract (not nullable) and never staged, or
  staged but no longer among the source's columns and NULL on every row being cut (a
  rename drops the old name and adds the new one); a *nullable* contract column counts
  too when it was staged (or holds values in the chain a reset pulled) and the source no
  longer has it, whatever older rows of the cut hold (unless this version or one before
  it deprecates it, ``__deprecated__``): its rows would publish NULL over the values
  readers hold, so a rename of a nullable column wiped it in the lake and every replica,
  exit 0 (fresh-user trial). Columns a contract that is not strict does not list are not judged.

The job's ``drift`` policy decides, modelled on dlt's schema contracts:

- ``freeze`` (default): a new or retyped column, or a nullable one dropped, fails the
  run with the diff; nothing is published.
- ``quarantine``: rows carrying a value in a new or variant column, or no value in a
  dropped column, are held back in the quarantine with the reason; the other rows are
  published without those columns.
- ``evolve``: rows are published without the new columns, and the next contract version
  is proposed: a pandera ``DataFrameModel`` draft, written next to the job's state (new
  columns nullable, dropped ones optional and deprecated). Rows with a value in a
  variant column, or without one in a dropped column, are held back as under
  ``quarantine`` (publishing them would overwrite good data or break the contract).

Held rows are re-validated when the contract changes (``deltaferry quarantine``). A
dropped column is reported under every policy; under ``freeze`` a required one is left to
the contract (rows without a required value fail validation). A contract that is not strict
accepts columns it does not list, so no column is new to it.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from contracts import Contract
from deltaferry import duck
from deltaferry.duck import fetch_row, ident

POLICIES = ("freeze", "quarantine", "evolve")
# dlt names a variant column <column><path separator>v_<type>: "__" under the snake_case
# naming of older stagings, "▶" under the direct naming that keeps source names exactly
VARIANT = re.compile(r"^(?P<base>.+)(?:__|▶)v_(?P<type>[a-z0-9_]+)$")


@dataclass
class Drift:
    """How a table's staged columns differ from its contract."""

    new: dict[str, str] = field(default_factory=dict)  # column -> staged type
    retyped: dict[str, tuple[str, str]] = field(default_factory=dict)  # variant -> (base, type)
    dropped: list[str] = field(default_factory=list)  # required by the contract
    # nullable contract columns the source dropped (staged before, no longer a source
    # column, not deprecated): published, their rows would
    # overwrite the values readers hold with NULL
    dropped_nullable: list[str] = field(default_factory=list)
    # new columns the source no longer has (its columns known): only staged rows not yet
    # published hold their values
    new_gone: list[str] = field(default_factory=list)
    staged: dict[str, str] = field(default_factory=dict)  # staged column -> DuckDB type
    # staged columns the contract does not know, without a value on any row being cut (a
    # column the source dropped again, a variant whose rows were repaired): not drift, and
    # not published
    inert: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.retyped or self.dropped or self.dropped_nullable)

    @property
    def blocking(self) -> bool:
        """What freeze stops for: new or retyped columns, and nullable columns the source
        dropped (dropped required ones are the contract's: rows without them fail it)."""
        return bool(self.new or self.retyped or self.dropped_nullable)

    @property
    def extra_columns(self) -> list[str]:
        """Staged columns the contract does not know (new ones and variants)."""
        return sorted([*self.new, *self.retyped])

    def describe(self) -> str:
        parts = [f"new column {c} ({t})" for c, t in sorted(self.new.items())]
        parts += [
            f"column {base} changed type at the source: staged as "
            f"{self.staged.get(base, '?')}, now {t} values arrive (staged in dlt variant "
            f"column {v})"
            for v, (base, t) in sorted(self.retyped.items())
        ]
        parts += [f"required column {c} was dropped by the source" for c in self.dropped]
        parts += [
            f"column {c} was dropped by the source (nullable: its rows would publish NULL "
            "over the values readers hold)"
            for c in self.dropped_nullable
        ]
        return "; ".join(parts)

    def remedy(self, job: str, table: str) -> str:
        """What the operator does about the blocking drift of ``job``'s ``table``, one clause."""
        fixes = []
        if set(self.new) - set(self.new_gone):
            fixes.append("add the new column(s) to the contract")
        if self.new_gone:
            names = ", ".join(self.new_gone)
            fixes.append(
                f"the source no longer has {names}, which staged rows not yet published "
                f"hold: stage the table again without it (deltaferry reset {job} --table "
                f"{table} --reason '{names} dropped'), or add it to the contract to publish "
                "those values"
            )
        if self.dropped_nullable:
            names = ", ".join(self.dropped_nullable)
            fixes.append(
                f"give the contract a version that deprecates {names} (`__deprecated__`) "
                "or leaves it out, with the column it was renamed to if it was renamed "
                "(rows published from then on carry it NULL, as the source does)"
            )
        if self.retyped:
            names = ", ".join(sorted({b for b, _ in self.retyped.values()}))
            fixes.append(
                f"repair the values of {names} at the source (the next run publishes them) "
                "or change (or give) the contract's type and stage the table again "
                f"(deltaferry reset {job} --table {table} --reason '{names} retyped')"
            )
        return "; or ".join(fixes) + ' (or set drift = "evolve" or "quarantine")'


def detect(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    table: str,
    contract: Contract,
    internal: set[str],
    scope: tuple[str, list[Any]] | None = None,
    source_columns: set[str] | None = None,
    published: set[str] | None = None,
) -> Drift:
    """Compare the staged columns of ``dataset.table`` with ``contract``.

    ``scope`` is a SQL condition (on the table aliased ``s``) and its parameters selecting
    the rows being cut: new and variant columns count only with a value on one of them,
    and a staged contract column missing from ``source_columns`` (the source's columns
    now, when known) counts as dropped when it is NULL on all of them; a nullable one
    counts whatever they hold (``Drift.dropped_nullable``: rows without a value are held
    one by one), unless this version or one before it deprecates it, and when not staged
    too if it is among ``published``, the columns holding values in what readers hold
    (after a reset staging has only the source's columns)."""
    staged = duck.column_types(con, table, dataset)
    known = set(contract.columns)
    drift = Drift(staged=staged)
    for column, typ in staged.items():
        if column in known or column in internal or column.startswith("_dlt"):
            continue
        m = VARIANT.match(column)
        # a variant of a column the contract does not type but accepts (not strict) too:
        # its base column is NULL on those rows, so publishing it silently lost the values
        if m and (m.group("base") in known or m.group("base") in staged):
            drift.retyped[column] = (m.group("base"), m.group("type"))
        elif contract.schema.strict is True:
            # a contract that is not strict accepts (and publishes) columns it does not list
            drift.new[column] = typ
    columns = contract.schema.columns
    required = [c for c in known if columns[c].required and not columns[c].nullable]
    # names compared exactly, as staged columns are: a source column renamed City from city
    # is another column of the contract (staged anew after a reset, city is dropped)
    at_source = lambda c: source_columns is None or c in source_columns  # noqa: E731
    gone = [c for c in required if c in staged and not at_source(c)]
    had = staged.keys() | (published or set())  # a column readers may hold values of
    gone_nullable = sorted(
        c
        for c in known
        if c not in required and c in had and not at_source(c) and c not in contract.ever_deprecated
    )
    if scope is not None and staged:
        counted = [*drift.new, *drift.retyped, *gone]
        if counted:
            counts = fetch_row(
                con,
                f"SELECT {', '.join(f'count(s.{ident(c)})' for c in counted)}"
                f" FROM {ident(dataset)}.{ident(table)} s WHERE {scope[0]}",
                scope[1],
            )
            values = dict(zip(counted, counts, strict=True))
            drift.inert = sorted(c for c in [*drift.new, *drift.retyped] if not values[c])
            drift.new = {c: t for c, t in drift.new.items() if values[c]}
            drift.new_gone = sorted(c for c in drift.new if not at_source(c))
            drift.retyped = {c: v for c, v in drift.retyped.items() if values[c]}
            gone = [c for c in gone if not values[c]]
        # whatever older rows of the cut hold: those without a value hold back one by one
        drift.dropped_nullable = gone_nullable
    else:
        gone = []
    if staged:
        drift.dropped = sorted(c for c in required if c not in staged or c in gone)
    return drift


def draft_next_version(contract: Contract, drift: Drift, staged_types: dict[str, str]) -> str:
    """Python source of the next contract version: the current class extended with the
    new columns (nullable: rows published before have no value), required columns the
    source dropped (required or nullable) made nullable and deprecated
    (``__deprecated__``: gone in the version after), and retyped columns flagged for a
    decision; with its migrations from and to the current version: ``upgrade`` gives older rows the new columns, NULL, and ``downgrade``
    drops them, refusing (``MigrationError``) rows that hold a value in one; no
    ``downgrade`` when the source dropped a column the current version requires (its rows
    cannot go back: the batches are published at the new version). A reader whose
    replica holds rows of the current version migrates them through ``upgrade`` once the
    table's contract is a ``Chain`` of both: a class alone has no path from the version the
    rows are at, and the pull stops (fresh-user trial). The class body needs the names the
    contract module has (``pa``, ``Series``, ``pd``) and ``MigrationError`` from
    ``contracts``, which the draft's header says to import. Column names are written as
    Python literals (``repr``) wherever code holds them, and the docstring's text is
    escaped: a name may hold ``{``, ``}`` or a backslash."""

    base = contract.model
    version = contract.version + 1
    stem = re.sub(r"V\d+$", "", base.__name__)
    name = f"{stem}V{version}"
    if contract.version == 1:  # one class: the chain starts with it
        chain = f"`{stem}Chain = Chain({base.__name__}, {name})`"
    else:  # a chain already: the new version goes at its end, every version before kept
        chain = f"the table's chain with {name} added at its end, every earlier version kept"
    about = drift.describe().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    lines = [
        f'"""Draft of contract {name}, proposed by deltaferry (drift = "evolve") because the',
        f"source drifted from {contract.ref} v{contract.version}: {about}.",
        "",
        f"To adopt it: review it, paste the class {name} into the contract module (not this",
        f"file's import of {base.__name__}), import `Chain, MigrationError` from `contracts` there,",
        f"name the versions as one chain, oldest first: {chain}; and point the table's",
        "`contract` at the chain. A replica pulled at the current version migrates its rows",
        "through `upgrade`; a class alone gives it no way from that version. Values of the new",
        "columns on rows published before reach the lake when those rows change again (the",
        "first run under the new version says how many; `deltaferry reset` publishes them).",
        '"""',
        "",
        "import pandas as pd  # noqa: F401 - used by timestamp fields",
        "import pandera.pandas as pa",
        "from pandera.typing import Series",
        "",
        "from contracts import MigrationError",
        f"from {base.__module__} import {base.__name__}",
        "",
        "",
        f"class {name}({base.__name__}):",
        f'    """{base.__name__} and the columns the source added."""',
        "",
        f"    __version__ = {version}",
        "",
    ]
    spelled = {c.lower(): c for c in contract.columns}
    respelled = {c.lower() for c in drift.new if c.lower() in spelled}
    for column, typ in sorted(drift.new.items()):
        if column.lower() in respelled:  # a replica (DuckDB) cannot hold both: no field
            lines.append(
                f"    # {column!r}: the source's new spelling of {spelled[column.lower()]!r}; a "
                "replica cannot hold two columns differing only in case: spell it as before "
                "at the source"
            )
            continue
        annotation, extra = pandera_annotation(staged_types.get(column, typ))
        attr, alias = _attribute(column)
        args = ", ".join(a for a in (alias, extra, "nullable=True") if a)
        lines.append(f"    {attr}: {annotation} = pa.Field({args})  # new: staged as {typ}")
    # a column only spelled anew in case is neither dropped nor new (its rows stay held)
    dropped = sorted(c for c in [*drift.dropped, *drift.dropped_nullable] if c.lower() not in respelled)
    for column in [c for c in dropped if c in drift.dropped]:  # a nullable one is as it was
        annotation, _ = pandera_annotation(_duck_of(contract, column))
        attr, alias = _attribute(column)
        args = ", ".join(a for a in (alias, "nullable=True") if a)
        # nullable is enough: a nullable column the rows lack is published as NULL
        lines.append(
            f"    {attr}: {annotation} = pa.Field({args})  # dropped by the source: nullable,"
            " deprecated"
        )
    if dropped:
        gone = ", ".join(f"{c!r}: {version + 1}" for c in dropped)
        lines.append(f"    __deprecated__ = {{{gone}}}  # dropped by the source: goes in v{version + 1}")
    for variant, (column, typ) in sorted(drift.retyped.items()):
        lines.append(
            f"    # {column}: the source now also sends {typ} values (dlt stages them in"
            f" {variant}); decide whether to widen {column} or fix the source"
        )
    new = sorted(c for c in drift.new if c.lower() not in respelled)
    lines.extend(_migrations(new, version, downgrade=not drift.dropped))
    lines.append("")
    source = "\n".join(lines)
    compile(source, f"<draft {name}>", "exec")  # a draft that does not compile is a bug here
    return source


def _migrations(new: list[str], version: int, downgrade: bool) -> list[str]:
    """The drafted version's ``upgrade`` (rows of the version before get the ``new``
    columns, NULL, where they lack them) and, if ``downgrade``, its ``downgrade`` (the
    ``new`` columns dropped; a row holding a value in one is refused, as the version before
    has nowhere to keep it), as class body lines. Names are written with ``repr``."""
    lines = [
        "",
        "    @staticmethod",
        f"    def upgrade(frame):  # v{version - 1} rows -> v{version}: the new columns, NULL",
    ]
    if new:
        lines += [
            f"        for column in {new!r}:",
            "            if column not in frame:",
            "                frame[column] = None",
        ]
    lines.append("        return frame")
    if not downgrade:
        return lines
    lines += ["", "    @staticmethod", f"    def downgrade(frame):  # v{version} rows -> v{version - 1}"]
    if new:
        lines += [
            f"        new = [c for c in {new!r} if c in frame]",
            "        held = frame[new].notna().any(axis=1)",
            "        if held.any():",
            "            raise MigrationError(",
            f'                f"{{int(held.sum())}} row(s) hold a value in " + {", ".join(new)!r}'
            f' + ", which v{version - 1} does not have"',
            "            )",
            "        return frame.drop(columns=new)",
        ]
    else:
        lines.append("        return frame")
    return lines


def _attribute(column: str) -> tuple[str, str]:
    """A class attribute for a column, and the alias argument when the name cannot be one."""
    if keyword.iskeyword(column) or not column.isidentifier():
        safe = re.sub(r"\W", "_", column)
        return (safe if safe.isidentifier() else f"c_{safe}") + "_", f"alias={column!r}"
    return column, ""


def _duck_of(contract: Contract, column: str) -> str:
    dtype = str(contract.schema.columns[column].dtype).lower()
    if "int" in dtype:
        return "BIGINT"
    if "float" in dtype:
        return "DOUBLE"
    if "bool" in dtype:
        return "BOOLEAN"
    if "datetime" in dtype:
        return "TIMESTAMP WITH TIME ZONE" if "tz" in dtype or "utc" in dtype else "TIMESTAMP"
    if "decimal" in dtype:
        return "DECIMAL"
    if "date" in dtype:
        return "DATE"
    return "VARCHAR"


def write_draft(home: Path, table: str, version: int, source: str) -> Path:
    """Write a draft under the job's state directory (never into the project itself)."""
    path = home / "drafts" / f"{table}_v{version}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


def pandera_annotation(duck_type: str) -> tuple[str, str]:
    """(Series annotation, extra ``Field`` arguments) of a pandera DataFrameModel column for a
    staged DuckDB type, as source text: ``("Series[int]", "")`` for ``BIGINT``. Used to draft
    contracts (``deltaferry new-source``) and to suggest a contract change for drift."""
    t = duck_type.upper()
    if t in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER"):
        return "Series[int]", ""
    if t in ("DOUBLE", "FLOAT", "REAL") or t.startswith("DECIMAL"):
        return "Series[float]", ""
    if t == "BOOLEAN":
        return "Series[bool]", ""
    if t == "TIMESTAMP WITH TIME ZONE":
        return "Series[pd.DatetimeTZDtype]", 'dtype_kwargs={"unit": "us", "tz": "UTC"}'
    if t.startswith("TIMESTAMP") or t == "DATE":
        return "Series[pd.Timestamp]", ""
    if t in ("VARCHAR", "JSON", "UUID") or t.startswith(("STRUCT", "MAP")) or t.endswith("[]"):
        return "Series[str]", ""
    return "Series[object]", ""
