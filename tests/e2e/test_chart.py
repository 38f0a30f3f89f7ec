"""The Helm chart (charts/glimpse3d) and the kustomize tree (deploy/kustomize), checked offline.

helm lint --strict and helm template for every values profile, kubectl kustomize for each overlay,
every manifest validated against the Kubernetes schemas (deploy/tools/chart.py), and assertions on
what the manifests mean: probes, resources and hardening on every pod, autoscalers for autoscaled
workloads, NetworkPolicies that admit only the intended peers, GPU placement from values, settings
the code accepts, values the schema rejects. helm and kubectl come from `make k8s-tools`; without
them the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "deploy" / "tools"))

import chart  # noqa: E402
import k8s_tools  # noqa: E402

IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
SERVICES = ("depth", "reconstruction", "multiview", "diffusion", "backprojection")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


@pytest.fixture(scope="session", autouse=True)
def tools() -> None:
    missing = [name for name in ("helm", "kubectl") if k8s_tools.find_tool(name) is None]
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing.append("kubernetes-validate (pip)")
    if missing:
        message = f"{', '.join(missing)} not installed: run `make k8s-tools` / `make setup`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict[str, Any]]]:
    """Every profile rendered once: name -> manifests."""
    return {name: chart.load_docs(chart.render_profile(name)) for name in chart.PROFILES}


@pytest.fixture(scope="session")
def overlays() -> dict[str, list[dict[str, Any]]]:
    return {name: chart.load_docs(chart.kustomize(name)) for name in chart.OVERLAYS}


@pytest.fixture(scope="session")
def values() -> dict[str, Any]:
    return yaml.safe_load((chart.CHART / "values.yaml").read_text())


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def template_fails(*sets: str) -> str:
    """helm template with --set values that must be refused; returns helm's message."""
    with pytest.raises(chart.ChartError) as err:
        chart.helm_template(set_values=sets)
    return str(err.value)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# ---- lint, render, validate ----------------------------------------------------------------------

@pytest.mark.parametrize("profile", list(chart.PROFILES))
def test_helm_lint_strict(profile):
    chart.helm_lint(chart.PROFILES[profile])


@pytest.mark.parametrize("profile", list(chart.PROFILES))
def test_profile_renders_valid_manifests(renders, profile):
    docs = renders[profile]
    assert of_kind(docs, "Deployment"), "a render without Deployments"
    assert chart.validate_docs(docs) == []


@pytest.mark.parametrize("overlay", chart.OVERLAYS)
def test_overlay_builds_valid_manifests(overlays, overlay):
    assert chart.validate_docs(overlays[overlay]) == []


