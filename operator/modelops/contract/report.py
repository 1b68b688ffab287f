"""The compression Job's report, shared by the Job (which builds it) and the operator (which
reads it from the termination message or from report.json in the compression cache)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from modelops.api.trust import ProvenanceReason
from modelops.api.types import ApiModel, StepTiming
from modelops.api.version import (
    LEGACY_VERSION_REASONS,
    CompressedArtifact,
    CompressionReport,
    LatencyReport,
    ReportOutcome,
    VersionReason,
)
from modelops.reuse import Reason as CacheReason


class JobReason(StrEnum):
    """The reasons a compression Job reports; the operator shows them on the ModelVersion.

    A rejection by the gate is `VersionReason.ACCURACY_GATE_REJECTED`, the name both sides use."""

    ACCURACY_GATE_PASSED = "AccuracyGatePassed"
    SIGNATURE_MISMATCH = "SignatureMismatch"
    UNSUPPORTED_RECIPE = "UnsupportedRecipe"
    INVALID_RECIPE = "InvalidRecipe"
    INVALID_ARGUMENTS = "InvalidArguments"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    ARTIFACT_NOT_FOUND = "ArtifactNotFound"
    ACCESS_DENIED = "AccessDenied"
    STORAGE_UNREACHABLE = "StorageUnreachable"
    STORAGE_ERROR = "StorageError"
    TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
    TOO_LARGE = "InputTooLarge"
    BAD_DATASET = "BadDataset"
    UNREADABLE_ARTIFACT = "UnreadableArtifact"
    UNSUPPORTED_MODEL = "UnsupportedModel"
    OUT_OF_MEMORY = "OutOfMemory"
    INTERNAL_ERROR = "InternalError"


# Every reason a report may carry: the Job's own, the gate's rejection (a ModelVersion reason)
# the cache decision's (a dataset that is gone, a cached compression evaluated again) and the
# provenance checks' (a source whose bytes are not the signed ones).
ReportReason = JobReason | VersionReason | CacheReason | ProvenanceReason


def reported_reason(text: str | None) -> ReportReason | None:
    """The reason a report names, as its enum; an older name reads as the one it means now, and
    a name no enum knows (a newer Job's) is None."""
    if not text:
        return None
    if text in LEGACY_VERSION_REASONS:
        return LEGACY_VERSION_REASONS[text]
    for kind in (VersionReason, JobReason, CacheReason, ProvenanceReason):
        if text in kind.__members__.values():
            return kind(text)
    return None


class SourceReport(ApiModel):
    """The source artifact the Job read."""

    uri: str
    sha256: str
    bytes: int
    format: str


class JobLatencyReport(LatencyReport):
    """The latency block of report.json: the status's, and how it was measured on each side."""

    model_config = LatencyReport.model_config | {"extra": "allow"}

    threads: int | None = None
    rounds: int | None = None
    spread_before: float | None = None
    spread_after: float | None = None
    runtime_before: str | None = None
    runtime_after: str | None = None


class JobReport(CompressionReport):
    """The Job's report: report.json holds it whole, the termination message its contract keys
    (`compress.report.COMPACT_KEYS`). What the ModelVersion shows is the `CompressionReport` it
    extends. Keys this model does not name (a newer Job's, an older cache entry's) are kept."""

    model_config = CompressionReport.model_config | {"extra": "allow"}

    outcome: ReportOutcome
    reason: ReportReason
    message: str = ""
    artifact: CompressedArtifact | None = None
    source: SourceReport | None = None
    latency: JobLatencyReport | None = None
    interface: dict[str, Any] | None = Field(None, description="The artifact's tensors (modelops.contract.interface).")
    recipe: dict[str, Any] | None = None
    resolved_recipe: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    cache_key: str | None = None
    libraries: dict[str, str | None] | None = None
    weights: dict[str, int] | None = None
    notes: list[str] | None = None
    seconds: dict[str, float] | None = None
    timings: list[StepTiming] | None = Field(None, description="The Job's steps (download, compress, evaluate), as status.timings shows them.")
    created_at: str | None = None

    def record(self) -> dict[str, Any]:
        """The JSON object written out: the keys it was built with, None included, so that a
        reader sees the same keys whichever way the report was made."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")
