"""The claim script alone, on a real Redis of its own: bands, turns, aging, caps, affinity."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from support.servers import running_redis

from services.embedded.redis import EmbeddedRedis
from services.generation import queue as queue_module
from services.generation.queue import ClaimCycle, SchedulingPolicy, TierQueue

POLICY = SchedulingPolicy(
    aging_seconds={"enterprise": 600, "studio": 600, "pro": 600, "starter": 600, "free": 600},
    concurrency_caps={"free": 1, "starter": 1, "pro": 2, "studio": 4, "enterprise": 8},
    affinity_lookahead=32,
    affinity_max_skips=2,
)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    home: Path = tmp_path_factory.mktemp("claim-redis")
    with running_redis(home) as server:
        yield server


@pytest.fixture
async def queue(redis_server: EmbeddedRedis) -> AsyncIterator[TierQueue]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield TierQueue(client)
    await client.aclose()


def ids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


async def drain(
    queue: TierQueue, policy: SchedulingPolicy = POLICY, warm: tuple[str, ...] = ()
) -> list[uuid.UUID]:
    order = []
    while claim := await queue.claim("w", 30, policy, warm):
        order.append(claim.generation_id)
        await queue.release_lease(claim.generation_id, "w")
    return order


async def test_bands_are_strict(queue: TierQueue) -> None:
    starter, pro, studio = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    jobs = {"starter": ids(3), "pro": ids(2), "studio": ids(1)}
    for tier, user in (("starter", starter), ("pro", pro), ("studio", studio)):
        for job in jobs[tier]:
            await queue.enqueue(tier, user, job, "tiny-sd")
    assert await drain(queue) == jobs["studio"] + jobs["pro"] + jobs["starter"]


async def test_users_take_turns_within_a_band(queue: TierQueue) -> None:
    heavy, light = uuid.uuid4(), uuid.uuid4()
    heavy_jobs, light_jobs = ids(4), ids(2)
    for job in heavy_jobs:
        await queue.enqueue("pro", heavy, job, "m")
    for job in light_jobs:
        await queue.enqueue("pro", light, job, "m")
    order = await drain(queue)
    # Whoever goes first, the light user never waits behind more than one heavy job.
    assert order.index(light_jobs[0]) <= 1
    assert order.index(light_jobs[1]) <= 3
    assert order[-2:] == heavy_jobs[2:]


async def test_a_capped_user_waits_without_blocking_others(queue: TierQueue) -> None:
    capped, other = uuid.UUID(int=1), uuid.UUID(int=2)  # the capped user's turn comes first
    capped_jobs, other_jobs = ids(2), ids(1)
    for job in capped_jobs:
        await queue.enqueue("free", capped, job, "m")
    await queue.enqueue("free", other, other_jobs[0], "m")
    first = await queue.claim("w1", 30, POLICY)
    assert first is not None and first.user_id == capped
    second = await queue.claim("w2", 30, POLICY)  # the first's owner is at its cap of 1
    assert second is not None and second.user_id != first.user_id
    assert await queue.claim("w3", 30, POLICY) is None  # both users are at their cap
    await queue.release_lease(first.generation_id, "w1")
    third = await queue.claim("w3", 30, POLICY)
    assert third is not None and third.user_id == first.user_id


async def test_a_claim_that_finds_nothing_leaves_no_wake_tokens(queue: TierQueue) -> None:
    # Tokens pushed while the workers were busy would wake idle workers to claim nothing.
    user = uuid.uuid4()
    jobs = ids(3)
    for job in jobs:
        await queue.enqueue("free", user, job, "m")
    assert await queue.redis.llen("queue:signal") == 3
    assert await queue.claim("w1", 30, POLICY) is not None
    assert await queue.claim("w2", 30, POLICY) is None  # the user is at the Free cap of 1
    assert await queue.redis.llen("queue:signal") == 0
    started = asyncio.get_running_loop().time()
    await queue.wait_for_work(1)  # so an idle worker sleeps until new work arrives
    assert asyncio.get_running_loop().time() - started >= 0.9


async def free_job_behind_studio_jobs(
    queue: TierQueue, free_aging_seconds: float, studio: int
) -> tuple[SchedulingPolicy, uuid.UUID, list[uuid.UUID]]:
    """A Free job, then `studio` Studio jobs of other users, under a policy with the given Free
    aging bound: (the policy, the Free job, the Studio jobs)."""
    policy = SchedulingPolicy(
        aging_seconds={**POLICY.aging_seconds, "free": free_aging_seconds},
        concurrency_caps=POLICY.concurrency_caps,
    )
    free_job = uuid.uuid4()
    await queue.enqueue("free", uuid.uuid4(), free_job, "m")
    studio_jobs = ids(studio)
    for job in studio_jobs:
        await queue.enqueue("studio", uuid.uuid4(), job, "m")
    return policy, free_job, studio_jobs


async def test_an_aged_job_goes_before_every_band(queue: TierQueue) -> None:
    policy, free_job, studio_jobs = await free_job_behind_studio_jobs(queue, 0.2, studio=3)
    first = await queue.claim("w", 30, policy)
    assert first is not None and first.generation_id in studio_jobs  # not aged yet
    await asyncio.sleep(0.25)
    aged = await queue.claim("w", 30, policy)
    assert aged is not None and (aged.generation_id, aged.reason) == (free_job, "aged")


async def test_a_job_due_before_the_workers_next_claim_goes_first(queue: TierQueue) -> None:
    # A worker busy for the next 40 s must take a job whose 30 s bound passes meanwhile, or that
    # job starts late; a worker back in 10 s leaves it to a later claim.
    policy, free_job, studio_jobs = await free_job_behind_studio_jobs(queue, 30, studio=2)
    soon = await queue.claim("w", 30, policy, horizon_seconds=10)
    assert soon is not None and soon.generation_id in studio_jobs and soon.reason == "next"
    late = await queue.claim("w", 30, policy, horizon_seconds=40)
    assert late is not None and (late.generation_id, late.reason) == (free_job, "aged")


def test_a_claim_cycle_counts_claim_to_claim_time_while_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    now = iter([0.0, 5.0, 5.5, 100.0, 100.2])
    monkeypatch.setattr(queue_module.time, "monotonic", lambda: next(now))
    cycle = ClaimCycle()
    assert cycle.horizon() == 0.0  # no cycle yet
    cycle.got_work()
    assert cycle.horizon() == 5.0  # claim to claim, with a job between them
    assert cycle.horizon() == 5.0  # that claim found nothing: idle from here on
    assert cycle.horizon() == 5.0  # 94.5 s idle do not make the next job any longer
    cycle.got_work()
    assert cycle.horizon() == pytest.approx(0.2)


async def test_a_warm_model_is_preferred_for_a_bounded_number_of_swaps(queue: TierQueue) -> None:
    cold = uuid.uuid4()
    # Its user sorts first among never-served users, so it is ahead in the turn order.
    await queue.enqueue("pro", uuid.UUID(int=1), cold, "tiny-sd-b")
    warm_jobs = ids(4)
    for job in warm_jobs:
        await queue.enqueue("pro", uuid.uuid4(), job, "tiny-sd")
    reasons = []
    for _ in range(3):
        claim = await queue.claim("w", 30, POLICY, warm_models=("tiny-sd",))
        assert claim is not None
        reasons.append((claim.generation_id, claim.reason))
    # The cold job was passed over twice (max_skips=2), then taken although warm jobs remain.
    assert [reason for _, reason in reasons] == ["warm", "warm", "starved"]
    assert {job for job, _ in reasons[:2]} <= set(warm_jobs)
    assert reasons[2][0] == cold
    other_worker = await queue.claim("w2", 30, POLICY, warm_models=("tiny-sd-b",))
    assert other_worker is not None and other_worker.reason == "cold"  # no tiny-sd-b job left


async def test_a_job_is_never_handed_to_two_workers(queue: TierQueue) -> None:
    jobs = ids(40)
    for index, job in enumerate(jobs):
        await queue.enqueue(["free", "pro", "studio"][index % 3], uuid.uuid4(), job, "m")
    claims = await asyncio.gather(*(queue.claim(f"w{i}", 30, POLICY) for i in range(60)))
    claimed = [c.generation_id for c in claims if c is not None]
    assert sorted(claimed) == sorted(jobs)


async def test_depth_counts_waiting_jobs(queue: TierQueue) -> None:
    user = uuid.uuid4()
    for job in ids(3):
        await queue.enqueue("free", user, job, "m")
    assert await queue.depth("free") == 3
    claim = await queue.claim("w", 30, POLICY)
    assert claim is not None
    assert await queue.depth("free") == 2


async def test_a_claim_can_end_the_previous_lease_in_the_same_round_trip(queue: TierQueue) -> None:
    user = uuid.uuid4()
    first_job, second_job = ids(2)
    for job in (first_job, second_job):
        await queue.enqueue("free", user, job, "m")
    first = await queue.claim("w", 30, POLICY)
    assert first is not None and first.generation_id == first_job
    assert await queue.claim("w", 30, POLICY) is None  # the free user is at their cap of 1
    second = await queue.claim("w", 30, POLICY, release=first_job)
    assert second is not None and second.generation_id == second_job
    assert not await queue.is_leased(first_job)
    assert await queue.is_leased(second_job)
    # Only the lease's owner can end it through a claim.
    await queue.claim("intruder", 30, POLICY, release=second_job)
    assert await queue.is_leased(second_job)


async def test_a_batch_takes_same_settings_jobs_of_the_leaders_band_in_turn(queue: TierQueue) -> None:
    # Users never served tie in the ring and go in id order: these ids fix who leads.
    first_user, second_user, capped = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
    leader, first_same, first_later = ids(3)
    other_settings, second_same, capped_running, capped_same, cheaper_same = ids(5)
    key = "tiny-sd|64x64|4|7.5"
    # A user at their cap (studio: 4) has no job taken along.
    for job in (capped_running, *ids(3)):
        await queue.enqueue("studio", capped, job, "tiny-sd", key)
        assert await queue.claim("other-worker", 30, POLICY) is not None
    await queue.enqueue("studio", first_user, leader, "tiny-sd", key)
    await queue.enqueue("studio", first_user, first_same, "tiny-sd", key)
    await queue.enqueue("studio", first_user, first_later, "tiny-sd", key)
    await queue.enqueue("studio", second_user, other_settings, "tiny-sd", "tiny-sd|64x64|8|7.5")
    await queue.enqueue("studio", second_user, second_same, "tiny-sd", key)
    await queue.enqueue("studio", capped, capped_same, "tiny-sd", key)
    await queue.enqueue("pro", uuid.uuid4(), cheaper_same, "tiny-sd", key)

    batch = await queue.claim_batch("w", 30, POLICY, max_batch=3)

    # The leader as the policy chose it; then one job per user per round: the second user's
    # same-settings job (skipping their other-settings head) before the first user's next one.
    assert [claim.generation_id for claim in batch] == [leader, second_same, first_same]
    assert [claim.reason for claim in batch] == ["next", "batched", "batched"]
    assert {claim.tier for claim in batch} == {"studio"}
    for claim in batch:
        assert await queue.is_leased(claim.generation_id)
    for job in (first_later, other_settings, capped_same, cheaper_same):
        assert not await queue.is_leased(job)
    assert await queue.depth("studio") == 3  # first_later, other_settings, capped_same


async def test_a_batch_never_takes_jobs_without_a_batch_key_or_from_lower_bands(queue: TierQueue) -> None:
    user = uuid.uuid4()
    alone, keyless = ids(2)
    await queue.enqueue("pro", user, alone, "m", "m|64x64|4|7.5")
    await queue.enqueue("pro", user, keyless, "m")
    await queue.enqueue("free", uuid.uuid4(), uuid.uuid4(), "m", "m|64x64|4|7.5")

    batch = await queue.claim_batch("w", 30, POLICY, max_batch=4)

    assert [claim.generation_id for claim in batch] == [alone]


async def test_a_batch_claim_ends_every_previous_lease(queue: TierQueue) -> None:
    user = uuid.uuid4()
    jobs = ids(4)
    for job in jobs:
        await queue.enqueue("pro", user, job, "m", "m|64x64|4|7.5")
    first = await queue.claim_batch("w", 30, POLICY, max_batch=4)
    assert [claim.generation_id for claim in first] == jobs[:2]  # pro's cap is 2

    second = await queue.claim_batch("w", 30, POLICY, max_batch=4, release=jobs[:2])

    assert [claim.generation_id for claim in second] == jobs[2:]
    assert not await queue.is_leased(jobs[0]) and not await queue.is_leased(jobs[1])


async def test_queue_positions_are_the_order_claims_serve(queue: TierQueue) -> None:
    """A position is a promise: the job with position k is the k-th one a worker claims. Several
    users in two bands, and every user's positions asked for in one call."""
    studio, heavy, light = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    jobs = {studio: ids(2), heavy: ids(5), light: ids(2)}
    for job in jobs[studio]:
        await queue.enqueue("studio", studio, job, "m")
    for job in jobs[heavy]:
        await queue.enqueue("pro", heavy, job, "m")
    for job in jobs[light]:
        await queue.enqueue("pro", light, job, "m")
    # One user's turn is spent already in this round, as after a claim earlier in it.
    first = await queue.claim("w", 30, POLICY)
    assert first is not None and first.user_id == studio
    await queue.release_lease(first.generation_id, "w")
    jobs[studio].remove(first.generation_id)

    positions: dict[uuid.UUID, int | None] = {}
    for user, tier in ((studio, "studio"), (heavy, "pro"), (light, "pro")):
        positions |= await queue.positions(tier, user, jobs[user])
    served = await drain(queue)

    assert {job: served.index(job) + 1 for job in served} == positions
    assert await queue.positions("pro", heavy, jobs[heavy]) == dict.fromkeys(jobs[heavy])


