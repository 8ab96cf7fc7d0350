"""Partner webhooks on the real mesh: a generation created with an API key reports its events to
a local receiver that verifies every request with `standardwebhooks`, as a partner would.

On the shared mesh, whose webhook settings (tests/conftest.py) retry at once; one test kills its
deliverer, which the supervisor restarts. Requests are sequenced by the receiver's scripts and
holds, never by timing.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from support.accounts import Account, dev_login
from support.generations import wait_for
from support.mesh import RunningMesh
from support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


def create_key(mesh: RunningMesh, owner: Account, **extra: Any) -> dict[str, Any]:
    reply = httpx.post(
        f"{mesh.gateway_url}/api/v1/apikeys",
        json={"displayName": "partner", "scopes": ["generate", "read"], **extra},
        headers=owner.headers,
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    created: dict[str, Any] = reply.json()
    return created


def create_generation(mesh: RunningMesh, bearer: str, **webhook: Any) -> httpx.Response:
    # REST carries the generation as the body and the request's other fields as query parameters.
    return httpx.post(
        f"{mesh.gateway_url}/api/v1/generation/create",
        params={f"webhook.{name}": value for name, value in webhook.items()},
        json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2},
        headers={"authorization": f"Bearer {bearer}"},
        timeout=60,
    )


def deliveries(mesh: RunningMesh, generation_id: str) -> list[dict[str, Any]]:
    return mesh.sql(
        "SELECT * FROM webhook_outbox WHERE generation_id = %s ORDER BY created_at", generation_id
    )


def partner(mesh: RunningMesh, receiver: WebhookReceiver, path: str, **key: Any) -> tuple[str, str]:
    """A new user's API key whose secret the receiver verifies `path` with: (key secret, url)."""
    created = create_key(mesh, dev_login(mesh.gateway_url, "partner"), **key)
    receiver.secrets[path] = created["webhookSigningSecret"]
    return created["secret"], receiver.url(path)


def test_a_completed_generation_is_delivered_signed_and_filtered(
    mesh: RunningMesh, receiver: WebhookReceiver
) -> None:
    path = f"/done-{uuid.uuid4().hex[:8]}"
    key, url = partner(mesh, receiver, path)
    assert receiver.secrets[path].startswith("whsec_")
    created = create_generation(mesh, key, url=url, events_filter="completed")
    assert created.status_code == 200, created.text
    generation_id = created.json()["id"]

    (request,) = receiver.wait_for(path, 1)
    assert request.verified is not None, "the signature verifies with the key's secret"
    assert request.verified["type"] == "generation.completed"
    data = request.verified["data"]
    assert (data["id"], data["state"]) == (generation_id, "GENERATION_STATE_SUCCEEDED")
    assert data["name"] == f"users/{data['name'].split('/')[1]}/generations/{generation_id}"
    assert request.webhook_id.startswith("msg_")
    image = httpx.get(data["imageUrl"], timeout=30)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), "a working image URL"
    assert data["image"] == data["name"].replace("/generations/", "/images/")
    wait_for(lambda: deliveries(mesh, generation_id)[0]["state"] == "delivered", within=30)
    # The filter asked for `completed` only: the RUNNING transition recorded no `started`.
    (row,) = deliveries(mesh, generation_id)
    assert (row["event"], row["attempts"], row["last_status"]) == ("completed", 1, 200)
    assert request.webhook_id == f"msg_{uuid.UUID(str(row['id'])).hex}"


def test_a_keys_default_webhook_reports_started_then_completed(
    mesh: RunningMesh, receiver: WebhookReceiver
) -> None:
    path = f"/default-{uuid.uuid4().hex[:8]}"
    url = receiver.url(path)
    owner = dev_login(mesh.gateway_url, "partner")
    created_key = create_key(mesh, owner, defaultWebhookUrl=url)
    assert created_key["apiKey"]["defaultWebhookUrl"] == url
    (stored,) = mesh.sql(
        "SELECT webhook_signing_secret FROM api_keys WHERE id = %s", created_key["apiKey"]["id"]
    )
    signing_secret = created_key["webhookSigningSecret"]
    assert signing_secret.removeprefix("whsec_") not in stored["webhook_signing_secret"], "stored sealed"
    receiver.secrets[path] = created_key["webhookSigningSecret"]
    created = create_generation(mesh, created_key["secret"])
    assert created.status_code == 200, created.text
    generation_id = created.json()["id"]

    def both_delivered() -> bool:
        # One read of the outbox: two reads could see `started` alone delivered, then the
        # `completed` row just inserted and not yet sent.
        rows = deliveries(mesh, generation_id)
        return len(rows) == 2 and all(row["state"] == "delivered" for row in rows)

    wait_for(both_delivered, within=60, message=str(deliveries(mesh, generation_id)))
    requests = receiver.received(path)
    assert sorted(request.verified["type"] for request in requests) == [
        "generation.completed",
        "generation.started",
    ]
    started = next(r.verified for r in requests if r.verified["type"] == "generation.started")
    assert started["data"]["state"] == "GENERATION_STATE_RUNNING"
    assert len({request.webhook_id for request in requests}) == 2


