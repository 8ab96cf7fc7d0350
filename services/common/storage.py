"""Where generated images live. Embedded mode writes files under PINGVAS_HOME/images; S3 comes
behind the same interface."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Protocol


def image_key(user_id: uuid.UUID, generation_id: uuid.UUID, created: datetime) -> str:
    """The seed's layout: /{user_id}/{yyyy}/{mm}/{image}.png."""
    return f"{user_id}/{created:%Y}/{created:%m}/{generation_id}.png"


class ImageStore(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None: ...


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"image key {key!r} escapes the image directory")
        return path

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self.path(key), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Write-then-rename: a reader never sees half an image.
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, True)
