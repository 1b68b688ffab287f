"""Artifacts and compression through the real operator, compression Jobs, node agent and MinIO:
int8 meets its size and accuracy bars, the accuracy gate rejects a destructive recipe and Latest
never serves it, a wrong sha256 fails once and for good, a MinIO outage is retried and ends in a
clear condition, an identical request is served from the cache without a Job, a corrupted cache
entry is compressed again, and a URI that storage refuses fails at once, without retries."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml

from tests.integration.conftest import (
    ROOT,
    AuditLog,
    Digits,
    OperatorProcess,
    Storage,
    apply_docs,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)

pytestmark = pytest.mark.integration

SAMPLES = ROOT / "config" / "samples"
GPU_NODE = "testbed-gpu"
# A node label that only this test sets: a Job whose nodeSelector asks for it waits, unscheduled,
# until the test opens the gate, so the test can break storage before the compressor starts.
GATE_LABEL = "it.modelops.dev/compress-gate"
EXIT_BAD_ARTIFACT, EXIT_TRANSIENT = 10, 12


# -- manifests -------------------------------------------------------------------------------


def relabelled(onnx_bytes: bytes, label: str) -> bytes:
    """The same model with another doc string: identical behaviour, its own sha256."""
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    model.doc_string = label
    return model.SerializeToString()


def secret_and_model(storage: Storage, threshold: float = 0.5) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sample Secret and Model, pointed at this test's bucket: int8 weights and a
    top-1 accuracy gate by default, Jobs on the GPU node."""
    secret = yaml.safe_load((SAMPLES / "00-storage-credentials.yaml").read_text())
    secret["stringData"] = storage.secret(secret["metadata"]["name"])["stringData"]
    model = yaml.safe_load((SAMPLES / "01-model.yaml").read_text())
    model["spec"]["storage"].update(storage.model_storage(model["spec"]["storage"]["credentialsSecret"]["name"]))
    gate = model["spec"]["versionDefaults"]["evaluation"]
    gate.update(datasetUri=f"s3://{storage.bucket}/digits/eval.npz", threshold=threshold)
    return secret, model


def version(name: str, number: int, uri: str, sha256: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
        "spec": {"model": "digits", "version": number, "artifact": {"uri": uri, "format": "onnx", "sha256": sha256}, **spec},
    }


def upload_version(storage: Storage, digits: Digits, namespace: str, number: int, seed: int = 0) -> tuple[str, str, bytes]:
    """A digits model of this test's own in MinIO, with the evaluation set: (uri, sha256, bytes)."""
    storage.put("digits/eval.npz", digits.eval_npz)
    data = relabelled(digits.onnx[seed], f"{namespace} v{number}")
    key = f"digits/{number}/model.onnx"
    return f"s3://{storage.bucket}/{key}", storage.put(key, data), data


# -- observation -----------------------------------------------------------------------------


def status_of(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    return get_json(testbed, namespace, "modelversion", name).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == type_)


def wait_phase(testbed: Any, namespace: str, name: str, phase: str, timeout: int = 600) -> dict[str, Any]:
    kubectl(testbed, "wait", "-n", namespace, f"--for=jsonpath={{.status.phase}}={phase}", f"modelversion/{name}",
            f"--timeout={timeout}s", timeout=timeout + 30)
    return status_of(testbed, namespace, name)


def jobs(testbed: Any, namespace: str) -> list[dict[str, Any]]:
    return get_json(testbed, namespace, "jobs")["items"]


def job_pods(testbed: Any, namespace: str, job: str) -> list[dict[str, Any]]:
    return get_json(testbed, namespace, "pods", "-l", f"batch.kubernetes.io/job-name={job}")["items"]


def exit_codes(pods: list[dict[str, Any]]) -> list[int]:
    """Exit codes of the compressor containers that have terminated, oldest pod first."""
    codes = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
        for container in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated:
                codes.append(terminated["exitCode"])
    return codes


