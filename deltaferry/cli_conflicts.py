"""``deltaferry conflicts``: list conflicts and hotspots of a replica; pin a key by override.

Registered on the main command group by ``deltaferry/cli.py`` (``register``); the helpers
it shares with the other commands (one-line errors, report tables) are in ``cli_common.py``.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from deltaferry.cli_common import config_option, emit, new_report, one_line_errors, out


class _JobFirstGroup(click.Group):
    """``conflicts JOB`` lists; ``conflicts override JOB ...`` pins. A first argument that is
    not a subcommand is the job of the default ``show`` command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


def register(ui: ModuleType) -> None:
    @ui.cli.group("conflicts", cls=_JobFirstGroup)
    def conflicts() -> None:
        """Conflicts between producers of a job's tables (jobs with multi_producer = true).

        `deltaferry conflicts JOB --replica R` lists them with hotspots;
        `deltaferry conflicts override JOB ...` pins a key's winner for every reader."""

    @conflicts.command("show")
    @click.argument("job")
    @click.option(
        "--replica", type=click.Path(dir_okay=False), required=True, help="Replica DuckDB file."
    )
    @click.option("--table", default=None, help="Only this table.")
    @click.option("--limit", default=20, show_default=True, help="Records and hotspot rows shown.")
    @config_option
    @one_line_errors
    def show(job: str, replica: str, table: str | None, limit: int, config: str | None) -> None:
        """List the conflicts a replica recorded (newest first) and where they concentrate."""
        from deltaferry import duck
        from deltaferry.config import load_job
        from deltaferry.conflicts import (
            conflict_rows,
            has_conflict_table,
            hotspots,
            newest,
            version_text,
        )
        from deltaferry.errors import ConfigError

        cfg = load_job(job, config)
        if table:
            cfg.table(table)
        path = Path(replica)
        if not path.exists():
            raise ConfigError(f"job '{job}': replica {path} does not exist; run `deltaferry pull`")
        con = duck.connect_replica(path, read_only=True)
        try:
            if not has_conflict_table(con):
                raise ConfigError(
                    f"job '{job}': replica {path} holds no merged chains (is multi_producer "
                    "set, and has `deltaferry pull` run?)"
                )
            rows = conflict_rows(con, job, table)
            spots = hotspots(con, job, limit)
        finally:
            con.close()
        report = new_report(
            "table", "key", "winner", "loser", "rule", "logical time", title=f"conflicts {job}"
        )
        from deltaferry import hlc

        for r in newest(rows, limit):
            report.add_row(
                r[0],
                r[1],
                version_text(r[2], r[3], r[5], r[6]),
                version_text(r[7], r[8], r[10], r[11]),
                r[12],
                hlc.describe(r[14]),
            )
        emit(report)
        out.print(f"{len(rows)} conflict records")
        if table is None:
            for name, found in spots.items():
                hot = new_report(name, "conflicts", title=f"hotspots: {name}")
                for r in found:
                    hot.add_row(" ".join(str(x) for x in r[:-1]), str(r[-1]))
                emit(hot)

    @conflicts.command("override")
    @click.argument("job")
    @click.option("--table", required=True, help="The table of the key.")
    @click.option(
        "--key",
        required=True,
        help="The key as typed (a one-column key is taken as is); a composite key as 'v1,v2' "
        "in key order, or as a JSON array '[\"v1\", \"v2\"]' when a value holds a ','.",
    )
    @click.option("--producer", default=None, help="Pin the key to this producer's newest version.")
    @click.option("--value", default=None, help="Pin the key to this row (a JSON object).")
    @click.option("--delete", "delete", is_flag=True, help="Pin the key to a delete.")
    @click.option("--remove", is_flag=True, help="End the key's override: automatic rule again.")
    @click.option("--reason", required=True, help="Why (kept in the lake and operations log).")
    @click.option("--by", default=None, help="Who (default: user@host).")
    @config_option
    @one_line_errors
    def override(
        job: str,
        table: str,
        key: str,
        producer: str | None,
        value: str | None,
        delete: bool,
        remove: bool,
        reason: str,
        by: str | None,
        config: str | None,
    ) -> None:
        """Pin the winner of one key for every reader, from their next pull on, until removed."""
        from deltaferry.config import load_job
        from deltaferry.errors import ConfigError
        from deltaferry.keys import Keyring
        from deltaferry.overrides import write_override
        from deltaferry.state import StateStore
        from destinations.lake import open_lake

        cfg = load_job(job, config)
        t = cfg.table(table)
        where = f"job '{job}' table '{table}' key '{key}'"
        if not cfg.multi_producer:
            raise ConfigError(
                f"job '{job}' has a single producer (multi_producer is not set): there is "
                "nothing to override"
            )
        if sum([producer is not None, value is not None, delete, remove]) != 1:
            raise ConfigError(
                f"{where}: give exactly one of --producer, --value, --delete, --remove"
            )
        from deltaferry.merge_tables import key_text

        try:
            stored_key = key_text(list(t.primary_key), key)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        _check_key_values(t, stored_key, where)
        state = StateStore(job)  # opened first: a locked state file stops before the lake
        lake = open_lake(cfg.lake, base=cfg.base_dir)
        lake.check()
        row = None
        if producer is not None:
            from deltaferry.verify import producers

            known = producers(lake, job, table)
            if producer not in known:
                raise ConfigError(
                    f"{where}: producer '{producer}' has published nothing for this table "
                    f"(producers: {', '.join(known) or 'none'})"
                )
        if value is not None:
            typed = json.loads(stored_key) if len(t.primary_key) > 1 else [key]
            row = _checked_value(t, typed, value, where)
        entry = write_override(
            lake,
            job,
            table,
            key=stored_key,
            action="remove" if remove else "pin",
            producer=producer,
            value=row,
            delete=delete,
            by=by,
            reason=reason,
            keyring=Keyring(),
        )
        what = (
            "override removed"
            if remove
            else f"pinned to producer '{producer}'"
            if producer
            else "pinned to a delete"
            if delete
            else f"pinned to value {json.dumps(row, sort_keys=True, ensure_ascii=False)}"
        )
        detail = f"{where}: {what} (override #{entry['n']} by {entry['by']}: {entry['reason']})"
        state.log(f"override-{entry['n']}", "override", "info", table=table, detail=detail)
        out.print(detail, highlight=False, soft_wrap=True)


