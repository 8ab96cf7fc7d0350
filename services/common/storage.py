"""Where generated images live: S3 (AWS in production, the embedded SeaweedFS of `pingvas up` on
a laptop), through aiobotocore, so no call blocks the event loop.

An image is two objects side by side under the seed's layout: the PNG at
`{user_id}/{yyyy}/{mm}/{id}.png` and its WebP thumbnail at `{user_id}/{yyyy}/{mm}/{id}.thumb.webp`.
Each is written once and never changed (a new image gets a new id), so they carry a long,
private cache lifetime. Clients read them through presigned GET URLs, or, in production, URLs
signed for a CloudFront distribution in front of the bucket (services/common/cloudfront.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.common.cloudfront import CloudFrontUrls
from services.common.settings import CloudFrontSettings, ObjectStoreSettings

# Input images (CreateUpload) sit beside the generated ones: an upload under `uploads/`, which
# the bucket's lifecycle expires after a day, and, once a generation uses it, its copy under
# `inputs/`, kept. Neither is an image with an `images` row, so `storage gc` leaves both alone.
UPLOADS_PREFIX = "uploads/"
INPUTS_PREFIX = "inputs/"
INPUT_IMAGE_PREFIXES = (UPLOADS_PREFIX, INPUTS_PREFIX)
PNG_CONTENT_TYPE = "image/png"
THUMBNAIL_CONTENT_TYPE = "image/webp"
# Immutable objects, each reachable only through its own presigned URL: a browser keeps them,
# a shared cache does not.
IMAGE_CACHE_CONTROL = "private, max-age=31536000, immutable"


@dataclass(frozen=True)
class ImageKeys:
    """The keys of one image's objects."""

    png: str
    thumbnail: str

    @classmethod
    def of(cls, user_id: uuid.UUID, image_id: uuid.UUID, created: datetime) -> ImageKeys:
        """The seed's layout: {user_id}/{yyyy}/{mm}/{image}.png, the thumbnail beside it."""
        stem = f"{user_id}/{created:%Y}/{created:%m}/{image_id}"
        return cls(png=f"{stem}.png", thumbnail=f"{stem}.thumb.webp")

    @classmethod
    def from_png_key(cls, png_key: str) -> ImageKeys:
        return cls(png=png_key, thumbnail=png_key.removesuffix(".png") + ".thumb.webp")


class ObjectStoreUnavailable(Exception):
    """S3 did not answer, or refused the request: the store cannot be used now."""


class ObjectMissing(Exception):
    """No object under the key."""


class ImageStore(Protocol):
    async def put(self, key: str, data: bytes, *, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def presigned_url(self, key: str) -> str: ...


@dataclass(frozen=True)
class StoredObject:
    """A key of the bucket and when its newest version (or delete marker) was written."""

    key: str
    last_modified: datetime


@dataclass(frozen=True)
class ImageUrls:
    """Presigned GET URLs of one image's objects."""

    image: str
    thumbnail: str


def s3_client_config(settings: ObjectStoreSettings) -> Config:
    return Config(
        region_name=settings.region,
        signature_version="s3v4",
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        # Path style works on every endpoint (SeaweedFS, VPC endpoints); AWS still accepts it
        # for existing buckets.
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
    )


@contextlib.asynccontextmanager
async def open_s3_client(settings: ObjectStoreSettings) -> AsyncIterator[Any]:
    """One aiobotocore S3 client (one connection pool) for as long as the block runs. Keys from
    settings when given, else boto's default chain (IRSA, instance profile, AWS_* variables)."""
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=s3_client_config(settings),
    ) as client:
        yield client


def call_deadline_seconds(settings: ObjectStoreSettings) -> float:
    """The longest one S3 call may take by its own settings: every attempt's connect and read.
    Enforced around each call as well, because a server that accepts a connection and then
    says nothing holds a PUT past botocore's timeouts (aiohttp waits for its `100 Continue`
    without one), and a worker storing an image must give up well within its job's lease."""
    return settings.max_attempts * (settings.connect_timeout_seconds + settings.read_timeout_seconds)


