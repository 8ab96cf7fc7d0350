"""The browser's refresh token, kept in an HttpOnly cookie instead of the response body.

The console asks for it with the request header `pingvas-session: cookie` (the contract,
RefreshSessionRequest). The cookie is set through response headers (gRPC initial metadata,
which Envoy's gRPC-Web filter hands to the browser as HTTP headers): HttpOnly, so script (an
injected one included) never reads it; Secure; SameSite=Strict, so another site cannot make the
browser spend it; and one cookie per path, RefreshSession's and Logout's, so no other request
carries it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http.cookies import SimpleCookie

REQUEST_HEADER = "pingvas-session"
REQUEST_VALUE = "cookie"
COOKIE_NAME = "pingvas_refresh"
COOKIE_PATHS = (
    "/pingvas.user.v1.UserService/RefreshSession",
    "/pingvas.user.v1.UserService/Logout",
)

Metadata = Iterable[tuple[str, str | bytes]]


def wants_cookie(metadata: Metadata) -> bool:
    return any(key == REQUEST_HEADER and value == REQUEST_VALUE for key, value in metadata)


def token_from(metadata: Metadata) -> str:
    """The refresh token the request's cookie carries, or "" without one."""
    for key, value in metadata:
        if key == "cookie" and isinstance(value, str):
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value)
            except Exception:  # a malformed Cookie header is no session
                continue
            if COOKIE_NAME in jar:
                return jar[COOKIE_NAME].value
    return ""


def set_cookie_headers(token: str, max_age_seconds: int) -> Sequence[tuple[str, str]]:
    """The response headers that store `token` (or, with max_age 0, delete the cookie)."""
    return [
        (
            "set-cookie",
            f"{COOKIE_NAME}={token}; Path={path}; Max-Age={max_age_seconds}; HttpOnly; Secure; SameSite=Strict",
        )
        for path in COOKIE_PATHS
    ]