def test_a_delivery_answered_500_is_retried_under_the_same_webhook_id(
    mesh: RunningMesh, receiver: WebhookReceiver
) -> None:
    path = f"/flaky-{uuid.uuid4().hex[:8]}"
    key, url = partner(mesh, receiver, path)
    receiver.script(path, 500, 503)
    created = create_generation(mesh, key, url=url, events_filter="completed")
    assert created.status_code == 200, created.text
    generation_id = created.json()["id"]

    requests = receiver.wait_for(path, 3)
    assert [request.answered for request in requests] == [500, 503, 200]
    assert len({request.webhook_id for request in requests}) == 1, "one id across retries"
    assert all(request.verified is not None for request in requests), "each attempt signed afresh"
    wait_for(lambda: deliveries(mesh, generation_id)[0]["state"] == "delivered", within=30)
    (row,) = deliveries(mesh, generation_id)
    assert (row["attempts"], row["last_status"]) == (3, 200)


def deliverer(mesh: RunningMesh) -> psutil.Process:
    (child,) = [
        child
        for child in psutil.Process(mesh.process.pid).children()
        if "services.webhooks" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE
    ]
    return child


def test_a_deliverer_killed_mid_retry_is_restarted_and_the_delivery_arrives_once(
    mesh: RunningMesh, receiver: WebhookReceiver
) -> None:
    path = f"/restart-{uuid.uuid4().hex[:8]}"
    key, url = partner(mesh, receiver, path)
    held = threading.Event()
    # The first attempt fails; the retry is held unanswered while the deliverer is killed.
    receiver.script(path, 500, held)
    created = create_generation(mesh, key, url=url, events_filter="completed")
    assert created.status_code == 200, created.text
    generation_id = created.json()["id"]

    receiver.wait_for(path, 2)
    old = deliverer(mesh)
    old.kill()
    old.wait(timeout=30)
    held.set()

    def restarted() -> bool:
        try:
            return deliverer(mesh).pid != old.pid
        except (ValueError, psutil.Error):
            return False

    wait_for(restarted, within=60, message="the supervisor did not restart the deliverer")
    # The claim of the killed attempt lapses, and the new deliverer sends it again.
    requests = receiver.wait_for(path, 3)
    assert [request.answered for request in requests] == [500, 0, 200]
    assert len({request.webhook_id for request in requests}) == 1
    wait_for(lambda: deliveries(mesh, generation_id)[0]["state"] == "delivered", within=30)
    (row,) = deliveries(mesh, generation_id)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 3, 200)
    assert "webhooks exited (killed by SIGKILL); restarting in" in (mesh.home / "up.out").read_text()


def test_bad_webhooks_are_invalid_arguments_naming_the_field(mesh: RunningMesh) -> None:
    owner = dev_login(mesh.gateway_url, "partner")
    # An access token has no signing secret: a webhook needs an API key.
    refused = create_generation(mesh, owner.token, url="https://partner.example/hook")
    assert refused.status_code == 400, refused.text
    assert "webhook.url" in refused.text and "API key" in refused.text
    key = create_key(mesh, owner)["secret"]
    for url, problem in (
        ("https://user:pw@partner.example/hook", "must not carry credentials"),
        ("ftp://partner.example/hook", "must be an http or https URL"),
        ("http://10.0.0.1/hook", "must not point at a loopback, private"),
    ):
        refused = create_generation(mesh, key, url=url)
        assert refused.status_code == 400, refused.text
        assert "webhook.url" in refused.text and problem in refused.text, refused.text
    refused = create_generation(mesh, key, url="https://partner.example/hook", events_filter="output")
    assert refused.status_code == 400 and "webhook.events_filter" in refused.text, refused.text
    bad_key = httpx.post(
        f"{mesh.gateway_url}/api/v1/apikeys",
        json={"displayName": "p", "scopes": ["generate"], "defaultWebhookUrl": "gopher://x/"},
        headers=owner.headers,
        timeout=30,
    )
    assert bad_key.status_code == 400 and "default_webhook_url" in bad_key.text, bad_key.text


def test_a_rotated_signing_secret_signs_what_is_sent_after_it(
    mesh: RunningMesh, receiver: WebhookReceiver
) -> None:
    path = f"/rotated-{uuid.uuid4().hex[:8]}"
    owner = dev_login(mesh.gateway_url, "partner")
    created_key = create_key(mesh, owner, defaultWebhookUrl=receiver.url(path))
    old_secret = created_key["webhookSigningSecret"]
    rotated = httpx.post(
        f"{mesh.gateway_url}/api/v1/{created_key['apiKey']['name']}:rotateWebhookSecret",
        json={},
        headers=owner.headers,
        timeout=30,
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["webhookSigningSecret"]
    assert new_secret.startswith("whsec_") and new_secret != old_secret
    receiver.secrets[path] = new_secret
    # The key itself cannot rotate its secret: only its owner's access token manages keys.
    refused = httpx.post(
        f"{mesh.gateway_url}/api/v1/{created_key['apiKey']['name']}:rotateWebhookSecret",
        json={},
        headers={"authorization": f"Bearer {created_key['secret']}"},
        timeout=30,
    )
    assert refused.status_code == 403, refused.text

    created = create_generation(mesh, created_key["secret"])
    assert created.status_code == 200, created.text
    requests = receiver.wait_for(path, 2)
    assert all(request.verified is not None for request in requests), "signed with the new secret"
    with pytest.raises(WebhookVerificationError):
        Webhook(old_secret).verify(requests[0].body, requests[0].headers)
