"""Data contracts: pandera ``DataFrameModel`` classes, one chain of versions per table.

A table's contract is named in the jobs file as ``module:Name``: a ``DataFrameModel``
class (one version; ``__version__``, default 1) or a ``Chain`` of versions, oldest
first, with consecutive ``__version__`` numbers::

    Customers = Chain(CustomersV1, CustomersV2, CustomersV3)

Each version after the first says how to get to it from the one before,
``upgrade(frame) -> frame`` (a static method), and how to go back,
``downgrade(frame) -> frame``, where no information is lost (it raises
``MigrationError`` for rows it cannot take back; leave it out when every row would
lose something). Migrations see the data columns of a batch, keep its rows in order,
and must accept NULLs. A field kept for old readers may be marked for removal,
``__deprecated__ = {"name": 3}``: it goes away in version 3 (``deltaferry contracts
lint`` checks). ``Contract.validate`` splits a batch into rows that pass and rows that
go to quarantine, with field, check and reason for each.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_
from pandera import dtypes as pandera_dtypes
from pandera.errors import SchemaErrors

from deltaferry.errors import ConfigError


@dataclass(frozen=True)
class Failure:
    """One reason a row failed its contract."""

    row: int  # positional index into the validated frame
    field: str | None
    check: str
    reason: str
    value: Any = None  # the value that failed (pandera's ``failure_case``)


# A failure case table: one row a failure, in the order pandera found them. ``row`` is
# the failing row's position in the validated frame, -1 for a failure of the frame's shape
# or of a column as a whole; ``value`` the failing value (pandera's ``failure_case``).
_CASE_COLUMNS = ["row", "field", "check", "value"]


def _no_cases() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": pd.Series([], dtype="int64"),
            "field": pd.Series([], dtype=object),
            "check": pd.Series([], dtype=object),
            "value": pd.Series([], dtype=object),
        }
    )


class ValidationResult:
    """Which rows failed and why. Schema-level failures (a missing or extra column,
    a type that cannot be coerced) apply to every row.

    Kept as pandera reports it, a table of failure cases (``cases``): finding and counting
    failed rows costs the same numpy work whatever their number, and ``Failure`` objects,
    with their reason text, are made only for the rows asked about (``reasons``,
    ``row_failures``, ``first_failures``). A batch whose every row breaks a check took
    about 60 s and 1 GiB a million rows when each failure was a Python object."""

    def __init__(
        self,
        n_rows: int,
        row_failures: dict[int, list[Failure]] | None = None,
        schema_failures: tuple[Failure, ...] = (),
        cases: pd.DataFrame | None = None,
    ) -> None:
        self.n_rows = n_rows
        if cases is None:
            listed = [*schema_failures, *(f for fs in (row_failures or {}).values() for f in fs)]
            cases = (
                pd.DataFrame(
                    {
                        "row": pd.Series([f.row for f in listed], dtype="int64"),
                        "field": pd.Series([f.field for f in listed], dtype=object),
                        "check": pd.Series([f.check for f in listed], dtype=object),
                        "value": pd.Series([f.value for f in listed], dtype=object),
                    }
                )
                if listed
                else _no_cases()
            )
        self.cases = cases.reset_index(drop=True)
        row = self.cases["row"].to_numpy()
        self._on_rows = self.cases[row >= 0]
        self._whole = self.cases[row < 0]

    @functools.cached_property
    def schema_failures(self) -> tuple[Failure, ...]:
        return tuple(
            _failure(-1, field, check, value)
            for field, check, value in zip(
                self._whole["field"], self._whole["check"], self._whole["value"], strict=True
            )
        )

    @functools.cached_property
    def failed_positions(self) -> np.ndarray:
        """The failed rows' positions, ascending (every row when a schema failure fails
        them all), as int64."""
        if len(self._whole):
            return np.arange(self.n_rows, dtype=np.int64)
        return np.unique(self._on_rows["row"].to_numpy(dtype=np.int64))

    @functools.cached_property
    def failed_rows(self) -> frozenset[int]:
        return frozenset(self.failed_positions.tolist())

    @functools.cached_property
    def row_failures(self) -> dict[int, list[Failure]]:
        """Each failed row's own failures (schema failures aside), rows in the order
        pandera first reported them. Makes a ``Failure`` of every case: for few rows."""
        return _by_row_position(self._on_rows)

    def reasons(self, row: int) -> list[Failure]:
        return list(self.schema_failures) + self.row_failures.get(row, [])

    def row_failures_between(self, lo: int, hi: int) -> dict[int, list[Failure]]:
        """``row_failures`` of the rows at positions ``lo`` to ``hi`` (excluded) only:
        Failure objects for a slice of a large result at a time."""
        rows = self._by_row["row"].to_numpy(dtype=np.int64)
        a, b = np.searchsorted(rows, lo, "left"), np.searchsorted(rows, hi, "left")
        return _by_row_position(self._by_row.iloc[a:b])

    @functools.cached_property
    def _by_row(self) -> pd.DataFrame:
        """The row failure cases by row position, each row's in the order found."""
        return self._on_rows.sort_values("row", kind="stable")

    def counts(self, rows: np.ndarray | None = None) -> Counter[tuple[str | None, str]]:
        """Failures by (field, check): how many times each check failed (a row counts once
        per check it fails; a schema-level failure once). With ``rows`` (a mask over the
        validated rows), only those rows' failures, a schema-level failure once a failed
        row among them."""
        on = self._on_rows
        whole = 1
        if rows is not None:
            on = on[rows[on["row"].to_numpy(dtype=np.int64)]]
            whole = int(rows[self.failed_positions].sum())
        out: Counter[tuple[str | None, str]] = Counter()
        if whole:
            out.update({(f, c): whole for f, c in zip(self._whole["field"], self._whole["check"], strict=True)})
        out.update(zip(on["field"], on["check"], strict=True))
        return out

    def first_failures(self, rows: np.ndarray | None = None) -> list[Failure]:
        """The schema failures, then for each (field, check) the failure of the lowest
        failed row (of ``rows``, a mask over the validated rows, when given)."""
        on = self._on_rows
        if rows is not None:
            on = on[rows[on["row"].to_numpy(dtype=np.int64)]]
        first = on.sort_values("row", kind="stable").drop_duplicates(["field", "check"])
        return [*self.schema_failures] + [
            _failure(int(r), field, check, value)
            for r, field, check, value in zip(
                first["row"], first["field"], first["check"], first["value"], strict=True
            )
        ]

    def examples(self) -> dict[tuple[str | None, str], str]:
        """The first failing value of each (field, check), as ``example`` writes it."""
        order = self._on_rows.groupby("row", sort=False).ngroup()
        on = self._on_rows.assign(_rank=order).sort_values("_rank", kind="stable")
        out: dict[tuple[str | None, str], str] = {}
        for field, check, value in zip(
            [*self._whole["field"], *on["field"]],
            [*self._whole["check"], *on["check"]],
            [*self._whole["value"], *on["value"]],
            strict=True,
        ):
            out.setdefault((field, check), example(value))
        return out

    def summary(self, limit: int = 3) -> str:
        """A one-line account of the most common failures, for error messages, each with
        a value that failed: ``qty: coerce_dtype('int64') (2 rows, e.g. 'ten')``."""
        return summarize(self.counts(), limit, self.examples())


