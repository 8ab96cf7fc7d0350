"""A worker's first use of a model downloads it into the cache: that may take far longer than a
lease, and the jobs waiting for it stay leased to the worker all along."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.generations import wait_for

from services.common.failpoints import Failpoint, armed_key, parked_key, release_key

pytestmark = pytest.mark.integration

DOWNLOAD_FAILPOINTS = f'["{Failpoint.PARK_AFTER_STEP}", "{Failpoint.PARK_MID_DOWNLOAD}"]'


def test_a_job_waiting_for_its_models_download_keeps_its_lease(
    scheduler_mesh: Any,
    workers: Any,
    customer: Any,
    submit: Any,
    wait_done: Any,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    name = f"download-{uuid.uuid4().hex[:8]}"
    shutil.copytree(models_dir / "tiny-sd", tmp_path / name, ignore=shutil.ignore_patterns(".*"))
    pushed = scheduler_mesh.pingvas("models", "push", str(tmp_path / name))
    assert pushed.returncode == 0, pushed.stderr
    redis = scheduler_mesh.redis()
    redis.hset(armed_key(Failpoint.PARK_MID_DOWNLOAD), name, 1)
    try:
        worker = workers("w-download", wait=False, PINGVAS_FAILPOINTS=DOWNLOAD_FAILPOINTS)
        who = customer("pro")
        worker.wait_serving()
        job = submit(who, model=name)["id"]
        wait_for(lambda: redis.exists(parked_key(Failpoint.PARK_MID_DOWNLOAD, name)), 60, "never parked")
        first_expiry = redis.zscore("leases", job)
        assert first_expiry is not None

        # The download is held past the lease's first expiry (3 s on this mesh): the worker
        # renews it meanwhile, so the reconciler never takes the job back.
        wait_for(
            lambda: (redis.zscore("leases", job) or 0) > first_expiry + 3000,
            30,
            "the lease was not renewed while the model downloaded",
        )
        redis.rpush(release_key(Failpoint.PARK_MID_DOWNLOAD, name), "go")
        (done,) = wait_done([job])
    finally:
        redis.hdel(armed_key(Failpoint.PARK_MID_DOWNLOAD), name)
        shutil.rmtree(models_dir / name, ignore_errors=True)

    assert (done["state"], done["attempt"], done["worker_id"]) == ("SUCCEEDED", 1, "w-download")
