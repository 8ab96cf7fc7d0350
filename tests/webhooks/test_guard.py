"""The SSRF guard and the sender, without a mesh: prod's refusals with real name resolution, the
connection pinned to the checked address, redirects not followed, and the signature a partner
verifies with `standardwebhooks`."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from standardwebhooks import Webhook
from support.webhook_receiver import WebhookReceiver

from services.common.errors import Violations
from services.webhooks.deliverer import RetrySchedule
from services.webhooks.endpoints import WebhookUrlRules, new_signing_secret
from services.webhooks.guard import Destination, DestinationGuard, DestinationRefused, PinnedTransport
from services.webhooks.sender import WebhookSender

PROD = WebhookUrlRules.for_environment("prod")
DEV = WebhookUrlRules.for_environment("dev")


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/hook",  # a name that resolves to 127.0.0.1
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://172.16.5.4/hook",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata: link-local
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",  # IPv4 loopback mapped into IPv6
        "https://[fe80::1]/hook",
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",  # multicast
        "https://240.0.0.1/hook",  # reserved
    ],
)
async def test_prod_refuses_destinations_that_are_not_public(url: str) -> None:
    with pytest.raises(DestinationRefused, match="non-public address"):
        await DestinationGuard(PROD).check(url)


async def test_a_name_is_judged_by_what_it_resolves_to_when_sent() -> None:
    # Registration cannot know where an ordinary name will point; the send-time check does,
    # and refuses `localhost` because it resolved to loopback.
    with pytest.raises(
        DestinationRefused, match=r"localhost resolves to a non-public address \(127\.0\.0\.1"
    ):
        await DestinationGuard(PROD).check("https://localhost:8443/hook")


async def test_prod_refuses_plain_http_and_dev_allows_loopback() -> None:
    with pytest.raises(DestinationRefused, match="scheme 'http' is not allowed"):
        await DestinationGuard(PROD).check("http://93.184.215.14/hook")
    destination = await DestinationGuard(DEV).check("http://localhost:9/hook")
    assert destination.address == "127.0.0.1"
    with pytest.raises(DestinationRefused, match="non-public address"):
        await DestinationGuard(DEV).check("http://10.0.0.1/hook")


def test_public_addresses_pass() -> None:
    for address in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::ffff:8.8.8.8"):
        assert PROD.allows_address(ipaddress.ip_address(address)), address


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://partner.example/hook", "must be an https URL"),
        ("https://user:pass@partner.example/hook", "must not carry credentials"),
        ("https://10.0.0.7/hook", "must not point at a loopback, private"),
        ("https://localhost/hook", "must not point at a loopback, private"),
        ("https://[::1]:8443/hook", "must not point at a loopback, private"),
        ("https:///hook", "must name a host"),
        ("https://partner.example/" + "a" * 2048, "at most 2048 characters"),
        ("ftp://partner.example/hook", "must be an https URL"),
    ],
)
def test_prod_registration_refuses_bad_urls_naming_the_field(url: str, problem: str) -> None:
    violations = Violations()
    PROD.check(url, "webhook.url", violations)
    assert [(item.field, problem in item.description) for item in violations.items] == [
        ("webhook.url", True)
    ], violations.items


def test_dev_registration_accepts_a_local_http_receiver() -> None:
    violations = Violations()
    DEV.check("http://127.0.0.1:8000/hook", "webhook.url", violations)
    DEV.check("https://partner.example/hook", "webhook.url", violations)
    assert violations.items == []


async def test_the_connection_goes_to_the_checked_address_not_a_new_lookup() -> None:
    # `rebound.invalid` resolves nowhere: the request still reaches the pinned 127.0.0.1, with
    # the name kept in the Host header, so no second resolution can redirect it.
    with WebhookReceiver() as receiver:
        port = httpx.URL(receiver.url("/")).port
        destination = Destination(httpx.URL(f"http://rebound.invalid:{port}/pinned"), "127.0.0.1")
        async with httpx.AsyncClient(transport=PinnedTransport(destination), trust_env=False) as client:
            reply = await client.post(destination.url, content=b"{}")
        assert reply.status_code == 200
        (request,) = receiver.received("/pinned")
        assert request.headers["host"] == f"rebound.invalid:{port}"


async def test_redirects_are_not_followed() -> None:
    secret = new_signing_secret()
    with WebhookReceiver() as receiver:
        receiver.secrets["/moved"] = secret
        receiver.script("/moved", 307)
        outcome = await WebhookSender(DestinationGuard(DEV), timeout_seconds=5).send(
            receiver.url("/moved"),
            webhook_id="msg_1",
            payload={"type": "generation.completed"},
            secret=secret,
        )
        assert (outcome.delivered, outcome.status, outcome.error) == (
            False,
            307,
            "redirects are not followed",
        )
        assert len(receiver.received("/moved")) == 1
        assert receiver.received("/redirected") == []


async def test_a_delivery_is_signed_as_standard_webhooks_specifies() -> None:
    secret = new_signing_secret()
    assert secret.startswith("whsec_")
    with WebhookReceiver() as receiver:
        receiver.secrets["/signed"] = secret
        outcome = await WebhookSender(DestinationGuard(DEV), timeout_seconds=5).send(
            receiver.url("/signed"),
            webhook_id="msg_abc",
            payload={"type": "generation.started", "n": 1},
            secret=secret,
        )
        assert outcome.delivered and outcome.status == 200
        (request,) = receiver.received("/signed")
        assert request.verified == {"type": "generation.started", "n": 1}
        assert request.webhook_id == "msg_abc"
        # Another key's secret does not verify it.
        with pytest.raises(Exception, match="No matching signature"):
            Webhook(new_signing_secret()).verify(request.body, request.headers)


async def test_a_refused_destination_is_a_failed_attempt_not_a_request() -> None:
    outcome = await WebhookSender(DestinationGuard(PROD), timeout_seconds=5).send(
        "https://127.0.0.1/hook", webhook_id="msg_2", payload={}, secret=new_signing_secret()
    )
    assert not outcome.delivered and outcome.status is None and outcome.error.startswith("refused:")


def test_the_retry_schedule_backs_off_and_ends_with_the_window() -> None:
    schedule = RetrySchedule(
        delays=[timedelta(seconds=s) for s in (5, 300, 1800, 7200, 18000, 36000)], window=timedelta(hours=24)
    )
    created = datetime(2026, 1, 1, tzinfo=UTC)
    now, attempts = created, []
    for failed in range(1, 20):
        retry_at = schedule.next_attempt(created_at=created, failed_attempts=failed, now=now)
        if retry_at is None:
            break
        attempts.append(retry_at - created)
        now = retry_at
    assert [int(at.total_seconds()) for at in attempts] == [5, 305, 2105, 9305, 27305, 63305, 86400]
