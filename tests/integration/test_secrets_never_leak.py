"""A planted credential never leaks: a full lifecycle with a failure in each stage (a bad
checksum, storage down, a rejected gate, a rollback, and credentials storage refuses), then a
search of every log, Event, status, annotation, rendered pod and the API server's audit log
for the credentials, raw and in base64. The only place they may be is their Secret."""

from __future__ import annotations

import base64
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    AuditLog,
    Digits,
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

# Every kind in the namespace except Secrets, whose data is where the credentials belong.
KINDS = ("models.modelops.dev,modelversions.modelops.dev,modeldeployments.modelops.dev,"
         "jobs,deployments,replicasets,pods,services,configmaps,events,endpointslices,leases,serviceaccounts")


def condition(testbed: Any, namespace: str, kind: str, name: str, reason: str) -> dict[str, Any] | None:
    status = get_json(testbed, namespace, kind, name).get("status") or {}
    return next((c for c in status.get("conditions", []) if c.get("reason") == reason), None)


def wait_phase(testbed: Any, namespace: str, name: str, phase: str, timeout: int = 600) -> None:
    kubectl(testbed, "wait", "-n", namespace, f"--for=jsonpath={{.status.phase}}={phase}", f"modelversion/{name}",
            f"--timeout={timeout}s", timeout=timeout + 30)


def needles(*values: str) -> dict[str, str]:
    """Each credential, raw and in base64 (standard and URL-safe, as a Secret's data holds it)."""
    found = {}
    for value in values:
        found[value] = value
        for label, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            found[f"{label}({value[:6]}…)"] = encode(value.encode()).decode().rstrip("=")
    return found


