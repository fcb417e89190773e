"""What a reader knows, and what it does with a batch published at a newer contract version.

A reader knows the contract versions its own code has (the job's contract for the table,
and every version before it). Meeting a batch published at a newer version, it follows
its policy (a batch at a version it has must carry that version's fingerprint, else
``FingerprintError`` stops the pull before the batch is applied, whatever the policy):

- ``strict`` (default): it stops with an error naming both versions; nothing of that
  batch is applied (the batches before it are).
- ``partial``: it applies the columns it knows (the key must be among them) and records a
  caution on the batch in the replica (``_deltaferry_batches.caution``, or
  ``_deltaferry_chains.caution`` for several producers) saying what it left out; or, when
  the chain the batch was published with is importable here, names both versions'
  fingerprints and has the downgrades, it takes the batch down to its own version.

A column of the reader's version that a batch lacks never overwrites the replica: keys it
holds keep their stored value, and new keys without a value the version requires are held
back for this reader (``Reading.keep_known``); the caution names both.

Each pull records the reader in the lake, ``<job>/<table>/consumers/<id>.json``: the
versions it reads, its policy, when it was last seen and where it is, so producers and
``deltaferry contracts list`` know who reads what. A pull that stops at a batch it cannot
apply (``VersionError``, a fingerprint mismatch included) records that too (``stuck``: the
error and when): producers stop holding the contract version back for that reader, since
it cannot get past the batch anyway. Its next pull that does not stop (after upgrading
its contracts) writes the record without ``stuck``, and it counts again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts import Contract
from deltaferry import duck
from deltaferry.delta import OP_COLUMN, SEQ_COLUMN
from deltaferry.duck import ident
from deltaferry.errors import TerminalError
from destinations.manifest import ContractRef, Manifest

POLICIES = ("strict", "partial")


class VersionError(TerminalError):
    """A batch is published at a contract version newer than a strict reader knows."""


class ContractChangeRefused(VersionError):
    """The reader's own contract changed to one its replica's stored rows cannot be taken to
    (``reader_contract.hold_reader_contract``): the table stops, and the reader's record in the
    lake says so (``stuck``), so producers do not hold a version back for it."""


class FingerprintError(VersionError):
    """A batch is published at a version this reader has, but that version's contract is
    another one (its fingerprint differs): the same number names two contracts."""


@dataclass(frozen=True)
class Admitted:
    """A batch as a reader applies it (``Reading.admit``)."""

    data: pa.Table  # the rows to apply (``_op``, ``_seq`` and the columns this reader has)
    caution: str | None  # what a partial read left out, kept or held back; None when exact
    held: int = 0  # rows held back for this reader (read again when its contract changes)


@dataclass
class Reading:
    """One table as a reader knows it."""

    job: str
    table: str
    contract: Contract
    primary_key: list[str]
    policy: str = "strict"
    chain: Any = None  # the reader's contracts.Chain: batches at older versions are upgraded
    newest_read: int = 0  # the newest contract version this pull applied
    stuck: str | None = None  # the VersionError this pull stopped at, one line
    warning: str | None = None  # the reader's record could not be written

    @property
    def known(self) -> int:
        return self.contract.version

    @property
    def first(self) -> int:
        """The oldest version this reader reads: its chain's first; a contract of one
        version reads every earlier version as published (a column the batch lacks keeps
        the stored value: ``keep_known``)."""
        if self.chain is not None and len(self.chain.versions) > 1:
            return self.chain.versions[0]
        return 1

    @property
    def supports(self) -> list[int]:
        return list(range(self.first, self.known + 1))

    def admit(
        self,
        batch: int,
        manifest: Manifest,
        data: pa.Table,
        producer: str | None = None,
        also: pa.Table | None = None,
        replica: Any = None,
    ) -> Admitted:
        """The batch's data as this reader applies it (``Admitted``: the rows, a caution
        when read partially, how many rows were held back). Raises VersionError when the
        batch is newer than a strict reader knows, or when rows a migration produced break
        this reader's contract under ``strict``; FingerprintError when the batch is
        published at a version this reader has under another fingerprint. A batch
        published at two versions (``also``) is read at the newer one this reader knows.

        With ``replica`` (the replica's DuckDB connection), a column of this reader's
        contract that the batch lacks never overwrites what the replica holds
        (``keep_known``): rows of keys the replica has keep their stored value, rows of
        new keys without a value the contract requires are held back, and a column no row
        has a value for is carried as NULL of the contract's type (the replica's table
        always has every column of its contract).

        Rows that did not arrive exactly at this reader's version (upgraded, taken down,
        read partially, or an older version read as published) are validated against this
        reader's contract: under ``partial`` the rows that break it are held back (the
        caution names them), under ``strict`` the batch stops (``VersionError``). Held-back
        rows are read again when the reader's contract changes (``replica.pull``)."""
        data, caution, version, exact = self._read(batch, manifest, data, producer, also)
        held = 0
        if replica is not None:
            data, caution, held = self.keep_known(replica, version, data, caution)
        if not exact:
            data, caution, broke = self._own_rules(batch, version, data, caution, producer)
            held += broke
        return Admitted(data, caution, held)

    def _own_rules(
        self, batch: int, version: int, data: pa.Table, caution: str | None, producer: str | None
    ) -> tuple[pa.Table, str | None, int]:
        """Validate the upserts of ``data`` against this reader's contract (the columns it
        has; deletes carry only a key). Returns (data without the rows that break it,
        caution, how many); raises VersionError under ``strict``."""
        cols = [c for c in self.contract.columns if c in data.column_names]
        upsert = pc.equal(data[OP_COLUMN], "upsert") if OP_COLUMN in data.column_names else None
        rows = data if upsert is None else data.filter(upsert)
        if rows.num_rows == 0:
            return data, caution, 0
        from deltaferry.delta import validate_rows

        result = validate_rows(self.contract, rows.select(cols))
        failed = result.failed_positions
        if not len(failed):
            return data, caution, 0
        chain = f" producer '{producer}'" if producer else ""
        what = (
            f"{len(failed)} row(s) published at v{version} break this reader's "
            f"v{self.known} ({self.contract.ref}) once read ({result.summary()})"
        )
        if self.policy == "strict":
            raise VersionError(
                f"job '{self.job}' table '{self.table}'{chain} batch {batch}: {what}; nothing of "
                "the batch was applied. Fix the chain's migration (or the contract) and pull again"
            )
        bad = rows.take(pa.array(failed))
        keys = [
            ",".join(f"{k}={bad[k][i].as_py()}" for k in self.primary_key)
            for i in range(min(bad.num_rows, 5))
        ]
        more = f" and {bad.num_rows - 5} more" if bad.num_rows > 5 else ""
        keep = np.ones(data.num_rows, dtype=bool)
        positions = (
            np.arange(data.num_rows)
            if upsert is None
            else np.flatnonzero(upsert.to_numpy(zero_copy_only=False))
        )
        keep[positions[failed]] = False
        data = data.filter(pa.array(keep))
        note = f"held back {what}: {'; '.join(keys)}{more}"
        base = caution or f"published at contract v{version}, read as v{self.known}"
        return data, f"{base}; {note}", len(failed)

    def copy_to_read(
        self, batch: int, manifest: Manifest, producer: str | None = None
    ) -> tuple[str, Manifest]:
        """Which copy of a batch this reader reads: ``"primary"``, or ``"also"`` for a
        dual-published batch whose newer version it knows; and the manifest as ``admit``
        is to see it for that copy's rows (a streamed pull admits each file of the copy
        alone). Raises FingerprintError when either copy is published at a version this
        reader has under another fingerprint."""
        published = manifest.contract
        second = manifest.also
        self._same_contract(batch, published, producer)
        if second is None:
            return "primary", manifest
        self._same_contract(batch, second.contract, producer)
        if published.version < second.contract.version <= self.known:
            return "also", manifest.model_copy(update={"contract": second.contract, "also": None})
        return "primary", manifest.model_copy(update={"also": None})

    def _read(
        self,
        batch: int,
        manifest: Manifest,
        data: pa.Table,
        producer: str | None,
        also: pa.Table | None,
    ) -> tuple[pa.Table, str | None, int, bool]:
        """``admit`` without the replica: (data, caution, the version read, whether the rows
        arrived exactly at this reader's contract, so need no validation here)."""
        published = manifest.contract
        version = published.version
        second = manifest.also
        self._same_contract(batch, published, producer)
        if second is not None:
            self._same_contract(batch, second.contract, producer)
        if second is not None and also is not None:
            newer = second.contract.version
            if version < newer <= self.known:
                published, version, data = second.contract, newer, also
        self._conforms(batch, manifest, published, data, producer)
        first = self.first
        chained = self.chain is not None and len(self.chain.versions) > 1
        if chained and first <= version < self.known:
            self.newest_read = max(self.newest_read, version)
            return self._upgrade(batch, data, version, producer), None, version, False
        if first <= version <= self.known:  # its own version, or (one version) any older one
            self.newest_read = max(self.newest_read, version)
            return data, None, version, version == self.known
        if version < first:  # older than anything this reader's chain can upgrade
            self.newest_read = max(self.newest_read, version)
            return (
                data,
                (
                    f"published at contract v{version}, older than this reader's first version "
                    f"v{first}: applied as published"
                ),
                version,
                True,
            )
        chain = f" producer '{producer}'" if producer else ""
        where = f"job '{self.job}' table '{self.table}'{chain} batch {batch}"
        refusal = manifest.downgrade_refused
        why = (
            f" (the producer's rows cannot be taken down to v{refusal.to}: {refusal.reason})"
            if refusal is not None
            else ""
        )
        if self.policy == "strict":
            raise VersionError(
                f"{where} is published at contract v{version} ({published.ref}, "
                f"fingerprint {published.fingerprint[:12]}){why}; this reader knows "
                f"up to v{self.known} ({self.contract.ref}) and its policy is strict; until it "
                "pulls without stopping, producers no longer hold the version back for it. "
                "Upgrade the reader's contracts, or pull with --policy partial to apply the "
                "columns it knows"
            )
        known = set(self.contract.columns) | {OP_COLUMN, SEQ_COLUMN}
        missing_key = [c for c in self.primary_key if c not in data.column_names]
        if missing_key:
            raise VersionError(
                f"{where} is published at contract v{version} without the key column(s) "
                f"{', '.join(missing_key)} this reader (v{self.known}) keys on: even a partial "
                "read cannot apply it; upgrade the reader's contracts"
            )
        self.newest_read = max(self.newest_read, self.known)
        head = f"published at contract v{version}, read as v{self.known} (partial): "
        downgraded, refused = self._downgrade(published, version, data)
        if downgraded is not None:
            return downgraded, head + refused, version, False
        kept = [c for c in data.column_names if c in known]
        left_out = [c for c in data.column_names if c not in known]
        absent = [c for c in self.contract.columns if c not in data.column_names]
        caution = head + (f"left out {', '.join(left_out)}" if left_out else "no unknown columns")
        if absent:
            caution += f"; not in the batch: {', '.join(absent)}"
        if refused:
            caution += f" ({refused})"
        return data.select(kept), caution, version, False

    def _downgrade(
        self, published: ContractRef, version: int, data: pa.Table
    ) -> tuple[pa.Table | None, str]:
        """The batch taken down to this reader's version by the chain it was published
        with (the manifest's contract reference, imported here), and a note; or (None, why
        not) when that chain cannot be imported, is not the one the batch and this reader
        name (fingerprints of both versions), has no downgrade, or refuses the rows."""
        from contracts import MigrationError, load_chain

        ref = re.sub(r"@v\d+$", "", published.ref)
        if ":" not in ref:
            return None, ""
        try:
            chain = load_chain(ref, where=f"job '{self.job}' table '{self.table}'")
        except Exception:  # noqa: BLE001 - not importable here: read partially instead
            return None, ""
        if (
            version not in chain.models
            or self.known not in chain.models
            or chain.contract(version).fingerprint != published.fingerprint
            or chain.contract(self.known).fingerprint != self.contract.fingerprint
            or not chain.reachable(version, self.known)
        ):
            return None, ""
        steps = ", ".join(chain.steps(version, self.known))
        try:
            out = _upgrade_table(chain, data, version, self.known)
        except (MigrationError, KeyError, ValueError, TypeError) as e:
            return None, f"{ref} {steps} refused: {type(e).__name__}: {e}"
        return out, f"taken to v{self.known} by {ref} ({steps})"

    def keep_known(
        self, con: Any, version: int, data: pa.Table, caution: str | None
    ) -> tuple[pa.Table, str | None, int]:
        """Fill the columns of this reader's contract that ``data`` lacks from the replica
        (``con``, table ``self.table``): a row whose key the replica holds keeps the stored
        values; an upsert of a key it does not hold, lacking a value the contract requires
        (a required, non-nullable column), is left out of ``data`` (held back for this
        reader). Deletes pass unchanged. A lacking column the replica does not store either
        is added as NULLs of the contract's Arrow type (``Contract.staged_types``: a ``Date``
        column as ``date32``). Returns (data, caution extended with
        what was kept and what was held back, the number of rows held back)."""
        absent = [c for c in self.contract.columns if c not in data.column_names]
        if not absent:
            return data, caution, 0
        schema = self.contract.schema.columns
        required = [c for c in absent if schema[c].required and not schema[c].nullable]
        stored = set(duck.columns(con, self.table))
        joined = bool(stored) and all(k in stored for k in self.primary_key)
        fill = [c for c in absent if c in stored] if joined else []
        out, held, n_kept = data, data.slice(0, 0), 0
        if (fill or required) and data.num_rows:
            out, held, n_kept = self._fill(con, data, fill, required, joined)
        types = self.contract.staged_types()
        for c in absent:  # the replica's table has every column of its contract
            if c not in out.column_names and c in types:
                out = out.append_column(pa.field(c, types[c]), pa.nulls(out.num_rows, types[c]))
        notes = []
        if fill and n_kept:
            notes.append(f"kept the stored {', '.join(fill)} of {n_kept} row(s)")
        if held.num_rows:
            keys = [
                ",".join(f"{k}={held[k][i].as_py()}" for k in self.primary_key)
                for i in range(min(held.num_rows, 5))
            ]
            more = f" and {held.num_rows - 5} more" if held.num_rows > 5 else ""
            notes.append(
                f"held back {held.num_rows} row(s) of keys this replica does not have, lacking "
                f"{', '.join(required)} (required by v{self.known}): {'; '.join(keys)}{more}"
            )
        if not notes:
            return out, caution, 0
        base = caution or (
            f"published at contract v{version}, read as v{self.known}: "
            f"not in the batch: {', '.join(absent)}"
        )
        return out, f"{base}; {'; '.join(notes)}", held.num_rows

    def _fill(
        self, con: Any, data: pa.Table, fill: list[str], required: list[str], joined: bool
    ) -> tuple[pa.Table, pa.Table, int]:
        """``keep_known``'s join: (rows with the stored ``fill`` columns, the rows held back,
        how many upserts of known keys kept stored values)."""
        n = "_deltaferry_row"
        indexed = data.append_column(n, pa.array(range(data.num_rows), pa.int64()))
        if joined:
            match = " AND ".join(f"s.{ident(k)} = i.{ident(k)}" for k in self.primary_key)
            known = f"s.{ident(self.primary_key[0])} IS NOT NULL"
            source = f"{duck.ARROW} i LEFT JOIN {ident(self.table)} s ON {match}"
        else:  # no replica table yet: every key is new
            source, known = f"{duck.ARROW} i", "false"
        fills = "".join(f", s.{ident(c)} AS {ident(c)}" for c in fill)
        missing = (
            " OR ".join(f"s.{ident(c)} IS NULL" if c in fill else "true" for c in required)
            or "false"
        )
        out = duck.with_arrow(
            con,
            indexed,
            f"SELECT i.* EXCLUDE ({ident(n)}){fills}, {known} AS _known,"
            f" i.{ident(OP_COLUMN)} = 'upsert' AND ({missing}) AS _held"
            f" FROM {source} ORDER BY i.{ident(n)}",
        ).to_arrow_table()
        held = out.filter(out["_held"])
        out = out.filter(pc.invert(out["_held"]))
        n_kept = sum(
            1
            for op, k in zip(out[OP_COLUMN].to_pylist(), out["_known"].to_pylist(), strict=True)
            if op == "upsert" and k
        )
        return out.drop_columns(["_known", "_held"]), held, n_kept

    def _same_contract(self, batch: int, published: ContractRef, producer: str | None) -> None:
        """Raise FingerprintError when ``published`` (a manifest's ``contract``) names a
        version this reader's chain has, with another fingerprint. Versions the reader does
        not have are not compared."""
        version = published.version
        theirs = published.fingerprint
        if self.chain is None or version not in self.chain.models:
            return
        ours = self.chain.contract(version)
        if ours.fingerprint == theirs:
            return
        chain = f" producer '{producer}'" if producer else ""
        raise FingerprintError(
            f"job '{self.job}' table '{self.table}'{chain} batch {batch} is published at contract "
            f"v{version} {published.ref} with fingerprint {theirs[:16]}, but this "
            f"reader's v{version} ({ours.ref}) has fingerprint {ours.fingerprint[:16]}: one "
            "version number names two different contracts; nothing of the batch was applied. "
            "Use the producer's contract for that version (or give the changed contract a new "
            "version number) and pull again"
        )

    def _conforms(
        self,
        batch: int,
        manifest: Manifest,
        published: ContractRef,
        data: pa.Table,
        producer: str | None,
    ) -> None:
        """Raise VerificationError when ``data`` (a file of the batch) is not what a
        producer publishes at ``published``, a version this reader has under the same
        fingerprint (``schema_problems``). An unsigned lake re-hashed by another writer (or
        a writer's bug) was applied as it was: a column's values silently NULL, keys
        stored as text. Versions this reader does not have are not checked (their columns
        are unknown)."""
        from deltaferry.errors import VerificationError
        from deltaferry.verify import check_keys

        chain = f" producer '{producer}'" if producer else ""
        where = f"job '{self.job}' table '{self.table}'{chain} batch {batch}"
        check_keys(data, self.primary_key, where)
        contract = contract_at(published, self.chain, self.contract)
        if contract is None:
            return
        op = data[OP_COLUMN] if OP_COLUMN in data.column_names else None
        upserts = (
            op is None  # no _op: named below
            or not (pa.types.is_string(op.type) or pa.types.is_large_string(op.type))
            or bool(pc.any(pc.equal(op, "upsert")).as_py())
        )
        problems = schema_problems(contract, data.schema, manifest, self.primary_key, upserts)
        if problems:
            raise VerificationError(
                f"{where}: a data object {unlike(published, problems)}; nothing of the batch "
                f"was applied. {REWRITTEN}"
            )

    def _upgrade(self, batch: int, data: pa.Table, version: int, producer: str | None) -> pa.Table:
        from contracts import MigrationError

        try:
            return _upgrade_table(self.chain, data, version, self.known)
        except (MigrationError, KeyError, ValueError, TypeError) as e:
            chain = f" producer '{producer}'" if producer else ""
            raise VersionError(
                f"job '{self.job}' table '{self.table}'{chain} batch {batch}: upgrading its rows "
                f"from contract v{version} to v{self.known} failed ({type(e).__name__}: {e})"
            ) from None


