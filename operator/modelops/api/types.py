"""Building blocks shared by the three kinds: the base model, common types and constraints.

Every field carries a description because the CRD generator copies it into the schema, where
`kubectl explain` shows it. CEL rules ride along in `x-kubernetes-validations`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

GROUP = "modelops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Bounded lengths keep the apiserver's CEL cost estimate small.
NAME_MAX = 253
URI_MAX = 2048
TENSOR_NAME_MAX = 256

# The regular expressions below are shared by CEL (RE2) and Python (re): plain classes,
# anchors and repetition only, no look-around, and no single quote (they sit in CEL raw
# string literals).
BUCKET_RULE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
IPV4_RULE = r"^[0-9]{1,3}([.][0-9]{1,3}){3}$"
# s3://<bucket>/<key>: a key of one or more non-empty segments, none of them "." or "..".
S3_URI_RULE = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/ \x00-\x1f\x7f]+)+$"
# s3://<bucket>/ or s3://<bucket>/<key>/: a prefix, the folder of a file set.
S3_PREFIX_RULE = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/ \x00-\x1f\x7f]+)*/$"
# A file's path inside a file set: segments joined by "/", none empty, "." or "..".
RELATIVE_PATH_RULE = r"^[^/ \x00-\x1f\x7f]+(/[^/ \x00-\x1f\x7f]+)*$"
PATH_DOT_SEGMENT_RULE = r"(^|/)[.][.]?(/|$)"
DOT_SEGMENT_RULE = r"/[.][.]?(/|$)"
S3_URI_BUCKET_DOTS_RULE = r"^s3://[^/]*[.][.]"
S3_URI_BUCKET_IPV4_RULE = r"^s3://[0-9]{1,3}([.][0-9]{1,3}){3}/"
SHA256_RULE = r"^[a-f0-9]{64}$"
DNS_SUBDOMAIN_RULE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# http(s)://host[:port][/path]: a DNS name, IPv4 or [IPv6] host, no user info, query or fragment.
_HOST = r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
_PORT = r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
ENDPOINT_RULE = rf"^https?://{_HOST}{_PORT}(/[A-Za-z0-9._~%/-]*)?$"
# Triton and ONNX tensor names: input_ids, input.1, onnx::Gemm_0, encoder/layer_0/out.
# Dots only between other characters (so no ".."), no leading "/", no quotes, no spaces.
TENSOR_NAME_RULE = r"^[A-Za-z0-9_:][A-Za-z0-9_:/-]*([.][A-Za-z0-9_:/-]+)*$"
# A Kubernetes quantity, as in a pod's resources: 500m, 2Gi, 1.5, 1e3.
QUANTITY_RULE = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)))?$"
REGION_RULE = r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$"
# Label keys ([prefix/]name) and values, as Kubernetes validates them on pods. (Keys of a
# map cannot carry a pattern, and a CEL rule over them costs too much; a bad nodeSelector
# key fails the pod, which the operator reports.)
LABEL_KEY_RULE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RULE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"


def python_regex(regex: str) -> re.Pattern[str]:
    """The regex as Python must compile it to match as RE2 does: RE2's $ is the end of the
    text, Python's also matches before a final newline."""
    return re.compile(regex.replace("$", r"\Z"))


def cel(rule: str, message: str, **extra: str) -> dict[str, str]:
    """One entry of x-kubernetes-validations."""
    return {"rule": rule, "message": message, **extra}


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


@dataclass(frozen=True)
class Check:
    """One test of a value, written once as CEL and once as the same test in Python."""

    cel: str
    holds: Callable[[Any], bool]


def matches(regex: str) -> Check:
    if "'" in regex:
        raise ValueError(f"{regex!r}: a quote cannot sit in a CEL raw string")
    compiled = python_regex(regex)
    return Check(f"self.matches(r'{regex}')", lambda value: compiled.search(value) is not None)


def lacks(regex: str) -> Check:
    found = matches(regex)
    return Check(f"!{found.cel}", lambda value: not found.holds(value))


@dataclass(frozen=True)
class Rule:
    """A validation rule that the apiserver (CEL) and pydantic (Python) enforce alike."""

    message: str
    checks: tuple[Check, ...]

    @property
    def cel(self) -> str:
        return " && ".join(check.cel for check in self.checks)

    def holds(self, value: Any) -> bool:
        return all(check.holds(value) for check in self.checks)

    def schema(self) -> dict[str, str]:
        return cel(self.cel, self.message)

    def validate(self, value: Any) -> Any:
        if not self.holds(value):
            raise ValueError(self.message)
        return value


def rule(message: str, *checks: Check) -> Rule:
    return Rule(message, checks)


