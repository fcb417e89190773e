"""The manifest: the commit record of one batch, and the lake's key layout.

Lake layout, relative to the lake root::

    <job>/<table>/data/<batch:012d>/part-<n:05d>-<sha256[:16]>.parquet
    <job>/<table>/manifests/<batch:012d>.json     (create-only: the commit log)

A job with several producers (``multi_producer = true``) gives each its own chain,
the same two folders under ``<job>/<table>/producers/<producer_id>/``, and a shared
create-only log of manual conflict overrides at
``<job>/<table>/overrides/<n:012d>.json``.

Manifests are canonical JSON (sorted keys, no spaces), so the same batch always
has the same bytes and the same sha256; each names the previous manifest's sha256,
which chains the log.

:class:`Manifest` is the one typed model of the format ``deltaferry.manifest/1``: the
producer builds it, :meth:`Manifest.canonical` encodes it, :meth:`Manifest.parse` reads
stored bytes back (strictly typed, refused in one line naming the object and the field),
and ``Manifest.parse(b).canonical() == b`` for every manifest deltaferry writes, so the
hash chain and signatures hold. ``manifest.schema.json`` is generated from it
(``python -m destinations.manifest > destinations/manifest.schema.json``;
``tests/test_manifest_model.py`` checks the file is current).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

FORMAT: Final = "deltaferry.manifest/1"
SCHEMA = Path(__file__).with_name("manifest.schema.json")


def table_prefix(job: str, table: str, producer: str | None = None) -> str:
    """Where one chain lives: the table's folder, or its producer's folder in it."""
    return f"{job}/{table}" if producer is None else f"{job}/{table}/producers/{producer}"


def producers_prefix(job: str, table: str) -> str:
    return f"{job}/{table}/producers/"


def overrides_prefix(job: str, table: str) -> str:
    return f"{job}/{table}/overrides/"


def override_key(job: str, table: str, n: int) -> str:
    return f"{overrides_prefix(job, table)}{n:012d}.json"


def manifest_key(job: str, table: str, batch: int, producer: str | None = None) -> str:
    return f"{table_prefix(job, table, producer)}/manifests/{batch:012d}.json"


def manifests_prefix(job: str, table: str, producer: str | None = None) -> str:
    return f"{table_prefix(job, table, producer)}/manifests/"


def data_key(
    job: str,
    table: str,
    batch: int,
    part: int,
    sha256: str,
    producer: str | None = None,
    version: int | None = None,
) -> str:
    """A data object's key; ``version`` names the second copy of a dual-published batch."""
    prefix = table_prefix(job, table, producer)
    name = f"part-{part:05d}" if version is None else f"v{version}-part-{part:05d}"
    return f"{prefix}/data/{batch:012d}/{name}-{sha256[:16]}.parquet"


def batch_of_manifest_key(key: str) -> int | None:
    """Batch number of a manifest key, or None for anything else under the prefix."""
    name = key.rsplit("/", 1)[-1]
    stem, dot, ext = name.partition(".")
    if ext != "json" or not dot or not stem.isdigit() or len(stem) != 12:
        return None
    return int(stem)


def canonical(doc: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, no spaces, ASCII): a manifest's bytes, and what a
    signature covers (of manifests and of override entries)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Hex64 = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
_STORED = {"stored": True}  # the validation context of Manifest.parse: stored bytes


