"""The operator's own scaler on the test bed: real tritonserver pods, Triton's counters read
from the pods (no metrics adapter), load from the project's load generator. Replicas grow from
1 to at least 3 under rising load and return to 1 after the cooldown, with no failed request."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e import lifecycle as lc
from e2e import support
from e2e.loadgen import InferenceCall, LoadReport, run_load
from tests.integration.conftest import (
    apply_docs,
    digits_model_manifest,
    digits_version_manifest,
    eventually,
    get_json,
    kubectl,
    publish_cached,
)

pytestmark = pytest.mark.integration

TARGET = 60  # inferences per second per pod
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 4, "metric": "inferences-per-second", "target": TARGET,
               "stabilizationWindow": "20s", "cooldown": "30s", "interval": "3s"}
TRICKLE_GAP_S = 0.5  # shapes the light load (about 20 requests per half second): not a wait


def serve() -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"model": "digits", "autoscaling": AUTOSCALING,
                 "triton": {"backend": "python", "instanceGroups": [{"count": 1, "kind": "KIND_CPU"}]}},
    }


@pytest.mark.timeout(1200)
def test_replicas_follow_the_load_up_and_down(testbed, namespace, storage, digits, start_operator) -> None:
    start_operator(resync_seconds=30)
    model = digits_model_manifest(storage, None, gpus=0)
    v1 = digits_version_manifest(storage, 1, storage.put("digits/1/model.onnx", digits.onnx[0]))
    publish_cached(storage, model, v1, digits.onnx[0])
    apply_docs(testbed, namespace, [storage.secret("storage"), model, v1, serve()])
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=300s", timeout=330)
    assert get_json(testbed, namespace, "deployment", "serve")["spec"]["replicas"] == 1

    inputs = np.load(support.digits_model(0).eval_npz)["inputs"][:1].astype(np.float32)
    call = InferenceCall(model_name="digits", inputs={"input": inputs}, outputs=["logits"])
    endpoints = lc.ServiceEndpoints(testbed.kubeconfig, namespace, "serve")
    started = time.monotonic()
    timeline: list[dict[str, Any]] = []
    reports: list[LoadReport] = []

    def burst(phase: str, requests: int, concurrency: int) -> dict[str, Any]:
        report = run_load(endpoints, call, requests=requests, concurrency=concurrency, time_limit_s=20, request_timeout_s=10)
        reports.append(report)
        live = get_json(testbed, namespace, "deployment", "serve")
        scaler = (get_json(testbed, namespace, "modeldeployment", "serve").get("status") or {}).get("autoscaling") or {}
        point = {"t_s": round(time.monotonic() - started, 1), "phase": phase, "rps": round(report.throughput_rps),
                 "failures": report.failures, "replicas": live["spec"]["replicas"],
                 "ready": (live.get("status") or {}).get("readyReplicas", 0), "metric": scaler.get("value")}
        timeline.append(point)
        return point

    try:
        eventually(lambda: len(endpoints()) == 1, 60, "one ready endpoint")
        for _ in range(10):
            burst("light", 20, 1)
            time.sleep(TRICKLE_GAP_S)
        for _ in range(5):
            burst("rising", 300, 2)
        deadline = time.monotonic() + 300
        while not (timeline[-1]["replicas"] >= 3 and timeline[-1]["ready"] >= 3):
            assert time.monotonic() < deadline, f"no scale-up to 3 within 300 s: {timeline[-6:]}"
            burst("heavy", 1000, 8)
        for _ in range(3):
            burst("heavy", 1000, 8)
        deadline = time.monotonic() + 300
        while not (timeline[-1]["replicas"] == 1 and timeline[-1]["ready"] == 1):
            assert time.monotonic() < deadline, f"no scale-down to 1 within 300 s: {timeline[-6:]}"
            burst("light", 20, 1)
            time.sleep(TRICKLE_GAP_S)
    finally:
        endpoints.stop()

    total, failed = sum(r.requests for r in reports), sum(r.failures for r in reports)
    peak = max(p["replicas"] for p in timeline)
    summary = {"requests": total, "failures": failed, "peak_replicas": peak,
               "timeline": [p for i, p in enumerate(timeline) if i == 0 or p["replicas"] != timeline[i - 1]["replicas"]
                            or p["phase"] != timeline[i - 1]["phase"]]}
    print("\nautoscaling:", json.dumps(summary, indent=2))
    (Path(testbed.state_dir) / "autoscaling.json").write_text(json.dumps({**summary, "full_timeline": timeline}, indent=2))
    assert failed == 0, [r.errors for r in reports if r.failures]
    assert peak >= 3 and timeline[-1]["replicas"] == 1
    reasons = [e["message"] for e in get_json(testbed, namespace, "events")["items"] if e["reason"] == "Scaled"]
    assert any("scaled from 1 to" in m for m in reasons) and any(m.startswith("scaled from") and "to 1 replicas" in m for m in reasons), reasons