# an integer as the replica writes a key (``merge_tables.key_expr``: CAST(... AS VARCHAR))
_INTEGER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")


def _in_range(n: int, dtype: str) -> bool:
    """Whether the integer ``n`` fits the numpy integer type ``dtype`` (``int64``, ``uint8``)."""
    import numpy as np

    try:
        info = np.iinfo(dtype)
    except (TypeError, ValueError):  # not a numpy integer type name: not checked here
        return True
    return int(info.min) <= n <= int(info.max)


def _check_key_values(t: Any, stored_key: str, where: str) -> None:
    """Refuse a key no row can have: a value of an integer key column that is not an
    integer as the replica writes it (``x``, `` 1``, ``01``, ``1.0``, ``None``). Such a
    pin would be written to the lake's log for good and never match (a fresh-user trial).
    Raises ConfigError naming the column."""
    from contracts import load_contract
    from deltaferry.errors import ConfigError

    if not t.contract:  # no contract: the key columns' types are not known here
        return
    pk = list(t.primary_key)
    parts = json.loads(stored_key) if len(pk) > 1 else [stored_key]
    columns = load_contract(t.contract, where=where).schema.columns
    for column, part in zip(pk, parts, strict=True):
        dtype = str(columns[column].dtype).lower() if column in columns else ""
        if dtype.startswith(("int", "uint")) and not (
            _INTEGER_TEXT.fullmatch(part) and _in_range(int(part), dtype)
        ):
            raise ConfigError(
                f"{where}: key column '{column}' holds integers ({dtype}), and {part!r} is not "
                "one as the replica writes it (digits, a leading '-' only, no spaces or "
                "leading zeros, within the type's range); no row can have this key"
            )


