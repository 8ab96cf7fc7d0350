"""A local Lemon Squeezy: the slice of its API that billing calls, and its webhook deliveries.

A real HTTP server (stdlib, a daemon thread, 127.0.0.1 on a free port) answering JSON:API the way
api.lemonsqueezy.com does: Bearer auth (401), body validation (422), 404 for unknown resources,
`meta.page` and `links` on listings. Production's client runs against it unchanged.

Webhooks are driven by the test: a payload builder (`subscription_event`, `invoice_event`,
`order_refunded_event`) stores the resource as Lemon Squeezy would hold it after the event and
returns the exact JSON a delivery carries; `deliver` signs and POSTs it like Lemon Squeezy does.
Building an event and not delivering it is how a test makes a "missed" webhook for
reconciliation to find.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import hmac
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

JSON_API: Final = "application/vnd.api+json"
WEBHOOK_PATH: Final = "/api/v1/payment/webhook"
SUBSCRIPTION_STATUSES: Final = ("on_trial", "active", "paused", "past_due", "unpaid", "cancelled", "expired")
INVOICE_STATUSES: Final = ("pending", "paid", "void", "refunded")
BILLING_REASONS: Final = ("initial", "renewal", "updated")
SUBSCRIPTION_EVENTS: Final = (
    "subscription_created",
    "subscription_updated",
    "subscription_cancelled",
    "subscription_resumed",
    "subscription_expired",
    "subscription_paused",
    "subscription_unpaused",
    "subscription_plan_changed",
)
INVOICE_EVENTS: Final = (
    "subscription_payment_success",
    "subscription_payment_failed",
    "subscription_payment_recovered",
    "subscription_payment_refunded",
)
_DEFAULT_PAGE_SIZE: Final = 10  # Lemon Squeezy's default
_MAX_PAGE_SIZE: Final = 100
_PUBLIC_API: Final = "https://api.lemonsqueezy.com"


class _Signature(enum.Enum):
    CORRECT = enum.auto()


CORRECT_SIGNATURE: Final = _Signature.CORRECT
"""`deliver`'s default: sign the body that is sent with the server's webhook secret."""


@dataclass(frozen=True)
class ReceivedRequest:
    """One API request as it arrived, for assertions about headers and query strings."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class HeldAnswer:
    """One request whose answer the test holds: `arrived` is set when the request came in (the
    caller is now waiting for Lemon Squeezy), and the answer goes out once `release()` is called.
    Events, not timers: the test decides what happens while the caller waits."""

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.arrived = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait_for_release(self, limit: float) -> None:
        # The limit only keeps a broken test from hanging the server thread forever.
        self._released.wait(limit)


