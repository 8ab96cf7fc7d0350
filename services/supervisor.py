"""`pingvas up`: the whole mesh on one machine, supervised.

Starts PostgreSQL, Redis and SeaweedFS, the S3 server (embedded unless PINGVAS_ADMIN_DATABASE_URL /
REDIS_URL / S3_ENDPOINT_URL point elsewhere), configures the buckets (`pingvas storage init`),
in dev pushes the local models into an empty models bucket (`pingvas models push`), provisions
the environment's database roles and applies migrations as its owner, starts each service, the
webhook deliverer, the GPU workers and the web console's static-file server as their own
processes, then Envoy. It logs each
component's state and stops everything in reverse order on SIGTERM or Ctrl-C.

The laptop runs production's security: PostgreSQL with passwords (scram-sha-256) and fsync on,
services connected as the environment's tenant and system roles under forced row-level
security, never as the superuser or the owner. The passwords are generated once and kept under
PINGVAS_HOME with mode 0600.

A component that exits is restarted, as systemd, supervisord and Kubernetes do: on the same
port and data directory, after an exponential backoff, the restart logged with the exit status.
One crash is one restart, not an outage: PostgreSQL keeps what it committed, Redis what its
append-only file holds, the reconciler repairs the rest, and leases with fencing make a dead
worker's job safe to run again. Only a component that keeps crashing (SupervisorSettings: by
default more than 5 restarts in 60 s) stops the mesh, with one line that names it. A component
that fails while the mesh starts stops `pingvas up` at once: that is a misconfiguration, which
restarting would not mend.

Children get SIGTERM from the kernel if the supervisor itself is killed, so no process outlives it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import limits

from gateway.envoy import EdgeLimits, TokenBucket, Upstream
from services.common.defaults import DEFAULT_DB_SCHEMA, DEFAULT_HTTP_PORT, DEFAULT_MODEL
from services.common.settings import GatewaySettings, JwksSettings, RateLimitSettings, SupervisorSettings
from services.embedded.process import (
    EmbeddedServer,
    ManagedProcess,
    free_port,
    reserve_port,
    wait_for_port,
    wait_grpc_serving,
)
from services.generation.catalog import read_model

if TYPE_CHECKING:
    from services.embedded.seaweedfs import EmbeddedSeaweedFS, S3Credentials

log = logging.getLogger("pingvas.up")

SERVICES = ("user", "billing", "generation", "gallery")
# The webhook deliverer: no API, so no gateway route; its port serves gRPC health only.
WEBHOOK_DELIVERER = "webhooks"
# What cannot start before the models bucket is filled: the generation service lists the
# bucket's models once at start (ListModels answers from that list).
READS_MODELS_AT_START = ("generation",)


@dataclass
class MeshOptions:
    home: Path
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    workers: int = 1
    env: str = "dev"
    # A role that may create roles and schemas on an external PostgreSQL; embedded when None.
    admin_database_url: str | None = None
    redis_url: str | None = None
    # An S3 endpoint (with PINGVAS_S3_* keys, or boto's default chain); embedded SeaweedFS when None.
    s3_endpoint_url: str | None = None
    db_schema: str = DEFAULT_DB_SCHEMA
    # An OTLP/gRPC collector (http://host:4317) for the traces and metrics of Envoy and every
    # process; no telemetry when None.
    otlp_endpoint: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    supervision: SupervisorSettings = field(default_factory=SupervisorSettings)


def edge_limits() -> EdgeLimits:
    """What the gateway limits, from the same settings every process reads."""
    rates, gateway = RateLimitSettings(), GatewaySettings()

    def bucket(rate: str) -> TokenBucket:
        item = limits.parse(rate)
        return TokenBucket(requests=item.amount, per_seconds=item.get_expiry())

    return EdgeLimits(
        per_ip={"sign_in": bucket(rates.sign_in_per_ip), "webhook": bucket(rates.webhook_per_ip)},
        xff_trusted_hops=gateway.xff_trusted_hops,
        unary_timeout_seconds=gateway.unary_timeout_seconds,
        streaming_idle_timeout_seconds=gateway.streaming_idle_timeout_seconds,
    )


def otlp_collector(endpoint: str | None) -> Upstream | None:
    """The gateway's OTLP/gRPC receiver, from the URL the processes export to."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parts.hostname is None:
        raise ValueError(f"the OTLP endpoint {endpoint!r} names no host")
    return Upstream(parts.hostname, parts.port or 4317)


