"""Lake stores: one small interface, a local-filesystem implementation here and an S3 one in
``destinations/s3.py``.

The only operation with a concurrency promise is ``put_if_absent``: it is the
commit point of a batch (a manifest), so it must never overwrite. On S3 it is
a conditional PUT (``If-None-Match: *``); on a filesystem it is a hard link of
a fully written temporary file (atomic, fails if the name exists).
"""

from __future__ import annotations

# the stores' ``list`` method shadows the builtin in their class bodies: annotations there
# that follow it name the type as ``builtins.list``
import builtins
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from deltaferry.errors import ConfigError


@dataclass(frozen=True)
class LakeURL:
    scheme: str  # "s3" | "file"
    bucket: str  # s3 bucket; empty for file
    prefix: str  # key prefix (s3) or absolute directory (file)


def parse_lake_url(url: str, *, where: str = "lake", base: Path | None = None) -> LakeURL:
    """Parse ``s3://bucket/prefix``, ``file:///abs/path`` or ``file:relative/path``.
    ConfigError (naming ``where``) for anything else, and for a ``#`` or ``?`` anywhere: a
    URL parser takes them for a fragment or a query and drops what follows, so the lake
    would silently be another folder or prefix. No percent-decoding: ``%20`` is kept as
    written."""
    for mark in "#?":
        if mark in url:
            raise ConfigError(
                f"{where}: lake URL {url!r} has a {mark!r}: a URL drops what follows it, so "
                "the lake would be another path; use a folder or prefix without it"
            )
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(
                f"{where}: lake URL {url!r} has no bucket (expected s3://bucket/prefix)"
            )
        return LakeURL("s3", parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"{where}: lake URL {url!r}: use file:///absolute/path or file:relative/path"
            )
        path = Path(parsed.path)
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return LakeURL("file", "", str(path))
    raise ConfigError(f"{where}: lake URL {url!r} must start with s3:// or file://")


class LakeStore(Protocol):
    """What the publisher and readers need from object storage."""

    url: str

    def check(self) -> None:
        """Fail with ConfigError if the lake cannot be reached or does not exist."""

    def put(self, key: str, data: bytes) -> None:
        """Store an object (data files: names are content-derived, overwrite is harmless)."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create an object only if absent. True if created, False if the key already existed."""

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        """All keys under prefix, sorted; with ``start_after``, only keys after it (S3's
        ``StartAfter``: the store skips the rest, so the cost follows what is new)."""

    def children(self, prefix: str) -> builtins.list[str]:
        """Names of the folders directly under ``prefix``, sorted; one listing
        call however many objects they hold."""

    def delete(self, key: str) -> None: ...

    def entries(self, prefix: str) -> builtins.list[tuple[str, float]]:
        """Every stored name under prefix with its modification time (epoch seconds),
        including leftovers of interrupted writes (temporary files)."""

    def abort_incomplete_uploads(self, prefix: str, older_than: float) -> builtins.list[str]:
        """Abort multipart uploads under prefix started before ``older_than`` (epoch)."""


class FileLakeStore:
    """A lake on a local or mounted filesystem."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def check(self) -> None:
        """The lake's folder is there, or the first write can create it (its nearest
        existing parent is a writable folder). Creates nothing: a mistyped path leaves no
        folder behind. Raises ConfigError naming the lake."""
        if self.root.is_dir():
            return
        if self.root.exists():
            raise ConfigError(f"lake {self.url} is not writable: not a directory")
        parent = self.root.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"lake {self.url} is not writable: {parent} is not a writable directory"
            )

    def _write_temp(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic create-only: fails if the name exists
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_dir(path.parent)
        return True

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        keys = [
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        ]
        return sorted(k for k in keys if start_after is None or k > start_after)

    def children(self, prefix: str) -> builtins.list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def entries(self, prefix: str) -> builtins.list[tuple[str, float]]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(
            (str(p.relative_to(self.root)), p.stat().st_mtime)
            for p in base.rglob("*")
            if p.is_file()
        )

    def abort_incomplete_uploads(self, prefix: str, older_than: float) -> builtins.list[str]:
        return []  # a filesystem write is one temporary file; entries() lists those


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_lake(url: str, base: Path | None = None) -> LakeStore:
    """Open the lake named by a URL (see ``parse_lake_url``)."""
    parsed = parse_lake_url(url, base=base)
    if parsed.scheme == "s3":
        from destinations.s3 import S3LakeStore  # boto3 only when the lake is on S3

        return S3LakeStore(parsed.bucket, parsed.prefix)
    return FileLakeStore(parsed.prefix)
