"""Nothing internal reaches someone who should not see it: token errors say no more than that the
token was refused (the log says why), and the files that hold secrets are the owner's alone.
(Failure reasons: tests/scheduler/test_recovery.py; the access log: tests/edge.)"""

from __future__ import annotations

import json
import stat
import time
from typing import Any

import grpc
import httpx
import pytest
from pingvas.user.v1 import user_service_pb2 as pb
from pingvas.user.v1 import user_service_pb2_grpc as pb_grpc
from support.tokens import signed_by_a_stranger, signed_with_the_real_key

pytestmark = pytest.mark.integration


def _wait_for_line(mesh: Any, component: str, text: str) -> str:
    deadline = time.monotonic() + 30
    while (line := next((ln for ln in mesh.log(component).splitlines() if text in ln), None)) is None:
        assert time.monotonic() < deadline, f"{text!r} never reached the {component} log"
        time.sleep(0.1)
    return line


@pytest.mark.parametrize(
    ("forge", "detail"),
    [
        (lambda mesh, user: signed_by_a_stranger(user), "unknown kid"),
        (
            lambda mesh, user: signed_with_the_real_key(mesh, user, exp=int(time.time()) - 3600),
            "Signature has expired",
        ),
    ],
    ids=["forged", "expired"],
)
def test_a_refused_token_is_told_only_that_it_was_refused(
    mesh: Any, new_account: Any, rest: httpx.Client, forge: Any, detail: str
) -> None:
    token = forge(mesh, new_account("refused").user_id)

    # The edge refuses it before any service sees it, with the one generic text.
    reply = rest.get("/api/v1/users/me", headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 401
    assert reply.text == "invalid or expired token"

    # The service, reached directly, refuses it too, and only its log says why.
    port = json.loads((mesh.home / "run" / "mesh.json").read_text())["ports"]["user"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as direct, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.UserServiceStub(direct).GetUser(
            pb.GetUserRequest(name="users/me"), metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "invalid or expired token"
    assert detail not in str(refused.value.details())
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
