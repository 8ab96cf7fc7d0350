"""`pingvas up` as an operator runs it: in the background with setsid, output to a file. It must
serve, and whatever way it ends (SIGTERM, or a SIGKILL that gives it no chance to clean up),
no process of the mesh may be left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from support.mesh import free_port

from services.embedded import process as embedded_process
from services.embedded.process import LISTEN_PORTS_ENV, reserve_port
from services.supervisor import ensure_port_free, runtime_file, write_private

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def session_members(session_id: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id:
                members.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def start_in_background(home: Path, models_dir: Path, port: int) -> int:
    """`setsid pingvas up > up.log 2>&1 &`, returning the supervisor's pid."""
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "PINGVAS_HOME": str(home),
        "PINGVAS_HTTP_PORT": str(port),
        "PINGVAS_MODELS_DIR": str(models_dir),
    }
    launched = subprocess.run(
        [
            "bash",
            "-c",
            f"setsid {sys.executable} -m services.cli.main up > {home}/up.log 2>&1 < /dev/null & echo $!",
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    supervisor = int(launched.stdout.strip())
    deadline = time.monotonic() + 300
    while not (home / "run" / "mesh.json").exists():
        assert psutil.pid_exists(supervisor), (home / "up.log").read_text()
        assert time.monotonic() < deadline, "pingvas up did not come up"
        time.sleep(0.2)
    return supervisor


def wait_until_gone(session_id: int, within: float) -> list[psutil.Process]:
    deadline = time.monotonic() + within
    while (left := session_members(session_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def generate_once(gateway_url: str) -> dict[str, Any]:
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        token = client.post("/api/v1/auth/dev-login", json={"email": "ops@example.com"}).json()["accessToken"]
        headers = {"authorization": f"Bearer {token}"}
        created = client.post(
            "/api/v1/generation/create",
            json={"prompt": "fox", "width": 64, "height": 64, "steps": 2},
            headers=headers,
        ).json()
        with client.stream("GET", f"/api/v1/generation/{created['id']}/events", headers=headers) as stream:
            last = [line for line in stream.iter_lines() if line.startswith("data: ")][-1]
    return dict(json.loads(last[6:]))


@contextlib.contextmanager
def stopped_whatever_happens(supervisor: int) -> Iterator[None]:
    """A test that fails before its mesh is gone must not leave the mesh running under the tests
    that follow: whatever is left of the supervisor's session is killed."""
    try:
        yield
    finally:
        for process in session_members(supervisor):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_background_mesh_serves_and_sigterm_leaves_no_process(tmp_path: Path, models_dir: Path) -> None:
    port = free_port()
    supervisor = start_in_background(tmp_path / "home", models_dir, port)
    with stopped_whatever_happens(supervisor):
        members = session_members(supervisor)
        names = " ".join(" ".join(p.cmdline()) for p in members)
        for component in (
            "postgres",
            "redis-server",
            "weed server",
            "services.user",
            "services.billing",
            "services.generation",
            "services.gallery",
            "gpu_inference",
            "envoy",
        ):
            assert component in names, f"{component} is not running under pingvas up"
        assert "succeeded" in generate_once(f"http://127.0.0.1:{port}")

        os.kill(supervisor, signal.SIGTERM)
        left = wait_until_gone(supervisor, within=120)
        assert left == [], [" ".join(p.cmdline()) for p in left]
    log = (tmp_path / "home" / "up.log").read_text()
    assert "all components stopped" in log
    ps = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in ps.splitlines()[1:] if line.split()[1] == str(supervisor)]


def test_a_killed_supervisor_takes_the_mesh_with_it(tmp_path: Path, models_dir: Path) -> None:
    supervisor = start_in_background(tmp_path / "home", models_dir, free_port())
    with stopped_whatever_happens(supervisor):
        assert len(session_members(supervisor)) >= 9
        os.kill(supervisor, signal.SIGKILL)  # no handler runs: the kernel's parent-death signal must act
        left = wait_until_gone(supervisor, within=120)
        assert left == [], [" ".join(p.cmdline()) for p in left]


def _port_with_a_connection_in_time_wait() -> int:
    """A port whose listener is gone but whose server side closed a connection first, so that
    connection lingers in TIME_WAIT on it, as a just-stopped gateway's do."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Envoy's listeners have it
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the active close: this side waits in TIME_WAIT
    client.close()
    listener.close()
    return port


def test_free_ports_are_never_handed_out_twice_before_anything_binds_them() -> None:
    """A mesh picks its components' ports before they bind them. Two thousand picks (a mesh
    takes about twenty) from the ~17,000 ports below the ephemeral range would coincide
    about a hundred times if each pick were only probed."""
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_the_gateway_port_is_never_handed_to_another_component(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator (or a test) picks the gateway's port; the supervisor binds it last, through
    Envoy, so its own picks for the components must leave it alone even while nothing holds it."""
    gateway = free_port()  # chosen in another process: the supervisor's record starts empty
    monkeypatch.setattr(embedded_process, "_handed_out", set())
    reserve_port(gateway)
    # Every random pick hits it; then the kernel chooses.
    monkeypatch.setattr(embedded_process.random, "sample", lambda _ports, picks: [gateway] * picks)
    monkeypatch.delenv(LISTEN_PORTS_ENV, raising=False)

    assert free_port() != gateway


def test_ports_are_picked_only_from_the_listen_ports_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes that start meshes side by side (the test run's) each pick from a range of their
    own, as none can see what another picked and has not bound yet."""
    low = free_port()
    monkeypatch.setattr(embedded_process, "_handed_out", set())
    monkeypatch.setenv(LISTEN_PORTS_ENV, f"{low}-{low + 1}")

    assert free_port() == low
    with pytest.raises(RuntimeError, match="no free port left"):
        free_port()


def test_the_gateway_port_check_refuses_a_listener_but_not_time_wait() -> None:
    port = _port_with_a_connection_in_time_wait()
    ensure_port_free("127.0.0.1", port)  # a mesh stopped a moment ago leaves only this

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(RuntimeError, match="already in use"):
            ensure_port_free("127.0.0.1", port)


def test_the_runtime_file_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    """Callers of `pingvas up` poll for the runtime file and read it the moment it exists (the
    project's CI once read it empty and failed seventeen scheduler tests), so a write that has
    not finished must leave nothing at the path, or the previous file untouched."""
    path = runtime_file(tmp_path)
    path.parent.mkdir()
    with pytest.raises(UnicodeEncodeError):  # a write that fails part way
        write_private(path, json.dumps({"gateway_url": "\udc80"}, ensure_ascii=False))
    assert not path.exists()

    write_private(path, json.dumps({"gateway_url": "http://127.0.0.1:8080"}))
    with pytest.raises(UnicodeEncodeError):
        write_private(path, json.dumps({"gateway_url": "\udc80"}, ensure_ascii=False))

    assert json.loads(path.read_text()) == {"gateway_url": "http://127.0.0.1:8080"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in path.parent.iterdir()] == ["mesh.json"]
