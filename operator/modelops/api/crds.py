"""CustomResourceDefinitions generated from the pydantic models.

pydantic emits JSON Schema; Kubernetes wants a structural OpenAPI v3 schema: no $ref, no
anyOf for optionals, a type on every node, OpenAPI's boolean exclusiveMinimum. The
conversion below does exactly that and refuses a field without a description.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from modelops.api.deployment import DNS_LABEL_RULE, ModelDeploymentSpec, ModelDeploymentStatus
from modelops.api.model import ModelSpec, ModelStatus
from modelops.api.types import GROUP, VERSION, ConditionType, cel
from modelops.api.version import ModelVersionSpec, ModelVersionStatus

CATEGORY = "modelops"
_DROPPED_KEYS = {"title", "examples"}


class SchemaError(ValueError):
    """The models cannot be expressed as a structural schema."""


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_name: str
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: list[dict[str, Any]]
    root_validations: list[dict[str, str]] = field(default_factory=list)
    selectable_fields: list[str] = field(default_factory=list)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _column(name: str, path: str, type_: str = "string", description: str = "", priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


_READY = _column("Ready", f'.status.conditions[?(@.type=="{ConditionType.READY}")].status', description="Ready condition.")
_AGE = _column("Age", ".metadata.creationTimestamp", "date", "Time since creation.")

KINDS: tuple[Kind, ...] = (
    Kind(
        kind="Model",
        plural="models",
        short_name="mdl",
        spec=ModelSpec,
        status=ModelStatus,
        printer_columns=[
            _column("Latest", ".status.latestReadyVersion", "integer", "Highest Ready version."),
            _column("Versions", ".status.versions.total", "integer", "Number of versions."),
            _READY,
            _column("Bucket", ".spec.storage.bucket", description="Artifact bucket.", priority=1),
            _AGE,
        ],
    ),
    Kind(
        kind="ModelVersion",
        plural="modelversions",
        short_name="mv",
        spec=ModelVersionSpec,
        status=ModelVersionStatus,
        printer_columns=[
            _column("Model", ".spec.model", description="Model this version belongs to."),
            _column("Version", ".spec.version", "integer", "Version number."),
            _column("Phase", ".status.phase", description="Lifecycle phase."),
            _READY,
            _column("Ratio", ".status.report.ratio", "number", "Compression ratio.", priority=1),
            _column("Job", ".status.jobName", description="Compression Job.", priority=1),
            _column("Failed-By", ".status.failedBy", description="ModelDeployments that rolled this version back."),
            _AGE,
        ],
        selectable_fields=[".spec.model"],
    ),
    Kind(
        kind="ModelDeployment",
        plural="modeldeployments",
        short_name="mdep",
        spec=ModelDeploymentSpec,
        status=ModelDeploymentStatus,
        printer_columns=[
            _column("Model", ".spec.model", description="Model served."),
            _column("Policy", ".spec.versionPolicy", description="Latest or Pinned."),
            _column("Desired", ".status.desiredVersion", "integer", "Version the policy asks for."),
            _column("Served", ".status.servedVersion", "integer", "Version the ready pods serve."),
            _column("Replicas", ".status.readyReplicas", "integer", "Ready Triton pods."),
            _READY,
            _column("Status", f'.status.conditions[?(@.type=="{ConditionType.READY}")].reason',
                    description="Reason of the Ready condition: Serving, Suspended, CanaryProgressing, RolloutInProgress, ..."),
            _column("Canary", ".status.canary.phase", description="Phase of the last canary.", priority=1),
            _column("Canary-Weight", ".status.canary.effectiveWeight", "number",
                    "Share of the pods that run the canary, in percent.", priority=1),
            _column("Endpoint", ".status.endpoints.http", description="HTTP endpoint.", priority=1),
            _AGE,
        ],
        root_validations=[
            cel(
                f"self.metadata.name.size() <= 63 && self.metadata.name.matches('{DNS_LABEL_RULE}')",
                "metadata.name must be a DNS label (lowercase letters, digits and '-', starting with a letter, at most 63 characters): it names the Service",
            )
        ],
        selectable_fields=[".spec.model"],
    ),
)


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _convert(raw, definitions, path=model.__name__)


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Inline a $ref (possibly wrapped in allOf); sibling keys (description, default) win."""
    node = dict(node)
    if "allOf" in node and len(node["allOf"]) == 1:
        node.update(node.pop("allOf")[0])
    ref = node.pop("$ref", None)
    if ref is None:
        return node
    target: dict[str, Any] = copy.deepcopy(definitions[ref.rsplit("/", 1)[-1]])
    target.update(node)
    return target


def _convert(node: dict[str, Any], definitions: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, definitions)
    if node.get("x-kubernetes-int-or-string"):
        return _ordered({k: v for k, v in node.items() if k not in _DROPPED_KEYS})
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"{path}: unions other than Optional[X] are not structural")
        if node.get("default", ...) is None:
            del node["default"]
        inner = _resolve(options[0], definitions)
        inner.update(node)
        node = inner
    if node.get("default", ...) is None:
        del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {}
            for name, child in value.items():
                converted = _convert(child, definitions, f"{path}.{name}")
                if not converted.get("description"):
                    raise SchemaError(f"{path}.{name}: every field needs a description")
                out[key][name] = converted
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, definitions, f"{path}[]")
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "type" not in out:
        if "properties" in out:
            out["type"] = "object"
        else:
            raise SchemaError(f"{path}: every schema node needs a type")
    if out["type"] == "object" and "properties" in out:
        out.pop("additionalProperties", None)
    return _ordered(out)


_KEY_ORDER = ("description", "type", "format", "default", "enum")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Stable, readable key order: what a field is first, its children last."""
    first = [k for k in _KEY_ORDER if k in node]
    last = [k for k in ("properties", "items", "additionalProperties", "required") if k in node]
    middle = sorted(k for k in node if k not in first and k not in last)
    return {k: node[k] for k in first + middle + last}


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = structural_schema(kind.spec)
    status_schema = structural_schema(kind.status)
    root: dict[str, Any] = {
        "description": spec_schema["description"],
        "type": "object",
    }
    if kind.root_validations:
        root["x-kubernetes-validations"] = kind.root_validations
    root["properties"] = {
        "apiVersion": {"description": "API version of this object.", "type": "string"},
        "kind": {"description": "Kind of this object.", "type": "string"},
        "metadata": {"type": "object"},
        "spec": spec_schema,
        "status": status_schema,
    }
    root["required"] = ["spec"]
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": kind.printer_columns,
    }
    if kind.selectable_fields:
        version["selectableFields"] = [{"jsonPath": p} for p in kind.selectable_fields]
    version["schema"] = {"openAPIV3Schema": root}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": [kind.short_name],
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def file_name(kind: Kind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"