def checked_string(max_length: int, *rules: Rule) -> Any:
    """A string type bounded by max_length and the rules, in the CRD and in Python."""

    def validate(value: str) -> str:
        for each in rules:
            each.validate(value)
        return value

    return Annotated[
        str,
        Field(max_length=max_length),
        AfterValidator(validate),
        WithJsonSchema({"type": "string", "maxLength": max_length, **validations(*(r.schema() for r in rules))}),
    ]


class ConditionType(StrEnum):
    """Condition types; every kind has Ready."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    ROLLOUT_FAILED = "RolloutFailed"
    STORAGE_TRANSPORT = "StorageTransport"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


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


BUCKET_NAME = rule(
    "must be a bucket name: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending "
    "with a letter or digit, without '..', and not an IP address",
    matches(BUCKET_RULE),
    lacks("[.][.]"),
    lacks(IPV4_RULE),
)
S3_URI = rule(
    "must be an S3 URI of the form s3://<bucket>/<key>: a valid bucket name, and a key without "
    "empty, '.' or '..' segments, spaces or control characters",
    matches(S3_URI_RULE),
    lacks(DOT_SEGMENT_RULE),
    lacks(S3_URI_BUCKET_DOTS_RULE),
    lacks(S3_URI_BUCKET_IPV4_RULE),
)
S3_URI_OR_PREFIX = rule(
    "must be an S3 URI of the form s3://<bucket>/<key>, or for a file set a prefix ending in '/' "
    "(s3://<bucket>/<folder>/): a valid bucket name, and a key without empty, '.' or '..' segments, "
    "spaces or control characters",
    Check(
        f"(self.matches(r'{S3_URI_RULE}') || self.matches(r'{S3_PREFIX_RULE}'))",
        lambda value: python_regex(S3_URI_RULE).search(value) is not None
        or python_regex(S3_PREFIX_RULE).search(value) is not None,
    ),
    lacks(DOT_SEGMENT_RULE),
    lacks(S3_URI_BUCKET_DOTS_RULE),
    lacks(S3_URI_BUCKET_IPV4_RULE),
)
RELATIVE_PATH = rule(
    "must be a relative path: segments joined by '/', none of them empty, '.' or '..', no leading "
    "'/', spaces or control characters",
    matches(RELATIVE_PATH_RULE),
    lacks(PATH_DOT_SEGMENT_RULE),
)
SHA256 = rule("must be a sha256 digest: 64 lowercase hexadecimal characters", matches(SHA256_RULE))
ENDPOINT_URL = rule(
    "must be an http:// or https:// URL: a host name or IP address, an optional port and path, "
    "and no user info, query or fragment",
    matches(ENDPOINT_RULE),
)
TENSOR_NAME = rule(
    "must be a tensor name: letters, digits, '_', ':', '-', '/' and single '.' between them; "
    "no leading '/' or '.', no quotes, spaces or control characters",
    matches(TENSOR_NAME_RULE),
)
QUANTITY = rule("must be a Kubernetes quantity, for example 500m, 2Gi or 4", matches(QUANTITY_RULE))

S3Uri = checked_string(URI_MAX, S3_URI)
S3UriOrPrefix = checked_string(URI_MAX, S3_URI_OR_PREFIX)
# Paths inside a file set; bounded so that CEL over 1,024 of them stays cheap.
PATH_MAX = 512
RelativePath = checked_string(PATH_MAX, RELATIVE_PATH)
Sha256 = checked_string(64, SHA256)
BucketName = checked_string(63, BUCKET_NAME)
EndpointUrl = checked_string(URI_MAX, ENDPOINT_URL)
TensorName = checked_string(TENSOR_NAME_MAX, TENSOR_NAME)


ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_RULE),
]

VersionNumber = Annotated[
    int,
    Field(ge=1),
    WithJsonSchema(
        {
            "type": "integer",
            "format": "int64",
            **validations(cel("self >= 1", "must be an integer version of 1 or greater")),
        }
    ),
]

ROLLOUT_COUNT_RULE = r"^(100|[1-9]?[0-9])%$"
_ROLLOUT_COUNT = python_regex(ROLLOUT_COUNT_RULE)


def _rollout_count(value: int | str) -> int | str:
    if isinstance(value, str) and (len(value) > 4 or not _ROLLOUT_COUNT.search(value)):
        raise ValueError("must be a count or a percentage from 0% to 100%")
    if isinstance(value, int) and not 0 <= value <= 1000:
        raise ValueError("must be a count from 0 to 1000 or a percentage")
    return value


# A rollout count (1) or percentage ("25%"), as in a Deployment's strategy.
RolloutCount = Annotated[
    int | str,
    AfterValidator(_rollout_count),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "maximum": 1000,
            "maxLength": 4,
            "pattern": ROLLOUT_COUNT_RULE,
        }
    ),
]

_QUANTITY = python_regex(QUANTITY_RULE)


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and (len(value) > 64 or not _QUANTITY.search(value)):
        raise ValueError(QUANTITY.message)
    if isinstance(value, int) and value < 0:
        raise ValueError("must not be negative")
    return value


# A Kubernetes quantity ("500m", "2Gi", 4). The pattern applies to the string form only.
Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "maxLength": 64,
            "pattern": QUANTITY_RULE,
        }
    ),
]

# The resources a container may set here; GPUs come from `gpus`.
RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_RULE)]
RESOURCE_NAME = rule(
    f"resource names must be one of {', '.join(RESOURCE_NAMES)}; GPUs are set with gpus",
    Check(
        "self.all(k, k in [" + ", ".join(f"'{n}'" for n in RESOURCE_NAMES) + "])",
        lambda resources: all(name in RESOURCE_NAMES for name in resources),
    ),
)
Resources = Annotated[
    dict[str, Quantity],
    Field(max_length=len(RESOURCE_NAMES)),
    AfterValidator(RESOURCE_NAME.validate),
    Field(json_schema_extra=validations(RESOURCE_NAME.schema())),
]


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: ObjectName = Field(description="Name of the object in the same namespace.")


class ConfigMapOrSecretKey(ApiModel):
    """One key of a ConfigMap or a Secret in the same namespace: exactly one of the two. Kinds
    that use it restate the fields only to say what the key holds."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel("has(self.configMapRef) != has(self.secretRef)", "exactly one of configMapRef and secretRef must be set")
        )
    }

    config_map_ref: LocalObjectReference | None = Field(None, description="ConfigMap in the same namespace.")
    secret_ref: LocalObjectReference | None = Field(None, description="Secret in the same namespace.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the object.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ConfigMapOrSecretKey:
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("exactly one of configMapRef and secretRef must be set")
        return self

    @property
    def source(self) -> tuple[str, str]:
        """("ConfigMap" or "Secret", its name)."""
        if self.config_map_ref is not None:
            return "ConfigMap", self.config_map_ref.name
        assert self.secret_ref is not None
        return "Secret", self.secret_ref.name

    @property
    def ref_field(self) -> str:
        """The field that names the object: configMapRef or secretRef."""
        return "configMapRef" if self.config_map_ref is not None else "secretRef"


class Toleration(ApiModel):
    """A toleration for a node taint, as in a pod spec."""

    key: str | None = Field(
        None,
        max_length=317,
        pattern=LABEL_KEY_RULE,
        description="Taint key the toleration applies to; empty with operator Exists matches every taint.",
    )
    operator: TolerationOperator = Field(
        TolerationOperator.EQUAL, description="Exists matches any value; Equal matches `value`."
    )
    value: str | None = Field(None, max_length=63, pattern=LABEL_VALUE_RULE, description="Taint value to match when the operator is Equal.")
    effect: TaintEffect | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class ResourceRequirements(ApiModel):
    """CPU and memory for a container, as Kubernetes quantities. GPUs are set with `gpus`."""

    requests: Resources | None = Field(None, description="Minimum resources, for example cpu: 500m, memory: 1Gi.")
    limits: Resources | None = Field(None, description="Maximum resources, for example cpu: 2, memory: 4Gi.")


class Condition(ApiModel):
    """A condition in the Kubernetes convention (metav1.Condition)."""

    type: str = Field(max_length=316, description="Condition type, for example Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="One CamelCase word that says why the condition has this status.")
    message: str = Field("", max_length=32768, description="What happened and what to do about it, for people.")
    observed_generation: int | None = Field(
        None, ge=0, description="The metadata.generation this condition was computed from."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When the status last changed (RFC 3339).",
    )


class Step(StrEnum):
    """The steps of a model's time to ready, each timed where it happens.

    A version's: verify (the operator checks the source and its signature), download, compress
    and evaluate (the compression Job). A rollout's, for its first ready pod: schedule (created
    to bound to a node), fetch (the fetch container downloads and verifies the served artifact),
    load (the server container starts and loads the model, until the pod is ready), and ready
    (the rollout's start to every pod serving)."""

    VERIFY = "verify"
    DOWNLOAD = "download"
    COMPRESS = "compress"
    EVALUATE = "evaluate"
    SCHEDULE = "schedule"
    FETCH = "fetch"
    LOAD = "load"
    READY = "ready"


class StepTiming(ApiModel):
    """When one step of the time to ready began and ended."""

    step: Step = Field(description="verify, download, compress, evaluate, schedule, fetch, load or ready.")
    started_at: str = Field(json_schema_extra={"format": "date-time"}, description="When the step began (RFC 3339).")
    finished_at: str = Field(json_schema_extra={"format": "date-time"}, description="When it ended (RFC 3339).")
    seconds: float = Field(ge=0, description="How long it took, to the millisecond where the clock that timed it has them.")


Timings = Annotated[
    list[StepTiming],
    Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["step"]}),
]


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
