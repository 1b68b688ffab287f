"""The cache-reuse decision: may a cached compression, and a recorded measurement, stand in for
the work a ModelVersion asks for?

One pure function, `decide`, used by the operator (before it creates a Job) and by the
compression Job (before it compresses). Nothing here does I/O: the callers HEAD and read the
objects and pass what they found.

A cache entry lives under `modelops-cache/<cache key>/`: the compressed artifact, `report.json`
(the compression record, written last) and `evaluations/<measurement key>.json`, one
`MetricReport` per (artifact sha256, dataset URI, dataset ETag, metric). The compression is reused when the
source digest, the normalised recipe and the compressor version match and the artifact is
unchanged in storage (same size, ETag and sha256 metadata as recorded when it was written).
The gate is reused only from a measurement on the same dataset object: same URI, same ETag,
and the same sha256 wherever both sides know it. The recorded values are judged against the
version's own threshold, so a stricter threshold that the values fail is a rejection without a
Job, and a looser one a pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from modelops.api.model import Compression, Evaluation
from modelops.api.version import CompressedArtifact, DatasetReport, MetricReport, VersionReason
from modelops.cachekey import canonical_json, recipe_hash

REPORT_FILE = "report.json"
EVALUATIONS_DIR = "evaluations/"
# Float noise must not turn "exactly at the threshold" into a rejection.
GATE_TOLERANCE = 1e-9


class Action(StrEnum):
    COMPRESS = "Compress"  # no usable compression: run the whole Job
    EVALUATE = "Evaluate"  # reuse the compression, measure on the version's own dataset
    READY = "Ready"  # reuse both: Ready without a Job
    REJECT = "Reject"  # the recorded measurement fails this version's threshold
    FAIL = "Fail"  # the request cannot be met (its dataset is missing)


class Reason(StrEnum):
    """Condition reasons of the reuse decision and of storage answers the operator sees."""

    COMPRESSED_FROM_CACHE = "CompressedFromCache"
    DATASET_NOT_FOUND = "DatasetNotFound"
    CACHE_MISS = "CacheMiss"
    CACHE_MISMATCH = "CacheRecordMismatch"
    CACHED_ARTIFACT_MISSING = "CachedArtifactMissing"
    CACHED_ARTIFACT_CHANGED = "CachedArtifactChanged"
    NOT_MEASURED = "EvaluationNotCached"
    DATASET_CHANGED = "DatasetChanged"
    EVALUATED_FROM_CACHE = "CachedCompressionEvaluated"
    INVALID_ARTIFACT_URI = "InvalidArtifactUri"
    ACCESS_DENIED = "AccessDenied"


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD says about an object: `storage.ObjectStore.head` returns it, and the decision
    here compares it with what a cache entry recorded."""

    size: int
    etag: str
    sha256: str | None = None


@dataclass(frozen=True)
class Request:
    """What a ModelVersion asks for, normalised. `dataset` is the HEAD of the evaluation's
    dataset, None when there is no such object (or no evaluation)."""

    source_sha256: str
    recipe: Compression
    compressor_version: str
    evaluation: Evaluation | None = None
    dataset: ObjectInfo | None = None


@dataclass(frozen=True)
class CachedCompression:
    """The compression record of a cache entry (from report.json)."""

    source_sha256: str | None
    recipe_hash: str | None
    compressor_version: str | None
    artifact: CompressedArtifact | None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason | VersionReason
    message: str
    # The measurement judged against this version's threshold (READY and REJECT with a gate).
    metric: MetricReport | None = None


def measurement_key(evaluation: Evaluation, dataset_etag: str, artifact_sha256: str) -> str:
    """The name of the measurement of `evaluation.metric` on this dataset object, for these
    compressed bytes (a recompressed entry does not inherit the old artifact's measurements)."""
    material = {
        "artifact": artifact_sha256,
        "datasetEtag": dataset_etag,
        "datasetUri": evaluation.dataset_uri,
        "metric": evaluation.metric,
    }
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()


def measurement_uri(prefix: str, evaluation: Evaluation, dataset_etag: str, artifact_sha256: str) -> str:
    return f"{prefix}{EVALUATIONS_DIR}{measurement_key(evaluation, dataset_etag, artifact_sha256)}.json"


def gate_passes(metric: str, threshold: float, compressed: float | None, drop: float | None) -> bool:
    """The accuracy gate's rule. top1-accuracy: the drop in points is at most the threshold;
    top1-agreement and cosine-similarity: at least the threshold; max-abs-error: at most."""
    if metric == "top1-accuracy":
        return drop is not None and drop <= threshold + GATE_TOLERANCE
    if compressed is None:
        return False
    if metric in ("top1-agreement", "cosine-similarity"):
        return compressed >= threshold - GATE_TOLERANCE
    if metric == "max-abs-error":
        return compressed <= threshold + GATE_TOLERANCE
    return False


def _has_values(measurement: MetricReport) -> bool:
    """A measurement that can be judged: a value, and for top-1 accuracy the drop."""
    return measurement.compressed is not None and (measurement.name != "top1-accuracy" or measurement.drop is not None)


