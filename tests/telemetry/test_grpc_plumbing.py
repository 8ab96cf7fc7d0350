"""Health checks and reflection make no spans, on the server or the client side; every other call
does. The gRPC instrumentations' interceptors, with the filter `start_telemetry` gives them, on
a real grpc.aio server and channel."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common.telemetry import is_request

PROBE = "/pingvas.probe.v1.Probe/Ping"


async def test_probes_and_reflection_make_no_spans_and_requests_do() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = grpc.aio.server(
        interceptors=[aio_server_interceptor(tracer_provider=provider, filter_=is_request)]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection([reflection.SERVICE_NAME], server)

    async def ping(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return request

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "pingvas.probe.v1.Probe", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            interceptors=aio_client_interceptors(tracer_provider=provider, filter_=is_request),
        ) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            reflection_call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            async for _answer in reflection_call:
                pass
            assert await channel.unary_unary(PROBE)(b"ping") == b"ping"
    finally:
        await server.stop(None)

    spans = {(span.name, span.kind) for span in exporter.get_finished_spans()}
    assert spans == {(PROBE, SpanKind.SERVER), (PROBE, SpanKind.CLIENT)}


def test_a_clients_method_names_come_as_bytes() -> None:
    details = grpc.aio.ClientCallDetails(b"/grpc.health.v1.Health/Check", None, None, None, None)
    assert not is_request(details)
    assert is_request(grpc.aio.ClientCallDetails(PROBE.encode(), None, None, None, None))
