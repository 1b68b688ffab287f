"""What the canary tests share: the served ModelDeployment, a broken version of the digits
model, and load in bursts from the project's load generator (e2e/loadgen.py), each burst
tagged with the canary's step so that the share each step really got can be counted.

The test bed has no kube-proxy: the load generator balances over the Service's ready
endpoints round robin, as kube-proxy would, so a step's traffic share is its share of the
ready pods.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import onnx
from onnx import helper

from e2e import lifecycle as lc
from e2e.loadgen import InferenceCall, LoadReport, run_load
from tests.integration.conftest import digits_model_manifest, digits_version_manifest, eventually, get_json, publish_cached

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


def publish_versions(storage: Any, digits: Any, count: int = 3) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The digits Model and versions 1 to `count`, each with a finished compression in storage (a
    cache hit: no Job runs); version 3, when there is one, fails every request of batch 1."""
    model = digits_model_manifest(storage, None, gpus=0)
    docs = {n: digits_version_manifest(storage, n, storage.put(f"digits/{n}/model.onnx", digits.onnx[n - 1])) for n in range(1, count + 1)}
    for n, doc in docs.items():
        publish_cached(storage, model, doc, even_batch_only(digits.onnx[n - 1]) if n == 3 else digits.onnx[n - 1])
    return model, docs


def promoted(testbed: Any, namespace: str, version: int) -> bool:
    """`version` served by the stable pods after a canary, and the canary Deployment at 0."""
    status = get_json(testbed, namespace, "modeldeployment", "serve").get("status") or {}
    if status.get("servedVersion") != version or (status.get("canary") or {}).get("phase") != "Promoted":
        return False  # until then the canary Deployment may not exist yet
    canary = get_json(testbed, namespace, "deployment", "serve-canary")
    return bool(canary["spec"]["replicas"] == 0 and not canary["status"].get("replicas"))


def serve(replicas: int, steps: list[dict[str, Any]], analysis: dict[str, Any], progress_deadline: int = 180) -> dict[str, Any]:
    """The ModelDeployment `serve` of the digits model on the python backend, with a canary rollout."""
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": {"model": "digits", "replicas": replicas,
                 # No dynamic batching: every request is its own batch of 1.
                 "triton": {"backend": "python", "instanceGroups": [{"count": 1, "kind": "KIND_CPU"}]},
                 "rollout": {"strategy": "Canary", "progressDeadlineSeconds": progress_deadline,
                             "canary": {"steps": steps, "analysis": analysis}}},
    }


class Traffic:
    """Load in bursts on a thread, each burst tagged with the canary's step and the canary
    pods' endpoints at its start and end, and the stable Deployment's available pods sampled
    between bursts."""

    def __init__(self, testbed: Any, namespace: str, inputs: np.ndarray, stable: int, concurrency: int = 8,
                 burst: int = BURST) -> None:
        self.testbed, self.namespace, self.stable, self.concurrency, self.burst = testbed, namespace, stable, concurrency, burst
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
            report: LoadReport = run_load(self.endpoints, self.call, requests=self.burst, concurrency=self.concurrency,
                                          time_limit_s=30, request_timeout_s=10)
            after, later_ips = self.canary_state()
            stable = get_json(self.testbed, self.namespace, "deployment", "serve").get("status") or {}
            self.stable_available.append(int(stable.get("availableReplicas", 0)))
            self.bursts.append({"before": before, "after": after, "canary_ips": canary_ips | later_ips, "report": report})

    def __enter__(self) -> Traffic:
        eventually(lambda: len(self.endpoints()) == self.stable, 180, f"{self.stable} ready endpoints behind serve")
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
                                            "canary_failures": 0, "phase": phase, "bursts": 0})
            entry["all_to_canary"] += to_canary
            entry["canary_failures"] += sum(n for url, n in report.failures_by_endpoint.items() if url in canary_used)
            if phase == "Progressing" and len(canary_used) == replicas and len(used - canary_used) == self.stable:
                entry["requests"] += report.requests
                entry["canary"] += to_canary
                entry["bursts"] += 1
        for entry in steps.values():
            entry["share"] = round(100.0 * entry["canary"] / entry["requests"], 1) if entry["requests"] else None
        return steps


def reasons(testbed: Any, namespace: str) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in get_json(testbed, namespace, "events")["items"]
            if e["involvedObject"]["kind"] == "ModelDeployment"]
