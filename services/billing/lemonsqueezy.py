"""Lemon Squeezy, our merchant of record: webhook verification and parsing, and the API client.

Lemon Squeezy signs every webhook delivery with `X-Signature`, the hex HMAC-SHA256 of the raw
request body keyed by the webhook's signing secret. The signature covers bytes, not JSON: verify
before parsing, on the body exactly as received.

The API is JSON:API (`application/vnd.api+json`) behind a Bearer key. The client speaks only the
calls billing needs: checkouts, plan changes, and the listings that reconciliation reads to repair
webhooks we missed. Tests run it against a local server that speaks the same API; production
differs only in `api_url`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import httpx

from services.common.errors import FieldViolation, InvalidInput, Unauthenticated, Violations

JSON_API: Final = "application/vnd.api+json"
_HEX_DIGITS: Final = frozenset(string.hexdigits)
_SHA256_HEX_LENGTH: Final = 64
_MAX_PAGE_SIZE: Final = 100  # Lemon Squeezy's limit for page[size]
_MAX_PAGES: Final = 10_000  # a guard against a server whose pagination never ends


# --- Webhooks -------------------------------------------------------------------------------------


def verify_signature(secret: str, raw_body: bytes, signature: str | None) -> None:
    """Raise `Unauthenticated` unless `signature` is the hex HMAC-SHA256 of `raw_body` under `secret`.

    Lemon Squeezy sends lowercase hex; either case of the right digest is accepted. An empty secret
    is a deployment error, never a reason to trust a delivery, so it raises `ValueError`.
    """
    if not secret:
        raise ValueError("the Lemon Squeezy webhook signing secret is empty")
    if signature is None or not signature.strip():
        raise Unauthenticated("missing X-Signature header on the Lemon Squeezy webhook")
    candidate = signature.strip()
    if len(candidate) != _SHA256_HEX_LENGTH or not _HEX_DIGITS.issuperset(candidate):
        raise Unauthenticated(
            "malformed X-Signature: expected the 64-character hex HMAC-SHA256 of the request body"
        )
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), candidate.lower().encode("ascii")):
        raise Unauthenticated("X-Signature does not match the request body")


@dataclass(frozen=True)
class WebhookEvent:
    """One webhook delivery: `meta` (which event, for whom) and `data` (the resource, as it is now).

    Lemon Squeezy sends the whole resource with every event, and may deliver events late, twice,
    or out of order; `updated_at` lets a consumer drop a delivery older than what it has applied.
    """

    event_name: str
    custom_data: dict[str, Any]
    test_mode: bool
    resource_type: str
    resource_id: str
    attributes: dict[str, Any] = field(repr=False)  # holds the customer's name and email
    updated_at: datetime | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, raw_body: bytes) -> WebhookEvent:
        """Parse a verified body; raise `InvalidInput` (field `body`) when it is not an event."""
        try:
            document = json.loads(raw_body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise _invalid(f"not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise _invalid("expected a JSON object with `meta` and `data`")
        meta = document.get("meta")
        data = document.get("data")
        violations = Violations()
        if not isinstance(meta, dict):
            violations.add("body", "`meta` is missing or not an object")
        if not isinstance(data, dict):
            violations.add("body", "`data` is missing or not an object")
        violations.raise_if_any()
        assert isinstance(meta, dict) and isinstance(data, dict)

        event_name = meta.get("event_name")
        if not isinstance(event_name, str) or not event_name:
            violations.add("body", "`meta.event_name` is missing or not a string")
        custom_data = meta.get("custom_data")
        if custom_data is None:
            custom_data = {}
        elif not isinstance(custom_data, dict):
            violations.add("body", "`meta.custom_data` is not an object")
        test_mode = meta.get("test_mode", False)
        if not isinstance(test_mode, bool):
            violations.add("body", "`meta.test_mode` is not a boolean")
        resource_type = data.get("type")
        if not isinstance(resource_type, str) or not resource_type:
            violations.add("body", "`data.type` is missing or not a string")
        resource_id = data.get("id")
        if isinstance(resource_id, int) and not isinstance(resource_id, bool):
            resource_id = str(resource_id)
        if not isinstance(resource_id, str) or not resource_id:
            violations.add("body", "`data.id` is missing or not a string")
        attributes = data.get("attributes")
        if not isinstance(attributes, dict):
            violations.add("body", "`data.attributes` is missing or not an object")
            attributes = {}
        updated_at: datetime | None = None
        try:
            updated_at = _parse_timestamp(attributes.get("updated_at"))
        except ValueError as exc:
            violations.add("body", f"`data.attributes.updated_at`: {exc}")
        violations.raise_if_any()
        assert isinstance(event_name, str) and isinstance(custom_data, dict)
        assert isinstance(resource_type, str) and isinstance(resource_id, str)
        assert isinstance(test_mode, bool)
        return cls(
            event_name=event_name,
            custom_data=custom_data,
            test_mode=test_mode,
            resource_type=resource_type,
            resource_id=resource_id,
            attributes=attributes,
            updated_at=updated_at,
            raw=document,
        )

    @property
    def subscription_id(self) -> str | None:
        """The subscription this event is about: a subscription's own id, or an invoice's."""
        if self.resource_type == "subscriptions":
            return self.resource_id
        if self.resource_type == "subscription-invoices":
            return _id_string(self.attributes.get("subscription_id"))
        return None

    @property
    def user_id(self) -> str | None:
        """Our user, as the checkout's `custom.user_id` carried it; None when the event has none."""
        return _id_string(self.custom_data.get("user_id"))

    @property
    def webhook_id(self) -> str | None:
        """The webhook's id (`meta.webhook_id`), when Lemon Squeezy sent one."""
        value = self.raw.get("meta", {}).get("webhook_id")
        return value if isinstance(value, str) and value else None


