"""A process that fetches one model from the mesh's models bucket into a cache directory, as a
worker does before it loads the model, with the download failpoint armed: tests hold it
mid-download and kill it.

    python -m support.model_fetch NAME CACHE_DIR      (tests/ on the path)

S3's settings and REDIS_URL come from the environment, as a worker's do.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from redis.asyncio import Redis

from services.common.failpoints import Failpoint, Failpoints
from services.common.settings import ModelStoreSettings, ObjectStoreSettings
from services.generation.model_store import open_model_store


async def fetch(name: str, cache_dir: Path) -> int:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    store, close = await open_model_store(
        ObjectStoreSettings(),
        cache_dir,
        transfers=ModelStoreSettings(),
        failpoints=Failpoints(redis, frozenset({Failpoint.PARK_MID_DOWNLOAD})),
    )
    try:
        info = (await store.read_models())[name]
        await store.ensure_cached(info)
        print(f"fetched {name} into {info.path}", flush=True)
    finally:
        await close()
        await redis.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(fetch(sys.argv[1], Path(sys.argv[2]))))