def _by_row_position(cases: pd.DataFrame) -> dict[int, list[Failure]]:
    """The ``Failure`` of each row failure case of ``cases``, by row, in their order."""
    out: dict[int, list[Failure]] = {}
    for row, field, check, value in zip(
        cases["row"].tolist(), cases["field"], cases["check"], cases["value"], strict=True
    ):
        out.setdefault(row, []).append(_failure(row, field, check, value))
    return out


def _failure(row: int, field: str | None, check: str, value: Any) -> Failure:
    """The ``Failure`` of one failure case, with its reason text."""
    reason = f"{check} failed for value {example(value)}"
    return Failure(row, field, check, f"schema: {reason}" if row < 0 else reason, value)


def example(value: Any) -> str:
    """A failing value for a message: text quoted (``'ten'``, its first 40 characters and
    ``…`` when longer, the quotes kept), a time or date in ISO 8601 (``1999-12-31T23:59:59``),
    anything else as Python writes it (``-3``, ``1e+30``), and ``NULL`` for a missing value
    (None, or pandas' NaN, NaT, NA)."""
    import datetime as dt

    if _missing(value):
        return "NULL"
    if isinstance(value, np.generic):  # numpy's scalars write themselves as np.int64(5)
        value = value.item()
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):  # pandas' Timestamp included
        return value.isoformat()
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def summarize(
    counts: Counter[tuple[str | None, str]],
    limit: int = 3,
    examples: dict[tuple[str | None, str], str] | None = None,
) -> str:
    """The ``limit`` most common failures of ``counts`` (``ValidationResult.counts``, or
    several chunks' added up) in one line: ``field: check (N rows, e.g. VALUE); ...``
    (``<table>`` for a failure of the table's shape, such as a missing column); the
    example, from ``examples`` by (field, check), where there is one; then how many other
    (field, check) pairs failed and how many failures they hold, ``and 2 more checks
    (7 failures)``."""
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    parts = []
    for (field, check), n in top:
        seen = (examples or {}).get((field, check))
        rows = f"{n} row{'s' if n != 1 else ''}" + (f", e.g. {seen}" if seen is not None else "")
        parts.append(f"{field or '<table>'}: {check} ({rows})")
    more = len(counts) - len(top)
    if more <= 0:
        return "; ".join(parts)
    failures = sum(counts.values()) - sum(n for _, n in top)
    return "; ".join(parts) + (
        f"; and {more} more check{'s' if more != 1 else ''} ({failures} failure{'s' if failures != 1 else ''})"
    )


