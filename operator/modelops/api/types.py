"""Building blocks shared by the three kinds: the base model, common types and constraints.

Every field carries a description because the CRD generator copies it into the schema, where
`kubectl explain` shows it. CEL rules ride along in `x-kubernetes-validations`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "modelops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Bounded lengths keep the apiserver's CEL cost estimate small.
NAME_MAX = 253
URI_MAX = 2048

# No backslashes: the rules are embedded in CEL string literals.
S3_URI_RULE = "^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^ ]+$"
SHA256_RULE = r"^[a-f0-9]{64}$"
DNS_SUBDOMAIN_RULE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
BUCKET_RULE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


def cel(rule: str, message: str, **extra: str) -> dict[str, str]:
    """One entry of x-kubernetes-validations."""
    return {"rule": rule, "message": message, **extra}


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base for API types: camelCase on the wire, snake_case in Python.

    Unknown fields are ignored so that an older operator can read objects written against a
    newer schema.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


S3Uri = Annotated[
    str,
    Field(max_length=URI_MAX),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": URI_MAX,
            **validations(
                cel(
                    f"self.matches('{S3_URI_RULE}')",
                    "must be an S3 URI of the form s3://<bucket>/<key>",
                )
            ),
        }
    ),
]

Sha256 = Annotated[
    str,
    Field(max_length=64),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 64,
            **validations(
                cel(
                    f"self.matches('{SHA256_RULE}')",
                    "must be a sha256 digest: 64 lowercase hexadecimal characters",
                )
            ),
        }
    ),
]

ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_RULE),
]

VersionNumber = Annotated[
    int,
    WithJsonSchema(
        {
            "type": "integer",
            "format": "int64",
            **validations(cel("self >= 1", "must be an integer version of 1 or greater")),
        }
    ),
]

# A Kubernetes quantity ("500m", "2Gi", 4) or a rollout count ("25%", 1).
IntOrString = Annotated[
    int | str,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        }
    ),
]


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: ObjectName = Field(description="Name of the object in the same namespace.")


class Toleration(ApiModel):
    """A toleration for a node taint, as in a pod spec."""

    key: str | None = Field(None, max_length=NAME_MAX, description="Taint key the toleration applies to; empty with operator Exists matches every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists matches any value; Equal matches `value`.")
    value: str | None = Field(None, max_length=63, description="Taint value to match when the operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class ResourceRequirements(ApiModel):
    """CPU and memory for a container, as Kubernetes quantities. GPUs are set with `gpus`."""

    requests: dict[str, IntOrString] | None = Field(None, description="Minimum resources, for example cpu: 500m, memory: 1Gi.")
    limits: dict[str, IntOrString] | None = Field(None, description="Maximum resources, for example cpu: 2, memory: 4Gi.")


class Condition(ApiModel):
    """A condition in the Kubernetes convention (metav1.Condition)."""

    type: str = Field(max_length=316, description="Condition type, for example Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="One CamelCase word that says why the condition has this status.")
    message: str = Field("", max_length=32768, description="What happened and what to do about it, for people.")
    observed_generation: int | None = Field(
        None, ge=0, description="The metadata.generation this condition was computed from."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When the status last changed (RFC 3339).",
    )


Conditions = Annotated[
    list[Condition],
    Field(
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        }
    ),
]


def nested(model: type[ApiModel], description: str) -> Any:
    """A sub-object that is always present, so the apiserver applies the defaults inside it."""
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})
