"""The chart's Argo CD health checks in Argo CD's own Lua VM.

e2e/testbed/go/argocd-lua is a Go test that imports github.com/argoproj/argo-cd/v3/util/lua
(pinned in its go.mod) and runs each health.lua through `VM.ExecuteHealthLua`, as the
application controller runs a check from argocd-cm. `e2e/testbed/build.sh argocd-lua` builds it
once (`go test -c`, cached like the test bed's other Go binaries). The cases are the operator's
own statuses (tests/argocd_cases.py): every phase, canary steps, suspend, scaling and
autoscaling up and down, missing objects, and observedGeneration behind.

On demand (`make test-argocd`, marker `argocd`): its cold build takes minutes (docs/testbed.md);
the same cases run in Lua 5.1 in make test (tests/unit/test_chart_argocd_health.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.argocd_cases import cases
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.argocd

CHECKS = ROOT / "charts" / "modelops" / "argocd"
MIN_CASES = 50


def go_subtest_name(name: str) -> str:
    """The name `go test` reports for t.Run(name): spaces become underscores."""
    return re.sub(r"\s", "_", name)


@pytest.mark.timeout(1800)
def test_every_case_passes_in_argo_cds_lua_vm(tmp_path: Path) -> None:
    built = subprocess.run([str(ROOT / "e2e" / "testbed" / "build.sh"), "argocd-lua"], check=True, capture_output=True,
                           text=True, timeout=1700)
    binary = Path(built.stdout.strip().splitlines()[-1]) / "argocd-lua.test"
    found = cases()
    assert len(found) >= MIN_CASES
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([c.wire() for c in found]))
    result = subprocess.run([str(binary), "-test.v", "-test.run", "TestChartHealthChecks"], capture_output=True, text=True,
                            timeout=120, env={"MODELOPS_ARGOCD_CASES": str(path), "MODELOPS_ARGOCD_CHECKS": str(CHECKS)})
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout + result.stderr
    passed = set(re.findall(r"--- PASS: TestChartHealthChecks/(\S+)", result.stdout))
    assert passed == {go_subtest_name(c.name) for c in found}
    print(f"\n{len(passed)} cases passed in Argo CD's Lua VM")