class RecentlySignedUrls:
    """Signed GET URLs by object key, each handed out again while it is young: for a tenth of
    its lifetime, so that every URL handed out still works for nine tenths of it or more. The
    thousand watchers of one generation, or a gallery page loaded twice, then share one
    signature (about half a millisecond of CPU each) and one URL that a browser can cache.
    Bounded: past `max_keys`, the URLs signed longest ago give way."""

    def __init__(
        self, ttl_seconds: float, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reuse_seconds = ttl_seconds / 10
        self.max_keys = max_keys
        self._clock = clock
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()  # oldest signature first

    def get(self, key: str) -> str | None:
        entry = self._urls.get(key)
        if entry is None:
            return None
        url, signed_at = entry
        if self._clock() - signed_at >= self.reuse_seconds:
            del self._urls[key]
            return None
        return url

    def put(self, key: str, url: str) -> None:
        self._urls[key] = (url, self._clock())
        self._urls.move_to_end(key)
        while len(self._urls) > self.max_keys:
            self._urls.popitem(last=False)

    def forget(self, key: str) -> None:
        self._urls.pop(key, None)


class S3ImageStore:
    """The images bucket, through one aiobotocore client."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        url_ttl_seconds: int,
        call_deadline_seconds: float = 60.0,
        cloudfront: CloudFrontUrls | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.url_ttl_seconds = url_ttl_seconds
        self.call_deadline_seconds = call_deadline_seconds
        self.cloudfront = cloudfront
        self._recent_urls = RecentlySignedUrls(url_ttl_seconds)

    async def put(self, key: str, data: bytes, *, content_type: str) -> None:
        try:
            async with asyncio.timeout(self.call_deadline_seconds):
                await self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType=content_type,
                    CacheControl=IMAGE_CACHE_CONTROL,
                )
        except (BotoCoreError, ClientError, TimeoutError) as error:
            raise ObjectStoreUnavailable(f"storing s3://{self.bucket}/{key} failed: {error!r}") from error

    async def get(self, key: str) -> bytes:
        try:
            async with asyncio.timeout(self.call_deadline_seconds):
                reply = await self.client.get_object(Bucket=self.bucket, Key=key)
                async with reply["Body"] as body:
                    data: bytes = await body.read()
                    return data
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectMissing(key) from None
            raise ObjectStoreUnavailable(f"reading s3://{self.bucket}/{key} failed: {error!r}") from error
        except (BotoCoreError, TimeoutError) as error:
            raise ObjectStoreUnavailable(f"reading s3://{self.bucket}/{key} failed: {error!r}") from error

    async def size(self, key: str) -> int:
        """The size in bytes of the object under `key`, without reading it (HEAD)."""
        try:
            async with asyncio.timeout(self.call_deadline_seconds):
                reply = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(key) from None
            raise ObjectStoreUnavailable(f"reading s3://{self.bucket}/{key} failed: {error!r}") from error
        except (BotoCoreError, TimeoutError) as error:
            raise ObjectStoreUnavailable(f"reading s3://{self.bucket}/{key} failed: {error!r}") from error
        return int(reply["ContentLength"])

    async def copy(self, source_key: str, key: str) -> None:
        """Copy the object under `source_key` to `key`, inside the bucket (no bytes pass here)."""
        try:
            async with asyncio.timeout(self.call_deadline_seconds):
                await self.client.copy_object(
                    Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key}
                )
        except (BotoCoreError, ClientError, TimeoutError) as error:
            raise ObjectStoreUnavailable(
                f"copying s3://{self.bucket}/{source_key} to {key} failed: {error!r}"
            ) from error

    async def presigned_put_url(self, key: str, *, content_type: str, size: int, ttl_seconds: int) -> str:
        """A PUT URL for `key` that works for `ttl_seconds` and only for a body of `size` bytes
        sent as `content_type`: both headers are signed. Signed locally, no request."""
        url: str = await self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": size},
            ExpiresIn=ttl_seconds,
        )
        return url

    async def delete_every_version(self, key: str) -> int:
        """Remove the object under `key` with every version and delete marker the versioned
        bucket keeps of it, so nothing under the key can be read again (a presigned URL of it
        answers 404 at once). Returns how many versions it removed; none is not an error."""
        self._recent_urls.forget(key)
        try:
            async with asyncio.timeout(self.call_deadline_seconds):
                versions = [
                    version["VersionId"]
                    async for version in self._versions(prefix=key)
                    if version["Key"] == key
                ]
                # One call a version: an image has a version or two, and DeleteObjects would
                # add a checksum header some S3 servers refuse.
                for version_id in versions:
                    await self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except (BotoCoreError, ClientError, TimeoutError) as error:
            raise ObjectStoreUnavailable(f"deleting s3://{self.bucket}/{key} failed: {error!r}") from error
        return len(versions)

    async def _versions(self, *, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Every version and delete marker under `prefix`, each with its Key, VersionId and
        LastModified, in key order (S3 pages in key order, but lists a page's versions and its
        delete markers apart)."""
        paginator = self.client.get_paginator("list_object_versions")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            entries = [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]
            for version in sorted(entries, key=lambda entry: str(entry["Key"])):
                yield version

    async def stored_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """Every key of the bucket (under `prefix`) that holds any version or delete marker,
        once, with when its newest one was written."""
        current: StoredObject | None = None
        try:
            async for version in self._versions(prefix=prefix):
                key, written = version["Key"], version["LastModified"]
                if current is not None and current.key != key:
                    yield current  # keys come in order: the previous one is complete
                    current = None
                if current is None or written > current.last_modified:
                    current = StoredObject(key, written)
        except (BotoCoreError, ClientError) as error:
            raise ObjectStoreUnavailable(f"listing s3://{self.bucket} failed: {error!r}") from error
        if current is not None:
            yield current

    async def presigned_url(self, key: str) -> str:
        """A GET URL for the object, signed for url_ttl_seconds and working for nine tenths of
        that or more (`RecentlySignedUrls`): CloudFront's when configured, S3's otherwise.
        Signed locally, no request."""
        url = self._recent_urls.get(key)
        if url is None:
            url = self.cloudfront.url(key) if self.cloudfront is not None else await self._s3_url(key)
            self._recent_urls.put(key, url)
        return url

    async def _s3_url(self, key: str) -> str:
        url: str = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_ttl_seconds
        )
        return url

    async def image_urls(self, keys: ImageKeys) -> ImageUrls:
        return ImageUrls(await self.presigned_url(keys.png), await self.presigned_url(keys.thumbnail))


async def open_image_store(
    settings: ObjectStoreSettings, *, url_ttl_seconds: int, cloudfront: CloudFrontSettings | None = None
) -> tuple[S3ImageStore, Callable[[], Awaitable[None]]]:
    """The images bucket for a process's lifetime, and what closes its client at shutdown. Its
    URLs are CloudFront's when `cloudfront` configures a distribution."""
    stack = contextlib.AsyncExitStack()
    client = await stack.enter_async_context(open_s3_client(settings))
    store = S3ImageStore(
        client,
        settings.images_bucket,
        url_ttl_seconds=url_ttl_seconds,
        call_deadline_seconds=call_deadline_seconds(settings),
        cloudfront=CloudFrontUrls.from_settings(cloudfront, ttl_seconds=url_ttl_seconds)
        if cloudfront
        else None,
    )
    return store, stack.aclose
