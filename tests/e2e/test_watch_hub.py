"""The generation service's event hub: one reader for every watch in the process, slow watchers
never holding others back, a broken Redis connection losing no terminal event, and over a
thousand watches on one client connection and a small Redis connection budget.

The mesh here gives the generation service a Redis pool of 10 connections, so a design that held
a connection per watch could not serve the many-watches test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc
from redis.asyncio import Redis
from support.accounts import Account, dev_login
from support.cancellation import cancel_as_its_next_redis_send_finishes
from support.commands import redis_commands_asked_about
from support.failpoints import FAILPOINTS_ENV, parking_prompt, release, wait_parked
from support.generations import assert_watch_order, reached_step, wait_for
from support.mesh import MeshStarter, RunningMesh

from services.common.database import Database
from services.common.storage import open_image_store
from services.generation.event_hub import EVENT_HUB_CLIENT_NAME, EventHub, Subscription
from services.generation.events import LOG_READ_COUNT, EventLog, StoredEvent, new_event
from services.generation.generations import Generations
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRepository
from services.generation.watching import Watching

pytestmark = pytest.mark.integration

REDIS_BUDGET = 10
REQUEST = {"width": 64, "height": 64, "seed": 7}
TERMINAL = ("succeeded", "failed", "cancelled")
PLANS = ("free", "starter", "pro", "studio", "enterprise")


@pytest.fixture(scope="module")
def hub_mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    with own_mesh(
        "hub-home",
        {
            "PINGVAS_REDIS_MAX_CONNECTIONS": str(REDIS_BUDGET),
            # Short, so that a test sees a quiet stream's re-sent `queued` soon (15 s in production).
            "PINGVAS_WATCH_QUEUED_RESEND_SECONDS": "0.5",
            # One user holds over a thousand watches here; the per-user cap has tests of its own.
            "PINGVAS_WATCH_STREAMS_PER_USER": json.dumps(dict.fromkeys(PLANS, 2000)),
            **FAILPOINTS_ENV,
        },
    ) as running:
        yield running


@pytest.fixture
async def make_hub(hub_mesh: RunningMesh) -> AsyncIterator[Callable[..., EventHub]]:
    """Real hubs on the mesh's Redis and PostgreSQL, not started, with a buffer of 4 events so
    that falling behind is certain. Their position and PostgreSQL timers are far off unless a
    test sets them: these tests drive the log and the queue themselves."""
    redis = Redis.from_url(hub_mesh.redis_url)
    database = Database(
        hub_mesh.app_database_url, schema=hub_mesh.schema, system_url=hub_mesh.system_database_url
    )
    images, close_images = await open_image_store(hub_mesh.object_store(), url_ttl_seconds=3600)

    def make(**overrides: Any) -> EventHub:
        options: dict[str, Any] = {
            "queue": TierQueue(redis),
            "buffer_size": 4,
            "position_refresh_seconds": 3600,
            "truth_check_seconds": 3600,
            "position_news_seconds": 3600,
            **overrides,
        }
        return EventHub(
            reader=Redis.from_url(hub_mesh.redis_url, max_connections=1),
            redis=redis,
            events=EventLog(redis),
            generations=Generations(database=database, repository=GenerationRepository(), images=images),
            **options,
        )

    yield make
    await close_images()
    await database.close()
    await redis.aclose()


@contextlib.asynccontextmanager
async def started(hub: EventHub) -> AsyncIterator[EventHub]:
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


@pytest.fixture
async def hub(make_hub: Callable[..., EventHub]) -> AsyncIterator[EventHub]:
    async with started(make_hub()) as running:
        yield running


async def append_run(
    events: EventLog, generation_id: uuid.UUID, steps: int, handed_back_after: int | None = None
) -> None:
    """What a worker appends for a run: started, one progress per step, succeeded. With
    `handed_back_after`, the first attempt stops after that many steps and the job is queued
    again, as when a worker is lost, before a second attempt runs every step."""
    attempts = [handed_back_after, steps] if handed_back_after is not None else [steps]
    for attempt, last_step in enumerate(attempts, start=1):
        if attempt > 1:
            await events.append(generation_id, new_event(generation_id, queued=resources.GenerationQueued()))
        await events.append(
            generation_id, new_event(generation_id, started=resources.GenerationStarted(attempt=attempt))
        )
        for step in range(1, last_step + 1):
            progress = resources.GenerationProgress(
                step=step, total_steps=steps, preview=b"p" * 64, preview_mime_type="image/jpeg"
            )
            await events.append(generation_id, new_event(generation_id, progress=progress))
    await events.append(
        generation_id, new_event(generation_id, succeeded=resources.GenerationSucceeded(seed=1))
    )


async def read_through_terminal(subscription: Subscription) -> list[StoredEvent]:
    read: list[StoredEvent] = []
    while not (read and read[-1].event.WhichOneof("event") in TERMINAL):
        read.extend(await subscription.next_events(None))
    return read


async def test_a_watcher_that_never_reads_does_not_delay_another(hub: EventHub) -> None:
    generation_id = uuid.uuid4()
    await hub.events.append(generation_id, new_event(generation_id, queued=resources.GenerationQueued()))
    follow = {"user_id": uuid.uuid4(), "tier": "free", "queued": True}
    async with (
        hub.subscribe(generation_id, **follow) as never_reads,
        hub.subscribe(generation_id, **follow) as reads,
    ):
        await never_reads.next_events(None)  # its replay; after that it does not read until the end
        writer = asyncio.create_task(append_run(hub.events, generation_id, steps=40))
        # A generous deadline, not a timing assertion: a hub that waited for `never_reads`
        # would never get here.
        events = await asyncio.wait_for(read_through_terminal(reads), 120)
        await writer
        held = await never_reads.next_events(0)

    kinds = [s.event.WhichOneof("event") for s in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "succeeded"
    assert set(kinds[2:-1]) == {"progress"}
    sequences = [s.event.sequence for s in events]
    assert sequences == sorted(set(sequences)) and sequences[-1] == 43
    # The silent watcher held three events, not 42: each newer preview replaced the one it had not
    # taken, so its buffer never filled and the hub never had to wait or resynchronise it.
    assert [(s.event.WhichOneof("event"), s.event.sequence) for s in held] == [
        ("started", 2),
        ("progress", 42),
        ("succeeded", 43),
    ]
    assert held[1].event.progress.step == 40


async def test_a_watcher_that_fell_behind_gets_every_event_in_order(hub: EventHub) -> None:
    """Progress is coalesced, but `queued`, `started` and terminal events are not: a run handed
    back once (queued again, started again) puts more of them in the buffer of 4 than it holds,
    so the watcher is resynchronised from the stored log."""
    generation_id = uuid.uuid4()
    await hub.events.append(generation_id, new_event(generation_id, queued=resources.GenerationQueued()))
    follow = {"user_id": uuid.uuid4(), "tier": "free", "queued": True}
    async with hub.subscribe(generation_id, **follow) as late:
        first = await late.next_events(None)  # the replay: `queued`
        await append_run(hub.events, generation_id, steps=10, handed_back_after=5)
        # The hub has read the whole run past this watcher's buffer before it reads again.
        last_id = await hub.events.last_stream_id(generation_id)
        await asyncio.wait_for(_until(lambda: late.followed.stream_id == last_id), 120)
        assert late.behind

        events = first + await asyncio.wait_for(read_through_terminal(late), 120)

    kinds = [s.event.WhichOneof("event") for s in events]
    assert [k for k in kinds if k != "progress"] == ["queued", "started", "queued", "started", "succeeded"]
    sequences = [s.event.sequence for s in events]
    assert sequences == sorted(set(sequences)), "sequences only increase"
    assert sequences == list(range(1, 21)), "resynchronised from the stored log, nothing lost"


async def test_a_gap_in_the_feed_resynchronises_the_watchers_from_the_log(hub: EventHub) -> None:
    """The feed is capped: a hub that fell further behind than the cap finds entries gone. The
    logs still hold them, and the hub sees the gap in the sequence numbers. Here one event's feed
    entry is lost outright (appended to its log, and to a feed no hub reads), so the next event
    the hub sees skips a sequence number."""
    generation_id = uuid.uuid4()
    await hub.events.append(generation_id, new_event(generation_id, queued=resources.GenerationQueued()))
    lost_from_feed = EventLog(hub.events.redis, feed_key=f"feed-nobody-reads:{generation_id}")
    follow = {"user_id": uuid.uuid4(), "tier": "free", "queued": True}
    async with hub.subscribe(generation_id, **follow) as watcher:
        events = await watcher.next_events(None)  # the replay: `queued`
        started = resources.GenerationStarted(attempt=1)
        await lost_from_feed.append(generation_id, new_event(generation_id, started=started))
        await hub.events.append(
            generation_id, new_event(generation_id, succeeded=resources.GenerationSucceeded(seed=1))
        )
        events += await asyncio.wait_for(read_through_terminal(watcher), 120)

    assert [(s.event.WhichOneof("event"), s.event.sequence) for s in events] == [
        ("queued", 1),
        ("started", 2),
        ("succeeded", 3),
    ]


async def _until(condition: Any) -> None:
    """Polls for an outcome; callers put a generous deadline on it."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)


