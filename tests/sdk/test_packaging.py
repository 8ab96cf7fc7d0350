"""The SDK as a partner installs it: a wheel built from sdk/python alone, named `pingvas`,
depending on exactly grpcio, protobuf and googleapis-common-protos, and typed enough that
`mypy --strict` checks a user's code against it (and catches a misuse)."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

SDK_SOURCE = Path(__file__).resolve().parents[2] / "sdk" / "python"

USER_CODE = """
import asyncio

import pingvas
from pingvas.generation.v1 import generation_resources_pb2


def show(event: pingvas.Event) -> None:
    if isinstance(event, pingvas.Progress):
        print(f"{event.step}/{event.total_steps}")


def draw(client: pingvas.Client) -> bytes:
    try:
        result = client.generate("a red fox in snow", width=64, height=64, steps=4, progress=show)
    except pingvas.InvalidArgument as error:
        print([(v.field, v.description) for v in error.field_violations])
        raise
    except pingvas.RateLimited as error:
        wait: float | None = error.retry_after
        print(wait)
        raise
    generation: generation_resources_pb2.Generation = result.generation
    print(generation.id, generation.credits_charged)
    return result.image


def newest_images(client: pingvas.Client) -> list[str]:
    return [image.id for image in client.images.list(page_size=10)]


async def follow(generation_id: str) -> int:
    async with pingvas.AsyncClient(api_key="pv_example") as client:
        last = 0
        async for event in client.generations.watch(generation_id):
            last = event.sequence
        return last


if __name__ == "__main__":
    with pingvas.Client(api_key="pv_example", retry=pingvas.RetryPolicy(max_attempts=3)) as client:
        draw(client)
    asyncio.run(follow("id"))
"""

MISUSE = """
import pingvas


def prompt_of(client: pingvas.Client) -> str:
    return client.generate("a fox").image
"""


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of sdk/python (building in place would leave build/ and
    egg-info in the checkout) with the setuptools already installed, offline."""
    workspace = tmp_path_factory.mktemp("sdk-wheel")
    source = workspace / "source"
    shutil.copytree(SDK_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            workspace / "dist",
            source,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (workspace / "dist").glob("pingvas-*.whl")
    return wheel


def test_the_wheel_is_named_pingvas_and_depends_on_grpcio_protobuf_and_googleapis_common_protos_only(
    sdk_wheel: Path,
) -> None:
    with zipfile.ZipFile(sdk_wheel) as wheel:
        names = wheel.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(wheel.read(metadata_name))
    assert metadata["Name"] == "pingvas"
    requirements = {
        re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower()
        for requirement in metadata.get_all("Requires-Dist")
    }
    assert requirements == {"grpcio", "protobuf", "googleapis-common-protos"}
    assert {name.split("/", 1)[0] for name in names} == {"pingvas", "pingvas-0.1.0.dist-info"}
    assert "pingvas/py.typed" in names
    assert {"pingvas/client.py", "pingvas/aio.py", "pingvas/generation/v1/generation_service_pb2.pyi"} <= set(
        names
    )


def test_mypy_strict_checks_a_users_code_against_the_installed_sdk(sdk_wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, sdk_wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    (tmp_path / "user.py").write_text(textwrap.dedent(USER_CODE))
    (tmp_path / "misuse.py").write_text(textwrap.dedent(MISUSE))

    def mypy_strict(file: str) -> subprocess.CompletedProcess[str]:
        # The installed wheel comes first on the path, as site-packages would hold it.
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--strict",
                "--no-incremental",
                "--cache-dir",
                tmp_path / "cache",
                file,
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
            timeout=300,
        )

    checked = mypy_strict("user.py")
    assert checked.returncode == 0, checked.stdout
    misused = mypy_strict("misuse.py")
    assert misused.returncode == 1
    assert 'Incompatible return value type (got "bytes", expected "str")' in misused.stdout
