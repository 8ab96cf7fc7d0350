"""The model store: models in the mesh's models bucket (its SeaweedFS), fetched once into a local
cache, served by the catalog without a restart.

`pingvas up` pushed the tiny models into the empty bucket with `pingvas models push`, as every
test mesh does; these tests push more with the same command. Fetches into a cache directory of
the test's own run the worker's code (`ModelStore`/`ModelCache`) in the test's process or in a
process of their own, and count the bucket's GETs with a botocore event hook on the client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from support.mesh import REPO_ROOT, RunningMesh

from services.common.failpoints import Failpoint, Failpoints, armed_key, parked_key, release_key
from services.common.settings import ObjectStoreSettings
from services.common.storage import open_s3_client
from services.generation.catalog import LORA_WEIGHTS_NAME, ModelCatalog, ModelFolder, ModelFormat, ModelKind
from services.generation.model_store import (
    CACHED_MANIFEST_NAME,
    CorruptModelFile,
    ModelBucket,
    ModelCache,
    ModelManifest,
    ModelStore,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

MODELS_BUCKET = "pingvas-studio-models"


def object_store_settings(mesh: RunningMesh) -> ObjectStoreSettings:
    return ObjectStoreSettings.model_validate(
        {
            "S3_ENDPOINT_URL": mesh.s3_env["S3_ENDPOINT_URL"],
            "access_key_id": mesh.s3_env["PINGVAS_S3_ACCESS_KEY_ID"],
            "secret_access_key": mesh.s3_env["PINGVAS_S3_SECRET_ACCESS_KEY"],
        }
    )


def push_copy(mesh: RunningMesh, models_dir: Path, tmp_path: Path, prefix: str) -> str:
    """A copy of tiny-sd-b under a new name, pushed with `pingvas models push`; its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    source = tmp_path / "source" / name
    shutil.copytree(models_dir / "tiny-sd-b", source, ignore=shutil.ignore_patterns(".*"))
    pushed = mesh.pingvas("models", "push", str(source), "--name", name)
    assert pushed.returncode == 0, pushed.stderr
    assert f"pushed {name} (sd15, " in pushed.stdout
    return name


@asynccontextmanager
async def counted_store(mesh: RunningMesh, cache_dir: Path) -> AsyncIterator[tuple[ModelStore, Counter[str]]]:
    """The worker's model store on `cache_dir`, and a count of the GetObject calls its client
    sends, by key."""
    gets: Counter[str] = Counter()

    def count(params: dict[str, Any], **_: Any) -> None:
        gets[params["Key"]] += 1

    async with open_s3_client(object_store_settings(mesh)) as client:
        client.meta.events.register("provide-client-params.s3.GetObject", count)
        bucket = ModelBucket(client, MODELS_BUCKET)
        yield ModelStore(bucket, ModelCache(cache_dir, bucket)), gets


def file_gets(gets: Counter[str], manifest: ModelManifest) -> dict[str, int]:
    return {manifest.file_key(file): gets[manifest.file_key(file)] for file in manifest.files}


def nothing_of(name: str, cache_dir: Path) -> bool:
    """No trace of the model in the cache: no directory under its name, nothing staged."""
    staged = list((cache_dir / ".partial").glob(f"{name}.*")) if (cache_dir / ".partial").exists() else []
    return not (cache_dir / name).exists() and staged == []


async def wait_parked(redis: Redis, name: str, fetcher: asyncio.subprocess.Process | None = None) -> None:
    deadline = time.monotonic() + 60
    while not await redis.exists(parked_key(Failpoint.PARK_MID_DOWNLOAD, name)):
        assert fetcher is None or fetcher.returncode is None, f"the fetch exited with {fetcher.returncode}"
        assert time.monotonic() < deadline, f"the download of {name} never parked"
        await asyncio.sleep(0.05)


