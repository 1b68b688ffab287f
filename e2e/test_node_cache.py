"""The node-local cache end to end: an external-data model (three files) is compressed, gated
and served through the cache by the real operator, node cache agent, MinIO, node agent and
tritonserver. The first pod's artifact is filled by the agent and linked, not copied, into
Triton's repository; a second replica on the same node starts from the cache with no GET to
MinIO at all; each live pod's artifact is pinned, and a pod that goes loses its pin.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from e2e import lifecycle as lc
from e2e.support import REPO_ROOT, eventually
from e2e.test_file_sets import external_data_model, file_set_version, upload_file_set

pytestmark = pytest.mark.e2e

CLAIM = "modelops-nodecache"


def minio_gets(cluster) -> float:
    """GetObject requests MinIO has served so far (its node metrics, which are not cached)."""
    context = ssl.create_default_context(cafile=cluster.s3_ca)
    with urllib.request.urlopen(f"{cluster.s3_endpoint}/minio/v2/metrics/node", context=context, timeout=10) as response:
        text = response.read().decode()
    counts = [float(m.group(1)) for m in re.finditer(r'^minio_s3_requests_total\{[^}]*api="getobject"[^}]*\} (\S+)$', text, re.M)]
    assert "minio_s3_requests_total" in text, text[:2000]
    return sum(counts)


@pytest.fixture(scope="module")
def node(testbed) -> str:
    nodes = json.loads(testbed.kubectl("get", "nodes", "-o", "json"))["items"]
    return sorted(n["metadata"]["name"] for n in nodes if (n["metadata"].get("labels") or {}).get("type") != "kwok")[0]


@pytest.fixture(scope="module")
def cache_root(testbed) -> Path:
    # Not under /tmp: the test bed's triton containers mount their scratch emptyDir there
    # before the cache, which would hide a host directory under it.
    root = Path(tempfile.mkdtemp(prefix="nodecache-", dir=testbed.state_dir))
    root.chmod(0o755)  # the pods' non-root user reads the entries
    return root


@pytest.fixture(scope="module")
def agent(testbed, node, cache_root):
    """The agent as its DaemonSet pod runs it on `node` (here, a process on the host)."""
    log = Path(testbed.state_dir) / "logs" / "nodecache-agent.log"
    env = {**os.environ, **testbed.storage_env(), "KUBECONFIG": testbed.kubeconfig, "PYTHONPATH": str(REPO_ROOT / "operator")}
    command = [sys.executable, "-m", "modelops.nodecache", "--root", str(cache_root), "--budget", "1Gi",
               "--interval", "0.5", "--node", node]
    with log.open("a") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    yield {"process": process, "log": log, "root": cache_root}
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def bed(testbed, agent, cache_root):
    operator_env = {"MODELOPS_NODE_CACHE_CLAIM": CLAIM, "MODELOPS_NODE_CACHE_PATH": str(cache_root)}
    with lc.serving_namespace(testbed, "e2e-nodecache", operator_env=operator_env) as ns:
        folder = Path(tempfile.mkdtemp())
        paths = external_data_model(ns.files.onnx, folder, ns.namespace)
        storage = testbed.storage(lc.support.BUCKET)
        files = upload_file_set(storage, folder, paths, f"{ns.namespace}/set/")
        yield {"cluster": testbed, "namespace": ns.namespace, "files": files, "prefix": storage.uri(f"{ns.namespace}/set/"),
               "inputs": np.load(ns.files.eval_npz)["inputs"]}


def fetch_message(pod: dict) -> str:
    fetched = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == "fetch")
    return fetched["state"]["terminated"]["message"]


def claims_of(root: Path, namespace: str) -> set[str]:
    """The pins of this namespace's pods (the agent pins for every serving pod on its node)."""
    return {p.name for p in (root / "pins").iterdir() if p.name.startswith(f"{namespace}.")}


def answer(root: Path, pod: dict) -> dict:
    return json.loads((root / "status" / f"pod-{pod['metadata']['uid']}.json").read_text())


