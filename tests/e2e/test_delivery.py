"""Redis only delivers: a job whose queue entry Redis lost is re-enqueued from PostgreSQL by the
generation service's reconciler, and completes once."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from support.failpoints import parking_prompt, release, wait_parked

pytestmark = pytest.mark.integration


def wait_for_state(
    rest: httpx.Client, account: Any, generation_id: str, state: str, within: float
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        generation = rest.get(f"/api/v1/generation/{generation_id}", headers=account.headers).json()
        if generation["state"] == f"GENERATION_STATE_{state}":
            return dict(generation)
        time.sleep(0.1)
    raise AssertionError(f"{generation_id} never reached {state}")


def test_a_job_redis_forgot_is_re_enqueued_and_completes(
    mesh: Any, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("forgotten")
    body = {"prompt": "fox", "width": 64, "height": 64}
    # The blocker holds the user's one running slot, so the job under test stays queued.
    blocker = rest.post(
        "/api/v1/generation/create",
        json={**body, "prompt": parking_prompt(mesh, "a blocker", after_step=1), "steps": 2},
        headers=account.headers,
    ).json()
    wait_parked(mesh, blocker["id"])
    lost = rest.post("/api/v1/generation/create", json={**body, "steps": 2}, headers=account.headers).json()

    redis = mesh.redis()
    assert redis.lrem(f"queue:free:{account.user_id}", 0, lost["id"]) == 1  # the delivery is gone
    release(mesh, blocker["id"])

    done = wait_for_state(rest, account, lost["id"], "SUCCEEDED", within=90)
    assert done["attempt"] == 1
    assert "re-enqueueing " + lost["id"] in mesh.log("generation")
    captures = mesh.sql(
        "SELECT count(*) AS n FROM credit_entries WHERE reference = %s AND kind = 'capture'",
        f"generation:{lost['id']}",
    )
    assert captures == [{"n": 1}]
