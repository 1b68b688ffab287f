"""What we ship besides the chart: the kustomize manifests under config/, and every rendered
manifest validated by kubeconform against the Kubernetes 1.34 schemas and our CRDs.

- config/ is what scripts/render-manifests.py writes from the chart (a drift check);
- `kubectl kustomize` of config/default and config/namespaced renders the same objects as
  `helm template` with default values (and with watchNamespaces), but for Helm's labels;
- `kubectl apply -k config/default` installs an operator that reconciles;
- kubeconform (built from its Go module) passes the rendered chart (default values and every
  file in charts/modelops/ci/), both kustomize outputs and config/samples, with schemas made
  from the test bed apiserver's /openapi/v2 and crds/; and it fails a manifest with a typo.
- `helm --set` of a decimal value passes the chart's schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import support
from e2e.testbed import schemas
from tests.integration.conftest import ROOT, Storage, eventually
from tests.integration.test_helm_chart import smoke_objects

pytestmark = pytest.mark.integration

CHART = ROOT / "charts" / "modelops"
RENDER = ROOT / "scripts" / "render-manifests.py"
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
NAMESPACE = "modelops-system"
WATCHED = "modelops-workloads"
# Kinds of other projects' CRDs that the chart can render; kubeconform has no schema for them.
FOREIGN_KINDS = "monitoring.coreos.com/v1/ServiceMonitor"


def run(*argv: str | Path, input: str | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, argv))} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
    return result.stdout


def helm_template(testbed: Any, *flags: str) -> str:
    return run(testbed.helm_path, "template", "modelops", CHART, "--namespace", NAMESPACE, "--kube-version=1.34.0",
               "--include-crds", *flags)


def kustomize(testbed: Any, folder: str) -> str:
    return run(testbed.kubectl_path, "kustomize", ROOT / "config" / folder)


def objects(text: str, strip_helm_labels: bool = False) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if strip_helm_labels:
            for metadata in (doc["metadata"], ((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}):
                for label in HELM_LABELS:
                    (metadata.get("labels") or {}).pop(label, None)
        out[(doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])] = doc
    return out


def differences(chart: dict, kustomized: dict) -> list[str]:
    problems = [f"only in the chart: {k}" for k in chart.keys() - kustomized.keys()]
    problems += [f"only in config/: {k}" for k in kustomized.keys() - chart.keys()]
    problems += [f"differs: {k}" for k in chart.keys() & kustomized.keys() if chart[k] != kustomized[k]]
    return sorted(problems)


# -- kustomize beside Helm ---------------------------------------------------------------------


def test_config_is_what_the_chart_renders(testbed) -> None:
    result = subprocess.run([sys.executable, str(RENDER), "--helm", testbed.helm_path, "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("folder", "flags"), [
    ("default", ()),
    ("namespaced", ("--set", f"watchNamespaces={{{WATCHED}}}")),
])
def test_kustomize_renders_what_helm_renders_but_for_helms_labels(testbed, folder: str, flags: tuple[str, ...]) -> None:
    chart = objects(helm_template(testbed, *flags), strip_helm_labels=True)
    # A private key made at render time is left out of the committed manifests (docs/security.md).
    assert chart.pop(("Secret", NAMESPACE, "modelops-signing-key"))["type"] == "Opaque"
    # kubectl apply -k creates the namespace too; the chart installs into one that exists.
    chart[("Namespace", "", NAMESPACE)] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    kustomized = objects(kustomize(testbed, folder))
    assert differences(chart, kustomized) == []
    assert {k[0] for k in kustomized} >= {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole",
                                          "ClusterRoleBinding", "Role", "RoleBinding", "Namespace"}
    # The comparison sees a changed value: a render with another setting differs.
    other = objects(helm_template(testbed, *flags, "--set", "operator.workers=9"), strip_helm_labels=True)
    other.pop(("Secret", NAMESPACE, "modelops-signing-key"))
    other[("Namespace", "", NAMESPACE)] = chart[("Namespace", "", NAMESPACE)]
    assert differences(other, kustomized) == [f"differs: {('Deployment', NAMESPACE, 'modelops')}"]


def test_the_namespaced_overlay_grants_only_the_watched_namespace(testbed) -> None:
    kustomized = objects(kustomize(testbed, "namespaced"))
    role = kustomized[("Role", WATCHED, "modelops")]
    assert any("jobs" in rule["resources"] for rule in role["rules"])
    cluster_role = kustomized[("ClusterRole", "", "modelops")]
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"customresourcedefinitions", "namespaces"}
    env = {e["name"]: e.get("value") for e in kustomized[("Deployment", NAMESPACE, "modelops")]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["MODELOPS_NAMESPACES"] == WATCHED


def test_kubectl_apply_k_installs_a_working_operator(testbed, namespace, storage: Storage) -> None:
    operator_objects = ROOT / "config" / "default" / "operator.yaml"
    try:
        testbed.kubectl("apply", "-k", str(ROOT / "config" / "default"), timeout=120)
        testbed.kubectl("rollout", "status", "deployment/modelops", "-n", NAMESPACE, "--timeout=300s", timeout=320)
        testbed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(smoke_objects(storage)))

        def artifact_not_found() -> dict[str, Any] | None:
            mv = json.loads(testbed.kubectl("get", "modelversion", "digits-v1", "-n", namespace, "-o", "json"))
            conditions = (mv.get("status") or {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "Ready" and c["reason"] == "ArtifactNotFound"), None)

        ready = eventually(artifact_not_found, 180, "the kustomize-installed operator to report the missing artifact")
        assert ready["status"] == "False" and f"s3://{storage.bucket}/digits/1/model.onnx" in ready["message"]
    finally:
        # Not `delete -k`: that would delete the CRDs, and with them every object of these kinds.
        testbed.kubectl("delete", "-f", str(operator_objects), "--ignore-not-found", "--wait=true", check=False, timeout=180)
        testbed.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)


# -- helm --set with decimals ------------------------------------------------------------------


def test_helm_set_takes_decimals_and_the_schema_still_names_a_bad_one(testbed) -> None:
    docs = objects(helm_template(testbed, "--set", "operator.retrySeconds=0.5", "--set", "leaderElection.retryPeriodSeconds=1.5",
                                 "--set-json", "operator.resyncSeconds=90.5"))
    env = {e["name"]: e.get("value") for e in docs[("Deployment", NAMESPACE, "modelops")]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert (env["MODELOPS_RETRY_SECONDS"], env["MODELOPS_LEASE_RETRY_PERIOD_SECONDS"],
            env["MODELOPS_RESYNC_SECONDS"]) == ("0.5", "1.5", "90.5")
    for bad in ("operator.retrySeconds=abc", "operator.retrySeconds=0", "operator.retrySeconds=-1"):
        result = testbed.helm("template", "modelops", str(CHART), "--set", bad)
        assert result.returncode != 0 and "retrySeconds" in result.stderr, (bad, result.stderr)


# -- kubeconform ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubeconform(testbed) -> list[str]:
    """The kubeconform command line, with schemas made from the test bed's apiserver and crds/."""
    binary = support.binaries() / "kubeconform"
    openapi = json.loads(testbed.kubectl("get", "--raw", "/openapi/v2", timeout=120))
    template = schemas.write_schemas(openapi, sorted((ROOT / "crds").glob("*.yaml")), support.CACHE / "kubeconform-schemas")
    return [str(binary), "-schema-location", str(template), "-kubernetes-version", "1.34.4", "-strict",
            "-skip", FOREIGN_KINDS, "-summary", "-output", "json"]


