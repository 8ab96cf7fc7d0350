"""The one number KEDA scales the GPU workers on (helm/pingvas/templates/worker-scaledobject.yaml):
the generation service's GET /queue-depth, served from the real queue code on a real Redis,
must tell the true depth while jobs are enqueued and claimed concurrently. The same backlog
as OpenTelemetry gauges must be read when the SDK collects, and be just as true."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from redis.asyncio import BlockingConnectionPool, Redis
from support.accounts import dev_login
from support.mesh import MeshStarter
from support.servers import running_redis

from services.billing.plans import PLANS_BY_PRIORITY
from services.embedded.process import free_port
from services.embedded.redis import EmbeddedRedis
from services.generation.queue import SchedulingPolicy, TierQueue
from services.generation.queue_metrics import QUEUE_DEPTH_PATH, QueueDepthEndpoint, QueueDepthGauge

# No caps in the way: every claim succeeds while jobs wait.
POLICY = SchedulingPolicy(
    aging_seconds={tier: 600 for tier in PLANS_BY_PRIORITY},
    concurrency_caps={tier: 10_000 for tier in PLANS_BY_PRIORITY},
    affinity_lookahead=32,
    affinity_max_skips=2,
)
USERS_PER_PLAN = 12
JOBS_PER_USER = 8
WORKERS = 16


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    home: Path = tmp_path_factory.mktemp("depth-redis")
    with running_redis(home) as server:
        yield server


@pytest.fixture
async def queue(redis_server: EmbeddedRedis) -> AsyncIterator[TierQueue]:
    # Many concurrent commands, as a generation service's pool serves them: wait for a connection.
    client = Redis.from_pool(BlockingConnectionPool.from_url(redis_server.url, max_connections=32))
    await client.flushall()
    yield TierQueue(client)
    await client.aclose()


@pytest.fixture
async def depth_url(queue: TierQueue) -> AsyncIterator[str]:
    endpoint = QueueDepthEndpoint(queue, host="127.0.0.1", port=free_port())
    await endpoint.start()
    yield f"http://127.0.0.1:{endpoint.port}{QUEUE_DEPTH_PATH}"
    await endpoint.stop()


async def read_depth(client: httpx.AsyncClient, url: str) -> dict[str, object]:
    response = await client.get(url)
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


async def test_depth_is_true_while_jobs_are_enqueued_and_claimed(queue: TierQueue, depth_url: str) -> None:
    jobs = [
        (tier, user, uuid.uuid4())
        for tier in PLANS_BY_PRIORITY
        for user in [uuid.uuid4() for _ in range(USERS_PER_PLAN)]
        for _ in range(JOBS_PER_USER)
    ]
    total = len(jobs)
    async with httpx.AsyncClient() as client:
        assert await read_depth(client, depth_url) == {
            "depth": 0,
            "waiting": 0,
            "leased": 0,
            "waitingByPlan": dict.fromkeys(PLANS_BY_PRIORITY, 0),
        }

        # Everything is enqueued at once, many users and every band.
        await asyncio.gather(*(queue.enqueue(tier, user, job, "tiny-sd") for tier, user, job in jobs))
        assert await read_depth(client, depth_url) == {
            "depth": total,
            "waiting": total,
            "leased": 0,
            "waitingByPlan": dict.fromkeys(PLANS_BY_PRIORITY, USERS_PER_PLAN * JOBS_PER_USER),
        }

        # Workers claim half the jobs concurrently while the scaler reads: a claim moves a job
        # from waiting to leased atomically, so every read in between reports the same depth.
        to_claim = total // 2
        claimed: list[tuple[uuid.UUID, str]] = []
        readings: list[dict[str, object]] = []

        async def worker(name: str) -> None:
            while len(claimed) < to_claim:
                claim = await queue.claim(name, 60, POLICY)
                assert claim is not None
                claimed.append((claim.generation_id, name))

        async def scaler() -> None:
            while len(claimed) < to_claim:
                readings.append(await read_depth(client, depth_url))

        await asyncio.gather(scaler(), *(worker(f"w{index}") for index in range(WORKERS)))
        assert readings, "the scaler read nothing while jobs were claimed"
        assert {reading["depth"] for reading in readings} == {total}
        assert all(reading["waiting"] + reading["leased"] == total for reading in readings)  # type: ignore[operator]
        after_claims = await read_depth(client, depth_url)
        assert (after_claims["depth"], after_claims["leased"]) == (total, len(claimed))
        assert after_claims["waiting"] == total - len(claimed)

        # Finished jobs leave the depth: the workers release their leases.
        finished = claimed[: len(claimed) // 2]
        await asyncio.gather(*(queue.release_lease(job, name) for job, name in finished))
        final = await read_depth(client, depth_url)
        assert final["leased"] == len(claimed) - len(finished)
        assert final["depth"] == total - len(finished)


async def test_the_gauges_read_the_queue_each_time_the_sdk_collects(queue: TierQueue) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    now = [0.0]
    QueueDepthGauge(queue, asyncio.get_running_loop(), meter=provider.get_meter("test"), clock=lambda: now[0])

    Points = dict[tuple[str, object], object]

    async def collect() -> Points:
        # The SDK collects on a thread of its own, as the service's PeriodicExportingMetricReader.
        data = await asyncio.to_thread(reader.get_metrics_data)
        assert data is not None
        points: Points = {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for point in metric.data.data_points:
                        assert isinstance(point, NumberDataPoint)
                        points[metric.name, (point.attributes or {}).get("band")] = point.value
        return points

    empty: Points = {("pingvas.queue.depth", band): 0 for band in PLANS_BY_PRIORITY}
    assert await collect() == {**empty, ("pingvas.queue.leased", None): 0}

    pro, free = "pro", "free"
    user = uuid.uuid4()
    for tier, count in ((pro, 3), (free, 2)):
        for _ in range(count):
            await queue.enqueue(tier, user if tier == pro else uuid.uuid4(), uuid.uuid4(), "tiny-sd")
    claim = await queue.claim("w1", 60, POLICY)
    assert claim is not None and claim.tier == pro
    now[0] += 0.5  # within the window that lets one collection's two gauges share a read
    assert await collect() == {**empty, ("pingvas.queue.leased", None): 0}
    now[0] += 1.0  # the next collection reads again
    assert await collect() == {
        **empty,
        ("pingvas.queue.depth", pro): 2,
        ("pingvas.queue.depth", free): 2,
        ("pingvas.queue.leased", None): 1,
    }
    provider.shutdown()


async def test_anything_else_is_not_found(depth_url: str) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(depth_url.replace(QUEUE_DEPTH_PATH, "/metrics"))).status_code == 404
        assert (await client.post(depth_url)).status_code == 404


def test_the_generation_service_serves_it_on_its_metrics_port(own_mesh: MeshStarter) -> None:
    """The composition root wires the endpoint: a mesh without workers, whose generation
    service is told PINGVAS_METRICS_PORT as the chart tells it, counts the jobs it accepted."""
    port = free_port()
    with own_mesh("depth-mesh", {"PINGVAS_WORKERS": "0", "PINGVAS_METRICS_PORT": str(port)}) as mesh:
        url = f"http://127.0.0.1:{port}{QUEUE_DEPTH_PATH}"
        assert httpx.get(url, timeout=10).json()["depth"] == 0
        account = dev_login(mesh.gateway_url, "depth")
        for seed in range(3):
            reply = httpx.post(
                f"{mesh.gateway_url}/api/v1/generation/create",
                headers=account.headers,
                json={
                    "prompt": "a fox",
                    "model": "tiny-sd",
                    "width": 64,
                    "height": 64,
                    "steps": 2,
                    "seed": seed,
                },
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
        body = httpx.get(url, timeout=10).json()
        assert (body["depth"], body["waiting"], body["leased"]) == (3, 3, 0)
        assert body["waitingByPlan"]["free"] == 3
