"""The Kubernetes and KServe manifests: schemas, how they fit together, and grace against drain."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from deploy_support import ROOT, edit, tool_or_skip

yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifests (.ci/lint_deploy installs it)")

FLEET = ROOT / "deploy" / "kubernetes" / "fleet"
SIDECAR = ROOT / "deploy" / "kubernetes" / "sidecar" / "deployment.yaml"
ADAPTER = ROOT / "deploy" / "kubernetes" / "prometheus-adapter" / "rules.yaml"
KSERVE = ROOT / "deploy" / "kserve"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def fleet() -> dict[str, dict[str, Any]]:
    """The fleet's objects by kind (a kind appearing twice: the first, e.g. the ClusterIP Service)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(FLEET.glob("*.yaml")):
        for doc in documents(path):
            found.setdefault(doc["kind"], doc)
    return found


# -- Kubernetes' schemas -------------------------------------------------------------------------------------

def test_kubernetes_manifests_validate(check: ModuleType) -> None:
    assert [p.relative_to(ROOT).as_posix() for p in check.kubernetes_manifests()] == [
        "deploy/kubernetes/fleet/deployment.yaml", "deploy/kubernetes/fleet/hpa.yaml",
        "deploy/kubernetes/fleet/pdb.yaml", "deploy/kubernetes/fleet/service.yaml",
        "deploy/kubernetes/prometheus-adapter/rules.yaml", "deploy/kubernetes/sidecar/deployment.yaml"]
    assert tool_or_skip(check, check.kubernetes_errors) == []


def test_kubernetes_validation_rejects_a_misspelt_field(check: ModuleType, copied: Path) -> None:
    edit(copied / "deploy/kubernetes/fleet/deployment.yaml", "readinessProbe:", "readinesProbe:")
    errors = tool_or_skip(check, check.kubernetes_errors)
    assert any("readinesProbe" in error for error in errors), errors


# -- the fleet fits together ---------------------------------------------------------------------------------

