"""The typed API of group modelops.dev/v1alpha1: Model, ModelVersion and ModelDeployment."""

from modelops.api.deployment import ModelDeploymentSpec, ModelDeploymentStatus
from modelops.api.model import ModelSpec, ModelStatus
from modelops.api.types import API_VERSION, GROUP, VERSION, Condition
from modelops.api.version import ModelVersionSpec, ModelVersionStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelSpec",
    "ModelStatus",
    "ModelVersionSpec",
    "ModelVersionStatus",
]
