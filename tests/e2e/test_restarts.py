"""One crash is one restart, not an outage: `pingvas up` restarts a component that exits, with a
backoff, and only a component that keeps crashing stops the mesh.

These tests kill components with SIGKILL, so they run on meshes of their own, not the session's.
Jobs are held mid-run with the worker's failpoint, never by timing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from support.accounts import Account, dev_login
from support.failpoints import FAILPOINTS_ENV, disarm, parking_prompt, release, wait_parked
from support.generations import assert_ended_once, row, wait_for
from support.lemonsqueezy import LemonSqueezyServer
from support.mesh import MeshStarter, RunningMesh, start_mesh, stop_mesh

pytestmark = pytest.mark.integration

RESTART_ENV = {
    **FAILPOINTS_ENV,
    # A dead worker's lease lapses within seconds, and the reconciler looks often.
    "PINGVAS_SCHEDULER_LEASE_SECONDS": "3",
    "PINGVAS_RECONCILE_INTERVAL_SECONDS": "0.5",
    "PINGVAS_RESTART_BACKOFF_INITIAL_SECONDS": "0.2",
    "PINGVAS_RESTART_BACKOFF_MAX_SECONDS": "2",
}


@pytest.fixture(scope="module")
def restart_mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    with own_mesh("restart-home", {**RESTART_ENV}) as running:
        yield running


def component(mesh: RunningMesh, marker: str) -> psutil.Process:
    """The supervisor's live child whose command line contains `marker`."""
    (child,) = [
        child
        for child in psutil.Process(mesh.process.pid).children()
        if marker in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE
    ]
    return child


def restarted(mesh: RunningMesh, marker: str, old: psutil.Process) -> psutil.Process:
    """Wait for the supervisor to run `marker` again, as a new process."""

    def replaced() -> bool:
        try:
            return component(mesh, marker).pid != old.pid
        except (ValueError, psutil.Error):
            return False

    wait_for(replaced, within=120, message=f"{marker} was not restarted:\n{supervisor_log(mesh)}")
    return component(mesh, marker)


def supervisor_log(mesh: RunningMesh) -> str:
    return (mesh.home / "up.out").read_text(errors="replace")


def gateway_counter(mesh: RunningMesh, name: str) -> int:
    """One of Envoy's counters, from its admin interface."""
    config = json.loads((mesh.home / "run" / "envoy.yaml").read_text())
    port = config["admin"]["address"]["socket_address"]["port_value"]
    stats = httpx.get(f"http://127.0.0.1:{port}/stats", params={"filter": f"^{name}$"}, timeout=10).text
    return sum(int(line.split(": ")[1]) for line in stats.splitlines() if line.startswith(f"{name}: "))


