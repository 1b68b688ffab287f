"""TLS to the test bed's MinIO as a Model configures it: a CA bundle that does not sign the
endpoint's certificate fails with TLSVerificationFailed, naming the endpoint, and stays so
until the Model changes; verifyTLS: false works but is a Warning Event and a condition.
(The right CA in the operator, the Job and the fetch container is what every lifecycle test
uses: their Models name the test bed's CA as storage.caBundle.)"""

from __future__ import annotations

import subprocess
import time
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

RETRY_SECONDS = 2


def other_ca(tmp_path: Path) -> str:
    """A CA certificate that signed nothing on the test bed."""
    key, crt = tmp_path / "other.key", tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=not-the-testbed-ca", "-days", "1"],
                   check=True, capture_output=True)
    return crt.read_text()


def condition(testbed: Any, namespace: str, kind: str, name: str, type_: str = "Ready") -> dict[str, Any] | None:
    status = get_json(testbed, namespace, kind, name).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def test_a_wrong_ca_fails_naming_the_endpoint_until_the_model_changes(
    testbed, namespace, storage: Storage, digits: Digits, start_operator, audit_log: AuditLog, tmp_path: Path
) -> None:
    model = digits_model_manifest(storage)
    model["spec"]["storage"]["caBundle"] = {"configMapRef": {"name": "other-ca"}}
    version = digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", digits.onnx[0]))
    publish_cached(storage, model, version, digits.onnx[0])
    ca = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other-ca"}, "data": {"ca.crt": other_ca(tmp_path)}}
    start_operator(retry_seconds=str(RETRY_SECONDS))
    apply_docs(testbed, namespace, [storage.secret("storage"), ca, model, version])

    def failed() -> dict[str, Any] | None:
        ready = condition(testbed, namespace, "modelversion", "digits-v1")
        return ready if ready and ready["reason"] == "TLSVerificationFailed" else None

    ready = eventually(failed, 60, "TLSVerificationFailed")
    assert ready["status"] == "False" and storage.endpoint in ready["message"], ready
    assert get_json(testbed, namespace, "modelversion", "digits-v1")["status"]["phase"] == "Verifying"

    # Permanent: over ten retry periods the operator does not look at the version again,
    # where a transient failure would have been retried every RETRY_SECONDS.
    audit_log.mark()
    time.sleep(10 * RETRY_SECONDS)  # an observation window: what is measured is the absence of retries
    reads = [e for e in audit_log.operator_requests(namespace)
             if e["verb"] == "get" and e["objectRef"].get("resource") == "modelversions"]
    assert reads == [], [e["requestReceivedTimestamp"] for e in reads]
    assert condition(testbed, namespace, "modelversion", "digits-v1") == ready

    # Changing the Model (the right CA bundle) wakes the version, and it goes on.
    kubectl(testbed, "patch", "model", "digits", "-n", namespace, "--type=merge",
            "-p", '{"spec": {"storage": {"caBundle": {"configMapRef": {"name": "kube-root-ca.crt"}}}}}')
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modelversion/digits-v1", "--timeout=120s", timeout=150)
    transport = condition(testbed, namespace, "model", "digits", "StorageTransport")
    assert transport and (transport["status"], transport["reason"]) == ("True", "TLSVerified")


def test_verify_tls_false_works_and_is_a_warning_and_a_condition(testbed, namespace, storage: Storage, digits: Digits,
                                                                 start_operator) -> None:
    model = digits_model_manifest(storage)
    del model["spec"]["storage"]["caBundle"]
    model["spec"]["storage"]["verifyTLS"] = False
    version = digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", digits.onnx[0]))
    publish_cached(storage, model, version, digits.onnx[0])
    start_operator(retry_seconds=str(RETRY_SECONDS))
    apply_docs(testbed, namespace, [storage.secret("storage"), model, version])
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modelversion/digits-v1", "--timeout=120s", timeout=150)

    transport = eventually(lambda: condition(testbed, namespace, "model", "digits", "StorageTransport"), 60, "StorageTransport")
    assert (transport["status"], transport["reason"]) == ("False", "TLSVerificationDisabled")
    assert "verifyTLS is false" in transport["message"] and storage.endpoint in transport["message"]
    warnings = eventually(lambda: [e for e in get_json(testbed, namespace, "events")["items"]
                                   if e["reason"] == "TLSVerificationDisabled" and e["type"] == "Warning"], 30, "the Warning")
    assert warnings[0]["involvedObject"]["kind"] == "Model" and warnings[0]["involvedObject"]["name"] == "digits"
