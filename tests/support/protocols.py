"""One call of a contract RPC, the three ways a client reaches the gateway: native gRPC, gRPC-Web
and REST (the method's `google.api.http` binding). Each answers an `Outcome`: the gRPC status
code the caller learnt (for REST, the one the HTTP status stands for) and the reply."""

from __future__ import annotations

import json
import struct
import urllib.parse
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from google.api import annotations_pb2
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

PROTOCOLS = ("grpc", "grpc-web", "rest")

# The HTTP status a REST caller gets for each gRPC code (Envoy's transcoder, plus our 402).
_HTTP_CODES = {
    200: grpc.StatusCode.OK,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    402: grpc.StatusCode.FAILED_PRECONDITION,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    # The reply's message (gRPC, gRPC-Web) or JSON (REST) when OK; the error's text otherwise.
    reply: Any
    http_status: int | None = None

    def __str__(self) -> str:
        status = f" (HTTP {self.http_status})" if self.http_status is not None else ""
        return f"{self.code.name}{status}: {str(self.reply)[:300]}"


def method_path(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _metadata(authorization: str | None) -> tuple[tuple[str, str], ...]:
    return () if authorization is None else (("authorization", authorization),)


def call_grpc(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, request: Message, authorization: str | None
) -> Outcome:
    options: dict[str, Any] = {
        "request_serializer": lambda message: message.SerializeToString(),
        "response_deserializer": GetMessageClass(method.output_type).FromString,
    }
    try:
        if method.server_streaming:
            call = channel.unary_stream(method_path(method), **options)(
                request, metadata=_metadata(authorization), timeout=60
            )
            # The first answer (an event, or the refusal) is what the request decided.
            first = next(call, None)
            call.cancel()
            return Outcome(grpc.StatusCode.OK, first)
        reply = channel.unary_unary(method_path(method), **options)(
            request, metadata=_metadata(authorization), timeout=60
        )
        return Outcome(grpc.StatusCode.OK, reply)
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details())


def call_grpc_web(
    client: httpx.Client, method: descriptor.MethodDescriptor, request: Message, authorization: str | None
) -> Outcome:
    body = request.SerializeToString()
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    if authorization is not None:
        headers["authorization"] = authorization
    with client.stream(
        "POST", method_path(method), content=b"\x00" + struct.pack(">I", len(body)) + body, headers=headers
    ) as reply:
        if "grpc-status" in reply.headers:  # trailers-only: a refusal before any message
            code = _CODES_BY_NUMBER[int(reply.headers["grpc-status"])]
            return Outcome(
                code, urllib.parse.unquote(reply.headers.get("grpc-message", "")), reply.status_code
            )
        buffer, last = b"", None
        for chunk in reply.iter_bytes():
            buffer += chunk
            while len(buffer) >= 5:
                flags, length = buffer[0], struct.unpack(">I", buffer[1:5])[0]
                if len(buffer) < 5 + length:
                    break
                frame, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                if flags & 0x80:  # the trailers frame
                    trailers = dict(
                        line.split(":", 1) for line in frame.decode().split("\r\n") if ":" in line
                    )
                    code = _CODES_BY_NUMBER[int(trailers["grpc-status"].strip())]
                    message = urllib.parse.unquote(trailers.get("grpc-message", "").strip())
                    return Outcome(code, last if code == grpc.StatusCode.OK else message, reply.status_code)
                last = GetMessageClass(method.output_type).FromString(frame)
                if method.server_streaming:
                    return Outcome(grpc.StatusCode.OK, last, reply.status_code)
        raise AssertionError(f"{method_path(method)}: a gRPC-Web reply without trailers")


def rest_request(method: descriptor.MethodDescriptor, request: Message) -> tuple[str, str, Any, bool]:
    """(HTTP method, path with query, body, body is raw bytes) from the method's binding."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    path = getattr(rule, verb)
    as_json = json_format.MessageToDict(request, preserving_proto_field_name=False)
    used: set[str] = set()
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        name = path[start + 1 : end].split("=")[0]
        used.add(method.input_type.fields_by_name[name].json_name)
        path = path[:start] + urllib.parse.quote(str(getattr(request, name)), safe="/") + path[end + 1 :]
    body: Any = None
    raw = False
    if rule.body == "*":
        body = {key: value for key, value in as_json.items() if key not in used}
        used.update(body)
    elif rule.body:
        field = method.input_type.fields_by_name[rule.body]
        used.add(field.json_name)
        if field.message_type.full_name == "google.api.HttpBody":
            raw, body = True, getattr(request, rule.body).data
        else:
            body = as_json.get(field.json_name, {})
    query = {key: value for key, value in as_json.items() if key not in used}
    if query:
        path += "?" + urllib.parse.urlencode(query, doseq=True)
    return verb.upper(), path, body, raw


def call_rest(
    client: httpx.Client, method: descriptor.MethodDescriptor, request: Message, authorization: str | None
) -> Outcome:
    verb, path, body, raw = rest_request(method, request)
    headers = {} if authorization is None else {"authorization": authorization}
    content = None
    if raw:
        content = body
        headers["content-type"] = "application/json"
    elif body is not None:
        content = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    with client.stream(verb, path, headers=headers, content=content) as reply:
        if method.server_streaming and reply.status_code == 200:
            # The status line decides; the stream itself may go on as long as its job.
            return Outcome(grpc.StatusCode.OK, None, 200)
        text = reply.read().decode(errors="replace")
    code = _HTTP_CODES.get(reply.status_code, grpc.StatusCode.UNKNOWN)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    if reply.status_code == 400 and isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
        # 400 stands for several codes; the rendered google.rpc.Status says which.
        code = _CODES_BY_NUMBER.get(parsed["code"], code)
    return Outcome(code, parsed, reply.status_code)


class Gateway:
    """Calls through the gateway by any of PROTOCOLS."""

    def __init__(self, channel: grpc.Channel, client: httpx.Client) -> None:
        self.channel = channel
        self.client = client

    def call(
        self,
        protocol: str,
        method: descriptor.MethodDescriptor,
        request: Message,
        authorization: str | None,
    ) -> Outcome:
        if protocol == "grpc":
            return call_grpc(self.channel, method, request, authorization)
        if protocol == "grpc-web":
            return call_grpc_web(self.client, method, request, authorization)
        return call_rest(self.client, method, request, authorization)
