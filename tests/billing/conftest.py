"""Every billing test that runs against the mesh ends by checking the ledger invariant: each
balance and hold total is exactly the sum of its append-only entries, and none is negative."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _ledger_invariant_after_mesh_tests(request: pytest.FixtureRequest) -> None:
    # Tests that never touch the mesh (the client against its stand-in, the email outbox on its
    # own PostgreSQL) have no mesh ledger to check, and must not start a mesh for it.
    if "mesh" in request.fixturenames:
        request.getfixturevalue("ledger_sums_to_every_balance")
