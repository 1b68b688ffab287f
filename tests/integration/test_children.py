"""What the operator renders, it keeps: a scale, an env var set by hand and a deleted Service
are reverted by the reconcile that the child's own watch event triggers; a deleted compression
Job comes back while its version is in progress and stays gone once the version is finished."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests.integration.conftest import (
    NOWHERE,
    WRITE_VERBS,
    OperatorProcess,
    Storage,
    apply_docs,
    digits_model_manifest,
    digits_version_manifest,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)

pytestmark = pytest.mark.integration

# Reverts are driven by watch events, not by the periodic resync (set far away here).
REVERT_SECONDS = 10
NO_RESYNC = {"resync_seconds": 3600}
GPU_NODE = {"nvidia.com/gpu.present": "true"}




def serve(replicas: int = 1) -> dict[str, Any]:
    # The Triton pods target no node: what is checked here is the objects, not serving.
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"model": "digits", "replicas": replicas, "triton": {"backend": "python"},
                 "scheduling": {"nodeSelector": NOWHERE}},
    }


def env_of(deployment: dict[str, Any], container: str) -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    [found] = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == container]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in found.get("env") or []}


def serving_scenario(testbed: Any, namespace: str, storage: Storage) -> dict[str, Any]:
    """A Ready version (from the cache) and a ModelDeployment whose children exist."""
    model_doc = digits_model_manifest(storage, NOWHERE)
    v1 = digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", b"artifact 1"))
    publish_cached(storage, model_doc, v1, b"compressed bytes")
    apply_docs(testbed, namespace, [storage.secret("storage"), model_doc, v1, serve()])
    eventually(lambda: (get_json(testbed, namespace, "modeldeployment", "serve").get("status") or {}).get("desiredVersion") == 1
               and kubectl(testbed, "get", "-n", namespace, "deployment/serve", "service/serve", check=False).returncode == 0,
               120, "the Triton Deployment and Service")
    return get_json(testbed, namespace, "deployment", "serve")


def test_a_scale_to_zero_is_reverted(testbed, namespace, storage, start_operator) -> None:
    start_operator(**NO_RESYNC)
    serving_scenario(testbed, namespace, storage)
    kubectl(testbed, "scale", "-n", namespace, "deployment/serve", "--replicas=0")
    eventually(lambda: get_json(testbed, namespace, "deployment", "serve")["spec"]["replicas"] == 1,
               REVERT_SECONDS, "replicas back at the ModelDeployment's 1", interval=0.2)

    # The count belongs to the ModelDeployment: changing it there is followed.
    kubectl(testbed, "patch", "-n", namespace, "modeldeployment/serve", "--type=merge", "-p", '{"spec": {"replicas": 2}}')
    eventually(lambda: get_json(testbed, namespace, "deployment", "serve")["spec"]["replicas"] == 2,
               REVERT_SECONDS, "replicas at the new 2", interval=0.2)


def test_env_set_by_hand_is_reverted(testbed, namespace, storage, start_operator) -> None:
    start_operator(**NO_RESYNC)
    rendered = serving_scenario(testbed, namespace, storage)
    # -o json prints the object as the edit left it (the revert may land before any later read).
    edited = json.loads(kubectl(testbed, "set", "env", "-n", namespace, "deployment/serve", "-c", "triton",
                                "HAND_EDIT=1", "-o", "json").stdout)
    assert env_of(edited, "triton") == {"HAND_EDIT": "1"}
    edited = json.loads(kubectl(testbed, "set", "env", "-n", namespace, "deployment/serve", "-c", "fetch",
                                "MODELOPS_S3_REGION=elsewhere", "-o", "json").stdout)
    assert env_of(edited, "fetch")["MODELOPS_S3_REGION"] == "elsewhere"

    def reverted() -> bool:
        live = get_json(testbed, namespace, "deployment", "serve")
        return env_of(live, "triton") == env_of(rendered, "triton") and env_of(live, "fetch") == env_of(rendered, "fetch")

    eventually(reverted, REVERT_SECONDS, "the env vars as rendered", interval=0.2)
    live = get_json(testbed, namespace, "deployment", "serve")
    assert live["spec"]["template"] == rendered["spec"]["template"]


def test_a_deleted_service_is_recreated(testbed, namespace, storage, start_operator) -> None:
    start_operator(**NO_RESYNC)
    serving_scenario(testbed, namespace, storage)
    before = get_json(testbed, namespace, "service", "serve")
    kubectl(testbed, "delete", "-n", namespace, "service/serve", "--wait=true")

    def recreated() -> dict[str, Any] | None:
        result = kubectl(testbed, "get", "-n", namespace, "service/serve", "-o", "json", check=False)
        live = json.loads(result.stdout) if result.returncode == 0 else None
        return live if live and live["metadata"]["uid"] != before["metadata"]["uid"] else None

    after = eventually(recreated, REVERT_SECONDS, "the Service to be recreated", interval=0.2)
    assert after["spec"]["selector"] == before["spec"]["selector"]
    assert [(p["name"], p["port"]) for p in after["spec"]["ports"]] == [(p["name"], p["port"]) for p in before["spec"]["ports"]]
    assert after["metadata"]["ownerReferences"] == before["metadata"]["ownerReferences"]


def test_a_hand_edited_child_converges_to_zero_writes(testbed, namespace, storage, start_operator, audit_log) -> None:
    """After a revert, nothing keeps writing: resyncs of the reverted objects send no write."""
    operator: OperatorProcess = start_operator(resync_seconds=2)
    serving_scenario(testbed, namespace, storage)
    kubectl(testbed, "set", "env", "-n", namespace, "deployment/serve", "-c", "triton", "HAND_EDIT=1")
    eventually(lambda: "HAND_EDIT" not in env_of(get_json(testbed, namespace, "deployment", "serve"), "triton"),
               REVERT_SECONDS, "the env var to be removed", interval=0.2)
    eventually(lambda: get_json(testbed, namespace, "deployment", "serve")["status"].get("observedGeneration")
               == get_json(testbed, namespace, "deployment", "serve")["metadata"]["generation"], 30, "the Deployment to settle")
    # The ModelDeployment's status follows the Deployment's: wait until the operator saw it.
    before = operator.metric("modelops_reconcile_total", kind="ModelDeployment")
    eventually(lambda: operator.metric("modelops_reconcile_total", kind="ModelDeployment") - before >= 2, 30, "two resyncs")

    audit_log.mark()
    before = operator.metric("modelops_reconcile_total", kind="ModelDeployment")
    eventually(lambda: operator.metric("modelops_reconcile_total", kind="ModelDeployment") - before >= 3, 30, "three resyncs")
    writes = [(e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name"))
              for e in audit_log.operator_requests(namespace) if e["verb"] in WRITE_VERBS]
    assert writes == []


def test_a_job_deleted_while_compressing_is_recreated(testbed, namespace, storage, start_operator) -> None:
    operator = start_operator(**NO_RESYNC)
    apply_docs(testbed, namespace, [storage.secret("storage"), digits_model_manifest(storage, NOWHERE),
                                    digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", b"artifact 1"))])
    first = eventually(lambda: get_json(testbed, namespace, "jobs")["items"], 60, "the compression Job")[0]
    kubectl(testbed, "delete", "-n", namespace, "job/digits-v1-compress", "--wait=true")

    def recreated() -> dict[str, Any] | None:
        jobs = get_json(testbed, namespace, "jobs")["items"]
        return jobs[0] if jobs and jobs[0]["metadata"]["uid"] != first["metadata"]["uid"] else None

    again = eventually(recreated, REVERT_SECONDS, "the Job to be recreated", interval=0.2)
    assert again["metadata"]["name"] == "digits-v1-compress"
    assert again["spec"]["template"]["spec"]["containers"][0]["args"] == first["spec"]["template"]["spec"]["containers"][0]["args"]
    assert operator.metric("modelops_compression_jobs_created_total") == 2
    assert get_json(testbed, namespace, "modelversion", "digits-v1")["status"]["phase"] == "Compressing"


def test_a_job_of_a_finished_version_is_not_recreated(testbed, namespace, storage, start_operator) -> None:
    operator = start_operator(resync_seconds=2)
    storage.put("digits/1/model.onnx", b"artifact 1")
    wrong = hashlib.sha256(b"not the uploaded bytes").hexdigest()  # the Job fails fast and for good
    apply_docs(testbed, namespace, [storage.secret("storage"), digits_model_manifest(storage, GPU_NODE), digits_version_manifest(storage, 1, wrong)])
    eventually(lambda: (get_json(testbed, namespace, "modelversion", "digits-v1").get("status") or {}).get("phase") == "Failed",
               300, "the version to fail its checksum")
    kubectl(testbed, "delete", "-n", namespace, "job/digits-v1-compress", "--wait=true")

    # Resyncs (every 2 s) look at the version again and start nothing.
    before = operator.metric("modelops_reconcile_total", kind="ModelVersion")
    eventually(lambda: operator.metric("modelops_reconcile_total", kind="ModelVersion") - before >= 3, 60,
               "three more reconciles of the version")
    assert get_json(testbed, namespace, "jobs")["items"] == []
    assert operator.metric("modelops_compression_jobs_created_total") == 1
    assert get_json(testbed, namespace, "modelversion", "digits-v1")["status"]["phase"] == "Failed"