def waiting_for_lock(lock_file: Path) -> bool:
    """Whether some process waits for the flock on `lock_file` (a `->` line of /proc/locks)."""
    inode = lock_file.stat().st_ino
    return any(
        line.split()[1] == "->" and line.split()[6].endswith(f":{inode}")
        for line in Path("/proc/locks").read_text().splitlines()
        if len(line.split()) > 6
    )


def test_up_pushed_the_local_models_and_list_shows_the_bucket_and_the_cache(
    mesh: RunningMesh, models_dir: Path
) -> None:
    manifest = ModelManifest.from_json(
        mesh.s3().get_object(Bucket=MODELS_BUCKET, Key="sd15/tiny-sd/manifest.json")["Body"].read()
    )
    assert manifest.name == "tiny-sd" and manifest.native_size == 64
    assert {file.path for file in manifest.files} >= {"model_index.json", "unet/config.json"}
    # The worker preloaded tiny-sd from the cache, the same folder `pingvas up` pushed from.
    assert ModelManifest.from_json((models_dir / "tiny-sd" / CACHED_MANIFEST_NAME).read_text()) == manifest

    listed = mesh.pingvas("models", "list")
    assert listed.returncode == 0, listed.stderr
    bucket_part, cache_part = listed.stdout.split(f"cache {models_dir}:")
    assert "\n  tiny-sd\tsd15\t64px\t" in bucket_part and "\tcached\n" in bucket_part
    assert "\n  tiny-sd-b\tsd15\t" in bucket_part
    assert "\n  tiny-sd\tcurrent\n" in cache_part

    # Pushing the same model again uploads nothing.
    again = mesh.pingvas("models", "push", str(models_dir / "tiny-sd"))
    assert again.returncode == 0, again.stderr
    assert f"0 uploaded, {len(manifest.files)} unchanged" in again.stdout


async def test_two_workers_asking_for_a_new_model_at_once_download_it_once(
    mesh: RunningMesh, models_dir: Path, tmp_path: Path
) -> None:
    name = push_copy(mesh, models_dir, tmp_path, "single-flight")
    cache_dir = tmp_path / "cache"
    redis = Redis.from_url(mesh.redis_url)
    await redis.hset(armed_key(Failpoint.PARK_MID_DOWNLOAD), name, 1)
    try:
        async with (
            counted_store(mesh, cache_dir) as (first, gets),
            counted_store(mesh, cache_dir) as (
                second,
                second_gets,
            ),
        ):
            # The first worker holds the model's lock, parked after its first file.
            first.cache.failpoints = Failpoints(redis, frozenset({Failpoint.PARK_MID_DOWNLOAD}))
            infos = await first.read_models()
            await second.read_models()
            fetching = asyncio.create_task(first.ensure_cached(infos[name]))
            await wait_parked(redis, name)
            # The second asks while the first is mid-download, and waits for its lock.
            waiting = asyncio.create_task(second.ensure_cached(infos[name]))
            lock_file = cache_dir / ".locks" / f"{name}.lock"
            deadline = time.monotonic() + 60
            while not waiting_for_lock(lock_file):
                assert time.monotonic() < deadline, "the second fetch never waited for the lock"
                await asyncio.sleep(0.05)
            await redis.rpush(release_key(Failpoint.PARK_MID_DOWNLOAD, name), "go")
            await asyncio.gather(fetching, waiting)

            manifest = ModelManifest.from_json((cache_dir / name / CACHED_MANIFEST_NAME).read_text())
            assert file_gets(gets, manifest) == {manifest.file_key(file): 1 for file in manifest.files}
            assert file_gets(second_gets, manifest) == {manifest.file_key(file): 0 for file in manifest.files}
    finally:
        await redis.hdel(armed_key(Failpoint.PARK_MID_DOWNLOAD), name)
        await redis.aclose()
    catalog = ModelCatalog(ModelFolder(cache_dir))
    assert await catalog.get(name) is not None
    assert list((cache_dir / ".partial").iterdir()) == []


