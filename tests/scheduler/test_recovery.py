"""At-least-once delivery, effectively once: lost workers, stalled workers, a Redis that forgot
everything, spot interruptions, cancel races and poison jobs. Each job ends with one terminal
state, one stored image at most, and one resolution of its credit hold."""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import httpx
import pytest
from support.failpoints import disarm, parking_prompt, release, wait_parked
from support.generations import assert_ended_once, resolutions, row, running_on, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]


@pytest.fixture
def mesh(scheduler_mesh: Any) -> Any:
    return scheduler_mesh


def test_kill_9_mid_denoise_completes_on_another_worker(
    scheduler_mesh: Any, workers: Any, customer: Any, submit: Any, wait_done: Any
) -> None:
    first, second = workers("w-kill-a", wait=False), workers("w-kill-b", wait=False)
    who = customer("pro")
    first.wait_serving()
    second.wait_serving()
    prompt = parking_prompt(scheduler_mesh, "fox", after_step=5)
    job = submit(who, steps=10, prompt=prompt)["id"]
    wait_parked(scheduler_mesh, job)
    disarm(scheduler_mesh, prompt)  # the next attempt runs through
    victim = running_on(scheduler_mesh, job, (first, second))
    victim.signal(signal.SIGKILL)

    (done,) = wait_done([job], within=120)
    assert done["state"] == "SUCCEEDED"
    assert done["attempt"] == 2 and done["worker_id"] != victim.name
    assert_ended_once(scheduler_mesh, job, succeeded=True)
    assert "requeued " + job in scheduler_mesh.log("generation")


def test_a_stalled_worker_past_its_lease_has_its_late_result_rejected(
    scheduler_mesh: Any, workers: Any, customer: Any, submit: Any, wait_done: Any
) -> None:
    first, second = workers("w-stall-a", wait=False), workers("w-stall-b", wait=False)
    who = customer("pro")
    first.wait_serving()
    second.wait_serving()
    prompt = parking_prompt(scheduler_mesh, "fox", after_step=5)
    job = submit(who, steps=10, prompt=prompt)["id"]
    wait_parked(scheduler_mesh, job)
    disarm(scheduler_mesh, prompt)  # the next attempt runs through
    stalled = running_on(scheduler_mesh, job, (first, second))
    stalled.signal(signal.SIGSTOP)  # a long GC pause, a frozen VM, a stuck driver

    wait_for(lambda: row(scheduler_mesh, job)["attempt"] == 2, within=60, message="never redelivered")
    (done,) = wait_done([job], within=120)
    stalled.signal(signal.SIGCONT)
    wait_for(
        lambda: (
            "abandoned " + job in stalled.log() or f"result of {job} attempt 1 discarded" in stalled.log()
        ),
        within=60,
        message="the stalled worker's late result was not rejected",
    )
    # Either line is the worker's last act on this job (gpu_inference/worker.py: `_leave` after
    # closing the run, `_store_result` after its fenced write was refused), so the row read
    # below already reflects everything the resumed worker did.
    assert row(scheduler_mesh, job)["state"] == "SUCCEEDED" and row(scheduler_mesh, job)["attempt"] == 2
    assert done["worker_id"] != stalled.name
    assert_ended_once(scheduler_mesh, job, succeeded=True)


