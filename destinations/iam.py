"""A least-privilege IAM policy for one job's S3 lake.

The job may list and read under its own prefix, write data objects there, and write
manifests only as conditional creates (``If-None-Match``); deletes are allowed only
when asked for (garbage collection); every request must use TLS. Encryption at rest
is requested on every write by deltaferry itself; enforce it on the bucket with
default encryption (a policy condition on the SSE header would also refuse the
parts of multipart uploads, which do not carry it). With several producers
(``multi_producer``), a producer may write only its own chain; the conflict override
log (``*/overrides/*``) is for operators and is not in this policy.
"""

from __future__ import annotations

from typing import Any

from deltaferry.config import JobConfig
from deltaferry.errors import ConfigError
from deltaferry.settings import from_env
from destinations.lake import parse_lake_url


def policy_for(job: JobConfig, *, allow_delete: bool = False) -> dict[str, Any]:
    lake = parse_lake_url(job.lake, where=f"job '{job.name}'", base=job.base_dir)
    if lake.scheme != "s3":
        raise ConfigError(f"job '{job.name}': iam-policy applies to s3:// lakes, not {job.lake}")
    bucket = f"arn:aws:s3:::{lake.bucket}"
    prefix = f"{lake.prefix}/{job.name}" if lake.prefix else job.name
    objects = f"{bucket}/{prefix}/*"
    # with several producers, each writes only its own chain
    chain = f"*/producers/{job.producer_id}" if job.multi_producer else "*"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListOwnPrefix",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket,
            # IfExists: HeadBucket (the start-up check) sends no prefix
            "Condition": {"StringLikeIfExists": {"s3:prefix": [f"{prefix}/*"]}},
        },
        {"Sid": "ReadOwnObjects", "Effect": "Allow", "Action": "s3:GetObject", "Resource": objects},
        {
            "Sid": "WriteDataObjects",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"{bucket}/{prefix}/{chain}/data/*",
        },
        {
            "Sid": "CreateOnlyManifests",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"{bucket}/{prefix}/{chain}/manifests/*",
            "Condition": {"Null": {"s3:if-none-match": "false"}},
        },
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Action": "s3:*",
            "Resource": [bucket, f"{bucket}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
    ]
    if from_env().object_lock_days:
        statements.append(
            {
                "Sid": "LockManifests",
                "Effect": "Allow",
                "Action": "s3:PutObjectRetention",
                "Resource": f"{bucket}/{prefix}/{chain}/manifests/*",
            }
        )
    if allow_delete:
        statements.append(
            {
                "Sid": "GarbageCollection",
                "Effect": "Allow",
                "Action": ["s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": objects,
            }
        )
        statements.append(
            {
                "Sid": "ListIncompleteUploads",
                "Effect": "Allow",
                "Action": "s3:ListBucketMultipartUploads",
                "Resource": bucket,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}