def test_a_second_replica_starts_from_the_node_cache_with_no_get(bed, agent, node):
    cluster, namespace, root = bed["cluster"], bed["namespace"], agent["root"]
    deployment = lc.deployment_manifest("digits-cached", progress_deadline=300)
    deployment["spec"]["scheduling"] = {"nodeSelector": {"kubernetes.io/hostname": node}}
    cluster.apply(namespace, [file_set_version(1, bed["prefix"], bed["files"], "int8-weight-only"), deployment])
    lc_wait = ["wait", "-n", namespace, "--timeout=600s"]
    cluster.kubectl(*lc_wait, "--for=jsonpath={.status.phase}=Ready", "modelversion/digits-v1", timeout=630)
    cluster.kubectl(*lc_wait, "--for=condition=Ready", "modeldeployment/digits-cached", timeout=630)

    # The operator made the namespace's claim on the cache, bound to its local volume.
    claim = cluster.get(namespace, "pvc", CLAIM)
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == f"modelops-nodecache-{namespace}", claim
    volume = json.loads(cluster.kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json"))
    assert volume["spec"]["local"]["path"] == str(root), volume["spec"]

    # The first pod waited for the agent's fill, then linked the files from the cache.
    first = cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits-cached")["items"][0]
    message = fetch_message(first)
    assert "Linked 2 files" in message and "from the node cache" in message and "0 bytes downloaded" in message, message
    filled = answer(root, first)
    assert filled["phase"] == "Ready" and filled["reason"] == "Filled", filled
    print(f"\nfirst pod: {message}\nagent: {filled['reason']}: {filled['message']}")
    version = cluster.get(namespace, "modelversion", "digits-v1")["status"]["compressedArtifact"]
    for item in version["files"]:  # each entry is named by its sha256 and holds the bytes stored
        entry = root / "sha256" / item["sha256"]
        assert entry.stat().st_size == item["bytes"] and entry.stat().st_mode & 0o777 == 0o444, item
    assert claims_of(root, namespace) == {f"{namespace}.{first['metadata']['uid']}"}
    served = lc.predictions(lc.ready_server_ips(cluster, namespace, "digits-cached")[0], bed["inputs"])
    assert served.shape[0] == bed["inputs"].shape[0]

    # A second replica on the same node: no GetObject reaches MinIO while it starts.
    before = minio_gets(cluster)
    cluster.kubectl("patch", "-n", namespace, "modeldeployment/digits-cached", "--type=merge", "-p", '{"spec":{"replicas":2}}')
    eventually(lambda: len(lc.ready_server_ips(cluster, namespace, "digits-cached")) == 2, 300, "two ready replicas")
    after = minio_gets(cluster)
    pods = cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits-cached")["items"]
    second = next(p for p in pods if p["metadata"]["uid"] != first["metadata"]["uid"])
    message = fetch_message(second)
    assert "from the node cache" in message and "0 bytes downloaded" in message, message
    assert answer(root, second)["reason"] == "AlreadyCached", answer(root, second)
    assert after == before, f"MinIO served {after - before:g} GetObject requests while the second replica started"
    print(f"second pod: {message}\nMinIO GetObject requests: {before:g} before, {after:g} after")
    ips = lc.ready_server_ips(cluster, namespace, "digits-cached")
    np.testing.assert_allclose(lc.predictions(ips[0], bed["inputs"]), lc.predictions(ips[1], bed["inputs"]), rtol=1e-6)

    # Both pods pin the artifact; scaled back to one, the pod that went loses its pin.
    assert claims_of(root, namespace) == {f"{namespace}.{p['metadata']['uid']}" for p in pods}
    cluster.kubectl("patch", "-n", namespace, "modeldeployment/digits-cached", "--type=merge", "-p", '{"spec":{"replicas":1}}')
    eventually(lambda: len(claims_of(root, namespace)) == 1, 120, "the gone pod's pin removed", detail=lambda: claims_of(root, namespace))