def job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c["type"] == type_ and c["status"] == "True"), None)


def operator_job_creates(audit_log: AuditLog, namespace: str) -> list[str]:
    return [e["objectRef"].get("name") or "" for e in audit_log.operator_requests(namespace)
            if e["verb"] == "create" and e["objectRef"].get("resource") == "jobs"]


def events_for(testbed: Any, namespace: str, uid: str) -> list[dict[str, Any]]:
    return [e for e in get_json(testbed, namespace, "events")["items"] if e["involvedObject"].get("uid") == uid]


def download_sha256(storage: Storage, uri: str) -> tuple[int, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    client = storage.client()
    size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body) == size
    return size, hashlib.sha256(body).hexdigest()


@contextmanager
def minio_outage(testbed: Any) -> Iterator[None]:
    """MinIO killed until the block calls testbed.start_minio(), and in any case after it."""
    testbed.stop_minio()
    try:
        yield
    finally:
        testbed.start_minio()


@contextmanager
def node_gate(testbed: Any, namespace: str) -> Iterator[dict[str, str]]:
    """A nodeSelector no node matches until `open_gate`; the label is removed afterwards."""
    try:
        yield {"nvidia.com/gpu.present": "true", GATE_LABEL: namespace}
    finally:
        kubectl(testbed, "label", "node", GPU_NODE, f"{GATE_LABEL}-", check=False)


def open_gate(testbed: Any, namespace: str) -> None:
    kubectl(testbed, "label", "node", GPU_NODE, f"{GATE_LABEL}={namespace}", "--overwrite")