class _Part(BaseModel):
    """A manifest, or an object inside one. Immutable and strictly typed: nothing is
    coerced (an int stays an int, ``1.0`` or ``"1"`` is refused), so what parses encodes
    back to the same bytes. Unknown keys (a newer writer's) are kept as they are, for the
    round trip and the signature, and otherwise ignored. A field whose default is None is
    optional: absent when unused, never null (null is refused when parsing)."""

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        extra="allow",
        use_attribute_docstrings=True,
        serialize_by_alias=True,
    )

    @classmethod
    def _optional(cls) -> dict[str, str]:
        """Field name -> key of the fields that are left out when unused."""
        return {
            name: f.alias or name
            for name, f in cls.model_fields.items()
            if not f.is_required() and f.default is None
        }

    @model_validator(mode="before")
    @classmethod
    def _absent_not_null(cls, data: Any, info: ValidationInfo) -> Any:
        """Stored bytes (``Manifest.parse``) leave an unused optional field out: a null
        there would not encode back to the same bytes. Built in code, None means unused."""
        if isinstance(data, dict) and info.context == _STORED:
            for key in cls._optional().values():
                if key in data and data[key] is None:
                    raise PydanticCustomError("null_optional", "'{key}' is null", {"key": key})
        return data

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: Any) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for name, key in self._optional().items():
            if getattr(self, name) is None:
                out.pop(key, None)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, as stored (unknown keys included)."""
        return self.model_dump()


class Ops(_Part):
    upsert: Count
    delete: Count


class ContractRef(_Part):
    """The contract version the rows are published at."""

    ref: str
    """module:Class of the pandera DataFrameModel (``module:Class@v<k>`` for an older
    version of a chain)"""
    version: Annotated[int, Field(ge=1)]
    fingerprint: Hex64
    """The version's exact schema and checks."""


class CursorRange(_Part):
    """The batch's cursor range; column is null for a table synced in full-compare mode
    (no cursor)."""

    column: str | None
    min: str | None
    max: str | None


class SeqRange(_Part):
    """Range of the per-table change sequence (_seq) carried by the rows of this batch."""

    start: int
    end: int


class DataFile(_Part):
    """One immutable, content-addressed Parquet object of the batch."""

    key: str
    """Object key relative to the lake root."""
    sha256: Hex64
    bytes: Annotated[int, Field(ge=1)]
    rows: Annotated[int, Field(ge=1)]
    ops: Ops


class Also(_Part):
    """Dual publishing (job setting dual_publish): the same rows at a newer contract
    version, for readers that know it. Its files are checked like files; their rows add
    up to the batch's rows."""

    contract: ContractRef
    files: list[DataFile]


class Drift(_Part):
    """Only when the source's columns drifted from the contract (job setting drift =
    quarantine or evolve): the policy, the diff, the staged columns left out (excluded)
    and those whose values held rows back (held, with the reason)."""

    policy: Literal["freeze", "quarantine", "evolve"]
    diff: str
    excluded: list[str]
    held: dict[str, str]
    missing: dict[str, str] | None = None
    """Required columns the source dropped: a row without a value is held back, with
    the reason."""


class Migration(_Part):
    """Only when the rows were migrated between versions of a contract chain before
    publishing: from (the source's version), to (the version published, also in
    contract.version), steps, and the source version's fingerprint."""

    from_: int = Field(alias="from")
    to: int
    steps: list[str]
    source_fingerprint: str | None = None


class DowngradeRefusal(_Part):
    """The batch is published above the negotiated version because migrating its rows
    down to it was refused: that version and the migration's reason."""

    to: int
    reason: str


class Signature(_Part):
    """Ed25519 signature over the canonical encoding of the manifest with signature set to
    null."""

    alg: Literal["ed25519"]
    key_id: str
    sig: str
    """base64"""


