"""How fast Pingvas's Redis job queue dispatches, next to Celery and to a bare Redis list, in one run.

    cd /work/main && .venv/bin/python bench/dispatch_throughput.py [--workers 4] [--jobs 5000]
        [--producers 4] [--users 20] [--celery-pool threads|prefork|solo] [--redis-url URL]

Celery is an optional dependency: `pip install -e '.[bench]'` (or `pip install 'celery[redis]>=5.4,<6'`).

Three systems dispatch the same number of no-op jobs through ONE Redis (an embedded Redis 6.2 started
here, or `--redis-url`), one after the other, each in its own db (base, base+1, base+2; each is
FLUSHed first):

1. pingvas: producers call `TierQueue.enqueue` for jobs spread over the five plan tiers and
   `--users` users; N workers loop `claim` -> job -> `release_lease`, idling in `wait_for_work`
   as the real worker does. The policy has caps of 1000 and aging bounds of an hour, so neither
   throttles; every job uses the one model the workers have warm.
2. celery: the same jobs as `apply_async(priority=...)` (tier -> priority 0/2/4/6/8) on the Redis
   broker with ten priority steps, `task_acks_late` (a job is only gone once it ran, like a lease)
   and `worker_prefetch_multiplier=1` (strict priorities; a worker holds one job per slot, like a
   claim). The worker is `celery worker --pool=threads -c N`: one process hosting N consumers,
   the same shape as the Pingvas and raw consumers (one process, N asyncio workers).
3. raw: producers LPUSH the job id, N consumers BRPOP it: no scheduling at all, the reference.

In all three the "job" is the same no-op that reports its completion: one INCR of a counter. The
consumers run in a child process (Celery's in its worker process), the producers (`--producers`
concurrent ones) in this process. Each system first dispatches `--warmup` jobs untimed (connections,
scripts, worker start-up), then the clock runs from the first enqueue of the measured jobs to the
completion of the last one (the last `release_lease` for Pingvas). Redis's own CPU time and command
count over that window are reported per job, and for Pingvas the latency of successful claims as its
workers saw it. A last section times Pingvas's three scripts one call at a time (client round trip
and the Lua time Redis reports) against a PING.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import redis
from redis.asyncio import Redis as AsyncRedis

from services.billing.plans import PLANS_BY_PRIORITY
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
# Celery's Redis transport serves priority 0 first.
CELERY_PRIORITY = {tier: 2 * index for index, tier in enumerate(PLANS_BY_PRIORITY)}
CELERY_TRANSPORT = {"priority_steps": list(range(10)), "sep": ":", "queue_order_strategy": "priority"}
TARGET_VS_CELERY = 3.0
TARGET_VS_RAW = 0.4


@dataclass(frozen=True)
class Job:
    tier: str
    user_id: uuid.UUID
    generation_id: uuid.UUID


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


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def bench_policy() -> SchedulingPolicy:
    return SchedulingPolicy(
        aging_seconds=dict.fromkeys(PLANS_BY_PRIORITY, 3600.0),
        concurrency_caps=dict.fromkeys(PLANS_BY_PRIORITY, 1000),
    )


def make_jobs(count: int, users: int) -> list[Job]:
    """Users spread evenly over the tiers; jobs dealt to the users in turn."""
    people = [(PLANS_BY_PRIORITY[i % len(PLANS_BY_PRIORITY)], uuid.uuid4()) for i in range(users)]
    return [Job(*people[i % users], uuid.uuid4()) for i in range(count)]


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def slices(items: Sequence[Job], count: int) -> list[Sequence[Job]]:
    return [items[i::count] for i in range(count)]


# --- Redis's view ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisStats:
    cpu: float
    commands: int
    evalsha_calls: int
    evalsha_usec: int

    @classmethod
    def take(cls, client: redis.Redis) -> RedisStats:
        cpu = client.info("cpu")
        stats = client.info("stats")
        evalsha = client.info("commandstats").get("cmdstat_evalsha", {})
        return cls(
            cpu=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            commands=int(stats["total_commands_processed"]),
            evalsha_calls=int(evalsha.get("calls", 0)),
            evalsha_usec=int(evalsha.get("usec", 0)),
        )


@dataclass(frozen=True)
class Window:
    """The timed part of a run, up to the end of the enqueue."""

    start: float
    enqueued: float
    redis: RedisStats
    consumer_cpu: float  # the consumers' CPU seconds when the clock started
    producer_cpu: float  # this process's CPU seconds spent enqueuing the timed jobs


def cpu_seconds(processes: Sequence[subprocess.Popen[Any]]) -> float:
    total = 0.0
    for popen in processes:
        process = psutil.Process(popen.pid)
        for each in (process, *process.children(recursive=True)):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def wait_for_count(client: redis.Redis, target: int, processes: Sequence[subprocess.Popen[Any]]) -> None:
    deadline = time.monotonic() + 120
    while int(client.get(DONE_KEY) or 0) < target:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"consumer {process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {client.get(DONE_KEY)} of {target} jobs done after 120 s")
        time.sleep(0.005)


# --- Consumers (run in a child process: `--role`) ------------------------------------------------


async def pingvas_consumer(url: str, workers: int, expect: int) -> dict[str, Any]:
    policy, warm = bench_policy(), [MODEL]
    done, finish, cpu, empties = 0, 0.0, 0.0, []
    latencies: list[tuple[float, float]] = []

    async def work(index: int) -> None:
        nonlocal done, finish, cpu
        client = AsyncRedis.from_url(url)
        queue, worker_id = TierQueue(client), f"bench-worker-{index}"
        try:
            while done < expect:
                started = time.monotonic()
                claim = await queue.claim(worker_id, LEASE_SECONDS, policy, warm)
                if claim is None:
                    empties.append(started)
                    await queue.wait_for_work(IDLE_WAIT_SECONDS)
                    continue
                latencies.append((started, time.monotonic() - started))
                await client.incr(DONE_KEY)  # the no-op job
                await queue.release_lease(claim.generation_id, worker_id)
                done += 1
                finish, cpu = time.monotonic(), time.process_time()
        finally:
            await client.aclose()

    await asyncio.gather(*(work(i) for i in range(workers)))
    return {"finish": finish, "cpu": cpu, "latencies": latencies, "empties": empties}


async def raw_consumer(url: str, workers: int, expect: int) -> dict[str, Any]:
    done, finish, cpu = 0, 0.0, 0.0

    async def work() -> None:
        nonlocal done, finish, cpu
        client = AsyncRedis.from_url(url)
        try:
            while done < expect:
                if await client.brpop([RAW_KEY], timeout=IDLE_WAIT_SECONDS) is None:
                    continue
                await client.incr(DONE_KEY)  # the no-op job
                done += 1
                finish, cpu = time.monotonic(), time.process_time()
        finally:
            await client.aclose()

    await asyncio.gather(*(work() for _ in range(workers)))
    return {"finish": finish, "cpu": cpu}


def make_celery_app(broker_url: str, expect: int) -> tuple[Any, Any]:
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

    @app.task(name="bench.noop")
    def noop(generation_id: str, user_id: str, tier: str) -> None:
        if counter.incr(DONE_KEY) == expect:  # the no-op job; the last one stops the clock
            counter.set(FINISHED_KEY, repr(time.monotonic()))

    return app, noop


def celery_worker(url: str, workers: int, expect: int, pool: str) -> None:
    app, _ = make_celery_app(url, expect)
    argv = ["worker", f"--pool={pool}", f"--concurrency={workers}", "--loglevel=WARNING"]
    app.worker_main([*argv, "--without-gossip", "--without-mingle", "--without-heartbeat"])


def start_consumers(
    role: str, url: str, workers: int, expect: int, log_path: Path, pool: str = ""
) -> list[subprocess.Popen[str]]:
    processes = 1
    if role == "celery" and pool == "solo":
        processes, workers = workers, 1  # N single-slot worker processes
    argv = [sys.executable, str(SCRIPT), "--role", role, "--url", url]
    argv += ["--workers", str(workers), "--expect", str(expect), "--celery-pool", pool or "threads"]
    log = open(log_path, "a")  # noqa: SIM115 - the children's output, kept for a post-mortem
    # Pingvas's and raw's consumers report on stdout; Celery's worker only logs.
    stdout = log if role == "celery" else subprocess.PIPE
    return [subprocess.Popen(argv, stdout=stdout, stderr=log, text=True) for _ in range(processes)]


def stop(processes: Sequence[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- Producers and the runs ----------------------------------------------------------------------


async def produce_async(
    url: str,
    warmup: Sequence[Job],
    jobs: Sequence[Job],
    producers: int,
    send: Callable[[AsyncRedis, Job], Any],
    processes: Sequence[subprocess.Popen[str]],
) -> Window:
    """Enqueue the warm-up jobs, wait for them, then time the enqueue of `jobs`."""
    client = AsyncRedis.from_url(url, max_connections=producers + 4)
    sync = redis.Redis.from_url(url)

    async def feed(part: Sequence[Job]) -> None:
        for job in part:
            await send(client, job)

    try:
        await asyncio.gather(*(feed(part) for part in slices(warmup, producers)))
        await asyncio.to_thread(wait_for_count, sync, len(warmup), processes)
        before, consumer_cpu = RedisStats.take(sync), cpu_seconds(processes)
        cpu, start = time.process_time(), time.monotonic()
        await asyncio.gather(*(feed(part) for part in slices(jobs, producers)))
        enqueued = time.monotonic()
        return Window(start, enqueued, before, consumer_cpu, time.process_time() - cpu)
    finally:
        await client.aclose()
        sync.close()


def consumer_result(processes: Sequence[subprocess.Popen[str]], log_path: Path) -> dict[str, Any]:
    (process,) = processes
    out, _ = process.communicate(timeout=300)
    if process.returncode != 0:
        raise RuntimeError(f"consumer exited with {process.returncode}; see {log_path}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def run_pingvas(url: str, args: argparse.Namespace, warmup: list[Job], jobs: list[Job], logs: Path) -> Result:
    log_path = logs / "pingvas-consumer.log"
    processes = start_consumers("pingvas", url, args.workers, len(warmup) + len(jobs), log_path)
    queues: dict[int, TierQueue] = {}

    async def send(client: AsyncRedis, job: Job) -> None:
        queue = queues.get(id(client)) or queues.setdefault(id(client), TierQueue(client))
        await queue.enqueue(job.tier, job.user_id, job.generation_id, MODEL)

    try:
        window = asyncio.run(produce_async(url, warmup, jobs, args.producers, send, processes))
        outcome = consumer_result(processes, log_path)
    finally:
        stop(processes)
    return finish_result("pingvas", url, jobs, window, outcome)


def run_raw(url: str, args: argparse.Namespace, warmup: list[Job], jobs: list[Job], logs: Path) -> Result:
    log_path = logs / "raw-consumer.log"
    processes = start_consumers("raw", url, args.workers, len(warmup) + len(jobs), log_path)

    async def send(client: AsyncRedis, job: Job) -> None:
        await client.lpush(RAW_KEY, f"{job.tier}:{job.user_id}:{job.generation_id}")

    try:
        window = asyncio.run(produce_async(url, warmup, jobs, args.producers, send, processes))
        outcome = consumer_result(processes, log_path)
    finally:
        stop(processes)
    return finish_result("raw", url, jobs, window, outcome)


def finish_result(
    system: str,
    url: str,
    jobs: list[Job],
    window: Window,
    outcome: dict[str, Any],
) -> Result:
    """`outcome`: finish (monotonic time of the last completion), cpu (the consumers' CPU seconds
    then), latencies ([started, seconds] of each successful claim), empties (starts of empty claims)."""
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
    )


def run_celery(url: str, args: argparse.Namespace, warmup: list[Job], jobs: list[Job], logs: Path) -> Result:
    expect = len(warmup) + len(jobs)
    _, task = make_celery_app(url, expect)
    log_path = logs / "celery-worker.log"
    processes = start_consumers("celery", url, args.workers, expect, log_path, args.celery_pool)
    sync = redis.Redis.from_url(url)

    def feed(part: Sequence[Job]) -> None:
        for job in part:
            task.apply_async(
                args=(str(job.generation_id), str(job.user_id), job.tier), priority=CELERY_PRIORITY[job.tier]
            )

    try:
        with ThreadPoolExecutor(args.producers) as pool:
            list(pool.map(feed, slices(warmup, args.producers)))
            wait_for_count(sync, len(warmup), processes)
            before, consumer_cpu = RedisStats.take(sync), cpu_seconds(processes)
            cpu, start = time.process_time(), time.monotonic()
            list(pool.map(feed, slices(jobs, args.producers)))
            enqueued = time.monotonic()
            window = Window(start, enqueued, before, consumer_cpu, time.process_time() - cpu)
        wait_for_count(sync, expect, processes)
        while (finished := sync.get(FINISHED_KEY)) is None:  # the last task sets it right after its INCR
            time.sleep(0.001)
        outcome = {"finish": float(finished), "cpu": cpu_seconds(processes)}
    finally:
        stop(processes)
        sync.close()
    result = finish_result("celery", url, jobs, window, outcome)
    result.note = f"--pool={args.celery_pool}" + (
        f" x{args.workers} processes" if args.celery_pool == "solo" else f" -c {args.workers}"
    )
    return result


# --- Pingvas, one call at a time --------------------------------------------------------------------


async def serial_profile(url: str, count: int, users: int) -> list[tuple[str, float, float, float]]:
    """(name, client round trip p50 us, mean us, Lua us per call reported by Redis)."""
    client = AsyncRedis.from_url(url)
    sync = redis.Redis.from_url(url)
    queue, policy, warm = TierQueue(client), bench_policy(), [MODEL]
    jobs = make_jobs(count, users)
    rows = []

    async def timed(name: str, calls: Sequence[Callable[[], Any]], lua: bool) -> list[Any]:
        before, times, results = RedisStats.take(sync), [], []
        for call in calls:
            started = time.perf_counter()
            results.append(await call())
            times.append(time.perf_counter() - started)
        after = RedisStats.take(sync)
        script = (after.evalsha_usec - before.evalsha_usec) / max(
            1, after.evalsha_calls - before.evalsha_calls
        )
        rows.append(
            (name, percentile(times, 0.5) * 1e6, statistics.fmean(times) * 1e6, script if lua else 0.0)
        )
        return results

    try:
        await client.flushdb()
        await client.ping()
        await timed("PING (network + client floor)", [client.ping] * count, lua=False)
        await timed(
            "enqueue",
            [lambda job=job: queue.enqueue(job.tier, job.user_id, job.generation_id, MODEL) for job in jobs],
            lua=True,
        )
        claims = await timed(
            f"claim ({users} users queued)",
            [lambda: queue.claim("profile", LEASE_SECONDS, policy, warm)] * count,
            lua=True,
        )
        await timed(
            "release_lease",
            [lambda c=c: queue.release_lease(c.generation_id, "profile") for c in claims],
            lua=True,
        )
        payload = policy.script_config(warm)
        started = time.perf_counter()
        for _ in range(count):
            policy.script_config(warm)
        rows.append(
            ("  of which policy JSON built per claim", (time.perf_counter() - started) / count * 1e6, 0, 0)
        )
        await timed("LPUSH (raw)", [lambda: client.lpush(RAW_KEY, payload[:80])] * count, lua=False)
        await timed("RPOP (raw)", [lambda: client.rpop(RAW_KEY)] * count, lua=False)
        await client.flushdb()
    finally:
        await client.aclose()
        sync.close()
    return rows


# --- Main ------------------------------------------------------------------------------------------


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
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
        print(line + (f"   {r.note}" if r.note else ""))
    print()
    print(f"CPU per job over the timed window, us ({os.cpu_count()} CPUs shared by all three columns):")
    print(
        f"{'system':<8} {'redis':>9} {'consumers':>10} {'producers':>10} {'total':>9} {'redis cmds/job (incl. in Lua)':>31}"
    )
    for r in results:
        redis_us, consumer_us, producer_us = (
            seconds / r.jobs * 1e6
            for seconds in (r.redis_cpu_seconds, r.consumer_cpu_seconds, r.producer_cpu_seconds)
        )
        total_us = redis_us + consumer_us + producer_us
        print(
            f"{r.system:<8} {redis_us:>9.1f} {consumer_us:>10.1f} {producer_us:>10.1f} {total_us:>9.1f}"
            f" {r.redis_commands / r.jobs:>31.1f}"
        )
    by_name = {r.system: r for r in results}
    pingvas = by_name.get("pingvas")
    if pingvas and pingvas.claim_latencies:
        print(
            f"pingvas: {len(pingvas.claim_latencies)} claims, {pingvas.empty_claims} empty claims "
            "(a worker found nothing and waited on queue:signal)"
        )
    print()
    for other, target in (("celery", TARGET_VS_CELERY), ("raw", TARGET_VS_RAW)):
        if pingvas and other in by_name:
            ratio = pingvas.per_second / by_name[other].per_second
            verdict = "met" if ratio >= target else "NOT met"
            print(f"pingvas/{other:<7} = {ratio:5.2f}x   (target >= {target}x)   {verdict}")
        else:
            print(f"pingvas/{other:<7} = n/a   (target >= {target}x)   not measured")


def main_run(args: argparse.Namespace) -> None:
    total = time.monotonic()
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
                server = probe.info("server")
                persistence = probe.config_get("appendonly").get("appendonly", "?")
            try:
                from celery import __version__ as celery_version
            except ImportError:
                celery_version = ""
            print(
                f"dispatch throughput: {args.jobs} jobs (+{args.warmup} warm-up), {args.workers} workers, "
                f"{args.producers} producers, {args.users} users over {len(PLANS_BY_PRIORITY)} tiers"
            )
            print(
                f"Redis {server['redis_version']} at {urlsplit(base).netloc} "
                f"({'embedded' if embedded else 'given'}, appendonly {persistence}), dbs "
                f"{args.db}/{args.db + 1}/{args.db + 2}; {os.cpu_count()} CPUs; Python {platform.python_version()}; "
                f"celery {celery_version or 'not installed'}"
            )
            runs: list[tuple[str, Callable[..., Result]]] = [("pingvas", run_pingvas)]
            runs += [("celery", run_celery)] if celery_version else []
            runs += [("raw", run_raw)]
            results = []
            for name, run in runs:
                with redis.Redis.from_url(urls[name]) as client:
                    client.flushdb()
                warmup, jobs = make_jobs(args.warmup, args.users), make_jobs(args.jobs, args.users)
                started = time.monotonic()
                results.append(run(urls[name], args, warmup, jobs, logs))
                print(f"  {name}: done in {time.monotonic() - started:.1f}s (including start-up and warm-up)")
            if not celery_version:
                print("celery is not installed: pip install -e '.[bench]'")
            report(results, args)
            print()
            print(
                f"Pingvas one call at a time ({args.profile_calls} calls each, one connection, db {args.db}):"
            )
            print(f"  {'call':<38} {'round trip p50 us':>18} {'mean us':>9} {'Lua in Redis us':>16}")
            for name, p50, mean, lua in asyncio.run(
                serial_profile(urls["pingvas"], args.profile_calls, args.users)
            ):
                mean_text, lua_text = (f"{mean:.1f}" if mean else "-"), (f"{lua:.1f}" if lua else "-")
                print(f"  {name:<38} {p50:>18.1f} {mean_text:>9} {lua_text:>16}")
            print(f"\ntotal {time.monotonic() - total:.1f}s")
        finally:
            if embedded and embedded.process:
                embedded.process.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=4, help="simulated no-op workers per system")
    parser.add_argument("--jobs", type=int, default=5000, help="timed jobs per system")
    parser.add_argument("--warmup", type=int, default=200, help="untimed jobs dispatched first")
    parser.add_argument("--producers", type=int, default=4, help="concurrent producers")
    parser.add_argument("--users", type=int, default=20, help="users, spread over the five tiers")
    parser.add_argument(
        "--celery-pool", choices=("threads", "prefork", "solo"), default="threads", help="solo: N processes"
    )
    parser.add_argument("--redis-url", help="use this Redis instead of an embedded one (dbs get FLUSHed)")
    parser.add_argument("--db", type=int, default=0, help="Pingvas's db; Celery uses db+1, raw db+2")
    parser.add_argument("--profile-calls", type=int, default=1000)
    parser.add_argument("--role", choices=("pingvas", "raw", "celery"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "celery":
        celery_worker(args.url, args.workers, args.expect, args.celery_pool)
    elif args.role:
        consumer = pingvas_consumer if args.role == "pingvas" else raw_consumer
        outcome = asyncio.run(consumer(args.url, args.workers, args.expect))
        print(json.dumps(outcome), flush=True)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
