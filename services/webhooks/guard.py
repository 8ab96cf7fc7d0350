"""The SSRF guard of webhook deliveries: resolve the destination once, check every address it
resolves to, and connect to the checked address, so that a name which resolves differently a
moment later (DNS rebinding) cannot slip a private destination past the check.

The request keeps its URL: the Host header, TLS's SNI and the certificate's check all use the
name, while the TCP connection goes to the pinned address. Proxies from the environment are not
used (they would connect elsewhere), and redirects are never followed (services.webhooks.sender).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from services.webhooks.endpoints import WebhookUrlRules


class DestinationRefused(Exception):
    """The destination is not one a delivery may reach; the message says why."""


@dataclass(frozen=True)
class Destination:
    url: httpx.URL
    address: str  # the checked address the connection goes to


class DestinationGuard:
    def __init__(self, rules: WebhookUrlRules) -> None:
        self.rules = rules

    async def check(self, url: str) -> Destination:
        """Resolve `url`'s host once and return it pinned to a checked address, or refuse."""
        parsed = httpx.URL(url)
        schemes = ("http", "https") if self.rules.allow_http else ("https",)
        if parsed.scheme not in schemes:
            raise DestinationRefused(f"scheme {parsed.scheme!r} is not allowed")
        if not parsed.host:
            raise DestinationRefused("the URL names no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise DestinationRefused(f"{parsed.host} does not resolve: {error}") from None
        addresses = _unique(str(info[4][0]) for info in infos)
        refused = [
            address for address in addresses if not self.rules.allows_address(ipaddress.ip_address(address))
        ]
        if refused:
            # Every address must pass: a name that also resolves to an internal one is refused.
            raise DestinationRefused(f"{parsed.host} resolves to a non-public address ({', '.join(refused)})")
        if not addresses:
            raise DestinationRefused(f"{parsed.host} resolves to no address")
        return Destination(parsed, addresses[0])


def _unique(addresses: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(address.split("%")[0] for address in addresses))


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, with every TCP connection sent to one address."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self.backend.connect_tcp(
            self.address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("unix sockets are not a webhook destination")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that connects to the destination's checked address only."""

    def __init__(self, destination: Destination) -> None:
        super().__init__(trust_env=False)
        # httpx offers no network backend option; its pool is replaced by one built the same
        # way (TLS verified against the URL's host) but on the pinned backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=1,
            network_backend=_PinnedBackend(destination.address),
        )
