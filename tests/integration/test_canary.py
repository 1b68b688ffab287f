"""Canary rollouts on the test bed: the real operator, apiserver, node agent and tritonserver,
under load from the project's load generator (e2e/loadgen.py), with no Prometheus and no
Gateway API. A good version walks its steps and is promoted with no failed request; a version
whose every request fails is aborted at its first step from Triton's own counters.

The test bed has no kube-proxy: the load generator balances over the Service's ready
endpoints, as kube-proxy would, so a step's traffic share is its share of the ready pods.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

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
from tests.unit.test_chart_argocd_health import health

pytestmark = pytest.mark.integration

STABLE = 4
# With 4 stable pods a weight of 20 % is 1 canary pod and 50 % is 4: the shares are exact.
STEPS = [{"weight": 20, "pause": "15s"}, {"weight": 50, "pause": "15s"}]
# Latency is judged at the end of each pause, from mean latencies on a shared 2-core machine:
# the ratio's limit leaves room for that noise; errors are judged at once.
ANALYSIS = {"maxErrorRatio": 0.01, "maxLatencyRatio": 4, "minRequests": 200, "interval": "2s"}
MIN_REQUESTS = 10_000
BURST = 300


def even_batch_only(source: bytes) -> bytes:
    """The digits model behind a Split of the batch in two equal halves: it answers as before
    for even batches and fails every request of batch 1, inside the backend, as a broken
    version would."""
    model = onnx.load_from_string(source)
    inner = "input_even_batch"
    for node in model.graph.node:
        node.input[:] = [inner if name == "input" else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("Concat", ["half_a", "half_b"], [inner], axis=0))
    model.graph.node.insert(0, helper.make_node("Split", ["input"], ["half_a", "half_b"], axis=0))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def serve() -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"model": "digits", "replicas": STABLE,
                 # No dynamic batching: every request is its own batch of 1.
                 "triton": {"backend": "python", "instanceGroups": [{"count": 1, "kind": "KIND_CPU"}]},
                 "rollout": {"strategy": "Canary", "progressDeadlineSeconds": 180,
                             "canary": {"steps": STEPS, "analysis": ANALYSIS}}},
    }


class Traffic:
    """Load in bursts on a thread, each burst tagged with the canary's step and the canary
    pods' endpoints at its start and end, and the stable Deployment's available pods sampled
    between bursts."""

    def __init__(self, testbed: Any, namespace: str, inputs: np.ndarray) -> None:
        self.testbed, self.namespace = testbed, namespace
        self.endpoints = lc.ServiceEndpoints(testbed.kubeconfig, namespace, "serve")
        batch = inputs[:1].astype(np.float32)
        self.call = InferenceCall(model_name="digits", inputs={"input": batch}, outputs=["logits"])
        self.bursts: list[dict[str, Any]] = []
        self.stable_available: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def canary_state(self) -> tuple[tuple[Any, ...], set[str]]:
        md = get_json(self.testbed, self.namespace, "modeldeployment", "serve")
        canary = (md.get("status") or {}).get("canary") or {}
        pods = get_json(self.testbed, self.namespace, "pods", "-l", "modelops.dev/track=canary")["items"]
        ips = {f"{p['status']['podIP']}:8000" for p in pods if (p.get("status") or {}).get("podIP")}
        state = (canary.get("version"), canary.get("phase"), canary.get("step"), canary.get("effectiveWeight"),
                 canary.get("canaryReplicas"))
        return state, ips

    def _run(self) -> None:
        while not self._stop.is_set():
            before, canary_ips = self.canary_state()
            report: LoadReport = run_load(self.endpoints, self.call, requests=BURST, concurrency=8,
                                          time_limit_s=30, request_timeout_s=10)
            after, later_ips = self.canary_state()
            stable = get_json(self.testbed, self.namespace, "deployment", "serve").get("status") or {}
            self.stable_available.append(int(stable.get("availableReplicas", 0)))
            self.bursts.append({"before": before, "after": after, "canary_ips": canary_ips | later_ips, "report": report})

    def __enter__(self) -> Traffic:
        eventually(lambda: len(self.endpoints()) == STABLE, 120, f"{STABLE} ready endpoints behind serve")
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self.endpoints.stop()

    def requests(self) -> int:
        return sum(b["report"].requests for b in self.bursts)

    def failures(self) -> int:
        return sum(b["report"].failures for b in self.bursts)

    def shares(self, version: int) -> dict[int, dict[str, Any]]:
        """Per step of `version`'s canary: over the bursts that ran wholly within the step with
        all of the step's canary pods and all stable pods in the endpoints, the requests, the
        canary's requests and its share. Also every request the canary got in the step."""
        steps: dict[int, dict[str, Any]] = {}
        for burst in self.bursts:
            (v, phase, step, weight, replicas), after = burst["before"], burst["after"]
            if v != version or after[:3] != burst["before"][:3]:
                continue
            report: LoadReport = burst["report"]
            used = set(report.by_endpoint)
            canary_used = used & burst["canary_ips"]
            to_canary = sum(report.by_endpoint[url] for url in canary_used)
            entry = steps.setdefault(step, {"weight": weight, "requests": 0, "canary": 0, "all_to_canary": 0,
                                            "canary_failures": 0, "phase": phase})
            entry["all_to_canary"] += to_canary
            entry["canary_failures"] += sum(n for url, n in report.failures_by_endpoint.items() if url in canary_used)
            if phase == "Progressing" and len(canary_used) == replicas and len(used - canary_used) == STABLE:
                entry["requests"] += report.requests
                entry["canary"] += to_canary
        for entry in steps.values():
            entry["share"] = round(100.0 * entry["canary"] / entry["requests"], 1) if entry["requests"] else None
        return steps


