"""The pydantic models read and write objects as the API server stores them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelops.api import ModelDeploymentSpec, ModelSpec, ModelVersionSpec
from modelops.api.version import ModelVersionStatus

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def model_spec(**extra) -> dict:
    return {
        "storage": {"endpoint": "http://minio:9000", "bucket": "models", "credentialsSecret": {"name": "s3"}},
        "signature": {
            "inputs": [{"name": "x", "dataType": "FP32", "dims": [64]}],
            "outputs": [{"name": "y", "dataType": "FP32", "dims": [10]}],
            "maxBatchSize": 8,
        },
        **extra,
    }


def test_model_defaults_are_filled() -> None:
    spec = ModelSpec.model_validate(model_spec())
    assert spec.storage.region == "us-east-1" and spec.storage.verify_tls is True
    assert spec.version_defaults.compression.quantization == "int8-weight-only"
    assert spec.version_defaults.compression.pruning.method == "none"
    assert spec.version_defaults.scheduling.gpus == 1
    assert spec.version_defaults.evaluation is None


def test_wire_format_is_camel_case_and_round_trips() -> None:
    raw = model_spec(versionDefaults={"scheduling": {"gpus": 0, "nodeSelector": {"pool": "gpu"}}})
    spec = ModelSpec.model_validate(raw)
    wire = spec.wire()
    assert wire["storage"]["credentialsSecret"] == {"name": "s3"}
    assert wire["storage"]["verifyTLS"] is True
    assert wire["versionDefaults"]["scheduling"]["nodeSelector"] == {"pool": "gpu"}
    assert ModelSpec.model_validate(wire) == spec


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    spec = ModelVersionSpec.model_validate(
        {"model": "m", "version": 1, "artifact": {"uri": "s3://b/k", "format": "onnx", "sha256": SHA}, "future": 1}
    )
    assert spec.version == 1 and "future" not in spec.wire()


def test_version_overrides_are_all_optional() -> None:
    spec = ModelVersionSpec.model_validate(
        {"model": "m", "version": 2, "artifact": {"uri": "s3://b/k", "format": "torchscript", "sha256": SHA}}
    )
    assert spec.compression is None and spec.evaluation is None and spec.scheduling is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"model": "m", "version": 1, "artifact": {"uri": "s3://b/k", "format": "zip", "sha256": SHA}}, "format"),
        ({"model": "m", "version": 1, "artifact": {"uri": "s3://b/k", "format": "onnx"}}, "sha256"),
        ({"model": "M!", "version": 1, "artifact": {"uri": "s3://b/k", "format": "onnx", "sha256": SHA}}, "model"),
        (
            {"model": "m", "version": 1, "artifact": {"uri": "s3://b/k", "format": "onnx", "sha256": SHA},
             "compression": {"pruning": {"amount": 0.99}}},
            "amount",
        ),
    ],
)
def test_bad_input_names_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ModelVersionSpec.model_validate(raw)
    assert field in str(err.value)


def test_deployment_defaults() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": "digits"})
    assert spec.version_policy == "Latest" and spec.version is None
    assert spec.replicas == 1
    assert spec.rollout.max_surge == 1 and spec.rollout.max_unavailable == 0
    assert spec.rollout.progress_deadline_seconds == 600 and spec.rollout.auto_rollback
    assert spec.triton.backend == "onnxruntime" and spec.triton.image is None
    assert spec.scheduling.gpus is None


def test_rollout_accepts_percentages() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": "d", "rollout": {"maxSurge": "25%", "maxUnavailable": 0}})
    assert spec.rollout.wire()["maxSurge"] == "25%"


def test_status_parses_what_the_operator_writes() -> None:
    status = ModelVersionStatus.model_validate(
        {"phase": "Ready", "jobName": "v1-compress", "report": {"ratio": 3.9, "fromCache": False},
         "conditions": [{"type": "Ready", "status": "True", "reason": "Compressed", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}
    )
    assert status.phase == "Ready" and status.report.ratio == 3.9
    assert status.conditions[0].reason == "Compressed"
