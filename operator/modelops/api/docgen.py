"""docs/api-reference.md from the CRD schemas: every field, its type, default and validation.

    python -m modelops.api.docgen crds/ docs/api-reference.md   # or: make api-reference

It reads the committed CRDs, which crdgen generates from the pydantic models, so the
reference follows the API through them; tests/unit/test_api_reference.py fails when the
committed page is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HEADER = """\
# API reference

<!-- Generated from crds/ by `make api-reference` (python -m modelops.api.docgen). Do not edit. -->

Group `modelops.dev`, version `v1alpha1`. All kinds are namespaced. This page lists every
field of each kind: its type, whether it is required, its default, and what the API server
checks (schema and CEL rules, with the message it answers). `kubectl explain <kind>.<field>`
shows the same descriptions. docs/api.md explains how the kinds work together.
"""


def _type(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type", "")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type(schema['additionalProperties'])}"
    if kind == "object" and schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    if schema.get("format") and kind in ("integer", "number", "string"):
        return f"{kind} ({schema['format']})"
    return kind or "any"


def _code(value: Any) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = str(value)
    return "`" + " ".join(text.split()).replace("`", "'") + "`"


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _validation(schema: dict[str, Any]) -> str:
    checks = []
    if "enum" in schema:
        checks.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    for key, word in (("minimum", "≥"), ("maximum", "≤"), ("exclusiveMinimum", ">"), ("exclusiveMaximum", "<")):
        if key in schema and not isinstance(schema[key], bool):
            checks.append(f"{word} {schema[key]}")
    if schema.get("exclusiveMinimum") is True and "minimum" in schema:
        checks[-1] = f"> {schema['minimum']}"
    for key, word in (("minLength", "length ≥"), ("maxLength", "length ≤"), ("minItems", "items ≥"),
                      ("maxItems", "items ≤"), ("minProperties", "keys ≥"), ("maxProperties", "keys ≤")):
        if key in schema:
            checks.append(f"{word} {schema[key]}")
    if "pattern" in schema:
        checks.append(f"matches {_code(schema['pattern'])}")
    if schema.get("x-kubernetes-list-type") in ("set", "map"):
        keys = schema.get("x-kubernetes-list-map-keys")
        checks.append("unique items" if not keys else "unique by " + ", ".join(_code(k) for k in keys))
    for rule in schema.get("x-kubernetes-validations") or []:
        checks.append(f"{rule.get('message') or rule['rule']} ({_code(rule['rule'])})")
    if schema.get("nullable"):
        checks.append("may be null")
    return "; ".join(checks)


def _rows(schema: dict[str, Any], path: str, required: bool) -> list[str]:
    default = _code(schema["default"]) if "default" in schema else ""
    cells = [f"`{path}`", _type(schema), "yes" if required else "", default, _validation(schema), schema.get("description", "")]
    rows = ["| " + " | ".join(_escape(cell) for cell in cells) + " |"]
    children = schema
    suffix = ""
    while children.get("type") == "array":
        children, suffix = children.get("items", {}), suffix + "[]"
    if children.get("type") == "object" and isinstance(children.get("additionalProperties"), dict):
        children, suffix = children["additionalProperties"], suffix + ".*"
    needed = set(children.get("required") or [])
    for name, child in (children.get("properties") or {}).items():
        rows += _rows(child, f"{path}{suffix}.{name}", name in needed)
    return rows


ORDER = ("Model", "ModelVersion", "ModelDeployment")


def load(crd_dir: Path) -> list[dict[str, Any]]:
    crds = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(crd_dir.glob("*.yaml"))]
    return sorted(crds, key=lambda c: ORDER.index(c["spec"]["names"]["kind"]))


def render(crds: list[dict[str, Any]]) -> str:
    parts = [HEADER]
    for crd in crds:
        names = crd["spec"]["names"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            parts.append(f"## {names['kind']}\n")
            parts.append(f"{_escape(schema.get('description', ''))}\n")
            parts.append(
                f"`apiVersion: {crd['spec']['group']}/{version['name']}`, `kind: {names['kind']}`; "
                f"plural `{names['plural']}`, short names {', '.join(f'`{n}`' for n in names.get('shortNames', []))}, "
                f"categories {', '.join(f'`{c}`' for c in names.get('categories', []))}.\n")
            columns = version.get("additionalPrinterColumns") or []
            if columns:
                parts.append("`kubectl get` columns: " + ", ".join(
                    f"{c['name']} (`{c['jsonPath']}`{', wide' if c.get('priority') else ''})" for c in columns) + ".\n")
            needed = set(schema.get("required") or [])
            for top in ("spec", "status"):
                if top not in schema.get("properties", {}):
                    continue
                parts.append(f"### {names['kind']} {top}\n")
                parts.append("| Field | Type | Required | Default | Validation | Description |")
                parts.append("| --- | --- | --- | --- | --- | --- |")
                parts += _rows(schema["properties"][top], top, top in needed)
                parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m modelops.api.docgen <crd folder> <output.md>", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(render(load(Path(argv[0]))), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
