"""The API server rejects bad manifests with the field named (schema and CEL), and kubectl
knows the kinds: short names, the modelops category, printer columns, explain."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import ROOT, apply_docs, get_json, kubectl

pytestmark = pytest.mark.integration

SHA = "ab" * 32
MODEL = {
    "apiVersion": "modelops.dev/v1alpha1", "kind": "Model", "metadata": {"name": "digits"},
    "spec": {
        "storage": {"endpoint": "http://minio:9000", "bucket": "models", "credentialsSecret": {"name": "s3"}},
        "signature": {"inputs": [{"name": "input", "dataType": "FP32", "dims": [64]}],
                      "outputs": [{"name": "logits", "dataType": "FP32", "dims": [10]}]},
    },
}
VERSION = {
    "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "digits-v1"},
    "spec": {"model": "digits", "version": 1, "artifact": {"uri": "s3://models/digits/1/model.onnx", "format": "onnx", "sha256": SHA}},
}
DEPLOYMENT = {
    "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
    "spec": {"model": "digits"},
}


def edited(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the dotted `path` set to `value` (or removed when value is ...)."""
    out = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(leaf)
    else:
        node[leaf] = value
    return out


INVALID = [
    ("sha256 shape", edited(VERSION, "spec.artifact.sha256", "abc123"), "spec.artifact.sha256", "64 lowercase hexadecimal"),
    ("sha256 upper case", edited(VERSION, "spec.artifact.sha256", "AB" * 32), "spec.artifact.sha256", "sha256 digest"),
    ("sha256 missing", edited(VERSION, "spec.artifact.sha256", ...), "spec.artifact.sha256", "Required value"),
    ("artifact URI scheme", edited(VERSION, "spec.artifact.uri", "https://models/digits/1/model.onnx"), "spec.artifact.uri", "s3://<bucket>/<key>"),
    ("artifact URI without key", edited(VERSION, "spec.artifact.uri", "s3://models/"), "spec.artifact.uri", "S3 URI"),
    ("version zero", edited(VERSION, "spec.version", 0), "spec.version", "1 or greater"),
    ("negative version", edited(VERSION, "spec.version", -3), "spec.version", "1 or greater"),
    ("artifact format", edited(VERSION, "spec.artifact.format", "pickle"), "spec.artifact.format", "Unsupported value"),
    ("quantization", edited(VERSION, "spec.compression", {"quantization": "int4"}), "spec.compression.quantization", "Unsupported value"),
    ("pruning amount", edited(VERSION, "spec.compression", {"pruning": {"method": "structured", "amount": 0.99}}),
     "spec.compression.pruning.amount", "less than or equal to 0.95"),
    ("dataset URI", edited(VERSION, "spec.evaluation", {"datasetUri": "file:///tmp/x.npz", "metric": "top1-accuracy", "threshold": 0.5}),
     "spec.evaluation.datasetUri", "S3 URI"),
    ("metric", edited(VERSION, "spec.evaluation", {"datasetUri": "s3://models/e.npz", "metric": "f1", "threshold": 0.5}),
     "spec.evaluation.metric", "Unsupported value"),
    ("negative GPUs", edited(VERSION, "spec.scheduling", {"gpus": -1}), "spec.scheduling.gpus", "greater than or equal to 0"),
    ("Pinned without version", edited(DEPLOYMENT, "spec.versionPolicy", "Pinned"), "spec.version", "required when versionPolicy is Pinned"),
    ("Latest with version", edited(DEPLOYMENT, "spec.version", 2), "spec.version", "must not be set when versionPolicy is Latest"),
    ("Pinned to version zero", edited(edited(DEPLOYMENT, "spec.versionPolicy", "Pinned"), "spec.version", 0), "spec.version", "1 or greater"),
    ("negative replicas", edited(DEPLOYMENT, "spec.replicas", -1), "spec.replicas", "greater than or equal to 0"),
    ("unknown backend", edited(DEPLOYMENT, "spec.triton", {"backend": "tensorrt"}), "spec.triton.backend", "Unsupported value"),
    ("deployment name is not a DNS label", edited(DEPLOYMENT, "metadata.name", "1digits"), "metadata.name", "DNS label"),
    ("bucket name", edited(MODEL, "spec.storage.bucket", "Models_Bucket"), "spec.storage.bucket", "should match"),
    ("endpoint scheme", edited(MODEL, "spec.storage.endpoint", "minio:9000"), "spec.storage.endpoint", "http:// or https://"),
    ("tensor data type", edited(MODEL, "spec.signature.inputs", [{"name": "input", "dataType": "float", "dims": [64]}]),
     "spec.signature.inputs[0].dataType", "Unsupported value"),
    ("tensor dims", edited(MODEL, "spec.signature.outputs", [{"name": "logits", "dataType": "FP32", "dims": [0]}]),
     "spec.signature.outputs[0].dims", "-1 (variable) or 1 or greater"),
    ("no outputs", edited(MODEL, "spec.signature.outputs", []), "spec.signature.outputs", "at least 1 items"),
]


