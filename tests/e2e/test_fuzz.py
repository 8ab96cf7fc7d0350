"""Every public RPC, fuzzed from the contract's descriptors over native gRPC and REST: requests
with hostile values (huge and negative integers, NaN, long and odd strings, bad and foreign ids and
page tokens, bad tokens, malformed JSON) are refused or served, never answered INTERNAL, UNKNOWN,
UNIMPLEMENTED or a 5xx.

Deterministic in CI (`derandomize`, a moderate example count). For a deeper run:
`HYPOTHESIS_PROFILE=deep pytest tests/e2e/test_fuzz.py`."""

from __future__ import annotations

import json
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor, descriptor_pb2, json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pingvas.billing.v1 import billing_service_pb2
from pingvas.gallery.v1 import gallery_service_pb2
from pingvas.generation.v1 import generation_service_pb2
from pingvas.user.v1 import api_key_service_pb2, user_service_pb2
from support.accounts import Account, dev_login

from gateway.envoy import DESCRIPTOR_SET, PUBLIC_SERVICES

pytestmark = pytest.mark.integration

settings.register_profile(
    "ci",
    max_examples=50,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "deep",
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

# Answers that would mean the server did not understand its own failure.
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}

_FILES = (
    user_service_pb2,
    api_key_service_pb2,
    generation_service_pb2,
    gallery_service_pb2,
    billing_service_pb2,
)


def public_methods() -> list[descriptor.MethodDescriptor]:
    return [
        method
        for file in _FILES
        for service in file.DESCRIPTOR.services_by_name.values()
        if service.full_name in PUBLIC_SERVICES
        for method in service.methods
    ]


METHODS = {f"{m.containing_service.name}.{m.name}": m for m in public_methods()}

# Filled in by the `targets` fixture: ids that exist, one of them another user's.
KNOWN_IDS: list[str] = []

_INT_BOUNDS = {
    descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    descriptor.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

HOSTILE_STRINGS = [
    "",
    " ",
    "users/me",
    "users/*",
    "users/../../etc/passwd",
    "9" * 40,  # a page token past bigint once answered 500
    "-1",
    "0",
    "18446744073709551616",
    "NaN",
    "00000000-0000-0000-0000-000000000000",
    str(uuid.UUID(int=2**128 - 1)),
    "' OR 1=1 --",
    "%00",
    "\x00",
    "\u202e\u200b",
    "🦊" * 100,
    "a" * 10_000,
    "bm90fGEtdXVpZA==",
    "PLAN_ENTERPRISE",
]


def ids() -> st.SearchStrategy[str]:
    return st.sampled_from(KNOWN_IDS) if KNOWN_IDS else st.just(str(uuid.uuid4()))


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        st.builds(lambda: str(uuid.uuid4())),
        st.deferred(ids),
        st.text(max_size=40),
    )


def scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_BOUNDS:
        low, high = _INT_BOUNDS[kind]
        edges = [value for value in (low, high, 0, -1, 1) if low <= value <= high]
        return st.one_of(st.sampled_from(edges), st.integers(low, high))
    if kind == descriptor.FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind == descriptor.FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if kind == descriptor.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == descriptor.FieldDescriptor.TYPE_STRING:
        return strings()
    if kind == descriptor.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"{" * 1000))
    if kind == descriptor.FieldDescriptor.TYPE_ENUM:
        # Open enums: a number the contract never named must be refused like a bad value.
        return st.sampled_from([value.number for value in field.enum_type.values] + [999, -7])
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def messages(message_type: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Requests built field by field from the descriptor: each field set or left unset."""
    cls = GetMessageClass(message_type)
    fields = [
        f
        for f in message_type.fields
        # google.protobuf.Any carries arbitrary types; the contract never reads one from a caller.
        if not (f.message_type is not None and f.message_type.full_name == "google.protobuf.Any")
    ]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in fields:
            if not draw(st.booleans()):
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field, value_field = field.message_type.fields
                if value_field.message_type is not None:
                    continue
                for key, value in draw(
                    st.dictionaries(scalar(key_field), scalar(value_field), max_size=3)
                ).items():
                    getattr(message, field.name)[key] = value
            elif field.message_type is not None:
                if depth >= 3:
                    continue
                values = draw(st.lists(messages(field.message_type, depth + 1), max_size=2))
                if field.is_repeated:
                    getattr(message, field.name).extend(values)
                elif values:
                    getattr(message, field.name).CopyFrom(values[0])
            elif field.is_repeated:
                getattr(message, field.name).extend(draw(st.lists(scalar(field), max_size=3)))
            else:
                setattr(message, field.name, draw(scalar(field)))
        return message

    return build()


@dataclass(frozen=True)
class Caller:
    """Whom a request claims to come from."""

    label: str
    authorization: str | None


def callers(account: Account, stranger: Account) -> st.SearchStrategy[Caller]:
    tampered = account.token[:-4] + ("AAAA" if not account.token.endswith("AAAA") else "BBBB")
    return st.sampled_from(
        [
            Caller("signed in", f"Bearer {account.token}"),
            Caller("signed in", f"Bearer {account.token}"),
            Caller("another user", f"Bearer {stranger.token}"),
            Caller("no token", None),
            Caller("empty bearer", "Bearer"),
            Caller("garbage", "Bearer not.a.jwt"),
            Caller("tampered", f"Bearer {tampered}"),
            Caller("wrong scheme", f"Basic {account.token}"),
            Caller("huge", "Bearer " + "x" * 8000),
            Caller("unknown API key", "Bearer pv_live_" + "x" * 43),
            Caller("API key prefix alone", "Bearer pv_"),
            Caller("huge API key", "Bearer pv_live_" + "x" * 8000),
        ]
    )


@pytest.fixture(scope="module")
def targets(mesh: Any) -> Iterator[tuple[Account, Account]]:
    """The fuzzing user, a stranger, and ids that exist (the stranger's among them)."""
    account, stranger = dev_login(mesh.gateway_url, "fuzz"), dev_login(mesh.gateway_url, "fuzz-stranger")
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as rest:
        for owner in (account, stranger):
            created = rest.post(
                "/api/v1/generation/create",
                json={"prompt": "a moth", "width": 64, "height": 64, "steps": 1},
                headers=owner.headers,
            )
            assert created.status_code == 200, created.text
            KNOWN_IDS.append(created.json()["id"])
        KNOWN_IDS.extend([account.user_id, stranger.user_id, f"users/{stranger.user_id}"])
        yield account, stranger
        # What the fuzzing queued must not keep the worker busy for the tests that follow.
        for row in mesh.sql(
            "SELECT id FROM generations WHERE user_id = %s AND state IN ('QUEUED', 'RUNNING')",
            account.user_id,
        ):
            rest.post(f"/api/v1/generation/{row['id']}/cancel", json={}, headers=account.headers)
    KNOWN_IDS.clear()


def call_grpc(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, request: Message, caller: Caller
) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = () if caller.authorization is None else (("authorization", caller.authorization),)
    response_class = GetMessageClass(method.output_type)
    options = {
        "request_serializer": lambda message: message.SerializeToString(),
        "response_deserializer": response_class.FromString,
    }
    try:
        if method.server_streaming:
            call = channel.unary_stream(path, **options)(request, metadata=metadata, timeout=30)
            # The stream's first answer (an event, or the refusal) is what the request decided.
            next(call, None)
            call.cancel()
        else:
            channel.unary_unary(path, **options)(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        code = error.code()
        if code == grpc.StatusCode.CANCELLED and method.server_streaming:
            return
        assert code not in NEVER, f"{path} as {caller.label}: {code} {error.details()}\n{request}"
        assert code != grpc.StatusCode.UNIMPLEMENTED, f"{path}: {error.details()}"
        assert code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), (
            f"{path} as {caller.label}: {code} {error.details()}\n{request}"
        )


@st.composite
def rest_bodies(draw: st.DrawFn, body: Any) -> bytes:
    """The JSON of the request, or a body a hostile client would send instead."""
    return draw(
        st.one_of(
            st.just(json.dumps(body).encode()),
            st.sampled_from(
                [
                    b"",
                    b"{",
                    b"null",
                    b"[]",
                    b'"text"',
                    b'{"width": 1e400, "steps": "99999999999999999999999"}',
                    b'{"generation": {"width": -1e308, "seed": "18446744073709551616"}}',
                    b'{"pageSize": "NaN", "plan": 12}',
                    b'{"email": {"nested": true}}',
                    b'{"\\u0000": "\\ud800"}',
                    b'{"generation": {"createTime": "not-a-time", "prompt": 7}}',
                ]
            ),
        )
    )


# The well-known types whose JSON is one string, which JSON cannot carry for every value.
_STRING_JSON_TYPES = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}


def without_string_json_fields(request: Message) -> Message:
    copy = type(request)()
    copy.CopyFrom(request)

    def clear(message: Message) -> None:
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            if field.message_type.full_name in _STRING_JSON_TYPES:
                message.ClearField(field.name)
            elif field.is_repeated and not field.message_type.GetOptions().map_entry:
                for item in value:
                    clear(item)
            elif not field.is_repeated:
                clear(value)

    clear(copy)
    return copy


def rest_request(
    method: descriptor.MethodDescriptor, request: Message
) -> tuple[str, str, dict[str, str], Any, bool]:
    """(HTTP method, path, query, body value, body is raw HttpBody) from the contract's binding."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    template = getattr(rule, verb)
    try:
        as_json = json_format.MessageToDict(request, preserving_proto_field_name=False)
    except json_format.SerializeToJsonError:
        # JSON cannot carry an out-of-range Timestamp or Duration, nor a FieldMask path that is
        # not lower snake case, at all; send the rest (the hostile bodies include malformed ones).
        request = without_string_json_fields(request)
        as_json = json_format.MessageToDict(request, preserving_proto_field_name=False)
    by_json_name = {f.json_name: f for f in method.input_type.fields}
    path = template
    used: set[str] = set()
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        name = path[start + 1 : end].split("=")[0]
        field = method.input_type.fields_by_name[name]
        used.add(field.json_name)
        value = str(getattr(request, name))
        path = path[:start] + urllib.parse.quote(value, safe="") + path[end + 1 :]
    raw = False
    body: Any = None
    if rule.body == "*":
        body = {k: v for k, v in as_json.items() if k not in used}
        used.update(body)
    elif rule.body:
        field = method.input_type.fields_by_name[rule.body]
        used.add(field.json_name)
        if field.message_type.full_name == "google.api.HttpBody":
            raw, body = True, getattr(request, rule.body).data
        else:
            body = as_json.get(field.json_name, {})
    # Scalars, and the well-known types whose JSON is one string (a Timestamp, a FieldMask),
    # go in the query, as a REST client sends them.
    query = {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in as_json.items()
        if key not in used
        and (field := by_json_name.get(key)) is not None
        and (field.message_type is None or field.message_type.full_name in _STRING_JSON_TYPES)
    }
    return verb.upper(), path, query, body, raw


def call_rest(
    client: httpx.Client,
    method: descriptor.MethodDescriptor,
    request: Message,
    caller: Caller,
    data: st.DataObject,
) -> None:
    verb, path, query, body, raw = rest_request(method, request)
    headers = {} if caller.authorization is None else {"authorization": caller.authorization}
    content: bytes | None = None
    if raw:
        content = body
        headers["content-type"] = data.draw(st.sampled_from(["application/json", "text/plain", "x/y"]))
    elif verb != "GET" and body is not None:
        content = data.draw(rest_bodies(body))
        headers["content-type"] = "application/json"
    target = f"{path}?{urllib.parse.urlencode(query)}" if query else path
    if method.server_streaming:
        with client.stream(verb, target, headers=headers, content=content) as reply:
            # The status line decides; the stream itself may go on as long as its job.
            status = reply.status_code
            text = "" if status < 300 else reply.read().decode(errors="replace")
    else:
        reply = client.request(verb, target, headers=headers, content=content)
        status, text = reply.status_code, reply.text
    assert status < 500, f"{verb} {target} as {caller.label}: {status} {text[:500]}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_grpc_never_answers_internal(name: str, mesh: Any, targets: tuple[Account, Account]) -> None:
    method = METHODS[name]
    account, stranger = targets
    with grpc.insecure_channel(mesh.gateway_target) as channel:

        @settings(settings.get_profile(PROFILE))
        @given(request=messages(method.input_type), caller=callers(account, stranger))
        def check(request: Message, caller: Caller) -> None:
            call_grpc(channel, method, request, caller)

        check()


@pytest.mark.parametrize(
    "name",
    sorted(n for n, m in METHODS.items() if m.GetOptions().HasExtension(annotations_pb2.http)),
)
def test_rest_never_answers_5xx(name: str, mesh: Any, targets: tuple[Account, Account]) -> None:
    method = METHODS[name]
    account, stranger = targets
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as client:

        @settings(settings.get_profile(PROFILE))
        @given(request=messages(method.input_type), caller=callers(account, stranger), data=st.data())
        def check(request: Message, caller: Caller, data: st.DataObject) -> None:
            call_rest(client, method, request, caller, data)

        check()


def test_every_public_rpc_is_fuzzed() -> None:
    """The contract's descriptor set (what Envoy serves) has no public RPC this module misses."""
    served = {
        f"{service.name}.{method.name}"
        for file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
        for service in file.service
        if f"{file.package}.{service.name}" in PUBLIC_SERVICES
        for method in service.method
    }
    assert set(METHODS) == served
