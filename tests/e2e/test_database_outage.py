"""A Lemon Squeezy webhook that arrives while PostgreSQL is down is answered 503, so Lemon Squeezy
delivers it again; once `pingvas up` has restarted PostgreSQL, the retry or `pingvas billing
reconcile`, whichever comes first, gives the plan's credits once.

PostgreSQL is killed, so this module runs on a mesh of its own (no GPU worker: no job runs). The
supervisor is paused (SIGSTOP) while PostgreSQL is dead, so the deliveries meet it down however
fast a restart would be; resumed, the supervisor restarts it.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import psycopg2
import pytest
from support.generations import wait_for
from support.lemonsqueezy import LemonSqueezyServer
from support.mesh import MeshStarter, RunningMesh

pytestmark = pytest.mark.integration

PRO = "102"  # the Pro variant id the mesh's dev settings know


@pytest.fixture(scope="module")
def mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    """This module's own mesh; the conftest fixtures that take `mesh` (accounts, the ledger
    check) use it."""
    with own_mesh(
        "outage-home",
        {
            "PINGVAS_WORKERS": "0",
            "PINGVAS_RESTART_BACKOFF_INITIAL_SECONDS": "0.2",
        },
    ) as running:
        yield running


def postgres_is_up(mesh: RunningMesh) -> bool:
    try:
        mesh.sql("SELECT 1")
    except psycopg2.OperationalError:
        return False
    return True


def credits_given(mesh: RunningMesh, user_id: str) -> list[tuple[str, int]]:
    rows = mesh.sql(
        "SELECT kind, amount FROM credit_entries WHERE user_id = %s AND kind IN ('grant', 'reset') "
        "ORDER BY id",
        user_id,
    )
    return [(row["kind"], row["amount"]) for row in rows]


def test_a_webhook_during_a_database_outage_is_answered_5xx_and_granted_once_after(
    mesh: RunningMesh, new_account: Any, lemonsqueezy: LemonSqueezyServer, ledger_sums_to_every_balance: None
) -> None:
    # Two buyers: one's retry comes before the reconcile, the other's after it.
    retried_first, reconciled_first = new_account("outage-retry"), new_account("outage-reconcile")
    deliveries = {
        account.user_id: lemonsqueezy.subscription_event(
            "subscription_created",
            f"sub-{uuid.uuid4().hex[:8]}",
            user_id=account.user_id,
            user_email=account.email,
            variant_id=PRO,
        )
        for account in (retried_first, reconciled_first)
    }
    supervisor = psutil.Process(mesh.process.pid)
    (postgres,) = [child for child in supervisor.children() if "postgres" in " ".join(child.cmdline())]

    supervisor.suspend()
    try:
        os.killpg(postgres.pid, signal.SIGKILL)  # the postmaster and its backends, as an OOM kill
        # Dead, and left unreaped while the supervisor is paused.
        wait_for(lambda: postgres.status() == psutil.STATUS_ZOMBIE, message="postgres did not die")
        assert not postgres_is_up(mesh)
        for payload in deliveries.values():
            # UNAVAILABLE, so Lemon Squeezy retries: never a 2xx that would lose the delivery.
            assert lemonsqueezy.deliver(mesh.gateway_url, payload).status_code == 503
    finally:
        supervisor.resume()
    wait_for(lambda: postgres_is_up(mesh), within=120, message="PostgreSQL was not restarted")
    assert "postgres exited (killed by SIGKILL); restarting in" in (mesh.home / "up.out").read_text()

    assert lemonsqueezy.deliver(mesh.gateway_url, deliveries[retried_first.user_id]).status_code == 200
    reconciled = mesh.pingvas("billing", "reconcile")
    assert reconciled.returncode == 0, reconciled.stderr
    assert lemonsqueezy.deliver(mesh.gateway_url, deliveries[reconciled_first.user_id]).status_code == 200
    assert mesh.pingvas("billing", "reconcile").returncode == 0

    for account in (retried_first, reconciled_first):
        # The free grant, then Pro's allowance once (a subscription's first credits are a reset).
        assert credits_given(mesh, account.user_id) == [("grant", 100), ("reset", 14900)]