def _checked_value(t: Any, key: list[str], value: str, where: str) -> dict[str, Any]:
    """The row of a value override: a JSON object of every contract column but the key
    (which comes from --key; a NULL given as null) that passes the contract."""
    import pandas as pd

    from contracts import load_contract
    from deltaferry.errors import ConfigError

    try:
        # numbers exactly as typed (a float would round 0.1000000000000000055 to 0.1, and
        # 1e400 to Infinity, before anything is checked); NaN and Infinity are no JSON
        row = json.loads(value, parse_float=Decimal, parse_constant=_no_constant)
    except ValueError as e:
        raise ConfigError(f"{where}: --value is not JSON: {e}") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: --value must be a JSON object of column values")
    contract = load_contract(t.contract, where=where)
    unknown = set(row) - set(contract.columns)
    if unknown:
        raise ConfigError(
            f"{where}: --value has column(s) {', '.join(sorted(unknown))} that contract "
            f"{contract.ref} does not have"
        )
    full = dict(row)
    for column, part in zip(t.primary_key, key, strict=True):
        if column in full and str(full[column]) != part:
            raise ConfigError(f"{where}: --value sets key column '{column}' to another value")
        full[column] = part
    exact = _exact_row(contract, {c: v for c, v in row.items() if c not in t.primary_key}, where)
    full.update(exact)
    frame = pd.DataFrame([{c: full.get(c) for c in contract.columns}])
    result = contract.validate(frame)
    if result.failed_rows:
        raise ConfigError(
            f"{where}: --value breaks contract {contract.ref} v{contract.version}: "
            f"{result.summary()}"
        )
    missing = [c for c in contract.columns if c not in full]
    if missing:  # the value replaces the row: a column left out would become NULL unasked
        raise ConfigError(
            f"{where}: --value has no {', '.join(repr(c) for c in missing)}: it replaces the "
            "whole row (it does not patch it), so give every column, null for a NULL"
        )
    return {c: v for c, v in full.items() if c not in t.primary_key}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _exact_row(contract: Any, row: dict[str, Any], where: str) -> dict[str, Any]:
    """The row of a value override as it is written to the log, every value exactly what
    its column will hold, or ConfigError naming the column. ``row``: parsed with decimal
    numbers as ``Decimal``. Each value must be of its column's kind (a JSON number for a
    number, quoted text for text and times, true/false for a boolean) and fit it without
    rounding: an integer in its type's range; a float finite and, if integral, exact; a
    decimal with no more digits than its scale and precision keep (written as a JSON number
    when a float keeps it exactly, else as quoted text, which every reader casts exactly);
    a time with at most microseconds; a date without a time. Then the replicas' own check
    (``merge_tables.unfit_pinned_values``, strict) on what is written: pandera would coerce
    ``true`` or ``3.5`` into an integer column, and a reader would pin a value nobody typed."""
    import math
    from decimal import InvalidOperation, localcontext

    import duckdb

    from deltaferry.errors import ConfigError
    from deltaferry.merge_tables import unfit_pinned_values
    from deltaferry.overrides import value_types

    types = value_types(contract, row)
    out = dict(row)

    def refuse(column: str, why: str) -> ConfigError:
        shown = json.dumps(row[column], default=str, ensure_ascii=False)
        return ConfigError(
            f"{where}: --value gives '{column}' {shown}, which its {types[column]} column cannot "
            f"hold exactly ({why})"
        )

    for column, duck in types.items():
        v = row[column]
        if v is None:
            continue
        family = duck.split("(")[0].split(" ")[0]
        number = isinstance(v, (int, Decimal)) and not isinstance(v, bool)
        if family in ("FLOAT", "DOUBLE"):
            if not number:
                raise refuse(column, "give a JSON number")
            f = float(v)
            if not math.isfinite(f) or (f == 0 and v != 0) or (isinstance(v, int) and int(f) != v):
                raise refuse(column, "a float cannot keep it")
            out[column] = f
        elif family == "DECIMAL":
            d = Decimal(v) if number else None
            scale = int(duck.split(",")[1].rstrip(")")) if "," in duck else 0
            with localcontext() as exact:
                exact.prec = 100  # a quantize within any DECIMAL's 38 digits never rounds
                try:
                    fits = d is not None and d.is_finite() and d == d.quantize(Decimal(1).scaleb(-scale))
                except InvalidOperation:  # more digits than any DECIMAL has
                    fits = False
            if not fits or d is None:
                raise refuse(column, f"give a JSON number with at most {scale} decimals, within the type")
            out[column] = float(d) if Decimal(repr(float(d))) == d else format(d, "f")
        elif family == "DATE" and not (isinstance(v, str) and re.fullmatch(r"-?\d{4,}-\d\d-\d\d", v)):
            raise refuse(column, "give the date as quoted text, 2026-12-31, without a time")
        elif family.startswith("TIMESTAMP") and isinstance(v, str):
            digits = re.search(r"[T ]\d\d:\d\d:\d\d\.(\d+)", v)
            if digits and len(digits.group(1).rstrip("0")) > 6:
                raise refuse(column, "times are kept to the microsecond")
        elif isinstance(v, Decimal):  # a fraction for any other column: no exact fit
            out[column] = float(v)
    con = duckdb.connect()
    try:
        unfit = unfit_pinned_values(
            con, "SELECT 1 AS n, ?::VARCHAR AS value_json", types, [json.dumps(out)], strict=True
        )
    finally:
        con.close()
    if unfit:
        column = unfit[0][1]
        raise refuse(
            column,
            "a number for a number column, quoted text for text, dates and times as quoted "
            "ISO 8601 text, true/false for a boolean",
        )
    return out
