"""Embedded PostgreSQL 16 from the pgserver wheel, run as a supervised child on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path

from services.embedded.process import ManagedProcess


def _postgres_bin_dir() -> Path:
    # Located without importing pgserver: its import has side effects (a runtime-dir warning and
    # an atexit hook) that a supervisor running its own postgres does not want.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _postgres_bin_dir()


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


def _make_traversable(path: Path) -> None:
    """Let the system user reach `path` by adding o+rx to every parent directory."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH | stat.S_IXGRP | stat.S_IRGRP)


# PostgreSQL refuses to run as root; pgserver's convention is a dedicated system user.
_SYSTEM_USER_WHEN_ROOT = "pgserver"
DATABASE = "pingvas"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int, log_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_dir = log_dir
        self.system_user = _SYSTEM_USER_WHEN_ROOT if os.geteuid() == 0 else None
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run_tool(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / tool), *args],
            check=True,
            capture_output=True,
            user=self.system_user,
        )

    def _init_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.system_user is not None:
            entry = _ensure_system_user(self.system_user)
            _make_traversable(self.data_dir)
            _make_traversable(POSTGRES_BIN_PATH)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run_tool(
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--username=postgres",
                "--no-sync",
            )

    def start(self) -> ManagedProcess:
        self._init_data_dir()
        self.process = ManagedProcess(
            "postgres",
            [
                str(POSTGRES_BIN_PATH / "postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                "",  # TCP only: no unix socket under a path the system user may not own
                "-c",
                "fsync=off",  # an embedded, disposable dev database; production is Aurora
                "-c",
                "max_connections=200",
            ],
            log_path=self.log_dir / "postgres.log",
            user=self.system_user,
            # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
            stop_signal=signal.SIGINT,
            stop_timeout=15,
        )
        self.process.start()
        return self.process

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.exit_code() is not None:
                raise RuntimeError(f"postgres exited:\n{self.process.log_tail()}")
            probe = subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                check=False,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres not ready after {timeout:.0f}s:\n{self.process.log_tail()}")
            time.sleep(0.1)
        self._ensure_database()

    def _ensure_database(self) -> None:
        exists = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",
                "postgres",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        if exists.stdout.strip() != "1":
            self._run_tool("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE)
