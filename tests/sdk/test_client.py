"""The Python SDK against the real mesh, through the gateway's native gRPC: generate with a
progress callback and the PNG's bytes, typed resources page by page, typed errors from the
server's rich status, a create retried after a lost reply making one generation, and a watch
that resumes after its stream is cut without losing or repeating an event."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import httpx
import pingvas
import pytest
from PIL import Image
from pingvas.generation.v1 import generation_resources_pb2, generation_service_pb2
from support.accounts import Account
from support.failpoints import parking_prompt, release
from support.flaky_hop import FlakyHop
from support.mesh import RunningMesh

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUCCEEDED = generation_resources_pb2.GENERATION_STATE_SUCCEEDED
# Fast retries: the tests wait for the server, not for backoff.
QUICK_RETRIES = pingvas.RetryPolicy(initial_backoff=0.05, max_backoff=0.2)


def client_of(mesh: RunningMesh, account: Account, **options: Any) -> pingvas.Client:
    return pingvas.Client(mesh.gateway_target, access_token=account.token, **options)


def api_key_of(mesh: RunningMesh, account: Account) -> str:
    reply = httpx.post(
        f"{mesh.gateway_url}/api/v1/apikeys",
        json={"displayName": "sdk test", "scopes": ["read", "generate"]},
        headers=account.headers,
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["secret"])


def test_generate_with_an_api_key_reports_each_event_and_returns_the_png(
    mesh: RunningMesh, new_account: Any
) -> None:
    account = new_account("sdk-generate")
    # The job parks after steps 1 and 2 until the callback has been given that step's event: a
    # watcher that has not yet taken a `progress` gets the next one in its place (the hub keeps
    # the newest preview), so without the parking a fast tiny job could show fewer steps.
    parked_after = [1, 2]
    prompt = parking_prompt(mesh, "a red fox in snow", after_step=parked_after)
    events: list[pingvas.Event] = []

    def report(event: pingvas.Event) -> None:
        events.append(event)
        if isinstance(event, pingvas.Progress) and event.step in parked_after:
            release(mesh, event.generation_id)

    with pingvas.Client(mesh.gateway_target, api_key=api_key_of(mesh, account)) as client:
        result = client.generate(prompt, width=64, height=64, steps=3, seed=7, progress=report)

    assert result.generation.state == SUCCEEDED
    assert (result.generation.seed, result.generation.prompt) == (7, prompt)
    assert result.image.startswith(PNG_SIGNATURE)
    assert Image.open(io.BytesIO(result.image)).size == (64, 64)
    assert [type(e) for e in events] == [
        pingvas.Queued,
        pingvas.Started,
        pingvas.Progress,
        pingvas.Progress,
        pingvas.Progress,
        pingvas.Succeeded,
    ]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events if isinstance(e, pingvas.Progress)] == [1, 2, 3]
    assert all(e.generation_id == result.generation.id for e in events)
    succeeded = events[-1]
    assert isinstance(succeeded, pingvas.Succeeded) and succeeded.is_terminal
    assert succeeded.credits_charged == result.generation.credits_charged > 0


def test_lists_page_through_generations_and_images_which_are_read_and_deleted(
    mesh: RunningMesh, new_account: Any
) -> None:
    account = new_account("sdk-lists")
    with client_of(mesh, account) as client:
        made = [
            client.generate(f"a lighthouse {n}", width=64, height=64, steps=1).generation for n in range(3)
        ]
        newest_first = [generation.id for generation in reversed(made)]

        generation_pages = list(client.generations.list(page_size=2).pages())
        assert [len(page.items) for page in generation_pages] == [2, 1]
        assert generation_pages[-1].next_page_token == ""
        assert [g.id for g in client.generations.list(page_size=2)] == newest_first

        images = client.images.list(page_size=2)
        assert [image.id for image in images] == newest_first
        assert [len(page.items) for page in images.pages()] == [2, 1]

        image = client.images.get(made[0].id)
        assert (image.prompt, image.width, image.seed) == ("a lighthouse 0", 64, made[0].seed)
        assert client.images.content(image).startswith(PNG_SIGNATURE)

        client.images.delete(image.id)
        client.images.delete(image.id)  # deleting again succeeds, as the contract says
        with pytest.raises(pingvas.NotFound):
            client.images.content(image)  # its URL stops working at once
        with pytest.raises(pingvas.NotFound):
            client.images.get(image.id)
        assert [i.id for i in client.images.list(page_size=2)] == newest_first[:2]


def test_errors_are_typed_from_the_servers_rich_status(mesh: RunningMesh, new_account: Any) -> None:
    account = new_account("sdk-errors")
    with client_of(mesh, account) as client:
        with pytest.raises(pingvas.InvalidArgument) as invalid:
            client.generations.create("a fox", width=60, height=64, steps=1)
        assert [v.field for v in invalid.value.field_violations] == ["generation.width"]
        assert invalid.value.code == "INVALID_ARGUMENT"

        with pytest.raises(pingvas.InvalidArgument) as unrepresentable:
            client.generations.create("a fox", width=-8)  # no uint32: refused before it is sent
        assert [v.field for v in unrepresentable.value.field_violations] == ["generation.width"]

        with pytest.raises(pingvas.NotFound) as missing:
            client.generations.get(str(uuid.uuid4()))
        assert missing.value.reason == "NOT_FOUND"

        # Issue 15's options reach the server: each refusal names its field.
        with pytest.raises(pingvas.InvalidArgument) as img2img:
            client.generations.create(
                "a fox", sampler="no-such-sampler", strength=0.5, loras=[("no-such-lora", 0.8)]
            )
        assert sorted(v.field for v in img2img.value.field_violations) == [
            "generation.loras[0].name",
            "generation.sampler",
            "generation.strength",
        ]
        with pytest.raises(pingvas.NotFound):
            client.generations.create("", from_image_id=str(uuid.uuid4()))

        drained = mesh.pingvas("admin", "grant-credits", account.email, "-100")
        assert drained.returncode == 0, drained.stderr
        with pytest.raises(pingvas.InsufficientCredits) as broke:
            client.generate("a fox", width=64, height=64, steps=1)
        assert (broke.value.code, broke.value.available) == ("FAILED_PRECONDITION", 0)
        assert broke.value.needed is not None and broke.value.needed > 0
        assert mesh.sql("SELECT id FROM generations WHERE user_id = %s", account.user_id) == []

    with (
        pingvas.Client(mesh.gateway_target, access_token="not-a-token") as stranger,
        pytest.raises(pingvas.Unauthenticated),
    ):
        next(stranger.generations.list().pages())


def test_a_create_whose_reply_is_lost_is_retried_with_its_idempotency_key_and_makes_one_generation(
    mesh: RunningMesh, new_account: Any
) -> None:
    account = new_account("sdk-retry")
    with FlakyHop(mesh.gateway_target) as hop:
        hop.lose_next_reply("CreateGeneration")
        with (
            pingvas.Client(
                hop.target, access_token=account.token, retry=pingvas.RetryPolicy(max_attempts=1)
            ) as once,
            pytest.raises(pingvas.Unavailable),
        ):
            once.generations.create("a heron", width=64, height=64, steps=1)

        hop.lose_next_reply("CreateGeneration")
        with pingvas.Client(hop.target, access_token=account.token, retry=QUICK_RETRIES) as client:
            generation = client.generations.create("a heron", width=64, height=64, steps=1)

        sent = hop.requests("CreateGeneration", generation_service_pb2.CreateGenerationRequest)
    given_up, lost, retried = sent
    assert lost.request_id and lost.request_id == retried.request_id, "one key for a create and its retry"
    assert given_up.request_id != lost.request_id, "each create has a key of its own"
    created = mesh.sql(
        "SELECT id, request_id FROM generations WHERE user_id = %s ORDER BY created_at", account.user_id
    )
    # Each lost reply's create was made once; the retry returned what its first attempt made.
    assert [row["request_id"] for row in created] == [given_up.request_id, lost.request_id]
    assert str(created[1]["id"]) == generation.id


def assert_resumed_without_loss_or_repeat(events: list[pingvas.Event], steps: int) -> None:
    """What a resumed watch promises: every event once, in order, and none of `queued`, `started`
    and the terminal one lost. A `progress` may give way to a newer one that arrived before it
    was read (the server keeps the newest preview for a reader slower than the steps), so the
    progress steps seen are in order but need not be all of them."""
    # A queued event is re-sent with the same sequence when the queue position changes.
    distinct = [e for n, e in enumerate(events) if n == 0 or e.sequence != events[n - 1].sequence]
    sequences = [e.sequence for e in distinct]
    assert sequences == sorted(set(sequences)), "none repeated, in order"
    assert [type(e).__name__ for e in distinct if not isinstance(e, pingvas.Progress)] == [
        "Queued",
        "Started",
        "Succeeded",
    ]
    assert distinct[-1].sequence == 3 + steps, "the terminal event numbered after every step"
    progress = [e for e in distinct if isinstance(e, pingvas.Progress)]
    assert progress and all(e.sequence == 2 + e.step for e in progress), "each step under its own number"


def test_a_watch_resumes_after_its_stream_is_cut_without_losing_or_repeating_an_event(
    mesh: RunningMesh, new_account: Any
) -> None:
    account = new_account("sdk-watch")
    steps = 4
    prompt = parking_prompt(mesh, "a kestrel", after_step=2)
    with FlakyHop(mesh.gateway_target) as hop:
        hop.cut_next_stream("WatchGeneration", after_events=3)
        with pingvas.Client(hop.target, access_token=account.token, retry=QUICK_RETRIES) as client:
            generation = client.generations.create(prompt, width=64, height=64, steps=steps)
            events: list[pingvas.Event] = []
            for event in client.generations.watch(generation.id):
                events.append(event)
                if isinstance(event, pingvas.Progress) and event.step == 2:
                    release(mesh, generation.id)  # parked after step 2, on the resumed stream
        watches = hop.requests("WatchGeneration", generation_service_pb2.WatchGenerationRequest)

    assert [w.after_sequence for w in watches] == [0, events[2].sequence], "resumed after the last seen"
    assert_resumed_without_loss_or_repeat(events, steps)


async def test_the_async_client_generates_and_lists(mesh: RunningMesh, new_account: Any) -> None:
    account = new_account("sdk-async")
    seen: list[pingvas.Event] = []

    async def on_event(event: pingvas.Event) -> None:
        await asyncio.sleep(0)
        seen.append(event)

    async with pingvas.AsyncClient(mesh.gateway_target, access_token=account.token) as client:
        result = await client.generate("an owl", width=64, height=64, steps=2, progress=on_event)
        assert result.image.startswith(PNG_SIGNATURE)
        assert isinstance(seen[-1], pingvas.Succeeded) and len(seen) == 5
        assert [g.id async for g in client.generations.list(page_size=1)] == [result.generation.id]
        assert [i.id async for i in client.images.list()] == [result.generation.id]
        assert (await client.images.get(result.generation.id)).prompt == "an owl"
        with pytest.raises(pingvas.NotFound):
            await client.generations.cancel(str(uuid.uuid4()))


async def test_the_async_clients_watch_resumes_after_its_stream_is_cut(
    mesh: RunningMesh, new_account: Any
) -> None:
    account = new_account("sdk-async-watch")
    steps = 3
    # Held after step 1 until the resumed stream has shown it, so each cut lands where planned:
    # after `queued` and `started`, then after step 1 and the next event.
    prompt = parking_prompt(mesh, "a wren", after_step=1)
    with FlakyHop(mesh.gateway_target) as hop:
        hop.cut_next_stream("WatchGeneration", after_events=2)
        hop.cut_next_stream("WatchGeneration", after_events=2)
        async with pingvas.AsyncClient(hop.target, access_token=account.token, retry=QUICK_RETRIES) as client:
            generation = await client.generations.create(prompt, width=64, height=64, steps=steps)
            events: list[pingvas.Event] = []
            async for event in client.generations.watch(generation.id):
                events.append(event)
                if isinstance(event, pingvas.Progress) and event.step == 1:
                    release(mesh, generation.id)
        watches = hop.requests("WatchGeneration", generation_service_pb2.WatchGenerationRequest)

    assert [w.after_sequence for w in watches] == [0, events[1].sequence, events[3].sequence]
    assert_resumed_without_loss_or_repeat(events, steps)
