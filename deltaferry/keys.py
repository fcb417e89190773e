"""Manifest signing keys: Ed25519, with key ids, rotation and revocation.

A keyring is a directory (``$DELTAFERRY_KEYS``, default ``$DELTAFERRY_HOME/keys``)::

    keyring.json            public keys and their status: what readers trust
    private/<key_id>.pem    private keys (mode 0600), only on producers

The active key signs new manifests. After ``rotate`` the old key is *retired*: it
signs nothing new, but batches it signed still verify. A *revoked* key fails
verification for every manifest created at or after its revocation time.
Readers elsewhere get the public keyring with ``deltaferry keys export``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from deltaferry.config import deltaferry_home
from deltaferry.errors import ConfigError, VerificationError
from deltaferry.settings import from_env
from destinations.manifest import Manifest, Signature, canonical

ALG: Final = "ed25519"


@dataclass
class KeyInfo:
    key_id: str
    public_key: str  # base64 of the raw 32-byte Ed25519 public key
    created_at: str
    status: str  # active | retired | revoked
    revoked_at: str | None = None


def keyring_dir() -> Path:
    """``$DELTAFERRY_KEYS``, default ``$DELTAFERRY_HOME/keys``."""
    return from_env().keys or deltaferry_home() / "keys"


class Keyring:
    """Public keys (and, on a producer, private keys) in one directory."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or keyring_dir()
        self.keys: dict[str, KeyInfo] = {}
        file = self.path / "keyring.json"
        if file.exists():
            try:
                raw = json.loads(file.read_text())
                self.keys = {k["key_id"]: KeyInfo(**k) for k in raw["keys"]}
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"keyring {file} is not readable: {e}") from None

    # --- management ---------------------------------------------------------------

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / "keyring.json.tmp"
        tmp.write_text(json.dumps({"keys": [asdict(k) for k in self.keys.values()]}, indent=2))
        os.replace(tmp, self.path / "keyring.json")

    def generate(self) -> KeyInfo:
        """Create a key; it becomes active if no key is active."""
        private = Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        key_id = f"{ALG}-{hashlib.sha256(raw).hexdigest()[:16]}"
        status = "retired" if self.active() else "active"
        info = KeyInfo(key_id, base64.b64encode(raw).decode(), _now(), status)
        priv_dir = self.path / "private"
        priv_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(priv_dir, 0o700)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(priv_dir / f"{key_id}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        self.keys[key_id] = info
        self.save()
        return info

    def rotate(self) -> KeyInfo:
        """New active key; the previous one is retired (still verifies its batches)."""
        previous = self.active()
        if previous:
            previous.status = "retired"
            self.save()
        info = self.generate()
        info.status = "active"
        self.save()
        return info

    def revoke(self, key_id: str, at: str | None = None) -> KeyInfo:
        """Revoke a key from ``at`` (ISO time, default now): manifests it signed that were
        created at or after that time fail verification."""
        info = self.keys.get(key_id)
        if info is None:
            raise ConfigError(f"keyring {self.path}: no key '{key_id}'")
        if at is not None:
            try:
                at = datetime.fromisoformat(at).astimezone(UTC).isoformat()
            except ValueError:
                raise ConfigError(f"revocation time {at!r} is not an ISO 8601 time") from None
        info.status = "revoked"
        info.revoked_at = at or _now()
        self.save()
        return info

    def active(self) -> KeyInfo | None:
        return next((k for k in self.keys.values() if k.status == "active"), None)

    def export(self) -> str:
        """The public keyring, for readers on other machines."""
        return json.dumps({"keys": [asdict(k) for k in self.keys.values()]}, indent=2)

    # --- signing ----------------------------------------------------------------------

    def sign(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Return a signed document (an override entry) with a signature by the active key
        (unchanged if none)."""
        sig = self._signature(canonical({**doc, "signature": None}))
        return doc if sig is None else {**doc, "signature": sig.to_dict()}

    def sign_manifest(self, manifest: Manifest) -> Manifest:
        """Return the manifest with a signature by the active key (unchanged if none)."""
        sig = self._signature(manifest.unsigned())
        return manifest if sig is None else manifest.model_copy(update={"signature": sig})

    def _signature(self, body: bytes) -> Signature | None:
        """The active key's signature over ``body`` (a canonical encoding with signature
        null), or None without an active key."""
        info = self.active()
        if info is None:
            return None
        pem = (self.path / "private" / f"{info.key_id}.pem").read_bytes()
        private = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(private, Ed25519PrivateKey)
        sig = base64.b64encode(private.sign(body)).decode()
        return Signature(alg=ALG, key_id=info.key_id, sig=sig)

    def verify(self, doc: dict[str, Any], *, where: str) -> None:
        """``verify_manifest`` for a signed document that is not a manifest (an override
        entry)."""
        self._check(
            doc.get("signature"),
            canonical({**doc, "signature": None}),
            doc.get("created_at", ""),
            where=where,
        )

    def verify_manifest(self, manifest: Manifest, *, where: str) -> None:
        """Raise VerificationError unless the manifest is signed by a trusted, unrevoked key.

        With an empty keyring nothing is required (unsigned lakes stay readable); once a
        reader trusts any key, every manifest must carry a valid signature.
        """
        sig = manifest.signature.to_dict() if manifest.signature is not None else None
        self._check(sig, manifest.unsigned(), manifest.created_at, where=where)

    def _check(self, sig: Any, body: bytes, created_at: str, *, where: str) -> None:
        """Check the signature ``sig`` (``{alg, key_id, sig}`` or None) over ``body``, of a
        document created at ``created_at``."""
        if not sig:
            if self.keys:
                raise VerificationError(
                    f"{where}: manifest is not signed, but signatures are required"
                )
            return
        info = self.keys.get(sig.get("key_id", ""))
        if info is None or sig.get("alg") != ALG:
            raise VerificationError(f"{where}: signed with unknown key '{sig.get('key_id')}'")
        if info.status == "revoked" and info.revoked_at and created_at >= info.revoked_at:
            raise VerificationError(
                f"{where}: signed with key '{info.key_id}', revoked at {info.revoked_at}"
            )
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(info.public_key))
        try:
            public.verify(base64.b64decode(sig["sig"]), body)
        except (InvalidSignature, ValueError, KeyError):
            raise VerificationError(
                f"{where}: signature does not match (key '{info.key_id}')"
            ) from None


def _now() -> str:
    return datetime.now(UTC).isoformat()
