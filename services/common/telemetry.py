"""OpenTelemetry for every Pingvas process: traces and metrics exported over OTLP/gRPC.

Each composition root calls `start_telemetry` once, with its service name, before it builds its
server and clients. With no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT, which
`pingvas up --otlp-endpoint` and the Helm chart set) it does nothing: the API's no-op tracer and
meter stay in place, and spans and instruments in the domain cost a function call. With one, it
installs the SDK's providers, the gRPC (aio server and client), asyncpg and Redis
instrumentations, and exporters that read the standard OTEL_* variables (OTEL_BSP_*,
OTEL_METRIC_EXPORT_INTERVAL, OTEL_EXPORTER_OTLP_*, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER);
spans are encoded for export in place (`span_encoding`), for a third of the upstream encoder's CPU.

A generation's trace starts at the gateway (Envoy's OpenTelemetry tracer) and travels with the
job through Redis as a W3C `traceparent` (`current_trace_context` at enqueue, `trace_context`
at claim), so that the worker's spans join the request's trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.util.types import Attributes

from services.common.settings import TelemetrySettings

log = logging.getLogger(__name__)

# The W3C Trace Context header a job carries through Redis.
TRACEPARENT = "traceparent"


async def _nothing_to_flush() -> None:
    return None


@dataclass(frozen=True)
class Telemetry:
    """Whether this process exports telemetry, and the shutdown that flushes what is buffered
    (for the process's cleanup)."""

    enabled: bool
    shutdown: Callable[[], Awaitable[None]] = _nothing_to_flush


def start_telemetry(service_name: str, settings: TelemetrySettings | None = None) -> Telemetry:
    """Install tracing and metrics for this process when an endpoint is configured."""
    settings = settings or TelemetrySettings()
    if not settings.enabled:
        return Telemetry(enabled=False)
    from opentelemetry import metrics
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from services.common.span_encoding import InPlaceOTLPSpanExporter

    resource = Resource.create({"service.name": service_name, "service.namespace": "pingvas"})
    tracer_provider = TracerProvider(
        resource=resource,
        sampler=None if settings.traces_sampler else PingvasSampler(),
    )
    tracer_provider.add_span_processor(BatchSpanProcessor(InPlaceOTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    metrics.set_meter_provider(meter_provider)

    GrpcAioInstrumentorServer(filter_=is_request).instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient(filter_=is_request).instrument()  # type: ignore[no-untyped-call]
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    log.info("telemetry on: OTLP to %s as %s", settings.exporter_otlp_endpoint, service_name)

    async def shutdown() -> None:
        # The exporters block on the network: off the event loop.
        await asyncio.to_thread(tracer_provider.shutdown)
        await asyncio.to_thread(meter_provider.shutdown)

    return Telemetry(enabled=True, shutdown=shutdown)


# Probes and reflection are no one's request: they would only add traces of one span each.
GRPC_PLUMBING = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def is_request(call_details: Any) -> bool:
    """The gRPC instrumentations' filter: every call but the plumbing's. A server passes its
    handler call details, a client its call details, whose method grpc gives as bytes. (The
    instrumentation's own `filters.service_name` asks first whether the details are a client's,
    a runtime Protocol check that cost a tenth of a millisecond a call.)"""
    method = call_details.method
    if isinstance(method, bytes):
        method = method.decode()
    return not method.startswith(GRPC_PLUMBING)


# What SQLAlchemy's pool and transactions say around every transaction's own statements: the
# connection's liveness ping, BEGIN, the ROLLBACK that resets a returned connection, and a nested
# transaction's SAVEPOINT and RELEASE. They would be a third of a generation's spans and tell
# nothing the transaction's statements and its COMMIT do not.
TRANSACTION_PLUMBING = frozenset({";", "BEGIN;", "ROLLBACK;", "SAVEPOINT", "RELEASE"})


class PingvasSampler(Sampler):
    """Spans follow their parent's decision, except the database's transaction plumbing, which
    is never recorded; with no parent, see `_NoRootClientSpans`."""

    def __init__(self) -> None:
        self._by_parent = ParentBased(root=_NoRootClientSpans())

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind == trace.SpanKind.CLIENT and name in TRANSACTION_PLUMBING:
            return SamplingResult(Decision.DROP)
        return self._by_parent.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "PingvasSampler"


class _NoRootClientSpans(Sampler):
    """The root sampler: a trace starts at a request (Envoy starts most) or at a span our code
    opens; a bare client call with no parent is a background loop's poll (a worker asking for
    work every second, the event hub's blocking read, the reconciler), which would make a trace
    of one span each, all day long, at the cost of every process's CPU."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind == trace.SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "NoRootClientSpans"


@contextmanager
def span_without_statements(tracer: trace.Tracer, name: str, **options: Any) -> Iterator[trace.Span]:
    """A span for a step that is one transaction, one Redis call, or one of each (a job's claim:
    the move to RUNNING and its `started` event; its fenced finish; its terminal event), inside
    which the database and Redis instrumentations make no spans: the step's span already times
    them and names what they did. They were 9 of the
    worker's 16 spans a job, and about 2 to 3 ms of its CPU a job with tracing on
    (bench/mesh_overhead.py --tracing). Options are `start_as_current_span`'s."""
    with tracer.start_as_current_span(name, **options) as span, suppress_instrumentation():
        yield span


def current_trace_context() -> str:
    """The current span's W3C traceparent, to travel with a job; '' when there is none (tracing
    off, or no request behind this call, as for the reconciler)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def trace_context(traceparent: str) -> Context:
    """The context a job carried (`current_trace_context`), for spans that continue its trace."""
    if not traceparent:
        return otel_context.Context()
    return propagate.extract({TRACEPARENT: traceparent})


def job_link(traceparent: str) -> trace.Link | None:
    """A link to a job's trace, for a span that serves several jobs (a batch's denoise)."""
    span_context = trace.get_current_span(trace_context(traceparent)).get_span_context()
    return trace.Link(span_context) if span_context.is_valid else None
