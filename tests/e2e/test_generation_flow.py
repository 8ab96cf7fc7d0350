"""The seed's image-generation sequence, end to end through Envoy, three ways: REST (with SSE),
native gRPC, and gRPC-Web (driven by `buf curl`, an independent client)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from PIL import Image
from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc
from pingvas.user.v1 import user_service_pb2 as user_pb
from pingvas.user.v1 import user_service_pb2_grpc as user_grpc
from support.failpoints import parking_prompt, release, wait_parked
from support.generations import as_events, assert_watch_order

REPO_ROOT = Path(__file__).resolve().parents[2]
BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"
STEPS = 6
REQUEST = {
    "prompt": "a red fox in snow",
    "model": "tiny-sd",
    "width": 64,
    "height": 64,
    "steps": STEPS,
    "seed": 1234,
}


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in response.iter_lines() if line.startswith("data: ")]


def create_and_watch_rest(
    mesh: Any, token: str, request: dict[str, Any], on_first_event: Callable[[], None]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as client:
        created = client.post("/api/v1/generation/create", json=request, headers=headers)
        assert created.status_code == 200, created.text
        generation = created.json()
        events = []
        with client.stream("GET", f"/api/v1/generation/{generation['id']}/events", headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
                    if len(events) == 1:
                        on_first_event()
    return generation, events


def create_and_watch_grpc(
    mesh: Any, token: str, request: dict[str, Any], on_first_event: Callable[[], None]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(mesh.gateway_target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        generation = stub.CreateGeneration(
            pb.CreateGenerationRequest(generation=json_format.ParseDict(request, resources.Generation())),
            metadata=metadata,
            timeout=30,
        )
        events = []
        for event in stub.WatchGeneration(
            pb.WatchGenerationRequest(generation_id=generation.id), metadata=metadata, timeout=120
        ):
            events.append(json_format.MessageToDict(event))
            if len(events) == 1:
                on_first_event()
    return json_format.MessageToDict(generation), events


def buf_curl_command(mesh: Any, method: str, body: dict[str, Any], token: str) -> list[str]:
    """gRPC-Web through Envoy's grpc_web filter, spoken by buf's own client."""
    return [
        str(BUF),
        "curl",
        "--protocol",
        "grpcweb",
        "--schema",
        "proto",
        "-H",
        f"authorization: Bearer {token}",
        "--data",
        json.dumps(body),
        f"{mesh.gateway_url}/{method}",
    ]


def json_messages(text: str) -> list[dict[str, Any]]:
    """buf curl's output: JSON messages one after another."""
    decoder = json.JSONDecoder()
    messages, text = [], text.strip()
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].lstrip()
    return messages