async def test_a_corrupt_file_is_refused_and_leaves_nothing(
    mesh: RunningMesh, models_dir: Path, tmp_path: Path
) -> None:
    name = push_copy(mesh, models_dir, tmp_path, "corrupt")
    manifest = ModelManifest.from_json(
        mesh.s3().get_object(Bucket=MODELS_BUCKET, Key=f"sd15/{name}/manifest.json")["Body"].read()
    )
    weights = next(file for file in manifest.files if file.path.startswith("unet/") and file.size > 1000)
    damaged = bytearray((tmp_path / "source" / name / weights.path).read_bytes())
    damaged[-1] ^= 0xFF  # same size, one bit pattern off
    mesh.s3().put_object(Bucket=MODELS_BUCKET, Key=manifest.file_key(weights), Body=bytes(damaged))
    cache_dir = tmp_path / "cache"

    async with counted_store(mesh, cache_dir) as (store, _gets):
        infos = await store.read_models()
        with pytest.raises(CorruptModelFile, match=f"{weights.path} does not match its manifest"):
            await store.ensure_cached(infos[name])

    assert nothing_of(name, cache_dir)
    assert (await ModelCatalog(ModelFolder(cache_dir)).get(name)) is None


def test_a_job_on_a_corrupt_model_fails_with_its_code_and_releases_the_hold(
    mesh: RunningMesh, models_dir: Path, tmp_path: Path, new_account: Any, rest: httpx.Client
) -> None:
    name = push_copy(mesh, models_dir, tmp_path, "corrupt-job")
    manifest = ModelManifest.from_json(
        mesh.s3().get_object(Bucket=MODELS_BUCKET, Key=f"sd15/{name}/manifest.json")["Body"].read()
    )
    config = next(file for file in manifest.files if file.path == "unet/config.json")
    mesh.s3().put_object(Bucket=MODELS_BUCKET, Key=manifest.file_key(config), Body=b"{}")
    account = new_account("corrupt")

    created = rest.post(
        "/api/v1/generation/create",
        json={"prompt": "a fox", "model": name, "width": 64, "height": 64, "steps": 1},
        headers=account.headers,
    )
    assert created.status_code == 200, created.text
    generation_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while (state := rest.get(f"/api/v1/generation/{generation_id}", headers=account.headers).json())[
        "state"
    ] in ("GENERATION_STATE_QUEUED", "GENERATION_STATE_RUNNING"):
        assert time.monotonic() < deadline, f"{generation_id} never finished"
        time.sleep(0.05)

    assert state["state"] == "GENERATION_STATE_FAILED", state
    assert state["failureCode"] == "MODEL_DOWNLOAD_FAILED"
    assert state["failureReason"].startswith("The GPU workers could not download the model;")
    kinds = [
        row["kind"]
        for row in mesh.sql(
            "SELECT kind FROM credit_entries WHERE reference = %s ORDER BY id", f"generation:{generation_id}"
        )
    ]
    assert kinds == ["hold", "release"]
    assert nothing_of(name, models_dir)


