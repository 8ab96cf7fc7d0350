"""How fast Pingvas's Redis job queue dispatches, next to Celery and to a bare Redis list, in one run.

    .venv/bin/python bench/dispatch_throughput.py [--workers 4] [--jobs 5000] [--rounds 3]
        [--layout both|one-process|per-worker] [--producers 4] [--users 20] [--redis-url URL]

Celery is an optional dependency: `pip install -e '.[bench]'` (or `pip install 'celery[redis]>=5.4,<6'`).

Three systems dispatch the same number of no-op jobs through ONE Redis (an embedded Redis 6.2 started
here, or `--redis-url`), one after the other, each in its own db (base, base+1, base+2; each is
FLUSHed first):

1. pingvas: producers call `TierQueue.enqueue` for jobs spread over the five plan tiers and
   `--users` users; N workers loop `claim` (which also ends the previous job's lease, as the real
   worker's does) -> job, idling in `wait_for_work`. The policy has caps of 1000 and aging bounds of an hour, so neither
   throttles; every job uses the one model the workers have warm.
2. celery: the same jobs as `apply_async(priority=...)` (tier -> priority 0/2/4/6/8) on the Redis
   broker with ten priority steps, `task_acks_late` (a job is only gone once it ran, like a lease)
   and `worker_prefetch_multiplier=1` (strict priorities; a worker holds one job per slot, like a
   claim). Results are ignored, as Pingvas keeps none in Redis.
3. raw: producers LPUSH the job id, N consumers BRPOP it: no scheduling at all, the reference.

In all three the job is the same no-op that reports its completion: one INCR of a counter.
Pingvas's and raw's producers and consumers connect as the product's processes do
(`services.common.redis_pool.redis_client`); Celery connects as kombu does. The
producers (`--producers` concurrent ones) run in this process; the N consumers are laid out two ways,
so that each system gets the same number of processes (and so the same share of the CPUs):

- one-process: Pingvas and raw run N asyncio workers in one child process; Celery runs one
  `celery worker --pool=threads -c N` (one process, N consumer threads).
- per-worker: N child processes with one worker each (a Pingvas GPU worker is its own process);
  Celery runs N `celery worker --pool=solo` processes.

On a machine this small the three share two cores with Redis, so one run of a system can be 20 %
off the next. Each layout therefore runs `--rounds` rounds (3), each round all three systems one
after the other, starting with a different one each round; a ratio is taken within a round, side
by side, and the verdict is on the median of the rounds' ratios. The tables show each system's
median round.

Each run first dispatches `--warmup` jobs untimed (connections, scripts, worker start-up); then the
clock runs from the first enqueue of the timed jobs to the completion of the last one (its
the last job's completion for Pingvas). Over that window the script reports, per job, the CPU time of Redis,
of the consumers and of the producers, and the commands Redis executed (those run inside Lua
scripts included), plus the latency of Pingvas's successful claims as its workers saw them. A last
section times Pingvas's three scripts one call at a time (client round trip, the Lua time Redis
reports and the Redis commands each call costs, those inside the script included) next to a PING.

It is not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import redis
from redis.asyncio import Redis as AsyncRedis

from services.billing.plans import PLANS_BY_PRIORITY
from services.common.redis_pool import redis_client
from services.embedded.process import free_port
from services.embedded.redis import EmbeddedRedis
from services.generation.queue import SchedulingPolicy, TierQueue

SCRIPT = Path(__file__).resolve()
MODEL = "bench-model"
DONE_KEY = "bench:done"
FINISHED_KEY = "bench:finished"
RAW_KEY = "bench:raw"
IDLE_WAIT_SECONDS = 0.05
LEASE_SECONDS = 300.0
LAYOUTS = ("one-process", "per-worker")
# Celery's Redis transport serves priority 0 first.
CELERY_PRIORITY = {tier: 2 * index for index, tier in enumerate(PLANS_BY_PRIORITY)}
CELERY_TRANSPORT = {"priority_steps": list(range(10)), "sep": ":", "queue_order_strategy": "priority"}
TARGET_VS_CELERY = 3.3  # issue 10: ">= 3.3x median of rounds", per-worker layout
TARGET_VS_RAW = 0.4


@dataclass(frozen=True)
class Job:
    tier: str
    user_id: uuid.UUID
    generation_id: uuid.UUID


def make_jobs(count: int, users: int) -> list[Job]:
    """Users spread evenly over the tiers; jobs dealt to the users in turn."""
    people = [(PLANS_BY_PRIORITY[i % len(PLANS_BY_PRIORITY)], uuid.uuid4()) for i in range(users)]
    return [Job(*people[i % users], uuid.uuid4()) for i in range(count)]


def slices(items: Sequence[Job], count: int) -> list[Sequence[Job]]:
    return [items[i::count] for i in range(count)]


def bench_policy() -> SchedulingPolicy:
    return SchedulingPolicy(
        aging_seconds=dict.fromkeys(PLANS_BY_PRIORITY, 3600.0),
        concurrency_caps=dict.fromkeys(PLANS_BY_PRIORITY, 1000),
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


# --- What it cost ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisStats:
    cpu: float
    commands: int
    evalsha_calls: int
    evalsha_usec: int

    @classmethod
    def take(cls, client: redis.Redis) -> RedisStats:
        cpu = client.info("cpu")
        commands = int(client.info("stats")["total_commands_processed"])
        evalsha = client.info("commandstats").get("cmdstat_evalsha", {})
        return cls(
            cpu=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            commands=commands,
            evalsha_calls=int(evalsha.get("calls", 0)),
            evalsha_usec=int(evalsha.get("usec", 0)),
        )


def cpu_seconds(processes: Sequence[subprocess.Popen[Any]]) -> float:
    """User + system CPU of the processes and their children (Celery's prefork pool)."""
    total = 0.0
    for popen in processes:
        process = psutil.Process(popen.pid)
        for each in (process, *process.children(recursive=True)):
            times = each.cpu_times()
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class Window:
    """The timed part of a run, up to the end of the enqueue."""

    start: float
    enqueued: float
    redis: RedisStats
    consumer_cpu: float  # the consumers' CPU seconds when the clock started
    producer_cpu: float  # this process's CPU seconds spent enqueuing the timed jobs


@dataclass
class Result:
    system: str
    jobs: int
    seconds: float
    enqueue_seconds: float
    redis_cpu_seconds: float
    redis_commands: int
    consumer_cpu_seconds: float
    producer_cpu_seconds: float
    claim_latencies: list[float] = field(default_factory=list)
    empty_claims: int = 0
    note: str = ""

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds

    @property
    def enqueued_per_second(self) -> float:
        return self.jobs / self.enqueue_seconds


def finish_result(
    system: str, url: str, jobs: Sequence[Job], window: Window, outcome: dict[str, Any], note: str
) -> Result:
    """`outcome`: finish (monotonic time of the last completion), cpu (the consumers' CPU seconds
    when they stopped: a worker with nothing left stops within one idle wait), latencies ([started, seconds] of each successful claim), empties (starts of empty claims)."""
    with redis.Redis.from_url(url) as client:
        after = RedisStats.take(client)
    start = window.start
    return Result(
        system=system,
        jobs=len(jobs),
        seconds=float(outcome["finish"]) - start,
        enqueue_seconds=window.enqueued - start,
        redis_cpu_seconds=after.cpu - window.redis.cpu,
        redis_commands=after.commands - window.redis.commands,
        consumer_cpu_seconds=float(outcome["cpu"]) - window.consumer_cpu,
        producer_cpu_seconds=window.producer_cpu,
        claim_latencies=[seconds for started, seconds in outcome.get("latencies", []) if started >= start],
        empty_claims=sum(1 for started in outcome.get("empties", []) if started >= start),
        note=note,
    )


def wait_for_count(client: redis.Redis, target: int, processes: Sequence[subprocess.Popen[Any]]) -> None:
    deadline = time.monotonic() + 180
    while (done := int(client.get(DONE_KEY) or 0)) < target:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"consumer {process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {target} jobs done after 180 s")
        time.sleep(0.005)


