"""The chart's NetworkPolicies, enforced on the test bed by a real policy engine: kube-router's
network policy controller (built by `e2e/testbed/build.sh kube-router`, run by
e2e/testbed/netpol.py), with iptables rules and ipsets on the host, which every pod's traffic
crosses (pod to pod on the bridge: FORWARD; pod to the API server and MinIO on the bridge's
address: INPUT).

The chart is installed with its policies on; its operator serves a digits model on Triton.
Then, connection by connection, from inside the pods:
- a pod in another namespace cannot reach the Triton pod's 8000 or 8001 (nor 8002);
- a pod of the Triton pod's namespace (the default `triton.clients`) can;
- the operator reaches the API server, MinIO and Triton's metrics port 8002, and nothing else:
  not Triton's inference ports, not a pod in another namespace, not the node's kubelet port.
Every target that a policy refuses answers the node (the host), which no policy restricts,
so a refusal is the policy's and not a missing listener.

On demand (`make test-netpol`, marker `netpol`): the engine's cold build takes minutes, and
its rules live in the host's filter table, which the machine's test beds share (one engine
runs at a time).
"""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.support import restricted
from e2e.testbed.netpol import PolicyEngine
from tests.integration.canaryload import publish_versions
from tests.integration.conftest import ROOT, apply_docs, eventually, kubectl

pytestmark = [pytest.mark.integration, pytest.mark.netpol]

CHART = ROOT / "charts" / "modelops"
IMAGE = "ghcr.io/modelops/modelops-operator:0.1.0"  # the image `make images` built: it has python
INSTALL_TIMEOUT_S = 300
LISTENER_PORT = 8080
# What a connection from inside a pod came to: "open", or the error that ended it.
CONNECT = textwrap.dedent("""
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
        print("open")
    except OSError as err:
        print(type(err).__name__)
""")


@pytest.fixture
def policy_engine(testbed: Any) -> Iterator[PolicyEngine]:
    built = subprocess.run([str(ROOT / "e2e/testbed/build.sh"), "kube-router"], check=True, capture_output=True, text=True,
                           timeout=1800)
    engine = PolicyEngine(testbed.kubeconfig, Path(testbed.state_dir), Path(built.stdout.strip().splitlines()[-1]) / "kube-router")
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def other_namespace(testbed: Any, namespace: str) -> Iterator[str]:
    name = f"{namespace[:50]}-other"
    testbed.create_namespace(name)
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def connect(testbed: Any, namespace: str, pod: str, host: str, port: int, container: str | None = None) -> str:
    where = ["-c", container] if container else []
    return testbed.kubectl("exec", "-n", namespace, pod, *where, "--", "python", "-c", CONNECT, host, str(port),
                           timeout=60).strip()


def from_node(host: str, port: int) -> str:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "open"
    except OSError as err:
        return type(err).__name__


