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
    Timings,
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
    ABORTED = "Aborted"


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
    ARTIFACT_REFUSED = "ArtifactRefused"
    RETRY_REQUESTED = "RetryRequested"
    SERVING = "Serving"
    UNAVAILABLE = "Unavailable"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    SCALING = "Scaling"
    AS_EXPECTED = "AsExpected"
    # Suspension
    SUSPENDED = "Suspended"
    # Canary
    CANARY_STARTED = "CanaryStarted"
    CANARY_PROGRESSING = "CanaryProgressing"
    CANARY_WAITING = "CanaryWaitingForTraffic"
    CANARY_STEP_PASSED = "CanaryStepPassed"
    CANARY_PROMOTED = "CanaryPromoted"
    CANARY_ABORTED = "CanaryAborted"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    # Autoscaling
    SCALED = "Scaled"
    ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"


class RolloutStrategy(StrEnum):
    ROLLING_UPDATE = "RollingUpdate"
    CANARY = "Canary"


class CanaryPhase(StrEnum):
    PROGRESSING = "Progressing"
    PROMOTED = "Promoted"
    ABORTED = "Aborted"

# Service and Deployment names come from the ModelDeployment's name.
DNS_LABEL_RULE = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
# An image reference: [registry[:port]/]path[:tag][@digest], no spaces or control characters.
IMAGE_RULE = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"
MAX_QUEUE_DELAY_MICROSECONDS = 60_000_000
PreferredBatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE_MAX)]
# A duration: a whole number of seconds, minutes or hours ("30s", "2m", "1h").
DURATION_RULE = r"^[0-9]{1,6}(s|m|h)$"
Duration = Annotated[str, Field(pattern=DURATION_RULE, max_length=8)]


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


class CanaryStep(ApiModel):
    """One step of a canary: the share of traffic the new version gets, and how long it holds."""

    weight: int = Field(ge=1, le=99, description="Percent of the pods (and so of the requests) that run the new version.")
    pause: Duration = Field("30s", description="Least time the step runs before it is analysed (30s, 2m, 1h).")


class CanaryAnalysis(ApiModel):
    """What a canary step must show, read from Triton's own metrics (port 8002) on the canary and stable pods."""

    max_error_ratio: float = Field(0.01, ge=0, le=1, description="Most failed requests over all requests the canary may have.")
    max_p99_latency_ms: float | None = Field(
        None, gt=0, le=3_600_000, description="Most p99 request latency of the canary, in milliseconds (Triton's request summary)."
    )
    max_latency_ratio: float | None = Field(
        None, ge=1, le=1000, description="Most mean request latency of the canary over that of the stable pods in the same step."
    )
    min_requests: int = Field(100, ge=1, le=100_000_000, description="Requests the canary must have served before a step is judged.")
    interval: Duration = Field("10s", description="How often the metrics are read.")


class HTTPRouteRef(ApiModel):
    """A Gateway API parent: the operator also renders an HTTPRoute with exact weights."""

    parent: ObjectName = Field(description="Name of the parent Gateway.")
    namespace: ObjectName | None = Field(None, description="Namespace of the Gateway; unset is the ModelDeployment's.")
    section_name: ObjectName | None = Field(None, description="Listener of the Gateway to attach to.")


class CanarySpec(ApiModel):
    """A canary rollout: a second Deployment runs the new version next to the stable one."""

    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=10), CanaryStep(weight=50)],
        min_length=1, max_length=10,
        description="Steps in order; after the last one passes, the new version is promoted.",
    )
    analysis: CanaryAnalysis = nested(CanaryAnalysis, "How each step is judged.")
    http_route: HTTPRouteRef | None = Field(None, description="Where Gateway API is installed: split traffic by HTTPRoute weights.")


class AutoscalingMetric(StrEnum):
    QUEUE_TIME_RATIO = "queue-time-ratio"
    INFERENCES_PER_SECOND = "inferences-per-second"


class AutoscalingProvider(StrEnum):
    OPERATOR = "operator"
    HPA = "hpa"
    KEDA = "keda"