# --- Consumers, in child processes (`--role`) ------------------------------------------------------
# All consumers of a run share the DONE_KEY counter: a worker with nothing to do stops once it
# reaches `expect` (warm-up plus timed jobs). Each process reports when its last job completed.


async def pingvas_consumer(url: str, workers: int, expect: int) -> dict[str, Any]:
    policy, warm = bench_policy(), [MODEL]
    finish, empties = 0.0, []
    latencies: list[tuple[float, float]] = []

    async def work(index: int) -> None:
        nonlocal finish
        client = redis_client(url)
        queue, worker_id = TierQueue(client), f"bench-{os.getpid()}-{index}"
        finished = None
        try:
            while True:
                started = time.monotonic()
                # As the real worker does: the finished job's lease ends with the next claim.
                claim = await queue.claim(worker_id, LEASE_SECONDS, policy, warm, release=finished)
                finished = None
                if claim is None:
                    empties.append(started)
                    if int(await client.get(DONE_KEY) or 0) >= expect:
                        return
                    await queue.wait_for_work(IDLE_WAIT_SECONDS)
                    continue
                latencies.append((started, time.monotonic() - started))
                await client.incr(DONE_KEY)  # the no-op job
                finished = claim.generation_id
                finish = time.monotonic()
        finally:
            await client.aclose()

    await asyncio.gather(*(work(i) for i in range(workers)))
    return {"finish": finish, "cpu": time.process_time(), "latencies": latencies, "empties": empties}