# pandera's built-in column checks that judge each value on its own (``Check.name``)
ROW_LOCAL_CHECKS = frozenset(
    {
        "equal_to", "not_equal_to", "greater_than", "greater_than_or_equal_to", "less_than",
        "less_than_or_equal_to", "in_range", "isin", "notin", "str_matches", "str_contains",
        "str_startswith", "str_endswith", "str_length",
    }
)  # fmt: skip


def _builtin(check: Any) -> bool:
    """Whether ``check`` is one of pandera's built-in checks of ``ROW_LOCAL_CHECKS``: its
    function is pandera's dispatcher of that name (a custom check may take any name)."""
    fn = getattr(check, "_check_fn", None)
    return (
        check.name in ROW_LOCAL_CHECKS
        and type(fn).__module__ == "pandera.api.function_dispatch"
        and getattr(fn, "__name__", None) == check.name
    )


class Contract:
    """A loaded contract version for one table."""

    def __init__(self, ref: str, model: type[pa.DataFrameModel]) -> None:
        self.ref = ref
        self.model = model
        self.version = int(getattr(model, "__version__", 1))
        # the class's own deprecations (not inherited: each version says what it deprecates)
        self.deprecated: dict[str, int] = dict(vars(model).get("__deprecated__") or {})
        # and every column this version or one it extends deprecated (a drafted class
        # inherits the field, not its base's __deprecated__): for drift, a column gone
        self.ever_deprecated: frozenset[str] = frozenset(
            c for k in model.__mro__ for c in (vars(k).get("__deprecated__") or {})
        )
        self._arrow_types: dict[str, Any] | None = None
        self._dates: list[str] | None = None

    # The pandera schema is built on first use, not when the run opens: a run with nothing to
    # publish never needs it, and building it costs a large import (pandera's model looks up
    # every installed dataframe library's index type, which imports dask.dataframe when
    # prefect-dask is installed: about half a second).
    @functools.cached_property
    def schema(self) -> pa.DataFrameSchema:
        """The pandera schema of this version (``DataFrameModel.to_schema()``)."""
        return self.model.to_schema()

    @functools.cached_property
    def columns(self) -> list[str]:
        """The contract's column names, in declaration order."""
        return list(self.schema.columns)

    def row_local(
        self, unique_by_key: tuple[str, ...] = (), types: dict[str, Any] | None = None
    ) -> bool:
        """Whether every check of this version judges each row on its own, so rows that
        pass validated a slice at a time pass validated at once
        (``deltaferry/delta.py:validate_rows``): no dataframe-wide or grouped check, only
        pandera's built-in checks of ``ROW_LOCAL_CHECKS`` (the built-in itself, not a custom
        check given its name) or element-wise ones, and no ``unique`` but on the one key
        column (``unique_by_key``: the table's primary key, which the caller guarantees
        unique among the rows validated) where its Arrow type in ``types`` is already the
        contract's (a coercion could make two keys one: "1" and "01" as integers). False
        for anything else, custom checks included."""
        schema = self.schema
        if schema.checks or schema.unique:
            return False
        for name, col in schema.columns.items():
            if col.unique:
                if tuple(unique_by_key) != (name,) or types is None:
                    return False
                if types.get(name) != self.arrow_types().get(name):
                    return False
            for check in col.checks:
                if check.groupby is not None:
                    return False
                if not (check.element_wise or _builtin(check)):
                    return False
        return True

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the schema and version (what manifests and negotiation compare)."""
        return _fingerprint(self.schema, self.version)

    def _decimal_columns(self) -> dict[str, tuple[int, int]]:
        """Columns declared as a ``Decimal(precision, scale)``: their precision and scale."""
        return {
            name: (int(col.dtype.precision), int(col.dtype.scale))
            for name, col in self.schema.columns.items()
            if isinstance(col.dtype, pandera_dtypes.Decimal)
            and col.dtype.precision is not None
            and col.dtype.scale is not None
        }

    def _date_columns(self) -> list[str]:
        """Columns declared as pandera's ``Date``."""
        if self._dates is None:
            from pandera.engines import pandas_engine

            self._dates = [
                name
                for name, col in self.schema.columns.items()
                if isinstance(col.dtype, (pandas_engine.Date, pandera_dtypes.Date))
                and not isinstance(col.dtype, pandera_dtypes.Timestamp)  # a Date subclass
            ]
        return self._dates

    def arrow_types(self) -> dict[str, Any]:
        """The Arrow type of each contract column after coercion (published data follows the
        contract, not the source). A ``Decimal(precision, scale)`` column is
        ``decimal128(precision, scale)`` (``decimal256`` above 38 digits). Columns whose type
        cannot be derived are left out."""
        if self._arrow_types is None:
            import pyarrow as pyarrow_

            types: dict[str, Any] = {}
            for name in self.columns:
                declared = self.schema.columns[name].dtype
                if isinstance(declared, pandera_dtypes.Decimal):  # pandas keeps these as objects
                    p, s = int(declared.precision), int(declared.scale)
                    types[name] = (pyarrow_.decimal128 if p <= 38 else pyarrow_.decimal256)(p, s)
                    continue
                try:
                    dtype = declared.type
                    empty = pd.DataFrame({name: pd.Series([], dtype=dtype)})
                    arrow = pyarrow_.Schema.from_pandas(empty, preserve_index=False)
                    target = arrow.field(name).type
                except Exception:  # noqa: BLE001 - a type we cannot map stays as staged
                    continue
                # object columns (decimals, bytes, anything) infer as null: keep them as staged
                if not pyarrow_.types.is_null(target):
                    types[name] = target
            self._arrow_types = types
        return self._arrow_types

    def staged_types(self) -> dict[str, Any]:
        """``arrow_types`` and the ``Date`` columns as ``date32``: the Arrow type each
        column is staged as, for a column to be made of NULLs or a file's column to be cast
        to (pandas keeps dates as objects, so ``arrow_types`` leaves them out, and a
        missing optional date column failed validation on every run)."""
        return dict.fromkeys(self._date_columns(), pa_.date32()) | self.arrow_types()

    def validate(self, df: pd.DataFrame) -> ValidationResult:
        """Validate lazily; every failure is kept. Schema-level failures fail every row.

        A date column whose values are already ``datetime.date`` objects (an Arrow date) is
        checked without coercion: pandera coerces dates through pandas timestamps, which
        cannot hold dates before 1677 or after 2262, so ``0001-01-01`` and ``9999-12-31``
        would fail although they are exact dates."""
        frame = df.reset_index(drop=True)
        schema = self.schema
        as_dates = [c for c in self._date_columns() if c in frame and _all_dates(frame[c])]
        if as_dates and schema.coerce:
            schema = schema.update_columns(
                {c: {"coerce": c not in as_dates} for c in schema.columns}
            )
            schema.coerce = False
        # decimals that already fit the declared precision and scale (an Arrow decimal of
        # that type): pandera's own check miscounts some (-99999999999999.999999 "does not
        # fit" decimal(20,6)), so the fit is checked here and pandera's dtype check skipped
        exact = []
        for c, (p, sc) in self._decimal_columns().items():
            as_decimals = _decimals(frame[c]) if c in frame else None
            if as_decimals is not None and _all_fit(as_decimals, p, sc):
                exact.append(c)
                frame[c] = as_decimals
        if exact:
            schema = schema.update_columns({c: {"dtype": None, "coerce": False} for c in exact})
        hidden = self._hidden_nulls(frame)
        try:
            schema.validate(frame, lazy=True)
        except SchemaErrors as err:
            return _with(_collect(err, len(frame)), hidden)
        return _with(ValidationResult(len(frame)), hidden)

    def _hidden_nulls(self, frame: pd.DataFrame) -> pd.DataFrame:
        """NULLs in non-nullable boolean columns, which pandera's coercion hides (``None``
        becomes ``False`` before its ``not_nullable`` check runs), so a NULL would pass the
        contract and reach every replica: failure cases, as ``ValidationResult.cases``."""
        found = []
        for name, col in self.schema.columns.items():
            if col.nullable or name not in frame or "bool" not in str(col.dtype).lower():
                continue
            rows = np.flatnonzero(frame[name].isna().to_numpy())
            if len(rows):
                found.append(_cases(rows, name, "not_nullable", [None] * len(rows)))
        return pd.concat(found, ignore_index=True) if found else _no_cases()


