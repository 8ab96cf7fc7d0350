"""Issue 15's contract on the real mesh: samplers, strength, input images (gallery images and
uploads through a presigned PUT), LoRAs, "use again" and batches of up to four, each refusal
naming its field with nothing queued or held.

These tests check what acceptance recorded (the generations row) and what it held; the images
the worker makes from them are test_generation_modes_e2e.py's."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from PIL import Image
from support.generations import upload, wait_for
from support.mesh import RunningMesh

from services.generation.modes import LoraWeight
from services.generation.repository import GenerationRecord

pytestmark = pytest.mark.integration

IMAGES_BUCKET = "pingvas-studio-images"
MODELS_BUCKET = "pingvas-studio-models"
# A Flux model in the catalog (only the Euler sampler drives it). Acceptance refuses before any
# worker would load it, so its manifest lists no files.
FLUX_MODEL = "contract-flux"
TEN_MB = 10 * 1024 * 1024

TEXT = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 4, "seed": 1}


def png(width: int = 64, height: int = 64, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def flux_model(mesh: RunningMesh) -> Iterator[str]:
    manifest = {
        "format": 1,
        "name": FLUX_MODEL,
        "family": "flux",
        "native_size": 64,
        "latent_channels": 16,
        "files": [],
    }
    key = f"flux/{FLUX_MODEL}/manifest.json"
    mesh.s3().put_object(Bucket=MODELS_BUCKET, Key=key, Body=json.dumps(manifest).encode())
    yield FLUX_MODEL


def field_violations(reply: httpx.Response) -> list[str]:
    details = {detail["@type"].rsplit("/", 1)[-1]: detail for detail in reply.json()["details"]}
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    return [violation["field"] for violation in details["google.rpc.BadRequest"]["fieldViolations"]]


def nothing_queued_or_held(mesh: RunningMesh, user_id: str) -> None:
    assert mesh.sql("SELECT id FROM generations WHERE user_id = %s", user_id) == []
    (account,) = mesh.sql("SELECT held FROM credit_accounts WHERE user_id = %s", user_id)
    assert account["held"] == 0
    assert mesh.sql("SELECT kind FROM credit_entries WHERE user_id = %s AND kind = 'hold'", user_id) == []


def generation_row(mesh: RunningMesh, generation_id: str) -> dict[str, Any]:
    (row,) = mesh.sql("SELECT * FROM generations WHERE id = %s", generation_id)
    return dict(row)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"strength": 1.5, "initImageId": str(uuid.uuid4())}, "generation.strength"),
        ({"strength": -0.1}, "generation.strength"),
        ({"strength": 0.5}, "generation.strength"),  # no init image to apply it to
        ({"sampler": "dpmpp_3m_sde"}, "generation.sampler"),
        ({"sampler": "dpmpp_2m", "model": FLUX_MODEL}, "generation.sampler"),
        ({"loras": [{"name": "no-such-lora", "weight": 1}]}, "generation.loras[0].name"),
        ({"loras": [{"name": "tiny-sd-b", "weight": 1}]}, "generation.loras[0].name"),  # a pipeline
        ({"loras": [{"name": f"lora-{n}", "weight": 1} for n in range(6)]}, "generation.loras"),
        ({"maskImageId": str(uuid.uuid4())}, "generation.mask_image_id"),  # no init image
        ({"initImageId": "not-an-id"}, "generation.init_image_id"),
        ({"model": "tiny-sd-inpainting"}, "generation.model"),  # an inpainting model, no mask
    ],
)
def test_bad_input_names_the_field_and_holds_nothing(
    mesh: RunningMesh,
    new_account: Any,
    rest: httpx.Client,
    flux_model: str,
    change: dict[str, Any],
    field: str,
) -> None:
    account = new_account("bad-input")
    reply = rest.post("/api/v1/generation/create", json={**TEXT, **change}, headers=account.headers)
    assert reply.status_code == 400, reply.text
    assert field in field_violations(reply)
    nothing_queued_or_held(mesh, account.user_id)


def test_a_lora_of_another_family_is_refused_naming_both(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("other-family-lora")
    change = {"model": "tiny-sd", "loras": [{"name": "tiny-sdxl-lora", "weight": 1}]}
    reply = rest.post("/api/v1/generation/create", json={**TEXT, **change}, headers=account.headers)
    assert reply.status_code == 400, reply.text
    details = {detail["@type"].rsplit("/", 1)[-1]: detail for detail in reply.json()["details"]}
    (violation,) = details["google.rpc.BadRequest"]["fieldViolations"]
    assert violation["field"] == "generation.loras[0].name"
    assert "sdxl" in violation["description"] and "sd15" in violation["description"], violation
    nothing_queued_or_held(mesh, account.user_id)


def test_the_catalog_says_which_samplers_each_model_allows(
    new_account: Any, rest: httpx.Client, flux_model: str
) -> None:
    account = new_account("samplers")
    # Naming it first makes the catalog read the bucket again.
    refused = rest.post(
        "/api/v1/generation/create",
        json={**TEXT, "model": flux_model, "sampler": "heun"},
        headers=account.headers,
    )
    assert field_violations(refused) == ["generation.sampler"]
    models = {
        model["id"]: model for model in rest.get("/api/v1/models", headers=account.headers).json()["models"]
    }
    assert (models[flux_model]["family"], models[flux_model]["samplers"]) == ("flux", ["euler"])
    assert models["tiny-sd"]["samplers"][0] == "euler"
    assert set(models["tiny-sd"]["samplers"]) == {
        "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_k", "ddim", "unipc", "lms", "heun"
    }  # fmt: skip


def test_a_batch_of_four_has_consecutive_seeds_and_one_hold_each(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("batch")
    item = {"generation": {**TEXT, "seed": 4294967294, "sampler": "euler_a"}}
    others = {"generation": {key: value for key, value in item["generation"].items() if key != "seed"}}
    reply = rest.post(
        "/api/v1/generation/batch-create",
        json={"requests": [item, others, others, others]},
        headers=account.headers,
    )
    assert reply.status_code == 200, reply.text
    generations = reply.json()["generations"]
    # seed, seed+1, ... wrapping past the largest seed.
    assert [int(g["seed"]) for g in generations] == [4294967294, 4294967295, 0, 1]
    assert {g["sampler"] for g in generations} == {"euler_a"}
    holds = mesh.sql(
        "SELECT reference FROM credit_entries WHERE user_id = %s AND kind = 'hold'", account.user_id
    )
    assert sorted(hold["reference"] for hold in holds) == sorted(f"generation:{g['id']}" for g in generations)


@pytest.mark.parametrize("count", [0, 5])
def test_a_batch_of_none_or_more_than_four_is_invalid(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client, count: int
) -> None:
    account = new_account("batch-size")
    reply = rest.post(
        "/api/v1/generation/batch-create",
        json={"requests": [{"generation": TEXT}] * count},
        headers=account.headers,
    )
    assert reply.status_code == 400, reply.text
    assert "requests" in field_violations(reply)
    nothing_queued_or_held(mesh, account.user_id)


def test_a_batch_the_credits_cover_only_three_of_is_refused_whole(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    probe, account = new_account("batch-probe"), new_account("batch-broke")
    one = rest.post("/api/v1/generation/create", json={**TEXT, "steps": 150}, headers=probe.headers).json()
    hold = int(one["creditsHeld"])
    rest.post(f"/api/v1/generation/{one['id']}/cancel", json={}, headers=probe.headers)
    drained = mesh.pingvas("admin", "grant-credits", account.email, str(3 * hold - 100))
    assert drained.returncode == 0, drained.stderr
    reply = rest.post(
        "/api/v1/generation/batch-create",
        json={"requests": [{"generation": {**TEXT, "steps": 150}}] * 4},
        headers=account.headers,
    )
    assert reply.status_code == 402, reply.text
    assert reply.json()["details"][0]["reason"] == "INSUFFICIENT_CREDITS"
    nothing_queued_or_held(mesh, account.user_id)


def test_an_upload_round_trip_is_accepted_and_its_hold_follows_the_strength(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("upload")
    upload_id = upload(rest, account, png(128, 128))
    # 150 steps at 128x128 hold 10 credits; at strength 0.5 only the last 75 steps run.
    text = {**TEXT, "width": 128, "height": 128, "steps": 150}
    full = rest.post("/api/v1/generation/create", json=text, headers=account.headers).json()
    half = rest.post(
        "/api/v1/generation/create",
        json={"prompt": "a fox", "steps": 150, "initImageId": upload_id, "strength": 0.5},
        headers=account.headers,
    )
    assert half.status_code == 200, half.text
    img2img = half.json()
    assert (int(full["creditsHeld"]), int(img2img["creditsHeld"])) == (10, 5)
    assert (img2img["mode"], img2img["initImageId"], img2img["strength"]) == (
        "GENERATION_MODE_IMAGE_TO_IMAGE",
        upload_id,
        0.5,
    )
    assert (img2img["width"], img2img["height"]) == (128, 128)  # the init image's size
    row = generation_row(mesh, img2img["id"])
    assert (row["mode"], row["init_image_key"]) == ("image_to_image", f"inputs/{account.user_id}/{upload_id}")
    # The upload was copied where it outlives the upload's expiry.
    kept = mesh.s3().get_object(Bucket=IMAGES_BUCKET, Key=row["init_image_key"])["Body"].read()
    assert kept == png(128, 128)
    for generation in (full, img2img):
        rest.post(f"/api/v1/generation/{generation['id']}/cancel", json={}, headers=account.headers)


def test_uploads_refuse_other_types_sizes_and_bytes_naming_the_field(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("upload-bad")
    for declared, field in (
        ({"contentType": "image/gif", "sizeBytes": 100}, "content_type"),
        ({"contentType": "image/png", "sizeBytes": TEN_MB + 1}, "size_bytes"),
    ):
        reply = rest.post("/api/v1/uploads", json=declared, headers=account.headers)
        assert reply.status_code == 400, reply.text
        assert field in field_violations(reply)
    # The presigned PUT binds the declared type: another is refused by S3 itself.
    created = rest.post(
        "/api/v1/uploads", json={"contentType": "image/png", "sizeBytes": 8}, headers=account.headers
    ).json()
    wrong_type = httpx.put(created["uploadUrl"], content=b"GIF89a..", headers={"content-type": "image/gif"})
    assert wrong_type.status_code == 403, wrong_type.text
    # Bytes of the declared length that are no image of an allowed format, or do not decode.
    garbage = upload(rest, account, b"\x00" * 4096)
    truncated = upload(rest, account, png()[:60])
    # A few bytes that would decode to a huge image are refused from the header, before decoding.
    too_wide = upload(rest, account, png(5000, 8))
    # More than 10 MB, written behind the API's back: the stored object is what is checked.
    oversize = str(uuid.uuid4())
    mesh.s3().put_object(
        Bucket=IMAGES_BUCKET, Key=f"uploads/{account.user_id}/{oversize}", Body=png() + b"\x00" * TEN_MB
    )
    for upload_id in (garbage, truncated, too_wide, oversize):
        reply = rest.post(
            "/api/v1/generation/create", json={**TEXT, "initImageId": upload_id}, headers=account.headers
        )
        assert reply.status_code == 400, reply.text
        assert field_violations(reply) == ["generation.init_image_id"]
    nothing_queued_or_held(mesh, account.user_id)


def test_gallery_images_are_inputs_and_use_again_copies_their_parameters(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    owner, stranger = new_account("recall"), new_account("recall-stranger")
    original = rest.post(
        "/api/v1/generation/create",
        json={**TEXT, "steps": 2, "seed": 77, "guidance": 5.5, "sampler": "ddim", "negativePrompt": "blur"},
        headers=owner.headers,
    ).json()
    wait_for(
        lambda: generation_row(mesh, original["id"])["state"] == "SUCCEEDED",
        within=120,
        message="the original generation did not succeed",
    )
    image_id = original["id"]  # an image's id is its generation's
    # GetImage shows the whole recipe, the generation's own fields included.
    shown = rest.get(f"/api/v1/gallery/images/{image_id}", headers=owner.headers).json()
    assert (shown["sampler"], shown["mode"], shown["seed"], shown["negativePrompt"]) == (
        "ddim",
        "GENERATION_MODE_TEXT_TO_IMAGE",
        "77",
        "blur",
    )

    # REST: the body is the generation, so the request's other fields are query parameters.
    again = rest.post(
        "/api/v1/generation/create",
        params={"fromImageId": image_id},
        json={"prompt": "", "steps": 3},
        headers=owner.headers,
    )
    assert again.status_code == 200, again.text
    row = generation_row(mesh, again.json()["id"])
    assert {key: row[key] for key in ("prompt", "negative_prompt", "model", "width", "height")} == {
        "prompt": TEXT["prompt"],
        "negative_prompt": "blur",
        "model": "tiny-sd",
        "width": 64,
        "height": 64,
    }
    assert (row["steps"], row["seed"], row["guidance"], row["sampler"]) == (3, 77, 5.5, "ddim")

    # The image is an init image too, and a mask must match its size.
    img2img = rest.post(
        "/api/v1/generation/create", json={**TEXT, "initImageId": image_id}, headers=owner.headers
    )
    assert img2img.status_code == 200, img2img.text
    (image,) = mesh.sql("SELECT object_key FROM images WHERE id = %s", image_id)
    assert generation_row(mesh, img2img.json()["id"])["init_image_key"] == image["object_key"]
    small_mask = upload(rest, owner, png(32, 32, "white"))
    masked = rest.post(
        "/api/v1/generation/create",
        json={**TEXT, "initImageId": image_id, "maskImageId": small_mask},
        headers=owner.headers,
    )
    assert masked.status_code == 400, masked.text
    assert field_violations(masked) == ["generation.mask_image_id"]

    # Another user's image and upload are not found, as inputs and for use again.
    for body in (
        {**TEXT, "initImageId": image_id},
        {**TEXT, "initImageId": small_mask},
    ):
        assert rest.post("/api/v1/generation/create", json=body, headers=stranger.headers).status_code == 404
    recalled = rest.post(
        "/api/v1/generation/create", params={"fromImageId": image_id}, json={}, headers=stranger.headers
    )
    assert recalled.status_code == 404, recalled.text
    nothing_queued_or_held(mesh, stranger.user_id)


def test_the_batch_key_splits_on_sampler_mode_and_lora_set_only(
    mesh: RunningMesh, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("batch-key")
    init = upload(rest, account, png())
    base = {**TEXT, "sampler": "euler"}
    requests = [
        base,
        {**base, "prompt": "another prompt", "seed": 99},  # prompts and seeds share a batch
        {**base, "sampler": "euler_a"},
        {**base, "initImageId": init, "strength": 1.0},
    ]
    reply = rest.post(
        "/api/v1/generation/batch-create",
        json={"requests": [{"generation": generation} for generation in requests]},
        headers=account.headers,
    )
    assert reply.status_code == 200, reply.text
    records = [
        GenerationRecord.from_row(SimpleNamespace(**generation_row(mesh, g["id"])))
        for g in reply.json()["generations"]
    ]
    same, other_prompt, other_sampler, image_to_image = (record.batch_key for record in records)
    assert same == other_prompt
    assert len({same, other_sampler, image_to_image}) == 3
    with_lora = replace(records[0], loras=(LoraWeight("tiny-sd-lora", 0.8),))
    assert with_lora.batch_key != same
    assert replace(with_lora, loras=(LoraWeight("tiny-sd-lora", 0.5),)).batch_key != with_lora.batch_key
