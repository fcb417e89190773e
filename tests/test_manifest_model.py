"""The manifest has one typed model (``destinations/manifest.py:Manifest``):

- the schema file is generated from it;
- every manifest the code before the model wrote (``tests/support/manifest_v1/``, stored
  bytes of real syncs: signed, several producers, dual publishing, drift, migrations, a
  refused downgrade) parses and encodes back to its exact bytes, and signs to the same
  signature as the plain dict did; a lake written then still verifies (hash chain, files,
  signatures of two keys across a rotation);
- an ill-typed or tampered manifest is refused in one line naming the object and field;
- keys it does not know are kept (bytes and signature still check) and ignored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from deltaferry.errors import VerificationError
from deltaferry.keys import Keyring
from deltaferry.verify import iter_verified, verify_table
from destinations.lake import open_lake
from destinations.manifest import (
    SCHEMA,
    Also,
    ContractRef,
    Manifest,
    canonical,
    manifest_key,
)
from tests.support.manifests import sample

V1 = Path(__file__).parent / "support" / "manifest_v1"
STORED = sorted((V1 / "manifests").glob("*.json"))
OPTIONAL = {"also", "drift", "migration", "hlc", "hlc_seen", "downgrade_refused"}


def test_the_schema_file_is_generated_from_the_model() -> None:
    assert json.loads(SCHEMA.read_text()) == Manifest.json_schema(), (
        "destinations/manifest.schema.json is not the model's: run "
        "`.venv/bin/python -m destinations.manifest > destinations/manifest.schema.json`"
    )
    jsonschema.Draft202012Validator.check_schema(Manifest.json_schema())


@pytest.mark.parametrize("path", STORED, ids=[p.stem for p in STORED])
def test_a_stored_manifest_round_trips_byte_for_byte(path: Path) -> None:
    stored = path.read_bytes()
    m = Manifest.parse(stored, key=path.name)
    assert m.canonical() == stored
    as_dict = json.loads(stored)
    assert m.to_dict() == as_dict
    assert m.unsigned() == canonical({**as_dict, "signature": None})  # what signatures cover
    jsonschema.validate(as_dict, json.loads(SCHEMA.read_text()))


def test_the_stored_manifests_cover_every_field() -> None:
    keys: set[str] = set()
    nested: set[str] = set()
    for path in STORED:
        m = json.loads(path.read_bytes())
        keys |= set(m)
        nested |= {f"drift.{k}" for k in m.get("drift", {})}
        nested |= {f"migration.{k}" for k in m.get("migration", {})}
        nested |= {"signed"} if m["signature"] else {"unsigned"}
        nested |= {"first"} if m["prev_sha256"] is None else {"chained"}
        nested |= {"hlc_seen.other"} if m.get("hlc_seen") else set()
    assert keys == set(Manifest.model_fields)
    assert OPTIONAL <= keys
    assert {"drift.missing", "migration.source_fingerprint", "signed", "unsigned"} <= nested
    assert {"first", "chained", "hlc_seen.other"} <= nested


def test_signing_the_model_signs_the_same_bytes_as_the_dict(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    ring.generate()
    for path in STORED:
        m = Manifest.parse(path.read_bytes(), key=path.name).model_copy(update={"signature": None})
        signed = ring.sign_manifest(m)
        assert signed.signature is not None
        assert signed.to_dict() == ring.sign(m.to_dict())  # Ed25519 is deterministic
        ring.verify_manifest(signed, where=path.name)
        ring.verify(signed.to_dict(), where=path.name)


def lake_copy(tmp_path: Path) -> Path:
    shutil.copytree(V1 / "lake", tmp_path / "lake")
    return tmp_path / "lake"


def test_a_lake_written_before_the_model_still_verifies(tmp_path: Path) -> None:
    lake = open_lake(f"file://{lake_copy(tmp_path)}")
    keyring = Keyring(V1 / "keys")
    assert len({m.signature.key_id for m in _chain(lake)}) == 2  # signed across a rotation
    batches, rows = verify_table(lake, "shop", "customers", keyring=keyring)
    assert batches == len(list((V1 / "lake/shop/customers/manifests").iterdir()))
    loaded = list(iter_verified(lake, "shop", "customers", keyring=keyring))
    assert sum(vb.data.num_rows for vb in loaded) == rows
    for vb in loaded:
        key = manifest_key("shop", "customers", vb.batch)
        assert vb.manifest.canonical() == lake.get(key)


def _chain(lake) -> list[Manifest]:  # noqa: ANN001
    keys = sorted(k for k in lake.list("shop/customers/manifests/"))
    return [Manifest.parse(lake.get(k), key=k) for k in keys]


EDITS = {
    "a float for an integer": (lambda m: m.update(rows=float(m["rows"])), "field 'rows': input should be a valid integer"),
    "a string for an integer": (lambda m: m["seq"].update(end=str(m["seq"]["end"])), "field 'seq.end': input should be a valid integer"),
    "a boolean for an integer": (lambda m: m["files"][0].update(bytes=True), "field 'files.0.bytes': input should be a valid integer"),
    "a required field gone": (lambda m: m["contract"].pop("fingerprint"), "lacks required field 'contract.fingerprint'"),
    "an optional field null": (lambda m: m.update(drift=None), "field 'drift' is null"),
    "a sha256 that is not one": (lambda m: m["files"][0].update(sha256="F" * 64), "field 'files.0.sha256': string should match pattern"),
    "no files": (lambda m: m.update(files=[]), "field 'files': list should have at least 1 item"),
    "another format": (lambda m: m.update(format="deltaferry.manifest/2"), "has unknown format 'deltaferry.manifest/2'"),
}  # fmt: skip


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_an_ill_typed_manifest_is_refused_in_one_line_naming_batch_and_field(
    tmp_path: Path, edit: str
) -> None:
    change, needle = EDITS[edit]
    root = lake_copy(tmp_path)
    path = root / manifest_key("shop", "customers", 2)
    m = json.loads(path.read_bytes())
    change(m)
    path.write_bytes(canonical(m))
    lake, keyring = open_lake(f"file://{root}"), Keyring(V1 / "keys")
    with pytest.raises(VerificationError) as e:
        list(iter_verified(lake, "shop", "customers", load=False, keyring=keyring))
    message = str(e.value)
    assert message.startswith("job 'shop' table 'customers' batch 2: manifest shop/customers/")
    assert needle in message and "\n" not in message


def test_a_manifest_that_is_not_json_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^manifest k/000000000001\.json is not valid JSON"):
        Manifest.parse(b'{"format": "deltaferry.manifest/1", "job"', key="k/000000000001.json")


def test_unknown_keys_are_kept_and_ignored() -> None:
    stored = STORED[0].read_bytes()
    m = json.loads(stored)
    m["added_by_a_newer_writer"] = {"x": [1, 2.5, None]}
    m["files"][0]["also_new"] = "y"
    newer = canonical(m)
    parsed = Manifest.parse(newer, key="newer")
    assert parsed.canonical() == newer
    assert parsed.unsigned() == canonical({**m, "signature": None})
    assert parsed.files[0].sha256 == m["files"][0]["sha256"]


def test_a_built_manifest_leaves_unused_optional_fields_out() -> None:
    plain = json.loads(sample(**dict.fromkeys(OPTIONAL)).canonical())  # None: unused
    assert OPTIONAL.isdisjoint(plain) and plain["signature"] is None
    assert plain["prev_sha256"] is None and plain["cursor"]["min"] is None
    contract = ContractRef(ref="contracts.shop:Customers", version=2, fingerprint="1" * 64)
    dual = sample(also=Also(contract=contract, files=sample().files), hlc=5, hlc_seen={})
    out = json.loads(dual.canonical())
    assert out["also"]["contract"]["version"] == 2 and out["hlc"] == 5 and out["hlc_seen"] == {}
    assert Manifest.parse(dual.canonical(), key="k").canonical() == dual.canonical()
