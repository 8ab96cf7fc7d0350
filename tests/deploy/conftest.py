"""The charts rendered once per session: each environment of helm/pingvas with its values file,
and the cluster chart."""

from __future__ import annotations

import pytest
from support.kubernetes import CHART, CLUSTER_CHART, Manifest, load_values, render

ENVIRONMENTS = ("dev", "prod")


@pytest.fixture(scope="session")
def environment_values() -> dict[str, dict[str, object]]:
    return {env: load_values(CHART / f"values-{env}.yaml") for env in ENVIRONMENTS}


@pytest.fixture(scope="session")
def rendered(environment_values: dict[str, dict[str, object]]) -> dict[str, list[Manifest]]:
    """helm/pingvas per environment, as Argo CD and `helm install` render it."""
    return {env: render(CHART, environment_values[env], namespace=f"pingvas-{env}") for env in ENVIRONMENTS}


@pytest.fixture(scope="session")
def cluster_rendered() -> list[Manifest]:
    return render(CLUSTER_CHART, {}, namespace="kube-system")
