"""The samples through the real operator, compressor, node agent and MinIO: one compression
Job per version on the GPU node, versions Ready, Triton serving; a new version moves Latest
and not Pinned; kubectl wait works for every kind; events tell the story."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.integration.conftest import (
    NOWHERE,
    ROOT,
    WRITE_VERBS,
    AuditLog,
    Digits,
    OperatorProcess,
    Storage,
    apply_docs,
    digits_model_manifest,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)

pytestmark = pytest.mark.integration

SAMPLES = ROOT / "config" / "samples"


def sample_docs() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted(SAMPLES.glob("*.yaml"))]


def for_this_bed(docs: list[dict[str, Any]], storage: Storage, shas: dict[int, str]) -> list[dict[str, Any]]:
    """The samples with only what belongs to this environment replaced: endpoint, bucket,
    credentials, the digests of the uploads, and Triton's python backend (the only one here)."""
    out = []
    for doc in docs:
        kind, spec = doc["kind"], doc.get("spec", {})
        if kind == "Secret":
            doc = {**doc, "stringData": storage.secret(doc["metadata"]["name"])["stringData"]}
        elif kind == "Model":
            spec["storage"].update(storage.model_storage(spec["storage"]["credentialsSecret"]["name"]))
            gate = spec["versionDefaults"]["evaluation"]
            gate["datasetUri"] = gate["datasetUri"].replace("s3://models/", f"s3://{storage.bucket}/")
        elif kind == "ModelVersion":
            spec["artifact"]["uri"] = spec["artifact"]["uri"].replace("s3://models/", f"s3://{storage.bucket}/")
            spec["artifact"]["sha256"] = shas[spec["version"]]
        elif kind == "ModelDeployment":
            spec["triton"]["backend"] = "python"
            spec["replicas"] = 1
        out.append(doc)
    return out


def version_manifest(number: int, storage: Storage, sha: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"digits-v{number}"},
        "spec": {"model": "digits", "version": number,
                 "artifact": {"uri": f"s3://{storage.bucket}/digits/{number}/model.onnx", "format": "onnx", "sha256": sha}},
    }


def upload(storage: Storage, digits: Digits) -> dict[int, str]:
    storage.put("digits/eval.npz", digits.eval_npz)
    return {n: storage.put(f"digits/{n}/model.onnx", digits.onnx[n - 1]) for n in (1, 2, 3)}


def jobs(testbed: Any, namespace: str) -> list[dict[str, Any]]:
    return get_json(testbed, namespace, "jobs")["items"]


def template_version(testbed: Any, namespace: str, name: str) -> str:
    deployment = get_json(testbed, namespace, "deployment", name)
    return deployment["spec"]["template"]["metadata"]["annotations"]["modelops.dev/version"]


def wait_ready(testbed: Any, namespace: str, *objects: str, timeout: int = 600) -> None:
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", *objects, f"--timeout={timeout}s", timeout=timeout + 30)


