"""The S3 lake store (``S3LakeStore``, through boto3) and the AWS plumbing the S3-facing
parts of deltaferry share: the session (credentials, assume-role), the client
configuration (retries, timeouts, checksums from the settings) and the TLS rule.

The commit point is ``put_if_absent``: a conditional PUT (``If-None-Match: *``), so a
manifest is never overwritten; every PUT carries Content-MD5, so a torn body is refused.
"""

from __future__ import annotations

# the store's ``list`` method shadows the builtin in its class body: annotations there
# that follow it name the type as ``builtins.list``
import builtins
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from deltaferry.errors import ConfigError, TerminalError, TransientError
from deltaferry.settings import from_env

if TYPE_CHECKING:
    import boto3


def s3_client_config() -> object:
    """botocore config: standard retry mode (backoff with full jitter) for single requests.

    ``DELTAFERRY_S3_MAX_ATTEMPTS`` (default 5), ``DELTAFERRY_S3_CONNECT_TIMEOUT`` and
    ``DELTAFERRY_S3_READ_TIMEOUT`` (seconds) tune it; ``DELTAFERRY_S3_CHECKSUM``
    (``when_required`` by default, or ``when_supported``) sets
    ``request_checksum_calculation`` for servers that reject the newer checksum headers.
    """
    from botocore.config import Config

    env = from_env()
    return Config(
        retries={"mode": "standard", "max_attempts": env.s3_max_attempts},
        connect_timeout=env.s3_connect_timeout,
        read_timeout=env.s3_read_timeout,
        request_checksum_calculation=env.s3_checksum,
        response_checksum_validation=env.s3_checksum,
    )


def _require_tls(endpoint: str, lake: str) -> None:
    require_tls(endpoint, f"lake {lake}")


def require_tls(endpoint: str, what: str) -> None:
    """Plain HTTP only to loopback; anything else needs TLS unless explicitly allowed.
    ``what`` names the user of the endpoint in the message (``lake s3://...``)."""
    import ipaddress
    import logging

    parsed = urlparse(endpoint)
    if parsed.scheme != "http":
        return
    host = parsed.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return
    if from_env().allow_insecure_http:
        logging.getLogger("deltaferry").warning(
            "%s: plain HTTP to %s allowed by DELTAFERRY_ALLOW_INSECURE_HTTP", what, host
        )
        return
    raise ConfigError(
        f"{what}: endpoint {endpoint} uses plain HTTP to a remote host; use https:// "
        "(or set DELTAFERRY_ALLOW_INSECURE_HTTP=1 to accept the risk)"
    )


_LOADERS: dict[str, object] = {}  # botocore data path -> its shared loader


def _boto3_session(
    region_name: str | None = None, credential_provider: object | None = None
) -> boto3.session.Session:
    """A new boto3 session whose botocore data files (service models, endpoint rules) are
    read through one loader per data path shared by the process: the loader keeps what it
    parsed, so a session after the first makes its S3 client in about 20 ms instead of
    150-350 ms. Credentials, region and client configuration stay the new session's own,
    read from the environment now as a fresh session's are; ``credential_provider``
    replaces botocore's credential chain."""
    import boto3
    from botocore.loaders import create_loader
    from botocore.session import get_session

    core = get_session()
    data_path = core.get_config_variable("data_path") or ""
    loader = _LOADERS.get(data_path)
    if loader is None:
        loader = _LOADERS[data_path] = create_loader(data_path or None)
    core.register_component("data_loader", loader)
    if credential_provider is not None:
        core.register_component("credential_provider", credential_provider)
    session = boto3.session.Session(botocore_session=core, region_name=region_name)
    # boto3 adds its own data folder to the loader's search paths for every session: once
    # is enough for a shared loader
    paths = loader.search_paths  # type: ignore[attr-defined]
    paths[:] = list(dict.fromkeys(paths))
    return session


