"""Names and labels of the objects the operator creates. Deterministic, so that a restart
finds what an earlier run created instead of creating it again."""

from __future__ import annotations

import hashlib

from modelops.api.types import GROUP

MANAGED_BY = "modelops"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MODEL = f"{GROUP}/model"
LABEL_VERSION = f"{GROUP}/version"
LABEL_MODELVERSION = f"{GROUP}/modelversion"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_TRACK = f"{GROUP}/track"
TRACK_CANARY = "canary"
CANARY_SUFFIX = "-canary"
ANNOTATION_VERSION = f"{GROUP}/version"
ANNOTATION_ARTIFACT_SHA256 = f"{GROUP}/artifact-sha256"
# Set on a ModelDeployment (any new value) to forget its failed rollouts and try those versions again.
ANNOTATION_RETRY = f"{GROUP}/retry"

COMPONENT_COMPRESSOR = "compressor"
COMPONENT_SERVER = "triton"
# The Triton pods' init container that fetches and verifies the version (the operator's image).
FETCH_CONTAINER = "fetch"

# A Job's name ends up in a label value on its pods, which allows 63 characters.
_LABEL_VALUE_MAX = 63
JOB_SUFFIX = "-compress"


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_name(version_name: str) -> str:
    """The compression Job of a ModelVersion: `<name>-compress`, shortened with a hash if long."""
    name = version_name + JOB_SUFFIX
    if len(name) <= _LABEL_VALUE_MAX:
        return name
    keep = _LABEL_VALUE_MAX - len(JOB_SUFFIX) - 9
    return f"{version_name[:keep].rstrip('-.')}-{short_hash(version_name)}{JOB_SUFFIX}"


def label_value(text: str) -> str:
    """A label value for a name that may be longer than 63 characters."""
    if len(text) <= _LABEL_VALUE_MAX:
        return text
    return f"{text[:_LABEL_VALUE_MAX - 9].rstrip('-._')}-{short_hash(text)}"


def job_labels(model: str, version_name: str, version: int) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: "modelops-compressor",
        LABEL_COMPONENT: COMPONENT_COMPRESSOR,
        LABEL_MODEL: label_value(model),
        LABEL_MODELVERSION: label_value(version_name),
        LABEL_VERSION: str(version),
    }


def server_selector(deployment_name: str) -> dict[str, str]:
    """Labels that select the Triton pods of one ModelDeployment. Never changes for an object."""
    return {
        LABEL_NAME: "triton",
        LABEL_INSTANCE: label_value(deployment_name),
        LABEL_DEPLOYMENT: label_value(deployment_name),
    }


def server_labels(deployment_name: str, model: str) -> dict[str, str]:
    return {
        **server_selector(deployment_name),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: COMPONENT_SERVER,
        LABEL_MODEL: label_value(model),
    }


def canary_name(deployment_name: str) -> str:
    """The canary Deployment of a ModelDeployment: `<name>-canary`."""
    return deployment_name + CANARY_SUFFIX


def canary_selector(deployment_name: str) -> dict[str, str]:
    """The canary pods: the Service's selector (so they get traffic) plus the canary track."""
    return {**server_selector(deployment_name), LABEL_TRACK: TRACK_CANARY}