def wait_job_pending(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    """The version's Job exists and its pod waits for a node (the gate is still closed)."""
    return eventually(
        lambda: (s := status_of(testbed, namespace, name)).get("phase") == "Compressing"
        and condition(s, "Ready")["reason"] == "JobPending" and s,
        180, f"{name}'s Job to wait for the gated node",
    )


# -- 1. int8 ---------------------------------------------------------------------------------


def test_int8_digits_is_ready_smaller_and_as_accurate(testbed, namespace, storage, digits, operator) -> None:
    uri, sha, source = upload_version(storage, digits, namespace, 1)
    secret, model = secret_and_model(storage, threshold=0.5)
    started = time.monotonic()
    apply_docs(testbed, namespace, [secret, model, version("digits-v1", 1, uri, sha)])

    status = wait_phase(testbed, namespace, "digits-v1", "Ready")
    print(f"\nint8 compression of digits: Ready after {time.monotonic() - started:.1f}s")
    report, artifact = status["report"], status["compressedArtifact"]
    assert report["bytesBefore"] == len(source)
    assert report["bytesAfter"] == artifact["bytes"]
    assert artifact["bytes"] <= 0.30 * len(source), f"{artifact['bytes']} bytes is more than 30% of {len(source)}"
    metric = report["metric"]
    assert (metric["name"], metric["threshold"], metric["passed"]) == ("top1-accuracy", 0.5, True)
    assert metric["drop"] <= 0.5 and metric["parent"] - metric["compressed"] == pytest.approx(metric["drop"], abs=1e-3)
    assert report["fromCache"] is False and report["device"] in ("cpu", "cuda")
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Compressed") and "top1-accuracy" in ready["message"]
    print(f"int8: {len(source)} -> {artifact['bytes']} bytes ({artifact['bytes'] / len(source):.3f}), "
          f"top-1 {metric['parent']:.2f}% -> {metric['compressed']:.2f}% (drop {metric['drop']:.2f})")

    # The object in MinIO is exactly what the status records.
    assert artifact["uri"] == f"s3://{storage.bucket}/modelops-cache/{status['cacheKey']}/model.onnx"
    assert download_sha256(storage, artifact["uri"]) == (artifact["bytes"], artifact["sha256"])

    [job] = jobs(testbed, namespace)
    assert job["metadata"]["name"] == status["jobName"] == "digits-v1-compress"
    assert job_condition(job, "Complete") and exit_codes(job_pods(testbed, namespace, status["jobName"])) == [0]


# -- 2. the accuracy gate --------------------------------------------------------------------


def test_a_destructive_recipe_is_rejected_and_latest_never_selects_it(testbed, namespace, storage, digits, operator) -> None:
    secret, model = secret_and_model(storage)
    uri1, sha1, source1 = upload_version(storage, digits, namespace, 1)
    good = version("digits-v1", 1, uri1, sha1)
    publish_cached(storage, model, good, source1)  # version 1 is Ready without a Job of its own
    serve = {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"model": "digits", "versionPolicy": "Latest", "replicas": 0, "triton": {"backend": "python"}},
    }
    apply_docs(testbed, namespace, [secret, model, good, serve])
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.desiredVersion}=1", "modeldeployment/serve",
            "--timeout=180s", timeout=210)

    uri2, sha2, _ = upload_version(storage, digits, namespace, 2)
    aggressive = version(
        "digits-v2", 2, uri2, sha2,
        compression={"quantization": "int8-weight-only", "pruning": {"method": "unstructured", "amount": 0.9}},
        evaluation={"datasetUri": f"s3://{storage.bucket}/digits/eval.npz", "metric": "top1-accuracy", "threshold": 1},
    )
    started = time.monotonic()
    apply_docs(testbed, namespace, [aggressive])
    status = wait_phase(testbed, namespace, "digits-v2", "Rejected")
    print(f"\n90% pruning + int8: Rejected after {time.monotonic() - started:.1f}s")

    metric = status["report"]["metric"]
    assert metric["passed"] is False and metric["threshold"] == 1 and metric["drop"] > 1
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "AccuracyGateRejected")
    assert f"dropped {metric['drop']:.2f} points" in ready["message"], ready["message"]
    assert "compressedArtifact" not in status
    print(f"rejection message: {ready['message']}")

    # A reconcile that starts after the rejection (a spec change bumps the generation) still
    # resolves Latest to version 1.
    kubectl(testbed, "patch", "modeldeployment", "serve", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"rollout":{"progressDeadlineSeconds":301}}}')
    generation = get_json(testbed, namespace, "modeldeployment", "serve")["metadata"]["generation"]
    kubectl(testbed, "wait", "-n", namespace, f"--for=jsonpath={{.status.observedGeneration}}={generation}",
            "modeldeployment/serve", "--timeout=120s", timeout=150)
    served = get_json(testbed, namespace, "modeldeployment", "serve")["status"]
    assert served["desiredVersion"] == 1
    assert 2 not in [r["version"] for r in served.get("rollouts") or []]
    template = get_json(testbed, namespace, "deployment", "serve")["spec"]["template"]["metadata"]["annotations"]
    assert template["modelops.dev/version"] == "1"
    model_status = get_json(testbed, namespace, "model", "digits")["status"]
    assert model_status["latestReadyVersion"] == 1


# -- 3. a wrong sha256 -----------------------------------------------------------------------


