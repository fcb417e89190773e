"""Where a files job's drops are: a folder or an S3 prefix, listed with the times and tags
the watermark compares, and read as bytes."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltaferry.config import JobConfig
from deltaferry.errors import ConfigError, TransientError


@dataclass(frozen=True)
class DropFile:
    """A file as listed: its path relative to the job's url, modification time, and a tag
    that changes with its content (the size in a folder, the ETag on S3)."""

    name: str
    mtime_ns: int
    tag: str


class SetAside(Exception):
    """A file that cannot be read as a table of the job: what is wrong and what to do."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


# --- where the files are -----------------------------------------------------------------


class Folder:
    """Files under a local (or mounted) folder."""

    reread = "touch the file to re-read it"

    def __init__(self, job: JobConfig, root: Path) -> None:
        self.where = f"job '{job.name}': folder {root}"
        self.root = root

    def check(self) -> None:
        if not self.root.exists():
            raise ConfigError(f"{self.where} does not exist; create it or fix the job's url")
        if not self.root.is_dir():
            raise ConfigError(f"{self.where} is not a folder; fix the job's url")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(f"{self.where} cannot be read (permission denied)")

    def list(self, pattern: str) -> list[DropFile]:
        match = glob_regex(pattern)
        start, deep = _literal_dir(pattern)
        out: list[DropFile] = []
        stack = [self.root / start] if start else [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            except PermissionError:
                raise ConfigError(
                    f"{self.where}: {folder} cannot be read (permission denied)"
                ) from None
            for e in entries:
                if _hidden(e.name):
                    continue
                if e.is_dir(follow_symlinks=False):
                    if deep:
                        stack.append(Path(e.path))
                    continue
                rel = Path(e.path).relative_to(self.root).as_posix()
                if not match.match(rel):
                    continue
                try:
                    st = os.stat(e.path)
                except FileNotFoundError:  # gone since listed
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append(DropFile(rel, st.st_mtime_ns, str(st.st_size)))
        return out

    def read(self, f: DropFile) -> bytes | None:
        """The file's bytes, or None when it is gone."""
        try:
            return (self.root / f.name).read_bytes()
        except FileNotFoundError:
            return None
        except PermissionError:
            raise SetAside("unreadable (permission denied)", "grant read access") from None
        except OSError as e:
            raise TransientError(f"{self.where}: reading {f.name} failed: {e}") from e


class S3Prefix:
    """Objects under an S3 prefix, through boto3 (endpoint and credentials as for the lake)."""

    reread = "upload it again to re-read it"

    def __init__(self, job: JobConfig, bucket: str, prefix: str) -> None:
        from destinations.s3 import aws_session, require_tls, s3_client_config

        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.where = f"job '{job.name}': source {self.url}"
        self._client: Any = aws_session().client("s3", config=s3_client_config())
        require_tls(self._client.meta.endpoint_url, f"job '{job.name}': source {self.url}")

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as e:  # noqa: BLE001 - classified below
            raise self._error(e, "listing") from None

    def list(self, pattern: str) -> list[DropFile]:
        match = glob_regex(pattern)
        start, deep = _literal_prefix(pattern)
        extra = {} if deep else {"Delimiter": "/"}
        out: list[DropFile] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + start, **extra
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) :]
                    if rel.endswith("/") or any(_hidden(p) for p in rel.split("/")):
                        continue
                    if match.match(rel):
                        mtime = obj["LastModified"]
                        ns = int(mtime.timestamp()) * 10**9 + mtime.microsecond * 1000
                        out.append(DropFile(rel, ns, obj.get("ETag", "").strip('"')))
        except Exception as e:  # noqa: BLE001 - classified below
            raise self._error(e, "listing") from None
        return out

    def read(self, f: DropFile) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self.prefix + f.name)
            return resp["Body"].read()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                return None
            if code in ("AccessDenied", "403"):
                raise SetAside(
                    "unreadable (access denied)", "allow s3:GetObject on it (and its KMS key)"
                ) from None
            raise self._error(e, f"reading {f.name}") from None
        except Exception as e:  # noqa: BLE001 - classified below
            raise self._error(e, f"reading {f.name}") from None

    def _error(self, e: Exception, doing: str) -> Exception:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchBucket", "404") and doing == "listing":
                return ConfigError(f"{self.where}: bucket '{self.bucket}' does not exist")
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return ConfigError(
                    f"{self.where}: access denied ({code}) {doing}; check the AWS credentials "
                    "and allow s3:ListBucket and s3:GetObject on the prefix"
                )
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                return TransientError(f"{self.where}: {doing} failed ({code}); retry")
            return ConfigError(f"{self.where}: {doing} failed: {code or e}")
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return ConfigError(
                f"{self.where}: no AWS credentials found ({type(e).__name__}); set them as for "
                "an S3 lake (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)"
            )
        if isinstance(e, (BotoCoreError, ConnectionError, TimeoutError)):
            return TransientError(
                f"{self.where} is unreachable at {self._client.meta.endpoint_url}: {e}"
            )
        return e


def drops_for(job: JobConfig) -> Folder | S3Prefix:
    """Where the job's files land: ``s3://bucket/prefix``, or a folder (``file:`` optional;
    a relative path is relative to the jobs file's folder)."""
    url = job.source_url()
    if url.startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        return S3Prefix(job, bucket, prefix)
    if url.startswith("file:"):
        from destinations.lake import parse_lake_url

        return Folder(
            job, Path(parse_lake_url(url, where=f"job '{job.name}'", base=job.base_dir).prefix)
        )
    path = Path(url).expanduser()
    return Folder(job, path if path.is_absolute() else job.base_dir / path)


def _hidden(name: str) -> bool:
    # files being written (.orders.csv.tmp) and markers (_SUCCESS) are not drops
    return name.startswith((".", "_"))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative paths: ``*`` and ``?`` stay within one folder, ``**/`` spans
    any number of folders, ``[abc]`` is a character class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _literal_prefix(pattern: str) -> tuple[str, bool]:
    """The pattern's text before its first wildcard, and whether matches may lie in
    sub-folders of where that text ends."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    return pattern[:cut], "/" in pattern[cut:] or "**" in pattern


def _literal_dir(pattern: str) -> tuple[str, bool]:
    prefix, deep = _literal_prefix(pattern)
    return prefix.rpartition("/")[0], deep
