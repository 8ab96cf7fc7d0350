"""A user's history of subscriptions (issue 9, part 1): a returning subscriber, a change of plan
on the way back, and a new subscription that starts while the old one is cancelled but still
paid for. Every event is delivered twice, and the whole story again at the end: duplicates change
nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from support.billing import PRO, STUDIO

pytestmark = [pytest.mark.integration]


def ledger(mesh: Any, user_id: str) -> list[tuple[str, int, str]]:
    rows = mesh.sql(
        "SELECT kind, amount, reference FROM credit_entries WHERE user_id = %s ORDER BY id", user_id
    )
    return [(row["kind"], row["amount"], row["reference"]) for row in rows]


def emails(mesh: Any, user_id: str) -> list[tuple[str, str]]:
    rows = mesh.sql("SELECT kind, dedupe_key FROM email_outbox WHERE user_id = %s ORDER BY id", user_id)
    return [(row["kind"], row["dedupe_key"]) for row in rows]


class Story:
    """Lemon Squeezy's side of one user's subscriptions: each event is delivered twice and kept,
    so that the test can deliver the whole story again."""

    def __init__(self, mesh: Any, lemonsqueezy: Any, account: Any) -> None:
        self.mesh = mesh
        self.lemonsqueezy = lemonsqueezy
        self.account = account
        self.delivered: list[dict[str, Any]] = []
        self.start = datetime.now(UTC) - timedelta(days=90)

    def at(self, days: float) -> datetime:
        return self.start + timedelta(days=days)

    def deliver(self, payload: dict[str, Any]) -> None:
        for _ in range(2):
            reply = self.lemonsqueezy.deliver(self.mesh.gateway_url, payload)
            assert reply.status_code == 200, reply.text
        self.delivered.append(payload)

    def subscription(
        self, event: str, subscription_id: str, variant: str, at: datetime, **fields: Any
    ) -> None:
        self.deliver(
            self.lemonsqueezy.subscription_event(
                event,
                subscription_id,
                user_id=self.account.user_id,
                user_email=self.account.email,
                variant_id=variant,
                updated_at=at,
                **fields,
            )
        )

    def invoice(self, event: str, subscription_id: str, at: datetime, **fields: Any) -> str:
        invoice_id = f"inv-{uuid.uuid4().hex[:8]}"
        self.deliver(
            self.lemonsqueezy.invoice_event(
                event,
                invoice_id,
                subscription_id=subscription_id,
                user_id=self.account.user_id,
                user_email=self.account.email,
                updated_at=at,
                **fields,
            )
        )
        return invoice_id

    def subscribe_then_lapse(self, subscription_id: str, variant: str) -> None:
        """Subscription A: created, cancelled, and expired when its paid period ran out."""
        self.subscription("subscription_created", subscription_id, variant, self.at(0))
        self.subscription("subscription_cancelled", subscription_id, variant, self.at(10), status="cancelled")
        self.subscription("subscription_expired", subscription_id, variant, self.at(30), status="expired")

    def redeliver_everything(self) -> None:
        for payload in self.delivered:
            assert self.lemonsqueezy.deliver(self.mesh.gateway_url, payload).status_code == 200


@pytest.fixture
def story(mesh: Any, lemonsqueezy: Any, new_account: Any) -> Story:
    return Story(mesh, lemonsqueezy, new_account("returning"))


def me(rest: httpx.Client, account: Any) -> dict[str, Any]:
    reply = rest.get("/api/v1/users/me", headers=account.headers)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_a_returning_subscriber_gets_the_new_subscription(
    mesh: Any, story: Story, rest: httpx.Client, lemonsqueezy: Any
) -> None:
    account = story.account
    first, second = f"sub-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    assert rest.post(
        "/api/v1/payment/subscribe", json={"plan": "PLAN_PRO"}, headers=account.headers
    ).is_success
    story.subscribe_then_lapse(first, PRO)
    assert me(rest, account)["plan"] == "PLAN_FREE"
    assert me(rest, account)["credits"]["balance"] == "0"

    checkout = rest.post("/api/v1/payment/subscribe", json={"plan": "PLAN_PRO"}, headers=account.headers)
    assert checkout.status_code == 200, checkout.text
    assert lemonsqueezy.checkouts[-1]["data"]["attributes"]["checkout_data"]["custom"] == {
        "user_id": account.user_id
    }
    story.subscription("subscription_created", second, PRO, story.at(40))
    story.redeliver_everything()

    profile = me(rest, account)
    assert profile["plan"] == "PLAN_PRO"
    assert profile["credits"]["balance"] == "15000"
    subscription = rest.get("/api/v1/payment/subscription", headers=account.headers).json()["subscription"]
    assert (subscription["plan"], subscription["status"]) == ("PLAN_PRO", "SUBSCRIPTION_STATUS_ACTIVE")
    rows = ledger(mesh, account.user_id)
    print("\nthe re-subscribe story's ledger (kind, amount, reference):")
    for row in rows:
        print("   ", row)
    assert rows == [
        ("grant", 100, "signup"),
        ("reset", 14900, f"subscription:{first}:created"),
        ("revoke", -15000, f"subscription:{first}:expired"),
        ("reset", 15000, f"subscription:{second}:created"),
    ]
    assert emails(mesh, account.user_id) == [
        ("subscription_started", f"started:{first}"),
        ("subscription_expired", f"subscription:{first}:expired"),
        ("subscription_started", f"started:{second}"),
    ]
    statuses = mesh.sql(
        "SELECT provider_subscription_id, status FROM subscriptions WHERE user_id = %s ORDER BY started_at",
        account.user_id,
    )
    assert [(row["provider_subscription_id"], row["status"]) for row in statuses] == [
        (first, "expired"),
        (second, "active"),
    ]


def test_a_returning_subscriber_can_come_back_on_another_plan(
    mesh: Any, story: Story, rest: httpx.Client
) -> None:
    first, second = f"sub-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    story.subscribe_then_lapse(first, PRO)
    story.subscription("subscription_created", second, STUDIO, story.at(45))
    story.redeliver_everything()

    profile = me(rest, story.account)
    assert profile["plan"] == "PLAN_STUDIO"
    assert profile["credits"]["balance"] == "30000"
    assert ledger(mesh, story.account.user_id)[-1] == ("reset", 30000, f"subscription:{second}:created")
    assert emails(mesh, story.account.user_id)[-1] == ("subscription_started", f"started:{second}")


def test_a_new_subscription_during_the_old_ones_paid_out_period_decides_and_never_stacks(
    mesh: Any, story: Story, rest: httpx.Client
) -> None:
    old, new = f"sub-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    story.subscription("subscription_created", old, PRO, story.at(0))
    # Cancelled, but paid until its period ends (a month after the cancellation's updated_at).
    story.subscription(
        "subscription_cancelled",
        old,
        PRO,
        story.at(80),
        status="cancelled",
        ends_at=datetime.now(UTC) + timedelta(days=20),
    )
    assert me(rest, story.account)["plan"] == "PLAN_PRO"

    story.subscription("subscription_created", new, STUDIO, story.at(85))
    profile = me(rest, story.account)
    assert profile["plan"] == "PLAN_STUDIO", "the subscription that started last decides"
    assert profile["credits"]["balance"] == "30000", "Studio's allowance, not Pro's plus Studio's"

    # The old one runs out: the new one is still live, so nothing else changes.
    story.subscription("subscription_expired", old, PRO, story.at(86), status="expired")
    expiry = mesh.pingvas("billing", "expire")
    assert expiry.returncode == 0, expiry.stderr
    story.redeliver_everything()
    profile = me(rest, story.account)
    assert (profile["plan"], profile["credits"]["balance"]) == ("PLAN_STUDIO", "30000")
    assert [kind for kind, _, _ in ledger(mesh, story.account.user_id)] == ["grant", "reset", "reset"]
    subscription = rest.get("/api/v1/payment/subscription", headers=story.account.headers).json()[
        "subscription"
    ]
    assert subscription["plan"] == "PLAN_STUDIO"
    assert "subscription_expired" not in [kind for kind, _ in emails(mesh, story.account.user_id)]


def test_a_payment_for_the_new_subscription_before_it_is_created_waits_for_it(
    mesh: Any, story: Story, rest: httpx.Client
) -> None:
    first, second = f"sub-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    story.subscribe_then_lapse(first, PRO)
    invoice = story.invoice("subscription_payment_success", second, story.at(41), billing_reason="renewal")
    (parked,) = mesh.sql("SELECT status FROM webhook_deliveries WHERE subscription_id = %s", second)
    assert parked["status"] == "parked"
    assert me(rest, story.account)["credits"]["balance"] == "0"

    story.subscription("subscription_created", second, PRO, story.at(40))
    story.redeliver_everything()

    assert me(rest, story.account)["plan"] == "PLAN_PRO"
    assert ledger(mesh, story.account.user_id)[-2:] == [
        ("reset", 15000, f"subscription:{second}:created"),
        ("reset", 0, f"invoice:{invoice}:renewal"),
    ]
    assert me(rest, story.account)["credits"]["balance"] == "15000"
    statuses = mesh.sql("SELECT status FROM webhook_deliveries WHERE subscription_id = %s", second)
    assert {row["status"] for row in statuses} == {"processed"}
    assert [key for kind, key in emails(mesh, story.account.user_id) if kind != "subscription_expired"] == [
        f"started:{first}",
        f"started:{second}",
        f"renewed:{invoice}",
    ]