async def test_a_download_killed_midway_leaves_nothing_and_the_next_fetch_succeeds(
    mesh: RunningMesh, models_dir: Path, tmp_path: Path
) -> None:
    name = push_copy(mesh, models_dir, tmp_path, "killed")
    cache_dir = tmp_path / "cache"
    redis = Redis.from_url(mesh.redis_url)
    await redis.hset(armed_key(Failpoint.PARK_MID_DOWNLOAD), name, 2)
    fetcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "support.model_fetch",
        name,
        str(cache_dir),
        env={
            **mesh.env,
            **mesh.s3_env,
            "REDIS_URL": mesh.redis_url,
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), str(REPO_ROOT / "tests"), str(REPO_ROOT / "sdk" / "python")]
            ),
        },
        cwd=REPO_ROOT,
    )
    try:
        await wait_parked(redis, name, fetcher)
        (staging,) = (cache_dir / ".partial").glob(f"{name}.*")
        assert len([path for path in staging.rglob("*") if path.is_file()]) == 2  # mid-download
        fetcher.send_signal(signal.SIGKILL)
        assert await fetcher.wait() == -signal.SIGKILL
    finally:
        if fetcher.returncode is None:
            fetcher.kill()
            await fetcher.wait()
        await redis.hdel(armed_key(Failpoint.PARK_MID_DOWNLOAD), name)
        await redis.delete(parked_key(Failpoint.PARK_MID_DOWNLOAD, name))
        await redis.aclose()

    # Nothing of it is visible as a model.
    assert not (cache_dir / name).exists()
    assert (await ModelCatalog(ModelFolder(cache_dir)).get(name)) is None

    # The next fetch takes the lock the dead process held, clears what it left, and succeeds.
    async with counted_store(mesh, cache_dir) as (store, gets):
        infos = await store.read_models()
        await store.ensure_cached(infos[name])
    manifest = ModelManifest.from_json((cache_dir / name / CACHED_MANIFEST_NAME).read_text())
    assert set(file_gets(gets, manifest).values()) == {1}
    assert list((cache_dir / ".partial").iterdir()) == []
    assert (await ModelCatalog(ModelFolder(cache_dir)).get(name)) is not None


