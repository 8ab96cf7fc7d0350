"""An OTLP/gRPC receiver that counts what it is sent and keeps nothing: the collector the
tracing comparison of bench/mesh_overhead.py exports to, so the mesh pays the full export."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self.metric_exports = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpSink:
        self.server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.stop(grace=None)

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            count = sum(
                len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
            )
            with self._lock:
                self.spans += count
            return trace_service_pb2.ExportTraceServiceResponse()
        with self._lock:
            self.metric_exports += 1
        return metrics_service_pb2.ExportMetricsServiceResponse()