def test_validator_rejects_bad_manifests(renders):
    """The validation above can fail: an unknown field, a wrong type and an unknown kind are errors,
    for built-in kinds and for the CRDs alike."""
    docs = renders["gpu-triton"]
    deployment = json.loads(json.dumps(of_kind(docs, "Deployment")["glimpse3d-depth"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    deployment["spec"]["replicas"] = "two"
    scaled = json.loads(json.dumps(of_kind(docs, "ScaledObject")["glimpse3d-depth"]))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 2
    scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"] = 5, 2
    monitor = json.loads(json.dumps(of_kind(docs, "ServiceMonitor")["glimpse3d-depth"]))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    errors = "\n".join(chart.validate_docs([deployment, scaled, monitor, {"apiVersion": "x.io/v1", "kind": "Y"}]))
    assert "'prot' was unexpected" in errors
    assert "spec.replicas: 'two' is not of type 'integer'" in errors
    assert "threshold: 2 is not of type 'string'" in errors
    assert "minReplicaCount must be less than or equal to maxReplicaCount" in errors
    assert "'intervall' was unexpected" in errors
    assert "no schema for Y x.io/v1" in errors


def test_kustomize_base_is_a_fresh_render():
    drift = chart.check_base()
    assert drift is None, f"deploy/kustomize/base/glimpse3d.yaml is stale; run `make chart-base`:\n{drift}"


# ---- pods ----------------------------------------------------------------------------------------

def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
            for d in docs if d["kind"] in WORKLOAD_KINDS}


@pytest.mark.parametrize("profile", list(chart.PROFILES))
def test_every_pod_is_hardened_with_probes_and_resources(renders, profile):
    specs = pod_specs(renders[profile])
    assert specs
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        mounts_tmp = False
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            if not name.startswith("Job/"):
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert probe in container, f"{name} has no {probe}"
            mounts_tmp |= any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", []))
        assert mounts_tmp, f"{name}: no writable /tmp"


@pytest.mark.parametrize("profile", list(chart.PROFILES))
def test_app_pods_use_grpc_probes_on_the_grpc_port(renders, profile):
    docs = renders[profile]
    services = of_kind(docs, "Service")
    for name in ["glimpse3d-gateway", *(f"glimpse3d-{s}" for s in SERVICES)]:
        container = of_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": grpc_port}, (name, probe)
        assert {p["name"] for p in services[name]["spec"]["ports"]} >= {"grpc", "metrics"}
        assert of_kind(docs, "ServiceAccount")[name]["automountServiceAccountToken"] is False


def test_optional_parts_render_valid_manifests():
    """What no profile turns on: Ingress, the model volume and its fetch Job, a single gateway on SQLite
    with a persistent volume, a TriggerAuthentication for KEDA."""
    docs = chart.load_docs(chart.helm_template(set_values=[
        "ingress.enabled=true", "ingress.className=nginx", "models.persistence.enabled=true",
        "models.fetchJob.enabled=true", "models.fetchJob.hfTokenSecret=hf",
        "models.fetchJob.args={--only,clip/clip-vit-base-patch32}",
        "postgresql.enabled=false", "gateway.sqlite.persistence.enabled=true",
        "services.depth.autoscaling.enabled=true", "autoscaling.keda.authenticationRef=prometheus-auth",
    ]))
    assert chart.validate_docs(docs) == []
    gateway = of_kind(docs, "Deployment")["glimpse3d-gateway"]
    assert gateway["spec"]["strategy"] == {"type": "Recreate"} and gateway["spec"]["replicas"] == 1
    env = of_kind(docs, "ConfigMap")["glimpse3d-gateway"]["data"]
    assert (env["GLIMPSE3D_DB_URL"], env["GLIMPSE3D_DB_PATH"]) == ("", "/data/jobs.sqlite3")
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] in of_kind(docs, "PersistentVolumeClaim")
    job = next(iter(of_kind(docs, "Job").values()))
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--model-dir", "/models", "--only", "clip/clip-vit-base-patch32"]
    fetch_policy = of_kind(docs, "NetworkPolicy")["glimpse3d-models-fetch"]["spec"]
    assert fetch_policy["ingress"] == [] and {"ports": [{"port": 443, "protocol": "TCP"}]} in fetch_policy["egress"]
    backend = of_kind(docs, "Ingress")["glimpse3d-gateway"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend == {"service": {"name": "glimpse3d-gateway", "port": {"name": "http"}}}
    trigger = of_kind(docs, "ScaledObject")["glimpse3d-depth"]["spec"]["triggers"][0]
    assert trigger["authenticationRef"] == {"name": "prometheus-auth"}


def test_config_change_rolls_only_that_component(renders):
    before = of_kind(renders["default"], "Deployment")
    after = of_kind(chart.load_docs(chart.helm_template(set_values=["services.depth.maxConcurrency=3"])), "Deployment")

    def checksum(deployments, name):
        return deployments[name]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(before, "glimpse3d-depth") != checksum(after, "glimpse3d-depth")
    assert checksum(before, "glimpse3d-gateway") == checksum(after, "glimpse3d-gateway")


# ---- settings the code accepts -------------------------------------------------------------------

# The S3 keys reach the pods from a Secret, not the ConfigMap; stand-ins for parsing the rest.
SECRET_KEYS = {"GLIMPSE3D_S3_ACCESS_KEY": "from-the-secret", "GLIMPSE3D_S3_SECRET_KEY": "from-the-secret"}


def known_variables() -> set[str]:
    from glimpse3d.core.config import ServerConfig
    from glimpse3d.core.decodegate import DecodeConfig
    from glimpse3d.core.service import ServiceSettings
    from glimpse3d.gateway.config import GatewayConfig

    names = {f"GLIMPSE3D_{name.upper()}" for cls in (ServerConfig, ServiceSettings, GatewayConfig, DecodeConfig)
             for name in cls.model_fields}
    artifacts = REPO_ROOT / "shared" / "src" / "glimpse3d" / "core" / "artifacts"
    for path in artifacts.glob("*.py"):
        names |= set(re.findall(r"GLIMPSE3D_[A-Z0-9_]+", path.read_text()))
    return names


@pytest.mark.parametrize("profile", list(chart.PROFILES))
def test_settings_are_ones_the_code_reads_and_accepts(renders, profile):
    from glimpse3d.core.artifacts import store_from_env
    from glimpse3d.core.config import ServerConfig, load_config
    from glimpse3d.core.decodegate import DecodeConfig
    from glimpse3d.core.service import ServiceSettings
    from glimpse3d.gateway.config import GatewayConfig

    known = known_variables()
    maps = of_kind(renders[profile], "ConfigMap")
    for name in ["glimpse3d-gateway", *(f"glimpse3d-{s}" for s in SERVICES)]:
        env = maps[name]["data"]
        unknown = sorted(k for k in env if k.startswith("GLIMPSE3D_") and k not in known)
        assert not unknown, f"{name} sets variables no code reads: {unknown}"
        server = load_config(ServerConfig, env)
        load_config(DecodeConfig, env)  # the image decode budget (every process decodes images)
        assert (server.host, server.port, server.metrics_host) == ("0.0.0.0", 50051, "0.0.0.0")
        if name.endswith("gateway"):
            gateway = load_config(GatewayConfig, env)
            assert gateway.depth_addr == "glimpse3d-depth:50051"
        else:
            load_config(ServiceSettings, env)  # backend options parse, device is valid
        store_from_env(env | SECRET_KEYS)  # the artifact store settings parse (nothing is contacted)


def test_artifacts_default_to_minio_with_expiring_temporary_artifacts(renders):
    from glimpse3d.core.artifacts import S3ArtifactStore, store_from_env

    maps = of_kind(renders["default"], "ConfigMap")
    for name in ["glimpse3d-gateway", *(f"glimpse3d-{s}" for s in SERVICES)]:
        env = maps[name]["data"]
        assert env["GLIMPSE3D_ARTIFACTS_URL"] == "s3://glimpse3d", name
        assert env["GLIMPSE3D_S3_ENDPOINT"] == "glimpse3d-minio:9000", name
        assert env["GLIMPSE3D_S3_TEMP_EXPIRY_DAYS"] == "7", name
        store = store_from_env(env | SECRET_KEYS)
        assert isinstance(store, S3ArtifactStore) and store.temp_expiry_days == 7
    assert "glimpse3d-minio" in of_kind(renders["default"], "Deployment") | of_kind(renders["default"], "StatefulSet")
    never = of_kind(chart.load_docs(chart.helm_template(set_values=["artifacts.tempExpiryDays=0"])), "ConfigMap")
    assert never["glimpse3d-depth"]["data"]["GLIMPSE3D_S3_TEMP_EXPIRY_DAYS"] == "0"
    unset = of_kind(chart.load_docs(chart.helm_template(set_values=["artifacts.tempExpiryDays=null"])), "ConfigMap")
    assert "GLIMPSE3D_S3_TEMP_EXPIRY_DAYS" not in unset["glimpse3d-depth"]["data"]


def test_triton_backend_gets_the_group_address(renders):
    data = of_kind(renders["gpu-triton"], "ConfigMap")["glimpse3d-reconstruction"]["data"]
    assert data["GLIMPSE3D_BACKEND"] == "triton"
    assert json.loads(data["GLIMPSE3D_BACKEND_OPTIONS"]) == {
        "model": "reconstruction_triposr", "url": "glimpse3d-triton-reconstruction:8001"}
    triton = of_kind(renders["gpu-triton"], "Deployment")["glimpse3d-triton-reconstruction"]
    args = triton["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--load-model=reconstruction_triposr", "--load-model=reconstruction_lgm"} <= set(args)


def test_triton_groups_serve_exactly_the_model_repository(values):
    repository = {p.parent.name for p in (REPO_ROOT / "deploy" / "triton").glob("*/config.pbtxt")}
    grouped = {model: group for group, spec in values["triton"]["groups"].items() for model in spec["models"]}
    assert set(grouped) == repository
    for model, group in grouped.items():
        assert model.split("_", 1)[0] == group, f"{model} is served by Triton group {group}"


def registry_names(service: str) -> set[str]:
    """Backend names of a service: its ``glimpse3d.backends.<service>`` entry points (nothing imported)."""
    from glimpse3d.core.backends import BackendRegistry

    return set(BackendRegistry(service).names())


@pytest.mark.parametrize("service", SERVICES)
def test_schema_backends_match_the_service_registries(service):
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    allowed = set(schema["definitions"][f"service_{service}"]["properties"]["backend"]["enum"])
    names = registry_names(service)
    assert names <= allowed, f"values.schema.json lacks backends {sorted(names - allowed)} of {service}"
    assert allowed - names <= {"", "triton"}, f"values.schema.json allows unknown backends {sorted(allowed - names)}"


# ---- autoscaling ---------------------------------------------------------------------------------

def autoscaled(values_docs: list[dict[str, Any]]) -> set[str]:
    return {d["metadata"]["name"] for d in values_docs if d["kind"] == "Deployment" and "replicas" not in d["spec"]}


def test_keda_scales_every_workload_of_gpu_triton(renders):
    docs = renders["gpu-triton"]
    deployments = of_kind(docs, "Deployment")
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == set(deployments) == autoscaled(docs)
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    for name, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "prometheus"
            assert f'service="{name}"' in trigger["metadata"]["query"]
            assert 'namespace="glimpse3d"' in trigger["metadata"]["query"]
    queue_time = scaled["glimpse3d-triton-diffusion"]["spec"]["triggers"][0]
    assert "nv_inference_queue_duration_us" in queue_time["metadata"]["query"]
    assert queue_time["metricType"] == "Value"
    assert "glimpse3d_gateway_queue_depth" in scaled["glimpse3d-gateway"]["spec"]["triggers"][0]["metadata"]["query"]


def test_hpa_metrics_are_served_by_the_rendered_adapter_rules(renders):
    docs = renders["gpu-hpa"]
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == set(of_kind(docs, "Deployment")) == autoscaled(docs)
    assert not of_kind(docs, "ScaledObject")
    rules = yaml.safe_load(of_kind(docs, "ConfigMap")["glimpse3d-prometheus-adapter-rules"]["data"]["config.yaml"])
    served = {rule["name"]["as"]: rule for rule in rules["externalRules"]}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "External"
            rule = served[metric["external"]["metric"]["name"]]
            assert f'service="{name}"' in rule["metricsQuery"]
    assert "glimpse3d_service_queue_depth" in served["glimpse3d_depth_queue_depth"]["metricsQuery"]


def test_no_autoscaler_by_default(renders):
    docs = renders["default"]
    assert not of_kind(docs, "ScaledObject") and not of_kind(docs, "HorizontalPodAutoscaler")
    assert not autoscaled(docs)


# ---- network policies ----------------------------------------------------------------------------

def pod_labels(docs):
    return {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] in WORKLOAD_KINDS}


def component(name: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"app.kubernetes.io/component": name,
                                            "app.kubernetes.io/instance": "glimpse3d",
                                            "app.kubernetes.io/name": "glimpse3d"}}}