def test_a_wrong_sha256_fails_once_without_retries(testbed, namespace, storage, digits, start_operator,
                                                   audit_log: AuditLog) -> None:
    operator: OperatorProcess = start_operator(resync_seconds=3)
    uri, sha, _ = upload_version(storage, digits, namespace, 1)
    wrong = hashlib.sha256(b"not the uploaded bytes").hexdigest()
    secret, model = secret_and_model(storage)
    audit_log.mark()
    apply_docs(testbed, namespace, [secret, model, version("digits-v1", 1, uri, wrong)])

    status = wait_phase(testbed, namespace, "digits-v1", "Failed", timeout=300)
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ChecksumMismatch")
    assert wrong in ready["message"] and sha in ready["message"], ready["message"]

    [job] = jobs(testbed, namespace)
    assert job_condition(job, "Failed")["reason"] == "PodFailurePolicy"
    pods = job_pods(testbed, namespace, job["metadata"]["name"])
    assert len(pods) == 1 and exit_codes(pods) == [EXIT_BAD_ARTIFACT]

    # Periodic resyncs (every 3 s) look at the Failed version again and start nothing.
    before = operator.metric("modelops_reconcile_total", kind="ModelVersion")
    eventually(lambda: operator.metric("modelops_reconcile_total", kind="ModelVersion") - before >= 3, 60,
               "three more reconciles of the version")
    assert [j["metadata"]["uid"] for j in jobs(testbed, namespace)] == [job["metadata"]["uid"]]
    assert len(job_pods(testbed, namespace, job["metadata"]["name"])) == 1
    assert operator_job_creates(audit_log, namespace) == ["digits-v1-compress"]
    assert operator.metric("modelops_compression_jobs_created_total") == 1
    assert status_of(testbed, namespace, "digits-v1")["phase"] == "Failed"
    warnings = [e for e in events_for(testbed, namespace, get_json(testbed, namespace, "modelversion", "digits-v1")["metadata"]["uid"])
                if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["ChecksumMismatch"]


# -- 4. MinIO outages ------------------------------------------------------------------------


def test_minio_down_while_the_job_runs_is_retried(testbed, namespace, storage, digits, start_operator) -> None:
    start_operator(job_backoff_limit=2)
    uri, sha, _ = upload_version(storage, digits, namespace, 1)
    secret, model = secret_and_model(storage)
    with node_gate(testbed, namespace) as selector:
        apply_docs(testbed, namespace, [secret, model, version("digits-v1", 1, uri, sha, scheduling={"nodeSelector": selector})])
        job = wait_job_pending(testbed, namespace, "digits-v1")["jobName"]
        with minio_outage(testbed):
            outage = time.monotonic()
            open_gate(testbed, namespace)
            eventually(lambda: EXIT_TRANSIENT in exit_codes(job_pods(testbed, namespace, job)), 300,
                       "the compressor to give up on storage with the transient exit code")
            retrying = eventually(
                lambda: condition(s := status_of(testbed, namespace, "digits-v1"), "Ready")["reason"] == "JobRetrying" and s,
                30, "the version to say that its Job retries",
            )
            testbed.start_minio()
            print(f"\nMinIO was down for {time.monotonic() - outage:.1f}s")
        status = wait_phase(testbed, namespace, "digits-v1", "Ready")

    pods = job_pods(testbed, namespace, job)
    assert exit_codes(pods) == [EXIT_TRANSIENT, 0], "one pod failed on storage, and the Job's next pod succeeded"
    [job_body] = jobs(testbed, namespace)
    assert job_body["status"].get("failed") == 1 and job_body["status"].get("succeeded") == 1
    assert job_condition(job_body, "Complete")
    message = condition(retrying, "Ready")["message"]
    assert retrying["phase"] == "Compressing" and "after 1 attempt failed" in message and "StorageUnreachable" in message, message
    print(f"while retrying: {message}")
    assert condition(status, "Ready")["reason"] == "Compressed"
    artifact = status["compressedArtifact"]
    assert download_sha256(storage, artifact["uri"]) == (artifact["bytes"], artifact["sha256"])


def test_minio_down_past_the_backoff_limit_fails_with_storage_unreachable(testbed, namespace, storage, digits,
                                                                         start_operator) -> None:
    start_operator(job_backoff_limit=1)
    uri, sha, _ = upload_version(storage, digits, namespace, 1)
    secret, model = secret_and_model(storage)
    with node_gate(testbed, namespace) as selector:
        apply_docs(testbed, namespace, [secret, model, version("digits-v1", 1, uri, sha, scheduling={"nodeSelector": selector})])
        job = wait_job_pending(testbed, namespace, "digits-v1")["jobName"]
        with minio_outage(testbed):
            outage = time.monotonic()
            open_gate(testbed, namespace)
            status = wait_phase(testbed, namespace, "digits-v1", "Failed", timeout=400)
            print(f"\nFailed after {time.monotonic() - outage:.1f}s of MinIO outage (backoffLimit 1)")

    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "StorageUnreachable"), ready
    assert storage.endpoint in ready["message"] and "gave up after 2 attempts" in ready["message"], ready["message"]
    print(f"condition: {ready['reason']}: {ready['message']}")
    [job_body] = jobs(testbed, namespace)
    assert job_condition(job_body, "Failed")["reason"] == "BackoffLimitExceeded"
    assert exit_codes(job_pods(testbed, namespace, job)) == [EXIT_TRANSIENT, EXIT_TRANSIENT]
    assert "compressedArtifact" not in status