def _invalid(description: str) -> InvalidInput:
    return InvalidInput([FieldViolation("body", description)])


def _id_string(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _parse_timestamp(value: object) -> datetime | None:
    """Lemon Squeezy's ISO 8601 timestamps (`2024-05-01T12:00:00.000000Z`) as aware UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not an ISO 8601 string")
    parsed = datetime.fromisoformat(value)  # Python 3.11 accepts the trailing Z
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# --- API client -----------------------------------------------------------------------------------


class LemonSqueezyError(Exception):
    """A failed API call. `status` is the HTTP status, or 0 when no response came back."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Lemon Squeezy API error {status or 'network'}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def retryable(self) -> bool:
        """Worth trying again later: no response, rate limited, or a server-side failure."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class LemonSqueezyClient:
    """The Lemon Squeezy API calls billing makes, for one store.

    `api_url` is the origin without `/v1` (`https://api.lemonsqueezy.com`). `page_size` is what the
    listings ask for per page (Lemon Squeezy allows at most 100).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        store_id: str,
        *,
        timeout: float = 10.0,
        page_size: int = _MAX_PAGE_SIZE,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not 1 <= page_size <= _MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {_MAX_PAGE_SIZE}, got {page_size}")
        self.store_id = store_id
        self.page_size = page_size
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            headers={
                "Accept": JSON_API,
                "Content-Type": JSON_API,
                "Authorization": f"Bearer {api_key}",
                "User-Agent": "pingvas-billing",
            },
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> LemonSqueezyClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def create_checkout(self, *, variant_id: str, email: str, user_id: str) -> str:
        """Create a checkout for `variant_id`, prefilled with `email`; return its URL.

        `user_id` rides in `checkout_data.custom` and comes back as `meta.custom_data.user_id` on
        every webhook of the order and subscription the checkout creates.
        """
        body = {
            "data": {
                "type": "checkouts",
                "attributes": {"checkout_data": {"email": email, "custom": {"user_id": user_id}}},
                "relationships": {
                    "store": {"data": {"type": "stores", "id": self.store_id}},
                    "variant": {"data": {"type": "variants", "id": variant_id}},
                },
            }
        }
        data = await self._data("POST", "/v1/checkouts", body=body)
        url = data.get("attributes", {}).get("url")
        if not isinstance(url, str) or not url:
            raise LemonSqueezyError(201, "the created checkout has no data.attributes.url")
        return url

    async def update_subscription_variant(
        self, subscription_id: str, variant_id: str, *, invoice_immediately: bool
    ) -> dict[str, Any]:
        """Move a subscription to another variant (plan); return the updated subscription.

        `invoice_immediately` charges the prorated difference now (an upgrade) instead of at the
        next renewal (a downgrade).
        """
        body = {
            "data": {
                "type": "subscriptions",
                "id": subscription_id,
                "attributes": {
                    "variant_id": _numeric_id("variant_id", variant_id),
                    "invoice_immediately": invoice_immediately,
                },
            }
        }
        return await self._data("PATCH", f"/v1/subscriptions/{_segment(subscription_id)}", body=body)

    async def get_subscription(self, subscription_id: str) -> dict[str, Any]:
        return await self._data("GET", f"/v1/subscriptions/{_segment(subscription_id)}")

    async def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription of the store, all pages."""
        return await self._list_all("/v1/subscriptions")

    async def list_subscription_invoices(self) -> list[dict[str, Any]]:
        """Every subscription invoice of the store, all pages."""
        return await self._list_all("/v1/subscription-invoices")

    async def _list_all(self, path: str) -> list[dict[str, Any]]:
        # Pages are requested by number with our own filter, never by fetching `links.next`
        # as given: the Bearer key only ever goes to `api_url`, and the store filter cannot be lost.
        # Offset pages can shift while we read; keying by id drops the duplicates that causes.
        items: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            document = await self._request(
                "GET",
                path,
                params={
                    "filter[store_id]": self.store_id,
                    "page[number]": str(page),
                    "page[size]": str(self.page_size),
                },
            )
            data = document.get("data")
            if not isinstance(data, list):
                raise LemonSqueezyError(200, f"GET {path} returned no `data` list")
            for resource in data:
                if isinstance(resource, dict) and isinstance(resource.get("id"), str):
                    items[resource["id"]] = resource
            if not data or not _has_next_page(document, page) or page >= _MAX_PAGES:
                return list(items.values())
            page += 1

    async def _data(self, method: str, path: str, *, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        document = await self._request(method, path, body=body)
        data = document.get("data")
        if not isinstance(data, dict):
            raise LemonSqueezyError(200, f"{method} {path} returned no `data` object")
        return data

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method,
                path,
                params=params,
                content=json.dumps(body).encode() if body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise LemonSqueezyError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise LemonSqueezyError(response.status_code, _error_detail(response))
        try:
            document = response.json()
        except ValueError as exc:
            raise LemonSqueezyError(response.status_code, f"{method} {path}: response is not JSON") from exc
        if not isinstance(document, dict):
            raise LemonSqueezyError(response.status_code, f"{method} {path}: response is not an object")
        return document


def _has_next_page(document: Mapping[str, Any], page: int) -> bool:
    """`links.next` when the page carries links (JSON:API), else `meta.page.lastPage`."""
    links = document.get("links")
    if isinstance(links, dict) and "next" in links:
        return bool(links["next"])
    meta = document.get("meta")
    pagination = meta.get("page") if isinstance(meta, dict) else None
    last_page = pagination.get("lastPage") if isinstance(pagination, dict) else None
    return isinstance(last_page, int) and page < last_page


def _error_detail(response: httpx.Response) -> str:
    """JSON:API `errors[0].detail` (or its title), else the body's text, else the reason phrase."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        errors = document.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            for key in ("detail", "title"):
                value = errors[0].get(key)
                if isinstance(value, str) and value:
                    return value
    text = response.text.strip()
    return text[:500] if text else response.reason_phrase


def _numeric_id(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a Lemon Squeezy numeric id, got {value!r}") from None


def _segment(resource_id: str) -> str:
    """An id as one URL path segment: an id from a webhook must not be able to walk the API."""
    if not resource_id:
        raise ValueError("a Lemon Squeezy resource id must not be empty")
    return quote(resource_id, safe="")
