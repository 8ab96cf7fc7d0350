"""The gateway's Envoy configuration: accepted by the real Envoy, and shaped as the design says.

The structural tests read the rendered configuration. The live tests run the real Envoy with no
backend listening, which is enough to tell a routed request (503 / UNAVAILABLE: the route exists,
its backend is down) from an unrouted one (404 / UNIMPLEMENTED), and to exercise CORS end to end.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2

from gateway.envoy import (
    CORS_ALLOWED_HEADERS,
    DESCRIPTOR_SET,
    JWKS_CLUSTER,
    NO_UPSTREAM_CLUSTER,
    OTLP_CLUSTER,
    PER_IP_LIMITED_METHODS,
    PUBLIC_SERVICES,
    EdgeLimits,
    EnvoyConfigError,
    EnvoyConfigOptions,
    TokenBucket,
    Upstream,
    build_envoy_config,
    envoy_executable,
    render_envoy_config,
    unsupported_response_bodies,
    validate_envoy_config,
    write_envoy_config,
)

WATCH_GENERATION = "/pingvas.generation.v1.GenerationService/WatchGeneration"
ALLOWED_ORIGIN = "http://localhost:5173"
ENVOY_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _options(*, listen_port: int = 8080, admin_port: int = 9901) -> EnvoyConfigOptions:
    return {
        "listen_host": "127.0.0.1",
        "listen_port": listen_port,
        "admin_port": admin_port,
        # Ports nothing listens on: the live tests need routes to exist, not backends to answer.
        "upstreams": {backend: Upstream("127.0.0.1", _free_port()) for backend in PUBLIC_SERVICES.values()},
        "descriptor_set": DESCRIPTOR_SET,
    }


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return build_envoy_config(**_options())


def _http_connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    typed_config: dict[str, Any] = manager["typed_config"]
    return typed_config


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (virtual_host,) = _http_connection_manager(config)["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = virtual_host["routes"]
    return routes


def _cors_policy(config: dict[str, Any]) -> dict[str, Any]:
    (virtual_host,) = _http_connection_manager(config)["route_config"]["virtual_hosts"]
    policy: dict[str, Any] = virtual_host["typed_per_filter_config"]["envoy.filters.http.cors"]
    return policy


def _http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    for http_filter in _http_connection_manager(config)["http_filters"]:
        if http_filter["name"] == name:
            typed_config: dict[str, Any] = http_filter["typed_config"]
            return typed_config
    raise AssertionError(f"no {name} filter")


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}


def _split_header_list(value: str) -> set[str]:
    return {item.strip() for item in value.split(",")}


def test_envoy_accepts_the_rendered_config(tmp_path: Path) -> None:
    options = _options()
    path = write_envoy_config(tmp_path / "envoy" / "envoy.yaml", **options)

    validate_envoy_config(path)

    assert json.loads(path.read_text()) == build_envoy_config(**options)
    assert render_envoy_config(**options) == path.read_text()


def test_tracing_is_off_unless_a_collector_is_given(config: dict[str, Any]) -> None:
    assert "tracing" not in _http_connection_manager(config)
    assert OTLP_CLUSTER not in _clusters(config)


def test_envoy_accepts_the_config_with_its_opentelemetry_tracer(tmp_path: Path) -> None:
    options = _options()
    path = write_envoy_config(
        tmp_path / "envoy.yaml", **options, otlp_collector=Upstream("127.0.0.1", _free_port())
    )

    validate_envoy_config(path)

    config = json.loads(path.read_text())
    provider = _http_connection_manager(config)["tracing"]["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == OTLP_CLUSTER
    assert OTLP_CLUSTER in _clusters(config)


def test_validation_failure_carries_envoys_reason(tmp_path: Path, config: dict[str, Any]) -> None:
    broken = copy.deepcopy(config)
    _routes(broken)[0]["route"]["cluster"] = "no_such_cluster"
    path = tmp_path / "broken.yaml"
    path.write_text(json.dumps(broken))

    with pytest.raises(EnvoyConfigError, match="no_such_cluster"):
        validate_envoy_config(path)


def test_every_public_service_is_routed_to_its_backend(config: dict[str, Any]) -> None:
    prefix_routes = {
        route["match"]["prefix"]: route["route"]["cluster"]
        for route in _routes(config)
        if "prefix" in route["match"]
    }

    for service, backend in PUBLIC_SERVICES.items():
        assert prefix_routes[f"/{service}/"] == backend


def test_only_public_services_reach_a_backend(config: dict[str, Any]) -> None:
    backends = set(PUBLIC_SERVICES.values())
    for route in _routes(config):
        cluster = route["route"]["cluster"]
        matched = route["match"].get("prefix") or route["match"]["path"]
        if cluster in backends:
            service = matched.split("/")[1]
            assert PUBLIC_SERVICES.get(service) == cluster, f"{matched} reaches {cluster}"
        else:
            assert cluster == NO_UPSTREAM_CLUSTER, f"{matched} reaches {cluster}"
    # The JWKS cluster, which no route reaches, is the gateway itself (its JWKS route).
    assert set(_clusters(config)) == backends | {NO_UPSTREAM_CLUSTER, JWKS_CLUSTER}
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    jwks = _clusters(config)[JWKS_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert jwks["endpoint"]["address"]["socket_address"]["port_value"] == listener["port_value"]
    assert "load_assignment" not in _clusters(config)[NO_UPSTREAM_CLUSTER]


def test_streaming_routes_have_no_deadline(config: dict[str, Any]) -> None:
    routes = _routes(config)
    watch_index = next(i for i, route in enumerate(routes) if route["match"].get("path") == WATCH_GENERATION)
    service_index = next(
        i
        for i, route in enumerate(routes)
        if route["match"].get("prefix") == "/pingvas.generation.v1.GenerationService/"
    )

    assert routes[watch_index]["route"]["timeout"] == "0s"
    assert watch_index < service_index, "the stream's route must win over its service's prefix"
    assert routes[service_index]["route"]["timeout"] != "0s"


def test_a_unary_calls_client_deadline_is_capped_by_the_gateways(config: dict[str, Any]) -> None:
    unary = [route for route in _routes(config) if route["route"]["cluster"] in PUBLIC_SERVICES.values()]
    unary = [route for route in unary if route["route"]["timeout"] != "0s"]
    assert unary
    for route in unary:
        duration = route["route"]["max_stream_duration"]
        assert duration["grpc_timeout_header_max"] == route["route"]["timeout"] == "30.000s"
        # The route timeout alone never ended a REST call: the transcoded stream needs this.
        assert duration["max_stream_duration"] == "30.000s"


def test_routes_before_sign_in_are_limited_per_client_ip() -> None:
    limits = EdgeLimits(
        per_ip={"sign_in": TokenBucket(3, 60), "webhook": TokenBucket(900, 60)}, xff_trusted_hops=2
    )
    config = build_envoy_config(**_options(), limits=limits)
    assert _http_connection_manager(config)["xff_num_trusted_hops"] == 2
    limited = {
        route["match"]["path"]: route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
        for route in _routes(config)
        if "envoy.filters.http.local_ratelimit" in route.get("typed_per_filter_config", {})
    }
    assert set(limited) == {path for paths in PER_IP_LIMITED_METHODS.values() for path in paths}
    assert "/pingvas.user.v1.UserService/DevLogin" in limited
    assert "/pingvas.billing.v1.BillingService/HandleLemonSqueezyWebhook" in limited
    for path, limit in limited.items():
        requests = 900 if "Webhook" in path else 3
        assert limit["descriptors"] == [
            {
                "entries": [{"key": "remote_address"}],
                "token_bucket": {"max_tokens": requests, "tokens_per_fill": requests, "fill_interval": "60s"},
            }
        ]
        assert limit["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
        assert limit["always_consume_default_token_bucket"] is False
        assert limit["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"


def test_backends_are_spoken_to_over_http2(config: dict[str, Any]) -> None:
    for backend in PUBLIC_SERVICES.values():
        protocol_options = _clusters(config)[backend]["typed_extension_protocol_options"]
        http_options = protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in http_options["explicit_http_config"]


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_the_generation_cluster_admits_ten_thousand_streams(config: dict[str, Any]) -> None:
    # Envoy's default thresholds (1,024 each) would refuse the 1,025th concurrent watch.
    for backend in PUBLIC_SERVICES.values():
        (thresholds,) = _clusters(config)[backend]["circuit_breakers"]["thresholds"]
        for limit in ("max_connections", "max_pending_requests", "max_requests"):
            assert thresholds[limit] > 1024, f"{backend}: {limit} left at Envoy's default"
    (generation,) = _clusters(config)["generation"]["circuit_breakers"]["thresholds"]
    assert generation["max_requests"] >= 10_000
    assert generation["max_pending_requests"] >= 10_000


def test_quiet_connections_are_pinged_both_ways(config: dict[str, Any]) -> None:
    downstream = _http_connection_manager(config)["http2_protocol_options"]["connection_keepalive"]
    assert _seconds(downstream["interval"]) <= 60 and _seconds(downstream["timeout"]) > 0
    for backend in PUBLIC_SERVICES.values():
        protocol_options = _clusters(config)[backend]["typed_extension_protocol_options"]
        http2 = protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
            "explicit_http_config"
        ]
        upstream = http2["http2_protocol_options"]["connection_keepalive"]
        # Backends accept a ping every 10 s (services/common/server.py); more often is abuse.
        assert _seconds(upstream["interval"]) * 0.85 > 10, "jittered pings would be too_many_pings"
        assert _seconds(upstream["timeout"]) > 0


def test_idle_timeouts_are_chosen_and_outlast_the_queued_resend(config: dict[str, Any]) -> None:
    queued_resend_seconds = 15
    assert _seconds(_http_connection_manager(config)["stream_idle_timeout"]) > 0
    (watch,) = (route for route in _routes(config) if route["match"].get("path") == WATCH_GENERATION)
    # Several re-sends fit in it, so a watch on a queued job is never cut for being quiet.
    assert _seconds(watch["route"]["idle_timeout"]) >= 4 * queued_resend_seconds


def test_cors_is_an_allow_list_exposing_grpc_status(config: dict[str, Any]) -> None:
    policy = _cors_policy(config)

    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= _split_header_list(
        policy["expose_headers"]
    )
    assert set(CORS_ALLOWED_HEADERS) <= _split_header_list(policy["allow_headers"])
    assert policy["allow_origin_string_match"] == [
        {"exact": "http://localhost:5173"},
        {"exact": "http://127.0.0.1:5173"},
    ]


def test_cors_origins_can_be_chosen() -> None:
    options = _options()
    options["cors_allowed_origins"] = ["https://app.pingvas.dev"]

    config = build_envoy_config(**options)

    assert _cors_policy(config)["allow_origin_string_match"] == [{"exact": "https://app.pingvas.dev"}]


def test_filters_run_in_the_order_the_design_relies_on(config: dict[str, Any]) -> None:
    names = [http_filter["name"] for http_filter in _http_connection_manager(config)["http_filters"]]

    assert names == [
        "envoy.filters.http.cors",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.lua",
        # Before the transcoder, while a REST request still has the REST route that enables it.
        "envoy.filters.http.buffer",
        "envoy.filters.http.grpc_json_transcoder",
        # After the transcoder: it limits by the gRPC method's route however the call came in.
        "envoy.filters.http.local_ratelimit",
        # After the transcoder too: its rules match gRPC method paths, REST calls' included.
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.router",
    ]


def test_transcoder_serves_the_public_contract(config: dict[str, Any]) -> None:
    transcoder = _http_filter(config, "envoy.filters.http.grpc_json_transcoder")
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(
        Path(transcoder["proto_descriptor"]).read_bytes()
    )
    loaded_files = {file.name for file in descriptors.file}

    assert transcoder["services"] == sorted(PUBLIC_SERVICES)
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["print_options"]["always_print_primitive_fields"] is True
    assert transcoder["print_options"]["stream_sse_style_delimited"] is True
    assert transcoder["request_validation_options"]["reject_unknown_method"] is True
    assert transcoder["request_validation_options"]["reject_unknown_query_parameters"] is True
    assert "google/rpc/error_details.proto" in loaded_files
    assert unsupported_response_bodies(descriptors) == []


def test_admin_listens_on_loopback_only(config: dict[str, Any]) -> None:
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def test_every_backend_needs_an_upstream() -> None:
    options = _options()
    options["upstreams"] = {"user": Upstream("127.0.0.1", 1)}

    with pytest.raises(ValueError, match="billing"):
        build_envoy_config(**options)


@dataclass(frozen=True)
class RunningGateway:
    url: str
    log_path: Path


@pytest.fixture(scope="module")
def running_gateway(gateway: RunningGateway) -> str:
    """The running gateway's base URL."""
    return gateway.url


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The real Envoy on free ports, backends absent, writing its output (access log included)
    to a file."""
    directory = tmp_path_factory.mktemp("envoy")
    listen_port, admin_port = _free_port(), _free_port()
    path = write_envoy_config(
        directory / "envoy.yaml", **_options(listen_port=listen_port, admin_port=admin_port)
    )
    log_path = directory / "envoy.log"
    with log_path.open("wb") as log:
        envoy = subprocess.Popen(
            [str(envoy_executable()), "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_ready(admin_port, envoy, log_path)
        yield RunningGateway(f"http://127.0.0.1:{listen_port}", log_path)
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)


def _wait_until_ready(admin_port: int, envoy: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + ENVOY_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if envoy.poll() is not None:
            pytest.fail(f"envoy exited with {envoy.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"envoy was not ready within {ENVOY_START_TIMEOUT_S}s:\n{log_path.read_text()}")


def _grpc_status_through(base_url: str, method_path: str) -> grpc.StatusCode:
    with grpc.insecure_channel(base_url.removeprefix("http://")) as channel:
        call = channel.unary_unary(method_path, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", timeout=10)
    code: grpc.StatusCode = raised.value.code()
    return code


@pytest.mark.parametrize(
    "method_path",
    [
        "/pingvas.internal.v1.SchedulerService/Tick",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ],
)
def test_non_public_grpc_methods_are_not_routed(running_gateway: str, method_path: str) -> None:
    assert _grpc_status_through(running_gateway, method_path) == grpc.StatusCode.UNIMPLEMENTED


def test_public_grpc_methods_are_routed(running_gateway: str) -> None:
    status = _grpc_status_through(running_gateway, "/pingvas.user.v1.UserService/DevLogin")

    assert status == grpc.StatusCode.UNAVAILABLE


def test_rest_paths_of_the_contract_are_routed(running_gateway: str) -> None:
    response = httpx.post(f"{running_gateway}/api/v1/auth/dev-login", json={"email": "a@b.c"}, timeout=10)

    assert response.status_code == 503  # transcoded and routed; no user service is running


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/not-in-the-contract"),
        ("DELETE", "/api/v1/generation/create"),
        ("POST", "/pingvas.internal.v1.SchedulerService/Tick"),
    ],
)
def test_rest_paths_outside_the_contract_are_not_found(running_gateway: str, method: str, path: str) -> None:
    response = httpx.request(method, f"{running_gateway}{path}", json={}, timeout=10)

    assert response.status_code == 404


def test_unknown_query_parameters_are_rejected(running_gateway: str) -> None:
    response = httpx.get(
        f"{running_gateway}/api/v1/images/some-image",
        params={"expires": "1", "signature": "s", "debug": "1"},
        timeout=10,
    )

    assert response.status_code == 400
    assert '"debug"' in response.text


def test_rest_preflight_from_an_allowed_origin_is_answered(running_gateway: str) -> None:
    response = httpx.options(
        f"{running_gateway}/api/v1/generation/create",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        },
        timeout=10,
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "grpc-status-details-bin" in response.headers["access-control-expose-headers"]


def test_grpc_web_preflight_from_an_allowed_origin_is_answered(running_gateway: str) -> None:
    response = httpx.options(
        f"{running_gateway}/pingvas.generation.v1.GenerationService/CreateGeneration",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-grpc-web, x-user-agent",
        },
        timeout=10,
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert {"x-grpc-web", "x-user-agent"} <= _split_header_list(
        response.headers["access-control-allow-headers"]
    )


def test_other_origins_get_no_cors_grant(running_gateway: str) -> None:
    response = httpx.options(
        f"{running_gateway}/api/v1/generation/create",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        timeout=10,
    )

    assert "access-control-allow-origin" not in response.headers


def test_rest_responses_carry_cors_headers(running_gateway: str) -> None:
    response = httpx.get(
        f"{running_gateway}/api/v1/generation/some-generation",
        headers={"origin": ALLOWED_ORIGIN},
        timeout=10,
    )

    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


def test_the_access_log_never_holds_a_signed_urls_query(gateway: RunningGateway) -> None:
    image_path = "/api/v1/images/7b0e4a4e-8c1d-4b6f-9d51-2f4c3c1d2e10"
    signature = "5f1e2d3c4b5a69788796a5b4c3d2e1f0"

    response = httpx.get(f"{gateway.url}{image_path}?expires=4102444800&signature={signature}", timeout=10)

    assert response.status_code == 503  # routed; the gallery is not running
    # Envoy flushes its access log on a timer: wait for the request's line, then read it.
    deadline = time.monotonic() + 30
    while image_path not in (log := gateway.log_path.read_text()):
        assert time.monotonic() < deadline, f"no access-log line for {image_path}:\n{log}"
        time.sleep(0.1)
    line = next(line for line in log.splitlines() if image_path in line)
    assert f'"GET {image_path} HTTP/1.1" 503' in line
    assert signature not in log
    assert "expires=" not in log
