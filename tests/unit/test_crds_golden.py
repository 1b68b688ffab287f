"""The committed CRDs are exactly what the pydantic models generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelops.api.crdgen import render_all

pytestmark = pytest.mark.unit

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def test_committed_crds_match_the_models() -> None:
    generated = render_all()
    committed = {p.name: p.read_text(encoding="utf-8") for p in CRD_DIR.glob("*.yaml")}
    assert sorted(committed) == sorted(generated), "run `make crds` to regenerate crds/"
    for name, text in generated.items():
        assert committed[name] == text, f"crds/{name} is stale; run `make crds`"


def test_committed_crds_are_valid_yaml_with_one_document_each() -> None:
    for path in sorted(CRD_DIR.glob("*.yaml")):
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert len(docs) == 1, path.name
        assert docs[0]["kind"] == "CustomResourceDefinition"