def test_samples_compress_serve_and_roll_forward(testbed, namespace, storage, digits, operator: OperatorProcess) -> None:
    shas = upload(storage, digits)
    apply_docs(testbed, namespace, for_this_bed(sample_docs(), storage, shas))

    wait_ready(testbed, namespace, "modelversion/digits-v1", "modelversion/digits-v2")
    compress_jobs = jobs(testbed, namespace)
    assert sorted(j["metadata"]["name"] for j in compress_jobs) == ["digits-v1-compress", "digits-v2-compress"]
    for job in compress_jobs:
        owner = job["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "ModelVersion" and owner["controller"] is True
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        pods = get_json(testbed, namespace, "pods", "-l", f"batch.kubernetes.io/job-name={job['metadata']['name']}")["items"]
        assert pods and all(p["spec"]["nodeName"] == "testbed-gpu" for p in pods)

    for name in ("digits-v1", "digits-v2"):
        status = get_json(testbed, namespace, "modelversion", name)["status"]
        assert status["phase"] == "Ready" and status["jobName"] == f"{name}-compress"
        assert status["compressedArtifact"]["uri"].startswith(f"s3://{storage.bucket}/modelops-cache/")
        assert len(status["compressedArtifact"]["sha256"]) == 64
        assert status["report"]["bytesAfter"] < status["report"]["bytesBefore"]

    wait_ready(testbed, namespace, "model/digits", "modeldeployment/digits-latest", "modeldeployment/digits-pinned")
    model = get_json(testbed, namespace, "model", "digits")["status"]
    assert model["latestReadyVersion"] == 2 and model["versions"]["ready"] == 2
    latest = get_json(testbed, namespace, "modeldeployment", "digits-latest")["status"]
    assert (latest["desiredVersion"], latest["servedVersion"]) == (2, 2)
    assert latest["endpoints"]["http"] == f"http://digits-latest.{namespace}.svc:8000"
    pinned = get_json(testbed, namespace, "modeldeployment", "digits-pinned")["status"]
    assert (pinned["desiredVersion"], pinned["servedVersion"]) == (1, 1)
    pinned_generation = get_json(testbed, namespace, "deployment", "digits-pinned")["metadata"]["generation"]

    listed = kubectl(testbed, "get", "modelops", "-n", namespace, "-o", "name").stdout.split()
    assert len(listed) == 5

    # Publishing version 3 rolls Latest forward; Pinned stays where it is.
    apply_docs(testbed, namespace, [version_manifest(3, storage, shas[3])])
    wait_ready(testbed, namespace, "modelversion/digits-v3")
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.servedVersion}=3",
            "modeldeployment/digits-latest", "--timeout=600s", timeout=630)
    wait_ready(testbed, namespace, "modeldeployment/digits-latest")
    latest = get_json(testbed, namespace, "modeldeployment", "digits-latest")["status"]
    assert latest["previousVersion"] == 2
    assert [(r["version"], r["outcome"]) for r in latest["rollouts"]][-2:] == [(2, "Succeeded"), (3, "Succeeded")]
    assert template_version(testbed, namespace, "digits-latest") == "3"
    assert template_version(testbed, namespace, "digits-pinned") == "1"
    assert get_json(testbed, namespace, "deployment", "digits-pinned")["metadata"]["generation"] == pinned_generation
    assert get_json(testbed, namespace, "modeldeployment", "digits-pinned")["status"]["servedVersion"] == 1
    assert len(jobs(testbed, namespace)) == 3

    reasons = {e["reason"] for e in get_json(testbed, namespace, "events")["items"]
               if e["source"].get("component") == "modelops" or e.get("reportingComponent") == "modelops.dev/operator"}
    assert {"JobCreated", "Compressed", "RolloutStarted", "RolloutSucceeded"} <= reasons

    assert operator.metric("modelops_compression_jobs_created_total") == 3
    assert operator.metric("modelops_rollouts_total", outcome="succeeded") >= 3
    assert operator.metric("modelops_model_versions", phase="Ready") == 3
    assert operator.health("/healthz") == 200 and operator.health("/readyz") == 200


