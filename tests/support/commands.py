"""Which Redis commands go through the OpenTelemetry instrumentation: for the tests that show a
background loop's polls are untraced (suppressed, not merely dropped by the sampler, since a
dropped span still costs the instrumentation's work)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult


class CommandsAskedAbout(Sampler):
    """Records the name of every span the instrumentation starts, and records none of them."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def should_sample(
        self, parent_context: Any, trace_id: int, name: str, *args: Any, **kwargs: Any
    ) -> SamplingResult:
        self.names.append(name)
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "CommandsAskedAbout"


@contextmanager
def redis_commands_asked_about() -> Iterator[CommandsAskedAbout]:
    """The real Redis instrumentation, installed for the block, reporting to the sampler yielded."""
    sampler = CommandsAskedAbout()
    instrumentor = RedisInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider(sampler=sampler))
    try:
        yield sampler
    finally:
        instrumentor.uninstrument()
