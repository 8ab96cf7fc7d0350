"""Live progress streams at scale: fan-out latency through the mesh beside a bare grpc.aio server
with as many streams, measured in one run.

    python bench/watch_fanout.py [--streams 1000] [--wide-streams 10000 --wide-jobs 1000]
                                 [--cases bare,native,sse,grpcweb,wide,cap] [--clients 4]
                                 [--mesh-env KEY=VALUE ...]

It starts its own mesh (`pingvas up`, the failpoint armed) and spreads the streams over
`--clients` client processes, so that one Python client is not what is measured. A stream's
latency is its receive time minus the event's `time`, for live events only (those stamped after
every stream of the case had its first event); replayed events are not counted.

- bare: a grpc.aio server in its own process sends `--steps` timestamped messages of about a
  progress event's size to each of `--streams` server streams; the anchor the mesh is compared
  with, twice: stamped by each stream as it sends (the issue's anchor: the send alone), and
  stamped once per step and handed to every stream (a fan-out, as the mesh does: the time until
  the last stream sends counts too).
- native, sse, grpcweb: `--streams` WatchGeneration streams through Envoy on one job, held after
  its first step by the failpoint until every stream is open, then released. Prints errors, p50,
  p99 and max latency, and (native) the generation service's RSS growth per stream.
- wide: `--wide-streams` streams over `--wide-jobs` jobs while the worker runs through them, and
  meanwhile another user's CreateGeneration, timed.
- cap: a user past its stream cap; prints the gRPC code and the REST status it gets.

Targets (issue 10): native 0 errors, p99 <= 2x bare, RSS <= 20 KB per stream; SSE and gRPC-Web
0 errors, p99 <= 50 ms; wide p99 <= 250 ms; CreateGeneration p99 <= 50 ms, no error; cap
RESOURCE_EXHAUSTED / 429. It is not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
import httpx
import psutil
import redis
from benchmesh import (
    REPO_ROOT,
    BenchMesh,
    add_models_dir_argument,
    free_port,
    own_mesh,
    percentile,
    processes_of,
)

sys.path.insert(0, str(REPO_ROOT / "sdk" / "python"))
sys.path.insert(0, str(REPO_ROOT))

from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc

from services.common.failpoints import Failpoint, armed_key, release_key

WATCH_PATH = "/pingvas.generation.v1.GenerationService/WatchGeneration"
BARE_WATCH, BARE_GO = "/bench.Fanout/Watch", "/bench.Fanout/Go"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
PLANS = ("enterprise", "studio", "pro", "starter", "free")
STREAMS_PER_CHANNEL = 100  # HTTP/2 connections per client process: one per this many streams


# --- what a client process measures ------------------------------------------------------------


@dataclass
class Sample:
    """One received event: when the server stamped it and when the client got it (ns)."""

    stamped_ns: int
    received_ns: int
    kind: str


@dataclass
class ClientReport:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


Stream = Callable[[str], AsyncIterator[tuple[int, str]]]  # generation id -> (stamped_ns, kind)


def _kind_of(event: pb.WatchGenerationResponse) -> str:
    return str(event.WhichOneof("event"))


def native_stream(target: str, token: str, channels: list[grpc.aio.Channel]) -> Stream:
    async def watch(generation_id: str) -> AsyncIterator[tuple[int, str]]:
        channel = channels[hash(generation_id + str(id(asyncio.current_task()))) % len(channels)]
        call = pb_grpc.GenerationServiceStub(channel).WatchGeneration(
            pb.WatchGenerationRequest(generation_id=generation_id),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        async for event in call:
            yield event.time.ToNanoseconds(), _kind_of(event)

    return watch


def bare_stream(channels: list[grpc.aio.Channel]) -> Stream:
    async def watch(_generation_id: str) -> AsyncIterator[tuple[int, str]]:
        channel = channels[id(asyncio.current_task()) % len(channels)]
        call = channel.unary_stream(BARE_WATCH)(b"")
        async for message in call:
            stamped, last = struct.unpack_from("!q?", message)
            yield stamped, "succeeded" if last else "progress"

    return watch


def _rfc3339_ns(value: str) -> int:
    whole, _, fraction = value.removesuffix("Z").partition(".")
    seconds = datetime.fromisoformat(f"{whole}+00:00").timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))


def sse_stream(gateway: str, token: str, client: httpx.AsyncClient) -> Stream:
    async def watch(generation_id: str) -> AsyncIterator[tuple[int, str]]:
        url = f"{gateway}/api/v1/generation/{generation_id}/events"
        async with client.stream("GET", url, headers={"authorization": f"Bearer {token}"}) as reply:
            if reply.status_code != 200:
                raise RuntimeError(f"HTTP {reply.status_code}: {(await reply.aread())[:200]!r}")
            async for line in reply.aiter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    kind = next(k for k in event if k in TERMINAL | {"queued", "started", "progress"})
                    yield _rfc3339_ns(event["time"]), kind

    return watch


def grpc_web_stream(gateway: str, token: str, client: httpx.AsyncClient) -> Stream:
    async def watch(generation_id: str) -> AsyncIterator[tuple[int, str]]:
        message = pb.WatchGenerationRequest(generation_id=generation_id).SerializeToString()
        headers = {
            "authorization": f"Bearer {token}",
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
        }
        body = b"\x00" + struct.pack("!I", len(message)) + message
        async with client.stream("POST", gateway + WATCH_PATH, content=body, headers=headers) as reply:
            buffer = b""
            async for chunk in reply.aiter_bytes():
                buffer += chunk
                while len(buffer) >= 5:
                    flags, length = buffer[0], struct.unpack("!I", buffer[1:5])[0]
                    if len(buffer) < 5 + length:
                        break
                    frame, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                    if flags & 0x80:  # trailers
                        status = next(
                            (line for line in frame.decode().split("\r\n") if line.startswith("grpc-status")),
                            "grpc-status:0",
                        )
                        if not status.endswith(":0"):
                            raise RuntimeError(frame.decode().strip())
                        return
                    event = pb.WatchGenerationResponse.FromString(frame)
                    yield event.time.ToNanoseconds(), _kind_of(event)

    return watch


async def _follow(stream: Stream, generation_id: str, first: asyncio.Event, report: ClientReport) -> None:
    try:
        async for stamped_ns, kind in stream(generation_id):
            first.set()
            report.samples.append(Sample(stamped_ns, time.time_ns(), kind))
            if kind in TERMINAL:
                return
        report.errors.append("stream ended without a terminal event")
    except Exception as error:  # an error is a figure here, not a crash
        report.errors.append(f"{type(error).__name__}: {str(error)[:160]}")
    finally:
        first.set()


async def _client(
    protocol: str, target: str, gateway: str, token: str, generation_ids: Sequence[str], ready: Any
) -> ClientReport:
    report = ClientReport()
    channel_count = max(1, len(generation_ids) // STREAMS_PER_CHANNEL)
    # Each channel its own connection (gRPC would otherwise share one subchannel among them all).
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channel_count)
    ]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=60), limits=limits) as http:
        stream = {
            "bare": lambda: bare_stream(channels),
            "native": lambda: native_stream(target, token, channels),
            "sse": lambda: sse_stream(gateway, token, http),
            "grpcweb": lambda: grpc_web_stream(gateway, token, http),
        }[protocol]()
        firsts = [asyncio.Event() for _ in generation_ids]
        tasks = [
            asyncio.create_task(_follow(stream, generation_id, first, report))
            for generation_id, first in zip(generation_ids, firsts, strict=True)
        ]
        for first in firsts:
            await first.wait()
        ready.put(len(generation_ids))
        await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    return report


def _client_process(
    protocol: str, target: str, gateway: str, token: str, ids: list[str], ready: Any, out: Any
) -> None:
    report = asyncio.run(_client(protocol, target, gateway, token, ids, ready))
    out.put(report)


def fan_out(
    protocol: str,
    target: str,
    gateway: str,
    token: str,
    generation_ids: Sequence[str],
    clients: int,
    release: Callable[[], None],
    while_open: Callable[[], None] | None = None,
) -> tuple[ClientReport, int]:
    """Open one stream per entry of `generation_ids` across `clients` processes, call `release`
    once every stream had its first event, and gather the reports. Returns the merged report and
    the release time (ns): events stamped after it are live."""
    context = multiprocessing.get_context("spawn")
    ready, out = context.Queue(), context.Queue()
    shares = [list(generation_ids[index::clients]) for index in range(clients)]
    processes = [
        context.Process(target=_client_process, args=(protocol, target, gateway, token, share, ready, out))
        for share in shares
        if share
    ]
    for process in processes:
        process.start()
    opened = 0
    while opened < len(generation_ids):
        opened += ready.get(timeout=600)
    if while_open is not None:
        while_open()
    released_ns = time.time_ns()
    release()
    merged = ClientReport()
    for _ in processes:
        report = out.get(timeout=900)
        merged.samples += report.samples
        merged.errors += report.errors
    for process in processes:
        process.join(60)
    return merged, released_ns


def latencies_ms(report: ClientReport, since_ns: int, kinds: Container[str] | None = None) -> list[float]:
    return [
        (s.received_ns - s.stamped_ns) / 1e6
        for s in report.samples
        if s.stamped_ns >= since_ns and (kinds is None or s.kind in kinds)
    ]


def summary(name: str, report: ClientReport, since_ns: int, streams: int) -> float:
    live = latencies_ms(report, since_ns)
    if not live:
        print(f"  {name:<34} no live events; errors {len(report.errors)}: {report.errors[:3]}")
        return float("nan")
    p99 = percentile(live, 0.99)
    print(
        f"  {name:<34} {streams:>6} streams  errors {len(report.errors):>4}  events {len(live):>7}  "
        f"p50 {percentile(live, 0.5):7.1f} ms  p99 {p99:7.1f} ms  max {max(live):7.1f} ms"
    )
    for error in sorted(set(report.errors))[:3]:
        print(f"      error: {error}")
    # `queued` is mostly position news, made when sent; the others are the worker's, stored first.
    for label, kinds in (
        ("queued", {"queued"}),
        ("started, progress, terminal", {"started", "progress"} | TERMINAL),
    ):
        of_kind = latencies_ms(report, since_ns, kinds)
        if of_kind and len(of_kind) < len(live):
            print(
                f"      {label:<28} events {len(of_kind):>7}  p50 {percentile(of_kind, 0.5):7.1f} ms  "
                f"p99 {percentile(of_kind, 0.99):7.1f} ms"
            )
    return p99


# --- the bare anchor ----------------------------------------------------------------------------


def _bare_server(port: int, steps: int, interval: float, payload_bytes: int, broadcast: bool) -> None:
    """Per stream (`broadcast` false, the issue's anchor): each stream's own loop stamps a message
    as it sends it, so only the send itself is timed. Broadcast: one loop stamps each step once
    and hands it to every stream, as a fan-out server does, so the time until the last stream
    has sent it counts too."""
    padding = b"p" * payload_bytes

    def message(last: bool) -> bytes:
        return struct.pack("!q?", time.time_ns(), last) + padding

    async def serve() -> None:
        go = asyncio.Event()
        mailboxes: list[asyncio.Queue[bytes]] = []

        async def watch(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
            mailbox: asyncio.Queue[bytes] = asyncio.Queue()
            mailboxes.append(mailbox)
            yield message(False)  # "opened", like a replayed event
            await go.wait()
            for step in range(steps):
                if broadcast:
                    yield await mailbox.get()
                else:
                    yield message(step == steps - 1)
                    await asyncio.sleep(interval)

        async def publish() -> None:
            await go.wait()
            for step in range(steps):
                stamped = message(step == steps - 1)
                for mailbox in mailboxes:
                    mailbox.put_nowait(stamped)
                await asyncio.sleep(interval)

        async def start(_request: bytes, _context: Any) -> bytes:
            go.set()
            return b""

        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "bench.Fanout",
                    {
                        "Watch": grpc.unary_stream_rpc_method_handler(watch),
                        "Go": grpc.unary_unary_rpc_method_handler(start),
                    },
                )
            ]
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        publisher = asyncio.create_task(publish())
        await server.wait_for_termination()
        publisher.cancel()

    asyncio.run(serve())


def bare_case(streams: int, clients: int, steps: int, payload_bytes: int, broadcast: bool) -> float:
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=_bare_server, args=(port, steps, 0.01, payload_bytes, broadcast)
    )
    server.start()
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            process = psutil.Process(server.pid)
            before = process.memory_info().rss
            grown: list[int] = []

            def go() -> None:
                channel.unary_unary(BARE_GO)(b"", timeout=30)

            report, released = fan_out(
                "bare",
                target,
                "",
                "",
                [""] * streams,
                clients,
                go,
                while_open=lambda: grown.append(process.memory_info().rss - before),
            )
        name = "bare grpc.aio, one stamp to all" if broadcast else "bare grpc.aio, stamped per stream"
        p99 = summary(name, report, released, streams)
        print(f"      server RSS growth {grown[0] / streams / 1024:.1f} KB per stream")
        return p99
    finally:
        server.kill()
        server.join()


# --- the mesh -----------------------------------------------------------------------------------


@dataclass
class BenchUser:
    email: str
    token: str


def sign_up(mesh: BenchMesh, prefix: str, *, plan: str | None = None, credits: int = 0) -> BenchUser:
    email = f"{prefix}-{uuid.uuid4().hex[:8]}@bench.pingvas.local"
    reply = httpx.post(f"{mesh.gateway_url}/api/v1/auth/dev-login", json={"email": email}, timeout=30)
    reply.raise_for_status()
    if plan:
        mesh.pingvas("admin", "set-plan", email, plan)
    if credits:
        mesh.pingvas("admin", "grant-credits", email, str(credits))
    return BenchUser(email, reply.json()["accessToken"])


def create(mesh: BenchMesh, user: BenchUser, prompt: str, steps: int) -> str:
    reply = httpx.post(
        f"{mesh.gateway_url}/api/v1/generation/create",
        json={"prompt": prompt, "model": "tiny-sd", "width": 64, "height": 64, "steps": steps},
        headers={"authorization": f"Bearer {user.token}"},
        timeout=60,
    )
    reply.raise_for_status()
    return str(reply.json()["id"])


def parked_job(mesh: BenchMesh, user: BenchUser, steps: int) -> tuple[str, Callable[[], None]]:
    """A job that parks after its first step, and the call that releases it."""
    store = redis.Redis.from_url(str(mesh.runtime()["redis_url"]))
    prompt = f"a red fox in snow {uuid.uuid4().hex[:8]}"
    store.hset(armed_key(Failpoint.PARK_AFTER_STEP), prompt, 1)
    generation_id = create(mesh, user, prompt, steps)
    return generation_id, lambda: store.rpush(release_key(Failpoint.PARK_AFTER_STEP, generation_id), "go")


def generation_service(mesh: BenchMesh) -> psutil.Process:
    return processes_of(int(str(mesh.runtime()["pid"])), "generation")[0]


def one_job_case(
    mesh: BenchMesh, user: BenchUser, protocol: str, streams: int, clients: int, steps: int
) -> float:
    generation_id, release = parked_job(mesh, user, steps)
    service = generation_service(mesh)
    before = service.memory_info().rss
    grown: list[int] = []
    report, released = fan_out(
        protocol,
        mesh.gateway_target,
        mesh.gateway_url,
        user.token,
        [generation_id] * streams,
        clients,
        release,
        while_open=lambda: grown.append(service.memory_info().rss - before),
    )
    p99 = summary(f"{protocol} through Envoy, one job", report, released, streams)
    if protocol == "native":
        print(
            f"      generation-service RSS growth {grown[0] / streams / 1024:.1f} KB per stream (target <= 20)"
        )
    return p99


def wide_case(
    mesh: BenchMesh, user: BenchUser, other: BenchUser, streams: int, jobs: int, clients: int
) -> None:
    first, release = parked_job(mesh, user, 2)  # holds the worker while the streams open
    ids = [first, *(create(mesh, user, "a red fox in snow", 2) for _ in range(jobs - 1))]
    per_job = max(1, streams // jobs)
    create_ms: list[float] = []
    create_errors: list[str] = []

    def time_creates() -> None:
        for _ in range(50):
            started = time.perf_counter()
            try:
                create(mesh, other, "another user's fox", 2)
            except httpx.HTTPError as error:
                create_errors.append(str(error))
            create_ms.append((time.perf_counter() - started) * 1000)

    report, released = fan_out(
        "native",
        mesh.gateway_target,
        mesh.gateway_url,
        user.token,
        ids * per_job,
        clients,
        release,
        time_creates,
    )
    summary(f"native, {jobs} jobs", report, released, len(ids) * per_job)
    print(
        f"      another user's CreateGeneration while they were open: p50 {percentile(create_ms, 0.5):.1f} ms  "
        f"p99 {percentile(create_ms, 0.99):.1f} ms  errors {len(create_errors)}  (target p99 <= 50 ms)"
    )


def cap_case(mesh: BenchMesh, clients: int) -> None:
    user = sign_up(mesh, "capped", credits=1000)
    generation_id, release = parked_job(mesh, user, 4)
    cap = 20
    seen: dict[str, str] = {}

    def one_more() -> None:
        with grpc.insecure_channel(mesh.gateway_target) as channel:
            call = pb_grpc.GenerationServiceStub(channel).WatchGeneration(
                pb.WatchGenerationRequest(generation_id=generation_id),
                metadata=(("authorization", f"Bearer {user.token}"),),
            )
            try:
                next(iter(call))
                seen["grpc"] = "OK (not refused)"
            except grpc.RpcError as error:
                seen["grpc"] = str(error.code())
            call.cancel()
        with httpx.stream(
            "GET",
            f"{mesh.gateway_url}/api/v1/generation/{generation_id}/events",
            headers={"authorization": f"Bearer {user.token}"},
            timeout=30,
        ) as reply:
            refused = reply.status_code != 200
            seen["rest"] = f"HTTP {reply.status_code}" + (f" {reply.read()[:120]!r}" if refused else "")

    fan_out(
        "native",
        mesh.gateway_target,
        mesh.gateway_url,
        user.token,
        [generation_id] * cap,
        clients,
        release,
        one_more,
    )
    print(f"  past the cap of {cap} streams: gRPC {seen['grpc']}; REST {seen['rest']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--wide-streams", type=int, default=10_000)
    parser.add_argument("--wide-jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument(
        "--bare-payload-bytes",
        type=int,
        default=1100,
        help="the bare server's message size: about a tiny job's progress event with its preview",
    )
    parser.add_argument("--cases", default="bare,native,sse,grpcweb,wide,cap")
    parser.add_argument("--mesh-env", action="append", default=[], metavar="KEY=VALUE")
    add_models_dir_argument(parser)
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    mesh_env = {
        "PINGVAS_FAILPOINTS": json.dumps([Failpoint.PARK_AFTER_STEP]),  # the bench holds jobs mid-run
        "PINGVAS_SCHEDULER_MAX_QUEUE_DEPTH": json.dumps({plan: 100_000 for plan in PLANS}),
        # The bench's watcher is Enterprise; the cap case's user stays on Free's default of 20.
        "PINGVAS_WATCH_STREAMS_PER_USER": json.dumps({**{plan: 20 for plan in PLANS}, "enterprise": 100_000}),
        **dict(pair.split("=", 1) for pair in args.mesh_env),
    }

    print(f"watch fan-out: {args.steps} steps per job, {args.clients} client processes")
    bare_p99 = broadcast_p99 = float("nan")
    if "bare" in cases:
        bare_p99 = bare_case(args.streams, args.clients, args.steps, args.bare_payload_bytes, broadcast=False)
        broadcast_p99 = bare_case(
            args.streams, args.clients, args.steps, args.bare_payload_bytes, broadcast=True
        )
    with own_mesh(args.models_dir.resolve(), mesh_env) as mesh:
        user = sign_up(mesh, "watcher", plan="enterprise", credits=10_000_000)
        for protocol in ("native", "sse", "grpcweb"):
            if protocol in cases:
                p99 = one_job_case(mesh, user, protocol, args.streams, args.clients, args.steps)
                if protocol == "native":
                    print(
                        f"      p99 ratio mesh / bare stamped per stream {p99 / bare_p99:.2f} (target <= 2); "
                        f"mesh / bare one stamp to all {p99 / broadcast_p99:.2f}"
                    )
        if "wide" in cases:
            other = sign_up(mesh, "creator", credits=100_000)
            wide_case(mesh, user, other, args.wide_streams, args.wide_jobs, args.clients)
        if "cap" in cases:
            cap_case(mesh, args.clients)


if __name__ == "__main__":
    main()
