"""Upgrades (issue 9, parts 2 and 3): the new allowance is handed out when Lemon Squeezy confirms
the prorated invoice (`billing_reason` `updated`), a failed invoice undoes the change, and no call
to Lemon Squeezy runs while a transaction holds the user's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from support.billing import PRO, STUDIO, plan_of, renewal_invoice, subscribe_to_pro
from support.generations import wait_for

pytestmark = [pytest.mark.integration]


def balance(mesh: Any, user_id: str) -> int:
    (row,) = mesh.sql("SELECT balance FROM credit_accounts WHERE user_id = %s", user_id)
    return int(row["balance"])


def subscription_row(mesh: Any, subscription_id: str) -> dict[str, Any]:
    (row,) = mesh.sql(
        "SELECT plan, variant_id, pending_upgrade, upgrade_state FROM subscriptions"
        " WHERE provider_subscription_id = %s",
        subscription_id,
    )
    return row


def references(mesh: Any, user_id: str, kind: str) -> list[str]:
    rows = mesh.sql(
        "SELECT reference FROM credit_entries WHERE user_id = %s AND kind = %s ORDER BY id", user_id, kind
    )
    return [row["reference"] for row in rows]


@pytest.fixture
def subscriber(new_account: Any, mesh: Any, lemonsqueezy: Any) -> Any:
    """A user who bought Pro: the subscription_created webhook has been delivered."""
    return subscribe_to_pro(mesh, lemonsqueezy, new_account("upgrader"))


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def upgrade_in_background(
    pool: ThreadPoolExecutor, mesh: Any, account: Any, plan: str
) -> Future[httpx.Response]:
    def put() -> httpx.Response:
        with httpx.Client(base_url=mesh.gateway_url, timeout=120) as client:
            return client.put("/api/v1/payment/upgrade", json={"plan": plan}, headers=account.headers)

    return pool.submit(put)


def upgrade_invoice(lemonsqueezy: Any, account: Any, event: str, invoice_id: str) -> dict[str, Any]:
    return dict(
        lemonsqueezy.invoice_event(
            event,
            invoice_id,
            subscription_id=account.subscription_id,
            user_id=account.user_id,
            user_email=account.email,
            billing_reason="updated",
            total=7500,
        )
    )


def test_an_upgrade_hands_out_the_new_allowance_when_its_invoice_is_paid(
    mesh: Any, subscriber: Any, rest: httpx.Client, lemonsqueezy: Any
) -> None:
    confirmed = rest.put("/api/v1/payment/upgrade", json={"plan": "PLAN_STUDIO"}, headers=subscriber.headers)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["subscription"]["plan"] == "PLAN_PRO"
    assert str(lemonsqueezy.patches[-1][1]["data"]["attributes"]["variant_id"]) == STUDIO
    assert lemonsqueezy.patches[-1][1]["data"]["attributes"]["invoice_immediately"] is True
    row = subscription_row(mesh, subscriber.subscription_id)
    assert (row["plan"], row["pending_upgrade"], row["upgrade_state"]) == (
        "pro",
        "studio",
        "awaiting_payment",
    )
    # Lemon Squeezy's own subscription_updated (the new variant) moves nothing either.
    updated = lemonsqueezy.subscription_event(
        "subscription_updated",
        subscriber.subscription_id,
        user_id=subscriber.user_id,
        user_email=subscriber.email,
        variant_id=STUDIO,
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, updated).status_code == 200
    assert (plan_of(mesh, subscriber.user_id), balance(mesh, subscriber.user_id)) == ("pro", 15000)

    invoice_id = f"inv-{uuid.uuid4().hex[:8]}"
    paid = upgrade_invoice(lemonsqueezy, subscriber, "subscription_payment_success", invoice_id)
    assert lemonsqueezy.deliver(mesh.gateway_url, paid).status_code == 200

    assert (plan_of(mesh, subscriber.user_id), balance(mesh, subscriber.user_id)) == ("studio", 30000)
    assert references(mesh, subscriber.user_id, "reset")[-1] == f"invoice:{invoice_id}:upgrade"
    row = subscription_row(mesh, subscriber.subscription_id)
    assert (row["plan"], row["pending_upgrade"], row["upgrade_state"]) == ("studio", None, None)
    subscription = rest.get("/api/v1/payment/subscription", headers=subscriber.headers).json()["subscription"]
    assert subscription["plan"] == "PLAN_STUDIO"
    (email,) = mesh.sql("SELECT kind FROM email_outbox WHERE dedupe_key = %s", f"upgraded:{invoice_id}")
    assert email["kind"] == "subscription_upgraded"


def test_a_failed_upgrade_payment_undoes_the_change(
    mesh: Any, subscriber: Any, rest: httpx.Client, lemonsqueezy: Any
) -> None:
    confirmed = rest.put("/api/v1/payment/upgrade", json={"plan": "PLAN_STUDIO"}, headers=subscriber.headers)
    assert confirmed.status_code == 200, confirmed.text
    patches_after_upgrade = len(lemonsqueezy.patches)

    invoice_id = f"inv-{uuid.uuid4().hex[:8]}"
    failed = upgrade_invoice(lemonsqueezy, subscriber, "subscription_payment_failed", invoice_id)
    for _ in range(2):
        assert lemonsqueezy.deliver(mesh.gateway_url, failed).status_code == 200

    assert (plan_of(mesh, subscriber.user_id), balance(mesh, subscriber.user_id)) == ("pro", 15000)
    assert references(mesh, subscriber.user_id, "reset") == [
        f"subscription:{subscriber.subscription_id}:created"
    ]
    # Patched back to Pro at Lemon Squeezy, once, and nothing is pending any more.
    (back,) = lemonsqueezy.patches[patches_after_upgrade:]
    assert back[0] == subscriber.subscription_id
    assert back[1]["data"]["attributes"] == {"variant_id": int(PRO), "invoice_immediately": False}
    assert lemonsqueezy.subscriptions[subscriber.subscription_id]["attributes"]["variant_id"] == int(PRO)
    row = subscription_row(mesh, subscriber.subscription_id)
    assert (row["plan"], row["variant_id"], row["pending_upgrade"], row["upgrade_state"]) == (
        "pro",
        PRO,
        None,
        None,
    )
    (email,) = mesh.sql("SELECT kind FROM email_outbox WHERE dedupe_key = %s", f"payment_failed:{invoice_id}")
    assert email["kind"] == "payment_failed"
    subscription = rest.get("/api/v1/payment/subscription", headers=subscriber.headers).json()["subscription"]
    assert (subscription["plan"], subscription["status"]) == ("PLAN_PRO", "SUBSCRIPTION_STATUS_ACTIVE")


def test_an_upgrade_with_duplicated_and_reordered_events_applies_once(
    mesh: Any, subscriber: Any, lemonsqueezy: Any, background: ThreadPoolExecutor
) -> None:
    # The invoice is paid and its webhooks arrive before our PATCH has even been answered.
    held = lemonsqueezy.hold("PATCH", f"/v1/subscriptions/{subscriber.subscription_id}")
    try:
        upgrade = upgrade_in_background(background, mesh, subscriber, "PLAN_STUDIO")
        assert held.arrived.wait(60)
        invoice_id = f"inv-{uuid.uuid4().hex[:8]}"
        paid = upgrade_invoice(lemonsqueezy, subscriber, "subscription_payment_success", invoice_id)
        updated = lemonsqueezy.subscription_event(
            "subscription_updated",
            subscriber.subscription_id,
            user_id=subscriber.user_id,
            user_email=subscriber.email,
            variant_id=STUDIO,
        )
        for payload in (paid, updated, paid, updated):
            assert lemonsqueezy.deliver(mesh.gateway_url, payload).status_code == 200
    finally:
        held.release()
    assert upgrade.result(timeout=120).status_code == 200
    stale = lemonsqueezy.subscription_event(
        "subscription_updated",
        subscriber.subscription_id,
        user_id=subscriber.user_id,
        user_email=subscriber.email,
        variant_id=PRO,
        updated_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    for payload in (paid, stale, updated):
        assert lemonsqueezy.deliver(mesh.gateway_url, payload).status_code == 200

    assert (plan_of(mesh, subscriber.user_id), balance(mesh, subscriber.user_id)) == ("studio", 30000)
    assert references(mesh, subscriber.user_id, "reset") == [
        f"subscription:{subscriber.subscription_id}:created",
        f"invoice:{invoice_id}:upgrade",
    ]
    row = subscription_row(mesh, subscriber.subscription_id)
    assert (row["plan"], row["pending_upgrade"], row["upgrade_state"]) == ("studio", None, None)
    assert len(mesh.sql("SELECT 1 FROM email_outbox WHERE dedupe_key = %s", f"upgraded:{invoice_id}")) == 1


# --- no call to Lemon Squeezy inside a transaction (part 3) -------------------------------------


def generate_and_wait_for_capture(mesh: Any, account: Any) -> None:
    """Create a generation and wait for it to run and capture its charge. A request that blocks
    on a locked credit row fails here, by its deadline."""
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as client:
        created = client.post(
            "/api/v1/generation/create",
            json={"prompt": "a fox in the snow", "width": 64, "height": 64, "steps": 2},
            headers=account.headers,
        )
    assert created.status_code == 200, created.text
    generation_id = created.json()["id"]
    wait_for(
        lambda: mesh.sql(
            "SELECT 1 FROM generations g JOIN credit_entries e"
            " ON e.user_id = g.user_id AND e.kind = 'capture' AND e.reference = 'generation:' || g.id"
            " WHERE g.id = %s AND g.state = 'SUCCEEDED'",
            generation_id,
        ),
        within=90,
        message="the generation ran and captured its charge",
    )


def test_while_lemonsqueezy_holds_the_upgrade_the_user_generates_and_is_charged(
    mesh: Any, subscriber: Any, lemonsqueezy: Any, background: ThreadPoolExecutor
) -> None:
    held = lemonsqueezy.hold("PATCH", f"/v1/subscriptions/{subscriber.subscription_id}")
    try:
        upgrade = upgrade_in_background(background, mesh, subscriber, "PLAN_STUDIO")
        assert held.arrived.wait(60)
        # The intent is committed before the call, so a crash now leaves it for reconcile.
        row = subscription_row(mesh, subscriber.subscription_id)
        assert (row["pending_upgrade"], row["upgrade_state"]) == ("studio", "requested")
        generate_and_wait_for_capture(mesh, subscriber)
    finally:
        held.release()
    assert upgrade.result(timeout=120).status_code == 200
    row = subscription_row(mesh, subscriber.subscription_id)
    assert (row["plan"], row["upgrade_state"]) == ("pro", "awaiting_payment")


def test_while_lemonsqueezy_holds_a_renewals_lookup_the_user_generates_and_is_charged(
    mesh: Any, subscriber: Any, lemonsqueezy: Any, background: ThreadPoolExecutor
) -> None:
    invoice_id, renewal = renewal_invoice(lemonsqueezy, subscriber)
    held = lemonsqueezy.hold("GET", f"/v1/subscriptions/{subscriber.subscription_id}")
    try:
        delivered = background.submit(lemonsqueezy.deliver, mesh.gateway_url, renewal, timeout=120)
        assert held.arrived.wait(60)
        generate_and_wait_for_capture(mesh, subscriber)
    finally:
        held.release()
    assert delivered.result(timeout=120).status_code == 200
    assert balance(mesh, subscriber.user_id) == 15000  # reset after the charge
    assert references(mesh, subscriber.user_id, "reset")[-1] == f"invoice:{invoice_id}:renewal"


def left_by_a_crash(mesh: Any, account: Any, state: str) -> None:
    """What a billing process that died between Lemon Squeezy's answer and its own commit left:
    the recorded intent, minutes old."""
    mesh.sql(
        "UPDATE subscriptions SET pending_upgrade = 'studio', upgrade_state = %s, previous_variant_id = %s,"
        " upgrade_requested_at = now() - interval '10 minutes', updated_at = now() - interval '10 minutes'"
        " WHERE provider_subscription_id = %s",
        state,
        PRO,
        account.subscription_id,
    )


def at_lemonsqueezy(lemonsqueezy: Any, account: Any, variant: str) -> None:
    """Lemon Squeezy's subscription as the lost answer left it (no webhook delivered)."""
    lemonsqueezy.subscription_event(
        "subscription_updated",
        account.subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        variant_id=variant,
        updated_at=datetime.now(UTC) - timedelta(minutes=9),
    )


