"""An image's signed URLs are signed once and handed out again while young: every watcher of a
generation and every load of a gallery page in that time gets the same URL (one signature, one
URL a browser can cache), and every URL handed out still works for nine tenths of its lifetime or
more. The store here is the product's, on a real aiobotocore client; S3 is never contacted,
since URLs are signed locally."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from services.common.settings import ObjectStoreSettings
from services.common.storage import ImageKeys, RecentlySignedUrls, open_image_store

# A day: the thousand calls below take a second or so, far inside the tenth of it a URL is reused for.
TTL_SECONDS = 24 * 3600
UNREACHABLE_S3 = ObjectStoreSettings.model_validate(
    {"S3_ENDPOINT_URL": "http://127.0.0.1:9", "access_key_id": "test", "secret_access_key": "test-secret"}
)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_watchers_of_one_image_share_one_signature_per_object() -> None:
    store, close = await open_image_store(UNREACHABLE_S3, url_ttl_seconds=TTL_SECONDS)
    signed: list[str] = []
    store.client.meta.events.register(
        "before-sign.s3.GetObject", lambda request, **_: signed.append(urlsplit(request.url).path)
    )
    keys = ImageKeys.of(uuid.uuid4(), uuid.uuid4(), datetime(2026, 12, 3, tzinfo=UTC))
    other = ImageKeys.of(uuid.uuid4(), uuid.uuid4(), datetime(2026, 12, 3, tzinfo=UTC))
    try:
        handed_out = [await store.image_urls(keys) for _ in range(1000)]
        others = await store.image_urls(other)
    finally:
        await close()

    assert set(handed_out) == {handed_out[0]}
    assert sorted(signed) == sorted(
        f"/{UNREACHABLE_S3.images_bucket}/{key}"
        for key in (keys.png, keys.thumbnail, other.png, other.thumbnail)
    )
    # Each object its own URL, signed for the whole lifetime.
    assert len({handed_out[0].image, handed_out[0].thumbnail, others.image, others.thumbnail}) == 4
    assert parse_qs(urlsplit(handed_out[0].image).query)["X-Amz-Expires"] == [str(TTL_SECONDS)]


def test_a_url_is_handed_out_again_for_a_tenth_of_its_lifetime_and_no_longer() -> None:
    clock = Clock()
    recent = RecentlySignedUrls(TTL_SECONDS, clock=clock)
    recent.put("a.png", "https://signed/a.png?1")

    clock.now += TTL_SECONDS / 10 - 0.001
    assert recent.get("a.png") == "https://signed/a.png?1"
    clock.now += 0.001
    assert recent.get("a.png") is None  # it would work for less than nine tenths of its lifetime
    recent.put("a.png", "https://signed/a.png?2")
    assert recent.get("a.png") == "https://signed/a.png?2"
    assert recent.get("b.png") is None


def test_past_its_bound_the_urls_signed_longest_ago_give_way() -> None:
    clock = Clock()
    recent = RecentlySignedUrls(TTL_SECONDS, max_keys=2, clock=clock)
    recent.put("first.png", "url-1")
    recent.put("second.png", "url-2")
    recent.put("first.png", "url-1b")  # signed again: now the newest
    recent.put("third.png", "url-3")

    assert [recent.get(key) for key in ("first.png", "second.png", "third.png")] == ["url-1b", None, "url-3"]


def test_a_forgotten_key_is_signed_anew() -> None:
    recent = RecentlySignedUrls(TTL_SECONDS, clock=Clock())
    recent.put("gone.png", "url")
    recent.forget("gone.png")
    recent.forget("never-signed.png")
    assert recent.get("gone.png") is None
