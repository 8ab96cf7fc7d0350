"""Lemon Squeezy: the API client against a local server speaking the API, webhook signatures and
event parsing. No mesh: these run without PostgreSQL, Redis or Envoy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from support.lemonsqueezy import LemonSqueezyServer

from services.billing.lemonsqueezy import (
    LemonSqueezyClient,
    LemonSqueezyError,
    WebhookEvent,
    verify_signature,
)
from services.common.errors import InvalidInput, Unauthenticated

API_KEY = "ls-test-key"
SECRET = "whsec-test-signing-secret"
STORE = "7"


@pytest.fixture
def server() -> Iterator[LemonSqueezyServer]:
    with LemonSqueezyServer(API_KEY, SECRET, store_id=STORE) as running:
        yield running


@pytest.fixture
async def client(server: LemonSqueezyServer) -> AsyncIterator[LemonSqueezyClient]:
    async with LemonSqueezyClient(server.url, API_KEY, STORE) as api:
        yield api


def seed_subscriptions(server: LemonSqueezyServer, count: int) -> None:
    for number in range(1, count + 1):
        server.subscription_event(
            "subscription_created",
            str(number),
            user_id=f"user-{number}",
            user_email=f"user{number}@example.com",
            variant_id="101",
        )


# --- the client -----------------------------------------------------------------------------------


async def test_create_checkout_sends_the_json_api_body_and_returns_the_url(
    server: LemonSqueezyServer, client: LemonSqueezyClient
) -> None:
    url = await client.create_checkout(variant_id="102", email="ada@example.com", user_id="u-42")

    assert server.checkouts == [
        {
            "data": {
                "type": "checkouts",
                "attributes": {"checkout_data": {"email": "ada@example.com", "custom": {"user_id": "u-42"}}},
                "relationships": {
                    "store": {"data": {"type": "stores", "id": STORE}},
                    "variant": {"data": {"type": "variants", "id": "102"}},
                },
            }
        }
    ]
    assert url.startswith("https://pingvas.lemonsqueezy.com/checkout/custom/")
    request = server.received[-1]
    assert (request.method, request.path) == ("POST", "/v1/checkouts")
    assert request.headers["accept"] == "application/vnd.api+json"
    assert request.headers["content-type"] == "application/vnd.api+json"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


async def test_update_subscription_variant_patches_the_subscription(
    server: LemonSqueezyServer, client: LemonSqueezyClient
) -> None:
    server.variant_names["103"] = "Studio"
    server.subscription_event(
        "subscription_created",
        "55",
        user_id="u-1",
        user_email="ada@example.com",
        variant_id="101",
        updated_at=datetime(2025, 1, 1, tzinfo=UTC),
    )

    updated = await client.update_subscription_variant("55", "103", invoice_immediately=True)

    assert server.patches == [
        (
            "55",
            {
                "data": {
                    "type": "subscriptions",
                    "id": "55",
                    "attributes": {"variant_id": 103, "invoice_immediately": True},
                }
            },
        )
    ]
    assert updated["type"] == "subscriptions" and updated["id"] == "55"
    assert updated["attributes"]["variant_id"] == 103
    assert updated["attributes"]["variant_name"] == "Studio"
    assert updated["attributes"]["updated_at"] > "2025-01-01T00:00:00.000000Z"
    assert server.subscriptions["55"]["attributes"]["variant_id"] == 103


async def test_update_subscription_variant_rejects_a_non_numeric_variant(client: LemonSqueezyClient) -> None:
    with pytest.raises(ValueError, match="variant_id"):
        await client.update_subscription_variant("55", "pro", invoice_immediately=False)


async def test_get_subscription_returns_the_stored_resource(
    server: LemonSqueezyServer, client: LemonSqueezyClient
) -> None:
    server.subscription_event(
        "subscription_created", "8", user_id="u-8", user_email="b@example.com", variant_id="102"
    )

    subscription = await client.get_subscription("8")

    assert subscription == server.subscriptions["8"]
    assert subscription["attributes"]["store_id"] == int(STORE)
    assert subscription["attributes"]["status"] == "active"


async def test_list_subscriptions_reads_every_page_of_the_store(
    server: LemonSqueezyServer, client: LemonSqueezyClient
) -> None:
    seed_subscriptions(server, 230)
    server.subscription_event(
        "subscription_created", "999", user_id="u", user_email="x@example.com", variant_id="101"
    )
    server.subscriptions["999"]["attributes"]["store_id"] = 8  # another store's

    subscriptions = await client.list_subscriptions()

    assert sorted(int(item["id"]) for item in subscriptions) == list(range(1, 231))
    pages = [request.query for request in server.received if request.path == "/v1/subscriptions"]
    assert [page["page[number]"] for page in pages] == ["1", "2", "3"]
    assert {page["page[size]"] for page in pages} == {"100"}
    assert {page["filter[store_id]"] for page in pages} == {STORE}


async def test_list_subscriptions_with_a_small_page_size(server: LemonSqueezyServer) -> None:
    seed_subscriptions(server, 5)

    async with LemonSqueezyClient(server.url, API_KEY, STORE, page_size=2) as api:
        subscriptions = await api.list_subscriptions()

    assert [item["id"] for item in subscriptions] == ["1", "2", "3", "4", "5"]
    assert server.requests.count(("GET", "/v1/subscriptions")) == 3


async def test_list_subscriptions_of_an_empty_store(client: LemonSqueezyClient) -> None:
    assert await client.list_subscriptions() == []


async def test_list_subscription_invoices_reads_every_page(server: LemonSqueezyServer) -> None:
    seed_subscriptions(server, 1)
    for number in range(1, 8):
        server.invoice_event(
            "subscription_payment_success",
            str(100 + number),
            subscription_id="1",
            user_id="user-1",
            user_email="user1@example.com",
        )

    async with LemonSqueezyClient(server.url, API_KEY, STORE, page_size=3) as api:
        invoices = await api.list_subscription_invoices()

    assert [item["id"] for item in invoices] == [str(100 + number) for number in range(1, 8)]
    assert all(item["type"] == "subscription-invoices" for item in invoices)
    assert all(item["attributes"]["subscription_id"] == 1 for item in invoices)
    assert server.requests.count(("GET", "/v1/subscription-invoices")) == 3


async def test_a_wrong_api_key_is_a_401(server: LemonSqueezyServer) -> None:
    async with LemonSqueezyClient(server.url, "not-the-key", STORE) as api:
        with pytest.raises(LemonSqueezyError) as caught:
            await api.list_subscriptions()

    assert caught.value.status == 401
    assert caught.value.detail == "Unauthenticated."
    assert not caught.value.retryable


async def test_an_unknown_subscription_is_a_404(client: LemonSqueezyClient) -> None:
    with pytest.raises(LemonSqueezyError) as on_get:
        await client.get_subscription("404404")
    with pytest.raises(LemonSqueezyError) as on_patch:
        await client.update_subscription_variant("404404", "102", invoice_immediately=False)

    assert on_get.value.status == on_patch.value.status == 404
    assert "could not be found" in on_get.value.detail


async def test_an_id_cannot_walk_the_api_path(server: LemonSqueezyServer, client: LemonSqueezyClient) -> None:
    with pytest.raises(LemonSqueezyError) as caught:
        await client.get_subscription("../checkouts")

    assert caught.value.status == 404
    assert server.requests[-1] == ("GET", "/v1/subscriptions/..%2Fcheckouts")


async def test_a_checkout_for_another_store_is_a_422_with_the_api_detail(server: LemonSqueezyServer) -> None:
    async with LemonSqueezyClient(server.url, API_KEY, "8") as api:
        with pytest.raises(LemonSqueezyError) as caught:
            await api.create_checkout(variant_id="101", email="a@example.com", user_id="u")

    assert caught.value.status == 422
    assert "store" in caught.value.detail
    assert server.checkouts == []


async def test_an_unreachable_api_is_a_retryable_status_0() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with LemonSqueezyClient(f"http://127.0.0.1:{closed_port}", API_KEY, STORE, timeout=2) as api:
        with pytest.raises(LemonSqueezyError) as caught:
            await api.get_subscription("1")

    assert caught.value.status == 0
    assert caught.value.retryable


async def test_a_non_json_error_keeps_the_response_text() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="upstream timed out"))
    async with LemonSqueezyClient("https://api.example", API_KEY, STORE, transport=transport) as api:
        with pytest.raises(LemonSqueezyError) as caught:
            await api.list_subscription_invoices()

    assert (caught.value.status, caught.value.detail) == (502, "upstream timed out")
    assert caught.value.retryable


def test_the_local_server_rejects_bad_shapes(server: LemonSqueezyServer) -> None:
    server.subscription_event(
        "subscription_created", "5", user_id="u", user_email="a@example.com", variant_id="1"
    )
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Accept": "application/vnd.api+json",
        "Content-Type": "application/vnd.api+json",
    }
    string_variant = {
        "data": {
            "type": "subscriptions",
            "id": "5",
            "attributes": {"variant_id": "2", "invoice_immediately": True},
        }
    }
    no_relationships = {"data": {"type": "checkouts", "attributes": {}}}

    patched = httpx.patch(f"{server.url}/v1/subscriptions/5", json=string_variant, headers=headers)
    posted = httpx.post(f"{server.url}/v1/checkouts", json=no_relationships, headers=headers)
    plain_json = httpx.post(
        f"{server.url}/v1/checkouts",
        json=no_relationships,
        headers={**headers, "Content-Type": "application/json"},
    )

    assert patched.status_code == 422
    assert patched.json()["errors"][0]["source"] == {"pointer": "/data/attributes/variant_id"}
    assert posted.status_code == 422
    assert posted.json()["errors"][0]["source"] == {"pointer": "/data/relationships"}
    assert plain_json.status_code == 415
    assert server.patches == [] and server.checkouts == []


# --- webhook signatures ---------------------------------------------------------------------------


@pytest.fixture
def delivery(server: LemonSqueezyServer) -> tuple[bytes, str]:
    payload = server.subscription_event(
        "subscription_created", "1", user_id="u-1", user_email="ada@example.com", variant_id="101"
    )
    body, headers = server.webhook_request(payload)
    return body, headers["X-Signature"]


def test_the_correct_signature_passes(delivery: tuple[bytes, str]) -> None:
    body, signature = delivery

    verify_signature(SECRET, body, signature)
    verify_signature(SECRET, body, signature.upper())


def test_the_signature_is_hex_hmac_sha256_of_the_raw_body(delivery: tuple[bytes, str]) -> None:
    body, signature = delivery

    assert signature == hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("name", "forge"),
    [
        ("missing", lambda body, good: None),
        ("empty", lambda body, good: ""),
        ("blank", lambda body, good: "   "),
        ("truncated", lambda body, good: good[:-1]),
        ("extended", lambda body, good: good + "0"),
        ("non-hex", lambda body, good: "z" * 64),
        ("wrong", lambda body, good: hmac.new(b"another-secret", body, hashlib.sha256).hexdigest()),
        ("flipped", lambda body, good: ("0" if good[0] != "0" else "1") + good[1:]),
        ("base64", lambda body, good: base64.b64encode(bytes.fromhex(good)).decode()),
        ("sha256-of-body", lambda body, good: hashlib.sha256(body).hexdigest()),
    ],
)
def test_a_bad_signature_is_unauthenticated(delivery: tuple[bytes, str], name: str, forge: Any) -> None:
    body, good = delivery

    with pytest.raises(Unauthenticated, match="X-Signature"):
        verify_signature(SECRET, body, forge(body, good))


def test_the_signature_covers_bytes_not_json(delivery: tuple[bytes, str]) -> None:
    body, signature = delivery
    reserialized = json.dumps(json.loads(body)).encode()

    assert reserialized != body  # Lemon Squeezy escapes slashes; json.dumps does not
    with pytest.raises(Unauthenticated, match="does not match"):
        verify_signature(SECRET, reserialized, signature)


def test_an_empty_secret_never_verifies(delivery: tuple[bytes, str]) -> None:
    body, _ = delivery

    with pytest.raises(ValueError, match="secret"):
        verify_signature("", body, hmac.new(b"", body, hashlib.sha256).hexdigest())


def test_deliver_posts_the_raw_signed_body_like_lemonsqueezy(server: LemonSqueezyServer) -> None:
    captured: list[tuple[str, dict[str, str], bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            captured.append((self.path, dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    gateway = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=gateway.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        gateway_url = f"http://127.0.0.1:{gateway.server_address[1]}"
        payload = server.subscription_event(
            "subscription_updated", "3", user_id="u-3", user_email="c@example.com", variant_id="102"
        )
        signed = server.deliver(gateway_url, payload)
        unsigned = server.deliver(gateway_url, payload, signature=None)
        forged = server.deliver(gateway_url, payload, signature="deadbeef", body=b'{"meta":{}}')
    finally:
        gateway.shutdown()
        gateway.server_close()

    assert signed.status_code == unsigned.status_code == forged.status_code == 200
    (path, headers, body), (_, unsigned_headers, _), (_, forged_headers, forged_body) = captured
    assert path == "/api/v1/payment/webhook"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Event-Name"] == "subscription_updated"
    verify_signature(SECRET, body, headers["X-Signature"])
    assert json.loads(body) == payload
    assert "X-Signature" not in unsigned_headers
    assert (forged_headers["X-Signature"], forged_body) == ("deadbeef", b'{"meta":{}}')


# --- webhook events -------------------------------------------------------------------------------


def test_parse_a_subscription_event(server: LemonSqueezyServer) -> None:
    payload = server.subscription_event(
        "subscription_cancelled",
        "42",
        user_id="u-42",
        user_email="ada@example.com",
        variant_id="102",
        status="cancelled",
        updated_at="2025-03-04T05:06:07.123456Z",
        test_mode=True,
    )
    body, _ = server.webhook_request(payload)

    event = WebhookEvent.parse(body)

    assert event.event_name == "subscription_cancelled"
    assert event.custom_data == {"user_id": "u-42"}
    assert event.user_id == "u-42"
    assert event.test_mode is True
    assert (event.resource_type, event.resource_id) == ("subscriptions", "42")
    assert event.subscription_id == "42"
    assert event.attributes["status"] == "cancelled"
    assert event.attributes["variant_id"] == 102
    assert event.attributes["ends_at"] == event.attributes["renews_at"]
    assert event.updated_at == datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    assert event.updated_at.utcoffset() is not None
    assert event.webhook_id == payload["meta"]["webhook_id"]
    assert event.raw == payload
    assert "ada@example.com" not in repr(event)


def test_parse_an_invoice_event_finds_its_subscription(server: LemonSqueezyServer) -> None:
    payload = server.invoice_event(
        "subscription_payment_success",
        "9001",
        subscription_id="42",
        user_id="u-42",
        user_email="ada@example.com",
        billing_reason="initial",
    )

    event = WebhookEvent.parse(json.dumps(payload).encode())

    assert (event.resource_type, event.resource_id) == ("subscription-invoices", "9001")
    assert event.attributes["subscription_id"] == 42
    assert event.subscription_id == "42"
    assert event.attributes["status"] == "paid"
    assert event.attributes["billing_reason"] == "initial"
    assert server.invoices["9001"]["attributes"]["status"] == "paid"


def test_parse_an_order_refund_without_custom_data(server: LemonSqueezyServer) -> None:
    payload = server.order_refunded_event(
        "77", user_id=None, user_email="b@example.com", refunded_amount=1000
    )

    event = WebhookEvent.parse(json.dumps(payload).encode())

    assert event.event_name == "order_refunded"
    assert event.resource_type == "orders"
    assert event.attributes["status"] == "partial_refund"
    assert event.custom_data == {}
    assert event.user_id is None
    assert event.subscription_id is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"{}",
        b'{"meta": {"event_name": "subscription_created"}}',
        b'{"meta": {}, "data": {"type": "subscriptions", "id": "1", "attributes": {}}}',
        b'{"meta": {"event_name": "x"}, "data": {"type": "subscriptions", "attributes": {}}}',
        b'{"meta": {"event_name": "x"}, "data": {"type": "subscriptions", "id": "1"}}',
        b'{"meta": {"event_name": "x", "custom_data": []}, "data": {"type": "s", "id": "1", "attributes": {}}}',
        b'{"meta": {"event_name": "x"}, "data": {"type": "s", "id": "1", "attributes": {"updated_at": "soon"}}}',
    ],
)
def test_parse_rejects_what_is_not_an_event(body: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        WebhookEvent.parse(body)

    assert caught.value.violations
    assert {violation.field for violation in caught.value.violations} == {"body"}


def test_a_delivery_is_a_snapshot_of_the_resource(server: LemonSqueezyServer) -> None:
    first = server.subscription_event(
        "subscription_created", "5", user_id="u", user_email="a@example.com", variant_id="101"
    )
    second = server.subscription_event(
        "subscription_updated",
        "5",
        user_id="u",
        user_email="a@example.com",
        variant_id="102",
        status="past_due",
    )

    assert first["data"]["attributes"]["variant_id"] == 101
    assert second["data"]["attributes"]["status"] == "past_due"
    assert second["data"]["attributes"]["created_at"] == first["data"]["attributes"]["created_at"]
    assert server.subscriptions["5"]["attributes"]["variant_id"] == 102
