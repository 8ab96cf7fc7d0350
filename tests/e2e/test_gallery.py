"""The gallery: a user's images from the `images` table, newest first, page by page, one by id,
each with presigned URLs; another user's image is not found; a generation names its image."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pingvas.gallery.v1 import gallery_resources_pb2 as gallery_resources_pb
from pingvas.gallery.v1 import gallery_service_pb2 as gallery_pb
from pingvas.gallery.v1 import gallery_service_pb2_grpc as gallery_grpc
from support.mesh import RunningMesh

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]


def make_image(rest: httpx.Client, account: Any, prompt: str, **request: Any) -> dict[str, Any]:
    created = rest.post(
        "/api/v1/generation/create",
        json={"prompt": prompt, "width": 64, "height": 64, "steps": 1, **request},
        headers=account.headers,
    ).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        generation: dict[str, Any] = rest.get(
            f"/api/v1/generation/{created['id']}", headers=account.headers
        ).json()
        if generation["state"] == "GENERATION_STATE_SUCCEEDED":
            return generation
        assert generation["state"] in ("GENERATION_STATE_QUEUED", "GENERATION_STATE_RUNNING"), generation
        time.sleep(0.05)
    raise AssertionError(f"{created['id']} never succeeded")


def violated_fields(reply: httpx.Response) -> list[str]:
    return [
        violation["field"]
        for detail in reply.json()["details"]
        for violation in detail.get("fieldViolations", [])
    ]


def listed(rest: httpx.Client, account: Any, **params: Any) -> dict[str, Any]:
    reply = rest.get("/api/v1/gallery/images", params=params, headers=account.headers)
    assert reply.status_code == 200, reply.text
    page: dict[str, Any] = reply.json()
    return page


def test_a_users_images_page_newest_first_and_a_token_survives_new_images(
    new_account: Any, rest: httpx.Client
) -> None:
    account, other = new_account("gallery"), new_account("gallery-other")
    made = [make_image(rest, account, f"picture {n}") for n in range(5)]
    make_image(rest, other, "someone else's")
    newest_first = [generation["id"] for generation in reversed(made)]

    first = listed(rest, account, pageSize=2)
    assert [image["id"] for image in first["images"]] == newest_first[:2]
    # An image that arrives between pages appears on a new listing, never in the walk under way.
    later = make_image(rest, account, "picture 5")
    second = listed(rest, account, pageSize=2, pageToken=first["nextPageToken"])
    third = listed(rest, account, pageSize=2, pageToken=second["nextPageToken"])
    assert [image["id"] for image in second["images"] + third["images"]] == newest_first[2:]
    assert third.get("nextPageToken", "") == ""
    assert [image["id"] for image in listed(rest, account)["images"]] == [later["id"], *newest_first]

    image = first["images"][0]
    assert image["name"] == f"users/{account.user_id}/images/{image['id']}"
    assert (image["prompt"], image["model"], image["width"], image["height"]) == (
        "picture 4",
        "tiny-sd",
        64,
        64,
    )
    assert (image["steps"], image["guidance"]) == (1, made[-1]["guidance"])
    assert image["seed"] == made[-1]["seed"]
    assert int(image["sizeBytes"]) > 0
    png, thumbnail = httpx.get(image["url"]), httpx.get(image["thumbnailUrl"])
    assert (png.status_code, png.headers["content-type"]) == (200, "image/png")
    assert (thumbnail.status_code, thumbnail.headers["content-type"]) == (200, "image/webp")
    assert len(png.content) == int(image["sizeBytes"])


def test_get_image_is_the_callers_own_and_a_generation_names_it(
    new_account: Any, rest: httpx.Client, gateway_channel: grpc.Channel
) -> None:
    account, other = new_account("get-image"), new_account("get-image-other")
    generation = make_image(rest, account, "a single image")
    assert generation["image"] == f"users/{account.user_id}/images/{generation['id']}"

    mine = rest.get(f"/api/v1/gallery/images/{generation['id']}", headers=account.headers)
    assert mine.status_code == 200
    assert mine.json()["name"] == generation["image"]
    assert mine.json()["seed"] == generation["seed"]

    # Another user's image is not found, through REST and gRPC alike.
    assert rest.get(f"/api/v1/gallery/images/{generation['id']}", headers=other.headers).status_code == 404
    stub = gallery_grpc.GalleryServiceStub(gateway_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetImage(
            gallery_pb.GetImageRequest(image_id=generation["id"]), metadata=other.metadata, timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert listed(rest, other).get("images", []) == []
    unknown = rest.get(f"/api/v1/gallery/images/{uuid.uuid4()}", headers=account.headers)
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/gallery/images/not-a-uuid", {}, "image_id"),
        ("/api/v1/gallery/images", {"pageToken": "not-a-token"}, "page_token"),
        ("/api/v1/gallery/images", {"pageSize": 101}, "page_size"),
        ("/api/v1/gallery/images", {"pageSize": -1}, "page_size"),
        ("/api/v1/gallery/images", {"board": "b" * 101}, "board"),
    ],
)
def test_bad_gallery_requests_name_the_field(
    new_account: Any, rest: httpx.Client, path: str, params: dict[str, Any], field: str
) -> None:
    reply = rest.get(path, params=params, headers=new_account("bad-gallery").headers)
    assert reply.status_code == 400
    assert violated_fields(reply) == [field]


IMAGES_BUCKET = "pingvas-studio-images"


@dataclass(frozen=True)
class Listed:
    """What the test knows of one of an account's images, to say which a filter shows."""

    id: str
    created_at: datetime
    model: str
    board: str
    starred: bool
    prompt: str


