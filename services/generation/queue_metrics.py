"""The queue's depth over HTTP, for KEDA's `metrics-api` scaler, which scales the GPU workers.

The queue lives in many keys (a list per user and band, a waiting set per band, the leases), and
no KEDA scaler sums Redis keys, so the generation service, which owns the queue, answers one
number: `GET /queue-depth` -> `{"depth": n, "waiting": n, "leased": n, "waitingByPlan": {...}}`,
read in one MULTI (TierQueue.backlog). It listens on a port of its own
(PINGVAS_METRICS_PORT), which the NetworkPolicy opens to the KEDA operator alone: the public
gRPC port stays behind Envoy. The answer holds counts only, no tenant's data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, Observation

from services.generation.queue import Backlog, TierQueue

log = logging.getLogger(__name__)

QUEUE_DEPTH_PATH = "/queue-depth"
# A request line and headers larger than this are not a scaler's.
_MAX_REQUEST_HEAD_BYTES = 8192


class QueueDepthEndpoint:
    """A minimal HTTP/1.1 server with one resource; each connection answers one request."""

    def __init__(self, queue: TierQueue, *, host: str, port: int) -> None:
        self.queue = queue
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._answer, self.host, self.port, limit=_MAX_REQUEST_HEAD_BYTES
        )
        log.info("queue depth for KEDA on http://%s:%d%s", self.host, self.port, QUEUE_DEPTH_PATH)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method != "GET" or path != QUEUE_DEPTH_PATH:
                await _reply(writer, 404, {"error": f"only GET {QUEUE_DEPTH_PATH}"})
                return
            try:
                backlog = await self.queue.backlog()
            except Exception:
                log.warning("reading the queue's depth failed", exc_info=True)
                await _reply(writer, 503, {"error": "redis unavailable"})
                return
            await _reply(
                writer,
                200,
                {
                    "depth": backlog.depth,
                    "waiting": sum(backlog.waiting.values()),
                    "leased": backlog.leased,
                    "waitingByPlan": backlog.waiting,
                },
            )
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


async def _reply(writer: asyncio.StreamWriter, status: int, body: dict[str, object]) -> None:
    payload = json.dumps(body).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()


class QueueDepthGauge:
    """The same backlog as OpenTelemetry gauges: waiting jobs per band (`pingvas.queue.depth`)
    and leased ones (`pingvas.queue.leased`), in the generation service while telemetry is on.

    The queue is read when the SDK collects, once per export (OTEL_METRIC_EXPORT_INTERVAL), so
    each export carries a fresh value and costs one read, not a read on a timer of its own
    whose values the next export mostly discards. The SDK runs the callbacks on its collection
    thread, which has no event loop and no Redis client: the read runs on the service's loop
    while that thread waits for it. Both gauges of one collection share that read."""

    # The two callbacks of one collection run back to back: a read this young serves both.
    _SHARED_FOR_SECONDS = 1.0

    def __init__(
        self,
        queue: TierQueue,
        loop: asyncio.AbstractEventLoop,
        *,
        meter: metrics.Meter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.loop = loop
        self._clock = clock
        self._closed = False
        self._last: tuple[float, Backlog] | None = None
        meter = meter or metrics.get_meter(__name__)
        meter.create_observable_gauge(
            "pingvas.queue.depth",
            callbacks=[self._observe_waiting],
            unit="{job}",
            description="Jobs waiting for a worker, by band.",
        )
        meter.create_observable_gauge(
            "pingvas.queue.leased",
            callbacks=[self._observe_leased],
            unit="{job}",
            description="Jobs a worker holds (running).",
        )

    async def close(self) -> None:
        """No more reads: the final collection at shutdown comes after Redis is closed."""
        self._closed = True

    def _observe_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        backlog = self._backlog(options)
        if backlog is None:
            return []
        return [Observation(waiting, {"band": band}) for band, waiting in backlog.waiting.items()]

    def _observe_leased(self, options: CallbackOptions) -> Iterable[Observation]:
        backlog = self._backlog(options)
        return [] if backlog is None else [Observation(backlog.leased)]

    def _backlog(self, options: CallbackOptions) -> Backlog | None:
        """The backlog, read on the loop; None (no point this time) when it cannot be had."""
        now = self._clock()
        if self._last is not None and now - self._last[0] < self._SHARED_FOR_SECONDS:
            return self._last[1]
        if self._closed or self.loop.is_closed() or _running_loop() is self.loop:
            return None  # waiting on the loop from its own thread would never end
        reading = asyncio.run_coroutine_threadsafe(self._read(), self.loop)
        try:
            backlog = reading.result(timeout=options.timeout_millis / 1000)
        except Exception:
            reading.cancel()
            log.warning("reading the queue's depth for the gauges failed", exc_info=True)
            return None
        self._last = (self._clock(), backlog)
        return backlog

    async def _read(self) -> Backlog:
        # Untraced: a collection is no one's request, and the sampler would drop its span only
        # after the instrumentation's work.
        with suppress_instrumentation():
            return await self.queue.backlog()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