def validate(kubeconform: list[str], text: str, tmp_path: Path, name: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    result = subprocess.run([*kubeconform, str(path)], capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    problems = [r for r in report.get("resources", []) if r["status"] not in ("statusValid", "statusSkipped")]
    assert result.returncode == 0 and not problems, f"{name}: {json.dumps(problems, indent=1)}{result.stderr}"
    return report["summary"]


def rendered_manifests(testbed) -> dict[str, str]:
    out = {"chart-defaults": helm_template(testbed)}
    for values in sorted((CHART / "ci").glob("*.yaml")):
        out[f"chart-ci-{values.stem}"] = helm_template(testbed, "-f", str(values))
    out["kustomize-default"] = kustomize(testbed, "default")
    out["kustomize-namespaced"] = kustomize(testbed, "namespaced")
    out["samples"] = "\n---\n".join(p.read_text() for p in sorted((ROOT / "config" / "samples").glob("*.yaml")))
    return out


def test_kubeconform_passes_every_rendered_manifest(testbed, kubeconform, tmp_path: Path) -> None:
    for name, text in rendered_manifests(testbed).items():
        summary = validate(kubeconform, text, tmp_path, name)
        documents = sum(1 for doc in yaml.safe_load_all(text) if doc)
        assert summary["valid"] + summary["skipped"] == documents > 0, (name, summary)
        assert summary["valid"] >= 1


@pytest.mark.parametrize(("manifest", "complaint"), [
    # A typo in a Deployment field (the Kubernetes schema, strict).
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
      "spec": {"replica": 2, "selector": {"matchLabels": {"a": "b"}},
               "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
     "replica"),
    # A wrong type in one of our kinds (the CRD schema).
    ({"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "x"},
      "spec": {"model": "digits", "replicas": "two"}}, "replicas"),
])
def test_kubeconform_with_these_schemas_fails_a_bad_manifest(kubeconform, tmp_path: Path, manifest, complaint: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = subprocess.run([*kubeconform, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    (resource,) = json.loads(result.stdout)["resources"]
    assert resource["status"] == "statusInvalid" and complaint in json.dumps(resource), resource


def test_the_node_cache_renders_its_agents_and_the_operators_rules(testbed) -> None:
    docs = objects(helm_template(testbed, "-f", str(CHART / "ci" / "nodecache-values.yaml")))
    agents = docs[("DaemonSet", NAMESPACE, "modelops-nodecache")]["spec"]["template"]["spec"]
    agent = agents["containers"][0]
    env = {e["name"]: e for e in agent["env"]}
    assert agent["command"] == ["python", "-m", "modelops.nodecache"] and env["MODELOPS_NODECACHE_BUDGET"]["value"] == "500Gi"
    assert env["MODELOPS_NODECACHE_NODE"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "nodecache-s3"
    selector = docs[("Deployment", NAMESPACE, "modelops")]["spec"]["selector"]["matchLabels"]
    pod_labels = docs[("DaemonSet", NAMESPACE, "modelops-nodecache")]["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= pod_labels.items()  # the operator's Service and PDB never select an agent
    assert agents["volumes"][0]["hostPath"] == {"path": "/var/lib/modelops/cache", "type": "DirectoryOrCreate"}
    assert {tuple(r["resources"]) for r in docs[("ClusterRole", "", "modelops-nodecache")]["rules"]} == {("pods",)}
    operator = docs[("Deployment", NAMESPACE, "modelops")]["spec"]["template"]["spec"]["containers"][0]
    settings = {e["name"]: e.get("value") for e in operator["env"]}
    assert settings["MODELOPS_NODE_CACHE_CLAIM"] == "modelops-nodecache" and settings["MODELOPS_NODE_CACHE_SIZE"] == "500Gi"
    cluster_rules = docs[("ClusterRole", "", "modelops")]["rules"]
    assert {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "create", "patch"]} in cluster_rules
    assert {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create", "patch"]} in cluster_rules
    plain = objects(helm_template(testbed))
    assert not [k for k in plain if k[0] == "DaemonSet"]
    assert {e["name"]: e.get("value") for e in plain[("Deployment", NAMESPACE, "modelops")]["spec"]["template"]["spec"]
            ["containers"][0]["env"]}["MODELOPS_NODE_CACHE_CLAIM"] == ""
