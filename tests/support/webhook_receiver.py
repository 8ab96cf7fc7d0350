"""A partner's webhook endpoint on 127.0.0.1: it verifies every request with `standardwebhooks`,
as a partner would, records it, and answers as the test scripted each path: a status per
request in turn (then 200), or a hold that keeps a request unanswered until the test releases it.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass(frozen=True)
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: str
    verified: Any  # the payload standardwebhooks parsed after verifying it; None if it failed
    answered: int  # the status the receiver answered (0: held, then dropped)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class WebhookReceiver:
    """`with WebhookReceiver() as receiver:` serves at `receiver.url(path)`; `secrets[path]`
    is the signing secret requests to that path are verified with."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self._lock = threading.Condition()
        self._received: list[ReceivedWebhook] = []
        self._scripts: dict[str, deque[int | threading.Event]] = defaultdict(deque)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def script(self, path: str, *answers: int | threading.Event) -> None:
        """Answer the next requests to `path` with these statuses in turn; an Event holds that
        request unanswered until it is set (then drops the connection). 200 after them."""
        with self._lock:
            self._scripts[path].extend(answers)

    def received(self, path: str) -> list[ReceivedWebhook]:
        with self._lock:
            return [request for request in self._received if request.path == path]

    def wait_for(self, path: str, count: int, within: float = 120) -> list[ReceivedWebhook]:
        """Block until `path` has received `count` requests (fails past `within` seconds)."""
        with self._lock:
            arrived = self._lock.wait_for(lambda: len(self._for(path)) >= count, timeout=within)
            requests = self._for(path)
        assert arrived, f"{path} received {len(requests)} of {count} webhooks"
        return requests

    def _for(self, path: str) -> list[ReceivedWebhook]:
        return [request for request in self._received if request.path == path]

    def _handle(self, path: str, headers: dict[str, str], body: str) -> int:
        try:
            verified = Webhook(self.secrets[path]).verify(body, headers)
        except (WebhookVerificationError, KeyError):
            verified = None
        with self._lock:
            answer = self._scripts[path].popleft() if self._scripts[path] else 200
        status = 0 if isinstance(answer, threading.Event) else answer
        with self._lock:
            self._received.append(ReceivedWebhook(path, headers, body, verified, status))
            self._lock.notify_all()
        if isinstance(answer, threading.Event):
            answer.wait(timeout=300)
        return status

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver._handle(self.path, headers, body)
                if status == 0:
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("content-length", "0")
                if 300 <= status < 400:
                    self.send_header("location", receiver.url("/redirected"))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
