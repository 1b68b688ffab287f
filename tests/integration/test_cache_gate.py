"""The cache never bypasses the accuracy gate, with the operator installed by the Helm chart.

One compression of the digits model (int8 weights, half the weights pruned) is made by a real
Job and then offered to three more versions of the same artifact and recipe: one whose
evaluation dataset does not exist (Failed, never served), one with a stricter threshold that
the recorded measurement fails (Rejected, without a Job), and one after the dataset was
replaced in place (evaluated again by a Job that does not compress again).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import (
    Storage,
    apply_docs,
    eventually,
    get_json,
    kubectl,
)
from tests.integration.test_compression_lifecycle import (
    condition,
    events_for,
    jobs,
    secret_and_model,
    status_of,
    upload_version,
    version,
    wait_phase,
)
from tests.integration.test_helm_chart import CHART, INSTALL_TIMEOUT_S, helm_ok

pytestmark = pytest.mark.integration

RECIPE = {"quantization": "int8-weight-only", "pruning": {"method": "unstructured", "amount": 0.5}}


def gate(storage: Storage, threshold: float, key: str = "digits/eval.npz") -> dict[str, Any]:
    return {"datasetUri": f"s3://{storage.bucket}/{key}", "metric": "cosine-similarity", "threshold": threshold}


def half_of(eval_npz: bytes) -> bytes:
    """The evaluation set cut in half: the same URI will hold other bytes."""
    with np.load(io.BytesIO(eval_npz)) as data:
        n = len(data["labels"]) // 2
        buffer = io.BytesIO()
        np.savez(buffer, inputs=data["inputs"][:n], labels=data["labels"][:n])
    return buffer.getvalue()


def job_names(testbed: Any, namespace: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs(testbed, namespace))


@pytest.fixture
def chart_operator(testbed, namespace) -> Any:
    release = "gate-" + namespace.rsplit("-", 1)[-1]
    helm_ok(testbed, "install", release, str(CHART), "--namespace", namespace,
            "--set", f"watchNamespaces={{{namespace}}}", "--set", "operator.retrySeconds=2",
            "--wait", f"--timeout={INSTALL_TIMEOUT_S}s", timeout=INSTALL_TIMEOUT_S + 60)
    pods = testbed.get(namespace, "pods", "-l", f"app.kubernetes.io/instance={release}")["items"]
    assert pods and all(testbed.image_path(namespace, p["metadata"]["name"], "operator") == "image" for p in pods)
    yield release
    testbed.helm("uninstall", release, "--namespace", namespace, "--ignore-not-found", "--wait", timeout=180)
    testbed.kubectl("delete", "clusterrole,clusterrolebinding", f"{release}-modelops", "--ignore-not-found", check=False)


def test_a_cached_compression_never_skips_the_gate(testbed, namespace, storage, digits, chart_operator) -> None:
    uri, sha, _ = upload_version(storage, digits, namespace, 1)
    secret, model = secret_and_model(storage)
    first = version("digits-v1", 1, uri, sha, compression=RECIPE, evaluation=gate(storage, 0.5))
    serve = {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"model": "digits", "versionPolicy": "Latest", "replicas": 0, "triton": {"backend": "python"}},
    }
    apply_docs(testbed, namespace, [secret, model, first, serve])
    v1 = wait_phase(testbed, namespace, "digits-v1", "Ready")
    measured = v1["report"]["metric"]["compressed"]
    # The chart made the operator's signing key at install; what it serves is signed with it.
    signed = v1["provenance"]
    assert signed["compressedSigner"].startswith("sha256:") and signed["statementUri"].startswith(v1["compressedArtifact"]["uri"])
    assert v1["report"]["metric"]["dataset"]["uri"] == gate(storage, 0.5)["datasetUri"]
    assert measured < 1.0, "pruning must change the outputs for a stricter threshold to be able to fail"
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.desiredVersion}=1", "modeldeployment/serve",
            "--timeout=180s", timeout=210)
    assert job_names(testbed, namespace) == ["digits-v1-compress"]

    # 1. The same artifact and recipe, evaluated on a dataset that does not exist.
    missing = gate(storage, 0.5, key="digits/no-such-eval.npz")
    apply_docs(testbed, namespace, [version("digits-v2", 2, uri, sha, compression=RECIPE, evaluation=missing)])
    v2 = wait_phase(testbed, namespace, "digits-v2", "Failed", timeout=120)
    ready = condition(v2, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DatasetNotFound")
    assert missing["datasetUri"] in ready["message"] and "evaluation.datasetUri" in ready["message"]
    assert "compressedArtifact" not in v2
    # Latest keeps serving version 1 (a spec change forces a fresh resolution).
    kubectl(testbed, "patch", "modeldeployment", "serve", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"rollout":{"progressDeadlineSeconds":301}}}')
    generation = get_json(testbed, namespace, "modeldeployment", "serve")["metadata"]["generation"]
    kubectl(testbed, "wait", "-n", namespace, f"--for=jsonpath={{.status.observedGeneration}}={generation}",
            "modeldeployment/serve", "--timeout=120s", timeout=150)
    assert get_json(testbed, namespace, "modeldeployment", "serve")["status"]["desiredVersion"] == 1
    print(f"\nmissing dataset: {ready['reason']}: {ready['message']}")

    # 2. A stricter threshold that the recorded measurement fails: Rejected without a Job.
    stricter = gate(storage, (measured + 1.0) / 2)
    apply_docs(testbed, namespace, [version("digits-v3", 3, uri, sha, compression=RECIPE, evaluation=stricter)])
    v3 = wait_phase(testbed, namespace, "digits-v3", "Rejected", timeout=120)
    ready = condition(v3, "Ready")
    assert ready["reason"] == "AccuracyGateRejected" and "same dataset" in ready["message"], ready["message"]
    metric = v3["report"]["metric"]
    assert (metric["compressed"], metric["threshold"], metric["passed"]) == (measured, stricter["threshold"], False)
    assert job_names(testbed, namespace) == ["digits-v1-compress"]
    print(f"stricter threshold: {ready['reason']}: {ready['message']}")

    # 3. The dataset replaced in place: the same URI, other bytes. Evaluated again by a Job.
    storage.put("digits/eval.npz", half_of(digits.eval_npz))
    apply_docs(testbed, namespace, [version("digits-v4", 4, uri, sha, compression=RECIPE, evaluation=gate(storage, 0.5))])
    v4 = wait_phase(testbed, namespace, "digits-v4", "Ready")
    ready = condition(v4, "Ready")
    assert ready["reason"] == "CachedCompressionEvaluated", ready
    assert v4["jobName"] == "digits-v4-compress" and "digits-v4-compress" in job_names(testbed, namespace)
    assert v4["compressedArtifact"] == v1["compressedArtifact"], "the compression itself was reused"
    uid = get_json(testbed, namespace, "modelversion", "digits-v4")["metadata"]["uid"]
    messages = [e["message"] for e in events_for(testbed, namespace, uid)]
    assert any(m.startswith("Evaluating: evaluation Job digits-v4-compress") for m in messages), messages
    dataset = v4["report"]["metric"]["dataset"]
    assert dataset["etag"] != v1["report"]["metric"]["dataset"]["etag"]
    assert dataset["samples"] == v1["report"]["metric"]["dataset"]["samples"] // 2
    print(f"dataset replaced: {ready['reason']}: {ready['message']}")

    # The Failed and Rejected versions were never served; Latest moves to version 4.
    eventually(lambda: get_json(testbed, namespace, "modeldeployment", "serve")["status"].get("desiredVersion") == 4,
               120, "Latest to pick version 4")
    rollouts = get_json(testbed, namespace, "modeldeployment", "serve")["status"].get("rollouts") or []
    assert not {2, 3} & {r["version"] for r in rollouts}
    assert {status_of(testbed, namespace, n)["phase"] for n in ("digits-v2", "digits-v3")} == {"Failed", "Rejected"}
    print(json.dumps({n: status_of(testbed, namespace, n)["phase"] for n in ("digits-v1", "digits-v2", "digits-v3", "digits-v4")}))
