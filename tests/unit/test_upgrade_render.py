"""An upgrade of the operator from the last release (LAST_RELEASE) restarts no Triton pod: for
the same objects, HEAD renders the same Triton pod template as the release did. A change here
rolls every Triton Deployment on upgrade; avoid it, or say so in the release notes
(docs/install.md, upgrades) and update the expected differences below."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests import crdcompat

pytestmark = pytest.mark.unit

SCRIPT = crdcompat.ROOT / "tests" / "render_templates.py"
MODEL = {"spec": {
    "storage": {"endpoint": "https://minio:9000", "bucket": "models", "credentialsSecret": {"name": "s3-creds"}},
    "signature": {"inputs": [{"name": "x", "dataType": "FP32", "dims": [64]}],
                  "outputs": [{"name": "y", "dataType": "FP32", "dims": [10]}], "maxBatchSize": 8},
}}
VERSION = {"metadata": {"name": "digits-v1", "creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": {"model": "digits", "version": 1},
           "status": {"phase": "Ready", "compressedArtifact": {"uri": "s3://models/modelops-cache/1/model.onnx",
                                                               "sha256": "cd" * 32, "format": "onnx"}}}
SPECS = {
    "plain": {"replicas": 1},
    "python backend, batching": {"replicas": 2, "triton": {"backend": "python", "dynamicBatching": {"enabled": True}}},
    "gpu": {"replicas": 1, "scheduling": {"gpus": 1}},
    "canary": {"replicas": 3, "rollout": {"strategy": "Canary"}},
    "autoscaled by the operator": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "inferences-per-second", "target": 10}},
    "autoscaled by an hpa": {"autoscaling": {"provider": "hpa", "minReplicas": 1, "maxReplicas": 4, "metric": "queue-time-ratio",
                                             "target": 0.5}},
    "suspended": {"replicas": 2, "suspended": True},
}
RETRIED = {"plain, retried": {"replicas": 1}}


def cases() -> list[dict]:
    def one(name: str, spec: dict, annotations: dict | None = None) -> dict:
        return {"name": name, "model": MODEL, "version": VERSION, "deployment": {
            "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "digits", "namespace": "ns", "uid": "uid-md", "annotations": annotations or {}},
            "spec": {"model": "digits", **spec}}}

    return ([one(name, spec) for name, spec in SPECS.items()]
            + [one(name, spec, {"modelops.dev/retry": "1"}) for name, spec in RETRIED.items()])


def templates(operator_dir: Path) -> dict:
    result = subprocess.run([sys.executable, str(SCRIPT)], input=json.dumps(cases()), capture_output=True, text=True,
                            env={"PYTHONPATH": str(operator_dir), "PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_head_renders_the_triton_pod_templates_of_the_last_release(tmp_path: Path) -> None:
    release = crdcompat.last_release()
    archive = subprocess.run(["git", "-C", str(crdcompat.ROOT), "archive", "--format=tar", release, "operator"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    old, new = templates(tmp_path / "operator"), templates(crdcompat.ROOT / "operator")
    assert sorted(old) == sorted(new) == sorted([*SPECS, *RETRIED])
    changed = [name for name in old if old[name] != new[name]]
    assert changed == [], f"the pod template changed since {release} for: {changed}; every such Triton Deployment rolls on upgrade"