def known_images(mesh: RunningMesh, account: Any) -> list[Listed]:
    """The account's images as their rows say, newest first (created_at, then id)."""
    rows = mesh.sql(
        "SELECT id, created_at, model, board, starred, prompt FROM images WHERE user_id = %s",
        account.user_id,
    )
    images = [Listed(**{**row, "id": str(row["id"])}) for row in rows]
    return sorted(images, key=lambda image: (image.created_at, uuid.UUID(image.id)), reverse=True)


def copy_image(
    mesh: RunningMesh,
    source: str,
    *,
    created_at: datetime,
    prompt: str,
    model: str,
    board: str = "",
    starred: bool = False,
) -> str:
    """Another image like the generated `source`, stored as the worker stores one (its objects,
    then its generation's row and its own), but with the given fields: many images cheaply."""
    (original,) = mesh.sql("SELECT user_id, object_key FROM images WHERE id = %s", source)
    image_id = str(uuid.uuid4())
    stem = f"{original['user_id']}/{created_at:%Y}/{created_at:%m}/{image_id}"
    bucket = mesh.s3()
    for suffix, original_key in (
        (".png", original["object_key"]),
        (".thumb.webp", original["object_key"].removesuffix(".png") + ".thumb.webp"),
    ):
        bucket.copy_object(
            Bucket=IMAGES_BUCKET,
            Key=stem + suffix,
            CopySource={"Bucket": IMAGES_BUCKET, "Key": original_key},
        )
    mesh.sql(
        """
        INSERT INTO generations
        SELECT (jsonb_populate_record(NULL::generations, to_jsonb(g) || jsonb_build_object(
            'id', %s::text, 'request_id', NULL, 'image_key', %s::text, 'prompt', %s::text,
            'model', %s::text, 'credits_held', 0, 'credits_charged', 0, 'created_at', %s::text))).*
        FROM generations g WHERE id = %s
        """,
        image_id,
        f"{stem}.png",
        prompt,
        model,
        created_at.isoformat(),
        source,
    )
    mesh.sql(
        """
        INSERT INTO images (id, user_id, object_key, thumbnail_key, size_bytes, thumbnail_size_bytes,
            width, height, prompt, negative_prompt, seed, model, steps, guidance, created_at,
            starred, board)
        SELECT %s, user_id, %s, %s, size_bytes, thumbnail_size_bytes, width, height, %s,
            negative_prompt, seed, %s, steps, guidance, %s, %s, %s
        FROM images WHERE id = %s
        """,
        image_id,
        f"{stem}.png",
        f"{stem}.thumb.webp",
        prompt,
        model,
        created_at,
        starred,
        board,
        source,
    )
    return image_id


