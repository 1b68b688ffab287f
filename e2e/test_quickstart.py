"""docs/quickstart.md's commands, extracted from the page and run as written on the test bed
(e2e/docshell.py): train, upload with the AWS CLI, Secret and CA ConfigMap, a restricted
namespace, apply, wait, port-forward and a request, which must predict the label it printed."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from e2e import docshell, support
from e2e.tritonlocal import free_ports

pytestmark = pytest.mark.e2e

DOC = support.REPO_ROOT / "docs" / "quickstart.md"


def test_the_quickstart_serves_the_model_as_written(testbed: support.Testbed) -> None:
    # The AWS CLI the page uploads with, pinned and cached (scripts/ensure-awscli.sh), never the host's.
    aws_bin = subprocess.run([str(support.REPO_ROOT / "scripts" / "ensure-awscli.sh")], check=True,
                             capture_output=True, text=True).stdout.strip()
    suffix = secrets.token_hex(3)
    values = {
        "NAMESPACE": f"quickstart-{suffix}", "BUCKET": f"quickstart-{suffix}",
        "S3_ENDPOINT": testbed.s3_endpoint, "STORAGE_CA": testbed.s3_ca,
        "AWS_ACCESS_KEY_ID": testbed.s3_access_key, "AWS_SECRET_ACCESS_KEY": testbed.s3_secret_key,
        "BACKEND": "python", "PORT": str(free_ports(1)[0]),
    }
    assert docshell.env_names(DOC.read_text(encoding="utf-8")) == set(values), "the page's variables changed"
    env = {**os.environ, **values, "KUBECONFIG": testbed.kubeconfig,
           "PATH": os.pathsep.join([str(Path(testbed.kubectl_path).parent), aws_bin, os.environ["PATH"]])}
    support.install_crds(testbed)
    namespace = values["NAMESPACE"]
    operator = support.OperatorProcess(Path(testbed.kubeconfig), namespace,
                                       Path(testbed.state_dir) / "logs" / f"operator-{namespace}.log")
    operator.start()
    try:
        result = docshell.run(DOC, env, cwd=support.REPO_ROOT, timeout=1500)
        print(result.stdout, result.stderr[-2000:])
        label = re.search(r"label of the first held-out digit: (\d)", result.stderr)
        predicted = re.search(r"predicted digit: (\d)", result.stdout)
        assert label and predicted, result.stdout
        assert predicted.group(1) == label.group(1)
        assert f"sha256 {testbed.get(namespace, 'modelversion', 'digits-v1')['spec']['artifact']['sha256']}" in result.stdout
        status = testbed.get(namespace, "modeldeployment", "digits")["status"]
        assert status["servedVersion"] == 1
        labels = json.loads(testbed.kubectl("get", "namespace", namespace, "-o", "json"))["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    finally:
        operator.stop()
        testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
