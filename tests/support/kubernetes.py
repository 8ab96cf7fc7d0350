"""Checking Kubernetes objects offline with the real tools: Helm (the helm-python-sdk wheel, no
helm binary), kubernetes-validate for the built-in kinds, and for custom resources their
upstream CRDs: jsonschema on the openAPIV3Schema and cel-python on the CEL rules, as the API
server would apply them on create."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from celpy import celtypes

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "pingvas"
CLUSTER_CHART = REPO_ROOT / "helm" / "pingvas-cluster"
ARGOCD = REPO_ROOT / "helm" / "argocd"
CRDS = REPO_ROOT / "tests" / "deploy" / "crds"
# The newest Kubernetes the installed kubernetes-validate knows (1.37 when this was written).
KUBERNETES_VERSION: str = kubernetes_validate.latest_version()

Manifest = dict[str, Any]


def render(chart: Path, values: dict[str, Any], *, namespace: str) -> list[Manifest]:
    """Every object the chart renders for an install, hooks included, as `helm template` would."""
    rendered = helm.Chart.load(str(chart)).render(
        values, name=chart.name if chart != CHART else "pingvas", namespace=namespace, is_install=True
    )
    return [
        document
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for document in yaml.safe_load_all(text)
        if document
    ]


def load_values(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values


def load_manifests(directory: Path) -> list[Manifest]:
    return [
        document
        for path in sorted(directory.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


class CustomResourceSchemas:
    """The schemas of the CRDs in a directory, by (apiVersion, kind)."""

    def __init__(self, directory: Path) -> None:
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}
        for path in sorted(directory.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = version["schema"]["openAPIV3Schema"]
                    self.schemas[(f"{group}/{version['name']}", kind)] = schema

    def knows(self, manifest: Manifest) -> bool:
        return (manifest["apiVersion"], manifest["kind"]) in self.schemas

    def violations(self, manifest: Manifest) -> list[str]:
        """What the API server would refuse on create, with strict field validation: the
        structural schema (unknown fields too) and every CEL rule that is not a transition rule."""
        schema = self.schemas[(manifest["apiVersion"], manifest["kind"])]
        body = manifest
        validator = jsonschema.Draft7Validator(_strict(schema))
        found = [
            f"{'/'.join(map(str, error.absolute_path)) or '.'}: {error.message}"
            for error in validator.iter_errors(body)
        ]
        found += [f"{path}: {message}" for path, message in _cel_violations(schema, body, "")]
        return found


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused where the CRD does not keep them (kubectl's
    --validate=strict), and OpenAPI's int-or-string spelled as JSON Schema."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-int-or-string"):
                node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def _find(text: celtypes.StringType, pattern: celtypes.StringType) -> celtypes.StringType:
    """Kubernetes' CEL regex library: the first match, or ''."""
    match = re.search(str(pattern), str(text))
    return celtypes.StringType(match.group(0) if match else "")


def _split(text: celtypes.StringType, separator: celtypes.StringType) -> celtypes.ListType:
    """Kubernetes' CEL strings library."""
    return celtypes.ListType([celtypes.StringType(part) for part in str(text).split(str(separator))])


_CEL = celpy.Environment()
_CEL_FUNCTIONS = {"find": _find, "split": _split}


def _cel_violations(schema: dict[str, Any], value: Any, path: str) -> Iterator[tuple[str, str]]:
    for validation in schema.get("x-kubernetes-validations", []):
        rule = validation["rule"]
        # Transition rules compare with the stored object; on create there is none, and the API
        # server skips them.
        if "oldSelf" in rule:
            continue
        program = _CEL.program(_CEL.compile(rule), functions=_CEL_FUNCTIONS)
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if isinstance(result, celpy.CELEvalError):
            yield path or ".", f"CEL rule {rule!r} could not be evaluated: {result}"
        elif not bool(result):
            yield path or ".", validation.get("message", f"fails {rule!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            child = schema.get("properties", {}).get(key)
            if child is None and isinstance(schema.get("additionalProperties"), dict):
                child = schema["additionalProperties"]
            if child is not None:
                yield from _cel_violations(child, item, f"{path}/{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _cel_violations(schema["items"], item, f"{path}/{index}")


def containers(manifest: Manifest) -> list[dict[str, Any]]:
    """The containers of a workload (Deployment, Job, CronJob), init containers included."""
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


WORKLOAD_KINDS = ("Deployment", "Job", "CronJob")
