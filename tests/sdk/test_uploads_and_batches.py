"""Issue 15's calls in the Python SDK, against the real mesh: an image uploaded through
CreateUpload and its presigned PUT is named by an img2img generation, a batch made from a template
gets consecutive seeds (and from a list, all or none against the credits), a batch whose reply
is lost is not made twice, and a refused upload raises the SDK's typed errors naming the field. The generations are checked as the API stores
them (GetGeneration), not by their images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pingvas
import pytest
from PIL import Image
from pingvas.generation.v1 import generation_resources_pb2, generation_service_pb2
from support.accounts import Account
from support.flaky_hop import FlakyHop
from support.mesh import RunningMesh

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

IMAGE_TO_IMAGE = generation_resources_pb2.GENERATION_MODE_IMAGE_TO_IMAGE


def png_of(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def client_of(mesh: RunningMesh, account: Account) -> pingvas.Client:
    return pingvas.Client(mesh.gateway_target, access_token=account.token)


def test_an_uploaded_png_is_the_init_image_of_an_img2img_generation(
    mesh: RunningMesh, new_account: Any, tmp_path: Path
) -> None:
    account = new_account("sdk-upload")
    init_png = tmp_path / "init.png"
    init_png.write_bytes(png_of())
    with client_of(mesh, account) as client:
        upload_id = client.uploads.create(init_png, "image/png")
        created = client.generations.create(
            "a fox, oil painting", init_image_id=upload_id, strength=0.6, steps=2, sampler="euler"
        )
        stored = client.generations.get(created.id)

    assert (stored.init_image_id, stored.mode, stored.sampler) == (upload_id, IMAGE_TO_IMAGE, "euler")
    assert stored.strength == pytest.approx(0.6)
    # The size comes from the init image when the request does not give one.
    assert (stored.width, stored.height) == (64, 64)


def test_a_batch_from_a_template_gets_consecutive_seeds(mesh: RunningMesh, new_account: Any) -> None:
    account = new_account("sdk-batch")
    with client_of(mesh, account) as client:
        template = pingvas.generation_request("a lighthouse", width=64, height=64, steps=1, seed=11)
        batch = client.generations.batch_create(template, count=3)
        stored = [client.generations.get(generation.id) for generation in batch]

    assert [g.seed for g in batch] == [11, 12, 13]
    assert [(g.id, g.seed, g.prompt) for g in stored] == [(g.id, g.seed, "a lighthouse") for g in batch]
    assert len({g.id for g in batch}) == 3


def test_a_batch_whose_reply_is_lost_is_not_retried_so_it_is_made_once(
    mesh: RunningMesh, new_account: Any
) -> None:
    account = new_account("sdk-batch-lost")
    # A batch carries no idempotency key: a retry after the lost reply would make it again.
    with FlakyHop(mesh.gateway_target) as hop:
        hop.lose_next_reply("BatchCreateGenerations")
        with (
            pingvas.Client(hop.target, access_token=account.token) as client,
            pytest.raises(pingvas.Unavailable),
        ):
            client.generations.batch_create(
                pingvas.generation_request("a heron", width=64, height=64, steps=1), count=2
            )
        sent = hop.requests("BatchCreateGenerations", generation_service_pb2.BatchCreateGenerationsRequest)
    assert len(sent) == 1
    made = mesh.sql("SELECT prompt FROM generations WHERE user_id = %s", account.user_id)
    assert [row["prompt"] for row in made] == ["a heron", "a heron"]


def test_a_bad_upload_and_an_unaffordable_batch_raise_typed_errors(
    mesh: RunningMesh, new_account: Any
) -> None:
    account = new_account("sdk-batch-errors")
    with client_of(mesh, account) as client:
        with pytest.raises(pingvas.InvalidArgument) as wrong_type:
            client.uploads.create(png_of(), "image/gif")
        assert [v.field for v in wrong_type.value.field_violations] == ["content_type"]

        with pytest.raises(pingvas.InvalidArgument) as too_many:
            client.generations.batch_create(pingvas.generation_request("a fox"), count=5)
        assert [v.field for v in too_many.value.field_violations] == ["requests"]

        drained = mesh.pingvas("admin", "grant-credits", account.email, "-100")
        assert drained.returncode == 0, drained.stderr
        with pytest.raises(pingvas.InsufficientCredits) as broke:
            client.generations.batch_create(
                [pingvas.generation_request(f"a fox {n}", width=64, height=64, steps=1) for n in range(2)]
            )
        assert broke.value.available == 0
    assert mesh.sql("SELECT id FROM generations WHERE user_id = %s", account.user_id) == []


async def test_the_async_client_uploads_and_batches(mesh: RunningMesh, new_account: Any) -> None:
    account = new_account("sdk-async-batch")
    async with pingvas.AsyncClient(mesh.gateway_target, access_token=account.token) as client:
        upload_id = await client.uploads.create(png_of(), "image/png")
        batch = await client.generations.batch_create(
            [
                pingvas.generation_request("an owl", init_image_id=upload_id, strength=0.5, steps=2),
                pingvas.generation_request("a wren", width=64, height=64, steps=1),
            ]
        )
        stored = [await client.generations.get(generation.id) for generation in batch]

    assert [(g.prompt, g.init_image_id) for g in stored] == [("an owl", upload_id), ("a wren", "")]
    assert stored[1].seed == stored[0].seed + 1
