"""WatchGeneration's replay and resume semantics, cancellation, and signed image URLs."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import grpc
import httpx
import pytest
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc
from support.failpoints import parking_prompt, release, wait_parked
from support.generations import as_events, assert_watch_order, reached_step

from services.common.signing import ImageUrlSigner

pytestmark = pytest.mark.integration

REQUEST = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "seed": 99}


def kind(event: dict[str, Any]) -> str:
    return next(
        k for k in ("queued", "started", "progress", "succeeded", "failed", "cancelled") if k in event
    )


def watch(rest: httpx.Client, account: Any, generation_id: str, **params: Any) -> list[dict[str, Any]]:
    with rest.stream(
        "GET", f"/api/v1/generation/{generation_id}/events", params=params, headers=account.headers
    ) as stream:
        assert stream.status_code == 200
        return [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]


def wait_for_state(
    rest: httpx.Client, account: Any, generation_id: str, state: str, within: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        generation = rest.get(f"/api/v1/generation/{generation_id}", headers=account.headers).json()
        if generation["state"] == f"GENERATION_STATE_{state}":
            return generation
        time.sleep(0.05)
    raise AssertionError(f"{generation_id} never reached {state}: {generation}")


def test_a_finished_generation_streams_only_its_terminal_event(new_account: Any, rest: httpx.Client) -> None:
    account = new_account("late")
    created = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "steps": 3}, headers=account.headers
    ).json()
    wait_for_state(rest, account, created["id"], "SUCCEEDED")

    events = watch(rest, account, created["id"])
    assert [kind(e) for e in events] == ["succeeded"]
    assert events[0]["succeeded"]["imageUrl"].startswith("http")


def test_a_watcher_resuming_after_its_job_finished_gets_the_events_it_missed(
    new_account: Any, rest: httpx.Client
) -> None:
    """A stream cut after `started` and reopened once the job is over: what followed `started`
    is still in the log, and the resumed watch gets all of it, as it would had the job still
    been running when it came back."""
    account = new_account("resume-late")
    created = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "steps": 4}, headers=account.headers
    ).json()
    wait_for_state(rest, account, created["id"], "SUCCEEDED")

    resumed = watch(rest, account, created["id"], afterSequence=2)  # queued 1, started 2
    assert [(kind(e), int(e["sequence"])) for e in resumed] == [
        ("progress", 3),
        ("progress", 4),
        ("progress", 5),
        ("progress", 6),
        ("succeeded", 7),
    ]


def test_a_late_watcher_replays_from_the_start(mesh: Any, new_account: Any, rest: httpx.Client) -> None:
    account = new_account("mid")
    prompt = parking_prompt(mesh, "a lighthouse at dusk", after_step=3)
    created = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "prompt": prompt, "steps": 6}, headers=account.headers
    ).json()
    wait_parked(mesh, created["id"])  # three steps' progress is stored before this watcher connects

    events: list[dict[str, Any]] = []
    with rest.stream("GET", f"/api/v1/generation/{created['id']}/events", headers=account.headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 5:  # the replay, up to the parked step
                    release(mesh, created["id"])
    assert_watch_order(as_events(events), steps=6, replayed=5)


def test_a_reconnecting_watcher_resumes_after_its_last_sequence(
    mesh: Any, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("resume")
    # Held after step 3 until the first connection has dropped, so the job is still running then.
    prompt = parking_prompt(mesh, "a lighthouse at dusk", after_step=3)
    created = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "prompt": prompt, "steps": 10}, headers=account.headers
    ).json()
    seen: list[dict[str, Any]] = []
    # The first connection drops at the parked step, as a flaky network would.
    with rest.stream("GET", f"/api/v1/generation/{created['id']}/events", headers=account.headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if reached_step(as_events(seen), 3):
                    break
    release(mesh, created["id"])
    resumed = watch(rest, account, created["id"], afterSequence=seen[-1]["sequence"])

    assert int(resumed[0]["sequence"]) > int(seen[-1]["sequence"]), "only what followed"
    # No event lost or repeated across the reconnect: the two halves make one contract order.
    assert_watch_order(as_events(seen + resumed), steps=10)


def test_the_terminal_event_survives_a_lost_event_log(
    mesh: Any, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("lost-log")
    created = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "steps": 2}, headers=account.headers
    ).json()
    finished = wait_for_state(rest, account, created["id"], "SUCCEEDED")
    # Redis forgets the log (eviction, restart without persistence); PostgreSQL still knows.
    mesh.redis().delete(f"events:{created['id']}", f"events:{created['id']}:seq")

    (event,) = watch(rest, account, created["id"])
    assert int(event["succeeded"]["creditsCharged"]) == int(finished["creditsCharged"])
    assert int(event["succeeded"]["seed"]) == 99


def test_cancel_while_queued_releases_the_hold(mesh: Any, new_account: Any, rest: httpx.Client) -> None:
    account = new_account("cancel-queued")
    # The blocker holds the user's one running slot until the cancel is done.
    blocker = rest.post(
        "/api/v1/generation/create",
        json={**REQUEST, "prompt": parking_prompt(mesh, "a blocker", after_step=1), "steps": 2},
        headers=account.headers,
    ).json()
    wait_parked(mesh, blocker["id"])
    queued = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "steps": 2}, headers=account.headers
    ).json()

    cancelled = rest.post(f"/api/v1/generation/{queued['id']}/cancel", json={}, headers=account.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "GENERATION_STATE_CANCELLED"
    assert [kind(e) for e in watch(rest, account, queued["id"])] == ["cancelled"]
    assert mesh.sql(
        "SELECT kind FROM credit_entries WHERE reference = %s ORDER BY id", f"generation:{queued['id']}"
    ) == [{"kind": "hold"}, {"kind": "release"}]
    release(mesh, blocker["id"])
    wait_for_state(rest, account, blocker["id"], "SUCCEEDED")
    (row,) = mesh.sql("SELECT state, attempt FROM generations WHERE id = %s", queued["id"])
    assert (row["state"], row["attempt"]) == ("CANCELLED", 0), "a cancelled job never reaches a worker"


def test_cancel_while_running_stops_within_a_step(
    mesh: Any, new_account: Any, rest: httpx.Client, gateway_channel: grpc.Channel
) -> None:
    account = new_account("cancel-running")
    # Parked after step 5, so the cancel lands mid-run however fast the steps are; the cancel
    # itself ends the park.
    prompt = parking_prompt(mesh, "a lighthouse at dusk", after_step=5)
    created = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "prompt": prompt, "steps": 150}, headers=account.headers
    ).json()
    events: list[Any] = []

    def follow() -> None:
        stub = pb_grpc.GenerationServiceStub(gateway_channel)
        for event in stub.WatchGeneration(
            pb.WatchGenerationRequest(generation_id=created["id"]), metadata=account.metadata, timeout=120
        ):
            events.append(event)

    watcher = threading.Thread(target=follow)
    watcher.start()
    wait_parked(mesh, created["id"])
    rest.post(f"/api/v1/generation/{created['id']}/cancel", json={}, headers=account.headers)
    watcher.join(60)

    steps = [e.progress.step for e in events if e.WhichOneof("event") == "progress"]
    assert events[-1].WhichOneof("event") == "cancelled"
    assert events[-1].cancelled.was_running
    assert steps[-1] <= 6, "the run stopped within a step of the cancel"
    (row,) = mesh.sql("SELECT state, credits_charged FROM generations WHERE id = %s", created["id"])
    assert (row["state"], row["credits_charged"]) == ("CANCELLED", 0)
    assert mesh.sql(
        "SELECT kind FROM credit_entries WHERE reference = %s ORDER BY id", f"generation:{created['id']}"
    ) == [{"kind": "hold"}, {"kind": "release"}]


def test_signed_image_urls_open_one_image_until_they_expire(
    mesh: Any, new_account: Any, rest: httpx.Client
) -> None:
    """The gateway's own signed URLs (GetImageContent), served from the images bucket. The
    presigned S3 URLs that generations carry: tests/e2e/test_image_storage.py."""
    account, other = new_account("url-owner"), new_account("url-other")
    mine = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "steps": 1}, headers=account.headers
    ).json()
    theirs = rest.post(
        "/api/v1/generation/create", json={**REQUEST, "steps": 1}, headers=other.headers
    ).json()
    wait_for_state(rest, account, mine["id"], "SUCCEEDED")
    wait_for_state(rest, other, theirs["id"], "SUCCEEDED")
    # Minted with the deployment's own key, as a client that reaches only the gateway gets it.
    secret = json.loads((mesh.home / "secrets.json").read_text())["PINGVAS_URL_SIGNING_SECRET"]
    signer = ImageUrlSigner(secret, public_url=mesh.gateway_url, ttl_seconds=3600)
    url = signer.url(uuid.UUID(mine["id"]), uuid.UUID(account.user_id))
    served = httpx.get(url)
    assert served.status_code == 200
    (key,) = [
        row["object_key"] for row in mesh.sql("SELECT object_key FROM images WHERE id = %s", mine["id"])
    ]
    stored = mesh.s3().get_object(Bucket="pingvas-studio-images", Key=key)["Body"].read()
    assert served.content == stored and stored.startswith(b"\x89PNG")

    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def with_changes(path: str = parts.path, **changes: str) -> str:
        return urlunparse(parts._replace(path=path, query=urlencode({**query, **changes})))

    forged = "0" * len(query["signature"])
    assert httpx.get(with_changes(signature=forged)).status_code == 403
    assert httpx.get(with_changes(expires=str(int(query["expires"]) + 3600))).status_code == 403
    # My signature does not open someone else's image.
    assert httpx.get(with_changes(path=f"/api/v1/images/{theirs['id']}")).status_code == 403
    unsigned = httpx.get(urlunparse(parts._replace(query="")))
    assert unsigned.status_code == 400
    assert "signature" in unsigned.text

    # A correctly signed URL whose time is up.
    expired = signer.url(uuid.UUID(mine["id"]), uuid.UUID(account.user_id), now=time.time() - 7200)
    reply = httpx.get(expired)
    assert reply.status_code == 403
    assert "expired" in reply.text