def test_a_model_pushed_while_the_mesh_runs_generates_without_a_restart(
    mesh: RunningMesh, models_dir: Path, tmp_path: Path, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("hot-add")
    name = f"hot-{uuid.uuid4().hex[:8]}"
    request = {"prompt": "a heron", "model": name, "width": 64, "height": 64, "steps": 1}
    unknown = rest.post("/api/v1/generation/create", json=request, headers=account.headers)
    assert unknown.status_code == 400 and "generation.model" in unknown.text

    source = tmp_path / name
    shutil.copytree(models_dir / "tiny-sd", source, ignore=shutil.ignore_patterns(".*"))
    pushed = mesh.pingvas("models", "push", str(source))
    assert pushed.returncode == 0, pushed.stderr

    created = rest.post("/api/v1/generation/create", json=request, headers=account.headers)
    assert created.status_code == 200, created.text
    generation_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while (state := rest.get(f"/api/v1/generation/{generation_id}", headers=account.headers).json())[
        "state"
    ] in ("GENERATION_STATE_QUEUED", "GENERATION_STATE_RUNNING"):
        assert time.monotonic() < deadline, f"{generation_id} never finished"
        time.sleep(0.05)
    assert state["state"] == "GENERATION_STATE_SUCCEEDED", state
    assert (models_dir / name / CACHED_MANIFEST_NAME).is_file()
    # The cache is the session's models folder: meshes started later would push it too.
    shutil.rmtree(models_dir / name)


async def test_a_file_larger_than_a_part_is_pushed_in_parts_and_fetched_whole(
    mesh: RunningMesh, models_dir: Path, tmp_path: Path
) -> None:
    name = f"multipart-{uuid.uuid4().hex[:8]}"
    source = tmp_path / "source" / name
    shutil.copytree(models_dir / "tiny-sd", source, ignore=shutil.ignore_patterns(".*"))
    # S3's smallest part is 5 MiB: a file of two and a bit parts.
    part_bytes = 5 * 2**20
    large = source / "extra" / "large.bin"
    large.parent.mkdir()
    large.write_bytes(os.urandom(2 * part_bytes + 4096))
    cache_dir = tmp_path / "cache"

    async with open_s3_client(object_store_settings(mesh)) as client:
        parts: Counter[str] = Counter()

        def count(params: dict[str, Any], **_: Any) -> None:
            parts[params["Key"]] += 1

        client.meta.events.register("provide-client-params.s3.UploadPart", count)
        bucket = ModelBucket(client, MODELS_BUCKET, part_bytes=part_bytes)
        first = await bucket.push(source, name)
        again = await bucket.push(source, name)
        store = ModelStore(bucket, ModelCache(cache_dir, bucket))
        infos = await store.read_models()
        await store.ensure_cached(infos[name])

    assert parts == {f"sd15/{name}/extra/large.bin": 3}
    files = len(first.manifest.files)
    assert (first.uploaded, again.uploaded, again.unchanged) == (files, 0, files)
    assert (cache_dir / name / "extra" / "large.bin").read_bytes() == large.read_bytes()


async def test_a_single_file_checkpoint_and_a_lora_are_pushed_listed_and_fetched(
    mesh: RunningMesh, models_dir: Path, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    checkpoint, lora = f"single-{suffix}", f"lora-{suffix}"
    # As a user has them: a bare checkpoint file (its family detected from its tensors), and a
    # LoRA file in a loras/ folder (the seed's layout, which makes it a LoRA).
    shutil.copy(
        models_dir / "tiny-sd-single" / "tiny-sd-single.safetensors", tmp_path / f"{checkpoint}.safetensors"
    )
    (tmp_path / "loras").mkdir()
    shutil.copy(models_dir / "tiny-sdxl-lora" / LORA_WEIGHTS_NAME, tmp_path / "loras" / f"{lora}.safetensors")

    pushed = mesh.pingvas(
        "models",
        "push",
        str(tmp_path / f"{checkpoint}.safetensors"),
        str(tmp_path / "loras" / f"{lora}.safetensors"),
    )
    assert pushed.returncode == 0, pushed.stderr
    assert f"pushed {checkpoint} (sd15, single_file, 1 files, " in pushed.stdout
    assert f"to s3://{MODELS_BUCKET}/sd15/{checkpoint}/" in pushed.stdout
    assert f"pushed {lora} (sdxl, LoRA, 1 files, " in pushed.stdout
    assert f"to s3://{MODELS_BUCKET}/loras/{lora}/" in pushed.stdout
    listed = mesh.pingvas("models", "list")
    assert listed.returncode == 0, listed.stderr
    # Without its configs beside it, a checkpoint is taken for its family's stock model.
    assert f"\n  {checkpoint}\tsd15\t512px\tsingle_file\t1 files\t" in listed.stdout
    assert f"\n  {lora}\tsdxl\tLoRA\t1 files\t" in listed.stdout
    declared = mesh.pingvas(
        "models", "push", str(tmp_path / "loras" / f"{lora}.safetensors"), "--family", "sd15"
    )
    assert declared.returncode == 2 and "is a sdxl model, not sd15" in declared.stderr

    cache_dir = tmp_path / "cache"
    async with counted_store(mesh, cache_dir) as (store, _gets):
        infos = await store.read_models()
        for name in (checkpoint, lora):
            await store.ensure_cached(infos[name])
        catalog = ModelCatalog(store)
        await catalog.refresh()

    assert (cache_dir / checkpoint / f"{checkpoint}.safetensors").is_file()
    assert (cache_dir / lora / LORA_WEIGHTS_NAME).is_file()
    # The cache's directories read as the bucket's manifests describe them.
    for name in (checkpoint, lora):
        from_cache = ModelFolder(cache_dir).scan()[name]
        assert (from_cache.family, from_cache.kind, from_cache.format) == (
            infos[name].family,
            infos[name].kind,
            infos[name].format,
        )
    assert (infos[checkpoint].kind, infos[checkpoint].format) == (ModelKind.PIPELINE, ModelFormat.SINGLE_FILE)
    assert (infos[lora].kind, infos[lora].family) == (ModelKind.LORA, "sdxl")
    # ListModels' page offers the checkpoint as a model, never the LoRA.
    names = [info.name for info in catalog.page(page_size=1000, page_token="")[0]]
    assert checkpoint in names and lora not in names