def test_redis_losing_its_data_delays_but_loses_nothing(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    worker = workers("w-flush", wait=False)
    who = customers("starter", "starter", "starter")
    worker.wait_serving()
    jobs = [submit(user, steps=40)["id"] for user in who for _ in range(2)]
    wait_for(lambda: any(row(scheduler_mesh, j)["state"] == "RUNNING" for j in jobs), message="nothing ran")
    scheduler_mesh.redis().flushall()  # a restart without persistence: queues, leases, logs gone

    rows = wait_done(jobs, within=180)
    assert {r["state"] for r in rows} == {"SUCCEEDED"}
    for job in jobs:
        assert resolutions(scheduler_mesh, job) == ["hold", "capture"]


def test_sigterm_hands_a_long_job_back_within_the_budget(
    scheduler_mesh: Any, workers: Any, customer: Any, submit: Any, wait_done: Any
) -> None:
    replacement = workers("w-replacement", wait=False)
    leaving = workers("w-spot", wait=False, PINGVAS_SHUTDOWN_GRACE_SECONDS="0.5")
    who = customer("pro")
    replacement.wait_serving()
    replacement.signal(signal.SIGSTOP)  # ready, but not claiming until the spot worker leaves
    leaving.wait_serving()
    # Parked after its first step, the job needs 149 times that step and the park: far more
    # than the 0.5 s budget.
    prompt = parking_prompt(scheduler_mesh, "fox", after_step=1)
    job = submit(who, steps=150, prompt=prompt)["id"]
    wait_parked(scheduler_mesh, job)
    disarm(scheduler_mesh, prompt)  # the replacement's attempt runs through
    replacement.signal(signal.SIGCONT)
    leaving.signal(signal.SIGTERM)  # a spot interruption notice, or a Karpenter drain
    # The job stays parked on this worker until its run is interrupted: the worker can only
    # exit by handing it back, never by finishing it.
    assert leaving.process.wait(30) == 0
    assert "handing it back" in leaving.log()

    (done,) = wait_done([job], within=120)
    assert (done["state"], done["worker_id"], done["attempt"], done["failures"]) == (
        "SUCCEEDED",
        "w-replacement",
        2,
        0,
    )
    assert resolutions(scheduler_mesh, job) == ["hold", "capture"]


def test_sigterm_finishes_a_job_that_fits_the_budget(
    scheduler_mesh: Any, workers: Any, customer: Any, submit: Any, wait_done: Any
) -> None:
    leaving = workers("w-spot-finish", wait=False, PINGVAS_SHUTDOWN_GRACE_SECONDS="60")
    who = customer("pro")
    leaving.wait_serving()
    job = submit(who, steps=20, prompt=parking_prompt(scheduler_mesh, "fox", after_step=2))["id"]
    wait_parked(scheduler_mesh, job)
    leaving.signal(signal.SIGTERM)
    wait_for(
        lambda: "shutting down: finishing" in leaving.log(), message="the worker did not decide to finish"
    )
    release(scheduler_mesh, job)
    assert leaving.process.wait(60) == 0
    (done,) = wait_done([job], within=30)
    assert (done["state"], done["worker_id"], done["attempt"]) == ("SUCCEEDED", "w-spot-finish", 1)


def test_cancel_racing_completion_ends_in_exactly_one_state(
    scheduler_mesh: Any, workers: Any, customer: Any, submit: Any, wait_done: Any
) -> None:
    worker = workers("w-race", wait=False)
    who = customer("studio")
    worker.wait_serving()
    rng = random.Random(7)
    jobs = []
    for _ in range(12):
        job = submit(who, steps=rng.choice([1, 2, 4]))["id"]
        time.sleep(rng.uniform(0, 0.3))
        httpx.post(
            f"{scheduler_mesh.gateway_url}/api/v1/generation/{job}/cancel", json={}, headers=who.headers
        )
        jobs.append(job)
    rows = {str(r["id"]): r for r in wait_done(jobs)}
    for job in jobs:
        state = rows[job]["state"]
        assert state in ("SUCCEEDED", "CANCELLED")
        assert_ended_once(scheduler_mesh, job, succeeded=state == "SUCCEEDED")


def test_a_poison_job_is_dead_lettered_and_its_hold_released(
    scheduler_mesh: Any, workers: Any, customer: Any, submit: Any, wait_done: Any, models_dir: Any
) -> None:
    import shutil

    poisoned = models_dir / "poison-sd"
    if not poisoned.exists():
        shutil.copytree(models_dir / "tiny-sd", poisoned)
        (poisoned / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    worker = workers("w-poison", wait=False)
    # Into the mesh's models bucket, as an operator would push it: the catalog serves what it holds.
    pushed = scheduler_mesh.pingvas("models", "push", str(poisoned))
    assert pushed.returncode == 0, pushed.stderr
    who = customer("pro")
    worker.wait_serving()
    job = submit(who, model="poison-sd")["id"]
    (done,) = wait_done([job], within=120)
    assert done["state"] == "FAILED"
    assert done["attempt"] == 2
    assert_ended_once(scheduler_mesh, job, succeeded=False)

    # The user sees a stable code and a sentence naming the incident, never the exception's text
    # (it names the model's files); the worker's log holds the detail under that incident.
    seen = httpx.get(f"{scheduler_mesh.gateway_url}/api/v1/generation/{job}", headers=who.headers).json()
    incident = done["incident_id"]
    assert (done["failure_code"], seen["failureCode"], seen["incidentId"]) == (
        "MODEL_LOAD_FAILED",
        "MODEL_LOAD_FAILED",
        incident,
    )
    assert seen["failureReason"] == f"The GPU workers could not load the model. (incident {incident})"
    detail = next(line for line in worker.log().splitlines() if f"incident {incident}" in line)
    assert "MODEL_LOAD_FAILED" in detail and job in detail
    assert "Traceback (most recent call last)" in worker.log().split(f"incident {incident}", 1)[1]
