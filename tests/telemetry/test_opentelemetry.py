"""OpenTelemetry across the mesh: one generation through Envoy is one trace, from the gateway
through the generation service and, carried with the job through Redis, the worker's claim,
denoise and store; and the metrics count the job. A real OTLP/gRPC receiver collects what Envoy
and every process export."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from support.accounts import dev_login
from support.mesh import MeshStarter
from support.otlp import OtlpReceiver, ReceivedSpan, trace_tree

REQUEST = {"prompt": "a lighthouse at dusk", "model": "tiny-sd", "width": 64, "height": 64, "steps": 4}

# Export soon after each span and often for metrics, so the test waits seconds, not minutes.
FAST_EXPORT_ENV = {
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_METRIC_EXPORT_INTERVAL": "500",
    "PINGVAS_QUEUE_METRICS_INTERVAL_SECONDS": "0.5",
}


def _generation_trace(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """The spans of the trace the worker's denoise belongs to ([] until it arrived)."""
    denoise = [span for span in spans if span.service == "pingvas-worker" and span.name == "denoise"]
    if not denoise:
        return []
    return [span for span in spans if span.trace_id == denoise[0].trace_id]


def _complete(trace: list[ReceivedSpan]) -> bool:
    seen = {(span.service, span.name) for span in trace}
    services = {span.service for span in trace}
    return (
        "pingvas-gateway" in services
        and ("pingvas-generation", "/pingvas.generation.v1.GenerationService/CreateGeneration") in seen
        and {("pingvas-worker", name) for name in ("claim", "denoise", "store", "fenced finish")} <= seen
        and ("pingvas-worker", "terminal event") in seen
    )


def _total(points: list[Any], metric: str, **attributes: str) -> float:
    """The latest value of a cumulative metric summed over its series with `attributes`."""
    latest: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
    for point in points:
        if point.metric == metric and all(point.attributes.get(k) == v for k, v in attributes.items()):
            latest[(point.service, tuple(sorted(point.attributes.items())))] = point.value
    return sum(latest.values())


def test_one_generation_is_one_trace_across_envoy_services_and_worker(own_mesh: MeshStarter) -> None:
    with (
        OtlpReceiver() as receiver,
        own_mesh("telemetry", {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **FAST_EXPORT_ENV}) as mesh,
    ):
        account = dev_login(mesh.gateway_url, "otel")
        created = httpx.post(
            f"{mesh.gateway_url}/api/v1/generation/create", json=REQUEST, headers=account.headers, timeout=60
        )
        assert created.status_code == 200, created.text
        generation_id = created.json()["id"]
        # Watched to its end over SSE, so that the open watch streams gauge counts one.
        with httpx.stream(
            "GET",
            f"{mesh.gateway_url}/api/v1/generation/{generation_id}/events",
            headers=account.headers,
            timeout=120,
        ) as events:
            assert events.status_code == 200
            last = [
                json.loads(line[len("data: ") :]) for line in events.iter_lines() if line.startswith("data: ")
            ]
        assert "succeeded" in last[-1], last[-1]

        deadline = time.monotonic() + 60
        while not _complete(trace := _generation_trace(receiver.spans())):
            assert time.monotonic() < deadline, "incomplete trace:\n" + trace_tree(trace)
            time.sleep(0.2)
        print(trace_tree(trace))

        (gateway,) = [span for span in trace if span.service == "pingvas-gateway" and not span.parent_span_id]
        by_id = {span.span_id: span for span in trace}
        create = next(span for span in trace if span.name.endswith("/CreateGeneration"))
        assert create.parent_span_id == gateway.span_id, "the service continues Envoy's span"
        denoise = next(span for span in trace if span.name == "denoise")
        assert sum(event == "step" for event in denoise.events) == REQUEST["steps"]
        assert trace[0].trace_id in denoise.links, "the batch's denoise links to each job's trace"
        store = next(span for span in trace if span.name == "store")
        finish = next(span for span in trace if span.name == "fenced finish")
        assert by_id[finish.parent_span_id] is store

        while not (
            _total(receiver.points(), "pingvas.generation.jobs", outcome="succeeded") >= 1
            and _total(receiver.points(), "pingvas.worker.gpu_seconds") > 0
            and _total(receiver.points(), "pingvas.queue.wait") >= 1
        ):
            assert time.monotonic() < deadline, sorted({point.metric for point in receiver.points()})
            time.sleep(0.2)
        metrics = {point.metric for point in receiver.points()}
        assert {
            "pingvas.queue.depth",
            "pingvas.worker.iterations_per_second",
            "pingvas.model_cache.hits",
            "pingvas.model_cache.misses",
            "pingvas.model_cache.evictions",
            "pingvas.watch.open_streams",
        } <= metrics, sorted(metrics)
