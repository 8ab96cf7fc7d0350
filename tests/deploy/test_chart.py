"""The charts, checked with real tools: Helm lints and renders them (helm-python-sdk),
kubernetes-validate checks every built-in object against a current Kubernetes, the upstream CRDs
check every Karpenter, KEDA and Argo CD object (schema and CEL rules), and checkov scans it all."""

from __future__ import annotations

import copy
import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from support.kubernetes import (
    ARGOCD,
    CHART,
    CLUSTER_CHART,
    CRDS,
    KUBERNETES_VERSION,
    REPO_ROOT,
    WORKLOAD_KINDS,
    CustomResourceSchemas,
    Manifest,
    containers,
    load_manifests,
    pod_spec,
    render,
)

from gateway.cluster import (
    CHART_ENVOY_CONFIG,
    CHART_TRACED_ENVOY_CONFIG,
    CONSOLE_HTTP_PORT,
    IMAGE_DESCRIPTOR_SET,
    build_cluster_envoy_config,
    render_cluster_envoy_configs,
    service_host,
)
from gateway.envoy import CONSOLE_BACKEND, DESCRIPTOR_SET, OTLP_CLUSTER, validate_envoy_config
from services.common.settings import JwksSettings
from services.supervisor import edge_limits

CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
# The services Envoy routes to; the webhook deliverer is a Deployment of the same kind, reached
# by nobody.
SERVICES = ("user", "billing", "generation", "gallery")
DELIVERER = "webhooks"
CONSOLE = "pingvas-console"


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_helm_lint_passes_strict(env: str, environment_values: dict[str, dict[str, Any]]) -> None:
    report = helm.lint(
        CHART,
        environment_values[env],
        strict=True,
        namespace=f"pingvas-{env}",
        kube_version=f"v{KUBERNETES_VERSION}",
    )
    assert report["errors"] == []
    # Info only ("icon is recommended"): no warning, no error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_cluster_chart_lints() -> None:
    report = helm.lint(CLUSTER_CHART, {}, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_a_misspelled_value_fails_lint(environment_values: dict[str, dict[str, Any]]) -> None:
    values = copy.deepcopy(environment_values["prod"])
    values["worker"]["keda"]["cooldownPeriodSeconds"] = values["worker"]["keda"].pop("cooldownPeriod")
    report = helm.lint(CHART, values, strict=True, namespace="pingvas-prod")
    assert any("cooldownPeriodSeconds" in error for error in report["errors"])


def test_values_of_one_environment_refuse_the_other_namespace(
    environment_values: dict[str, dict[str, Any]],
) -> None:
    with pytest.raises(helm.HelmRenderError, match="these values are for namespace pingvas-prod"):
        helm.Chart.load(str(CHART)).render(
            environment_values["prod"], name="pingvas", namespace="pingvas-dev"
        )


def test_kubernetes_validate_knows_a_current_kubernetes() -> None:
    major, minor, *_ = map(int, KUBERNETES_VERSION.split("."))
    assert (major, minor) >= (1, 37)


def test_every_builtin_object_is_valid_kubernetes(
    rendered: dict[str, list[Manifest]], cluster_rendered: list[Manifest]
) -> None:
    schemas = CustomResourceSchemas(CRDS)
    checked = 0
    for manifest in [*rendered["dev"], *rendered["prod"], *cluster_rendered]:
        if schemas.knows(manifest):
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked > 80


def test_every_custom_resource_matches_its_upstream_crd(
    rendered: dict[str, list[Manifest]], cluster_rendered: list[Manifest]
) -> None:
    schemas = CustomResourceSchemas(CRDS)
    custom = [
        m
        for m in [*rendered["dev"], *rendered["prod"], *cluster_rendered, *load_manifests(ARGOCD)]
        if schemas.knows(m)
    ]
    assert Counter(m["kind"] for m in custom) == {
        "ScaledObject": 2,
        "NodePool": 3,
        "EC2NodeClass": 2,
        "Application": 3,
    }
    problems = {f"{m['kind']}/{m['metadata']['name']}": schemas.violations(m) for m in custom}
    assert {name: found for name, found in problems.items() if found} == {}


def test_the_crd_checks_catch_what_the_api_server_refuses(cluster_rendered: list[Manifest]) -> None:
    """The schema and the CEL rules both bite: an unknown field, and an AMI alias of an
    unknown family (a CEL rule of the EC2NodeClass CRD)."""
    schemas = CustomResourceSchemas(CRDS)
    node_class = copy.deepcopy(by_kind(cluster_rendered, "EC2NodeClass")["pingvas-gpu"])
    node_class["spec"]["amiSelectorTerms"] = [{"alias": "ubuntu@v1"}]
    assert any("CEL rule" in p or "fails" in p or "alias" in p for p in schemas.violations(node_class))
    pool = copy.deepcopy(by_kind(cluster_rendered, "NodePool")["pingvas-gpu"])
    pool["spec"]["disruption"]["consolidateAfterr"] = "5m"
    assert any("consolidateAfterr" in p for p in schemas.violations(pool))
    pool = copy.deepcopy(by_kind(cluster_rendered, "NodePool")["pingvas-gpu"])
    pool["spec"]["template"]["spec"]["requirements"].append(
        {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["x"]}
    )
    assert schemas.violations(pool)


def test_rendered_kinds(rendered: dict[str, list[Manifest]], cluster_rendered: list[Manifest]) -> None:
    expected = {
        "ConfigMap": 1,
        "CronJob": 2,
        "Deployment": 8,
        "HorizontalPodAutoscaler": 7,
        "Job": 1,
        "NetworkPolicy": 13,
        "PersistentVolumeClaim": 1,
        "PodDisruptionBudget": 8,
        "ScaledObject": 1,
        "Service": 6,
        "ServiceAccount": 10,
    }
    for env in ("dev", "prod"):
        assert dict(Counter(m["kind"] for m in rendered[env])) == expected, env
        assert {m["metadata"].get("namespace") for m in rendered[env]} == {f"pingvas-{env}"}
    assert dict(Counter(m["kind"] for m in cluster_rendered)) == {"EC2NodeClass": 2, "NodePool": 3}


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_every_deployment_is_hardened_probed_sized_spread_and_budgeted(
    env: str, rendered: dict[str, list[Manifest]]
) -> None:
    manifests = rendered[env]
    budgets = by_kind(manifests, "PodDisruptionBudget")
    for name, deployment in by_kind(manifests, "Deployment").items():
        pod = pod_spec(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        for container in containers(deployment):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            if name == CONSOLE:
                # The console is HTTP: its page, which is a 503 until the assets are there.
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    assert container[probe]["httpGet"] == {"path": "/", "port": "http"}, probe
                # It writes nothing, so it has no writable volume at all.
                assert "volumeMounts" not in container
            elif name != "pingvas-envoy":
                # Native gRPC probes on the standard health service.
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    assert "grpc" in container[probe], (name, probe)
        budget = budgets[name]
        assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert budgets["pingvas-worker"]["spec"] == {
        "maxUnavailable": 1,
        "selector": budgets["pingvas-worker"]["spec"]["selector"],
    }
    hpas = by_kind(manifests, "HorizontalPodAutoscaler")
    assert set(hpas) == {f"pingvas-{name}" for name in (*SERVICES, DELIVERER, "envoy", "console")}


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_the_gpu_worker(env: str, rendered: dict[str, list[Manifest]]) -> None:
    worker = by_kind(rendered[env], "Deployment")["pingvas-worker"]
    pod = pod_spec(worker)
    (container,) = containers(worker)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "replicas" not in worker["spec"]  # KEDA owns it
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    claim = by_kind(rendered[env], "PersistentVolumeClaim")[models["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "efs-sc"
    capacity = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    allowed = capacity["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
    assert allowed == (["on-demand"] if env == "dev" else ["spot", "on-demand"])

    (scaled,) = by_kind(rendered[env], "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "pingvas-worker"
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["cooldownPeriod"] > 0
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    assert trigger["metadata"]["valueLocation"] == "depth"
    assert "activationTargetValue" in trigger["metadata"]
    assert trigger["metadata"]["url"].startswith(
        f"http://pingvas-generation.pingvas-{env}.svc.cluster.local:9090/queue-depth"
    )


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_the_jobs(env: str, rendered: dict[str, list[Manifest]]) -> None:
    migrate = by_kind(rendered[env], "Job")["pingvas-migrate"]
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = containers(migrate)
    assert container["args"] == ["services.cli.main", "db", "upgrade"]
    assert "OWNER_DATABASE_URL" in {variable["name"] for variable in container["env"]}
    cron = by_kind(rendered[env], "CronJob")
    assert cron["pingvas-billing-expire"]["spec"]["schedule"] == "0 0 * * *"
    for job in ("expire", "reconcile"):
        assert cron[f"pingvas-billing-{job}"]["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = containers(cron[f"pingvas-billing-{job}"])
        assert container["args"] == ["services.cli.main", "billing", job]


def _ingress_peers(policy: Manifest) -> list[dict[str, Any]]:
    return [peer for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [])]


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_network_policies(env: str, rendered: dict[str, list[Manifest]]) -> None:
    policies = by_kind(rendered[env], "NetworkPolicy")
    deny = policies["pingvas-default-deny"]
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny["spec"]
    envoy_peer = {
        "podSelector": {"matchLabels": policies["pingvas-envoy"]["spec"]["podSelector"]["matchLabels"]}
    }
    for service in SERVICES:
        peers = _ingress_peers(policies[f"pingvas-{service}"])
        expected = [envoy_peer]
        if service == "generation":
            # The KEDA operator reads the depth endpoint, on its port alone.
            keda_rule = policies[f"pingvas-{service}"]["spec"]["ingress"][1]
            assert keda_rule["ports"] == [{"protocol": "TCP", "port": 9090}]
            expected.append(keda_rule["from"][0])
        assert peers == expected, service
        egress_ports = {
            p["port"] for rule in policies[f"pingvas-{service}"]["spec"]["egress"] for p in rule["ports"]
        }
        assert egress_ports == {5432, 6379, 443}
    deliverer = policies[f"pingvas-{DELIVERER}"]["spec"]
    assert deliverer["policyTypes"] == ["Egress"] and "ingress" not in deliverer
    assert {p["port"] for rule in deliverer["egress"] for p in rule["ports"]} == {5432, 443}
    envoy_peers = [
        peer for rule in policies["pingvas-envoy"]["spec"]["egress"] for peer in rule.get("to", [])
    ]
    assert len(envoy_peers) == len(SERVICES) + 1  # and the console
    assert {p["port"] for r in policies["pingvas-worker"]["spec"]["egress"] for p in r["ports"]} == {
        5432,
        6379,
        443,
    }
    assert {p["port"] for r in policies["pingvas-migrate"]["spec"]["egress"] for p in r["ports"]} == {5432}
    envoy_egress = policies["pingvas-envoy"]["spec"]["egress"]
    assert [p["port"] for r in envoy_egress for p in r["ports"]] == [50051, CONSOLE_HTTP_PORT]
    # The console: Envoy in, on its port alone; nothing out but DNS (pingvas-dns).
    console = policies[CONSOLE]["spec"]
    assert console["policyTypes"] == ["Ingress", "Egress"]
    (console_ingress,) = console["ingress"]
    assert console_ingress == {
        "from": [envoy_peer],
        "ports": [{"protocol": "TCP", "port": CONSOLE_HTTP_PORT}],
    }
    assert console["egress"] == []
    envoy_to_console = envoy_egress[1]
    assert envoy_to_console["to"] == [{"podSelector": console["podSelector"]}]
    dns = policies["pingvas-dns"]["spec"]["egress"][0]["ports"]
    assert {(p["protocol"], p["port"]) for p in dns} == {("UDP", 53), ("TCP", 53)}


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_the_gateway_sends_every_page_to_the_console(env: str, rendered: dict[str, list[Manifest]]) -> None:
    """The rendered config's last route is the catch-all to the console's cluster, which reaches
    the console's Service on the port its pods serve."""
    config = build_cluster_envoy_config(limits=edge_limits(), jwks_cache_seconds=JwksSettings().cache_seconds)
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    (virtual_host,) = manager["typed_config"]["route_config"]["virtual_hosts"]
    assert virtual_host["routes"][-1]["match"] == {"prefix": "/"}
    assert virtual_host["routes"][-1]["route"]["cluster"] == CONSOLE_BACKEND
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    (endpoint,) = clusters[CONSOLE_BACKEND]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == (service_host("console"), CONSOLE_HTTP_PORT)
    service = by_kind(rendered[env], "Service")[CONSOLE]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": CONSOLE_HTTP_PORT, "targetPort": "http", "appProtocol": "http"}
    ]
    (container,) = containers(by_kind(rendered[env], "Deployment")[CONSOLE])
    assert container["args"] == ["services.console"]
    assert container["ports"] == [{"name": "http", "containerPort": CONSOLE_HTTP_PORT}]
    assert "annotations" not in by_kind(rendered[env], "ServiceAccount")[CONSOLE]["metadata"]


def _check_envoy_config(text: str, directory: Path) -> None:
    """Envoy accepts `text`, checked with this checkout's descriptor set in the image's place."""
    local = directory / "envoy.json"
    local.write_text(text.replace(str(IMAGE_DESCRIPTOR_SET), str(DESCRIPTOR_SET.resolve())))
    validate_envoy_config(local)


def _gateway_tracing(envoy_config: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """The HTTP connection manager's tracing and the OTLP cluster's address, or (None, None)."""
    (listener,) = envoy_config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    clusters = {c["name"]: c for c in envoy_config["static_resources"]["clusters"]}
    if OTLP_CLUSTER not in clusters:
        return manager.get("tracing"), None
    (endpoint,) = clusters[OTLP_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    return manager.get("tracing"), endpoint["endpoint"]["address"]["socket_address"]


def test_telemetry_reaches_only_the_collector_and_only_when_configured(
    environment_values: dict[str, dict[str, Any]], rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    values = copy.deepcopy(environment_values["prod"])
    values["env"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://otel-collector.observability:4318"
    values["networkPolicy"]["otlpCollectorCidrs"] = ["10.20.0.0/16"]
    values["networkPolicy"]["otlpCollectorPort"] = 4318
    manifests = render(CHART, values, namespace="pingvas-prod")

    # Envoy's tracer exports to the endpoint's host and port, and Envoy accepts the config.
    envoy_text = by_kind(manifests, "ConfigMap")["pingvas-envoy"]["data"]["envoy.json"]
    tracing, collector = _gateway_tracing(json.loads(envoy_text))
    assert tracing is not None and tracing["provider"]["name"] == "envoy.tracers.opentelemetry"
    assert collector == {"address": "otel-collector.observability", "port_value": 4318}
    _check_envoy_config(envoy_text, tmp_path)
    # Without a collector, no tracer (and no cluster for one).
    untraced = json.loads(by_kind(rendered["prod"], "ConfigMap")["pingvas-envoy"]["data"]["envoy.json"])
    assert _gateway_tracing(untraced) == (None, None)
    # A new config rolls the gateway.
    traced_checksum, plain_checksum = (
        by_kind(m, "Deployment")["pingvas-envoy"]["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        for m in (manifests, rendered["prod"])
    )
    assert traced_checksum != plain_checksum

    with_collector = by_kind(manifests, "NetworkPolicy")
    for component in ("envoy", *SERVICES, DELIVERER, "worker"):
        rules = with_collector[f"pingvas-{component}"]["spec"]["egress"]
        assert {
            "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            "ports": [{"protocol": "TCP", "port": 4318}],
        } in rules
    migrate = with_collector["pingvas-migrate"]["spec"]["egress"]
    assert {p["port"] for rule in migrate for p in rule["ports"]} == {5432}
    report = helm.lint(CHART, values, strict=True, namespace="pingvas-prod")
    assert report["errors"] == []


def test_prod_reaches_envoy_through_a_tls_nlb(rendered: dict[str, list[Manifest]]) -> None:
    gateway = by_kind(rendered["prod"], "Service")["pingvas-gateway"]
    assert gateway["spec"]["type"] == "LoadBalancer"
    assert gateway["spec"]["loadBalancerClass"] == "service.k8s.aws/nlb"
    annotations = gateway["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"].startswith("arn:aws:acm:")
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-alpn-policy"] == "HTTP2Preferred"


def test_service_accounts_carry_irsa_roles(rendered: dict[str, list[Manifest]]) -> None:
    accounts = by_kind(rendered["prod"], "ServiceAccount")
    role = "eks.amazonaws.com/role-arn"
    for name in ("generation", "gallery", "worker"):
        assert accounts[f"pingvas-{name}"]["metadata"]["annotations"][role].endswith("pingvas-prod-s3")
    assert accounts["pingvas-billing"]["metadata"]["annotations"][role].endswith("pingvas-prod-ses")
    assert "annotations" not in accounts["pingvas-envoy"]["metadata"]


def test_no_secret_value_is_rendered(rendered: dict[str, list[Manifest]]) -> None:
    for env in ("dev", "prod"):
        assert "Secret" not in {m["kind"] for m in rendered[env]}
        for manifest in rendered[env]:
            for container in containers(manifest) if manifest["kind"] in WORKLOAD_KINDS else []:
                for variable in container.get("env", []):
                    if any(
                        word in variable["name"]
                        for word in ("SECRET", "DATABASE_URL", "REDIS_URL", "API_KEY")
                    ):
                        assert "secretKeyRef" in variable.get("valueFrom", {}), variable["name"]


def test_the_shipped_envoy_config_is_current_and_valid(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    """The chart ships what `pingvas gateway render` makes now, and Envoy accepts it."""
    configs = render_cluster_envoy_configs(
        limits=edge_limits(), jwks_cache_seconds=JwksSettings().cache_seconds
    )
    assert set(configs) == {CHART_ENVOY_CONFIG, CHART_TRACED_ENVOY_CONFIG}
    for path, fresh in configs.items():
        assert (REPO_ROOT / path).read_text() == fresh, f"{path} is stale: run `pingvas gateway render`"
    fresh = configs[CHART_ENVOY_CONFIG]
    config_map = by_kind(rendered["prod"], "ConfigMap")["pingvas-envoy"]
    assert json.loads(config_map["data"]["envoy.json"]) == json.loads(fresh)
    _check_envoy_config(fresh, tmp_path)


def _checkov(directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        [str(CHECKOV), "--skip-download", "--framework", "kubernetes", "-d", str(directory), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = json.loads(result.stdout)
    reports: list[dict[str, Any]] = report if isinstance(report, list) else [report]
    (kubernetes,) = [r for r in reports if r.get("check_type") == "kubernetes"]
    return kubernetes


def test_checkov_finds_nothing_and_every_skip_says_why(
    rendered: dict[str, list[Manifest]], cluster_rendered: list[Manifest], tmp_path: Path
) -> None:
    for env in ("dev", "prod"):
        (tmp_path / f"pingvas-{env}.yaml").write_text(yaml.safe_dump_all(rendered[env]))
    (tmp_path / "pingvas-cluster.yaml").write_text(yaml.safe_dump_all(cluster_rendered))
    report = _checkov(tmp_path)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert summary["passed"] > 500
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} <= {"CKV_K8S_43", "CKV_K8S_35", "CKV_K8S_15"}
    assert all(c["check_result"].get("suppress_comment", "").strip() for c in skipped)
    print(f"checkov: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped")
