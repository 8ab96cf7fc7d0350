"""The per-user cap on open WatchGeneration streams: counted in Redis across replicas, refused
with RESOURCE_EXHAUSTED / HTTP 429 (TOO_MANY_STREAMS), given back when a stream ends, and never
held by a replica that stopped renewing its leases.

The mesh runs the default caps: a Free user may hold 20 streams (the floor)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc
from redis.asyncio import Redis
from support.failpoints import parking_prompt, release, wait_parked
from support.generations import wait_for

from services.common.errors import TooManyStreams
from services.common.settings import MIN_STREAMS_PER_USER
from services.generation.stream_slots import StreamSlots, streams_key

pytestmark = pytest.mark.integration

REQUEST = {"prompt": "a kite over dunes", "width": 64, "height": 64, "steps": 3, "seed": 5}
FREE_CAP = MIN_STREAMS_PER_USER


def open_watch(stub: pb_grpc.GenerationServiceStub, account: Any, generation_id: str) -> Any:
    """A stream that holds its slot: the slot is taken before the first event is sent, so once
    that event has arrived the slot is counted."""
    call = stub.WatchGeneration(
        pb.WatchGenerationRequest(generation_id=generation_id), metadata=account.metadata, timeout=300
    )
    next(call)
    return call


def error_reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in grpc-status-details-bin"
    (detail,) = status.details
    info = error_details_pb2.ErrorInfo()
    detail.Unpack(info)
    return info.reason


def refused(stub: pb_grpc.GenerationServiceStub, account: Any, generation_id: str) -> grpc.RpcError | None:
    """The error a new stream is refused with, or None when it is accepted (then closed)."""
    try:
        call = open_watch(stub, account, generation_id)
    except grpc.RpcError as error:
        return error
    call.cancel()
    return None


@pytest.fixture
def parked(mesh: Any, new_account: Any, rest: httpx.Client) -> Iterator[tuple[Any, str]]:
    """A Free user and their job, held after step 1 so that its watches stay open."""
    account = new_account("streams")
    prompt = parking_prompt(mesh, "a kite over dunes", after_step=1)
    created = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "prompt": prompt}, headers=account.headers
    ).json()
    wait_parked(mesh, created["id"])
    yield account, created["id"]
    release(mesh, created["id"])


def test_the_per_user_stream_cap_answers_resource_exhausted_and_429(
    mesh: Any, parked: tuple[Any, str], new_account: Any, rest: httpx.Client, gateway_channel: grpc.Channel
) -> None:
    account, generation_id = parked
    stub = pb_grpc.GenerationServiceStub(gateway_channel)
    streams = [open_watch(stub, account, generation_id) for _ in range(FREE_CAP)]
    try:
        error = refused(stub, account, generation_id)
        assert error is not None, f"a stream past the cap of {FREE_CAP} was accepted"
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(error) == "TOO_MANY_STREAMS"

        with rest.stream(
            "GET", f"/api/v1/generation/{generation_id}/events", headers=account.headers
        ) as over_rest:
            over_rest.read()
        assert over_rest.status_code == 429, over_rest.text
        assert "TOO_MANY_STREAMS" in over_rest.text

        # The cap is the user's own: another user watches, and the capped user still creates.
        other = new_account("streams-other")
        theirs = rest.post("/api/v1/generation/create", json=REQUEST, headers=other.headers).json()
        assert refused(stub, other, theirs["id"]) is None
        mine = rest.post("/api/v1/generation/create", json=REQUEST, headers=account.headers)
        assert mine.status_code == 200, mine.text

        # A stream that ends gives its slot back.
        streams.pop().cancel()
        wait_for(
            lambda: refused(stub, account, generation_id) is None,
            message="a cancelled stream's slot was never given back",
        )
    finally:
        for stream in streams:
            stream.cancel()


def test_slots_count_across_replicas_until_their_leases_lapse(
    mesh: Any, parked: tuple[Any, str], gateway_channel: grpc.Channel
) -> None:
    account, generation_id = parked
    stub = pb_grpc.GenerationServiceStub(gateway_channel)
    key = streams_key(uuid.UUID(account.user_id))
    # Another replica holds the user's whole cap, renewing its leases.
    elsewhere = {f"replica-b:{n}": time.time() + 3600 for n in range(FREE_CAP)}
    mesh.redis().zadd(key, elsewhere)

    error = refused(stub, account, generation_id)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # That replica dies: it stops renewing, and its leases run out.
    mesh.redis().zadd(key, {slot: time.time() - 1 for slot in elsewhere})
    assert refused(stub, account, generation_id) is None


def test_an_open_streams_lease_is_renewed(
    mesh: Any, parked: tuple[Any, str], gateway_channel: grpc.Channel
) -> None:
    account, generation_id = parked
    stub = pb_grpc.GenerationServiceStub(gateway_channel)
    key = streams_key(uuid.UUID(account.user_id))
    stream = open_watch(stub, account, generation_id)
    try:
        ((slot, first_expiry),) = mesh.redis().zrange(key, 0, -1, withscores=True)
        wait_for(
            lambda: (mesh.redis().zscore(key, slot) or 0) > first_expiry,
            message="the open stream's lease was never renewed",
        )
    finally:
        stream.cancel()


async def test_a_process_serves_at_most_its_own_cap_whoever_asks(mesh: Any) -> None:
    async def free(user_id: uuid.UUID) -> str:
        return "free"

    redis = Redis.from_url(mesh.redis_url)
    slots = StreamSlots(
        redis, caps_by_plan={}, default_cap=FREE_CAP, per_process=2, lease_seconds=30, plan_of=free
    )
    try:
        first = await slots.acquire(uuid.uuid4())
        await slots.acquire(uuid.uuid4())

        with pytest.raises(TooManyStreams) as refused:
            await slots.acquire(uuid.uuid4())
        assert refused.value.metadata["scope"] == "process"

        await slots.release(first)
        await slots.acquire(uuid.uuid4())
    finally:
        await redis.aclose()


async def test_streams_that_end_together_give_their_slots_back_in_one_go_though_cancelled(mesh: Any) -> None:
    """A job's watchers end together, and their clients hang up on the terminal event, which
    cancels each stream's handler as it gives its slot back: every slot still leaves Redis, and
    no command is cut off midway (each would cost the pool its connection: a new one to open)."""

    async def free(user_id: uuid.UUID) -> str:
        return "free"

    user_id = uuid.uuid4()
    name = f"slots-{user_id.hex[:8]}"
    redis = Redis.from_url(mesh.redis_url, client_name=name)
    slots = StreamSlots(
        redis, caps_by_plan={}, default_cap=500, per_process=500, lease_seconds=30, plan_of=free
    )

    async def our_connections() -> set[int]:
        return {int(client["id"]) for client in await redis.client_list() if client["name"] == name}

    try:
        *held, last = [await slots.acquire(user_id) for _ in range(201)]
        assert await redis.zcard(streams_key(user_id)) == 201
        connections_before = await our_connections()

        releases = [asyncio.create_task(slots.release(slot)) for slot in held]
        await asyncio.sleep(0)  # each release has begun, and waits for Redis
        for task in releases:
            task.cancel()
        outcomes = await asyncio.gather(*releases, return_exceptions=True)
        assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
        # One more, not cancelled: once it is given back, so is every slot given back before it.
        await slots.release(last)

        assert await redis.zcard(streams_key(user_id)) == 0
        assert await our_connections() == connections_before
    finally:
        await redis.aclose()


@pytest.mark.parametrize("protocol", ["sse", "grpc-web"])
def test_a_browser_that_goes_away_gives_its_stream_slots_back(
    mesh: Any, parked: tuple[Any, str], protocol: str
) -> None:
    """Clients that are not gRPC never cancel: they just close the connection. Envoy resets the
    stream upstream, and the slot is given back then, not when its lease lapses (30 s)."""
    account, generation_id = parked
    key = streams_key(uuid.UUID(account.user_id))
    if protocol == "sse":
        request = {"method": "GET", "url": f"{mesh.gateway_url}/api/v1/generation/{generation_id}/events"}
        headers = account.headers
    else:
        message = pb.WatchGenerationRequest(generation_id=generation_id).SerializeToString()
        request = {
            "method": "POST",
            "url": f"{mesh.gateway_url}/pingvas.generation.v1.GenerationService/WatchGeneration",
            "content": b"\x00" + len(message).to_bytes(4, "big") + message,
        }
        headers = {**account.headers, "content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    with contextlib.ExitStack() as browser:
        client = browser.enter_context(httpx.Client(timeout=30))
        for _tab in range(3):
            reply = browser.enter_context(client.stream(**request, headers=headers))
            assert reply.status_code == 200
            # Kept, not dropped: dropping a half-read body's iterator closes its connection.
            chunks = reply.iter_bytes()
            browser.callback(chunks.close)
            assert next(chunks)  # the replay has begun
        wait_for(lambda: mesh.redis().zcard(key) == 3, within=20, message="each open tab holds a slot")
    # The tabs are closed (their connections with them), and nothing was cancelled.
    wait_for(lambda: mesh.redis().zcard(key) == 0, within=20, message="closed streams kept their slots")
