"""The in-place span encoder builds the request the upstream OTLP encoder builds, field for field
and byte for byte: spans of two processes' resources and of several scopes, equal resources
and scopes of distinct objects grouped as one; remote and local parents; trace state;
attributes of every type an attribute may have, and values of no such type, left out; events,
links and status; and the counts of what the span limits dropped. (Sending what it builds is
tests/telemetry/test_opentelemetry.py's: the mesh exports through it to a real receiver.)"""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as upstream_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.span_encoding import InPlaceOTLPSpanExporter, encode_spans

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _provider(service: str, exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "pingvas"}),
        span_limits=SpanLimits(max_span_attributes=8, max_events=3, max_links=2, max_event_attributes=2),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    generation = _provider("pingvas-generation", exporter)
    worker = _provider("pingvas-worker", exporter)
    # Another provider of the same process: its resource and its tracer's scope are equal to
    # the first's, but other objects.
    generation_again = _provider("pingvas-generation", exporter)
    server = generation.get_tracer("opentelemetry.instrumentation.grpc", "0.66b1")
    client = generation.get_tracer(
        "opentelemetry.instrumentation.redis",
        "0.66b1",
        schema_url="https://opentelemetry.io/schemas/1.11.0",
        attributes={"pingvas.scope": "redis"},
    )
    domain = worker.get_tracer("gpu_inference.worker")

    remote = propagate.extract({"traceparent": TRACEPARENT, "tracestate": "vendor=a1,other=b2"})
    with (
        server.start_as_current_span(
            "/pingvas.generation.v1.GenerationService/CreateGeneration",
            context=remote,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.grpc.status_code": 0},
        ),
        client.start_as_current_span(
            "EVALSHA",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "db.statement": "EVALSHA ? ? ?",
                "db.redis.args_length": 4,
                "pingvas.ratio": 0.25,
                "pingvas.retried": False,
                "pingvas.generation_ids": ["a", "b"],
                "pingvas.steps": [20, 30],
                "pingvas.weights": [0.5, 1.5],
                "pingvas.flags": [True, False],
            },
        ) as span,
    ):
        span.set_attribute("one.too.many", "dropped")
        span.set_status(trace.StatusCode.ERROR, "ConnectionError")
    generation_again.get_tracer("opentelemetry.instrumentation.grpc", "0.66b1").start_span("probe").end()
    first_job = trace.get_current_span(remote).get_span_context()
    with domain.start_as_current_span("run batch", links=[trace.Link(first_job, {"pingvas.member": 0})]):
        denoise = domain.start_span(
            "denoise",
            links=[
                trace.Link(first_job),
                trace.Link(trace.SpanContext(0x1234, 0x5678, is_remote=True)),
                trace.Link(trace.SpanContext(0x9ABC, 0xDEF0, is_remote=False)),
            ],
        )
        for step in range(1, 5):
            denoise.add_event("step", {"step": step, "total_steps": 4, "extra": "over the limit"})
        denoise.set_status(trace.StatusCode.OK)
        denoise.end()
    return list(exporter.get_finished_spans())


def test_the_request_is_the_upstream_encoders_to_the_byte() -> None:
    spans = _spans()
    ours, upstream = encode_spans(spans), upstream_encode_spans(spans)

    assert ours == upstream
    assert ours.SerializeToString(deterministic=True) == upstream.SerializeToString(deterministic=True)
    # The case carries what it claims to: two resources (the equal ones as one), the limits'
    # drops, a remote parent.
    assert len({id(span.resource) for span in spans}) == 3
    assert len(ours.resource_spans) == 2
    assert [len(resource_spans.scope_spans) for resource_spans in ours.resource_spans] == [2, 1]
    all_spans = [span for rs in ours.resource_spans for ss in rs.scope_spans for span in ss.spans]
    assert {span.name for span in all_spans if span.dropped_attributes_count} == {"EVALSHA"}
    assert [span.dropped_events_count for span in all_spans if span.name == "denoise"] == [1]
    assert [span.dropped_links_count for span in all_spans if span.name == "denoise"] == [1]
    assert any(span.trace_state == "vendor=a1,other=b2" for span in all_spans)


def test_an_attribute_that_does_not_encode_is_left_out_as_upstream_leaves_it() -> None:
    # The SDK's spans never hold one (it cleans attributes as they are set); a span made by hand
    # can, and must not take its batch down with it.
    span = ReadableSpan(
        "by hand",
        trace.SpanContext(0x1234, 0x5678, is_remote=False),
        attributes={
            "kept": 1,
            "opaque": object(),  # type: ignore[dict-item]
            "in a list": ["a", object()],  # type: ignore[list-item]
            "in a mapping": {"fine": 1, "opaque": object()},  # type: ignore[dict-item]
            "also kept": "y",
        },
        start_time=1,
        end_time=2,
    )
    ours, upstream = encode_spans([span]), upstream_encode_spans([span])

    assert ours == upstream
    (encoded,) = ours.resource_spans[0].scope_spans[0].spans
    assert [attribute.key for attribute in encoded.attributes] == ["kept", "also kept"]


def test_an_empty_batch_is_an_empty_request() -> None:
    assert encode_spans([]) == upstream_encode_spans([])


def test_the_exporter_encodes_with_it() -> None:
    spans = _spans()
    exporter = InPlaceOTLPSpanExporter(endpoint="localhost:4317", insecure=True)
    try:
        assert exporter._translate_data(spans) == upstream_encode_spans(spans)
    finally:
        exporter.shutdown()