def aws_session() -> boto3.session.Session:
    """A boto3 session: the AWS default credential chain, or, when
    ``DELTAFERRY_ASSUME_ROLE_ARN`` is set, a role assumed through STS for
    ``DELTAFERRY_ASSUME_ROLE_SECONDS`` (default 3600) and refreshed before it expires."""
    base = _boto3_session()
    env = from_env()
    role = env.assume_role_arn
    if not role:
        return base
    from botocore.credentials import (
        CredentialProvider,
        CredentialResolver,
        RefreshableCredentials,
    )

    sts = base.client("sts")
    duration = env.assume_role_seconds

    def fetch() -> dict[str, str]:
        c = sts.assume_role(RoleArn=role, RoleSessionName="deltaferry", DurationSeconds=duration)[
            "Credentials"
        ]
        return {
            "access_key": c["AccessKeyId"],
            "secret_key": c["SecretAccessKey"],
            "token": c["SessionToken"],
            "expiry_time": c["Expiration"].isoformat(),
        }

    try:
        creds = RefreshableCredentials.create_from_metadata(
            metadata=fetch(), refresh_using=fetch, method="sts-assume-role"
        )
    except Exception as e:  # noqa: BLE001 - any STS failure is a configuration problem here
        raise ConfigError(f"assuming role {role} failed: {e}") from None

    class AssumedRole(CredentialProvider):
        """The assumed role's credentials, which botocore refreshes through ``fetch``."""

        METHOD = "sts-assume-role"
        CANONICAL_NAME = "custom-deltaferry-assume-role"

        def load(self) -> RefreshableCredentials:
            return creds

    # the session's credential chain is this provider alone (botocore's public components:
    # a CredentialResolver registered as the session's 'credential_provider')
    return _boto3_session(
        region_name=base.region_name,
        credential_provider=CredentialResolver(providers=[AssumedRole()]),
    )


