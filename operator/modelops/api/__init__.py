"""The typed API of group modelops.dev/v1alpha1: Model, ModelVersion and ModelDeployment,
and the constants (phases, reasons, outcomes, policies, backends) their statuses use."""

from modelops.api.deployment import (
    Backend,
    DeploymentReason,
    FetchReason,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    RolloutOutcome,
    VersionPolicy,
)
from modelops.api.model import (
    Metric,
    ModelReason,
    ModelSpec,
    ModelStatus,
    PruningMethod,
    Quantization,
    TransportReason,
)
from modelops.api.types import API_VERSION, GROUP, VERSION, Condition, ConditionStatus, ConditionType
from modelops.api.version import ModelVersionSpec, ModelVersionStatus, Phase, ReportOutcome, VersionReason

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Backend",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "DeploymentReason",
    "FetchReason",
    "Metric",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelReason",
    "ModelSpec",
    "ModelStatus",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "Phase",
    "PruningMethod",
    "Quantization",
    "ReportOutcome",
    "RolloutOutcome",
    "TransportReason",
    "VersionPolicy",
    "VersionReason",
]
