"""The formats an input image may have, told apart by their first bytes: a module of its own so
that a client (`pingvas generate`) checks a file the way the service will, without importing the
service's storage."""

from __future__ import annotations

# What CreateUpload accepts (the contract's rules say the same).
CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp")


def sniff_format(data: bytes) -> str | None:
    """The allowed format the bytes begin with (its media type), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
