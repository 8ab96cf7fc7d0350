"""Images in S3: the mesh's embedded SeaweedFS, reached as production reaches AWS.

A generation's PNG and WebP thumbnail are objects under the seed's layout with their content
types and cache headers, its `images` row records them, presigned URLs open both until they
expire, `pingvas storage init` is repeatable and its plan is what botocore would send, and an
S3 that does not answer fails the generation with its own reason and releases the hold.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import botocore.session
import httpx
import psutil
import pytest
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator
from PIL import Image
from support.failpoints import parking_prompt, release, wait_parked
from support.mesh import REPO_ROOT, MeshStarter, RunningMesh

from services.common.database import Database
from services.common.failpoints import Failpoint
from services.common.settings import ObjectStoreSettings
from services.common.storage import open_image_store
from services.gallery.orphans import OrphanCollector

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

IMAGES_BUCKET = "pingvas-studio-images"
BUCKETS = (IMAGES_BUCKET, "pingvas-studio-models", "pingvas-studio-logs", "pingvas-studio-backups")
# Long enough that the URLs are surely opened before it ends; the test then waits it out.
SHORT_URL_TTL_SECONDS = 15


def generate(rest: httpx.Client, account: Any, state: str = "SUCCEEDED", **request: Any) -> dict[str, Any]:
    return wait_finished(rest, account, submit(rest, account, **request), state)


def submit(rest: httpx.Client, account: Any, **request: Any) -> str:
    created = rest.post(
        "/api/v1/generation/create",
        json={"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 1, **request},
        headers=account.headers,
    )
    assert created.status_code == 200, created.text
    generation_id: str = created.json()["id"]
    return generation_id


def wait_finished(rest: httpx.Client, account: Any, generation_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        generation: dict[str, Any] = rest.get(
            f"/api/v1/generation/{generation_id}", headers=account.headers
        ).json()
        if generation["state"] not in ("GENERATION_STATE_QUEUED", "GENERATION_STATE_RUNNING"):
            assert generation["state"] == f"GENERATION_STATE_{state}", generation
            return generation
        time.sleep(0.05)
    raise AssertionError(f"{generation_id} never finished")


def listing(mesh: RunningMesh, prefix: str) -> list[dict[str, Any]]:
    """The images bucket's objects under `prefix`, as boto3 lists them."""
    reply = mesh.s3().list_objects_v2(Bucket=IMAGES_BUCKET, Prefix=prefix)
    return [{"Key": item["Key"], "Size": item["Size"]} for item in reply.get("Contents", [])]


