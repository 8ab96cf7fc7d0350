"""What a partner registers: the events, the signing secret, and the rules its URL obeys.

The URL is checked twice. When it is registered (here), by its shape: scheme, length, no
credentials, and in prod no address literal that is not public. When it is sent to
(services.webhooks.guard), by where its name resolves then, because DNS can change in between.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from services.common.errors import Violations

MAX_URL_LENGTH = 2048
SIGNING_SECRET_PREFIX = "whsec_"
# 24 random bytes, as Svix's keys: the HMAC-SHA256 key of every signature.
SIGNING_SECRET_BYTES = 24


class WebhookEvent(StrEnum):
    """The events a partner may ask for, as CreateGeneration's `events_filter` spells them."""

    STARTED = "started"  # a worker began the run (RUNNING)
    COMPLETED = "completed"  # SUCCEEDED, FAILED or CANCELLED

    @property
    def type(self) -> str:
        """The delivery's `type`, Replicate's and Standard Webhooks' dotted style."""
        return f"generation.{self.value}"


ALL_EVENTS: tuple[WebhookEvent, ...] = tuple(WebhookEvent)


def parse_events(values: Iterable[str]) -> tuple[WebhookEvent, ...]:
    """The filter as asked (the contract has checked each value); empty means every event."""
    asked = {WebhookEvent(value) for value in values}
    return tuple(event for event in ALL_EVENTS if event in asked) or ALL_EVENTS


def new_signing_secret() -> str:
    """`whsec_` and base64 of random bytes, as the Standard Webhooks specification writes keys."""
    return SIGNING_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SIGNING_SECRET_BYTES)).decode()


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a prod delivery may connect to it: globally routable, and none of loopback,
    private, link-local (cloud metadata at 169.254.169.254), multicast, reserved or unspecified.
    An IPv4 address mapped into IPv6 is judged as itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


@dataclass(frozen=True)
class WebhookUrlRules:
    """prod: https only, and no destination that is not public. dev: http too, and loopback (a
    receiver on the laptop, the tests')."""

    allow_http: bool
    allow_loopback: bool

    @classmethod
    def for_environment(cls, env: str) -> WebhookUrlRules:
        return cls(allow_http=env != "prod", allow_loopback=env != "prod")

    def allows_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if is_public_address(address):
            return True
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return self.allow_loopback and (mapped or address).is_loopback

    def check(self, url: str, field: str, violations: Violations) -> None:
        """Add what is wrong with `url`'s shape to `violations`, under `field`."""
        schemes: Sequence[str] = ("http", "https") if self.allow_http else ("https",)
        if len(url) > MAX_URL_LENGTH:
            violations.add(field, f"must be at most {MAX_URL_LENGTH} characters")
            return
        try:
            parts = urlsplit(url)
            host, _port = parts.hostname, parts.port
        except ValueError:
            violations.add(field, "must be an absolute URL")
            return
        if parts.scheme not in schemes:
            violations.add(field, "must be an " + " or ".join(schemes) + " URL")
        elif not host:
            violations.add(field, "must name a host")
        elif parts.username is not None or parts.password is not None:
            violations.add(field, "must not carry credentials")
        elif not self._allows_host(host):
            violations.add(field, "must not point at a loopback, private, link-local or reserved address")

    def _allows_host(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            # A name: judged where it resolves when sent to. `localhost` is refused now already.
            return self.allow_loopback or host.rstrip(".").lower() not in (
                "localhost",
                "localhost.localdomain",
            )
        return self.allows_address(address)
