"""The denoise span's step events: the inference thread only notes its steps, and the events are
added afterwards on the event loop's side, each dated when its step ended."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gpu_inference.worker import StepEvents


def test_steps_noted_on_another_thread_become_events_dated_when_they_ended() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    denoise = provider.get_tracer(__name__).start_span("denoise")
    step_events = StepEvents()

    def run_steps() -> list[int]:
        ended = []
        for step in (1, 2, 3):
            step_events.note(step)
            ended.append(time.time_ns())
        return ended

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference") as inference:
        ended = inference.submit(run_steps).result()
    assert denoise.events == (), "the inference thread never touched the span"  # type: ignore[attr-defined]

    added_at = time.time_ns()
    step_events.add_to(denoise, total_steps=3)
    denoise.end()

    (span,) = exporter.get_finished_spans()
    assert [dict(event.attributes or {}) for event in span.events] == [
        {"step": step, "total_steps": 3} for step in (1, 2, 3)
    ]
    times = [event.timestamp for event in span.events]
    # Each event is dated at its step's end, no later than the clock read right after it; an
    # event dated as it was added would be later than all of them.
    assert all(time_ns <= after for time_ns, after in zip(times, ended, strict=True))
    assert times == sorted(times) and times[-1] <= added_at
