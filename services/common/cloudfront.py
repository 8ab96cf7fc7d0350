"""Image URLs signed for a CloudFront distribution in front of the images bucket: production's
option to S3 presigned URLs, so images come from the CDN's edge instead of the bucket's region.

A canned-policy signed URL, as CloudFront documents it: the URL, its expiry (`Expires`, epoch
seconds), the public key's id (`Key-Pair-Id`) and an RSA-SHA1 signature of the policy
(`Signature`). botocore's CloudFrontSigner builds it; the key is the private half of a public
key registered in the distribution's trusted key group. The distribution reaches the bucket
through origin access control, so the bucket itself stays private.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import quote

from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.common.settings import CloudFrontSettings


class CloudFrontUrls:
    """Signs GET URLs of image keys on one distribution, each working for `ttl_seconds`."""

    def __init__(self, domain: str, key_pair_id: str, private_key_pem: bytes, *, ttl_seconds: int) -> None:
        private_key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError("a CloudFront signing key must be an RSA private key")
        self._private_key = private_key
        self._base_url = f"https://{domain}/"
        self._signer = CloudFrontSigner(key_pair_id, self._sign)
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_settings(cls, settings: CloudFrontSettings, *, ttl_seconds: int) -> CloudFrontUrls | None:
        """The signer the settings describe, or None when CloudFront is not configured."""
        if settings.domain is None or settings.key_pair_id is None or settings.private_key_file is None:
            return None
        return cls(
            settings.domain,
            settings.key_pair_id,
            settings.private_key_file.read_bytes(),
            ttl_seconds=ttl_seconds,
        )

    def url(self, key: str) -> str:
        """A signed URL of the object at `key`, working until now + ttl_seconds."""
        expires = datetime.fromtimestamp(int(time.time()) + self.ttl_seconds, UTC)
        return str(self._signer.generate_presigned_url(self._base_url + quote(key), date_less_than=expires))

    def _sign(self, message: bytes) -> bytes:
        # CloudFront verifies canned-policy signatures as RSA PKCS#1 v1.5 over SHA-1.
        return self._private_key.sign(message, padding.PKCS1v15(), hashes.SHA1())