def _cases(rows: Any, field: Any, check: Any, values: Any) -> pd.DataFrame:
    """Failure cases (``ValidationResult.cases``) of ``rows``; ``field`` and ``check`` one
    for all or one a row."""
    n = len(rows)

    def column(x: Any) -> pd.Series:
        if isinstance(x, pd.Series):
            return pd.Series(x.to_numpy(dtype=object), dtype=object)
        return pd.Series([x] * n if not isinstance(x, list) else x, dtype=object)

    return pd.DataFrame(
        {
            "row": pd.Series(np.asarray(rows, dtype=np.int64)),
            "field": column(field),
            "check": column(check),
            "value": column(values if isinstance(values, pd.Series) else list(values)),
        }
    )


def _with(result: ValidationResult, more: pd.DataFrame) -> ValidationResult:
    """``result`` with the row failure cases ``more`` added after its own."""
    if not len(more):
        return result
    return ValidationResult(result.n_rows, cases=pd.concat([result.cases, more], ignore_index=True))


def _decimals(column: pd.Series) -> pd.Series | None:
    """The column as ``Decimal`` objects when every value is NULL, a ``Decimal`` or decimal
    text (exact: no float in between), else None."""
    from decimal import Decimal, InvalidOperation

    if column.dtype != object and not pd.api.types.is_string_dtype(column):
        return None
    out: list[Decimal | None] = []
    for v in column:
        if v is None or (isinstance(v, float) and v != v):
            out.append(None)
        elif isinstance(v, Decimal):
            out.append(v)
        elif isinstance(v, str):
            try:
                out.append(Decimal(v.strip()))
            except InvalidOperation:
                return None
        else:
            return None
    return pd.Series(out, index=column.index, dtype=object)


