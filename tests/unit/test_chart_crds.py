"""The chart ships the generated CRDs unchanged: charts/modelops/crds/ is a copy of crds/."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "modelops" / "crds"
FIX = "regenerate with `make crds`, then copy: cp crds/*.yaml charts/modelops/crds/"


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.yaml"))}


def test_the_chart_ships_every_generated_crd_and_nothing_else() -> None:
    generated, shipped = _files(GENERATED), _files(CHART_CRDS)
    assert generated, "crds/ holds no CRDs"
    assert sorted(shipped) == sorted(generated), f"charts/modelops/crds/ lists other files than crds/; {FIX}"


@pytest.mark.parametrize("name", sorted(_files(GENERATED)))
def test_each_shipped_crd_is_byte_for_byte_the_generated_one(name: str) -> None:
    shipped = CHART_CRDS / name
    assert shipped.is_file(), f"charts/modelops/crds/{name} is missing; {FIX}"
    assert shipped.read_bytes() == (GENERATED / name).read_bytes(), f"charts/modelops/crds/{name} differs from crds/{name}; {FIX}"