class S3LakeStore:
    """A lake in an S3 bucket (or any S3-compatible store), through boto3.

    The endpoint comes from the standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
    variables, credentials from the AWS default chain. Objects are written with
    server-side encryption (``DELTAFERRY_S3_SSE``, default ``AES256``; ``none`` turns it off).
    """

    def __init__(self, bucket: str, prefix: str) -> None:

        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client = aws_session().client("s3", config=s3_client_config())
        _require_tls(self._client.meta.endpoint_url, self.url)
        env = from_env()
        sse = env.s3_sse
        self._sse: dict[str, str] = {} if sse == "none" else {"ServerSideEncryption": sse}
        self._multipart_threshold = env.s3_multipart_threshold
        if sse == "aws:kms" and env.s3_sse_kms_key_id:
            self._sse["SSEKMSKeyId"] = env.s3_sse_kms_key_id

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise ConfigError(
                    f"lake {self.url}: bucket '{self.bucket}' does not exist"
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(
                    f"lake {self.url}: access denied ({code}); check the AWS credentials"
                ) from None
            raise ConfigError(f"lake {self.url}: {code or e}") from None
        except BotoCoreError as e:
            raise ConfigError(
                f"lake {self.url} is unreachable at {self._client.meta.endpoint_url}: {e}"
            ) from None

    def put(self, key: str, data: bytes) -> None:
        """Objects from ``DELTAFERRY_S3_MULTIPART_THRESHOLD`` bytes (default 64 MiB) up go as
        multipart uploads; a failed one is aborted by boto3, and ``gc`` aborts any left by
        a killed process."""
        if len(data) < self._multipart_threshold:
            with _s3_errors(self, key):
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=data,
                    ContentMD5=_md5_b64(data),
                    **self._sse,
                )
            return
        import io

        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self._multipart_threshold,
            multipart_chunksize=max(self._multipart_threshold // 2, 5 * 1024 * 1024),
            use_threads=False,
        )
        with _s3_errors(self, key):
            self._client.upload_fileobj(
                io.BytesIO(data),
                self.bucket,
                self._key(key),
                ExtraArgs=dict(self._sse),
                Config=config,
            )

    def _retention(self) -> dict[str, object]:
        """Object Lock retention for commit records, when ``DELTAFERRY_OBJECT_LOCK_DAYS`` is
        set (the bucket must have Object Lock enabled): a committed manifest can then be
        neither deleted nor overwritten until it expires. Mode: ``DELTAFERRY_OBJECT_LOCK_MODE``
        (``GOVERNANCE`` by default, or ``COMPLIANCE``)."""
        env = from_env()
        if not env.object_lock_days:
            return {}
        from datetime import UTC, datetime, timedelta

        return {
            "ObjectLockMode": env.object_lock_mode,
            "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=env.object_lock_days),
            "ChecksumAlgorithm": "SHA256",  # S3 requires an integrity checksum with Object Lock
        }

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(
                self, key, passthrough=("PreconditionFailed", "ConditionalRequestConflict")
            ):
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=data,
                    ContentMD5=_md5_b64(data),  # the store refuses a torn body
                    IfNoneMatch="*",
                    **self._sse,
                    **self._retention(),
                )
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "PreconditionFailed":
                return False
            # 409: a concurrent conditional write is in flight; the caller re-reads and decides
            raise TransientError(
                f"lake {self.url}: conditional write of {key} conflicted ({code}); retry"
            ) from e
        return True

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(self, key, passthrough=("NoSuchKey", "404")):
                resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
                return resp["Body"].read()
        except ClientError:
            return None

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        keys: list[str] = []
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        after = {"StartAfter": self._key(start_after)} if start_after else {}
        with _s3_errors(self, prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full, **after):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def children(self, prefix: str) -> builtins.list[str]:
        names: list[str] = []
        full = self._key(prefix)
        with _s3_errors(self, prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
                names.extend(
                    p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                )
        return sorted(names)

    def delete(self, key: str) -> None:
        with _s3_errors(self, key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def entries(self, prefix: str) -> builtins.list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        with _s3_errors(self, prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                out.extend(
                    (o["Key"][strip:], o["LastModified"].timestamp())
                    for o in page.get("Contents", [])
                )
        return sorted(out)

    def abort_incomplete_uploads(self, prefix: str, older_than: float) -> builtins.list[str]:
        aborted: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        with _s3_errors(self, prefix):
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for up in page.get("Uploads", []):
                    if up["Initiated"].timestamp() < older_than:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        aborted.append(up["Key"][strip:])
        return aborted


_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ServiceUnavailable",
    "InternalError",
    "500",
    "502",
    "503",
    "504",
    "ConditionalRequestConflict",
}


class _s3_errors:
    """Map botocore errors to deltaferry's transient/terminal classes (after botocore's own retries)."""

    def __init__(self, store: S3LakeStore, key: str, passthrough: tuple[str, ...] = ()) -> None:
        self.store, self.key, self.passthrough = store, key, passthrough

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: object
    ) -> Literal[False]:
        if exc is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"lake {self.store.url} object {self.key}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in self.passthrough:
                return False
            if code in _TRANSIENT_CODES:
                raise TransientError(f"{where}: {code} (retries exhausted)") from exc
            raise TerminalError(
                f"{where}: {code}: {exc.response.get('Error', {}).get('Message', '')}"
            ) from exc
        if isinstance(exc, BotoCoreError):
            raise TransientError(f"{where}: {exc}") from exc
        from boto3.exceptions import S3UploadFailedError

        if isinstance(exc, S3UploadFailedError):
            raise TransientError(
                f"{where}: multipart upload failed and was aborted: {exc}"
            ) from exc
        return False


def _md5_b64(data: bytes) -> str:
    """Content-MD5 of a PUT: S3 and S3-compatible stores verify it and refuse a body that
    arrived torn (a link cut mid-request) instead of storing it."""
    import base64
    import hashlib

    return base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - integrity, not security