class AutoscalingSpec(ApiModel):
    """Replicas that follow the load. The replica count then belongs to the scaler."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel("self.minReplicas <= self.maxReplicas", "minReplicas must not be greater than maxReplicas", fieldPath=".maxReplicas"),
            cel(f"self.provider != '{AutoscalingProvider.KEDA}' || has(self.prometheusAddress)",
                "prometheusAddress is required when provider is keda", fieldPath=".prometheusAddress", reason="FieldValueRequired"),
        )
    }

    min_replicas: int = Field(1, ge=1, le=1000, description="Fewest Triton pods.")
    max_replicas: int = Field(ge=1, le=1000, description="Most Triton pods.")
    metric: AutoscalingMetric = Field(
        AutoscalingMetric.QUEUE_TIME_RATIO,
        description="queue-time-ratio: time requests wait in Triton's queue over the time they compute; "
        "inferences-per-second: inferences per second per pod. Both from Triton's counters.",
    )
    target: float = Field(gt=0, le=1_000_000, description="The value of the metric the scaler holds each pod at.")
    provider: AutoscalingProvider = Field(
        AutoscalingProvider.OPERATOR,
        description="operator: the operator reads Triton's metrics on the pods and scales (no metrics adapter needed); "
        "hpa: an autoscaling/v2 HorizontalPodAutoscaler on a Pods metric from a Prometheus adapter; "
        "keda: a KEDA ScaledObject with a Prometheus trigger.",
    )
    stabilization_window: Duration = Field(
        "60s", description="operator: a scale-down takes the highest recommendation over this window."
    )
    cooldown: Duration = Field("120s", description="operator: least time between a change of replicas and a scale-down.")
    interval: Duration = Field("10s", description="operator: how often Triton's metrics are read.")
    prometheus_address: str | None = Field(
        None, validate_default=True, max_length=512, pattern=r"^https?://[^\s]+$", description="keda: address of the Prometheus server the trigger queries."
    )

    @field_validator("max_replicas")
    @classmethod
    def _range(cls, value: int, info: ValidationInfo) -> int:
        if value < info.data.get("min_replicas", 1):
            raise ValueError("minReplicas must not be greater than maxReplicas")
        return value

    @field_validator("prometheus_address")
    @classmethod
    def _keda_needs_prometheus(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("provider") == AutoscalingProvider.KEDA and value is None:
            raise ValueError("prometheusAddress is required when provider is keda")
        return value


class RolloutSpec(ApiModel):
    """How a version change rolls out."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                f"self.strategy != '{RolloutStrategy.ROLLING_UPDATE}' || !has(self.canary)",
                "canary must not be set when strategy is RollingUpdate",
                fieldPath=".canary",
                reason="FieldValueForbidden",
            ),
            cel(
                "!has(self.maxSurge) || !has(self.maxUnavailable) || "
                "!((self.maxSurge == 0 || self.maxSurge == '0%') && (self.maxUnavailable == 0 || self.maxUnavailable == '0%'))",
                "maxUnavailable must not be 0 when maxSurge is 0",
                fieldPath=".maxUnavailable",
            )
        )
    }

    strategy: RolloutStrategy = Field(
        RolloutStrategy.ROLLING_UPDATE,
        description="RollingUpdate replaces the pods in one rolling update; Canary runs the new version on a share "
        "of the pods and promotes or aborts it from Triton's metrics.",
    )
    canary: CanarySpec | None = Field(None, description="Canary steps and analysis; only with strategy Canary (unset takes the defaults).")
    max_surge: RolloutCount = Field(1, description="Extra pods during a rollout (count or percentage).")
    max_unavailable: RolloutCount = Field(0, validate_default=True, description="Pods that may be unavailable during a rollout (count or percentage).")
    progress_deadline_seconds: int = Field(
        600, ge=10, le=86400, description="A rollout that is not available after this long has failed."
    )
    auto_rollback: bool = Field(True, description="Roll a failed rollout back to the last good version, and skip the failed version under Latest.")

    @field_validator("canary")
    @classmethod
    def _canary_fits_strategy(cls, canary: CanarySpec | None, info: ValidationInfo) -> CanarySpec | None:
        if canary is not None and info.data.get("strategy") == RolloutStrategy.ROLLING_UPDATE:
            raise ValueError("canary must not be set when strategy is RollingUpdate")
        return canary

    def canary_or_default(self) -> CanarySpec:
        return self.canary or CanarySpec()

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
    suspended: bool = Field(
        False,
        description="Scale the Triton pods to 0 (frees their GPUs) and keep everything else; false again restores spec.replicas. "
        "Versions keep compressing while suspended; a new version rolls out on resume.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Scale the Triton pods between minReplicas and maxReplicas on a Triton metric; replicas is then ignored."
    )
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
    outcome: RolloutOutcome = Field(description="Progressing, Succeeded, RolledBack, Superseded or Aborted (a canary that failed its analysis).")
    message: str | None = Field(None, description="Why a failed rollout failed, in its pods' own words (a container's error, CrashLoopBackOff, Unschedulable), and the field to change.")
    timings: Timings | None = Field(
        None, description="For a rollout that succeeded: its first ready pod's schedule, fetch and load, and ready (the rollout's start to every pod serving)."
    )


