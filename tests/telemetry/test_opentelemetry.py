"""OpenTelemetry across the mesh: one generation through Envoy is one trace, from the gateway
through the generation service and, carried with the job through Redis, the worker's claim,
denoise and store; a batch's denoise links to each job's trace; and the metrics count the job. A
real OTLP/gRPC receiver collects what Envoy and every process export. A worker's own polls for
work never go through the instrumentation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.asyncio import Redis
from support.accounts import Account, dev_login
from support.commands import redis_commands_asked_about
from support.failpoints import FAILPOINTS_ENV, parking_prompt, release, wait_parked
from support.mesh import MeshStarter, RunningMesh
from support.otlp import OtlpReceiver, ReceivedSpan, trace_tree
from support.runs import runs_on
from support.webhook_receiver import WebhookReceiver

from gpu_inference.registry import ModelRegistry
from gpu_inference.worker import Worker
from services.common.database import Database
from services.common.settings import SchedulerSettings
from services.common.storage import open_image_store
from services.common.telemetry import TRANSACTION_PLUMBING
from services.generation.catalog import ModelCatalog, ModelFolder
from services.generation.queue import SchedulingPolicy

# The mesh's Redis holds its queue in database 0.
IDLE_WORKER_REDIS_DB = 9

# The worker's steps that are a transaction, a Redis call, or one of each.
SINGLE_SPAN_STEPS = ("claim", "fenced finish", "terminal event")

REQUEST = {"prompt": "a lighthouse at dusk", "model": "tiny-sd", "width": 64, "height": 64, "steps": 4}

TRACED_MESH_ENV = {
    # Export soon after each span and often for metrics, so the tests wait seconds, not minutes.
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_METRIC_EXPORT_INTERVAL": "500",
    "PINGVAS_QUEUE_METRICS_INTERVAL_SECONDS": "0.5",
    # Batches on the CPU too, for the batch's links.
    "PINGVAS_MAX_BATCH": "2",
    # A refused webhook is retried at once, for the deliveries metric.
    "PINGVAS_WEBHOOK_RETRY_DELAYS_SECONDS": "[0.2]",
    "PINGVAS_WEBHOOK_POLL_INTERVAL_SECONDS": "0.1",
    **FAILPOINTS_ENV,
}


@pytest.fixture(scope="module")
def traced(own_mesh: MeshStarter) -> Iterator[tuple[RunningMesh, OtlpReceiver]]:
    with (
        OtlpReceiver() as receiver,
        own_mesh("telemetry", {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **TRACED_MESH_ENV}) as mesh,
    ):
        yield mesh, receiver


def create(mesh: RunningMesh, account: Account, **overrides: Any) -> str:
    created = httpx.post(
        f"{mesh.gateway_url}/api/v1/generation/create",
        json={**REQUEST, **overrides},
        headers=account.headers,
        timeout=60,
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def watch_to_the_end(mesh: RunningMesh, account: Account, generation_id: str) -> dict[str, Any]:
    """The generation's events over SSE until its terminal event, which is returned."""
    with httpx.stream(
        "GET",
        f"{mesh.gateway_url}/api/v1/generation/{generation_id}/events",
        headers=account.headers,
        timeout=120,
    ) as events:
        assert events.status_code == 200
        received = [
            json.loads(line[len("data: ") :]) for line in events.iter_lines() if line.startswith("data: ")
        ]
    return received[-1]


def wait_until(receiver: OtlpReceiver, found: Callable[[list[ReceivedSpan]], Any], what: str) -> Any:
    """Poll the receiver until `found` returns something truthy from the spans received."""
    deadline = time.monotonic() + 60
    while not (result := found(receiver.spans())):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return result


def trace_of_job(spans: list[ReceivedSpan], generation_id: str) -> list[ReceivedSpan]:
    """The spans of the trace the job's claim joined ([] until it arrived)."""
    claims = [
        s for s in spans if s.name == "claim" and s.attributes.get("pingvas.generation_id") == generation_id
    ]
    return [span for span in spans if claims and span.trace_id == claims[0].trace_id]


def complete(trace: list[ReceivedSpan], *, denoised: bool = True) -> bool:
    """Whether a job's trace holds Envoy's root span, the service's, and the worker's claim, store,
    fenced finish and terminal event, and (unless only linked from another job's batch) denoise.

    The root, not any span of Envoy's: a mesh's first authenticated request fetches the JWKS
    through Envoy within its own trace, and Envoy may export those spans a batch before the root,
    which ends last."""
    seen = {(span.service, span.name) for span in trace}
    worker_spans = {"claim", "store", "fenced finish", "terminal event"} | (
        {"denoise"} if denoised else set()
    )
    return (
        any(span.service == "pingvas-gateway" and not span.parent_span_id for span in trace)
        and ("pingvas-generation", "/pingvas.generation.v1.GenerationService/CreateGeneration") in seen
        and {("pingvas-worker", name) for name in worker_spans} <= seen
    )