def test_a_generation_stores_its_png_and_thumbnail_under_the_seeds_layout(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("layout")
    generation = generate(rest, account, width=128, height=96, seed=7, guidance=6.5)
    created = datetime.fromisoformat(generation["createTime"].replace("Z", "+00:00"))
    stem = f"{account.user_id}/{created:%Y}/{created:%m}/{generation['id']}"

    objects = listing(mesh, f"{account.user_id}/")
    print(f"\nobjects in s3://{IMAGES_BUCKET}/{account.user_id}/ after one generation:")
    for item in objects:
        print(f"  {item['Key']}  {item['Size']} bytes")
    assert [item["Key"] for item in objects] == [f"{stem}.png", f"{stem}.thumb.webp"]

    bucket = mesh.s3()
    png = bucket.get_object(Bucket=IMAGES_BUCKET, Key=f"{stem}.png")
    thumbnail = bucket.get_object(Bucket=IMAGES_BUCKET, Key=f"{stem}.thumb.webp")
    assert (png["ContentType"], thumbnail["ContentType"]) == ("image/png", "image/webp")
    for stored in (png, thumbnail):
        assert stored["CacheControl"] == "private, max-age=31536000, immutable"
    png_bytes, thumbnail_bytes = png["Body"].read(), thumbnail["Body"].read()
    assert Image.open(io.BytesIO(png_bytes)).size == (128, 96)
    # The tiny model draws at most 128 pixels a side, under the thumbnail's 256: never enlarged
    # (the downscale: tests/inference/test_text_to_image.py).
    small = Image.open(io.BytesIO(thumbnail_bytes))
    assert (small.format, small.size) == ("WEBP", (128, 96))

    (row,) = mesh.sql("SELECT * FROM images WHERE id = %s", generation["id"])
    assert {name: value for name, value in row.items() if name not in ("id", "user_id", "created_at")} == {
        "object_key": f"{stem}.png",
        "thumbnail_key": f"{stem}.thumb.webp",
        "size_bytes": len(png_bytes),
        "thumbnail_size_bytes": len(thumbnail_bytes),
        "width": 128,
        "height": 96,
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "",
        "seed": 7,
        "model": "tiny-sd",
        "steps": 1,
        "guidance": 6.5,
        # Not starred, on no board, its prompt indexed for search (English stems).
        "starred": False,
        "board": "",
        "prompt_search": "'dusk':4 'lighthous':2",
    }
    assert str(row["user_id"]) == account.user_id
    (job,) = mesh.sql("SELECT image_key FROM generations WHERE id = %s", generation["id"])
    assert job["image_key"] == f"{stem}.png"
    # Nothing under PINGVAS_HOME but SeaweedFS's own store holds images any more.
    assert not (mesh.home / "images").exists()


def storage_state(mesh: RunningMesh) -> dict[str, dict[str, Any]]:
    """Each bucket's configuration as the server reports it (what it does not implement or
    has not got reads as the error code)."""
    bucket = mesh.s3()
    state: dict[str, dict[str, Any]] = {}
    for name in BUCKETS:
        reads = {
            "versioning": lambda name=name: bucket.get_bucket_versioning(Bucket=name).get("Status"),
            "encryption": lambda name=name: bucket.get_bucket_encryption(Bucket=name)[
                "ServerSideEncryptionConfiguration"
            ],
            "cors": lambda name=name: bucket.get_bucket_cors(Bucket=name)["CORSRules"],
            "lifecycle": lambda name=name: bucket.get_bucket_lifecycle_configuration(Bucket=name)["Rules"],
        }
        state[name] = {}
        for what, read in reads.items():
            try:
                state[name][what] = read()
            except ClientError as error:
                state[name][what] = error.response["Error"]["Code"]
    return state


def test_every_bucket_takes_writes_next_to_the_images_and_the_models(mesh: RunningMesh) -> None:
    """Each bucket is a SeaweedFS collection with volumes of its own; the embedded server sizes
    its volume count to the disk, so the last bucket written is not left without volumes."""
    bucket = mesh.s3()
    for name in BUCKETS:
        key = f"probe/{uuid.uuid4().hex}"
        bucket.put_object(Bucket=name, Key=key, Body=b"probe")
        assert bucket.get_object(Bucket=name, Key=key)["Body"].read() == b"probe"
        for version in bucket.list_object_versions(Bucket=name, Prefix=key).get("Versions", []):
            bucket.delete_object(Bucket=name, Key=key, VersionId=version["VersionId"])


def test_storage_init_twice_gives_the_same_state(mesh: RunningMesh) -> None:
    # `pingvas up` ran it once already; the command finds the mesh's SeaweedFS by itself.
    before = storage_state(mesh)
    first, second = mesh.pingvas("storage", "init"), mesh.pingvas("storage", "init")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    assert storage_state(mesh) == before
    lines = first.stdout.splitlines()
    assert all(f"{name}: exists" in lines for name in BUCKETS)
    # What SeaweedFS does not implement is named, and the rest is configured.
    assert lines[-1] == (
        "not implemented by this S3 server, so not configured: PutPublicAccessBlock "
        f"({', '.join(BUCKETS)}); PutBucketLifecycleConfiguration ({IMAGES_BUCKET})"
    )
    assert {name: before[name]["versioning"] for name in BUCKETS} == {
        IMAGES_BUCKET: "Enabled",
        "pingvas-studio-models": "Enabled",
        "pingvas-studio-logs": None,
        "pingvas-studio-backups": "Enabled",
    }
    for name in BUCKETS:
        assert before[name]["encryption"]["Rules"][0]["ApplyServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "AES256"
        }
    assert before[IMAGES_BUCKET]["cors"][0]["AllowedMethods"] == ["GET", "HEAD"]
    assert {rule["ID"] for rule in before["pingvas-studio-logs"]["lifecycle"]} >= {"logs-expire"}
    (logs_expire,) = [r for r in before["pingvas-studio-logs"]["lifecycle"] if r["ID"] == "logs-expire"]
    assert logs_expire["Expiration"] == {"Days": 30}


def test_storage_init_dry_run_prints_what_botocore_would_send(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PINGVAS_HOME": str(tmp_path),
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",  # never reached: a dry run sends nothing
        "PINGVAS_S3_CORS_ORIGINS": '["https://console.pingvas.studio"]',
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "storage", "init", "--dry-run"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout)
    model = botocore.session.get_session().get_service_model("s3")
    validator = ParamValidator()
    for call in calls:
        report = validator.validate(call["params"], model.operation_model(call["operation"]).input_shape)
        assert not report.has_errors(), f"{call['operation']}: {report.generate_report()}"
    by_operation: dict[tuple[str, str], dict[str, Any]] = {
        (call["bucket"], call["operation"]): call["params"] for call in calls
    }
    assert {bucket for bucket, _ in by_operation} == {"images", "models", "logs", "backups"}
    for role in ("images", "models", "logs", "backups"):
        assert by_operation[(role, "PutPublicAccessBlock")]["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        }
    images_rules = by_operation[("images", "PutBucketLifecycleConfiguration")]["LifecycleConfiguration"][
        "Rules"
    ]
    (tiering,) = [rule for rule in images_rules if "Transitions" in rule]
    # Input images uploaded for image-to-image expire after a day unless a generation used them
    # (it keeps its own copy under inputs/).
    (uploads,) = [rule for rule in images_rules if rule["ID"] == "uploads-expire"]
    assert (uploads["Filter"], uploads["Expiration"]) == ({"Prefix": "uploads/"}, {"Days": 1})
    assert tiering["Transitions"] == [
        {"Days": 30, "StorageClass": "STANDARD_IA"},
        {"Days": 90, "StorageClass": "GLACIER_IR"},
    ]
    assert any("NoncurrentVersionExpiration" in rule for rule in images_rules)
    logs_rules = by_operation[("logs", "PutBucketLifecycleConfiguration")]["LifecycleConfiguration"]["Rules"]
    assert {"Days": 30} in [rule.get("Expiration") for rule in logs_rules]
    cors = by_operation[("images", "PutBucketCors")]["CORSConfiguration"]["CORSRules"]
    assert cors[0]["AllowedOrigins"] == ["https://console.pingvas.studio"]
    assert by_operation[("images", "CreateBucket")] == {
        "Bucket": IMAGES_BUCKET,
        "CreateBucketConfiguration": {"LocationConstraint": "ap-northeast-2"},
    }


def test_embedded_seaweedfs_listens_only_on_the_ports_it_was_given(mesh: RunningMesh) -> None:
    (weed,) = [
        child for child in psutil.Process(mesh.process.pid).children(recursive=True) if child.name() == "weed"
    ]
    given = {
        int(argument.split("=", 1)[1])
        for argument in weed.cmdline()
        if argument.split("=", 1)[0].endswith((".port", ".port.grpc")) and argument.split("=", 1)[1] != "0"
    }
    assert len(given) == 8
    listening = {c.laddr.port for c in weed.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert listening == given
    assert 8080 not in listening
    assert f"127.0.0.1:{weed_port(weed, '-s3.port')}" in mesh.s3_env["S3_ENDPOINT_URL"]


def weed_port(weed: psutil.Process, flag: str) -> int:
    (value,) = [argument.split("=", 1)[1] for argument in weed.cmdline() if argument.split("=", 1)[0] == flag]
    return int(value)


@pytest.fixture(scope="module")
def short_lived_mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    """Image URLs that expire quickly, and a store that gives up after one S3 attempt and a job
    after one run, so a store that does not answer fails its job within one timeout.

    The timeouts are the product's own: the images here are stored for real, and in the
    bucket's first store on a busy 2-core machine the thumbnail's upload, after the PNG's, ran
    past a one-second timeout and failed the generation."""
    with own_mesh(
        "short-lived-urls",
        {
            "PINGVAS_IMAGE_URL_TTL_SECONDS": str(SHORT_URL_TTL_SECONDS),
            "PINGVAS_S3_MAX_ATTEMPTS": "1",
            "PINGVAS_SCHEDULER_MAX_ATTEMPTS": "1",
        },
    ) as running:
        yield running


def test_presigned_urls_open_the_image_and_its_thumbnail_until_they_expire(
    short_lived_mesh: RunningMesh,
) -> None:
    from support.accounts import dev_login

    mesh = short_lived_mesh
    account = dev_login(mesh.gateway_url, "presigned")
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as rest:
        generation = generate(rest, account)
    urls = {"image/png": generation["imageUrl"], "image/webp": generation["thumbnailUrl"]}
    (row,) = mesh.sql("SELECT object_key, thumbnail_key FROM images WHERE id = %s", generation["id"])
    keys = {"image/png": row["object_key"], "image/webp": row["thumbnail_key"]}
    for content_type, url in urls.items():
        assert url.startswith(mesh.s3_env["S3_ENDPOINT_URL"] + f"/{IMAGES_BUCKET}/{keys[content_type]}?")
        query = parse_qs(urlparse(url).query)
        assert query["X-Amz-Expires"] == [str(SHORT_URL_TTL_SECONDS)]
        reply = httpx.get(url)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == content_type
        stored = mesh.s3().get_object(Bucket=IMAGES_BUCKET, Key=keys[content_type])["Body"].read()
        assert reply.content == stored

    # Past the expiry each URL states (its signing time plus its lifetime), S3 refuses it.
    latest_expiry = max(
        datetime.strptime(parse_qs(urlparse(url).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
        .replace(tzinfo=UTC)
        .timestamp()
        + SHORT_URL_TTL_SECONDS
        for url in urls.values()
    )
    time.sleep(max(0.0, latest_expiry - time.time()) + 1.5)
    for url in urls.values():
        refused = httpx.get(url)
        assert refused.status_code == 403
        assert "Request has expired" in refused.text


def test_an_unreachable_store_fails_the_generation_and_releases_the_hold(
    short_lived_mesh: RunningMesh,
) -> None:
    from support.accounts import dev_login

    mesh = short_lived_mesh
    account = dev_login(mesh.gateway_url, "store-down")
    weed = embedded_seaweedfs(mesh)
    # Stopped, not killed: the supervisor would restart a dead one. Its sockets accept and
    # never answer, as an S3 behind a broken network does.
    weed.send_signal(signal.SIGSTOP)
    try:
        with httpx.Client(base_url=mesh.gateway_url, timeout=60) as rest:
            generation = generate(rest, account, state="FAILED")
    finally:
        weed.send_signal(signal.SIGCONT)
    assert generation["failureCode"] == "IMAGE_STORE_UNAVAILABLE"
    assert "could not be stored" in generation["failureReason"]
    assert generation["imageUrl"] == generation["thumbnailUrl"] == ""
    assert mesh.sql("SELECT id FROM images WHERE id = %s", generation["id"]) == []
    entries = mesh.sql(
        "SELECT kind, amount, held_change FROM credit_entries WHERE reference = %s ORDER BY id",
        f"generation:{generation['id']}",
    )
    assert [entry["kind"] for entry in entries] == ["hold", "release"]
    assert sum(entry["held_change"] for entry in entries) == 0
    assert sum(entry["amount"] for entry in entries) == 0
    (account_row,) = mesh.sql("SELECT held FROM credit_accounts WHERE user_id = %s", account.user_id)
    assert account_row["held"] == 0


def embedded_seaweedfs(mesh: RunningMesh) -> psutil.Process:
    (weed,) = [
        child for child in psutil.Process(mesh.process.pid).children(recursive=True) if child.name() == "weed"
    ]
    return weed


def kill_seaweedfs_and_wait_for_its_restart(mesh: RunningMesh) -> None:
    """SIGKILL, as the OOM killer or a lost node would; then wait until the supervisor's new
    SeaweedFS takes writes again (the data directory is the same, so it must have the old
    objects too)."""
    killed = embedded_seaweedfs(mesh)
    killed.kill()
    killed.wait(timeout=30)
    bucket = mesh.s3()
    deadline = time.monotonic() + 120
    while True:
        try:
            bucket.put_object(Bucket=BUCKETS[-1], Key="probe/after-kill", Body=b"up")
            bucket.delete_object(Bucket=BUCKETS[-1], Key="probe/after-kill")
            return
        except Exception as error:  # refused, reset, or a volume not yet registered
            assert time.monotonic() < deadline, f"SeaweedFS did not come back: {error}"
            time.sleep(0.2)


def test_an_image_is_not_lost_when_seaweedfs_is_killed_after_storing_it(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    """The user is told SUCCEEDED only after S3 acknowledged both objects (the row commits after
    them), and what SeaweedFS acknowledged survives SIGKILL. The job is held between the two
    (its lease renewed meanwhile) while SeaweedFS is killed and restarted."""
    account = new_account("killed-store")
    prompt = parking_prompt(mesh, "a harbour in fog", failpoint=Failpoint.PARK_BEFORE_RECORD)
    generation_id = submit(rest, account, prompt=prompt, width=96, height=64)
    wait_parked(mesh, generation_id, failpoint=Failpoint.PARK_BEFORE_RECORD)
    # Uploaded, not yet recorded: the objects exist and nothing tells the user so yet.
    assert len(listing(mesh, f"{account.user_id}/")) == 2
    assert rest.get(f"/api/v1/generation/{generation_id}", headers=account.headers).json()["state"] == (
        "GENERATION_STATE_RUNNING"
    )

    leased_until = mesh.redis().zscore("leases", generation_id)

    kill_seaweedfs_and_wait_for_its_restart(mesh)
    # The held store renews its job's lease (every third of it), so no other worker runs it.
    deadline = time.monotonic() + 60
    while (mesh.redis().zscore("leases", generation_id) or 0) <= leased_until:
        assert time.monotonic() < deadline, "the lease of a job being stored was never renewed"
        time.sleep(0.2)
    (job,) = mesh.sql("SELECT attempt FROM generations WHERE id = %s", generation_id)
    assert job["attempt"] == 1, "the held job's lease lapsed and another attempt started"
    release(mesh, generation_id, failpoint=Failpoint.PARK_BEFORE_RECORD)
    generation = wait_finished(rest, account, generation_id, "SUCCEEDED")

    for url, content_type in (
        (generation["imageUrl"], "image/png"),
        (generation["thumbnailUrl"], "image/webp"),
    ):
        opened = httpx.get(url)
        assert opened.status_code == 200, opened.text
        assert opened.headers["content-type"] == content_type
    assert Image.open(io.BytesIO(httpx.get(generation["imageUrl"]).content)).size == (96, 64)
    (job,) = mesh.sql("SELECT attempt FROM generations WHERE id = %s", generation_id)
    assert job["attempt"] == 1


def versions_under(mesh: RunningMesh, prefix: str) -> list[str]:
    reply = mesh.s3().list_object_versions(Bucket=IMAGES_BUCKET, Prefix=prefix)
    return [entry["Key"] for entry in reply.get("Versions", []) + reply.get("DeleteMarkers", [])]


def test_storage_gc_removes_old_objects_no_row_records_and_keeps_images(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("orphans")
    image = generate(rest, account)
    (row,) = mesh.sql("SELECT object_key, thumbnail_key FROM images WHERE id = %s", image["id"])
    # What a crash between storing an image and committing its row leaves: objects (here the
    # PNG in two versions, and a thumbnail) that no row records.
    orphan = f"{account.user_id}/2026/01/{uuid.uuid4()}"
    bucket = mesh.s3()
    for key in (f"{orphan}.png", f"{orphan}.png", f"{orphan}.thumb.webp"):
        bucket.put_object(Bucket=IMAGES_BUCKET, Key=key, Body=b"orphaned", ContentType="image/png")
    assert len(versions_under(mesh, orphan)) == 3

    # Within the grace period (an hour by default) it might yet get its row: kept.
    young = mesh.pingvas("storage", "gc")
    assert young.returncode == 0, young.stderr
    assert orphan not in young.stdout
    assert len(versions_under(mesh, orphan)) == 3

    # Older than the grace (one second; S3 dates objects to the second), it goes, every version.
    time.sleep(2.1)
    collected = mesh.pingvas("storage", "gc", "--grace-seconds", "1")
    assert collected.returncode == 0, collected.stderr
    print(f"\n{collected.stdout}")
    removed = [line for line in collected.stdout.splitlines() if orphan in line]
    assert [line.split(" (")[0] for line in removed] == [
        f"removed s3://{IMAGES_BUCKET}/{orphan}.png",
        f"removed s3://{IMAGES_BUCKET}/{orphan}.thumb.webp",
    ]
    assert "(2 versions" in removed[0]
    assert versions_under(mesh, orphan) == []
    # The image, whose row records its objects, keeps them and its working URLs.
    assert sorted(versions_under(mesh, row["object_key"].removesuffix(".png"))) == sorted(
        [row["object_key"], row["thumbnail_key"]]
    )
    listed = rest.get(f"/api/v1/gallery/images/{image['id']}", headers=account.headers).json()
    assert httpx.get(listed["url"]).status_code == httpx.get(listed["thumbnailUrl"]).status_code == 200

    # Safe to run again: nothing of this test's is left to remove.
    again = mesh.pingvas("storage", "gc", "--grace-seconds", "1")
    assert again.returncode == 0, again.stderr
    assert orphan not in again.stdout and row["object_key"] not in again.stdout
    assert again.stdout.splitlines()[-1].startswith("removed ")


async def test_storage_gc_walks_a_bucket_larger_than_one_batch(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    """The collector checks keys against the rows a batch at a time, on the mesh's own SeaweedFS
    and PostgreSQL: with batches of 3 over one user's 10 keys (an image's 2, 8 orphans: three
    full batches and a last partial one), every orphan goes once and the image's objects stay,
    whichever batch they fall in."""
    account = new_account("orphan-batches")
    image = generate(rest, account)
    (row,) = mesh.sql("SELECT object_key, thumbnail_key FROM images WHERE id = %s", image["id"])
    bucket = mesh.s3()
    orphans = sorted(f"{account.user_id}/2026/01/{uuid.uuid4()}.png" for _ in range(8))
    for key in orphans:
        bucket.put_object(Bucket=IMAGES_BUCKET, Key=key, Body=b"orphaned", ContentType="image/png")

    # As the mesh's processes read it: S3_ENDPOINT_URL and the keys.
    settings = ObjectStoreSettings.model_validate(
        {
            "S3_ENDPOINT_URL": mesh.s3_env["S3_ENDPOINT_URL"],
            "access_key_id": mesh.s3_env["PINGVAS_S3_ACCESS_KEY_ID"],
            "secret_access_key": mesh.s3_env["PINGVAS_S3_SECRET_ACCESS_KEY"],
        }
    )
    store, close_store = await open_image_store(settings, url_ttl_seconds=60)
    database = Database(mesh.app_database_url, schema=mesh.schema, system_url=mesh.system_database_url)
    try:
        collector = OrphanCollector(database, store, batch_size=3)
        # An hour from now, everything under the prefix is past a one-minute grace.
        later = datetime.now(UTC) + timedelta(hours=1)
        removed = [
            orphan.key
            async for orphan in collector.collect(
                grace=timedelta(minutes=1), now=later, prefix=f"{account.user_id}/"
            )
        ]
    finally:
        await close_store()
        await database.close()

    assert removed == orphans
    assert sorted(versions_under(mesh, f"{account.user_id}/")) == sorted(
        [row["object_key"], row["thumbnail_key"]]
    )
