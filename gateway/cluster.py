"""The gateway's Envoy configuration for Kubernetes (helm/pingvas), rendered by the same code as
`pingvas up`'s (gateway/envoy.py) and shipped in the chart as a ConfigMap.

Helm cannot run Python, so `pingvas gateway render` writes helm/pingvas/files/envoy.json and CI
fails when the committed file is stale, as it does for the generated stubs. It also writes
envoy-traced.json, the same config with Envoy's OpenTelemetry tracer, which the chart ships when
`env.OTEL_EXPORTER_OTLP_ENDPOINT` names a collector: the collector's address is the one thing a
release chooses, so that file holds a placeholder host and port that the chart's template
replaces with the endpoint's (helm/pingvas/templates/_helpers.tpl, pingvas.envoyConfig). Only addresses
differ from the laptop's: Envoy listens on every interface of its pod, each backend is its
Kubernetes Service by its short name (resolved in the release's namespace, so one file serves
every environment), and the descriptor set is the one the image carries at a fixed path. The web
console's static-file process is an upstream too, so every path the API does not own reaches it
(gateway/envoy.py's catch-all route).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.envoy import (
    CONSOLE_BACKEND,
    DESCRIPTOR_SET,
    PUBLIC_SERVICES,
    EdgeLimits,
    Upstream,
    build_envoy_config,
)

# Where the chart and the images put things; the deploy tests check each against the chart
# and the Dockerfiles.
GATEWAY_PORT = 8080
ADMIN_PORT = 9901
SERVICE_GRPC_PORT = 50051
# The console's HTTP port (PINGVAS_CONSOLE_PORT in the chart, ConsoleSettings' default).
CONSOLE_HTTP_PORT = 8090
SERVICE_NAME_PREFIX = "pingvas-"
IMAGE_DESCRIPTOR_SET = Path("/etc/pingvas/pingvas.binpb")
CHART_FILES = Path("helm/pingvas/files")
CHART_ENVOY_CONFIG = CHART_FILES / "envoy.json"
CHART_TRACED_ENVOY_CONFIG = CHART_FILES / "envoy-traced.json"
# What the chart replaces with the collector's host and port in envoy-traced.json. `.invalid`
# never resolves (RFC 2606), and the port is one no collector listens on, so a placeholder the
# chart failed to replace sends nothing anywhere.
COLLECTOR_HOST_PLACEHOLDER = "otlp-collector.pingvas.invalid"
COLLECTOR_PORT_PLACEHOLDER = 64317


def service_host(backend: str) -> str:
    """A backend's Kubernetes Service name (helm/pingvas/templates/_helpers.tpl, pingvas.serviceName)."""
    return f"{SERVICE_NAME_PREFIX}{backend}"


def build_cluster_envoy_config(
    *, limits: EdgeLimits, jwks_cache_seconds: float, traced: bool = False
) -> dict[str, Any]:
    config = build_envoy_config(
        listen_host="0.0.0.0",
        listen_port=GATEWAY_PORT,
        admin_port=ADMIN_PORT,
        upstreams={
            **{
                backend: Upstream(service_host(backend), SERVICE_GRPC_PORT)
                for backend in sorted(set(PUBLIC_SERVICES.values()))
            },
            CONSOLE_BACKEND: Upstream(service_host(CONSOLE_BACKEND), CONSOLE_HTTP_PORT),
        },
        descriptor_set=DESCRIPTOR_SET,
        limits=limits,
        jwks_cache_seconds=jwks_cache_seconds,
        otlp_collector=Upstream(COLLECTOR_HOST_PLACEHOLDER, COLLECTOR_PORT_PLACEHOLDER) if traced else None,
    )
    # The routes are built from this checkout's descriptor set; Envoy reads the image's copy.
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                for http_filter in network_filter["typed_config"]["http_filters"]:
                    if http_filter["name"] == "envoy.filters.http.grpc_json_transcoder":
                        http_filter["typed_config"]["proto_descriptor"] = str(IMAGE_DESCRIPTOR_SET)
    return config


def render_cluster_envoy_configs(*, limits: EdgeLimits, jwks_cache_seconds: float) -> dict[Path, str]:
    """The chart's Envoy configs by path: without a tracer, and with one (placeholders for the
    collector's address, each appearing exactly once so the chart's plain text replace is safe)."""
    rendered = {
        path: json.dumps(
            build_cluster_envoy_config(limits=limits, jwks_cache_seconds=jwks_cache_seconds, traced=traced),
            indent=2,
        )
        + "\n"
        for path, traced in ((CHART_ENVOY_CONFIG, False), (CHART_TRACED_ENVOY_CONFIG, True))
    }
    traced_text = rendered[CHART_TRACED_ENVOY_CONFIG]
    for placeholder in (f'"{COLLECTOR_HOST_PLACEHOLDER}"', f'"port_value": {COLLECTOR_PORT_PLACEHOLDER}'):
        if traced_text.count(placeholder) != 1:
            raise AssertionError(f"{placeholder} must appear once in the traced config")
    return rendered