def test_a_planted_credential_appears_nowhere(testbed, namespace, storage: Storage, digits: Digits, start_operator,
                                             audit_log: AuditLog, tmp_path: Path) -> None:
    # A second, recognisable credential that storage refuses, for the access-denied path.
    canary_id, canary_secret = "LEAKCANARY" + secrets.token_hex(5).upper(), "leak-canary-" + secrets.token_urlsafe(18)
    audit_log.mark()
    operator = start_operator()
    model = digits_model_manifest(storage)
    storage.put("digits/eval.npz", digits.eval_npz)
    good = digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", digits.onnx[0]))
    publish_cached(storage, model, good, digits.onnx[0])
    serve = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
             "spec": {"model": "digits", "triton": {"backend": "python"}, "rollout": {"progressDeadlineSeconds": 20}}}
    apply_docs(testbed, namespace, [storage.secret("storage"), model, good, serve])
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=300s", timeout=330)

    # 1. A bad checksum: the Job downloads, the digest does not match, the version fails.
    bad_sum = digits_version_manifest(storage, 2, "0" * 64)
    bad_sum["spec"]["artifact"]["uri"] = f"s3://{storage.bucket}/digits/1/model.onnx"
    apply_docs(testbed, namespace, [bad_sum])
    wait_phase(testbed, namespace, "digits-v2", "Failed")
    assert condition(testbed, namespace, "modelversion", "digits-v2", "ChecksumMismatch")

    # 2. Storage down: the operator's HEAD fails and says so; back up, the version goes on.
    outage = digits_version_manifest(storage, 3, storage.put("digits/3/model.onnx", digits.onnx[2]))
    publish_cached(storage, model, outage, digits.onnx[2])
    testbed.stop_minio()
    try:
        apply_docs(testbed, namespace, [outage])
        eventually(lambda: condition(testbed, namespace, "modelversion", "digits-v3", "StorageUnreachable"), 120,
                   "the outage to be reported")
    finally:
        testbed.start_minio()
    wait_phase(testbed, namespace, "digits-v3", "Ready")

    # 3. A rejected gate: a real compression whose outputs must match exactly, which int8 cannot.
    gated = digits_version_manifest(storage, 4, storage.put("digits/4/model.onnx", digits.onnx[1]))
    gated["spec"]["evaluation"] = {"datasetUri": f"s3://{storage.bucket}/digits/eval.npz", "metric": "max-abs-error",
                                   "threshold": 0.0}
    apply_docs(testbed, namespace, [gated])
    wait_phase(testbed, namespace, "digits-v4", "Rejected")

    # 4. A rollback: version 5's artifact cannot be loaded, so Triton never gets ready.
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.servedVersion}=3", "modeldeployment/serve",
            "--timeout=300s", timeout=330)
    broken = digits_version_manifest(storage, 5, storage.put("digits/5/model.onnx", digits.onnx[0]))
    publish_cached(storage, model, broken, b"this is not an ONNX model")
    apply_docs(testbed, namespace, [broken])
    kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.failedVersions[0]}=5", "modeldeployment/serve",
            "--timeout=300s", timeout=330)

    # 5. Credentials that storage refuses.
    refused = Storage(storage.endpoint, canary_id, canary_secret, storage.bucket, storage.ca_file)
    canary_model = {**digits_model_manifest(refused), "metadata": {"name": "canary"}}
    canary_model["spec"]["storage"]["credentialsSecret"] = {"name": "canary"}
    canary_version = digits_version_manifest(storage, 1, "ab" * 32)
    canary_version["metadata"]["name"] = "canary-v1"
    canary_version["spec"]["model"] = "canary"
    apply_docs(testbed, namespace, [refused.secret("canary"), canary_model, canary_version])
    wait_phase(testbed, namespace, "canary-v1", "Failed")
    assert condition(testbed, namespace, "modelversion", "canary-v1", "AccessDenied")

    # -- the search ----------------------------------------------------------------------------
    look_for = needles(storage.access_key, storage.secret_key, canary_id, canary_secret)
    places: dict[str, str] = {}
    operator.stop()
    places["operator log"] = (tmp_path / "operator.log").read_text(errors="replace")
    state = Path(testbed.state_dir)
    for path in sorted((state / "logs").glob("*.log")):  # node agents, apiserver, controllers, MinIO
        places[f"component log {path.name}"] = path.read_text(errors="replace")
    pods = get_json(testbed, namespace, "pods")["items"]
    assert {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods} >= {"compressor", "triton"}
    for pod in pods:
        for path in sorted(state.glob(f"nodes/*/pods/{pod['metadata']['uid']}/*")):
            if path.is_file() and path.suffix in (".log", ".termination-log"):
                places[f"pod {pod['metadata']['name']} {path.name}"] = path.read_text(errors="replace")
        for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            for var in container.get("env") or []:
                if var["name"].startswith("AWS_"):
                    assert set(var) == {"name", "valueFrom"} and set(var["valueFrom"]) == {"secretKeyRef"}, var
    assert any(name.endswith("fetch.log") for name in places) and any(name.endswith("triton.log") for name in places)
    assert any(name.endswith("compress.log") for name in places)
    listed = json.loads(kubectl(testbed, "get", KINDS, "-n", namespace, "-o", "json").stdout)["items"]
    for item in listed:
        places[f"{item['kind']} {item['metadata']['name']}"] = json.dumps(item)
    for kind in ("models", "modelversions", "modeldeployments"):  # status and annotations, once more on their own
        for item in get_json(testbed, namespace, kind)["items"]:
            places[f"{kind} {item['metadata']['name']} status+annotations"] = json.dumps(
                [item.get("status"), item["metadata"].get("annotations")])
    places["audit log"] = "\n".join(json.dumps(e) for e in audit_log.events_since_mark())
    assert len([k for k in places if k.startswith("Event ")]) >= 10

    # The search finds what is there: every credential is in its Secret, as base64.
    for name, key in (("storage", storage.secret_key), ("canary", canary_secret)):
        stored = json.dumps(get_json(testbed, namespace, "secret", name))
        assert look_for[f"base64({key[:6]}…)"] in stored
    hits = [f"{what} in {where}" for where, text in places.items() for what, needle in look_for.items() if needle in text]
    print(f"\n[leak] searched {len(places)} places for {len(look_for)} forms of 4 credentials (raw, base64, base64url): {len(hits)} hits",
          file=sys.stderr)
    assert hits == []
