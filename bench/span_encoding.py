"""What encoding a generation's spans for OTLP costs: the exporter's own encoder against the
in-place one the mesh exports with (services/common/span_encoding.py), side by side in one run.

    .venv/bin/python bench/span_encoding.py [--generations 200] [--rounds 3]

The spans are the kinds a traced generation makes (bench/mesh_overhead.py --tracing counts 34):
2 gRPC server spans with 12 Redis and PostgreSQL client spans each, carrying the
instrumentations' attributes, and the worker's 7 spans, its denoise with 20 step events. Each round encodes the same batches
(512 spans, the batch processor's batch) with each encoder in turn and serializes them, and
prints CPU microseconds per span (user + system of this process); the ratio is taken within a
round. It asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as upstream_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from services.common.span_encoding import encode_spans

BATCH = 512  # OTEL_BSP_MAX_EXPORT_BATCH_SIZE's default
REDIS: dict[str, AttributeValue] = {
    "db.system": "redis",
    "db.statement": "EVALSHA ? ? ? ? ? ? ? ? ? ? ? ?",
    "db.redis.args_length": 13,
    "net.peer.name": "/tmp/pingvas/redis.sock",
    "net.transport": "unix",
    "db.redis.database_index": 0,
}
POSTGRES: dict[str, AttributeValue] = {
    "db.system": "postgresql",
    "db.name": "pingvas",
    "db.user": "dev_pingvas_app",
    "net.peer.name": "/tmp/pingvas/postgres",
    "net.peer.port": 5432,
    "db.statement": "UPDATE generations SET state=$1::VARCHAR, attempt=(generations.attempt + $2::INTEGER),"
    " worker_id=$3::VARCHAR, started_at=now() WHERE generations.id = $4::UUID AND generations.state = $5",
}


def generation_spans(generations: int) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "pingvas-bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    grpc, redis, asyncpg = (
        provider.get_tracer(f"opentelemetry.instrumentation.{name}", "0.66b1")
        for name in ("grpc", "redis", "asyncpg")
    )
    worker = provider.get_tracer("gpu_inference.worker")
    for _ in range(generations):
        for method in ("CreateGeneration", "WatchGeneration"):
            with grpc.start_as_current_span(
                f"/pingvas.generation.v1.GenerationService/{method}",
                kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.method": method, "rpc.grpc.status_code": 0},
            ):
                for _ in range(6):
                    redis.start_span("EVALSHA", kind=trace.SpanKind.CLIENT, attributes=REDIS).end()
                    asyncpg.start_span("UPDATE", kind=trace.SpanKind.CLIENT, attributes=POSTGRES).end()
        for name in ("claim", "run batch", "model cache hit", "store", "fenced finish", "terminal event"):
            with worker.start_as_current_span(name, attributes={"pingvas.generation_id": "0" * 32}):
                pass
        denoise = worker.start_span("denoise", attributes={"pingvas.model": "tiny-sd", "pingvas.steps": 20})
        for step in range(1, 21):
            denoise.add_event("step", {"step": step, "total_steps": 20})
        denoise.end()
    return list(exporter.get_finished_spans())


def microseconds_per_span(
    encode: Callable[[Sequence[ReadableSpan]], ExportTraceServiceRequest], spans: list[ReadableSpan]
) -> float:
    batches = [spans[start : start + BATCH] for start in range(0, len(spans), BATCH)]
    started = time.process_time()
    for batch in batches:
        encode(batch).SerializeToString()
    return (time.process_time() - started) / len(spans) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spans = generation_spans(args.generations)
    encoders = {"upstream": upstream_encode_spans, "in place": encode_spans}
    for encode in encoders.values():  # warm-up
        microseconds_per_span(encode, spans[:BATCH])
    print(f"{len(spans)} spans ({len(spans) // args.generations} per generation), batches of {BATCH}")
    ratios = []
    for round_index in range(1, args.rounds + 1):
        order = list(encoders) if round_index % 2 else list(reversed(encoders))
        cost = {name: microseconds_per_span(encoders[name], spans) for name in order}
        ratios.append(cost["in place"] / cost["upstream"])
        print(
            f"  round {round_index}: upstream {cost['upstream']:6.1f} us/span   in place {cost['in place']:6.1f} us/span"
            f"   ratio {ratios[-1]:.2f}"
        )
    print(f"  median ratio in place / upstream: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
