"""Production's option for image URLs: signed for a CloudFront distribution in front of the
images bucket. No CloudFront here, so each URL is checked as CloudFront checks it, following
its documentation for canned policies: the policy rebuilt from the URL's own resource and
`Expires`, and its `Signature` verified (RSA, SHA-1, CloudFront's URL-safe base64) with the
public half of the key registered under `Key-Pair-Id`."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import ValidationError

from services.common.settings import CloudFrontSettings, ObjectStoreSettings
from services.common.storage import ImageKeys, open_image_store

DOMAIN = "images.pingvas.test"
KEY_PAIR_ID = "K2JCJMDEHXQW5F"
TTL_SECONDS = 600
# Never contacted: URLs are signed locally.
UNREACHABLE_S3 = ObjectStoreSettings.model_validate(
    {"S3_ENDPOINT_URL": "http://127.0.0.1:9", "access_key_id": "test", "secret_access_key": "test-secret"}
)


@pytest.fixture
def signing_key(tmp_path: Path) -> Iterator[tuple[rsa.RSAPrivateKey, Path]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "cloudfront.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    yield key, pem


def canned_policy(resource: str, expires: int) -> bytes:
    """CloudFront's canned policy for a URL, exactly as its documentation spells it (no spaces)."""
    condition = '{"DateLessThan":{"AWS:EpochTime":' + str(expires) + "}}"
    return ('{"Statement":[{"Resource":"' + resource + '","Condition":' + condition + "}]}").encode()


def verify_as_cloudfront(url: str, public_key: rsa.RSAPublicKey) -> int:
    """Check a signed URL as CloudFront would; returns its expiry."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert set(query) == {"Expires", "Signature", "Key-Pair-Id"}
    assert query["Key-Pair-Id"] == [KEY_PAIR_ID]
    expires = int(query["Expires"][0])
    signature = base64.b64decode(query["Signature"][0].replace("-", "+").replace("_", "=").replace("~", "/"))
    resource = f"{parts.scheme}://{parts.netloc}{parts.path}"
    public_key.verify(signature, canned_policy(resource, expires), padding.PKCS1v15(), hashes.SHA1())
    return expires


async def test_image_urls_are_signed_for_the_distribution_when_cloudfront_is_configured(
    signing_key: tuple[rsa.RSAPrivateKey, Path],
) -> None:
    key, pem = signing_key
    cloudfront = CloudFrontSettings(domain=DOMAIN, key_pair_id=KEY_PAIR_ID, private_key_file=pem)
    store, close = await open_image_store(UNREACHABLE_S3, url_ttl_seconds=TTL_SECONDS, cloudfront=cloudfront)
    keys = ImageKeys.of(uuid.uuid4(), uuid.uuid4(), datetime(2026, 11, 30, tzinfo=UTC))
    try:
        before = int(time.time())
        urls = await store.image_urls(keys)
        after = int(time.time())
    finally:
        await close()

    for url, key_path in ((urls.image, keys.png), (urls.thumbnail, keys.thumbnail)):
        assert url.startswith(f"https://{DOMAIN}/{key_path}?")
        expires = verify_as_cloudfront(url, key.public_key())
        assert before + TTL_SECONDS <= expires <= after + TTL_SECONDS
        # Signed by another key, or for another object or expiry, CloudFront refuses it.
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        with pytest.raises(InvalidSignature):
            verify_as_cloudfront(url, stranger)
        with pytest.raises(InvalidSignature):
            verify_as_cloudfront(
                url.replace(".png?", ".webp?").replace(".thumb.webp?", ".png?"), key.public_key()
            )
        with pytest.raises(InvalidSignature):
            verify_as_cloudfront(
                url.replace(f"Expires={expires}", f"Expires={expires + 86400}"), key.public_key()
            )


async def test_image_urls_are_s3_presigned_without_cloudfront() -> None:
    store, close = await open_image_store(
        UNREACHABLE_S3, url_ttl_seconds=TTL_SECONDS, cloudfront=CloudFrontSettings()
    )
    keys = ImageKeys.of(uuid.uuid4(), uuid.uuid4(), datetime(2026, 11, 30, tzinfo=UTC))
    try:
        url = await store.presigned_url(keys.png)
    finally:
        await close()
    assert url.startswith(f"http://127.0.0.1:9/{UNREACHABLE_S3.images_bucket}/{keys.png}?")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [str(TTL_SECONDS)]


def test_cloudfront_settings_are_all_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGVAS_CLOUDFRONT_DOMAIN", DOMAIN)
    with pytest.raises(ValidationError) as refused:
        CloudFrontSettings()
    assert "PINGVAS_CLOUDFRONT_KEY_PAIR_ID, PINGVAS_CLOUDFRONT_PRIVATE_KEY_FILE" in str(refused.value)
    monkeypatch.delenv("PINGVAS_CLOUDFRONT_DOMAIN")
    assert CloudFrontSettings().domain is None
