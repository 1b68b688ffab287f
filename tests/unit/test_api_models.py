"""The pydantic models read and write objects as the API server stores them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from modelops.api import ModelDeploymentSpec, ModelSpec, ModelVersionSpec
from modelops.api.model import Evaluation
from modelops.api.version import ModelVersionStatus
from tests.api_cases import APISERVER_ONLY, INVALID, VALID_EDITS, pydantic_loc

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def model_spec(**extra) -> dict:
    return {
        "storage": {"endpoint": "https://minio:9000", "bucket": "models", "credentialsSecret": {"name": "s3"}},
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
        {"model": "m", "version": 1, "artifact": {"uri": "s3://bkt/k", "format": "onnx", "sha256": SHA}, "future": 1}
    )
    assert spec.version == 1 and "future" not in spec.wire()


def test_version_overrides_are_all_optional() -> None:
    spec = ModelVersionSpec.model_validate(
        {"model": "m", "version": 2, "artifact": {"uri": "s3://bkt/k", "format": "torchscript", "sha256": SHA}}
    )
    assert spec.compression is None and spec.evaluation is None and spec.scheduling is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"model": "m", "version": 1, "artifact": {"uri": "s3://bkt/k", "format": "zip", "sha256": SHA}}, "format"),
        ({"model": "m", "version": 1, "artifact": {"uri": "s3://bkt/k", "format": "onnx"}}, "sha256"),
        ({"model": "M!", "version": 1, "artifact": {"uri": "s3://bkt/k", "format": "onnx", "sha256": SHA}}, "model"),
        (
            {"model": "m", "version": 1, "artifact": {"uri": "s3://bkt/k", "format": "onnx", "sha256": SHA},
             "compression": {"pruning": {"amount": 1.0}}},
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


SPEC_MODELS = {"Model": ModelSpec, "ModelVersion": ModelVersionSpec, "ModelDeployment": ModelDeploymentSpec}


@pytest.mark.parametrize(
    ("case", "manifest", "field", "message"),
    [c for c in INVALID if c[2].startswith("spec.")],
    ids=[c[0] for c in INVALID if c[2].startswith("spec.")],
)
def test_what_the_apiserver_refuses_the_models_refuse_at_the_same_field(case, manifest, field, message) -> None:
    with pytest.raises(ValidationError) as caught:
        SPEC_MODELS[manifest["kind"]].model_validate(manifest["spec"])
    # A defaulted field is named in Python's spelling; compare in the API's.
    locs = [tuple(to_camel(p) if isinstance(p, str) else p for p in error["loc"]) for error in caught.value.errors()]
    wanted = pydantic_loc(field)
    assert any(loc[: len(wanted)] == wanted for loc in locs), (case, locs)


def test_a_stored_http_model_parses_and_the_operator_reports_it() -> None:
    plain = SPEC_MODELS["Model"].model_validate(APISERVER_ONLY[0][1]["spec"]).storage
    assert plain.transport_problem() is not None and "spec.storage.insecure" in plain.transport_problem()
    allowed = plain.model_copy(update={"insecure": True})
    assert allowed.transport_problem() is None and "plain http" in (allowed.transport_warning() or "")
    unverified = plain.model_copy(update={"endpoint": "https://minio:9000", "verify_tls": False})
    assert unverified.transport_problem() is None and "verifyTLS is false" in (unverified.transport_warning() or "")
    assert plain.model_copy(update={"endpoint": "https://minio:9000"}).transport_warning() is None


@pytest.mark.parametrize(("case", "manifest"), VALID_EDITS, ids=[c[0] for c in VALID_EDITS])
def test_what_the_apiserver_accepts_the_models_accept(case, manifest) -> None:
    SPEC_MODELS[manifest["kind"]].model_validate(manifest["spec"])


@pytest.mark.parametrize(
    ("metric", "low", "high"),
    [("top1-accuracy", 0, 100), ("top1-agreement", 0, 1), ("cosine-similarity", 0, 1), ("max-abs-error", 0, None)],
)
def test_threshold_bounds_per_metric_are_inclusive(metric: str, low: float, high: float | None) -> None:
    def evaluation(threshold: float) -> Evaluation:
        return Evaluation.model_validate({"datasetUri": "s3://models/e.npz", "metric": metric, "threshold": threshold})

    assert evaluation(low).threshold == low
    with pytest.raises(ValidationError, match="threshold"):
        evaluation(low - 1e-9)
    if high is not None:
        assert evaluation(high).threshold == high
        with pytest.raises(ValidationError, match="threshold"):
            evaluation(high + 1e-9)
    with pytest.raises(ValidationError, match="threshold"):
        evaluation(float("nan"))


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        ({"method": "unstructured"}, "greater than 0"),
        ({"method": "structured", "amount": 0.0}, "greater than 0"),
        ({"method": "none", "amount": 0.5}, "0 or unset"),
    ],
)
def test_model_defaults_refuse_pruning_that_would_silently_do_nothing(wire: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        ModelSpec.model_validate(model_spec(versionDefaults={"compression": {"pruning": wire}}))
    assert caught.value.errors()[0]["loc"] == ("versionDefaults", "compression", "pruning", "amount")
