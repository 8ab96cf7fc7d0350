"""The README's Python SDK examples run as written, against the mesh, with an API key: the first
draws a fox and lists it, the second uploads an init image and makes a batch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from support.accounts import Account
from support.mesh import RunningMesh

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def readme_examples() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Python SDK\n", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(examples) == 2, "the Python SDK section has its two python examples"
    return examples


def run_example(
    example: str, mesh: RunningMesh, account: Account, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The example as written, its gateway address the test mesh's, with an API key of `account`."""
    created = httpx.post(
        f"{mesh.gateway_url}/api/v1/apikeys",
        json={"displayName": "readme", "scopes": ["read", "generate"]},
        headers=account.headers,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    assert '"127.0.0.1:8080"' in example, "the example names the local gateway"
    ran = subprocess.run(
        [sys.executable, "-c", example.replace('"127.0.0.1:8080"', repr(mesh.gateway_target))],
        cwd=cwd,
        env={
            **os.environ,
            "PINGVAS_API_KEY": created.json()["secret"],
            "PYTHONPATH": str(REPO_ROOT / "sdk" / "python"),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    return ran


def test_the_readme_example_draws_a_fox_and_lists_it(
    mesh: RunningMesh, new_account: Any, tmp_path: Path
) -> None:
    account = new_account("sdk-readme")
    ran = run_example(readme_examples()[0], mesh, account, tmp_path)
    assert (tmp_path / "fox.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    lines = ran.stdout.splitlines()
    assert "Succeeded 7" in lines, lines
    end = lines.index("Succeeded 7") + 1
    events, printed_after = lines[:end], lines[end:]
    assert events[:2] == ["Queued 1", "Started 2"], lines
    # Four steps are events 3 to 6. A reader slower than the steps gets only the newest progress
    # it has not had (README), so some may be skipped under load: never their order or the last.
    progress = [int(line.removeprefix("Progress ")) for line in events[2:-1]]
    assert progress == sorted(set(progress)) and set(progress) <= {3, 4, 5, 6} and progress[-1] == 6, lines
    (generation,) = mesh.sql(
        "SELECT id, credits_charged FROM generations WHERE user_id = %s", account.user_id
    )
    assert printed_after == [
        f"{generation['id']} {generation['credits_charged']} credits",
        f"{generation['id']} a red fox in snow",
    ]


def test_the_readme_example_uploads_an_init_image_and_makes_a_batch(
    mesh: RunningMesh, new_account: Any, tmp_path: Path
) -> None:
    account = new_account("sdk-readme-inputs")
    Image.new("RGB", (64, 64), (200, 80, 40)).save(tmp_path / "fox.png", format="PNG")
    ran = run_example(readme_examples()[1], mesh, account, tmp_path)

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
