"""The I/O around the reuse decision: read a cache entry, HEAD what it names, record a
measurement. Used by the operator before it creates a Job and by the Job before it compresses;
the decision itself is `modelops.reuse.decide`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from modelops import reuse
from modelops.api.model import Compression, Evaluation
from modelops.api.version import CompressedArtifact, MetricReport
from modelops.cachekey import COMPRESSOR_VERSION
from modelops.storage import ObjectInfo, ObjectNotFound, ObjectStore


class Reads(Protocol):
    """What a look-up reads with: an ObjectStore, or the operator's memo of reads of one (`handlers.reads.StorageReads`)."""

    def head(self, uri: str) -> ObjectInfo: ...

    def read_bytes(self, uri: str) -> bytes: ...


def head(store: Reads, uri: str) -> ObjectInfo | None:
    """The object's size, ETag and recorded sha256; None when there is no such object."""
    try:
        return store.head(uri)
    except ObjectNotFound:
        return None


def read_json(store: Reads, uri: str) -> dict[str, Any] | None:
    """A small JSON object, or None when it is missing or not a JSON object."""
    try:
        value = json.loads(store.read_bytes(uri))
    except ObjectNotFound:
        return None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def compression_record(report: dict[str, Any] | None) -> reuse.CachedCompression | None:
    """What report.json says about the compression it describes."""
    if report is None or report.get("outcome") not in ("Passed", "Rejected"):
        return None
    try:
        artifact = CompressedArtifact.model_validate(report.get("artifact") or {})
    except ValidationError:
        artifact = None
    return reuse.CachedCompression(
        source_sha256=(report.get("source") or {}).get("sha256"),
        recipe_hash=report.get("recipeHash"),
        compressor_version=report.get("compressorVersion"),
        artifact=artifact,
    )


@dataclass(frozen=True)
class Lookup:
    """A cache entry as found in storage, and the decision on it."""

    decision: reuse.Decision
    report: dict[str, Any] | None
    dataset: reuse.ObjectInfo | None


def look_up(
    store: Reads,
    prefix: str,
    source_sha256: str,
    recipe: Compression,
    evaluation: Evaluation | None,
    compressor_version: str = COMPRESSOR_VERSION,
) -> Lookup:
    """HEAD the dataset, read the entry at `prefix`, HEAD its artifact, read the measurement,
    and decide. Storage errors other than a missing object propagate."""
    dataset = head(store, evaluation.dataset_uri) if evaluation is not None else None
    request = reuse.Request(source_sha256, recipe, compressor_version, evaluation, dataset)
    if evaluation is not None and dataset is None:
        return Lookup(reuse.decide(request, None, None, None), None, None)
    report = read_json(store, prefix + reuse.REPORT_FILE)
    record = compression_record(report)
    artifact = head(store, record.artifact.uri) if record is not None and record.artifact is not None else None
    measurement = None
    if evaluation is not None and dataset is not None and artifact is not None and record is not None and record.artifact:
        stored = read_json(store, reuse.measurement_uri(prefix, evaluation, dataset.etag, record.artifact.sha256))
        try:
            measurement = MetricReport.model_validate(stored) if stored is not None else None
        except ValidationError:
            measurement = None
    return Lookup(reuse.decide(request, record, artifact, measurement), report, dataset)


def reused_report(lookup: Lookup, evaluation: Evaluation | None) -> dict[str, Any]:
    """The report for a version that the cache serves whole (Ready or Rejected without a Job):
    the compression record with this version's own gate in place of the record's."""
    decision = lookup.decision
    assert decision.action in (reuse.Action.READY, reuse.Action.REJECT) and lookup.report is not None
    report = {key: value for key, value in lookup.report.items() if key not in ("metric", "evaluation")}
    report.update(
        outcome="Passed" if decision.action == reuse.Action.READY else "Rejected",
        reason=str(decision.reason),
        message=decision.message,
        metric=decision.metric.wire() if decision.metric is not None else None,
        evaluation=evaluation.wire() if evaluation is not None else None,
        fromCache=True,
    )
    return report


def write_measurement(
    store: ObjectStore, prefix: str, evaluation: Evaluation, artifact_sha256: str, metric: MetricReport
) -> None:
    """Record a measurement of these compressed bytes under the dataset object it was taken on."""
    assert metric.dataset is not None and metric.dataset.etag
    uri = reuse.measurement_uri(prefix, evaluation, metric.dataset.etag, artifact_sha256)
    store.upload_bytes(json.dumps(metric.wire(), indent=2, sort_keys=True).encode(), uri, "application/json")
