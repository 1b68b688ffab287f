"""Shared pytest wiring: the local test bed, a namespace per test, and failure dumps.

Tests marked `integration` or `e2e` use the `testbed` fixture. It reuses a running test
bed (from `make cluster-up`) or brings one up for the session and tears it down at the
end. When a test that used a namespace fails, the namespace's objects, events and pod
logs are written under .testbed-artifacts/<test>/ and the path is printed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent
ARTIFACTS = REPO_ROOT / ".testbed-artifacts"


@dataclass(frozen=True)
class Testbed:
    """What a test needs to reach the local test bed."""

    kubeconfig: str
    kubectl_path: str
    helm_path: str
    apiserver_url: str
    audit_log: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    state_dir: str
    python: str
    project_root: str

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
        result = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, input=input, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result.stdout if check else result.stdout + result.stderr

    def helm(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.helm_path, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, timeout=timeout,
        )

    def stop_minio(self) -> None:
        """Kill the test bed's MinIO, as an outage would; data and credentials are kept."""
        from e2e.testbed import cluster

        cluster.stop_minio(cluster.Layout.from_env())

    def start_minio(self) -> None:
        from e2e.testbed import cluster

        cluster.start_minio(cluster.Layout.from_env())

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's output, read from the node agent's log file for that pod."""
        uid = json.loads(self.kubectl("get", "pod", pod, "-n", namespace, "-o", "json"))["metadata"]["uid"]
        for path in Path(self.state_dir, "nodes").glob(f"*/pods/{uid}/{container}.log"):
            return path.read_text(errors="replace")
        return ""


def _binaries() -> Path:
    if os.environ.get("MODELOPS_BINARIES"):
        return Path(os.environ["MODELOPS_BINARIES"])
    out = subprocess.run([str(REPO_ROOT / "e2e/testbed/build.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    from e2e.testbed import cluster

    layout = cluster.Layout.from_env()
    existing = cluster.read_state(layout)
    reused = bool(existing and cluster.healthy(existing))
    # sys.executable is the project's environment; the node agents run project images with it.
    state = cluster.up(layout, _binaries(), Path(sys.executable))
    yield Testbed(
        kubeconfig=state["kubeconfig"], kubectl_path=state["kubectl"], helm_path=state["helm"],
        apiserver_url=state["apiserver_url"], audit_log=state["audit_log"], s3_endpoint=state["s3_endpoint"],
        s3_access_key=state["s3_access_key"], s3_secret_key=state["s3_secret_key"],
        state_dir=state["state_dir"], python=state["python"], project_root=state["project_root"],
    )
    if not reused and not os.environ.get("MODELOPS_KEEP_TESTBED"):
        cluster.down(layout)


@pytest.fixture(scope="session")
def kube_api(testbed: Testbed):
    from kubernetes import config

    return config.new_client_from_config(config_file=testbed.kubeconfig)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _dump_namespace(testbed: Testbed, namespace: str, test_name: str) -> Path:
    target = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    target.mkdir(parents=True, exist_ok=True)
    kinds = "all,events,configmaps,jobs,leases,endpointslices"
    custom = testbed.kubectl("api-resources", "--api-group=modelops.dev", "-o", "name", check=False).split()
    kinds += "".join(f",{k}" for k in custom if "." in k)
    (target / "objects.yaml").write_text(testbed.kubectl("get", kinds, "-n", namespace, "-o", "yaml", check=False))
    (target / "events.txt").write_text(
        testbed.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False))
    pods = json.loads(testbed.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False) or "{}")
    for pod in pods.get("items", []):
        uid = pod["metadata"]["uid"]
        for log in Path(testbed.state_dir, "nodes").glob(f"*/pods/{uid}/*.log"):
            (target / f"{pod['metadata']['name']}.{log.name}").write_text(log.read_text(errors="replace"))
    return target


@pytest.fixture
def namespace(request, testbed: Testbed) -> str:
    """A fresh namespace for one test; dumped on failure, deleted afterwards."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    testbed.kubectl("create", "namespace", name)
    yield name
    failed = any(getattr(getattr(request.node, f"report_{w}", None), "failed", False) for w in ("setup", "call"))
    if failed:
        path = _dump_namespace(testbed, name, request.node.nodeid)
        print(f"\n[testbed] namespace {name} dumped to {path}", file=sys.stderr)
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_modifyitems(config, items):
    """Tests under tests/integration and e2e/ need the test bed; mark them so -m selects them."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO_ROOT).parts
        if parts[:2] == ("tests", "integration") and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        if parts[:1] == ("e2e",) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)