class Manifest(_Part):
    """Commit record of one batch of changes of one table. Stored create-only at
    <job>/<table>/manifests/<batch:012d>.json as canonical JSON (sorted keys, no
    whitespace). Its sha256 is the value the next batch's prev_sha256 holds."""

    format: Literal["deltaferry.manifest/1"]
    job: str
    table: str
    batch: Annotated[int, Field(ge=1)]
    """Strictly increasing per table, no gaps."""
    prev_sha256: Hex64 | None
    """sha256 of the previous batch's manifest bytes; null for batch 1."""
    producer_id: str
    contract: ContractRef
    primary_key: Annotated[list[str], Field(min_length=1)]
    cursor: CursorRange
    seq: SeqRange
    load_ids: list[str]
    """dlt load ids whose changes this batch carries."""
    rows: Annotated[int, Field(ge=1)]
    ops: Ops
    quarantined: Count
    """Primary keys held back by the contract in this batch (kept in the producer's
    quarantine table)."""
    files: Annotated[list[DataFile], Field(min_length=1)]
    trace_id: str
    """The Prefect flow run id of the producing run: joins producer and reader logs."""
    created_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    signature: Signature | None
    """Null when unsigned."""
    also: Also | None = None
    drift: Drift | None = None
    migration: Migration | None = None
    hlc: Annotated[int, Field(ge=0)] | None = None
    """Only in a producer's own chain (several producers,
    <job>/<table>/producers/<producer_id>/manifests/): the batch's hybrid logical
    timestamp, milliseconds since the epoch shifted left 16 bits plus a counter. Strictly
    increasing along the chain; readers resolve conflicts by (hlc, producer_id)."""
    hlc_seen: dict[str, int] | None = None
    """With hlc: the newest hlc of each other producer this producer saw when it stamped
    the batch."""
    downgrade_refused: DowngradeRefusal | None = None

    @classmethod
    def parse(cls, data: bytes, *, key: str) -> Manifest:
        """Read stored manifest bytes. Raises ValueError, one line naming ``key`` (and the
        field), if they are not a well-formed manifest of this format."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"manifest {key} is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise ValueError(f"manifest {key} has unknown format {found!r}")
        try:
            return cls.model_validate(raw, context=_STORED)
        except ValidationError as e:
            raise ValueError(f"manifest {key} {_problem(e)}") from None

    def canonical(self) -> bytes:
        """The stored bytes: canonical JSON."""
        return canonical(self.to_dict())

    def unsigned(self) -> bytes:
        """What the signature covers: the canonical encoding with signature null."""
        return canonical({**self.to_dict(), "signature": None})

    def all_files(self) -> list[DataFile]:
        """The batch's files, then its dual-published copy's."""
        return self.files + (self.also.files if self.also is not None else [])

    @property
    def clock(self) -> int:
        """The logical timestamp (``hlc``) of a batch of a producer's own chain, where
        every manifest has one (``deltaferry/verify.py:iter_verified`` checks)."""
        if self.hlc is None:
            raise ValueError(f"job '{self.job}' table '{self.table}' batch {self.batch}: no hlc")
        return self.hlc

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The format as JSON Schema (the content of ``manifest.schema.json``)."""
        schema = cls.model_json_schema(schema_generator=_SchemaGenerator)
        for part in schema.get("$defs", {}).values():
            part.pop("title", None)
        for part in [schema, *schema.get("$defs", {}).values()]:
            for entry in [part, *part.get("properties", {}).values()]:
                if "description" in entry:  # docstrings are wrapped; the schema is not
                    entry["description"] = " ".join(entry["description"].split())
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://deltaferry.dev/schemas/manifest-1.json",
            **schema,
            "title": "deltaferry batch manifest, format deltaferry.manifest/1",
        }


def _problem(e: ValidationError) -> str:
    """The first of a validation's errors, in words, naming the field."""
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    if first["type"] == "missing":
        return f"lacks required field '{where}'{more}"
    if first["type"] == "null_optional":
        where = ".".join(str(p) for p in (*first["loc"], first["ctx"]["key"]))
        return f"field '{where}' is null: an optional field is left out when unused{more}"
    got = repr(first["input"])
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"field '{where}': {first['msg'].lower()} (got {got}){more}"


class _SchemaGenerator(GenerateJsonSchema):
    """The JSON Schema as the format reads: no generated titles, and an optional field
    (default None) as its type alone, since it is left out rather than null."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        inner = schema["schema"]
        if schema.get("default", ...) is None and inner["type"] == "nullable":
            return self.generate_inner(inner["schema"])
        return super().default_schema(schema)


if __name__ == "__main__":  # python -m destinations.manifest > destinations/manifest.schema.json
    print(json.dumps(Manifest.json_schema(), indent=2))
