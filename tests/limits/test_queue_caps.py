"""The per-user cap on queued and running generations: past it CreateGeneration answers
RESOURCE_EXHAUSTED / HTTP 429 (TOO_MANY_GENERATIONS) and holds, queues and charges nothing;
other users of the same band are not affected; a finished job frees its place. The mesh caps
Free users at 2 (tests/limits/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from support.failpoints import parking_prompt, release, wait_parked
from support.generations import row, wait_for
from support.limits import FREE_LIVE_GENERATIONS, sign_up

from services.common.database import Database
from services.generation.repository import live_count_query

pytestmark = pytest.mark.integration

REQUEST = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 3}


def holds(mesh: Any, user_id: str) -> list[str]:
    rows = mesh.sql("SELECT reference FROM credit_entries WHERE user_id = %s AND kind = 'hold'", user_id)
    return sorted(r["reference"] for r in rows)


def test_a_user_past_their_live_generations_cap_is_refused_and_never_charged(limits_mesh: Any) -> None:
    mesh = limits_mesh
    account, neighbour = sign_up(mesh, "cap"), sign_up(mesh, "cap-neighbour")
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as rest:
        # One job held mid-run, the rest queued behind it: all live.
        prompt = parking_prompt(mesh, "a lighthouse at dusk", after_step=1)
        first = rest.post(
            "/api/v1/generation/create", json={**REQUEST, "prompt": prompt}, headers=account.headers
        )
        assert first.status_code == 200, first.text
        wait_parked(mesh, first.json()["id"])
        live = [first.json()["id"]]
        for _ in range(FREE_LIVE_GENERATIONS - 1):
            accepted = rest.post("/api/v1/generation/create", json=REQUEST, headers=account.headers)
            assert accepted.status_code == 200, accepted.text
            live.append(accepted.json()["id"])
        (before,) = mesh.sql("SELECT balance, held FROM credit_accounts WHERE user_id = %s", account.user_id)
        holds_before = holds(mesh, account.user_id)

        refused = rest.post("/api/v1/generation/create", json=REQUEST, headers=account.headers)
        assert refused.status_code == 429, refused.text
        by_type = {d["@type"].rsplit("/", 1)[-1]: d for d in refused.json()["details"]}
        info = by_type["google.rpc.ErrorInfo"]
        assert info["reason"] == "TOO_MANY_GENERATIONS"
        assert info["metadata"]["max_live_generations"] == str(FREE_LIVE_GENERATIONS)
        with grpc.insecure_channel(mesh.gateway_target) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.GenerationServiceStub(channel).CreateGeneration(
                pb.CreateGenerationRequest(generation=resources.Generation(**REQUEST)),
                metadata=account.metadata,
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Nothing was recorded, held or queued for the refused requests.
        assert len(mesh.sql("SELECT id FROM generations WHERE user_id = %s", account.user_id)) == len(live)
        assert holds(mesh, account.user_id) == holds_before
        assert mesh.sql("SELECT balance, held FROM credit_accounts WHERE user_id = %s", account.user_id) == [
            before
        ]

        # The cap is the user's own, not the band's: another Free user is accepted.
        theirs = rest.post(
            "/api/v1/generation/create", json={**REQUEST, "steps": 1}, headers=neighbour.headers
        )
        assert theirs.status_code == 200, theirs.text

        # A finished job frees its place.
        release(mesh, live[0])
        for generation_id in live:
            wait_for(
                lambda generation_id=generation_id: row(mesh, generation_id)["state"] == "SUCCEEDED",
                within=120,
                message=f"{generation_id} never finished",
            )
        again = rest.post("/api/v1/generation/create", json=REQUEST, headers=account.headers)
        assert again.status_code == 200, again.text


async def test_counting_a_users_live_generations_reads_only_their_live_rows(limits_mesh: Any) -> None:
    """The cap's count runs on every CreateGeneration; a user with a long history must not make
    it walk that history. PostgreSQL's plan for the repository's own query, as the tenant role
    under row-level security, reads the partial index of live rows and no finished one."""
    mesh = limits_mesh
    account = sign_up(mesh, "history")
    mesh.sql(
        """
        INSERT INTO generations (id, user_id, state, tier, prompt, model, width, height, steps, seed,
                                 guidance, credits_held, finished_at)
        SELECT gen_random_uuid(), %s, 'SUCCEEDED', 'free', 'an old picture', 'tiny-sd', 64, 64, 2, n,
               7.5, 0, now()
        FROM generate_series(1, 5000) AS n
        """,
        account.user_id,
    )
    mesh.sql("ANALYZE generations")

    user_id = uuid.UUID(account.user_id)
    statement = live_count_query(user_id, at_most=FREE_LIVE_GENERATIONS)
    compiled = statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    database = Database(mesh.app_database_url, schema=mesh.schema, system_url=mesh.system_database_url)
    try:
        async with database.tenant(user_id) as conn:
            plan = (await conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}"))).scalar_one()
    finally:
        await database.close()

    nodes = list(plan_nodes(plan[0]["Plan"]))
    scans = [node for node in nodes if "Relation Name" in node]
    assert [(scan["Node Type"], scan.get("Index Name")) for scan in scans] in (
        [("Index Scan", "generations_live_by_user")],
        [("Index Only Scan", "generations_live_by_user")],
        [("Bitmap Heap Scan", None)],
    ), scans
    assert not any(node.get("Rows Removed by Filter", 0) for node in nodes), nodes
    if scans[0]["Node Type"] == "Bitmap Heap Scan":
        assert [node.get("Index Name") for node in nodes if node["Node Type"] == "Bitmap Index Scan"] == [
            "generations_live_by_user"
        ]


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)
