"""Golden renderings: the Triton Deployment and its Service (an upgrade that changed them would
roll every serving pod), and the objects for other providers: the HorizontalPodAutoscaler, the
KEDA ScaledObject, and the HTTPRoute with its two Services. A change to a rendering must change
the file under tests/unit/golden/ too: regenerate with MODELOPS_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops.api.deployment import AutoscalingSpec, HTTPRouteRef, ModelDeploymentSpec
from modelops.api.model import ModelSpec
from modelops.core.httproute import render_httproute, render_split_services
from modelops.core.objects import OwnerRef, VersionView
from modelops.core.render import DeploymentInputs, render_deployment, render_service
from modelops.core.scalers import quantity, render_hpa, render_scaled_object
from modelops.settings import Settings

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
OWNER = OwnerRef(api_version="modelops.dev/v1alpha1", kind="ModelDeployment", name="digits", uid="0000-md")
QUEUE = AutoscalingSpec.model_validate({"minReplicas": 1, "maxReplicas": 5, "metric": "queue-time-ratio", "target": 0.5})
IPS = AutoscalingSpec.model_validate({"minReplicas": 2, "maxReplicas": 10, "metric": "inferences-per-second", "target": 200,
                                      "provider": "keda", "prometheusAddress": "http://prometheus.monitoring:9090",
                                      "stabilizationWindow": "2m", "cooldown": "5m"})
ROUTE = HTTPRouteRef.model_validate({"parent": "public", "namespace": "gateways", "sectionName": "http"})
COMMON = {"name": "digits", "namespace": "ml", "owner": OWNER}
MODEL = ModelSpec.model_validate({
    "storage": {"endpoint": "https://minio:9000", "bucket": "models", "credentialsSecret": {"name": "s3-creds"},
                "caBundle": {"configMapRef": {"name": "minio-ca"}}},
    "signature": {"inputs": [{"name": "x", "dataType": "FP32", "dims": [64]}],
                  "outputs": [{"name": "y", "dataType": "FP32", "dims": [10]}], "maxBatchSize": 8},
})
VERSION = VersionView(name="digits-v3", model="digits", version=3, phase="Ready", compressed_uri="s3://models/modelops-cache/k/model.onnx",
                      compressed_sha256="cd" * 32, compressed_format="onnx")
GPU = ModelDeploymentSpec.model_validate({
    "model": "digits", "replicas": 2, "scheduling": {"gpus": 1, "nodeSelector": {"nvidia.com/gpu.present": "true"}},
    "triton": {"backend": "python", "startupTimeoutSeconds": 301, "resources": {"limits": {"cpu": "2"}}},
})
SERVING = {**COMMON, "model_name": "digits", "model": MODEL, "version": VERSION, "settings": Settings.from_env({})}

RENDERINGS: dict[str, Any] = {
    "deployment-triton": lambda: render_deployment(DeploymentInputs(**SERVING, spec=ModelDeploymentSpec(model="digits"))),
    "deployment-triton-gpu-canary": lambda: render_deployment(DeploymentInputs(**SERVING, spec=GPU, canary_replicas=1, retry="2")),
    "service-triton": lambda: render_service(**COMMON, model_name="digits"),
    "hpa-queue-time-ratio": lambda: render_hpa(**COMMON, model="digits", spec=QUEUE),
    "hpa-inferences-per-second": lambda: render_hpa(**COMMON, model="digits", spec=IPS),
    "scaledobject-queue-time-ratio": lambda: render_scaled_object(
        **COMMON, model="digits", spec=QUEUE.model_copy(update={"prometheus_address": "http://prometheus:9090"})),
    "scaledobject-inferences-per-second": lambda: render_scaled_object(**COMMON, model="digits", spec=IPS),
    "httproute-canary-step": lambda: render_httproute(**COMMON, model="digits", parent=ROUTE, weights=(90, 10)),
    "httproute-no-canary": lambda: render_httproute(**COMMON, model="digits", parent=HTTPRouteRef(parent="public"), weights=None),
    "services-split": lambda: render_split_services(**COMMON, model="digits", stable_version=3),
}


def documents(value: Any) -> list[dict[str, Any]]:
    """The objects as the apiserver receives them (JSON: enum members are their values)."""
    return json.loads(json.dumps(value if isinstance(value, list) else [value]))


@pytest.mark.parametrize("case", RENDERINGS)
def test_rendering_matches_its_golden_file(case: str) -> None:
    rendered = yaml.safe_dump_all(documents(RENDERINGS[case]()), sort_keys=True)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("MODELOPS_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(rendered)
    assert path.read_text() == rendered, f"{path.name} is stale; rerun with MODELOPS_UPDATE_GOLDEN=1 and review the diff"


def test_every_golden_file_has_a_rendering() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == sorted(RENDERINGS)


@pytest.mark.parametrize(("value", "text"), [(0.5, "500m"), (200, "200"), (1.25, "1250m"), (0.001, "1m")])
def test_targets_are_quantities(value, text) -> None:
    assert quantity(value) == text


def test_route_weights_are_exact_and_split_services_are_disjoint() -> None:
    route = render_httproute(**COMMON, model="digits", parent=ROUTE, weights=(80, 20))
    [rule] = route["spec"]["rules"]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [("digits-stable", 80), ("digits-canary", 20)]
    stable, canary = render_split_services(**COMMON, model="digits", stable_version=3)
    assert stable["spec"]["selector"]["modelops.dev/version"] == "3"
    assert canary["spec"]["selector"]["modelops.dev/track"] == "canary"
