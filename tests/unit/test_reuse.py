"""The cache-reuse decision: a table over every field it covers, and the gate's rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modelops.api.model import Compression, Evaluation
from modelops.api.version import CompressedArtifact, DatasetReport, MetricReport, VersionReason
from modelops.cachekey import COMPRESSOR_VERSION, normalize_recipe, recipe_hash
from modelops.reuse import (
    Action,
    CachedCompression,
    ObjectInfo,
    Reason,
    Request,
    decide,
    gate_passes,
    measurement_key,
)

pytestmark = pytest.mark.unit

SOURCE = "ab" * 32
ARTIFACT_SHA = "cd" * 32
DATASET_URI = "s3://models/digits/eval.npz"
RECIPE = normalize_recipe({"quantization": "int8-weight-only"})
GATE = Evaluation(dataset_uri=DATASET_URI, metric="top1-accuracy", threshold=0.5)
DATASET = ObjectInfo(size=1000, etag="etag-1", sha256="ee" * 32)
ARTIFACT = CompressedArtifact(uri="s3://models/modelops-cache/k/model.onnx", sha256=ARTIFACT_SHA, bytes=100, format="onnx", etag="a-1")
STORED_ARTIFACT = ObjectInfo(size=100, etag="a-1", sha256=ARTIFACT_SHA)
RECORD = CachedCompression(SOURCE, recipe_hash(RECIPE), COMPRESSOR_VERSION, ARTIFACT)
# Measured: 97.0% -> 96.7%, a drop of 0.3 points, on DATASET.
MEASURED = MetricReport(
    name="top1-accuracy", threshold=0.5, parent=97.0, compressed=96.7, drop=0.3, passed=True,
    dataset=DatasetReport(uri=DATASET_URI, etag="etag-1", sha256="ee" * 32, samples=360),
)
REQUEST = Request(SOURCE, RECIPE, COMPRESSOR_VERSION, GATE, DATASET)


def gate(**changes) -> Evaluation:
    return GATE.model_copy(update=changes)


def measured(**changes) -> MetricReport:
    return MEASURED.model_copy(update=changes)


def dataset_report(**changes) -> DatasetReport:
    return MEASURED.dataset.model_copy(update=changes)


# (name, request, record, stored artifact, measurement, action, reason)
CASES = [
    ("everything matches", REQUEST, RECORD, STORED_ARTIFACT, MEASURED, Action.READY, Reason.COMPRESSED_FROM_CACHE),
    # the dataset: checked before anything is reused
    ("dataset missing", replace(REQUEST, dataset=None), RECORD, STORED_ARTIFACT, MEASURED, Action.FAIL, Reason.DATASET_NOT_FOUND),
    ("dataset missing, no cache", replace(REQUEST, dataset=None), None, None, None, Action.FAIL, Reason.DATASET_NOT_FOUND),
    # the source digest, the recipe, the compressor version
    ("no cache entry", REQUEST, None, None, None, Action.COMPRESS, Reason.CACHE_MISS),
    ("record without artifact", REQUEST, replace(RECORD, artifact=None), None, None, Action.COMPRESS, Reason.CACHE_MISS),
    ("other source digest", replace(REQUEST, source_sha256="12" * 32), RECORD, STORED_ARTIFACT, MEASURED, Action.COMPRESS, Reason.CACHE_MISMATCH),
    ("other recipe", replace(REQUEST, recipe=normalize_recipe({"quantization": "fp16"})), RECORD, STORED_ARTIFACT, MEASURED, Action.COMPRESS, Reason.CACHE_MISMATCH),
    ("other compressor version", replace(REQUEST, compressor_version="9.9.9"), RECORD, STORED_ARTIFACT, MEASURED, Action.COMPRESS, Reason.CACHE_MISMATCH),
    # the cached artifact, verified against its record
    ("cached artifact deleted", REQUEST, RECORD, None, MEASURED, Action.COMPRESS, Reason.CACHED_ARTIFACT_MISSING),
    ("cached artifact truncated", REQUEST, RECORD, replace(STORED_ARTIFACT, size=99), MEASURED, Action.COMPRESS, Reason.CACHED_ARTIFACT_CHANGED),
    ("cached artifact rewritten", REQUEST, RECORD, replace(STORED_ARTIFACT, etag="a-2"), MEASURED, Action.COMPRESS, Reason.CACHED_ARTIFACT_CHANGED),
    ("cached artifact sha256 metadata differs", REQUEST, RECORD, replace(STORED_ARTIFACT, sha256="00" * 32), MEASURED, Action.COMPRESS, Reason.CACHED_ARTIFACT_CHANGED),
    ("cached artifact without sha256 metadata", REQUEST, RECORD, replace(STORED_ARTIFACT, sha256=None), MEASURED, Action.READY, Reason.COMPRESSED_FROM_CACHE),
    ("no ETag recorded", REQUEST, replace(RECORD, artifact=ARTIFACT.model_copy(update={"etag": None})), STORED_ARTIFACT, MEASURED, Action.COMPRESS, Reason.CACHED_ARTIFACT_CHANGED),
    # no evaluation: the compression alone decides
    ("no gate", replace(REQUEST, evaluation=None, dataset=None), RECORD, STORED_ARTIFACT, None, Action.READY, Reason.COMPRESSED_FROM_CACHE),
    # the evaluation: dataset URI, dataset digest, metric, threshold
    ("never measured", REQUEST, RECORD, STORED_ARTIFACT, None, Action.EVALUATE, Reason.NOT_MEASURED),
    ("other dataset URI", replace(REQUEST, evaluation=gate(dataset_uri="s3://models/other.npz")), RECORD, STORED_ARTIFACT, MEASURED, Action.EVALUATE, Reason.DATASET_CHANGED),
    ("dataset replaced in place (ETag)", replace(REQUEST, dataset=replace(DATASET, etag="etag-2")), RECORD, STORED_ARTIFACT, MEASURED, Action.EVALUATE, Reason.DATASET_CHANGED),
    ("dataset replaced in place (sha256)", replace(REQUEST, dataset=replace(DATASET, sha256="ff" * 32)), RECORD, STORED_ARTIFACT, MEASURED, Action.EVALUATE, Reason.DATASET_CHANGED),
    ("dataset without sha256 metadata, same ETag", replace(REQUEST, dataset=replace(DATASET, sha256=None)), RECORD, STORED_ARTIFACT, MEASURED, Action.READY, Reason.COMPRESSED_FROM_CACHE),
    ("dataset without ETag", replace(REQUEST, dataset=replace(DATASET, etag="")), RECORD, STORED_ARTIFACT, measured(dataset=dataset_report(etag="")), Action.EVALUATE, Reason.DATASET_CHANGED),
    ("measurement records no dataset", REQUEST, RECORD, STORED_ARTIFACT, measured(dataset=None), Action.EVALUATE, Reason.DATASET_CHANGED),
    ("measurement without values", REQUEST, RECORD, STORED_ARTIFACT, measured(compressed=None, drop=None), Action.EVALUATE, Reason.NOT_MEASURED),
    ("top-1 measurement without a drop", REQUEST, RECORD, STORED_ARTIFACT, measured(drop=None), Action.EVALUATE, Reason.NOT_MEASURED),
    ("other metric", replace(REQUEST, evaluation=gate(metric="top1-agreement", threshold=0.99)), RECORD, STORED_ARTIFACT, MEASURED, Action.EVALUATE, Reason.NOT_MEASURED),
    ("stricter threshold that the measurement fails", replace(REQUEST, evaluation=gate(threshold=0.1)), RECORD, STORED_ARTIFACT, MEASURED, Action.REJECT, VersionReason.ACCURACY_GATE_REJECTED),
    ("stricter threshold that it still passes", replace(REQUEST, evaluation=gate(threshold=0.3)), RECORD, STORED_ARTIFACT, MEASURED, Action.READY, Reason.COMPRESSED_FROM_CACHE),
    ("looser threshold after a rejection", replace(REQUEST, evaluation=gate(threshold=2.0)), RECORD, STORED_ARTIFACT, measured(passed=False, threshold=0.1), Action.READY, Reason.COMPRESSED_FROM_CACHE),
]


@pytest.mark.parametrize(
    ("request_", "record", "artifact", "measurement", "action", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_decision_covers_every_field(request_, record, artifact, measurement, action, reason) -> None:
    decision = decide(request_, record, artifact, measurement)
    assert (decision.action, decision.reason) == (action, reason), decision.message
    if action in (Action.READY, Action.REJECT) and request_.evaluation is not None:
        assert decision.metric is not None and decision.metric.threshold == request_.evaluation.threshold
        assert decision.metric.passed is (action == Action.READY)
    else:
        assert decision.metric is None


def test_a_missing_dataset_is_named_by_field_and_uri() -> None:
    decision = decide(replace(REQUEST, dataset=None), RECORD, STORED_ARTIFACT, MEASURED)
    assert decision.message.startswith("evaluation.datasetUri:") and DATASET_URI in decision.message


def test_a_rejection_from_the_record_quotes_the_values_and_the_new_threshold() -> None:
    decision = decide(replace(REQUEST, evaluation=gate(threshold=0.1)), RECORD, STORED_ARTIFACT, MEASURED)
    assert "dropped 0.30 points" in decision.message and "allowed drop 0.1" in decision.message


@pytest.mark.parametrize(
    ("metric", "threshold", "compressed", "drop", "passes"),
    [
        ("top1-accuracy", 0.5, 96.0, 0.5, True),
        ("top1-accuracy", 0.5, 96.0, 0.5000001, False),
        ("top1-accuracy", 0.5, 96.0, -1.0, True),
        ("top1-accuracy", 0.5, 96.0, None, False),
        ("top1-agreement", 0.99, 0.99, None, True),
        ("top1-agreement", 0.99, 0.98, None, False),
        ("cosine-similarity", 0.999, 0.9995, None, True),
        ("cosine-similarity", 0.999, None, None, False),
        ("max-abs-error", 0.01, 0.01, None, True),
        ("max-abs-error", 0.01, 0.02, None, False),
        ("no-such-metric", 1.0, 0.5, 0.0, False),
    ],
)
def test_gate_rule(metric, threshold, compressed, drop, passes) -> None:
    assert gate_passes(metric, threshold, compressed, drop) is passes


def test_the_measurement_key_changes_with_every_field_it_covers() -> None:
    base = measurement_key(GATE, "etag-1", ARTIFACT_SHA)
    assert base == measurement_key(gate(threshold=0.1), "etag-1", ARTIFACT_SHA)  # thresholds share a measurement
    assert len({
        base,
        measurement_key(gate(dataset_uri="s3://models/other.npz"), "etag-1", ARTIFACT_SHA),
        measurement_key(gate(metric="max-abs-error"), "etag-1", ARTIFACT_SHA),
        measurement_key(GATE, "etag-2", ARTIFACT_SHA),
        measurement_key(GATE, "etag-1", "00" * 32),
    }) == 5


def test_an_unnormalised_recipe_in_the_request_still_matches() -> None:
    spelled = Compression.model_validate({"quantization": "int8-weight-only", "pruning": {"method": "none"}})
    decision = decide(replace(REQUEST, recipe=spelled), RECORD, STORED_ARTIFACT, MEASURED)
    assert decision.action == Action.READY
