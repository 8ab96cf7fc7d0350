"""The web console in a real browser (Debian's chromium, driven by playwright-core) against a mesh
of its own: failpoints armed, so a test can hold a job mid-run, and sign-in with the local
Google-shaped OpenID provider, whose redirect URI is the console's own callback. One mesh and one
browser for every test here; each test gets a fresh browser profile. Screenshots of the main
screens are kept under .artifacts/console-screenshots (PINGVAS_TEST_ARTIFACTS), not committed."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import google as google_support
from support.browser import Browser
from support.failpoints import FAILPOINTS_ENV
from support.google import GoogleProvider
from support.mesh import REPO_ROOT, MeshStarter, RunningMesh, free_port

WEB_DIR = REPO_ROOT / "web"
STARTER_RATE = "5 per 600 seconds"


@pytest.fixture(scope="package")
def console_build() -> Path:
    """The console built from its sources, as `.ci/setup` builds it."""
    if not (WEB_DIR / "node_modules").exists():
        pytest.fail("web/ has no node_modules: run .ci/setup (npm ci in web)")
    subprocess.run(["npm", "run", "--silent", "build"], cwd=WEB_DIR, check=True, timeout=300)
    return WEB_DIR / "dist"


@pytest.fixture(scope="package")
def console_port() -> int:
    return free_port()


@pytest.fixture(scope="package")
def google(console_port: int) -> Iterator[GoogleProvider]:
    with GoogleProvider(redirect_uri=f"http://127.0.0.1:{console_port}/oauth/callback") as provider:
        yield provider


@pytest.fixture(scope="package")
def console_mesh(
    own_mesh: MeshStarter, console_build: Path, console_port: int, google: GoogleProvider
) -> Iterator[RunningMesh]:
    settings = {
        **FAILPOINTS_ENV,
        "PINGVAS_HTTP_PORT": str(console_port),
        # Starter users reach their rate in a few calls, for the 429 the page explains; no
        # other test's user is on Starter.
        "PINGVAS_RATE_LIMITS_PER_USER": json.dumps({"free": "100000/minute", "starter": STARTER_RATE}),
        "PINGVAS_OAUTH_GOOGLE_CLIENT_ID": google_support.CLIENT_ID,
        "PINGVAS_OAUTH_GOOGLE_CLIENT_SECRET": google_support.CLIENT_SECRET,
        "PINGVAS_OAUTH_GOOGLE_DISCOVERY_URL": google.discovery_url,
        "PINGVAS_OAUTH_REDIRECT_URIS": json.dumps([google.redirect_uri]),
    }
    with own_mesh("console-home", settings) as running:
        yield running


@pytest.fixture(scope="package")
def browser_process() -> Iterator[Browser]:
    artifacts = Path(os.environ.get("PINGVAS_TEST_ARTIFACTS", REPO_ROOT / ".artifacts"))
    with Browser(artifacts / "console-screenshots") as running:
        yield running


@pytest.fixture
def browser(browser_process: Browser) -> Browser:
    browser_process.new_context()
    return browser_process