def runtime_file(home: Path) -> Path:
    """Where a running mesh says how to reach it (used by `pingvas admin` and the tests)."""
    return home / "run" / "mesh.json"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (mode 0600 whatever the umask, also when it existed):
    the secrets and the runtime file, which holds the database URL with its password.

    The text goes to a temporary file beside it that then replaces it, so a reader sees the
    old file or the whole new one, never an empty or half-written one: `pingvas up`'s callers
    poll for the runtime file and read it as soon as it exists."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # The file object owns the descriptor from here: it is closed whatever fails.
        with os.fdopen(descriptor, "w") as file:
            # mkstemp's 0600 is cut by the umask: set it whatever the umask.
            os.fchmod(file.fileno(), 0o600)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_or_create_secrets(home: Path) -> dict[str, str]:
    """Signing keys for embedded mode, made once and kept under PINGVAS_HOME with mode 0600.
    Production passes PINGVAS_JWT_SECRET and PINGVAS_URL_SIGNING_SECRET from a Secret."""
    path = home / "secrets.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
    else:
        stored = {
            "PINGVAS_JWT_SECRET": secrets.token_urlsafe(48),
            "PINGVAS_URL_SIGNING_SECRET": secrets.token_urlsafe(48),
        }
        write_private(path, json.dumps(stored))
    return {key: os.environ.get(key) or value for key, value in stored.items()}


