"""`pingvas proto generate`: regenerate everything that is derived from proto/.

Three artifacts come out of the contract, and all are committed so that a checkout runs without
buf or grpcio-tools; CI regenerates them and fails on any difference:

- the Python SDK's messages, typing stubs and gRPC stubs: the subpackages of sdk/python/pingvas
  (`pingvas.generation.v1`, ...). The SDK's hand-written modules sit beside them at the top of
  the package (sdk/python/pingvas/*.py) and are never touched;
- the TypeScript SDK's messages and Connect service descriptors, sdk/typescript/src/gen
  (protoc-gen-es, as buf.gen.yaml says), which the SDK's wrapper and the web console import;
- the descriptor set Envoy's gRPC-JSON transcoder reads, gateway/pingvas.binpb.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
SDK_ROOT = REPO_ROOT / "sdk" / "python"
TYPESCRIPT_SDK_ROOT = REPO_ROOT / "sdk" / "typescript"
DESCRIPTOR_SET = REPO_ROOT / "gateway" / "pingvas.binpb"


def buf_executable() -> Path:
    """The buf binary installed by `npm install` (package.json pins its version)."""
    buf = REPO_ROOT / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        raise SystemExit("buf is not installed: run `npm install` at the repository root")
    return buf


def generate_python_sdk() -> None:
    from grpc_tools import protoc  # dev-only dependency, imported on demand

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "pingvas").rglob("*.proto"))
    package_dir = SDK_ROOT / "pingvas"
    # Every subpackage is generated (one per proto package, so a proto package that was removed
    # leaves nothing stale behind); the modules at the top are the SDK's own code.
    for generated in (d for d in package_dir.glob("*") if d.is_dir()):
        shutil.rmtree(generated)
    package_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={SDK_ROOT}",
        f"--pyi_out={SDK_ROOT}",
        f"--grpc_python_out={SDK_ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Regular packages (not namespace packages) so that editable installs and mypy see them.
    for directory in [package_dir, *(d for d in package_dir.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").touch()


def generate_typescript_sdk() -> None:
    """buf generate with buf.gen.yaml: protoc-gen-es, pinned in sdk/typescript's lock file, run
    from its node_modules (buf's remote plugins are out of reach)."""
    plugin = TYPESCRIPT_SDK_ROOT / "node_modules" / ".bin" / "protoc-gen-es"
    if not plugin.exists():
        raise SystemExit("protoc-gen-es is not installed: run `npm ci` in sdk/typescript")
    subprocess.run([str(buf_executable()), "generate"], cwd=REPO_ROOT, check=True)


def build_descriptor_set() -> None:
    subprocess.run([str(buf_executable()), "build", "-o", str(DESCRIPTOR_SET)], cwd=REPO_ROOT, check=True)


def main() -> None:
    generate_python_sdk()
    generate_typescript_sdk()
    build_descriptor_set()
    print(
        f"generated {SDK_ROOT.relative_to(REPO_ROOT)}/pingvas, "
        f"{TYPESCRIPT_SDK_ROOT.relative_to(REPO_ROOT)}/src/gen and {DESCRIPTOR_SET.relative_to(REPO_ROOT)}"
    )


if __name__ == "__main__":
    main()
