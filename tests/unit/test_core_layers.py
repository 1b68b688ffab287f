"""Import layers: the operator never loads the ML frameworks, and only one module talks to
each outside system. Checked statically (import-linter) and at run time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchao", "onnx", "onnxruntime")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "operator")}


def test_import_linter_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is part of the dev dependencies"
    result = subprocess.run(
        [lint, "--config", str(ROOT / ".importlinter"), "--no-cache"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_starting_the_operator_loads_no_ml_framework() -> None:
    probe = (
        "import sys, json\n"
        "import modelops.__main__, modelops.handlers.registry, modelops.fetch\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