async def raw_consumer(url: str, workers: int, expect: int) -> dict[str, Any]:
    finish = 0.0

    async def work() -> None:
        nonlocal finish
        client = redis_client(url)
        try:
            while True:
                if await client.brpop([RAW_KEY], timeout=IDLE_WAIT_SECONDS) is None:
                    if int(await client.get(DONE_KEY) or 0) >= expect:
                        return
                    continue
                await client.incr(DONE_KEY)  # the no-op job
                finish = time.monotonic()
        finally:
            await client.aclose()

    await asyncio.gather(*(work() for _ in range(workers)))
    return {"finish": finish, "cpu": time.process_time()}


def make_celery_app(broker_url: str, expect: int) -> Any:
    from celery import Celery

    app = Celery("pingvas_bench", broker=broker_url)
    app.conf.update(
        broker_transport_options=CELERY_TRANSPORT,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
    )
    counter = redis.Redis.from_url(broker_url)

    def noop(generation_id: str, user_id: str, tier: str) -> None:
        if counter.incr(DONE_KEY) == expect:  # the no-op job; the last one stops the clock
            counter.set(FINISHED_KEY, repr(time.monotonic()))

    return app.task(name="bench.noop")(noop)


def celery_worker(url: str, workers: int, expect: int, pool: str) -> None:
    app = make_celery_app(url, expect).app
    argv = ["worker", f"--pool={pool}", f"--concurrency={workers}", f"--hostname=bench-{os.getpid()}@%h"]
    argv += ["--loglevel=WARNING"]
    app.worker_main([*argv, "--without-gossip", "--without-mingle", "--without-heartbeat"])


@dataclass(frozen=True)
class Consumers:
    processes: list[subprocess.Popen[str]]
    note: str


def start_consumers(
    role: str, url: str, layout: str, workers: int, expect: int, log_path: Path, celery_pool: str | None
) -> Consumers:
    if layout == "per-worker":
        count, per_process, pool = workers, 1, celery_pool or "solo"
    else:
        count, per_process, pool = 1, workers, celery_pool or "threads"
    if role == "celery":
        note = f"{count} x celery worker --pool={pool} -c {per_process}"
    else:
        note = f"{count} process(es) x {per_process} asyncio worker(s)"
    argv = [sys.executable, str(SCRIPT), "--role", role, "--url", url, "--celery-pool", pool]
    argv += ["--workers", str(per_process), "--expect", str(expect)]
    log = open(log_path, "a")  # noqa: SIM115 - the children's output, kept for a post-mortem
    # Pingvas's and raw's consumers report on stdout; Celery's workers only log.
    stdout = log if role == "celery" else subprocess.PIPE
    processes = [subprocess.Popen(argv, stdout=stdout, stderr=log, text=True) for _ in range(count)]
    return Consumers(processes, note)


