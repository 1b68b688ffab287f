"""Endpoints a tenant may not point the operator at: the API server, instance metadata
(link-local) and, for KEDA, a link-local Prometheus. Each is refused with a condition naming
the field, and no request is sent: the API server's audit log has none, and the operator's log
shows no attempt."""

from __future__ import annotations

import copy
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.integration.conftest import (
    NOWHERE,
    ROOT,
    apply_docs,
    digits_model_manifest,
    digits_version_manifest,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)

pytestmark = pytest.mark.integration

SCALEDOBJECT_CRD = ROOT / "tests" / "fixtures" / "keda.sh_scaledobjects.yaml"
METADATA = "http://169.254.169.254"


def condition(testbed: Any, namespace: str, kind: str, name: str, type_: str) -> dict[str, Any]:
    conditions = (get_json(testbed, namespace, kind, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def model_at(storage: Any, name: str, endpoint: str, insecure: bool = False) -> dict[str, Any]:
    model = digits_model_manifest(storage, NOWHERE)
    model["metadata"]["name"] = name
    model["spec"]["storage"]["endpoint"] = endpoint
    if insecure:
        model["spec"]["storage"]["insecure"] = True
        model["spec"]["storage"].pop("caBundle", None)
    return model


def test_storage_endpoints_of_the_cluster_itself_are_refused_without_a_request(
    testbed, namespace, storage, operator, audit_log,
) -> None:
    apiserver = testbed.apiserver_url  # the test bed's API server: MinIO's address, another port
    assert apiserver.rsplit(":", 1)[0] == storage.endpoint.rsplit(":", 1)[0]
    models = {"apiserver": model_at(storage, "apiserver", apiserver),
              "service": model_at(storage, "service", "https://kubernetes.default.svc"),
              "metadata": model_at(storage, "metadata", METADATA, insecure=True)}
    version = digits_version_manifest(storage, 1, "ab" * 32)
    version["metadata"]["name"], version["spec"]["model"] = "apiserver-v1", "apiserver"
    audit_log.mark()
    apply_docs(testbed, namespace, [storage.secret("storage"), *models.values(), version])

    for name in models:
        ready = eventually(lambda name=name: condition(testbed, namespace, "model", name, "Ready").get("reason")
                           == "EndpointNotAllowed" and condition(testbed, namespace, "model", name, "Ready"),
                           60, f"Model {name} to refuse its endpoint")
        assert ready["status"] == "False" and ready["message"].startswith("spec.storage.endpoint: "), ready
        transport = condition(testbed, namespace, "model", name, "StorageTransport")
        assert (transport["status"], transport["reason"]) == ("False", "EndpointNotAllowed"), transport
    assert "Kubernetes API server" in condition(testbed, namespace, "model", "service", "Ready")["message"]
    assert "link-local" in condition(testbed, namespace, "model", "metadata", "Ready")["message"]

    status = eventually(lambda: (get_json(testbed, namespace, "modelversion", "apiserver-v1").get("status") or {})
                        .get("conditions") and get_json(testbed, namespace, "modelversion", "apiserver-v1")["status"],
                        60, "the version's status")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (status["phase"], ready["reason"]) == ("Verifying", "EndpointNotAllowed"), status
    assert "spec.storage.endpoint" in ready["message"] and "no request was sent" in ready["message"]
    assert get_json(testbed, namespace, "jobs")["items"] == []

    # No storage request reached the API server: S3 paths start with the bucket's name.
    def storage_requests() -> list[dict[str, Any]]:
        return [e for e in audit_log.events_since_mark() if e.get("requestURI", "").startswith(f"/{storage.bucket}")]

    assert storage_requests() == []
    log = operator.log_path.read_text()
    for attempt in ("169.254.169.254", "kubernetes.default.svc:443", "Could not connect", "ConnectTimeout"):
        assert attempt not in log.replace("spec.storage.endpoint: ", ""), attempt
    # The audit log would have shown one: a storage request sent to the API server by hand is there.
    s3 = boto3.client("s3", endpoint_url=apiserver, aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1",
                      verify=False, config=Config(retries={"max_attempts": 1}))
    with pytest.raises(Exception):  # noqa: B017 - the API server answers 401 or 403; which one does not matter
        s3.head_bucket(Bucket=storage.bucket)
    assert eventually(storage_requests, 30, "the audit log to record a storage request sent to the API server")


def test_a_link_local_prometheus_address_for_keda_is_refused_and_no_scaledobject_is_made(
    testbed, namespace, storage, digits, operator,
) -> None:
    kubectl(testbed, "apply", "--server-side", "-f", str(SCALEDOBJECT_CRD))
    kubectl(testbed, "wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s")
    model = digits_model_manifest(storage, NOWHERE, gpus=0)
    v1 = digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", digits.onnx[0]))
    publish_cached(storage, model, v1, digits.onnx[0])
    autoscaling = {"minReplicas": 1, "maxReplicas": 3, "metric": "inferences-per-second", "target": 50, "provider": "keda",
                   "prometheusAddress": f"{METADATA}:9090"}
    refused = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "refused"},
               "spec": {"model": "digits", "autoscaling": autoscaling}}
    allowed = copy.deepcopy(refused)
    allowed["metadata"]["name"] = "allowed"
    allowed["spec"]["autoscaling"]["prometheusAddress"] = "http://prometheus.monitoring.svc:9090"
    apply_docs(testbed, namespace, [storage.secret("storage"), model, v1, refused, allowed])

    # The allowed one shows the ScaledObject would be made: the refusal is what keeps it away.
    def scaled_objects() -> list[str]:
        return [o["metadata"]["name"] for o in get_json(testbed, namespace, "scaledobjects.keda.sh")["items"]]

    eventually(scaled_objects, 90, "the allowed ScaledObject")
    degraded = eventually(lambda: condition(testbed, namespace, "modeldeployment", "refused", "Degraded").get("reason")
                          == "EndpointNotAllowed" and condition(testbed, namespace, "modeldeployment", "refused", "Degraded"),
                          60, "the refused deployment to say why")
    assert degraded["status"] == "True" and degraded["message"].startswith("spec.autoscaling.prometheusAddress: "), degraded
    assert "link-local" in degraded["message"]
    served = eventually(lambda: [d["spec"]["replicas"] for d in get_json(testbed, namespace, "deployments")["items"]
                                 if d["metadata"]["name"] == "refused"], 60, "the refused deployment's pods")
    assert served == [1]  # rendered: it still serves, at minReplicas
    assert scaled_objects() == ["allowed"]
    events = get_json(testbed, namespace, "events", "--field-selector", "involvedObject.name=refused,reason=EndpointNotAllowed")
    assert len(events["items"]) == 1 and events["items"][0]["type"] == "Warning"
    assert condition(testbed, namespace, "modeldeployment", "allowed", "Degraded").get("reason") != "EndpointNotAllowed"
