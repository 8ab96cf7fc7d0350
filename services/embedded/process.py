"""Child processes that cannot outlive their supervisor."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(orphaned_signal: int) -> None:
    """Runs in the child before exec: the kernel sends `orphaned_signal` when the supervisor dies,
    even by SIGKILL, so `pingvas up` never leaves orphans behind."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, orphaned_signal)


# Where listening ports are picked: below the kernel's ephemeral range. A port the kernel hands out
# for port 0 comes from that range, and an outbound connection may take it as its source port
# between the probe and the service's bind ("Address already in use"); below the range, none can.
_LISTEN_PORTS_FLOOR = 15000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


# "LOW-HIGH" (HIGH excluded): the part of that range free_port picks from in this process and the
# processes it starts. Meshes started side by side by separate processes (a test run split over
# several) each get a part of their own, as free_port's record of what it handed out is only
# its own process's.
LISTEN_PORTS_ENV = "PINGVAS_LISTEN_PORTS"


def _ephemeral_floor() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default.


def listen_ports() -> range:
    """The ports free_port picks from: PINGVAS_LISTEN_PORTS, else all below the ephemeral range."""
    configured = os.environ.get(LISTEN_PORTS_ENV)
    if not configured:
        return range(_LISTEN_PORTS_FLOOR, _ephemeral_floor())
    low, _, high = configured.partition("-")
    return range(int(low), int(high))


# Every port free_port has returned in this process. A mesh picks several ports (SeaweedFS's
# eight, the services') before any of them is bound, so a probe cannot see that a port already
# went to another component: two random picks that coincided left a worker failing to bind
# ("Address already in use") in a test's mesh.
_handed_out: set[int] = set()


def reserve_port(port: int) -> None:
    """Keep free_port from handing out `port`, which this process binds later: the gateway's
    port, chosen by the operator, is bound by Envoy only after every other component has
    started, and a child given the same port took it first (Envoy: "Address already in use")."""
    _handed_out.add(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that this process has not handed out before, for a
    child process to bind."""
    ports = listen_ports()
    for port in random.sample(ports, min(len(ports), 200)):
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    if os.environ.get(LISTEN_PORTS_ENV):
        raise RuntimeError(f"no free port left in {LISTEN_PORTS_ENV}={os.environ[LISTEN_PORTS_ENV]}")
    # The machine's ephemeral range leaves (almost) nothing below it: let the kernel choose.
    while True:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _no_log() -> str:
    return ""


def wait_until(
    name: str,
    process: subprocess.Popen[bytes],
    timeout: float,
    ready: Callable[[], bool],
    log_tail: Callable[[], str] = _no_log,
    *,
    state: str = "ready",
) -> None:
    """Ask `ready()` every 100 ms until it says yes; fail with `log_tail()` if `process` exits
    first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not {state} after {timeout:.0f}s:\n{log_tail()}")
        time.sleep(0.1)


def wait_for_port(
    name: str,
    host: str,
    port: int,
    timeout: float,
    process: subprocess.Popen[bytes],
    log_tail: Callable[[], str] = _no_log,
) -> None:
    """Block until something accepts connections on `host`:`port`, as `wait_until` does."""

    def listening() -> bool:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            return probe.connect_ex((host, port)) == 0

    wait_until(name, process, timeout, listening, log_tail, state=f"listening on {host}:{port}")


# A server that is still starting refuses connections, and a gRPC channel then waits out its
# reconnect backoff (1 s, growing 1.6 times per attempt up to 2 minutes) before trying again: a
# probe on a default channel saw a worker serving 3.7 s after it did. Retry every 250 ms instead.
_PROBE_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 250))


def wait_grpc_serving(
    name: str,
    port: int,
    process: subprocess.Popen[bytes],
    timeout: float,
    log_tail: Callable[[], str] = _no_log,
) -> None:
    """Block until the standard gRPC health service of `name` on 127.0.0.1:`port` reports
    SERVING; fail with `log_tail()` if `process` exits first or `timeout` passes."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_PROBE_CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(name, process, timeout, serving, log_tail, state="SERVING")


class ManagedProcess:
    """One supervised child: started with its own log file, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_timeout: float = 10.0,
        stop_signal: int = signal.SIGTERM,
        orphaned_signal: int | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.stop_timeout = stop_timeout
        self.stop_signal = stop_signal
        # What the kernel sends the child if the supervisor dies without stopping it.
        self.orphaned_signal = stop_signal if orphaned_signal is None else orphaned_signal
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        """Start the child; called again to restart it after it exited."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            user=self.user,
            preexec_fn=functools.partial(_die_with_parent, self.orphaned_signal),
            # Its own process group: a terminal's Ctrl-C reaches only the supervisor, which then
            # stops the components in order.
            process_group=0,
        )
        log.info("%s started (pid %d), log %s", self.name, self.popen.pid, self.log_path)
        return self.popen

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def kill_leftovers(self) -> None:
        """SIGKILL what an exited child left in its process group (PostgreSQL's backends outlive
        a killed postmaster for a moment, holding its shared memory), as systemd's
        KillMode=control-group does before a restart."""
        if self.popen is not None and self.popen.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, self.stop_timeout)
                self.popen.kill()
                self.popen.wait()
        log.info("%s stopped (exit %s)", self.name, self.popen.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class EmbeddedServer(Protocol):
    """A server that `pingvas up` (or a test) runs itself when none is configured: PostgreSQL,
    Redis, SeaweedFS."""

    @property
    def url(self) -> str: ...

    def start(self) -> ManagedProcess: ...

    def wait_ready(self) -> None: ...
