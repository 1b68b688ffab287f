"""config/samples/ applied exactly as docs/install.md ("Try the samples") says, on the test bed:
`make samples` fills them in, then the section's `sh` blocks run as written (e2e/docshell.py),
until digits-latest serves version 2 and digits-pinned version 1."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from e2e import docshell, support

pytestmark = pytest.mark.e2e

DOC = support.REPO_ROOT / "docs" / "install.md"


def make_samples() -> dict[str, str]:
    """`make samples`'s SAMPLES= and STORAGE_CA= lines."""
    result = subprocess.run(["make", "--no-print-directory", "samples"], cwd=support.REPO_ROOT, capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, f"make samples failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {name: values[name] for name in ("SAMPLES", "STORAGE_CA")}


def doc_env(testbed: support.Testbed, values: dict[str, str]) -> dict[str, str]:
    """The environment the doc's commands run in: kubectl on PATH and the test bed's kubeconfig."""
    return {**os.environ, **values, "KUBECONFIG": testbed.kubeconfig,
            "PATH": f"{Path(testbed.kubectl_path).parent}{os.pathsep}{os.environ['PATH']}"}


def test_the_samples_are_served_as_install_md_says(testbed: support.Testbed) -> None:
    values = {"NAMESPACE": f"samples-{secrets.token_hex(3)}", **make_samples()}
    assert docshell.env_names(DOC.read_text(encoding="utf-8")) == set(values), "the doc's variables changed"
    support.install_crds(testbed)
    operator = support.OperatorProcess(Path(testbed.kubeconfig), values["NAMESPACE"],
                                       Path(testbed.state_dir) / "logs" / f"operator-{values['NAMESPACE']}.log")
    operator.start()
    try:
        # The doc's paths are relative to the repository's root.
        result = docshell.run(DOC, doc_env(testbed, values), cwd=support.REPO_ROOT, timeout=1800)
        print(result.stdout)
        namespace = values["NAMESPACE"]
        assert "digits-latest" in result.stdout
        latest = testbed.get(namespace, "modeldeployment", "digits-latest")["status"]
        pinned = testbed.get(namespace, "modeldeployment", "digits-pinned")["status"]
        assert (latest["servedVersion"], pinned["servedVersion"]) == (2, 1)
        labels = json.loads(testbed.kubectl("get", "namespace", namespace, "-o", "json"))["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        pods = testbed.get(namespace, "pods", "-l", "modelops.dev/deployment=digits-latest")["items"]
        for pod in (p for p in pods if not p["metadata"].get("deletionTimestamp")):
            assert pod["metadata"]["labels"]["modelops.dev/version"] == "2"
    finally:
        operator.stop()
        testbed.kubectl("delete", "namespace", values["NAMESPACE"], "--wait=false", check=False)