def collect(consumers: Consumers, log_path: Path) -> dict[str, Any]:
    """Wait for the consumer processes to finish and merge what they report."""
    merged: dict[str, Any] = {"finish": 0.0, "cpu": 0.0, "latencies": [], "empties": []}
    for process in consumers.processes:
        out, _ = process.communicate(timeout=300)
        if process.returncode != 0:
            raise RuntimeError(f"consumer exited with {process.returncode}; see {log_path}")
        outcome = json.loads(out.strip().splitlines()[-1])
        merged["finish"] = max(merged["finish"], outcome["finish"])
        merged["cpu"] += outcome["cpu"]
        merged["latencies"] += outcome.get("latencies", [])
        merged["empties"] += outcome.get("empties", [])
    return merged


def stop(consumers: Consumers) -> None:
    for process in consumers.processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in consumers.processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- Producers and the runs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    system: str
    url: str
    layout: str
    workers: int
    producers: int
    celery_pool: str | None
    warmup: list[Job]
    jobs: list[Job]
    logs: Path

    @property
    def expect(self) -> int:
        return len(self.warmup) + len(self.jobs)


async def produce_async(
    run: Run, consumers: Consumers, send: Callable[[AsyncRedis, Job], Awaitable[Any]]
) -> Window:
    """Enqueue the warm-up jobs, wait for them, then time the enqueue of the timed jobs."""
    client = redis_client(run.url, max_connections=run.producers + 4)
    sync = redis.Redis.from_url(run.url)

    async def feed(part: Sequence[Job]) -> None:
        for job in part:
            await send(client, job)

    try:
        await asyncio.gather(*(feed(part) for part in slices(run.warmup, run.producers)))
        await asyncio.to_thread(wait_for_count, sync, len(run.warmup), consumers.processes)
        before, consumer_cpu = RedisStats.take(sync), cpu_seconds(consumers.processes)
        cpu, start = time.process_time(), time.monotonic()
        await asyncio.gather(*(feed(part) for part in slices(run.jobs, run.producers)))
        enqueued = time.monotonic()
        return Window(start, enqueued, before, consumer_cpu, time.process_time() - cpu)
    finally:
        await client.aclose()
        sync.close()


def run_async_system(run: Run, send: Callable[[AsyncRedis, Job], Awaitable[Any]]) -> Result:
    log_path = run.logs / f"{run.system}-{run.layout}.log"
    consumers = start_consumers(run.system, run.url, run.layout, run.workers, run.expect, log_path, None)
    try:
        window = asyncio.run(produce_async(run, consumers, send))
        outcome = collect(consumers, log_path)
    finally:
        stop(consumers)
    return finish_result(run.system, run.url, run.jobs, window, outcome, consumers.note)


def run_pingvas(run: Run) -> Result:
    queues: dict[int, TierQueue] = {}

    async def send(client: AsyncRedis, job: Job) -> None:
        queue = queues.get(id(client)) or queues.setdefault(id(client), TierQueue(client))
        await queue.enqueue(job.tier, job.user_id, job.generation_id, MODEL)

    return run_async_system(run, send)


def run_raw(run: Run) -> Result:
    async def send(client: AsyncRedis, job: Job) -> None:
        await client.lpush(RAW_KEY, f"{job.tier}:{job.user_id}:{job.generation_id}")

    return run_async_system(run, send)


