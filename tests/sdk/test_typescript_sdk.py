"""The TypeScript SDK (sdk/typescript) against the real mesh: its Node tests (`node --test`,
over connect-node's native gRPC to Envoy) run here, with the mesh, a user without credits and a
hop that cuts a watch stream prepared by this test, so that the README's test command runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pingvas.generation.v1 import generation_service_pb2
from support.flaky_hop import FlakyHop
from support.mesh import RunningMesh

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk" / "typescript"


@pytest.fixture(scope="module")
def built_sdk() -> Path:
    """The SDK compiled to dist/ from its sources, as `npm run build` does."""
    if not (SDK_DIR / "node_modules").exists():
        pytest.fail("sdk/typescript has no node_modules: run .ci/setup (npm ci in sdk/typescript)")
    subprocess.run(["npm", "run", "--silent", "build"], cwd=SDK_DIR, check=True, timeout=300)
    return SDK_DIR / "dist"


def test_the_node_tests_pass_against_the_mesh(built_sdk: Path, mesh: RunningMesh, new_account: Any) -> None:
    broke = new_account("ts-sdk-broke")
    drained = mesh.pingvas("admin", "grant-credits", broke.email, "-100")
    assert drained.returncode == 0, drained.stderr
    with FlakyHop(mesh.gateway_target) as hop:
        hop.cut_next_stream("WatchGeneration", after_events=2)
        result = subprocess.run(
            [shutil.which("node") or "node", "--test", "test/"],
            cwd=SDK_DIR,
            env={
                **os.environ,
                "PINGVAS_GATEWAY_URL": mesh.gateway_url,
                "PINGVAS_CUT_STREAM_URL": f"http://{hop.target}",
                "PINGVAS_BROKE_TOKEN": broke.token,
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
        watches = hop.requests("WatchGeneration", generation_service_pb2.WatchGenerationRequest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 3" in result.stdout, result.stdout
    # The cut stream was reopened after the last event its watch had seen.
    assert [w.after_sequence for w in watches] == [0, 2]
    assert mesh.sql("SELECT id FROM generations WHERE user_id = %s", broke.user_id) == []
