"""Pod Security "restricted", checked by the API server: every namespace the tests create
enforces it, and every pod modelops renders passes it (the compression Job's, Triton's with
its fetch init container, and the chart's operator), while a pod that breaks it is refused."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from e2e.support import POD_SECURITY_LABELS
from modelops.api import ModelDeploymentSpec, ModelSpec
from modelops.core import render
from modelops.core.objects import OwnerRef, VersionView
from modelops.core.versions import Scheduling
from modelops.settings import Settings
from tests.integration.conftest import Storage, digits_model_manifest, kubectl
from tests.integration.test_helm_chart import render as helm_render

pytestmark = pytest.mark.integration

OWNER = OwnerRef("modelops.dev/v1alpha1", "ModelVersion", "v", "00000000-0000-0000-0000-000000000000")


def rendered_pods(storage: Storage, testbed: Any) -> dict[str, dict[str, Any]]:
    """The pod templates modelops renders, as Pods."""
    settings = Settings.from_env({})
    model = ModelSpec.model_validate(digits_model_manifest(storage)["spec"])
    job = render.render_job(render.JobInputs(
        name="v-compress", namespace="x", owner=OWNER, model="digits", version_name="v", version=1,
        artifact={"uri": f"s3://{storage.bucket}/a.onnx", "sha256": "ab" * 32, "format": "onnx"},
        recipe={"quantization": "int8-weight-only"}, evaluation=None, output_prefix=f"s3://{storage.bucket}/c/",
        storage=model.storage, signature=model.signature, scheduling=Scheduling(gpus=1), settings=settings,
    ))
    served = VersionView(name="v", model="digits", version=1, phase="Ready", compressed_uri=f"s3://{storage.bucket}/m.onnx",
                         compressed_sha256="cd" * 32, compressed_format="onnx")
    triton = render.render_deployment(render.DeploymentInputs(
        name="serve", namespace="x", owner=OWNER, spec=ModelDeploymentSpec.model_validate({"model": "digits"}),
        model_name="digits", model=model, version=served, settings=settings,
    ))
    (operator,) = [d for d in helm_render(testbed) if d["kind"] == "Deployment"]
    operator["spec"]["template"]["spec"].pop("serviceAccountName")  # the chart's account is not installed here
    templates = {"compression Job": job, "Triton": triton, "operator (chart)": operator}
    return {name: {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name.split()[0].lower()},
                   "spec": obj["spec"]["template"]["spec"]} for name, obj in templates.items()}


def server_dry_run(testbed: Any, namespace: str, pod: dict[str, Any]) -> tuple[int, str]:
    result = kubectl(testbed, "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    return result.returncode, result.stderr


def test_every_test_namespace_enforces_restricted(testbed, namespace) -> None:
    labels = json.loads(kubectl(testbed, "get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
    assert labels.items() >= POD_SECURITY_LABELS.items()


def test_every_rendered_pod_passes_restricted_and_a_broken_one_is_refused(testbed, namespace, storage: Storage) -> None:
    for name, pod in rendered_pods(storage, testbed).items():
        code, stderr = server_dry_run(testbed, namespace, pod)
        assert code == 0 and "violate" not in stderr.lower(), f"{name}: {stderr}"
        # The same pod with one restricted field undone is refused, so the check above means something.
        for undo in ("allowPrivilegeEscalation", "capabilities", "runAsNonRoot", "seccompProfile"):
            broken = copy.deepcopy(pod)
            for container in broken["spec"]["containers"] + broken["spec"].get("initContainers", []):
                container["securityContext"].pop(undo, None)
            broken["spec"].get("securityContext", {}).pop(undo, None)
            code, stderr = server_dry_run(testbed, namespace, broken)
            assert code != 0 and "violates PodSecurity \"restricted:latest\"" in stderr, f"{name} without {undo}: {stderr}"