def reasons(testbed: Any, namespace: str) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in get_json(testbed, namespace, "events")["items"]
            if e["involvedObject"]["kind"] == "ModelDeployment"]


@pytest.mark.timeout(1500)
def test_a_good_canary_is_promoted_and_a_bad_one_aborted_under_load(testbed, namespace, storage, digits, start_operator) -> None:
    start_operator(resync_seconds=30)
    model = digits_model_manifest(storage, None, gpus=0)
    docs = {n: digits_version_manifest(storage, n, storage.put(f"digits/{n}/model.onnx", digits.onnx[n - 1])) for n in (1, 2, 3)}
    publish_cached(storage, model, docs[1], digits.onnx[0])
    publish_cached(storage, model, docs[2], digits.onnx[1])
    publish_cached(storage, model, docs[3], even_batch_only(digits.onnx[2]))
    apply_docs(testbed, namespace, [storage.secret("storage"), model, docs[1], serve()])
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=400s", timeout=430)
    inputs = np.load(support.digits_model(0).eval_npz)["inputs"]
    log: dict[str, Any] = {}

    # -- a good canary: version 2, 20 % then 50 %, then promoted --------------------------------
    with Traffic(testbed, namespace, inputs) as good:
        apply_docs(testbed, namespace, [docs[2]])
        seen_health: set[str] = set()

        def promoted() -> bool:
            md = get_json(testbed, namespace, "modeldeployment", "serve")
            seen_health.add(health("ModelDeployment", md)[0])
            status = md.get("status") or {}
            if status.get("servedVersion") != 2 or (status.get("canary") or {}).get("phase") != "Promoted":
                return False  # until then the canary Deployment may not exist yet
            canary = get_json(testbed, namespace, "deployment", "serve-canary")
            return canary["spec"]["replicas"] == 0 and not canary["status"].get("replicas")

        eventually(promoted, 900, "version 2 promoted and served by the stable pods", interval=1)
        eventually(lambda: good.requests() >= MIN_REQUESTS, 600, f"{MIN_REQUESTS} requests", interval=1)
    good_shares = good.shares(2)
    log["good"] = {"requests": good.requests(), "failures": good.failures(), "shares": good_shares,
                   "stable_available_min": min(good.stable_available), "argo_health_seen": sorted(seen_health)}
    print("\ngood canary:", json.dumps(log["good"], indent=2))
    assert good.requests() >= MIN_REQUESTS and good.failures() == 0, log["good"]
    assert sorted(good_shares) == [0, 1], good_shares
    for step, expected in ((0, 20.0), (1, 50.0)):
        assert good_shares[step]["weight"] == expected
        assert abs(good_shares[step]["share"] - expected) <= 5, good_shares
    assert "Progressing" in seen_health
    md = get_json(testbed, namespace, "modeldeployment", "serve")
    assert health("ModelDeployment", md)[0] == "Healthy"
    events = [r for r, _ in reasons(testbed, namespace)]
    assert {"CanaryStarted", "CanaryStepPassed", "CanaryPromoted"} <= set(events), events

    # -- a bad canary: version 3 fails every request, aborted at its first step -----------------
    with Traffic(testbed, namespace, inputs) as bad:
        apply_docs(testbed, namespace, [docs[3]])
        kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.canary.phase}=Aborted",
                "modeldeployment/serve", "--timeout=300s", timeout=330)
        md = get_json(testbed, namespace, "modeldeployment", "serve")
        eventually(lambda: get_json(testbed, namespace, "deployment", "serve-canary")["status"].get("replicas", 0) == 0,
                   120, "the canary pods gone")
    status = md["status"]
    bad_shares = bad.shares(3)
    log["bad"] = {"requests": bad.requests(), "failures": bad.failures(), "shares": bad_shares,
                  "stable_available_min": min(bad.stable_available), "message": status["canary"]["message"],
                  "last_analysis": status["canary"].get("lastAnalysis")}
    print("\nbad canary:", json.dumps(log["bad"], indent=2))
    assert status["canary"]["step"] == 0 and status["failedVersions"] == [3]
    assert status["rollouts"][-1]["version"] == 3 and status["rollouts"][-1]["outcome"] == "Aborted"
    assert "error ratio" in status["canary"]["message"] and "failed" in status["canary"]["message"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CanaryAborted")
    assert health("ModelDeployment", md)[0] == "Degraded"
    assert get_json(testbed, namespace, "modelversion", "digits-v3")["status"]["failedBy"] == ["serve"]
    assert ("CanaryAborted" in [r for r, _ in reasons(testbed, namespace)])
    # No more than the step's share went to the canary, and the stable pods never shrank.
    assert bad_shares[0]["share"] is not None and bad_shares[0]["share"] <= bad_shares[0]["weight"] + 5, bad_shares
    assert min(bad.stable_available) >= STABLE and min(good.stable_available) >= STABLE
    assert status["servedVersion"] == 2 and status["desiredVersion"] == 2
    out = Path(testbed.state_dir) / "canary.json"
    out.write_text(json.dumps(log, indent=2, default=str))