def test_a_missing_artifact_is_a_condition_not_a_crash(testbed, namespace, storage, operator) -> None:
    docs = for_this_bed(sample_docs()[:2], storage, {})
    storage.put("digits/eval.npz", b"the gate's dataset")  # present, so only the artifact is missing
    apply_docs(testbed, namespace, docs + [version_manifest(1, storage, "ab" * 32)])
    status = eventually(
        lambda: (get_json(testbed, namespace, "modelversion", "digits-v1").get("status") or {}).get("phase") == "Verifying"
        and get_json(testbed, namespace, "modelversion", "digits-v1")["status"],
        60, "the version to report the missing artifact",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ArtifactNotFound" and f"s3://{storage.bucket}/digits/1/model.onnx" in ready["message"]
    assert jobs(testbed, namespace) == []
    # Uploading the object is enough: the operator checks again by itself.
    storage.put("digits/1/model.onnx", b"not really a model")
    eventually(lambda: len(jobs(testbed, namespace)) == 1, 60, "the Job once the artifact exists")


def test_a_wrong_model_bucket_is_named_on_the_model_before_any_job(testbed, namespace, storage, operator) -> None:
    """A Model whose spec.storage.bucket does not exist says so on its Ready condition, and its
    versions wait without a Job; creating the bucket is enough. The artifact may live in
    another bucket than the Model's, and the version's status says which one it read."""
    sha = storage.put("digits/1/model.onnx", b"bytes")
    output = testbed.storage(storage.bucket + "-out")  # not created yet: the Model names a missing bucket
    model = digits_model_manifest(output, NOWHERE)
    apply_docs(testbed, namespace, [storage.secret("storage"), model, version_manifest(1, storage, sha)])

    def model_ready() -> dict[str, Any]:
        return next((c for c in (get_json(testbed, namespace, "model", "digits").get("status") or {}).get("conditions") or []
                     if c["type"] == "Ready"), {})

    ready = eventually(lambda: model_ready().get("reason") == "BucketNotFound" and model_ready(), 60,
                       "the Model to name its missing bucket")
    assert ready["status"] == "False" and "spec.storage.bucket" in ready["message"] and output.bucket in ready["message"]
    status = eventually(lambda: (get_json(testbed, namespace, "modelversion", "digits-v1").get("status") or {}).get("conditions")
                        and get_json(testbed, namespace, "modelversion", "digits-v1")["status"], 60, "the version's status")
    waiting_on = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Verifying" and waiting_on["reason"] == "BucketNotFound", status
    assert "spec.storage.bucket" in waiting_on["message"] and output.bucket in waiting_on["message"]
    assert status["artifactBucket"] == storage.bucket != output.bucket
    assert jobs(testbed, namespace) == []

    output.ensure()  # no change to any object: the operator looks again on its own
    eventually(lambda: len(jobs(testbed, namespace)) == 1, 60, "the Job once the Model's bucket exists")
    eventually(lambda: model_ready().get("reason") not in (None, "BucketNotFound"), 60, "the Model's condition to clear")


def test_an_artifact_in_a_missing_bucket_names_the_uri(testbed, namespace, storage, operator) -> None:
    docs = for_this_bed(sample_docs()[:2], storage, {})
    storage.put("digits/eval.npz", b"the gate's dataset")
    missing = storage.bucket + "-nowhere"
    manifest = version_manifest(1, storage, "ab" * 32)
    manifest["spec"]["artifact"]["uri"] = f"s3://{missing}/digits/1/model.onnx"
    apply_docs(testbed, namespace, docs + [manifest])
    status = eventually(
        lambda: (get_json(testbed, namespace, "modelversion", "digits-v1").get("status") or {}).get("phase") == "Verifying"
        and get_json(testbed, namespace, "modelversion", "digits-v1")["status"],
        60, "the version to report the missing bucket",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "BucketNotFound", ready
    assert f"bucket {missing} of spec.artifact.uri" in ready["message"] and "does not exist" in ready["message"]
    assert status["artifactBucket"] == missing
    assert jobs(testbed, namespace) == []


def test_a_calibration_set_that_is_the_models_default_gate_dataset_is_refused(testbed, namespace, storage, operator) -> None:
    """The apiserver refuses a version naming one dataset for both; a gate that comes from the
    Model's versionDefaults only meets the version's calibration in the operator, which refuses
    it there, naming both fields, before any Job."""
    docs = for_this_bed(sample_docs()[:2], storage, {})
    gate = next(d for d in docs if d["kind"] == "Model")["spec"]["versionDefaults"]["evaluation"]["datasetUri"]
    sha = storage.put("digits/1/model.onnx", b"bytes")
    manifest = version_manifest(1, storage, sha)
    manifest["spec"]["compression"] = {"calibration": {"datasetUri": gate, "sha256": "ab" * 32}}
    apply_docs(testbed, namespace, docs + [manifest])
    status = eventually(
        lambda: (get_json(testbed, namespace, "modelversion", "digits-v1").get("status") or {}).get("phase") == "Failed"
        and get_json(testbed, namespace, "modelversion", "digits-v1")["status"],
        60, "the version to be refused",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec", ready
    assert "compression.calibration.datasetUri" in ready["message"] and "evaluation.datasetUri" in ready["message"]
    assert jobs(testbed, namespace) == []


def test_a_duplicate_version_number_waits_with_a_reason(testbed, namespace, storage, operator) -> None:
    docs = for_this_bed(sample_docs()[:2], storage, {})
    storage.put("digits/eval.npz", b"the gate's dataset")
    sha = storage.put("digits/1/model.onnx", b"bytes")
    first = version_manifest(1, storage, sha)
    apply_docs(testbed, namespace, docs + [first])
    eventually(lambda: jobs(testbed, namespace), 60, "the first version's Job")
    second = json.loads(json.dumps(first))
    second["metadata"]["name"] = "digits-v1-again"
    apply_docs(testbed, namespace, [second])
    status = eventually(
        lambda: (get_json(testbed, namespace, "modelversion", "digits-v1-again").get("status") or {}),
        60, "the duplicate's status",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Pending" and ready["reason"] == "DuplicateVersion" and "digits-v1" in ready["message"]
    assert len(jobs(testbed, namespace)) == 1


def test_a_rollout_that_misses_its_deadline_is_rolled_back(testbed, namespace, storage, digits, operator, audit_log: AuditLog) -> None:
    """Version 2's artifact cannot be loaded: Triton never gets ready, the deadline passes, the
    deployment returns to version 1 and Latest skips version 2 from then on. The rollback writes
    the verdict into the deployment's status; the only ModelVersion write it causes is version
    2's own status, derived by its reconcile (the deployment's writes none, see the unit tests)."""
    secret, model = for_this_bed(sample_docs()[:2], storage, {})
    good = version_manifest(1, storage, storage.put("digits/1/model.onnx", digits.onnx[0]))
    bad = version_manifest(2, storage, storage.put("digits/2/model.onnx", digits.onnx[1]))
    storage.put("digits/eval.npz", digits.eval_npz)  # the gate's dataset: a cached gate counts only with it
    publish_cached(storage, model, good, digits.onnx[0])
    publish_cached(storage, model, bad, b"this is not an ONNX model")
    serve = {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"model": "digits", "triton": {"backend": "python"}, "rollout": {"progressDeadlineSeconds": 15}},
    }
    apply_docs(testbed, namespace, [secret, model, good, serve])
    wait_ready(testbed, namespace, "modeldeployment/serve", timeout=300)

    apply_docs(testbed, namespace, [bad])
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.phase}=Ready", "modelversion/digits-v2",
            "--timeout=120s", timeout=150)
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.metadata.ownerReferences[0].kind}=Model",
            "modelversion/digits-v2", "--timeout=60s", timeout=90)
    audit_log.mark()  # version 2 is Ready and adopted: from here on only the rollback writes
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.failedVersions[0]}=2",
            "modeldeployment/serve", "--timeout=300s", timeout=330)
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.failedBy[0]}=serve", "modelversion/digits-v2",
            "--timeout=30s", timeout=60)
    wait_ready(testbed, namespace, "modeldeployment/serve", timeout=300)
    version_writes = [(e["verb"], e["objectRef"].get("name"), e["objectRef"].get("subresource"))
                      for e in audit_log.operator_requests(namespace)
                      if e["verb"] in WRITE_VERBS and e["objectRef"].get("resource") == "modelversions"]
    assert version_writes == [("patch", "digits-v2", "status")], version_writes
    assert mv_status(testbed, namespace, "digits-v1").get("failedBy") is None
    status = get_json(testbed, namespace, "modeldeployment", "serve")["status"]
    assert (status["desiredVersion"], status["servedVersion"]) == (1, 1)
    assert status["rollouts"][-1]["version"] == 2 and status["rollouts"][-1]["outcome"] == "RolledBack"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    assert template_version(testbed, namespace, "serve") == "1"
    reasons = [e["reason"] for e in get_json(testbed, namespace, "events")["items"]]
    assert "RolledBack" in reasons
    assert operator.metric("modelops_rollbacks_total") == 1