@pytest.mark.parametrize("profile", list(chart.PROFILES))
def test_network_policies(renders, values, profile):
    docs = renders[profile]
    policies = of_kind(docs, "NetworkPolicy")
    # A default-deny policy for the whole namespace: every pod, both directions, no rule.
    deny = policies.pop("glimpse3d-default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert all(p["spec"]["podSelector"] for p in policies.values()), "a second namespace-wide policy"
    for name, labels in pod_labels(docs).items():
        assert any(selects(p["spec"]["podSelector"], labels) for p in policies.values()), f"{name} has no NetworkPolicy"
    configs = of_kind(docs, "ConfigMap")
    dns = {"to": values["networkPolicy"]["dnsTo"],
           "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    for name, policy in policies.items():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"], name
        assert dns in spec["egress"], f"{name}: no DNS egress"
        for rule in spec["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            if "metrics" in ports:
                assert ports == {"metrics"} and rule["from"] == values["networkPolicy"]["prometheusFrom"], name
    metrics_only = [{"port": "metrics", "protocol": "TCP"}]
    # The gateway's API admits only the ingress controller's namespace (networkPolicy.gatewayFrom).
    ingress_controller = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert values["networkPolicy"]["gatewayFrom"] == ingress_controller
    gateway_api = [r for r in policies["glimpse3d-gateway"]["spec"]["ingress"] if r["ports"] != metrics_only]
    assert gateway_api == [{"from": ingress_controller,
                            "ports": [{"port": "grpc", "protocol": "TCP"}, {"port": "http", "protocol": "TCP"}]}]
    for service in SERVICES:
        rules = [r for r in policies[f"glimpse3d-{service}"]["spec"]["ingress"] if r["ports"] != metrics_only]
        assert rules == [{"from": [component("gateway")], "ports": [{"port": "grpc", "protocol": "TCP"}]}], service
    for name, policy in policies.items():
        if not name.startswith("glimpse3d-triton-"):
            continue
        group = name.removeprefix("glimpse3d-triton-")
        clients = [component(s) for s in SERVICES if configs[f"glimpse3d-{s}"]["data"]["GLIMPSE3D_BACKEND"] == "triton"
                   and f"glimpse3d-triton-{group}:" in configs[f"glimpse3d-{s}"]["data"]["GLIMPSE3D_BACKEND_OPTIONS"]]
        rules = [r for r in policy["spec"]["ingress"] if r["ports"] != metrics_only]
        assert clients and rules == [{"from": clients, "ports": [{"port": "grpc", "protocol": "TCP"},
                                                                  {"port": "http", "protocol": "TCP"}]}], name
    if "glimpse3d-postgresql" in policies:
        assert policies["glimpse3d-postgresql"]["spec"]["ingress"][0]["from"] == [component("gateway")]


def test_network_policy_options(tmp_path):
    """defaultDeny off drops the namespace-wide policy; gatewayFrom [] opens the API to anyone; a JWKS
    URL gets the gateway an egress rule on the URL's port, to networkPolicy.jwksTo."""
    (tmp_path / "open.yaml").write_text("networkPolicy: {gatewayFrom: []}\n")
    docs = chart.load_docs(chart.helm_template([tmp_path / "open.yaml"], [
        "networkPolicy.defaultDeny=false",
        "gateway.auth.jwks.url=https://login.example.com:8443/certs", "gateway.auth.issuer=https://login.example.com",
        "gateway.auth.audience=glimpse3d", "networkPolicy.jwksTo[0].ipBlock.cidr=203.0.113.0/24"]))
    policies = of_kind(docs, "NetworkPolicy")
    assert "glimpse3d-default-deny" not in policies
    gateway = policies["glimpse3d-gateway"]["spec"]
    assert {"ports": [{"port": "grpc", "protocol": "TCP"}, {"port": "http", "protocol": "TCP"}]} in gateway["ingress"]
    jwks_rule = {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 8443, "protocol": "TCP"}]}
    assert jwks_rule in gateway["egress"]
    default = of_kind(chart.load_docs(chart.helm_template()), "NetworkPolicy")["glimpse3d-gateway"]["spec"]
    assert not any(p["port"] in (443, 8443) for rule in default["egress"] for p in rule["ports"])