class CanaryMeasurement(ApiModel):
    """What Triton's metrics showed for one set of pods during a canary step."""

    requests: int = Field(description="Requests served (success plus failure).")
    failures: int = Field(description="Failed requests.")
    error_ratio: float = Field(description="failures / requests (0 when there are none).")
    mean_latency_ms: float | None = Field(None, description="Mean request latency.")
    p99_latency_ms: float | None = Field(None, description="Highest p99 request latency over the pods.")


class CanaryAnalysisResult(ApiModel):
    """The last analysis of a canary step."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="When the metrics were read.")
    canary: CanaryMeasurement = Field(description="The canary pods since the step began.")
    stable: CanaryMeasurement | None = Field(None, description="The stable pods since the step began.")
    verdict: str = Field(description="Pass, Fail or Wait, with why.")


class PodCounters(ApiModel):
    """Triton's counters of one pod when a step began (the analysis counts from there)."""

    pod: str = Field(description="Pod name.")
    success: float = Field(0, description="nv_inference_request_success.")
    failure: float = Field(0, description="nv_inference_request_failure.")
    duration_us: float = Field(0, description="nv_inference_request_duration_us.")
    queue_us: float = Field(0, description="nv_inference_queue_duration_us.")


class CanaryStatus(ApiModel):
    """Where a canary stands."""

    version: int = Field(description="The version under test.")
    stable_version: int | None = Field(None, description="The version the stable pods serve.")
    phase: CanaryPhase = Field(description="Progressing, Promoted or Aborted.")
    step: int = Field(description="Current step, from 0.")
    steps: int = Field(description="Number of steps.")
    weight: int = Field(description="Weight of the current step, in percent.")
    canary_replicas: int = Field(description="Pods of the canary Deployment.")
    stable_replicas: int = Field(description="Pods of the stable Deployment.")
    effective_weight: float = Field(description="canaryReplicas / (canaryReplicas + stableReplicas), in percent.")
    step_started_at: str | None = Field(
        None, json_schema_extra={"format": "date-time"}, description="When every canary pod of this step was ready."
    )
    baseline: list[PodCounters] | None = Field(None, description="Counters of each pod when the step began.")
    last_analysis: CanaryAnalysisResult | None = Field(None, description="The last analysis.")
    message: str | None = Field(None, description="The last decision, with its figures.")


class Recommendation(ApiModel):
    """One recommendation of the operator's scaler."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="When it was made.")
    replicas: int = Field(description="The replicas the metric asked for.")


class AutoscalingStatus(ApiModel):
    """What the operator's scaler measured and decided."""

    replicas: int = Field(description="The replica count the scaler asks for.")
    metric: AutoscalingMetric = Field(description="The metric.")
    value: float | None = Field(None, description="The metric's last value (per pod for inferences-per-second).")
    last_scale_time: str | None = Field(None, json_schema_extra={"format": "date-time"}, description="When replicas last changed.")
    recommendations: list[Recommendation] | None = Field(
        None, description="Recent recommendations (time, replicas) that the stabilisation window looks at."
    )
    message: str | None = Field(
        None, description="Why the last reading of the metric failed (Prometheus unreachable, no series); cleared by the next value."
    )


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
    available_replicas_high_water: int | None = Field(
        None,
        description="The most Triton pods of the current pod template that were available at once since it rolled "
        "out, at most the replicas asked for. Fewer available pods than this were lost (Degraded, "
        "ReplicasUnavailable); pods asked for beyond it are starting (Progressing, Scaling). Unset while a rollout "
        "changes the pod template.",
    )
    endpoints: Endpoints | None = Field(None, description="In-cluster endpoints.")
    rollouts: list[RolloutRecord] | None = Field(None, description="The most recent rollouts, newest last.")
    canary: CanaryStatus | None = Field(None, description="The canary in progress, or the last one.")
    autoscaling: AutoscalingStatus | None = Field(None, description="The operator's scaler, with provider operator.")
    conditions: Conditions | None = Field(None, description="Ready, Progressing and Degraded.")