def run_celery(run: Run) -> Result:
    task = make_celery_app(run.url, run.expect)
    log_path = run.logs / f"celery-{run.layout}.log"
    consumers = start_consumers(
        "celery", run.url, run.layout, run.workers, run.expect, log_path, run.celery_pool
    )
    sync = redis.Redis.from_url(run.url)

    def feed(part: Sequence[Job]) -> None:
        for job in part:
            task.apply_async(
                args=(str(job.generation_id), str(job.user_id), job.tier), priority=CELERY_PRIORITY[job.tier]
            )

    try:
        with ThreadPoolExecutor(run.producers) as pool:
            list(pool.map(feed, slices(run.warmup, run.producers)))
            wait_for_count(sync, len(run.warmup), consumers.processes)
            before, consumer_cpu = RedisStats.take(sync), cpu_seconds(consumers.processes)
            cpu, start = time.process_time(), time.monotonic()
            list(pool.map(feed, slices(run.jobs, run.producers)))
            enqueued = time.monotonic()
            window = Window(start, enqueued, before, consumer_cpu, time.process_time() - cpu)
        wait_for_count(sync, run.expect, consumers.processes)
        while (finished := sync.get(FINISHED_KEY)) is None:  # the last task sets it right after its INCR
            time.sleep(0.001)
        outcome = {"finish": float(finished), "cpu": cpu_seconds(consumers.processes)}
    finally:
        stop(consumers)
        sync.close()
    return finish_result("celery", run.url, run.jobs, window, outcome, consumers.note)


# --- Pingvas, one call at a time -------------------------------------------------------------------


async def serial_profile(
    url: str, count: int, users: int
) -> list[tuple[str, float, float | None, float | None, float | None]]:
    """(what, client round trip p50 us, mean us, Lua time per call that Redis reports in us, Redis
    commands per call, those run inside a script included)."""
    client = redis_client(url)
    sync = redis.Redis.from_url(url)
    queue, policy, warm = TierQueue(client), bench_policy(), [MODEL]
    rows: list[tuple[str, float, float | None, float | None, float | None]] = []

    async def timed(what: str, calls: Sequence[Callable[[], Awaitable[Any]]], lua: bool = False) -> list[Any]:
        before, times, results = RedisStats.take(sync), [], []
        for call in calls:
            started = time.perf_counter()
            results.append(await call())
            times.append(time.perf_counter() - started)
        after = RedisStats.take(sync)
        script = (after.evalsha_usec - before.evalsha_usec) / max(
            1, after.evalsha_calls - before.evalsha_calls
        )
        # Less the three INFO calls between the two reads of the count (RedisStats.take).
        commands = (after.commands - before.commands - 3) / len(calls)
        rows.append(
            (
                what,
                percentile(times, 0.5) * 1e6,
                statistics.fmean(times) * 1e6,
                script if lua else None,
                commands,
            )
        )
        return results

    try:
        await client.flushdb()
        await client.ping()
        await timed("PING (network + client floor)", [client.ping] * count)
        jobs = make_jobs(count, users)
        await timed(
            "enqueue",
            [partial(queue.enqueue, job.tier, job.user_id, job.generation_id, MODEL) for job in jobs],
            lua=True,
        )
        claims = await timed(
            f"claim ({users} users queued)",
            [lambda: queue.claim("profile", LEASE_SECONDS, policy, warm)] * count,
            lua=True,
        )
        await timed(
            "release_lease",
            [partial(queue.release_lease, claim.generation_id, "profile") for claim in claims],
            lua=True,
        )
        started = time.perf_counter()
        for _ in range(count):
            policy.script_config(warm)
        rows.append(
            (
                "  policy JSON built by each claim",
                (time.perf_counter() - started) / count * 1e6,
                None,
                None,
                None,
            )
        )
        await timed("LPUSH (raw)", [lambda: client.lpush(RAW_KEY, "x" * 80)] * count)
        await timed("RPOP (raw)", [lambda: client.rpop(RAW_KEY)] * count)
        await client.flushdb()
    finally:
        await client.aclose()
        sync.close()
    return rows


# --- Main ------------------------------------------------------------------------------------------