def _all_fit(column: pd.Series, precision: int, scale: int) -> bool:
    """Every value NULL or a finite ``Decimal`` with at most ``scale`` decimals and
    ``precision`` digits in all."""
    from decimal import Decimal

    if column.dtype != object:
        return False
    for v in column:
        if v is None or (isinstance(v, float) and v != v):
            continue
        if not isinstance(v, Decimal) or not v.is_finite():
            return False
        sign, digits, exponent = v.as_tuple()
        decimals = max(0, -int(exponent))
        integer_digits = max(0, len(digits) + int(exponent))
        if decimals > scale or integer_digits > precision - scale:
            return False
    return True


def _all_dates(column: pd.Series) -> bool:
    import datetime as dt

    return column.dtype == object and all(
        v is None or (isinstance(v, dt.date) and not isinstance(v, dt.datetime))
        for v in column
        if not (isinstance(v, float) and v != v)
    )


def _collect(err: SchemaErrors, n_rows: int) -> ValidationResult:
    """pandera's failure cases as a ``ValidationResult``, in pandera's order."""
    found = err.failure_cases
    index = pd.to_numeric(found["index"], errors="coerce") if "index" in found else None
    rows = (
        np.full(len(found), -1, dtype=np.int64)
        if index is None
        else index.fillna(-1).to_numpy(dtype=np.int64)
    )
    column = found["column"] if "column" in found else pd.Series([None] * len(found))
    fields = column.astype(str).astype(object).where(column.notna().to_numpy(), None)
    values = found["failure_case"] if "failure_case" in found else pd.Series([None] * len(found))
    cases = _cases(rows, fields, found["check"].astype(str).astype(object), values)
    return ValidationResult(n_rows, cases=_one_failure_a_null(cases))


