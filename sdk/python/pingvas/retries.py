"""Retries: exponential backoff with full jitter on UNAVAILABLE and RESOURCE_EXHAUSTED, waiting
at least what the server asks for in a RetryInfo.

Reads, cancels and deletes are idempotent by the contract, and a create always carries an
idempotency key (`request_id`) that the SDK generates once per create, so a retried create
returns the generation the first attempt made instead of making a second one. A batch create has
no key (the contract refuses one in a batch), so it is not `repeatable`: an UNAVAILABLE, whose
first attempt may have been made, is raised at once, and only a RESOURCE_EXHAUSTED refusal,
which made nothing, is retried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from pingvas.errors import PingvasError, ResourceExhausted, Unavailable, from_rpc_error

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a failed call is retried.

    Attempt n (from 1) that fails with UNAVAILABLE or RESOURCE_EXHAUSTED is followed by a wait of
    a random time up to `initial_backoff * multiplier ** (n - 1)`, at most `max_backoff` ("full
    jitter", so that clients refused together do not return together). When the server says when
    to come back (RetryInfo, as with RATE_LIMITED), the wait is that, plus up to a tenth more;
    a RetryInfo longer than `max_retry_after` is not waited for: the error is raised. After
    `max_attempts` attempts the last error is raised. `RetryPolicy(max_attempts=1)` never retries.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 20.0
    multiplier: float = 2.0
    max_retry_after: float = 60.0

    def delay(self, error: PingvasError, attempt: int) -> float | None:
        """Seconds to wait before attempt `attempt + 1` after `error`; None to give up."""
        if attempt >= self.max_attempts or not isinstance(error, (Unavailable, ResourceExhausted)):
            return None
        if isinstance(error, ResourceExhausted) and error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None
            return error.retry_after * (1 + random.random() / 10)
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, ceiling)


def _delay(policy: RetryPolicy, error: PingvasError, attempt: int, repeatable: bool) -> float | None:
    if not repeatable and isinstance(error, Unavailable):
        return None
    return policy.delay(error, attempt)


def call_with_retries(policy: RetryPolicy, attempt_call: Callable[[], T], *, repeatable: bool = True) -> T:
    """`attempt_call()`'s result, retried under `policy`; a failure raises a typed PingvasError."""
    attempt = 1
    while True:
        try:
            return attempt_call()
        except grpc.RpcError as raw:
            error = from_rpc_error(raw)
            wait = _delay(policy, error, attempt, repeatable)
            if wait is None:
                raise error from raw
        time.sleep(wait)
        attempt += 1


async def call_with_retries_async(
    policy: RetryPolicy, attempt_call: Callable[[], Awaitable[T]], *, repeatable: bool = True
) -> T:
    """`call_with_retries` for `grpc.aio` calls."""
    attempt = 1
    while True:
        try:
            return await attempt_call()
        except grpc.RpcError as raw:
            error = from_rpc_error(raw)
            wait = _delay(policy, error, attempt, repeatable)
            if wait is None:
                raise error from raw
        await asyncio.sleep(wait)
        attempt += 1
