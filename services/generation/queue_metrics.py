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

from opentelemetry import metrics

from services.generation.queue import TierQueue

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
    """The same backlog as an OpenTelemetry gauge, per band (`pingvas.queue.depth`, waiting jobs)
    and leased (`pingvas.queue.leased`): `observe` runs on a timer in the generation service
    while telemetry is on. A read of Redis cannot run in the SDK's collection thread, which has
    no event loop."""

    def __init__(self, queue: TierQueue) -> None:
        self.queue = queue
        meter = metrics.get_meter(__name__)
        self.depth = meter.create_gauge(
            "pingvas.queue.depth", unit="{job}", description="Jobs waiting for a worker, by band."
        )
        self.leased = meter.create_gauge(
            "pingvas.queue.leased", unit="{job}", description="Jobs a worker holds (running)."
        )

    async def observe(self) -> None:
        backlog = await self.queue.backlog()
        for band, waiting in backlog.waiting.items():
            self.depth.set(waiting, {"band": band})
        self.leased.set(backlog.leased)
