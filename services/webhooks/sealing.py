"""Webhook signing secrets at rest: sealed with Fernet (AES-CBC and HMAC-SHA256) under a key derived from the
deployment's PINGVAS_JWT_SECRET, which already protects the access-token signing keys in
PostgreSQL. A signing secret must be readable to sign with (an HMAC key cannot be stored as a
hash), but a copy of the database alone does not reveal it.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Names this key's purpose, so it differs from every other key derived from the same secret.
PURPOSE = b"pingvas webhook signing secrets v1"


class SecretSealer:
    def __init__(self, deployment_secret: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(
            deployment_secret.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def unseal(self, sealed: str) -> str:
        return self._fernet.decrypt(sealed.encode()).decode()
