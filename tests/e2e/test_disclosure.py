"""Nothing internal reaches someone who should not see it: token errors say no more than that the
token was refused (the log says why), and the files that hold secrets are the owner's alone.
(Failure reasons: tests/scheduler/test_recovery.py; the access log: tests/edge.)"""

from __future__ import annotations

import json
import stat
import time
from typing import Any

import httpx
import jwt
import pytest

pytestmark = pytest.mark.integration


def _token(secret: str, *, subject: str, expires_in: int) -> str:
    now = int(time.time())
    claims = {"iss": "pingvas", "aud": "pingvas-api", "sub": subject, "iat": now, "exp": now + expires_in}
    return jwt.encode(claims, secret, algorithm="HS256")


def _wait_for_line(mesh: Any, component: str, text: str) -> str:
    deadline = time.monotonic() + 30
    while (line := next((ln for ln in mesh.log(component).splitlines() if text in ln), None)) is None:
        assert time.monotonic() < deadline, f"{text!r} never reached the {component} log"
        time.sleep(0.1)
    return line


@pytest.mark.parametrize(
    ("forge", "detail"),
    [
        (lambda secret, user: _token("x" * 48, subject=user, expires_in=600), "Signature verification"),
        (lambda secret, user: _token(secret, subject=user, expires_in=-60), "Signature has expired"),
    ],
    ids=["forged", "expired"],
)
def test_a_refused_token_is_told_only_that_it_was_refused(
    mesh: Any, new_account: Any, rest: httpx.Client, forge: Any, detail: str
) -> None:
    secret = json.loads((mesh.home / "secrets.json").read_text())["PINGVAS_JWT_SECRET"]
    token = forge(secret, new_account("refused").user_id)

    reply = rest.get("/api/v1/users/me", headers={"authorization": f"Bearer {token}"})

    assert reply.status_code == 401
    assert reply.json()["message"] == "invalid or expired token"
    assert detail not in reply.text
    assert "rejected an access token" in _wait_for_line(mesh, "user", detail)


def test_files_holding_secrets_are_readable_by_their_owner_only(mesh: Any) -> None:
    for path in (
        mesh.home / "run" / "mesh.json",
        mesh.home / "secrets.json",
        mesh.home / "database-passwords.json",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_no_log_holds_a_database_password(mesh: Any) -> None:
    passwords = json.loads((mesh.home / "database-passwords.json").read_text()).values()
    logs = [*sorted((mesh.home / "logs").glob("*.log")), mesh.home / "up.out"]
    assert len(logs) > 5
    for path in logs:
        text = path.read_text(errors="replace")
        assert not [password for password in passwords if password in text], path
