"""The README's Python SDK example runs as written, against the mesh, with an API key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.mesh import RunningMesh

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Python SDK\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the Python SDK section has no python example"
    return match.group(1)


def test_the_readme_example_draws_a_fox_and_lists_it(
    mesh: RunningMesh, new_account: Any, tmp_path: Path
) -> None:
    account = new_account("sdk-readme")
    created = httpx.post(
        f"{mesh.gateway_url}/api/v1/apikeys",
        json={"displayName": "readme", "scopes": ["read", "generate"]},
        headers=account.headers,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    example = readme_example()
    assert '"127.0.0.1:8080"' in example, "the example names the local gateway"
    ran = subprocess.run(
        [sys.executable, "-c", example.replace('"127.0.0.1:8080"', repr(mesh.gateway_target))],
        cwd=tmp_path,
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
    assert (tmp_path / "fox.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    lines = ran.stdout.splitlines()
    assert lines[:2] == ["Queued 1", "Started 2"] and lines[6] == "Succeeded 7", lines
    (generation,) = mesh.sql(
        "SELECT id, credits_charged FROM generations WHERE user_id = %s", account.user_id
    )
    assert lines[7] == f"{generation['id']} {generation['credits_charged']} credits"
    assert lines[8] == f"{generation['id']} a red fox in snow"
