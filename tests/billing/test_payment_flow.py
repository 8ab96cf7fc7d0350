"""The seed's payment sequence through the real gateway, billing service and PostgreSQL, with
Lemon Squeezy played by a local server that speaks its API and signs webhooks as it does."""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from support.billing import PRO, STUDIO, plan_of, renewal_invoice, subscribe_to_pro

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]


def balance(mesh: Any, user_id: str) -> dict[str, int]:
    (row,) = mesh.sql("SELECT balance, held FROM credit_accounts WHERE user_id = %s", user_id)
    return {"balance": row["balance"], "held": row["held"]}


def entries(mesh: Any, user_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    rows = mesh.sql(
        "SELECT kind, amount, reference FROM credit_entries WHERE user_id = %s ORDER BY id", user_id
    )
    return [row for row in rows if kind is None or row["kind"] == kind]


@pytest.fixture
def subscriber(new_account: Any, mesh: Any, lemonsqueezy: Any) -> Any:
    """A user who bought Pro: the subscription_created webhook has been delivered."""
    return subscribe_to_pro(mesh, lemonsqueezy, new_account("pro"))


def test_checkout_sends_the_user_to_lemonsqueezy(
    new_account: Any, rest: httpx.Client, lemonsqueezy: Any
) -> None:
    account = new_account("buyer")
    reply = rest.post("/api/v1/payment/subscribe", json={"plan": "PLAN_PRO"}, headers=account.headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["checkoutUrl"].startswith("http")
    request = lemonsqueezy.checkouts[-1]["data"]
    assert request["type"] == "checkouts"
    assert request["attributes"]["checkout_data"]["email"] == account.email
    assert request["attributes"]["checkout_data"]["custom"] == {"user_id": account.user_id}
    assert request["relationships"]["store"]["data"] == {"type": "stores", "id": "1"}
    assert request["relationships"]["variant"]["data"] == {"type": "variants", "id": PRO}

    bad = rest.post("/api/v1/payment/subscribe", json={"plan": "PLAN_FREE"}, headers=account.headers)
    assert bad.status_code == 400
    assert "plan" in bad.text


def test_plans_are_listed_from_one_configuration(mesh: Any, rest: httpx.Client) -> None:
    listed = mesh.pingvas("billing", "plans", "--json")
    assert listed.returncode == 0, listed.stderr
    plans = {p["plan"]: p for p in json.loads(listed.stdout)}
    assert plans["pro"] == {"plan": "pro", "variant_id": PRO, "monthly_credits": 15000, "price_usd": 75}
    assert plans["studio"]["monthly_credits"] == 30000 and plans["starter"]["price_usd"] == 25
    over_rest = rest.get("/api/v1/payment/plans").json()["plans"]
    assert [p["plan"] for p in over_rest] == [
        "PLAN_FREE",
        "PLAN_STARTER",
        "PLAN_PRO",
        "PLAN_STUDIO",
        "PLAN_ENTERPRISE",
    ]


def test_subscription_created_grants_the_plan(mesh: Any, subscriber: Any, rest: httpx.Client) -> None:
    me = rest.get("/api/v1/users/me", headers=subscriber.headers).json()
    assert me["plan"] == "PLAN_PRO"
    assert me["credits"]["balance"] == "15000"  # set to Pro's allowance: a reset, as a renewal is
    subscription = rest.get("/api/v1/payment/subscription", headers=subscriber.headers).json()["subscription"]
    assert subscription["status"] == "SUBSCRIPTION_STATUS_ACTIVE"
    assert subscription["plan"] == "PLAN_PRO"
    (reset,) = entries(mesh, subscriber.user_id, "reset")
    assert reset == {
        "kind": "reset",
        "amount": 14900,
        "reference": f"subscription:{subscriber.subscription_id}:created",
    }


@pytest.mark.parametrize(
    "tamper",
    ["missing", "empty", "truncated", "wrong", "base64", "reserialized"],
)
def test_a_bad_signature_is_401_and_changes_nothing(
    mesh: Any, new_account: Any, lemonsqueezy: Any, tamper: str
) -> None:
    account = new_account("forger")
    payload = lemonsqueezy.subscription_event(
        "subscription_created",
        f"sub-{uuid.uuid4().hex[:8]}",
        user_id=account.user_id,
        user_email=account.email,
        variant_id=STUDIO,
    )
    raw = json.dumps(payload, separators=(",", ":")).encode()
    good = lemonsqueezy.sign(raw)
    signature, body = {
        "missing": (None, raw),
        "empty": ("", raw),
        "truncated": (good[:32], raw),
        "wrong": (lemonsqueezy.sign(raw + b" "), raw),
        "base64": (base64.b64encode(bytes.fromhex(good)).decode(), raw),
        "reserialized": (good, json.dumps(payload, indent=2).encode()),
    }[tamper]
    reply = lemonsqueezy.deliver(mesh.gateway_url, payload, signature=signature, body=body)
    assert reply.status_code == 401, reply.text
    assert mesh.sql("SELECT * FROM subscriptions WHERE user_id = %s", account.user_id) == []
    assert plan_of(mesh, account.user_id) == "free"
    assert balance(mesh, account.user_id)["balance"] == 100


def test_duplicate_deliveries_grant_once(mesh: Any, new_account: Any, lemonsqueezy: Any) -> None:
    account = new_account("dupe")
    payload = lemonsqueezy.subscription_event(
        "subscription_created",
        f"sub-{uuid.uuid4().hex[:8]}",
        user_id=account.user_id,
        user_email=account.email,
        variant_id=PRO,
    )
    for _ in range(4):
        assert lemonsqueezy.deliver(mesh.gateway_url, payload).status_code == 200
    with ThreadPoolExecutor(max_workers=2) as pool:
        concurrent = list(
            pool.map(lambda _: lemonsqueezy.deliver(mesh.gateway_url, payload).status_code, range(2))
        )
    assert concurrent == [200, 200]
    assert [e["amount"] for e in entries(mesh, account.user_id, "grant")] == [100]
    assert [e["amount"] for e in entries(mesh, account.user_id, "reset")] == [14900]
    assert balance(mesh, account.user_id)["balance"] == 15000


def test_a_stale_update_never_resurrects_an_expired_subscription(
    mesh: Any, subscriber: Any, lemonsqueezy: Any
) -> None:
    now = datetime.now(UTC)
    expired = lemonsqueezy.subscription_event(
        "subscription_expired",
        subscriber.subscription_id,
        user_id=subscriber.user_id,
        user_email=subscriber.email,
        variant_id=PRO,
        status="expired",
        updated_at=now,
    )
    stale = lemonsqueezy.subscription_event(
        "subscription_updated",
        subscriber.subscription_id,
        user_id=subscriber.user_id,
        user_email=subscriber.email,
        variant_id=PRO,
        status="active",
        updated_at=now - timedelta(minutes=1),
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, expired).status_code == 200
    assert lemonsqueezy.deliver(mesh.gateway_url, stale).status_code == 200
    (row,) = mesh.sql("SELECT status FROM subscriptions WHERE user_id = %s", subscriber.user_id)
    assert row["status"] == "expired"
    assert plan_of(mesh, subscriber.user_id) == "free"
    assert balance(mesh, subscriber.user_id)["balance"] == 0


def test_a_payment_before_its_subscription_is_parked_then_applied(
    mesh: Any, new_account: Any, lemonsqueezy: Any
) -> None:
    account = new_account("early")
    subscription_id = f"sub-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    delivered = lemonsqueezy.deliver_invoice(
        mesh.gateway_url,
        "subscription_payment_success",
        subscription_id=subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        billing_reason="renewal",
        updated_at=now,
    )
    assert delivered.status_code == 200
    (parked,) = mesh.sql("SELECT status FROM webhook_deliveries WHERE subscription_id = %s", subscription_id)
    assert parked["status"] == "parked"
    assert entries(mesh, account.user_id, "reset") == []

    created = lemonsqueezy.subscription_event(
        "subscription_created",
        subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        variant_id=PRO,
        updated_at=now - timedelta(minutes=1),
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, created).status_code == 200
    assert [e["kind"] for e in entries(mesh, account.user_id)] == ["grant", "reset", "reset"]
    assert balance(mesh, account.user_id)["balance"] == 15000
    statuses = mesh.sql("SELECT status FROM webhook_deliveries WHERE subscription_id = %s", subscription_id)
    assert {row["status"] for row in statuses} == {"processed"}


def test_renewal_resets_credits_and_moves_the_renewal_date(
    mesh: Any, subscriber: Any, lemonsqueezy: Any
) -> None:
    assert mesh.pingvas("admin", "grant-credits", subscriber.email, "-4000").returncode == 0
    next_period = datetime.now(UTC) + timedelta(days=61)
    lemonsqueezy.subscription_event(  # what the API will answer when asked for the subscription
        "subscription_updated",
        subscriber.subscription_id,
        user_id=subscriber.user_id,
        user_email=subscriber.email,
        variant_id=PRO,
        renews_at=next_period,
    )
    invoice_id, renewal = renewal_invoice(lemonsqueezy, subscriber)
    for _ in range(3):
        assert lemonsqueezy.deliver(mesh.gateway_url, renewal).status_code == 200
    assert balance(mesh, subscriber.user_id)["balance"] == 15000
    assert [e["reference"] for e in entries(mesh, subscriber.user_id, "reset")] == [
        f"subscription:{subscriber.subscription_id}:created",
        f"invoice:{invoice_id}:renewal",
    ]
    (row,) = mesh.sql("SELECT renews_at FROM subscriptions WHERE user_id = %s", subscriber.user_id)
    assert abs((row["renews_at"] - next_period).total_seconds()) < 1


def test_payment_failure_grace_and_expiry(mesh: Any, subscriber: Any, lemonsqueezy: Any) -> None:
    delivered = lemonsqueezy.deliver_invoice(
        mesh.gateway_url,
        "subscription_payment_failed",
        subscription_id=subscriber.subscription_id,
        user_id=subscriber.user_id,
        user_email=subscriber.email,
        billing_reason="renewal",
    )
    assert delivered.status_code == 200
    (row,) = mesh.sql(
        "SELECT status, grace_period_end FROM subscriptions WHERE user_id = %s", subscriber.user_id
    )
    assert row["status"] == "payment_failed"
    assert abs((row["grace_period_end"] - (datetime.now(UTC) + timedelta(days=3))).total_seconds()) < 60
    assert plan_of(mesh, subscriber.user_id) == "pro"  # the plan holds through the grace period

    assert "expired 0" in mesh.pingvas("billing", "expire").stdout  # still in grace
    mesh.sql(
        "UPDATE subscriptions SET grace_period_end = now() - interval '1 minute' WHERE user_id = %s",
        subscriber.user_id,
    )  # three days pass
    first = mesh.pingvas("billing", "expire")
    assert first.returncode == 0, first.stderr
    assert plan_of(mesh, subscriber.user_id) == "free"
    assert balance(mesh, subscriber.user_id) == {"balance": 0, "held": 0}
    (revoke,) = entries(mesh, subscriber.user_id, "revoke")
    assert revoke["amount"] == -15000
    assert "expired 0" in mesh.pingvas("billing", "expire").stdout  # safe to run twice
    assert len(entries(mesh, subscriber.user_id, "revoke")) == 1
    emails = [path.read_text() for path in (mesh.home / "outbox").glob("*.eml")]
    assert any(subscriber.email in text and "payment" in text.lower() for text in emails)


def test_upgrade_previews_then_confirms(
    mesh: Any, subscriber: Any, rest: httpx.Client, lemonsqueezy: Any
) -> None:
    patches_before = len(lemonsqueezy.patches)
    preview = rest.put(
        "/api/v1/payment/upgrade",
        json={"plan": "PLAN_STUDIO", "validateOnly": True},
        headers=subscriber.headers,
    )
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["newPlanCredits"] == "30000" and body["creditsResetNow"] is True
    assert 29 <= body["daysLeftInPeriod"] <= 31
    assert len(lemonsqueezy.patches) == patches_before, "a preview changes nothing"
    assert plan_of(mesh, subscriber.user_id) == "pro"

    confirmed = rest.put("/api/v1/payment/upgrade", json={"plan": "PLAN_STUDIO"}, headers=subscriber.headers)
    assert confirmed.status_code == 200, confirmed.text
    subscription_id, patch = lemonsqueezy.patches[-1]
    assert subscription_id == subscriber.subscription_id
    assert str(patch["data"]["attributes"]["variant_id"]) == STUDIO
    # Nothing is handed out before the prorated invoice is paid (tests/billing/test_plan_changes.py).
    assert confirmed.json()["subscription"]["plan"] == "PLAN_PRO"
    assert plan_of(mesh, subscriber.user_id) == "pro"
    assert balance(mesh, subscriber.user_id)["balance"] == 15000


def test_a_refund_is_a_compensating_entry(mesh: Any, subscriber: Any, lemonsqueezy: Any) -> None:
    refund = lemonsqueezy.order_refunded_event(
        f"ord-{uuid.uuid4().hex[:8]}",
        user_id=subscriber.user_id,
        user_email=subscriber.email,
        refunded_amount=3750,
        total=7500,
        variant_id=PRO,
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, refund).status_code == 200
    assert lemonsqueezy.deliver(mesh.gateway_url, refund).status_code == 200
    (entry,) = entries(mesh, subscriber.user_id, "refund")
    assert entry["amount"] == -7500  # half the order refunded: half of Pro's 15,000 credits
    assert balance(mesh, subscriber.user_id)["balance"] == 15000 - 7500


def test_reconcile_applies_missed_webhooks_exactly_once(
    mesh: Any, new_account: Any, lemonsqueezy: Any
) -> None:
    account = new_account("missed")
    subscription_id = f"sub-{uuid.uuid4().hex[:8]}"
    # Lemon Squeezy knows of a subscription and a paid renewal; every webhook was lost.
    lemonsqueezy.subscription_event(
        "subscription_created",
        subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        variant_id=PRO,
        updated_at=datetime.now(UTC) - timedelta(days=30),
    )
    lemonsqueezy.invoice_event(
        "subscription_payment_success",
        f"inv-{uuid.uuid4().hex[:8]}",
        subscription_id=subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        billing_reason="renewal",
    )
    for _ in range(2):
        result = mesh.pingvas("billing", "reconcile")
        assert result.returncode == 0, result.stderr
    assert plan_of(mesh, account.user_id) == "pro"
    assert [e["kind"] for e in entries(mesh, account.user_id)] == ["grant", "reset", "reset"]
    assert balance(mesh, account.user_id)["balance"] == 15000


def test_unknown_and_test_mode_events_are_acknowledged_and_ignored(
    mesh: Any, new_account: Any, lemonsqueezy: Any
) -> None:
    account = new_account("ignored")
    unknown = {
        "meta": {"event_name": "license_key_created", "custom_data": {"user_id": account.user_id}},
        "data": {"type": "license-keys", "id": "1", "attributes": {}},
    }
    assert lemonsqueezy.deliver(mesh.gateway_url, unknown).status_code == 200
    test_mode = lemonsqueezy.subscription_event(
        "subscription_created",
        f"sub-{uuid.uuid4().hex[:8]}",
        user_id=account.user_id,
        user_email=account.email,
        variant_id=PRO,
        test_mode=True,
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, test_mode).status_code == 200
    assert plan_of(mesh, account.user_id) == "free"


def test_the_ledger_is_listed_with_pagination(subscriber: Any, rest: httpx.Client) -> None:
    first = rest.get("/api/v1/credits/entries", params={"pageSize": 1}, headers=subscriber.headers).json()
    assert len(first["entries"]) == 1 and first["nextPageToken"]
    assert first["entries"][0]["kind"] == "CREDIT_ENTRY_KIND_RESET"
    second = rest.get(
        "/api/v1/credits/entries",
        params={"pageSize": 1, "pageToken": first["nextPageToken"]},
        headers=subscriber.headers,
    ).json()
    assert second["entries"][0]["id"] != first["entries"][0]["id"]
    balance_reply = rest.get("/api/v1/credits/balance", headers=subscriber.headers).json()
    assert balance_reply["balance"] == {"balance": "15000", "held": "0", "available": "15000"}


def test_the_seed_payment_flow_end_to_end(
    mesh: Any, new_account: Any, rest: httpx.Client, lemonsqueezy: Any
) -> None:
    """subscribe -> webhook created -> generate -> renewal -> payment failed -> expire."""
    account = new_account("seed")
    checkout = rest.post("/api/v1/payment/subscribe", json={"plan": "PLAN_PRO"}, headers=account.headers)
    assert checkout.status_code == 200
    subscription_id = f"sub-{uuid.uuid4().hex[:8]}"
    created = lemonsqueezy.subscription_event(
        "subscription_created",
        subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        variant_id=PRO,
        updated_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, created).status_code == 200
    assert rest.get("/api/v1/users/me", headers=account.headers).json()["plan"] == "PLAN_PRO"

    generation = rest.post(
        "/api/v1/generation/create",
        json={"prompt": "fox", "width": 64, "height": 64, "steps": 2},
        headers=account.headers,
    ).json()
    with rest.stream(
        "GET", f"/api/v1/generation/{generation['id']}/events", headers=account.headers
    ) as stream:
        last = [line for line in stream.iter_lines() if line.startswith("data: ")][-1]
    charged = int(json.loads(last[6:])["succeeded"]["creditsCharged"])
    (job,) = mesh.sql("SELECT tier FROM generations WHERE id = %s", generation["id"])
    assert job["tier"] == "pro"  # the plan decides the band
    assert balance(mesh, account.user_id)["balance"] == 15000 - charged

    delivered = lemonsqueezy.deliver_invoice(
        mesh.gateway_url,
        "subscription_payment_success",
        subscription_id=subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        billing_reason="renewal",
    )
    assert delivered.status_code == 200
    assert balance(mesh, account.user_id)["balance"] == 15000

    delivered = lemonsqueezy.deliver_invoice(
        mesh.gateway_url,
        "subscription_payment_failed",
        subscription_id=subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        billing_reason="renewal",
    )
    assert delivered.status_code == 200
    subscription = rest.get("/api/v1/payment/subscription", headers=account.headers).json()["subscription"]
    assert subscription["status"] == "SUBSCRIPTION_STATUS_PAYMENT_FAILED"
    mesh.sql(
        "UPDATE subscriptions SET grace_period_end = now() - interval '1 second' WHERE user_id = %s",
        account.user_id,
    )
    assert "expired 1" in mesh.pingvas("billing", "expire").stdout
    me = rest.get("/api/v1/users/me", headers=account.headers).json()
    assert me["plan"] == "PLAN_FREE"
    assert me["credits"]["available"] == "0"
    kinds = [e["kind"] for e in entries(mesh, account.user_id)]
    assert kinds == ["grant", "reset", "hold", "capture", "reset", "revoke"]

    # Every step queued its email; the billing service's sender delivers them (embedded mode
    # writes .eml files to PINGVAS_HOME/outbox) without ever holding up a webhook.
    expected = {"subscription_started", "subscription_renewed", "payment_failed", "subscription_expired"}
    deadline = time.monotonic() + 30
    while True:
        sent = mesh.sql(
            "SELECT kind FROM email_outbox WHERE user_id = %s AND sent_at IS NOT NULL", account.user_id
        )
        if {row["kind"] for row in sent} == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(row["kind"] for row in sent) == sorted(expected)
    delivered = [path.read_text() for path in (mesh.home / "outbox").glob("*.eml")]
    assert sum(account.email in text for text in delivered) == 4


def test_cancel_resume_and_recovery_keep_the_plan(mesh: Any, subscriber: Any, lemonsqueezy: Any) -> None:
    now = datetime.now(UTC)

    def deliver_subscription(event: str, status: str, at: datetime) -> None:
        payload = lemonsqueezy.subscription_event(
            event,
            subscriber.subscription_id,
            user_id=subscriber.user_id,
            user_email=subscriber.email,
            variant_id=PRO,
            status=status,
            updated_at=at,
        )
        assert lemonsqueezy.deliver(mesh.gateway_url, payload).status_code == 200

    deliver_subscription("subscription_cancelled", "cancelled", now)
    (row,) = mesh.sql("SELECT status, ends_at FROM subscriptions WHERE user_id = %s", subscriber.user_id)
    assert row["status"] == "cancelled" and row["ends_at"] > now
    assert plan_of(mesh, subscriber.user_id) == "pro", "active until the end of the paid period"
    deliver_subscription("subscription_resumed", "active", now + timedelta(seconds=1))
    (row,) = mesh.sql("SELECT status FROM subscriptions WHERE user_id = %s", subscriber.user_id)
    assert row["status"] == "active"

    invoice = f"inv-{uuid.uuid4().hex[:8]}"
    for event in ("subscription_payment_failed", "subscription_payment_recovered"):
        payload = lemonsqueezy.invoice_event(
            event,
            invoice,
            subscription_id=subscriber.subscription_id,
            user_id=subscriber.user_id,
            user_email=subscriber.email,
        )
        assert lemonsqueezy.deliver(mesh.gateway_url, payload).status_code == 200
    (row,) = mesh.sql(
        "SELECT status, grace_period_end FROM subscriptions WHERE user_id = %s", subscriber.user_id
    )
    assert (row["status"], row["grace_period_end"]) == ("active", None)
    assert balance(mesh, subscriber.user_id)["balance"] == 15000