def load_or_create_s3_credentials(home: Path) -> S3Credentials:
    """The embedded SeaweedFS's access key, secret key and encryption key, made once and kept
    under PINGVAS_HOME with mode 0600, as the database passwords are."""
    from services.embedded.seaweedfs import S3Credentials

    path = home / "s3-credentials.json"
    if path.exists():
        return S3Credentials(**json.loads(path.read_text()))
    credentials = S3Credentials(
        access_key_id="PV" + secrets.token_hex(9).upper(),
        secret_access_key=secrets.token_urlsafe(30),
        sse_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    write_private(path, json.dumps(dataclasses.asdict(credentials)))
    return credentials


DATABASE_PASSWORDS = ("superuser", "owner", "app", "system")


def load_or_create_database_passwords(home: Path) -> dict[str, str]:
    """Passwords of embedded PostgreSQL's superuser and of the environment's roles, made once
    and kept under PINGVAS_HOME with mode 0600 (a password missing from an older file is added)."""
    path = home / "database-passwords.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if any(name not in stored for name in DATABASE_PASSWORDS):
        stored = {name: stored.get(name) or secrets.token_urlsafe(32) for name in DATABASE_PASSWORDS}
        write_private(path, json.dumps(stored))
    return stored


def ensure_port_free(host: str, port: int) -> None:
    """Fail before starting anything if the gateway's port is taken (Envoy would otherwise share
    it through SO_REUSEPORT with whatever holds it). Only a listener counts: the connections of a
    mesh just stopped linger in TIME_WAIT for a minute, and must not keep the next from starting."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise RuntimeError(
                f"{host}:{port} is already in use; stop what holds it or set PINGVAS_HTTP_PORT"
            ) from None


def without_password(url: str) -> str:
    """A URL fit for a log: the superuser's password stays in its 0600 file."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def describe_exit(code: int) -> str:
    """An exit as an operator reads it: Popen reports death by a signal as a negative code."""
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


@dataclass
class Restarts:
    """One component's recent exits and its pending restart."""

    exits: list[float] = field(default_factory=list)
    restart_at: float | None = None


class StopRequested(Exception):
    """A signal arrived while the mesh was still starting."""


class Mesh:
    def __init__(self, options: MeshOptions) -> None:
        self.options = options
        self.home = options.home.resolve()
        self.logs = self.home / "logs"
        self.processes: list[ManagedProcess] = []
        self._stopping = False
        self._started = False

    def _child_env(self, base: dict[str, str], drop: tuple[str, ...] = ()) -> dict[str, str]:
        env = dict(os.environ)
        env.update(base)
        env.update(self.options.extra_env)
        for name in drop:
            env.pop(name, None)
        return env

    def _start(self, process: ManagedProcess) -> ManagedProcess:
        process.start()
        self.processes.append(process)
        return process

    def start(self) -> None:
        from gateway.envoy import (
            CONSOLE_BACKEND,
            DESCRIPTOR_SET,
            envoy_executable,
            validate_envoy_config,
            write_envoy_config,
        )
        from services.embedded.postgres import EmbeddedPostgres
        from services.embedded.redis import EmbeddedRedis
        from services.migrations import RolePasswords, provision, upgrade

        options = self.options
        if options.env == "prod" and not options.supervision.postgres_fsync:
            raise RuntimeError("PINGVAS_POSTGRES_FSYNC=off is for tests; PINGVAS_ENV=prod refuses it")
        self.home.mkdir(parents=True, exist_ok=True)
        ensure_port_free(options.http_host, options.http_port)
        reserve_port(options.http_port)
        passwords = load_or_create_database_passwords(self.home)
        # The embedded servers start together, SeaweedFS (the slowest to come up) first, so
        # that PostgreSQL's initdb runs while it boots; then each is waited for.
        embedded: list[EmbeddedServer] = []
        storage_env = {"S3_ENDPOINT_URL": options.s3_endpoint_url} if options.s3_endpoint_url else {}
        if options.s3_endpoint_url is None:
            seaweedfs = self._seaweedfs()
            embedded.append(seaweedfs)
            storage_env = seaweedfs.credentials.env(seaweedfs.url)
        redis_url = options.redis_url
        if redis_url is None:
            redis = EmbeddedRedis(self.home / "redis", free_port(), self.logs)
            embedded.append(redis)
            redis_url = redis.url
        admin_url = options.admin_database_url
        if admin_url is None:
            postgres = EmbeddedPostgres(
                self.home / "postgres",
                free_port(),
                self.logs,
                superuser_password=passwords["superuser"],
                fsync=options.supervision.postgres_fsync,
            )
            embedded.append(postgres)
            admin_url = postgres.url
        self._start_infrastructure(embedded)
        # The buckets and, in dev, the models take seconds (two CLI processes; a fresh SeaweedFS
        # grows its volumes on the first writes). Meanwhile the schema is migrated and the
        # workers and the services that never read the models bucket start; the generation
        # service (whose catalog lists the bucket's models at start) waits for it.
        storage = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage")
        storage_prepared = storage.submit(
            self._prepare_storage, storage_env, seed_models=options.env == "dev"
        )
        storage.shutdown(wait=False)

        log.info("provisioning the roles of schema %s", options.db_schema)
        urls = asyncio.run(
            provision(
                admin_url,
                options.db_schema,
                RolePasswords(owner=passwords["owner"], app=passwords["app"], system=passwords["system"]),
            )
        )
        log.info("migrating schema %s as its owner role", options.db_schema)
        asyncio.run(upgrade(urls.owner, options.db_schema))

        public_url = f"http://{options.http_host}:{options.http_port}"
        common = {
            "PINGVAS_ENV": options.env,
            "PINGVAS_HOME": str(self.home),
            "DATABASE_URL": urls.app,
            "REDIS_URL": redis_url,
            "PINGVAS_DB_SCHEMA": options.db_schema,
            "PINGVAS_PUBLIC_URL": public_url,
            "PYTHONUNBUFFERED": "1",
            **storage_env,
            **load_or_create_secrets(self.home),
            # Set or emptied: a child never exports where `pingvas up` was not told to.
            "OTEL_EXPORTER_OTLP_ENDPOINT": options.otlp_endpoint or "",
        }
        if "PINGVAS_PRELOAD_MODELS" not in os.environ:
            # Warm the default model before the worker reports SERVING, so the first job is fast.
            default_model = os.environ.get("PINGVAS_DEFAULT_MODEL", DEFAULT_MODEL)
            models_dir = Path(os.environ.get("PINGVAS_MODELS_DIR") or self.home / "models")
            if (models_dir / default_model / "model_index.json").exists():
                common["PINGVAS_PRELOAD_MODELS"] = json.dumps([default_model])
        ports = {name: free_port() for name in (*SERVICES, WEBHOOK_DELIVERER)}
        pending: list[tuple[str, int, ManagedProcess]] = []

        def start_service(name: str) -> None:
            process = ManagedProcess(
                name,
                [sys.executable, "-m", f"services.{name}"],
                log_path=self.logs / f"{name}.log",
                env=self._child_env(
                    {**common, "SYSTEM_DATABASE_URL": urls.system, "PINGVAS_PORT": str(ports[name])}
                ),
            )
            pending.append((name, ports[name], self._start(process)))

        # The workers first: torch and diffusers take them the longest to import. A worker that
        # is up before the models bucket is filled waits NOT_SERVING for its pinned models.
        for index in range(options.workers):
            name = f"worker-{index + 1}"
            port = free_port()
            process = ManagedProcess(
                name,
                [sys.executable, "-m", "gpu_inference"],
                log_path=self.logs / f"{name}.log",
                # Without SYSTEM_DATABASE_URL: a worker only changes its job's user's rows.
                env=self._child_env(
                    {**common, "PINGVAS_HEALTH_PORT": str(port), "PINGVAS_WORKER_ID": name},
                    drop=("SYSTEM_DATABASE_URL", "PINGVAS_SYSTEM_DATABASE_URL"),
                ),
                # A worker finishes its job on SIGTERM (a spot interruption's grace budget).
                stop_timeout=100,
            )
            pending.append((name, port, self._start(process)))
        for name in (*SERVICES, WEBHOOK_DELIVERER):
            if name not in READS_MODELS_AT_START:
                start_service(name)
        storage_prepared.result()
        for name in READS_MODELS_AT_START:
            start_service(name)
        console_port = free_port()
        console = self._start(
            ManagedProcess(
                CONSOLE_BACKEND,
                [sys.executable, "-m", "services.console"],
                log_path=self.logs / "console.log",
                # Only what it serves by: no database, keys or secrets. The S3 endpoint names
                # the image host its Content-Security-Policy allows.
                env=self._child_env(
                    {
                        "PINGVAS_HOME": str(self.home),
                        "PYTHONUNBUFFERED": "1",
                        "PINGVAS_CONSOLE_PORT": str(console_port),
                        **{k: v for k, v in storage_env.items() if k == "S3_ENDPOINT_URL"},
                    },
                    drop=("DATABASE_URL", "SYSTEM_DATABASE_URL", "PINGVAS_SYSTEM_DATABASE_URL"),
                ),
            )
        )
        for name, port, process in pending:
            assert process.popen is not None
            wait_grpc_serving(name, port, process.popen, 180, process.log_tail)
            log.info("%s SERVING on 127.0.0.1:%d", name, port)
        assert console.popen is not None
        wait_for_port(CONSOLE_BACKEND, "127.0.0.1", console_port, 30, console.popen, console.log_tail)
        log.info("console serving on 127.0.0.1:%d", console_port)

        config = write_envoy_config(
            self.home / "run" / "envoy.yaml",
            listen_host=options.http_host,
            listen_port=options.http_port,
            admin_port=free_port(),
            upstreams={
                **{name: Upstream("127.0.0.1", ports[name]) for name in SERVICES},
                CONSOLE_BACKEND: Upstream("127.0.0.1", console_port),
            },
            descriptor_set=DESCRIPTOR_SET,
            limits=edge_limits(),
            jwks_cache_seconds=JwksSettings().cache_seconds,
            otlp_collector=otlp_collector(options.otlp_endpoint),
        )
        validate_envoy_config(config)
        envoy = self._start(
            ManagedProcess(
                "envoy",
                [
                    str(envoy_executable()),
                    "-c",
                    str(config),
                    "--disable-hot-restart",  # several meshes (tests, a dev's own) share a machine
                    "--log-level",
                    "warn",
                ],
                log_path=self.logs / "envoy.log",
            )
        )
        assert envoy.popen is not None
        wait_for_port("envoy", options.http_host, options.http_port, 30, envoy.popen, envoy.log_tail)
        write_private(
            runtime_file(self.home),
            json.dumps(
                {
                    "gateway_url": public_url,
                    # Each role's URL: services' (app, system), migrations' (owner), and the
                    # administrator's, which `pingvas` and the tests use to see every tenant.
                    "database_url": urls.app,
                    "system_database_url": urls.system,
                    "owner_database_url": urls.owner,
                    "admin_database_url": admin_url,
                    "redis_url": redis_url,
                    "s3_endpoint_url": storage_env.get("S3_ENDPOINT_URL"),
                    "db_schema": options.db_schema,
                    "env": options.env,
                    "pid": os.getpid(),
                    "ports": ports,
                }
            ),
        )
        self._started = True
        log.info("gateway listening on %s (gRPC, gRPC-Web, REST and the web console)", public_url)
        print(f"Pingvas is up: {public_url}  (logs in {self.logs})", flush=True)

    def _seaweedfs(self) -> EmbeddedSeaweedFS:
        from services.embedded.seaweedfs import EmbeddedSeaweedFS, SeaweedPorts

        credentials = load_or_create_s3_credentials(self.home)
        return EmbeddedSeaweedFS(self.home / "seaweedfs", SeaweedPorts.free(), self.logs, credentials)

    def _prepare_storage(self, storage_env: dict[str, str], *, seed_models: bool) -> None:
        self._init_storage(storage_env)
        if seed_models:
            self._seed_models(storage_env)

    def _init_storage(self, storage_env: dict[str, str]) -> None:
        """`pingvas storage init`, as the operator would run it: safe on every start."""
        result = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "storage", "init"],
            env=self._child_env(storage_env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pingvas storage init failed:\n{result.stdout}{result.stderr}")
        for line in result.stdout.splitlines():
            log.info("storage init: %s", line)

    def _seed_models(self, storage_env: dict[str, str]) -> None:
        """In dev, the models of the local models directory (the tiny ones `pingvas models
        create-tiny` builds) go into an empty models bucket with `pingvas models push`, as an
        operator pushes production's: so the laptop serves models the way production does, from
        the bucket through the cache (which is that same directory)."""
        models_dir = Path(os.environ.get("PINGVAS_MODELS_DIR") or self.home / "models")
        candidates = sorted(models_dir.iterdir()) if models_dir.is_dir() else []
        directories = [
            str(path)
            for path in candidates
            # Diffusers pipelines, single-file checkpoints and LoRAs alike.
            if not path.name.startswith(".") and path.is_dir() and read_model(path) is not None
        ]
        if not directories:
            log.info("no models in %s to push into the models bucket", models_dir)
            return
        result = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "models", "push", "--if-bucket-empty", *directories],
            env=self._child_env(storage_env),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pingvas models push failed:\n{result.stdout}{result.stderr}")
        for line in result.stdout.splitlines():
            log.info("models push: %s", line)

    def _start_infrastructure(self, servers: Sequence[EmbeddedServer]) -> None:
        """Start every server, then wait until each is ready."""
        started = [server.start() for server in servers]
        self.processes.extend(started)
        for server, process in zip(servers, started, strict=True):
            server.wait_ready()
            log.info("%s ready at %s", process.name, without_password(server.url))

    def watch(self) -> int:
        """Block until a signal asks to stop (exit 0) or a component crashes in a loop (exit 1),
        restarting each component that exits."""
        policy = self.options.supervision
        restarts = {process.name: Restarts() for process in self.processes}
        while not self._stopping:
            now = time.monotonic()
            for process in self.processes:
                state = restarts[process.name]
                if state.restart_at is None:
                    code = process.exit_code()
                    if code is None or self._stopping:
                        continue
                    window = policy.crash_loop_window_seconds
                    state.exits = [at for at in state.exits if now - at < window] + [now]
                    if len(state.exits) > policy.crash_loop_restarts:
                        log.error(
                            "%s keeps crashing (%d exits in %.0fs, the last %s); stopping the mesh. "
                            "Its last log lines:\n%s",
                            process.name,
                            len(state.exits),
                            window,
                            describe_exit(code),
                            process.log_tail(),
                        )
                        return 1
                    delay = policy.backoff_seconds(len(state.exits))
                    log.warning(
                        "%s exited (%s); restarting in %.1fs (exit %d in the last %.0fs)",
                        process.name,
                        describe_exit(code),
                        delay,
                        len(state.exits),
                        window,
                    )
                    state.restart_at = now + delay
                elif now >= state.restart_at:
                    state.restart_at = None
                    process.kill_leftovers()
                    process.start()
                    log.info("%s restarted", process.name)
            time.sleep(0.1)
        return 0

    def request_stop(self, signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self._stopping = True
        if not self._started:
            raise StopRequested

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        runtime_file(self.home).unlink(missing_ok=True)


def run_mesh(options: MeshOptions) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    (options.home / "run").mkdir(parents=True, exist_ok=True)
    mesh = Mesh(options)
    signal.signal(signal.SIGTERM, mesh.request_stop)
    signal.signal(signal.SIGINT, mesh.request_stop)
    # Started with setsid in the background, a closed terminal must not stop the mesh.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        mesh.start()
        return mesh.watch()
    except StopRequested:
        return 0
    except Exception as error:
        log.error("startup failed: %s", error)
        return 1
    finally:
        mesh.stop()
        log.info("all components stopped")
