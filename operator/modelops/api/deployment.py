"""The ModelDeployment kind: serves one Model with NVIDIA Triton."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from modelops.api.model import MAX_BATCH_SIZE_MAX, Scheduling
from modelops.api.types import (
    ApiModel,
    Conditions,
    ObjectName,
    ResourceRequirements,
    RolloutCount,
    VersionNumber,
    cel,
    nested,
    validations,
)


class VersionPolicy(StrEnum):
    LATEST = "Latest"
    PINNED = "Pinned"


class Backend(StrEnum):
    ONNXRUNTIME = "onnxruntime"
    PYTHON = "python"
    PYTORCH = "pytorch"


class InstanceKind(StrEnum):
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"


class RolloutOutcome(StrEnum):
    PROGRESSING = "Progressing"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    SUPERSEDED = "Superseded"


class DeploymentReason(StrEnum):
    """Reasons of a ModelDeployment's conditions and events."""

    # Version resolution
    RESOLVED = "Resolved"
    MODEL_NOT_FOUND = "ModelNotFound"
    NO_READY_VERSION = "NoReadyVersion"
    VERSION_NOT_SET = "VersionNotSet"
    PINNED_VERSION_NOT_FOUND = "PinnedVersionNotFound"
    PINNED_VERSION_NOT_READY = "PinnedVersionNotReady"
    PINNED_VERSION_ROLLOUT_FAILED = "PinnedVersionRolloutFailed"
    # Rendering and ownership
    INVALID_SERVING_CONFIG = "InvalidServingConfig"
    NAME_TAKEN = "NameTaken"
    # Rollout
    NOTHING_SERVED = "NothingServed"
    ROLLOUT_STARTED = "RolloutStarted"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLOUT_SUCCEEDED = "RolloutSucceeded"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    ROLLED_BACK = "RolledBack"
    RETRY_REQUESTED = "RetryRequested"
    SERVING = "Serving"
    UNAVAILABLE = "Unavailable"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    AS_EXPECTED = "AsExpected"

# Service and Deployment names come from the ModelDeployment's name.
DNS_LABEL_RULE = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
# An image reference: [registry[:port]/]path[:tag][@digest], no spaces or control characters.
IMAGE_RULE = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"
MAX_QUEUE_DELAY_MICROSECONDS = 60_000_000
PreferredBatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE_MAX)]


class FetchReason(StrEnum):
    """Reasons the model fetcher (the Triton pod's init container) gives in its termination message."""

    INVALID_ARGUMENTS = "InvalidArguments"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    ARTIFACT_NOT_FOUND = "ArtifactNotFound"
    ACCESS_DENIED = "AccessDenied"
    TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
    REPOSITORY_WRITE_FAILED = "RepositoryWriteFailed"
    FETCH_FAILED = "FetchFailed"


class DynamicBatching(ApiModel):
    """Triton's dynamic batcher, which groups concurrent requests (needs the Model's maxBatchSize > 0)."""

    enabled: bool = Field(False, description="Turn the dynamic batcher on.")
    preferred_batch_sizes: list[PreferredBatchSize] | None = Field(
        None, max_length=16, description="Batch sizes the batcher aims for, each at most the Model's maxBatchSize."
    )
    max_queue_delay_microseconds: int = Field(
        0, ge=0, le=MAX_QUEUE_DELAY_MICROSECONDS, description="How long a request may wait for a batch to fill."
    )


class InstanceGroup(ApiModel):
    """Copies of the model Triton runs."""

    count: int = Field(1, ge=1, le=64, description="Number of model instances.")
    kind: InstanceKind | None = Field(
        None, description="KIND_CPU or KIND_GPU; unset picks KIND_GPU when gpus > 0, else KIND_CPU."
    )


class TritonSpec(ApiModel):
    """How Triton serves the model."""

    image: str | None = Field(
        None,
        max_length=512,
        pattern=IMAGE_RULE,
        description="Triton image; unset uses the operator's default (nvcr.io/nvidia/tritonserver).",
    )
    backend: Backend = Field(Backend.ONNXRUNTIME, description="Triton backend: onnxruntime, python (runs the ONNX file with onnxruntime) or pytorch.")
    dynamic_batching: DynamicBatching = nested(DynamicBatching, "Dynamic batching.")
    instance_groups: list[InstanceGroup] | None = Field(None, max_length=8, description="Model instances; unset runs one.")
    resources: ResourceRequirements | None = Field(None, description="CPU and memory for the Triton container.")
    startup_timeout_seconds: int = Field(
        600, ge=10, le=86400, description="Longest time the model may take to fetch and load before the pod is restarted."
    )


