"""Every server speaks the standard health and reflection protocols, dev login exists only
where it is turned on (prod refuses to start with it: tests/tenancy/test_safe_start.py), and a
ready server keeps what start-up built out of the garbage collector's full collections."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import socket
import subprocess
import sys
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pingvas.user.v1 import user_service_pb2 as user_pb
from pingvas.user.v1 import user_service_pb2_grpc as user_grpc

from services.common.server import GC_THRESHOLDS, GrpcServer, collection_paused, serve_until_terminated
from services.embedded.process import wait_grpc_serving

pytestmark = pytest.mark.integration

SERVICES = {
    "user": "pingvas.user.v1.UserService",
    "billing": "pingvas.billing.v1.BillingService",
    "generation": "pingvas.generation.v1.GenerationService",
    "gallery": "pingvas.gallery.v1.GalleryService",
}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_reports_health_and_reflects_its_contract(mesh: Any, name: str) -> None:
    port = json.loads((mesh.home / "run" / "mesh.json").read_text())["ports"][name]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICES[name]):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        listed = {service.name for service in answer.list_services_response.service}
        assert {SERVICES[name], "grpc.health.v1.Health"} <= listed


def test_dev_login_is_refused_where_it_is_off(mesh: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **mesh.env,
        **json.loads((mesh.home / "secrets.json").read_text()),
        "PINGVAS_ENV": "dev",
        "PINGVAS_DEV_LOGIN": "false",
        "PINGVAS_PORT": str(port),
        "DATABASE_URL": mesh.app_database_url,
        "SYSTEM_DATABASE_URL": mesh.system_database_url,
        "REDIS_URL": mesh.redis_url,
        "PINGVAS_DB_SCHEMA": mesh.schema,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "services.user"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_grpc_serving("user", port, server, 60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as caught:
            user_grpc.UserServiceStub(channel).DevLogin(
                user_pb.DevLoginRequest(email="prod@example.com"), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert mesh.sql("SELECT id FROM users WHERE email = 'prod@example.com'") == []
    finally:
        server.terminate()
        assert server.wait(30) == 0, "SIGTERM is a clean exit"


class _Pipeline:
    """Stands for what a worker's preload builds: long-lived objects in reference cycles."""

    def __init__(self) -> None:
        self.parts = [{"owner": self} for _ in range(100)]


async def test_what_start_up_built_is_frozen_once_the_server_is_ready() -> None:
    """A worker's preloaded pipelines and a generation service's modules live as long as the
    process; each full collection walked all of them (about 0.6 s in a worker) and freed nothing.
    `serve_until_terminated` freezes them once `ready` passes, and makes full collections rare."""
    built: list[_Pipeline] = []
    seen: dict[str, Any] = {}

    async def ready() -> None:
        built.append(_Pipeline())

    async def look_then_stop(stop: asyncio.Event) -> None:
        tracked = {id(part) for part in gc.get_objects()}
        seen["collectable"] = [id(part) in tracked for part in [built[0], *built[0].parts]]
        seen["thresholds"] = gc.get_threshold()
        # A cycle made while serving is still the collector's to free.
        made_later = _Pipeline()
        seen["made_later"] = id(made_later) in {id(part) for part in gc.get_objects()}
        stop.set()

    thresholds = gc.get_threshold()
    loop = asyncio.get_running_loop()
    try:
        await serve_until_terminated(
            GrpcServer(host="127.0.0.1", port=0), ready=ready, grace=0, background=[look_then_stop]
        )
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    assert seen["collectable"] == [False] * 101
    assert seen["thresholds"] == GC_THRESHOLDS
    assert seen["made_later"] is True


def test_collection_pauses_for_a_block_and_resumes_as_it_was() -> None:
    """A worker imports torch and diffusers with collection paused: nothing the block builds is
    collected meanwhile, even past the young generation's threshold, and afterwards the collector
    runs again, or stays off where it was off, also when the block raises."""
    assert gc.isenabled()
    with collection_paused():
        assert not gc.isenabled()
        collections_before = gc.get_stats()[0]["collections"]
        built = [_Pipeline() for _ in range(2 * gc.get_threshold()[0])]
        collections_after = gc.get_stats()[0]["collections"]
    assert collections_after == collections_before
    assert gc.isenabled()
    assert len(built) == 2 * gc.get_threshold()[0]

    with pytest.raises(ImportError), collection_paused():
        raise ImportError("a module that is not there")
    assert gc.isenabled()

    gc.disable()
    try:
        with collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