class ApiError(Exception):
    """An error response, JSON:API shaped: `{"errors": [{"status", "title", "detail", "source"?}]}`."""

    def __init__(self, status: HTTPStatus, detail: str, *, pointer: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.pointer = pointer

    def document(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "detail": self.detail,
            "status": str(int(self.status)),
            "title": self.status.phrase,
        }
        if self.pointer is not None:
            error["source"] = {"pointer": self.pointer}
        return {"jsonapi": {"version": "1.0"}, "errors": [error]}


def timestamp(moment: datetime) -> str:
    """Lemon Squeezy's timestamp format: `2024-05-01T12:00:00.000000Z`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_like_lemonsqueezy(payload: Mapping[str, Any]) -> bytes:
    """JSON as Lemon Squeezy's PHP backend writes it: compact, ASCII-only, slashes escaped (`\\/`).

    A gateway that re-serializes the body before checking the signature breaks on exactly these
    bytes, which is the point of sending them.
    """
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    return text.replace("/", "\\/").encode()  # '/' occurs only inside JSON strings


class LemonSqueezyServer:
    """Lemon Squeezy's API for one store, in memory, over real HTTP.

    State is public so tests can assert on what arrived and seed what Lemon Squeezy "knows":
    `checkouts` (request bodies), `patches` (subscription id, body), `requests` (method, path),
    `received` (full requests), and the resources as JSON:API `data` objects: `subscriptions`,
    `invoices` and `orders`, keyed by id. `variant_names` names variants (default `Variant <id>`).
    """

    def __init__(self, api_key: str, webhook_secret: str, store_id: str = "1") -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.store_id = store_id
        self.checkouts: list[dict[str, Any]] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str]] = []
        self.received: list[ReceivedRequest] = []
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.variant_names: dict[str, str] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(9001)
        self._customers: dict[str, int] = {}
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._holds: dict[tuple[str, str], HeldAnswer] = {}

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> LemonSqueezyServer:
        if self._httpd is not None:
            raise RuntimeError("the Lemon Squeezy server is already running")
        self._httpd = _HttpServer(("127.0.0.1", 0), _Handler, self)
        # A short poll interval: stop() waits for serve_forever to notice, once per test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="lemonsqueezy-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> LemonSqueezyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API's base URL (no `/v1`), what `LemonSqueezyClient(api_url=...)` takes."""
        if self._httpd is None:
            raise RuntimeError("the Lemon Squeezy server is not running; call start()")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def _api(self) -> str:
        # Resource links point at this server once it runs; payloads built before start() point
        # at the real API, as Lemon Squeezy's own do.
        return self.url if self._httpd is not None else _PUBLIC_API

    # --- webhook payloads -------------------------------------------------------------------------

    def subscription_event(
        self,
        event_name: str,
        subscription_id: str,
        *,
        user_id: str | None,
        user_email: str,
        variant_id: str | int,
        status: str = "active",
        renews_at: datetime | str | None = None,
        ends_at: datetime | str | None = None,
        updated_at: datetime | str | None = None,
        test_mode: bool = False,
    ) -> dict[str, Any]:
        """A `subscription_*` delivery; the subscription is stored as the event leaves it.

        `renews_at` defaults to a month after `updated_at`; `ends_at` to `renews_at` once the
        subscription is cancelled (it runs to the end of the paid period) and to `updated_at`
        once it expired. `user_id=None` sends no `custom_data`, as for a subscription created
        outside our checkout.
        """
        if event_name not in SUBSCRIPTION_EVENTS:
            raise ValueError(f"unknown subscription event {event_name!r}")
        if status not in SUBSCRIPTION_STATUSES:
            raise ValueError(f"unknown subscription status {status!r}")
        moment = _moment(updated_at)
        renews = _moment(renews_at) if renews_at is not None else moment + timedelta(days=30)
        ends: str | None = None
        if ends_at is not None:
            ends = timestamp(_moment(ends_at))
        elif status == "cancelled":
            ends = timestamp(renews)
        elif status == "expired":
            ends = timestamp(moment)
        variant = str(variant_id)
        with self._lock:
            previous = self.subscriptions.get(subscription_id)
            before = previous["attributes"] if previous else {}
            attributes: dict[str, Any] = {
                "store_id": int(self.store_id),
                "customer_id": before.get("customer_id") or self._customer_id(user_email),
                "order_id": before.get("order_id") or next(self._ids),
                "order_item_id": before.get("order_item_id") or next(self._ids),
                "product_id": before.get("product_id") or 1000 + int(self.store_id),
                "variant_id": int(variant),
                "product_name": "Pingvas",
                "variant_name": self._variant_name(variant),
                "user_name": _name_of(user_email),
                "user_email": user_email,
                "status": status,
                "status_formatted": _formatted(status),
                "card_brand": "visa",
                "card_last_four": "4242",
                "payment_processor": "stripe",
                "pause": {"mode": "void", "resumes_at": None} if status == "paused" else None,
                "cancelled": status == "cancelled",
                "trial_ends_at": timestamp(renews) if status == "on_trial" else None,
                "billing_anchor": before.get("billing_anchor") or moment.day,
                "first_subscription_item": {
                    "id": int(subscription_id) + 100_000 if subscription_id.isdigit() else 1,
                    "subscription_id": _maybe_int(subscription_id),
                    "price_id": int(variant) * 10 if variant.isdigit() else 1,
                    "quantity": 1,
                    "is_usage_based": False,
                    "created_at": before.get("created_at") or timestamp(moment),
                    "updated_at": timestamp(moment),
                },
                "urls": {
                    "update_payment_method": f"https://pingvas.lemonsqueezy.com/subscription/{subscription_id}/payment-details?expires=1&signature=x",
                    "customer_portal": f"https://pingvas.lemonsqueezy.com/billing?expires=1&signature=x&user={_maybe_int(subscription_id)}",
                    "customer_portal_update_subscription": f"https://pingvas.lemonsqueezy.com/billing/{subscription_id}/update?expires=1&signature=x",
                },
                "renews_at": timestamp(renews),
                "ends_at": ends,
                "created_at": before.get("created_at") or timestamp(moment),
                "updated_at": timestamp(moment),
                "test_mode": test_mode,
            }
            resource = self._resource(
                "subscriptions",
                subscription_id,
                attributes,
                (
                    "store",
                    "customer",
                    "order",
                    "order-item",
                    "product",
                    "variant",
                    "subscription-items",
                    "subscription-invoices",
                ),
            )
            self.subscriptions[subscription_id] = resource
            return _delivery(event_name, user_id, test_mode, resource)

    def invoice_event(
        self,
        event_name: str,
        invoice_id: str,
        *,
        subscription_id: str,
        user_id: str | None,
        user_email: str,
        billing_reason: str = "renewal",
        status: str | None = None,
        updated_at: datetime | str | None = None,
        total: int = 2500,
        currency: str = "USD",
    ) -> dict[str, Any]:
        """A `subscription_payment_*` delivery carrying a subscription invoice, which is stored.

        `status` defaults from the event: `pending` for a failed payment, `refunded` for a
        refund, `paid` otherwise. Amounts are in cents.
        """
        if event_name not in INVOICE_EVENTS:
            raise ValueError(f"unknown subscription invoice event {event_name!r}")
        if billing_reason not in BILLING_REASONS:
            raise ValueError(f"unknown billing reason {billing_reason!r}")
        if status is None:
            status = {
                "subscription_payment_failed": "pending",
                "subscription_payment_refunded": "refunded",
            }.get(event_name, "paid")
        if status not in INVOICE_STATUSES:
            raise ValueError(f"unknown invoice status {status!r}")
        moment = _moment(updated_at)
        refunded = status == "refunded"
        refunded_amount = total if refunded else 0
        with self._lock:
            previous = self.invoices.get(invoice_id)
            before = previous["attributes"] if previous else {}
            subscription = self.subscriptions.get(subscription_id)
            test_mode = bool(subscription and subscription["attributes"].get("test_mode"))
            customer_id = (
                subscription["attributes"]["customer_id"] if subscription else self._customer_id(user_email)
            )
            attributes: dict[str, Any] = {
                "store_id": int(self.store_id),
                "subscription_id": _maybe_int(subscription_id),
                "customer_id": customer_id,
                "user_name": _name_of(user_email),
                "user_email": user_email,
                "billing_reason": billing_reason,
                "card_brand": "visa",
                "card_last_four": "4242",
                "currency": currency,
                "currency_rate": "1.00000000",
                "status": status,
                "status_formatted": _formatted(status),
                "refunded": refunded,
                "refunded_at": timestamp(moment) if refunded else None,
                **_amounts(total, refunded_amount, currency),
                "urls": {
                    "invoice_url": f"https://app.lemonsqueezy.com/my-orders/{uuid.uuid4()}/subscription-invoice/{invoice_id}?signature=x"
                },
                "created_at": before.get("created_at") or timestamp(moment),
                "updated_at": timestamp(moment),
                "test_mode": test_mode,
            }
            resource = self._resource(
                "subscription-invoices",
                invoice_id,
                attributes,
                ("store", "subscription", "customer"),
            )
            self.invoices[invoice_id] = resource
            return _delivery(event_name, user_id, test_mode, resource)

    def order_refunded_event(
        self,
        order_id: str,
        *,
        user_id: str | None,
        user_email: str,
        refunded_amount: int,
        total: int = 2500,
        variant_id: str | int = "101",
        currency: str = "USD",
        updated_at: datetime | str | None = None,
        test_mode: bool = False,
    ) -> dict[str, Any]:
        """An `order_refunded` delivery: a full (`refunded`) or partial (`partial_refund`) refund."""
        if not 0 < refunded_amount <= total:
            raise ValueError("refunded_amount must be positive and at most the order's total")
        moment = _moment(updated_at)
        status = "refunded" if refunded_amount == total else "partial_refund"
        variant = str(variant_id)
        with self._lock:
            previous = self.orders.get(order_id)
            before = previous["attributes"] if previous else {}
            created_at = before.get("created_at") or timestamp(moment)
            attributes: dict[str, Any] = {
                "store_id": int(self.store_id),
                "customer_id": before.get("customer_id") or self._customer_id(user_email),
                "identifier": before.get("identifier") or str(uuid.uuid4()),
                "order_number": before.get("order_number") or next(self._ids),
                "user_name": _name_of(user_email),
                "user_email": user_email,
                "currency": currency,
                "currency_rate": "1.00000000",
                "setup_fee": 0,
                "setup_fee_usd": 0,
                "setup_fee_formatted": _money(0, currency),
                "tax_name": None,
                "tax_rate": "0.00",
                "tax_inclusive": False,
                "status": status,
                "status_formatted": _formatted(status),
                "refunded": True,
                "refunded_at": timestamp(moment),
                **_amounts(total, refunded_amount, currency),
                "first_order_item": {
                    "id": _maybe_int(order_id),
                    "order_id": _maybe_int(order_id),
                    "product_id": 1000 + int(self.store_id),
                    "variant_id": int(variant),
                    "product_name": "Pingvas",
                    "variant_name": self._variant_name(variant),
                    "price": total,
                    "quantity": 1,
                    "created_at": created_at,
                    "updated_at": timestamp(moment),
                    "test_mode": test_mode,
                },
                "urls": {"receipt": f"https://app.lemonsqueezy.com/my-orders/{uuid.uuid4()}?signature=x"},
                "created_at": created_at,
                "updated_at": timestamp(moment),
                "test_mode": test_mode,
            }
            resource = self._resource(
                "orders",
                order_id,
                attributes,
                ("store", "customer", "order-items", "subscriptions", "license-keys", "discount-redemptions"),
            )
            self.orders[order_id] = resource
            return _delivery("order_refunded", user_id, test_mode, resource)

    # --- signing and delivery ---------------------------------------------------------------------

    def sign(self, body: bytes) -> str:
        """`X-Signature` for `body`: lowercase hex HMAC-SHA256 keyed by the webhook secret."""
        return hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()

    def webhook_request(
        self,
        payload: Mapping[str, Any],
        *,
        signature: str | _Signature | None = CORRECT_SIGNATURE,
        body: bytes | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The bytes and headers of a delivery, as `deliver` sends them.

        `body` replaces the serialized payload (a re-serialized or tampered body); the default
        signature signs whatever body is sent, `signature=None` omits the header.
        """
        raw = body if body is not None else encode_like_lemonsqueezy(payload)
        headers = {
            "Content-Type": "application/json",
            "X-Event-Name": str(payload.get("meta", {}).get("event_name", "")),
        }
        if signature is CORRECT_SIGNATURE:
            headers["X-Signature"] = self.sign(raw)
        elif isinstance(signature, str):
            headers["X-Signature"] = signature
        return raw, headers

    def deliver(
        self,
        gateway_url: str,
        payload: Mapping[str, Any],
        *,
        signature: str | _Signature | None = CORRECT_SIGNATURE,
        body: bytes | None = None,
        timeout: float = 30.0,
    ) -> httpx.Response:
        """POST a delivery to `{gateway_url}/api/v1/payment/webhook`, as Lemon Squeezy does."""
        raw, headers = self.webhook_request(payload, signature=signature, body=body)
        return httpx.post(_webhook_url(gateway_url), content=raw, headers=headers, timeout=timeout)

    def deliver_invoice(
        self,
        gateway_url: str,
        event_name: str,
        *,
        subscription_id: str,
        user_id: str | None,
        user_email: str,
        invoice_id: str | None = None,
        **fields: Any,
    ) -> httpx.Response:
        """Deliver a `subscription_payment_*` event for a new invoice (or `invoice_id`); `fields`
        go to `invoice_event`."""
        payload = self.invoice_event(
            event_name,
            invoice_id or f"inv-{uuid.uuid4().hex[:8]}",
            subscription_id=subscription_id,
            user_id=user_id,
            user_email=user_email,
            **fields,
        )
        return self.deliver(gateway_url, payload)

    async def adeliver(
        self,
        gateway_url: str,
        payload: Mapping[str, Any],
        *,
        signature: str | _Signature | None = CORRECT_SIGNATURE,
        body: bytes | None = None,
    ) -> httpx.Response:
        """`deliver` for async tests."""
        raw, headers = self.webhook_request(payload, signature=signature, body=body)
        async with httpx.AsyncClient(timeout=30.0) as client:
            return await client.post(_webhook_url(gateway_url), content=raw, headers=headers)

    # --- the API ----------------------------------------------------------------------------------

    def hold(self, method: str, path: str) -> HeldAnswer:
        """Hold the answer to the next `method path` request (e.g. `PATCH /v1/subscriptions/7`)
        until the test releases it; the request itself is applied only then, as a slow API would."""
        held = HeldAnswer(method, path)
        with self._lock:
            self._holds[(method, path)] = held
        return held

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[HTTPStatus, dict[str, Any], dict[str, str]]:
        """Answer one request: (status, JSON document, extra headers). Runs on handler threads."""
        split = urlsplit(target)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        with self._lock:
            held = self._holds.pop((method, path), None)
        if held is not None:  # outside the lock: other requests are answered meanwhile
            held.arrived.set()
            held.wait_for_release(120)
        with self._lock:
            self.requests.append((method, path))
            self.received.append(ReceivedRequest(method, path, query, dict(headers), body))
            try:
                self._authenticate(headers)
                route, allowed = _route(method, path)
                if route is None:
                    if allowed:
                        raise _MethodNotAllowed(allowed)
                    raise ApiError(HTTPStatus.NOT_FOUND, "The requested resource could not be found.")
                if JSON_API not in headers.get("accept", ""):
                    raise ApiError(HTTPStatus.NOT_ACCEPTABLE, f"The Accept header must be {JSON_API}.")
                handler, arguments = route
                status, document = handler(self, query, body, headers, *arguments)
                return status, document, {}
            except _MethodNotAllowed as exc:
                error = ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "The method is not allowed.")
                return error.status, error.document(), {"Allow": ", ".join(exc.allowed)}
            except ApiError as exc:
                return exc.status, exc.document(), {}

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        expected = f"Bearer {self.api_key}"
        given = headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "Unauthenticated.")

    def _create_checkout(
        self, query: Mapping[str, str], body: bytes, headers: Mapping[str, str]
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        data = _document_data(body, headers)
        _expect(data.get("type") == "checkouts", "The data.type field must be checkouts.", "/data/type")
        attributes = data.get("attributes", {})
        _expect(
            isinstance(attributes, dict), "The data.attributes field must be an object.", "/data/attributes"
        )
        checkout_data = attributes.get("checkout_data", {})
        _expect(
            isinstance(checkout_data, dict),
            "The checkout_data field must be an object.",
            "/data/attributes/checkout_data",
        )
        email = checkout_data.get("email")
        _expect(
            email is None or (isinstance(email, str) and "@" in email),
            "The checkout_data.email must be a valid email address.",
            "/data/attributes/checkout_data/email",
        )
        custom = checkout_data.get("custom", {})
        _expect(
            isinstance(custom, dict),
            "The checkout_data.custom field must be an object.",
            "/data/attributes/checkout_data/custom",
        )
        relationships = data.get("relationships")
        _expect(
            isinstance(relationships, dict),
            "The data.relationships field is required.",
            "/data/relationships",
        )
        store_id = _relationship(relationships, "store", "stores")
        variant_id = _relationship(relationships, "variant", "variants")
        if store_id != self.store_id:
            raise ApiError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "The related store does not exist or does not belong to this API key.",
                pointer="/data/relationships/store/data/id",
            )
        _expect(
            variant_id.isdigit(),
            "The related variant does not exist.",
            "/data/relationships/variant/data/id",
        )
        self.checkouts.append(json.loads(body))
        checkout_id = str(uuid.uuid4())
        now = timestamp(datetime.now(UTC))
        resource = self._resource(
            "checkouts",
            checkout_id,
            {
                "store_id": int(store_id),
                "variant_id": int(variant_id),
                "custom_price": attributes.get("custom_price"),
                "product_options": attributes.get("product_options") or {},
                "checkout_options": attributes.get("checkout_options") or {},
                "checkout_data": {
                    "email": email or "",
                    "name": checkout_data.get("name", ""),
                    "billing_address": checkout_data.get("billing_address", []),
                    "tax_number": "",
                    "discount_code": checkout_data.get("discount_code", ""),
                    "custom": custom,
                    "variant_quantities": [],
                },
                "preview": False,
                "expires_at": attributes.get("expires_at"),
                "created_at": now,
                "updated_at": now,
                "test_mode": bool(attributes.get("test_mode", False)),
                "url": f"https://pingvas.lemonsqueezy.com/checkout/custom/{checkout_id}?signature={self.sign(checkout_id.encode())}",
            },
            ("store", "variant"),
        )
        return HTTPStatus.CREATED, self._single(resource)

    def _get_subscription(
        self, query: Mapping[str, str], body: bytes, headers: Mapping[str, str], subscription_id: str
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        return HTTPStatus.OK, self._single(self._found(self.subscriptions, subscription_id))

    def _patch_subscription(
        self, query: Mapping[str, str], body: bytes, headers: Mapping[str, str], subscription_id: str
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        subscription = self._found(self.subscriptions, subscription_id)
        data = _document_data(body, headers)
        _expect(
            data.get("type") == "subscriptions", "The data.type field must be subscriptions.", "/data/type"
        )
        if data.get("id") != subscription_id:
            raise ApiError(
                HTTPStatus.CONFLICT,
                "The data.id field must be a string matching the resource in the URL.",
                pointer="/data/id",
            )
        attributes = data.get("attributes")
        _expect(isinstance(attributes, dict), "The data.attributes field is required.", "/data/attributes")
        assert isinstance(attributes, dict)
        allowed = {
            "variant_id",
            "invoice_immediately",
            "disable_prorations",
            "cancelled",
            "pause",
            "billing_anchor",
        }
        for name in attributes:
            _expect(name in allowed, f"The {name} attribute cannot be updated.", f"/data/attributes/{name}")
        if "variant_id" in attributes:
            _expect(
                type(attributes["variant_id"]) is int,
                "The variant_id field must be an integer.",
                "/data/attributes/variant_id",
            )
        for flag in ("invoice_immediately", "disable_prorations", "cancelled"):
            if flag in attributes:
                _expect(
                    isinstance(attributes[flag], bool),
                    f"The {flag} field must be true or false.",
                    f"/data/attributes/{flag}",
                )
        self.patches.append((subscription_id, json.loads(body)))
        current = subscription["attributes"]
        if "variant_id" in attributes:
            current["variant_id"] = attributes["variant_id"]
            current["variant_name"] = self._variant_name(str(attributes["variant_id"]))
        if "cancelled" in attributes:
            current["cancelled"] = attributes["cancelled"]
            current["status"] = "cancelled" if attributes["cancelled"] else "active"
            current["status_formatted"] = _formatted(current["status"])
            current["ends_at"] = current["renews_at"] if attributes["cancelled"] else None
        if "pause" in attributes:
            current["pause"] = attributes["pause"]
            current["status"] = "paused" if attributes["pause"] else "active"
            current["status_formatted"] = _formatted(current["status"])
        current["updated_at"] = _later_than(current.get("updated_at"))
        return HTTPStatus.OK, self._single(subscription)

    def _list_subscriptions(
        self, query: Mapping[str, str], body: bytes, headers: Mapping[str, str]
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        filters = (
            "store_id",
            "order_id",
            "order_item_id",
            "product_id",
            "variant_id",
            "user_email",
            "status",
        )
        return HTTPStatus.OK, self._page("/v1/subscriptions", self.subscriptions, query, filters)

    def _get_invoice(
        self, query: Mapping[str, str], body: bytes, headers: Mapping[str, str], invoice_id: str
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        return HTTPStatus.OK, self._single(self._found(self.invoices, invoice_id))

    def _list_invoices(
        self, query: Mapping[str, str], body: bytes, headers: Mapping[str, str]
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        filters = ("store_id", "status", "refunded", "subscription_id")
        return HTTPStatus.OK, self._page("/v1/subscription-invoices", self.invoices, query, filters)

    # --- JSON:API documents -----------------------------------------------------------------------

    def _resource(
        self, kind: str, resource_id: str, attributes: dict[str, Any], related: tuple[str, ...]
    ) -> dict[str, Any]:
        self_link = f"{self._api}/v1/{kind}/{resource_id}"
        return {
            "type": kind,
            "id": resource_id,
            "attributes": attributes,
            "relationships": {
                name: {
                    "links": {"related": f"{self_link}/{name}", "self": f"{self_link}/relationships/{name}"}
                }
                for name in related
            },
            "links": {"self": self_link},
        }

    def _single(self, resource: dict[str, Any]) -> dict[str, Any]:
        return {
            "jsonapi": {"version": "1.0"},
            "links": {"self": resource["links"]["self"]},
            "data": copy.deepcopy(resource),
        }

    def _found(self, resources: Mapping[str, dict[str, Any]], resource_id: str) -> dict[str, Any]:
        resource = resources.get(resource_id)
        if resource is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "The requested resource could not be found.")
        return resource

    def _page(
        self,
        path: str,
        resources: Mapping[str, dict[str, Any]],
        query: Mapping[str, str],
        filters: tuple[str, ...],
    ) -> dict[str, Any]:
        number = _page_parameter(query, "page[number]", 1, None)
        size = _page_parameter(query, "page[size]", _DEFAULT_PAGE_SIZE, _MAX_PAGE_SIZE)
        selected = []
        for resource in sorted(resources.values(), key=lambda item: _sort_key(item["id"])):
            attributes = resource["attributes"]
            if all(
                str(attributes.get(name)).lower() == query[f"filter[{name}]"].lower()
                for name in filters
                if f"filter[{name}]" in query
            ):
                selected.append(resource)
        total = len(selected)
        last_page = max(1, -(-total // size))
        start = (number - 1) * size
        chunk = selected[start : start + size]
        kept = {key: value for key, value in query.items() if key.startswith("filter[")}

        def link(page: int) -> str:
            return f"{self.url}{path}?{urlencode({**kept, 'page[number]': page, 'page[size]': size})}"

        links = {"first": link(1), "last": link(last_page)}
        if number > 1:
            links["prev"] = link(number - 1)
        if number < last_page:
            links["next"] = link(number + 1)
        return {
            "meta": {
                "page": {
                    "currentPage": number,
                    "from": start + 1 if chunk else None,
                    "lastPage": last_page,
                    "perPage": size,
                    "to": start + len(chunk) if chunk else None,
                    "total": total,
                }
            },
            "jsonapi": {"version": "1.0"},
            "links": links,
            "data": copy.deepcopy(chunk),
        }

    def _customer_id(self, email: str) -> int:
        if email not in self._customers:
            self._customers[email] = next(self._ids)
        return self._customers[email]

    def _variant_name(self, variant_id: str) -> str:
        return self.variant_names.get(variant_id, f"Variant {variant_id}")


# --- HTTP plumbing --------------------------------------------------------------------------------

_Endpoint = Callable[..., tuple[HTTPStatus, dict[str, Any]]]

_ROUTES: Final[tuple[tuple[str, re.Pattern[str], _Endpoint], ...]] = (
    ("POST", re.compile(r"/v1/checkouts"), LemonSqueezyServer._create_checkout),
    ("GET", re.compile(r"/v1/subscriptions"), LemonSqueezyServer._list_subscriptions),
    ("GET", re.compile(r"/v1/subscriptions/([^/]+)"), LemonSqueezyServer._get_subscription),
    ("PATCH", re.compile(r"/v1/subscriptions/([^/]+)"), LemonSqueezyServer._patch_subscription),
    ("GET", re.compile(r"/v1/subscription-invoices"), LemonSqueezyServer._list_invoices),
    ("GET", re.compile(r"/v1/subscription-invoices/([^/]+)"), LemonSqueezyServer._get_invoice),
)


class _MethodNotAllowed(Exception):
    def __init__(self, allowed: list[str]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = allowed


def _route(method: str, path: str) -> tuple[tuple[_Endpoint, tuple[str, ...]] | None, list[str]]:
    allowed: list[str] = []
    for route_method, pattern, handler in _ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if route_method == method:
            return (handler, match.groups()), []
        allowed.append(route_method)
    return None, allowed


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        lemonsqueezy: LemonSqueezyServer,
    ) -> None:
        super().__init__(address, handler)
        self.lemonsqueezy = lemonsqueezy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx pools connections
    server: _HttpServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        status, document, extra = self.server.lemonsqueezy.handle(self.command, self.path, headers, body)
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON_API)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not every request


# --- helpers --------------------------------------------------------------------------------------


def _document_data(body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    content_type = headers.get("content-type", "").split(";")[0].strip()
    if content_type != JSON_API:
        raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"The Content-Type header must be {JSON_API}.")
    try:
        document = json.loads(body)
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, "The request body is not valid JSON.") from None
    _expect(isinstance(document, dict), "The request body must be a JSON object.", "/")
    data = document.get("data")
    _expect(isinstance(data, dict), "The data field is required.", "/data")
    assert isinstance(data, dict)
    return data


def _relationship(relationships: Any, name: str, kind: str) -> str:
    pointer = f"/data/relationships/{name}"
    related = relationships.get(name) if isinstance(relationships, dict) else None
    linkage = related.get("data") if isinstance(related, dict) else None
    _expect(isinstance(linkage, dict), f"The {name} relationship is required.", pointer)
    assert isinstance(linkage, dict)
    _expect(
        linkage.get("type") == kind, f"The {name} relationship must have type {kind}.", f"{pointer}/data/type"
    )
    related_id = linkage.get("id")
    _expect(
        isinstance(related_id, str) and related_id != "",
        f"The {name} relationship id must be a string.",
        f"{pointer}/data/id",
    )
    assert isinstance(related_id, str)
    return related_id


def _expect(condition: bool, detail: str, pointer: str) -> None:
    if not condition:
        raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, detail, pointer=pointer)


def _page_parameter(query: Mapping[str, str], name: str, default: int, maximum: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1 or (maximum is not None and int(raw) > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ApiError(
            HTTPStatus.BAD_REQUEST, f"The {name} parameter must be an integer of at least 1{bound}."
        )
    return int(raw)


def _delivery(
    event_name: str, user_id: str | None, test_mode: bool, resource: dict[str, Any]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"test_mode": test_mode, "event_name": event_name}
    if user_id is not None:
        meta["custom_data"] = {"user_id": user_id}
    meta["webhook_id"] = str(uuid.uuid4())
    # A copy: the delivery is a snapshot, later changes to the stored resource must not leak in.
    return {"meta": meta, "data": copy.deepcopy(resource)}


def _webhook_url(gateway_url: str) -> str:
    return f"{gateway_url.rstrip('/')}{WEBHOOK_PATH}"


def _moment(value: datetime | str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _later_than(previous: object) -> str:
    """Now, but strictly after `previous`: a PATCH always moves `updated_at` forward."""
    now = datetime.now(UTC)
    if isinstance(previous, str):
        before = _moment(previous)
        if now <= before:
            now = before + timedelta(microseconds=1)
    return timestamp(now)


def _amounts(total: int, refunded_amount: int, currency: str) -> dict[str, Any]:
    return {
        "subtotal": total,
        "discount_total": 0,
        "tax": 0,
        "tax_inclusive": False,
        "total": total,
        "refunded_amount": refunded_amount,
        "subtotal_usd": total,
        "discount_total_usd": 0,
        "tax_usd": 0,
        "total_usd": total,
        "refunded_amount_usd": refunded_amount,
        "subtotal_formatted": _money(total, currency),
        "discount_total_formatted": _money(0, currency),
        "tax_formatted": _money(0, currency),
        "total_formatted": _money(total, currency),
        "refunded_amount_formatted": _money(refunded_amount, currency),
    }


def _money(cents: int, currency: str) -> str:
    symbol = "$" if currency == "USD" else f"{currency} "
    return f"{symbol}{cents / 100:,.2f}"


def _formatted(status: str) -> str:
    return status.replace("_", " ").title()


def _name_of(email: str) -> str:
    return email.split("@", 1)[0].replace(".", " ").title()


def _maybe_int(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _sort_key(resource_id: str) -> tuple[int, int, str]:
    return (0, int(resource_id), "") if resource_id.isdigit() else (1, 0, resource_id)
