"""docs/api-reference.md is what the CRD schemas generate, and it lists every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelops.api import docgen

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def field_paths(schema: dict[str, Any], path: str) -> set[str]:
    paths = {path}
    while schema.get("type") == "array":
        schema, path = schema.get("items", {}), path + "[]"
    if isinstance(schema.get("additionalProperties"), dict):
        schema, path = schema["additionalProperties"], path + ".*"
    for name, child in (schema.get("properties") or {}).items():
        paths |= field_paths(child, f"{path}.{name}")
    return paths


def test_the_committed_reference_is_generated_from_the_crds() -> None:
    committed = (ROOT / "docs" / "api-reference.md").read_text(encoding="utf-8")
    assert committed == docgen.render(docgen.load(ROOT / "crds")), "docs/api-reference.md is stale; run `make api-reference`"


def test_every_field_has_a_row_with_its_type_default_and_checks() -> None:
    crds = docgen.load(ROOT / "crds")
    text = docgen.render(crds)
    rows = {line.split(" | ")[0].removeprefix("| ").strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    for crd in crds:
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for top in ("spec", "status"):
            for path in field_paths(schema["properties"][top], top):
                assert path in rows, f"{crd['spec']['names']['kind']} {path} is missing from the reference"
    # Spot checks that each column says what the schema says.
    assert "| `spec.versionPolicy` | string |  | `Latest` | one of `Latest`, `Pinned` |" in text
    assert "must be an integer version of 1 or greater (`self >= 1`)" in rows["spec.version"]
    assert "| `spec.storage.bucket` | string | yes |" in text


def test_table_cells_escape_pipes_so_rules_with_or_stay_in_their_column() -> None:
    row = docgen.render(docgen.load(ROOT / "crds")).split("| `spec.signature.inputs[].dims` |")[1].splitlines()[0]
    assert row.count(" | ") == 4, row