def create(mesh: RunningMesh, account: Account, prompt: str, steps: int) -> str:
    created = httpx.post(
        f"{mesh.gateway_url}/api/v1/generation/create",
        json={"prompt": prompt, "width": 64, "height": 64, "steps": steps},
        headers=account.headers,
        timeout=60,
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def test_a_worker_killed_mid_denoise_is_restarted_and_its_job_completes_once(
    restart_mesh: RunningMesh,
) -> None:
    mesh = restart_mesh
    account = dev_login(mesh.gateway_url, "worker-crash")
    prompt = parking_prompt(mesh, "a fox", after_step=2)
    job = create(mesh, account, prompt, steps=4)
    wait_parked(mesh, job)
    disarm(mesh, prompt)  # the next attempt runs through
    old = component(mesh, "gpu_inference")

    old.send_signal(signal.SIGKILL)  # a CUDA fault, an OOM kill
    # REST keeps answering for everyone while the worker restarts and the job is redone.
    with httpx.Client(base_url=mesh.gateway_url, timeout=30) as client:
        deadline = time.monotonic() + 180
        while True:
            reply = client.get(f"/api/v1/generation/{job}", headers=account.headers)
            assert reply.status_code == 200, reply.text
            if reply.json()["state"] == "GENERATION_STATE_SUCCEEDED":
                break
            assert time.monotonic() < deadline, f"the job never completed:\n{supervisor_log(mesh)}"
            time.sleep(0.1)

    assert restarted(mesh, "gpu_inference", old).pid != old.pid
    assert "worker-1 exited (killed by SIGKILL); restarting in" in supervisor_log(mesh)
    assert row(mesh, job)["attempt"] == 2
    assert_ended_once(mesh, job, succeeded=True)


def test_the_cli_resumes_its_watch_across_a_generation_service_crash(
    restart_mesh: RunningMesh, tmp_path: Path
) -> None:
    mesh = restart_mesh
    out, stdout, stderr = tmp_path / "fox.png", tmp_path / "stdout", tmp_path / "stderr"
    prompt = parking_prompt(mesh, "a fox", after_step=2)
    command = mesh.pingvas_in_background(
        "generate",
        prompt,
        "--size",
        "64x64",
        "--steps",
        "5",
        "--out",
        str(out),
        stdout=stdout,
        stderr=stderr,
        env={"PINGVAS_EMAIL": "cli-crash@example.com"},
    )
    try:
        wait_for(lambda: "started" in stderr.read_text(), message="the CLI's watch never showed the start")
        (job,) = mesh.sql("SELECT id FROM generations WHERE prompt = %s", prompt)
        wait_parked(mesh, str(job["id"]))
        old = component(mesh, "services.generation")
        refused_before = gateway_counter(mesh, "cluster.generation.upstream_cx_connect_fail")

        # The supervisor is paused while the service is dead, so the CLI's resumed watch meets it
        # down (503 from the gateway) however fast the restart would be.
        supervisor = psutil.Process(mesh.process.pid)
        supervisor.suspend()
        try:
            old.send_signal(signal.SIGKILL)  # the service streaming the CLI's watch
            wait_for(
                lambda: gateway_counter(mesh, "cluster.generation.upstream_cx_connect_fail") > refused_before,
                message="the CLI did not try to resume its watch",
            )
            assert command.poll() is None, stderr.read_text()
        finally:
            supervisor.resume()
        restarted(mesh, "services.generation", old)
        release(mesh, str(job["id"]))
        assert command.wait(timeout=180) == 0, stderr.read_text()
    finally:
        command.kill()
    # A watch resumed after the job ended shows only its end, so the CLI may show no more steps.
    assert out.exists()
    assert stderr.read_text().splitlines()[-1] == "succeeded"
    assert "generation exited (killed by SIGKILL); restarting in" in supervisor_log(mesh)
    assert_ended_once(mesh, str(job["id"]), succeeded=True)


def test_redis_killed_with_its_data_is_restarted_and_queued_jobs_complete_once(
    restart_mesh: RunningMesh,
) -> None:
    mesh = restart_mesh
    account = dev_login(mesh.gateway_url, "redis-crash")
    # A parked job holds the user's one running slot, so the next two stay queued in Redis.
    blocker = create(mesh, account, parking_prompt(mesh, "a blocker", after_step=1), steps=2)
    wait_parked(mesh, blocker)
    queued = [create(mesh, account, "a fox", steps=2) for _ in range(2)]
    old = component(mesh, "redis-server")

    # The worst case: Redis comes back empty (its append-only file gone with its disk).
    (mesh.home / "redis" / "appendonly.aof").unlink()
    old.send_signal(signal.SIGKILL)
    restarted(mesh, "redis-server", old)

    for job in [blocker, *queued]:
        wait_for(
            lambda job=job: row(mesh, job)["state"] == "SUCCEEDED",
            within=180,
            message=f"{job} never completed:\n{supervisor_log(mesh)}",
        )
    assert "redis exited (killed by SIGKILL); restarting in" in supervisor_log(mesh)
    generation_log = mesh.log("generation")
    for job in queued:
        assert f"re-enqueueing {job}" in generation_log
    for job in [blocker, *queued]:
        assert_ended_once(mesh, job, succeeded=True)


def test_a_component_that_keeps_crashing_stops_the_mesh_naming_it(
    tmp_path: Path, models_dir: Path, lemonsqueezy: LemonSqueezyServer
) -> None:
    mesh = start_mesh(
        tmp_path / "home",
        models_dir,
        extra_env={
            "PINGVAS_WORKERS": "0",
            "PINGVAS_CRASH_LOOP_RESTARTS": "2",
            "PINGVAS_RESTART_BACKOFF_INITIAL_SECONDS": "0.1",
            "PINGVAS_LEMONSQUEEZY_API_URL": lemonsqueezy.url,
        },
    )
    try:
        gallery = component(mesh, "services.gallery")
        for _ in range(2):  # two crashes, two restarts
            gallery.send_signal(signal.SIGKILL)
            gallery = restarted(mesh, "services.gallery", gallery)
        gallery.send_signal(signal.SIGKILL)  # the third within the window

        assert mesh.process.wait(timeout=120) == 1
    finally:
        stop_mesh(mesh)
    log = supervisor_log(mesh)
    # Each restart waits twice as long as the one before.
    assert "gallery exited (killed by SIGKILL); restarting in 0.1s (exit 1 in the last 60s)" in log
    assert "gallery exited (killed by SIGKILL); restarting in 0.2s (exit 2 in the last 60s)" in log
    assert "gallery keeps crashing (3 exits in 60s, the last killed by SIGKILL); stopping the mesh" in log
    assert "all components stopped" in log
    left = [p for p in psutil.process_iter() if _in_session(p, mesh.process.pid)]
    assert left == [], [" ".join(p.cmdline()) for p in left]


def _in_session(process: psutil.Process, session_id: int) -> bool:
    try:
        return os.getsid(process.pid) == session_id
    except (ProcessLookupError, PermissionError):
        return False
