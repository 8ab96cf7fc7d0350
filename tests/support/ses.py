"""A local stand-in for Amazon SES v2, so tests send real SigV4-signed boto3 requests without AWS.

It speaks the REST-JSON `SendEmail` operation (`POST /v2/email/outbound-emails`, answering
`{"MessageId": ...}`), records every request it receives, and can be told to fail the next
requests the ways SES does: a 500 `InternalFailure`, or a documented 4xx such as
`MessageRejected`, in SES's error shape (`x-amzn-ErrorType` header and a `__type`/`message` body).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

SEND_EMAIL_PATH = "/v2/email/outbound-emails"


@dataclass(frozen=True)
class SesRequest:
    """One request as the server received it."""

    method: str
    path: str
    body: Any
    authorization: str | None
    headers: dict[str, str]
    accepted: bool
    """Whether the server answered it with success."""

    @property
    def signed(self) -> bool:
        """Whether it carries an AWS Signature Version 4 Authorization header."""
        return self.authorization is not None and self.authorization.startswith("AWS4-HMAC-SHA256 ")


@dataclass(frozen=True)
class SesFailure:
    status: int
    error_type: str
    message: str


class SesServer:
    """`with SesServer() as ses:` serves on 127.0.0.1 at `ses.url` (a boto3 `endpoint_url`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[SesRequest] = []
        self._failures: deque[SesFailure] = deque()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ses-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[SesRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def sent(self) -> list[SesRequest]:
        """The SendEmail requests that were answered with success."""
        with self._lock:
            return [r for r in self._requests if r.path == SEND_EMAIL_PATH and r.accepted]

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        error_type: str = "InternalFailure",
        message: str = "The request processing has failed because of an unknown error.",
    ) -> None:
        """Answer the next `count` requests with an SES error instead of accepting them."""
        with self._lock:
            self._failures.extend(SesFailure(status, error_type, message) for _ in range(count))

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._failures.clear()

    def wait_for_sent(self, count: int, timeout: float = 10.0) -> list[SesRequest]:
        deadline = time.monotonic() + timeout
        while len(sent := self.sent) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(sent)} of {count} emails arrived within {timeout}s")
            time.sleep(0.02)
        return sent

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {name.lower(): value for name, value in handler.headers.items()}
        path = handler.path.split("?", 1)[0]

        routed = handler.command == "POST" and path == SEND_EMAIL_PATH
        signed = "authorization" in headers
        with self._lock:
            # A queued failure answers any request, as SES's own outages would.
            failure = self._failures.popleft() if self._failures else None
            accepted = failure is None and routed and signed
            self._requests.append(
                SesRequest(handler.command, path, body, headers.get("authorization"), headers, accepted)
            )

        if failure is not None:
            self._reply(handler, failure.status, failure.error_type, failure.message)
        elif not routed:
            self._reply(handler, 404, "NotFoundException", f"no route for {handler.command} {path}")
        elif not signed:
            self._reply(handler, 403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        else:
            self._json(handler, 200, {"MessageId": f"{uuid.uuid4()}-000000"})

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, error_type: str, message: str) -> None:
        self._json(
            handler, status, {"__type": error_type, "message": message}, {"x-amzn-ErrorType": error_type}
        )

    @staticmethod
    def _json(
        handler: BaseHTTPRequestHandler, status: int, payload: object, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

            def do_POST(self) -> None:
                server._handle(self)

            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests assert on recorded requests instead

        return Handler
