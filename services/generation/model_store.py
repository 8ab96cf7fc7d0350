"""The model store: models in the models bucket, fetched once into a local cache that workers load
from (the seed's "EFS with S3 fallback").

The bucket is the truth. Each model lives under the seed's layout, `{family}/{name}/` (`sd15/`,
`sdxl/`, `flux/`) for a pipeline and `loras/{name}/` for a LoRA, its files (a diffusers
directory's, or one single-file checkpoint with its optional `config/`, or a LoRA's
`pytorch_lora_weights.safetensors`) beside a `manifest.json` that lists each file's path, size
and sha256 and what the catalog needs without downloading weights (family, kind, weight format,
sizes). A push writes the files
first and the manifest last, so a half-pushed model is invisible; the catalog reads only
manifests.

The cache is a local directory (the EFS mount in production, `PINGVAS_HOME/models` on a laptop),
shared by every worker on it. A model in the cache is a directory `{cache}/{name}` holding its
files and, written last, `.pingvas-manifest.json`, a copy of the manifest it was made from. A
fetch downloads a model exactly once across every process sharing the cache:

1. a directory whose copy matches the bucket's manifest is complete: use it;
2. else take the model's file lock (`{cache}/.locks/{name}.lock`; the kernel drops it when its
   holder dies, also by SIGKILL), and look again: another process may have finished meanwhile;
3. else download into `{cache}/.partial/{name}.{random}` (same filesystem), verifying each
   file's size and sha256 while it streams, write the manifest copy, and rename the directory
   into place, atomically.

So a directory present under its name is always complete, and an interrupted or corrupt
download never becomes visible as a model: what it leaves is under `.partial/`, which the
catalog skips and the next fetch of that model clears. A directory with no manifest copy (a
model built or copied in by hand, as `pingvas models create-tiny` does) is adopted when its
files match the manifest, and replaced when they do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from services.common.failpoints import Failpoint, Failpoints
from services.common.settings import ModelStoreSettings, ObjectStoreSettings
from services.common.storage import ObjectStoreUnavailable, open_s3_client
from services.generation.catalog import (
    LORA_WEIGHTS_NAME,
    MODEL_NAME,
    ModelFormat,
    ModelInfo,
    ModelKind,
    read_lora,
    read_model,
    read_single_file,
    size_range,
)
from services.generation.samplers import ModelFamily

logger = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST_NAME = "manifest.json"
# The cache's copy of the manifest a model directory was made from, written last.
CACHED_MANIFEST_NAME = ".pingvas-manifest.json"
MANIFEST_FORMAT = 1  # The manifest's own version; `kind` and `weight_format` were added compatibly.
LORAS_PREFIX = "loras"  # The seed's folder of LoRAs, beside the families' folders of pipelines.

# Read and hash in pieces this big: a few of them in memory, never a whole weights file.
CHUNK_BYTES = 8 * 2**20
# Files above this go up as multipart uploads of parts this big (S3's parts are 5 MiB to 5 GiB).
UPLOAD_PART_BYTES = 64 * 2**20
# A push checks and uploads this many of a model's files at a time: each is a round trip or two,
# mostly waiting (a model of 13 small files took 13 times one file's time one at a time). Under
# botocore's pool of 10 connections, and at most this many parts in memory.
PUSH_FILES_AT_ONCE = 4


class ModelStoreError(Exception):
    """A model could not be pushed or fetched; the message says why, for an operator."""


class ModelDownloadFailed(ModelStoreError):
    """Fetching a model into the cache failed (the bucket could not be read, or a file did not
    match its manifest); nothing of it became visible in the cache."""


class CorruptModelFile(ModelDownloadFailed):
    """A downloaded file's size or sha256 is not the manifest's."""


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its path inside the model directory (POSIX), size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelManifest:
    """A model as the bucket holds it: what the catalog needs, and every file with its checksum."""

    name: str
    family: str
    native_size: int  # 0 for a LoRA.
    latent_channels: int  # 0 for a LoRA.
    files: tuple[ModelFile, ...]
    kind: str = ModelKind.PIPELINE
    weight_format: str = ModelFormat.DIFFUSERS
    inpainting_variant: str = ""  # The model's inpainting variant, by name; "" for none.
    inpainting_only: bool = False  # An inpainting pipeline, which can only inpaint.

    @property
    def prefix(self) -> str:
        """Where the model's objects live: the seed's `{family}/{name}/`, `loras/{name}/` for a LoRA."""
        folder = LORAS_PREFIX if self.kind == ModelKind.LORA else self.family
        return f"{folder}/{self.name}/"

    @property
    def key(self) -> str:
        return self.prefix + MANIFEST_NAME

    def file_key(self, file: ModelFile) -> str:
        return self.prefix + file.path

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files)

    def info(self, cache_dir: Path) -> ModelInfo:
        """The catalog's view of the model, its path in the cache (present there or not yet)."""
        min_size, max_size = size_range(self.native_size) if self.native_size > 0 else (0, 0)
        return ModelInfo(
            name=self.name,
            family=ModelFamily(self.family),
            path=cache_dir / self.name,
            native_size=self.native_size,
            min_size=min_size,
            max_size=max_size,
            latent_channels=self.latent_channels,
            kind=ModelKind(self.kind),
            format=ModelFormat(self.weight_format),
            inpainting_variant=self.inpainting_variant,
            inpainting_only=self.inpainting_only,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "name": self.name,
                "family": self.family,
                "kind": self.kind,
                "weight_format": self.weight_format,
                "native_size": self.native_size,
                "latent_channels": self.latent_channels,
                "inpainting_variant": self.inpainting_variant,
                "inpainting_only": self.inpainting_only,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelManifest:
        """Parse and check a manifest; ValueError when it is malformed or names an unsafe path."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a model manifest of format 1")
        try:
            manifest = cls(
                name=str(data["name"]),
                family=str(data["family"]),
                native_size=int(data["native_size"]),
                latent_channels=int(data["latent_channels"]),
                files=tuple(
                    ModelFile(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"]))
                    for f in data["files"]
                ),
                # Manifests written before LoRAs and single files were all diffusers pipelines.
                kind=str(data.get("kind", ModelKind.PIPELINE)),
                weight_format=str(data.get("weight_format", ModelFormat.DIFFUSERS)),
                inpainting_variant=str(data.get("inpainting_variant", "")),
                inpainting_only=data.get("inpainting_only", False) is True,
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed manifest: {error!r}") from None
        for model_name in (manifest.name, manifest.inpainting_variant or manifest.name):
            if not MODEL_NAME.fullmatch(model_name):
                raise ValueError(f"unsafe model name {model_name!r}")
        for value, vocabulary in (
            (manifest.family, ModelFamily),
            (manifest.kind, ModelKind),
            (manifest.weight_format, ModelFormat),
        ):
            if value not in set(vocabulary):
                raise ValueError(f"unknown {vocabulary.__name__} {value!r}")
        for file in manifest.files:
            _check_relative_path(file.path)
        return manifest


def _check_relative_path(path: str) -> None:
    # A manifest names where files are written: nothing may land outside the model's directory.
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"unsafe file path {path!r} in manifest")


def _model_files(directory: Path) -> Iterator[Path]:
    """The files a model directory consists of; hidden files (the cache's manifest copy) are
    not part of it."""
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        yield path


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class PushSource:
    """What a push uploads: the manifest, and the local file behind each of its paths."""

    manifest: ModelManifest
    local_files: dict[str, Path]


def manifest_of_source(
    source: Path,
    name: str,
    *,
    family: ModelFamily | None = None,
    kind: ModelKind | None = None,
) -> PushSource:
    """The manifest of the model at `source`, to be pushed as `name`. Reads every file (for its
    sha256); run it off the event loop.

    `source` is a model directory (a diffusers pipeline, a single-file checkpoint's directory or a
    LoRA's, see `services/generation/catalog.py`), or one `.safetensors` file: a single-file
    checkpoint, or a LoRA when `kind` says so or the file sits in a `loras/` folder (the seed's
    layout), stored as `pytorch_lora_weights.safetensors`. `family` declares the architecture of
    a checkpoint or LoRA whose tensor names do not tell it.
    """
    if not MODEL_NAME.fullmatch(name):
        raise ModelStoreError(
            f"model name {name!r} must be letters, digits, '.', '_' or '-' (at most 128, "
            "starting with a letter or digit)"
        )
    local_files: dict[str, Path] = {}
    if source.is_file():
        if source.suffix != ".safetensors":
            raise ModelStoreError(f"{source}: a model file must be a .safetensors checkpoint or LoRA")
        if kind is None:
            kind = ModelKind.LORA if source.parent.name == LORAS_PREFIX else ModelKind.PIPELINE
        read_file = read_lora if kind == ModelKind.LORA else read_single_file
        # Detected first: a declared family only fills in what the tensors do not tell.
        info = read_file(source, name, path=source) or read_file(source, name, path=source, family=family)
        local_files[LORA_WEIGHTS_NAME if kind == ModelKind.LORA else source.name] = source
    else:
        info = read_model(source, name) or read_model(source, name, family=family)
        if info is not None:
            for path in _model_files(source):
                relative = path.relative_to(source).as_posix()
                if relative == MANIFEST_NAME:
                    raise ModelStoreError(
                        f"{path}: a model may not hold a file named {MANIFEST_NAME} at its top"
                    )
                local_files[relative] = path
    if info is None:
        raise ModelStoreError(
            f"{source} is not a model: a diffusers directory, a single-file checkpoint or a LoRA "
            "whose architecture is detected or declared with --family (see the log)"
        )
    if kind is not None and info.kind != kind:
        raise ModelStoreError(f"{source} is a {info.kind}, not a {kind}")
    if family is not None and info.family != family:
        raise ModelStoreError(f"{source} is a {info.family} model, not {family}")
    files = tuple(
        ModelFile(relative, path.stat().st_size, _sha256_of(path))
        for relative, path in sorted(local_files.items())
    )
    manifest = ModelManifest(
        name=name,
        family=info.family,
        native_size=info.native_size,
        latent_channels=info.latent_channels,
        files=files,
        kind=info.kind,
        weight_format=info.format,
        inpainting_variant=info.inpainting_variant,
        inpainting_only=info.inpainting_only,
    )
    return PushSource(manifest, local_files)


@dataclass(frozen=True)
class PushReport:
    manifest: ModelManifest
    uploaded: int  # Files written to the bucket.
    unchanged: int  # Files the bucket already held with the same sha256.


async def all_or_none(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Their results, run together; the first to fail cancels the others, waits for them (an
    upload cancelled mid-way aborts itself) and raises its own error as it is."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class ModelBucket:
    """The models bucket, through one aiobotocore client.

    A file larger than `part_bytes` (at least 5 MiB, S3's smallest part) is pushed as a multipart
    upload of parts that size: one PUT takes at most 5 GiB, and a part at a time keeps the
    memory bounded.
    """

    def __init__(self, client: Any, bucket: str, *, part_bytes: int = UPLOAD_PART_BYTES) -> None:
        self.client = client
        self.bucket = bucket
        self.part_bytes = part_bytes

    async def manifests(self) -> list[ModelManifest]:
        """Every model's manifest, by key order. A malformed manifest is skipped and logged."""
        manifests = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            keys = [
                entry["Key"]
                async for page in paginator.paginate(Bucket=self.bucket)
                for entry in page.get("Contents", ())
                if _is_manifest_key(entry["Key"])
            ]
            for key in keys:
                text = await self._read(key)
                try:
                    manifest = ModelManifest.from_json(text)
                except ValueError as error:
                    logger.warning("skipping s3://%s/%s: %s", self.bucket, key, error)
                    continue
                if manifest.key != key:
                    logger.warning("skipping s3://%s/%s: it describes %s", self.bucket, key, manifest.key)
                    continue
                manifests.append(manifest)
        except (BotoCoreError, ClientError) as error:
            raise ObjectStoreUnavailable(f"listing s3://{self.bucket} failed: {error!r}") from error
        return manifests

    async def is_empty(self) -> bool:
        """Whether the bucket holds no model at all."""
        return not await self.manifests()

    async def push(
        self,
        source: Path,
        name: str,
        *,
        family: ModelFamily | None = None,
        kind: ModelKind | None = None,
    ) -> PushReport:
        """Upload the model at `source` (see `manifest_of_source`) as `name`: every file whose
        content the bucket does not already hold under its key, then the manifest, last. Safe to
        repeat."""
        pushed = await asyncio.to_thread(manifest_of_source, source, name, family=family, kind=kind)
        manifest = pushed.manifest
        for other in await self.manifests():
            if other.name == name and other.prefix != manifest.prefix:
                raise ModelStoreError(
                    f"the bucket already holds a model {name!r} at {other.prefix}; "
                    f"this one belongs at {manifest.prefix}: push it under another name"
                )
        slots = asyncio.Semaphore(PUSH_FILES_AT_ONCE)

        async def push_file(file: ModelFile) -> bool:
            """Whether the file was uploaded (False: the bucket held it already)."""
            async with slots:
                key = manifest.file_key(file)
                if await self._holds(key, file):
                    return False
                await self._upload(pushed.local_files[file.path], key, file)
                return True

        try:
            uploads = await all_or_none(push_file(file) for file in manifest.files)
            await self.client.put_object(
                Bucket=self.bucket,
                Key=manifest.key,
                Body=manifest.to_json().encode(),
                ContentType="application/json",
            )
        except (BotoCoreError, ClientError) as error:
            raise ObjectStoreUnavailable(f"pushing to s3://{self.bucket} failed: {error!r}") from error
        return PushReport(manifest, uploaded=sum(uploads), unchanged=len(uploads) - sum(uploads))

    async def _upload(self, path: Path, key: str, file: ModelFile) -> None:
        # The sha256 rides along as metadata, so a push again can tell an unchanged file by a HEAD.
        metadata = {"sha256": file.sha256}
        if file.size <= self.part_bytes:
            body = await asyncio.to_thread(path.read_bytes)
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=metadata)
            return
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=metadata)
        upload_id = upload["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            with path.open("rb") as source:
                while chunk := await asyncio.to_thread(source.read, self.part_bytes):
                    number = len(parts) + 1
                    reply = await self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )
                    parts.append({"PartNumber": number, "ETag": reply["ETag"]})
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # An abandoned upload's parts would cost storage until the bucket's lifecycle rule
            # aborts it (7 days); abort it now.
            with contextlib.suppress(BotoCoreError, ClientError):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def _holds(self, key: str, file: ModelFile) -> bool:
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return bool(
            head.get("ContentLength") == file.size and head.get("Metadata", {}).get("sha256") == file.sha256
        )

    async def _read(self, key: str) -> bytes:
        reply = await self.client.get_object(Bucket=self.bucket, Key=key)
        async with reply["Body"] as body:
            data: bytes = await body.read()
            return data

    async def download(self, key: str, file: ModelFile, target: Path) -> None:
        """Stream one object into `target`, checking its size and sha256 on the way."""
        digest = hashlib.sha256()
        size = 0
        try:
            reply = await self.client.get_object(Bucket=self.bucket, Key=key)
            with target.open("wb") as out:
                async with reply["Body"] as body:
                    while chunk := await body.read(CHUNK_BYTES):
                        size += len(chunk)
                        if size > file.size:
                            break
                        await asyncio.to_thread(_hash_and_write, digest, out, chunk)
        except (BotoCoreError, ClientError, OSError) as error:
            raise ModelDownloadFailed(f"downloading s3://{self.bucket}/{key} failed: {error!r}") from error
        if size != file.size or digest.hexdigest() != file.sha256:
            raise CorruptModelFile(
                f"s3://{self.bucket}/{key} does not match its manifest: expected {file.size} bytes "
                f"with sha256 {file.sha256}, got {'more than ' if size > file.size else ''}{size} "
                f"bytes{'' if size > file.size else ' with sha256 ' + digest.hexdigest()}"
            )


def _hash_and_write(digest: Any, out: Any, chunk: bytes) -> None:
    digest.update(chunk)
    out.write(chunk)


def _is_manifest_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[2] == MANIFEST_NAME


@dataclass(frozen=True)
class CachedModel:
    name: str
    path: Path
    complete: bool  # False: a directory without a manifest copy (built or copied in by hand).


class ModelCache:
    """The local cache of models, filled from the bucket once across every process sharing it."""

    def __init__(self, cache_dir: Path, bucket: ModelBucket, *, failpoints: Failpoints | None = None) -> None:
        self.cache_dir = cache_dir
        self.bucket = bucket
        # Dev and tests only: hold a download mid-way (Failpoint.PARK_MID_DOWNLOAD).
        self.failpoints = failpoints

    def path_of(self, name: str) -> Path:
        return self.cache_dir / name

    def holds(self, manifest: ModelManifest) -> bool:
        """Whether the cache holds this version of the model, complete."""
        return _holds_manifest(self.path_of(manifest.name), manifest)

    def cached(self) -> list[CachedModel]:
        """The model directories the cache holds now."""
        models = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.cache_dir.iterdir()):
                if path.name.startswith(".") or not path.is_dir():
                    continue
                models.append(CachedModel(path.name, path, (path / CACHED_MANIFEST_NAME).is_file()))
        return models

    async def fetch(self, manifest: ModelManifest) -> Path:
        """The model's directory in the cache, downloaded first if the cache does not hold this
        manifest's version of it. Raises ModelDownloadFailed, leaving nothing visible."""
        target = self.path_of(manifest.name)
        if await asyncio.to_thread(_holds_manifest, target, manifest):
            return target
        async with self._locked(manifest.name):
            # Another process may have fetched it while this one waited for the lock.
            if await asyncio.to_thread(self._settle_existing, target, manifest):
                return target
            await self._download(manifest, target)
        return target

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        locks = self.cache_dir / ".locks"
        await asyncio.to_thread(locks.mkdir, parents=True, exist_ok=True)
        descriptor = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        # flock, not fcntl's record locks: it excludes other descriptors of this process too.
        # Waiting runs in a thread; the event loop goes on meanwhile.
        acquiring = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX))
        try:
            await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            # The thread still waits on the descriptor: close it (and so release the lock, if it
            # gets it) only when that wait ends, never under it.
            acquiring.add_done_callback(lambda _: os.close(descriptor))
            raise
        except BaseException:
            os.close(descriptor)
            raise
        try:
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _settle_existing(self, target: Path, manifest: ModelManifest) -> bool:
        """Under the lock: whether `target` is complete now. Clears what interrupted downloads of
        this model left, and adopts a directory put there by hand whose files match."""
        for leftover in self._partials(manifest.name):
            shutil.rmtree(leftover, ignore_errors=True)
        if _holds_manifest(target, manifest):
            return True
        if target.is_dir() and _files_match(target, manifest):
            _write_manifest_copy(target, manifest)
            logger.info("adopted %s: its files match the bucket's manifest", target)
            return True
        return False

    def _partials(self, name: str) -> list[Path]:
        """What downloads of this model (and none other: names may hold dots) left staged."""
        partial = self.cache_dir / ".partial"
        if not partial.is_dir():
            return []
        staged = re.compile(re.escape(name) + r"\.(stale-)?[0-9a-f]{32}")
        return [path for path in partial.iterdir() if staged.fullmatch(path.name)]

    async def _download(self, manifest: ModelManifest, target: Path) -> None:
        staging = self.cache_dir / ".partial" / f"{manifest.name}.{uuid.uuid4().hex}"
        park_after = await self._park_after(manifest.name)
        logger.info(
            "downloading model %s (%d files, %.1f MiB) into %s",
            manifest.name,
            len(manifest.files),
            manifest.total_bytes / 2**20,
            target,
        )
        try:
            for index, file in enumerate(manifest.files, start=1):
                path = staging / file.path
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
                await self.bucket.download(manifest.file_key(file), file, path)
                if index == park_after:
                    await self._park(manifest.name, index)
            await asyncio.to_thread(self._publish, staging, target, manifest)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        logger.info("model %s is in the cache at %s", manifest.name, target)

    def _publish(self, staging: Path, target: Path, manifest: ModelManifest) -> None:
        _write_manifest_copy(staging, manifest)
        _fsync_tree(staging)
        if target.exists():
            # Another version (or a hand-made copy that does not match): moved aside in one
            # rename, then removed. A process that loaded it keeps its open files.
            stale = self.cache_dir / ".partial" / f"{manifest.name}.stale-{uuid.uuid4().hex}"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(staging, target)
        _fsync_directory(self.cache_dir)

    async def _park_after(self, name: str) -> int | None:
        if self.failpoints is None:
            return None
        return await self.failpoints.park_step(Failpoint.PARK_MID_DOWNLOAD, name)

    async def _park(self, name: str, files_done: int) -> None:
        assert self.failpoints is not None
        logger.info(
            "failpoint %s: download of %s parked after %d files",
            Failpoint.PARK_MID_DOWNLOAD,
            name,
            files_done,
        )
        await self.failpoints.park(Failpoint.PARK_MID_DOWNLOAD, name, files_done, asyncio.Event())