@pytest.mark.parametrize(("case", "manifest", "field", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_rejected_with_the_field_named(testbed, crds, namespace, case, manifest, field, message) -> None:
    result = kubectl(testbed, "create", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert field in result.stderr and message in result.stderr, result.stderr
    kind = manifest["kind"].lower()
    assert kubectl(testbed, "get", kind, "-n", namespace, "-o", "name").stdout.strip() == ""


def test_valid_manifests_and_the_samples_are_accepted(testbed, crds, namespace) -> None:
    result = kubectl(testbed, "apply", "--dry-run=server", "-n", namespace, "-f", str(ROOT / "config" / "samples"))
    assert result.stdout.count("(server dry run)") == len(list((ROOT / "config" / "samples").glob("*.yaml")))
    pinned = edited(edited(edited(DEPLOYMENT, "metadata.name", "pinned"), "spec.versionPolicy", "Pinned"), "spec.version", 1)
    apply_docs(testbed, namespace, [MODEL, VERSION, DEPLOYMENT, pinned])
    assert len(kubectl(testbed, "get", "modelops", "-n", namespace, "-o", "name").stdout.split()) == 4


def test_defaults_are_filled_by_the_api_server(testbed, crds, namespace) -> None:
    apply_docs(testbed, namespace, [MODEL, DEPLOYMENT])
    spec = get_json(testbed, namespace, "modeldeployment", "digits")["spec"]
    assert spec["versionPolicy"] == "Latest" and spec["replicas"] == 1
    assert spec["rollout"] == {"maxSurge": 1, "maxUnavailable": 0, "progressDeadlineSeconds": 600, "autoRollback": True}
    model = get_json(testbed, namespace, "model", "digits")["spec"]
    assert model["storage"]["region"] == "us-east-1" and model["storage"]["verifyTLS"] is True
    assert model["versionDefaults"]["compression"]["quantization"] == "int8-weight-only"
    assert model["versionDefaults"]["scheduling"]["gpus"] == 1


def test_model_version_spec_is_immutable(testbed, crds, namespace) -> None:
    apply_docs(testbed, namespace, [MODEL, VERSION])
    result = kubectl(testbed, "patch", "modelversion", "digits-v1", "-n", namespace, "--type=merge",
                     "-p", '{"spec": {"version": 2}}', check=False)
    assert result.returncode != 0 and "spec is immutable" in result.stderr
    # Metadata stays editable: labels are not part of the version.
    kubectl(testbed, "label", "modelversion", "digits-v1", "-n", namespace, "team=vision")


def test_short_names_category_and_columns(testbed, crds, namespace) -> None:
    apply_docs(testbed, namespace, [MODEL, VERSION, DEPLOYMENT])
    listed = kubectl(testbed, "get", "modelops", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == sorted([
        "model.modelops.dev/digits", "modelversion.modelops.dev/digits-v1", "modeldeployment.modelops.dev/digits",
    ])
    for short in ("mdl", "mv", "mdep"):
        assert kubectl(testbed, "get", short, "-n", namespace, "-o", "name").stdout.strip()
    header = kubectl(testbed, "get", "mv", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "VERSION", "PHASE", "READY", "AGE"]


def test_explain_teaches_the_api(testbed, crds) -> None:
    text = kubectl(testbed, "explain", "modelversion.spec.artifact.sha256").stdout
    assert "verified while streaming" in text
    text = kubectl(testbed, "explain", "modeldeployment.spec.versionPolicy").stdout
    assert "Latest" in text and "Pinned" in text


def test_status_subresource_is_separate(testbed, crds, namespace) -> None:
    apply_docs(testbed, namespace, [MODEL])
    with_status = edited(MODEL, "status", {"latestReadyVersion": 9})
    apply_docs(testbed, namespace, [with_status])
    assert "status" not in get_json(testbed, namespace, "model", "digits") or \
        get_json(testbed, namespace, "model", "digits")["status"].get("latestReadyVersion") != 9


def test_crds_in_the_repository_are_the_ones_served(testbed, crds) -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        committed = yaml.safe_load(path.read_text())
        served = get_json(testbed, "default", "crd", committed["metadata"]["name"])
        assert served["spec"]["versions"][0]["schema"] == committed["spec"]["versions"][0]["schema"], path.name
        assert Path(path).name.startswith("modelops.dev_")
