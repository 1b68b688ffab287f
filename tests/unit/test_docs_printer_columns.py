"""The printer columns that docs/api.md lists and that README.md's `kubectl get` output shows
are the CRDs' additionalPrinterColumns, in their order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def crd_columns() -> dict[str, tuple[list[str], list[str]]]:
    """kind -> (the columns `kubectl get` shows, the ones only `-o wide` adds)."""
    columns = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        (version,) = [v for v in crd["spec"]["versions"] if v.get("served", True)]
        printer = version.get("additionalPrinterColumns", [])
        columns[crd["spec"]["names"]["kind"]] = ([c["name"] for c in printer if not c.get("priority")],
                                                 [c["name"] for c in printer if c.get("priority")])
    return columns


def api_md_columns(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """The printer-column table of docs/api.md: names in backquotes, `wide:` before the -o wide ones."""
    start = text.index("| kind | short name | printer columns")
    table = text[start:text.index("\n\n", start)].splitlines()[2:]
    columns = {}
    for row in table:
        kind, _, cell = (c.strip() for c in row.strip("|").split("|"))
        shown, _, wide = cell.partition("; wide:")
        columns[kind.strip("`")] = (re.findall(r"`([^`]+)`", shown), re.findall(r"`([^`]+)`", wide))
    return columns


def test_api_md_lists_the_crds_printer_columns() -> None:
    assert api_md_columns((ROOT / "docs" / "api.md").read_text(encoding="utf-8")) == crd_columns()


def test_readme_kubectl_get_headers_are_the_crds_printer_columns() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    columns = crd_columns()
    kinds = {kind.lower(): kind for kind in columns}
    seen = set()
    for header, first_row in zip(readme, readme[1:], strict=False):
        if not header.startswith("NAME ") or ".modelops.dev/" not in first_row:
            continue
        kind = kinds[first_row.split(".modelops.dev/")[0]]
        shown, _ = columns[kind]
        assert re.split(r"\s{2,}", header.strip()) == ["NAME", *(name.upper() for name in shown)], kind
        seen.add(kind)
    assert seen == set(kinds.values()), f"README.md shows `kubectl get` output for {sorted(seen)} only"


def test_a_missing_column_is_found() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8").replace("`Failed-By` (", "(", 1)
    assert api_md_columns(text) != crd_columns()
