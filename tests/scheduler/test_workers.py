"""The scheduler with real worker processes on the real mesh: bands, aging, caps, affinity and
backpressure, observed through PostgreSQL's record of which worker started what, when."""

from __future__ import annotations

import itertools
import json
import signal
import time
from typing import Any

import pytest
from support.failpoints import is_parked, parking_prompt, release, wait_parked
from support.generations import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]


@pytest.fixture
def mesh(scheduler_mesh: Any) -> Any:
    """The ledger check and other shared fixtures look at this test's mesh."""
    return scheduler_mesh


def occupy(worker: Any, submit: Any, who: Any, scheduler_mesh: Any) -> dict[str, Any]:
    """A job parked on `worker` while the test queues the jobs it wants ordered; the test
    releases it once they are queued."""
    blocker = submit(who, steps=2, prompt=parking_prompt(scheduler_mesh, "a blocker", after_step=1))
    wait_parked(scheduler_mesh, blocker["id"])
    return blocker


def start_order(rows: list[dict[str, Any]]) -> list[str]:
    return [str(r["id"]) for r in sorted(rows, key=lambda r: r["started_at"])]


def test_priority_bands_under_load(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    worker = workers("w-priority", wait=False)
    # Sign-ups first: the queue must fill while the blocker runs.
    starter, pro, studio, enterprise = customers("starter", "pro", "studio", "enterprise")
    worker.wait_serving()
    blocker = occupy(worker, submit, enterprise, scheduler_mesh)
    starter_jobs = [submit(starter)["id"] for _ in range(5)]
    pro_jobs = [submit(pro)["id"] for _ in range(2)]
    studio_jobs = [submit(studio)["id"]]
    release(scheduler_mesh, blocker["id"])
    rows = wait_done([*starter_jobs, *pro_jobs, *studio_jobs, blocker["id"]])
    order = start_order([r for r in rows if str(r["id"]) != blocker["id"]])
    assert order == studio_jobs + pro_jobs + starter_jobs
    assert all(r["state"] == "SUCCEEDED" for r in rows)


def test_users_take_turns_within_a_band(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    worker = workers("w-fair", wait=False)
    heavy, light_a, light_b, enterprise = customers("pro", "pro", "pro", "enterprise")
    worker.wait_serving()
    blocker = occupy(worker, submit, enterprise, scheduler_mesh)
    heavy_jobs = [submit(heavy)["id"] for _ in range(6)]
    light_jobs = [submit(light_a)["id"], submit(light_b)["id"]]
    release(scheduler_mesh, blocker["id"])
    rows = wait_done([*heavy_jobs, *light_jobs, blocker["id"]])
    order = start_order([r for r in rows if str(r["id"]) != blocker["id"]])
    # 100 jobs from one user never block another user's single job: each light job starts
    # before the heavy user's third.
    for job in light_jobs:
        assert order.index(job) < order.index(heavy_jobs[2])


def test_a_free_job_past_its_bound_goes_before_waiting_studio_work(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    worker = workers("w-aging", wait=False)
    *studio, free_user = customers("studio", "studio", "studio", "free")
    worker.wait_serving()
    # Studio work the worker cannot reach, held back by a parked job, rather than work arriving
    # faster than it drains, which would hold only while the machine is slow enough.
    blocker = occupy(worker, submit, studio[0], scheduler_mesh)
    studio_jobs = [submit(who, steps=10)["id"] for who in studio for _ in range(3)]
    free_job = submit(free_user, steps=2)["id"]
    # The free band's bound is 4 s here: past it, the free job goes before every band.
    wait_for(
        lambda: scheduler_mesh.sql(
            "SELECT now() - created_at > interval '4.5 seconds' AS aged FROM generations WHERE id = %s",
            free_job,
        )[0]["aged"],
        within=30,
    )
    release(scheduler_mesh, blocker["id"])
    rows = wait_done([free_job, *studio_jobs, blocker["id"]], within=240)
    assert start_order([r for r in rows if str(r["id"]) != blocker["id"]])[0] == free_job
    assert "(free band, aged)" in worker.log()


def test_per_user_concurrency_caps(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    started = [workers("w-cap-1", wait=False), workers("w-cap-2", wait=False)]
    capped, other = customers("free", "free")
    for worker in started:
        worker.wait_serving()
    # The capped user's first job is parked while the rest are queued: a second worker is free.
    capped_jobs = [submit(capped, steps=20, prompt=parking_prompt(scheduler_mesh, "fox", after_step=1))["id"]]
    wait_parked(scheduler_mesh, capped_jobs[0])
    capped_jobs += [submit(capped, steps=20)["id"] for _ in range(2)]
    other_job = submit(other, steps=20)["id"]
    wait_done([other_job])
    release(scheduler_mesh, capped_jobs[0])
    rows = {str(r["id"]): r for r in wait_done([*capped_jobs, other_job])}
    spans = sorted((rows[j]["started_at"], rows[j]["finished_at"]) for j in capped_jobs)
    for (_, earlier_end), (later_start, _) in itertools.pairwise(spans):
        assert later_start >= earlier_end, "a free user never runs two jobs at once"
    # The capped user's waiting jobs did not hold the other user back.
    assert rows[other_job]["started_at"] < spans[-1][0]


def test_each_worker_gets_jobs_for_its_warm_model(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    sd = workers("w-sd", preload="tiny-sd", wait=False)
    sd_b = workers("w-sd-b", preload="tiny-sd-b", wait=False)
    users = customers("pro", "pro", "pro", "pro")
    for worker in (sd, sd_b):
        worker.wait_serving()
        worker.signal(signal.SIGSTOP)  # both see the whole queue when they resume
    # Every job parks after its first step, so each worker holds one job at a time and the test
    # chooses when it claims again: an idle worker left alone with only cold jobs takes them
    # after `affinity_max_skips` passes, which is right, but not what this test is about.
    jobs = {
        model: [
            submit(users[i], model=model, steps=4, prompt=parking_prompt(scheduler_mesh, "fox", 1))["id"]
            for i in indexes
        ]
        for model, indexes in (("tiny-sd", (0, 1)), ("tiny-sd-b", (2, 3)))
    }
    for worker in (sd, sd_b):
        worker.signal(signal.SIGCONT)

    def next_parked(model: str) -> str:
        """The job of `model` parked now, once exactly one of them is."""
        deadline = time.monotonic() + 120
        while len(parked := [job for job in jobs[model] if is_parked(scheduler_mesh, job)]) != 1:
            assert time.monotonic() < deadline, f"no {model} job parked alone: {parked}"
            time.sleep(0.05)
        return parked[0]

    # Each worker's first claim takes a warm job, and so does the claim after it finishes one
    # while the other worker still holds its job.
    first_sd, first_sd_b = next_parked("tiny-sd"), next_parked("tiny-sd-b")
    release(scheduler_mesh, first_sd)
    second_sd = next(job for job in jobs["tiny-sd"] if job != first_sd)
    wait_parked(scheduler_mesh, second_sd)
    release(scheduler_mesh, first_sd_b)
    wait_parked(scheduler_mesh, next(job for job in jobs["tiny-sd-b"] if job != first_sd_b))
    for job in (second_sd, *(job for job in jobs["tiny-sd-b"] if job != first_sd_b)):
        release(scheduler_mesh, job)

    rows = {str(r["id"]): r for r in wait_done([*jobs["tiny-sd"], *jobs["tiny-sd-b"]])}
    assert {rows[j]["worker_id"] for j in jobs["tiny-sd"]} == {"w-sd"}
    assert {rows[j]["worker_id"] for j in jobs["tiny-sd-b"]} == {"w-sd-b"}
    assert "loaded model tiny-sd-b" not in sd.log() and "loaded model tiny-sd in" not in sd_b.log()
    # Workers refresh their advertisement about once a second.
    deadline = time.monotonic() + 10
    while True:
        advertised = scheduler_mesh.redis().hgetall("worker:w-sd")
        metrics = json.loads(advertised[b"metrics"])
        if metrics["hits"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert json.loads(advertised[b"loaded"]) == ["tiny-sd"]
    assert metrics["loads"] == 1 and metrics["hits"] >= 2 and metrics["load_seconds"] > 0


def test_a_full_band_is_429_and_charges_nothing(scheduler_mesh: Any, customer: Any, submit: Any) -> None:
    import httpx

    who = customer("free")
    # No worker runs: the free band (depth 8 here) fills up.
    queued_before = scheduler_mesh.redis().zcard("queue:free:waiting")
    for _ in range(8 - queued_before):
        submit(who)
    reply = httpx.post(
        f"{scheduler_mesh.gateway_url}/api/v1/generation/create",
        json={"prompt": "fox", "width": 64, "height": 64, "steps": 2},
        headers=who.headers,
        timeout=30,
    )
    assert reply.status_code == 429, reply.text
    assert reply.json()["details"][0]["reason"] == "QUEUE_FULL"
    holds = scheduler_mesh.sql(
        "SELECT count(*) AS n FROM credit_entries WHERE user_id = %s AND kind = 'hold'", who.user_id
    )[0]["n"]
    jobs = scheduler_mesh.sql("SELECT count(*) AS n FROM generations WHERE user_id = %s", who.user_id)[0]["n"]
    assert holds == jobs == 8 - queued_before
    # Leave the band empty for the next test: cancel what is waiting.
    for row in scheduler_mesh.sql("SELECT id FROM generations WHERE user_id = %s", who.user_id):
        httpx.post(
            f"{scheduler_mesh.gateway_url}/api/v1/generation/{row['id']}/cancel", json={}, headers=who.headers
        )
