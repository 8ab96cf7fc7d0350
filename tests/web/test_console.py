"""The console in Debian's chromium against the real mesh: dev sign-in and a generation seen
live (previews of several steps, then the image), cancel while running, a reload mid-run that
resumes the stream after the last event seen, out of credits, the gallery (pages, star,
delete), API keys (the secret shown once, revoke) and sign-in with the Google-shaped provider."""

from __future__ import annotations

import uuid

import httpx
import pingvas
import pytest
from support.browser import Browser
from support.failpoints import parking_prompt, release, wait_parked
from support.google import GoogleAccount, GoogleProvider
from support.mesh import RunningMesh

pytestmark = [pytest.mark.integration]

LIVE = "[data-state]"


def sign_in(browser: Browser, mesh: RunningMesh, prefix: str = "console", email: str | None = None) -> str:
    email = email or f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"
    browser.do("goto", url=mesh.gateway_url)
    browser.do("fill", selector="input[name=email]", value=email)
    browser.do("click", selector="form[aria-label='Dev login'] button")
    browser.do("waitFor", selector="form[aria-label=Create]")
    return email


def submit(browser: Browser, prompt: str, *, steps: int, size: str = "64x64", model: str = "tiny-sd") -> None:
    browser.do("waitFor", selector=f"select[name=model] option[value='{model}']", state="attached")
    browser.do("select", selector="select[name=model]", value=model)
    browser.do("fill", selector="textarea[name=prompt]", value=prompt)
    browser.do("select", selector="select[name=size]", value=size)
    browser.do("fill", selector="input[name=steps]", value=str(steps))
    browser.do("click", selector="button[type=submit]")


def generation_id_of(browser: Browser) -> str:
    browser.do("waitFor", selector=LIVE)
    return str(browser.do("url")).rsplit("/", 1)[1]


def wait_state(browser: Browser, state: str) -> None:
    browser.do("waitFor", selector=f"[data-state={state}]")


def wait_step(browser: Browser, step: int) -> None:
    browser.wait_until("return document.querySelector(`.strip img[data-step='${arg}']`) !== null", step)


