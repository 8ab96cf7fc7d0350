"""A test's side of the worker's failpoints: hold a job at a point, see it parked, let it go.
Tests use them wherever they need a job still running, or mid-store, instead of racing a fast
job on the tiny model. PARK_AFTER_STEP is the default; the store's failpoints take no step."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from services.common.failpoints import Failpoint, armed_key, parked_key, release_key

# What a mesh's workers need in their environment for tests to park jobs.
FAILPOINTS_ENV = {"PINGVAS_FAILPOINTS": json.dumps([str(failpoint) for failpoint in Failpoint])}


def parking_prompt(
    mesh: Any,
    words: str,
    after_step: int | Sequence[int] = 0,
    failpoint: Failpoint = Failpoint.PARK_AFTER_STEP,
) -> str:
    """A prompt of its own, armed so that the job submitted with it parks at `failpoint` (after
    `after_step`, for PARK_AFTER_STEP; after each of several steps, each parking waiting for
    its own release). Armed before the job exists, so no worker can run it past the point first."""
    prompt = f"{words} {uuid.uuid4().hex[:8]}"
    steps = [after_step] if isinstance(after_step, int) else list(after_step)
    mesh.redis().hset(armed_key(failpoint), prompt, ",".join(str(step) for step in steps))
    return prompt


def disarm(mesh: Any, prompt: str, failpoint: Failpoint = Failpoint.PARK_AFTER_STEP) -> None:
    """Jobs with this prompt run through from now on (e.g. the next attempt after a crash)."""
    mesh.redis().hdel(armed_key(failpoint), prompt)


def is_parked(
    mesh: Any, generation_id: str, failpoint: Failpoint = Failpoint.PARK_AFTER_STEP, step: int | None = None
) -> bool:
    """Whether the job is parked at `failpoint` (after `step`, when given: the parking after an
    earlier step of the same job does not count)."""
    parked = mesh.redis().get(parked_key(failpoint, generation_id))
    return parked is not None and (step is None or int(parked) == step)


def wait_parked(
    mesh: Any,
    generation_id: str,
    within: float = 120,
    failpoint: Failpoint = Failpoint.PARK_AFTER_STEP,
    step: int | None = None,
) -> None:
    deadline = time.monotonic() + within
    while not is_parked(mesh, generation_id, failpoint, step):
        assert time.monotonic() < deadline, f"{generation_id} never parked at {failpoint}"
        time.sleep(0.05)


def release(mesh: Any, generation_id: str, failpoint: Failpoint = Failpoint.PARK_AFTER_STEP) -> None:
    mesh.redis().rpush(release_key(failpoint, generation_id), "go")
