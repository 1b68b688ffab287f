"""Level-triggered and idempotent: a SIGKILL mid-reconcile duplicates nothing, a resync of
converged objects writes nothing (counted in the audit log), and deleting a Model removes
everything it owns. Compression Jobs here target no node, so nothing heavy runs."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.conftest import (
    NOWHERE,
    WRITE_VERBS,
    AuditLog,
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





def deployment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"model": "digits", "triton": {"backend": "python"}, "scheduling": {"nodeSelector": NOWHERE}, **spec},
    }


def phases(testbed: Any, namespace: str) -> dict[str, str | None]:
    items = get_json(testbed, namespace, "modelversions")["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase") for i in items}


def jobs_by_name(testbed: Any, namespace: str) -> dict[str, dict[str, Any]]:
    return {j["metadata"]["name"]: j for j in get_json(testbed, namespace, "jobs")["items"]}


def test_sigkill_mid_reconcile_then_restart_ends_with_exactly_one_job_per_version(
    testbed, namespace, storage, start_operator
) -> None:
    count = 20
    shas = {n: storage.put(f"digits/{n}/model.onnx", f"artifact {n}".encode()) for n in range(1, count + 1)}
    apply_docs(testbed, namespace, [storage.secret("storage"), digits_model_manifest(storage, NOWHERE)])
    operator = start_operator(workers=1)
    apply_docs(testbed, namespace, [digits_version_manifest(storage, n, shas[n]) for n in range(1, count + 1)])

    eventually(lambda: operator.metric("modelops_compression_jobs_created_total") >= 1, 60, "the first Job", interval=0.02)
    operator.kill()
    at_kill = len(jobs_by_name(testbed, namespace))
    assert at_kill < count, "the operator finished before it was killed; the test proves nothing"

    start_operator()
    eventually(lambda: set(phases(testbed, namespace).values()) == {"Compressing"}, 120, "every version compressing")
    found = jobs_by_name(testbed, namespace)
    assert sorted(found) == sorted(f"digits-v{n}-compress" for n in range(1, count + 1))
    versions = {v["metadata"]["name"]: v for v in get_json(testbed, namespace, "modelversions")["items"]}
    for name, job in found.items():
        owner = name.removesuffix("-compress")
        refs = job["metadata"]["ownerReferences"]
        assert [(r["kind"], r["uid"]) for r in refs] == [("ModelVersion", versions[owner]["metadata"]["uid"])]
        assert versions[owner]["status"]["jobName"] == name


def converged_snapshot(testbed: Any, namespace: str) -> str:
    kinds = "models,modelversions,modeldeployments,jobs,deployments,services"
    items = get_json(testbed, namespace, kinds)["items"]
    return json.dumps(sorted((i["kind"], i["metadata"]["name"], i["metadata"]["resourceVersion"]) for i in items))


def wait_converged(testbed: Any, namespace: str, quiet_seconds: float = 6) -> None:
    """No object in the namespace changed for quiet_seconds."""
    last, since = converged_snapshot(testbed, namespace), time.monotonic()
    deadline = since + 180
    while time.monotonic() - since < quiet_seconds:
        assert time.monotonic() < deadline, "the objects never stopped changing"
        time.sleep(1)
        now = converged_snapshot(testbed, namespace)
        if now != last:
            last, since = now, time.monotonic()


def converge_mixed_scenario(testbed: Any, namespace: str, storage: Storage) -> None:
    """One Ready version (from the cache) served by two deployments, three versions whose
    Jobs wait for a node that does not exist."""
    model_doc = digits_model_manifest(storage, NOWHERE)
    docs = [storage.secret("storage"), model_doc]
    for number in range(1, 5):
        doc = digits_version_manifest(storage, number, storage.put(f"digits/{number}/model.onnx", f"artifact {number}".encode()))
        if number == 1:
            publish_cached(storage, model_doc, doc, b"compressed bytes")
        docs.append(doc)
    docs += [deployment("latest"), deployment("pinned", versionPolicy="Pinned", version=1)]
    apply_docs(testbed, namespace, docs)
    eventually(lambda: phases(testbed, namespace) == {"digits-v1": "Ready", **{f"digits-v{n}": "Compressing" for n in (2, 3, 4)}},
               120, "the versions to settle")
    eventually(lambda: all((get_json(testbed, namespace, "modeldeployment", n).get("status") or {}).get("desiredVersion") == 1
                           for n in ("latest", "pinned")), 60, "both deployments to want version 1")
    wait_converged(testbed, namespace)


def test_resync_of_converged_objects_sends_no_writes(testbed, namespace, storage, start_operator, audit_log: AuditLog) -> None:
    operator = start_operator(resync_seconds=2)
    converge_mixed_scenario(testbed, namespace, storage)
    objects = 1 + 4 + 2

    audit_log.mark()
    before = operator.metric("modelops_reconcile_total")
    eventually(lambda: operator.metric("modelops_reconcile_total") - before >= 2 * objects, 60, "two periodic resyncs")
    operator.stop()
    restarted = start_operator()
    eventually(lambda: restarted.metric("modelops_reconcile_total") >= objects, 60, "the restarted operator's resync")
    time.sleep(2)

    requests = audit_log.operator_requests(namespace)
    writes = [(e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name")) for e in requests if e["verb"] in WRITE_VERBS]
    assert writes == []
    reads = [e for e in requests if e["verb"] in ("get", "list", "watch")]
    assert reads, "the audit log saw no requests from the operator at all"
    assert converged_snapshot(testbed, namespace)


def test_deleting_a_model_removes_everything_it_owns(testbed, namespace, storage, operator) -> None:
    converge_mixed_scenario(testbed, namespace, storage)
    assert get_json(testbed, namespace, "deployments,services,jobs")["items"], "the scenario created children"
    for kind in ("modelversions", "modeldeployments"):
        for item in get_json(testbed, namespace, kind)["items"]:
            assert item["metadata"]["ownerReferences"][0]["kind"] == "Model"

    kubectl(testbed, "delete", "model", "digits", "-n", namespace)

    def leftovers() -> list[str]:
        kinds = "modelversions,modeldeployments,jobs,deployments,services,pods"
        return [f"{i['kind']}/{i['metadata']['name']}" for i in get_json(testbed, namespace, kinds)["items"]]

    eventually(lambda: not leftovers() or None, 120, "the garbage collector to remove the Model's children")
    assert leftovers() == []
