"""The TypeScript SDK (sdk/typescript) against the real mesh: its Node tests (`node --test`,
over connect-node's native gRPC to Envoy) run here, with the mesh, a user without credits, a PNG to
upload and a hop that cuts a watch stream prepared by this test, so that the README's test
command runs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pingvas.generation.v1 import generation_service_pb2
from support.accounts import Account
from support.flaky_hop import FlakyHop
from support.mesh import RunningMesh

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

REPO_ROOT = Path(__file__).resolve().parents[2]
SDK_DIR = REPO_ROOT / "sdk" / "typescript"


@pytest.fixture(scope="module")
def built_sdk() -> Path:
    """The SDK compiled to dist/ from its sources, as `npm run build` does."""
    if not (SDK_DIR / "node_modules").exists():
        pytest.fail("sdk/typescript has no node_modules: run .ci/setup (npm ci in sdk/typescript)")
    subprocess.run(["npm", "run", "--silent", "build"], cwd=SDK_DIR, check=True, timeout=300)
    return SDK_DIR / "dist"


def test_the_node_tests_pass_against_the_mesh(
    built_sdk: Path, mesh: RunningMesh, new_account: Any, tmp_path: Path
) -> None:
    broke = new_account("ts-sdk-broke")
    drained = mesh.pingvas("admin", "grant-credits", broke.email, "-100")
    assert drained.returncode == 0, drained.stderr
    init_png = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 80, 40)).save(init_png, format="PNG")
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
                "PINGVAS_INIT_PNG": str(init_png),
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
        watches = hop.requests("WatchGeneration", generation_service_pb2.WatchGenerationRequest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 6" in result.stdout, result.stdout
    # The cut stream was reopened after the last event its watch had seen.
    assert [w.after_sequence for w in watches] == [0, 2]
    assert mesh.sql("SELECT id FROM generations WHERE user_id = %s", broke.user_id) == []


def readme_typescript_examples() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## TypeScript SDK\n", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```ts\n(.*?)```", section, re.DOTALL)
    assert len(examples) == 2, "the TypeScript SDK section has its two ts examples"
    return examples


def run_example(
    example: str, mesh: RunningMesh, account: Account, replacements: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A README example, its gateway address the test mesh's (and any other `replacements`), run
    by Node as a module of the SDK's package (so `@pingvas/sdk` resolves to it, as for a user who
    installed it), with an API key of `account`."""
    created = httpx.post(
        f"{mesh.gateway_url}/api/v1/apikeys",
        json={"displayName": "ts readme", "scopes": ["read", "generate"]},
        headers=account.headers,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    assert '"http://127.0.0.1:8080"' in example, "the example names the local gateway"
    for old, new in {'"http://127.0.0.1:8080"': repr(mesh.gateway_url), **(replacements or {})}.items():
        assert old in example, old
        example = example.replace(old, new)
    script = SDK_DIR / f".readme-example-{os.getpid()}.mjs"
    script.write_text(example)
    try:
        ran = subprocess.run(
            [shutil.which("node") or "node", script.name],
            cwd=SDK_DIR,
            env={**os.environ, "PINGVAS_API_KEY": created.json()["secret"]},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        script.unlink()
    assert ran.returncode == 0, ran.stderr
    return ran


def test_the_readme_example_runs_as_written(built_sdk: Path, mesh: RunningMesh, new_account: Any) -> None:
    account = new_account("ts-readme")
    ran = run_example(readme_typescript_examples()[0], mesh, account)
    (generation,) = mesh.sql("SELECT id, steps FROM generations WHERE user_id = %s", account.user_id)
    lines = ran.stdout.splitlines()
    # A progress line per step at most (a newer step may replace an unread one), then the image.
    assert lines[-1].startswith(mesh.s3_env["S3_ENDPOINT_URL"] + "/"), lines
    assert f"/{generation['id']}.png?" in lines[-1]
    steps = lines[:-1]
    assert steps and steps[-1] == "4/4" and all(re.fullmatch(r"[1-4]/4", line) for line in steps), lines


def test_the_readme_upload_and_batch_example_runs_as_written(
    built_sdk: Path, mesh: RunningMesh, new_account: Any, tmp_path: Path
) -> None:
    account = new_account("ts-readme-inputs")
    fox = tmp_path / "fox.png"
    Image.new("RGB", (64, 64), (200, 80, 40)).save(fox, format="PNG")
    ran = run_example(readme_typescript_examples()[1], mesh, account, {'"fox.png"': repr(str(fox))})

    made = mesh.sql(
        "SELECT id, prompt, seed, init_image_id FROM generations WHERE user_id = %s ORDER BY seed",
        account.user_id,
    )
    oil = next(row for row in made if row["prompt"] == "a fox, oil painting")
    lighthouses = [row for row in made if row["prompt"] == "a lighthouse at dusk"]
    assert [row["seed"] for row in lighthouses] == [7, 8, 9]
    assert ran.stdout.splitlines() == [f"{oil['id']} {oil['init_image_id']}"] + [
        f"{row['id']} {row['seed']}" for row in lighthouses
    ]