class RolloutSpec(ApiModel):
    """How a version change rolls out."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.maxSurge) || !has(self.maxUnavailable) || "
                "!((self.maxSurge == 0 || self.maxSurge == '0%') && (self.maxUnavailable == 0 || self.maxUnavailable == '0%'))",
                "maxUnavailable must not be 0 when maxSurge is 0",
                fieldPath=".maxUnavailable",
            )
        )
    }

    max_surge: RolloutCount = Field(1, description="Extra pods during a rollout (count or percentage).")
    max_unavailable: RolloutCount = Field(0, validate_default=True, description="Pods that may be unavailable during a rollout (count or percentage).")
    progress_deadline_seconds: int = Field(
        600, ge=10, le=86400, description="A rollout that is not available after this long has failed."
    )
    auto_rollback: bool = Field(True, description="Roll a failed rollout back to the last good version, and skip the failed version under Latest.")

    @field_validator("max_unavailable")
    @classmethod
    def _progress_possible(cls, value: int | str, info: ValidationInfo) -> int | str:
        if value in (0, "0%") and info.data.get("max_surge") in (0, "0%"):
            raise ValueError("maxUnavailable must not be 0 when maxSurge is 0")
        return value


class ModelDeploymentSpec(ApiModel):
    """Serves one Model with Triton, at the latest Ready version or a pinned one."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                f"self.versionPolicy != '{VersionPolicy.PINNED}' || has(self.version)",
                "version is required when versionPolicy is Pinned",
                fieldPath=".version",
                reason="FieldValueRequired",
            ),
            cel(
                f"self.versionPolicy != '{VersionPolicy.LATEST}' || !has(self.version)",
                "version must not be set when versionPolicy is Latest",
                fieldPath=".version",
                reason="FieldValueForbidden",
            ),
        )
    }

    model: ObjectName = Field(description="Name of the Model in the same namespace.")
    version_policy: VersionPolicy = Field(VersionPolicy.LATEST, description="Latest serves the highest Ready version; Pinned serves `version`.")
    version: VersionNumber | None = Field(
        None, validate_default=True, description="The version to serve; required with Pinned, forbidden with Latest."
    )
    replicas: int = Field(1, ge=0, le=1000, description="Number of Triton pods.")
    triton: TritonSpec = nested(TritonSpec, "Triton settings.")
    scheduling: Scheduling = nested(Scheduling, "Scheduling of the Triton pods; gpus defaults to 0.")
    rollout: RolloutSpec = nested(RolloutSpec, "Rollout settings.")

    @field_validator("version")
    @classmethod
    def _version_fits_policy(cls, version: int | None, info: ValidationInfo) -> int | None:
        policy = info.data.get("version_policy")
        if policy == VersionPolicy.PINNED and version is None:
            raise ValueError("version is required when versionPolicy is Pinned")
        if policy == VersionPolicy.LATEST and version is not None:
            raise ValueError("version must not be set when versionPolicy is Latest")
        return version


class Endpoints(ApiModel):
    """Where clients reach the model inside the cluster."""

    http: str = Field(description="HTTP/REST endpoint (KServe v2 protocol).")
    grpc: str = Field(description="gRPC endpoint.")


class RolloutRecord(ApiModel):
    """One change of the served version."""

    version: int = Field(description="Version rolled out.")
    from_version: int | None = Field(None, description="Version served before.")
    started_at: str = Field(json_schema_extra={"format": "date-time"}, description="When the rollout started.")
    finished_at: str | None = Field(None, json_schema_extra={"format": "date-time"}, description="When it finished.")
    outcome: RolloutOutcome = Field(description="Progressing, Succeeded, RolledBack or Superseded.")


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment."""

    observed_generation: int | None = Field(None, description="The metadata.generation this status reflects.")
    desired_version: int | None = Field(None, description="The version the policy asks for.")
    served_version: int | None = Field(None, description="The version every ready pod serves.")
    previous_version: int | None = Field(None, description="The version served before servedVersion.")
    failed_versions: list[int] | None = Field(
        None,
        description="Versions whose rollout failed; Latest skips them. Set the annotation modelops.dev/retry "
        "to a new value to clear this list.",
    )
    last_retry: str | None = Field(None, description="The value of the modelops.dev/retry annotation last acted on.")
    replicas: int | None = Field(None, description="Triton pods.")
    ready_replicas: int | None = Field(None, description="Triton pods that are ready.")
    endpoints: Endpoints | None = Field(None, description="In-cluster endpoints.")
    rollouts: list[RolloutRecord] | None = Field(None, description="The most recent rollouts, newest last.")
    conditions: Conditions | None = Field(None, description="Ready, Progressing and Degraded.")