def test_dev_sign_in_then_a_generation_shows_previews_of_its_steps_and_then_its_image(
    console_mesh: RunningMesh, browser: Browser
) -> None:
    sign_in(browser, console_mesh, "live")
    # The refresh token: a cookie script cannot read, sent only to RefreshSession and Logout.
    cookies = browser.do("cookies")
    assert {c["path"] for c in cookies} == {
        "/pingvas.user.v1.UserService/RefreshSession",
        "/pingvas.user.v1.UserService/Logout",
    }
    assert all(c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict" for c in cookies), cookies
    assert browser.evaluate("return document.cookie") == ""
    browser.screenshot("create")
    # The model is chosen from the catalog (ListModels), the default one first selected.
    browser.do("waitFor", selector="select[name=model] option[value='tiny-sd-b']", state="attached")
    assert browser.evaluate("return document.querySelector('select[name=model]').value") == "tiny-sd"
    # Held after each of the first three steps until the page shows that step's preview: a
    # tiny job would otherwise finish before the page's stream opens, or a preview give way to
    # the next one before it is read.
    prompt = parking_prompt(console_mesh, "a red fox in snow", after_step=[1, 2, 3])
    submit(browser, prompt, steps=6, model="tiny-sd-b")
    generation_id = generation_id_of(browser)
    for step in (1, 2, 3):
        wait_parked(console_mesh, generation_id, step=step)
        wait_step(browser, step)
        release(console_mesh, generation_id)
    wait_state(browser, "succeeded")
    browser.do("waitFor", selector="img.result")
    assert browser.wait_until(
        "const img = document.querySelector('img.result'); return img.complete && img.naturalWidth > 0"
    )
    steps = browser.evaluate("return [...document.querySelectorAll('.strip img')].map(i => i.dataset.step)")
    sources = browser.evaluate("return [...document.querySelectorAll('.strip img')].map(i => i.src)")
    assert len(set(steps)) >= 3 and len(set(sources)) == len(sources), (steps, sources)
    browser.screenshot("result")
    state = console_mesh.sql("SELECT state, model FROM generations WHERE id = %s", generation_id)
    assert [(row["state"], row["model"]) for row in state] == [("SUCCEEDED", "tiny-sd-b")]
    assert browser.csp_violations() == []


def test_cancel_while_running(console_mesh: RunningMesh, browser: Browser) -> None:
    sign_in(browser, console_mesh, "cancel")
    submit(browser, parking_prompt(console_mesh, "a heron", after_step=2), steps=6)
    generation_id = generation_id_of(browser)
    wait_parked(console_mesh, generation_id)
    wait_step(browser, 2)
    browser.do("waitFor", selector="[role=progressbar]")
    browser.screenshot("live")
    browser.do("click", selector="button:text-is('Cancel')")
    wait_state(browser, "cancelled")
    state = console_mesh.sql("SELECT state FROM generations WHERE id = %s", generation_id)
    assert [row["state"] for row in state] == ["CANCELLED"]


def test_a_reload_mid_run_resumes_the_stream_after_the_last_event_seen(
    console_mesh: RunningMesh, browser: Browser
) -> None:
    sign_in(browser, console_mesh, "reload")
    # Parked after step 3 too: a progress event still waiting for its watcher when the next one
    # arrives is replaced by it, so step 3 is on the page before step 4 is made.
    submit(browser, parking_prompt(console_mesh, "a kestrel", after_step=[2, 3]), steps=4)
    generation_id = generation_id_of(browser)
    wait_parked(console_mesh, generation_id)
    wait_step(browser, 2)
    browser.do("reload")
    # Signed in again from the refresh cookie; the watch asked for what came after event 4
    # (queued, started, steps 1 and 2), and shows nothing older.
    browser.do("waitFor", selector=LIVE)
    assert browser.do("attribute", selector=LIVE, name="data-resumed-after") == "4"
    # Released only once the reloaded page watches: released earlier, the job could end before
    # the page asked for the stream, and the page shows an ended generation without one.
    browser.do("waitFor", selector="[data-watching=true]")
    release(console_mesh, generation_id)
    wait_step(browser, 3)
    release(console_mesh, generation_id)
    wait_state(browser, "succeeded")
    steps = browser.evaluate("return [...document.querySelectorAll('.strip img')].map(i => i.dataset.step)")
    assert steps == ["3", "4"]


def test_out_of_credits_shows_the_upgrade_path_and_a_bad_field_is_named(
    console_mesh: RunningMesh, browser: Browser
) -> None:
    email = sign_in(browser, console_mesh, "broke")
    submit(browser, "a fox", steps=5000)
    assert browser.do("text", selector="[data-field=steps]")
    drained = console_mesh.pingvas("admin", "grant-credits", email, "-100")
    assert drained.returncode == 0, drained.stderr
    submit(browser, "a fox", steps=4)
    browser.do("waitFor", selector="[data-error=out-of-credits]")
    assert "Out of credits" in browser.do("text", selector="[data-error=out-of-credits]")
    browser.screenshot("out-of-credits")
    browser.do("click", selector="text=Upgrade your plan")
    browser.do("waitFor", selector="[data-testid=credits]")
    assert "0 available" in browser.do("text", selector="[data-testid=credits]")


def test_a_refused_rate_says_when_to_try_again(console_mesh: RunningMesh, browser: Browser) -> None:
    # On Starter before its first call: the services cache a user's plan for a while.
    email = f"rate-{uuid.uuid4().hex[:8]}@example.com"
    signed_up = httpx.post(
        f"{console_mesh.gateway_url}/api/v1/auth/dev-login", json={"email": email}, timeout=30
    )
    assert signed_up.status_code == 200, signed_up.text
    starter = console_mesh.pingvas("admin", "set-plan", email, "starter")
    assert starter.returncode == 0, starter.stderr
    sign_in(browser, console_mesh, email=email)
    for _ in range(20):  # the rate is 5 calls per 600 s: refused within it
        submit(browser, "a fox", steps=5000)  # invalid, so nothing is made; refused calls count
        browser.do("waitFor", selector="button[type=submit]:not([disabled])")
        if browser.do("count", selector="[data-error=rate-limited]"):
            break
    notice = browser.do("text", selector="[data-error=rate-limited]")
    seconds = int(notice.split("Try again in ")[1].split(" s")[0])
    assert 0 < seconds <= 600, notice


def test_the_gallery_pages_stars_and_deletes(console_mesh: RunningMesh, browser: Browser) -> None:
    email = sign_in(browser, console_mesh, "gallery")
    token = httpx.post(
        f"{console_mesh.gateway_url}/api/v1/auth/dev-login", json={"email": email}, timeout=30
    ).json()["accessToken"]
    # The console's mesh listens on the port its OAuth redirect URI names.
    gateway = console_mesh.gateway_url.removeprefix("http://")
    with pingvas.Client(gateway, access_token=token) as client:
        made = [
            client.generate(f"a lighthouse {n}", width=64, height=64, steps=1).generation.id
            for n in range(13)
        ]
    browser.do("goto", url=f"{console_mesh.gateway_url}/gallery")
    browser.wait_until("return document.querySelectorAll('.tile').length === 12")
    browser.screenshot("gallery")
    browser.do("scrollIntoView", selector="[data-testid=more]")
    browser.wait_until("return document.querySelectorAll('.tile').length === 13")
    shown = browser.evaluate("return [...document.querySelectorAll('.tile')].map(t => t.dataset.imageId)")
    assert shown == made[::-1], "newest first, each once"

    browser.do("click", selector=f"[data-image-id='{made[0]}'] [aria-label=Star]")
    browser.do("waitFor", selector=f"[data-image-id='{made[0]}'][data-starred=true]")
    browser.do("click", selector=f"[data-image-id='{made[1]}'] [aria-label=Delete]")
    browser.do("waitFor", selector=f"[data-image-id='{made[1]}']", state="detached")
    assert console_mesh.sql("SELECT id FROM images WHERE id = %s", made[1]) == []

    browser.do("check", selector="input[name=starredOnly]")
    browser.do("click", selector="button:text-is('Filter')")
    browser.wait_until("return document.querySelectorAll('.tile').length === 1")
    assert browser.do("attribute", selector=".tile", name="data-image-id") == made[0]


def test_an_api_key_is_created_with_its_secret_shown_once_and_revoked(
    console_mesh: RunningMesh, browser: Browser
) -> None:
    sign_in(browser, console_mesh, "keys")
    browser.do("click", selector="header >> text=Account")
    browser.do("fill", selector="input[name=displayName]", value="render farm")
    browser.do("click", selector="button:text-is('Create key')")
    secret = browser.do("text", selector="code.secret")
    assert secret.startswith("pv_")
    browser.screenshot("account")
    listing = httpx.get(
        f"{console_mesh.gateway_url}/api/v1/generation",
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert listing.status_code == 200, listing.text
    browser.do("waitFor", selector="text=render farm")
    browser.do("click", selector="tr:has-text('render farm') >> text=Revoke")
    browser.do("waitFor", selector="text=render farm", state="detached")
    listing = httpx.get(
        f"{console_mesh.gateway_url}/api/v1/generation",
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert listing.status_code == 401


def test_sign_in_with_google_and_the_page_fits_a_phone(
    console_mesh: RunningMesh, browser: Browser, google: GoogleProvider
) -> None:
    browser.new_context(width=360, height=740)
    browser.do("goto", url=console_mesh.gateway_url)
    browser.screenshot("sign-in")
    browser.do("click", selector="text=Sign in with Google")
    # The provider's interaction page: the person signs in there (the test provider's form).
    account = GoogleAccount(sub=uuid.uuid4().hex, email=f"g-{uuid.uuid4().hex[:8]}@example.com")
    browser.do("waitForUrl", prefix=f"{google.issuer}/interaction/")
    browser.evaluate(
        """
        const form = document.createElement('form');
        form.method = 'POST';
        form.action = location.pathname.replace(/\\/$/, '') + '/login';
        for (const [name, value] of Object.entries(arg)) {
          const input = document.createElement('input');
          input.name = name; input.value = value; form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
        """,
        account.form(),
    )
    browser.do("waitFor", selector="form[aria-label=Create]")
    assert str(browser.do("url")).startswith(f"{console_mesh.gateway_url}/create")
    assert browser.evaluate("return document.documentElement.scrollWidth") <= 360
    users = console_mesh.sql("SELECT id FROM users WHERE email = %s", account.email)
    assert len(users) == 1
    browser.do("click", selector="header >> text=Account")
    browser.do("waitFor", selector="[data-testid=credits]")
    assert browser.evaluate("return document.documentElement.scrollWidth") <= 360
    browser.screenshot("account-phone")
