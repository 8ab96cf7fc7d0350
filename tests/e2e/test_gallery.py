"""The gallery: a user's images from the `images` table, newest first, page by page, one by id,
each with presigned URLs; another user's image is not found; a generation names its image."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import httpx
import pytest
from pingvas.gallery.v1 import gallery_service_pb2 as gallery_pb
from pingvas.gallery.v1 import gallery_service_pb2_grpc as gallery_grpc

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]


def make_image(rest: httpx.Client, account: Any, prompt: str) -> dict[str, Any]:
    created = rest.post(
        "/api/v1/generation/create",
        json={"prompt": prompt, "width": 64, "height": 64, "steps": 1},
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
    ],
)
def test_bad_gallery_requests_name_the_field(
    new_account: Any, rest: httpx.Client, path: str, params: dict[str, Any], field: str
) -> None:
    reply = rest.get(path, params=params, headers=new_account("bad-gallery").headers)
    assert reply.status_code == 400
    violations = [
        violation["field"]
        for detail in reply.json()["details"]
        for violation in detail.get("fieldViolations", [])
    ]
    assert violations == [field]
