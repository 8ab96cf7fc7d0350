"""A mesh of its own with low limits, so each limit is reached in a few requests (the session
mesh raises them all far out of reach, tests/support/mesh.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.failpoints import FAILPOINTS_ENV
from support.limits import FREE_LIVE_GENERATIONS, SIGN_IN_PER_IP, STARTER_RATE, UNARY_TIMEOUT_SECONDS
from support.mesh import MeshStarter, RunningMesh


@pytest.fixture(scope="package")
def limits_mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    requests, seconds = STARTER_RATE
    with own_mesh(
        "limits-home",
        {
            "PINGVAS_RATE_LIMITS_PER_USER": json.dumps(
                {"free": "100000/minute", "starter": f"{requests} per {seconds} seconds"}
            ),
            "PINGVAS_SCHEDULER_MAX_LIVE_PER_USER": json.dumps({"free": FREE_LIVE_GENERATIONS}),
            "PINGVAS_RATE_LIMITS_SIGN_IN_PER_IP": f"{SIGN_IN_PER_IP}/minute",
            # As behind one load balancer: its X-Forwarded-For entry names the client.
            "PINGVAS_GATEWAY_XFF_TRUSTED_HOPS": "1",
            "PINGVAS_GATEWAY_UNARY_TIMEOUT_SECONDS": str(UNARY_TIMEOUT_SECONDS),
            **FAILPOINTS_ENV,
        },
    ) as running:
        yield running