def test_the_services_hpa_and_pdb_select_the_deployments_pods() -> None:
    objects = fleet()
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    for path in sorted(FLEET.glob("*.yaml")):
        for doc in documents(path):
            if doc["kind"] == "Service":
                assert doc["spec"]["selector"] == labels, doc["metadata"]["name"]
                ports = {p["name"]: p for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
                assert all(port["targetPort"] in ports for port in doc["spec"]["ports"])
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_hpa_scales_on_a_metric_the_adapter_serves_from_one_infergate_exports() -> None:
    """Rename a metric in server/metrics.py and this fails, before an HPA silently stops scaling."""
    (config_map,) = documents(ADAPTER)
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"]: re.match(r"(\w+)\{", rule["seriesQuery"])[1] for rule in rules}
    families = set(re.findall(r'"(infergate_\w+)"', (ROOT / "server" / "metrics.py").read_text()))
    for series in served.values():
        family = re.sub(r"_(bucket|sum|count)$", "", series)
        assert family in families, f"{series}: server/metrics.py exports no {family}"
    for rule in rules:
        assert re.fullmatch(rule["name"]["matches"], re.match(r"(\w+)\{", rule["seriesQuery"])[1])
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    hpa_metrics = [m["pods"]["metric"]["name"] for m in fleet()["HorizontalPodAutoscaler"]["spec"]["metrics"]]
    assert hpa_metrics == ["infergate_queue_depth"]
    assert set(hpa_metrics) <= set(served)


def test_pods_run_as_the_images_user_on_a_read_only_root() -> None:
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_user is not None
    pods = [fleet()["Deployment"]["spec"]["template"]["spec"], documents(SIDECAR)[0]["spec"]["template"]["spec"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            context = {**pod["securityContext"], **container["securityContext"]}
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] == container["resources"]["limits"]
            if "infergate" in container["image"]:
                assert (str(context["runAsUser"]), str(context["runAsGroup"])) == dockerfile_user.groups()
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}  # NUMBA_CACHE_DIR


def app_of(pod: dict[str, Any]) -> dict[str, Any]:
    (app,) = pod["containers"]
    return app


def test_the_sidecar_starts_before_the_app_and_shares_its_socket_and_shm() -> None:
    pod = documents(SIDECAR)[0]["spec"]["template"]["spec"]
    (server,) = pod["initContainers"]
    assert server["restartPolicy"] == "Always"  # a native sidecar: up before, down after the application
    assert "--grpc-address=unix:/run/infergate/infergate.sock" in server["args"]
    assert "--grpc-socket-mode=600" in server["args"]  # the app runs as the same user (runAsUser)
    assert "runAsUser" not in server["securityContext"] and "runAsUser" not in app_of(pod)["securityContext"]
    (app,) = pod["containers"]
    assert {e["name"]: e["value"] for e in app["env"]}["INFERGATE_URL"] == "unix:/run/infergate/infergate.sock"
    shm = {v["name"]: v for v in pod["volumes"]}["shm"]
    assert shm["emptyDir"]["medium"] == "Memory"


# -- grace, drain and probes ---------------------------------------------------------------------------------

def test_grace_probes_and_drain_flags_agree(check: ModuleType) -> None:
    assert check.drain_errors() == []


def test_the_fleets_numbers() -> None:
    """The README's arithmetic, on the manifest: 10 s of shutdown delay + 30 s of exit timeout + 5 s."""
    pod = fleet()["Deployment"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--shutdown-delay-s=10" in args and "--exit-timeout-s=30" in args
    assert pod["terminationGracePeriodSeconds"] == 45
    readiness = pod["containers"][0]["readinessProbe"]
    assert readiness["grpc"] == {"port": 8001, "service": ""}
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 10


@pytest.mark.parametrize(("path", "old", "new", "expected"), [
    ("deploy/kubernetes/fleet/deployment.yaml", "terminationGracePeriodSeconds: 45",
     "terminationGracePeriodSeconds: 30",
     "terminationGracePeriodSeconds 30, but --shutdown-delay-s 10 + --exit-timeout-s 30 + 5 s of margin is 45"),
    ("deploy/kubernetes/fleet/deployment.yaml", "- --exit-timeout-s=30", "- --exit-timeout-secs=30",
     "infergate refuses its args: infergate serve: error: unrecognized arguments: --exit-timeout-secs=30"),
    ("deploy/kubernetes/fleet/deployment.yaml", "failureThreshold: 2", "failureThreshold: 3",
     "the readiness probe notices NOT_SERVING only after 15 s, past --shutdown-delay-s 10"),
    ("deploy/kubernetes/fleet/deployment.yaml", 'port: 8001\n              service: ""\n            periodSeconds: 10',
     'port: 8002\n              service: ""\n            periodSeconds: 10', "livenessProbe checks port 8002"),
    ("deploy/kubernetes/sidecar/deployment.yaml", "value: unix:/run/infergate/infergate.sock\n          ports",
     "value: 127.0.0.1:8001\n          ports", "INFERGATE_HEALTH_ADDRESS must be unix:/run/infergate/infergate.sock"),
    ("deploy/kubernetes/sidecar/deployment.yaml", "              mountPath: /dev/shm\n      volumes",
     "              mountPath: /dev/shm-not\n      volumes", "container app has no emptyDir of medium Memory"),
    ("deploy/kserve/inferenceservice.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 20",
     "deploy/kserve/inferenceservice.yaml: InferenceService digits container kserve-container: "
     "terminationGracePeriodSeconds 20"),
    ("Dockerfile", '"--exit-timeout-s", "20"]', '"--exit-timeout-s", "30"]',
     "Dockerfile: CMD drains for 40 s with its margin, past Kubernetes' default grace of 30 s"),
])
def test_a_mismatch_is_named(check: ModuleType, copied: Path, path: str, old: str, new: str, expected: str) -> None:
    edit(copied / path, old, new)
    errors = check.drain_errors()
    assert any(expected in error for error in errors), errors


# -- KServe --------------------------------------------------------------------------------------------------

def test_kserve_manifests_match_the_vendored_crd_schemas(check: ModuleType) -> None:
    assert tool_or_skip(check, check.kserve_errors) == []


@pytest.mark.parametrize(("path", "old", "new", "expected"), [
    ("inferenceservice.yaml", "storageUri:", "storageURI:",
     "spec.predictor.model: Additional properties are not allowed ('storageURI' was unexpected)"),
    ("inferenceservice.yaml", "minReplicas: 1", "minReplicas: one", "spec.predictor.minReplicas: 'one' is not of type"),
    ("inferenceservice.yaml", "protocolVersion: grpc-v2", "protocolVersion: v1",
     "protocolVersion 'v1' is not among the runtime's ['grpc-v2', 'v2']"),
    ("inferenceservice.yaml", "runtime: infergate", "runtime: tritonserver", "runtime 'tritonserver' is none of"),
    ("inferenceservice.yaml", "name: triton", "name: onnx", "modelFormat {'name': 'onnx', 'version': '2'} is not"),
    ("servingruntime.yaml", "autoSelect: false", "autoSelect: nope", "autoSelect: 'nope' is not of type 'boolean'"),
    ("servingruntime.yaml", "apiVersion: serving.kserve.io/v1alpha1", "apiVersion: serving.kserve.io/v1beta1",
     "apiVersion: 'serving.kserve.io/v1alpha1' was expected"),
    ("clusterservingruntime.yaml", "containerPort: 8001", "containerPort: '8001'", "'8001' is not of type 'integer'"),
])
def test_a_kserve_mistake_is_named(check: ModuleType, copied: Path, path: str, old: str, new: str,
                                   expected: str) -> None:
    edit(copied / "deploy" / "kserve" / path, old, new)
    errors = tool_or_skip(check, check.kserve_errors)
    assert any(expected in error for error in errors), errors


def test_the_runtime_serves_the_triton_format_over_grpc_v2() -> None:
    for name in ("servingruntime.yaml", "clusterservingruntime.yaml"):
        (runtime,) = documents(KSERVE / name)
        spec = runtime["spec"]
        assert spec["supportedModelFormats"] == [{"name": "triton", "version": "2", "autoSelect": False}]
        assert spec["protocolVersions"] == ["grpc-v2", "v2"]
        (container,) = spec["containers"]
        assert container["ports"][0] == {"name": "h2c", "containerPort": 8001, "protocol": "TCP"}
        assert "--model-repository=/mnt/models" in container["args"]
    assert documents(KSERVE / "servingruntime.yaml")[0]["spec"] == \
        documents(KSERVE / "clusterservingruntime.yaml")[0]["spec"]


def load_derive() -> ModuleType:
    spec = importlib.util.spec_from_file_location("infergate_kserve_derive", KSERVE / "schema" / "derive.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_derive_keeps_the_used_fields_constraints_and_rejects_others() -> None:
    """derive.py on a small CRD-like schema: what made the vendored files."""
    derive = load_derive()
    schema = {"type": "object", "description": "x", "properties": {
        "spec": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "description": "the name"},
            "replicas": {"type": "integer", "format": "int32", "minimum": 0},
            "unused": {"type": "object", "properties": {"deep": {"type": "string"}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "description": "v"}},
            "ports": {"type": "array", "items": {"type": "object", "properties": {
                "port": {"type": "integer"}, "name": {"type": "string"}}}}}}}}
    manifest = {"spec": {"name": "a", "replicas": 2, "labels": {"k": "v"}, "ports": [{"port": 1}]}}
    assert derive.prune(schema, [manifest], "Kind") == {"type": "object", "additionalProperties": False, "properties": {
        "spec": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "name": {"type": "string"},
            "ports": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                  "properties": {"port": {"type": "integer"}}}},
            "replicas": {"type": "integer", "format": "int32", "minimum": 0}}}}}
    with pytest.raises(KeyError, match=r"Kind\.spec: typo not in KServe's schema"):
        derive.prune(schema, [{"spec": {"typo": 1}}], "Kind")


def test_the_vendored_schemas_name_their_source() -> None:
    for path in sorted((KSERVE / "schema").glob("*.json")):
        text = path.read_text()
        assert re.search(r"kserve/kserve [0-9a-f]{40}, config/crd/full/serving\.kserve\.io_\w+\.yaml", text), path
