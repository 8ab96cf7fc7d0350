"""Priority under saturation: does paying more buy a shorter wait when demand exceeds capacity?

    python bench/priority_saturation.py [--seconds 12] [--workers 4] [--service-ms 40]
                                        [--overload 1.3] [--starter-aging 6]

On a real Redis (embedded, started here), Starter and Studio jobs arrive 10:1 at `--overload`
times what `--workers` simulated GPU workers can serve (each job holds a worker for
`--service-ms`). Workers claim through Pingvas's claim script (`TierQueue.claim`: strict bands,
round robin, aging, caps) exactly as the real worker does, with the same claim-to-claim horizon
(`ClaimCycle`) within which a job's aging bound must not pass. It reports the wait from enqueue to
claim, p50/p95/max per band, against the targets: Studio p95 <= 0.2 x Starter p95, and Starter's
max wait within its aging bound. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

from services.embedded.process import free_port
from services.embedded.redis import EmbeddedRedis
from services.generation.queue import ClaimCycle, SchedulingPolicy, TierQueue


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def run(args: argparse.Namespace, redis_url: str) -> None:
    client = Redis.from_url(redis_url, max_connections=64)
    await client.flushall()
    queue = TierQueue(client)
    policy = SchedulingPolicy(
        aging_seconds={
            "enterprise": 600,
            "studio": 600,
            "pro": 600,
            "starter": args.starter_aging,
            "free": 600,
        },
        # Caps off for the measurement: many users, one job each at a time is not the question here.
        concurrency_caps={tier: 1000 for tier in ("enterprise", "studio", "pro", "starter", "free")},
    )
    capacity = args.workers * 1000 / args.service_ms
    arrival_rate = capacity * args.overload
    enqueued: dict[uuid.UUID, tuple[str, float]] = {}
    waits: dict[str, list[float]] = {"studio": [], "starter": []}
    arrivals_done = asyncio.Event()
    users = {tier: [uuid.uuid4() for _ in range(20)] for tier in waits}
    rng = random.Random(1)

    async def produce() -> None:
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < args.seconds:
            due = int(elapsed * arrival_rate)
            while sent < due:
                tier = "studio" if sent % 11 == 10 else "starter"  # 10 Starter : 1 Studio
                job = uuid.uuid4()
                enqueued[job] = (tier, time.monotonic())
                await queue.enqueue(tier, rng.choice(users[tier]), job, "tiny-sd")
                sent += 1
            await asyncio.sleep(0.002)
        arrivals_done.set()

    async def work(name: str) -> None:
        cycle = ClaimCycle()
        while True:
            claim = await queue.claim(name, 30, policy, ("tiny-sd",), horizon_seconds=cycle.horizon())
            if claim is None:
                if arrivals_done.is_set():
                    return
                await asyncio.sleep(0.002)
                continue
            cycle.got_work()
            tier, at = enqueued[claim.generation_id]
            waits[tier].append(time.monotonic() - at)
            await asyncio.sleep(args.service_ms / 1000)  # the GPU time this job holds the worker
            await queue.release_lease(claim.generation_id, name)

    began = time.monotonic()
    await asyncio.gather(produce(), *(work(f"w{i}") for i in range(args.workers)))
    total = time.monotonic() - began
    await client.aclose()

    print(
        f"priority under saturation: {args.workers} workers x {args.service_ms} ms/job = {capacity:.0f} jobs/s capacity; "
        f"arrivals {arrival_rate:.0f} jobs/s ({args.overload:.2f}x) for {args.seconds:.0f} s, Starter:Studio 10:1; "
        f"Starter aging bound {args.starter_aging:.1f} s; drained in {total:.1f} s"
    )
    for tier in ("studio", "starter"):
        values = waits[tier]
        print(
            f"  {tier:8s} {len(values):6d} jobs   wait p50 {percentile(values, 0.5) * 1000:8.1f} ms   "
            f"p95 {percentile(values, 0.95) * 1000:8.1f} ms   max {max(values) * 1000:8.1f} ms   "
            f"mean {statistics.mean(values) * 1000:8.1f} ms"
        )
    studio_p95, starter_p95 = percentile(waits["studio"], 0.95), percentile(waits["starter"], 0.95)
    ratio = studio_p95 / starter_p95 if starter_p95 else float("nan")
    print(
        f"  Studio p95 / Starter p95 = {ratio:.3f}   (target <= 0.2: {'met' if ratio <= 0.2 else 'NOT met'})"
    )
    starter_max = max(waits["starter"])
    print(
        f"  Starter max wait {starter_max:.3f} s vs aging bound {args.starter_aging:.1f} s "
        f"({'met' if starter_max <= args.starter_aging else 'NOT met'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=40.0)
    parser.add_argument("--overload", type=float, default=1.3)
    parser.add_argument("--starter-aging", type=float, default=6.0)
    parser.add_argument("--redis-url", help="an existing Redis (it is FLUSHALLed); embedded when unset")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(run(args, args.redis_url))
        return
    with tempfile.TemporaryDirectory(prefix="pingvas-bench-") as home:
        server = EmbeddedRedis(Path(home) / "data", free_port(), Path(home) / "logs")
        server.start()
        try:
            server.wait_ready()
            asyncio.run(run(args, server.url))
        finally:
            assert server.process is not None
            server.process.stop()


if __name__ == "__main__":
    main()
