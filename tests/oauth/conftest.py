"""A mesh of its own whose user service signs in with a local Google-shaped OpenID provider and a
local Discord (tests/support/google.py, tests/support/discord.py): the production code, with
only the providers' URLs, client ids and secrets set, as a deployment sets them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from support import discord as discord_support
from support import google as google_support
from support.discord import DiscordServer
from support.google import GoogleProvider
from support.mesh import MeshStarter, RunningMesh


@pytest.fixture(scope="package")
def google() -> Iterator[GoogleProvider]:
    with GoogleProvider() as provider:
        yield provider


@pytest.fixture(scope="package")
def discord() -> Iterator[DiscordServer]:
    with DiscordServer() as server:
        yield server


@pytest.fixture(scope="package")
def oauth_mesh(
    own_mesh: MeshStarter, google: GoogleProvider, discord: DiscordServer
) -> Iterator[RunningMesh]:
    settings = {
        "PINGVAS_OAUTH_GOOGLE_CLIENT_ID": google_support.CLIENT_ID,
        "PINGVAS_OAUTH_GOOGLE_CLIENT_SECRET": google_support.CLIENT_SECRET,
        "PINGVAS_OAUTH_GOOGLE_DISCOVERY_URL": google.discovery_url,
        "PINGVAS_OAUTH_DISCORD_CLIENT_ID": discord_support.CLIENT_ID,
        "PINGVAS_OAUTH_DISCORD_CLIENT_SECRET": discord_support.CLIENT_SECRET,
        "PINGVAS_OAUTH_DISCORD_BASE_URL": discord.url,
        "PINGVAS_OAUTH_REDIRECT_URIS": json.dumps([google_support.REDIRECT_URI]),
        # Sign-in only: nothing here runs a generation, so no worker is started.
        "PINGVAS_WORKERS": "0",
    }
    with own_mesh("oauth-home", settings) as running:
        yield running


@pytest.fixture
def gateway(oauth_mesh: RunningMesh) -> Iterator[httpx.Client]:
    """REST through the oauth mesh's Envoy."""
    with httpx.Client(base_url=oauth_mesh.gateway_url, timeout=60) as client:
        yield client
