"""What the benchmarks share: a mesh of their own (`pingvas up` in a temporary PINGVAS_HOME on a
free port) and percentiles."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.embedded.process import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


MESH_COMPONENTS = (
    ("services.user", "user"),
    ("services.billing", "billing"),
    ("services.generation", "generation"),
    ("services.gallery", "gallery"),
    ("gpu_inference", "worker"),
    ("envoy", "envoy"),
    ("postgres", "postgres"),
    ("redis", "redis"),
    ("weed", "seaweedfs"),
    ("services.cli.main", "supervisor"),
)


def component_of(command_line: str) -> str:
    """Which part of a mesh a process is, from its command line (MESH_COMPONENTS)."""
    return next((name for mark, name in MESH_COMPONENTS if mark in command_line), "other")


def processes_of(pid: int, component: str) -> list[Any]:
    """The live processes under a mesh's supervisor (`pid`) that are `component` (psutil's)."""
    import psutil

    return [
        process
        for process in psutil.Process(pid).children(recursive=True)
        if component_of(" ".join(process.cmdline())) == component
    ]


def cpu_seconds_by_process(pid: int) -> dict[int, tuple[str, float]]:
    """User plus system CPU seconds of a process and every descendant (the whole mesh, from its
    supervisor: PostgreSQL, Redis, SeaweedFS, the services, the workers, Envoy), with the
    component each is, by pid."""
    import psutil

    root = psutil.Process(pid)
    seconds = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            component = component_of(" ".join(process.cmdline()))
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = (component, times.user + times.system)
    return seconds


def cpu_seconds_since(pid: int, before: Mapping[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each component of the mesh spent since `before` (`cpu_seconds_by_process`);
    a process started meanwhile counts from zero."""
    spent: dict[str, float] = {}
    for child, (component, seconds) in cpu_seconds_by_process(pid).items():
        spent[component] = spent.get(component, 0.0) + seconds - before.get(child, (component, 0.0))[1]
    return spent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def add_models_dir_argument(parser: argparse.ArgumentParser) -> None:
    """--models-dir, defaulting where `pingvas models create-tiny` puts the tiny models."""
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(
            os.environ.get("PINGVAS_MODELS_DIR")
            or Path(os.environ.get("PINGVAS_HOME", ".pingvas")) / "models"
        ),
    )


@dataclass(frozen=True)
class BenchMesh:
    home: Path
    gateway_url: str
    gateway_target: str  # host:port, for native gRPC
    env: dict[str, str]  # what `pingvas` commands need to reach this mesh
    pid: int  # the supervisor's (`pingvas up`); every process of the mesh descends from it

    def runtime(self) -> dict[str, object]:
        return dict(json.loads((self.home / "run" / "mesh.json").read_text()))

    def pingvas(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            env=self.env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout


# A bench drives many requests from one account and one IP: it measures the mesh, not its
# rate limits, so they are raised far past what any bench sends.
RAISED_LIMITS_ENV = {
    "PINGVAS_RATE_LIMITS_PER_USER": json.dumps({"free": "1000000/minute"}),
    "PINGVAS_RATE_LIMITS_SIGN_IN_PER_IP": "1000000/minute",
    "PINGVAS_RATE_LIMITS_WEBHOOK_PER_IP": "1000000/minute",
    # No plan named: no per-user cap on queued and running generations.
    "PINGVAS_SCHEDULER_MAX_LIVE_PER_USER": "{}",
}


@contextmanager
def own_mesh(models_dir: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[BenchMesh]:
    with tempfile.TemporaryDirectory(prefix="pingvas-bench-") as home:
        port = free_port()
        env = {
            **os.environ,
            "PINGVAS_HOME": home,
            "PINGVAS_HTTP_PORT": str(port),
            "PINGVAS_MODELS_DIR": str(models_dir),
            **RAISED_LIMITS_ENV,
            **(extra_env or {}),
        }
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        with open(Path(home) / "up.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "up"],
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=log,
            )
            try:
                while not (Path(home) / "run" / "mesh.json").exists():
                    if process.poll() is not None:
                        # The home is removed on the way out: say what the log said.
                        said = (Path(home) / "up.log").read_text(errors="replace")[-4000:]
                        raise SystemExit(f"pingvas up failed:\n{said}")
                    time.sleep(0.2)
                yield BenchMesh(Path(home), f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", env, process.pid)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(120)
