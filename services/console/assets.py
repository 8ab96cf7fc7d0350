"""Serving the console's built assets: files as they are, any other page path as index.html (the
single-page app routes in the browser), with the headers that keep the page to its own origin.

- Vite names everything under `assets/` by its content hash, so those files are cached for a
  year as immutable; index.html and the rest are revalidated on every load, so a deploy shows at
  once.
- The Content-Security-Policy allows scripts, styles and calls (gRPC-Web) from the page's own
  origin only, and images from it, the image host (presigned S3 or CloudFront URLs) and the
  blob: URLs the live previews are shown through.
- No Referer leaves the page: the OAuth callback's URL carries the code and state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

INDEX = "index.html"
HASHED_ASSETS_PREFIX = "assets/"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


def content_security_policy(image_origins: Sequence[str]) -> str:
    images = " ".join(["'self'", "blob:", "data:", *image_origins])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {images}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, or of a bare domain (taken as https)."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return f"{parts.scheme}://{parts.netloc}"


class ConsoleAssets:
    """The request handler: one file under `root` per request, never a path outside it."""

    def __init__(self, root: Path, image_origins: Sequence[str]) -> None:
        self.root = root.resolve()
        self.headers = {
            "Content-Security-Policy": content_security_policy(image_origins),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        }

    def _file(self, request_path: str) -> Path | None:
        relative = request_path.lstrip("/") or INDEX
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"], headers=self.headers)
        relative = request.path.lstrip("/")
        found = self._file(relative)
        if found is None:
            # A hashed asset that is gone (an older deploy's) is a 404, not the page: a script
            # tag must never receive HTML. Every other path is a route of the app.
            if relative.startswith(HASHED_ASSETS_PREFIX):
                raise web.HTTPNotFound(headers=self.headers)
            found = self._file(INDEX)
            if found is None:
                raise web.HTTPServiceUnavailable(
                    text="the console is not built: run `npm run build` in web/", headers=self.headers
                )
        cache = IMMUTABLE if relative.startswith(HASHED_ASSETS_PREFIX) and found.name != INDEX else REVALIDATE
        return web.FileResponse(found, headers={**self.headers, "Cache-Control": cache})

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app
