"""A test's side of the worker's PARK_AFTER_STEP failpoint: hold a job mid-run, see it parked,
let it go. Tests use it wherever they need a job still running, instead of racing a fast job."""

from __future__ import annotations

import time
import uuid
from typing import Any

from services.common.failpoints import Failpoint, armed_key, parked_key, release_key

# What a mesh's workers need in their environment for tests to park jobs.
FAILPOINTS_ENV = {"PINGVAS_FAILPOINTS": f'["{Failpoint.PARK_AFTER_STEP}"]'}


def parking_prompt(mesh: Any, words: str, after_step: int) -> str:
    """A prompt of its own, armed so that the job submitted with it parks after `after_step`.
    Armed before the job exists, so no worker can run it past the step first."""
    prompt = f"{words} {uuid.uuid4().hex[:8]}"
    mesh.redis().hset(armed_key(Failpoint.PARK_AFTER_STEP), prompt, after_step)
    return prompt


def disarm(mesh: Any, prompt: str) -> None:
    """Jobs with this prompt run through from now on (e.g. the next attempt after a crash)."""
    mesh.redis().hdel(armed_key(Failpoint.PARK_AFTER_STEP), prompt)


def is_parked(mesh: Any, generation_id: str) -> bool:
    return bool(mesh.redis().exists(parked_key(Failpoint.PARK_AFTER_STEP, generation_id)))


def wait_parked(mesh: Any, generation_id: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while not is_parked(mesh, generation_id):
        assert time.monotonic() < deadline, f"{generation_id} never parked at the failpoint"
        time.sleep(0.05)


def release(mesh: Any, generation_id: str) -> None:
    mesh.redis().rpush(release_key(Failpoint.PARK_AFTER_STEP, generation_id), "go")