def reconcile(mesh: Any) -> None:
    for _ in range(2):  # and again: safe to repeat
        result = mesh.pingvas("billing", "reconcile")
        assert result.returncode == 0, result.stderr


def test_reconcile_applies_an_upgrade_whose_patch_landed_and_whose_invoice_was_paid(
    mesh: Any, subscriber: Any, lemonsqueezy: Any
) -> None:
    left_by_a_crash(mesh, subscriber, "requested")
    at_lemonsqueezy(lemonsqueezy, subscriber, STUDIO)
    invoice_id = f"inv-{uuid.uuid4().hex[:8]}"
    upgrade_invoice(lemonsqueezy, subscriber, "subscription_payment_success", invoice_id)
    reconcile(mesh)
    assert (plan_of(mesh, subscriber.user_id), balance(mesh, subscriber.user_id)) == ("studio", 30000)
    assert references(mesh, subscriber.user_id, "reset")[-1] == f"invoice:{invoice_id}:upgrade"
    row = subscription_row(mesh, subscriber.subscription_id)
    assert (row["pending_upgrade"], row["upgrade_state"]) == (None, None)


def test_reconcile_drops_an_upgrade_whose_patch_never_landed(
    mesh: Any, subscriber: Any, lemonsqueezy: Any
) -> None:
    left_by_a_crash(mesh, subscriber, "requested")
    at_lemonsqueezy(lemonsqueezy, subscriber, PRO)
    reconcile(mesh)
    row = subscription_row(mesh, subscriber.subscription_id)
    assert (row["plan"], row["pending_upgrade"], row["upgrade_state"]) == ("pro", None, None)
    assert (plan_of(mesh, subscriber.user_id), balance(mesh, subscriber.user_id)) == ("pro", 15000)


def test_reconcile_finishes_undoing_a_failed_upgrade(mesh: Any, subscriber: Any, lemonsqueezy: Any) -> None:
    left_by_a_crash(mesh, subscriber, "reverting")
    at_lemonsqueezy(lemonsqueezy, subscriber, STUDIO)
    reconcile(mesh)
    assert lemonsqueezy.subscriptions[subscriber.subscription_id]["attributes"]["variant_id"] == int(PRO)
    row = subscription_row(mesh, subscriber.subscription_id)
    assert (row["plan"], row["variant_id"], row["pending_upgrade"], row["upgrade_state"]) == (
        "pro",
        PRO,
        None,
        None,
    )
    assert (plan_of(mesh, subscriber.user_id), balance(mesh, subscriber.user_id)) == ("pro", 15000)