def walk(rest: httpx.Client, account: Any, page_size: int, **filters: Any) -> list[str]:
    """Every image a filtered listing shows, page by page."""
    ids: list[str] = []
    token = ""
    while True:
        page = listed(rest, account, pageSize=page_size, pageToken=token, **filters)
        assert len(page.get("images", [])) <= page_size
        ids += [image["id"] for image in page.get("images", [])]
        token = page.get("nextPageToken", "")
        if not token:
            return ids


def test_pagination_over_45_images_with_every_filter(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("gallery-filters")
    fox = make_image(rest, account, "a red fox in the snow")
    whale = make_image(rest, account, "a blue whale at sea", model="tiny-sd-b")
    make_image(rest, account, "a red barn at dawn")
    starred = rest.patch(
        f"/api/v1/gallery/images/{fox['id']}",
        params={"updateMask": "starred"},
        json={"starred": True},
        headers=account.headers,
    )
    assert starred.status_code == 200, starred.text
    # 42 more, two to each stored instant (so the id breaks ties), over five months of 2025.
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for n in range(42):
        copy_image(
            mesh,
            whale["id"] if n % 3 == 0 else fox["id"],
            created_at=start + timedelta(days=3 * (n // 2)),
            prompt=f"lighthouses on a cliff, number {n}"
            if n % 2
            else f"a cat asleep in a window, number {n}",
            model="tiny-sd-b" if n % 3 == 0 else "tiny-sd",
            board=("landscapes", "portraits", "")[n % 3] if n % 4 else "",
            starred=n % 5 == 0,
        )
    images = known_images(mesh, account)
    assert len(images) == 45

    def expected(keep: Any) -> list[str]:
        return [image.id for image in images if keep(image)]

    after, before = datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, expected(lambda image: True)),
        ({"model": "tiny-sd-b"}, expected(lambda image: image.model == "tiny-sd-b")),
        ({"createTimeAfter": after.isoformat()}, expected(lambda image: image.created_at > after)),
        ({"createTimeBefore": before.isoformat()}, expected(lambda image: image.created_at < before)),
        (
            {"createTimeAfter": after.isoformat(), "createTimeBefore": before.isoformat()},
            expected(lambda image: after < image.created_at < before),
        ),
        ({"board": "landscapes"}, expected(lambda image: image.board == "landscapes")),
        ({"starredOnly": True}, expected(lambda image: image.starred)),
        # English stemming: "lighthouse" finds "lighthouses".
        ({"promptQuery": "lighthouse"}, expected(lambda image: "lighthouses" in image.prompt)),
        ({"promptQuery": '"red fox"'}, [fox["id"]]),
        ({"promptQuery": "red -barn"}, [fox["id"]]),
        (
            {"model": "tiny-sd", "starredOnly": True, "promptQuery": "cat or fox"},
            expected(
                lambda image: (
                    image.model == "tiny-sd"
                    and image.starred
                    and ("cat" in image.prompt or "fox" in image.prompt)
                )
            ),
        ),
    ]
    for filters, ids in cases:
        assert len(ids) >= 1, filters
        for page_size in (4, 100):
            assert walk(rest, account, page_size, **filters) == ids, (filters, page_size)
    assert len(expected(lambda image: image.starred)) > 1
    assert walk(rest, account, 100, model="no-such-model") == []

    # A token walks only the filter it was issued for.
    page = listed(rest, account, pageSize=2, board="landscapes")
    wrong = rest.get(
        "/api/v1/gallery/images",
        params={"pageSize": 2, "board": "portraits", "pageToken": page["nextPageToken"]},
        headers=account.headers,
    )
    assert wrong.status_code == 400
    assert violated_fields(wrong) == ["page_token"]


def test_a_page_token_survives_images_stored_between_pages(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("gallery-concurrent")
    first = make_image(rest, account, "the first picture")
    start = datetime(2025, 6, 1, tzinfo=UTC)
    for n in range(11):
        copy_image(mesh, first["id"], created_at=start + timedelta(hours=n), prompt=f"p {n}", model="tiny-sd")
    before = [image.id for image in known_images(mesh, account)]
    assert len(before) == 12

    walked: list[str] = []
    token = ""
    newer: list[str] = []
    for round_ in range(100):
        page = listed(rest, account, pageSize=5, pageToken=token)
        walked += [image["id"] for image in page.get("images", [])]
        token = page.get("nextPageToken", "")
        if not token:
            break
        # Between the pages: newer images, one from the worker and one stored directly.
        newer.append(make_image(rest, account, f"arrived during page {round_}")["id"])
        newer.append(
            copy_image(mesh, first["id"], created_at=datetime.now(UTC), prompt="newer", model="tiny-sd")
        )
    # Every image there before the walk, once each, newest first; none of those stored during it.
    assert walked == before
    assert len(newer) == 4 and set(newer).isdisjoint(walked)
    # A new listing shows them all.
    assert walk(rest, account, 100) == [image.id for image in known_images(mesh, account)]
    assert len(known_images(mesh, account)) == 12 + len(newer)


def versions_under(mesh: RunningMesh, prefix: str) -> list[str]:
    """Every version and delete marker the images bucket keeps under `prefix`, as key@version."""
    reply = mesh.s3().list_object_versions(Bucket=IMAGES_BUCKET, Prefix=prefix)
    return [
        f"{entry['Key']}@{entry['VersionId']}"
        for entry in reply.get("Versions", []) + reply.get("DeleteMarkers", [])
    ]


def print_versions(mesh: RunningMesh, prefix: str, when: str) -> None:
    """What SeaweedFS holds under `prefix`, every version, as `pytest -s` shows it."""
    reply = mesh.s3().list_object_versions(Bucket=IMAGES_BUCKET, Prefix=prefix)
    print(f"\ns3://{IMAGES_BUCKET}/{prefix} {when}:")
    for version in reply.get("Versions", []):
        print(f"  {version['Key']}  {version['Size']} bytes  version {version['VersionId']}")


def test_delete_removes_the_row_and_every_version_of_both_objects_and_leaves_credits(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client, gateway_channel: grpc.Channel
) -> None:
    account, other = new_account("delete-image"), new_account("delete-image-other")
    kept = make_image(rest, account, "a picture that stays")
    doomed = make_image(rest, account, "a picture to delete")
    (row,) = mesh.sql("SELECT object_key, thumbnail_key FROM images WHERE id = %s", doomed["id"])
    stem = row["object_key"].removesuffix(".png")
    # A second version of the PNG: the bucket is versioned, and every version must go.
    bucket = mesh.s3()
    png = bucket.get_object(Bucket=IMAGES_BUCKET, Key=row["object_key"])["Body"].read()
    bucket.put_object(Bucket=IMAGES_BUCKET, Key=row["object_key"], Body=png, ContentType="image/png")
    assert len(versions_under(mesh, stem)) == 3
    image = rest.get(f"/api/v1/gallery/images/{doomed['id']}", headers=account.headers).json()
    assert httpx.get(image["url"]).status_code == httpx.get(image["thumbnailUrl"]).status_code == 200
    balance = rest.get("/api/v1/credits/balance", headers=account.headers).json()
    entries = rest.get("/api/v1/credits/entries", headers=account.headers).json()

    # Another user cannot delete it (nor learn it exists), through REST or gRPC.
    path = f"/api/v1/gallery/images/{doomed['id']}"
    assert rest.delete(path, headers=other.headers).status_code == 404
    stub = gallery_grpc.GalleryServiceStub(gateway_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.DeleteImage(
            gallery_pb.DeleteImageRequest(image_id=doomed["id"]), metadata=other.metadata, timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(versions_under(mesh, stem)) == 3

    print_versions(mesh, f"{account.user_id}/", "before the delete")
    deleted = rest.delete(path, headers=account.headers)
    assert deleted.status_code == 200, deleted.text
    print_versions(mesh, f"{account.user_id}/", "after the delete")
    assert versions_under(mesh, stem) == []
    assert mesh.sql("SELECT id FROM images WHERE id = %s", doomed["id"]) == []
    # The URLs issued before stop working at once, well within their lifetime.
    assert httpx.get(image["url"]).status_code == httpx.get(image["thumbnailUrl"]).status_code == 404
    assert rest.get(path, headers=account.headers).status_code == 404
    assert [listed_image["id"] for listed_image in listed(rest, account)["images"]] == [kept["id"]]
    # Deleting it again is done already; credits are as they were.
    stub.DeleteImage(
        gallery_pb.DeleteImageRequest(image_id=doomed["id"]), metadata=account.metadata, timeout=30
    )
    assert rest.delete(path, headers=account.headers).status_code == 200
    assert rest.get("/api/v1/credits/balance", headers=account.headers).json() == balance
    assert rest.get("/api/v1/credits/entries", headers=account.headers).json() == entries
    # The other image and its objects are untouched.
    (kept_row,) = mesh.sql("SELECT object_key FROM images WHERE id = %s", kept["id"])
    assert len(versions_under(mesh, kept_row["object_key"].removesuffix(".png"))) == 2

    # An id that never named an image of the caller's is not found; a malformed one is invalid.
    assert rest.delete(f"/api/v1/gallery/images/{uuid.uuid4()}", headers=account.headers).status_code == 404
    malformed = rest.delete("/api/v1/gallery/images/not-a-uuid", headers=account.headers)
    assert malformed.status_code == 400
    assert violated_fields(malformed) == ["image_id"]


def test_star_and_board_updates_follow_the_mask_and_stay_the_owners(
    new_account: Any, rest: httpx.Client, gateway_channel: grpc.Channel
) -> None:
    account, other = new_account("update-image"), new_account("update-image-other")
    made = make_image(rest, account, "a picture to keep")
    stub = gallery_grpc.GalleryServiceStub(gateway_channel)

    def update(caller: Any, paths: list[str], **fields: Any) -> Any:
        return stub.UpdateImage(
            gallery_pb.UpdateImageRequest(
                image_id=made["id"],
                image=gallery_resources_pb.Image(**fields),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=caller.metadata,
            timeout=30,
        )

    # Only the fields the mask names change.
    starred = update(account, ["starred"], starred=True, board="ignored")
    assert (starred.starred, starred.board) == (True, "")
    on_board = update(account, ["board"], board="Holiday 2026", starred=False)
    assert (on_board.starred, on_board.board) == (True, "Holiday 2026")
    both = update(account, ["*"])
    assert (both.starred, both.board) == (False, "")
    through_rest = rest.patch(
        f"/api/v1/gallery/images/{made['id']}",
        params={"updateMask": "starred,board"},
        json={"starred": True, "board": "Favourites"},
        headers=account.headers,
    )
    assert through_rest.status_code == 200, through_rest.text
    assert (through_rest.json()["starred"], through_rest.json()["board"]) == (True, "Favourites")
    got = rest.get(f"/api/v1/gallery/images/{made['id']}", headers=account.headers).json()
    assert (got["starred"], got["board"]) == (True, "Favourites")
    assert [image["id"] for image in listed(rest, account, board="Favourites")["images"]] == [made["id"]]

    # Another user's image, or an unknown id, is not found, and stays as it was.
    with pytest.raises(grpc.RpcError) as caught:
        update(other, ["starred"], starred=False)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    unknown = rest.patch(
        f"/api/v1/gallery/images/{uuid.uuid4()}",
        params={"updateMask": "starred"},
        json={"starred": True},
        headers=account.headers,
    )
    assert unknown.status_code == 404
    got = rest.get(f"/api/v1/gallery/images/{made['id']}", headers=account.headers).json()
    assert (got["starred"], got["board"]) == (True, "Favourites")

    # A mask that names nothing, or a field UpdateImage does not change, is refused by name.
    for paths in ([], ["prompt"], ["starred", "seed"]):
        with pytest.raises(grpc.RpcError) as caught:
            update(account, paths, starred=False)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = rpc_status.from_call(caught.value)
        assert details is not None
        violations = [
            violation.field
            for detail in details.details
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR)
            and detail.Unpack(bad := error_details_pb2.BadRequest())
            for violation in bad.field_violations
        ]
        assert violations == ["update_mask"], paths
