"""The gRPC server every Pingvas process runs: grpc.aio with health, reflection, message limits
and a graceful SIGTERM (NOT_SERVING first, then `stop(grace)`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)


def configure_logging(level: str, component: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s",
    )


# Allocations between young collections, and young collections between older ones, for a
# process that holds many long-lived objects (see settle_garbage_collector). Python's defaults
# are 700, 10 and 10.
GC_THRESHOLDS = (10_000, 20, 50)


def settle_garbage_collector() -> None:
    """For a long-lived server, once it is ready: what exists then (its modules, clients and,
    for a worker, the preloaded pipelines) is moved out of the collector's sight, and full
    collections become rarer. Each full collection walks every live object and frees next to
    nothing here. With 10,000 streams open, they stalled a generation service's event loop for
    up to 0.8 s each, every few seconds (bench/watch_fanout.py, the wide case). In a worker with
    torch and its pipelines loaded, each took about 0.6 s, and collections of all ages cost it
    9 ms per generation (4.6 ms since). Short-lived cycles are still collected young."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No garbage collection for a block that only builds what lives as long as the process: a
    worker's import of torch, diffusers and transformers, thousands of modules. The collector
    would walk the growing heap every few hundred allocations and free nothing; paused, the
    imports took 0.9 to 2.3 s less CPU of 9.7 to 11.6 s in three runs here, and a worker that
    starts from zero (a spot node's first) is ready that much sooner. Collection resumes after,
    as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# gRPC core's own limit on calls waiting to be picked up by the server loop.
GRPC_DEFAULT_MAX_PENDING_CALLS = 1000
MAX_PENDING_CALL_SECONDS = 300


class GrpcServer:
    """Owns one grpc.aio server and its health state.

    `health` is NOT_SERVING until `mark_serving()`: a process calls it once its dependencies
    (and, for the worker, its pipelines) are ready.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        max_message_bytes: int = 16 * 1024 * 1024,
        max_receive_message_bytes: int = 4 * 1024 * 1024,
        max_pending_calls: int = GRPC_DEFAULT_MAX_PENDING_CALLS,
    ) -> None:
        self.address = f"{host}:{port}"
        self.server = grpc.aio.server(
            options=[
                # Calls the transport has taken but the server loop has not picked up yet (it
                # takes one per loop turn). Past gRPC's defaults (1,000, hard limit 3,000) a call
                # is refused at once: a burst of reconnecting watches would fail most of its
                # streams with RESOURCE_EXHAUSTED / CANCELLED instead of waiting a moment.
                ("grpc.server.max_pending_requests", max_pending_calls),
                ("grpc.server.max_pending_requests_hard_limit", max_pending_calls),
                # And how long one may wait so (gRPC's default 30 s cancels the tail of a burst
                # of thousands): a call's own deadline still bounds its wait.
                ("grpc.server_max_unrequested_time_in_server", MAX_PENDING_CALL_SECONDS),
                # Set on purpose both ways: responses carry full-size PNGs, requests never need
                # more than the gateway's REST body limit; a larger one is RESOURCE_EXHAUSTED
                # before any handler runs.
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_receive_message_bytes),
                ("grpc.so_reuseport", 0),  # a second process on the same port must fail loudly
                # Envoy pings its backends every 30 s (gateway/envoy.py KEEPALIVE_INTERVAL), also
                # while a watch is quiet. gRPC's default (one ping per 5 min without data) would
                # count those as abuse and drop the connection with every watch on it.
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names: list[str] = []

    def add_services(self, names: Sequence[str]) -> None:
        self.service_names.extend(names)

    async def start(self) -> None:
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        if self.server.add_insecure_port(self.address) == 0:
            raise RuntimeError(f"cannot bind {self.address}")
        await self.server.start()
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("gRPC server listening on %s (NOT_SERVING until ready)", self.address)

    async def mark_serving(self) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING %s", ", ".join(self.service_names))

    async def _set_all(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


async def wait_until_ready(
    check: Callable[[], Awaitable[None]], what: str, *, within_seconds: float = 60.0
) -> None:
    """Retry `check` until it passes: dependencies may come up after this process."""
    deadline = asyncio.get_running_loop().time() + within_seconds
    while True:
        try:
            await check()
            return
        except Exception as error:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{what} not ready after {within_seconds:.0f}s: {error}") from error
            await asyncio.sleep(0.2)


def periodically(
    seconds: float, job: Callable[[], Awaitable[object]], what: str
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """A background loop that runs `job` every `seconds` until stopped; a failure is logged and
    retried on the next round, never fatal."""

    async def loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await job()
            except Exception:
                log.exception("%s failed; retrying", what)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

    return loop


def _end_on_failure(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """A background loop must not die silently: log it and stop the process, so that the
    supervisor (or Kubernetes) restarts it instead of leaving a process that does nothing."""
    if not task.cancelled() and task.exception() is not None and not stop.is_set():
        log.error("background loop failed; stopping", exc_info=task.exception())
        stop.set()


def termination_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: what Kubernetes, Karpenter and Ctrl-C send."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_until_terminated(
    server: GrpcServer,
    *,
    ready: Callable[[], Awaitable[None]],
    grace: float,
    background: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
    drain_seconds: float | None = None,
    cleanup: Sequence[Callable[[], Awaitable[None]]] = (),
    ready_within_seconds: float = 60.0,
) -> None:
    """Start, turn SERVING once `ready` passes (retried for `ready_within_seconds`, settling the
    garbage collector on what start-up built), and run the background loops until SIGTERM.

    On SIGTERM: NOT_SERVING first (so load balancers and probes stop sending work), then the
    background loops get `drain_seconds` to finish what they hold (they watch the event), then
    in-flight RPCs get `grace`, then cleanup.
    """
    stop = termination_event()
    await server.start()
    await wait_until_ready(ready, "dependencies", within_seconds=ready_within_seconds)
    settle_garbage_collector()
    await server.mark_serving()
    tasks = [asyncio.create_task(loop(stop)) for loop in background]
    for task in tasks:
        task.add_done_callback(lambda done: _end_on_failure(done, stop))
    await stop.wait()
    log.info("terminating: NOT_SERVING")
    await server.health.enter_graceful_shutdown()
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=grace if drain_seconds is None else drain_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await server.server.stop(grace)
    for close in cleanup:
        await close()
    log.info("stopped")
