"""docs/architecture.md stays a true map: every file, folder and module it names exists, and
every module of the package has its place on it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "modelops"
PAGE = (ROOT / "docs" / "architecture.md").read_text()
TOP_LEVEL = ("operator/", "tests/", "docs/", "charts/", "e2e/", "crds/", "config/", "images/", "scripts/", ".importlinter")
# Files the page names by their place in a folder it gives beside them.
IN_CONTEXT = {"model.py"}
CODE = re.findall(r"`([^`\s<>]+)`", PAGE)


def _path(name: str) -> Path:
    return ROOT / name if name.startswith(TOP_LEVEL) else PACKAGE / name


def test_every_path_on_the_page_exists() -> None:
    named = [c for c in CODE if not c.startswith(("/", "-")) and ("/" in c or c.endswith((".py", ".md"))) and ":" not in c]
    assert len(named) > 40
    missing = sorted({c for c in named if c not in IN_CONTEXT and not _path(c).exists()})
    assert missing == []


def test_every_module_and_name_on_the_page_imports() -> None:
    dotted = [c for c in CODE if re.fullmatch(r"(api|core|handlers|serving|contract|compress)(\.\w+)+", c)]
    assert dotted
    for name in dotted:
        module, _, attribute = name.rpartition(".")
        try:
            importlib.import_module(f"modelops.{name}")
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(f"modelops.{module}"), attribute), name


def test_every_module_of_the_package_has_its_place() -> None:
    modules = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    packages = [f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    unplaced = sorted(m for m in [*modules, *packages] if f"`{m}`" not in PAGE)
    assert unplaced == []
