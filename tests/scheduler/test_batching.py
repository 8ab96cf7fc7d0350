"""Batching: queued jobs that share model, size, steps and guidance run as one pipeline call on a
worker allowed to batch, and each member keeps its own progress stream, cancellation and bill."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image
from support.failpoints import parking_prompt, wait_parked
from support.generations import assert_ended_once, event_kinds, images_of

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]


def progress_events(mesh: Any, generation_id: str) -> int:
    return sum(kind == "progress" for _, kind in event_kinds(mesh, generation_id))


def test_jobs_sharing_settings_run_as_one_call(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    alice, bob, cheaper = customers("studio", "studio", "pro")
    together = [submit(alice, steps=3)["id"], submit(bob, steps=3)["id"], submit(alice, steps=3)["id"]]
    other_steps = submit(alice, steps=2)["id"]
    lower_band = submit(cheaper, steps=3)["id"]

    workers("w-batch", PINGVAS_MAX_BATCH="4")
    rows = {str(r["id"]): r for r in wait_done([*together, other_steps, lower_band])}

    assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
    # One call's wall time is split evenly among its members, to the last bit; separate runs
    # never time the same.
    assert len({rows[job]["gpu_seconds"] for job in together}) == 1
    assert rows[other_steps]["gpu_seconds"] != rows[together[0]]["gpu_seconds"]
    assert rows[lower_band]["gpu_seconds"] != rows[together[0]]["gpu_seconds"]
    assert len({rows[job]["seed"] for job in together}) == 3
    for job in together:
        assert progress_events(scheduler_mesh, job) == 3
        assert_ended_once(scheduler_mesh, job, succeeded=True)
        assert rows[job]["credits_charged"] > 0


def test_cancelling_one_member_leaves_the_rest_of_the_batch_running(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    members = customers("studio", "studio", "studio")
    # The member to cancel holds the whole batch after step 3; its cancel ends the park.
    prompts = ["fox", parking_prompt(scheduler_mesh, "fox", after_step=3), "fox"]
    jobs = [submit(who, steps=150, prompt=prompt)["id"] for who, prompt in zip(members, prompts, strict=True)]
    workers("w-batch-cancel", PINGVAS_MAX_BATCH="4")
    wait_parked(scheduler_mesh, jobs[1])

    cancelled = httpx.post(
        f"{scheduler_mesh.gateway_url}/api/v1/generation/{jobs[1]}/cancel",
        json={},
        headers=members[1].headers,
    )

    assert cancelled.status_code == 200, cancelled.text
    rows = {str(r["id"]): r for r in wait_done(jobs)}
    assert [rows[job]["state"] for job in jobs] == ["SUCCEEDED", "CANCELLED", "SUCCEEDED"]
    # The cancelled member left at a step boundary, long before the batch's last step...
    assert progress_events(scheduler_mesh, jobs[1]) <= 4
    assert_ended_once(scheduler_mesh, jobs[1], succeeded=False)
    # ...and its cancellation was final before the others finished.
    cancelled_at = event_kinds(scheduler_mesh, jobs[1])[-1]
    assert cancelled_at[1] == "cancelled"
    for job in (jobs[0], jobs[2]):
        succeeded_at = event_kinds(scheduler_mesh, job)[-1]
        assert succeeded_at[1] == "succeeded"
        assert stream_time(cancelled_at[0]) < stream_time(succeeded_at[0])
        assert progress_events(scheduler_mesh, job) == 150
        assert_ended_once(scheduler_mesh, job, succeeded=True)
    assert rows[jobs[0]]["gpu_seconds"] == rows[jobs[2]]["gpu_seconds"]


def test_an_image_does_not_depend_on_a_long_prompt_it_could_be_batched_with(
    scheduler_mesh: Any, workers: Any, customers: Any, submit: Any, wait_done: Any
) -> None:
    """One call pads every member's prompt conditioning to the longest; a prompt past 77 tokens
    would so change the images of the short ones batched with it. The worker runs members of
    one conditioning length together and hands the others back for a call of their own."""
    alice, bob, carol = customers("studio", "studio", "studio")
    short = submit(alice, steps=2, prompt="a fox", seed=5)["id"]
    long = submit(bob, steps=2, prompt=", ".join(["a red fox asleep in deep fresh snow"] * 12), seed=6)["id"]
    worker = workers("w-batch-lengths", PINGVAS_MAX_BATCH="4")
    rows = {str(r["id"]): r for r in wait_done([short, long])}
    alone = submit(carol, steps=2, prompt="a fox", seed=5)["id"]
    rows |= {str(r["id"]): r for r in wait_done([alone])}

    assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
    # Claimed together, run apart: the long prompt was handed back without counting an attempt.
    assert "their prompts condition at other lengths" in worker.log()
    assert sorted([rows[long]["attempt"], rows[short]["attempt"]]) == [1, 2]
    assert rows[short]["gpu_seconds"] != rows[long]["gpu_seconds"]
    bucket = scheduler_mesh.s3()

    def pixels(generation_id: str) -> bytes:
        (key,) = images_of(scheduler_mesh, generation_id)
        png = bucket.get_object(Bucket="pingvas-studio-images", Key=key)["Body"].read()
        return Image.open(io.BytesIO(png)).convert("RGB").tobytes()

    assert pixels(short) == pixels(alone), "the short prompt's image is the one it makes alone"


def stream_time(entry_id: str) -> tuple[int, int]:
    milliseconds, sequence = entry_id.split("-")
    return int(milliseconds), int(sequence)
