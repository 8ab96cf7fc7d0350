"""The credit ledger under the generation flow: holds never overdraw, each hold resolves once,
failures release, idempotency keys return the job they created, and downgrades wait."""

from __future__ import annotations

import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

TINY = {"prompt": "fox", "width": 64, "height": 64, "steps": 20}


def wait_for_state(rest: httpx.Client, account: Any, generation_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        generation = dict(rest.get(f"/api/v1/generation/{generation_id}", headers=account.headers).json())
        if generation["state"] == f"GENERATION_STATE_{state}":
            return generation
        time.sleep(0.05)
    raise AssertionError(f"{generation_id} never reached {state}")


def test_a_hundred_concurrent_creates_with_credits_for_ten(mesh: Any, new_account: Any) -> None:
    account = new_account("hundred")
    assert mesh.pingvas("admin", "grant-credits", account.email, "-90").returncode == 0  # 10 left, 1 per job

    def create(_: int) -> int:
        with httpx.Client(base_url=mesh.gateway_url, timeout=120) as client:
            return client.post("/api/v1/generation/create", json=TINY, headers=account.headers).status_code

    with ThreadPoolExecutor(max_workers=25) as pool:
        statuses = list(pool.map(create, range(100)))

    assert statuses.count(200) == 10 and statuses.count(402) == 90
    # One statement, one snapshot: jobs may complete (and capture) while the test reads.
    (row,) = mesh.sql(
        """
        SELECT a.balance, a.held,
               (SELECT count(*) FROM generations g WHERE g.user_id = a.user_id) AS jobs,
               (SELECT coalesce(sum(g.credits_charged), 0) FROM generations g WHERE g.user_id = a.user_id) AS charged
        FROM credit_accounts a WHERE a.user_id = %s
        """,
        account.user_id,
    )
    assert row["jobs"] == 10
    assert 0 <= row["held"] <= row["balance"]
    assert row["balance"] + row["charged"] == 10


def test_a_failed_generation_releases_its_hold(
    mesh: Any, new_account: Any, rest: httpx.Client, models_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-sd"
    shutil.copytree(models_dir / "tiny-sd", broken, ignore=shutil.ignore_patterns(".*"))
    # Valid configs, so the model is listed and accepted; unreadable weights, so loading fails.
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    # Into the mesh's models bucket, as an operator would push it: the catalog serves what it holds.
    pushed = mesh.pingvas("models", "push", str(broken))
    assert pushed.returncode == 0, pushed.stderr
    account = new_account("fails")
    created = rest.post(
        "/api/v1/generation/create", json={**TINY, "model": "broken-sd"}, headers=account.headers
    )
    assert created.status_code == 200, created.text
    failed = wait_for_state(rest, account, created.json()["id"], "FAILED")
    assert failed["failureCode"] == "MODEL_LOAD_FAILED"
    kinds = mesh.sql(
        "SELECT kind, held_change FROM credit_entries WHERE reference = %s ORDER BY id",
        f"generation:{failed['id']}",
    )
    assert [k["kind"] for k in kinds] == ["hold", "release"]
    assert kinds[0]["held_change"] == -kinds[1]["held_change"] > 0
    (row,) = mesh.sql("SELECT balance, held FROM credit_accounts WHERE user_id = %s", account.user_id)
    assert (row["balance"], row["held"]) == (100, 0)


def test_idempotency_keys(mesh: Any, new_account: Any, rest: httpx.Client) -> None:
    account = new_account("idem")
    key = f"key-{uuid.uuid4().hex}"

    def create(body: dict[str, Any]) -> httpx.Response:
        return rest.post(
            "/api/v1/generation/create", params={"requestId": key}, json=body, headers=account.headers
        )

    first = create(TINY)
    assert first.status_code == 200
    again = create(TINY)
    assert again.json()["id"] == first.json()["id"], "the same key and parameters return the same job"

    different = create({**TINY, "steps": 21})
    assert different.status_code == 400
    assert different.json()["details"][0]["reason"] == "IDEMPOTENCY_KEY_REUSED"

    racing_key = f"race-{uuid.uuid4().hex}"

    def race(_: int) -> str:
        with httpx.Client(base_url=mesh.gateway_url, timeout=60) as client:
            reply = client.post(
                "/api/v1/generation/create",
                params={"requestId": racing_key},
                json=TINY,
                headers=account.headers,
            )
            assert reply.status_code == 200, reply.text
            return str(reply.json()["id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(race, range(8)))
    assert len(ids) == 1, "concurrent duplicates create one job"
    rows = mesh.sql(
        "SELECT id FROM generations WHERE user_id = %s AND request_id = %s", account.user_id, racing_key
    )
    assert len(rows) == 1
    holds = mesh.sql(
        "SELECT count(*) AS n FROM credit_entries WHERE user_id = %s AND kind = 'hold'", account.user_id
    )
    assert holds == [{"n": 2}], "one hold per job, none for a replayed key"


def test_a_downgrade_waits_for_the_end_of_the_period(
    mesh: Any, new_account: Any, rest: httpx.Client, lemonsqueezy: Any
) -> None:
    account = new_account("downgrade")
    subscription_id = f"sub-{uuid.uuid4().hex[:8]}"
    created = lemonsqueezy.subscription_event(
        "subscription_created",
        subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        variant_id="103",
        updated_at=datetime.now(UTC) - timedelta(minutes=5),
    )
    assert lemonsqueezy.deliver(mesh.gateway_url, created).status_code == 200
    preview = rest.put(
        "/api/v1/payment/upgrade",
        json={"plan": "PLAN_STARTER", "validateOnly": True},
        headers=account.headers,
    ).json()
    assert preview["creditsResetNow"] is False
    confirmed = rest.put("/api/v1/payment/upgrade", json={"plan": "PLAN_STARTER"}, headers=account.headers)
    assert confirmed.status_code == 200, confirmed.text
    assert str(lemonsqueezy.patches[-1][1]["data"]["attributes"]["variant_id"]) == "101"
    me = rest.get("/api/v1/users/me", headers=account.headers).json()
    assert (me["plan"], me["credits"]["balance"]) == ("PLAN_STUDIO", "30000"), (
        "nothing changes before renewal"
    )

    delivered = lemonsqueezy.deliver_invoice(
        mesh.gateway_url,
        "subscription_payment_success",
        subscription_id=subscription_id,
        user_id=account.user_id,
        user_email=account.email,
        billing_reason="renewal",
    )
    assert delivered.status_code == 200
    me = rest.get("/api/v1/users/me", headers=account.headers).json()
    assert (me["plan"], me["credits"]["balance"]) == ("PLAN_STARTER", "5000")
