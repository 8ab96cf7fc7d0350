"""Deliveries whose payer is not provably our user are quarantined (issue 9, part 6b): answered
200, stored with their reason, changing nothing, until an operator lists and applies them with
`pingvas billing quarantine`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support.billing import PRO, STUDIO, subscribe_to_pro

pytestmark = [pytest.mark.integration]


def state(mesh: Any, user_id: str) -> tuple[str, int, int]:
    """Plan, balance and number of subscriptions: what a quarantined delivery must not change."""
    (row,) = mesh.sql(
        "SELECT u.plan, a.balance, (SELECT count(*) FROM subscriptions s WHERE s.user_id = u.id) AS subs"
        " FROM users u JOIN credit_accounts a ON a.user_id = u.id WHERE u.id = %s",
        user_id,
    )
    return (row["plan"], row["balance"], row["subs"])


def delivery(mesh: Any, resource_id: str, event_name: str) -> dict[str, Any]:
    (row,) = mesh.sql(
        "SELECT id, status, reason FROM webhook_deliveries WHERE resource_id = %s AND event_name = %s",
        resource_id,
        event_name,
    )
    return row


def listed(mesh: Any) -> dict[int, str]:
    result = mesh.pingvas("billing", "quarantine")
    assert result.returncode == 0, result.stderr
    return {int(line.split("\t")[0]): line for line in result.stdout.splitlines()}


@pytest.fixture
def subscriber(new_account: Any, mesh: Any, lemonsqueezy: Any) -> Any:
    """A user who bought Pro: the subscription_created webhook has been delivered."""
    return subscribe_to_pro(mesh, lemonsqueezy, new_account("customer"))


def test_an_event_naming_another_user_than_the_subscriptions_is_quarantined(
    mesh: Any, subscriber: Any, new_account: Any, lemonsqueezy: Any
) -> None:
    other = new_account("other")
    before = state(mesh, subscriber.user_id), state(mesh, other.user_id)
    moved = lemonsqueezy.subscription_event(
        "subscription_updated",
        subscriber.subscription_id,
        user_id=other.user_id,  # the checkout's custom data, edited
        user_email=f"nobody-{uuid.uuid4().hex[:6]}@example.com",
        variant_id=STUDIO,
    )
    for _ in range(2):
        assert lemonsqueezy.deliver(mesh.gateway_url, moved).status_code == 200

    row = delivery(mesh, subscriber.subscription_id, "subscription_updated")
    assert row["status"] == "quarantined"
    assert "is not the subscription's user" in row["reason"]
    assert (state(mesh, subscriber.user_id), state(mesh, other.user_id)) == before
    (subscription,) = mesh.sql(
        "SELECT user_id::text AS user_id, variant_id FROM subscriptions WHERE provider_subscription_id = %s",
        subscriber.subscription_id,
    )
    assert subscription == {"user_id": subscriber.user_id, "variant_id": PRO}
    assert row["id"] in listed(mesh)


def test_an_event_whose_customer_email_is_another_accounts_is_quarantined_then_applied_on_review(
    mesh: Any, new_account: Any, lemonsqueezy: Any
) -> None:
    claimant, owner = new_account("claimant"), new_account("owner")
    before = state(mesh, claimant.user_id), state(mesh, owner.user_id)
    subscription_id = f"sub-{uuid.uuid4().hex[:8]}"
    created = lemonsqueezy.subscription_event(
        "subscription_created",
        subscription_id,
        user_id=claimant.user_id,
        user_email=owner.email,  # paid with the other account's email
        variant_id=PRO,
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, created).status_code == 200
    row = delivery(mesh, subscription_id, "subscription_created")
    assert row["status"] == "quarantined"
    assert f"belongs to user {owner.user_id}" in row["reason"]
    assert (state(mesh, claimant.user_id), state(mesh, owner.user_id)) == before

    line = listed(mesh)[row["id"]]
    assert "subscription_created" in line and subscription_id in line and row["reason"] in line

    applied = mesh.pingvas("billing", "quarantine", "apply", str(row["id"]))
    assert applied.returncode == 0, applied.stderr
    assert "processed" in applied.stdout
    assert state(mesh, claimant.user_id) == ("pro", 15000, 1)
    assert state(mesh, owner.user_id) == before[1]
    after = delivery(mesh, subscription_id, "subscription_created")
    assert (after["status"], after["reason"]) == ("processed", row["reason"])  # the reason stays on record
    assert row["id"] not in listed(mesh)

    again = mesh.pingvas("billing", "quarantine", "apply", str(row["id"]))
    assert again.returncode == 2
    assert "not quarantined" in again.stderr
    assert state(mesh, claimant.user_id) == ("pro", 15000, 1)
    # Lemon Squeezy redelivering the same event changes nothing either.
    assert lemonsqueezy.deliver(mesh.gateway_url, created).status_code == 200
    assert state(mesh, claimant.user_id) == ("pro", 15000, 1)
