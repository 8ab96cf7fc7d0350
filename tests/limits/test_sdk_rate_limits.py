"""The SDK past a user's request rate: RateLimited with the server's retry_after, and a retry
that waits what the RetryInfo says instead of its own (much shorter) backoff. Starter users get
4 requests per 2 seconds on the limits mesh (tests/limits/conftest.py), and each user here is
new and signs up from an address of its own, so the other limits tests draw on other
allowances."""

from __future__ import annotations

from typing import Any

import pingvas
import pytest
from support.limits import STARTER_RATE, sign_up
from support.mesh import RunningMesh

pytestmark = pytest.mark.integration

REQUESTS, WINDOW_SECONDS = STARTER_RATE
# Backoff far shorter than any window: only the RetryInfo's wait gets a retry admitted.
ONE_BLINK_RETRY = pingvas.RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.001)


def list_one_page(client: pingvas.Client) -> Any:
    return next(client.images.list().pages())


def test_past_its_rate_a_call_raises_rate_limited_and_a_retry_waits_out_the_retry_info(
    limits_mesh: RunningMesh,
) -> None:
    account = sign_up(limits_mesh, "sdk-rate", plan="starter")
    target = limits_mesh.gateway_target
    with (
        pingvas.Client(target, access_token=account.token, retry=pingvas.RetryPolicy(max_attempts=1)) as once,
        pytest.raises(pingvas.RateLimited) as refused,
    ):
        # A fixed window may turn over once meanwhile: the refusal comes within two windows.
        for _ in range(2 * REQUESTS + 1):
            list_one_page(once)
    assert (refused.value.code, refused.value.reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= WINDOW_SECONDS

    with pingvas.Client(target, access_token=account.token, retry=ONE_BLINK_RETRY) as patient:
        # Three windows' worth of calls: each refused one is admitted on its single retry.
        for _ in range(3 * REQUESTS):
            list_one_page(patient)
