"""README.md's demo output is docs/demo-output.txt, which scripts/demo-output.py writes from a
real `make demo` run; so the README cannot drift from what the demo prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def script():
    spec = importlib.util.spec_from_file_location("demo_output", ROOT / "scripts" / "demo-output.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_readme_shows_the_committed_demo_output() -> None:
    demo = script()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    output = (ROOT / "docs" / "demo-output.txt").read_text(encoding="utf-8")
    assert readme == demo.readme_with(output, readme), "README.md's demo block is stale; run `scripts/demo-output.py --readme`"


def test_the_output_is_from_a_finished_run() -> None:
    output = (ROOT / "docs" / "demo-output.txt").read_text(encoding="utf-8")
    assert "\x1b[" not in output
    assert "] Done\n" in output and '"namespace": "modelops-demo"' in output


def test_a_changed_output_changes_the_readme() -> None:
    demo = script()
    readme = f"before\n{demo.BEGIN}\n```\nold\n```\n{demo.END}\nafter\n"
    assert demo.readme_with("new\n", readme) == f"before\n{demo.BEGIN}\n```\nnew\n```\n{demo.END}\nafter\n"
