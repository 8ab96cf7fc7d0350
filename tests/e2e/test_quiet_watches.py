"""A watch whose job waits longer than a proxy's idle timeout stays open: the generation service
re-sends `queued` within it, on native gRPC, gRPC-Web and REST/SSE alike.

The mesh runs the gateway's stream idle timeout at 5 s and the re-send at 0.5 s (3600 s and 15 s
in production; AWS load balancers idle out at 60 s). A silent stream, the watch of a job held
mid-run, is reset by the gateway at that timeout: the control that shows the timeout is real.
The waiting watches then outlive several more timeouts, and still get their job's end."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc
from support.failpoints import FAILPOINTS_ENV, parking_prompt, release, wait_parked
from support.mesh import MeshStarter, RunningMesh

pytestmark = pytest.mark.integration

# Ten re-sends within one idle timeout: a loaded CI machine may delay a re-send by a second or
# two, never by five.
IDLE_TIMEOUT_SECONDS = 5.0
RESEND_SECONDS = 0.5
# Re-sent `queued` events each watch must get after the silent control was reset: together they
# span three more idle timeouts.
RESENDS_AFTER_RESET = int(3 * IDLE_TIMEOUT_SECONDS / RESEND_SECONDS)
REQUEST = {"width": 64, "height": 64, "steps": 2, "seed": 3}
WATCH_PATH = "/pingvas.generation.v1.GenerationService/WatchGeneration"


@pytest.fixture(scope="module")
def quiet_mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    with own_mesh(
        "quiet-watches",
        {
            "PINGVAS_GATEWAY_STREAMING_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT_SECONDS),
            "PINGVAS_WATCH_QUEUED_RESEND_SECONDS": str(RESEND_SECONDS),
            **FAILPOINTS_ENV,
        },
    ) as running:
        yield running


@dataclass
class Watch:
    """One stream's events, as their kinds, read on a thread of its own; `error` is how the
    stream broke, if it did."""

    kinds: list[str] = field(default_factory=list)
    error: str | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str) -> None:
        with self.lock:
            self.kinds.append(kind)

    def count(self, kind: str) -> int:
        with self.lock:
            return self.kinds.count(kind)

    def follow(self, events: Callable[[], Iterator[str]]) -> Watch:
        def read() -> None:
            try:
                for kind in events():
                    self.add(kind)
            except Exception as error:  # the gateway's reset, as each protocol reports it
                self.error = repr(error)
            finally:
                self.ended.set()

        threading.Thread(target=read, daemon=True).start()
        return self


def native_events(channel: grpc.Channel, account: Any, generation_id: str) -> Iterator[str]:
    stub = pb_grpc.GenerationServiceStub(channel)
    call = stub.WatchGeneration(
        pb.WatchGenerationRequest(generation_id=generation_id), metadata=account.metadata
    )
    for event in call:
        yield str(event.WhichOneof("event"))


def grpc_web_events(gateway_url: str, account: Any, generation_id: str) -> Iterator[str]:
    body = pb.WatchGenerationRequest(generation_id=generation_id).SerializeToString()
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **account.headers}
    with (
        httpx.Client(base_url=gateway_url, timeout=httpx.Timeout(60, read=None)) as client,
        client.stream(
            "POST", WATCH_PATH, content=b"\x00" + struct.pack(">I", len(body)) + body, headers=headers
        ) as reply,
    ):
        buffer = b""
        for chunk in reply.iter_bytes():
            buffer += chunk
            while len(buffer) >= 5 and len(buffer) >= 5 + struct.unpack(">I", buffer[1:5])[0]:
                flags, length = buffer[0], struct.unpack(">I", buffer[1:5])[0]
                frame, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                if flags & 0x80:  # trailers: the stream's end
                    assert b"grpc-status:0" in frame.replace(b" ", b""), frame
                    return
                yield str(pb.WatchGenerationResponse.FromString(frame).WhichOneof("event"))
    raise ConnectionError("the gRPC-Web stream ended without trailers")


def sse_events(gateway_url: str, account: Any, generation_id: str) -> Iterator[str]:
    with (
        httpx.Client(base_url=gateway_url, timeout=httpx.Timeout(60, read=None)) as client,
        client.stream("GET", f"/api/v1/generation/{generation_id}/events", headers=account.headers) as stream,
    ):
        assert stream.status_code == 200, stream.read()
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json_format.ParseDict(json.loads(line[len("data: ") :]), pb.WatchGenerationResponse())
                yield str(event.WhichOneof("event"))


def wait_until(condition: Callable[[], bool], what: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_waiting_watches_outlive_the_gateways_idle_timeout_on_every_protocol(quiet_mesh: RunningMesh) -> None:
    from support.accounts import dev_login

    mesh = quiet_mesh
    # A Free user runs one job at a time: while the first is held mid-run, the second waits.
    account = dev_login(mesh.gateway_url, "quiet")
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as rest:
        held_prompt = parking_prompt(mesh, "a lantern in a storm", after_step=1)
        held = rest.post(
            "/api/v1/generation/create", json={**REQUEST, "prompt": held_prompt}, headers=account.headers
        )
        wait_parked(mesh, held.json()["id"])
        waiting = rest.post(
            "/api/v1/generation/create", json={**REQUEST, "prompt": "a quiet queue"}, headers=account.headers
        )
    held_id, waiting_id = held.json()["id"], waiting.json()["id"]

    with grpc.insecure_channel(mesh.gateway_target) as channel:
        silent = Watch().follow(lambda: native_events(channel, account, held_id))
        watches = {
            "grpc": Watch().follow(lambda: native_events(channel, account, waiting_id)),
            "grpc-web": Watch().follow(lambda: grpc_web_events(mesh.gateway_url, account, waiting_id)),
            "sse": Watch().follow(lambda: sse_events(mesh.gateway_url, account, waiting_id)),
        }

        # The held job sends nothing while parked: the gateway resets its watch.
        assert silent.ended.wait(timeout=120), "the silent watch was never reset by the gateway"
        assert silent.error is not None and silent.kinds[-1] == "progress", (silent.kinds, silent.error)
        at_reset = {name: watch.count("queued") for name, watch in watches.items()}
        for name, watch in watches.items():
            wait_until(
                lambda watch=watch, name=name: (
                    watch.count("queued") >= at_reset[name] + RESENDS_AFTER_RESET or watch.ended.is_set()
                ),
                f"{name}: too few re-sent `queued` events",
            )
            assert not watch.ended.is_set(), f"{name} ended while its job waited: {watch.error}"

        release(mesh, held_id)
        for name, watch in watches.items():
            assert watch.ended.wait(timeout=120), f"{name} never ended"
            assert watch.error is None, f"{name}: {watch.error}"
            kinds = watch.kinds
            assert kinds[-1] == "succeeded", (name, kinds)
            assert set(kinds[: kinds.index("started")]) == {"queued"}, (name, kinds)
