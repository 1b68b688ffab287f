"""JSON schemas for kubeconform, made here: Kubernetes' own from the apiserver, ours from crds/.

kubeconform looks a schema up per kind, as `<kind>-<group>-<version>.json` (the group's first
DNS label; core kinds have none), and validates each manifest against it. There is no
network to fetch the published schemas from, so they are derived locally:

- the Kubernetes kinds from the test bed apiserver's `/openapi/v2` (Kubernetes 1.34): each
  kind's definition with the definitions it references, so each file stands alone;
- the modelops kinds from the `openAPIV3Schema` of each version in `crds/*.yaml`.

Both are strict (objects with listed properties reject unknown ones, as kubeconform's
`-strict` schemas do), and the OpenAPI notions JSON schema lacks are spelled out:
int-or-string and quantities accept numbers and strings, `nullable` admits null.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

SCHEMA_TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}


def file_name(kind: str, api_version: str) -> str:
    """kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json` for a kind and apiVersion."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0].lower()}-{version.lower()}" if group else f"-{version.lower()}"
    return f"{kind.lower()}{suffix}.json"


def _strict(node: Any) -> Any:
    """The schema with the OpenAPI extensions made explicit and unknown properties refused."""
    if not isinstance(node, dict):
        return node
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string") is True:
        return {**INT_OR_STRING, **({"description": node["description"]} if "description" in node else {})}
    out = dict(node)
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(node.get(key), dict):
            out[key] = {name: _strict(child) for name, child in node[key].items()}
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            out[key] = [_strict(child) for child in node[key]]
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            out[key] = _strict(node[key])
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _closure(definitions: dict[str, Any], root: str) -> dict[str, Any]:
    """The definitions that `root` reaches through $ref."""
    seen: dict[str, Any] = {}
    pending = [root]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen[name] = definitions[name]
        text = json.dumps(definitions[name])
        pending += [m for m in re.findall(r'"\$ref": "#/definitions/([^"]+)"', text) if m not in seen]
    return seen


def kubernetes_schemas(openapi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{file name: schema} for every kind in an OpenAPI v2 document."""
    definitions = copy.deepcopy(openapi["definitions"])
    definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = INT_OR_STRING
    definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"] = QUANTITY
    strict = {name: _strict(schema) for name, schema in definitions.items()}
    out = {}
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            standalone = {"$ref": f"#/definitions/{name}", "definitions": _closure(strict, name)}
            out[file_name(gvk["kind"], api_version)] = standalone
    return out


def crd_schemas(crd_files: list[Path]) -> dict[str, dict[str, Any]]:
    """{file name: schema} for each version of each CRD."""
    out = {}
    for path in crd_files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                # The apiserver fills in metadata's schema; so does this.
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                out[file_name(spec["names"]["kind"], f"{spec['group']}/{version['name']}")] = schema
    return out


def write_schemas(openapi: dict[str, Any], crd_files: list[Path], cache: Path) -> Path:
    """Write the schemas (once per input) under `cache`; returns kubeconform's -schema-location template."""
    digest = hashlib.sha256(json.dumps(openapi, sort_keys=True).encode())
    for path in sorted(crd_files):
        digest.update(path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    target = cache / digest.hexdigest()[:16]
    if not (target / ".complete").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name, schema in {**kubernetes_schemas(openapi), **crd_schemas(crd_files)}.items():
            (target / name).write_text(json.dumps(schema))
        (target / ".complete").touch()
    return target / SCHEMA_TEMPLATE