def create_and_watch_grpc_web(
    mesh: Any, token: str, request: dict[str, Any], on_first_event: Callable[[], None]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    created = subprocess.run(
        buf_curl_command(
            mesh, "pingvas.generation.v1.GenerationService/CreateGeneration", {"generation": request}, token
        ),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    (generation,) = json_messages(created.stdout)
    with tempfile.TemporaryFile("w+") as output, tempfile.TemporaryFile("w+") as errors:
        # buf curl prints each streamed message as it arrives: its first one says the watch is open.
        with subprocess.Popen(
            buf_curl_command(
                mesh,
                "pingvas.generation.v1.GenerationService/WatchGeneration",
                {"generationId": generation["id"]},
                token,
            ),
            cwd=REPO_ROOT,
            stdout=output,
            stderr=errors,
        ) as watcher:
            try:
                deadline = time.monotonic() + 120
                while os.fstat(output.fileno()).st_size == 0:
                    assert watcher.poll() is None, "buf curl's watch ended without an event"
                    assert time.monotonic() < deadline, "buf curl's watch showed no event"
                    time.sleep(0.05)
                on_first_event()
                assert watcher.wait(timeout=120) == 0, errors.seek(0) or errors.read()
            finally:
                watcher.kill()
        output.seek(0)
        events = json_messages(output.read())
    return generation, events


def dev_login_grpc(mesh: Any, email: str) -> str:
    with grpc.insecure_channel(mesh.gateway_target) as channel:
        reply = user_grpc.UserServiceStub(channel).DevLogin(user_pb.DevLoginRequest(email=email), timeout=30)
    return reply.access_token


PROTOCOLS: dict[
    str,
    Callable[[Any, str, dict[str, Any], Callable[[], None]], tuple[dict[str, Any], list[dict[str, Any]]]],
] = {
    "rest": create_and_watch_rest,
    "grpc": create_and_watch_grpc,
    "grpc-web": create_and_watch_grpc_web,
}


@pytest.mark.integration
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_generation_sequence_through_the_gateway(mesh: Any, new_account: Any, protocol: str) -> None:
    email = f"seed-flow-{protocol}@example.com"
    token = dev_login_grpc(mesh, email)
    (user,) = mesh.sql("SELECT id FROM users WHERE email = %s", email)
    (before,) = mesh.sql("SELECT balance, held FROM credit_accounts WHERE user_id = %s", user["id"])

    # Parked after step 1 until the watch has its first event: the watcher connects while the
    # job is unfinished however long the client takes to start (buf curl is a separate process).
    request = {**REQUEST, "prompt": parking_prompt(mesh, "a red fox in snow", after_step=1)}

    def release_once_watched() -> None:
        (row,) = mesh.sql("SELECT id FROM generations WHERE prompt = %s", request["prompt"])
        wait_parked(mesh, str(row["id"]))
        release(mesh, str(row["id"]))

    generation, events = PROTOCOLS[protocol](mesh, token, request, release_once_watched)

    assert generation["state"] == "GENERATION_STATE_QUEUED"
    # Events arrive in the contract's order: queued, started, progress (up to step 1 one by one,
    # as the job parked there), one terminal.
    assert_watch_order(as_events(events), steps=STEPS, replayed=3)
    assert int(events[0]["queued"]["position"]) >= 1
    assert events[1]["started"]["attempt"] == 1
    for progress in (event.progress for event in as_events(events)[2:-1]):
        assert progress.total_steps == STEPS
        assert Image.open(io.BytesIO(progress.preview)).format == "JPEG"
    succeeded = events[-1]["succeeded"]
    assert int(succeeded["seed"]) == 1234
    assert succeeded["gpuSeconds"] > 0
    charged = int(succeeded["creditsCharged"])
    assert charged >= 1

    # The presigned URL serves the PNG from the images bucket.
    image = httpx.get(succeeded["imageUrl"], timeout=30)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)

    # PostgreSQL holds the truth: the job row, the ledger; the object is in the images bucket.
    (row,) = mesh.sql("SELECT * FROM generations WHERE id = %s", generation["id"])
    assert row["state"] == "SUCCEEDED"
    assert row["attempt"] == 1
    assert row["credits_charged"] == charged <= row["credits_held"]
    created = row["created_at"].astimezone(UTC)
    expected_key = f"{user['id']}/{created:%Y}/{created:%m}/{generation['id']}.png"
    assert row["image_key"] == expected_key
    stored = mesh.s3().get_object(Bucket="pingvas-studio-images", Key=expected_key)["Body"].read()
    assert stored == image.content
    (after,) = mesh.sql("SELECT balance, held FROM credit_accounts WHERE user_id = %s", user["id"])
    assert after["balance"] == before["balance"] - charged
    assert after["held"] == before["held"] == 0
    entries = mesh.sql(
        "SELECT kind, amount, held_change FROM credit_entries WHERE reference = %s ORDER BY id",
        f"generation:{generation['id']}",
    )
    assert entries == [
        {"kind": "hold", "amount": 0, "held_change": row["credits_held"]},
        {"kind": "capture", "amount": -charged, "held_change": -row["credits_held"]},
    ]


@pytest.mark.integration
def test_second_generation_on_the_same_model_loads_nothing(
    mesh: Any, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("warm")
    for _ in range(2):
        created = rest.post(
            "/api/v1/generation/create", json={**REQUEST, "steps": 2}, headers=account.headers
        ).json()
        with rest.stream(
            "GET", f"/api/v1/generation/{created['id']}/events", headers=account.headers
        ) as stream:
            assert "succeeded" in sse_events(stream)[-1]
    worker_log = mesh.log("worker-1")
    assert worker_log.count("loaded model tiny-sd in") == 1
    assert "model tiny-sd already loaded" in worker_log


def test_a_prompt_compel_cannot_read_fails_alone_and_charges_nothing(
    mesh: Any, new_account: Any, rest: httpx.Client
) -> None:
    account = new_account("unreadable")
    # A blend with three weights for one prompt: compel refuses it, and no retry reads it better.
    created = rest.post(
        "/api/v1/generation/create",
        json={**REQUEST, "prompt": '("a red fox").blend(1, 2, 3)', "steps": 2},
        headers=account.headers,
    ).json()
    with rest.stream("GET", f"/api/v1/generation/{created['id']}/events", headers=account.headers) as stream:
        events = sse_events(stream)

    assert "failed" in events[-1] and not any("progress" in event for event in events), events
    generation = rest.get(f"/api/v1/generation/{created['id']}", headers=account.headers).json()
    assert (generation["state"], generation["failureCode"]) == ("GENERATION_STATE_FAILED", "INFERENCE_FAILED")
    assert generation["attempt"] == 1  # Failed for good at once, not retried.
    entries = mesh.sql(
        "SELECT kind FROM credit_entries WHERE reference = %s ORDER BY id", f"generation:{created['id']}"
    )
    assert [entry["kind"] for entry in entries] == ["hold", "release"]
    assert "unreadable prompt: while parsing Blend: mismatched" in mesh.log("worker-1")
