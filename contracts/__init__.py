"""Data contracts: pandera ``DataFrameModel`` classes, one chain of versions per table.

A table's contract is named in the jobs file as ``module:Class``. The class may
set ``__version__`` (default 1). ``Contract.validate`` splits a batch into rows
that pass and rows that go to quarantine, with field, check and reason for each.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from deltaferry.errors import ConfigError


@dataclass(frozen=True)
class Failure:
    """One reason a row failed its contract."""

    row: int  # positional index into the validated frame
    field: str | None
    check: str
    reason: str


@dataclass(frozen=True)
class ValidationResult:
    """Which rows failed and why. Schema-level failures (a missing or extra column,
    a type that cannot be coerced) apply to every row."""

    n_rows: int
    row_failures: dict[int, list[Failure]]
    schema_failures: tuple[Failure, ...]

    @property
    def failed_rows(self) -> frozenset[int]:
        if self.schema_failures:
            return frozenset(range(self.n_rows))
        return frozenset(self.row_failures)

    def reasons(self, row: int) -> list[Failure]:
        return list(self.schema_failures) + self.row_failures.get(row, [])

    def summary(self, limit: int = 3) -> str:
        """A one-line account of the most common failures, for error messages."""
        counts: dict[tuple[str | None, str], int] = {}
        for f in list(self.schema_failures) + [f for fs in self.row_failures.values() for f in fs]:
            counts[(f.field, f.check)] = counts.get((f.field, f.check), 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
        return "; ".join(f"{field or '<table>'}: {check} x{n}" for (field, check), n in top)


class Contract:
    """A loaded contract version for one table."""

    def __init__(self, ref: str, model: type[pa.DataFrameModel]) -> None:
        self.ref = ref
        self.model = model
        self.schema = model.to_schema()
        self.version = int(getattr(model, "__version__", 1))
        self.columns = list(self.schema.columns)
        self.fingerprint = _fingerprint(self.schema, self.version)
        self._arrow_types: dict[str, Any] | None = None

    def arrow_types(self) -> dict[str, Any]:
        """The Arrow type of each contract column after coercion (published data follows the
        contract, not the source). Columns whose type cannot be derived are left out."""
        if self._arrow_types is None:
            import pyarrow as pyarrow_

            types: dict[str, Any] = {}
            for name in self.columns:
                try:
                    dtype = self.schema.columns[name].dtype.type
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

    def validate(self, df: pd.DataFrame) -> ValidationResult:
        """Validate lazily; every failure is kept. Schema-level failures fail every row."""
        frame = df.reset_index(drop=True)
        try:
            self.schema.validate(frame, lazy=True)
        except SchemaErrors as err:
            return _collect(err, len(frame))
        return ValidationResult(len(frame), {}, ())


def _collect(err: SchemaErrors, n_rows: int) -> ValidationResult:
    row_failures: dict[int, list[Failure]] = {}
    schema_failures: list[Failure] = []
    for rec in err.failure_cases.to_dict("records"):
        idx = rec.get("index")
        field = rec.get("column")
        field = (
            None if field is None or (isinstance(field, float) and pd.isna(field)) else str(field)
        )
        check = str(rec.get("check"))
        reason = f"{check} failed for value {rec.get('failure_case')!r}"
        if idx is None or (isinstance(idx, float) and pd.isna(idx)):
            schema_failures.append(Failure(-1, field, check, f"schema: {reason}"))
        else:
            row_failures.setdefault(int(idx), []).append(Failure(int(idx), field, check, reason))
    return ValidationResult(n_rows, row_failures, tuple(schema_failures))


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


def load_contract(ref: str, *, where: str) -> Contract:
    """Import ``module:Class`` and wrap it; a bad reference is a ConfigError naming ``where``."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{where}: contract module '{module_name}' cannot be imported: {e}"
        ) from None
    model = getattr(module, attr, None)
    if not (isinstance(model, type) and issubclass(model, pa.DataFrameModel)):
        raise ConfigError(f"{where}: contract '{ref}' is not a pandera DataFrameModel")
    return Contract(ref, model)
