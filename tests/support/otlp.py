"""A real OTLP/gRPC receiver: the collector's TraceService and MetricsService, on the
`opentelemetry-proto` service definitions, keeping what Envoy and the mesh's processes export
(tests/telemetry), or only counting the spans (bench/mesh_overhead.py --tracing, so the mesh
pays the full export while the bench keeps nothing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    events: tuple[ReceivedEvent, ...]
    links: tuple[str, ...]  # the trace ids linked to
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedPoint:
    service: str
    metric: str
    attributes: dict[str, Any]
    value: float  # a sum's or gauge's value, a histogram's count


def _attribute_value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def _service_of(resource: Any) -> str:
    for attribute in resource.attributes:
        if attribute.key == "service.name":
            return str(_attribute_value(attribute.value))
    return "?"


class OtlpReceiver(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.span_count = 0
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._points: list[ReceivedPoint] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self.server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.stop(grace=None)

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            spans = list(self._spans_of(request))
            with self._lock:
                self.span_count += len(spans)
                if self.keep:
                    self._spans.extend(spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        if self.keep:
            points = list(self._points_of(request))
            with self._lock:
                self._points.extend(points)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def points(self) -> list[ReceivedPoint]:
        with self._lock:
            return list(self._points)

    @staticmethod
    def _spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
        for resource_spans in request.resource_spans:
            service = _service_of(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    yield ReceivedSpan(
                        service=service,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        events=tuple(
                            ReceivedEvent(
                                event.name,
                                event.time_unix_nano,
                                {a.key: _attribute_value(a.value) for a in event.attributes},
                            )
                            for event in span.events
                        ),
                        links=tuple(link.trace_id.hex() for link in span.links),
                        attributes={a.key: _attribute_value(a.value) for a in span.attributes},
                    )

    @staticmethod
    def _points_of(request: metrics_service_pb2.ExportMetricsServiceRequest) -> Iterator[ReceivedPoint]:
        for resource_metrics in request.resource_metrics:
            service = _service_of(resource_metrics.resource)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        attributes = {a.key: _attribute_value(a.value) for a in point.attributes}
                        if kind == "histogram":
                            value = float(point.count)
                        else:
                            value = float(getattr(point, point.WhichOneof("value")))
                        yield ReceivedPoint(service, metric.name, attributes, value)


# The OTLP protos' numbering of span kinds.
SPAN_KINDS = {0: "", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def trace_tree(spans: list[ReceivedSpan]) -> str:
    """One trace as an indented tree: service, span name, kind and duration, children by start."""
    by_id = {span.span_id: span for span in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    roots = []
    for span in spans:
        if span.parent_span_id and span.parent_span_id in by_id:
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)
    lines = [f"trace {spans[0].trace_id}" if spans else "(no spans)"]

    def walk(span: ReceivedSpan, depth: int) -> None:
        steps = sum(event.name == "step" for event in span.events)
        extra = f" [{steps} step events]" if steps else ""
        extra += f" [links {len(span.links)}]" if span.links else ""
        lines.append(
            f"{'  ' * depth}{span.service}: {span.name} ({SPAN_KINDS.get(span.kind, span.kind)}, "
            f"{(span.end_ns - span.start_ns) / 1e6:.1f} ms){extra}"
        )
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.start_ns):
        walk(root, 1)
    return "\n".join(lines)
