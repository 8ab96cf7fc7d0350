"""Webhook signing secrets are sealed at rest under the deployment's secret."""

from __future__ import annotations

import pytest
from cryptography.fernet import InvalidToken

from services.webhooks.endpoints import new_signing_secret
from services.webhooks.sealing import SecretSealer


def test_a_sealed_secret_opens_only_under_the_same_deployment_secret() -> None:
    secret = new_signing_secret()
    sealed = SecretSealer("d" * 48).seal(secret)
    assert secret.removeprefix("whsec_") not in sealed
    assert SecretSealer("d" * 48).unseal(sealed) == secret
    with pytest.raises(InvalidToken):
        SecretSealer("e" * 48).unseal(sealed)
