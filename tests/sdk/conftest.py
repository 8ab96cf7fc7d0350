"""A mesh of the SDK tests' own where a Starter user's request rate is reached in a few calls
(the session mesh's rates are far out of reach), for RateLimited and its RetryInfo."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.limits import STARTER_RATE
from support.mesh import MeshStarter, RunningMesh


@pytest.fixture(scope="package")
def rate_limited_mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    requests, seconds = STARTER_RATE
    rates = {"free": "100000/minute", "starter": f"{requests} per {seconds} seconds"}
    with own_mesh("sdk-rates-home", {"PINGVAS_RATE_LIMITS_PER_USER": json.dumps(rates)}) as running:
        yield running