def report(layout: str, rounds: list[list[Result]]) -> None:
    """Each system's median round, its costs, and the ratios of every round with their median."""
    by_system: dict[str, list[Result]] = {}
    for results in rounds:
        for result in results:
            by_system.setdefault(result.system, []).append(result)
    results = [sorted(runs, key=lambda r: r.per_second)[len(runs) // 2] for runs in by_system.values()]
    print()
    print(f"== layout {layout}: the median of {len(rounds)} round(s) per system")
    print(
        f"{'system':<8} {'enqueued/s':>11} {'dispatched/s':>13} {'wall s':>7} {'claim p50 ms':>13} {'claim p99 ms':>13}"
    )
    for r in results:
        line = f"{r.system:<8} {r.enqueued_per_second:>11,.0f} {r.per_second:>13,.0f} {r.seconds:>7.2f}"
        if r.claim_latencies:
            p50, p99 = percentile(r.claim_latencies, 0.5), percentile(r.claim_latencies, 0.99)
            line += f" {p50 * 1e3:>13.3f} {p99 * 1e3:>13.3f}"
        else:
            line += f" {'-':>13} {'-':>13}"
        print(f"{line}   {r.note}")
    by_name = {r.system: r for r in results}
    pingvas = by_name.get("pingvas")
    if pingvas and pingvas.claim_latencies:
        print(
            f"pingvas: {pingvas.empty_claims} empty claims (nothing to take; the worker waited on queue:signal)"
        )
    print(f"CPU per job over the timed window, us ({os.cpu_count()} CPUs shared by everything here):")
    print(
        f"  {'system':<8} {'redis':>8} {'consumers':>10} {'producers':>10} {'total':>8} {'redis cmds/job':>15}"
    )
    for r in results:
        redis_us, consumer_us, producer_us = (
            seconds / r.jobs * 1e6
            for seconds in (r.redis_cpu_seconds, r.consumer_cpu_seconds, r.producer_cpu_seconds)
        )
        total_us = redis_us + consumer_us + producer_us
        print(
            f"  {r.system:<8} {redis_us:>8.1f} {consumer_us:>10.1f} {producer_us:>10.1f} {total_us:>8.1f}"
            f" {r.redis_commands / r.jobs:>15.1f}"
        )
    for other, target in (("celery", TARGET_VS_CELERY), ("raw", TARGET_VS_RAW)):
        if pingvas and other in by_name:
            ratios = [
                round_by_name["pingvas"].per_second / round_by_name[other].per_second
                for round_by_name in ({r.system: r for r in results} for results in rounds)
            ]
            ratio = statistics.median(ratios)
            verdict = "met" if ratio >= target else "NOT met"
            each = ", ".join(f"{r:.2f}x" for r in ratios)
            print(
                f"pingvas/{other:<7} = {ratio:5.2f}x median of rounds ({each})   (target >= {target}x)   {verdict}"
            )
        else:
            print(f"pingvas/{other:<7} =   n/a   (target >= {target}x)   not measured")


def main_run(args: argparse.Namespace) -> None:
    began = time.monotonic()
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    with tempfile.TemporaryDirectory(prefix="pingvas-dispatch-") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        embedded = None
        if args.redis_url:
            base = args.redis_url
        else:
            embedded = EmbeddedRedis(Path(tmp) / "redis", free_port(), logs)
            embedded.start()
            embedded.wait_ready()
            base = embedded.url
        try:
            urls = {name: with_db(base, args.db + i) for i, name in enumerate(("pingvas", "celery", "raw"))}
            with redis.Redis.from_url(urls["pingvas"]) as probe:
                version = probe.info("server")["redis_version"]
                persistence = probe.config_get("appendonly").get("appendonly", "?")
            try:
                from celery import __version__ as celery_version
            except ImportError:
                celery_version = ""
            print(
                f"dispatch throughput: {args.jobs} jobs (+{args.warmup} warm-up) per run, {args.workers} workers, "
                f"{args.producers} producers, {args.users} users over {len(PLANS_BY_PRIORITY)} tiers"
            )
            print(
                f"Redis {version} at {urlsplit(base).netloc} ({'embedded' if embedded else 'given'}, "
                f"appendonly {persistence}), dbs {args.db}/{args.db + 1}/{args.db + 2}; {os.cpu_count()} CPUs; "
                f"Python {platform.python_version()}; celery {celery_version or 'not installed'}"
            )
            if not celery_version:
                print("celery is not installed: pip install -e '.[bench]'")

            def run_system(
                name: str, runner: Callable[[Run], Result], layout: str, round_index: int
            ) -> Result:
                with redis.Redis.from_url(urls[name]) as client:
                    client.flushdb()
                run = Run(
                    system=name,
                    url=urls[name],
                    layout=layout,
                    workers=args.workers,
                    producers=args.producers,
                    celery_pool=args.celery_pool,
                    warmup=make_jobs(args.warmup, args.users),
                    jobs=make_jobs(args.jobs, args.users),
                    logs=logs,
                )
                started = time.monotonic()
                result = runner(run)
                print(
                    f"  {layout} round {round_index + 1} {name}: {result.per_second:,.0f} dispatched/s "
                    f"({time.monotonic() - started:.1f}s with start-up and warm-up)"
                )
                return result

            systems: list[tuple[str, Callable[[Run], Result]]] = [("pingvas", run_pingvas)]
            systems += [("celery", run_celery)] if celery_version else []
            systems += [("raw", run_raw)]
            reports = []
            for layout in layouts:
                rounds = []
                for round_index in range(args.rounds):
                    shift = round_index % len(systems)
                    order = systems[shift:] + systems[:shift]
                    rounds.append([run_system(name, runner, layout, round_index) for name, runner in order])
                reports.append((layout, rounds))
            for layout, rounds in reports:
                report(layout, rounds)
            print()
            print(
                f"Pingvas one call at a time ({args.profile_calls} calls each, one connection, db {args.db}):"
            )
            print(
                f"  {'call':<36} {'round trip p50 us':>18} {'mean us':>9} {'Lua in Redis us':>16}"
                f" {'redis cmds/call':>16}"
            )
            for what, p50, mean, lua, commands in asyncio.run(
                serial_profile(urls["pingvas"], args.profile_calls, args.users)
            ):
                mean_text = "-" if mean is None else f"{mean:.1f}"
                lua_text = "-" if lua is None else f"{lua:.1f}"
                commands_text = "-" if commands is None else f"{commands:.1f}"
                print(f"  {what:<36} {p50:>18.1f} {mean_text:>9} {lua_text:>16} {commands_text:>16}")
            print(f"\ntotal {time.monotonic() - began:.1f}s")
        finally:
            if embedded and embedded.process:
                embedded.process.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=4, help="simulated no-op workers per system")
    parser.add_argument("--jobs", type=int, default=5000, help="timed jobs per run")
    parser.add_argument("--warmup", type=int, default=200, help="untimed jobs dispatched first")
    parser.add_argument("--producers", type=int, default=4, help="concurrent producers in this process")
    parser.add_argument("--users", type=int, default=20, help="users, spread over the five tiers")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per layout; ratios are their median")
    parser.add_argument(
        "--layout", choices=("both", *LAYOUTS), default="both", help="how consumers map to processes"
    )
    parser.add_argument(
        "--celery-pool",
        choices=("threads", "solo", "prefork"),
        help="override Celery's pool (default: threads for one-process, solo for per-worker)",
    )
    parser.add_argument("--redis-url", help="use this Redis instead of an embedded one (its dbs get FLUSHed)")
    parser.add_argument("--db", type=int, default=0, help="Pingvas's db; Celery uses db+1, raw db+2")
    parser.add_argument(
        "--profile-calls", type=int, default=1000, help="calls per row of the one-at-a-time profile"
    )
    parser.add_argument("--role", choices=("pingvas", "raw", "celery"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "celery":
        celery_worker(args.url, args.workers, args.expect, args.celery_pool)
    elif args.role:
        consumer = pingvas_consumer if args.role == "pingvas" else raw_consumer
        print(json.dumps(asyncio.run(consumer(args.url, args.workers, args.expect))), flush=True)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