def listener(name: str) -> dict[str, Any]:
    """A pod that accepts TCP on LISTENER_PORT and runs `python` for the connection checks."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": restricted({"containers": [{
            "name": "main", "image": IMAGE, "command": ["python", "-m", "http.server", str(LISTENER_PORT)],
            "readinessProbe": {"tcpSocket": {"port": LISTENER_PORT}, "periodSeconds": 1},
        }]}),
    }


def pod_ip(testbed: Any, namespace: str, name: str) -> str:
    return str(testbed.get(namespace, "pod", name)["status"]["podIP"])


@pytest.mark.timeout(1800)
def test_the_charts_network_policies_are_enforced(testbed, namespace, other_namespace, storage, digits, policy_engine) -> None:
    state = json.loads((Path(testbed.state_dir) / "state.json").read_text())
    bridge, index = state["bridge_ip"], state["index"]
    apiserver_port, minio_port = 6443 + index, 9000 + 10 * index
    kubelet_port = next(node["kubelet_port"] for node in state["nodes"])
    release = "np-" + namespace.rsplit("-", 1)[-1]
    fullname = f"{release}-modelops"
    try:
        result = testbed.helm(
            "install", release, str(CHART), "--namespace", namespace, "--set", f"watchNamespaces={{{namespace}}}",
            "--set", "operator.retrySeconds=2", "--set", "networkPolicy.enabled=true",
            "--set", f"networkPolicy.apiServer.cidrs={{{bridge}/32}}", "--set", f"networkPolicy.apiServer.ports={{{apiserver_port}}}",
            "--set", f"networkPolicy.storage.cidrs={{{bridge}/32}}", "--set", f"networkPolicy.storage.ports={{{minio_port}}}",
            "--wait", f"--timeout={INSTALL_TIMEOUT_S}s", timeout=INSTALL_TIMEOUT_S + 60)
        assert result.returncode == 0, result.stderr
        policies = {p["metadata"]["name"] for p in testbed.get(namespace, "networkpolicies")["items"]}
        assert policies == {fullname, f"{fullname}-triton"}, policies

        # The operator, behind its egress policy, serves a version: it reached the API server and MinIO.
        model, docs = publish_versions(storage, digits, count=1)
        serve = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
                 "spec": {"model": "digits", "replicas": 1,
                          "triton": {"backend": "python", "instanceGroups": [{"count": 1, "kind": "KIND_CPU"}]}}}
        apply_docs(testbed, namespace, [storage.secret("storage"), model, docs[1], serve])
        kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=400s", timeout=430)
        (triton,) = testbed.get(namespace, "pods", "-l", "app.kubernetes.io/component=triton")["items"]
        triton_ip = triton["status"]["podIP"]
        (operator,) = [p["metadata"]["name"] for p in testbed.get(namespace, "pods", "-l", f"app.kubernetes.io/instance={release}")["items"]]

        apply_docs(testbed, namespace, [listener("client")])
        apply_docs(testbed, other_namespace, [listener("stranger")])
        for ns, name in ((namespace, "client"), (other_namespace, "stranger")):
            kubectl(testbed, "wait", "-n", ns, "--for=condition=Ready", f"pod/{name}", "--timeout=120s", timeout=150)
        stranger_ip = pod_ip(testbed, other_namespace, "stranger")

        # Every target below listens: the node, which no policy restricts, reaches each.
        targets = {"triton": [(triton_ip, port) for port in (8000, 8001, 8002)], "stranger": [(stranger_ip, LISTENER_PORT)],
                   "apiserver": [(bridge, apiserver_port)], "minio": [(bridge, minio_port)], "kubelet": [(bridge, kubelet_port)]}
        for host, port in (t for group in targets.values() for t in group):
            assert from_node(host, port) == "open", f"nothing listens on {host}:{port}"

        def refused(ns: str, pod: str, host: str, port: int, container: str | None = None) -> str | None:
            answer = connect(testbed, ns, pod, host, port, container)
            return None if answer == "open" else answer

        # A pod in another namespace: refused on every Triton port (the engine may still be
        # catching up with the new pods, hence the wait on the first).
        eventually(lambda: refused(other_namespace, "stranger", triton_ip, 8000), 120, "the stranger refused Triton's 8000",
                   detail=policy_engine.pod_chains)
        for port in (8000, 8001, 8002):
            assert connect(testbed, other_namespace, "stranger", triton_ip, port) != "open", port
        # A client in Triton's namespace: inference on both ports, no metrics.
        assert connect(testbed, namespace, "client", triton_ip, 8000) == "open"
        assert connect(testbed, namespace, "client", triton_ip, 8001) == "open"
        assert connect(testbed, namespace, "client", triton_ip, 8002) != "open"

        # The operator: the API server, storage and Triton's metrics, nothing else.
        for host, port in [(bridge, apiserver_port), (bridge, minio_port), (triton_ip, 8002)]:
            assert connect(testbed, namespace, operator, host, port, "operator") == "open", (host, port)
        for host, port in [(triton_ip, 8000), (triton_ip, 8001), (stranger_ip, LISTENER_PORT), (bridge, kubelet_port)]:
            assert connect(testbed, namespace, operator, host, port, "operator") != "open", (host, port)
        # The stranger's own namespace has no policy: the stranger reaches the client.
        assert connect(testbed, other_namespace, "stranger", pod_ip(testbed, namespace, "client"), LISTENER_PORT) == "open"
    finally:
        testbed.helm("uninstall", release, "--namespace", namespace, "--ignore-not-found", timeout=120)
        testbed.kubectl("delete", "clusterrole,clusterrolebinding", fullname, "--ignore-not-found", check=False)