def _upgrade_table(chain: Any, data: pa.Table, start: int, target: int) -> pa.Table:
    """A batch's rows taken from contract version ``start`` to ``target`` (``_op``, ``_seq`` kept)."""
    cols = [c for c in data.column_names if c not in (OP_COLUMN, SEQ_COLUMN)]
    out = chain.migrate_arrow(data.select(cols), start, target)
    for c in (OP_COLUMN, SEQ_COLUMN):
        if c in data.column_names:
            out = out.append_column(c, data[c])
    return out


REWRITTEN = (
    "The lake holds an object no deltaferry producer writes: sign manifests (`deltaferry "
    "keys`) so readers refuse other writers, and have the producer republish the batch"
)


def contract_at(published: ContractRef, chain: Any, contract: Contract | None = None) -> Any:
    """The ``contracts.Contract`` a manifest's ``published`` names, when ``chain`` (or,
    without one, ``contract``) has that version under the same fingerprint; else None."""
    if chain is not None and published.version in chain.models:
        found = chain.contract(published.version)
    elif contract is not None and contract.version == published.version:
        found = contract
    else:
        return None
    return found if found.fingerprint == published.fingerprint else None


def schema_problems(
    contract: Any, schema: pa.Schema, manifest: Manifest, key: list[str], upserts: bool
) -> list[str]:
    """How a data object's Arrow ``schema`` differs from what a producer publishes at
    ``contract`` (the version ``manifest`` names), one phrase each; empty when it does
    not. Only what no producer writes counts:

    - a key column (``key``) missing; a required column missing from an object with
      upserts (``upserts``), unless the source dropped it (``drift.missing``). Nullable
      columns may be absent (dual-published delete-only batches, lakes written before
      producers added them as NULLs), and so may required ones in a delete-only object
      (``drift = freeze`` publishes the deletes of a dropped column): admitting keeps the
      stored value for them (``Reading.keep_known``);
    - a column of another kind of type than the contract's (``delta._to_contract_types``
      casts every column it can type: an integer column stays integers, whatever width),
      except where the contract has text: a producer whose pandas types text as objects
      (pandas 2) leaves such a column as staged;
    - a column a strict contract does not have (its validation lets none through);
    - ``_op`` not text or ``_seq`` not integers, or either missing."""
    from deltaferry.delta import _family

    dropped = set(manifest.drift.missing or {}) if manifest.drift else set()
    types = contract.arrow_types()
    problems = []
    for name in contract.columns:
        column = contract.schema.columns[name]
        if name not in schema.names:
            required = upserts and column.required and not column.nullable
            if name in key or (required and name not in dropped):
                problems.append(f"column '{name}' is missing")
            continue
        want, have = types.get(name), schema.field(name).type
        if (
            want is not None
            and _family(want) != "str"
            and not pa.types.is_null(have)
            and _family(have) != _family(want)
        ):
            problems.append(f"column '{name}' is {have}, the contract's is {want}")
    if contract.schema.strict is True or contract.schema.strict == "filter":
        known = {*contract.columns, OP_COLUMN, SEQ_COLUMN}
        extra = [n for n in schema.names if n not in known]
        if extra:  # a strict contract's validation lets no other column through
            shown = ", ".join(repr(n) for n in extra)
            problems.append(f"column(s) {shown} not in the contract, which is strict")
    for name, family in ((OP_COLUMN, "str"), (SEQ_COLUMN, "int")):
        if name not in schema.names:
            problems.append(f"column '{name}' is missing")
        elif _family(schema.field(name).type) != family:
            problems.append(f"column '{name}' is {schema.field(name).type}")
    return problems


def unlike(published: ContractRef, problems: list[str]) -> str:
    """ "does not match contract vN (ref) its manifest names: <problems>"."""
    return (
        f"does not match contract v{published.version} ({published.ref}) its manifest "
        f"names: {'; '.join(problems)}"
    )