def test_minio_down_before_the_job_is_a_condition_and_recovers(testbed, namespace, storage, digits, operator) -> None:
    uri, sha, _ = upload_version(storage, digits, namespace, 1)
    secret, model = secret_and_model(storage)
    with minio_outage(testbed):
        outage = time.monotonic()
        apply_docs(testbed, namespace, [secret, model, version("digits-v1", 1, uri, sha)])
        status = eventually(
            lambda: (s := status_of(testbed, namespace, "digits-v1")).get("phase") == "Verifying"
            and condition(s, "Ready")["reason"] == "StorageUnreachable" and s,
            120, "the operator to report that storage is unreachable",
        )
        ready = condition(status, "Ready")
        assert ready["status"] == "False" and uri in ready["message"] and "retrying" in ready["message"], ready["message"]
        assert condition(status, "Progressing")["status"] == "True"
        assert jobs(testbed, namespace) == [], "no Job is started for an artifact that could not be checked"
        testbed.start_minio()
        print(f"\nMinIO was down for {time.monotonic() - outage:.1f}s; condition: {ready['message']}")

    recovered = time.monotonic()
    status = wait_phase(testbed, namespace, "digits-v1", "Ready")
    print(f"Ready {time.monotonic() - recovered:.1f}s after MinIO returned")
    assert [j["metadata"]["name"] for j in jobs(testbed, namespace)] == ["digits-v1-compress"]


# -- 5. the cache ----------------------------------------------------------------------------


def test_identical_requests_are_served_from_the_cache(testbed, namespace, storage, digits, operator,
                                                      audit_log: AuditLog) -> None:
    uri, sha, _ = upload_version(storage, digits, namespace, 1)
    secret, model = secret_and_model(storage)
    first = version("digits-v1", 1, uri, sha)
    apply_docs(testbed, namespace, [secret, model, first])
    original = wait_phase(testbed, namespace, "digits-v1", "Ready")
    assert original["report"]["fromCache"] is False and len(jobs(testbed, namespace)) == 1

    # Delete the version and wait for its Job to go with it.
    kubectl(testbed, "delete", "modelversion", "digits-v1", "-n", namespace, "--cascade=foreground", "--timeout=120s", timeout=150)
    eventually(lambda: not jobs(testbed, namespace), 120, "the deleted version's Job to be removed")

    audit_log.mark()
    timings = {}
    for doc in (first, version("digits-v2", 2, uri, sha)):
        name = doc["metadata"]["name"]
        started = time.monotonic()
        apply_docs(testbed, namespace, [doc])
        status = wait_phase(testbed, namespace, name, "Ready", timeout=120)
        timings[name] = time.monotonic() - started
        assert status["report"]["fromCache"] is True
        assert status["compressedArtifact"] == original["compressedArtifact"]
        assert status["cacheKey"] == original["cacheKey"]
        assert "jobName" not in status
        ready = condition(status, "Ready")
        assert ready["reason"] == "CompressedFromCache" and "reused" in ready["message"]
        uid = get_json(testbed, namespace, "modelversion", name)["metadata"]["uid"]
        assert "CompressedFromCache" in [e["reason"] for e in events_for(testbed, namespace, uid)]
    print("\ncache hits: " + ", ".join(f"{name} Ready in {seconds:.1f}s" for name, seconds in timings.items()))

    assert jobs(testbed, namespace) == []
    assert operator_job_creates(audit_log, namespace) == []
    assert operator.metric("modelops_compression_cache_hits_total") == 2
    assert operator.metric("modelops_compression_jobs_created_total") == 1


