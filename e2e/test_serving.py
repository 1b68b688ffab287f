"""Serving end to end: the real operator, compressor, MinIO, node agent and tritonserver.

The tests share one namespace and run in order, as a platform team's day would go:
v1 is served, v2 rolls out under load, v2 answers as onnxruntime does, a broken v3 is
rolled back and v4 rolls out, and a corrupted artifact never replaces a serving pod.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from e2e import lifecycle as lc
from e2e.loadgen import InferenceCall, LoadReport, run_load
from e2e.support import eventually as wait_for

pytestmark = pytest.mark.e2e

DEADLINE = 60
LOAD_CONCURRENCY = 8
MIN_REQUESTS = 10_000


@pytest.fixture(scope="module")
def bed(testbed):
    """A namespace with the CRDs, the storage Secret, the digits Model and a running operator."""
    with lc.serving_namespace(testbed, "e2e-serving") as ns:
        data = np.load(ns.files.eval_npz)
        yield {"cluster": testbed, "namespace": ns.namespace, "files": ns.files, "model_uri": ns.model_uri,
               "model_sha": ns.model_sha, "inputs": data["inputs"], "labels": data["labels"], "operator": ns.operator}


def wait(bed, *args: str, timeout: int = 300) -> None:
    bed["cluster"].kubectl("wait", "-n", bed["namespace"], *args, f"--timeout={timeout}s", timeout=timeout + 30)


def status(bed, kind: str, name: str) -> dict:
    return bed["cluster"].get(bed["namespace"], kind, name).get("status", {})


def digits_call(inputs: np.ndarray) -> InferenceCall:
    batch = inputs[:1].astype(np.float32)

    def validate(outputs):
        assert outputs["logits"].shape == (1, 10), outputs["logits"].shape

    return InferenceCall(model_name=lc.MODEL_NAME, inputs={"input": batch}, outputs=["logits"], validate=validate)


def load(endpoints, inputs: np.ndarray, requests: int) -> LoadReport:
    return run_load(endpoints, digits_call(inputs), requests=requests, concurrency=LOAD_CONCURRENCY,
                    time_limit_s=120, request_timeout_s=10)


def phase_summary(reports: list[LoadReport]) -> dict:
    """Counts add up; p50 is the median of the bursts' p50s and p99 the worst burst's p99."""
    return {
        "requests": sum(r.requests for r in reports),
        "failures": sum(r.failures for r in reports),
        "p50_ms": round(float(np.median([r.p50_ms for r in reports])), 2),
        "p99_ms": round(max(r.p99_ms for r in reports), 2),
        "errors": {k: v for r in reports for k, v in r.errors.items()},
    }


def rollout_finished(bed, deployment: str, version: int) -> bool:
    md = status(bed, "modeldeployment", deployment)
    if md.get("servedVersion") != version:
        return False
    pods = bed["cluster"].get(bed["namespace"], "pods", "-l", f"modelops.dev/deployment={deployment}")["items"]
    return bool(pods) and all(p["metadata"]["labels"].get("modelops.dev/version") == str(version) for p in pods)


def test_v1_to_v2_rollout_under_load_fails_no_request(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    cluster.apply(namespace, [
        lc.version_manifest(1, bed["model_uri"], bed["model_sha"], quantization="none"),
        lc.deployment_manifest("digits-latest", replicas=2, progress_deadline=DEADLINE),
        lc.deployment_manifest("digits-pinned", pinned=1, progress_deadline=DEADLINE),
    ])
    wait(bed, "--for=jsonpath={.status.servedVersion}=1", "modeldeployment/digits-latest",
         "modeldeployment/digits-pinned")
    wait(bed, "--for=condition=Ready", "modeldeployment/digits-latest", "modeldeployment/digits-pinned")
    pinned_generation = cluster.get(namespace, "deployment", "digits-pinned")["metadata"]["generation"]
    # The fetch init container ran from the operator image that `make images` built; Triton
    # runs the nvidia-pytriton wheel's tritonserver.
    for pod in cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits-pinned")["items"]:
        assert cluster.image_path(namespace, pod["metadata"]["name"], "fetch") == "image"
        assert cluster.image_path(namespace, pod["metadata"]["name"], "triton") == "triton"

    endpoints = lc.ServiceEndpoints(cluster.kubeconfig, namespace, "digits-latest")
    try:
        wait_for(lambda: len(endpoints()) == 2, 60, "two ready endpoints behind digits-latest")
        before = [load(endpoints, bed["inputs"], 2000)]

        cluster.apply(namespace, [lc.version_manifest(2, bed["model_uri"], bed["model_sha"],
                                                      quantization="int8-weight-only")])
        during = []
        deadline = time.monotonic() + 600
        while not rollout_finished(bed, "digits-latest", 2):
            assert time.monotonic() < deadline, "the rollout to v2 did not finish within 10 minutes"
            during.append(load(endpoints, bed["inputs"], 500))
        sent = sum(r.requests for r in before + during)
        after = [load(endpoints, bed["inputs"], max(2000, MIN_REQUESTS - sent))]
    finally:
        endpoints.stop()

    phases = {"before": phase_summary(before), "during": phase_summary(during), "after": phase_summary(after)}
    print("\nrollout v1 -> v2 under load:", json.dumps(phases, indent=2))
    total = sum(p["requests"] for p in phases.values())
    assert total >= MIN_REQUESTS
    assert during, "load ran while the rollout was in progress"
    assert all(p["failures"] == 0 for p in phases.values()), phases

    # The Pinned deployment did not move: same Deployment generation, still serving v1.
    assert cluster.get(namespace, "deployment", "digits-pinned")["metadata"]["generation"] == pinned_generation
    assert status(bed, "modeldeployment", "digits-pinned")["servedVersion"] == 1
    assert rollout_finished(bed, "digits-pinned", 1)


def test_served_v2_agrees_with_onnxruntime_on_every_sample(bed):
    import onnxruntime as ort

    artifact = status(bed, "modelversion", "digits-v2")["compressedArtifact"]
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.onnx"
        result = bed["cluster"].store().download(artifact["uri"], local, expected_sha256=artifact["sha256"])
        assert result.sha256 == artifact["sha256"]
        session = ort.InferenceSession(str(local), providers=["CPUExecutionProvider"])
        direct = session.run(["logits"], {"input": bed["inputs"].astype(np.float32)})[0]
    ip = lc.ready_server_ips(bed["cluster"], bed["namespace"], "digits-latest")[0]
    served = lc.predictions(ip, bed["inputs"])
    assert served.shape == direct.shape == (len(bed["inputs"]), 10)
    np.testing.assert_array_equal(served.argmax(axis=1), direct.argmax(axis=1))
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-5)


def test_broken_v3_is_rolled_back_and_v4_rolls_out(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    with tempfile.TemporaryDirectory() as tmp:
        broken = lc.unservable_onnx(bed["files"].onnx, Path(tmp) / "model.onnx")
        uri, sha = cluster.upload(broken, f"{namespace}/v3/model.onnx")
    cluster.apply(namespace, [lc.version_manifest(3, uri, sha, quantization="int8-weight-only")])
    wait(bed, "--for=condition=Ready", "modelversion/digits-v3")
    wait(bed, "--for=jsonpath={.status.desiredVersion}=3", "modeldeployment/digits-latest", timeout=60)
    # The rollback must land within progressDeadlineSeconds + 10 s of the rollout starting.
    wait(bed, "--for=jsonpath={.status.conditions[?(@.type=='Degraded')].reason}=RolledBack",
         "modeldeployment/digits-latest", timeout=DEADLINE + 10)
    md = status(bed, "modeldeployment", "digits-latest")
    assert md["servedVersion"] == 2
    assert 3 in md["failedVersions"]
    degraded = next(c for c in md["conditions"] if c["type"] == "Degraded")
    assert "version 3" in degraded["message"]
    wait(bed, "--for=condition=RolloutFailed", "modelversion/digits-v3", timeout=60)
    mark = next(c for c in status(bed, "modelversion", "digits-v3")["conditions"] if c["type"] == "RolloutFailed")
    assert mark["reason"] == "RolledBack" and "digits-latest" in mark["message"]
    wait_for(lambda: rollout_finished(bed, "digits-latest", 2), 120, "only v2 pods behind digits-latest")
    ip = lc.ready_server_ips(cluster, namespace, "digits-latest")[0]
    assert lc.score(ip, bed["inputs"][:50], bed["labels"][:50]).accuracy > 0.9

    cluster.apply(namespace, [lc.version_manifest(4, bed["model_uri"], bed["model_sha"], quantization="int8-dynamic")])
    wait(bed, "--for=jsonpath={.status.servedVersion}=4", "modeldeployment/digits-latest", timeout=300)
    wait(bed, "--for=condition=Ready", "modeldeployment/digits-latest")
    assert status(bed, "modeldeployment", "digits-pinned")["servedVersion"] == 1
    assert status(bed, "modeldeployment", "digits-latest")["failedVersions"] == [3], "v3 stays marked"

    # The documented way to clear the mark: a new value in the modelops.dev/retry annotation.
    cluster.kubectl("annotate", "modeldeployment", "digits-latest", "-n", namespace, "modelops.dev/retry=1")
    wait(bed, "--for=jsonpath={.status.lastRetry}=1", "modeldeployment/digits-latest", timeout=60)
    md = status(bed, "modeldeployment", "digits-latest")
    assert "failedVersions" not in md and md["servedVersion"] == 4
    wait(bed, "--for=condition=RolloutFailed=False", "modelversion/digits-v3", timeout=60)


def test_corrupted_artifact_fails_the_new_pod_and_old_pods_keep_serving(bed):
    cluster, namespace = bed["cluster"], bed["namespace"]
    artifact = status(bed, "modelversion", "digits-v2")["compressedArtifact"]
    store = cluster.store()
    data = bytearray(store.read_bytes(artifact["uri"]))
    data[len(data) // 2] ^= 0xFF
    store.upload_bytes(bytes(data), artifact["uri"])
    old_pods = {p["metadata"]["name"] for p in cluster.get(namespace, "pods", "-l",
                                                            "modelops.dev/deployment=digits-pinned")["items"]}

    cluster.kubectl("patch", "modeldeployment", "digits-pinned", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"version": 2}}')

    def failed_fetch() -> str | None:
        pods = cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits-pinned")["items"]
        for pod in pods:
            for status_ in pod["status"].get("initContainerStatuses", []):
                for state in (status_.get("state", {}), status_.get("lastState", {})):
                    message = state.get("terminated", {}).get("message")
                    if message and state["terminated"]["exitCode"] != 0:
                        return message
        return None

    wait_for(lambda: failed_fetch() is not None, 120, "the new pod's fetch init container to fail")
    message = failed_fetch()
    assert artifact["sha256"] in message and "sha256" in message.lower(), message
    ready = lc.ready_server_ips(cluster, namespace, "digits-pinned")
    pods_now = cluster.get(namespace, "pods", "-l", "modelops.dev/deployment=digits-pinned")["items"]
    ready_names = {p["metadata"]["name"] for p in pods_now
                   if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}
    assert ready_names == old_pods, "the old pod keeps serving; the new one never became ready"
    assert lc.score(ready[0], bed["inputs"][:50], bed["labels"][:50]).accuracy > 0.9