async def test_an_enqueue_answers_its_jobs_position(queue: TierQueue) -> None:
    """The position a job's `queued` event tells its watchers comes with its enqueue when asked
    for, in the same round trip, and is the one `position` gives right after: behind a higher
    band, behind its own user's earlier jobs, and interleaved with another user's in its band."""
    # Named in ring order: a band's round-robin serves equal turns by user id.
    studio, pro, other = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
    enqueued = [
        ("pro", pro),
        ("studio", studio),
        ("pro", pro),
        ("pro", other),
        ("studio", studio),
        ("free", other),
    ]
    answered, asked = [], []
    for tier, user in enqueued:
        (job,) = ids(1)
        answered.append(await queue.enqueue(tier, user, job, "m", with_position=True))
        asked.append(await queue.position(tier, user, job))

    assert answered == asked == [1, 1, 3, 3, 2, 6]
    # An enqueue that does not ask (dispatch alone) does not pay for reading it.
    assert await queue.enqueue("pro", other, uuid.uuid4(), "m") is None


async def test_a_claim_reads_only_the_bands_that_may_hold_work(queue: TierQueue) -> None:
    # The cost of dispatch: with work only in the lowest band and no job near its aging bound, a
    # claim (ending the worker's previous lease) reads that band's ring alone, not every band's
    # oldest job and every empty band's ring.
    users = [uuid.uuid4() for _ in range(3)]
    for index, job in enumerate(ids(12)):
        await queue.enqueue("free", users[index % 3], job, "m")
    previous = await queue.claim("w", 30, POLICY)  # also rebuilds the bands' floors, once
    assert previous is not None
    await queue.redis.config_resetstat()
    claims = 10
    for _ in range(claims):
        claim = await queue.claim("w", 30, POLICY, release=previous.generation_id)
        assert claim is not None and claim.tier == "free"
        previous = claim
    stats = await queue.redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}
    assert calls["zrange"] == claims
    commands = sum(count for name, count in calls.items() if name not in ("config", "info"))
    assert commands <= 19 * claims  # the script itself and 18 calls inside it


async def test_an_aged_job_is_found_after_the_bands_floors_are_lost(queue: TierQueue) -> None:
    # Redis lost the floors (or jobs were queued before they were kept): the claim reads every
    # band again rather than take a band with no floor for an empty one.
    policy, free_job, _ = await free_job_behind_studio_jobs(queue, 30, studio=2)
    await queue.redis.delete("queue:floors")
    aged = await queue.claim("w", 30, policy, horizon_seconds=40)
    assert aged is not None and (aged.generation_id, aged.reason) == (free_job, "aged")


async def test_a_band_found_empty_is_served_again_once_a_job_arrives(queue: TierQueue) -> None:
    first, second = ids(2)
    await queue.enqueue("pro", uuid.uuid4(), first, "m")
    claim = await queue.claim("w", 30, POLICY)
    assert claim is not None and claim.generation_id == first
    assert await queue.claim("w", 30, POLICY) is None  # finds the band empty and forgets it
    await queue.enqueue("pro", uuid.uuid4(), second, "m")
    claim = await queue.claim("w", 30, POLICY)
    assert claim is not None and claim.generation_id == second
