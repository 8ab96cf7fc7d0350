"""What billing tests share: the dev plan variants and a Pro subscriber made the way Lemon Squeezy
makes one, through its signed subscription_created webhook."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from support.accounts import Account
from support.lemonsqueezy import LemonSqueezyServer

# The variant ids the mesh's dev settings sell (PINGVAS_LEMONSQUEEZY_VARIANT_*).
PRO, STUDIO = "102", "103"


def plan_of(mesh: Any, user_id: str) -> str:
    (row,) = mesh.sql("SELECT plan FROM users WHERE id = %s", user_id)
    return str(row["plan"])


def subscribe_to_pro(mesh: Any, lemonsqueezy: LemonSqueezyServer, account: Account) -> Account:
    """Deliver `account`'s subscription_created for Pro; its id is kept as `subscription_id`."""
    account.subscription_id = f"{uuid.uuid4().int % 10**9}"  # type: ignore[attr-defined]
    created = lemonsqueezy.subscription_event(
        "subscription_created",
        account.subscription_id,  # type: ignore[attr-defined]
        user_id=account.user_id,
        user_email=account.email,
        variant_id=PRO,
        updated_at=datetime.now(UTC) - timedelta(minutes=5),
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, created).status_code == 200
    (row,) = mesh.sql("SELECT balance FROM credit_accounts WHERE user_id = %s", account.user_id)
    assert row["balance"] == 15000, "a subscription's first credits are Pro's allowance"
    return account


def renewal_invoice(lemonsqueezy: LemonSqueezyServer, subscriber: Account) -> tuple[str, dict[str, Any]]:
    """A fresh invoice id and the paid-renewal webhook for `subscriber`, not yet delivered."""
    invoice_id = f"inv-{uuid.uuid4().hex[:8]}"
    payload = lemonsqueezy.invoice_event(
        "subscription_payment_success",
        invoice_id,
        subscription_id=subscriber.subscription_id,  # type: ignore[attr-defined]
        user_id=subscriber.user_id,
        user_email=subscriber.email,
        billing_reason="renewal",
    )
    return invoice_id, payload