def _watch_in_thread(
    channel: grpc.Channel, account: Account, generation_id: str, into: list[Any]
) -> threading.Thread:
    def follow() -> None:
        stub = pb_grpc.GenerationServiceStub(channel)
        for event in stub.WatchGeneration(
            pb.WatchGenerationRequest(generation_id=generation_id), metadata=account.metadata, timeout=240
        ):
            into.append(event)

    thread = threading.Thread(target=follow)
    thread.start()
    return thread


def test_killing_the_hubs_redis_connection_loses_no_terminal_event(hub_mesh: RunningMesh) -> None:
    account = dev_login(hub_mesh.gateway_url, "hub-kill")
    with grpc.insecure_channel(hub_mesh.gateway_target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        prompt = parking_prompt(hub_mesh, "a harbour at night", after_step=2)
        created = stub.CreateGeneration(
            pb.CreateGenerationRequest(generation=resources.Generation(prompt=prompt, steps=5, **REQUEST)),
            metadata=account.metadata,
        )
        wait_parked(hub_mesh, created.id)
        watched: list[tuple[list[Any], threading.Thread]] = []
        for _ in range(6):
            events: list[Any] = []
            watched.append((events, _watch_in_thread(channel, account, created.id, events)))
        # Every watcher is subscribed (it has had the parked step) before the kill.
        for events, _thread in watched:
            wait_for(lambda events=events: reached_step(events, 2), message="a watcher never caught up")

        redis = hub_mesh.redis()
        hubs = [c for c in redis.client_list() if c["name"] == EVENT_HUB_CLIENT_NAME]
        assert hubs, "the generation service reads events on a connection of its own"
        for client in hubs:
            redis.client_kill_filter(_id=client["id"])
        release(hub_mesh, created.id)

        for events, thread in watched:
            thread.join(240)
            assert not thread.is_alive(), "a watcher never ended"
            assert_watch_order(events, steps=5)
    wait_for(
        lambda: any(c["name"] == EVENT_HUB_CLIENT_NAME for c in redis.client_list()),
        message="the hub reconnected",
    )


async def test_a_thousand_watches_on_one_connection_share_a_small_redis_budget(hub_mesh: RunningMesh) -> None:
    # On one client connection, and more than the 1,024 streams Envoy allows one by default: past
    # that a gRPC client would queue the rest silently and they would never start.
    watches = 1100
    account = dev_login(hub_mesh.gateway_url, "hub-many")
    prompt = parking_prompt(hub_mesh, "a field of poppies", after_step=1)
    async with grpc.aio.insecure_channel(hub_mesh.gateway_target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        created = await stub.CreateGeneration(
            pb.CreateGenerationRequest(generation=resources.Generation(prompt=prompt, steps=3, **REQUEST)),
            metadata=account.metadata,
        )
        await asyncio.to_thread(wait_parked, hub_mesh, created.id)
        seen: list[list[Any]] = [[] for _ in range(watches)]

        async def watch(into: list[Any]) -> None:
            call = stub.WatchGeneration(
                pb.WatchGenerationRequest(generation_id=created.id), metadata=account.metadata, timeout=240
            )
            async for event in call:
                into.append(event)

        tasks = [asyncio.create_task(watch(into)) for into in seen]
        # All of them open at once: each has had its replay up to the parked step.
        await asyncio.wait_for(_until(lambda: all(reached_step(into, 1) for into in seen)), 240)
        clients = len(hub_mesh.redis().client_list())
        release(hub_mesh, created.id)
        await asyncio.wait_for(asyncio.gather(*tasks), 240)

    # Every process of the mesh holds a few connections; one per watch would be hundreds.
    assert clients < 100, f"{clients} Redis connections for {watches} watches"
    # Each open was also rate-limited on that budget (it waits for a connection, never fails).
    assert "rate limit not checked" not in hub_mesh.log("generation")
    for into in seen:
        assert_watch_order(into, steps=3)


def test_a_waiting_watch_hears_queued_again_while_nothing_changes(hub_mesh: RunningMesh) -> None:
    account = dev_login(hub_mesh.gateway_url, "hub-quiet")
    with grpc.insecure_channel(hub_mesh.gateway_target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        # The blocker holds the user's one running slot, so the next job waits and its position
        # cannot change until the blocker is released.
        blocker = stub.CreateGeneration(
            pb.CreateGenerationRequest(
                generation=resources.Generation(
                    prompt=parking_prompt(hub_mesh, "a blocker", after_step=1), steps=2, **REQUEST
                )
            ),
            metadata=account.metadata,
        )
        wait_parked(hub_mesh, blocker.id)
        waiting = stub.CreateGeneration(
            pb.CreateGenerationRequest(
                generation=resources.Generation(prompt="a quiet pond", steps=2, **REQUEST)
            ),
            metadata=account.metadata,
        )
        events: list[Any] = []
        thread = _watch_in_thread(channel, account, waiting.id, events)
        wait_for(
            lambda: sum(e.WhichOneof("event") == "queued" for e in events) >= 3,
            message="a quiet stream of a waiting job never re-sent `queued`",
        )
        queued = [e for e in events if e.WhichOneof("event") == "queued"][:3]
        assert {e.sequence for e in queued} == {1}, "re-sent under the stored `queued` event's sequence"
        assert len({e.queued.position for e in queued}) == 1, "sent again though the position did not move"
        release(hub_mesh, blocker.id)
        thread.join(240)
        assert not thread.is_alive()
        assert events[-1].WhichOneof("event") == "succeeded"


async def test_a_move_is_told_at_once_near_the_front_and_less_often_further_back(
    hub_mesh: RunningMesh, make_hub: Callable[..., EventHub]
) -> None:
    """When a job starts, every job behind it moves. Near the front each move is news at once;
    at position 35 it waits position/10 refreshes (3 s here). A queue of its own on another
    Redis database, and the test's clock."""
    queue_redis = Redis.from_url(hub_mesh.redis_url.rsplit("/", 1)[0] + "/7")
    await queue_redis.flushdb()
    now = [0.0]
    hub = make_hub(
        queue=TierQueue(queue_redis),
        position_refresh_seconds=1,
        position_news_seconds=15,
        clock=lambda: now[0],
    )
    user, jobs = uuid.uuid4(), [uuid.uuid4() for _ in range(40)]
    for job in jobs:
        await hub.queue.enqueue("free", user, job, "tiny-sd")
    try:
        async with (
            hub.subscribe(jobs[2], user_id=user, tier="free", queued=True) as near,
            hub.subscribe(jobs[34], user_id=user, tier="free", queued=True) as far,
        ):
            assert (await hub.position(near.followed), await hub.position(far.followed)) == (3, 35)

            await hub.queue.remove("free", user, jobs[0])  # the first job started
            now[0] += 1
            assert (await hub.position(near.followed), await hub.position(far.followed)) == (2, 35)

            await hub.queue.remove("free", user, jobs[1])
            now[0] += 1
            assert (await hub.position(near.followed), await hub.position(far.followed)) == (1, 35)

            now[0] += 1  # three refreshes since position 35 was told: its news is due
            assert await hub.position(far.followed) == 33
    finally:
        await queue_redis.flushdb()
        await queue_redis.aclose()


async def test_queued_comes_before_started_whichever_is_appended_first(hub_mesh: RunningMesh) -> None:
    """A worker may claim a job between its enqueue and its first `queued` append. Its `started`
    then brings `queued` along, and the late first `queued` is not appended again; when the
    `queued` wins the race, `started` is appended alone. Either way a watcher reads `queued`
    first, then `started`, with gap-free sequences."""
    redis = Redis.from_url(hub_mesh.redis_url)
    events = EventLog(redis)

    def queued(position: int) -> pb.WatchGenerationResponse:
        return new_event(generation_id, queued=resources.GenerationQueued(position=position))

    def started() -> pb.WatchGenerationResponse:
        return new_event(generation_id, started=resources.GenerationStarted(attempt=1))

    try:
        # The worker first: its `started` carries `queued`, and the delivery's late one is dropped.
        generation_id = uuid.uuid4()
        assert await events.append(generation_id, started(), after_first=queued(1)) == 2
        assert await events.append(generation_id, queued(3), only_first=True) == 0
        log = await events.read_all(generation_id, "0")
        assert [(e.event.WhichOneof("event"), e.event.sequence) for e in log] == [
            ("queued", 1),
            ("started", 2),
        ]
        assert log[0].event.queued.position == 1

        # The delivery first: `started` comes alone after it.
        generation_id = uuid.uuid4()
        assert await events.append(generation_id, queued(3), only_first=True) == 1
        assert await events.append(generation_id, started(), after_first=queued(1)) == 2
        log = await events.read_all(generation_id, "0")
        assert [(e.event.WhichOneof("event"), e.event.sequence) for e in log] == [
            ("queued", 1),
            ("started", 2),
        ]
        assert log[0].event.queued.position == 3
    finally:
        await redis.aclose()


class XreadCountingRedis(Redis):
    """A real Redis client that counts its XREADs: the round trips a log read took."""

    xreads = 0

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        self.xreads += 1
        return await super().xread(*args, **kwargs)


@pytest.mark.parametrize(
    ("length", "reads"),
    [(3, 1), (LOG_READ_COUNT - 1, 1), (LOG_READ_COUNT, 2), (LOG_READ_COUNT + 2, 2)],
)
async def test_reading_a_whole_log_stops_at_a_short_read(
    hub_mesh: RunningMesh, length: int, reads: int
) -> None:
    """A watch replays a generation's log with `read_all`: a read that comes back short has
    reached the end, so a short log costs one round trip, not one more to find nothing."""
    redis = XreadCountingRedis.from_url(hub_mesh.redis_url)
    events = EventLog(redis)
    generation_id = uuid.uuid4()
    try:
        for position in range(length, 0, -1):
            await events.append(
                generation_id, new_event(generation_id, queued=resources.GenerationQueued(position=position))
            )
        log = await events.read_all(generation_id, "0")
        assert [stored.event.sequence for stored in log] == list(range(1, length + 1))
        assert redis.xreads == reads
    finally:
        await redis.aclose()


async def test_the_hubs_read_ends_even_when_a_redis_command_swallows_its_cancellation(
    make_hub: Callable[..., EventHub],
) -> None:
    """On Python 3.11 a cancellation that lands as a Redis command's send finishes is swallowed
    (services/common/cancellation.py). The hub's read must end all the same: a read that went on
    would hang the generation service's shutdown, which waits for it."""
    async with started(make_hub()) as running:
        generation_id = uuid.uuid4()
        async with running.subscribe(
            generation_id, user_id=uuid.uuid4(), tier="free", queued=True
        ) as watcher:
            assert await watcher.next_events(0) == []  # its replay, of an empty log
            await running.events.append(
                generation_id, new_event(generation_id, queued=resources.GenerationQueued())
            )
            await watcher.next_events(None)  # handed over by the hub's read: its connection is up
        read = next(task for task in asyncio.all_tasks() if task.get_name() == "event-hub-read")
        with cancel_as_its_next_redis_send_finishes(read) as landing:
            # Whichever comes first: the read ends, or it starts another command.
            started_again = asyncio.ensure_future(landing.started_again.wait())
            await asyncio.wait([read, started_again], return_when="FIRST_COMPLETED")
            started_again.cancel()
        assert landing.cancelled
        assert landing.started_after == []
        assert read.done()


async def test_a_watch_ends_even_when_a_redis_command_swallows_its_cancellation(
    hub_mesh: RunningMesh, hub: EventHub
) -> None:
    """A client that goes away cancels its watch. Should the cancellation land as the watch's
    replay sends its Redis read, Python 3.11 swallows it; the watch must still end, not stay
    subscribed (holding the user's stream slot) until its job's next event."""
    account = dev_login(hub_mesh.gateway_url, "hub-left")
    prompt = parking_prompt(hub_mesh, "a lantern in fog", after_step=2)
    async with grpc.aio.insecure_channel(hub_mesh.gateway_target) as channel:
        created = await pb_grpc.GenerationServiceStub(channel).CreateGeneration(
            pb.CreateGenerationRequest(generation=resources.Generation(prompt=prompt, steps=4, **REQUEST)),
            metadata=account.metadata,
        )
    await asyncio.to_thread(wait_parked, hub_mesh, created.id)
    watching = Watching(generations=hub.generations, hub=hub)
    seen: list[pb.WatchGenerationResponse] = []
    after_the_replay = asyncio.Event()

    async def follow() -> None:
        async for event in watching.watch(uuid.UUID(account.user_id), uuid.UUID(created.id)):
            if reached_step(seen, 2):
                after_the_replay.set()
            seen.append(event)

    client = asyncio.create_task(follow())
    released = False
    try:
        # The first command the watch sends is its replay's read of the log.
        with cancel_as_its_next_redis_send_finishes(client) as landing:
            await asyncio.wait_for(_until(lambda: reached_step(seen, 2) or client.done()), 60)
            # The job goes on: a watch still subscribed would get its next steps.
            release(hub_mesh, created.id)
            released = True
            more = asyncio.ensure_future(after_the_replay.wait())
            await asyncio.wait([client, more], return_when="FIRST_COMPLETED")
            more.cancel()
        assert landing.cancelled
        assert client.cancelled(), f"the watch went on: {[e.WhichOneof('event') for e in seen]}"
        assert reached_step(seen, 2)  # the replay it had read is delivered; nothing after
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)
        if not released:
            release(hub_mesh, created.id)


async def test_the_hubs_own_reads_never_go_through_the_instrumentation(
    make_hub: Callable[..., EventHub],
) -> None:
    """The hub reads the feed once per event of every followed generation and recomputes queue
    positions for all watchers together: no request is behind that work, and with tracing on,
    even a span the sampler drops costs each read the instrumentation's work."""
    with redis_commands_asked_about() as sampler:
        async with started(make_hub()) as running:
            generation_id = uuid.uuid4()
            async with running.subscribe(
                generation_id, user_id=uuid.uuid4(), tier="free", queued=True
            ) as watcher:
                await running.position(watcher.followed)  # asked from a request: computed for all
                with suppress_instrumentation():  # a worker's appends, and the watcher's replay
                    await append_run(running.events, generation_id, steps=3)
                    read = await read_through_terminal(watcher)
    assert read[-1].event.WhichOneof("event") == "succeeded"
    # Only the feed's end, read once as the hub starts; no read of the feed, and no position
    # computation (a script, as the appends are).
    assert sampler.names == ["XREVRANGE"]