def judged(measurement: MetricReport, threshold: float) -> MetricReport:
    """The measurement with this threshold applied."""
    passed = gate_passes(measurement.name, threshold, measurement.compressed, measurement.drop)
    return measurement.model_copy(update={"threshold": threshold, "passed": passed})


def same_dataset(recorded: DatasetReport | None, uri: str, current: ObjectInfo) -> bool:
    """The measurement was taken on exactly this object: same URI and ETag, and the same
    sha256 wherever both sides know it."""
    if recorded is None or recorded.uri != uri or not current.etag or recorded.etag != current.etag:
        return False
    return recorded.sha256 is None or current.sha256 is None or recorded.sha256 == current.sha256


def artifact_unchanged(recorded: CompressedArtifact, current: ObjectInfo | None) -> str | None:
    """Why the cached artifact in storage is not the one recorded, or None when it is."""
    if current is None:
        return f"the cached artifact {recorded.uri} is gone"
    if current.size != recorded.bytes:
        return f"the cached artifact {recorded.uri} has {current.size} bytes, {recorded.bytes} were recorded"
    if not recorded.etag:
        return f"no ETag was recorded for the cached artifact {recorded.uri}, so it cannot be verified"
    if current.etag != recorded.etag:
        return f"the cached artifact {recorded.uri} was rewritten (ETag {current.etag}, {recorded.etag} recorded)"
    if current.sha256 is not None and current.sha256 != recorded.sha256:
        return f"the cached artifact {recorded.uri} carries sha256 {current.sha256}, {recorded.sha256} was recorded"
    return None


def decide(
    request: Request,
    compression: CachedCompression | None,
    artifact: ObjectInfo | None,
    measurement: MetricReport | None,
) -> Decision:
    """Whether the cache may stand in for this request, and for how much of it.

    `artifact` is the HEAD of the artifact the record names; `measurement` the recorded
    measurement at `measurement_uri` for the request's evaluation and dataset, if any.
    """
    evaluation = request.evaluation
    if evaluation is not None and request.dataset is None:
        return Decision(
            Action.FAIL,
            Reason.DATASET_NOT_FOUND,
            f"evaluation.datasetUri: no object at {evaluation.dataset_uri}; upload the dataset or fix the URI",
        )
    if compression is None or compression.artifact is None:
        return Decision(Action.COMPRESS, Reason.CACHE_MISS, "no earlier compression of this artifact with this recipe")
    wanted = {
        "source digest": request.source_sha256,
        "recipe": recipe_hash(request.recipe),
        "compressor version": request.compressor_version,
    }
    found = {
        "source digest": compression.source_sha256,
        "recipe": compression.recipe_hash,
        "compressor version": compression.compressor_version,
    }
    for field, value in wanted.items():
        if found[field] != value:
            return Decision(
                Action.COMPRESS, Reason.CACHE_MISMATCH, f"the cache entry was made for another {field}; compressing again"
            )
    problem = artifact_unchanged(compression.artifact, artifact)
    if problem is not None:
        reason = Reason.CACHED_ARTIFACT_MISSING if artifact is None else Reason.CACHED_ARTIFACT_CHANGED
        return Decision(Action.COMPRESS, reason, f"{problem}; compressing again")
    if evaluation is None:
        return Decision(Action.READY, Reason.COMPRESSED_FROM_CACHE, "reused an identical earlier compression")
    assert request.dataset is not None
    if measurement is None or measurement.name != evaluation.metric or not _has_values(measurement):
        return Decision(
            Action.EVALUATE,
            Reason.NOT_MEASURED,
            f"reusing the earlier compression; {evaluation.metric} was never measured on {evaluation.dataset_uri} "
            "as it is now, so the gate runs on it",
        )
    if not same_dataset(measurement.dataset, evaluation.dataset_uri, request.dataset):
        return Decision(
            Action.EVALUATE,
            Reason.DATASET_CHANGED,
            f"reusing the earlier compression; {evaluation.dataset_uri} changed since it was measured, so the gate runs again",
        )
    metric = judged(measurement, evaluation.threshold)
    if metric.passed:
        return Decision(
            Action.READY,
            Reason.COMPRESSED_FROM_CACHE,
            f"reused an identical earlier compression and its {evaluation.metric} measured on the same dataset",
            metric,
        )
    return Decision(
        Action.REJECT,
        VersionReason.ACCURACY_GATE_REJECTED,
        f"{explain(metric)}, as measured on the same dataset for an identical earlier compression",
        metric,
    )


def explain(metric: MetricReport) -> str:
    """One phrase with the measured values against the threshold."""
    if metric.name == "top1-accuracy" and metric.drop is not None:
        verb = "dropped" if metric.drop >= 0 else "rose"
        before = f" ({metric.parent:.2f}% -> {metric.compressed:.2f}%)" if metric.parent is not None and metric.compressed is not None else ""
        return f"top-1 accuracy {verb} {abs(metric.drop):.2f} points{before}; allowed drop {metric.threshold:g}"
    if metric.name == "max-abs-error":
        return f"max-abs-error {metric.compressed:.6g}; allowed at most {metric.threshold:g}"
    return f"{metric.name} {metric.compressed:.6f}; required at least {metric.threshold:g}"
