"""kubeconform passes what the operator renders for delivery: the canary Deployment, the
split Services and the HTTPRoute (against Gateway API's HTTPRoute CRD, v1.6.3), the
HorizontalPodAutoscaler (against the test bed apiserver's autoscaling/v2 schema), the KEDA
ScaledObject (against KEDA v2.16.1's CRD), and ModelDeployments that use canary, suspend and
autoscaling (against our CRD)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import support
from e2e.testbed import schemas
from modelops.api.deployment import AutoscalingSpec, HTTPRouteRef, ModelDeploymentSpec
from modelops.core.httproute import render_httproute, render_split_services
from modelops.core.objects import OwnerRef, VersionView
from modelops.core.render import DeploymentInputs, render_deployment
from modelops.core.scalers import render_hpa, render_scaled_object
from modelops.settings import Settings
from tests.api_cases import MODEL, edited

pytestmark = pytest.mark.integration

ROOT = support.REPO_ROOT
HTTPROUTE_CRD = ROOT / "tests" / "fixtures" / "gateway.networking.k8s.io_httproutes.yaml"
SCALEDOBJECT_CRD = ROOT / "tests" / "fixtures" / "keda.sh_scaledobjects.yaml"
OWNER = OwnerRef(api_version="modelops.dev/v1alpha1", kind="ModelDeployment", name="digits", uid="0000-md")
CANARY_MD = {
    "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
    "spec": {"model": "digits", "suspended": False,
             "rollout": {"strategy": "Canary", "canary": {
                 "steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "1m"}],
                 "analysis": {"maxErrorRatio": 0.01, "maxLatencyRatio": 3, "minRequests": 500, "interval": "10s"},
                 "httpRoute": {"parent": "public", "namespace": "gateways"}}},
             "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "queue-time-ratio", "target": 0.5, "provider": "hpa"}},
}


def rendered() -> list[dict[str, Any]]:
    spec = ModelDeploymentSpec.model_validate(CANARY_MD["spec"])
    from modelops.api.model import ModelSpec

    model = ModelSpec.model_validate(MODEL["spec"])
    version = VersionView("digits-v2", "digits", 2, "Ready", compressed_uri="s3://models/c/2/model.onnx", compressed_sha256="ab" * 32)
    args = {"name": "digits", "namespace": "ml", "owner": OWNER, "spec": spec, "model_name": "digits", "model": model,
            "version": version, "settings": Settings()}
    auto = AutoscalingSpec.model_validate(CANARY_MD["spec"]["autoscaling"])
    return [
        render_deployment(DeploymentInputs(**args)),
        render_deployment(DeploymentInputs(**args, canary_replicas=2)),
        render_deployment(DeploymentInputs(**{**args, "spec": spec.model_copy(update={"suspended": True})})),
        *render_split_services(name="digits", namespace="ml", owner=OWNER, model="digits", stable_version=1),
        render_httproute(name="digits", namespace="ml", owner=OWNER, model="digits",
                         parent=HTTPRouteRef.model_validate({"parent": "public", "namespace": "gateways"}), weights=(90, 10)),
        render_httproute(name="digits", namespace="ml", owner=OWNER, model="digits", parent=HTTPRouteRef(parent="public"), weights=None),
        render_hpa(name="digits", namespace="ml", model="digits", owner=OWNER, spec=auto),
        *(render_scaled_object(name="digits", namespace="ml", model="digits", owner=OWNER,
                               spec=AutoscalingSpec.model_validate({**CANARY_MD["spec"]["autoscaling"], "provider": "keda", "metric": metric,
                                                                     "prometheusAddress": "http://prometheus.monitoring:9090"}))
          for metric in ("queue-time-ratio", "inferences-per-second")),
        CANARY_MD,
        edited(edited(CANARY_MD, "spec.suspended", True), "spec.autoscaling", ...),
    ]


def kubeconform(testbed: Any, path: Path) -> tuple[int, dict[str, Any]]:
    openapi = json.loads(testbed.kubectl("get", "--raw", "/openapi/v2", timeout=120))
    crds = [*sorted((ROOT / "crds").glob("*.yaml")), HTTPROUTE_CRD, SCALEDOBJECT_CRD]
    template = schemas.write_schemas(openapi, crds, support.CACHE / "kubeconform-schemas")
    result = subprocess.run([str(support.binaries() / "kubeconform"), "-schema-location", str(template),
                             "-kubernetes-version", "1.34.4", "-strict", "-summary", "-output", "json", str(path)],
                            capture_output=True, text=True, timeout=300)
    return result.returncode, json.loads(result.stdout)


def test_kubeconform_passes_the_delivery_renderings(testbed, tmp_path: Path) -> None:
    docs = rendered()
    path = tmp_path / "delivery.yaml"
    path.write_text(yaml.safe_dump_all(json.loads(json.dumps(docs))))  # StrEnums as plain strings
    code, report = kubeconform(testbed, path)
    problems = [r for r in report.get("resources", []) if r["status"] != "statusValid"]
    assert code == 0 and not problems, json.dumps(problems, indent=1)
    assert report["summary"]["valid"] == len(docs)


def test_kubeconform_refuses_a_bad_route_weight(testbed, tmp_path: Path) -> None:
    route = render_httproute(name="digits", namespace="ml", owner=OWNER, model="digits", parent=HTTPRouteRef(parent="public"),
                             weights=(90, 10))
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(route))
    code, report = kubeconform(testbed, path)
    assert code != 0 and report["summary"]["invalid"] == 1, report
