"""A real gRPC hop between a client and the gateway that fails the way a network does, on cue.

It forwards every call to the gateway as opaque bytes (it knows no service), and a test tells it
to lose the reply of the next call of a method after the gateway has answered it (the server
did the work; the client hears UNAVAILABLE), or to cut the next stream of a method after some
events (a connection reset mid-stream). Every request it forwards is recorded, so a test sees
what the client sent on each attempt.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

# The contract's server-streaming methods; every other method is unary.
SERVER_STREAMING = frozenset({"/pingvas.generation.v1.GenerationService/WatchGeneration"})
# Only what authenticates a call is forwarded; grpc sets the rest itself.
FORWARDED_METADATA = frozenset({"authorization"})

M = TypeVar("M", bound=Message)


class FlakyHop:
    def __init__(self, upstream_target: str) -> None:
        self._upstream = grpc.insecure_channel(upstream_target)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._server.add_generic_rpc_handlers([_Forwarding(self)])
        self.target = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._lock = threading.Lock()
        self._replies_to_lose: dict[str, int] = {}
        self._streams_to_cut: dict[str, list[int]] = {}
        self._requests: list[tuple[str, bytes]] = []

    def __enter__(self) -> FlakyHop:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(grace=None)
        self._upstream.close()

    def lose_next_reply(self, method: str) -> None:
        """The next call of `method` (e.g. "CreateGeneration") reaches the gateway, which answers
        it, but its caller gets UNAVAILABLE instead of the answer."""
        with self._lock:
            self._replies_to_lose[method] = self._replies_to_lose.get(method, 0) + 1

    def cut_next_stream(self, method: str, *, after_events: int) -> None:
        """The next stream of `method` ends with UNAVAILABLE after `after_events` events."""
        with self._lock:
            self._streams_to_cut.setdefault(method, []).append(after_events)

    def requests(self, method: str, message_type: type[M]) -> list[M]:
        """Every request of `method` forwarded so far, oldest first."""
        with self._lock:
            return [message_type.FromString(body) for name, body in self._requests if name == method]

    def _forward_unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        name = self._record(method, request)
        try:
            reply: bytes = self._upstream.unary_unary(method)(
                request, metadata=_forwarded(context), timeout=60
            )
        except grpc.RpcError as error:
            _relay(error, context)
        with self._lock:
            lose = self._replies_to_lose.get(name, 0) > 0
            if lose:
                self._replies_to_lose[name] -= 1
        if lose:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the connection was lost before the reply arrived")
        return reply

    def _forward_stream(self, method: str, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        name = self._record(method, request)
        with self._lock:
            cuts = self._streams_to_cut.get(name) or []
            cut_after = cuts.pop(0) if cuts else None
        call = self._upstream.unary_stream(method)(request, metadata=_forwarded(context), timeout=300)
        sent = 0
        try:
            for reply in call:
                yield reply
                sent += 1
                if sent == cut_after:
                    call.cancel()
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the connection was reset")
        except grpc.RpcError as error:
            _relay(error, context)
        finally:
            call.cancel()

    def _record(self, method: str, request: bytes) -> str:
        name = method.rsplit("/", 1)[-1]
        with self._lock:
            self._requests.append((name, request))
        return name


class _Forwarding(grpc.GenericRpcHandler):
    def __init__(self, hop: FlakyHop) -> None:
        self._hop = hop

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if method in SERVER_STREAMING:
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: self._hop._forward_stream(method, request, context)
            )
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._hop._forward_unary(method, request, context)
        )


def _forwarded(context: grpc.ServicerContext) -> tuple[tuple[str, str], ...]:
    return tuple(
        (item.key, item.value) for item in context.invocation_metadata() if item.key in FORWARDED_METADATA
    )


def _relay(error: grpc.RpcError, context: grpc.ServicerContext) -> NoReturn:
    """End the call with the gateway's error, its rich details included."""
    call: Any = error
    context.set_trailing_metadata(
        tuple(
            (key, value) for key, value in call.trailing_metadata() or () if key == "grpc-status-details-bin"
        )
    )
    context.abort(call.code(), call.details())
    raise AssertionError("ServicerContext.abort returned")