def _one_failure_a_null(cases: pd.DataFrame) -> pd.DataFrame:
    """A NULL in a column that may not hold one fails pandera's ``not_nullable`` and, in
    an integer column, its ``coerce_dtype`` and ``dtype`` checks too: one value, three
    failures (a fresh-user trial read it as three problems). Only ``not_nullable`` is kept
    for a (row, field) whose failing value is NULL; other failures are kept as they are."""
    is_null_check = (cases["check"] == "not_nullable").to_numpy()
    on_rows = cases["row"].to_numpy() >= 0
    if not (is_null_check & on_rows).any():
        return cases
    pairs = cases["row"].astype(str) + "\x1f" + cases["field"].map(repr)
    nulls = set(pairs[is_null_check & on_rows])
    missing = cases["value"].map(_missing).to_numpy(dtype=bool)
    drop = on_rows & ~is_null_check & missing & pairs.isin(nulls).to_numpy()
    return cases[~drop].reset_index(drop=True)


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array: not one value
        return False


def _fingerprint(schema: pa.DataFrameSchema, version: int) -> str:
    desc: dict[str, Any] = {
        "version": version,
        "strict": str(schema.strict),
        "coerce": bool(schema.coerce),
        "columns": {
            name: {
                "dtype": str(col.dtype),
                "nullable": bool(col.nullable),
                "unique": bool(col.unique),
                "checks": sorted(str(c) for c in col.checks),
            }
            for name, col in sorted(schema.columns.items())
        },
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


class MigrationError(ValueError):
    """A migration cannot take these rows to the other version (information would be lost)."""


class Chain:
    """The versions of one table's contract, oldest first, and the migrations between them."""

    def __init__(self, *models: type[pa.DataFrameModel]) -> None:
        if not models:
            raise ValueError("a contract chain needs at least one version")
        self.models = {int(getattr(m, "__version__", 1)): m for m in models}
        numbers = [int(getattr(m, "__version__", 1)) for m in models]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise ValueError(
                f"contract chain versions must be consecutive, oldest first: {numbers}"
            )
        self.ref = ""
        self._contracts: dict[int, Contract] = {}

    @property
    def versions(self) -> list[int]:
        return sorted(self.models)

    @property
    def latest(self) -> int:
        return max(self.models)

    def contract(self, version: int | None = None) -> Contract:
        v = self.latest if version is None else version
        if v not in self.models:
            raise ConfigError(
                f"contract {self.ref} has no version {v} (versions: "
                f"{', '.join(f'v{n}' for n in self.versions)})"
            )
        if v not in self._contracts:
            ref = self.ref if v == self.latest else f"{self.ref}@v{v}"
            self._contracts[v] = Contract(ref, self.models[v])
        return self._contracts[v]

    def named(self, ref: str) -> Chain:
        """This chain under the reference a jobs file gives it (its own contract cache)."""
        chain = Chain(*(self.models[v] for v in self.versions))
        chain.ref = ref
        return chain

    def migration(self, version: int, name: str) -> Any:
        """A version's own ``upgrade`` or ``downgrade`` (never one inherited from the version
        it extends: that would run the earlier step again), or None."""
        model = self.models[version]
        return getattr(model, name) if name in vars(model) else None

    def reachable(self, start: int, target: int) -> bool:
        """Whether rows at ``start`` can be migrated to ``target`` (downgrades may be missing)."""
        if target >= start:
            return all(self.migration(v, "upgrade") for v in range(start + 1, target + 1))
        return all(self.migration(v, "downgrade") for v in range(target + 1, start + 1))

    def steps(self, start: int, target: int) -> list[str]:
        """The migrations from ``start`` to ``target``, by name, for logs and manifests."""
        if target >= start:
            return [f"v{v - 1}->v{v} upgrade" for v in range(start + 1, target + 1)]
        return [f"v{v}->v{v - 1} downgrade" for v in range(start, target, -1)]

    def migrate(self, frame: pd.DataFrame, start: int, target: int) -> pd.DataFrame:
        """Take ``frame`` (data columns at version ``start``) to version ``target``."""
        n = len(frame)
        if target >= start:
            for v in range(start + 1, target + 1):
                fn = self.migration(v, "upgrade")
                if fn is None:
                    raise MigrationError(f"{self.models[v].__name__} has no upgrade from v{v - 1}")
                frame = fn(frame.copy())
        else:
            for v in range(start, target, -1):
                fn = self.migration(v, "downgrade")
                if fn is None:
                    raise MigrationError(
                        f"{self.models[v].__name__} has no downgrade to v{v - 1}: going back "
                        "would lose information"
                    )
                frame = fn(frame.copy())
        if len(frame) != n:
            raise MigrationError(f"migration v{start}->v{target} changed the number of rows")
        return frame.reset_index(drop=True)

    def migrate_rows(
        self, frame: pd.DataFrame, start: int, target: int
    ) -> tuple[pd.DataFrame, list[int], list[Failure]]:
        """``migrate``, row by row where a migration refuses some rows: ``(migrated, kept,
        failures)``. ``migrated`` holds the rows every step took (data columns at
        ``target``, in order), ``kept`` their positions in ``frame``, and ``failures`` one
        ``Failure`` per refused row (``row``: position in ``frame``; ``check``: the step,
        e.g. ``v2->v1 downgrade``; ``reason``: the ``MigrationError``'s message; ``field``:
        the column whose value, set to NULL, lets the row through, else None). A step that
        refuses a whole frame is retried on halves until the refused rows are alone (about
        2 x refused x log2(rows) calls). Errors other than ``MigrationError`` (a migration
        that does not run at all) propagate, and so does a missing migration."""
        if not self.reachable(start, target):
            steps = ", ".join(self.steps(start, target))
            raise MigrationError(
                f"v{target} cannot be reached from v{start} ({steps}: a migration is missing)"
            )
        up = target >= start
        versions = range(start + 1, target + 1) if up else range(start, target, -1)
        kept = list(range(len(frame)))
        frame = frame.reset_index(drop=True)
        failures: list[Failure] = []
        for v in versions:
            if not kept:  # every row refused: nothing left to migrate
                break
            fn = self.migration(v, "upgrade" if up else "downgrade")
            check = f"v{v - 1}->v{v} upgrade" if up else f"v{v}->v{v - 1} downgrade"
            frame, kept, refused = _migrate_step(fn, check, frame, kept)
            failures += refused
        return frame, kept, sorted(failures, key=lambda f: f.row)

    def migrate_arrow(
        self, data: pa_.Table, start: int, target: int, types: dict[str, Any] | None = None
    ) -> pa_.Table:
        """``migrate`` for an Arrow table, keeping types exact: integers with NULLs stay
        integers (no float round trip), and every column gets the type the target contract
        (or ``types``) gives it, else the type it had; no pandas metadata, so the same rows
        give the same bytes whatever pandas version ran the migration."""
        import pyarrow.compute as pc

        frame = data.to_pandas(integer_object_nulls=True, date_as_object=True)
        out = pa_.Table.from_pandas(self.migrate(frame, start, target), preserve_index=False)
        wanted = {**self.contract(target).arrow_types(), **(types or {})}
        before = {f.name: f.type for f in data.schema}
        columns = []
        for field in out.schema:
            column = out[field.name]
            to = wanted.get(field.name, before.get(field.name))
            if to is not None and field.type != to:
                try:
                    column = pc.cast(column, to)
                except (pa_.ArrowInvalid, pa_.ArrowNotImplementedError) as e:
                    raise MigrationError(
                        f"column '{field.name}' comes out of v{start}->v{target} as {field.type} "
                        f"and cannot be {to}: {e}"
                    ) from None
            columns.append(column)
        return pa_.table(columns, names=out.column_names)


def _migrate_step(
    fn: Any, check: str, frame: pd.DataFrame, rows: list[int]
) -> tuple[pd.DataFrame, list[int], list[Failure]]:
    """One migration step over ``frame`` (whose rows are ``rows`` of the original), halving
    where it raises ``MigrationError``: (the rows it took, their positions, the refused)."""

    def run(part: pd.DataFrame) -> pd.DataFrame:
        out = fn(part.copy())
        if len(out) != len(part):
            raise MigrationError(f"{check} changed the number of rows")
        return out.reset_index(drop=True)

    try:
        return run(frame), rows, []
    except MigrationError as e:
        if len(frame) > 1:
            half = len(frame) // 2
            a, rows_a, fails_a = _migrate_step(fn, check, frame.iloc[:half], rows[:half])
            b, rows_b, fails_b = _migrate_step(fn, check, frame.iloc[half:], rows[half:])
            parts = [p for p, r in ((a, rows_a), (b, rows_b)) if r]
            taken = pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]
            return taken, rows_a + rows_b, fails_a + fails_b
        fields = []
        for column in frame.columns:  # which value makes the row fail: without it, it passes
            if frame[column].isna().all():
                continue
            trial = frame.copy()
            trial[column] = None
            try:
                run(trial)
            except Exception:  # noqa: BLE001 - still refused (or broken) without this value
                continue
            fields.append(str(column))
        found: list[str | None] = [*fields] or [None]
        return frame.iloc[:0], [], [Failure(rows[0], f, check, str(e)) for f in found]


def load_chain(ref: str, *, where: str) -> Chain:
    """Import ``module:Name`` (a Chain, or one DataFrameModel: a chain of one version); a bad
    reference is a ConfigError naming ``where``."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as e:  # ValueError: a Chain of versions out of order
        gone = e.name if isinstance(e, ModuleNotFoundError) else None  # the module not found
        missing = gone is not None and (module_name + ".").startswith(gone + ".")
        advice = (
            " (a contract module is imported like any Python module: install it into "
            "deltaferry's environment, or put the directory that holds it on PYTHONPATH)"
            if missing
            else ""
        )
        raise ConfigError(
            f"{where}: contract module '{module_name}' cannot be imported: {e}{advice}"
        ) from None
    found = getattr(module, attr, None)
    if isinstance(found, Chain):
        return found.named(ref)
    if isinstance(found, type) and issubclass(found, pa.DataFrameModel):
        return Chain(found).named(ref)
    raise ConfigError(
        f"{where}: contract '{ref}' is not a pandera DataFrameModel or a contracts.Chain"
    )


def load_contract(ref: str, *, where: str) -> Contract:
    """The newest version of the contract ``module:Name``."""
    return load_chain(ref, where=where).contract()