def total(points: list[Any], metric: str, **attributes: str) -> float:
    """The latest value of a cumulative metric summed over its series with `attributes`."""
    latest: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
    for point in points:
        if point.metric == metric and all(point.attributes.get(k) == v for k, v in attributes.items()):
            latest[(point.service, tuple(sorted(point.attributes.items())))] = point.value
    return sum(latest.values())


def test_one_generation_is_one_trace_across_envoy_services_and_worker(
    traced: tuple[RunningMesh, OtlpReceiver],
) -> None:
    mesh, receiver = traced
    account = dev_login(mesh.gateway_url, "otel")
    generation_id = create(mesh, account)
    # Watched to its end, so that the open watch streams gauge counts one.
    assert "succeeded" in watch_to_the_end(mesh, account, generation_id)

    def whole_trace(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        trace = trace_of_job(spans, generation_id)
        return trace if complete(trace) else []

    trace = wait_until(
        receiver,
        whole_trace,
        "incomplete trace:\n" + trace_tree(trace_of_job(receiver.spans(), generation_id)),
    )
    print(trace_tree(trace))

    (gateway,) = [span for span in trace if span.service == "pingvas-gateway" and not span.parent_span_id]
    by_id = {span.span_id: span for span in trace}
    create_span = next(span for span in trace if span.name.endswith("/CreateGeneration"))
    assert create_span.parent_span_id == gateway.span_id, "the service continues Envoy's span"
    denoise = next(span for span in trace if span.name == "denoise")
    steps = [event for event in denoise.events if event.name == "step"]
    assert [event.attributes["step"] for event in steps] == list(range(1, REQUEST["steps"] + 1))
    assert {event.attributes["total_steps"] for event in steps} == {REQUEST["steps"]}
    # Dated when each step ended (tests/telemetry/test_step_events.py): in order, within the span.
    step_times = [event.time_ns for event in steps]
    assert step_times == sorted(step_times)
    assert denoise.start_ns <= step_times[0] and step_times[-1] <= denoise.end_ns
    assert denoise.links == (gateway.trace_id,), "the denoise links to its job's trace"
    store = next(span for span in trace if span.name == "store")
    finish = next(span for span in trace if span.name == "fenced finish")
    assert by_id[finish.parent_span_id] is store
    # Those steps are one span each: their statements make no spans of their own
    # (span_without_statements).
    single_steps = {span.span_id: span.name for span in trace if span.name in SINGLE_SPAN_STEPS}
    assert sorted(single_steps.values()) == sorted(SINGLE_SPAN_STEPS)
    assert [span.name for span in trace if span.parent_span_id in single_steps] == []
    statements = [str(span.attributes.get("db.statement", "")) for span in trace]
    assert any(statement.startswith("INSERT INTO generations") for statement in statements)
    plumbing = [s for s in statements if "set_config(" in s or s in TRANSACTION_PLUMBING]
    assert not plumbing, "BEGIN, whose tenant the transaction is, the pool's ping: the same everywhere"

    deadline = time.monotonic() + 60
    while not (
        total(receiver.points(), "pingvas.generation.jobs", outcome="succeeded") >= 1
        and total(receiver.points(), "pingvas.worker.gpu_seconds") > 0
        and total(receiver.points(), "pingvas.queue.wait") >= 1
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


def test_a_batchs_denoise_links_to_each_jobs_trace(traced: tuple[RunningMesh, OtlpReceiver]) -> None:
    mesh, receiver = traced
    # The worker is held mid-run, so that the next two jobs wait together and go as one batch;
    # three users, since a Free user runs one job at a time.
    holder, first, second = (dev_login(mesh.gateway_url, f"otel-batch-{n}") for n in range(3))
    held = create(mesh, holder, prompt=parking_prompt(mesh, "held", after_step=1))
    wait_parked(mesh, held)
    batched = [create(mesh, first, prompt="batched one"), create(mesh, second, prompt="batched two")]
    release(mesh, held)
    for account, generation_id in zip((first, second), batched, strict=True):
        assert "succeeded" in watch_to_the_end(mesh, account, generation_id)

    def traces(spans: list[ReceivedSpan]) -> list[list[ReceivedSpan]]:
        found = [trace_of_job(spans, generation_id) for generation_id in batched]
        if not all(complete(trace, denoised=False) for trace in found):
            return []
        # The batch's denoise belongs to one of the two traces, its leader's.
        return found if any(span.name == "denoise" for trace in found for span in trace) else []

    first_trace, second_trace = wait_until(receiver, traces, "the batched jobs' traces never completed")
    print(trace_tree(first_trace))
    print(trace_tree(second_trace))
    assert first_trace[0].trace_id != second_trace[0].trace_id
    (denoise,) = [span for span in first_trace + second_trace if span.name == "denoise"]
    assert sorted(denoise.links) == sorted([first_trace[0].trace_id, second_trace[0].trace_id])
    assert any(span.name == "store" for span in second_trace), "each job's store is in its own trace"


def test_webhook_delivery_attempts_are_counted_by_outcome(traced: tuple[RunningMesh, OtlpReceiver]) -> None:
    mesh, receiver = traced
    owner = dev_login(mesh.gateway_url, "otel-partner")
    key = httpx.post(
        f"{mesh.gateway_url}/api/v1/apikeys",
        json={"displayName": "partner", "scopes": ["generate", "read"]},
        headers=owner.headers,
        timeout=30,
    )
    assert key.status_code == 200, key.text
    with WebhookReceiver() as partner:
        path = "/otel-hook"
        partner.secrets[path] = key.json()["webhookSigningSecret"]
        # The first attempt is refused, so the delivery is retried once, then delivered.
        partner.script(path, 500)
        created = httpx.post(
            f"{mesh.gateway_url}/api/v1/generation/create",
            params={"webhook.url": partner.url(path), "webhook.events_filter": "completed"},
            json=REQUEST,
            headers={"authorization": f"Bearer {key.json()['secret']}"},
            timeout=60,
        )
        assert created.status_code == 200, created.text
        attempts = partner.wait_for(path, 2)
    assert [attempt.answered for attempt in attempts] == [500, 200]

    def counted(outcome: str) -> float:
        return total(
            receiver.points(), "pingvas.webhook.deliveries", outcome=outcome, event="generation.completed"
        )

    deadline = time.monotonic() + 60
    while not (counted("retrying") >= 1 and counted("delivered") >= 1):
        assert time.monotonic() < deadline, [p for p in receiver.points() if "webhook" in p.metric]
        time.sleep(0.2)
    assert counted("given_up") == 0


async def test_an_idle_workers_asking_for_work_never_goes_through_the_instrumentation(
    traced: tuple[RunningMesh, OtlpReceiver], models_dir: Path
) -> None:
    """A worker advertises itself, claims and waits for work about once a second, all day: no
    request is behind that (a job's trace starts at its claim span), and with tracing on, even a
    span the sampler drops costs each command the instrumentation's work."""
    mesh, _receiver = traced
    # A Redis database of its own: this worker never sees the mesh's jobs, nor its workers this
    # worker's advertisement.
    redis = Redis.from_url(urlsplit(mesh.redis_url)._replace(path=f"/{IDLE_WORKER_REDIS_DB}").geturl())
    database = Database(mesh.app_database_url, schema=mesh.schema)
    images, close_images = await open_image_store(mesh.object_store(), url_ttl_seconds=3600)
    scheduler = SchedulerSettings()
    runs = runs_on(database, redis)
    worker = Worker(
        worker_id="idle",
        runs=runs,
        queue=runs.queue,
        registry=ModelRegistry(ModelCatalog(ModelFolder(models_dir)), device="cpu"),
        store=images,
        policy=SchedulingPolicy(
            aging_seconds=scheduler.aging_seconds, concurrency_caps=scheduler.concurrency_caps
        ),
        lease_seconds=30,
        shutdown_grace_seconds=1,
        idle_wait_seconds=0.05,
    )
    stop = asyncio.Event()
    try:
        with redis_commands_asked_about() as sampler:
            running = asyncio.create_task(worker.run(stop))
            try:
                deadline = time.monotonic() + 60
                with suppress_instrumentation():  # the test's own reads
                    while not await redis.exists("worker:idle"):
                        assert not running.done(), running
                        assert time.monotonic() < deadline, "the worker never advertised itself"
                        await asyncio.sleep(0.01)
            finally:
                # Once it has advertised itself, its round goes on to its claim and its wait,
                # then it stops.
                stop.set()
                await running
    finally:
        await redis.flushdb()
        await redis.aclose()
        await database.close()
        await close_images()
    assert sampler.names == []
