"""`pingvas storage init`: the buckets and their configuration, from one plan.

The plan is a list of S3 calls with their exact parameters (what `--dry-run` prints). Applying it
is safe to repeat: every call is a PUT of the whole configuration, and creating a bucket the
caller already owns is success. Each bucket:

- blocks public access (images are reached only through presigned URLs);
- has default encryption (SSE-S3);
- is versioned, but for logs, which are written once and expire (versions would only keep
  expired logs);
- has the seed's lifecycle: images go to Standard-IA at 30 days and to Glacier Instant Retrieval
  at 90 (Instant Retrieval, not the seed's Deep Archive, so that presigned GETs of old images
  keep working); old versions of every versioned bucket expire after 30 days; logs expire
  after 30 days and backups after 90 (the seed's retention); input images uploaded to the
  images bucket's `uploads/` expire after a day (a generation that uses one keeps a copy);
- the images bucket allows the console's origins to GET (CORS), for <img> and fetch.

A call the server does not implement (SeaweedFS has no public access block and no lifecycle
transitions) is reported by name and skipped; any other refusal fails the init.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from services.common.settings import ObjectStoreSettings
from services.common.storage import UPLOADS_PREFIX, open_s3_client

OLD_VERSIONS_EXPIRE_DAYS = 30
LOGS_EXPIRE_DAYS = 30
BACKUPS_EXPIRE_DAYS = 90
# Input images uploaded for a generation (CreateUpload); a generation that uses one copies it.
UPLOADS_EXPIRE_DAYS = 1
UNFINISHED_UPLOADS_ABORT_DAYS = 7
VERSIONED = ("images", "models", "backups")

# Codes an S3 server answers for a call it does not implement.
NOT_IMPLEMENTED = {"NotImplemented", "NotImplementedError", "MethodNotAllowed"}
# A bucket the caller already owns: CreateBucket is done.
ALREADY_OWNED = {"BucketAlreadyOwnedByYou"}


@dataclass(frozen=True)
class BucketCall:
    """One S3 call of the plan: the operation's name in botocore's service model and its
    parameters, exactly as sent."""

    bucket_role: str
    operation: str
    params: dict[str, Any]

    @property
    def method(self) -> str:
        """The client method: PutBucketVersioning -> put_bucket_versioning."""
        return "".join(f"_{c.lower()}" if c.isupper() else c for c in self.operation).lstrip("_")

    def as_json(self) -> dict[str, Any]:
        return {"bucket": self.bucket_role, "operation": self.operation, "params": self.params}


def _lifecycle_rules(role: str) -> list[dict[str, Any]]:
    everything: dict[str, Any] = {"Prefix": ""}
    rules: list[dict[str, Any]] = []
    if role == "images":
        rules.append(
            {
                "ID": "images-to-cheaper-storage",
                "Status": "Enabled",
                "Filter": everything,
                "Transitions": [
                    {"Days": 30, "StorageClass": "STANDARD_IA"},
                    {"Days": 90, "StorageClass": "GLACIER_IR"},
                ],
            }
        )
    if role == "images":
        rules.append(
            {
                "ID": "uploads-expire",
                "Status": "Enabled",
                "Filter": {"Prefix": UPLOADS_PREFIX},
                "Expiration": {"Days": UPLOADS_EXPIRE_DAYS},
            }
        )
    if role == "logs":
        rules.append(
            {
                "ID": "logs-expire",
                "Status": "Enabled",
                "Filter": everything,
                "Expiration": {"Days": LOGS_EXPIRE_DAYS},
            }
        )
    if role == "backups":
        rules.append(
            {
                "ID": "backups-expire",
                "Status": "Enabled",
                "Filter": everything,
                "Expiration": {"Days": BACKUPS_EXPIRE_DAYS},
            }
        )
    if role in VERSIONED:
        rules.append(
            {
                "ID": "old-versions-expire",
                "Status": "Enabled",
                "Filter": everything,
                "NoncurrentVersionExpiration": {"NoncurrentDays": OLD_VERSIONS_EXPIRE_DAYS},
            }
        )
    rules.append(
        {
            "ID": "unfinished-uploads-abort",
            "Status": "Enabled",
            "Filter": everything,
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": UNFINISHED_UPLOADS_ABORT_DAYS},
        }
    )
    return rules


def bucket_plan(settings: ObjectStoreSettings) -> list[BucketCall]:
    """Every call `storage init` makes, in order."""
    calls: list[BucketCall] = []
    for role, bucket in settings.buckets.items():
        create: dict[str, Any] = {"Bucket": bucket}
        if settings.region != "us-east-1":  # us-east-1 refuses its own name as a constraint
            create["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
        calls.append(BucketCall(role, "CreateBucket", create))
        calls.append(
            BucketCall(
                role,
                "PutPublicAccessBlock",
                {
                    "Bucket": bucket,
                    "PublicAccessBlockConfiguration": {
                        "BlockPublicAcls": True,
                        "IgnorePublicAcls": True,
                        "BlockPublicPolicy": True,
                        "RestrictPublicBuckets": True,
                    },
                },
            )
        )
        calls.append(
            BucketCall(
                role,
                "PutBucketEncryption",
                {
                    "Bucket": bucket,
                    "ServerSideEncryptionConfiguration": {
                        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                    },
                },
            )
        )
        if role in VERSIONED:
            calls.append(
                BucketCall(
                    role,
                    "PutBucketVersioning",
                    {"Bucket": bucket, "VersioningConfiguration": {"Status": "Enabled"}},
                )
            )
        if role == "images":
            calls.append(
                BucketCall(
                    role,
                    "PutBucketCors",
                    {
                        "Bucket": bucket,
                        "CORSConfiguration": {
                            "CORSRules": [
                                {
                                    "AllowedOrigins": list(settings.cors_origins),
                                    "AllowedMethods": ["GET", "HEAD"],
                                    "AllowedHeaders": ["*"],
                                    "MaxAgeSeconds": 3600,
                                }
                            ]
                        },
                    },
                )
            )
        calls.append(
            BucketCall(
                role,
                "PutBucketLifecycleConfiguration",
                {"Bucket": bucket, "LifecycleConfiguration": {"Rules": _lifecycle_rules(role)}},
            )
        )
    return calls


def plan_as_json(calls: list[BucketCall]) -> str:
    return json.dumps([call.as_json() for call in calls], indent=2)


async def apply_plan(settings: ObjectStoreSettings, calls: list[BucketCall]) -> list[str]:
    """Make every call; returns one line per call saying what happened. Raises on a refusal
    that is not 'not implemented'."""
    lines = []
    async with open_s3_client(settings) as client:
        for call in calls:
            bucket = call.params["Bucket"]
            try:
                await getattr(client, call.method)(**call.params)
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if call.operation == "CreateBucket" and code in ALREADY_OWNED:
                    lines.append(f"{bucket}: exists")
                    continue
                if code in NOT_IMPLEMENTED:
                    lines.append(f"{bucket}: {call.operation} is not implemented by this S3 server; skipped")
                    continue
                raise
            lines.append(f"{bucket}: {call.operation} done")
    return lines


def summary(lines: list[str]) -> Iterator[str]:
    """The lines, then one that names each call skipped and for which buckets."""
    yield from lines
    skipped: dict[str, list[str]] = {}
    for line in lines:
        if "is not implemented" in line:
            bucket, rest = line.split(": ", 1)
            skipped.setdefault(rest.split(" is not")[0], []).append(bucket)
    if skipped:
        yield "not implemented by this S3 server, so not configured: " + "; ".join(
            f"{operation} ({', '.join(buckets)})" for operation, buckets in skipped.items()
        )