def test_a_corrupted_cache_entry_is_compressed_again_not_served(testbed, namespace, storage, digits, operator) -> None:
    uri, sha, _ = upload_version(storage, digits, namespace, 1)
    secret, model = secret_and_model(storage)
    apply_docs(testbed, namespace, [secret, model, version("digits-v1", 1, uri, sha)])
    first = wait_phase(testbed, namespace, "digits-v1", "Ready")
    cached = first["compressedArtifact"]
    assert cached["etag"], "the record carries the ETag that reuse verifies"
    # Someone overwrites the cached artifact; the record (report.json) still names the old bytes.
    storage.put(cached["uri"].removeprefix(f"s3://{storage.bucket}/"), b"not the compressed model")

    apply_docs(testbed, namespace, [version("digits-v2", 2, uri, sha)])
    second = wait_phase(testbed, namespace, "digits-v2", "Ready")
    assert condition(second, "Ready")["reason"] == "Compressed" and second["report"]["fromCache"] is False
    assert second["jobName"] == "digits-v2-compress"
    artifact = second["compressedArtifact"]
    assert download_sha256(storage, artifact["uri"]) == (artifact["bytes"], artifact["sha256"])
    assert artifact["sha256"] != hashlib.sha256(b"not the compressed model").hexdigest()
    uid = get_json(testbed, namespace, "modelversion", "digits-v2")["metadata"]["uid"]
    created = [e["message"] for e in events_for(testbed, namespace, uid) if e["reason"] == "JobCreated"]
    assert created and cached["uri"] in created[0] and "compressing again" in created[0], created


# -- 6. what storage refuses -----------------------------------------------------------------


def test_a_uri_that_storage_refuses_fails_at_once_and_is_never_retried(testbed, namespace, storage, digits,
                                                                      start_operator, audit_log: AuditLog) -> None:
    """MinIO answers 400 for a key over 1024 bytes (as for `../../etc/passwd`, which the
    apiserver will refuse itself): a permanent InvalidArtifactUri, not a retry every few seconds."""
    operator: OperatorProcess = start_operator(resync_seconds=3)
    secret, model = secret_and_model(storage)
    refused = f"s3://{storage.bucket}/digits/{'k' * 1100}.onnx"
    audit_log.mark()
    apply_docs(testbed, namespace, [secret, model, version("digits-v1", 1, refused, "ab" * 32)])
    status = wait_phase(testbed, namespace, "digits-v1", "Failed", timeout=120)
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidArtifactUri")
    assert ready["message"].startswith("spec.artifact.uri:") and refused in ready["message"]
    assert condition(status, "Progressing")["status"] == "False"

    before = operator.metric("modelops_reconcile_total", kind="ModelVersion")
    eventually(lambda: operator.metric("modelops_reconcile_total", kind="ModelVersion") - before >= 3, 60,
               "three more reconciles of the version")
    assert status_of(testbed, namespace, "digits-v1") == status, "a Failed version is left alone"
    assert jobs(testbed, namespace) == [] and operator_job_creates(audit_log, namespace) == []
    status_writes = [e for e in audit_log.operator_requests(namespace)
                     if e["verb"] == "patch" and e["objectRef"].get("subresource") == "status"
                     and e["objectRef"].get("resource") == "modelversions"]
    assert len(status_writes) == 1, [e["responseStatus"] for e in status_writes]