def mv_status(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    return get_json(testbed, namespace, "modelversion", name).get("status") or {}


def md_status(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    return get_json(testbed, namespace, "modeldeployment", name).get("status") or {}


def test_verdicts_are_per_deployment(testbed, namespace, storage, digits, operator) -> None:
    """Two Latest deployments of one Model. `gpu` asks for both GPUs of the test bed's GPU node,
    so a rolling update (one extra pod) can never be scheduled: its rollout of version 2 misses
    the deadline and is rolled back, while `cpu` serves version 2. Version 3 cannot load
    anywhere, so both roll it back; a retry on `gpu` clears only `gpu`'s mark."""
    secret, model = for_this_bed(sample_docs()[:2], storage, {})
    storage.put("digits/eval.npz", digits.eval_npz)  # the gate's dataset: a cached gate counts only with it
    versions = [version_manifest(n, storage, storage.put(f"digits/{n}/model.onnx", digits.onnx[n - 1])) for n in (1, 2, 3)]
    for doc, compressed in zip(versions, (digits.onnx[0], digits.onnx[1], b"this is not an ONNX model"), strict=True):
        publish_cached(storage, model, doc, compressed)

    def latest(name: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
                "spec": {"model": "digits", "triton": {"backend": "python", "instanceGroups": [{"count": 1, "kind": "KIND_CPU"}]},
                         "rollout": {"progressDeadlineSeconds": 30, "maxSurge": 1, "maxUnavailable": 0}, **spec}}

    apply_docs(testbed, namespace, [secret, model, versions[0], latest("gpu", scheduling={"gpus": 2}), latest("cpu")])
    wait_ready(testbed, namespace, "modeldeployment/gpu", "modeldeployment/cpu", timeout=300)

    # Version 2: rolled back on gpu only; cpu keeps serving it.
    apply_docs(testbed, namespace, [versions[1]])
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.failedVersions[0]}=2",
            "modeldeployment/gpu", "--timeout=300s", timeout=330)
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.servedVersion}=2",
            "modeldeployment/cpu", "--timeout=300s", timeout=330)
    wait_ready(testbed, namespace, "modeldeployment/gpu", "modeldeployment/cpu", timeout=300)
    gpu, cpu = md_status(testbed, namespace, "gpu"), md_status(testbed, namespace, "cpu")
    assert (gpu["servedVersion"], gpu["failedVersions"]) == (1, [2])
    assert cpu["servedVersion"] == 2 and "failedVersions" not in cpu
    assert template_version(testbed, namespace, "cpu") == "2" and template_version(testbed, namespace, "gpu") == "1"
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.failedBy[0]}=gpu", "modelversion/digits-v2",
            "--timeout=30s", timeout=60)
    v2 = mv_status(testbed, namespace, "digits-v2")
    assert v2["failedBy"] == ["gpu"] and v2["phase"] == "Ready"
    mark = next(c for c in v2["conditions"] if c["type"] == "RolloutFailed")
    assert (mark["status"], mark["reason"]) == ("True", "RolledBack") and "gpu" in mark["message"] and "cpu" not in mark["message"]
    listed = kubectl(testbed, "get", "mv", "digits-v2", "-n", namespace).stdout
    assert "FAILED-BY" in listed.splitlines()[0] and "gpu" in listed.splitlines()[1], listed

    # Version 3 fails on both: each deployment adds its own name, neither loses the other's.
    apply_docs(testbed, namespace, [versions[2]])
    eventually(lambda: mv_status(testbed, namespace, "digits-v3").get("failedBy") == ["cpu", "gpu"], 300,
               "both deployments to roll version 3 back", interval=1)
    wait_ready(testbed, namespace, "modeldeployment/gpu", "modeldeployment/cpu", timeout=300)
    assert md_status(testbed, namespace, "cpu")["failedVersions"] == [3]
    assert md_status(testbed, namespace, "gpu")["failedVersions"] == [2, 3]
    # latestReadyVersion is a fact about the versions, not about serving (docs/api.md).
    assert get_json(testbed, namespace, "model", "digits")["status"]["latestReadyVersion"] == 3

    # A retry on gpu clears gpu's marks only.
    kubectl(testbed, "annotate", "modeldeployment", "gpu", "-n", namespace, "modelops.dev/retry=1")
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.lastRetry}=1", "modeldeployment/gpu",
            "--timeout=30s", timeout=60)
    # gpu now tries version 3 again (and will fail it again after its deadline); until then only
    # cpu's mark is on it.
    eventually(lambda: mv_status(testbed, namespace, "digits-v3").get("failedBy") == ["cpu"], 10,
               "gpu's mark on version 3 to be cleared")
    assert md_status(testbed, namespace, "cpu")["failedVersions"] == [3]
    cpu = md_status(testbed, namespace, "cpu")
    assert cpu["servedVersion"] == 2 and cpu.get("lastRetry") is None

    # A deleted deployment takes its verdicts with it (its Model removes them).
    kubectl(testbed, "delete", "modeldeployment", "cpu", "-n", namespace)
    eventually(lambda: "cpu" not in (mv_status(testbed, namespace, "digits-v3").get("failedBy") or []), 10,
               "the deleted deployment's mark on version 3 to be removed")
