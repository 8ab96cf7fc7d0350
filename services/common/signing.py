"""Signed, expiring image URLs: the capability to fetch one PNG through the gateway.

The signature binds the image, its owner and the expiry, so a URL cannot be altered to reach
another user's image or to live longer. Browsers can put it in an <img> tag without headers.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid

from services.common.errors import PermissionDenied


class ImageUrlSigner:
    def __init__(self, secret: str, *, public_url: str, ttl_seconds: int) -> None:
        self._key = secret.encode()
        self.public_url = public_url.rstrip("/")
        self.ttl_seconds = ttl_seconds

    def _signature(self, image_id: uuid.UUID, owner_id: uuid.UUID, expires: int) -> str:
        message = f"{image_id}:{owner_id}:{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def url(self, image_id: uuid.UUID, owner_id: uuid.UUID, *, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + self.ttl_seconds
        signature = self._signature(image_id, owner_id, expires)
        return f"{self.public_url}/api/v1/images/{image_id}?expires={expires}&signature={signature}"

    def verify(self, image_id: uuid.UUID, owner_id: uuid.UUID, expires: int, signature: str) -> None:
        expected = self._signature(image_id, owner_id, expires)
        # As bytes: compare_digest refuses a str that is not ASCII, which a forged URL may carry.
        if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
            raise PermissionDenied("the image URL's signature is invalid")
        if expires < time.time():
            raise PermissionDenied("the image URL has expired")
