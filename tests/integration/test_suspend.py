"""Suspend and resume on the real apiserver: spec.suspended scales the Triton Deployment to 0,
the status and the chart's Argo CD health check say Suspended, a version that becomes Ready
meanwhile waits, and false brings back the previous size and rolls the new version out."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import (
    NOWHERE,
    apply_docs,
    digits_model_manifest,
    digits_version_manifest,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)
from tests.unit.test_chart_argocd_health import health

pytestmark = pytest.mark.integration


def serve(replicas: int) -> dict[str, Any]:
    # The pods target no node: what is checked is the objects and the status, not serving.
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"model": "digits", "replicas": replicas, "triton": {"backend": "python"},
                 "scheduling": {"nodeSelector": NOWHERE}},
    }


def reason(md: dict[str, Any], kind: str = "Ready") -> str | None:
    found = [c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    return found[0]["reason"] if found else None


def test_suspend_and_resume(testbed, namespace, storage, start_operator) -> None:
    start_operator()
    model_doc = digits_model_manifest(storage, NOWHERE)
    v1 = digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", b"artifact 1"))
    publish_cached(storage, model_doc, v1, b"compressed 1")
    apply_docs(testbed, namespace, [storage.secret("storage"), model_doc, v1, serve(replicas=2)])
    eventually(lambda: kubectl(testbed, "get", "-n", namespace, "deployment/serve", check=False).returncode == 0
               and get_json(testbed, namespace, "deployment", "serve")["spec"]["replicas"] == 2, 120, "the Triton Deployment")

    kubectl(testbed, "patch", "-n", namespace, "modeldeployment/serve", "--type=merge", "-p", '{"spec": {"suspended": true}}')
    suspended = eventually(
        lambda: (md := get_json(testbed, namespace, "modeldeployment", "serve"))
        and health("ModelDeployment", md)[0] == "Suspended" and md, 60, "Argo CD health Suspended")
    assert get_json(testbed, namespace, "deployment", "serve")["spec"]["replicas"] == 0
    assert [reason(suspended, kind) for kind in ("Ready", "Progressing", "Degraded")] == ["Suspended"] * 3
    assert suspended["status"]["replicas"] == 0
    printed = kubectl(testbed, "get", "-n", namespace, "modeldeployment/serve", "--no-headers").stdout.split()
    assert "Suspended" in printed, printed

    # Versions keep working while suspended: v2 becomes Ready, but the pods stay at 0 on v1.
    v2 = digits_version_manifest(storage, 2, storage.put("digits/2/model.onnx", b"artifact 2"))
    publish_cached(storage, model_doc, v2, b"compressed 2")
    apply_docs(testbed, namespace, [v2])
    waiting = eventually(lambda: (md := get_json(testbed, namespace, "modeldeployment", "serve"))["status"].get("desiredVersion") == 2
                         and md, 60, "desiredVersion 2 while suspended")
    assert get_json(testbed, namespace, "modelversion", "digits-v2")["status"]["phase"] == "Ready"
    live = get_json(testbed, namespace, "deployment", "serve")
    assert live["spec"]["replicas"] == 0
    assert live["spec"]["template"]["metadata"]["labels"]["modelops.dev/version"] == "1"
    assert "version 2 rolls out on resume" in [c for c in waiting["status"]["conditions"] if c["type"] == "Ready"][0]["message"]
    assert health("ModelDeployment", waiting)[0] == "Suspended"
    # A scale by hand is reverted to the suspension's 0.
    kubectl(testbed, "scale", "-n", namespace, "deployment/serve", "--replicas=1")
    eventually(lambda: get_json(testbed, namespace, "deployment", "serve")["spec"]["replicas"] == 0, 30, "0 replicas again")

    kubectl(testbed, "patch", "-n", namespace, "modeldeployment/serve", "--type=merge", "-p", '{"spec": {"suspended": false}}')

    def resumed() -> dict[str, Any] | None:
        live = get_json(testbed, namespace, "deployment", "serve")
        return live if live["spec"]["replicas"] == 2 and live["spec"]["template"]["metadata"]["labels"]["modelops.dev/version"] == "2" else None

    eventually(resumed, 60, "2 replicas of version 2 after the resume")
    md = get_json(testbed, namespace, "modeldeployment", "serve")
    assert reason(md, "Progressing") == "RolloutInProgress"
    assert health("ModelDeployment", md)[0] == "Progressing"