def _holds_manifest(directory: Path, manifest: ModelManifest) -> bool:
    try:
        copy = ModelManifest.from_json((directory / CACHED_MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return False
    return copy == manifest


def _files_match(directory: Path, manifest: ModelManifest) -> bool:
    expected = {file.path: file for file in manifest.files}
    present = {path.relative_to(directory).as_posix(): path for path in _model_files(directory)}
    if set(present) != set(expected):
        return False
    return all(
        path.stat().st_size == expected[relative].size and _sha256_of(path) == expected[relative].sha256
        for relative, path in present.items()
    )


def _write_manifest_copy(directory: Path, manifest: ModelManifest) -> None:
    # Into a temporary name, then renamed: a reader finds the whole copy or none.
    temporary = directory / f"{CACHED_MANIFEST_NAME}.{uuid.uuid4().hex}"
    temporary.write_text(manifest.to_json())
    os.rename(temporary, directory / CACHED_MANIFEST_NAME)


def _fsync_tree(directory: Path) -> None:
    """Flush every file and directory of a download before it is published, so a crash of the
    machine cannot leave a published model with empty files."""
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        elif path.is_dir():
            _fsync_directory(path)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class ModelStore:
    """The catalog's source in every running process: the bucket's manifests, each model's path
    in the local cache. A worker also fetches through it (`ensure_cached`)."""

    def __init__(self, bucket: ModelBucket, cache: ModelCache) -> None:
        self.bucket = bucket
        self.cache = cache
        self._manifests: dict[str, ModelManifest] = {}

    def __repr__(self) -> str:
        return f"ModelStore(s3://{self.bucket.bucket}, cache {self.cache.cache_dir})"

    async def read_models(self) -> dict[str, ModelInfo]:
        manifests: dict[str, ModelManifest] = {}
        for manifest in await self.bucket.manifests():
            if manifest.name in manifests:
                logger.warning(
                    "model %s is in the bucket twice (%s and %s); serving the first",
                    manifest.name,
                    manifests[manifest.name].prefix,
                    manifest.prefix,
                )
                continue
            manifests[manifest.name] = manifest
        self._manifests = manifests
        return {name: manifest.info(self.cache.cache_dir) for name, manifest in manifests.items()}

    async def ensure_cached(self, info: ModelInfo) -> None:
        """Make `info.path` hold the model, as the bucket's manifest read with it lists it."""
        manifest = self._manifests.get(info.name)
        if manifest is None:
            raise ModelDownloadFailed(f"no manifest of model {info.name!r} was read from the bucket")
        await self.cache.fetch(manifest)


async def open_model_store(
    settings: ObjectStoreSettings,
    cache_dir: Path,
    *,
    transfers: ModelStoreSettings,
    failpoints: Failpoints | None = None,
) -> tuple[ModelStore, Callable[[], Awaitable[None]]]:
    """The models bucket and the cache for a process's lifetime, and what closes its client.
    Its S3 calls take the model store's timeouts, not the images'."""
    stack = contextlib.AsyncExitStack()
    patient = settings.model_copy(
        update={
            "read_timeout_seconds": transfers.read_timeout_seconds,
            "max_attempts": transfers.max_attempts,
        }
    )
    client = await stack.enter_async_context(open_s3_client(patient))
    bucket = ModelBucket(client, settings.models_bucket)
    return ModelStore(bucket, ModelCache(cache_dir, bucket, failpoints=failpoints)), stack.aclose