# ---- gateway authentication ----------------------------------------------------------------------

def gateway_pod(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = of_kind(docs, "Deployment")["glimpse3d-gateway"]["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def mounted_file(spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume a file path of the container lies in, and the key of that volume it is."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"] + "/"):
            assert mount.get("readOnly") is True and "subPath" not in mount, mount
            volume = volumes[mount["name"]]
            source = volume.get("secret") or volume["configMap"]
            item = next(i for i in source["items"] if i["path"] == path[len(mount["mountPath"]) + 1:])
            return volume, item["key"]
    raise AssertionError(f"{path} is on no volume of the gateway")


@pytest.mark.parametrize("profile", list(chart.PROFILES))
def test_gateway_auth_is_wired(renders, profile):
    """The API-keys file is a read-only Secret volume named by GLIMPSE3D_AUTH_API_KEYS_FILE, the ticket
    key comes from a Secret shared by every replica, and nothing turns the checks off."""
    docs = renders[profile]
    env = of_kind(docs, "ConfigMap")["glimpse3d-gateway"]["data"]
    spec, container = gateway_pod(docs)
    volume, key = mounted_file(spec, container, env["GLIMPSE3D_AUTH_API_KEYS_FILE"])
    assert volume["secret"]["secretName"] == "glimpse3d-gateway-api-keys" and key == "api-keys.json"
    ticket = next(e for e in container["env"] if e["name"] == "GLIMPSE3D_AUTH_TICKET_SECRET")
    assert ticket["valueFrom"]["secretKeyRef"] == {"name": "glimpse3d-gateway-auth", "key": "ticket-secret"}
    assert "GLIMPSE3D_AUTH_TICKET_SECRET" not in env
    assert env["GLIMPSE3D_AUTH_INSECURE_ALLOW_UNAUTHENTICATED"] == "false"
    assert env["GLIMPSE3D_HTTP_HOST"] == env["GLIMPSE3D_HOST"] == "0.0.0.0"


def test_default_gateway_starts_with_authentication_on(renders, tmp_path):
    """The default render, read the way the gateway reads it: with the chart's own (empty) keys
    Secret mounted, it starts on 0.0.0.0 with API keys checked and refuses every key; without the keys
    file the same settings refuse to start."""
    import base64

    from glimpse3d.core.config import ConfigError, ServerConfig, load_config
    from glimpse3d.core.errors import Unauthenticated
    from glimpse3d.gateway.auth import authenticator_from_config, create_key, gateway_hosts
    from glimpse3d.gateway.config import GatewayConfig

    docs = renders["default"]
    env = of_kind(docs, "ConfigMap")["glimpse3d-gateway"]["data"]
    secrets = of_kind(docs, "Secret")
    keys_file = tmp_path / "api-keys.json"
    keys_file.write_bytes(base64.b64decode(secrets["glimpse3d-gateway-api-keys"]["data"]["api-keys.json"]))
    ticket = base64.b64decode(secrets["glimpse3d-gateway-auth"]["data"]["ticket-secret"]).decode()
    assert len(ticket) == 48 and ticket.isalnum()
    env = env | {"GLIMPSE3D_AUTH_API_KEYS_FILE": str(keys_file), "GLIMPSE3D_AUTH_TICKET_SECRET": ticket}
    server, config = load_config(ServerConfig, env), load_config(GatewayConfig, env)
    hosts = gateway_hosts(server, config)
    authenticator = authenticator_from_config(config, hosts)
    assert hosts == ["0.0.0.0", "0.0.0.0"] and authenticator is not None
    with pytest.raises(Unauthenticated):
        authenticator.authenticate({"x-api-key": "g3d_" + "x" * 43})
    key = create_key(keys_file, "acme", "ci")  # what an operator then loads into the Secret
    assert authenticator.authenticate({"x-api-key": key}).tenant == "acme"
    without = load_config(GatewayConfig, {k: v for k, v in env.items() if k != "GLIMPSE3D_AUTH_API_KEYS_FILE"})
    with pytest.raises(ConfigError, match=r"refusing to start without authentication on 0\.0\.0\.0"):
        authenticator_from_config(without, hosts)


def test_gateway_auth_options_render(tmp_path):
    """Existing Secrets are used and not created; a JWKS ConfigMap is mounted read-only where
    GLIMPSE3D_AUTH_JWKS points; API keys can be switched off when tokens are checked."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from glimpse3d.core.config import load_config
    from glimpse3d.gateway.auth import authenticator_from_config
    from glimpse3d.gateway.config import GatewayConfig

    docs = chart.load_docs(chart.helm_template(set_values=[
        "gateway.auth.apiKeys.enabled=false", "gateway.auth.ticketSecret.existingSecret=shared-ticket",
        "gateway.auth.ticketSecret.key=key", "gateway.auth.jwks.configMap=idp-jwks",
        "gateway.auth.issuer=https://login.example.com", "gateway.auth.audience=glimpse3d",
        "gateway.auth.tenantClaim=org"]))
    assert chart.validate_docs(docs) == []
    assert not {"glimpse3d-gateway-api-keys", "glimpse3d-gateway-auth"} & set(of_kind(docs, "Secret"))
    env = of_kind(docs, "ConfigMap")["glimpse3d-gateway"]["data"]
    spec, container = gateway_pod(docs)
    assert "GLIMPSE3D_AUTH_API_KEYS_FILE" not in env
    assert not any(v.get("secret") for v in spec["volumes"])
    volume, key = mounted_file(spec, container, env["GLIMPSE3D_AUTH_JWKS"])
    assert (volume["configMap"]["name"], key) == ("idp-jwks", "jwks.json")
    assert (env["GLIMPSE3D_AUTH_ISSUER"], env["GLIMPSE3D_AUTH_AUDIENCE"], env["GLIMPSE3D_AUTH_TENANT_CLAIM"]) == (
        "https://login.example.com", "glimpse3d", "org")
    ticket = next(e for e in container["env"] if e["name"] == "GLIMPSE3D_AUTH_TICKET_SECRET")
    assert ticket["valueFrom"]["secretKeyRef"] == {"name": "shared-ticket", "key": "key"}
    jwks = tmp_path / "jwks.json"
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwks.write_text(json.dumps({"keys": [ECAlgorithm.to_jwk(public, as_dict=True) | {"kid": "k1"}]}))
    config = load_config(GatewayConfig, env | {"GLIMPSE3D_AUTH_JWKS": str(jwks)})
    assert authenticator_from_config(config, ["0.0.0.0"]) is not None


def test_kustomize_base_takes_auth_from_existing_secrets():
    """The committed base renders no Secret (no credential is committed) and names the Secrets
    docs/deploy.md says to create."""
    docs = chart.load_docs(chart.BASE_RENDER.read_text())
    assert not of_kind(docs, "Secret")
    spec, container = gateway_pod(docs)
    env = of_kind(docs, "ConfigMap")["glimpse3d-gateway"]["data"]
    volume, _ = mounted_file(spec, container, env["GLIMPSE3D_AUTH_API_KEYS_FILE"])
    assert volume["secret"]["secretName"] == "glimpse3d-gateway-api-keys"
    assert "glimpse3d-default-deny" in of_kind(docs, "NetworkPolicy")


# ---- TLS and mTLS --------------------------------------------------------------------------------

APP_PODS = ["glimpse3d-gateway", *(f"glimpse3d-{s}" for s in SERVICES)]


def check_tls_pods(docs: list[dict[str, Any]], secret_of: dict[str, str]) -> None:
    """Every app pod mounts its TLS Secret read-only where GLIMPSE3D_TLS_* point, probes with the image's
    health check (the kubelet's gRPC probe cannot do TLS), and the services alone require client
    certificates of the internal CA; the settings parse as the code reads them."""
    from glimpse3d.core.config import ServerConfig, load_config

    maps, deployments = of_kind(docs, "ConfigMap"), of_kind(docs, "Deployment")
    for name in APP_PODS:
        env = maps[name]["data"]
        spec = deployments[name]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        files = {"GLIMPSE3D_TLS_CERT_FILE": "tls.crt", "GLIMPSE3D_TLS_KEY_FILE": "tls.key",
                 "GLIMPSE3D_TLS_CA_FILE": "ca.crt", "GLIMPSE3D_TLS_CLIENT_CERT_FILE": "tls.crt",
                 "GLIMPSE3D_TLS_CLIENT_KEY_FILE": "tls.key"}
        if name != "glimpse3d-gateway":
            files["GLIMPSE3D_TLS_CLIENT_CA_FILE"] = "ca.crt"
        else:
            assert "GLIMPSE3D_TLS_CLIENT_CA_FILE" not in env  # public callers authenticate with tokens or keys
        for variable, key in files.items():
            volume, item = mounted_file(spec, container, env[variable])
            assert (volume["secret"]["secretName"], item) == (secret_of[name], key), (name, variable)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in container[probe], (name, probe)
            command = container[probe]["exec"]["command"]
            assert command[:3] == ["python", "-m", "glimpse3d.core.healthcheck"], (name, probe)
            assert float(command[command.index("--timeout") + 1]) < container[probe]["timeoutSeconds"]
        server = load_config(ServerConfig, env)
        assert (server.tls_client_ca_file is not None) == (name != "glimpse3d-gateway")


def test_tls_with_cert_manager_issues_a_certificate_per_component():
    docs = chart.load_docs(chart.helm_template(set_values=[
        "tls.enabled=true", "tls.certManager.gatewayDnsNames={glimpse3d.example.com}"]))
    assert chart.validate_docs(docs) == []
    certificates, issuers = of_kind(docs, "Certificate"), of_kind(docs, "Issuer")
    # The internal CA: a self-signed Issuer signs the CA certificate, a CA Issuer issues from its Secret.
    assert issuers["glimpse3d-selfsigned"]["spec"] == {"selfSigned": {}}
    ca = certificates["glimpse3d-ca"]["spec"]
    assert ca["isCA"] is True and ca["issuerRef"]["name"] == "glimpse3d-selfsigned"
    assert issuers["glimpse3d-ca"]["spec"] == {"ca": {"secretName": ca["secretName"]}}
    gateway_env = of_kind(docs, "ConfigMap")["glimpse3d-gateway"]["data"]
    for name in APP_PODS:
        cert = certificates[f"{name}-tls"]["spec"]
        assert cert["secretName"] == f"{name}-tls"
        assert cert["issuerRef"] == {"name": "glimpse3d-ca", "kind": "Issuer", "group": "cert-manager.io"}
        assert {"server auth", "client auth"} <= set(cert["usages"])
        assert cert["dnsNames"][0] == name and f"{name}.glimpse3d.svc.cluster.local" in cert["dnsNames"]
    for service in SERVICES:  # the gateway dials each service by a name its certificate carries
        host = gateway_env[f"GLIMPSE3D_{service.upper()}_ADDR"].rpartition(":")[0]
        assert host in certificates[f"glimpse3d-{service}-tls"]["spec"]["dnsNames"]
    assert "glimpse3d.example.com" in certificates["glimpse3d-gateway-tls"]["spec"]["dnsNames"]
    assert len(certificates) == len(APP_PODS) + 1
    check_tls_pods(docs, {name: f"{name}-tls" for name in APP_PODS})


def test_tls_with_an_issuer_or_existing_secrets():
    docs = chart.load_docs(chart.helm_template(set_values=[
        "tls.enabled=true", "tls.mutual=false", "tls.certManager.issuerRef.name=corp-ca",
        "tls.certManager.issuerRef.kind=ClusterIssuer"]))
    assert chart.validate_docs(docs) == []
    assert not of_kind(docs, "Issuer")
    certificates = of_kind(docs, "Certificate")
    assert set(certificates) == {f"{name}-tls" for name in APP_PODS}
    assert all(c["spec"]["issuerRef"]["name"] == "corp-ca" for c in certificates.values())
    assert not any("GLIMPSE3D_TLS_CLIENT_CA_FILE" in m["data"] for m in of_kind(docs, "ConfigMap").values())

    secrets = {name: f"{name.removeprefix('glimpse3d-')}-pki" for name in APP_PODS}
    docs = chart.load_docs(chart.helm_template(set_values=[
        "tls.enabled=true", *(f"tls.existingSecret.{n.removeprefix('glimpse3d-')}={s}" for n, s in secrets.items())]))
    assert chart.validate_docs(docs) == []
    assert not of_kind(docs, "Certificate") and not of_kind(docs, "Issuer")
    check_tls_pods(docs, secrets)


def test_tls_is_off_by_default(renders):
    for profile, docs in renders.items():
        assert not of_kind(docs, "Certificate") and not of_kind(docs, "Issuer"), profile
        for name in APP_PODS:
            assert not any(k.startswith("GLIMPSE3D_TLS_") for k in of_kind(docs, "ConfigMap")[name]["data"])


# ---- GPU placement -------------------------------------------------------------------------------

def test_gpu_workloads_are_placed_by_their_node_pool(renders, values):
    pools = values["nodePools"]
    checked = 0
    for profile, overrides in (("gpu-hpa", "profiles/gpu-hpa.yaml"), ("gpu-triton", "profiles/gpu-triton.yaml")):
        profile_values = yaml.safe_load((chart.CHART / overrides).read_text())
        wanted = {f"glimpse3d-{k}": v.get("nodePool") for k, v in profile_values["services"].items()}
        wanted |= {f"glimpse3d-triton-{k}": values["triton"]["groups"][k]["nodePool"]
                   for k in profile_values["triton"].get("groups", {})}
        for name, deployment in of_kind(renders[profile], "Deployment").items():
            spec = deployment["spec"]["template"]["spec"]
            gpus = spec["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
            pool = wanted.get(name)
            if not pool:
                assert gpus == 0 and "nodeSelector" not in spec, f"{profile}: {name} is not a GPU workload"
                continue
            checked += 1
            assert gpus == 1, f"{profile}: {name}"
            assert spec["nodeSelector"] == pools[pool]["nodeSelector"], f"{profile}: {name}"
            assert spec["tolerations"] == pools[pool]["tolerations"], f"{profile}: {name}"
            assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert checked == 11  # five services in gpu-hpa; five Triton groups and backprojection in gpu-triton


def test_own_node_selector_and_tolerations_add_to_the_pool():
    docs = chart.load_docs(chart.helm_template(
        chart.PROFILES["gpu-hpa"],
        ["services.depth.nodePool=gpu-large", "services.depth.nodeSelector.zone=a",
         "services.depth.tolerations[0].key=dedicated", "services.depth.tolerations[0].operator=Exists"]))
    spec = of_kind(docs, "Deployment")["glimpse3d-depth"]["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"glimpse3d.io/pool": "gpu-large", "zone": "a"}
    assert spec["tolerations"][-1] == {"key": "dedicated", "operator": "Exists"}
    assert len(spec["tolerations"]) == 2


# ---- values that are refused ---------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "message"), [
    ("services.depth.replica=2", "at '/services/depth': additional properties 'replica' not allowed"),
    ("services.depth.replicas=-1", "at '/services/depth/replicas': minimum: got -1, want 0"),
    ("gateway.autoscaling.maxReplicas=0", "at '/gateway/autoscaling/maxReplicas': minimum: got 0, want 1"),
    ("podSecurity.runAsUser=0", "at '/podSecurity/runAsUser': minimum: got 0, want 1"),
    ("services.depth.backend=dtp", "at '/services/depth/backend'"),
    ("autoscaling.engine=hpa2", "at '/autoscaling/engine'"),
    ("gateway.config.workers=2", "'workers' does not match pattern '^[A-Z][A-Z0-9_]*$'"),
    ("artifacts.tempExpiryDays=-1", "at '/artifacts/tempExpiryDays': minimum: got -1, want 0"),
    ("gateway.auth.jwks.url=http://login.example.com/certs", "at '/gateway/auth/jwks/url'"),
    ("gateway.auth.apiKeys.key=../keys", "at '/gateway/auth/apiKeys/key'"),
    ("tls.existingSecret.triton=x", "at '/tls/existingSecret': additional properties 'triton' not allowed"),
    ("tls.certManager.issuerRef.kind=Vault", "at '/tls/certManager/issuerRef/kind'"),
])
def test_schema_rejects_bad_values(setting, message):
    error = template_fails(setting)
    assert "values don't meet the specifications of the schema" in error
    assert message in error


@pytest.mark.parametrize(("settings", "message"), [
    (("postgresql.enabled=false", "gateway.replicas=2"),
     "the gateway keeps its jobs in SQLite (no postgresql.enabled, no externalDatabase.host), which allows one "
     "replica"),
    (("services.depth.backend=triton",), "services.depth.backend is triton but triton.enabled is false"),
    (("services.depth.nodePool=gpu-huge",), 'services.depth.nodePool "gpu-huge" is not defined in nodePools'),
    (("gateway.config.PORT=1",), "gateway.config.PORT: GLIMPSE3D_PORT is set by the chart"),
    (("minio.enabled=false",), "no artifact store"),
    (("services.diffusion.mountModels=true",), "services.diffusion.mountModels needs models.persistence.enabled"),
    (("autoscaling.engine=hpa", "gateway.autoscaling.enabled=true", "gateway.autoscaling.minReplicas=0"),
     "gateway.autoscaling.minReplicas is 0, which only the keda engine supports"),
    (("gateway.auth.apiKeys.enabled=false",),
     "the gateway listens on 0.0.0.0 and refuses to start without authentication"),
    (("gateway.auth.jwks.url=https://login.example.com/certs",),
     "gateway.auth.jwks needs gateway.auth.issuer and gateway.auth.audience"),
    (("gateway.auth.jwks.url=https://login.example.com/certs", "gateway.auth.jwks.configMap=jwks",
      "gateway.auth.issuer=i", "gateway.auth.audience=a"),
     "gateway.auth.jwks.url and gateway.auth.jwks.configMap are both set"),
    (("gateway.config.AUTH_API_KEYS_FILE=/x",),
     "gateway.config.AUTH_API_KEYS_FILE: GLIMPSE3D_AUTH_API_KEYS_FILE is set by the chart"),
    (("tls.enabled=true", "tls.existingSecret.gateway=gw"), "tls.existingSecret names no Secret for backprojection"),
    (("services.depth.config.TLS_CERT_FILE=/x",),
     "services.depth.config.TLS_CERT_FILE: GLIMPSE3D_TLS_CERT_FILE is set by the chart"),
])
def test_inconsistent_values_fail_with_a_clear_message(settings, message):
    assert message in template_fails(*settings)


# ---- kustomize overlays --------------------------------------------------------------------------

@pytest.mark.parametrize(("overlay", "namespace", "tag"),
                         [("dev", "glimpse3d-dev", "dev"), ("prod", "glimpse3d-prod", "0.1.0")])
def test_overlay_namespace_images_and_queries(overlays, overlay, namespace, tag):
    docs = overlays[overlay]
    assert {d["metadata"].get("namespace") for d in docs} == {namespace}
    for name, spec in pod_specs(docs).items():
        for container in spec["containers"]:
            assert container["image"].startswith("registry.example.com/glimpse3d/"), name
            assert container["image"].endswith(f":{tag}"), name
    for name, d in of_kind(docs, "Deployment").items():
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize", name
        assert d["spec"]["template"]["metadata"]["labels"]["glimpse3d.io/environment"] == overlay, name
    for name, scaled in of_kind(docs, "ScaledObject").items():
        for trigger in scaled["spec"]["triggers"]:
            assert set(re.findall(r'namespace="([^"]*)"', trigger["metadata"]["query"])) == {namespace}, name


def test_overlays_change_what_they_say(overlays):
    dev = of_kind(overlays["dev"], "ScaledObject")
    assert dev["glimpse3d-triton-diffusion"]["spec"]["minReplicaCount"] == 0
    assert dev["glimpse3d-gateway"]["spec"]["minReplicaCount"] == 1
    assert all(s["spec"]["maxReplicaCount"] == 2 for s in dev.values())
    gateway = of_kind(overlays["dev"], "Deployment")["glimpse3d-gateway"]
    gateway_env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "GLIMPSE3D_LOG_LEVEL", "value": "DEBUG"} in gateway_env
    prod = of_kind(overlays["prod"], "ScaledObject")
    gateway_scaling = prod["glimpse3d-gateway"]["spec"]
    assert (gateway_scaling["minReplicaCount"], gateway_scaling["maxReplicaCount"]) == (3, 12)
    assert prod["glimpse3d-triton-diffusion"]["spec"]["maxReplicaCount"] == 8


def test_notes_render(tmp_path):
    """NOTES.txt (helm template skips it): rendered through a copy of the chart that includes it as
    a comment, for the production shape without egress rules."""
    import shutil

    copy = tmp_path / "glimpse3d"
    shutil.copytree(chart.CHART, copy)
    (copy / "templates" / "NOTES.txt").rename(copy / "notes.txt")
    (copy / "templates" / "notes-check.yaml").write_text(
        '{{- $notes := tpl (.Files.Get "notes.txt") . }}\n# {{ $notes | replace "\\n" "\\n# " }}\n')
    notes = chart._run([chart._tool("helm"), "template", "glimpse3d", copy, "--namespace", "glimpse3d",
                        "-f", chart.PROFILE_DIR / "gpu-triton.yaml", "-f", chart.PROFILE_DIR / "external.yaml",
                        "--set-json", "networkPolicy.externalEgress=[]", "--show-only", "templates/notes-check.yaml"])
    assert "glimpse3d-triton-reconstruction: reconstruction_triposr, reconstruction_lgm" in notes
    assert "reconstruction: triton (Triton group reconstruction)" in notes
    assert "external PostgreSQL at glimpse3d-db.example.internal" in notes
    assert "WARNING: NetworkPolicies are on but networkPolicy.externalEgress is empty" in notes


def test_make_chart_writes_every_render(tmp_path):
    """`make chart` runs this command; it passes and leaves one file per profile and overlay."""
    command = [sys.executable, str(REPO_ROOT / "deploy" / "tools" / "chart.py"), "all", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"profile-{n}.yaml" for n in chart.PROFILES] + [f"kustomize-{o}.yaml" for o in chart.OVERLAYS])
